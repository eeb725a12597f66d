//! What the admin page shows of the configuration: upstreams, limits,
//! `[[policy]]` and `[[access]]` rules, taken once from the validated
//! [`Settings`] at start-up.
//!
//! Never a secret: upstream passwords, the admin token and the htpasswd
//! file are shown only as "configured" (a bool); an upstream URL loses any
//! user name and password it carries.

use serde::{Deserialize, Serialize};

use crate::config::{AuthMode, Settings};

/// The configuration as the admin page shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub upstreams: Vec<UpstreamSetup>,
    pub limits: LimitsSetup,
    pub policies: Vec<PolicySetup>,
    pub access: AccessSetup,
    /// Whether state-changing admin endpoints need a bearer token.
    pub admin_token_configured: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSetup {
    pub name: String,
    /// Without user name or password.
    pub url: String,
    /// Whether regcache has its own credentials for it.
    pub credentials_configured: bool,
    pub writes: String,
    pub catalog: String,
    /// Consecutive failures that open the breaker (0: never).
    pub breaker_failures: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsSetup {
    pub max_connections: u64,
    pub max_connections_per_client: Option<u64>,
    pub requests_per_second_per_client: Option<u32>,
    pub request_burst_per_client: Option<u32>,
}

/// One `[[policy]]` rule: its globs and the keys it sets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicySetup {
    pub repositories: Vec<String>,
    /// `None`: every upstream.
    pub upstreams: Option<Vec<String>>,
    /// `(key, value)` for each key the rule sets.
    pub sets: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessSetup {
    /// `none`, `htpasswd` or `upstream`.
    pub mode: String,
    pub htpasswd_configured: bool,
    pub rules: Vec<AccessRuleSetup>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessRuleSetup {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub repositories: Vec<String>,
    pub upstreams: Option<Vec<String>>,
    pub actions: Vec<String>,
}

impl Setup {
    pub fn from_settings(s: &Settings) -> Setup {
        let upstreams = s
            .upstreams
            .iter()
            .map(|u| {
                let mut url = u.url.clone();
                let _ = url.set_username("");
                let _ = url.set_password(None);
                UpstreamSetup {
                    name: u.name.clone(),
                    url: url.to_string(),
                    credentials_configured: u.username.is_some() || u.password.is_some(),
                    writes: u.writes.as_str().to_owned(),
                    catalog: u.catalog.as_str().to_owned(),
                    breaker_failures: u.breaker_failures,
                }
            })
            .collect();
        let l = &s.limits;
        let limits = LimitsSetup {
            max_connections: l.max_connections as u64,
            max_connections_per_client: l.max_connections_per_client.map(|n| n as u64),
            requests_per_second_per_client: l.rate.map(|r| r.0),
            request_burst_per_client: l.rate.map(|r| r.1),
        };
        let policies = s
            .policies
            .configs()
            .map(|r| {
                let mut sets = Vec::new();
                let mut set = |k: &str, v: Option<&str>| {
                    if let Some(v) = v {
                        sets.push((k.to_owned(), v.to_owned()));
                    }
                };
                set("schema1", r.schema1.map(|m| m.as_str()));
                set(
                    "schema1_digests",
                    r.schema1_digests.map(crate::policy::digests_name),
                );
                set("schema2_push", r.schema2_push.map(crate::policy::push_name));
                set("oci", r.oci.map(|m| m.as_str()));
                set("schema1_upgrade", r.schema1_upgrade.map(|m| m.as_str()));
                PolicySetup {
                    repositories: r.repositories.clone(),
                    upstreams: r.upstreams.clone(),
                    sets,
                }
            })
            .collect();
        let access = AccessSetup {
            mode: match s.auth.mode {
                AuthMode::None => "none",
                AuthMode::Htpasswd => "htpasswd",
                AuthMode::Upstream => "upstream",
            }
            .to_owned(),
            htpasswd_configured: s.auth.htpasswd_file.is_some(),
            rules: s
                .auth
                .rules
                .configs()
                .map(|r| AccessRuleSetup {
                    users: r.users.clone(),
                    groups: r.groups.clone(),
                    repositories: r.repositories.clone(),
                    upstreams: r.upstreams.clone(),
                    actions: r.actions.iter().map(|a| a.as_str().to_owned()).collect(),
                })
                .collect(),
        };
        Setup {
            upstreams,
            limits,
            policies,
            access,
            admin_token_configured: s.admin_token.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    struct NoEnv;
    impl crate::config::EnvSource for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn shows_globs_and_modes_but_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(&pw, format!("alice:{hash}\n")).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-admin-token-0123456789\n").unwrap();
        let file = dir.path().join("regcache.toml");
        std::fs::write(
            &file,
            format!(
                r#"
[upstream]
url = "http://127.0.0.1:5000"
username = "robot"
password = "hunter2-upstream-password"

[admin]
token_file = {token:?}

[auth]
mode = "htpasswd"
htpasswd_file = {pw:?}

[[access]]
users = ["alice", "anonymous"]
repositories = ["team/**"]
actions = ["pull"]

[[policy]]
repositories = ["legacy/*"]
schema1 = "force"
"#
            ),
        )
        .unwrap();
        let settings = Config::load(Some(&file), &NoEnv, &Overrides::default()).unwrap();
        let setup = Setup::from_settings(&settings);
        let json = serde_json::to_string(&setup).unwrap();
        for secret in ["hunter2", "s3cret", "$2y$", "robot"] {
            assert!(!json.contains(secret), "{secret} in {json}");
        }
        assert!(setup.upstreams[0].credentials_configured);
        assert!(setup.admin_token_configured && setup.access.htpasswd_configured);
        assert_eq!(setup.access.mode, "htpasswd");
        assert_eq!(setup.access.rules[0].repositories, ["team/**"]);
        assert_eq!(setup.access.rules[0].actions, ["pull"]);
        assert_eq!(setup.policies[0].repositories, ["legacy/*"]);
        assert_eq!(setup.policies[0].sets, [("schema1".into(), "force".into())]);
    }
}

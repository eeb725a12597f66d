//! `[auth]`, `[auth.groups]` and `[[access]]`: how regcache authenticates
//! its clients and what each may do (see `crate::auth`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::access::{AccessRuleConfig, AccessRules};

/// Who decides whether a client may have what it asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No client authentication: whoever reaches the port reads everything
    /// regcache can read upstream.
    #[default]
    None,
    /// Users of an htpasswd file (bcrypt), and the `[[access]]` rules.
    Htpasswd,
    /// The client's own upstream credentials decide: regcache asks the
    /// upstream with them before serving anything cached, and acts with
    /// them upstream.
    Upstream,
}

/// The challenge a 401 carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChallengeKind {
    /// `Bearer realm=…/auth/token`: the registry token flow.
    #[default]
    Bearer,
    /// `Basic realm=…`: credentials with every request.
    Basic,
}

/// `[auth]` as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    pub mode: AuthMode,
    /// The htpasswd file (bcrypt only) for `mode = "htpasswd"`.
    pub htpasswd_file: Option<PathBuf>,
    /// The token endpoint clients are sent to; by default
    /// `<scheme>://<Host of the request>/auth/token`.
    pub realm: Option<String>,
    /// The `service` of challenges and the audience of tokens.
    pub service: String,
    pub challenge: ChallengeKind,
    /// Lifetime of an issued token.
    pub token_ttl_secs: u64,
    /// P-256 key (PEM or JWK) signing the tokens; generated on first start
    /// if absent. Relative paths are under `data_dir`.
    pub token_key: PathBuf,
    /// Accept Basic credentials on a plain-HTTP listener.
    pub allow_insecure_http: bool,
    /// Group name → user names, for `[[access]] groups`.
    pub groups: BTreeMap<String, Vec<String>>,
    /// `mode = "upstream"`: how long the upstream's yes for a (client,
    /// upstream, repository) is remembered. A no is never remembered.
    pub upstream_decision_ttl_secs: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            mode: AuthMode::None,
            htpasswd_file: None,
            realm: None,
            service: "regcache".into(),
            challenge: ChallengeKind::Bearer,
            token_ttl_secs: 300,
            token_key: PathBuf::from("auth-token-key.pem"),
            allow_insecure_http: false,
            groups: BTreeMap::new(),
            upstream_decision_ttl_secs: 60,
        }
    }
}

/// Bounds of `upstream_decision_ttl_secs`: a revoked grant upstream stops
/// working here within this long.
pub const UPSTREAM_DECISION_TTL_SECS: std::ops::RangeInclusive<u64> = 1..=3600;

/// Bounds of `token_ttl_secs`: long enough for a slow layer download to
/// start, short enough that a leaked token soon stops working.
pub const TOKEN_TTL_SECS: std::ops::RangeInclusive<u64> = 30..=3600;

/// The validated `[auth]` and `[[access]]`.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub htpasswd_file: Option<PathBuf>,
    pub realm: Option<String>,
    pub service: String,
    pub challenge: ChallengeKind,
    pub token_ttl: Duration,
    pub token_key_path: PathBuf,
    pub allow_insecure_http: bool,
    pub rules: AccessRules,
    pub upstream_decision_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mode: AuthMode::None,
            htpasswd_file: None,
            realm: None,
            service: "regcache".into(),
            challenge: ChallengeKind::Bearer,
            token_ttl: Duration::from_secs(300),
            token_key_path: PathBuf::from("auth-token-key.pem"),
            allow_insecure_http: false,
            rules: AccessRules::default(),
            upstream_decision_ttl: Duration::from_secs(60),
        }
    }
}

/// Check `[auth]` and `[[access]]`; every problem goes to `problems`.
pub(super) fn validate_auth(
    auth: &AuthSection,
    access: &[AccessRuleConfig],
    data_dir: &Path,
    problems: &mut Vec<String>,
) -> AuthSettings {
    match auth.mode {
        AuthMode::None => {
            if !access.is_empty() {
                problems.push(
                    "[[access]] rules need client authentication: set [auth] mode = \"htpasswd\" (with mode = \"none\" every client may pull everything)"
                        .into(),
                );
            }
            if auth.htpasswd_file.is_some() {
                problems.push(
                    "[auth] htpasswd_file is set but mode = \"none\": set mode = \"htpasswd\" to use it"
                        .into(),
                );
            }
        }
        AuthMode::Htpasswd => match &auth.htpasswd_file {
            None => problems.push("[auth] mode = \"htpasswd\" needs htpasswd_file".into()),
            Some(path) => {
                if let Err(mut found) = crate::auth::htpasswd::load(path) {
                    problems.append(&mut found);
                }
            }
        },
        AuthMode::Upstream => {
            if !access.is_empty() {
                problems.push(
                    "[[access]] rules do not apply with [auth] mode = \"upstream\": the upstream decides what each client may do"
                        .into(),
                );
            }
            if auth.htpasswd_file.is_some() {
                problems.push(
                    "[auth] htpasswd_file is set but mode = \"upstream\": clients log in with their upstream credentials"
                        .into(),
                );
            }
        }
    }
    if !UPSTREAM_DECISION_TTL_SECS.contains(&auth.upstream_decision_ttl_secs) {
        problems.push(format!(
            "[auth] upstream_decision_ttl_secs = {}: must be between {} and {}",
            auth.upstream_decision_ttl_secs,
            UPSTREAM_DECISION_TTL_SECS.start(),
            UPSTREAM_DECISION_TTL_SECS.end()
        ));
    }
    if let Some(realm) = &auth.realm {
        match url::Url::parse(realm) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if !u.username().is_empty() || u.password().is_some() || realm.contains('"') {
                    problems.push(format!(
                        "[auth] realm = {realm:?} must not carry credentials or quotes"
                    ));
                }
            }
            _ => problems.push(format!(
                "[auth] realm = {realm:?} is not an http(s) URL such as https://mirror.example/auth/token"
            )),
        }
    }
    if auth.service.is_empty()
        || auth.service.len() > 253
        || !auth
            .service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
    {
        problems.push(format!(
            "[auth] service = {:?}: 1 to 253 of [A-Za-z0-9.-_:] (it is quoted in challenges)",
            auth.service
        ));
    }
    if !TOKEN_TTL_SECS.contains(&auth.token_ttl_secs) {
        problems.push(format!(
            "[auth] token_ttl_secs = {}: must be between {} and {}",
            auth.token_ttl_secs,
            TOKEN_TTL_SECS.start(),
            TOKEN_TTL_SECS.end()
        ));
    }
    if auth.token_key.as_os_str().is_empty() {
        problems.push("[auth] token_key must not be empty".into());
    }
    let rules = match AccessRules::new(access, &auth.groups) {
        Ok(r) => r,
        Err(mut e) => {
            problems.append(&mut e);
            AccessRules::default()
        }
    };
    let token_key_path = if auth.token_key.is_absolute() {
        auth.token_key.clone()
    } else {
        data_dir.join(&auth.token_key)
    };
    AuthSettings {
        mode: auth.mode,
        htpasswd_file: auth.htpasswd_file.clone(),
        realm: auth.realm.clone(),
        service: auth.service.clone(),
        challenge: auth.challenge,
        token_ttl: Duration::from_secs(auth.token_ttl_secs),
        token_key_path,
        allow_insecure_http: auth.allow_insecure_http,
        rules,
        upstream_decision_ttl: Duration::from_secs(auth.upstream_decision_ttl_secs),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{config_file, env};
    use crate::config::{Config, Overrides};

    use super::*;

    fn load(text: &str) -> Result<crate::config::Settings, String> {
        let (_dir, file) = config_file(text);
        Config::load(Some(&file), &env(&[]), &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn htpasswd_clients_credentials_never_go_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(&pw, format!("alice:{hash}\n")).unwrap();
        let text = |writes: &str| {
            format!(
                "[auth]\nmode = \"htpasswd\"\nhtpasswd_file = {:?}\n[upstream]\nurl = \"http://127.0.0.1:5000\"\nwrites = \"{writes}\"\n",
                pw.display().to_string()
            )
        };
        let err = load(&text("client-credentials")).unwrap_err();
        assert!(
            err.contains(
                "writes = \"client-credentials\" would send the credentials clients give regcache"
            ),
            "{err}"
        );
        load(&text("stored-credentials")).unwrap();
        let upstream_mode = text("client-credentials")
            .replace(
                &format!("htpasswd_file = {:?}\n", pw.display().to_string()),
                "",
            )
            .replace("mode = \"htpasswd\"", "mode = \"upstream\"");
        let s = load(&upstream_mode).unwrap();
        assert_eq!(s.auth.mode, AuthMode::Upstream);
    }

    #[test]
    fn off_by_default() {
        let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.auth.mode, AuthMode::None);
        assert!(s.auth.rules.is_empty());
        assert_eq!(
            s.auth.token_key_path,
            PathBuf::from("./regcache-data/auth-token-key.pem")
        );
    }

    #[test]
    fn htpasswd_mode_loads_the_file_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("htpasswd");
        std::fs::write(&pw, format!("alice:{}\n", bcrypt::hash("x", 4).unwrap())).unwrap();
        let s = load(&format!(
            "[auth]\nmode = \"htpasswd\"\nhtpasswd_file = {:?}\nrealm = \"https://m.example/auth/token\"\nchallenge = \"basic\"\ntoken_ttl_secs = 60\n[auth.groups]\ndevs = [\"alice\"]\n[[access]]\ngroups = [\"devs\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
            pw.display().to_string()
        ))
        .unwrap();
        assert_eq!(s.auth.mode, AuthMode::Htpasswd);
        assert_eq!(s.auth.challenge, ChallengeKind::Basic);
        assert_eq!(s.auth.token_ttl, Duration::from_secs(60));
        assert_eq!(s.auth.rules.len(), 1);
    }

    #[test]
    fn problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("htpasswd");
        std::fs::write(&pw, "alice:{SHA}c2VjcmV0\n").unwrap();
        let err = load(&format!(
            "[auth]\nmode = \"htpasswd\"\nhtpasswd_file = {:?}\nrealm = \"ftp://x\"\nservice = \"a b\"\ntoken_ttl_secs = 999999\n[[access]]\nusers = [\"a\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\ngroups = [\"nope\"]\n",
            pw.display().to_string()
        ))
        .unwrap_err();
        for want in [
            "line 1: not a bcrypt hash",
            "realm = \"ftp://x\"",
            "service = \"a b\"",
            "token_ttl_secs = 999999: must be between 30 and 3600",
            "group \"nope\" is not defined",
        ] {
            assert!(err.contains(want), "{want} missing from {err}");
        }
        assert!(!err.contains("c2VjcmV0"), "the hash is never echoed: {err}");

        let s = load("[auth]\nmode = \"upstream\"\n").unwrap();
        assert_eq!(s.auth.mode, AuthMode::Upstream);
        assert_eq!(s.auth.upstream_decision_ttl, Duration::from_secs(60));
        let err = load(
            "[auth]\nmode = \"upstream\"\nupstream_decision_ttl_secs = 0\n[[access]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
        )
        .unwrap_err();
        assert!(
            err.contains("do not apply with [auth] mode = \"upstream\""),
            "{err}"
        );
        assert!(err.contains("upstream_decision_ttl_secs = 0"), "{err}");
        let err = load("[auth]\nmode = \"htpasswd\"\n").unwrap_err();
        assert!(err.contains("needs htpasswd_file"), "{err}");
        let err =
            load("[[access]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n")
                .unwrap_err();
        assert!(
            err.contains("[[access]] rules need client authentication"),
            "{err}"
        );
        let err = load("[auth]\nmode = \"ldap\"\n").unwrap_err();
        assert!(err.contains("ldap"), "{err}");
        let err = load("[auth]\nmodee = \"none\"\n").unwrap_err();
        assert!(err.contains("unknown key `modee` in [auth]"), "{err}");
    }
}

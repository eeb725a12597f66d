//! Checking the layered file into [`Settings`], every problem reported at once.

use std::net::SocketAddr;
use std::time::Duration;

use super::tls::load_tls;
use super::{Config, ConfigError, EnvSource, Settings, UpstreamSection, UpstreamSettings};

impl Config {
    pub(super) fn validate(
        self,
        env: &dyn EnvSource,
        mut problems: Vec<String>,
    ) -> Result<Settings, ConfigError> {
        let addr = |what: &str, v: &str, problems: &mut Vec<String>| -> Option<SocketAddr> {
            match v.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(format!(
                        "{what} = {v:?} is not an address such as 0.0.0.0:5000 or [::1]:5000"
                    ));
                    None
                }
            }
        };
        let listen = addr("listen", &self.listen, &mut problems);
        let admin_listen = addr("admin_listen", &self.admin_listen, &mut problems);
        if listen.is_some() && listen == admin_listen {
            problems.push("listen and admin_listen must differ".into());
        }
        let log_json = match self.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                problems.push(format!(
                    "log.format = {other:?}: expected \"text\" or \"json\""
                ));
                false
            }
        };
        let log_access =
            crate::access_log::AccessLevel::parse(&self.log.access).unwrap_or_else(|| {
                problems.push(format!(
                    "log.access = {:?}: expected \"info\", \"debug\" or \"off\"",
                    self.log.access
                ));
                crate::access_log::AccessLevel::Info
            });
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problems.push(format!(
                "log.level = {:?} is not a valid filter",
                self.log.level
            ));
        }
        let mut upstreams = Vec::new();
        if self.upstream.0.is_empty() {
            problems.push("at least one upstream is needed".into());
        }
        if self.upstream.0.iter().filter(|u| u.default).count() > 1 {
            problems.push("only one upstream may say default = true".into());
        }
        let many = self.upstream.0.len() > 1;
        for (i, up) in self.upstream.0.iter().enumerate() {
            let label = if many {
                format!(
                    "upstream #{} ({})",
                    i + 1,
                    up.name.as_deref().unwrap_or(&up.url)
                )
            } else {
                "upstream".to_owned()
            };
            if let Some(u) = validate_upstream(&label, up, env, &mut problems) {
                upstreams.push(u);
            }
        }
        let mut seen = std::collections::HashMap::new();
        for u in &upstreams {
            for n in std::iter::once(&u.name).chain(u.aliases.iter()) {
                if let Some(other) = seen.insert(n.clone(), u.name.clone()) {
                    problems.push(format!(
                        "registry name {n:?} is claimed by both upstream {other:?} and upstream {:?}",
                        u.name
                    ));
                }
            }
        }
        // Named as validation names them, even when one failed for another
        // reason (a missing password file): a rule's names are checked too.
        let names: Option<Vec<String>> = (self.upstream.0.iter())
            .map(|u| match &u.name {
                Some(n) => Some(n.clone()),
                None => url::Url::parse(&u.url)
                    .ok()
                    .map(|url| default_upstream_name(&url)),
            })
            .collect();
        if let Some(names) = names {
            super::cross::check_rule_upstreams(&self, &names, &mut problems);
        }
        if self.cache.memory_max_object.0 > self.cache.memory_size.0 {
            problems.push("cache.memory_max_object must not exceed cache.memory_size".into());
        }
        super::bounds::check_cache(&self.cache, &mut problems);
        if self.data_dir.as_os_str().is_empty() {
            problems.push("data_dir must not be empty".into());
        }
        let policies = match crate::policy::Policies::new(&self.policy) {
            Ok(p) => p,
            Err(mut e) => {
                problems.append(&mut e);
                crate::policy::Policies::default()
            }
        };
        let auth =
            super::auth::validate_auth(&self.auth, &self.access, &self.data_dir, &mut problems);
        // With htpasswd client auth, a client's Authorization is its
        // credential for regcache: passing it upstream would hand regcache's
        // users' passwords (or regcache's own tokens) to the upstream.
        if auth.mode == super::AuthMode::Htpasswd {
            for u in &upstreams {
                for (key, mode) in [("writes", u.writes), ("catalog", u.catalog)] {
                    if mode == crate::writes::Forwarding::ClientCredentials {
                        problems.push(format!(
                            "upstream {:?}: {key} = \"client-credentials\" would send the credentials clients give regcache ([auth] mode = \"htpasswd\") to the upstream; use \"stored-credentials\" (with [[access]] rules granting push/delete) or \"off\"",
                            u.name
                        ));
                    }
                }
            }
        }
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => load_tls(cert, key, self.kernel_tls, &mut problems),
            (Some(_), None) => {
                problems.push(
                    "tls_cert_file is set but tls_key_file is not: give both (TLS) or neither (plain HTTP)"
                        .into(),
                );
                None
            }
            (None, Some(_)) => {
                problems.push(
                    "tls_key_file is set but tls_cert_file is not: give both (TLS) or neither (plain HTTP)"
                        .into(),
                );
                None
            }
        };
        let limits = self.limits.validate(&mut problems);
        let admin_token =
            super::limits::load_admin_token(self.admin.token_file.as_ref(), env, &mut problems);
        let cluster = (self.cluster.as_ref()).and_then(|c| {
            super::cluster::validate_cluster(c, listen, admin_listen, env, &mut problems)
        });
        let shared = (self.shared.as_ref())
            .and_then(|s| super::shared::validate_shared(s, env, &mut problems));
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let (Some(listen), Some(admin_listen)) = (listen, admin_listen) else {
            return Err(ConfigError {
                problems: vec!["internal: validation incomplete".into()],
            });
        };
        let signing_key_path = if self.schema1.signing_key.is_absolute() {
            self.schema1.signing_key.clone()
        } else {
            self.data_dir.join(&self.schema1.signing_key)
        };
        Ok(Settings {
            listen,
            admin_listen,
            data_dir: self.data_dir,
            log_json,
            log_level: self.log.level,
            log_access,
            memory_size: self.cache.memory_size.0,
            memory_max_object: self.cache.memory_max_object.0,
            disk_size: self.cache.disk_size.0,
            default_upstream: self.upstream.default_index(),
            upstreams,
            signing_key_path,
            policies,
            tls,
            auth,
            limits,
            admin_token,
            cluster,
            shared,
        })
    }
}

fn validate_upstream(
    label: &str,
    up: &UpstreamSection,
    env: &dyn EnvSource,
    problems: &mut Vec<String>,
) -> Option<UpstreamSettings> {
    let before = problems.len();
    let url = match url::Url::parse(&up.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
                problems.push(format!(
                    "{label}: url = {:?} must not carry a query, fragment or credentials (use username/password)",
                    redact_url(&up.url)
                ));
            }
            if let Some(why) = u.host().as_ref().and_then(super::bounds::unroutable) {
                problems.push(format!(
                    "{label}: url = {:?} is not a registry to connect to: its host {} is {why}; give the registry's name or address (e.g. http://127.0.0.1:5000)",
                    redact_url(&up.url),
                    u.host_str().unwrap_or_default()
                ));
            }
            Some(u)
        }
        _ => {
            problems.push(format!(
                "{label}: url = {:?} is not an http(s) URL such as https://registry-1.docker.io",
                redact_url(&up.url)
            ));
            None
        }
    };
    if up.name.as_deref() == Some("") {
        problems.push(format!("{label}: name must not be empty"));
    }
    let sources = [
        up.password.is_some(),
        up.password_file.is_some(),
        up.password_env.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources > 1 {
        problems.push(format!(
            "{label}: give at most one of password, password_file, password_env"
        ));
    }
    let mut password = up.password.clone();
    if let Some(path) = &up.password_file {
        match std::fs::read_to_string(path) {
            Ok(s) => password = Some(s.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) => problems.push(format!(
                "{label}: password_file {}: cannot read: {e}",
                path.display()
            )),
        }
    }
    if let Some(var) = &up.password_env {
        match env.var(var) {
            Some(s) => password = Some(s),
            None => problems.push(format!(
                "{label}: password_env names {var:?}, which is not set"
            )),
        }
    }
    if password.is_some() && up.username.is_none() {
        problems.push(format!("{label}: a password needs a username"));
    }
    super::bounds::check_upstream(label, up, problems);
    let url = url?;
    if problems.len() > before {
        return None;
    }
    let name = up
        .name
        .clone()
        .unwrap_or_else(|| default_upstream_name(&url));
    let docker_hub = name == "docker.io"
        || matches!(
            url.host_str(),
            Some("registry-1.docker.io" | "index.docker.io")
        );
    Some(UpstreamSettings {
        name,
        url,
        aliases: up.aliases.clone(),
        docker_hub,
        username: up.username.clone(),
        password,
        tag_ttl: Duration::from_secs(up.tag_ttl_secs),
        stale_if_error: Duration::from_secs(up.stale_if_error_secs),
        stale_while_revalidate: Duration::from_secs(up.stale_while_revalidate_secs),
        connect_timeout: Duration::from_secs(up.connect_timeout_secs),
        first_byte_timeout: Duration::from_secs(up.first_byte_timeout_secs),
        body_stall_timeout: Duration::from_secs(up.body_stall_timeout_secs),
        retry_attempts: up.retry_attempts,
        auth_realms: up.auth_realms.clone().unwrap_or_else(|| {
            if docker_hub {
                vec!["auth.docker.io".to_owned()]
            } else {
                Vec::new()
            }
        }),
        writes: up.writes,
        catalog: up.catalog,
        breaker_failures: up.breaker_failures,
        breaker_probe: Duration::from_secs(up.breaker_probe_secs),
    })
}

/// `docker.io` for Docker Hub, else `host[:port]` of the URL.
fn default_upstream_name(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("upstream");
    if matches!(
        host,
        "registry-1.docker.io" | "index.docker.io" | "docker.io"
    ) {
        return "docker.io".into();
    }
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// Never echo credentials embedded in a URL back in an error message.
fn redact_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("<redacted>");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::test_support::{config_file, env};
    use crate::config::{Config, Overrides};

    #[test]
    fn defaults_run_anywhere() {
        let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:5000");
        assert_eq!(s.data_dir, PathBuf::from("./regcache-data"));
        assert_eq!(
            s.default_upstream().url.as_str(),
            "https://registry-1.docker.io/"
        );
        assert_eq!(s.default_upstream().name, "docker.io");
        assert_eq!(
            s.signing_key_path,
            PathBuf::from("./regcache-data/schema1-signing-key.pem")
        );
    }

    #[test]
    fn every_problem_reported_at_once() {
        let o = Overrides {
            listen: Some("nonsense".into()),
            admin_listen: Some("also nonsense".into()),
            upstream: Some("ftp://user:secret@x".into()),
            ..Overrides::default()
        };
        let e = env(&[
            ("REGCACHE_LOG_FORMAT", "xml"),
            ("REGCACHE_DISK_SIZE", "12 parsecs"),
        ]);
        let err = Config::load(None, &e, &o).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 5, "{text}");
        assert!(text.contains("listen = \"nonsense\""));
        assert!(text.contains("admin_listen"));
        assert!(text.contains("log.format"));
        assert!(text.contains("REGCACHE_DISK_SIZE"));
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn password_sources_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!(
                "[upstream]\nusername = \"bob\"\npassword_file = {:?}\n",
                pw.display().to_string()
            ),
        )
        .unwrap();
        let s = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.default_upstream().password.as_deref(), Some("hunter2"));
        assert!(!format!("{:?}", s.default_upstream()).contains("hunter2"));
        std::fs::write(
            &file,
            "[upstream]\nusername = \"bob\"\npassword_env = \"RC_PW\"\n",
        )
        .unwrap();
        let s = Config::load(
            Some(&file),
            &env(&[("RC_PW", "s3cret")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.default_upstream().password.as_deref(), Some("s3cret"));
        let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("RC_PW"));
    }

    #[test]
    fn several_upstreams() {
        let (_dir, file) = config_file(
            "[[upstream]]\nurl = \"https://registry-1.docker.io\"\n\n[[upstream]]\nname = \"quay.io\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\naliases = [\"q.example\"]\n",
        );
        let s = Config::load(
            Some(&file),
            &env(&[("REGCACHE_UPSTREAM", "http://127.0.0.1:8")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.upstreams.len(), 2);
        assert_eq!(s.upstreams[0].name, "docker.io");
        assert!(s.upstreams[0].docker_hub);
        assert_eq!(s.default_upstream().name, "quay.io");
        assert_eq!(
            s.default_upstream().url.as_str(),
            "http://127.0.0.1:8/",
            "env overrides the default upstream"
        );
        assert!(!s.default_upstream().docker_hub);
        std::fs::write(
            &file,
            "[[upstream]]\nurl = \"http://a:1\"\n[[upstream]]\nurll = \"http://b:1\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().contains("[[upstream]] #2") && err.to_string().contains("urll"),
            "{err}"
        );
        std::fs::write(
            &file,
            "[[upstream]]\nname = \"x\"\nurl = \"http://a:1\"\ndefault = true\n[[upstream]]\nname = \"x\"\nurl = \"nope\"\ndefault = true\n",
        )
        .unwrap();
        let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("only one upstream may say default"), "{text}");
        assert!(text.contains("upstream #2 (x): url = \"nope\""), "{text}");
    }

    #[test]
    fn stale_while_revalidate_is_per_upstream_and_off_by_default() {
        let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.default_upstream().stale_while_revalidate, Duration::ZERO);

        let (_dir, file) = config_file(
            "[[upstream]]\nname = \"quay.io\"\nurl = \"http://127.0.0.1:9\"\n\
             tag_ttl_secs = 5\nstale_while_revalidate_secs = 300\n\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:10\"\n",
        );
        let s = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.upstreams[0].tag_ttl, Duration::from_secs(5));
        assert_eq!(
            s.upstreams[0].stale_while_revalidate,
            Duration::from_secs(300)
        );
        assert_eq!(s.upstreams[1].stale_while_revalidate, Duration::ZERO);
        let debug = format!("{:?}", s.upstreams[0]);
        assert!(
            debug.contains("stale_while_revalidate: 300s"),
            "Debug shows the setting: {debug}"
        );

        // A single [upstream] table takes it too.
        let cfg =
            Config::from_toml("[upstream]\nstale_while_revalidate_secs = 7\n", "f.toml").unwrap();
        assert_eq!(cfg.upstream.0[0].stale_while_revalidate_secs, 7);

        // A typo is an unknown key that names the real one; a string is refused.
        let err =
            Config::from_toml("[upstream]\nstale_while_revalidate = 7\n", "f.toml").unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 1, "{text}");
        assert!(
            text.contains("unknown key `stale_while_revalidate`")
                && text.contains("stale_while_revalidate_secs"),
            "{text}"
        );
        let err = Config::from_toml(
            "[upstream]\nstale_while_revalidate_secs = \"1m\"\n",
            "f.toml",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("stale_while_revalidate_secs"),
            "{err}"
        );
    }
}

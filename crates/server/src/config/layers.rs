//! The layers over the file: environment variables, then command-line flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{ByteSize, Config};

/// Overrides from the command line (`None` = not given); `regcache serve`'s
/// flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Address for registry clients, e.g. 0.0.0.0:5000.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address for /metrics, /healthz and /readyz, e.g. 127.0.0.1:5001.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Upstream registry URL, e.g. https://registry-1.docker.io.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Folder for the disk cache, tag index and signing key.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain for the API listener (with --tls-key-file: TLS only).
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) of that certificate.
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
}

/// Where environment variables come from; tests pass a map instead of mutating
/// the process environment.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Config {
    pub(super) fn apply_env(&mut self, env: &dyn EnvSource, problems: &mut Vec<String>) {
        let set = |name: &str, slot: &mut String| {
            if let Some(v) = env.var(name) {
                *slot = v;
            }
        };
        set("REGCACHE_LISTEN", &mut self.listen);
        set("REGCACHE_ADMIN_LISTEN", &mut self.admin_listen);
        let di = self.upstream.default_index();
        if let Some(up) = self.upstream.0.get_mut(di) {
            set("REGCACHE_UPSTREAM", &mut up.url);
            if let Some(v) = env.var("REGCACHE_UPSTREAM_USERNAME") {
                up.username = Some(v);
            }
            if let Some(v) = env.var("REGCACHE_UPSTREAM_PASSWORD") {
                up.password = Some(v);
            }
        }
        set("REGCACHE_LOG_FORMAT", &mut self.log.format);
        set("REGCACHE_LOG", &mut self.log.level);
        set("REGCACHE_LOG_ACCESS", &mut self.log.access);
        if let Some(v) = env.var("REGCACHE_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = env.var("REGCACHE_TLS_CERT_FILE") {
            self.tls_cert_file = Some(v.into());
        }
        if let Some(v) = env.var("REGCACHE_TLS_KEY_FILE") {
            self.tls_key_file = Some(v.into());
        }
        if let Some(v) = env.var("REGCACHE_AUTH_MODE") {
            match v.as_str() {
                "none" => self.auth.mode = super::AuthMode::None,
                "htpasswd" => self.auth.mode = super::AuthMode::Htpasswd,
                "upstream" => self.auth.mode = super::AuthMode::Upstream,
                other => problems.push(format!(
                    "REGCACHE_AUTH_MODE = {other:?}: expected \"none\" or \"htpasswd\""
                )),
            }
        }
        if let Some(v) = env.var("REGCACHE_AUTH_HTPASSWD_FILE") {
            self.auth.htpasswd_file = Some(v.into());
        }
        let mut size = |name: &str, slot: &mut ByteSize| {
            if let Some(v) = env.var(name) {
                match ByteSize::parse(&v) {
                    Ok(b) => *slot = b,
                    Err(e) => problems.push(format!("{name}: {e}")),
                }
            }
        };
        size("REGCACHE_MEMORY_SIZE", &mut self.cache.memory_size);
        size("REGCACHE_DISK_SIZE", &mut self.cache.disk_size);
    }

    pub(super) fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(v) = &o.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &o.admin_listen {
            self.admin_listen = v.clone();
        }
        let di = self.upstream.default_index();
        if let (Some(v), Some(up)) = (&o.upstream, self.upstream.0.get_mut(di)) {
            up.url = v.clone();
        }
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = &o.tls_cert_file {
            self.tls_cert_file = Some(v.clone());
        }
        if let Some(v) = &o.tls_key_file {
            self.tls_key_file = Some(v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{config_file, env};
    use crate::config::{Config, Overrides};

    #[test]
    fn auth_mode_and_htpasswd_file_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("htpasswd");
        std::fs::write(&pw, format!("a:{}\n", bcrypt::hash("x", 4).unwrap())).unwrap();
        let e = env(&[
            ("REGCACHE_AUTH_MODE", "htpasswd"),
            ("REGCACHE_AUTH_HTPASSWD_FILE", pw.to_str().unwrap()),
        ]);
        let s = Config::load(None, &e, &Overrides::default()).unwrap();
        assert_eq!(s.auth.mode, crate::config::AuthMode::Htpasswd);
        assert_eq!(s.auth.htpasswd_file.as_deref(), Some(pw.as_path()));
        let err = Config::load(
            None,
            &env(&[("REGCACHE_AUTH_MODE", "ldap")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("REGCACHE_AUTH_MODE = \"ldap\""),
            "{err}"
        );
    }

    #[test]
    fn layers_apply_in_order() {
        let (_dir, file) = config_file(
            "listen = \"127.0.0.1:7000\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[cache]\ndisk_size = \"2GiB\"\n",
        );
        let e = env(&[
            ("REGCACHE_LISTEN", "127.0.0.1:7001"),
            ("REGCACHE_UPSTREAM", "http://127.0.0.1:10"),
        ]);
        let s = Config::load(Some(&file), &e, &Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(s.default_upstream().url.as_str(), "http://127.0.0.1:10/");
        assert_eq!(s.disk_size, 2 << 30);
        let o = Overrides {
            listen: Some("127.0.0.1:7002".into()),
            upstream: Some("http://127.0.0.1:11".into()),
            ..Overrides::default()
        };
        let s = Config::load(Some(&file), &e, &o).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7002");
        assert_eq!(s.default_upstream().url.as_str(), "http://127.0.0.1:11/");
        assert_eq!(s.default_upstream().name, "127.0.0.1:11");
    }
}

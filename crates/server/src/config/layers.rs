//! The layers over the file: environment variables, then command-line flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{ByteSize, Config};

/// Overrides from the command line and their environment variables (`None`
/// = neither given; a flag wins over its variable); `regcache serve`'s and
/// `regcache check`'s flags. clap reads the variables, so `--help` lists
/// them; [`ServeEnv`] hides those same variables from the [`EnvSource`]
/// layer so they are not applied twice. The two secrets
/// (`REGCACHE_UPSTREAM_PASSWORD`, `REGCACHE_ADMIN_TOKEN`) have no flag (a
/// flag shows in `ps`): the environment layer reads them.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Address for registry clients, e.g. 0.0.0.0:5000.
    #[arg(long, value_name = "ADDR", env = "REGCACHE_LISTEN")]
    pub listen: Option<String>,
    /// Address for /metrics, /healthz and /readyz, e.g. 127.0.0.1:5001.
    #[arg(long, value_name = "ADDR", env = "REGCACHE_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Upstream registry URL (the default upstream's), e.g. https://registry-1.docker.io.
    #[arg(long, value_name = "URL", env = "REGCACHE_UPSTREAM")]
    pub upstream: Option<String>,
    /// The registry name clients use for the default upstream (containerd's
    /// ?ns=, path prefixes, policies). Default: docker.io for Docker Hub's
    /// URLs, else the URL's host[:port].
    #[arg(long, value_name = "NAME", env = "REGCACHE_UPSTREAM_NAME")]
    pub upstream_name: Option<String>,
    /// User name regcache logs in to the default upstream with (the password:
    /// REGCACHE_UPSTREAM_PASSWORD or the file's password_file/password_env).
    #[arg(long, value_name = "USER", env = "REGCACHE_UPSTREAM_USERNAME")]
    pub upstream_username: Option<String>,
    /// Folder for the disk cache, tag index and signing key.
    #[arg(long, value_name = "DIR", env = "REGCACHE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain for the API listener (with --tls-key-file: TLS only).
    #[arg(long, value_name = "FILE", env = "REGCACHE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) of that certificate.
    #[arg(long, value_name = "FILE", env = "REGCACHE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT", env = "REGCACHE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or regcache_server=debug,info.
    #[arg(long, value_name = "FILTER", env = "REGCACHE_LOG")]
    pub log_level: Option<String>,
    /// Memory tier budget, e.g. 256MiB (units: KB/MB/GB = 10^3/10^6/10^9, KiB/MiB/GiB = 2^10/2^20/2^30).
    #[arg(long, value_name = "SIZE", env = "REGCACHE_MEMORY_SIZE")]
    pub memory_size: Option<String>,
    /// Disk tier budget, e.g. 50GiB or 1.5TB.
    #[arg(long, value_name = "SIZE", env = "REGCACHE_DISK_SIZE")]
    pub disk_size: Option<String>,
    /// Client authentication: none, htpasswd or upstream.
    #[arg(long, value_name = "MODE", env = "REGCACHE_AUTH_MODE")]
    pub auth_mode: Option<String>,
    /// htpasswd file of the users ([auth] mode = "htpasswd").
    #[arg(long, value_name = "FILE", env = "REGCACHE_AUTH_HTPASSWD_FILE")]
    pub auth_htpasswd_file: Option<PathBuf>,
}

/// The environment variables [`Overrides`] reads (through clap).
pub const OVERRIDE_ENV_VARS: [&str; 14] = [
    "REGCACHE_LISTEN",
    "REGCACHE_ADMIN_LISTEN",
    "REGCACHE_UPSTREAM",
    "REGCACHE_UPSTREAM_NAME",
    "REGCACHE_UPSTREAM_USERNAME",
    "REGCACHE_DATA_DIR",
    "REGCACHE_TLS_CERT_FILE",
    "REGCACHE_TLS_KEY_FILE",
    "REGCACHE_LOG_FORMAT",
    "REGCACHE_LOG",
    "REGCACHE_MEMORY_SIZE",
    "REGCACHE_DISK_SIZE",
    "REGCACHE_AUTH_MODE",
    "REGCACHE_AUTH_HTPASSWD_FILE",
];

/// The process environment without the variables clap already read into
/// [`Overrides`]: what `serve` and `check` pass as their [`EnvSource`].
#[derive(Debug, Clone, Copy)]
pub struct ServeEnv;

impl EnvSource for ServeEnv {
    fn var(&self, name: &str) -> Option<String> {
        if OVERRIDE_ENV_VARS.contains(&name) {
            return None;
        }
        ProcessEnv.var(name)
    }
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
        if let Some(v) = env.var("REGCACHE_KERNEL_TLS") {
            match v.as_str() {
                "auto" => self.kernel_tls = crate::kernel_tls::KernelTls::Auto,
                "off" => self.kernel_tls = crate::kernel_tls::KernelTls::Off,
                other => problems.push(format!(
                    "REGCACHE_KERNEL_TLS: {other:?} is neither \"auto\" nor \"off\""
                )),
            }
        }
        if let Some(v) = env.var("REGCACHE_AUTH_MODE") {
            self.set_auth_mode("REGCACHE_AUTH_MODE", &v, problems);
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

    fn set_auth_mode(&mut self, what: &str, v: &str, problems: &mut Vec<String>) {
        match v {
            "none" => self.auth.mode = super::AuthMode::None,
            "htpasswd" => self.auth.mode = super::AuthMode::Htpasswd,
            "upstream" => self.auth.mode = super::AuthMode::Upstream,
            other => problems.push(format!(
                "{what} = {other:?}: expected \"none\", \"htpasswd\" or \"upstream\""
            )),
        }
    }

    pub(super) fn apply_overrides(&mut self, o: &Overrides, problems: &mut Vec<String>) {
        if let Some(v) = &o.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &o.admin_listen {
            self.admin_listen = v.clone();
        }
        let di = self.upstream.default_index();
        if let Some(up) = self.upstream.0.get_mut(di) {
            if let Some(v) = &o.upstream {
                up.url = v.clone();
            }
            if let Some(v) = &o.upstream_name {
                up.name = Some(v.clone());
            }
            if let Some(v) = &o.upstream_username {
                up.username = Some(v.clone());
            }
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
        if let Some(v) = &o.log_format {
            self.log.format = v.clone();
        }
        if let Some(v) = &o.log_level {
            self.log.level = v.clone();
        }
        for (what, value, slot) in [
            (
                "--memory-size (REGCACHE_MEMORY_SIZE)",
                &o.memory_size,
                &mut self.cache.memory_size,
            ),
            (
                "--disk-size (REGCACHE_DISK_SIZE)",
                &o.disk_size,
                &mut self.cache.disk_size,
            ),
        ] {
            if let Some(v) = value {
                match ByteSize::parse(v) {
                    Ok(b) => *slot = b,
                    Err(e) => problems.push(format!("{what}: {e}")),
                }
            }
        }
        if let Some(v) = &o.auth_mode {
            self.set_auth_mode("--auth-mode (REGCACHE_AUTH_MODE)", v, problems);
        }
        if let Some(v) = &o.auth_htpasswd_file {
            self.auth.htpasswd_file = Some(v.clone());
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

    #[test]
    fn upstream_name_defaults_and_the_flag() {
        let named = |url: &str, name: Option<&str>| {
            let o = Overrides {
                upstream: Some(url.into()),
                upstream_name: name.map(str::to_owned),
                ..Overrides::default()
            };
            Config::load(None, &env(&[]), &o)
                .unwrap()
                .default_upstream()
                .name
                .clone()
        };
        assert_eq!(named("https://registry-1.docker.io", None), "docker.io");
        assert_eq!(named("https://index.docker.io", None), "docker.io");
        assert_eq!(named("https://docker.io", None), "docker.io");
        assert_eq!(named("http://127.0.0.1:5500", None), "127.0.0.1:5500");
        assert_eq!(named("https://quay.io", None), "quay.io");
        assert_eq!(
            named("http://127.0.0.1:5500", Some("docker.io")),
            "docker.io"
        );
        // The flag wins over the file's name.
        let (_dir, file) =
            config_file("[upstream]\nname = \"mirror\"\nurl = \"http://127.0.0.1:9\"\n");
        let o = Overrides {
            upstream_name: Some("docker.io".into()),
            ..Overrides::default()
        };
        let s = Config::load(Some(&file), &env(&[]), &o).unwrap();
        assert_eq!(s.default_upstream().name, "docker.io");
        // Sizes from flags go through the same parser, named in problems.
        let o = Overrides {
            disk_size: Some("1.5GiB".into()),
            memory_size: Some("12 parsecs".into()),
            ..Overrides::default()
        };
        let err = Config::load(None, &env(&[]), &o).unwrap_err();
        assert!(
            err.to_string()
                .contains("--memory-size (REGCACHE_MEMORY_SIZE): \"12 parsecs\""),
            "{err}"
        );
    }

    #[test]
    fn serve_env_hides_the_variables_clap_reads() {
        use crate::config::{EnvSource, OVERRIDE_ENV_VARS, ServeEnv};
        for var in OVERRIDE_ENV_VARS {
            assert_eq!(ServeEnv.var(var), None, "{var}");
        }
        assert_eq!(ServeEnv.var("PATH"), std::env::var("PATH").ok());
    }
}

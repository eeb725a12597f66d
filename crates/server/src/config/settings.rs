//! The validated, ready-to-use configuration.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use regcache_upstream::{ClientConfig, Credentials, RetryConfig};

/// The validated, ready-to-use configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_json: bool,
    pub log_level: String,
    /// `[log] access`.
    pub log_access: crate::access_log::AccessLevel,
    pub memory_size: u64,
    pub memory_max_object: u64,
    pub disk_size: u64,
    /// Every upstream; `upstreams[default_upstream]` is the default.
    pub upstreams: Vec<UpstreamSettings>,
    pub default_upstream: usize,
    pub signing_key_path: PathBuf,
    pub policies: crate::policy::Policies,
    /// TLS for the API listener; `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Client authentication and access rules.
    pub auth: super::AuthSettings,
    /// Connection limits and timeouts (`[limits]`).
    pub limits: super::ConnLimits,
    /// The admin listener's bearer token (redacted in `Debug`).
    pub admin_token: Option<super::AdminToken>,
    /// `[cluster]`; `None`: a single replica.
    pub cluster: Option<super::ClusterSettings>,
    /// `[shared]`; `None`: no shared tier.
    pub shared: Option<super::SharedSettings>,
}

/// The API listener's certificate and key, loaded and checked against each
/// other at start-up (a key that does not match its certificate is a
/// configuration problem, not a failure of the first handshake).
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Certificates in `cert_file` (the leaf and any intermediates).
    pub chain_len: usize,
    /// `kernel_tls`: kernel TLS where the kernel has it, or never.
    pub kernel: crate::kernel_tls::KernelTls,
    /// rustls with the ring provider, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`;
    /// its certificate comes from `resolver`.
    pub server_config: Arc<rustls::ServerConfig>,
    /// The certificate new handshakes get; a reload (SIGHUP) swaps it.
    pub resolver: Arc<crate::tls::CertResolver>,
}

impl fmt::Debug for TlsSettings {
    // Paths only: the server config holds the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("chain_len", &self.chain_len)
            .field("kernel", &self.kernel)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[derive(Clone)]
pub struct UpstreamSettings {
    pub name: String,
    pub url: url::Url,
    pub aliases: Vec<String>,
    /// Docker Hub: one-component names get `library/` (official images).
    pub docker_hub: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tag_ttl: Duration,
    pub stale_if_error: Duration,
    /// Past `tag_ttl` and within this, a tag is served from the cache while a
    /// background HEAD revalidates it; zero turns it off.
    pub stale_while_revalidate: Duration,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    /// A body pausing longer fails (and a blob fill resumes).
    pub body_stall_timeout: Duration,
    pub retry_attempts: u32,
    /// Token realm hosts besides the upstream's origin that may receive its
    /// credentials (the client's `auth_realms`).
    pub auth_realms: Vec<String>,
    /// Writes through regcache: off, the client's credentials, or regcache's.
    pub writes: crate::writes::Forwarding,
    /// `/v2/_catalog`: off, the client's credentials, or regcache's.
    pub catalog: crate::writes::Forwarding,
    /// Consecutive failed calls that open the circuit breaker (0: off).
    pub breaker_failures: u32,
    /// How often the open breaker probes the upstream.
    pub breaker_probe: Duration,
}

impl fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tag_ttl", &self.tag_ttl)
            .field("stale_if_error", &self.stale_if_error)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("writes", &self.writes)
            .field("catalog", &self.catalog)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_probe", &self.breaker_probe)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The upstream for requests that name no registry.
    pub fn default_upstream(&self) -> &UpstreamSettings {
        &self.upstreams[self
            .default_upstream
            .min(self.upstreams.len().saturating_sub(1))]
    }
}

impl UpstreamSettings {
    /// The registry client's configuration for this upstream: its timeouts,
    /// retries (at least one attempt) and credentials (both, or anonymous).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.name.clone(), self.url.clone());
        config.connect_timeout = self.connect_timeout;
        config.first_byte_timeout = self.first_byte_timeout;
        config.body_stall_timeout = self.body_stall_timeout;
        config.retry = RetryConfig {
            max_attempts: self.retry_attempts.max(1),
            ..RetryConfig::default()
        };
        config.auth_realms = self.auth_realms.clone();
        if let (Some(user), Some(pass)) = (&self.username, &self.password) {
            config = config.with_credentials(Credentials::new(user.clone(), pass.clone()));
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::{config_file, env};
    use crate::config::{Config, Overrides};

    #[test]
    fn client_config_carries_the_upstream_settings() {
        let (_dir, file) = config_file(
            "[upstream]\nname = \"mirror\"\nurl = \"http://127.0.0.1:9\"\n\
             connect_timeout_secs = 2\nfirst_byte_timeout_secs = 3\nretry_attempts = 0\n\
             body_stall_timeout_secs = 4\n\
             username = \"bob\"\npassword_env = \"RC_PW\"\n",
        );
        let e = env(&[("RC_PW", "s3cret")]);
        let s = Config::load(Some(&file), &e, &Overrides::default()).unwrap();
        let c = s.default_upstream().client_config();
        assert_eq!(c.name, "mirror");
        assert_eq!(c.url.as_str(), "http://127.0.0.1:9/");
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.first_byte_timeout, Duration::from_secs(3));
        assert_eq!(c.body_stall_timeout, Duration::from_secs(4));
        assert_eq!(c.retry.max_attempts, 1, "0 attempts still means one");
        let creds = c.credentials.unwrap();
        assert_eq!(creds.username, "bob");
        assert_eq!(creds.password.expose(), "s3cret");

        let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        let c = s.default_upstream().client_config();
        assert!(c.credentials.is_none());
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.body_stall_timeout, Duration::from_secs(60));
    }
}

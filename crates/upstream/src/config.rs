//! Configuration of one upstream registry: where it is, how to authenticate,
//! how long to wait and how to retry, plus the [`Secret`] type that holds
//! every password and token so none can reach a log by accident.

use std::fmt;
use std::time::Duration;

use url::Url;

/// A password or bearer token.
///
/// `Debug` prints `<redacted>` and there is deliberately no `Display`, so a
/// secret can only be read through [`Secret::expose`], which is easy to grep
/// for. Used for configured passwords and for every token the client holds.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only to put it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// Username and password for an upstream. They are sent as HTTP Basic
/// credentials either to the token realm named by a `Bearer` challenge
/// (spec §5.9) or to the registry itself when it issues a `Basic` challenge
/// (htpasswd). `Debug` shows the username only.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }
}

/// Which failures are retried, how often and how long we wait.
///
/// Retried: connection failures, timeouts, `500`, `502`, `503`, `504` and
/// `429`, and only for idempotent requests (`GET`/`HEAD`, or what the caller
/// marks idempotent) whose body can be sent again. A connection that could
/// not be established is retried for any method (nothing reached the
/// server). Nothing is retried once a response body has been handed to the
/// caller: a blob stream that breaks is the caller's error to handle.
///
/// The delay before retry *n* (1-based) is `base_backoff * 2^(n-1)`, capped
/// at `max_backoff`, with "equal jitter" (a random value between half and
/// all of it). A `Retry-After: <seconds>` on `429`/`503` replaces the
/// computed delay when it is at most `max_retry_after`; a longer one (or an
/// HTTP date) means "don't retry": the error is handed back with its
/// `retry_after` so the server can relay it. No retry starts if its delay
/// would end after `max_total` from the first attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in total, the first included; `1` disables retries.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub base_backoff: Duration,
    /// Upper bound of one computed delay.
    pub max_backoff: Duration,
    /// Time budget for all attempts and delays of one request.
    pub max_total: Duration,
    /// Longest `Retry-After` we are willing to wait for.
    pub max_retry_after: Duration,
}

impl RetryConfig {
    /// One attempt, no retries.
    pub fn none() -> Self {
        RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(4),
            max_total: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

/// One upstream registry.
///
/// `Default` is anonymous Docker Hub (`https://registry-1.docker.io`).
/// `Debug` redacts the password (and any password embedded in `url`).
#[derive(Clone)]
pub struct ClientConfig {
    /// Short name used in logs, errors and metrics (`docker.io`).
    pub name: String,
    /// Base URL of the registry: scheme, host and optional port. Request
    /// paths (`/v2/…`) are absolute, so any path here is ignored.
    pub url: Url,
    /// Credentials for the token realm or for Basic auth; `None` = anonymous.
    pub credentials: Option<Credentials>,
    /// Limit for establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Limit from sending a request to receiving the response headers
    /// (connecting included). A stalled upstream fails with
    /// [`crate::UpstreamError::Timeout`] after this long.
    pub first_byte_timeout: Duration,
    /// Longest pause between two chunks of a response body: a body that
    /// stalls longer fails with [`crate::UpstreamError::Timeout`] (phase
    /// `Body`). Bounds a stalled blob download without bounding a large but
    /// moving one.
    pub body_stall_timeout: Duration,
    /// Retry policy; see [`RetryConfig`].
    pub retry: RetryConfig,
    /// Redirects followed per request (blob downloads go to a CDN: 1 hop).
    pub max_redirects: usize,
    /// Honour `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the environment.
    pub use_env_proxy: bool,
    /// Token realms, besides the upstream's own origin, that may receive
    /// `credentials` (`host` or `host:port`; a bare host matches any port).
    /// A `Bearer` challenge naming any other realm gets an anonymous token
    /// request. A listed realm gets credentials only over `https`, or over
    /// plain `http` when the upstream itself is plain `http` on the same host.
    pub auth_realms: Vec<String>,
    /// Log failed exchanges at debug instead of warn (a circuit breaker's
    /// probe, which fails every few seconds while the upstream is down and
    /// whose outage the breaker logs once).
    pub quiet_failures: bool,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("redacted"));
        }
        f.debug_struct("ClientConfig")
            .field("name", &self.name)
            .field("url", &url.as_str())
            .field("credentials", &self.credentials)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("body_stall_timeout", &self.body_stall_timeout)
            .field("retry", &self.retry)
            .field("max_redirects", &self.max_redirects)
            .field("use_env_proxy", &self.use_env_proxy)
            .field("auth_realms", &self.auth_realms)
            .field("quiet_failures", &self.quiet_failures)
            .finish()
    }
}

impl ClientConfig {
    /// An anonymous upstream with default timeouts and retries.
    pub fn new(name: impl Into<String>, url: Url) -> Self {
        ClientConfig {
            name: name.into(),
            url,
            credentials: None,
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(30),
            body_stall_timeout: Duration::from_secs(60),
            retry: RetryConfig::default(),
            max_redirects: 5,
            use_env_proxy: true,
            auth_realms: Vec::new(),
            quiet_failures: false,
        }
    }

    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        #[allow(clippy::expect_used)]
        let url = Url::parse("https://registry-1.docker.io").expect("constant URL parses");
        ClientConfig::new("docker.io", url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let creds = Credentials::new("alice", "pw-SECRET-1");
        let mut config = ClientConfig::default().with_credentials(creds.clone());
        config.url = Url::parse("https://bob:pw-SECRET-2@registry.example").unwrap();
        let shown = format!("{creds:?} {config:?} {:?}", Secret::new("tok-SECRET-3"));
        assert!(shown.contains("alice"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        for secret in ["pw-SECRET-1", "pw-SECRET-2", "tok-SECRET-3"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn defaults_are_docker_hub() {
        let c = ClientConfig::default();
        assert_eq!(c.url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(c.name, "docker.io");
        assert!(c.credentials.is_none());
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(RetryConfig::none().max_attempts, 1);
    }
}

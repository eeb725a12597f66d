//! `[limits]`: what one connection and one client address may hold, and for
//! how long a client may keep the server waiting; and the admin token.
//!
//! Defaults keep one host from filling the server (256 of 4,096 connections
//! per client address) and close connections that send nothing within
//! seconds. Every key has an upper bound, checked with the rest of the file.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::EnvSource;

/// `[limits]` as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Connections served at once on the API listener; beyond it, new
    /// connections wait in the kernel's accept queue. `/readyz` answers 503
    /// from 90% of it.
    pub max_connections: u64,
    /// Connections one client address (the whole address, IPv4 or IPv6)
    /// may hold open; more are closed at once. 0: no per-client limit.
    pub max_connections_per_client: u64,
    /// Requests per second one client address may make (a token bucket
    /// refilled at this rate); beyond it, 429 `TOOMANYREQUESTS` with
    /// `Retry-After`. 0: no rate limit.
    pub requests_per_second_per_client: u64,
    /// Requests a client may make at once above that rate (the bucket's size).
    pub request_burst_per_client: u64,
    /// A new connection must send a whole request head (or, with TLS, finish
    /// its handshake) within this, counted from accept.
    pub header_timeout_secs: u64,
    /// A kept-alive connection with no request for this long is closed.
    /// (Connections hyper serves, after a push or over TLS, use
    /// `header_timeout_secs` for this.)
    pub idle_timeout_secs: u64,
    /// A response whose client reads nothing for this long is cut.
    pub write_timeout_secs: u64,
    /// A request body from which nothing arrives for this long is abandoned
    /// (408 when the client can still be told).
    pub body_timeout_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: 4096,
            max_connections_per_client: 256,
            requests_per_second_per_client: 200,
            request_burst_per_client: 400,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            write_timeout_secs: 60,
            body_timeout_secs: 60,
        }
    }
}

/// `[admin]` as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// A file holding the bearer token that the admin listener's
    /// state-changing endpoints (`POST /tls/reload`, …) require
    /// (`REGCACHE_ADMIN_TOKEN` wins over it). Without a token they are
    /// allowed only when `admin_listen` is a loopback address.
    pub token_file: Option<PathBuf>,
}

/// The validated limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// `None`: no per-client limit.
    pub max_connections_per_client: Option<usize>,
    /// `None`: no rate limit; else (per second, burst).
    pub rate: Option<(u32, u32)>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub body_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        let mut problems = Vec::new();
        let limits = LimitsSection::default().validate(&mut problems);
        debug_assert!(problems.is_empty(), "{problems:?}");
        limits
    }
}

/// Upper bounds: far above any sane setting, low enough that a typo
/// (an extra zero or three) is caught rather than obeyed.
const MAX_CONNECTIONS: u64 = 1_000_000;
const MAX_RATE: u64 = 1_000_000;
const MAX_TIMEOUT_SECS: u64 = 3600;
const MAX_HEADER_TIMEOUT_SECS: u64 = 300;

impl LimitsSection {
    pub(super) fn validate(&self, problems: &mut Vec<String>) -> ConnLimits {
        let mut bounded = |key: &str, v: u64, min: u64, max: u64| -> u64 {
            if v < min || v > max {
                problems.push(format!("limits.{key} = {v} must be from {min} to {max}"));
                return v.clamp(min, max);
            }
            v
        };
        let max_connections = bounded("max_connections", self.max_connections, 1, MAX_CONNECTIONS);
        let per_client = bounded(
            "max_connections_per_client",
            self.max_connections_per_client,
            0,
            MAX_CONNECTIONS,
        );
        let rps = bounded(
            "requests_per_second_per_client",
            self.requests_per_second_per_client,
            0,
            MAX_RATE,
        );
        let burst = bounded(
            "request_burst_per_client",
            self.request_burst_per_client,
            0,
            MAX_RATE,
        );
        let secs = |key: &str, v: u64, max: u64, problems: &mut Vec<String>| {
            if v == 0 || v > max {
                problems.push(format!(
                    "limits.{key} = {v} must be from 1 to {max} (seconds)"
                ));
            }
            Duration::from_secs(v.clamp(1, max))
        };
        let header_timeout = secs(
            "header_timeout_secs",
            self.header_timeout_secs,
            MAX_HEADER_TIMEOUT_SECS,
            problems,
        );
        let idle_timeout = secs(
            "idle_timeout_secs",
            self.idle_timeout_secs,
            MAX_TIMEOUT_SECS,
            problems,
        );
        let write_timeout = secs(
            "write_timeout_secs",
            self.write_timeout_secs,
            MAX_TIMEOUT_SECS,
            problems,
        );
        let body_timeout = secs(
            "body_timeout_secs",
            self.body_timeout_secs,
            MAX_TIMEOUT_SECS,
            problems,
        );
        if per_client > max_connections {
            problems.push(format!(
                "limits.max_connections_per_client = {per_client} exceeds limits.max_connections = {max_connections}"
            ));
        }
        if rps > 0 && burst < rps.min(1) {
            problems.push("limits.request_burst_per_client must be at least 1 when requests_per_second_per_client is set".into());
        }
        let rate = (rps > 0).then(|| {
            (
                u32::try_from(rps).unwrap_or(u32::MAX),
                u32::try_from(burst.max(1)).unwrap_or(u32::MAX),
            )
        });
        ConnLimits {
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            max_connections_per_client: (per_client > 0)
                .then(|| usize::try_from(per_client).unwrap_or(usize::MAX)),
            rate,
            header_timeout,
            idle_timeout,
            write_timeout,
            body_timeout,
        }
    }
}

/// The bearer token the admin listener's state-changing endpoints require.
/// Never printed: `Debug` says only that there is one.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Shorter tokens are refused: the token guards certificate reloads and
    /// (to come) purges on a network listener.
    pub const MIN_LEN: usize = 16;
    pub const MAX_LEN: usize = 4096;

    pub fn new(token: String) -> Result<AdminToken, String> {
        if token.len() < Self::MIN_LEN {
            return Err(format!(
                "is shorter than {} characters (try `openssl rand -hex 32`)",
                Self::MIN_LEN
            ));
        }
        if token.len() > Self::MAX_LEN {
            return Err(format!("is longer than {} characters", Self::MAX_LEN));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
        }
        Ok(AdminToken(token))
    }

    /// The token itself, for a client of the admin API (`regcache purge`,
    /// `prefetch`) to send. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token, in time that does not depend on
    /// where they differ (both are hashed first, so not on their lengths either).
    /// Whether `other` is the same token (a reload's comparison).
    pub fn same_as(&self, other: &AdminToken) -> bool {
        self.matches(other.0.as_bytes())
    }

    pub fn matches(&self, presented: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(presented);
        a.ct_eq(&b).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The admin token from `REGCACHE_ADMIN_TOKEN` (first) or `[admin] token_file`.
pub(super) fn load_admin_token(
    file: Option<&PathBuf>,
    env: &dyn EnvSource,
    problems: &mut Vec<String>,
) -> Option<AdminToken> {
    let (what, text) = if let Some(v) = env.var("REGCACHE_ADMIN_TOKEN") {
        ("REGCACHE_ADMIN_TOKEN".to_owned(), v)
    } else if let Some(path) = file {
        let what = format!("admin.token_file {}", path.display());
        match std::fs::read_to_string(path) {
            Ok(s) => (what, s),
            Err(e) => {
                problems.push(format!("{what}: cannot read: {e}"));
                return None;
            }
        }
    } else {
        return None;
    };
    match AdminToken::new(text.trim_end_matches(['\r', '\n']).to_owned()) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(format!("{what}: the admin token {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{config_file, env};
    use crate::config::{Config, Overrides};

    #[test]
    fn defaults_and_bounds() {
        let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.limits, ConnLimits::default());
        assert_eq!(s.limits.max_connections, 4096);
        assert_eq!(s.limits.max_connections_per_client, Some(256));
        assert_eq!(s.limits.rate, Some((200, 400)));
        assert_eq!(s.limits.header_timeout, Duration::from_secs(10));
        assert!(s.admin_token.is_none());

        let (_d, f) = config_file(
            "[limits]\nmax_connections = 10\nmax_connections_per_client = 11\n\
             header_timeout_secs = 0\nwrite_timeout_secs = 99999\nrequests_per_second_per_client = 5000000\n",
        );
        let err = Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        for key in [
            "max_connections_per_client = 11 exceeds",
            "header_timeout_secs = 0",
            "write_timeout_secs = 99999",
            "requests_per_second_per_client = 5000000",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }

        let (_d, f) = config_file(
            "[limits]\nmax_connections_per_client = 0\nrequests_per_second_per_client = 0\n",
        );
        let s = Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.limits.max_connections_per_client, None);
        assert_eq!(s.limits.rate, None);
    }

    #[test]
    fn admin_token_from_file_or_env_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "0123456789abcdef0123\n").unwrap();
        let (_d, f) = config_file(&format!(
            "[admin]\ntoken_file = {:?}\n",
            tok.display().to_string()
        ));
        let s = Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap();
        let t = s.admin_token.clone().unwrap();
        assert!(t.matches(b"0123456789abcdef0123"));
        assert!(!t.matches(b"0123456789abcdef012"));
        assert!(!t.matches(b""));
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
        // The environment wins over the file.
        let e = env(&[("REGCACHE_ADMIN_TOKEN", "ffffffffffffffffffff")]);
        let s = Config::load(Some(&f), &e, &Overrides::default()).unwrap();
        assert!(s.admin_token.unwrap().matches(b"ffffffffffffffffffff"));
        // Too short, and the message does not echo it.
        let e = env(&[("REGCACHE_ADMIN_TOKEN", "short")]);
        let err = Config::load(None, &e, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("shorter than 16"), "{err}");
        assert!(!err.to_string().contains("short\""), "{err}");
        let (_d, f) = config_file("[admin]\ntoken_file = \"/nonexistent/token\"\n");
        let err = Config::load(Some(&f), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}

//! The cache subcommands: `regcache ls`, `regcache purge`, `regcache prefetch`.
//!
//! They talk to a running instance through its admin API (`--admin URL`,
//! default the configured `admin_listen`, `http://127.0.0.1:5001`), sending
//! the admin token from `--token-file`, `REGCACHE_ADMIN_TOKEN` or the
//! configuration's `[admin] token_file`. `ls` and `purge` also work on a
//! data dir without a running regcache (`--data-dir DIR`, or `--offline`
//! with the configuration's `data_dir`); see [`crate::cache_admin::local`].
//!
//! Exit status (sysexits, as `fsck`): 0 done; 1 some images failed
//! (prefetch) or removals failed (purge); 64 bad flags, configuration or
//! image reference; 66 no cache there / nothing cached under that name;
//! 69 the admin API can't be reached; 74 I/O error; 75 (offline purge) a
//! running regcache holds the data dir; 77 the admin token was refused.

use std::path::PathBuf;
use std::time::Duration;

use crate::cache_admin::imageref::UpstreamNames;
use crate::config::{Config, Overrides, ProcessEnv, Settings};

pub mod ls;
pub mod prefetch;
pub mod progress;
pub mod purge;

pub use crate::exit::{
    EX_CONFIG, EX_IOERR, EX_NOINPUT, EX_NOPERM, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE,
};

/// A failed subcommand: its exit status and the message for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Where the cache is: flags shared by the cache subcommands.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Where {
    /// The running regcache's admin API (default: admin_listen from the
    /// configuration, http://127.0.0.1:5001).
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// File holding the admin token (default: REGCACHE_ADMIN_TOKEN, then the
    /// configuration's [admin] token_file).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// TOML configuration file (admin_listen, the admin token, upstreams, data_dir).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Flags of the subcommands that also work on a data dir.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Offline {
    /// Work on this data dir instead of a running instance (ls: read-only,
    /// next to a running regcache too; purge: only while none runs there).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Work on the configuration's data_dir instead of a running instance.
    #[arg(long)]
    pub offline: bool,
}

impl Offline {
    pub fn is_offline(&self) -> bool {
        self.offline || self.data_dir.is_some()
    }
}

/// Defaults, the file and the environment (as `serve` reads them), with
/// `data_dir` overridden.
pub fn settings(w: &Where, data_dir: Option<PathBuf>) -> Result<Settings, Failure> {
    let overrides = Overrides {
        data_dir,
        ..Overrides::default()
    };
    Config::load(w.config.as_deref(), &ProcessEnv, &overrides)
        .map_err(|e| Failure::new(EX_CONFIG, e.to_string().trim_end().to_owned()))
}

/// The upstreams of a configuration as image references name them.
pub fn upstream_names(settings: &Settings) -> (Vec<UpstreamNames>, usize) {
    let names = settings
        .upstreams
        .iter()
        .map(|u| UpstreamNames {
            name: u.name.clone(),
            host: match u.url.port() {
                Some(p) => format!("{}:{p}", u.url.host_str().unwrap_or_default()),
                None => u.url.host_str().unwrap_or_default().to_owned(),
            },
            aliases: u.aliases.clone(),
            docker_hub: u.docker_hub,
        })
        .collect();
    (names, settings.default_upstream)
}

/// A client of a running instance's admin API.
#[derive(Debug)]
pub struct AdminClient {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(w: &Where, settings: &Settings) -> Result<AdminClient, Failure> {
        let base = match &w.admin {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let mut addr = settings.admin_listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}")
            }
        };
        let token = match &w.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Failure::new(
                            EX_NOINPUT,
                            format!("cannot read --token-file {}: {e}", path.display()),
                        )
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => settings.admin_token.as_ref().map(|t| t.expose().to_owned()),
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Failure::new(EX_IOERR, format!("cannot make an HTTP client: {e}")))?;
        Ok(AdminClient { base, token, http })
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.auth(self.http.get(format!("{}{path}", self.base)))
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.auth(self.http.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `req`; a refused connection is 69, an error status its
    /// registry error's message with a status mapped to an exit code.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let resp = req.send().await.map_err(|e| {
            Failure::new(
                EX_UNAVAILABLE,
                format!(
                    "cannot reach regcache's admin API at {}: {}; is regcache running there? (--admin URL names another; --data-dir DIR works on a stopped instance's data)",
                    self.base,
                    crate::error::chain(&e)
                ),
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<regcache_formats::ErrorEnvelope>(&text)
            .ok()
            .and_then(|env| env.errors.into_iter().next())
            .map(|e| format!("{}: {}", e.code.as_str(), e.message))
            .unwrap_or_else(|| text.trim().chars().take(500).collect());
        let code = match status.as_u16() {
            400 => EX_USAGE,
            404 => EX_NOINPUT,
            401 | 403 => EX_NOPERM,
            _ => EX_UNAVAILABLE,
        };
        Err(Failure::new(
            code,
            format!("the admin API answered {status}: {message}"),
        ))
    }
}

/// A single-threaded runtime for a subcommand's HTTP and store work.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(EX_IOERR, format!("cannot start the runtime: {e}")))
}

/// Unix seconds as `2026-12-03 09:41:02Z (12s ago)`.
pub fn when(unix: Option<u64>, now: u64) -> String {
    let Some(unix) = unix else {
        return "-".into();
    };
    let stamp = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(0))
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string());
    let ago = now.saturating_sub(unix);
    let ago = match ago {
        0..60 => format!("{ago}s"),
        60..3600 => format!("{}m", ago / 60),
        3600..86400 => format!("{}h", ago / 3600),
        _ => format!("{}d", ago / 86400),
    };
    format!("{stamp} ({ago} ago)")
}

/// `DURATION` as `--older-than` takes it: a number and a unit, `s`, `m`,
/// `h`, `d` or `w` (`30d`, `12h`, `90s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("bad duration {s:?}: expected a number and a unit (s, m, h, d, w), e.g. 30d");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("2d").unwrap(),
            Duration::from_secs(2 * 86400)
        );
        for bad in ["", "5", "d", "5x", "-5s", "1.5h"] {
            assert!(
                parse_duration(bad).unwrap_err().contains("bad duration"),
                "{bad}"
            );
        }
        assert_eq!(when(Some(0), 90), "1970-01-01 00:00:00Z (1m ago)");
        assert_eq!(when(None, 90), "-");
    }
}

//! `regcache serve` with per-repository `[[policy]]` rules and a Schema 1
//! signing key: [`PolicyRegcache`], a thin layer over [`crate::Regcache`].
//!
//! [`PolicyRegcacheOptions`] renders the `[[policy]]` tables and the
//! `[schema1] signing_key` into [`RegcacheOptions::extra_toml`]; the process
//! itself (config file, ports, readiness, log, stop/restart/kill) is
//! [`Regcache`]'s. The configuration file names the data dir, so that the
//! operator subcommands (`regcache mappings export --config FILE`,
//! `regcache policy explain REPO --config FILE`) read the same store as the
//! server.
//!
//! ```no_run
//! use regcache_tests::policy_support::{PolicyRegcache, PolicyRegcacheOptions, PolicyRule};
//! # let upstream_url = "http://127.0.0.1:5000".to_owned();
//! let mut regcache = PolicyRegcache::start(
//!     PolicyRegcacheOptions::new(upstream_url)
//!         .rule(PolicyRule::new(&["legacy/*"]).schema1("reject")),
//! );
//! regcache.stop();        // SIGTERM, waits for exit 0
//! regcache.start_again(); // same config and data dir
//! // ... killed when dropped.
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::regcache::{Regcache, RegcacheOptions};

/// One `[[policy]]` table. `None` leaves the key out (regcache's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRule {
    pub repositories: Vec<String>,
    pub upstreams: Option<Vec<String>>,
    /// `convert` | `reject` | `passthrough` | `force`.
    pub schema1: Option<String>,
    /// `serve` | `reject`.
    pub schema1_digests: Option<String>,
    /// `accept` | `reject`.
    pub schema2_push: Option<String>,
    /// `upgrade` | `off`.
    pub schema1_upgrade: Option<String>,
}

impl PolicyRule {
    /// A rule over these repository globs, every other key left out.
    pub fn new(repositories: &[&str]) -> Self {
        Self {
            repositories: repositories.iter().map(|r| (*r).to_owned()).collect(),
            ..Self::default()
        }
    }

    pub fn schema1(mut self, mode: &str) -> Self {
        self.schema1 = Some(mode.to_owned());
        self
    }

    pub fn schema1_digests(mut self, mode: &str) -> Self {
        self.schema1_digests = Some(mode.to_owned());
        self
    }

    pub fn schema2_push(mut self, mode: &str) -> Self {
        self.schema2_push = Some(mode.to_owned());
        self
    }

    pub fn schema1_upgrade(mut self, mode: &str) -> Self {
        self.schema1_upgrade = Some(mode.to_owned());
        self
    }

    fn render(&self, toml: &mut String) {
        let quote = |s: &str| serde_json::to_string(s).unwrap(); // TOML basic strings
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
            format!("[{}]", quoted.join(", "))
        };
        writeln!(toml, "\n[[policy]]").unwrap();
        writeln!(toml, "repositories = {}", list(&self.repositories)).unwrap();
        if let Some(upstreams) = &self.upstreams {
            writeln!(toml, "upstreams = {}", list(upstreams)).unwrap();
        }
        for (key, value) in [
            ("schema1", &self.schema1),
            ("schema1_digests", &self.schema1_digests),
            ("schema2_push", &self.schema2_push),
            ("schema1_upgrade", &self.schema1_upgrade),
        ] {
            if let Some(value) = value {
                writeln!(toml, "{key} = {}", quote(value)).unwrap();
            }
        }
    }
}

/// What goes into the generated configuration.
#[derive(Debug, Clone)]
pub struct PolicyRegcacheOptions {
    /// `[upstream] url`.
    pub upstream_url: String,
    /// `[upstream] name`.
    pub upstream_name: String,
    /// `[[policy]]` tables, in order.
    pub rules: Vec<PolicyRule>,
    /// `[schema1] signing_key`; regcache's default (generated in the data
    /// dir on first start) when `None`.
    pub signing_key: Option<PathBuf>,
    /// `data_dir`; a fresh temporary directory when `None`.
    pub data_dir: Option<PathBuf>,
    /// `REGCACHE_LOG`.
    pub log_level: String,
    /// `[upstream] writes`; regcache's default (`off`) when `None`.
    pub writes: Option<String>,
}

impl PolicyRegcacheOptions {
    pub fn new(upstream_url: impl Into<String>) -> Self {
        let defaults = RegcacheOptions::new(upstream_url);
        Self {
            upstream_url: defaults.upstream_url,
            upstream_name: defaults.upstream_name,
            rules: Vec::new(),
            signing_key: None,
            data_dir: None,
            log_level: defaults.log_level,
            writes: None,
        }
    }

    /// Appends a `[[policy]]` rule.
    pub fn rule(mut self, rule: PolicyRule) -> Self {
        self.rules.push(rule);
        self
    }

    pub fn signing_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.signing_key = Some(path.into());
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// `[upstream] writes`, e.g. `client-credentials` for tests that push
    /// through regcache.
    pub fn writes(mut self, mode: &str) -> Self {
        self.writes = Some(mode.to_owned());
        self
    }

    /// The `[schema1]` table (when a signing key is set) and the
    /// `[[policy]]` tables, in order.
    pub fn policy_toml(&self) -> String {
        let mut toml = String::new();
        if let Some(key) = &self.signing_key {
            let quoted = serde_json::to_string(&key.to_string_lossy()).unwrap();
            writeln!(toml, "\n[schema1]\nsigning_key = {quoted}").unwrap();
        }
        for rule in &self.rules {
            rule.render(&mut toml);
        }
        toml
    }

    /// The [`RegcacheOptions`] these stand for: the policy tables go into
    /// [`RegcacheOptions::extra_toml`]; the upstream fails fast once gone
    /// (restart tests), no long retries.
    pub fn regcache_options(&self) -> RegcacheOptions {
        let mut options = RegcacheOptions::new(self.upstream_url.clone())
            .connect_timeout_secs(2)
            .retry_attempts(1)
            .log_level(self.log_level.clone())
            .extra_toml(&self.policy_toml());
        options.upstream_name.clone_from(&self.upstream_name);
        options.data_dir.clone_from(&self.data_dir);
        options.writes.clone_from(&self.writes);
        options
    }

    /// The whole TOML file for this data dir.
    pub fn render(&self, data_dir: &Path) -> String {
        self.regcache_options().render_config_file(data_dir)
    }
}

/// A running `regcache serve --config FILE` whose file carries policy rules:
/// a [`Regcache`] started from [`PolicyRegcacheOptions::regcache_options`].
/// Killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct PolicyRegcache {
    options: PolicyRegcacheOptions,
    regcache: Regcache,
}

impl PolicyRegcache {
    /// Writes the configuration, starts regcache on free loopback ports and
    /// waits for `GET /readyz` = 200.
    ///
    /// # Panics
    /// When regcache does not become ready (the message has config and log).
    pub fn start(options: PolicyRegcacheOptions) -> Self {
        let regcache = Regcache::start(options.regcache_options());
        Self { options, regcache }
    }

    /// The underlying [`Regcache`].
    pub fn regcache(&self) -> &Regcache {
        &self.regcache
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.regcache.url()
    }

    /// `127.0.0.1:PORT`, for image references.
    pub fn host(&self) -> String {
        self.regcache.host()
    }

    pub fn admin_url(&self) -> String {
        self.regcache.admin_url()
    }

    pub fn data_dir(&self) -> &Path {
        self.regcache.data_dir()
    }

    pub fn config_path(&self) -> &Path {
        self.regcache.config_path()
    }

    pub fn options(&self) -> &PolicyRegcacheOptions {
        &self.options
    }

    /// Everything regcache logged, all starts.
    pub fn log(&self) -> String {
        self.regcache.log()
    }

    /// The `kid` values regcache logged for its Schema 1 signing key, one
    /// per start (`kid=…` on the "schema 1 signing key" lines).
    pub fn logged_kids(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("signing key"))
            .filter_map(|l| {
                let at = l.find("kid=")? + 4;
                let rest = l[at..].trim_start_matches('"');
                let end = rest
                    .find(|c: char| c == '"' || c.is_whitespace())
                    .unwrap_or(rest.len());
                Some(rest[..end].to_owned())
            })
            .collect()
    }

    pub fn pid(&self) -> Option<u32> {
        self.regcache.pid()
    }

    /// SIGTERM, then waits for the exit.
    ///
    /// # Panics
    /// When not running, or still running 20 s after SIGTERM.
    pub fn stop(&mut self) -> ExitStatus {
        self.regcache.stop()
    }

    /// Starts again with the same configuration and data dir (and ports, if
    /// still free). Call [`PolicyRegcache::stop`] first.
    ///
    /// # Panics
    /// When still running, or when the new process does not become ready.
    pub fn start_again(&mut self) {
        assert!(self.pid().is_none(), "regcache is still running");
        self.regcache.restart();
    }

    /// SIGKILL now (also done on drop).
    pub fn kill(&mut self) {
        self.regcache.kill();
    }

    /// `regcache mappings export --format FORMAT --config FILE`.
    ///
    /// # Panics
    /// When the command fails.
    pub async fn mappings_export(&self, format: &str) -> String {
        self.cli(&["mappings", "export", "--format", format, "--config"])
            .await
    }

    /// `regcache policy explain REPO --config FILE`.
    ///
    /// # Panics
    /// When the command fails.
    pub async fn policy_explain(&self, repository: &str) -> String {
        self.cli(&["policy", "explain", repository, "--config"])
            .await
    }

    /// `regcache ARGS… CONFIG_PATH`, which must exit 0; returns stdout.
    async fn cli(&self, args: &[&str]) -> String {
        let config = self.config_path().to_string_lossy().into_owned();
        let mut argv: Vec<&str> = args.to_vec();
        argv.push(&config);
        let (code, stdout, stderr) = crate::regcache::run_regcache(&argv, &[]).await;
        assert_eq!(
            code,
            Some(0),
            "`regcache {}` failed:\nstdout:\n{stdout}\nstderr:\n{stderr}",
            argv.join(" ")
        );
        stdout
    }

    /// The scratch directory (config, log).
    pub fn work_dir(&self) -> &Path {
        self.regcache.work_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rules_in_order_with_only_the_keys_given() {
        let options = PolicyRegcacheOptions::new("http://127.0.0.1:1")
            .rule(PolicyRule::new(&["legacy/*", "old/**"]).schema1("reject"))
            .rule(
                PolicyRule::new(&["push/**"])
                    .schema2_push("reject")
                    .schema1_digests("reject"),
            )
            .signing_key("/k.pem");
        let toml = options.render(Path::new("/data"));
        let first = toml.find("[[policy]]").unwrap();
        assert!(toml[..first].contains("data_dir = \"/data\""), "{toml}");
        assert!(toml[..first].contains("connect_timeout_secs = 2"), "{toml}");
        assert!(toml[..first].contains("retry_attempts = 1"), "{toml}");
        assert!(toml.contains("signing_key = \"/k.pem\""), "{toml}");
        let rules: Vec<&str> = toml.split("[[policy]]").skip(1).collect();
        assert_eq!(rules.len(), 2, "{toml}");
        assert!(rules[0].contains("repositories = [\"legacy/*\", \"old/**\"]"));
        assert!(rules[0].contains("schema1 = \"reject\""));
        assert!(!rules[0].contains("schema2_push"));
        assert!(rules[1].contains("schema2_push = \"reject\""));
        assert!(rules[1].contains("schema1_digests = \"reject\""));
    }
}

/// One manifest `PUT` that went through a [`PutRecorder`].
#[derive(Debug, Clone)]
pub struct RecordedPut {
    /// Path and query, e.g. `/v2/legacy/app/manifests/1.0`.
    pub path: String,
    pub content_type: Option<String>,
    /// The request body, exactly as sent.
    pub body: bytes::Bytes,
    /// The status the upstream answered.
    pub status: u16,
}

/// A forwarding proxy (for putting between regcache and its upstream) that
/// keeps the body of every manifest `PUT` it forwards: the only way to see
/// what a pusher signed, since distribution stores a pushed Schema 1
/// manifest as its canonical payload and re-signs it on every GET.
/// Everything else is forwarded unchanged. Stops on drop.
#[derive(Debug)]
pub struct PutRecorder {
    puts: std::sync::Arc<std::sync::Mutex<Vec<RecordedPut>>>,
    server: crate::http_server::ServerThread,
}

impl PutRecorder {
    /// Starts forwarding to `upstream` (`http://127.0.0.1:PORT`).
    ///
    /// # Panics
    /// When `upstream` is not an `http://` URL.
    pub fn start(upstream: &str) -> PutRecorder {
        use http_body_util::BodyExt as _;
        use hyper_util::client::legacy::Client;
        use hyper_util::client::legacy::connect::HttpConnector;

        use crate::http_server::{Body, BoxError, full};

        let authority = upstream
            .trim_end_matches('/')
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the recorder forwards to http:// only, not {upstream}"))
            .to_owned();
        let puts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let client: Client<HttpConnector, Body> =
            Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let recorded = std::sync::Arc::clone(&puts);
        let server = crate::http_server::ServerThread::spawn("put-recorder", move |request| {
            let client = client.clone();
            let authority = authority.clone();
            let recorded = std::sync::Arc::clone(&recorded);
            async move {
                let (mut parts, body) = request.into_parts();
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".into());
                parts.uri = format!("http://{authority}{path}")
                    .parse()
                    .unwrap_or_else(|e| panic!("bad forward URI for {path}: {e}"));
                let is_manifest_put =
                    parts.method == hyper::Method::PUT && path.contains("/manifests/");
                let mut kept = None;
                let body: Body = if is_manifest_put {
                    let bytes = match body.collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(e) => {
                            let mut response = hyper::Response::new(full(format!("recorder: {e}")));
                            *response.status_mut() = hyper::StatusCode::BAD_REQUEST;
                            return response;
                        }
                    };
                    kept = Some(bytes.clone());
                    full(bytes)
                } else {
                    body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()
                };
                let content_type = parts
                    .headers
                    .get(hyper::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let response = match client
                    .request(hyper::Request::from_parts(parts, body))
                    .await
                {
                    Ok(response) => response,
                    Err(e) => {
                        let mut response =
                            hyper::Response::new(full(format!("recorder: upstream failed: {e}")));
                        *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                        return response;
                    }
                };
                if let Some(body) = kept {
                    recorded
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(RecordedPut {
                            path,
                            content_type,
                            body,
                            status: response.status().as_u16(),
                        });
                }
                let (parts, body) = response.into_parts();
                hyper::Response::from_parts(
                    parts,
                    body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync(),
                )
            }
        });
        PutRecorder { puts, server }
    }

    /// `http://127.0.0.1:PORT` of the recorder.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Every manifest PUT forwarded so far, in order.
    pub fn puts(&self) -> Vec<RecordedPut> {
        self.puts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

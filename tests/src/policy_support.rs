//! `regcache serve` with per-repository `[[policy]]` rules and a Schema 1
//! signing key: [`PolicyRegcache`].
//!
//! [`crate::Regcache`] renders a fixed configuration (upstream and cache
//! sections only); the Schema 1 policy tests need `[[policy]]` tables, a
//! `[schema1] signing_key`, and a configuration file that names the data
//! dir itself, so that the operator subcommands (`regcache mappings export
//! --config FILE`, `regcache policy explain REPO --config FILE`) read the
//! same store as the server.
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
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::regcache::{http_status, regcache_bin};

/// How long `regcache serve` may take to answer `GET /readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd regcache may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

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
}

impl PolicyRegcacheOptions {
    pub fn new(upstream_url: impl Into<String>) -> Self {
        Self {
            upstream_url: upstream_url.into(),
            upstream_name: "e2e-upstream".into(),
            rules: Vec::new(),
            signing_key: None,
            data_dir: None,
            log_level: "info,regcache=debug,regcache_server=debug,regcache_store=debug,\
                        regcache_upstream=debug"
                .into(),
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

    /// The whole TOML file, listen addresses and data dir included.
    pub fn render(&self, listen: SocketAddr, admin: SocketAddr, data_dir: &Path) -> String {
        let quote = |s: &str| serde_json::to_string(s).unwrap();
        let mut toml = String::new();
        writeln!(toml, "listen = {}", quote(&listen.to_string())).unwrap();
        writeln!(toml, "admin_listen = {}", quote(&admin.to_string())).unwrap();
        writeln!(toml, "data_dir = {}", quote(&data_dir.to_string_lossy())).unwrap();
        writeln!(toml, "\n[log]\nformat = \"text\"").unwrap();
        writeln!(toml, "\n[upstream]").unwrap();
        writeln!(toml, "name = {}", quote(&self.upstream_name)).unwrap();
        writeln!(toml, "url = {}", quote(&self.upstream_url)).unwrap();
        // Fail fast once the upstream is gone (restart tests), no long retries.
        writeln!(toml, "connect_timeout_secs = 2\nretry_attempts = 1").unwrap();
        if let Some(key) = &self.signing_key {
            writeln!(toml, "\n[schema1]").unwrap();
            writeln!(toml, "signing_key = {}", quote(&key.to_string_lossy())).unwrap();
        }
        for rule in &self.rules {
            rule.render(&mut toml);
        }
        toml
    }
}

/// A running `regcache serve --config FILE` whose file carries policy rules.
/// Killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct PolicyRegcache {
    options: PolicyRegcacheOptions,
    child: Option<Child>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    data_dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    starts: usize,
    dir: tempfile::TempDir,
    _data: Option<tempfile::TempDir>,
}

impl PolicyRegcache {
    /// Writes the configuration, starts regcache on free loopback ports and
    /// waits for `GET /readyz` = 200.
    ///
    /// # Panics
    /// When regcache does not become ready (the message has config and log).
    pub fn start(options: PolicyRegcacheOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("regcache-policy-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let (data_dir, data) = match &options.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let data = tempfile::Builder::new()
                    .prefix("regcache-policy-data-")
                    .tempdir()
                    .unwrap();
                (data.path().to_owned(), Some(data))
            }
        };
        let mut regcache = Self {
            log_path: dir.path().join("regcache.log"),
            config_path: dir.path().join("regcache.toml"),
            options,
            child: None,
            addr: crate::ports::free_addr(),
            admin_addr: crate::ports::free_addr(),
            data_dir,
            starts: 0,
            dir,
            _data: data,
        };
        regcache.spawn_until_ready();
        regcache
    }

    fn spawn_until_ready(&mut self) {
        let bin = regcache_bin();
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                self.addr = crate::ports::free_addr();
                self.admin_addr = crate::ports::free_addr();
            }
            let config = self
                .options
                .render(self.addr, self.admin_addr, &self.data_dir);
            std::fs::write(&self.config_path, &config).unwrap();
            self.starts += 1;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .unwrap();
            let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
            use std::io::Write as _;
            writeln!(
                log,
                "===== regcache-tests: start #{} (listen {}, admin {}) =====",
                self.starts, self.addr, self.admin_addr
            )
            .unwrap();
            let child = Command::new(&bin)
                .arg("serve")
                .arg("--config")
                .arg(&self.config_path)
                .env("REGCACHE_LOG", &self.options.log_level)
                .env("REGCACHE_LOG_FORMAT", "text")
                .env_remove("REGCACHE_UPSTREAM_USERNAME")
                .env_remove("REGCACHE_UPSTREAM_PASSWORD")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
            self.child = Some(child);
            match self.wait_until_ready() {
                Ok(()) => return,
                Err(why) => {
                    let log = self.log_since(log_start);
                    let in_use = log.contains("in use") || log.contains("AddrInUse");
                    self.kill();
                    last = format!(
                        "regcache serve did not become ready ({why}); config:\n{config}\nlog:\n{log}"
                    );
                    if !in_use {
                        break;
                    }
                }
            }
        }
        panic!("{last}");
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("exited with {status}"));
            }
            if http_status(self.admin_addr, "/readyz") == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no 200 from /readyz within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, for image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn options(&self) -> &PolicyRegcacheOptions {
        &self.options
    }

    /// Everything regcache logged, all starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log_path) {
            use std::io::Seek as _;
            let _ = file.seek(std::io::SeekFrom::Start(offset));
            let _ = file.read_to_string(&mut text);
        }
        text
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
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then waits for the exit.
    ///
    /// # Panics
    /// When not running, or still running 20 s after SIGTERM.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("regcache is not running"));
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "regcache did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again with the same configuration and data dir (and ports, if
    /// still free). Call [`PolicyRegcache::stop`] first.
    ///
    /// # Panics
    /// When still running, or when the new process does not become ready.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "regcache is still running");
        self.spawn_until_ready();
    }

    /// SIGKILL now (also done on drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `regcache mappings export --config FILE` (CSV).
    ///
    /// # Panics
    /// When the command fails.
    pub async fn mappings_export(&self) -> String {
        self.cli(&["mappings", "export", "--config"]).await
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
        let config = self.config_path.to_string_lossy().into_owned();
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
        self.dir.path()
    }
}

impl Drop for PolicyRegcache {
    fn drop(&mut self) {
        self.kill();
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
        let toml = options.render(
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
            Path::new("/data"),
        );
        let first = toml.find("[[policy]]").unwrap();
        assert!(toml[..first].contains("data_dir = \"/data\""), "{toml}");
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

//! Locating and running the `regcache` binary built from this workspace:
//! `regcache convert` ([`convert`]) and `regcache serve` ([`Regcache`]).
//!
//! Test binaries live in `target/<profile>/deps/`; the `regcache` binary is
//! `target/<profile>/regcache`. `cargo test` does not build other packages'
//! binaries for an integration test crate, so the project's test script runs
//! `cargo build --workspace --bins` first.
//!
//! ```no_run
//! use regcache_tests::{Regcache, RegcacheOptions};
//! # let upstream_url = "http://127.0.0.1:5000".to_owned();
//! let mut regcache = Regcache::start(RegcacheOptions::new(upstream_url).disk_size("40MiB"));
//! println!("{} (admin {})", regcache.url(), regcache.admin_url());
//! regcache.restart(); // same data dir, SIGTERM first
//! // ... killed when dropped.
//! ```

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::registry::Credentials;

/// `target/<profile>/regcache`, derived from the running test executable.
///
/// # Panics
/// When the binary has not been built, saying how to build it.
pub fn regcache_bin() -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the running test executable: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("regcache");
    assert!(
        bin.is_file(),
        "the regcache binary is missing at {}: build it with `cargo build -p regcache-server` \
         (scripts/test runs `cargo build --workspace --bins` before the tests)",
        bin.display()
    );
    bin
}

/// Arguments of `regcache convert`.
#[derive(Debug, Clone)]
pub struct ConvertArgs<'a> {
    pub name: &'a str,
    pub tag: &'a str,
    /// The image config blob, as stored.
    pub config: &'a Path,
    /// A Schema 2 / OCI manifest, or a Docker manifest list / OCI index.
    pub manifest: &'a Path,
    /// For lists: the linux/amd64 child manifest.
    pub child: Option<&'a Path>,
    /// Signing key; without it regcache uses a fresh key.
    pub key: Option<&'a Path>,
    /// Print the canonical payload instead of the signed manifest.
    pub payload: bool,
}

/// What `regcache convert` did.
#[derive(Debug, Clone)]
pub struct ConvertOutput {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// The command line, for messages.
    pub command: String,
}

impl ConvertOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `regcache convert --name N --tag T --config C [--key K] [--payload]
/// [--child F] MANIFEST`.
pub async fn convert(args: &ConvertArgs<'_>) -> ConvertOutput {
    let bin = regcache_bin();
    let mut argv: Vec<String> = vec![
        "convert".into(),
        "--name".into(),
        args.name.into(),
        "--tag".into(),
        args.tag.into(),
        "--config".into(),
        args.config.display().to_string(),
    ];
    if let Some(key) = args.key {
        argv.push("--key".into());
        argv.push(key.display().to_string());
    }
    if args.payload {
        argv.push("--payload".into());
    }
    if let Some(child) = args.child {
        argv.push("--child".into());
        argv.push(child.display().to_string());
    }
    argv.push(args.manifest.display().to_string());
    let output = tokio::process::Command::new(&bin)
        .args(&argv)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    ConvertOutput {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        command: format!("regcache {}", argv.join(" ")),
    }
}

/// How long `regcache serve` may take to answer `GET /readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd regcache may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// What goes into the generated `regcache serve` configuration. `None`
/// leaves regcache's default.
#[derive(Debug, Clone)]
pub struct RegcacheOptions {
    /// `[upstream] url`.
    pub upstream_url: String,
    /// `[upstream] name` (appears in logs, metrics and 502 messages).
    pub upstream_name: String,
    /// Passed as `REGCACHE_UPSTREAM_USERNAME` / `REGCACHE_UPSTREAM_PASSWORD`.
    pub credentials: Option<Credentials>,
    /// `REGCACHE_LOG_FORMAT`: `text` (the default) or `json`.
    pub log_format: String,
    /// `auth_realms` of the `[upstream]` table: token realm hosts that may
    /// receive `credentials` besides the upstream's own origin.
    pub auth_realms: Vec<String>,
    /// `data_dir` (in the file and as `--data-dir`); a fresh temporary
    /// directory when `None`.
    pub data_dir: Option<PathBuf>,
    pub tag_ttl_secs: Option<u64>,
    pub stale_if_error_secs: Option<u64>,
    pub connect_timeout_secs: Option<u64>,
    pub first_byte_timeout_secs: Option<u64>,
    /// `[upstream] body_stall_timeout_secs`.
    pub body_stall_timeout_secs: Option<u64>,
    pub retry_attempts: Option<u32>,
    /// `[upstream] writes`: `off` (regcache's default), `client-credentials`
    /// or `stored-credentials`.
    pub writes: Option<String>,
    /// `[upstream] catalog`: the same values.
    pub catalog: Option<String>,
    /// `[cache]` sizes, as regcache reads them (`"40MiB"`, `"1048576"`).
    pub memory_size: Option<String>,
    pub memory_max_object: Option<String>,
    pub disk_size: Option<String>,
    /// `REGCACHE_LOG` (a tracing filter).
    pub log_level: String,
    /// Raw TOML that replaces the generated `[upstream]` table, e.g. several
    /// `[[upstream]]` tables for a multi-registry regcache. When set,
    /// `upstream_url`, `upstream_name`, `credentials` and the per-upstream
    /// knobs above (`tag_ttl_secs` … `catalog`) are not used.
    pub upstreams_toml: Option<String>,
    /// Raw TOML appended to the configuration file after the upstream
    /// table(s), e.g. `[[policy]]` tables or a `[schema1]` table.
    pub extra_toml: String,
    /// `tls_cert_file` and `tls_key_file` (PEM files): the API listener
    /// speaks TLS only, and [`Regcache::url`] is `https://…`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bind the admin listener to `0.0.0.0` (same port) instead of
    /// `127.0.0.1`: not a loopback address, so its state-changing endpoints
    /// need the admin token. [`Regcache::admin_url`] still connects via
    /// 127.0.0.1.
    pub admin_on_all_addresses: bool,
    /// Environment variables set for the child process (e.g. the secrets a
    /// `*_env` config key names). `Debug` shows their names only.
    pub env: EnvVars,
}

/// Extra environment variables for `regcache serve`, in order (a later
/// entry for the same name wins). Values are often secrets, so `Debug`
/// prints the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EnvVars(pub Vec<(String, String)>);

impl std::fmt::Debug for EnvVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, _)| (k, "<redacted>")))
            .finish()
    }
}

impl RegcacheOptions {
    /// Defaults for a loopback test against `upstream_url`: debug logs of
    /// regcache's own crates, regcache's defaults otherwise.
    pub fn new(upstream_url: impl Into<String>) -> Self {
        Self {
            upstream_url: upstream_url.into(),
            upstream_name: "e2e-upstream".into(),
            credentials: None,
            log_format: "text".into(),
            auth_realms: Vec::new(),
            data_dir: None,
            tag_ttl_secs: None,
            stale_if_error_secs: None,
            connect_timeout_secs: None,
            first_byte_timeout_secs: None,
            body_stall_timeout_secs: None,
            retry_attempts: None,
            writes: None,
            catalog: None,
            memory_size: None,
            memory_max_object: None,
            disk_size: None,
            log_level: "info,regcache=debug,regcache_server=debug,regcache_store=debug,\
                        regcache_upstream=debug"
                .into(),
            upstreams_toml: None,
            extra_toml: String::new(),
            tls: None,
            admin_on_all_addresses: false,
            env: EnvVars::default(),
        }
    }

    /// Defaults as [`RegcacheOptions::new`], with the upstreams given as raw
    /// TOML (one `[upstream]` table or several `[[upstream]]` tables), which
    /// goes into the configuration file unchanged.
    pub fn with_upstreams_toml(upstreams_toml: impl Into<String>) -> Self {
        let mut options = Self::new(String::new());
        options.upstream_name = String::new();
        options.upstreams_toml = Some(upstreams_toml.into());
        options
    }

    pub fn credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn disk_size(mut self, size: &str) -> Self {
        self.disk_size = Some(size.to_owned());
        self
    }

    pub fn tag_ttl_secs(mut self, secs: u64) -> Self {
        self.tag_ttl_secs = Some(secs);
        self
    }

    pub fn retry_attempts(mut self, attempts: u32) -> Self {
        self.retry_attempts = Some(attempts);
        self
    }

    /// `[upstream] writes` (`off`, `client-credentials`, `stored-credentials`).
    pub fn writes(mut self, mode: &str) -> Self {
        self.writes = Some(mode.to_owned());
        self
    }

    /// `[upstream] catalog` (`off`, `client-credentials`, `stored-credentials`).
    pub fn catalog(mut self, mode: &str) -> Self {
        self.catalog = Some(mode.to_owned());
        self
    }

    pub fn body_stall_timeout_secs(mut self, secs: u64) -> Self {
        self.body_stall_timeout_secs = Some(secs);
        self
    }

    pub fn connect_timeout_secs(mut self, secs: u64) -> Self {
        self.connect_timeout_secs = Some(secs);
        self
    }

    /// `REGCACHE_LOG` (a tracing filter).
    pub fn log_level(mut self, filter: impl Into<String>) -> Self {
        self.log_level = filter.into();
        self
    }

    /// TLS on the API listener with these PEM files (certificate chain, key).
    pub fn tls(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert_file.into(), key_file.into()));
        self
    }

    /// Sets `key=value` in the child's environment (every start).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.0.push((key.into(), value.into()));
        self
    }

    /// Appends raw TOML (whole tables) to [`RegcacheOptions::extra_toml`].
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self
    }

    /// The TOML file without top-level keys (listen addresses and data dir
    /// go on the command line; see [`RegcacheOptions::render_config_file`]).
    pub fn render_config(&self) -> String {
        let mut toml = String::new();
        let quote = |s: &str| serde_json::to_string(s).unwrap(); // TOML basic strings
        writeln!(toml, "[log]\nformat = \"text\"").unwrap();
        writeln!(toml, "\n[cache]").unwrap();
        for (key, value) in [
            ("memory_size", &self.memory_size),
            ("memory_max_object", &self.memory_max_object),
            ("disk_size", &self.disk_size),
        ] {
            if let Some(value) = value {
                writeln!(toml, "{key} = {}", quote(value)).unwrap();
            }
        }
        if let Some(upstreams) = &self.upstreams_toml {
            writeln!(toml, "\n{}", upstreams.trim_end()).unwrap();
        } else {
            writeln!(toml, "\n[upstream]").unwrap();
            writeln!(toml, "name = {}", quote(&self.upstream_name)).unwrap();
            writeln!(toml, "url = {}", quote(&self.upstream_url)).unwrap();
            for (key, value) in [
                ("tag_ttl_secs", self.tag_ttl_secs),
                ("stale_if_error_secs", self.stale_if_error_secs),
                ("connect_timeout_secs", self.connect_timeout_secs),
                ("first_byte_timeout_secs", self.first_byte_timeout_secs),
                ("body_stall_timeout_secs", self.body_stall_timeout_secs),
                ("retry_attempts", self.retry_attempts.map(u64::from)),
            ] {
                if let Some(value) = value {
                    writeln!(toml, "{key} = {value}").unwrap();
                }
            }
            if !self.auth_realms.is_empty() {
                let realms: Vec<String> = self.auth_realms.iter().map(|r| quote(r)).collect();
                writeln!(toml, "auth_realms = [{}]", realms.join(", ")).unwrap();
            }
            for (key, value) in [("writes", &self.writes), ("catalog", &self.catalog)] {
                if let Some(value) = value {
                    writeln!(toml, "{key} = {}", quote(value)).unwrap();
                }
            }
        }
        if !self.extra_toml.trim().is_empty() {
            writeln!(toml, "\n{}", self.extra_toml.trim()).unwrap();
        }
        toml
    }

    /// The file [`Regcache`] writes: `data_dir = DIR` (and the TLS files,
    /// when set), then [`RegcacheOptions::render_config`]. Naming the data
    /// dir in the file lets the operator subcommands (`regcache mappings
    /// export --config FILE`, `regcache policy explain REPO --config FILE`)
    /// read the same store as the server.
    pub fn render_config_file(&self, data_dir: &Path) -> String {
        let quote = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap();
        let mut top = format!("data_dir = {}\n", quote(data_dir));
        if let Some((cert, key)) = &self.tls {
            writeln!(top, "tls_cert_file = {}", quote(cert)).unwrap();
            writeln!(top, "tls_key_file = {}", quote(key)).unwrap();
        }
        format!("{top}\n{}", self.render_config())
    }
}

/// A running `regcache serve`. Killed (SIGKILL) and reaped on drop; use
/// [`Regcache::stop`] for a graceful SIGTERM.
#[derive(Debug)]
pub struct Regcache {
    options: RegcacheOptions,
    child: Option<Child>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    config_path: PathBuf,
    starts: usize,
    /// Config and log (and the data dir unless one was given).
    dir: tempfile::TempDir,
    /// The data dir when we made it (kept across restarts).
    _data: Option<tempfile::TempDir>,
}

impl Regcache {
    /// Writes a config, spawns `regcache serve` on free loopback ports and
    /// waits until `GET /readyz` on the admin port answers 200.
    ///
    /// Blocks the calling thread for the start-up.
    ///
    /// # Panics
    /// When the binary is missing, or regcache exits or is not ready within
    /// 30 s (the message has its log).
    pub fn start(options: RegcacheOptions) -> Regcache {
        let dir = tempfile::Builder::new()
            .prefix("regcache-serve-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let (data_dir, data) = match &options.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let data = tempfile::Builder::new()
                    .prefix("regcache-data-")
                    .tempdir()
                    .unwrap();
                (data.path().to_owned(), Some(data))
            }
        };
        let pair = crate::ports::free_addr_pair();
        let mut regcache = Regcache {
            log_path: dir.path().join("regcache.log"),
            config_path: dir.path().join("regcache.toml"),
            options,
            child: None,
            addr: pair.0,
            admin_addr: pair.1,
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
        let config = self.options.render_config_file(&self.data_dir);
        std::fs::write(&self.config_path, &config).unwrap();
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                (self.addr, self.admin_addr) = crate::ports::free_addr_pair();
            }
            self.starts += 1;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .unwrap();
            let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
            writeln!(
                log,
                "===== regcache-tests: start #{} (listen {}, admin {}) =====",
                self.starts, self.addr, self.admin_addr
            )
            .unwrap();
            let mut command = Command::new(&bin);
            command
                .arg("serve")
                .arg("--config")
                .arg(&self.config_path)
                .arg("--listen")
                .arg(self.addr.to_string())
                .arg("--admin-listen")
                .arg(if self.options.admin_on_all_addresses {
                    format!("0.0.0.0:{}", self.admin_addr.port())
                } else {
                    self.admin_addr.to_string()
                })
                .arg("--data-dir")
                .arg(&self.data_dir)
                .env("REGCACHE_LOG", &self.options.log_level)
                .env("REGCACHE_LOG_FORMAT", &self.options.log_format)
                // The filter is REGCACHE_LOG's: a RUST_LOG of the test run would win.
                .env_remove("RUST_LOG")
                .env_remove("REGCACHE_UPSTREAM_USERNAME")
                .env_remove("REGCACHE_UPSTREAM_PASSWORD")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            if let Some(creds) = self
                .options
                .credentials
                .as_ref()
                .filter(|_| self.options.upstreams_toml.is_none())
            {
                command
                    .env("REGCACHE_UPSTREAM_USERNAME", &creds.username)
                    .env("REGCACHE_UPSTREAM_PASSWORD", &creds.password);
            }
            command.envs(self.options.env.0.iter().map(|(k, v)| (k, v)));
            let child = command
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

    /// `http://127.0.0.1:PORT` (`https://` with TLS): the client API.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, for image references (`docker://HOST/NAME:TAG`).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the disk tier keeps committed blobs:
    /// `<data_dir>/cache/v1/blobs/<alg>/<hex[..2]>/<hex>` (regcache-store's
    /// layout version 1 under the server's `cache/` folder).
    pub fn blobs_dir(&self) -> PathBuf {
        self.data_dir.join("cache").join("v1").join("blobs")
    }

    pub fn options(&self) -> &RegcacheOptions {
        &self.options
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything regcache wrote to stdout and stderr, all starts.
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

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (a name `kill` knows, e.g. `"HUP"`) to the process.
    ///
    /// # Panics
    /// When regcache is not running or `kill` fails.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("regcache is not running"));
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill -{signal} {pid}: {e}"));
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// `GET /metrics` on the admin listener, parsed.
    ///
    /// # Panics
    /// When the scrape fails or is not 200.
    pub async fn metrics(&self) -> Metrics {
        let response = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(response.status().as_u16(), 200, "GET /metrics");
        Metrics::parse(&response.text().await.unwrap())
    }

    /// `GET /metrics` until `settled` holds of the scrape (up to 5 s), and
    /// that scrape. Counters bumped when a response's last byte is written
    /// (`regcache_served_bytes_total`, `regcache_responses_total`) can trail
    /// the client's read of that byte by a moment.
    ///
    /// # Panics
    /// When a scrape fails; not when `settled` never holds: the caller's
    /// assertion says what was expected.
    pub async fn metrics_when(&self, settled: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let metrics = self.metrics().await;
            if settled(&metrics) || Instant::now() > deadline {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 20 s) and returns the
    /// exit status.
    ///
    /// # Panics
    /// When regcache is not running, or does not exit within 20 s of SIGTERM.
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

    /// [`Regcache::stop`] (which must exit 0), then starts again with the
    /// same options, data dir and (if still free) ports.
    pub fn restart(&mut self) {
        self.restart_with(|_| {});
    }

    /// Like [`Regcache::restart`], after letting `change` edit the options
    /// (the data dir stays).
    pub fn restart_with(&mut self, change: impl FnOnce(&mut RegcacheOptions)) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(
                status.success(),
                "regcache exited with {status} on SIGTERM; log:\n{}",
                self.log()
            );
        }
        change(&mut self.options);
        self.options.data_dir = Some(self.data_dir.clone());
        self.spawn_until_ready();
    }

    /// SIGKILL now (also done on drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The scratch directory of this handle (config, log).
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Regcache {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET path` over a raw socket; the status code, if an HTTP answer came.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let head = std::str::from_utf8(&head[..got]).ok()?;
    head.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// Runs `regcache ARGS…` to completion (for start-up failures such as a bad
/// config), with `env` added, and returns (exit code, stdout, stderr).
pub async fn run_regcache(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let bin = regcache_bin();
    let output = tokio::process::Command::new(&bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_upstreams_replace_the_generated_upstream_table() {
        let plain = RegcacheOptions::new("http://127.0.0.1:1").render_config();
        assert!(plain.contains("\n[upstream]\n"), "{plain}");
        let raw = "[[upstream]]\nname = \"quay.io\"\nurl = \"http://127.0.0.1:2\"\n\n\
                   [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:3\"\ndefault = true\n";
        let toml = RegcacheOptions::with_upstreams_toml(raw)
            .disk_size("1MiB")
            .tag_ttl_secs(5)
            .render_config();
        assert!(toml.contains(raw.trim_end()), "{toml}");
        assert!(toml.contains("disk_size = \"1MiB\""), "{toml}");
        assert!(!toml.contains("\n[upstream]\n"), "{toml}");
        assert!(!toml.contains("tag_ttl_secs = 5"), "{toml}");
        assert_eq!(toml.matches("[[upstream]]").count(), 2, "{toml}");
    }

    #[test]
    fn writes_and_catalog_go_into_the_generated_upstream_table() {
        let plain = RegcacheOptions::new("http://127.0.0.1:1").render_config();
        assert!(
            !plain.contains("writes") && !plain.contains("catalog"),
            "{plain}"
        );
        let toml = RegcacheOptions::new("http://127.0.0.1:1")
            .writes("client-credentials")
            .catalog("stored-credentials")
            .render_config();
        let table = &toml[toml.find("[upstream]").unwrap()..];
        assert!(
            table.contains("\nwrites = \"client-credentials\"\n"),
            "{toml}"
        );
        assert!(
            table.contains("\ncatalog = \"stored-credentials\"\n"),
            "{toml}"
        );
    }

    #[test]
    fn env_values_stay_out_of_debug() {
        let options = RegcacheOptions::new("http://127.0.0.1:1").env("MY_SECRET", "hunter2-xyz");
        assert_eq!(
            options.env.0,
            vec![("MY_SECRET".to_owned(), "hunter2-xyz".to_owned())]
        );
        let debug = format!("{options:?}");
        assert!(debug.contains("MY_SECRET"), "{debug}");
        assert!(!debug.contains("hunter2-xyz"), "{debug}");
    }

    #[test]
    fn extra_toml_follows_the_upstreams_and_the_file_names_the_data_dir() {
        let extra = "[[policy]]\nrepositories = [\"a/*\"]\n";
        for options in [
            RegcacheOptions::new("http://127.0.0.1:1"),
            RegcacheOptions::with_upstreams_toml(
                "[[upstream]]\nname = \"x\"\nurl = \"http://127.0.0.1:2\"\n",
            ),
        ] {
            let file = options
                .extra_toml(extra)
                .render_config_file(Path::new("/data"));
            assert!(file.starts_with("data_dir = \"/data\"\n"), "{file}");
            let policy = file.find("[[policy]]").unwrap();
            assert!(file.find("upstream]").unwrap() < policy, "{file}");
            assert!(file.trim_end().ends_with(extra.trim_end()), "{file}");
        }
    }
}

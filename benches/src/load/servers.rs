//! The servers under test, each a child process on a loopback port with its
//! files in a temporary directory, stopped on drop:
//!
//! * [`RegcacheServer`]: `target/release/regcache serve`;
//! * [`DistributionProxy`]: docker-registry 2.8 with `proxy.remoteurl` (its
//!   own launcher rather than `regcache_tests::Registry`, whose config logs
//!   every request at debug level: a fair peer logs no more than regcache);
//! * [`Nginx`]: nginx as a static file server (`sendfile on`) or as a
//!   `proxy_cache` in front of the upstream, running as the current user
//!   with its own prefix, config, pid file, logs and temp paths.
//!
//! Every launcher waits until the server answers HTTP before returning.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regcache_tests::regcache::http_status;

use super::procstat;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until `ready(http_status(addr, path))`, or the child exits, or 30 s.
pub(super) fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    path: &str,
    ready: impl Fn(u16) -> bool,
    log: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "exited with {status}; log {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        if http_status(addr, path).is_some_and(&ready) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no ready answer on http://{addr}{path} within {START_TIMEOUT:?}; log {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPUs to run a process on (`taskset -c LIST`), or anywhere.
#[derive(Debug, Clone, Default)]
pub struct Cpus {
    /// `taskset` and the CPU list (`0`, `0-1`, …).
    pub pin: Option<(PathBuf, String)>,
}

impl Cpus {
    /// `program`, run through `taskset -c LIST` when pinned (taskset execs
    /// it: the child's pid is the program's).
    pub fn command(&self, program: &Path) -> Command {
        match &self.pin {
            Some((taskset, list)) => {
                let mut c = Command::new(taskset);
                c.arg("-c").arg(list).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// How many CPUs the list names (`None` when not pinned).
    pub fn count(&self) -> Option<usize> {
        self.pin.as_ref().map(|(_, list)| list.split(',').count())
    }

    /// Pins every thread of a running process (`taskset -a -p -c LIST PID`).
    pub fn pin_running(&self, pid: u32, all_threads: bool) -> Result<(), String> {
        let Some((taskset, list)) = &self.pin else {
            return Ok(());
        };
        let mut c = Command::new(taskset);
        if all_threads {
            c.arg("-a");
        }
        let status = c
            .args(["-p", "-c", list, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", taskset.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("taskset -p -c {list} {pid} failed ({status})"))
        }
    }
}

pub(super) fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

pub(super) fn log_file(path: &Path) -> (Stdio, Stdio) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let g = f
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot dup {}: {e}", path.display()));
    (Stdio::from(f), Stdio::from(g))
}

/// Stops `child`: SIGTERM (by pid, through `kill`), up to 5 s of grace,
/// then SIGKILL; reaped either way.
pub(super) fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ----- regcache ----------------------------------------------------------------

/// regcache's config file: its defaults but for the per-client request
/// rate limit, which is off.
pub const REGCACHE_CONFIG: &str = "[limits]\nrequests_per_second_per_client = 0\n";

/// `regcache serve` on loopback with a temporary data dir, [`REGCACHE_CONFIG`]
/// and `REGCACHE_LOG=warn`.
#[derive(Debug)]
pub struct RegcacheServer {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RegcacheServer {
    pub fn start(bin: &Path, upstream_url: &str, cpus: &Cpus) -> Result<RegcacheServer, String> {
        RegcacheServer::start_with_config(bin, upstream_url, cpus, REGCACHE_CONFIG)
    }

    /// Like [`RegcacheServer::start`], with `top` (top-level keys such as
    /// `tls_cert_file`) before [`REGCACHE_CONFIG`] in its config file.
    pub fn start_with(
        bin: &Path,
        upstream_url: &str,
        cpus: &Cpus,
        top: &str,
    ) -> Result<RegcacheServer, String> {
        let config = format!("{top}{REGCACHE_CONFIG}");
        RegcacheServer::start_with_config(bin, upstream_url, cpus, &config)
    }

    /// The same with another config file (S9: connection limits raised).
    pub fn start_with_config(
        bin: &Path,
        upstream_url: &str,
        cpus: &Cpus,
        config_text: &str,
    ) -> Result<RegcacheServer, String> {
        let dir = temp_dir("regcache-load-regcache-");
        let addr = regcache_tests::free_addr();
        let admin = regcache_tests::free_addr();
        let log = dir.path().join("regcache.log");
        let (out, err) = log_file(&log);
        // One load generator on one address: the default per-client rate
        // limit (200/s, burst 400) would answer most of it 429, and no
        // peer has one.
        let config = dir.path().join("regcache.toml");
        std::fs::write(&config, config_text)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let mut child = cpus
            .command(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--upstream")
            .arg(upstream_url)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("REGCACHE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", bin.display()))?;
        if let Err(e) = wait_ready(&mut child, admin, "/readyz", |s| s == 200, &log) {
            stop(&mut child);
            return Err(format!("regcache did not come up: {e}"));
        }
        Ok(RegcacheServer {
            child,
            addr,
            admin,
            log,
            _dir: dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /metrics` from the admin listener (Prometheus text).
    pub fn metrics(&self) -> String {
        let mut conn = match super::http::Conn::connect(self.admin) {
            Ok(c) => c,
            Err(e) => return format!("# cannot connect to the admin listener: {e}"),
        };
        let req = super::http::get_request(self.admin, "/metrics", &[]);
        match conn.get(&req) {
            Ok((_, body)) => String::from_utf8_lossy(&body).into_owned(),
            Err(e) => format!("# GET /metrics failed: {e}"),
        }
    }

    /// What regcache logged (warnings and errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RegcacheServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

// ----- docker-registry in proxy mode ------------------------------------------

/// docker-registry (docker/distribution 2.8) as a pull-through cache of
/// `remote`: filesystem storage, the in-memory blob descriptor cache (as
/// Debian's shipped config has it), `warn` logging and no access log;
/// `compatibility.schema1.enabled` so that S6 (no `Accept`) gets its own
/// Schema 1 conversion.
#[derive(Debug)]
pub struct DistributionProxy {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    config: String,
    _dir: tempfile::TempDir,
}

impl DistributionProxy {
    pub fn start(program: &Path, remote: &str, cpus: &Cpus) -> Result<DistributionProxy, String> {
        let dir = temp_dir("regcache-load-distribution-");
        let addr = regcache_tests::free_addr();
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).map_err(|e| e.to_string())?;
        let config = render_distribution_config(addr, &storage, remote);
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, &config).map_err(|e| e.to_string())?;
        let log = dir.path().join("registry.log");
        let (out, err) = log_file(&log);
        let mut child = cpus
            .command(program)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", program.display()))?;
        if let Err(e) = wait_ready(&mut child, addr, "/v2/", |_| true, &log) {
            stop(&mut child);
            return Err(format!("docker-registry (proxy) did not come up: {e}"));
        }
        Ok(DistributionProxy {
            child,
            addr,
            log,
            config,
            _dir: dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config(&self) -> &str {
        &self.config
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DistributionProxy {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The proxy peer's config (JSON strings are valid YAML scalars).
pub fn render_distribution_config(addr: SocketAddr, storage: &Path, remote: &str) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  cache:\n    blobdescriptor: inmemory\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  secret: regcache-load-not-secret\n\
         proxy:\n  remoteurl: {remote}\n\
         compatibility:\n  schema1:\n    enabled: true\n",
        root = q(&storage.to_string_lossy()),
        remote = q(remote),
    )
}

// ----- nginx ----------------------------------------------------------------------

/// Which nginx.
#[derive(Debug, Clone)]
pub enum NginxMode {
    /// Serve files under `root` (the URL path is the file path).
    Static { root: PathBuf },
    /// `proxy_cache` in front of `upstream`, keyed on URI + `Accept`.
    ProxyCache { upstream: SocketAddr },
}

/// nginx with its own prefix, running in the foreground (`daemon off`) as
/// the current user; `user root` only when running as root (otherwise
/// workers would drop to `nobody` and could not read our 0700 temp dirs).
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    conf: String,
}

impl Nginx {
    pub fn start(program: &Path, mode: &NginxMode, cpus: &Cpus) -> Result<Nginx, String> {
        Nginx::start_with(program, mode, cpus, |conf, _| Ok((conf, None)))
    }

    /// Like [`Nginx::start`], with the rendered config passed through
    /// `adapt(conf, prefix)`, which may also name another address for the
    /// plain-HTTP readiness probe (e.g. when the main listener speaks TLS).
    pub fn start_with(
        program: &Path,
        mode: &NginxMode,
        cpus: &Cpus,
        adapt: impl FnOnce(String, &Path) -> Result<(String, Option<SocketAddr>), String>,
    ) -> Result<Nginx, String> {
        let dir = temp_dir("regcache-load-nginx-");
        let addr = regcache_tests::free_addr();
        for sub in ["tmp", "cache", "logs"] {
            std::fs::create_dir(dir.path().join(sub)).map_err(|e| e.to_string())?;
        }
        let as_root = procstat::effective_uid() == Some(0);
        // One worker per CPU it may use: `auto` counts the machine's CPUs,
        // not the pinned ones.
        let conf = render_nginx_conf(dir.path(), addr, mode, as_root, cpus.count());
        let (conf, probe) = adapt(conf, dir.path())?;
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, &conf).map_err(|e| e.to_string())?;
        let log = dir.path().join("logs").join("error.log");
        let (out, err) = log_file(&dir.path().join("logs").join("stderr.log"));
        let mut prefix = dir.path().as_os_str().to_owned();
        prefix.push("/");
        let mut child = cpus
            .command(program)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&log)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", program.display()))?;
        let probe = probe.unwrap_or(addr);
        if let Err(e) = wait_ready(&mut child, probe, "/healthz", |s| s == 200, &log) {
            stop(&mut child);
            let stderr = std::fs::read_to_string(dir.path().join("logs").join("stderr.log"))
                .unwrap_or_default();
            return Err(format!(
                "nginx did not come up: {e}\nstderr:\n{stderr}\nconf:\n{conf}"
            ));
        }
        Ok(Nginx {
            child,
            addr,
            dir,
            conf,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(procstat::children_of(master));
        pids
    }

    pub fn conf(&self) -> &str {
        &self.conf
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master is nginx's fast shutdown: it stops its
        // workers. Any worker still there afterwards is killed by its pid.
        let workers = procstat::children_of(self.child.id());
        stop(&mut self.child);
        for pid in workers {
            if procstat::process_cpu(pid).is_some() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// The whole nginx.conf: every path (pid, logs, temp, cache) under `prefix`.
pub fn render_nginx_conf(
    prefix: &Path,
    addr: SocketAddr,
    mode: &NginxMode,
    as_root: bool,
    workers: Option<usize>,
) -> String {
    let p = prefix.display();
    let user = if as_root { "user root;\n" } else { "" };
    let workers = workers.map_or_else(|| "auto".to_owned(), |n| n.to_string());
    let server_body = match mode {
        NginxMode::Static { root } => format!(
            r#"        root {root};
        location ~ ^/v2/.+/blobs/ {{
            default_type application/octet-stream;
        }}
        location ~ ^/v2/.+/manifests/ {{
            default_type application/vnd.docker.distribution.manifest.v2+json;
        }}
"#,
            root = root.display()
        ),
        NginxMode::ProxyCache { .. } => r#"        location /v2/ {
            proxy_pass http://registry_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_cache registry;
            # Same Accept, same key: a manifest by tag may be rendered
            # differently for another Accept list.
            proxy_cache_key "$request_uri|$http_accept";
            # Only 200s; for as long as the upstream's Cache-Control allows
            # (blobs: a year), else 60 s (regcache's default tag TTL), then
            # a conditional GET in the background while the stale copy is served.
            proxy_cache_valid 200 60s;
            proxy_cache_revalidate on;
            proxy_cache_lock on;
            proxy_cache_use_stale error timeout updating;
            proxy_cache_background_update on;
            add_header X-Cache-Status $upstream_cache_status always;
        }
"#
        .to_owned(),
    };
    let http_extra = match mode {
        NginxMode::Static { .. } => String::new(),
        NginxMode::ProxyCache { upstream } => format!(
            r#"    proxy_cache_path {p}/cache levels=1:2 keys_zone=registry:10m max_size=4g inactive=1h use_temp_path=off;
    upstream registry_upstream {{
        server {upstream};
        keepalive 16;
    }}
"#
        ),
    };
    format!(
        r#"# Generated by the regcache load harness (benches/benches/load.rs).
{user}worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;

events {{
    worker_connections 16384;
}}

http {{
    types {{ }}
    default_type application/octet-stream;
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    # The load keeps connections open for the whole run (nginx's default
    # closes one after 1000 requests; regcache and distribution never do).
    keepalive_requests 10000000;
    # Keep descriptors of served files (static files and cache entries)
    # open, as a tuned static server would.
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    client_body_temp_path {p}/tmp/client_body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
{http_extra}
    server {{
        listen {addr} reuseport;
        # The launcher's readiness probe.
        location = /healthz {{
            return 200 "ok\n";
        }}
{server_body}    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_keeps_everything_under_the_prefix() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let conf = render_nginx_conf(
            Path::new("/tmp/x"),
            addr,
            &NginxMode::ProxyCache {
                upstream: "127.0.0.1:5000".parse().expect("addr"),
            },
            false,
            None,
        );
        assert!(conf.contains("worker_processes auto;"));
        assert!(!conf.contains("user "), "{conf}");
        assert!(conf.contains("proxy_cache_key \"$request_uri|$http_accept\";"));
        assert!(conf.contains("server 127.0.0.1:5000;"));
        for line in conf
            .lines()
            .filter(|l| l.contains("_path ") || l.starts_with("pid"))
        {
            assert!(line.contains("/tmp/x/"), "{line}");
        }
        let conf = render_nginx_conf(
            Path::new("/tmp/x"),
            addr,
            &NginxMode::Static {
                root: "/tmp/www".into(),
            },
            true,
            Some(1),
        );
        assert!(conf.contains("worker_processes 1;"));
        assert!(conf.starts_with("# Generated") && conf.contains("\nuser root;\n"));
        assert!(conf.contains("root /tmp/www;") && conf.contains("sendfile on;"));
    }

    #[test]
    fn distribution_config_is_a_quiet_proxy() {
        let conf = render_distribution_config(
            "127.0.0.1:1".parse().expect("addr"),
            Path::new("/s"),
            "http://127.0.0.1:2",
        );
        assert!(conf.contains("remoteurl: \"http://127.0.0.1:2\""));
        assert!(conf.contains("level: warn"));
        assert!(conf.contains("disabled: true"));
    }
}

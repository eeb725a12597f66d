//! Real registry clients on loopback: a Docker 20.10 daemon ([`DockerDaemon`],
//! Debian `docker.io`), a standalone containerd 1.6 with `ctr`
//! ([`Containerd`]), and podman 4.3 ([`Podman`]), each with private state
//! directories, so nothing touches the machine's own `/var/lib/docker`,
//! `/var/lib/containerd` or `/var/lib/containers`.
//!
//! Daemons run under a small `sh` supervisor: it starts the daemon, records
//! its pid, and watches the test process; when the test process is gone
//! (even after a SIGKILL), or when the daemon is stopped, it sends the
//! daemon SIGTERM *by pid*, waits for it, and removes the daemon's directory.
//! That makes a process-wide shared daemon ([`DockerDaemon::shared`], held in
//! a `OnceLock` whose value is never dropped) safe: it cannot outlive the
//! test binary.
//!
//! The daemons never need the internet: images are referenced as
//! `127.0.0.1:PORT/NAME:TAG` (loopback registries are insecure registries,
//! plain HTTP), and `docker load` takes an archive generated offline
//! ([`docker_archive`]).
//!
//! Note the Docker CLI trap on these machines: a Docker 28 CLI sits at
//! `/usr/local/bin/docker`, ahead of Debian's 20.10 CLI at `/usr/bin/docker`
//! in `PATH`; [`DockerDaemon::docker`] always runs `/usr/bin/docker`.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::image::Image;
use crate::tools::require_program;

/// How long one client command (a pull, a push, a load) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a daemon may take to answer on its socket after spawning.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd daemon may take to exit.
const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables a loopback-only client must not see.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// A finished command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    /// Exit code (`None`: killed by a signal or timed out).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout and stderr together.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with the whole output unless the command exited 0.
    ///
    /// # Panics
    /// When the command failed.
    pub fn expect_success(self, context: &str) -> Self {
        assert!(self.success(), "{context}: {self}");
        self
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited {:?} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.code,
            self.elapsed,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `program args…` with `env` added (and proxy variables removed),
/// stdin closed, killed after [`COMMAND_TIMEOUT`].
pub async fn run_command(program: &Path, args: &[String], env: &[(String, String)]) -> CmdOutput {
    let command_line = format!("{} {}", program.display(), args.join(" "));
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let started = Instant::now();
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", program.display()));
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => CmdOutput {
            command: command_line,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
        },
        Ok(Err(e)) => panic!("waiting for `{command_line}`: {e}"),
        // The future owned the child; dropping it killed the process.
        Err(_) => CmdOutput {
            command: command_line,
            code: None,
            stdout: String::new(),
            stderr: format!("timed out after {COMMAND_TIMEOUT:?} (killed)"),
            elapsed: started.elapsed(),
        },
    }
}

/// The supervisor: `sh -c SUPERVISOR sh TEST_PID DIR PROGRAM ARGS…`.
const SUPERVISOR: &str = r#"
test_pid=$1; dir=$2; shift 2
"$@" &
daemon=$!
echo "$daemon" > "$dir/daemon.pid.tmp" && mv "$dir/daemon.pid.tmp" "$dir/daemon.pid"
(
  while kill -0 "$test_pid" 2>/dev/null && kill -0 "$daemon" 2>/dev/null; do sleep 0.5; done
  kill -TERM "$daemon" 2>/dev/null
) &
watcher=$!
wait "$daemon"
status=$?
wait "$watcher"
rm -rf --one-file-system "$dir"
exit $status
"#;

/// A daemon process under the supervisor.
#[derive(Debug)]
struct Supervised {
    name: &'static str,
    supervisor: Mutex<Option<Child>>,
    daemon_pid: u32,
    dir: PathBuf,
    log_path: PathBuf,
}

impl Supervised {
    /// Spawns `program args…` (stdout and stderr to `dir/NAME.log`) and
    /// waits until the supervisor has recorded the daemon's pid.
    fn spawn(
        name: &'static str,
        dir: PathBuf,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Supervised {
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("sh")
            .arg(std::process::id().to_string())
            .arg(&dir)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Daemons find runc, containerd, iptables… under the sbin dirs.
            .env(
                "PATH",
                "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin",
            );
        for var in PROXY_VARS {
            command.env_remove(var);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut supervisor = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn the {name} supervisor: {e}"));
        let pid_file = dir.join("daemon.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        let daemon_pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            if let Ok(Some(status)) = supervisor.try_wait() {
                panic!(
                    "{name} exited at once ({status}); log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the {name} supervisor did not record a pid"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        Supervised {
            name,
            supervisor: Mutex::new(Some(supervisor)),
            daemon_pid,
            dir,
            log_path,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the supervisor (and so the daemon) has exited.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.supervisor.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM to the daemon by pid; waits for the supervisor to finish
    /// (which removes the directory). SIGKILL after [`DAEMON_STOP_TIMEOUT`].
    fn stop(&self) {
        let Some(mut supervisor) = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        if matches!(supervisor.try_wait(), Ok(None)) {
            signal(self.daemon_pid, "TERM");
            let deadline = Instant::now() + DAEMON_STOP_TIMEOUT;
            while matches!(supervisor.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    eprintln!(
                        "{} (pid {}) ignored SIGTERM for {DAEMON_STOP_TIMEOUT:?}; killing it",
                        self.name, self.daemon_pid
                    );
                    signal(self.daemon_pid, "KILL");
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = supervisor.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A private directory for a daemon; removed by the supervisor, not by Rust
/// (a process-wide daemon is never dropped).
fn daemon_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
        .keep()
}

/// `GET path` over a Unix socket; whether the answer is a 200.
fn unix_get_ok(socket: &Path, path: &str) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: daemon\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    head[..got].starts_with(b"HTTP/1.0 200") || head[..got].starts_with(b"HTTP/1.1 200")
}

/// Options of a Docker daemon.
#[derive(Debug, Clone, Default)]
pub struct DockerDaemonOptions {
    /// Extra environment for `dockerd` (e.g.
    /// `DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE=1`). Without it the variable is
    /// removed from the daemon's environment.
    pub env: Vec<(String, String)>,
    /// `registry-mirrors` in `daemon.json`.
    pub registry_mirrors: Vec<String>,
}

/// A Docker 20.10 daemon (Debian `docker.io`): vfs storage, no bridge, no
/// iptables, private data/exec roots, socket and trust key, every loopback
/// registry insecure (plain HTTP), debug log.
#[derive(Debug)]
pub struct DockerDaemon {
    process: Supervised,
    socket: PathBuf,
    cli_config: PathBuf,
    key_path: PathBuf,
}

/// The Debian Docker CLI (20.10), *not* `/usr/local/bin/docker`.
pub const DOCKER_CLI: &str = "/usr/bin/docker";

static SHARED_DOCKER: OnceLock<DockerDaemon> = OnceLock::new();

impl DockerDaemon {
    /// One daemon for the whole test binary (no extra environment), started
    /// on first use. Tests sharing it must use distinct repository names.
    ///
    /// # Panics
    /// As [`DockerDaemon::start`].
    pub fn shared() -> &'static DockerDaemon {
        SHARED_DOCKER.get_or_init(|| DockerDaemon::start(DockerDaemonOptions::default()))
    }

    /// Starts a daemon of its own (stopped on drop) and waits for `/_ping`.
    ///
    /// # Panics
    /// When `dockerd` or `/usr/bin/docker` is missing (with the install
    /// command), or the daemon does not answer within 60 s (with its log).
    pub fn start(options: DockerDaemonOptions) -> DockerDaemon {
        let dockerd = require_program("dockerd", "docker.io");
        assert!(
            Path::new(DOCKER_CLI).is_file(),
            "{DOCKER_CLI} (the Debian Docker 20.10 CLI) is missing; install it with \
             `sudo apt-get install -y docker.io` (or run `scripts/test`)"
        );
        let dir = daemon_dir("regcache-dockerd-");
        let socket = dir.join("docker.sock");
        let key_path = dir.join("key.json");
        let cli_config = dir.join("cli");
        std::fs::create_dir_all(&cli_config).unwrap();
        let daemon_json = json!({
            "insecure-registries": ["127.0.0.0/8"],
            "registry-mirrors": options.registry_mirrors,
            "debug": true,
            // The libtrust key that signs Schema 1 pushes; default /etc/docker/key.json.
            "deprecated-key-path": key_path,
            "max-concurrent-downloads": 3,
        });
        let config_path = dir.join("daemon.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&daemon_json).unwrap(),
        )
        .unwrap();
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let args = vec![
            "--config-file".to_owned(),
            path(&config_path),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--ip-masq=false".into(),
            "--bridge=none".into(),
            "--storage-driver=vfs".into(),
            "--data-root".into(),
            path(&dir.join("root")),
            "--exec-root".into(),
            path(&dir.join("exec")),
            "--pidfile".into(),
            path(&dir.join("dockerd.pid")),
            "-H".into(),
            format!("unix://{}", socket.display()),
        ];
        let mut env = options.env.clone();
        if !env
            .iter()
            .any(|(k, _)| k == "DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE")
        {
            // The supervisor inherits the test's environment; make sure the
            // default daemon really lacks the variable.
            env.push(("DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE".into(), String::new()));
        }
        let process = Supervised::spawn("dockerd", dir, &dockerd, &args, &env);
        let daemon = DockerDaemon {
            process,
            socket,
            cli_config,
            key_path,
        };
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        while !unix_get_ok(&daemon.socket, "/_ping") {
            if let Some(status) = daemon.process.exited() {
                panic!("dockerd exited ({status}); log:\n{}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer /_ping within {DAEMON_START_TIMEOUT:?}; log:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    /// `unix:///…/docker.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's log so far (debug level).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The daemon's libtrust key file (JWK with a `kid`), once it exists.
    pub fn trust_key_path(&self) -> &Path {
        &self.key_path
    }

    /// The daemon's working directory.
    pub fn dir(&self) -> &Path {
        &self.process.dir
    }

    /// `/usr/bin/docker -H unix://SOCK ARGS…` with a private CLI config.
    pub async fn docker(&self, args: &[&str]) -> CmdOutput {
        let mut argv = vec!["-H".to_owned(), self.host()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let env = vec![
            (
                "DOCKER_CONFIG".to_owned(),
                self.cli_config.to_string_lossy().into_owned(),
            ),
            ("DOCKER_CONTENT_TRUST".to_owned(), "0".to_owned()),
            ("DOCKER_CLI_HINTS".to_owned(), "false".to_owned()),
        ];
        run_command(Path::new(DOCKER_CLI), &argv, &env).await
    }

    /// `docker load -i FILE` of `archive` (a `docker save` tarball).
    ///
    /// # Panics
    /// When the load fails.
    pub async fn load(&self, archive: &[u8]) -> CmdOutput {
        let file = tempfile::Builder::new()
            .prefix("regcache-docker-archive-")
            .suffix(".tar")
            .tempfile()
            .unwrap();
        std::fs::write(file.path(), archive).unwrap();
        let path = file.path().to_string_lossy().into_owned();
        self.docker(&["load", "-i", &path])
            .await
            .expect_success("docker load")
    }

    /// `docker image inspect REF`, parsed (the first object).
    ///
    /// # Panics
    /// When the image is not there.
    pub async fn inspect_image(&self, reference: &str) -> Value {
        let out = self
            .docker(&["image", "inspect", reference])
            .await
            .expect_success("docker image inspect");
        let parsed: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("docker image inspect printed non-JSON ({e}): {out}"));
        parsed[0].clone()
    }

    /// Stops the daemon (SIGTERM by pid) and removes its directory. Also
    /// done on drop; never happens to [`DockerDaemon::shared`] before the
    /// test process exits.
    pub fn stop(&self) {
        self.process.stop();
    }
}

/// A standalone containerd 1.6 (CRI plugin off, private root, state and
/// socket), driven with `ctr` in namespace `regcache-e2e`. Stopped on drop.
#[derive(Debug)]
pub struct Containerd {
    process: Supervised,
    socket: PathBuf,
    ctr: PathBuf,
}

impl Containerd {
    /// Namespace used by [`Containerd::ctr`].
    pub const NAMESPACE: &'static str = "regcache-e2e";

    /// # Panics
    /// When containerd or ctr is missing (with the install command), or it
    /// does not answer `ctr version` within 60 s.
    pub fn start() -> Containerd {
        let containerd = require_program("containerd", "containerd");
        let ctr = require_program("ctr", "containerd");
        let dir = daemon_dir("regcache-containerd-");
        let socket = dir.join("containerd.sock");
        let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap();
        let config = format!(
            "version = 2\nroot = {root}\nstate = {state}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {sock}\n\
             [ttrpc]\n  address = {ttrpc}\n\
             [debug]\n  level = \"debug\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
            root = q(&dir.join("root")),
            state = q(&dir.join("state")),
            sock = q(&socket),
            ttrpc = q(&dir.join("containerd.sock.ttrpc")),
            opt = q(&dir.join("opt")),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let args = vec![
            "--config".to_owned(),
            config_path.to_string_lossy().into_owned(),
        ];
        let process = Supervised::spawn("containerd", dir, &containerd, &args, &[]);
        let daemon = Containerd {
            process,
            socket,
            ctr,
        };
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        loop {
            if daemon.socket.exists() {
                let status = Command::new(&daemon.ctr)
                    .arg("-a")
                    .arg(&daemon.socket)
                    .arg("--timeout")
                    .arg("2s")
                    .arg("version")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if status.is_ok_and(|s| s.success()) {
                    return daemon;
                }
            }
            if let Some(status) = daemon.process.exited() {
                panic!("containerd exited ({status}); log:\n{}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within {DAEMON_START_TIMEOUT:?}; log:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ctr -a SOCK -n regcache-e2e ARGS…`.
    pub async fn ctr(&self, args: &[&str]) -> CmdOutput {
        let mut argv = vec![
            "-a".to_owned(),
            self.socket.to_string_lossy().into_owned(),
            "-n".to_owned(),
            Self::NAMESPACE.to_owned(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        run_command(&self.ctr, &argv, &[]).await
    }

    /// The daemon log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `ctr content get DIGEST`, as bytes.
    ///
    /// # Panics
    /// When the content is not in the store.
    pub async fn content(&self, digest: &str) -> Vec<u8> {
        self.ctr(&["content", "get", digest])
            .await
            .expect_success("ctr content get")
            .stdout
            .into_bytes()
    }
}

/// podman 4.3 with private storage (vfs), run root, tmp dir,
/// `registries.conf` (no search registries) and an accept-anything
/// signature policy. Its directory is removed on drop.
#[derive(Debug)]
pub struct Podman {
    program: PathBuf,
    dir: tempfile::TempDir,
}

impl Podman {
    /// # Panics
    /// When podman is missing (with the install command).
    pub fn new() -> Podman {
        let program = require_program("podman", "podman");
        let dir = tempfile::Builder::new()
            .prefix("regcache-podman-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["root", "run", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = {}\ngraphroot = {}\n",
                q(&d.join("run")),
                q(&d.join("root"))
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        std::fs::write(
            d.join("containers.conf"),
            "[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n",
        )
        .unwrap();
        std::fs::write(d.join("auth.json"), r#"{"auths":{}}"#).unwrap();
        std::fs::write(
            d.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        Podman { program, dir }
    }

    /// Replaces this podman's `registries.conf` (the file
    /// `CONTAINERS_REGISTRIES_CONF` names; by default it only says
    /// `unqualified-search-registries = []`), e.g. with `[[registry]]` and
    /// `[[registry.mirror]]` tables.
    pub fn write_registries_conf(&self, toml: &str) {
        let path = self.dir.path().join("registries.conf");
        std::fs::write(&path, toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// `podman --root … --runroot … --storage-driver vfs ARGS…`.
    pub async fn podman(&self, args: &[&str]) -> CmdOutput {
        let d = self.dir.path();
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        let mut argv = vec![
            "--root".to_owned(),
            s(d.join("root")),
            "--runroot".into(),
            s(d.join("run")),
            "--storage-driver".into(),
            "vfs".into(),
            "--tmpdir".into(),
            s(d.join("tmp")),
            "--events-backend".into(),
            "file".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let env = vec![
            (
                "CONTAINERS_STORAGE_CONF".to_owned(),
                s(d.join("storage.conf")),
            ),
            (
                "CONTAINERS_REGISTRIES_CONF".to_owned(),
                s(d.join("registries.conf")),
            ),
            ("CONTAINERS_CONF".to_owned(), s(d.join("containers.conf"))),
            ("TMPDIR".to_owned(), s(d.join("tmp"))),
            ("REGISTRY_AUTH_FILE".to_owned(), s(d.join("auth.json"))),
        ];
        run_command(&self.program, &argv, &env).await
    }

    /// `podman pull --tls-verify=false --signature-policy P REF`.
    pub async fn pull(&self, reference: &str) -> CmdOutput {
        let policy = self
            .dir
            .path()
            .join("policy.json")
            .to_string_lossy()
            .into_owned();
        self.podman(&[
            "pull",
            "--tls-verify=false",
            "--signature-policy",
            &policy,
            reference,
        ])
        .await
    }

    /// `podman image inspect REF`, parsed (the first object).
    ///
    /// # Panics
    /// When the image is not there.
    pub async fn inspect_image(&self, reference: &str) -> Value {
        let out = self
            .podman(&["image", "inspect", reference])
            .await
            .expect_success("podman image inspect");
        let parsed: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("podman image inspect printed non-JSON ({e}): {out}"));
        parsed[0].clone()
    }
}

impl Podman {
    /// The layers containers/storage recorded for the image named
    /// `reference`, bottom first: `(compressed digest, uncompressed digest)`
    /// from `vfs-images/images.json` (the image's top layer) and
    /// `vfs-layers/layers.json` (each layer's parent). For Schema 1 images
    /// this is where podman keeps the diff ids: the config it synthesises
    /// from the Schema 1 history has empty `rootfs.diff_ids` (which
    /// `podman image inspect` shows as `RootFS.Layers: ["", …]`).
    ///
    /// # Panics
    /// When the files are missing or the image or a layer is not in them.
    pub fn storage_layers(&self, reference: &str) -> Vec<(String, String)> {
        let root = self.dir.path().join("root");
        let read = |name: &str| -> Value {
            let path = root.join(name);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", path.display()))
        };
        let images = read("vfs-images/images.json");
        let layers = read("vfs-layers/layers.json");
        let image = images
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| {
                i["names"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n == reference))
            })
            .unwrap_or_else(|| panic!("no image named {reference} in images.json: {images:#}"));
        let mut chain = Vec::new();
        let mut next = image["layer"].as_str().map(str::to_owned);
        while let Some(id) = next {
            let layer = layers
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["id"] == id.as_str())
                .unwrap_or_else(|| panic!("layer {id} not in layers.json: {layers:#}"));
            chain.push((
                layer["compressed-diff-digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                layer["diff-digest"].as_str().unwrap_or_default().to_owned(),
            ));
            next = layer["parent"].as_str().map(str::to_owned);
        }
        chain.reverse();
        chain
    }
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

/// A `docker save` archive of `image` (uncompressed layer tars, the config
/// bytes unchanged, so the image ID is the config digest), tagged
/// `repo_tags`, for `docker load`.
pub fn docker_archive(image: &Image, repo_tags: &[&str]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    let config_name = format!("{}.json", &image.config_digest()["sha256:".len()..]);
    append_file(&mut builder, &config_name, &image.config);
    let mut layer_paths = Vec::new();
    for layer in &image.layers {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&layer.blob[..])
            .read_to_end(&mut tar)
            .unwrap_or_else(|e| panic!("layer {} is not gzip: {e}", layer.digest));
        let path = format!("{}/layer.tar", &layer.diff_id["sha256:".len()..]);
        append_file(&mut builder, &path, &tar);
        layer_paths.push(path);
    }
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": repo_tags,
        "Layers": layer_paths,
    }]);
    append_file(
        &mut builder,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    builder
        .into_inner()
        .unwrap_or_else(|e| panic!("writing the archive failed: {e}"))
}

fn append_file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(crate::image::FIXED_MTIME);
    header.set_size(data.len() as u64);
    builder
        .append_data(&mut header, path, data)
        .unwrap_or_else(|e| panic!("appending {path} to a tar failed: {e}"));
}

/// The first `sha256:<64 hex>` after `marker` in `text` (e.g. the digest in
/// `docker push` / `docker pull` output).
pub fn digest_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    let rest = text[at..].trim_start();
    let candidate = rest.get(..71)?;
    (candidate.starts_with("sha256:")
        && candidate[7..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| candidate.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Platform, config, default_history};
    use crate::{ImageGen, sha256_digest};

    #[test]
    fn docker_archive_has_manifest_config_and_layers() {
        let mut g = ImageGen::new(11);
        let layers = g.layers(2);
        let cfg = config(
            &Platform::linux_amd64(),
            &layers,
            &default_history(2),
            Value::Null,
        );
        let image = Image::new(&cfg, layers, Platform::linux_amd64());
        let archive = docker_archive(&image, &["x/y:1"]);
        let mut names = Vec::new();
        let mut manifest = Value::Null;
        let mut entries = tar::Archive::new(&archive[..]);
        for entry in entries.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if name == "manifest.json" {
                manifest = serde_json::from_slice(&data).unwrap();
            } else if name.ends_with("layer.tar") {
                let hex = name.trim_end_matches("/layer.tar");
                assert_eq!(sha256_digest(&data), format!("sha256:{hex}"));
            }
            names.push(name);
        }
        assert_eq!(manifest[0]["RepoTags"][0], "x/y:1");
        assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), 2);
        assert!(names.contains(&format!("{}.json", &image.config_digest()[7..])));
    }

    #[test]
    fn finds_digests_after_markers() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            digest_after(&format!("1: digest: {d} size: 528\n"), "digest:"),
            Some(d.clone())
        );
        assert_eq!(digest_after("digest: sha256:xyz", "digest:"), None);
        assert_eq!(digest_after("nothing", "digest:"), None);
    }
}

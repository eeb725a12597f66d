//! S8's processes: moto (a local S3, the `[shared]` tier) and regcache
//! replicas on loopback, each with its own ports and data directory, stopped
//! on drop like the other launchers in [`super::super::servers`].
//!
//! The replicas are spawned together and only then waited for: a cluster
//! member may not call itself ready before it has seen its peers, so
//! starting them one by one could wait on a replica not yet spawned.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::super::servers::{Cpus, log_file, stop, temp_dir, wait_ready};

/// `n` distinct free loopback addresses: all held bound at once, then
/// released (separate binds of port 0 may hand out the same port twice).
pub fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}

// ----- moto ------------------------------------------------------------------

/// The bucket S8's replicas share.
pub const BUCKET: &str = "regcache-bench";

/// `moto_server` from the test virtualenv (`$REGCACHE_TEST_VENV`, or
/// `target/test-venv`): an in-memory S3 on loopback.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    addr: SocketAddr,
    program: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Where moto_server must be, or how to get it.
    pub fn locate() -> Result<PathBuf, String> {
        let venv = regcache_tests::tools::test_venv();
        let program = venv.join("bin").join("moto_server");
        if program.is_file() {
            Ok(program)
        } else {
            Err(format!(
                "needs moto (a local S3), and {} is missing: install it with `{}/bin/pip install 'moto[server]'` \
                 (or point REGCACHE_TEST_VENV at a virtualenv that has it)",
                program.display(),
                venv.display(),
            ))
        }
    }

    pub fn start(program: &Path, addr: SocketAddr, cpus: &Cpus) -> Result<Moto, String> {
        let dir = temp_dir("regcache-load-moto-");
        let log = dir.path().join("moto.log");
        let (out, err) = log_file(&log);
        let mut child = cpus
            .command(program)
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", program.display()))?;
        // GET / is moto's ListBuckets: 200 once it serves.
        if let Err(e) = wait_ready(&mut child, addr, "/", |s| s == 200, &log) {
            stop(&mut child);
            return Err(format!("moto_server did not come up: {e}"));
        }
        Ok(Moto {
            child,
            addr,
            program: program.to_path_buf(),
            _dir: dir,
        })
    }

    /// Creates `bucket` with an unsigned path-style `PUT /bucket` (moto
    /// does not check signatures).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let status = put_empty(self.addr, &format!("/{bucket}"))
            .map_err(|e| format!("moto: PUT /{bucket}: {e}"))?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("moto: PUT /{bucket} answered {status}"))
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn program(&self) -> &Path {
        &self.program
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// `PUT path` with an empty body on a fresh connection; the status.
fn put_empty(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:.200}")))
}

// ----- regcache replicas -----------------------------------------------------

/// How the replicas are set up.
#[derive(Clone)]
pub enum Mode {
    /// `[cluster]` with static `peers` and `[shared]` on moto.
    Cluster {
        /// moto's URL (`[shared] endpoint`).
        s3_endpoint: String,
        /// The shared secret, given as `REGCACHE_CLUSTER_SECRET`.
        secret: String,
    },
    /// Independent caches (no `[cluster]`, no `[shared]`): what today's
    /// binary accepts, to check the harness itself before cluster mode.
    Plain,
}

/// The secret redacted.
impl std::fmt::Debug for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Cluster { s3_endpoint, .. } => f
                .debug_struct("Cluster")
                .field("s3_endpoint", s3_endpoint)
                .field("secret", &"<redacted>")
                .finish(),
            Mode::Plain => f.write_str("Plain"),
        }
    }
}

/// One replica's listeners.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub registry: SocketAddr,
    pub admin: SocketAddr,
    pub cluster: SocketAddr,
}

/// The configuration of the replica listening on `me.cluster`, in a
/// cluster whose members listen on `members` (itself included). The
/// listeners come from the command line; the rate limit is off as in
/// S1-S7 ([`super::super::servers::REGCACHE_CONFIG`]).
pub fn replica_config(mode: &Mode, me: &Ports, members: &[Ports]) -> String {
    let mut config = String::from(super::super::servers::REGCACHE_CONFIG);
    if let Mode::Cluster { s3_endpoint, .. } = mode {
        let peers: Vec<String> = members
            .iter()
            .map(|m| format!("\"{}\"", m.cluster))
            .collect();
        config.push_str(&format!(
            "\n[cluster]\nlisten = \"{me}\"\nadvertise = \"{me}\"\npeers = [{peers}]\nsecret_env = \"REGCACHE_CLUSTER_SECRET\"\nrefresh_secs = 2\n\
             \n[shared]\nbucket = \"{BUCKET}\"\nprefix = \"\"\nendpoint = \"{s3_endpoint}\"\nregion = \"us-east-1\"\npath_style = true\n",
            me = me.cluster,
            peers = peers.join(", "),
        ));
    }
    config
}

/// A `regcache serve` replica.
#[derive(Debug)]
pub struct Replica {
    child: Child,
    ports: Ports,
    log: PathBuf,
    config: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    pub fn addr(&self) -> SocketAddr {
        self.ports.registry
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config(&self) -> &str {
        &self.config
    }

    /// What it logged (warnings and errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Starts `n` replicas of `bin` in front of `upstream_url`, then waits
/// until every one answers `/readyz` with 200.
pub fn start_replicas(
    bin: &Path,
    upstream_url: &str,
    cpus: &Cpus,
    mode: &Mode,
    n: usize,
) -> Result<Vec<Replica>, String> {
    let addrs = free_addrs(3 * n)?;
    let members: Vec<Ports> = addrs
        .chunks(3)
        .map(|c| Ports {
            registry: c[0],
            admin: c[1],
            cluster: c[2],
        })
        .collect();
    let mut replicas = Vec::with_capacity(n);
    for (i, ports) in members.iter().enumerate() {
        let dir = temp_dir(&format!("regcache-load-replica{}-", i + 1));
        let log = dir.path().join("regcache.log");
        let (out, err) = log_file(&log);
        let config = replica_config(mode, ports, &members);
        let config_path = dir.path().join("regcache.toml");
        std::fs::write(&config_path, &config)
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        let mut command = cpus.command(bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg(ports.registry.to_string())
            .arg("--admin-listen")
            .arg(ports.admin.to_string())
            .arg("--upstream")
            .arg(upstream_url)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("REGCACHE_LOG", "warn")
            // Only the credentials given here: nothing from the caller's
            // AWS profile, and no instance-metadata probing on loopback.
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        if let Mode::Cluster { secret, .. } = mode {
            command
                .env("REGCACHE_CLUSTER_SECRET", secret)
                .env("AWS_ACCESS_KEY_ID", "regcache-bench")
                .env("AWS_SECRET_ACCESS_KEY", "regcache-bench");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", bin.display()))?;
        replicas.push(Replica {
            child,
            ports: *ports,
            log,
            config,
            _dir: dir,
        });
    }
    for (i, replica) in replicas.iter_mut().enumerate() {
        let (admin, log) = (replica.ports.admin, replica.log.clone());
        wait_ready(&mut replica.child, admin, "/readyz", |s| s == 200, &log)
            .map_err(|e| format!("regcache replica {} did not come up: {e}", i + 1))?;
    }
    Ok(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(base: u16) -> Ports {
        let at = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        Ports {
            registry: at(base),
            admin: at(base + 1),
            cluster: at(base + 2),
        }
    }

    #[test]
    fn cluster_config_names_every_member_and_the_shared_bucket() {
        let members = [ports(1000), ports(2000), ports(3000)];
        let mode = Mode::Cluster {
            s3_endpoint: "http://127.0.0.1:9000".into(),
            secret: "s".repeat(32),
        };
        let config = replica_config(&mode, &members[1], &members);
        assert!(config.contains("requests_per_second_per_client = 0"));
        assert!(
            config.contains(
                "[cluster]\nlisten = \"127.0.0.1:2002\"\nadvertise = \"127.0.0.1:2002\"\n"
            )
        );
        assert!(
            config.contains("peers = [\"127.0.0.1:1002\", \"127.0.0.1:2002\", \"127.0.0.1:3002\"]")
        );
        assert!(config.contains("secret_env = \"REGCACHE_CLUSTER_SECRET\""));
        assert!(config.contains("[shared]\nbucket = \"regcache-bench\""));
        assert!(config.contains("endpoint = \"http://127.0.0.1:9000\""));
        assert!(config.contains("path_style = true"));
        // The secret itself goes through the environment, never the file.
        assert!(!config.contains(&"s".repeat(32)));
    }

    #[test]
    fn plain_config_has_no_cluster_sections() {
        let members = [ports(1000)];
        let config = replica_config(&Mode::Plain, &members[0], &members);
        assert!(!config.contains("[cluster]") && !config.contains("[shared]"));
    }

    #[test]
    fn free_addrs_are_distinct() {
        let addrs = free_addrs(9).unwrap();
        let mut ports: Vec<u16> = addrs.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 9);
    }
}

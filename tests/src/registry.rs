//! The real upstream: `docker-registry serve` (docker/distribution 2.8) on a
//! free loopback port, with its storage and logs in a temporary directory.
//!
//! ```no_run
//! use regcache_tests::{Registry, RegistryOptions};
//! let registry = Registry::start(RegistryOptions { schema1_enabled: true, ..Default::default() });
//! println!("{}", registry.url()); // http://127.0.0.1:PORT
//! // ... the process is killed when `registry` is dropped.
//! ```
//!
//! The registry writes its debug log and its access log (Apache combined
//! format) to one file; [`Registry::access_log`] and
//! [`Registry::access_entries`] read the access lines back, e.g. to count how
//! many times a pull-through peer asked its upstream for a blob.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::token::TokenAuth;
use crate::tools::require_program;

/// How long a registry may take to answer `GET /v2/` after spawning.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A user name and password, for htpasswd auth and for proxy-mode upstream
/// credentials. `Debug` does not print the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What to put in the generated registry configuration.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `compatibility.schema1.enabled`: accept Schema 1 manifest *pushes*.
    /// (Conversion to Schema 1 on GET happens regardless.)
    pub schema1_enabled: bool,
    /// `compatibility.schema1.signingkeyfile`: a PEM `EC PRIVATE KEY` (or a
    /// `.json`/`.jwk` JWK). Without it the registry generates a key per start.
    pub signing_key: Option<PathBuf>,
    /// Require HTTP Basic auth with this single user (`auth.htpasswd`; the
    /// file is generated with bcrypt).
    pub htpasswd: Option<Credentials>,
    /// `proxy.remoteurl`: run as a pull-through cache of this upstream.
    pub proxy_remote: Option<String>,
    /// `proxy.username` / `proxy.password` for the upstream in proxy mode.
    pub proxy_credentials: Option<Credentials>,
    /// `validation.manifests.urls.allow: ["^https?://"]`. distribution 2.8
    /// refuses manifests with foreign layers (layers with `urls`) unless an
    /// allow list is configured: the PUT fails with 500 UNKNOWN +
    /// MANIFEST_BLOB_UNKNOWN.
    pub allow_foreign_urls: bool,
    /// `storage.delete.enabled`.
    pub delete_enabled: bool,
    /// `auth.token`: require Bearer tokens from this token service (see
    /// [`crate::token::TokenServer::registry_auth`]). Exclusive with
    /// [`RegistryOptions::htpasswd`].
    pub token_auth: Option<TokenAuth>,
}

/// One line of the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// Path and query as requested, e.g. `/v2/library/x/blobs/sha256:…`.
    pub path: String,
    pub status: u16,
    /// Response body bytes the registry wrote (`-` counts as 0).
    pub bytes: u64,
    pub user_agent: String,
}

/// A running `docker-registry`. Killed (and reaped) on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    config_path: PathBuf,
    storage_dir: PathBuf,
    htpasswd: Option<Credentials>,
    /// Keeps storage, config and logs alive until the registry is dropped.
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Writes a config, spawns `docker-registry serve CONFIG` on a free
    /// loopback port, and waits until `GET /v2/` gets an HTTP answer.
    ///
    /// Blocks the calling thread for the start-up (typically < 1 s).
    ///
    /// # Panics
    /// When `docker-registry` is not installed (with the command that
    /// installs it), or when it does not come up within 30 s (with its log).
    pub fn start(options: RegistryOptions) -> Registry {
        let program = require_program("docker-registry", "docker-registry");
        // A free port can be taken between our probe and the registry's
        // bind; retry with a new port rather than fail the test.
        let mut last_log = String::new();
        for _attempt in 0..3 {
            match Self::try_start(&program, &options) {
                Ok(registry) => return registry,
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("docker-registry did not come up: {log}"),
            }
        }
        panic!("docker-registry could not bind a free port three times; last log:\n{last_log}")
    }

    fn try_start(program: &Path, options: &RegistryOptions) -> Result<Registry, String> {
        let dir = tempfile::Builder::new()
            .prefix("regcache-registry-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let storage_dir = dir.path().join("storage");
        std::fs::create_dir(&storage_dir).unwrap();
        let htpasswd_path = dir.path().join("htpasswd");
        if let Some(creds) = &options.htpasswd {
            std::fs::write(&htpasswd_path, htpasswd_line(creds)).unwrap();
        }
        let log_path = dir.path().join("registry.log");
        let config_path = dir.path().join("config.yml");
        let addr = crate::ports::free_addr();
        let config = render_config(options, addr, &storage_dir, &htpasswd_path);
        std::fs::write(&config_path, &config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new(program)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", program.display()));
        let mut registry = Registry {
            child,
            addr,
            log_path,
            config_path,
            storage_dir,
            htpasswd: options.htpasswd.clone(),
            _dir: dir,
        };
        registry
            .wait_until_ready()
            .map(|()| registry)
            .map_err(|log| format!("on {addr}; its log:\n{log}\nconfig:\n{config}"))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, as used in image references (`docker://HOST/NAME:TAG`).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The htpasswd user, when auth is on.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.htpasswd.as_ref()
    }

    /// The process id of the registry.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// `storage.filesystem.rootdirectory`.
    pub fn storage_dir(&self) -> &Path {
        &self.storage_dir
    }

    /// The whole log so far (debug log and access log interleaved).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The access-log lines so far, in Apache combined format
    /// (`127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "UA"`).
    ///
    /// The registry writes a line after the response completes, so a test
    /// that counts requests right after its own request returned may need to
    /// retry briefly.
    pub fn access_log(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| parse_access_line(line).is_some())
            .map(str::to_owned)
            .collect()
    }

    /// [`Registry::access_log`], parsed.
    pub fn access_entries(&self) -> Vec<AccessLogEntry> {
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// Kills the registry now (also done on drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a killed registry again: the same config, port and storage,
    /// so it comes back with everything it held. Blocks until `GET /v2/` is
    /// answered.
    ///
    /// # Panics
    /// When it does not come up (with its log).
    pub fn revive(&mut self) {
        self.kill();
        let program = require_program("docker-registry", "docker-registry");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        self.child = Command::new(program)
            .arg("serve")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn docker-registry again: {e}"));
        if let Err(log) = self.wait_until_ready() {
            panic!("docker-registry did not come back on {}: {log}", self.addr);
        }
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            // Any status counts (401 when auth is on).
            if crate::ports::answers_http(self.addr, "/v2/") {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "(no answer within {START_TIMEOUT:?})\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `user:$2b$…` for the registry's htpasswd file. distribution only accepts
/// bcrypt entries; cost 4 keeps it fast (the tests don't need strength).
fn htpasswd_line(creds: &Credentials) -> String {
    let hash = bcrypt::hash(&creds.password, 4)
        .unwrap_or_else(|e| panic!("bcrypt of the test password failed: {e}"));
    format!("{}:{hash}\n", creds.username)
}

/// YAML double-quoted scalar (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn render_config(
    options: &RegistryOptions,
    addr: SocketAddr,
    storage_dir: &Path,
    htpasswd_path: &Path,
) -> String {
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: debug\n  formatter: text\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: {delete}\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  secret: regcache-tests-not-secret\n",
        root = yaml_str(&storage_dir.to_string_lossy()),
        delete = options.delete_enabled,
    );
    if options.schema1_enabled || options.signing_key.is_some() {
        config.push_str(&format!(
            "compatibility:\n  schema1:\n    enabled: {}\n",
            options.schema1_enabled
        ));
        if let Some(key) = &options.signing_key {
            config.push_str(&format!(
                "    signingkeyfile: {}\n",
                yaml_str(&key.to_string_lossy())
            ));
        }
    }
    assert!(
        options.htpasswd.is_none() || options.token_auth.is_none(),
        "a registry has one auth method: htpasswd or token"
    );
    if let Some(token) = &options.token_auth {
        config.push_str(&format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            yaml_str(&token.realm),
            yaml_str(&token.service),
            yaml_str(&token.issuer),
            yaml_str(&token.rootcertbundle.to_string_lossy())
        ));
    }
    if options.htpasswd.is_some() {
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: regcache-tests\n    path: {}\n",
            yaml_str(&htpasswd_path.to_string_lossy())
        ));
    }
    if let Some(remote) = &options.proxy_remote {
        config.push_str(&format!("proxy:\n  remoteurl: {}\n", yaml_str(remote)));
        if let Some(creds) = &options.proxy_credentials {
            config.push_str(&format!(
                "  username: {}\n  password: {}\n",
                yaml_str(&creds.username),
                yaml_str(&creds.password)
            ));
        }
    }
    if options.allow_foreign_urls {
        config.push_str(
            "validation:\n  manifests:\n    urls:\n      allow:\n        - \"^https?://\"\n",
        );
    }
    config
}

/// Parses `IP - USER [DATE] "METHOD PATH PROTO" STATUS BYTES "REFERER" "UA"`.
fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    let first = line.split(' ').next()?;
    if first.parse::<std::net::IpAddr>().is_err() {
        return None;
    }
    let rest = &line[line.find("] \"")? + 3..];
    let (request, rest) = rest.split_once('"')?;
    let mut request = request.split(' ');
    let method = request.next()?.to_owned();
    let path = request.next()?.to_owned();
    let mut fields = rest.trim_start().splitn(3, ' ');
    let status = fields.next()?.parse().ok()?;
    let bytes = fields.next()?.parse().unwrap_or(0);
    let quoted = fields.next().unwrap_or_default();
    let user_agent = quoted
        .rsplit_once("\" \"")
        .map(|(_, ua)| ua.trim_end_matches('"').to_owned())
        .unwrap_or_default();
    Some(AccessLogEntry {
        method,
        path,
        status,
        bytes,
        user_agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_lines() {
        let line = r#"127.0.0.1 - - [22/Nov/2026:19:44:00 +0000] "GET /v2/t/a/blobs/sha256:ab HTTP/1.1" 200 2 "" "curl/7.88.1""#;
        assert_eq!(
            parse_access_line(line),
            Some(AccessLogEntry {
                method: "GET".into(),
                path: "/v2/t/a/blobs/sha256:ab".into(),
                status: 200,
                bytes: 2,
                user_agent: "curl/7.88.1".into(),
            })
        );
        let head = r#"127.0.0.1 - - [22/Nov/2026:19:44:00 +0000] "HEAD /v2/b/p/manifests/t HTTP/1.1" 200 - "" "Go-http-client/1.1""#;
        assert_eq!(parse_access_line(head).map(|e| e.bytes), Some(0));
        let big = r#"127.0.0.1 - - [22/Nov/2026:19:44:00 +0000] "GET /v2/b/p/blobs/sha256:ab HTTP/1.1" 200 1048576 "" "skopeo/1.9.3""#;
        assert_eq!(parse_access_line(big).map(|e| e.bytes), Some(1 << 20));
        assert_eq!(
            parse_access_line(r#"time="2026-11-22T19:44:00Z" level=info msg="x""#),
            None
        );
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let shown = format!("{:?}", Credentials::new("u", "hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn htpasswd_line_is_a_verifiable_bcrypt_entry() {
        let line = htpasswd_line(&Credentials::new("alice", "s3cret"));
        let (user, hash) = line.trim_end().split_once(':').unwrap();
        assert_eq!(user, "alice");
        assert!(hash.starts_with("$2"), "{hash}");
        assert!(bcrypt::verify("s3cret", hash).unwrap());
    }
}

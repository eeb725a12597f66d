//! Configuration: embedded defaults, then an optional TOML file, then environment
//! variables, then command-line flags; validated once, reporting every problem.
//!
//! `Config::default()` *is* the run-anywhere setup (listen on `0.0.0.0:5000`,
//! data in `./regcache-data`, Docker Hub upstream), so `regcache serve` needs no file.
//! Unknown keys are rejected (`deny_unknown_fields`): we own the whole file, a
//! typo should fail loudly rather than be ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// Exit status for a bad configuration (sysexits `EX_USAGE`).
pub const EX_USAGE: i32 = 64;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where registry clients connect.
    pub listen: String,
    /// Metrics, health and admin endpoints; kept off the client port so a mirror
    /// exposed to a fleet does not expose its internals.
    pub admin_listen: String,
    /// Root of the disk cache, the tag index and the signing key.
    pub data_dir: PathBuf,
    /// PEM certificate chain (leaf first) for the API listener. With
    /// `tls_key_file`, the API listener speaks TLS only; both or neither.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) of the leaf in `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    pub log: LogConfig,
    pub cache: CacheConfig,
    /// One `[upstream]` table, or several `[[upstream]]` tables (one may say
    /// `default = true`; otherwise the first is the default).
    pub upstream: Upstreams,
    pub schema1: Schema1Config,
    /// Ordered `[[policy]]` rules (see `policy.rs`); first match wins.
    pub policy: Vec<crate::policy::RuleConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `regcache_server=debug,info`.
    pub level: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory tier budget (manifests, configs, small blobs), e.g. `"256MiB"`.
    pub memory_size: ByteSize,
    /// Largest object kept in the memory tier.
    pub memory_max_object: ByteSize,
    /// Disk tier budget; least recently used entries are evicted beyond it.
    pub disk_size: ByteSize,
}

/// The upstream list: accepts a single `[upstream]` table or `[[upstream]]` tables.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstreams(pub Vec<UpstreamSection>);

impl<'de> Deserialize<'de> for Upstreams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Through toml::Value so a typo inside a table keeps its precise message.
        match toml::Value::deserialize(d)? {
            toml::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    UpstreamSection::deserialize(v)
                        .map_err(|e| D::Error::custom(format!("upstream #{}: {e}", i + 1)))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Upstreams),
            v @ toml::Value::Table(_) => UpstreamSection::deserialize(v)
                .map(|u| Upstreams(vec![u]))
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "upstream must be a table or an array of tables, not a {}",
                other.type_str()
            ))),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSection {
    /// The registry this upstream stands for, as clients name it: what
    /// containerd's `ns=` and a path prefix (`/v2/<name>/…`) are matched
    /// against, and the key of its tags, policies and metrics. Defaults to
    /// the URL's host (`docker.io` for Docker Hub).
    pub name: Option<String>,
    pub url: String,
    /// Other registry names that route here (e.g. `index.docker.io`).
    pub aliases: Vec<String>,
    /// Requests with no `ns=` and no registry path prefix go to the default upstream.
    pub default: bool,
    pub username: Option<String>,
    /// Inline password; prefer `password_file` or `password_env`.
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// How long a tag → digest answer is trusted before a HEAD revalidates it.
    pub tag_ttl_secs: u64,
    /// How long past its TTL a tag may still be served when the upstream fails.
    pub stale_if_error_secs: u64,
    /// How long past its TTL a tag is answered at once from the cache while
    /// one background HEAD revalidates it (0: off, requests wait for the HEAD).
    pub stale_while_revalidate_secs: u64,
    pub connect_timeout_secs: u64,
    pub first_byte_timeout_secs: u64,
    pub retry_attempts: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Schema1Config {
    /// PEM (SEC1 or PKCS#8) or JWK (`.json`/`.jwk`) P-256 key used to sign
    /// converted manifests; generated and saved here on first start if absent.
    /// Relative paths are under `data_dir`.
    pub signing_key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".into(),
            admin_listen: "127.0.0.1:5001".into(),
            data_dir: PathBuf::from("./regcache-data"),
            tls_cert_file: None,
            tls_key_file: None,
            log: LogConfig::default(),
            cache: CacheConfig::default(),
            upstream: Upstreams(vec![UpstreamSection::default()]),
            schema1: Schema1Config::default(),
            policy: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_size: ByteSize(256 << 20),
            memory_max_object: ByteSize(4 << 20),
            disk_size: ByteSize(50 << 30),
        }
    }
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            name: None,
            url: "https://registry-1.docker.io".into(),
            aliases: Vec::new(),
            default: false,
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            tag_ttl_secs: 60,
            stale_if_error_secs: 24 * 3600,
            stale_while_revalidate_secs: 0,
            connect_timeout_secs: 10,
            first_byte_timeout_secs: 30,
            retry_attempts: 3,
        }
    }
}

impl Default for Schema1Config {
    fn default() -> Self {
        Schema1Config {
            signing_key: PathBuf::from("schema1-signing-key.pem"),
        }
    }
}

/// The known keys: a key with `Some(children)` is a table (or an array of
/// tables) whose own keys are checked too.
type Schema = &'static [(&'static str, Option<&'static [(&'static str, Option<()>)]>)];

const SCHEMA: Schema = &[
    ("listen", None),
    ("admin_listen", None),
    ("data_dir", None),
    ("tls_cert_file", None),
    ("tls_key_file", None),
    ("log", Some(&[("format", None), ("level", None)])),
    (
        "cache",
        Some(&[
            ("memory_size", None),
            ("memory_max_object", None),
            ("disk_size", None),
        ]),
    ),
    (
        "upstream",
        Some(&[
            ("name", None),
            ("url", None),
            ("aliases", None),
            ("default", None),
            ("username", None),
            ("password", None),
            ("password_file", None),
            ("password_env", None),
            ("tag_ttl_secs", None),
            ("stale_if_error_secs", None),
            ("stale_while_revalidate_secs", None),
            ("connect_timeout_secs", None),
            ("first_byte_timeout_secs", None),
            ("retry_attempts", None),
        ]),
    ),
    ("schema1", Some(&[("signing_key", None)])),
    (
        "policy",
        Some(&[
            ("repositories", None),
            ("upstreams", None),
            ("schema1", None),
            ("schema1_digests", None),
            ("schema2_push", None),
        ]),
    ),
];

fn unknown_keys(table: &toml::Table, schema: Schema, _path: &str, problems: &mut Vec<String>) {
    for (key, value) in table {
        let Some((_, children)) = schema.iter().find(|(k, _)| k == key) else {
            let known: Vec<&str> = schema.iter().map(|(k, _)| *k).collect();
            problems.push(format!("unknown key `{key}` (known: {})", known.join(", ")));
            continue;
        };
        let Some(children) = children else { continue };
        let mut check = |t: &toml::Table, label: String| {
            for k in t.keys() {
                if !children.iter().any(|(c, _)| c == k) {
                    let known: Vec<&str> = children.iter().map(|(c, _)| *c).collect();
                    problems.push(format!(
                        "unknown key `{k}` in {label} (known: {})",
                        known.join(", ")
                    ));
                }
            }
        };
        match value {
            toml::Value::Table(t) => check(t, format!("[{key}]")),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = item {
                        check(t, format!("[[{key}]] #{}", i + 1));
                    }
                }
            }
            _ => {}
        }
    }
}

/// A byte count written as an integer or a string such as `"512MiB"`, `"10GB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("{s:?} is not a size (examples: 1048576, \"512MiB\", \"10GB\")")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => return Err(format!("{s:?} has an unknown unit {other:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Overrides from the command line (`None` = not given).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

/// Where environment variables come from; tests pass a map instead of mutating
/// the process environment.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The validated, ready-to-use configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_json: bool,
    pub log_level: String,
    pub memory_size: u64,
    pub memory_max_object: u64,
    pub disk_size: u64,
    /// Every upstream; `upstreams[default_upstream]` is the default.
    pub upstreams: Vec<UpstreamSettings>,
    pub default_upstream: usize,
    pub signing_key_path: PathBuf,
    pub policies: crate::policy::Policies,
    /// TLS for the API listener; `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
}

/// The API listener's certificate and key, loaded and checked against each
/// other at start-up (a key that does not match its certificate is a
/// configuration problem, not a failure of the first handshake).
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Certificates in `cert_file` (the leaf and any intermediates).
    pub chain_len: usize,
    /// rustls with the ring provider, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`;
    /// its certificate comes from `resolver`.
    pub server_config: Arc<rustls::ServerConfig>,
    /// The certificate new handshakes get; a reload (SIGHUP) swaps it.
    pub resolver: Arc<crate::tls::CertResolver>,
}

impl fmt::Debug for TlsSettings {
    // Paths only: the server config holds the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("chain_len", &self.chain_len)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[derive(Clone)]
pub struct UpstreamSettings {
    pub name: String,
    pub url: url::Url,
    pub aliases: Vec<String>,
    /// Docker Hub: one-component names get `library/` (official images).
    pub docker_hub: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tag_ttl: Duration,
    pub stale_if_error: Duration,
    /// Past `tag_ttl` and within this, a tag is served from the cache while a
    /// background HEAD revalidates it; zero turns it off.
    pub stale_while_revalidate: Duration,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub retry_attempts: u32,
}

impl fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tag_ttl", &self.tag_ttl)
            .field("stale_if_error", &self.stale_if_error)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Parse a TOML document. Unknown keys are errors, and all of them are
    /// reported together (serde's `deny_unknown_fields` stops at the first).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![format!("{origin}: {}", e.to_string().trim_end())],
        })?;
        let mut problems = Vec::new();
        unknown_keys(&table, SCHEMA, "", &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError {
                problems: problems
                    .into_iter()
                    .map(|p| format!("{origin}: {p}"))
                    .collect(),
            });
        }
        toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![format!("{origin}: {}", e.to_string().trim_end())],
        })
    }

    /// Defaults, then `file` (if any), then the environment, then flags; validated.
    pub fn load(
        file: Option<&Path>,
        env: &dyn EnvSource,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let mut cfg = match file {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    problems: vec![format!("cannot read config file {}: {e}", path.display())],
                })?;
                Config::from_toml(&text, &path.display().to_string())?
            }
        };
        let mut problems = Vec::new();
        cfg.apply_env(env, &mut problems);
        cfg.apply_overrides(overrides);
        cfg.validate(env, problems)
    }

    fn apply_env(&mut self, env: &dyn EnvSource, problems: &mut Vec<String>) {
        let set = |name: &str, slot: &mut String| {
            if let Some(v) = env.var(name) {
                *slot = v;
            }
        };
        set("REGCACHE_LISTEN", &mut self.listen);
        set("REGCACHE_ADMIN_LISTEN", &mut self.admin_listen);
        let di = self.upstream.default_index();
        if let Some(up) = self.upstream.0.get_mut(di) {
            set("REGCACHE_UPSTREAM", &mut up.url);
            if let Some(v) = env.var("REGCACHE_UPSTREAM_USERNAME") {
                up.username = Some(v);
            }
            if let Some(v) = env.var("REGCACHE_UPSTREAM_PASSWORD") {
                up.password = Some(v);
            }
        }
        set("REGCACHE_LOG_FORMAT", &mut self.log.format);
        set("REGCACHE_LOG", &mut self.log.level);
        if let Some(v) = env.var("REGCACHE_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = env.var("REGCACHE_TLS_CERT_FILE") {
            self.tls_cert_file = Some(v.into());
        }
        if let Some(v) = env.var("REGCACHE_TLS_KEY_FILE") {
            self.tls_key_file = Some(v.into());
        }
        let mut size = |name: &str, slot: &mut ByteSize| {
            if let Some(v) = env.var(name) {
                match ByteSize::parse(&v) {
                    Ok(b) => *slot = b,
                    Err(e) => problems.push(format!("{name}: {e}")),
                }
            }
        };
        size("REGCACHE_MEMORY_SIZE", &mut self.cache.memory_size);
        size("REGCACHE_DISK_SIZE", &mut self.cache.disk_size);
    }

    fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(v) = &o.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &o.admin_listen {
            self.admin_listen = v.clone();
        }
        let di = self.upstream.default_index();
        if let (Some(v), Some(up)) = (&o.upstream, self.upstream.0.get_mut(di)) {
            up.url = v.clone();
        }
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = &o.tls_cert_file {
            self.tls_cert_file = Some(v.clone());
        }
        if let Some(v) = &o.tls_key_file {
            self.tls_key_file = Some(v.clone());
        }
    }

    fn validate(
        self,
        env: &dyn EnvSource,
        mut problems: Vec<String>,
    ) -> Result<Settings, ConfigError> {
        let addr = |what: &str, v: &str, problems: &mut Vec<String>| -> Option<SocketAddr> {
            match v.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(format!(
                        "{what} = {v:?} is not an address such as 0.0.0.0:5000 or [::1]:5000"
                    ));
                    None
                }
            }
        };
        let listen = addr("listen", &self.listen, &mut problems);
        let admin_listen = addr("admin_listen", &self.admin_listen, &mut problems);
        if listen.is_some() && listen == admin_listen {
            problems.push("listen and admin_listen must differ".into());
        }
        let log_json = match self.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                problems.push(format!(
                    "log.format = {other:?}: expected \"text\" or \"json\""
                ));
                false
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problems.push(format!(
                "log.level = {:?} is not a valid filter",
                self.log.level
            ));
        }
        let mut upstreams = Vec::new();
        if self.upstream.0.is_empty() {
            problems.push("at least one upstream is needed".into());
        }
        if self.upstream.0.iter().filter(|u| u.default).count() > 1 {
            problems.push("only one upstream may say default = true".into());
        }
        let many = self.upstream.0.len() > 1;
        for (i, up) in self.upstream.0.iter().enumerate() {
            let label = if many {
                format!(
                    "upstream #{} ({})",
                    i + 1,
                    up.name.as_deref().unwrap_or(&up.url)
                )
            } else {
                "upstream".to_owned()
            };
            if let Some(u) = validate_upstream(&label, up, env, &mut problems) {
                upstreams.push(u);
            }
        }
        let mut seen = std::collections::HashMap::new();
        for u in &upstreams {
            for n in std::iter::once(&u.name).chain(u.aliases.iter()) {
                if let Some(other) = seen.insert(n.clone(), u.name.clone()) {
                    problems.push(format!(
                        "registry name {n:?} is claimed by both upstream {other:?} and upstream {:?}",
                        u.name
                    ));
                }
            }
        }
        if self.cache.memory_max_object.0 > self.cache.memory_size.0 {
            problems.push("cache.memory_max_object must not exceed cache.memory_size".into());
        }
        if self.cache.disk_size.0 < (1 << 20) {
            problems.push("cache.disk_size must be at least 1MiB".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            problems.push("data_dir must not be empty".into());
        }
        let policies = match crate::policy::Policies::new(&self.policy) {
            Ok(p) => p,
            Err(mut e) => {
                problems.append(&mut e);
                crate::policy::Policies::default()
            }
        };
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => load_tls(cert, key, &mut problems),
            (Some(_), None) => {
                problems.push(
                    "tls_cert_file is set but tls_key_file is not: give both (TLS) or neither (plain HTTP)"
                        .into(),
                );
                None
            }
            (None, Some(_)) => {
                problems.push(
                    "tls_key_file is set but tls_cert_file is not: give both (TLS) or neither (plain HTTP)"
                        .into(),
                );
                None
            }
        };
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let (Some(listen), Some(admin_listen)) = (listen, admin_listen) else {
            return Err(ConfigError {
                problems: vec!["internal: validation incomplete".into()],
            });
        };
        let signing_key_path = if self.schema1.signing_key.is_absolute() {
            self.schema1.signing_key.clone()
        } else {
            self.data_dir.join(&self.schema1.signing_key)
        };
        Ok(Settings {
            listen,
            admin_listen,
            data_dir: self.data_dir,
            log_json,
            log_level: self.log.level,
            memory_size: self.cache.memory_size.0,
            memory_max_object: self.cache.memory_max_object.0,
            disk_size: self.cache.disk_size.0,
            default_upstream: self.upstream.default_index(),
            upstreams,
            signing_key_path,
            policies,
            tls,
        })
    }
}

/// Reads and checks the API listener's certificate chain and key
/// ([`crate::tls::load`], also used by every reload), and builds the rustls
/// server configuration around a [`crate::tls::CertResolver`] holding them.
/// Every problem goes to `problems`; messages name the files, never key bytes.
fn load_tls(cert_file: &Path, key_file: &Path, problems: &mut Vec<String>) -> Option<TlsSettings> {
    let loaded = match crate::tls::load(cert_file, key_file) {
        Ok(loaded) => loaded,
        Err(mut found) => {
            problems.append(&mut found);
            return None;
        }
    };
    let resolver = Arc::new(crate::tls::CertResolver::new(loaded.key));
    match crate::tls::server_config(resolver.clone()) {
        Ok(server_config) => Some(TlsSettings {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            chain_len: loaded.chain_len,
            server_config: Arc::new(server_config),
            resolver,
        }),
        Err(e) => {
            problems.push(format!("internal: TLS versions: {e}"));
            None
        }
    }
}

impl Upstreams {
    /// The one marked `default = true`, else the first.
    pub fn default_index(&self) -> usize {
        self.0.iter().position(|u| u.default).unwrap_or(0)
    }
}

impl Settings {
    /// The upstream for requests that name no registry.
    pub fn default_upstream(&self) -> &UpstreamSettings {
        &self.upstreams[self
            .default_upstream
            .min(self.upstreams.len().saturating_sub(1))]
    }
}

fn validate_upstream(
    label: &str,
    up: &UpstreamSection,
    env: &dyn EnvSource,
    problems: &mut Vec<String>,
) -> Option<UpstreamSettings> {
    let before = problems.len();
    let url = match url::Url::parse(&up.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
                problems.push(format!(
                    "{label}: url = {:?} must not carry a query, fragment or credentials (use username/password)",
                    redact_url(&up.url)
                ));
            }
            Some(u)
        }
        _ => {
            problems.push(format!(
                "{label}: url = {:?} is not an http(s) URL such as https://registry-1.docker.io",
                redact_url(&up.url)
            ));
            None
        }
    };
    if up.name.as_deref() == Some("") {
        problems.push(format!("{label}: name must not be empty"));
    }
    let sources = [
        up.password.is_some(),
        up.password_file.is_some(),
        up.password_env.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources > 1 {
        problems.push(format!(
            "{label}: give at most one of password, password_file, password_env"
        ));
    }
    let mut password = up.password.clone();
    if let Some(path) = &up.password_file {
        match std::fs::read_to_string(path) {
            Ok(s) => password = Some(s.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) => problems.push(format!(
                "{label}: password_file {}: cannot read: {e}",
                path.display()
            )),
        }
    }
    if let Some(var) = &up.password_env {
        match env.var(var) {
            Some(s) => password = Some(s),
            None => problems.push(format!(
                "{label}: password_env names {var:?}, which is not set"
            )),
        }
    }
    if password.is_some() && up.username.is_none() {
        problems.push(format!("{label}: a password needs a username"));
    }
    if up.connect_timeout_secs == 0 || up.first_byte_timeout_secs == 0 {
        problems.push(format!("{label}: timeouts must be at least 1 second"));
    }
    let url = url?;
    if problems.len() > before {
        return None;
    }
    let name = up
        .name
        .clone()
        .unwrap_or_else(|| default_upstream_name(&url));
    let docker_hub = name == "docker.io"
        || matches!(
            url.host_str(),
            Some("registry-1.docker.io" | "index.docker.io")
        );
    Some(UpstreamSettings {
        name,
        url,
        aliases: up.aliases.clone(),
        docker_hub,
        username: up.username.clone(),
        password,
        tag_ttl: Duration::from_secs(up.tag_ttl_secs),
        stale_if_error: Duration::from_secs(up.stale_if_error_secs),
        stale_while_revalidate: Duration::from_secs(up.stale_while_revalidate_secs),
        connect_timeout: Duration::from_secs(up.connect_timeout_secs),
        first_byte_timeout: Duration::from_secs(up.first_byte_timeout_secs),
        retry_attempts: up.retry_attempts,
    })
}

/// `docker.io` for Docker Hub, else `host[:port]` of the URL.
fn default_upstream_name(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("upstream");
    if matches!(
        host,
        "registry-1.docker.io" | "index.docker.io" | "docker.io"
    ) {
        return "docker.io".into();
    }
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// Never echo credentials embedded in a URL back in an error message.
fn redact_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("<redacted>");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_run_anywhere() {
        let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:5000");
        assert_eq!(s.data_dir, PathBuf::from("./regcache-data"));
        assert_eq!(
            s.default_upstream().url.as_str(),
            "https://registry-1.docker.io/"
        );
        assert_eq!(s.default_upstream().name, "docker.io");
        assert_eq!(
            s.signing_key_path,
            PathBuf::from("./regcache-data/schema1-signing-key.pem")
        );
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("regcache.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[cache]\ndisk_size = \"2GiB\"\n",
        )
        .unwrap();
        let e = env(&[
            ("REGCACHE_LISTEN", "127.0.0.1:7001"),
            ("REGCACHE_UPSTREAM", "http://127.0.0.1:10"),
        ]);
        let s = Config::load(Some(&file), &e, &Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(s.default_upstream().url.as_str(), "http://127.0.0.1:10/");
        assert_eq!(s.disk_size, 2 << 30);
        let o = Overrides {
            listen: Some("127.0.0.1:7002".into()),
            upstream: Some("http://127.0.0.1:11".into()),
            ..Overrides::default()
        };
        let s = Config::load(Some(&file), &e, &o).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7002");
        assert_eq!(s.default_upstream().url.as_str(), "http://127.0.0.1:11/");
        assert_eq!(s.default_upstream().name, "127.0.0.1:11");
    }

    #[test]
    fn every_unknown_key_is_reported() {
        let err = Config::from_toml(
            "colour = 1\n[log]\nverbosity = 2\n[cache]\ndisk_sise = 3\n[upstream]\ntag_tll_secs = 4\n[[policy]]\nrepositories = [\"a\"]\nschema = \"x\"\n",
            "f.toml",
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 5, "{text}");
        for key in [
            "colour",
            "verbosity",
            "disk_sise",
            "tag_tll_secs",
            "schema`",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        assert!(text.contains("in [[policy]] #1"), "{text}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("listne = \"x\"\n", "f.toml").unwrap_err();
        assert!(err.problems[0].contains("listne"), "{err}");
        let err = Config::from_toml("[upstream]\nurll = \"x\"\n", "f.toml").unwrap_err();
        assert!(err.problems[0].contains("urll"), "{err}");
    }

    #[test]
    fn every_problem_reported_at_once() {
        let o = Overrides {
            listen: Some("nonsense".into()),
            admin_listen: Some("also nonsense".into()),
            upstream: Some("ftp://user:secret@x".into()),
            ..Overrides::default()
        };
        let e = env(&[
            ("REGCACHE_LOG_FORMAT", "xml"),
            ("REGCACHE_DISK_SIZE", "12 parsecs"),
        ]);
        let err = Config::load(None, &e, &o).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 5, "{text}");
        assert!(text.contains("listen = \"nonsense\""));
        assert!(text.contains("admin_listen"));
        assert!(text.contains("log.format"));
        assert!(text.contains("REGCACHE_DISK_SIZE"));
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn password_sources_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!(
                "[upstream]\nusername = \"bob\"\npassword_file = {:?}\n",
                pw.display().to_string()
            ),
        )
        .unwrap();
        let s = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.default_upstream().password.as_deref(), Some("hunter2"));
        assert!(!format!("{:?}", s.default_upstream()).contains("hunter2"));
        std::fs::write(
            &file,
            "[upstream]\nusername = \"bob\"\npassword_env = \"RC_PW\"\n",
        )
        .unwrap();
        let s = Config::load(
            Some(&file),
            &env(&[("RC_PW", "s3cret")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.default_upstream().password.as_deref(), Some("s3cret"));
        let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("RC_PW"));
    }

    #[test]
    fn the_documented_example_loads() {
        // deploy/regcache.toml documents every key; loading it keeps it honest.
        let text = include_str!("../../../deploy/regcache.toml");
        let cfg = Config::from_toml(text, "deploy/regcache.toml").unwrap();
        let d = Config::default();
        assert_eq!(cfg.listen, d.listen);
        assert_eq!(cfg.admin_listen, d.admin_listen);
        assert_eq!(cfg.data_dir, d.data_dir);
        assert_eq!(cfg.tls_cert_file, None);
        assert_eq!(cfg.tls_key_file, None);
        assert_eq!(cfg.log, d.log);
        assert_eq!(cfg.cache, d.cache);
        assert_eq!(cfg.upstream, d.upstream);
        assert_eq!(cfg.schema1, d.schema1);
        assert_eq!(cfg.policy.len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("regcache.toml");
        std::fs::write(&file, text).unwrap();
        let s = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap();
        let p = s.policies.resolve("docker.io", "legacy/a/b");
        assert_eq!(p.schema2_push, crate::policy::Schema2Push::Reject);
        let p = s.policies.resolve("registry.redhat.io", "ubi8/ubi");
        assert_eq!(p.schema1, crate::policy::Schema1Mode::Reject);
        let p = s.policies.resolve("docker.io", "ubi8/ubi");
        assert_eq!(p.rule, None);
    }

    #[test]
    fn the_multi_registry_example_loads() {
        let text = include_str!("../../../deploy/multi-registry.toml");
        let cfg = Config::from_toml(text, "deploy/multi-registry.toml").unwrap();
        assert_eq!(cfg.upstream.0.len(), 3);
        assert_eq!(cfg.upstream.default_index(), 0);
    }

    #[test]
    fn the_kubernetes_configmap_config_loads() {
        let yaml = include_str!("../../../deploy/kubernetes/regcache.yaml");
        let start = yaml.find("regcache.toml: |").unwrap();
        let body: String = yaml[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        let cfg = Config::from_toml(&body, "configmap").unwrap();
        assert_eq!(cfg.upstream.0.len(), 2);
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/regcache"));
    }

    #[test]
    fn several_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[[upstream]]\nurl = \"https://registry-1.docker.io\"\n\n[[upstream]]\nname = \"quay.io\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\naliases = [\"q.example\"]\n",
        )
        .unwrap();
        let s = Config::load(
            Some(&file),
            &env(&[("REGCACHE_UPSTREAM", "http://127.0.0.1:8")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.upstreams.len(), 2);
        assert_eq!(s.upstreams[0].name, "docker.io");
        assert!(s.upstreams[0].docker_hub);
        assert_eq!(s.default_upstream().name, "quay.io");
        assert_eq!(
            s.default_upstream().url.as_str(),
            "http://127.0.0.1:8/",
            "env overrides the default upstream"
        );
        assert!(!s.default_upstream().docker_hub);
        std::fs::write(
            &file,
            "[[upstream]]\nurl = \"http://a:1\"\n[[upstream]]\nurll = \"http://b:1\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().contains("[[upstream]] #2") && err.to_string().contains("urll"),
            "{err}"
        );
        std::fs::write(
            &file,
            "[[upstream]]\nname = \"x\"\nurl = \"http://a:1\"\ndefault = true\n[[upstream]]\nname = \"x\"\nurl = \"nope\"\ndefault = true\n",
        )
        .unwrap();
        let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("only one upstream may say default"), "{text}");
        assert!(text.contains("upstream #2 (x): url = \"nope\""), "{text}");
    }

    #[test]
    fn stale_while_revalidate_is_per_upstream_and_off_by_default() {
        let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.default_upstream().stale_while_revalidate, Duration::ZERO);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[[upstream]]\nname = \"quay.io\"\nurl = \"http://127.0.0.1:9\"\n\
             tag_ttl_secs = 5\nstale_while_revalidate_secs = 300\n\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:10\"\n",
        )
        .unwrap();
        let s = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.upstreams[0].tag_ttl, Duration::from_secs(5));
        assert_eq!(
            s.upstreams[0].stale_while_revalidate,
            Duration::from_secs(300)
        );
        assert_eq!(s.upstreams[1].stale_while_revalidate, Duration::ZERO);
        let debug = format!("{:?}", s.upstreams[0]);
        assert!(
            debug.contains("stale_while_revalidate: 300s"),
            "Debug shows the setting: {debug}"
        );

        // A single [upstream] table takes it too.
        let cfg =
            Config::from_toml("[upstream]\nstale_while_revalidate_secs = 7\n", "f.toml").unwrap();
        assert_eq!(cfg.upstream.0[0].stale_while_revalidate_secs, 7);

        // A typo is an unknown key that names the real one; a string is refused.
        let err =
            Config::from_toml("[upstream]\nstale_while_revalidate = 7\n", "f.toml").unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 1, "{text}");
        assert!(
            text.contains("unknown key `stale_while_revalidate`")
                && text.contains("stale_while_revalidate_secs"),
            "{text}"
        );
        let err = Config::from_toml(
            "[upstream]\nstale_while_revalidate_secs = \"1m\"\n",
            "f.toml",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("stale_while_revalidate_secs"),
            "{err}"
        );
    }

    /// A CA-signed leaf for 127.0.0.1 and `localhost`: (chain PEM with the
    /// leaf first, the leaf's PKCS#8 key PEM).
    fn leaf_chain() -> (String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (
            format!("{}{}", leaf.pem(), ca_cert.pem()),
            key.serialize_pem(),
        )
    }

    fn tls_files(dir: &Path, chain: &str, key: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, chain).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    fn tls_overrides(cert: &Path, key: &Path) -> Overrides {
        Overrides {
            tls_cert_file: Some(cert.to_owned()),
            tls_key_file: Some(key.to_owned()),
            ..Overrides::default()
        }
    }

    #[test]
    fn tls_is_off_by_default_and_loads_a_chain() {
        let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert!(s.tls.is_none());

        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &key);
        let s = Config::load(None, &env(&[]), &tls_overrides(&cert_file, &key_file)).unwrap();
        let tls = s.tls.as_ref().unwrap();
        assert_eq!(tls.chain_len, 2);
        assert_eq!(tls.cert_file, cert_file);
        assert_eq!(
            tls.server_config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // Debug names the files and never prints the key.
        let debug = format!("{s:?}");
        let body_line = key.lines().nth(1).unwrap();
        assert!(debug.contains("cert.pem"), "{debug}");
        assert!(!debug.contains(body_line), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }

    #[test]
    fn tls_keys_layer_like_listen() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &key);
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "tls_cert_file = \"/nonexistent/file.pem\"\ntls_key_file = \"/nonexistent/key.pem\"\n",
        )
        .unwrap();
        // The file alone names missing files: both are reported.
        let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.to_string().contains("/nonexistent/file.pem"), "{err}");
        // The environment overrides the file ...
        let e = env(&[
            ("REGCACHE_TLS_CERT_FILE", cert_file.to_str().unwrap()),
            ("REGCACHE_TLS_KEY_FILE", key_file.to_str().unwrap()),
        ]);
        let s = Config::load(Some(&file), &e, &Overrides::default()).unwrap();
        assert_eq!(s.tls.unwrap().key_file, key_file);
        // ... and flags override both.
        let bad = tls_overrides(&dir.path().join("flag-cert.pem"), &key_file);
        let err = Config::load(Some(&file), &e, &bad).unwrap_err();
        assert!(err.to_string().contains("flag-cert.pem"), "{err}");
    }

    #[test]
    fn tls_needs_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &key);
        let only_cert = Overrides {
            tls_cert_file: Some(cert_file),
            ..Overrides::default()
        };
        let err = Config::load(None, &env(&[]), &only_cert).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.problems[0].contains("tls_key_file is not"),
            "{}",
            err.problems[0]
        );
        let err = Config::load(
            None,
            &env(&[("REGCACHE_TLS_KEY_FILE", key_file.to_str().unwrap())]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.problems[0].contains("tls_cert_file is not"),
            "{}",
            err.problems[0]
        );
    }

    #[test]
    fn tls_problems_are_listed_with_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let (_, other_key) = leaf_chain();
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &key);

        // Unreadable files, and an address problem at the same time.
        let missing = dir.path().join("missing.pem");
        let mut o = tls_overrides(&missing, &dir.path().join("missing-key.pem"));
        o.listen = Some("nonsense".into());
        let err = Config::load(None, &env(&[]), &o).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        assert!(
            text.contains("tls_cert_file") && text.contains("missing.pem: cannot read"),
            "{text}"
        );
        assert!(text.contains("missing-key.pem: cannot read"), "{text}");

        // A certificate file with no certificate; a key file with no key.
        let err = Config::load(None, &env(&[]), &tls_overrides(&key_file, &cert_file)).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 2, "{text}");
        assert!(text.contains("no PEM certificate"), "{text}");
        assert!(text.contains("no PEM private key"), "{text}");
        assert!(!text.contains(key.lines().nth(1).unwrap()), "{text}");

        // A key that is not the leaf's.
        let wrong_key = dir.path().join("wrong-key.pem");
        std::fs::write(&wrong_key, &other_key).unwrap();
        let err =
            Config::load(None, &env(&[]), &tls_overrides(&cert_file, &wrong_key)).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.problems[0].contains("wrong-key.pem does not match the certificate"),
            "{err}"
        );
        assert!(!err.to_string().contains(other_key.lines().nth(1).unwrap()));

        // A chain whose first certificate is the CA, not the leaf, is refused too.
        let mut certs: Vec<&str> = chain
            .split_inclusive("-----END CERTIFICATE-----\n")
            .collect();
        certs.reverse();
        let reversed = dir.path().join("reversed.pem");
        std::fs::write(&reversed, certs.concat()).unwrap();
        let err = Config::load(None, &env(&[]), &tls_overrides(&reversed, &key_file)).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn tls_takes_sec1_keys() {
        use p256::pkcs8::DecodePrivateKey;
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let sec1 = p256::SecretKey::from_pkcs8_pem(&key)
            .unwrap()
            .to_sec1_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &sec1);
        let s = Config::load(None, &env(&[]), &tls_overrides(&cert_file, &key_file)).unwrap();
        assert!(s.tls.is_some());
    }

    #[test]
    fn tls_key_typos_are_unknown_keys() {
        let err = Config::from_toml("tls_cert = \"a\"\n", "f.toml").unwrap_err();
        assert!(err.problems[0].contains("tls_cert_file"), "{err}");
        let cfg = Config::from_toml(
            "tls_cert_file = \"a.pem\"\ntls_key_file = \"b.pem\"\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(cfg.tls_cert_file, Some(PathBuf::from("a.pem")));
        assert_eq!(cfg.tls_key_file, Some(PathBuf::from("b.pem")));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("512MiB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("10GB").unwrap().0, 10_000_000_000);
        assert_eq!(ByteSize::parse("42").unwrap().0, 42);
        assert!(ByteSize::parse("x").is_err());
        assert!(ByteSize::parse("99999999999999TiB").is_err());
    }
}

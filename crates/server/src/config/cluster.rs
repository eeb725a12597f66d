//! `[cluster]`: the replicas that share one cache, and how they find and
//! trust each other.
//!
//! Absent, regcache is a single replica (as it always was). Present, every
//! replica listens on an internal address (`listen`, never the registry or
//! admin port), tells the others how to reach it (`advertise`; in
//! Kubernetes from the pod IP through `REGCACHE_CLUSTER_ADVERTISE`), knows
//! its members from a static list or a DNS name (a headless Service), and
//! proves itself with a shared secret on every internal request. The
//! secret is read from a file or a variable, never written in the TOML,
//! and is redacted in `Debug`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::EnvSource;

/// The variable that overrides `advertise` (Kubernetes: the pod IP).
pub const ADVERTISE_ENV: &str = "REGCACHE_CLUSTER_ADVERTISE";
/// The variable holding the secret when neither `secret_file` nor
/// `secret_env` is given.
pub const DEFAULT_SECRET_ENV: &str = "REGCACHE_CLUSTER_SECRET";

/// `[cluster]` as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// The internal listener, e.g. `0.0.0.0:5002` (required).
    pub listen: Option<String>,
    /// How the other replicas reach this one, `host:port`; defaults to
    /// `listen` when its IP is not unspecified.
    pub advertise: Option<String>,
    /// Static members, `host:port` each (this replica may be among them).
    pub peers: Option<Vec<String>>,
    /// Or: the members are this name's A/AAAA records, `name:port`.
    pub peers_dns: Option<String>,
    /// A file holding the shared secret.
    pub secret_file: Option<PathBuf>,
    /// Or: the variable holding it (default `REGCACHE_CLUSTER_SECRET`).
    pub secret_env: Option<String>,
    /// How often membership is refreshed and peers probed.
    pub refresh_secs: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            listen: None,
            advertise: None,
            peers: None,
            peers_dns: None,
            secret_file: None,
            secret_env: None,
            refresh_secs: 2,
        }
    }
}

/// Where the members come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerSource {
    /// `host:port` each, as written.
    Static(Vec<String>),
    /// The A/AAAA records of `host`, each with `port`.
    Dns { host: String, port: u16 },
}

/// The validated `[cluster]`.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub listen: SocketAddr,
    /// `host:port` the others reach this replica at; its member name.
    pub advertise: String,
    pub peers: PeerSource,
    pub secret: ClusterSecret,
    pub refresh: Duration,
}

/// The secret every internal request carries (`Authorization: Bearer`).
#[derive(Clone)]
pub struct ClusterSecret(String);

impl ClusterSecret {
    pub const MIN_LEN: usize = 16;
    pub const MAX_LEN: usize = 4096;

    /// Refuses secrets shorter than [`Self::MIN_LEN`] bytes, longer than
    /// [`Self::MAX_LEN`], or with anything but printable ASCII (it goes in
    /// a header).
    pub fn new(secret: String) -> Result<ClusterSecret, String> {
        if secret.len() < Self::MIN_LEN {
            return Err(format!(
                "is shorter than {} bytes (try `openssl rand -hex 32`)",
                Self::MIN_LEN
            ));
        }
        if secret.len() > Self::MAX_LEN {
            return Err(format!("is longer than {} bytes", Self::MAX_LEN));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
        }
        Ok(ClusterSecret(secret))
    }

    /// Whether `presented` is the secret, in time that depends neither on
    /// where they differ nor on their lengths (both are hashed first).
    pub fn matches(&self, presented: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(presented.as_bytes());
        a.ct_eq(&b).into()
    }

    /// The secret itself, for the peer client's header. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// `host:port` with a non-empty host and a port other than 0; the port.
pub(super) fn host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.is_empty() || bare.contains(['/', ' ', '@', '?', '#']) {
        return None;
    }
    // An IPv6 address needs its brackets, else the port is ambiguous.
    if bare == host && host.contains(':') {
        return None;
    }
    Some((host, port))
}

/// Whether two listen addresses would collide (same port, and the same IP
/// or either one every IP).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `[cluster]` checked into [`ClusterSettings`]; `api` and `admin` are the
/// other listeners (when they parsed), which the internal one must not share.
pub(super) fn validate_cluster(
    c: &ClusterSection,
    api: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    env: &dyn EnvSource,
    problems: &mut Vec<String>,
) -> Option<ClusterSettings> {
    let before = problems.len();
    let listen = match c.listen.as_deref() {
        None => {
            problems.push(
                "cluster.listen is required: the internal listener's address, e.g. \"0.0.0.0:5002\""
                    .into(),
            );
            None
        }
        Some(v) => match v.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                problems.push(format!("cluster.listen = {v:?} needs a port other than 0"));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "cluster.listen = {v:?} is not an address such as 0.0.0.0:5002 or [::]:5002"
                ));
                None
            }
        },
    };
    if let Some(l) = listen {
        for (name, other) in [("listen", api), ("admin_listen", admin)] {
            if other.is_some_and(|o| overlaps(l, o)) {
                problems.push(format!(
                    "cluster.listen ({l}) must not share a port with {name} ({})",
                    other.map(|o| o.to_string()).unwrap_or_default()
                ));
            }
        }
    }
    let advertise = match (env.var(ADVERTISE_ENV), &c.advertise) {
        (Some(v), _) => Some((ADVERTISE_ENV.to_owned(), v)),
        (None, Some(v)) => Some(("cluster.advertise".to_owned(), v.clone())),
        (None, None) => match listen {
            Some(l) if !l.ip().is_unspecified() => {
                Some(("cluster.listen".to_owned(), l.to_string()))
            }
            Some(l) => {
                problems.push(format!(
                    "cluster.advertise is required when cluster.listen ({l}) is every address: how the other replicas reach this one, host:port (or set {ADVERTISE_ENV}, e.g. from the pod IP)"
                ));
                None
            }
            None => None,
        },
    };
    let advertise = advertise.and_then(|(what, v)| match host_port(&v) {
        Some((host, _))
            if host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified()) =>
        {
            problems.push(format!(
                "{what} = {v:?} is no address to reach: give this replica's own IP or name"
            ));
            None
        }
        Some(_) => Some(v),
        None => {
            problems.push(format!(
                "{what} = {v:?} is not host:port, such as 10.0.0.5:5002"
            ));
            None
        }
    });
    let peers = match (&c.peers, &c.peers_dns) {
        (Some(_), Some(_)) | (None, None) => {
            problems.push(
                "cluster: give exactly one of peers (a list of host:port) and peers_dns (name:port of a headless Service)"
                    .into(),
            );
            None
        }
        (Some(list), None) => {
            let bad: Vec<&String> = list.iter().filter(|p| host_port(p).is_none()).collect();
            for p in &bad {
                problems.push(format!(
                    "cluster.peers: {p:?} is not host:port, such as 10.0.0.6:5002"
                ));
            }
            bad.is_empty().then(|| PeerSource::Static(list.clone()))
        }
        (None, Some(dns)) => match host_port(dns) {
            Some((host, port)) => Some(PeerSource::Dns {
                host: host.to_owned(),
                port,
            }),
            None => {
                problems.push(format!(
                    "cluster.peers_dns = {dns:?} is not name:port, such as regcache-peers.regcache.svc.cluster.local:5002"
                ));
                None
            }
        },
    };
    let secret = load_secret(c, env, problems);
    if !(1..=300).contains(&c.refresh_secs) {
        problems.push(format!(
            "cluster.refresh_secs = {} must be between 1 and 300",
            c.refresh_secs
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(ClusterSettings {
        listen: listen?,
        advertise: advertise?,
        peers: peers?,
        secret: secret?,
        refresh: Duration::from_secs(c.refresh_secs),
    })
}

/// The secret from `secret_file`, `secret_env`, or `REGCACHE_CLUSTER_SECRET`.
fn load_secret(
    c: &ClusterSection,
    env: &dyn EnvSource,
    problems: &mut Vec<String>,
) -> Option<ClusterSecret> {
    let (what, text) = match (&c.secret_file, &c.secret_env) {
        (Some(_), Some(_)) => {
            problems.push("cluster: give at most one of secret_file and secret_env".into());
            return None;
        }
        (Some(path), None) => {
            let what = format!("cluster.secret_file {}", path.display());
            match std::fs::read_to_string(path) {
                Ok(s) => (what, s),
                Err(e) => {
                    problems.push(format!("{what}: cannot read: {e}"));
                    return None;
                }
            }
        }
        (None, var) => {
            let named = var.is_some();
            let var = var.as_deref().unwrap_or(DEFAULT_SECRET_ENV);
            match env.var(var) {
                Some(s) => (format!("the variable {var}"), s),
                None if named => {
                    problems.push(format!(
                        "cluster.secret_env names {var:?}, which is not set"
                    ));
                    return None;
                }
                None => {
                    problems.push(format!(
                        "cluster: the shared secret is required: set secret_file, secret_env or {DEFAULT_SECRET_ENV}"
                    ));
                    return None;
                }
            }
        }
    };
    match ClusterSecret::new(text.trim_end_matches(['\r', '\n']).to_owned()) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("{what}: the cluster secret {e}"));
            None
        }
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;

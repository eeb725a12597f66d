//! A regcache cluster on loopback (issue 15): n `regcache serve` replicas,
//! each with its own API, admin and internal ports and its own data dir,
//! sharing one S3 bucket on a [`MotoServer`].
//!
//! ```no_run
//! # async fn demo(upstream_url: &str) {
//! use regcache_tests::cluster::TestCluster;
//! let mut cluster = TestCluster::start(3, upstream_url, |o| o.tag_ttl_secs(60)).await;
//! let owner = cluster.owner_of("sha256:…");
//! println!("{} owns it; pull through {}", cluster.internal_addr(owner), cluster.url(0));
//! cluster.kill9(owner);
//! let late = cluster.add_replica(); // peers: every member so far
//! # }
//! ```
//!
//! Every replica gets the `[cluster]` and `[shared]` tables below (via
//! [`RegcacheOptions::extra_toml`]) and the two secrets they name in its
//! environment (via [`RegcacheOptions::env`]):
//!
//! ```toml
//! [cluster]
//! listen = "127.0.0.1:PORT"      # this replica's internal listener
//! advertise = "127.0.0.1:PORT"
//! peers = ["127.0.0.1:P1", …]    # the internal addresses of the members
//! secret_env = "REGCACHE_CLUSTER_SECRET"
//! refresh_secs = 1
//!
//! [shared]
//! bucket = "regcache-test"
//! endpoint = "http://127.0.0.1:MOTO_PORT"
//! region = "us-east-1"
//! path_style = true
//! access_key_id = "test"
//! secret_access_key_env = "REGCACHE_TEST_S3_SECRET"
//! ```
//!
//! [`TestCluster::start_without_cluster_config`] leaves both tables out (the
//! same ports, data dirs and moto bucket): it checks the harness itself on a
//! regcache that has no cluster mode.
//!
//! Ownership is computed here independently of regcache, as the feature
//! specifies it ([`rendezvous_owner`]), so a test knows which replica must
//! do a fill without asking the replicas.

use std::net::SocketAddr;
use std::sync::Arc;

use sha2::Digest as _;

use crate::moto::MotoServer;
use crate::regcache::{Regcache, RegcacheOptions};

/// The shared bucket every replica uses.
pub const BUCKET: &str = "regcache-test";
/// The variable `[cluster] secret_env` names.
pub const SECRET_ENV: &str = "REGCACHE_CLUSTER_SECRET";
/// The variable `[shared] secret_access_key_env` names.
pub const S3_SECRET_ENV: &str = "REGCACHE_TEST_S3_SECRET";
/// moto accepts any key pair; these are the conventional ones.
const S3_ACCESS_KEY_ID: &str = "test";
const S3_SECRET_ACCESS_KEY: &str = "test";

/// Edits each replica's options before the cluster tables are added.
type Tweak = Arc<dyn Fn(RegcacheOptions) -> RegcacheOptions + Send + Sync>;

/// Whether the replicas get the `[cluster]` / `[shared]` tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tables {
    Cluster,
    Omitted,
}

/// n replicas, one moto server with [`BUCKET`] in it. Every process is
/// killed on drop.
pub struct TestCluster {
    replicas: Vec<Regcache>,
    /// The internal address of each member, in start order (index = replica).
    members: Vec<SocketAddr>,
    upstream_url: String,
    secret: String,
    tables: Tables,
    tweak: Tweak,
    moto: MotoServer,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("members", &self.members)
            .field("upstream_url", &self.upstream_url)
            .field("secret", &"<redacted>")
            .field("tables", &self.tables)
            .field("moto", &self.moto.url())
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// Starts moto, creates [`BUCKET`], then starts `n` replicas of a
    /// cluster in front of `upstream_url` (all at once: a replica may wait
    /// for its peers before it is ready). `tweak` edits each replica's
    /// options (TTL, upstream tables, …) before the cluster tables go in.
    ///
    /// # Panics
    /// When moto or a replica does not come up; a regcache without cluster
    /// mode refuses the configuration, and the message says so.
    pub async fn start(
        n: usize,
        upstream_url: &str,
        tweak: impl Fn(RegcacheOptions) -> RegcacheOptions + Send + Sync + 'static,
    ) -> TestCluster {
        Self::start_with(n, upstream_url, Arc::new(tweak), Tables::Cluster).await
    }

    /// [`TestCluster::start`] without the `[cluster]` and `[shared]` tables:
    /// n independent regcaches with the ports, data dirs, environment and
    /// moto bucket a cluster would have (a check of the harness).
    pub async fn start_without_cluster_config(
        n: usize,
        upstream_url: &str,
        tweak: impl Fn(RegcacheOptions) -> RegcacheOptions + Send + Sync + 'static,
    ) -> TestCluster {
        Self::start_with(n, upstream_url, Arc::new(tweak), Tables::Omitted).await
    }

    async fn start_with(n: usize, upstream_url: &str, tweak: Tweak, tables: Tables) -> TestCluster {
        let moto = MotoServer::start();
        moto.create_bucket(BUCKET).await;
        let mut cluster = TestCluster {
            replicas: Vec::new(),
            members: crate::ports::free_addrs(n),
            upstream_url: upstream_url.to_owned(),
            secret: random_secret(),
            tables,
            tweak,
            moto,
        };
        let all: Vec<usize> = (0..n).collect();
        let options: Vec<RegcacheOptions> = all.iter().map(|&i| cluster.options_for(i)).collect();
        cluster.replicas = start_all(options, cluster.start_hint());
        cluster
    }

    /// Starts one more replica (an empty data dir) whose peers are every
    /// member so far and itself; the running replicas keep the peers they
    /// were started with. Returns its index.
    ///
    /// # Panics
    /// When it does not come up.
    pub fn add_replica(&mut self) -> usize {
        let taken: Vec<SocketAddr> = self.members.clone();
        let addr = loop {
            let candidate = crate::ports::free_addr();
            if !taken.contains(&candidate) {
                break candidate;
            }
        };
        self.members.push(addr);
        let index = self.members.len() - 1;
        let options = self.options_for(index);
        let started = start_all(vec![options], self.start_hint());
        self.replicas.extend(started);
        index
    }

    /// The options of replica `index`, peers = every member so far.
    fn options_for(&self, index: usize) -> RegcacheOptions {
        let options = (self.tweak)(RegcacheOptions::new(self.upstream_url.clone()))
            .env(SECRET_ENV, self.secret.clone())
            .env(S3_SECRET_ENV, S3_SECRET_ACCESS_KEY);
        match self.tables {
            Tables::Omitted => options,
            Tables::Cluster => options.extra_toml(&self.cluster_toml(index)),
        }
    }

    /// What a start-up failure most likely means.
    fn start_hint(&self) -> &'static str {
        match self.tables {
            Tables::Cluster => {
                "a regcache without cluster mode (issue 15) refuses the [cluster] and [shared] \
                 tables"
            }
            Tables::Omitted => "no cluster tables: see the log",
        }
    }

    /// The `[cluster]` and `[shared]` tables of replica `index`.
    pub fn cluster_toml(&self, index: usize) -> String {
        let quote = |s: &str| serde_json::to_string(s).unwrap(); // TOML basic strings
        let me = quote(&self.members[index].to_string());
        let peers: Vec<String> = self.members.iter().map(|a| quote(&a.to_string())).collect();
        format!(
            "\n[cluster]\nlisten = {me}\nadvertise = {me}\npeers = [{peers}]\n\
             secret_env = {secret_env}\nrefresh_secs = 1\n\n\
             [shared]\nbucket = {bucket}\nendpoint = {endpoint}\nregion = \"us-east-1\"\n\
             path_style = true\naccess_key_id = {key_id}\nsecret_access_key_env = {s3_env}\n",
            peers = peers.join(", "),
            secret_env = quote(SECRET_ENV),
            bucket = quote(BUCKET),
            endpoint = quote(&self.moto.url()),
            key_id = quote(S3_ACCESS_KEY_ID),
            s3_env = quote(S3_SECRET_ENV),
        )
    }

    /// How many replicas were started (killed ones included).
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    pub fn replica(&self, index: usize) -> &Regcache {
        &self.replicas[index]
    }

    pub fn replica_mut(&mut self, index: usize) -> &mut Regcache {
        &mut self.replicas[index]
    }

    /// `http://127.0.0.1:PORT` of replica `index`'s registry API.
    pub fn url(&self, index: usize) -> String {
        self.replicas[index].url()
    }

    /// `127.0.0.1:PORT` of replica `index`'s registry API (image references).
    pub fn host(&self, index: usize) -> String {
        self.replicas[index].host()
    }

    /// The internal (cluster) address of replica `index`, as advertised.
    pub fn internal_addr(&self, index: usize) -> SocketAddr {
        self.members[index]
    }

    /// `http://127.0.0.1:PORT` of replica `index`'s internal listener.
    pub fn internal_url(&self, index: usize) -> String {
        format!("http://{}", self.members[index])
    }

    /// The advertised internal addresses of every member, in order.
    pub fn members(&self) -> Vec<String> {
        self.members.iter().map(SocketAddr::to_string).collect()
    }

    /// The process id of replica `index`, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.replicas[index].pid()
    }

    /// SIGKILL replica `index` now (no graceful hand-over).
    pub fn kill9(&mut self, index: usize) {
        self.replicas[index].kill();
    }

    /// The secret the replicas share (the value of [`SECRET_ENV`]).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn moto(&self) -> &MotoServer {
        &self.moto
    }

    /// The index of the replica that owns `digest` among the running ones
    /// ([`rendezvous_owner`] over their advertised internal addresses).
    ///
    /// # Panics
    /// When no replica runs.
    pub fn owner_of(&self, digest: &str) -> usize {
        let live: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| self.replicas[i].pid().is_some())
            .collect();
        let names: Vec<String> = live.iter().map(|&i| self.members[i].to_string()).collect();
        let best = rendezvous_owner(&names, digest)
            .unwrap_or_else(|| panic!("no replica of the cluster is running"));
        live[best]
    }

    /// Every replica's log, each under a header line, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            out.push_str(&format!(
                "===== replica {i} (api {}, internal {}) =====\n{}\n",
                replica.addr(),
                self.members[i],
                replica.log()
            ));
        }
        out
    }
}

/// Starts every replica at once (a cluster member may wait for its peers
/// before it reports ready) and returns them in order.
///
/// # Panics
/// With the first replica's start-up failure, naming the replica.
fn start_all(options: Vec<RegcacheOptions>, hint: &str) -> Vec<Regcache> {
    let handles: Vec<_> = options
        .into_iter()
        .map(|o| std::thread::spawn(move || Regcache::start(o)))
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    let mut replicas = Vec::new();
    let mut failure = None;
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(replica) => replicas.push(replica),
            Err(payload) if failure.is_none() => {
                let why = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failure = Some(format!("cluster replica {i} did not start ({hint}): {why}"));
            }
            Err(_) => {}
        }
    }
    if let Some(failure) = failure {
        drop(replicas); // kills the ones that did start
        panic!("{failure}");
    }
    replicas
}

/// The rendezvous score of `member` for `digest`: the first 8 bytes, big
/// endian, of SHA-256(member || 0x00 || digest).
pub fn rendezvous_score(member: &str, digest: &str) -> u64 {
    let mut hasher = sha2::Sha256::new();
    hasher.update(member.as_bytes());
    hasher.update([0u8]);
    hasher.update(digest.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

/// The index in `members` of `digest`'s owner: the highest
/// [`rendezvous_score`] (`None` for no members).
pub fn rendezvous_owner(members: &[String], digest: &str) -> Option<usize> {
    members
        .iter()
        .enumerate()
        .max_by_key(|(_, m)| rendezvous_score(m, digest))
        .map(|(i, _)| i)
}

/// 32 random bytes, hex: the cluster secret of one test.
fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_digests_and_keeps_owners_when_another_member_leaves() {
        let members: Vec<String> = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let mut counts = [0usize; 3];
        for i in 0..300 {
            let digest = format!("sha256:{:064x}", i);
            let owner = rendezvous_owner(&members, &digest).unwrap();
            counts[owner] += 1;
            // Without a member that does not own it, the owner stays.
            let other = (owner + 1) % 3;
            let rest: Vec<String> = members
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != other)
                .map(|(_, m)| m.clone())
                .collect();
            let again = rendezvous_owner(&rest, &digest).unwrap();
            assert_eq!(rest[again], members[owner], "{digest}");
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
        assert_eq!(rendezvous_owner(&[], "sha256:00"), None);
    }

    #[test]
    fn the_score_is_sha256_of_member_nul_digest() {
        // Computed independently: `printf 'a\0b' | sha256sum` = 59b271ae1bbcb1d3…
        assert_eq!(rendezvous_score("a", "b"), 0x59b2_71ae_1bbc_b1d3);
        // `printf '127.0.0.1:7001\0sha256:abc' | sha256sum` = c8227af05aa110f6…
        assert_eq!(
            rendezvous_score("127.0.0.1:7001", "sha256:abc"),
            0xc822_7af0_5aa1_10f6
        );
    }
}

//! Replicas that fetch each blob from the upstream once, cluster-wide.
//!
//! Every digest has an *owner* among the live members ([`Cluster::owner`],
//! rendezvous hashing in `rendezvous.rs`). A replica that misses locally
//! (and in the shared tier) asks the owner over the internal listener
//! (`internal.rs`), which joins or starts its one fill and streams it as it
//! arrives ([`Cluster::fetch_blob`], `peer.rs`). Membership (`members.rs`)
//! is a static list or a DNS name's records, refreshed and probed every
//! `refresh`; a member whose probe fails, or that a request saw fail
//! ([`Cluster::suspect`]), stops owning anything until it answers again,
//! so a dead owner costs one failed request, after which the asker (and
//! everyone else) fills itself or asks the next owner.
//!
//! Every internal request carries the shared secret as a bearer token; the
//! internal listener refuses any other.

mod internal;
mod members;
mod peer;
mod rendezvous;
mod shared;

#[cfg(test)]
mod startup_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use regcache_formats::Digest;

use crate::config::ClusterSettings;
use crate::metrics_cluster::ClusterMetrics;

#[cfg(test)]
pub use internal::Unwired;
pub use internal::{InternalBlob, InternalBlobs, serve_internal};
pub use peer::{PeerBody, PeerError};
pub use rendezvous::score;
pub use shared::shared_tier;

/// A replica, as `host:port` of its internal listener (its `advertise`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member(pub String);

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who fills a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// This replica: fill it (from the shared tier or the upstream).
    Me,
    /// Ask this member.
    Peer(Member),
}

/// One member as the membership task sees it (for `/api/stats` and logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub member: Member,
    pub live: bool,
    pub is_me: bool,
    /// How long ago a probe last answered 200 (`None`: never; always
    /// `None` for this replica, which is not probed).
    pub last_probe_ok: Option<Duration>,
}

/// The cluster handle: cheap to clone, shared by the blob path, the
/// internal listener and the membership task (which stops when the last
/// handle is gone).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    me: Member,
    settings: ClusterSettings,
    members: members::Members,
    client: reqwest::Client,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.inner.me)
            .field("peers", &self.inner.settings.peers)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the membership task (needs a tokio runtime): every `refresh`,
    /// the members are read again (the static list, or `peers_dns`
    /// resolved) and every other member's `GET /internal/v1/health` is
    /// probed (with the secret, 1 s timeout). A member is live when its
    /// last probe answered 200, and before its first; this replica always is.
    pub fn start(settings: &ClusterSettings) -> Cluster {
        Cluster::start_with_metrics(settings, ClusterMetrics::default())
    }

    /// [`Cluster::start`], counting in `metrics` (the app's registry).
    pub fn start_with_metrics(settings: &ClusterSettings, metrics: ClusterMetrics) -> Cluster {
        let me = Member(settings.advertise.clone());
        let initial = match &settings.peers {
            crate::config::PeerSource::Static(list) => {
                list.iter().map(|p| Member(p.clone())).collect()
            }
            // Resolved by the task's first round, at once.
            crate::config::PeerSource::Dns { .. } => Vec::new(),
        };
        let inner = Arc::new(Inner {
            members: members::Members::new(me.clone(), initial),
            me,
            settings: settings.clone(),
            client: peer::client(),
            metrics,
        });
        inner.publish_metrics();
        tokio::spawn(members::run(Arc::downgrade(&inner)));
        tracing::info!(me = %inner.me, peers = ?settings.peers, refresh = ?settings.refresh, "cluster membership started");
        Cluster { inner }
    }

    pub fn me(&self) -> &Member {
        &self.inner.me
    }

    /// The live member with the highest rendezvous score for `digest`.
    pub fn owner(&self, digest: &Digest) -> Owner {
        let live = self.inner.members.live();
        match rendezvous::pick(&live, digest.as_str()) {
            Some(m) if *m != self.inner.me => Owner::Peer(m.clone()),
            _ => Owner::Me,
        }
    }

    /// The asker saw `member` fail: it is not live until a probe answers
    /// again, and not before `refresh` has passed, so [`Cluster::owner`]
    /// moves to the next member at once. Suspecting this replica does nothing.
    pub fn suspect(&self, member: &Member) {
        if self
            .inner
            .members
            .suspect(member, self.inner.settings.refresh)
        {
            tracing::warn!(%member, "cluster member suspected: a request to it failed");
        }
        self.inner.publish_metrics();
    }

    /// Every member now, this replica first, then by name.
    pub fn members(&self) -> Vec<MemberStatus> {
        self.inner.members.statuses()
    }

    /// Whether `presented` is the cluster's secret (constant time).
    pub fn secret_matches(&self, presented: &str) -> bool {
        self.inner.settings.secret.matches(presented)
    }

    /// `GET` the blob from `member`'s internal endpoint from `offset`
    /// (`Range: bytes=offset-` when above 0). The body streams; an `Err`
    /// item means it broke off.
    pub async fn fetch_blob(
        &self,
        member: &Member,
        upstream: &str,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<PeerBody, PeerError> {
        peer::fetch_blob(&self.inner, member, upstream, repository, digest, offset).await
    }
}

impl Inner {
    fn publish_metrics(&self) {
        let (live, suspect) = self.members.counts();
        self.metrics.set_members(live, suspect);
    }
}

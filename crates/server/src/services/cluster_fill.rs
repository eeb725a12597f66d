//! Where a fill's bytes come from when replicas work together: the shared
//! S3 tier first, then the digest's owner among the replicas, and only then
//! the upstream.
//!
//! * **Shared tier.** A blob another replica fetched is there under its
//!   digest; it streams into this replica's fill like an upstream body and is
//!   verified by the same commit.
//! * **Owner.** Rendezvous hashing gives every digest one owner among the
//!   live replicas ([`crate::cluster::Cluster::owner`]). A replica that is not
//!   the owner asks the owner's internal endpoint, which joins or starts its
//!   one fill and streams it as it arrives; so N replicas make one upstream
//!   fetch. An owner that can't be reached, or whose stream breaks, is
//!   suspected and the next owner is asked, from the byte already reached;
//!   when this replica is the owner it fills from the upstream itself (with
//!   `Range` from that byte). So a dead owner costs at most one extra fetch,
//!   never a failed pull.
//! * **Never twice.** A fill started for a peer's internal request does not
//!   ask a peer again (the owner's view of the members may differ; asking on
//!   could loop), and neither does a fill acting with a client's own
//!   upstream credentials (the owner would fetch with regcache's identity).
//!
//! After a fill from the upstream commits, the verified file is uploaded to
//! the shared tier in the background (once per digest at a time); a fill fed
//! by the shared tier or by a peer uploads nothing: its source did.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use parking_lot::Mutex;
use regcache_formats::Digest;
use regcache_store::{FillWriter, SharedTier, Source, Store};
use regcache_upstream::{BlobBody, UpstreamError};

use super::blobs::Pump;
use crate::cluster::{Cluster, Owner};
use crate::metrics_cluster::ClusterMetrics;

/// How long the first answer of the shared tier may take before the fill
/// goes on without it (a sick object store costs a little latency, not pulls).
const SHARED_FIRST_BYTE: Duration = Duration::from_secs(3);

/// The cluster's part of the blob path. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ClusterFill {
    pub(super) shared: Option<SharedTier>,
    pub(super) cluster: Option<Cluster>,
    /// Digests being uploaded to the shared tier by this replica.
    uploads: Arc<Mutex<HashSet<Digest>>>,
    pub(super) metrics: ClusterMetrics,
}

/// How trying one source ended.
pub(super) enum Tried {
    /// The fill committed, or failed and told its readers: nothing more to do.
    Done,
    /// The source does not have it, or broke off; the fill goes on from
    /// `writer.written()` with the next source.
    Next(FillWriter),
}

impl ClusterFill {
    pub fn new(
        shared: Option<SharedTier>,
        cluster: Option<Cluster>,
        metrics: ClusterMetrics,
    ) -> ClusterFill {
        ClusterFill {
            shared,
            cluster,
            uploads: Arc::default(),
            metrics,
        }
    }

    pub fn is_on(&self) -> bool {
        self.shared.is_some() || self.cluster.is_some()
    }

    /// Uploads the committed blob to the shared tier in the background
    /// (skipped if an upload of it is already running here).
    pub(super) fn upload_later(&self, store: &Store, digest: &Digest) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if !self.uploads.lock().insert(digest.clone()) {
            return;
        }
        let uploads = self.uploads.clone();
        let store = store.clone();
        let digest = digest.clone();
        tokio::spawn(async move {
            let result = match store.get(&digest).await {
                Ok(Some(Source::File { file, len })) => {
                    shared.upload_file(&digest, file, len).await.map(Some)
                }
                Ok(Some(Source::Bytes(bytes))) => shared.put_bytes(&digest, bytes).await.map(Some),
                Ok(Some(_)) | Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match result {
                Ok(Some(stored)) => tracing::debug!(%digest, ?stored, "blob in the shared tier"),
                Ok(None) => {
                    tracing::debug!(%digest, "blob not kept locally; not uploaded to the shared tier")
                }
                Err(error) => {
                    tracing::warn!(%digest, %error, "uploading the blob to the shared tier failed; other replicas will fill it themselves")
                }
            }
            uploads.lock().remove(&digest);
        });
    }
}

impl Pump {
    /// Feed the fill from the shared tier, then from the owner (see the
    /// module docs). `ask_owner`: false for a fill started for a peer.
    pub(super) async fn fill_from_cluster(
        &self,
        sources: &ClusterFill,
        ask_owner: bool,
        mut writer: FillWriter,
    ) -> Tried {
        if let Some(shared) = &sources.shared {
            writer = match self.fill_from_shared(shared, writer).await {
                Tried::Next(w) => w,
                Tried::Done => return Tried::Done,
            };
        }
        match (&sources.cluster, ask_owner) {
            (Some(cluster), true) => self.fill_from_owner(cluster, writer).await,
            _ => Tried::Next(writer),
        }
    }

    async fn fill_from_shared(&self, shared: &SharedTier, mut writer: FillWriter) -> Tried {
        let d = &self.digest;
        let offset = writer.written();
        let body = match tokio::time::timeout(SHARED_FIRST_BYTE, shared.open(d, offset)).await {
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) => return Tried::Next(writer),
            Ok(Err(error)) => {
                tracing::warn!(digest = %d, %error, "shared tier unavailable; filling from a peer or the upstream");
                return Tried::Next(writer);
            }
            Err(_) => {
                tracing::warn!(digest = %d, "shared tier slow to answer; filling from a peer or the upstream");
                return Tried::Next(writer);
            }
        };
        match self
            .feed(
                body.stream,
                body.len,
                body.offset,
                "shared tier",
                &mut writer,
            )
            .await
        {
            Fed::Whole => {
                self.commit(writer, "shared").await;
                Tried::Done
            }
            Fed::WriterFailed => Tried::Done,
            Fed::BrokeOff(error) => {
                tracing::warn!(digest = %d, %error, written = writer.written(), "shared tier body broke off; going on from a peer or the upstream");
                Tried::Next(writer)
            }
        }
    }

    async fn fill_from_owner(&self, cluster: &Cluster, mut writer: FillWriter) -> Tried {
        let d = &self.digest;
        // Each failure suspects a member, so this ends once every peer was
        // tried; the bound is a guard against a flapping view.
        for _ in 0..8 {
            let member = match cluster.owner(d) {
                Owner::Me => return Tried::Next(writer),
                Owner::Peer(m) => m,
            };
            let offset = writer.written();
            let body = match cluster
                .fetch_blob(&member, &self.upstream_name, &self.repository, d, offset)
                .await
            {
                Ok(body) => body,
                Err(error) if error.is_unreachable() => {
                    tracing::warn!(digest = %d, %member, %error, "the digest's owner is unreachable; asking the next one");
                    cluster.suspect(&member);
                    continue;
                }
                Err(error) => {
                    // The owner answered but could not serve it (its upstream
                    // refused, lacks or failed the blob): this replica asks its
                    // own upstream, which has the last word and the error to relay.
                    tracing::info!(digest = %d, %member, %error, "the digest's owner could not serve the blob; asking the upstream");
                    return Tried::Next(writer);
                }
            };
            let source = format!("peer {member}");
            match self
                .feed(body.stream, body.len, body.offset, &source, &mut writer)
                .await
            {
                Fed::Whole => {
                    self.commit(writer, "peer").await;
                    return Tried::Done;
                }
                Fed::WriterFailed => return Tried::Done,
                Fed::BrokeOff(error) => {
                    tracing::warn!(digest = %d, %member, %error, written = writer.written(), "the owner's stream broke off; asking the next owner from there");
                    cluster.suspect(&member);
                }
            }
        }
        Tried::Next(writer)
    }

    /// Announce the blob's length, then copy a body that starts at `offset`
    /// into the fill (the writer hashes it; the commit's digest check
    /// decides). `source` names it in errors.
    async fn feed<E>(
        &self,
        stream: BoxStream<'static, Result<Bytes, E>>,
        len: u64,
        offset: u64,
        source: &str,
        writer: &mut FillWriter,
    ) -> Fed
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        if writer.set_len(len).is_err() {
            return Fed::WriterFailed;
        }
        let name = source.to_owned();
        let stream = stream
            .map(move |r| {
                r.map_err(|e| UpstreamError::Transport {
                    upstream: name.clone(),
                    source: Arc::new(e),
                })
            })
            .boxed();
        let body = BlobBody {
            status: if offset > 0 { 206 } else { 200 },
            len: Some(len.saturating_sub(offset)),
            content_range: None,
            content_type: None,
            stream,
        };
        match self.copy(body, writer).await {
            Ok(()) => Fed::Whole,
            Err(None) => Fed::WriterFailed,
            Err(Some(error)) => Fed::BrokeOff(error),
        }
    }
}

/// How [`Pump::feed`] ended.
enum Fed {
    /// Every byte is in the fill: commit it.
    Whole,
    /// The writer failed and told its readers.
    WriterFailed,
    /// The body broke off; the fill keeps what it has.
    BrokeOff(UpstreamError),
}

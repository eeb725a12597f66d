//! Blobs: cache lookups and the fill pump, one upstream download per digest
//! that every client streams from as bytes arrive.
//!
//! A fill is keyed by digest alone: content-addressed bytes are the same
//! whichever upstream or repository they came through, and they are verified
//! before they become a cache entry. Whether an upstream *has* a blob, or lets
//! a repository read it, is not content: a fill started through an upstream
//! that refuses it (404, 401, 403) or that breaks says nothing about another
//! route. So a fill's failure carries its typed cause and its route
//! ([`crate::error::UpstreamFillError`]), and a waiter on another route starts over through
//! its own ([`BlobService::cold`]).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use regcache_formats::Digest;
use regcache_formats::reference::RepositoryName;
use regcache_store::{Begin, FillReader, FillWriter, Source, Store};
use regcache_upstream::{BlobBody, UpstreamApi, UpstreamError};
use tracing::Instrument;

use crate::error::{Error, UpstreamFillError};
use crate::metrics::{Kind, Metrics};
use crate::request::Target;

use super::cluster_fill::{ClusterFill, Tried};

/// Most bytes of a blob download written to its fill in one batch.
const FILL_BATCH_BYTES: usize = 1 << 20;

/// How many fills a cold request may see fail on other routes before it
/// relays the last failure (each retry needs another route's fill to have
/// failed in between).
const ROUTE_RETRIES: usize = 3;

/// A cold blob whose length is known: its fill, ready to stream.
#[derive(Debug)]
pub struct ColdBlob {
    pub len: u64,
    pub reader: FillReader,
}

/// The answer to a blob `HEAD`.
#[derive(Debug)]
pub enum BlobHeadAnswer {
    /// The upstream's size.
    Upstream(u64),
    /// The upstream is unavailable; the cache has it (stale-if-error).
    Cached(Source),
}

/// Blob lookups and fills. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BlobService {
    store: Store,
    metrics: Arc<Metrics>,
    /// Clients attached to each fill in progress (the waiters-per-fill histogram).
    waiters: Arc<Mutex<HashMap<Digest, u64>>>,
    /// The shared tier and the other replicas, once set at start-up
    /// ([`BlobService::join_cluster`]); unset: a replica on its own.
    cluster: Arc<std::sync::OnceLock<ClusterFill>>,
}

impl BlobService {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> BlobService {
        BlobService {
            store,
            metrics,
            waiters: Arc::default(),
            cluster: Arc::default(),
        }
    }

    /// Fills look in the shared tier and ask the digest's owner first (see
    /// [`super::cluster_fill`]). Set once, at start-up; later calls are ignored.
    pub fn join_cluster(&self, cluster: ClusterFill) {
        let _ = self.cluster.set(cluster);
    }

    /// The cached blob, from memory or disk; counted as a hit.
    pub async fn cached(&self, digest: &Digest) -> Result<Option<Source>, Error> {
        let src = self.stored(digest).await?;
        if src.is_some() {
            self.metrics.hit(Kind::Blob);
        }
        Ok(src)
    }

    /// This replica's copy, uncounted. Not the shared tier: a blob there is
    /// streamed by the fill ([`super::cluster_fill`]), so asking the bucket
    /// here too would cost every cold blob one more request.
    async fn stored(&self, digest: &Digest) -> Result<Option<Source>, Error> {
        self.store
            .get_local(digest)
            .await
            .map_err(|e| Error::cache("reading the blob cache", e))
    }

    /// A blob the cache lacks: join or start its fill and wait for its
    /// length. A fill that failed on another route (another upstream or
    /// repository) is retried through this one.
    pub async fn cold(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<ColdBlob, Error> {
        let ask_owner = target.acting_as.is_none();
        target
            .in_span(self.cold_now(target, name, digest, ask_owner))
            .await
    }

    /// [`BlobService::cold`] for another replica that asked this one, the
    /// digest's owner: a fill started here never asks a peer.
    pub async fn cold_for_peer(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<ColdBlob, Error> {
        target
            .in_span(self.cold_now(target, name, digest, false))
            .await
    }

    async fn cold_now(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
        ask_owner: bool,
    ) -> Result<ColdBlob, Error> {
        self.metrics.miss(Kind::Blob);
        let mut attempt = 0;
        loop {
            let mut reader = self.fill(target, name, digest, ask_owner).await?;
            match reader.wait_len().await {
                Ok(len) => return Ok(ColdBlob { len, reader }),
                Err(e) => {
                    let other_route = e
                        .cause()
                        .and_then(|c| c.downcast_ref::<UpstreamFillError>())
                        .is_some_and(|f| {
                            f.upstream != target.upstream.name || f.repository != name.as_str()
                        });
                    attempt += 1;
                    if !other_route || attempt > ROUTE_RETRIES {
                        return Err(Error::fill(e, &target.upstream.name));
                    }
                    tracing::debug!(%digest, error = %e, "a fill on another route failed; filling through this one");
                }
            }
        }
    }

    /// A small blob's bytes (a config), from the cache or through a fill;
    /// `max` bounds what is read into memory.
    pub async fn bytes(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
        max: u64,
    ) -> Result<Bytes, Error> {
        let too_large = || Error::BadUpstream {
            upstream: target.upstream.name.clone(),
            message: format!("blob {digest} is larger than {max} bytes"),
        };
        if let Some(src) = self.stored(digest).await? {
            if src.len() > max {
                return Err(too_large());
            }
            return src
                .into_bytes()
                .await
                .map_err(|e| Error::cache("reading a cached blob", e));
        }
        let ColdBlob { len, mut reader } = self.cold(target, name, digest).await?;
        if len > max {
            return Err(too_large());
        }
        let mut out = Vec::with_capacity(len as usize);
        while let Some(chunk) = reader.next().await {
            let chunk = chunk.map_err(|e| Error::fill(e, &target.upstream.name))?;
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }

    /// `HEAD` of a blob asks the upstream (a HEAD, never a download:
    /// distribution's proxy downloads the blob twice for it). Push clients
    /// HEAD a blob in the *target* repository to decide whether to upload it,
    /// so answering from a cache filled through another repository would make
    /// them skip uploads the upstream then misses. Only when the upstream is
    /// unavailable is the cache's copy the answer.
    pub async fn head(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<BlobHeadAnswer, Error> {
        target.in_span(self.head_now(target, name, digest)).await
    }

    async fn head_now(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<BlobHeadAnswer, Error> {
        match target.client().head_blob(name.as_str(), digest).await {
            Ok(h) => Ok(BlobHeadAnswer::Upstream(h.size)),
            Err(e) => {
                if e.is_unavailable()
                    && let Some(src) = self.stored(digest).await?
                {
                    self.metrics.stale(Kind::Blob);
                    return Ok(BlobHeadAnswer::Cached(src));
                }
                Err(Error::upstream_or_absent(
                    e,
                    regcache_formats::RegistryError::new(regcache_formats::ErrorCode::BlobUnknown),
                ))
            }
        }
    }

    /// Join or start the one upstream download of `digest`.
    async fn fill(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
        ask_owner: bool,
    ) -> Result<FillReader, Error> {
        let begin = self
            .store
            .begin_fill(digest, None)
            .await
            .map_err(|e| Error::cache("starting a blob fill", e))?;
        match begin {
            Begin::Follower(r) => {
                crate::access_log::note(crate::access_log::Outcome::FillJoined);
                if let Some(n) = self.waiters.lock().get_mut(digest) {
                    *n += 1;
                }
                Ok(r)
            }
            Begin::Leader(writer) => {
                writer.set_repository(name.as_str());
                let reader = writer.subscribe();
                self.waiters.lock().insert(digest.clone(), 1);
                let observer = FillObserver {
                    waiters: self.waiters.clone(),
                    digest: digest.clone(),
                    histogram: self.metrics.fill_waiters.clone(),
                };
                let pump = Pump {
                    upstream: target.client().clone(),
                    upstream_name: target.upstream.name.clone(),
                    repository: name.as_str().to_owned(),
                    digest: digest.clone(),
                    failed: self.metrics.fills_failed.clone(),
                    cluster: self.cluster.get().cloned().unwrap_or_default(),
                    ask_owner,
                    store: self.store.clone(),
                };
                let in_flight = self.metrics.http.fill_started();
                tokio::spawn(
                    async move {
                        let _observer = observer;
                        let _in_flight = in_flight;
                        pump.run(writer).await;
                    }
                    .in_current_span(),
                );
                Ok(reader)
            }
        }
    }
}

/// One fill's download: the upstream body into the store's writer (resumed
/// from where it stopped when it breaks off: [`super::resume`]).
pub(super) struct Pump {
    pub(super) upstream: Arc<dyn UpstreamApi>,
    pub(super) upstream_name: String,
    pub(super) repository: String,
    pub(super) digest: Digest,
    failed: prometheus_client::metrics::counter::Counter,
    /// The shared tier and the other replicas ([`super::cluster_fill`]).
    pub(super) cluster: ClusterFill,
    /// Whether this fill may ask the digest's owner (not when it serves a
    /// peer, nor with a client's own upstream credentials).
    pub(super) ask_owner: bool,
    pub(super) store: Store,
}

impl Pump {
    async fn run(self, mut writer: FillWriter) {
        if self.cluster.is_on() {
            writer = match self
                .fill_from_cluster(&self.cluster, self.ask_owner, writer)
                .await
            {
                Tried::Done => return,
                Tried::Next(w) => w,
            };
        }
        let d = &self.digest;
        // Past 0 when the shared tier or a peer broke off mid-way: the
        // upstream gives the rest (`Range`), and the length is known already.
        let offset = writer.written();
        let body = if offset == 0 {
            self.upstream.get_blob(&self.repository, d, None).await
        } else {
            self.reopen(offset, None).await
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                tracing::info!(digest = %d, error = %e, "blob fill could not start");
                self.abort(writer, e);
                return;
            }
        };
        let total = if offset == 0 { body.len } else { None };
        if let Some(len) = total
            && writer.set_len(len).is_err()
        {
            self.failed.inc();
            return;
        }
        if let Err(e) = self.copy_resuming(body, total, &mut writer).await {
            if let Some(e) = e {
                tracing::warn!(digest = %d, error = %e, "upstream blob body failed");
                self.abort(writer, e);
            }
            return;
        }
        if self.commit(writer, "upstream").await == Some(true) {
            self.cluster.upload_later(&self.store, d);
        }
    }

    /// Commits the fill and logs how it ended; `Some(true)` when the disk
    /// tier kept it. `from`: `shared`, `peer` or `upstream`.
    pub(super) async fn commit(&self, writer: FillWriter, from: &'static str) -> Option<bool> {
        let d = &self.digest;
        let committed = writer.commit().await;
        if committed.is_ok() {
            self.cluster.metrics.fill_from(from);
        }
        match committed {
            Ok(c) if c.installed == regcache_store::Installed::NotCached => {
                tracing::info!(digest = %d, bytes = c.len, from, "blob served without being cached");
                Some(false)
            }
            Ok(c) => {
                tracing::info!(digest = %d, bytes = c.len, from, "blob cached");
                Some(true)
            }
            Err(e) => {
                self.failed.inc();
                tracing::warn!(digest = %d, error = %e, from, "blob fill rejected");
                None
            }
        }
    }

    /// Copy the body into the writer. Chunks already received go to the file
    /// together: one trip to the blocking pool per batch, not per (often
    /// 16 KiB) chunk. `Err(Some(e))`: the upstream body failed; `Err(None)`:
    /// the writer failed (and has told its readers).
    pub(super) async fn copy(
        &self,
        body: BlobBody,
        writer: &mut FillWriter,
    ) -> Result<(), Option<UpstreamError>> {
        let mut stream = body.stream;
        let mut ended = false;
        while !ended {
            let mut batch = Vec::new();
            let mut size = 0;
            let mut error = None;
            match stream.next().await {
                None => break,
                Some(Ok(b)) => {
                    size += b.len();
                    batch.push(b);
                }
                Some(Err(e)) => error = Some(e),
            }
            while error.is_none() && size < FILL_BATCH_BYTES {
                match stream.next().now_or_never() {
                    Some(Some(Ok(b))) => {
                        size += b.len();
                        batch.push(b);
                    }
                    Some(Some(Err(e))) => error = Some(e),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if let Err(e) = writer.write_chunks(batch).await {
                tracing::warn!(digest = %self.digest, error = %e, "blob fill failed");
                self.failed.inc();
                return Err(None);
            }
            if let Some(e) = error {
                return Err(Some(e));
            }
        }
        Ok(())
    }

    fn abort(&self, writer: FillWriter, error: UpstreamError) {
        self.failed.inc();
        writer.abort(UpstreamFillError {
            upstream: self.upstream_name.clone(),
            repository: self.repository.clone(),
            error,
        });
    }
}

/// Records how many clients a fill served when its task ends, however it ends.
struct FillObserver {
    waiters: Arc<Mutex<HashMap<Digest, u64>>>,
    digest: Digest,
    histogram: prometheus_client::metrics::histogram::Histogram,
}

impl Drop for FillObserver {
    fn drop(&mut self) {
        if let Some(n) = self.waiters.lock().remove(&self.digest) {
            self.histogram.observe(n as f64);
        }
    }
}

//! [`Store`]: the one handle the server holds.
//!
//! It owns the tiers (memory, disk, then any extra), the fill registry, the
//! tag index and the Schema 1 mapping log, all under one root directory.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use regcache_formats::Digest;

use crate::config::StoreConfig;
use crate::diffids::DiffIdLog;
use crate::disk::{DiskTier, LAYOUT_VERSION, PinGuard};
use crate::error::StoreError;
use crate::fill::{Begin, Fills};
use crate::hasher::verify_bytes;
use crate::mapping::MappingLog;
use crate::memory::MemoryTier;
use crate::shared::SharedTier;
use crate::source::Source;
use crate::stats::StatsSnapshot;
use crate::tags::TagIndex;
use crate::tier::{Tier, Tiered};

/// The longest a local miss waits for the shared tier's answer.
pub const SHARED_LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The cache. Cheap to clone (all state is shared).
///
/// Concurrency: every method may be called from many tasks at once. Content
/// is immutable per digest, so racing writers of the same digest store the
/// same bytes once; [`Store::begin_fill`] makes sure only one of them
/// downloads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    config: StoreConfig,
    tiers: Tiered,
    memory: Option<MemoryTier>,
    disk: DiskTier,
    fills: Fills,
    tags: TagIndex,
    mappings: MappingLog,
    diff_ids: DiffIdLog,
    shared: Option<SharedTier>,
    /// Completed [`Store::remove`] calls (see [`Store::removals`]).
    removals: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens everything under `config.root` (see [`DiskTier::open`] for the
    /// start-up work). Runs on the blocking pool.
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        tokio::task::spawn_blocking(move || Store::open_blocking(config))
            .await
            .map_err(StoreError::task)?
    }

    /// [`Store::open`] for callers outside a runtime. Blocking.
    pub fn open_blocking(config: StoreConfig) -> Result<Store, StoreError> {
        let base = config.root.join(LAYOUT_VERSION);
        // The logs are replayed on a thread of their own while the disk
        // tier scans its entries (with a million entries each takes a
        // while), once the disk tier holds the root's lock.
        let (disk, logs) = DiskTier::open_with(&config, || {
            let tags = TagIndex::open(base.join("tags.jsonl"))?;
            let mappings = MappingLog::open(MappingLog::path_in(&config.root))?;
            let diff_ids = DiffIdLog::open(DiffIdLog::path_in(&config.root))?;
            Ok::<_, StoreError>((tags, mappings, diff_ids))
        })?;
        let (tags, mappings, diff_ids) = logs?;
        let memory = (config.memory_max_bytes > 0)
            .then(|| MemoryTier::new(config.memory_max_bytes, config.memory_max_object_bytes));
        let mut tiers: Vec<Arc<dyn Tier>> = Vec::new();
        if let Some(memory) = &memory {
            tiers.push(Arc::new(memory.clone()));
        }
        tiers.push(Arc::new(disk.clone()));
        tiers.extend(config.extra_tiers.iter().cloned());
        let fills = Fills::new(disk.clone(), memory.clone(), config.read_chunk_bytes);
        Ok(Store {
            inner: Arc::new(Inner {
                tiers: Tiered::new(tiers, config.memory_max_object_bytes),
                memory,
                disk,
                fills,
                tags,
                mappings,
                diff_ids,
                shared: config.shared.clone(),
                removals: std::sync::atomic::AtomicU64::new(0),
                config,
            }),
        })
    }

    /// Looks the digest up in each tier, fastest first. `Ok(None)` on a miss.
    /// A small disk hit is promoted to memory and returned as bytes; a large
    /// one comes back as an open file. See [`Tiered::get`].
    ///
    /// With a shared tier, a local miss asks it next (bounded by
    /// [`SHARED_LOOKUP_WAIT`]; an error or a slow answer is a miss): a small
    /// object there (a manifest, a config) is verified, stored locally and
    /// returned; a blob is left to the fill, which streams it.
    pub async fn get(&self, digest: &Digest) -> Result<Option<Source>, StoreError> {
        if let Some(source) = self.get_local(digest).await? {
            return Ok(Some(source));
        }
        let Some(shared) = &self.inner.shared else {
            return Ok(None);
        };
        let bytes = match tokio::time::timeout(SHARED_LOOKUP_WAIT, shared.get(digest)).await {
            Ok(Ok(Some(Source::Bytes(bytes)))) => bytes,
            Ok(Ok(_)) => return Ok(None),
            Ok(Err(error)) => {
                tracing::warn!(%digest, %error, "shared tier lookup failed; treating as a miss");
                return Ok(None);
            }
            Err(_) => {
                tracing::warn!(%digest, "shared tier lookup too slow; treating as a miss");
                return Ok(None);
            }
        };
        if let Err(error) = self.inner.tiers.put(digest, bytes.clone()).await {
            tracing::warn!(%digest, %error, "keeping a shared-tier hit locally failed");
        }
        Ok(Some(Source::Bytes(bytes)))
    }

    /// [`Store::get`] without the shared tier: this replica's memory and
    /// disk only. For blobs, which a fill streams from the shared tier.
    pub async fn get_local(&self, digest: &Digest) -> Result<Option<Source>, StoreError> {
        self.inner.tiers.get(digest).await
    }

    /// The tier the replicas share, when configured.
    pub fn shared(&self) -> Option<&SharedTier> {
        self.inner.shared.as_ref()
    }

    /// The content length, if cached, without opening anything (for `HEAD`).
    /// Not counted as an access.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        self.inner.tiers.stat(digest).await
    }

    /// Stores small content held in memory (a manifest fetched by digest).
    /// Verifies the digest first and refuses a mismatch; then writes every
    /// tier that accepts the size (the disk write is fsynced and atomic).
    /// Blobs should go through [`Store::begin_fill`] instead.
    ///
    /// Cancel safety: dropping the future leaves either the entry or
    /// nothing in each tier.
    pub async fn put_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<(), StoreError> {
        verify_bytes(digest, &bytes).map_err(|actual| StoreError::DigestMismatch {
            expected: digest.clone(),
            actual,
        })?;
        if let Some(shared) = &self.inner.shared {
            // Background: the object store's latency stays off the request.
            let (shared, digest, bytes) = (shared.clone(), digest.clone(), bytes.clone());
            tokio::spawn(async move {
                if let Err(error) = shared.put_bytes(&digest, bytes).await {
                    tracing::warn!(%digest, %error, "sharing content failed; other replicas will fetch it themselves");
                }
            });
        }
        self.inner.tiers.put(digest, bytes).await
    }

    /// Removes the digest from every tier. Readers that already hold it keep it.
    pub async fn remove(&self, digest: &Digest) -> Result<bool, StoreError> {
        let removed = self.inner.tiers.remove(digest).await;
        // Counted once the content is gone (see `removals`).
        self.inner
            .removals
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        removed
    }

    /// How many removals ([`Store::remove`]: a purge, a damaged entry
    /// dropped) have completed. Something derived from the store's content
    /// and kept elsewhere (a prepared answer) records it when it reads the
    /// content, and is void once it has moved. Evictions by the disk budget
    /// don't count: they remove nothing that must not be served again.
    pub fn removals(&self) -> u64 {
        self.inner
            .removals
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Starts or joins the one fill for `digest`. See [`Fills::begin`].
    pub async fn begin_fill(
        &self,
        digest: &Digest,
        expected_len: Option<u64>,
    ) -> Result<Begin, StoreError> {
        self.inner.fills.begin(digest, expected_len).await
    }

    /// The blob fills in progress right now (see [`Fills::in_progress`]).
    pub fn fills_in_progress(&self) -> Vec<crate::FillStatus> {
        self.inner.fills.in_progress()
    }

    /// The fill registry (for `is_filling` and its stats).
    pub fn fills(&self) -> &Fills {
        &self.inner.fills
    }

    /// Protects a disk entry from eviction while the guard lives (e.g. the
    /// empty-layer blob). `None` if the digest isn't on disk.
    pub fn pin(&self, digest: &Digest) -> Option<PinGuard> {
        self.inner.disk.pin(digest)
    }

    pub fn tags(&self) -> &TagIndex {
        &self.inner.tags
    }

    /// Diff IDs of layer blobs hashed for the Schema 1 upgrade.
    pub fn diff_ids(&self) -> &DiffIdLog {
        &self.inner.diff_ids
    }

    pub fn mappings(&self) -> &MappingLog {
        &self.inner.mappings
    }

    pub fn disk(&self) -> &DiskTier {
        &self.inner.disk
    }

    pub fn memory(&self) -> Option<&MemoryTier> {
        self.inner.memory.as_ref()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Counters for metrics; see [`StatsSnapshot`].
    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot {
            tiers: self.inner.tiers.tier_stats(),
            disk: self.inner.disk.stats(),
            memory: self.inner.memory.as_ref().map(MemoryTier::stats),
            fills: self.inner.fills.stats(),
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.config.root)
            .field("disk", &self.inner.disk)
            .field("memory", &self.inner.memory)
            .finish_non_exhaustive()
    }
}

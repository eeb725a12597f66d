//! Store configuration.
//!
//! The server builds this from its own (TOML) config; the store has no file
//! format of its own. `StoreConfig::new(root)` is a working setup.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::tier::Tier;

/// 1 MiB: manifests and image configs are far below, layers far above.
pub const DEFAULT_MEMORY_MAX_OBJECT_BYTES: u64 = 1024 * 1024;

/// Settings for [`crate::Store::open`] and [`crate::DiskTier::open`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Cache root. The store owns `<root>/v1/` and takes a lock file there, so
    /// two processes can't share a root (each would delete the other's
    /// temporary files at start-up).
    pub root: PathBuf,
    /// Budget for disk entries, in bytes, fills in flight included: a fill
    /// reserves its announced length (or its bytes as they arrive), evicting
    /// the least recently accessed entries to make room, and one that can't
    /// be reserved passes through without being cached.
    pub disk_max_bytes: u64,
    /// Budget of the memory tier, in bytes (moka, weighed by length).
    /// `0` disables the memory tier.
    pub memory_max_bytes: u64,
    /// Largest object the memory tier holds, and the largest a lower-tier hit
    /// is promoted. Keeps blobs out of RAM; manifests and configs fit.
    pub memory_max_object_bytes: u64,
    /// How stale the persisted last-access time (file mtime) may get before
    /// an access rewrites it. The in-memory order is exact; after a restart
    /// the LRU order is only as precise as this interval. `ZERO` persists
    /// every access (one extra syscall per hit).
    pub access_persist_interval: Duration,
    /// Size of each read by a [`crate::FillReader`]: bounds memory per reader.
    pub read_chunk_bytes: usize,
    /// Extra tiers tried after memory and disk (the shared S3 tier is not one:
    /// see [`StoreConfig::shared`]).
    /// The server doesn't change when one is added: it keeps calling
    /// [`crate::Store::get`].
    pub extra_tiers: Vec<Arc<dyn Tier>>,
    /// The S3-compatible tier the replicas of a cluster share: looked up
    /// after every local tier misses, and written after local writes (in the
    /// background: a slow object store never holds up a response). See
    /// [`crate::Store::shared`].
    pub shared: Option<crate::SharedTier>,
}

impl StoreConfig {
    /// Defaults: 10 GiB disk, 256 MiB memory, 1 MiB largest memory object,
    /// last access persisted at most every 10 minutes, 128 KiB reads.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreConfig {
            root: root.into(),
            disk_max_bytes: 10 * 1024 * 1024 * 1024,
            memory_max_bytes: 256 * 1024 * 1024,
            memory_max_object_bytes: DEFAULT_MEMORY_MAX_OBJECT_BYTES,
            access_persist_interval: Duration::from_secs(600),
            read_chunk_bytes: 128 * 1024,
            extra_tiers: Vec::new(),
            shared: None,
        }
    }

    pub fn disk_max_bytes(mut self, bytes: u64) -> Self {
        self.disk_max_bytes = bytes;
        self
    }

    pub fn memory_max_bytes(mut self, bytes: u64) -> Self {
        self.memory_max_bytes = bytes;
        self
    }

    pub fn memory_max_object_bytes(mut self, bytes: u64) -> Self {
        self.memory_max_object_bytes = bytes;
        self
    }

    pub fn access_persist_interval(mut self, interval: Duration) -> Self {
        self.access_persist_interval = interval;
        self
    }

    pub fn read_chunk_bytes(mut self, bytes: usize) -> Self {
        self.read_chunk_bytes = bytes.max(1);
        self
    }

    pub fn shared(mut self, tier: crate::SharedTier) -> Self {
        self.shared = Some(tier);
        self
    }

    pub fn extra_tier(mut self, tier: Arc<dyn Tier>) -> Self {
        self.extra_tiers.push(tier);
        self
    }
}

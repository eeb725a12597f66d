//! Memory tier: a moka cache of small objects, bounded by bytes.
//!
//! moka's sync cache is used (not the future one): inserts and lookups never
//! wait, so they are fine from async code and from the blocking pool (the fill
//! commit promotes from there). Admission is moka's TinyLFU, so an insert into
//! a full cache may be refused in favour of hotter entries; the tier is a
//! best-effort accelerator in front of the disk, never the only copy.

use std::fmt;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use regcache_formats::Digest;

use crate::error::StoreError;
use crate::source::Source;
use crate::stats::MemoryStats;
use crate::tier::Tier;

/// Per-entry overhead charged to the budget on top of the content length, so
/// that many tiny objects can't exceed the memory budget through key and
/// bookkeeping allocations.
const ENTRY_OVERHEAD: u64 = 128;

/// Bounded-by-bytes memory tier. Cheap to clone (shared cache).
#[derive(Clone)]
pub struct MemoryTier {
    cache: moka::sync::Cache<Digest, Bytes>,
    max_object_bytes: u64,
}

impl MemoryTier {
    /// `max_bytes` is the budget (content + a small per-entry overhead);
    /// objects larger than `max_object_bytes` are never stored.
    pub fn new(max_bytes: u64, max_object_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_digest: &Digest, bytes: &Bytes| {
                u32::try_from(bytes.len() as u64 + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .build();
        MemoryTier {
            cache,
            max_object_bytes,
        }
    }

    /// Synchronous lookup; the `Bytes` is a refcounted view, not a copy.
    pub fn get_bytes(&self, digest: &Digest) -> Option<Bytes> {
        self.cache.get(digest)
    }

    /// Synchronous insert of verified content; skipped when too large.
    pub fn insert(&self, digest: &Digest, bytes: Bytes) {
        if bytes.len() as u64 <= self.max_object_bytes {
            self.cache.insert(digest.clone(), bytes);
        }
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.cache.contains_key(digest)
    }

    pub fn invalidate(&self, digest: &Digest) -> bool {
        self.cache.remove(digest).is_some()
    }

    /// Usage as moka reports it (eventually consistent: moka applies
    /// evictions in batches).
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            bytes_used: self.cache.weighted_size(),
            entries: self.cache.entry_count(),
        }
    }
}

impl fmt::Debug for MemoryTier {
    // moka's Debug would print every entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTier")
            .field("entries", &self.cache.entry_count())
            .field("max_object_bytes", &self.max_object_bytes)
            .finish_non_exhaustive()
    }
}

impl Tier for MemoryTier {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn max_object_bytes(&self) -> u64 {
        self.max_object_bytes
    }

    fn get<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<Source>, StoreError>> {
        std::future::ready(Ok(self.get_bytes(digest).map(Source::Bytes))).boxed()
    }

    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        std::future::ready(Ok(self.cache.get(digest).map(|b| b.len() as u64))).boxed()
    }

    fn put<'a>(
        &'a self,
        digest: &'a Digest,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.insert(digest, bytes);
        std::future::ready(Ok(())).boxed()
    }

    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<bool, StoreError>> {
        std::future::ready(Ok(self.invalidate(digest))).boxed()
    }
}

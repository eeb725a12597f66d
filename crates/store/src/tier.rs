//! The tier trait and the composition that tries tiers in order.
//!
//! Modelled on mountpoint-s3's `DataCache` + `MultilevelDataCache`: each tier
//! is a small digest → content map, and [`Tiered`] asks them fastest first. A
//! hit in a slower tier is copied into the faster ones when it is small (the
//! memory tier's object limit), and an error in one tier is logged and counted
//! as a miss so a sick disk degrades to upstream fetches instead of failing
//! requests. The shared S3 tier is a `Tier` too, but it sits behind these in
//! [`crate::Store`] rather than in the composition: its writes run in the
//! background and its lookups are bounded in time; the server only ever
//! talks to [`crate::Store`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use regcache_formats::Digest;

use crate::error::StoreError;
use crate::source::Source;
use crate::stats::TierStats;

/// One cache tier: a digest-addressed map of immutable content.
///
/// Contract (STYLE habit 5): absence is `Ok(None)`, never an error; `put`
/// receives content already known to match the digest (tiers may re-check);
/// content under a digest never changes, so concurrent `put`s of the same
/// digest are harmless and the first one wins.
///
/// Cancel safety: implementations must leave the tier consistent if a
/// returned future is dropped at any await point (a dropped `put` either
/// stored the whole object or nothing).
///
/// Methods return boxed futures so tiers can sit in a `Vec<Arc<dyn Tier>>`.
pub trait Tier: Send + Sync + fmt::Debug + 'static {
    /// Short fixed name for stats and logs (`"memory"`, `"disk"`).
    fn name(&self) -> &'static str;

    /// Largest object `put` will keep; larger ones are silently skipped.
    /// The composition uses it to decide what to promote.
    fn max_object_bytes(&self) -> u64 {
        u64::MAX
    }

    /// Open the content. A disk tier returns an already open file, so a
    /// later eviction can't remove it from under the reader.
    fn get<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<Source>, StoreError>>;

    /// The content length, without opening anything. Does not count as an access.
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;

    /// Store verified content.
    fn put<'a>(&'a self, digest: &'a Digest, bytes: Bytes)
    -> BoxFuture<'a, Result<(), StoreError>>;

    /// Drop the content. Readers that already opened it keep their copy.
    /// Returns whether the tier had it.
    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Told when a faster tier served this digest, so a slower tier's LRU
    /// order still reflects real use (otherwise a manifest served from memory
    /// all day would look cold on disk). Must be cheap and non-blocking.
    fn record_access(&self, _digest: &Digest) {}
}

#[derive(Debug)]
struct Slot {
    tier: Arc<dyn Tier>,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

/// Tiers tried in order, fastest first.
///
/// Concurrent callers see each tier's own consistency; there is no lock
/// across tiers. Two concurrent misses both go to the next tier, and two
/// concurrent promotions of the same digest store the same bytes twice, which
/// is harmless because content is immutable.
#[derive(Debug)]
pub struct Tiered {
    slots: Vec<Slot>,
    /// Only hits at most this large are copied into faster tiers: promotion
    /// reads the whole object into memory first.
    promote_max_bytes: u64,
}

impl Tiered {
    pub fn new(tiers: Vec<Arc<dyn Tier>>, promote_max_bytes: u64) -> Self {
        Tiered {
            slots: tiers
                .into_iter()
                .map(|tier| Slot {
                    tier,
                    hits: AtomicU64::new(0),
                    misses: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                })
                .collect(),
            promote_max_bytes,
        }
    }

    /// First hit wins. A hit below the first tier that is small enough is
    /// read into memory, copied into the faster tiers that accept its size,
    /// and returned as `Source::Bytes`. Tier errors are logged and skipped.
    ///
    /// Cancel safety: dropping the future may leave a promotion half done
    /// (copied into some faster tiers, not others), which is harmless.
    pub async fn get(&self, digest: &Digest) -> Result<Option<Source>, StoreError> {
        for (i, slot) in self.slots.iter().enumerate() {
            let source = match slot.tier.get(digest).await {
                Ok(Some(source)) => source,
                Ok(None) => {
                    slot.misses.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(error) => {
                    slot.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tier = slot.tier.name(), %digest, %error, "cache tier lookup failed; treating as a miss");
                    continue;
                }
            };
            slot.hits.fetch_add(1, Ordering::Relaxed);
            for slower in &self.slots[i + 1..] {
                slower.tier.record_access(digest);
            }
            let len = source.len();
            let faster: Vec<&Slot> = self.slots[..i]
                .iter()
                .filter(|s| len <= s.tier.max_object_bytes())
                .collect();
            if faster.is_empty() || len > self.promote_max_bytes {
                return Ok(Some(source));
            }
            let bytes = match source.into_bytes().await {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(tier = slot.tier.name(), %digest, %error, "reading cache hit for promotion failed; treating as a miss");
                    continue;
                }
            };
            for fast in faster {
                if let Err(error) = fast.tier.put(digest, bytes.clone()).await {
                    tracing::warn!(tier = fast.tier.name(), %digest, %error, "promoting cache hit failed");
                }
            }
            return Ok(Some(Source::Bytes(bytes)));
        }
        Ok(None)
    }

    /// First tier that knows the digest answers. Not an access.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        for slot in &self.slots {
            match slot.tier.stat(digest).await {
                Ok(Some(len)) => return Ok(Some(len)),
                Ok(None) => {}
                Err(error) => {
                    slot.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tier = slot.tier.name(), %digest, %error, "cache tier stat failed; treating as a miss");
                }
            }
        }
        Ok(None)
    }

    /// Stores into every tier that accepts the size. All tiers are tried; the
    /// first error is returned after that.
    pub async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<(), StoreError> {
        let mut first_error = None;
        for slot in &self.slots {
            if bytes.len() as u64 > slot.tier.max_object_bytes() {
                continue;
            }
            if let Err(e) = slot.tier.put(digest, bytes.clone()).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes from every tier; true if any had it.
    pub async fn remove(&self, digest: &Digest) -> Result<bool, StoreError> {
        let mut any = false;
        let mut first_error = None;
        for slot in &self.slots {
            match slot.tier.remove(digest).await {
                Ok(had) => any |= had,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(any), Err)
    }

    /// Per-tier hit/miss/error counters, in lookup order.
    pub fn tier_stats(&self) -> Vec<TierStats> {
        self.slots
            .iter()
            .map(|s| TierStats {
                name: s.tier.name(),
                hits: s.hits.load(Ordering::Relaxed),
                misses: s.misses.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
            })
            .collect()
    }
}

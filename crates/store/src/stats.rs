//! Counters for the server's metrics endpoint.
//!
//! Every counter is a relaxed atomic incremented where the event happens;
//! [`crate::Store::stats`] copies them into plain structs. Values read in one
//! snapshot are not taken atomically together (a hit may be counted in `hits`
//! a moment before the bytes show up elsewhere), which is fine for metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lookups answered by one tier, as seen by [`crate::Tiered`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierStats {
    pub name: &'static str,
    pub hits: u64,
    pub misses: u64,
    /// Lookups that failed and were treated as misses.
    pub errors: u64,
}

/// Disk tier usage and activity.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskStats {
    /// Sum of committed entry sizes (what the budget limits).
    pub bytes_used: u64,
    pub entries: u64,
    pub max_bytes: u64,
    /// Bytes that became committed entries since start.
    pub bytes_committed: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    /// Commits not kept because they alone exceed the budget or only pinned
    /// entries were left to evict.
    pub not_cached: u64,
    /// Whether the disk cache can write right now.
    pub state: crate::health::CacheState,
    /// Failed cache writes since start, by kind.
    pub write_errors: [(crate::health::WriteErrorKind, u64); 3],
}

/// Memory tier usage (moka's view, eventually consistent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    pub bytes_used: u64,
    pub entries: u64,
}

/// Fill coordination activity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FillStats {
    /// `begin` calls that became the leader.
    pub started: u64,
    /// `begin` calls that followed a fill in progress.
    pub joined: u64,
    /// `begin` calls answered from an already committed entry.
    pub already_cached: u64,
    pub committed: u64,
    pub failed: u64,
    /// Bytes written into fill temp files (includes fills that later failed).
    pub bytes_written: u64,
    /// Fills that passed their bytes through without caching (disk full,
    /// read-only or failing, or the blob larger than the budget).
    pub passed_through: u64,
}

/// Everything [`crate::Store::stats`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Hits and misses per tier, in lookup order.
    pub tiers: Vec<TierStats>,
    pub disk: DiskStats,
    /// `None` when the memory tier is disabled.
    pub memory: Option<MemoryStats>,
    pub fills: FillStats,
}

impl StatsSnapshot {
    /// The counters of the tier called `name`, if present.
    pub fn tier(&self, name: &str) -> Option<&TierStats> {
        self.tiers.iter().find(|t| t.name == name)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    pub(crate) fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

//! Counters of the shared tier, for metrics and the admin page.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the shared tier's counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStats {
    /// Successful reads (`Tier::get` hits and `open`s).
    pub gets: u64,
    /// Bytes read from the store (counted as they stream).
    pub get_bytes: u64,
    /// Conditional creates this replica won.
    pub puts_created: u64,
    /// Conditional creates that found the object already there.
    pub puts_existing: u64,
    /// Uploads of files (`upload_file`) that ended with the object stored.
    pub uploads: u64,
    /// Bytes sent by `upload_file` and `put_bytes`, including those of
    /// uploads that lost a race.
    pub upload_bytes: u64,
    /// Operations that failed (the error was returned to the caller).
    pub errors: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) gets: AtomicU64,
    pub(crate) get_bytes: AtomicU64,
    pub(crate) puts_created: AtomicU64,
    pub(crate) puts_existing: AtomicU64,
    pub(crate) uploads: AtomicU64,
    pub(crate) upload_bytes: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> SharedStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SharedStats {
            gets: load(&self.gets),
            get_bytes: load(&self.get_bytes),
            puts_created: load(&self.puts_created),
            puts_existing: load(&self.puts_existing),
            uploads: load(&self.uploads),
            upload_bytes: load(&self.upload_bytes),
            errors: load(&self.errors),
        }
    }
}

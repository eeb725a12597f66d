//! The disk tier's in-memory index: entries, LRU order and the access clock.

use super::*;

#[derive(Default)]
pub(super) struct Index {
    pub(super) entries: HashMap<Digest, Entry>,
    /// Access tick → digest, oldest first. Ticks are unique (see [`AccessClock`]).
    pub(super) lru: BTreeMap<u64, Digest>,
    pub(super) used: u64,
    /// Space promised to fills in flight (their temp files), counted
    /// against the budget with `used`, so the data directory never holds more
    /// than the budget however many fills run.
    pub(super) reserved: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub(super) size: u64,
    /// Last access, in clock nanoseconds; key in `Index::lru`.
    pub(super) tick: u64,
    /// The access time last written to the file's mtime.
    pub(super) persisted: u64,
    /// Live [`PinGuard`]s; eviction skips pinned entries.
    pub(super) pins: u32,
}

impl Index {
    pub(super) fn insert(&mut self, digest: Digest, size: u64, tick: u64, persisted: u64) {
        self.lru.insert(tick, digest.clone());
        self.entries.insert(
            digest,
            Entry {
                size,
                tick,
                persisted,
                pins: 0,
            },
        );
        self.used += size;
    }

    pub(super) fn remove(&mut self, digest: &Digest) -> Option<Entry> {
        let entry = self.entries.remove(digest)?;
        self.lru.remove(&entry.tick);
        self.used -= entry.size;
        Some(entry)
    }

    /// Moves the entry to the most recent end. Returns the entry after the bump.
    pub(super) fn bump(&mut self, digest: &Digest, tick: u64) -> Option<&mut Entry> {
        let entry = self.entries.get_mut(digest)?;
        self.lru.remove(&entry.tick);
        entry.tick = tick;
        self.lru.insert(tick, digest.clone());
        Some(entry)
    }

    /// Picks the least recently accessed unpinned entries to free room for
    /// `incoming` bytes under `max`. Returns `None` (and changes nothing) if
    /// even evicting every unpinned entry wouldn't make room.
    pub(super) fn pick_victims(&self, incoming: u64, max: u64) -> Option<Vec<Digest>> {
        let mut victims = Vec::new();
        let mut used = self.used + self.reserved;
        for digest in self.lru.values() {
            if used + incoming <= max {
                break;
            }
            let entry = &self.entries[digest];
            if entry.pins > 0 {
                continue;
            }
            used -= entry.size;
            victims.push(digest.clone());
        }
        (used + incoming <= max).then_some(victims)
    }
}

/// Strictly increasing wall-clock nanoseconds: `max(now, previous + 1)`.
///
/// Unique ticks make the LRU map key unique and make mtime stamps totally
/// ordered, so the restart order matches the in-memory order.
pub(super) struct AccessClock(pub(super) AtomicU64);

impl AccessClock {
    pub(super) fn next(&self) -> u64 {
        let now = unix_nanos(SystemTime::now());
        let mut prev = self.0.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self
                .0
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }
}

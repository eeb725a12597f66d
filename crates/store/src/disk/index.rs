//! The disk tier's in-memory index: entries, LRU order and the access clock.
//!
//! Sized for millions of entries (issue 16: 1,000,000 in ≤ 256 MiB): a
//! digest is held as a [`Key`] (the raw 32 bytes of a sha256, no heap
//! allocation) rather than a [`Digest`] (its text, boxed), and the LRU map is
//! bulk-built from the sorted scan at open ([`Index::from_sorted`]), which
//! fills its nodes, where one-by-one inserts leave them about half full.

use super::*;

/// A digest as the index keeps it: sha256 (all but a few) as its raw bytes,
/// anything else as the parsed [`Digest`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Key {
    Sha256([u8; 32]),
    Other(Digest),
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Key").field(&self.digest()).finish()
    }
}

impl Key {
    pub(super) fn of(digest: &Digest) -> Key {
        Key::from_hex(digest.algorithm(), digest.hex())
            .unwrap_or_else(|| Key::Other(digest.clone()))
    }

    /// The key of `algorithm:hex` without allocating for sha256. `None` for
    /// a sha256 hex part that does not decode.
    pub(super) fn from_hex(algorithm: Algorithm, hex: &str) -> Option<Key> {
        match algorithm {
            Algorithm::Sha256 => decode_sha256(hex.as_bytes()).map(Key::Sha256),
            _ => Digest::parse(&format!("{}:{hex}", algorithm.name()))
                .ok()
                .map(Key::Other),
        }
    }

    pub(super) fn digest(&self) -> Digest {
        match self {
            Key::Sha256(raw) => Digest::from_sha256_bytes(raw),
            Key::Other(digest) => digest.clone(),
        }
    }
}

/// 64 lowercase hex digits (the digest grammar: no uppercase) as 32 bytes.
/// Table-driven: a million of these run at every start-up.
fn decode_sha256(hex: &[u8]) -> Option<[u8; 32]> {
    const BAD: u8 = 0xff;
    const TABLE: [u8; 256] = {
        let mut t = [BAD; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let hex: &[u8; 64] = hex.try_into().ok()?;
    let mut raw = [0u8; 32];
    let mut bad = 0u8;
    for (out, pair) in raw.iter_mut().zip(hex.chunks_exact(2)) {
        let (hi, lo) = (TABLE[pair[0] as usize], TABLE[pair[1] as usize]);
        bad |= hi | lo;
        *out = (hi << 4) | (lo & 0x0f);
    }
    // Valid nibbles are < 16: any BAD (0xff) sets the high bits.
    (bad & 0xf0 == 0).then_some(raw)
}

/// The index's maps: foldhash, seeded per process (the std SipHash cost a
/// third of building a million-entry index at start-up; keys are digests,
/// which a client can't choose freely, and the seed is random).
type KeyMap<V> = HashMap<Key, V, foldhash::fast::RandomState>;

#[derive(Default)]
pub(super) struct Index {
    entries: KeyMap<Entry>,
    /// Access tick → digest, oldest first. Ticks are unique (see [`AccessClock`]).
    lru: BTreeMap<u64, Key>,
    pub(super) used: u64,
    /// Live [`PinGuard`]s per digest; eviction skips pinned entries. Kept
    /// apart from [`Entry`] (pinned entries are few) so every entry's hash
    /// bucket is 8 bytes smaller.
    pins: KeyMap<u32>,
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
}

impl Index {
    /// The index of scanned entries, sorted oldest access first (ties by
    /// key). Ticks are the persisted mtimes, made strictly increasing.
    /// Returns the index and the last tick.
    pub(super) fn from_sorted(found: Vec<scan::Found>) -> (Index, u64) {
        // Both maps are built at once, each on its own thread, from the same
        // ticks (a million entries take a while either way).
        let ticks = || {
            let mut last_tick = 0u64;
            found.iter().map(move |f| {
                let tick = f.mtime.max(last_tick + 1);
                last_tick = tick;
                (tick, f)
            })
        };
        let (entries, lru) = std::thread::scope(|scope| {
            let entries = scope.spawn(|| {
                let mut entries = KeyMap::with_capacity_and_hasher(
                    found.len(),
                    foldhash::fast::RandomState::default(),
                );
                for (tick, f) in ticks() {
                    let entry = Entry {
                        size: f.size,
                        tick,
                        persisted: f.mtime,
                    };
                    entries.insert(f.key.clone(), entry);
                }
                entries
            });
            let lru: BTreeMap<u64, Key> = ticks().map(|(tick, f)| (tick, f.key.clone())).collect();
            let entries = entries
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (entries, lru)
        });
        let used = found.iter().map(|f| f.size).sum();
        let last_tick = lru.last_key_value().map_or(0, |(t, _)| *t);
        let index = Index {
            entries,
            lru,
            pins: KeyMap::default(),
            used,
            reserved: 0,
        };
        (index, last_tick)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn contains(&self, digest: &Digest) -> bool {
        self.entries.contains_key(&Key::of(digest))
    }

    pub(super) fn get(&self, digest: &Digest) -> Option<&Entry> {
        self.entries.get(&Key::of(digest))
    }

    /// Entries least recently accessed first: (tick, key, entry).
    pub(super) fn oldest_first(&self) -> impl Iterator<Item = (u64, &Key, &Entry)> + '_ {
        self.lru
            .iter()
            .filter_map(|(tick, key)| Some((*tick, key, self.entries.get(key)?)))
    }

    /// Pins a present entry; `false` if absent.
    pub(super) fn pin(&mut self, digest: &Digest) -> bool {
        let key = Key::of(digest);
        if !self.entries.contains_key(&key) {
            return false;
        }
        *self.pins.entry(key).or_default() += 1;
        true
    }

    pub(super) fn unpin(&mut self, digest: &Digest) {
        let key = Key::of(digest);
        if let Some(count) = self.pins.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.pins.remove(&key);
            }
        }
    }

    pub(super) fn is_pinned(&self, key: &Key) -> bool {
        self.pins.contains_key(key)
    }

    pub(super) fn insert(&mut self, digest: &Digest, size: u64, tick: u64, persisted: u64) {
        let key = Key::of(digest);
        self.lru.insert(tick, key.clone());
        if let Some(old) = self.entries.insert(
            key,
            Entry {
                size,
                tick,
                persisted,
            },
        ) {
            // Callers check first; keep the sums right if one did not.
            self.lru.remove(&old.tick);
            self.used -= old.size;
        }
        self.used += size;
    }

    pub(super) fn remove(&mut self, digest: &Digest) -> Option<Entry> {
        let entry = self.entries.remove(&Key::of(digest))?;
        self.lru.remove(&entry.tick);
        self.used -= entry.size;
        Some(entry)
    }

    /// Moves the entry to the most recent end. Returns the entry after the bump.
    pub(super) fn bump(&mut self, digest: &Digest, tick: u64) -> Option<&mut Entry> {
        let key = Key::of(digest);
        let entry = self.entries.get_mut(&key)?;
        self.lru.remove(&entry.tick);
        entry.tick = tick;
        self.lru.insert(tick, key);
        Some(entry)
    }

    /// Picks the least recently accessed unpinned entries to free room for
    /// `incoming` bytes under `max`. Returns `None` (and changes nothing) if
    /// even evicting every unpinned entry wouldn't make room.
    pub(super) fn pick_victims(&self, incoming: u64, max: u64) -> Option<Vec<Digest>> {
        let mut victims = Vec::new();
        let mut used = self.used + self.reserved;
        for (_, key, entry) in self.oldest_first() {
            if used + incoming <= max {
                break;
            }
            if self.is_pinned(key) {
                continue;
            }
            used -= entry.size;
            victims.push(key.digest());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_decodes_like_the_hex_crate_and_refuses_what_the_grammar_does() {
        for i in 0..1000u32 {
            let d = Digest::sha256_of(&i.to_le_bytes());
            let mut want = [0u8; 32];
            hex::decode_to_slice(d.hex(), &mut want).unwrap();
            assert_eq!(decode_sha256(d.hex().as_bytes()), Some(want));
        }
        let good = "0123456789abcdef".repeat(4);
        assert!(decode_sha256(good.as_bytes()).is_some());
        for bad in [
            "0123456789ABCDEF".repeat(4),
            format!("{}g", &good[..63]),
            format!("{} ", &good[..63]),
            good[..62].to_owned(),
            format!("{good}0"),
            format!("{}\u{e9}", &good[..62]),
        ] {
            assert_eq!(decode_sha256(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_round_trip_every_algorithm() {
        for algorithm in ALGORITHMS {
            let digest = Digest::compute(algorithm, b"content");
            let key = Key::of(&digest);
            assert_eq!(key.digest(), digest);
            assert_eq!(Key::from_hex(algorithm, digest.hex()), Some(key.clone()));
            assert_eq!(
                matches!(key, Key::Sha256(_)),
                algorithm == Algorithm::Sha256
            );
        }
        assert_eq!(Key::from_hex(Algorithm::Sha256, "zz"), None);
        let upper = Digest::sha256_of(b"x").hex().to_ascii_uppercase();
        assert_eq!(Key::from_hex(Algorithm::Sha256, &upper), None);
    }

    #[test]
    fn from_sorted_makes_ticks_unique_and_keeps_the_order() {
        let found: Vec<scan::Found> = (0..5u64)
            .map(|i| scan::Found {
                key: Key::of(&Digest::sha256_of(&i.to_le_bytes())),
                size: i + 1,
                mtime: 100, // all equal: ticks must still be unique
            })
            .collect();
        let keys: Vec<Key> = found.iter().map(|f| f.key.clone()).collect();
        let (index, last) = Index::from_sorted(found);
        assert_eq!(index.len(), 5);
        assert_eq!(index.used, 15);
        assert_eq!(last, 104);
        let order: Vec<(u64, Key)> = index
            .oldest_first()
            .map(|(t, k, _)| (t, k.clone()))
            .collect();
        assert_eq!(
            order.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![100, 101, 102, 103, 104]
        );
        assert_eq!(order.into_iter().map(|(_, k)| k).collect::<Vec<_>>(), keys);
        let first = keys[0].digest();
        assert_eq!(
            index.get(&first).map(|e| (e.size, e.persisted)),
            Some((1, 100))
        );
    }

    #[test]
    fn pins_count_and_keep_entries_from_eviction() {
        let mut index = Index::default();
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        assert!(!index.pin(&a), "absent entries can't be pinned");
        index.insert(&a, 10, 1, 1);
        index.insert(&b, 10, 2, 2);
        assert!(index.pin(&a));
        assert!(index.pin(&a));
        // a is oldest but pinned: b goes.
        assert_eq!(index.pick_victims(5, 20), Some(vec![b.clone()]));
        index.unpin(&a);
        assert!(index.is_pinned(&Key::of(&a)), "one guard still alive");
        index.unpin(&a);
        assert!(!index.is_pinned(&Key::of(&a)));
        assert_eq!(index.pick_victims(5, 20), Some(vec![a]));
    }
}

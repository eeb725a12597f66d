//! The disk tier's in-memory index: entries, LRU order and the access clock.
//!
//! Sized for millions of entries (issue 16: 1,000,000 in ≤ 256 MiB): a
//! digest is held as a [`Key`] (the raw 32 bytes of a sha256, no heap
//! allocation) rather than a [`Digest`] (its text, boxed), each entry once,
//! in a slab that a table of positions and an intrusive LRU list index
//! (see [`Index`]).

use std::hash::BuildHasher as _;

use hashbrown::HashTable;

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

/// The index's hasher: foldhash, seeded per process (the std SipHash cost a
/// third of building a million-entry index at start-up; keys are digests,
/// which a client can't choose freely, and the seed is random).
type Hasher = foldhash::fast::RandomState;

/// The pin counts' map.
type KeyMap<V> = HashMap<Key, V, Hasher>;

/// No slot: either end of the LRU list, or of the free list.
const NIL: u32 = u32::MAX;

/// One entry in the slab, linked into the LRU list (or, once removed, into
/// the free list through `newer`).
struct Slot {
    key: Key,
    entry: Entry,
    older: u32,
    newer: u32,
}

/// Entries, their LRU order and their pins.
///
/// Laid out for a million entries in little memory (issue 16): the entries
/// live in one slab (72 bytes each), a hash table of 4-byte slab positions
/// finds them by key, and the LRU order is a doubly linked list threaded
/// through the slab by position, oldest first. (A map of entries and an
/// ordered map of ticks held every key twice: 185 MiB a million entries
/// against 82 MiB here, and start-up built both.)
pub(super) struct Index {
    slots: Vec<Slot>,
    /// Slab positions by the key of their slot.
    table: HashTable<u32>,
    hasher: Hasher,
    /// The least and the most recently accessed entries.
    oldest: u32,
    newest: u32,
    /// Head of the free slots' list.
    free: u32,
    len: usize,
    pub(super) used: u64,
    /// Live [`PinGuard`]s per digest; eviction skips pinned entries. Kept
    /// apart (pinned entries are few) so every slot stays small.
    pins: KeyMap<u32>,
    /// Space promised to fills in flight (their temp files), counted
    /// against the budget with `used`, so the data directory never holds more
    /// than the budget however many fills run.
    pub(super) reserved: u64,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            slots: Vec::new(),
            table: HashTable::new(),
            hasher: Hasher::default(),
            oldest: NIL,
            newest: NIL,
            free: NIL,
            len: 0,
            used: 0,
            pins: KeyMap::default(),
            reserved: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub(super) size: u64,
    /// Last access, in clock nanoseconds: the LRU list is in this order.
    pub(super) tick: u64,
    /// The access time last written to the file's mtime.
    pub(super) persisted: u64,
}

impl Index {
    /// The index of scanned entries, sorted oldest access first (ties by
    /// key). Ticks are the persisted mtimes, made strictly increasing.
    /// Returns the index and the last tick.
    pub(super) fn from_sorted(found: Vec<scan::Found>) -> (Index, u64) {
        let mut index = Index::default();
        index.slots.reserve_exact(found.len());
        index.table.reserve(found.len(), |_| 0);
        let mut last_tick = 0u64;
        for f in found {
            // A key twice (only a damaged snapshot could say so): the first stays.
            if index.position(&f.key).is_some() {
                continue;
            }
            let tick = f.mtime.max(last_tick + 1);
            last_tick = tick;
            let entry = Entry {
                size: f.size,
                tick,
                persisted: f.mtime,
            };
            // Appended: the newest so far.
            let pos = index.allocate(f.key, entry);
            index.link_newest(pos);
            index.used += f.size;
        }
        (index, last_tick)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    fn position(&self, key: &Key) -> Option<u32> {
        let hash = self.hash(key);
        self.table
            .find(hash, |&pos| self.slots[pos as usize].key == *key)
            .copied()
    }

    pub(super) fn contains(&self, digest: &Digest) -> bool {
        self.position(&Key::of(digest)).is_some()
    }

    pub(super) fn get(&self, digest: &Digest) -> Option<&Entry> {
        let pos = self.position(&Key::of(digest))?;
        Some(&self.slots[pos as usize].entry)
    }

    /// Entries least recently accessed first: (tick, key, entry).
    pub(super) fn oldest_first(&self) -> impl Iterator<Item = (u64, &Key, &Entry)> + '_ {
        let mut at = self.oldest;
        std::iter::from_fn(move || {
            let slot = self.slots.get(at as usize)?;
            at = slot.newer;
            Some((slot.entry.tick, &slot.key, &slot.entry))
        })
    }

    /// Pins a present entry; `false` if absent.
    pub(super) fn pin(&mut self, digest: &Digest) -> bool {
        let key = Key::of(digest);
        if self.position(&key).is_none() {
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
        // Callers check first; keep the sums right if one did not.
        self.remove(digest);
        let entry = Entry {
            size,
            tick,
            persisted,
        };
        let pos = self.allocate(Key::of(digest), entry);
        self.link_by_tick(pos);
        self.used += size;
    }

    pub(super) fn remove(&mut self, digest: &Digest) -> Option<Entry> {
        let key = Key::of(digest);
        let hash = self.hash(&key);
        let slots = &self.slots;
        let (pos, _) = self
            .table
            .find_entry(hash, |&pos| slots[pos as usize].key == key)
            .ok()?
            .remove();
        self.unlink(pos);
        let slot = &mut self.slots[pos as usize];
        slot.newer = self.free;
        self.free = pos;
        self.len -= 1;
        let entry = slot.entry;
        self.used -= entry.size;
        Some(entry)
    }

    /// Moves the entry to the most recent end. Returns the entry after the bump.
    pub(super) fn bump(&mut self, digest: &Digest, tick: u64) -> Option<&mut Entry> {
        let pos = self.position(&Key::of(digest))?;
        self.unlink(pos);
        self.slots[pos as usize].entry.tick = tick;
        self.link_by_tick(pos);
        Some(&mut self.slots[pos as usize].entry)
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

    /// A slot for a new entry (a free one if any) and its table entry; not
    /// linked yet.
    fn allocate(&mut self, key: Key, entry: Entry) -> u32 {
        let hash = self.hash(&key);
        let slot = Slot {
            key,
            entry,
            older: NIL,
            newer: NIL,
        };
        let pos = if self.free == NIL {
            self.slots.push(slot);
            // A slab of 4 billion entries is not a cache this runs.
            u32::try_from(self.slots.len() - 1).unwrap_or(NIL - 1)
        } else {
            let pos = self.free;
            self.free = self.slots[pos as usize].newer;
            self.slots[pos as usize] = slot;
            pos
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table
            .insert_unique(hash, pos, |&p| hasher.hash_one(&slots[p as usize].key));
        self.len += 1;
        pos
    }

    /// Links `pos` at the newest end.
    fn link_newest(&mut self, pos: u32) {
        let newest = self.newest;
        self.link_after(pos, newest);
    }

    /// Links `pos` after every entry with an older tick. Ticks come from a
    /// strictly increasing clock, so this is the newest end but for a
    /// commit that took its tick before a concurrent access: a step or two
    /// back.
    fn link_by_tick(&mut self, pos: u32) {
        let tick = self.slots[pos as usize].entry.tick;
        let mut after = self.newest;
        while after != NIL && self.slots[after as usize].entry.tick > tick {
            after = self.slots[after as usize].older;
        }
        self.link_after(pos, after);
    }

    /// Links `pos` right after `after` (`NIL`: as the oldest).
    fn link_after(&mut self, pos: u32, after: u32) {
        let next = if after == NIL {
            self.oldest
        } else {
            self.slots[after as usize].newer
        };
        let slot = &mut self.slots[pos as usize];
        slot.older = after;
        slot.newer = next;
        match after {
            NIL => self.oldest = pos,
            a => self.slots[a as usize].newer = pos,
        }
        match next {
            NIL => self.newest = pos,
            n => self.slots[n as usize].older = pos,
        }
    }

    fn unlink(&mut self, pos: u32) {
        let Slot { older, newer, .. } = self.slots[pos as usize];
        match older {
            NIL => self.oldest = newer,
            o => self.slots[o as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
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
    use std::collections::BTreeMap;

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

    /// Random inserts, removals and bumps against a model of the index
    /// the slab replaced (a map of entries and an ordered map of ticks):
    /// same entries, same order, same sums.
    #[test]
    fn the_slab_keeps_the_order_and_sums_a_tick_ordered_map_would() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let digests: Vec<Digest> = (0..64u32)
            .map(|i| Digest::sha256_of(&i.to_le_bytes()))
            .collect();
        let mut index = Index::default();
        let mut model: BTreeMap<u64, (Digest, u64)> = BTreeMap::new();
        let mut clock = 1_000u64;
        for step in 0..20_000 {
            let d = &digests[next(64) as usize];
            let present = model.values().any(|(m, _)| m == d);
            clock += 1 + next(3);
            match next(4) {
                0 | 1 => {
                    // A commit's tick may be a few older than the newest.
                    let tick = clock - next(4).min(clock - 1);
                    let tick = if model.contains_key(&tick) {
                        clock
                    } else {
                        tick
                    };
                    let size = 1 + next(1000);
                    model.retain(|_, (m, _)| m != d);
                    model.insert(tick, (d.clone(), size));
                    index.insert(d, size, tick, tick);
                }
                2 => {
                    let removed = index.remove(d).map(|e| e.size);
                    let before = model.len();
                    let mut was = None;
                    model.retain(|_, (m, size)| {
                        let hit = m == d;
                        if hit {
                            was = Some(*size);
                        }
                        !hit
                    });
                    assert_eq!(removed, was, "step {step}");
                    assert_eq!(model.len() + usize::from(was.is_some()), before);
                }
                _ => {
                    let bumped = index.bump(d, clock).is_some();
                    assert_eq!(bumped, present, "step {step}");
                    if let Some(tick) = model.iter().find(|(_, (m, _))| m == d).map(|(t, _)| *t) {
                        let v = model.remove(&tick).unwrap();
                        model.insert(clock, v);
                    }
                }
            }
            assert_eq!(index.len(), model.len(), "step {step}");
            if step % 97 == 0 || step > 19_900 {
                let got: Vec<(u64, Digest, u64)> = index
                    .oldest_first()
                    .map(|(t, k, e)| (t, k.digest(), e.size))
                    .collect();
                let want: Vec<(u64, Digest, u64)> = model
                    .iter()
                    .map(|(t, (d, s))| (*t, d.clone(), *s))
                    .collect();
                assert_eq!(got, want, "step {step}");
                assert_eq!(index.used, model.values().map(|(_, s)| s).sum::<u64>());
                for d in &digests {
                    let want = model
                        .iter()
                        .find(|(_, (m, _))| m == d)
                        .map(|(t, (_, s))| (*t, *s));
                    assert_eq!(index.get(d).map(|e| (e.tick, e.size)), want);
                }
            }
        }
        // Freed slots are reused: the slab never outgrows the key space.
        assert!(index.slots.len() <= digests.len(), "{}", index.slots.len());
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

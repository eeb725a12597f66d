//! Disk tier: content-addressed files with an in-memory LRU index.
//!
//! # Layout (version 1)
//!
//! ```text
//! <root>/v1/lock                        advisory lock: one process per root
//! <root>/v1/blobs/<alg>/<hex[..2]>/<hex>   committed content, named by digest
//! <root>/v1/tmp/<seq>.part              writes in progress (same file system)
//! <root>/v1/tags.jsonl, schema1-map.jsonl   see `tags.rs`, `mapping.rs`
//! <root>/v1/diffids.jsonl                  see `diffids.rs`
//! ```
//!
//! The `v1` segment is the format version (mountpoint-s3's `CACHE_VERSION`):
//! a future layout goes to `v2/` and can't misread old files.
//!
//! # Write protocol
//!
//! Content is written to a fresh file under `tmp/`, hashed while written,
//! checked against its digest, `fsync`ed, given its access time, and renamed
//! to its final name; then the parent directory is `fsync`ed. A crash at any
//! point leaves either a complete, verified entry or a stray temp file, and
//! every temp file is deleted at start-up. Dropping an uncommitted
//! [`TempFile`] unlinks it.
//!
//! # Index and eviction
//!
//! The index (digest → size, last access) lives in memory and is rebuilt at
//! start by listing the blob directories (no file is opened or re-hashed).
//! Fills in flight reserve their length against the budget as they start
//! (or as they grow), so committed entries plus temp files stay within it.
//! When a reservation or a commit would take usage over the budget, the least
//! recently *accessed* unpinned entries are unlinked first; when the file
//! system itself is full (`ENOSPC` below the budget), entries are evicted to
//! make room before a write gives up. Write failures are counted and turn
//! the cache's state degraded or read-only (`health.rs`). A reader that opened an
//! entry keeps it: Linux keeps an unlinked inode alive while a descriptor is
//! open.
//!
//! # Last access across restarts
//!
//! The in-memory order is exact. It is persisted approximately as each file's
//! mtime: a commit stamps it, and an access rewrites it only when the stamped
//! value is older than `access_persist_interval`, so restart order is precise
//! to that interval. Stamps come from a strictly increasing clock (never two
//! equal), which with an interval of zero makes the restart order exact.
//!
//! # Locking
//!
//! One `parking_lot` mutex guards the index. It is held across the few
//! syscalls that must be atomic with the index: the rename that publishes an
//! entry and the unlinks of its victims (otherwise an eviction could unlink a
//! file that a concurrent commit of the same digest just renamed into place).
//! It is never held across an `.await`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use regcache_formats::{Algorithm, Digest};

use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::hasher::verify_bytes;
use crate::health::{CacheHealth, WriteErrorKind};
use crate::source::Source;
use crate::stats::{Counter, DiskStats};
use crate::tier::Tier;

/// Path segment naming the on-disk format version.
pub const LAYOUT_VERSION: &str = "v1";

const ALGORITHMS: [Algorithm; 3] = [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512];

/// What a commit did with its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Installed {
    /// A new entry now exists.
    Added,
    /// The digest was already cached (identical content); the new copy was
    /// discarded and the entry's access time refreshed.
    AlreadyPresent,
    /// The content was valid but not kept: larger than the whole budget, or
    /// only pinned entries were left to evict.
    NotCached,
}

/// One committed entry, as cache listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub digest: Digest,
    pub size: u64,
    /// Last access in Unix nanoseconds: exact for a running tier's index,
    /// the persisted mtime (precise to `access_persist_interval`) when read
    /// from the files ([`DiskTier::scan_read_only`]).
    pub last_access_unix_nanos: u64,
}

/// The disk tier. Cheap to clone (shared state).
#[derive(Clone)]
pub struct DiskTier {
    inner: Arc<DiskInner>,
}

struct DiskInner {
    /// `<root>/v1`.
    base: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    /// Size of the file system holding the cache: no single write larger
    /// than this is even tried (it would evict everything and still fail).
    fs_bytes: u64,
    /// Throttle for persisting access times, in clock nanoseconds.
    persist_interval_ns: u64,
    index: Mutex<Index>,
    clock: AccessClock,
    /// Names temp files; unique within the process, and the root lock rules
    /// out other processes.
    temp_seq: AtomicU64,
    counters: Counters,
    /// Whether writes succeed (see `health.rs`).
    health: CacheHealth,
    /// Held (never read) for its advisory lock, released when the tier drops.
    /// `None` when the data directory is read-only: nothing can be written,
    /// so there is nothing to protect from a second process.
    _lock: Option<File>,
}

#[derive(Default)]
struct Counters {
    bytes_used: Counter,
    entries: Counter,
    bytes_committed: Counter,
    evictions: Counter,
    evicted_bytes: Counter,
    not_cached: Counter,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn system_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

mod index;
mod scan;
mod snapshot;

use index::{AccessClock, Index};
use scan::{clean_tmp, load_blobs, scan_blobs};

/// A temp file under `<root>/v1/tmp/`, unlinked on drop unless installed.
///
/// Dropping does one blocking `unlink`; that is acceptable from async code
/// (a single metadata syscall) and keeps "dropped means gone" unconditional.
pub(crate) struct TempFile {
    path: PathBuf,
    /// Shared so fill followers can `pread` while the writer `pwrite`s; the
    /// descriptor stays valid across the rename into place.
    pub(crate) file: Arc<File>,
    installed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.installed
            && let Err(error) = fs::remove_file(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "removing cache temp file failed");
        }
    }
}

impl fmt::Debug for TempFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TempFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Keeps an entry from being evicted while alive. Explicit removal
/// ([`DiskTier::remove_blocking`]) still removes it.
pub struct PinGuard {
    inner: Arc<DiskInner>,
    digest: Digest,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut index = self.inner.index.lock();
        index.unpin(&self.digest);
    }
}

impl fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PinGuard").field(&self.digest).finish()
    }
}

impl DiskTier {
    /// Opens (creating if needed) `<config.root>/v1`, takes the root lock,
    /// deletes stale temp files and rebuilds the index from the blob
    /// directories. If the entries exceed `disk_max_bytes` (the budget was
    /// lowered), the least recently accessed are evicted.
    ///
    /// Blocking: call it from the blocking pool ([`crate::Store::open`] does).
    /// Listing uses up to 4 threads; 100,000 entries open in well under a
    /// second (see `examples/open_100k.rs`).
    pub fn open(config: &StoreConfig) -> Result<DiskTier, StoreError> {
        DiskTier::open_with(config, || ()).map(|(tier, ())| tier)
    }

    /// [`DiskTier::open`], running `alongside` on another thread while the
    /// entries are scanned, once the root is locked (so it may read the
    /// root's other files: nobody else has it open).
    pub fn open_with<T: Send>(
        config: &StoreConfig,
        alongside: impl FnOnce() -> T + Send,
    ) -> Result<(DiskTier, T), StoreError> {
        let base = config.root.join(LAYOUT_VERSION);
        let blobs = base.join("blobs");
        let tmp = base.join("tmp");
        let health = CacheHealth::default();
        for dir in [&base, &blobs, &tmp] {
            if let Err(e) = fs::create_dir_all(dir) {
                // A read-only or full data directory must not stop regcache:
                // it starts with what is there and proxies the rest.
                if !is_storage_full_or_read_only(&e) {
                    return Err(StoreError::io("create directory", dir)(e));
                }
                health.write_failed("create directory", &e);
            }
        }
        let lock_path = base.join("lock");
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(lock) => Some(lock),
            Err(e) if is_storage_full_or_read_only(&e) => {
                health.write_failed("open lock file", &e);
                // flock(2) works on a read-only descriptor.
                File::open(&lock_path).ok()
            }
            Err(e) => return Err(StoreError::io("open lock file", &lock_path)(e)),
        };
        if let Some(lock) = &lock {
            match lock.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked {
                        path: config.root.clone(),
                    });
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(StoreError::io("lock", &lock_path)(e));
                }
            }
        }

        match clean_tmp(&tmp) {
            Ok(0) => {}
            Ok(stale) => tracing::info!(files = stale, "removed temp files left by an earlier run"),
            Err(StoreError::Io { source, .. }) if is_storage_full_or_read_only(&source) => {
                health.write_failed("remove stale temp file", &source);
            }
            Err(e) => return Err(e),
        }

        let started = std::time::Instant::now();
        let (scanned, beside) = std::thread::scope(|scope| {
            let beside = scope.spawn(alongside);
            // Oldest access first (see `load_blobs`).
            let scanned = load_blobs(&base, &blobs)
                .map(|(found, loaded)| (Index::from_sorted(found), loaded));
            let beside = beside
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (scanned, beside)
        });
        let ((index, last_tick), loaded) = scanned?;

        let fs_bytes = rustix::fs::statvfs(&base)
            .map(|s| s.f_blocks.saturating_mul(s.f_frsize))
            .unwrap_or(u64::MAX);
        let inner = DiskInner {
            base,
            blobs,
            tmp,
            max_bytes: config.disk_max_bytes,
            fs_bytes,
            persist_interval_ns: u64::try_from(config.access_persist_interval.as_nanos())
                .unwrap_or(u64::MAX),
            index: Mutex::new(index),
            clock: AccessClock(AtomicU64::new(last_tick)),
            temp_seq: AtomicU64::new(0),
            counters: Counters::default(),
            health,
            _lock: lock,
        };
        let tier = DiskTier {
            inner: Arc::new(inner),
        };
        {
            let mut index = tier.inner.index.lock();
            if index.used > tier.inner.max_bytes {
                let victims = index
                    .pick_victims(0, tier.inner.max_bytes)
                    .unwrap_or_default();
                tier.inner.evict(&mut index, &victims);
            }
            tier.inner.publish_usage(&index);
            tracing::info!(
                entries = index.len(),
                bytes = index.used,
                from_snapshot = loaded.from_snapshot,
                dirs_scanned = loaded.scanned,
                dirs = loaded.dirs,
                ms = started.elapsed().as_millis() as u64,
                "disk cache index loaded"
            );
        }
        Ok((tier, beside))
    }

    /// Writes the index snapshot the next open starts from (see
    /// `snapshot.rs`): for a clean shutdown, once requests have stopped.
    /// Entries committed or removed afterwards are still found at the next
    /// open (their directories are scanned). Returns the entries written.
    /// Blocking; holds the index lock while it writes (~50 ms a million
    /// entries).
    pub fn save_index(&self) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let index = inner.index.lock();
        snapshot::write(&inner.base, &inner.blobs, &index)
            .map_err(StoreError::io("write", inner.base.join(snapshot::FILE)))
    }

    /// `<root>/v1`.
    pub fn base_dir(&self) -> &Path {
        &self.inner.base
    }

    /// Where a committed entry lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blob_path(digest)
    }

    /// Is the digest committed? In-memory check, not an access.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.inner.index.lock().contains(digest)
    }

    /// Size of a committed entry without opening it. Not an access.
    pub fn len_of(&self, digest: &Digest) -> Option<u64> {
        self.inner.index.lock().get(digest).map(|e| e.size)
    }

    /// Opens a committed entry and records the access. `Ok(None)` if absent
    /// (including when it was evicted or deleted behind our back between the
    /// index lookup and the open). Blocking.
    pub fn open_blocking(&self, digest: &Digest) -> Result<Option<(File, u64)>, StoreError> {
        let inner = &self.inner;
        let Some((size, stamp)) = inner.bump(digest) else {
            return Ok(None);
        };
        let path = inner.blob_path(digest);
        match File::open(&path) {
            Ok(file) if file.metadata().is_ok_and(|m| m.len() != size) => {
                // Truncated or replaced behind our back: not the content the
                // index promised. Dropped, so the caller fetches it again.
                tracing::warn!(%digest, expected = size, "cache file has the wrong length; dropping it");
                let _ = self.remove_blocking(digest);
                Ok(None)
            }
            Ok(file) => {
                if let Some(stamp) = stamp {
                    persist_access(&file, digest, stamp);
                }
                Ok(Some((file, size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                inner.forget_missing(digest, &path);
                Ok(None)
            }
            Err(e) => Err(StoreError::io("open", path)(e)),
        }
    }

    /// Records an access that a faster tier served: exact in memory; the
    /// mtime is rewritten on the blocking pool only when the throttle allows
    /// (and a tokio runtime is running).
    pub fn touch(&self, digest: &Digest) {
        let inner = &self.inner;
        let stamp = {
            let mut index = inner.index.lock();
            let tick = inner.clock.next();
            let Some(entry) = index.bump(digest, tick) else {
                return;
            };
            if tick.saturating_sub(entry.persisted) < inner.persist_interval_ns {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            entry.persisted = tick;
            (runtime, tick)
        };
        let (runtime, tick) = stamp;
        let path = inner.blob_path(digest);
        drop(runtime.spawn_blocking(move || {
            if let Err(error) = File::open(&path).and_then(|f| f.set_modified(system_time(tick))) {
                tracing::debug!(path = %path.display(), %error, "persisting cache access time failed");
            }
        }));
    }

    /// Stops the entry from being evicted while the guard lives. `None` if
    /// the digest isn't cached.
    pub fn pin(&self, digest: &Digest) -> Option<PinGuard> {
        let mut index = self.inner.index.lock();
        if !index.pin(digest) {
            return None;
        }
        Some(PinGuard {
            inner: self.inner.clone(),
            digest: digest.clone(),
        })
    }

    /// Verifies `bytes` against `digest` and commits them (temp file, fsync,
    /// rename). Already-cached content is not rewritten. Blocking.
    pub fn put_blocking(&self, digest: &Digest, bytes: &[u8]) -> Result<Installed, StoreError> {
        verify_bytes(digest, bytes).map_err(|actual| StoreError::DigestMismatch {
            expected: digest.clone(),
            actual,
        })?;
        if self.inner.access_blocking(digest) {
            return Ok(Installed::AlreadyPresent);
        }
        let len = bytes.len() as u64;
        if !self.reserve(len) {
            self.inner.counters.not_cached.inc();
            return Ok(Installed::NotCached);
        }
        let result = self.put_reserved(digest, bytes);
        if result.is_err() {
            self.unreserve(len);
        }
        if let Err(StoreError::Io { op, source, .. }) = &result {
            self.inner.health.write_failed(op, source);
        }
        result
    }

    fn put_reserved(&self, digest: &Digest, bytes: &[u8]) -> Result<Installed, StoreError> {
        let len = bytes.len() as u64;
        let temp = self.create_temp()?;
        let path = temp.path.clone();
        if let Err(e) = (&*temp.file).write_all(bytes) {
            if WriteErrorKind::of(&e) != WriteErrorKind::NoSpace || self.free_space_for(len) == 0 {
                return Err(StoreError::io("write", &path)(e));
            }
            temp.file
                .write_all_at(bytes, 0)
                .map_err(StoreError::io("write", &path))?;
        }
        temp.file
            .sync_all()
            .map_err(StoreError::io("fsync", &path))?;
        self.install(temp, digest, len, len)
    }

    /// Promises `bytes` of the budget to a write in flight, evicting the
    /// least recently accessed entries to make room. `false` (and nothing
    /// changed) when it can't fit: larger than the budget, or only pinned
    /// entries left. Release with [`Self::unreserve`] or pass it to
    /// `install`.
    pub(crate) fn reserve(&self, bytes: u64) -> bool {
        let inner = &self.inner;
        if bytes > inner.max_bytes || bytes > inner.fs_bytes {
            return false;
        }
        let mut index = inner.index.lock();
        let Some(victims) = index.pick_victims(bytes, inner.max_bytes) else {
            return false;
        };
        inner.evict(&mut index, &victims);
        index.reserved += bytes;
        inner.publish_usage(&index);
        true
    }

    pub(crate) fn unreserve(&self, bytes: u64) {
        let mut index = self.inner.index.lock();
        index.reserved = index.reserved.saturating_sub(bytes);
    }

    /// The file system ran out of space below the budget (it is shared, or
    /// smaller than the budget): evicts the least recently accessed unpinned
    /// entries until at least `bytes` are freed. Returns what was freed; 0
    /// means there was nothing left to evict. Blocking.
    pub(crate) fn free_space_for(&self, bytes: u64) -> u64 {
        let inner = &self.inner;
        let mut index = inner.index.lock();
        let mut victims = Vec::new();
        let mut freed = 0;
        for (_, key, entry) in index.oldest_first() {
            if freed >= bytes {
                break;
            }
            if index.is_pinned(key) {
                continue;
            }
            freed += entry.size;
            victims.push(key.digest());
        }
        if !victims.is_empty() {
            tracing::info!(
                entries = victims.len(),
                bytes = freed,
                "file system full: evicting cache entries to make room"
            );
        }
        inner.evict(&mut index, &victims);
        inner.publish_usage(&index);
        freed
    }

    /// A verified write that was not kept (counted in `not_cached`).
    pub(crate) fn note_not_cached(&self) {
        self.inner.counters.not_cached.inc();
    }

    /// Whether writes succeed, and the counts of those that failed.
    pub fn health(&self) -> &CacheHealth {
        &self.inner.health
    }

    /// Deletes an entry (pinned or not). Readers with the file open keep it.
    /// Blocking.
    pub fn remove_blocking(&self, digest: &Digest) -> Result<bool, StoreError> {
        let mut index = self.inner.index.lock();
        if index.remove(digest).is_none() {
            return Ok(false);
        }
        let path = self.inner.blob_path(digest);
        let result = fs::remove_file(&path);
        self.inner.publish_usage(&index);
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(StoreError::io("remove", path)(e)),
        }
    }

    /// Every committed entry with its size and last access, least recently
    /// accessed first. In-memory; not an access.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let index = self.inner.index.lock();
        index
            .oldest_first()
            .map(|(tick, key, entry)| EntryInfo {
                digest: key.digest(),
                size: entry.size,
                last_access_unix_nanos: tick,
            })
            .collect()
    }

    /// The committed entries under `root` (a [`StoreConfig::root`]), listed
    /// without taking the lock or changing anything, so it works next to a
    /// running regcache (whose in-flight writes are under `tmp/` and not
    /// listed). Last access is each file's persisted mtime. Blocking.
    pub fn scan_read_only(root: &Path) -> Result<Vec<EntryInfo>, StoreError> {
        let blobs = root.join(LAYOUT_VERSION).join("blobs");
        let mut found: Vec<EntryInfo> = scan_blobs(&blobs)?
            .into_iter()
            .map(|f| EntryInfo {
                digest: f.key.digest(),
                size: f.size,
                last_access_unix_nanos: f.mtime,
            })
            .collect();
        found.sort_unstable_by(|a, b| {
            (a.last_access_unix_nanos, &a.digest).cmp(&(b.last_access_unix_nanos, &b.digest))
        });
        Ok(found)
    }

    /// Where the entry for `digest` lives under `root` (a
    /// [`StoreConfig::root`]), whether or not it exists.
    pub fn entry_path_in(root: &Path, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        let mut path = root.join(LAYOUT_VERSION).join("blobs");
        path.push(digest.algorithm().name());
        path.push(&hex[..2]);
        path.push(hex);
        path
    }

    /// Cached digests with their sizes, least recently accessed first: the
    /// order eviction will take them in.
    pub fn lru_order(&self) -> Vec<(Digest, u64)> {
        let index = self.inner.index.lock();
        index
            .oldest_first()
            .map(|(_, key, entry)| (key.digest(), entry.size))
            .collect()
    }

    pub fn stats(&self) -> DiskStats {
        let c = &self.inner.counters;
        DiskStats {
            bytes_used: c.bytes_used.get(),
            entries: c.entries.get(),
            max_bytes: self.inner.max_bytes,
            bytes_committed: c.bytes_committed.get(),
            evictions: c.evictions.get(),
            evicted_bytes: c.evicted_bytes.get(),
            not_cached: c.not_cached.get(),
            state: self.inner.health.state(),
            write_errors: WriteErrorKind::ALL.map(|k| (k, self.inner.health.errors(k))),
        }
    }

    /// A new, empty temp file opened read+write. Blocking.
    pub(crate) fn create_temp(&self) -> Result<TempFile, StoreError> {
        let seq = self.inner.temp_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.inner.tmp.join(format!("{seq}.part"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StoreError::io("create temp file", &path))?;
        Ok(TempFile {
            path,
            file: Arc::new(file),
            installed: false,
        })
    }

    /// Publishes a verified and fsynced temp file as the entry for `digest`.
    /// The caller has checked the content; this only does placement, access
    /// stamping and eviction. Blocking.
    /// `reserved` is what the write had reserved ([`Self::reserve`]); it is
    /// released here whatever the outcome.
    pub(crate) fn install(
        &self,
        temp: TempFile,
        digest: &Digest,
        len: u64,
        reserved: u64,
    ) -> Result<Installed, StoreError> {
        let result = self.install_reserved(temp, digest, len, reserved);
        if let Err(StoreError::Io { op, source, .. }) = &result {
            self.inner.health.write_failed(op, source);
        }
        result
    }

    fn install_reserved(
        &self,
        mut temp: TempFile,
        digest: &Digest,
        len: u64,
        reserved: u64,
    ) -> Result<Installed, StoreError> {
        let inner = &self.inner;
        let release = |index: &mut Index| index.reserved = index.reserved.saturating_sub(reserved);
        let tick = inner.clock.next();
        // Stamp before publishing so the persisted access time is right from the start.
        if let Err(e) = temp.file.set_modified(system_time(tick)) {
            release(&mut inner.index.lock());
            return Err(StoreError::io("set mtime", &temp.path)(e));
        }
        let target = inner.blob_path(digest);
        {
            let mut index = inner.index.lock();
            release(&mut index);
            if index.contains(digest) {
                drop(index);
                inner.access_blocking(digest);
                return Ok(Installed::AlreadyPresent);
            }
            let Some(victims) = (len <= inner.max_bytes)
                .then(|| index.pick_victims(len, inner.max_bytes))
                .flatten()
            else {
                inner.counters.not_cached.inc();
                tracing::warn!(%digest, bytes = len, max_bytes = inner.max_bytes, "content not cached: it does not fit the disk budget");
                return Ok(Installed::NotCached);
            };
            inner.evict(&mut index, &victims);
            rename_creating_parent(&temp.path, &target)
                .map_err(StoreError::io("rename", &target))?;
            temp.installed = true;
            index.insert(digest, len, tick, tick);
            inner.counters.bytes_committed.add(len);
            inner.publish_usage(&index);
        }
        inner.health.write_ok();
        if let Some(parent) = target.parent()
            && let Err(error) = sync_dir(parent)
        {
            tracing::warn!(%digest, %error, "fsync of cache directory failed; entry may not survive a power loss");
        }
        Ok(Installed::Added)
    }
}

impl DiskInner {
    /// Moves the entry to the recent end. Returns its size and, when the
    /// throttle says the persisted access time is stale, the stamp to write
    /// (already recorded as persisted).
    fn bump(&self, digest: &Digest) -> Option<(u64, Option<u64>)> {
        let mut index = self.index.lock();
        let tick = self.clock.next();
        let entry = index.bump(digest, tick)?;
        let stamp = (tick.saturating_sub(entry.persisted) >= self.persist_interval_ns).then(|| {
            entry.persisted = tick;
            tick
        });
        Some((entry.size, stamp))
    }

    /// Records an access without handing out the file (a re-put of cached
    /// content). Returns whether the entry exists. Blocking.
    fn access_blocking(&self, digest: &Digest) -> bool {
        let Some((_, stamp)) = self.bump(digest) else {
            return false;
        };
        if let Some(stamp) = stamp {
            match File::open(self.blob_path(digest)) {
                Ok(file) => persist_access(&file, digest, stamp),
                Err(error) => {
                    tracing::debug!(%digest, %error, "persisting cache access time failed")
                }
            }
        }
        true
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        let mut path = self.blobs.join(digest.algorithm().name());
        path.push(&hex[..2]);
        path.push(hex);
        path
    }

    /// Removes `victims` from the index and unlinks them. Called with the
    /// index lock held (see the module docs for why).
    fn evict(&self, index: &mut Index, victims: &[Digest]) {
        for digest in victims {
            let Some(entry) = index.remove(digest) else {
                continue;
            };
            self.counters.evictions.inc();
            self.counters.evicted_bytes.add(entry.size);
            let path = self.blob_path(digest);
            match fs::remove_file(&path) {
                Ok(()) => tracing::debug!(%digest, bytes = entry.size, "evicted cache entry"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(%digest, %error, "unlinking evicted cache entry failed")
                }
            }
        }
    }

    /// The file of an indexed entry vanished (deleted outside the store).
    /// Drop it from the index unless a concurrent commit put it back.
    fn forget_missing(&self, digest: &Digest, path: &Path) {
        let mut index = self.index.lock();
        if index.contains(digest) && !path.exists() {
            tracing::warn!(%digest, "cache file missing; dropping it from the index");
            index.remove(digest);
            self.publish_usage(&index);
        }
    }

    fn publish_usage(&self, index: &Index) {
        self.counters.bytes_used.set(index.used);
        self.counters.entries.set(index.len() as u64);
    }
}

/// Errors that mean "the cache can't write", not "the cache is broken".
pub(crate) fn is_storage_full_or_read_only(e: &io::Error) -> bool {
    WriteErrorKind::of(e) != WriteErrorKind::Io
}

/// Writes an access stamp into the file's mtime (best effort: a failure
/// only makes the restart order less precise).
fn persist_access(file: &File, digest: &Digest, stamp: u64) {
    if let Err(error) = file.set_modified(system_time(stamp)) {
        tracing::debug!(%digest, %error, "persisting cache access time failed");
    }
}

fn rename_creating_parent(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(from, to)
        }
        other => other,
    }
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskTier")
            .field("base", &self.inner.base)
            .field("max_bytes", &self.inner.max_bytes)
            .field("bytes_used", &self.inner.counters.bytes_used.get())
            .finish_non_exhaustive()
    }
}

impl Tier for DiskTier {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn get<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<Source>, StoreError>> {
        if !self.contains(digest) {
            return std::future::ready(Ok(None)).boxed();
        }
        let this = self.clone();
        let digest = digest.clone();
        async move {
            let opened = tokio::task::spawn_blocking(move || this.open_blocking(&digest))
                .await
                .map_err(StoreError::task)??;
            Ok(opened.map(|(file, len)| Source::File { file, len }))
        }
        .boxed()
    }

    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        std::future::ready(Ok(self.len_of(digest))).boxed()
    }

    fn put<'a>(
        &'a self,
        digest: &'a Digest,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let this = self.clone();
        let digest = digest.clone();
        async move {
            tokio::task::spawn_blocking(move || this.put_blocking(&digest, &bytes))
                .await
                .map_err(StoreError::task)??;
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<bool, StoreError>> {
        let this = self.clone();
        let digest = digest.clone();
        async move {
            tokio::task::spawn_blocking(move || this.remove_blocking(&digest))
                .await
                .map_err(StoreError::task)?
        }
        .boxed()
    }

    fn record_access(&self, digest: &Digest) {
        self.touch(digest);
    }
}

//! Startup: clearing temp files and scanning committed blobs.

use super::index::Key;
use super::*;

/// Deletes everything in `tmp`: only writes that never committed live there.
pub(super) fn clean_tmp(tmp: &Path) -> Result<usize, StoreError> {
    let mut removed = 0;
    let entries = match fs::read_dir(tmp) {
        Ok(entries) => entries,
        // Not there (a read-only data dir where it could not be created).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io("list", tmp)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", tmp))?;
        let path = entry.path();
        let result = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.map_err(StoreError::io("remove stale temp file", &path))?;
        removed += 1;
    }
    Ok(removed)
}

pub(super) struct Found {
    pub(super) key: Key,
    pub(super) size: u64,
    pub(super) mtime: u64,
}

/// Every committed entry, oldest access first (ties broken by digest, so
/// the order is deterministic): from the index snapshot a clean shutdown
/// left in `base` for the prefix directories it still describes (see
/// `snapshot.rs`), by scanning the files of every other directory (all of
/// them when there is no snapshot). Returns the entries and how many
/// directories were scanned out of how many.
pub(super) fn load_blobs(base: &Path, blobs: &Path) -> Result<(Vec<Found>, Loaded), StoreError> {
    let prefix_dirs = list_prefix_dirs(blobs)?;
    let snapshot = base.join(snapshot::FILE).exists().then(|| {
        let now: HashMap<u8, snapshot::Stamp> = prefix_dirs
            .iter()
            .filter(|(algorithm, _)| *algorithm == Algorithm::Sha256)
            .filter_map(|(_, dir)| {
                let prefix = dir.file_name()?.to_str().and_then(snapshot::prefix_byte)?;
                Some((prefix, snapshot::stamp_of(dir)?))
            })
            .collect();
        snapshot::take(base, &now)
    });
    let Some(Some(snapshot)) = snapshot else {
        let dirs = prefix_dirs.len();
        let found = scan_sorted(prefix_dirs)?;
        return Ok((
            found,
            Loaded {
                dirs,
                scanned: dirs,
                from_snapshot: 0,
            },
        ));
    };
    let dirs = prefix_dirs.len();
    let stale: Vec<(Algorithm, PathBuf)> = prefix_dirs
        .into_iter()
        .filter(|(algorithm, dir)| {
            let prefix = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(snapshot::prefix_byte);
            !(*algorithm == Algorithm::Sha256
                && prefix.is_some_and(|p| snapshot.trusted.contains(&p)))
        })
        .collect();
    let loaded = Loaded {
        dirs,
        scanned: stale.len(),
        from_snapshot: snapshot.entries.len(),
    };
    let scanned = scan_sorted(stale)?;
    Ok((merge(snapshot.entries, scanned), loaded))
}

/// Where an open's entries came from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Loaded {
    /// Prefix directories in the cache.
    pub(super) dirs: usize,
    /// Of those, the ones scanned file by file.
    pub(super) scanned: usize,
    /// Entries taken from the index snapshot.
    pub(super) from_snapshot: usize,
}

/// Two sorted runs as one.
fn merge(a: Vec<Found>, b: Vec<Found>) -> Vec<Found> {
    if b.is_empty() {
        return a;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if oldest_first(x, y).is_le() => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, _) => b.next(),
        };
        match next {
            Some(f) => out.push(f),
            None => return out,
        }
    }
}

/// Every committed entry under `blobs`, by scanning (see [`scan_sorted`]).
pub(super) fn scan_blobs(blobs: &Path) -> Result<Vec<Found>, StoreError> {
    scan_sorted(list_prefix_dirs(blobs)?)
}

/// The prefix directories (`<blobs>/<algorithm>/<xx>`).
fn list_prefix_dirs(blobs: &Path) -> Result<Vec<(Algorithm, PathBuf)>, StoreError> {
    let mut prefix_dirs = Vec::new();
    for algorithm in ALGORITHMS {
        let dir = blobs.join(algorithm.name());
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("list", dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                prefix_dirs.push((algorithm, entry.path()));
            } else {
                tracing::warn!(path = %entry.path().display(), "ignoring unexpected file in cache directory");
            }
        }
    }
    Ok(prefix_dirs)
}

/// The entries of `prefix_dirs`, oldest access (mtime) first. The
/// directories are split across a few threads: the work is one `getdents`
/// per directory and one `statx` per file, which parallelises well on a
/// warm dentry cache. Each thread sorts its own share; the shares are then
/// merged.
fn scan_sorted(prefix_dirs: Vec<(Algorithm, PathBuf)>) -> Result<Vec<Found>, StoreError> {
    if prefix_dirs.is_empty() {
        return Ok(Vec::new());
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let per_thread = prefix_dirs.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<Found>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = prefix_dirs
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    let mut found = scan_prefix_dirs(chunk)?;
                    found.sort_unstable_by(oldest_first);
                    Ok(found)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(StoreError::Task("cache index scan panicked".into())))
            })
            .collect()
    });
    let mut found = Vec::new();
    for r in results {
        found.extend(r?);
    }
    // A few sorted runs back to back: the stable sort finds and merges them.
    found.sort_by(oldest_first);
    Ok(found)
}

fn oldest_first(a: &Found, b: &Found) -> std::cmp::Ordering {
    a.mtime.cmp(&b.mtime).then_with(|| a.key.cmp(&b.key))
}

pub(super) fn scan_prefix_dirs(dirs: &[(Algorithm, PathBuf)]) -> Result<Vec<Found>, StoreError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};
    let mut found = Vec::new();
    for (algorithm, dir) in dirs {
        let prefix = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // rustix's directory reader and `statx` relative to the directory:
        // no heap name per entry (std's `DirEntry` has one), and only the
        // fields the index needs.
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::io("list", dir)(e.into()))?;
        let mut entries =
            rustix::fs::Dir::read_from(&fd).map_err(|e| StoreError::io("list", dir)(e.into()))?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|e| StoreError::io("list", dir)(e.into()))?;
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            // Parsed straight into the index's compact key: no `Digest`
            // (a heap string) per entry.
            let key = std::str::from_utf8(bytes)
                .ok()
                .filter(|hex| hex.starts_with(prefix))
                .and_then(|hex| Key::from_hex(*algorithm, hex));
            let Some(key) = key else {
                tracing::warn!(path = %dir.join(String::from_utf8_lossy(bytes).as_ref()).display(), "ignoring file with a non-digest name in cache directory");
                continue;
            };
            let meta = match rustix::fs::statx(
                &fd,
                name,
                AtFlags::SYMLINK_NOFOLLOW,
                StatxFlags::TYPE | StatxFlags::SIZE | StatxFlags::MTIME,
            ) {
                Ok(meta) => meta,
                // Deleted while listing (should not happen under the root lock).
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => {
                    let path = dir.join(String::from_utf8_lossy(bytes).as_ref());
                    return Err(StoreError::io("stat", path)(e.into()));
                }
            };
            if FileType::from_raw_mode(meta.stx_mode.into()) != FileType::RegularFile {
                continue;
            }
            // As `unix_nanos` reads a `SystemTime`: before the epoch is 0.
            let mtime = u64::try_from(meta.stx_mtime.tv_sec).map_or(0, |secs| {
                secs.saturating_mul(1_000_000_000)
                    .saturating_add(u64::from(meta.stx_mtime.tv_nsec))
            });
            found.push(Found {
                key,
                size: meta.stx_size,
                mtime,
            });
        }
    }
    Ok(found)
}

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

/// Lists every committed entry. Prefix directories are split across a few
/// threads: the work is one `getdents` per directory and one `statx` per
/// file, which parallelises well on a warm dentry cache.
pub(super) fn scan_blobs(blobs: &Path) -> Result<Vec<Found>, StoreError> {
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
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let per_thread = prefix_dirs.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<Found>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = prefix_dirs
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || scan_prefix_dirs(chunk)))
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
    Ok(found)
}

pub(super) fn scan_prefix_dirs(dirs: &[(Algorithm, PathBuf)]) -> Result<Vec<Found>, StoreError> {
    let mut found = Vec::new();
    for (algorithm, dir) in dirs {
        let prefix = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        for entry in fs::read_dir(dir).map_err(StoreError::io("list", dir))? {
            let entry = entry.map_err(StoreError::io("list", dir))?;
            let name = entry.file_name();
            // Parsed straight into the index's compact key: no `Digest`
            // (a heap string) per entry.
            let key = name
                .to_str()
                .filter(|hex| hex.starts_with(prefix))
                .and_then(|hex| Key::from_hex(*algorithm, hex));
            let Some(key) = key else {
                tracing::warn!(path = %entry.path().display(), "ignoring file with a non-digest name in cache directory");
                continue;
            };
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Deleted while listing (should not happen under the root lock).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("stat", entry.path())(e)),
            };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().map(unix_nanos).unwrap_or(0);
            found.push(Found {
                key,
                size: meta.len(),
                mtime,
            });
        }
    }
    Ok(found)
}

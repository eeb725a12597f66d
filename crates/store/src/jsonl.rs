//! Line-delimited JSON files for small persisted records.
//!
//! Appends write one whole line (`record` + `\n`) with a single `write`
//! call on an `O_APPEND` descriptor. A crash can still leave the last line
//! torn; [`load`] ignores an unterminated tail that doesn't parse and skips
//! (with a warning) any other line that doesn't, and reports the file as
//! damaged so the owner rewrites it before appending again: appending after
//! a torn tail would glue the new record onto the broken one.
//!
//! [`rewrite`] replaces the file atomically (temp file, fsync, rename, fsync
//! of the directory), which is how owners compact.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::disk::sync_dir;
use crate::error::StoreError;

#[derive(Debug)]
pub(crate) struct Loaded<T> {
    pub(crate) records: Vec<T>,
    /// Torn tail or unreadable lines: rewrite before appending.
    pub(crate) damaged: bool,
}

pub(crate) fn load<T: DeserializeOwned>(path: &Path) -> Result<Loaded<T>, StoreError> {
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Loaded {
                records: Vec::new(),
                damaged: false,
            });
        }
        Err(e) => return Err(StoreError::io("read", path)(e)),
    };
    let mut records = Vec::new();
    let mut damaged = false;
    let mut lines = data.split_inclusive(|&b| b == b'\n').enumerate().peekable();
    while let Some((number, line)) = lines.next() {
        let terminated = line.ends_with(b"\n");
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        if body.iter().all(u8::is_ascii_whitespace) {
            damaged |= !terminated;
            continue;
        }
        match serde_json::from_slice::<T>(body) {
            Ok(record) => {
                records.push(record);
                damaged |= !terminated;
            }
            Err(error) => {
                damaged = true;
                if lines.peek().is_none() && !terminated {
                    tracing::info!(path = %path.display(), "ignoring torn last line of log (interrupted write)");
                } else {
                    tracing::warn!(path = %path.display(), line = number + 1, %error, "skipping unreadable log line");
                }
            }
        }
    }
    Ok(Loaded { records, damaged })
}

/// Atomically replaces `path` with `records`, one per line.
pub(crate) fn rewrite<'a, T: Serialize + 'a>(
    path: &Path,
    records: impl IntoIterator<Item = &'a T>,
) -> Result<(), StoreError> {
    let tmp = tmp_path(path);
    let file = File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
    let mut out = BufWriter::new(file);
    for record in records {
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")
            .map_err(StoreError::io("write", &tmp))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| StoreError::io("write", &tmp)(e.into_error()))?;
    file.sync_all().map_err(StoreError::io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(StoreError::io("rename", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(StoreError::io("fsync", dir))?;
    }
    Ok(())
}

/// Rewrites at open, where a full or read-only data directory must not stop
/// start-up: the log is then only compacted later.
pub(crate) fn rewrite_at_open<T: Serialize>(path: &Path, records: &[T]) -> Result<(), StoreError> {
    match rewrite(path, records) {
        Err(StoreError::Io { op, source, .. })
            if crate::disk::is_storage_full_or_read_only(&source) =>
        {
            tracing::warn!(path = %path.display(), step = op, error = %source, "could not compact the log at start-up; it is compacted later");
            Ok(())
        }
        other => other,
    }
}

/// [`open_append`], or, when the data directory is read-only or full and
/// the log can't be opened for writing, a sink (`/dev/null`): the records
/// then live in memory only, until a restart. Start-up must not fail for a
/// cache that can't write.
pub(crate) fn open_append_or_memory(path: &Path) -> Result<File, StoreError> {
    match open_append(path) {
        // NotFound: its folder could not be created (a read-only data dir).
        Err(StoreError::Io { source, .. })
            if crate::disk::is_storage_full_or_read_only(&source)
                || source.kind() == io::ErrorKind::NotFound =>
        {
            tracing::warn!(path = %path.display(), error = %source, "log cannot be written; its changes are kept in memory only until a restart");
            OpenOptions::new()
                .append(true)
                .open("/dev/null")
                .map_err(StoreError::io("open", "/dev/null"))
        }
        other => other,
    }
}

pub(crate) fn open_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(StoreError::io("open", path))
}

/// Appends one record as one line; `sync` adds an `fdatasync`.
pub(crate) fn append<T: Serialize>(
    file: &mut File,
    path: &Path,
    record: &T,
    sync: bool,
) -> Result<(), StoreError> {
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    file.write_all(&line)
        .map_err(StoreError::io("append", path))?;
    if sync {
        file.sync_data().map_err(StoreError::io("fsync", path))?;
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct R {
        n: u32,
    }

    #[test]
    fn torn_tail_is_ignored_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        fs::write(&path, b"{\"n\":1}\n{\"n\":2}\n{\"n\":").unwrap();
        let loaded: Loaded<R> = load(&path).unwrap();
        assert_eq!(loaded.records, vec![R { n: 1 }, R { n: 2 }]);
        assert!(loaded.damaged);
    }

    #[test]
    fn bad_middle_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        fs::write(&path, b"{\"n\":1}\ngarbage\n{\"n\":3}\n").unwrap();
        let loaded: Loaded<R> = load(&path).unwrap();
        assert_eq!(loaded.records, vec![R { n: 1 }, R { n: 3 }]);
        assert!(loaded.damaged);
    }

    #[test]
    fn clean_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        rewrite(&path, &[R { n: 1 }]).unwrap();
        let mut f = open_append(&path).unwrap();
        append(&mut f, &path, &R { n: 2 }, true).unwrap();
        let loaded: Loaded<R> = load(&path).unwrap();
        assert_eq!(loaded.records, vec![R { n: 1 }, R { n: 2 }]);
        assert!(!loaded.damaged);
        let missing: Loaded<R> = load(&dir.path().join("none")).unwrap();
        assert!(missing.records.is_empty() && !missing.damaged);
    }
}

//! Diff IDs of layer blobs (sha256 of the uncompressed layer), persisted as
//! an append-only log so that a restart does not hash layers again.
//!
//! Computing one means reading the whole layer through a decompressor; the
//! Schema 1 → Schema 2 upgrade needs it for every layer of an image. Each
//! result is one JSON line in `<root>/v1/diffids.jsonl`: the blob digest,
//! its diff ID and its size. Content addressing makes a record true forever,
//! so the first one for a blob is kept and later ones are ignored.
//!
//! Durability: appends are not `fdatasync`ed (a lost line only costs a
//! re-hash). A torn last line is ignored at load and the file rewritten
//! before the next append, as with the other logs ([`crate::jsonl`]).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use regcache_formats::Digest;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::jsonl;

/// One layer blob's diff ID and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffIdRecord {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// sha256 of the uncompressed layer.
    pub diff_id: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
}

struct State {
    by_digest: HashMap<Digest, DiffIdRecord>,
    log: File,
    needs_rewrite: bool,
}

/// The persisted diff ID log. See the module docs.
pub struct DiffIdLog {
    path: PathBuf,
    state: Mutex<State>,
}

impl DiffIdLog {
    /// Where a store rooted at `root` keeps the log.
    pub fn path_in(root: impl AsRef<Path>) -> PathBuf {
        root.as_ref()
            .join(crate::disk::LAYOUT_VERSION)
            .join("diffids.jsonl")
    }

    /// Loads the log, dropping repeats and a torn tail. Blocking.
    pub fn open(path: impl Into<PathBuf>) -> Result<DiffIdLog, StoreError> {
        let path = path.into();
        let loaded = jsonl::load::<DiffIdRecord>(&path)?;
        let total = loaded.records.len();
        let mut by_digest = HashMap::with_capacity(total);
        let mut kept = Vec::with_capacity(total);
        for r in loaded.records {
            if !by_digest.contains_key(&r.digest) {
                by_digest.insert(r.digest.clone(), r.clone());
                kept.push(r);
            }
        }
        if loaded.damaged || kept.len() != total {
            jsonl::rewrite_at_open(&path, &kept)?;
        }
        let log = jsonl::open_append_or_memory(&path)?;
        Ok(DiffIdLog {
            path,
            state: Mutex::new(State {
                by_digest,
                log,
                needs_rewrite: false,
            }),
        })
    }

    /// The record of the blob `digest`, if one was kept.
    pub fn get(&self, digest: &Digest) -> Option<DiffIdRecord> {
        self.state.lock().by_digest.get(digest).cloned()
    }

    /// Keeps `record` unless the blob has one already; returns whether it
    /// was new. In memory even when the file can't be written (the error
    /// is returned: the record is then lost at restart).
    pub fn append(&self, record: DiffIdRecord) -> Result<bool, StoreError> {
        let mut state = self.state.lock();
        if state.by_digest.contains_key(&record.digest) {
            return Ok(false);
        }
        state
            .by_digest
            .insert(record.digest.clone(), record.clone());
        if state.needs_rewrite {
            let all: Vec<DiffIdRecord> = state.by_digest.values().cloned().collect();
            jsonl::rewrite(&self.path, &all)?;
            state.log = jsonl::open_append(&self.path)?;
            state.needs_rewrite = false;
            return Ok(true);
        }
        if let Err(e) = jsonl::append(&mut state.log, &self.path, &record, false) {
            state.needs_rewrite = true;
            return Err(e);
        }
        Ok(true)
    }

    pub fn len(&self) -> usize {
        self.state.lock().by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for DiffIdLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiffIdLog")
            .field("path", &self.path)
            .field("records", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn rec(c: char, diff: char, size: u64) -> DiffIdRecord {
        DiffIdRecord {
            digest: d(c),
            diff_id: d(diff),
            size,
        }
    }

    #[test]
    fn records_survive_a_reopen_and_the_first_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffids.jsonl");
        let log = DiffIdLog::open(&path).unwrap();
        assert!(log.is_empty());
        assert!(log.append(rec('a', '1', 10)).unwrap());
        assert!(!log.append(rec('a', '2', 20)).unwrap());
        assert!(log.append(rec('b', '3', 30)).unwrap());
        drop(log);
        let log = DiffIdLog::open(&path).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log.get(&d('a')), Some(rec('a', '1', 10)));
        assert_eq!(log.get(&d('b')), Some(rec('b', '3', 30)));
        assert_eq!(log.get(&d('c')), None);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_appends_continue_on_a_clean_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffids.jsonl");
        let line = serde_json::to_string(&rec('a', '1', 10)).unwrap();
        std::fs::write(&path, format!("{line}\n{{\"digest\":\"sha")).unwrap();
        let log = DiffIdLog::open(&path).unwrap();
        assert_eq!(log.len(), 1);
        log.append(rec('b', '2', 20)).unwrap();
        drop(log);
        let log = DiffIdLog::open(&path).unwrap();
        assert_eq!(log.get(&d('b')), Some(rec('b', '2', 20)));
        assert_eq!(log.len(), 2);
    }
}

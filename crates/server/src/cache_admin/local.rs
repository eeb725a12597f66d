//! `regcache ls` and `purge` on a data dir, without a running regcache.
//!
//! Listing reads without the store's lock (the tag log replayed read-only,
//! the blob directories listed, manifests read by path), so it also works
//! next to a running instance, which may be writing meanwhile. Purging
//! opens the store, taking its lock: it refuses while a regcache runs there.

use std::path::{Path, PathBuf};

use regcache_formats::Digest;
use regcache_store::{DiskTier, LAYOUT_VERSION, Store, StoreConfig, StoreError, TagIndex};

use super::MAX_MANIFEST_BYTES;
use super::inventory::Graph;

/// Why a data dir could not be read or changed.
#[derive(Debug)]
pub enum LocalError {
    /// No cache there (`DATA_DIR/cache/v1` missing).
    NoCache(PathBuf),
    /// A running regcache holds the lock.
    Locked(PathBuf),
    Io(String),
}

impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalError::NoCache(p) => write!(
                f,
                "no regcache cache at {} (is --data-dir right?)",
                p.display()
            ),
            LocalError::Locked(p) => write!(
                f,
                "{} is in use by a running regcache: use its admin API (leave out --data-dir/--offline), or stop it first",
                p.display()
            ),
            LocalError::Io(e) => f.write_str(e),
        }
    }
}

fn check(root: &Path) -> Result<(), LocalError> {
    let base = root.join(LAYOUT_VERSION);
    if base.is_dir() {
        Ok(())
    } else {
        Err(LocalError::NoCache(base))
    }
}

/// Reads the cached manifest bytes of `digest` under `root` (bounded).
pub fn reader(root: &Path) -> impl FnMut(&Digest) -> Option<Vec<u8>> + use<> {
    let root = root.to_owned();
    move |d: &Digest| {
        let path = DiskTier::entry_path_in(&root, d);
        let len = std::fs::metadata(&path).ok()?.len();
        (len <= MAX_MANIFEST_BYTES)
            .then(|| std::fs::read(&path).ok())
            .flatten()
    }
}

/// The graph of the cache under `root` (`DATA_DIR/cache`), read-only. Blocking.
pub fn graph(root: &Path) -> Result<Graph, LocalError> {
    check(root)?;
    let tags = TagIndex::read(&root.join(LAYOUT_VERSION).join("tags.jsonl"))
        .map_err(|e| LocalError::Io(e.to_string()))?;
    let entries = DiskTier::scan_read_only(root).map_err(|e| LocalError::Io(e.to_string()))?;
    Ok(Graph::build(tags, entries, &mut reader(root)))
}

/// Opens the store under `root` for a purge (taking its lock), with the
/// configured disk budget so opening evicts nothing it would not. Blocking.
pub fn open_for_purge(root: &Path, disk_max_bytes: u64) -> Result<Store, LocalError> {
    check(root)?;
    let config = StoreConfig::new(root)
        .disk_max_bytes(disk_max_bytes)
        .memory_max_bytes(0);
    Store::open_blocking(config).map_err(|e| match e {
        StoreError::Locked { path } => LocalError::Locked(path),
        e => LocalError::Io(e.to_string()),
    })
}

/// The graph of an open store's content (its live index). Blocking.
pub fn graph_of(store: &Store) -> Graph {
    let root = store.config().root.clone();
    Graph::build(
        store.tags().all(),
        store.disk().entries(),
        &mut reader(&root),
    )
}

//! Tag index: (upstream, repository, tag) → what the tag pointed at.
//!
//! Persisted as an append-only JSON-lines log (`<root>/v1/tags.jsonl`), one
//! `put` or `remove` operation per line, replayed at open. The whole index
//! also lives in memory, so reads never touch the disk.
//!
//! Why a log: a tag refresh is frequent and tiny; one buffered `write` per
//! change is cheaper than a temp-file-and-rename per tag, and a torn last line
//! is easy to detect. The log is compacted (rewritten atomically with only
//! the live records) at open and whenever it holds more than twice as many
//! lines as live tags (plus slack), so it stays proportional to the index.
//!
//! Durability: appends are not `fsync`ed. A process crash loses nothing (the
//! data is in the page cache); a power loss may lose the most recent changes
//! or tear the last line, which is ignored at load. That is acceptable for a
//! cache of upstream state: the next request re-resolves the tag.
//!
//! Concurrency: one `parking_lot` mutex around the map and the log
//! descriptor; `put` and `remove` do one small blocking `write` while holding
//! it (no `.await` inside). Callers on async tasks may call them directly.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use regcache_formats::Digest;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::jsonl;

/// What a tag resolved to when it was last fetched from the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest digest the upstream reported (`Docker-Content-Digest`).
    pub digest: Digest,
    /// The manifest's media type, so a cached tag can be served with the
    /// right `Content-Type` without parsing.
    pub media_type: String,
    /// Manifest size in bytes.
    pub size: u64,
    /// When the upstream said so, in Unix seconds; the server compares it
    /// with its tag TTL.
    pub fetched_at_unix: u64,
}

/// One log line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum TagOp {
    Put {
        upstream: String,
        repository: String,
        tag: String,
        record: TagRecord,
    },
    Remove {
        upstream: String,
        repository: String,
        tag: String,
    },
}

/// One tag with its upstream and repository, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEntry {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    pub record: TagRecord,
}

type Tags = BTreeMap<String, TagRecord>;
type Repos = BTreeMap<String, Tags>;

struct State {
    /// upstream → repository → tag → record. Nested maps so lookups by `&str`
    /// need no allocation.
    map: BTreeMap<String, Repos>,
    live: usize,
    /// Lines in the log file.
    lines: usize,
    log: File,
    /// Set when an append failed part-way: the file may end in a torn line,
    /// so it is rewritten before the next append.
    needs_rewrite: bool,
}

/// The persisted tag index. See the module docs for format and durability.
pub struct TagIndex {
    path: PathBuf,
    state: Mutex<State>,
    /// Bumped after every change to the map: an answer derived from the
    /// index (a prepared response) is still current while it is unchanged.
    generation: AtomicU64,
}

/// Rewrite when lines exceed `2 * live + COMPACT_SLACK`.
const COMPACT_SLACK: usize = 1024;

impl TagIndex {
    /// Loads (replaying the log) and compacts. Blocking.
    pub fn open(path: impl Into<PathBuf>) -> Result<TagIndex, StoreError> {
        let path = path.into();
        let loaded = jsonl::load::<TagOp>(&path)?;
        let mut map: BTreeMap<String, Repos> = BTreeMap::new();
        let lines = loaded.records.len();
        for op in loaded.records {
            apply(&mut map, op);
        }
        let live = count(&map);
        if loaded.damaged || lines != live {
            match rewrite(&path, &map) {
                Err(StoreError::Io { op, source, .. })
                    if crate::disk::is_storage_full_or_read_only(&source) =>
                {
                    tracing::warn!(path = %path.display(), step = op, error = %source, "could not compact the tag log at start-up; it is compacted later");
                }
                other => other?,
            }
        }
        let log = jsonl::open_append_or_memory(&path)?;
        Ok(TagIndex {
            path,
            state: Mutex::new(State {
                map,
                live,
                lines: live,
                log,
                needs_rewrite: false,
            }),
            generation: AtomicU64::new(0),
        })
    }

    /// Changes every time a tag is put or removed. Read it before reading
    /// the index: something derived from what was read is current as long
    /// as the generation still equals the one read first.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self, upstream: &str, repository: &str, tag: &str) -> Option<TagRecord> {
        let state = self.state.lock();
        state.map.get(upstream)?.get(repository)?.get(tag).cloned()
    }

    /// Records what a tag points at, replacing any previous record. An
    /// identical record is not logged again.
    pub fn put(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
        record: TagRecord,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        let current = state
            .map
            .get(upstream)
            .and_then(|r| r.get(repository))
            .and_then(|t| t.get(tag));
        if current == Some(&record) {
            return Ok(());
        }
        let op = TagOp::Put {
            upstream: upstream.to_owned(),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            record,
        };
        self.log(&mut state, op)
    }

    /// Forgets a tag. Returns the record it had.
    pub fn remove(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<TagRecord>, StoreError> {
        let mut state = self.state.lock();
        let Some(previous) = state
            .map
            .get(upstream)
            .and_then(|r| r.get(repository))
            .and_then(|t| t.get(tag))
            .cloned()
        else {
            return Ok(None);
        };
        let op = TagOp::Remove {
            upstream: upstream.to_owned(),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        };
        self.log(&mut state, op)?;
        Ok(Some(previous))
    }

    /// Tags known for a repository, sorted by tag name.
    pub fn list(&self, upstream: &str, repository: &str) -> Vec<(String, TagRecord)> {
        let state = self.state.lock();
        state
            .map
            .get(upstream)
            .and_then(|r| r.get(repository))
            .map(|tags| tags.iter().map(|(t, r)| (t.clone(), r.clone())).collect())
            .unwrap_or_default()
    }

    /// Repositories with at least one tag for an upstream, sorted.
    pub fn repositories(&self, upstream: &str) -> Vec<String> {
        let state = self.state.lock();
        state
            .map
            .get(upstream)
            .map(|repos| repos.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every tag of every upstream, sorted by upstream, repository and tag.
    pub fn all(&self) -> Vec<TagEntry> {
        entries(&self.state.lock().map)
    }

    /// The tags a log holds, replayed without opening it for writing (no
    /// compaction, no lock): for listings of a data dir another process may
    /// be serving. A missing log is no tags. Blocking.
    pub fn read(path: &Path) -> Result<Vec<TagEntry>, StoreError> {
        let loaded = jsonl::load::<TagOp>(path)?;
        let mut map: BTreeMap<String, Repos> = BTreeMap::new();
        for op in loaded.records {
            apply(&mut map, op);
        }
        Ok(entries(&map))
    }

    /// Number of tags across all upstreams.
    pub fn len(&self) -> usize {
        self.state.lock().live
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rewrites the log with only live records. Done automatically; public
    /// for an admin endpoint or shutdown.
    pub fn compact(&self) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        self.compact_locked(&mut state)
    }

    fn log(&self, state: &mut State, op: TagOp) -> Result<(), StoreError> {
        if state.needs_rewrite {
            self.compact_locked(state)?;
        }
        if let Err(e) = jsonl::append(&mut state.log, &self.path, &op, false) {
            state.needs_rewrite = true;
            return Err(e);
        }
        apply(&mut state.map, op);
        self.generation.fetch_add(1, Ordering::AcqRel);
        state.live = count(&state.map);
        state.lines += 1;
        if state.lines > 2 * state.live + COMPACT_SLACK {
            self.compact_locked(state)?;
        }
        Ok(())
    }

    fn compact_locked(&self, state: &mut State) -> Result<(), StoreError> {
        rewrite(&self.path, &state.map)?;
        // The old descriptor points at the replaced inode.
        state.log = jsonl::open_append(&self.path)?;
        state.lines = state.live;
        state.needs_rewrite = false;
        Ok(())
    }
}

fn apply(map: &mut BTreeMap<String, Repos>, op: TagOp) {
    match op {
        TagOp::Put {
            upstream,
            repository,
            tag,
            record,
        } => {
            map.entry(upstream)
                .or_default()
                .entry(repository)
                .or_default()
                .insert(tag, record);
        }
        TagOp::Remove {
            upstream,
            repository,
            tag,
        } => {
            let Some(repos) = map.get_mut(&upstream) else {
                return;
            };
            if let Some(tags) = repos.get_mut(&repository) {
                tags.remove(&tag);
                if tags.is_empty() {
                    repos.remove(&repository);
                }
            }
            if repos.is_empty() {
                map.remove(&upstream);
            }
        }
    }
}

fn entries(map: &BTreeMap<String, Repos>) -> Vec<TagEntry> {
    map.iter()
        .flat_map(|(upstream, repos)| {
            repos.iter().flat_map(move |(repository, tags)| {
                tags.iter().map(move |(tag, record)| TagEntry {
                    upstream: upstream.clone(),
                    repository: repository.clone(),
                    tag: tag.clone(),
                    record: record.clone(),
                })
            })
        })
        .collect()
}

fn count(map: &BTreeMap<String, Repos>) -> usize {
    map.values().flat_map(|r| r.values()).map(|t| t.len()).sum()
}

fn rewrite(path: &Path, map: &BTreeMap<String, Repos>) -> Result<(), StoreError> {
    let ops: Vec<TagOp> = map
        .iter()
        .flat_map(|(upstream, repos)| {
            repos.iter().flat_map(move |(repository, tags)| {
                tags.iter().map(move |(tag, record)| TagOp::Put {
                    upstream: upstream.clone(),
                    repository: repository.clone(),
                    tag: tag.clone(),
                    record: record.clone(),
                })
            })
        })
        .collect();
    jsonl::rewrite(path, &ops)
}

impl fmt::Debug for TagIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagIndex")
            .field("path", &self.path)
            .field("tags", &self.len())
            .finish()
    }
}

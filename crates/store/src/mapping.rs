//! Digest mappings of generated manifests, persisted as an append-only log.
//!
//! When the server generates a manifest a client can read from one it can't
//! (Schema 2 or OCI → Schema 1, OCI → its Docker twin, Schema 1 → Schema 2),
//! the digest it hands out must stay resolvable: a later pull *by that
//! digest* has to find the source manifest again. Each mapping is one JSON
//! line in `<root>/v1/schema1-map.jsonl` (the name is historical: Schema 1
//! renderings came first, and their lines, without `direction`, still load),
//! deduplicated on (upstream, repository, tag, digest): the first sighting is
//! kept.
//!
//! Durability: each new record is appended and `fdatasync`ed before `append`
//! returns (they are rare, and losing one breaks a digest a client already
//! holds). A torn last line is ignored at load and the file is rewritten
//! before the next append.
//!
//! Concurrency: one mutex; `append` does a blocking write + fdatasync while
//! holding it (short, rare). Lookups are in memory.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::PathBuf;

use parking_lot::Mutex;
use regcache_formats::Digest;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::jsonl;

/// Which way a generated manifest was bridged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// A Docker Schema 2 or OCI image (or a list's linux/amd64 entry)
    /// rendered as signed Schema 1 for an old client.
    #[default]
    ToSchema1,
    /// An OCI image manifest or index as its Docker Schema 2 twin (manifest
    /// list for an index), for a client without the OCI types.
    OciToDocker,
    /// A Schema 1 image upgraded to Docker Schema 2, for a client that does
    /// not name Schema 1.
    Schema1ToSchema2,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToSchema1 => "to-schema1",
            Direction::OciToDocker => "oci-to-docker",
            Direction::Schema1ToSchema2 => "schema1-to-schema2",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A generated manifest's digest and the manifest it was generated from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingRecord {
    pub upstream: String,
    pub repository: String,
    /// The tag the manifest was generated for (Schema 1 manifests embed it,
    /// so the same source yields a different Schema 1 digest per tag; the
    /// other directions do not depend on it).
    pub tag: String,
    /// Absent in lines written before there was more than one direction.
    #[serde(default)]
    pub direction: Direction,
    /// Digest of the generated manifest.
    #[serde(alias = "schema1_digest")]
    pub digest: Digest,
    /// Media type of the generated manifest (empty in old lines: Schema 1).
    #[serde(default)]
    pub media_type: String,
    /// Digest of the manifest it was generated from.
    pub source_digest: Digest,
    pub source_media_type: String,
    pub first_seen_unix: u64,
}

type Key = (String, String, String, Digest);

fn key(r: &MappingRecord) -> Key {
    (
        r.upstream.clone(),
        r.repository.clone(),
        r.tag.clone(),
        r.digest.clone(),
    )
}

struct State {
    records: Vec<MappingRecord>,
    keys: HashSet<Key>,
    /// generated digest → positions in `records`.
    by_digest: HashMap<Digest, Vec<usize>>,
    log: File,
    needs_rewrite: bool,
}

/// The persisted mapping log. See the module docs.
pub struct MappingLog {
    path: PathBuf,
    state: Mutex<State>,
}

impl MappingLog {
    /// Reads the records of a log without changing the file (a torn tail is
    /// skipped, duplicates dropped), so another process (the CLI's export) can
    /// read it while the server appends. Blocking.
    pub fn read(path: impl AsRef<std::path::Path>) -> Result<Vec<MappingRecord>, StoreError> {
        let loaded = jsonl::load::<MappingRecord>(path.as_ref())?;
        let mut keys = HashSet::with_capacity(loaded.records.len());
        Ok(loaded
            .records
            .into_iter()
            .filter(|r| keys.insert(key(r)))
            .collect())
    }

    /// Where a store rooted at `root` keeps its mapping log.
    pub fn path_in(root: impl AsRef<std::path::Path>) -> PathBuf {
        root.as_ref()
            .join(crate::disk::LAYOUT_VERSION)
            .join("schema1-map.jsonl")
    }

    /// Loads the log, dropping duplicates and a torn tail. Blocking.
    pub fn open(path: impl Into<PathBuf>) -> Result<MappingLog, StoreError> {
        let path = path.into();
        let loaded = jsonl::load::<MappingRecord>(&path)?;
        let total = loaded.records.len();
        let mut state_records = Vec::with_capacity(total);
        let mut keys = HashSet::with_capacity(total);
        let mut by_digest: HashMap<Digest, Vec<usize>> = HashMap::new();
        for record in loaded.records {
            if keys.insert(key(&record)) {
                by_digest
                    .entry(record.digest.clone())
                    .or_default()
                    .push(state_records.len());
                state_records.push(record);
            }
        }
        if loaded.damaged || state_records.len() != total {
            jsonl::rewrite_at_open(&path, &state_records)?;
        }
        let log = jsonl::open_append_or_memory(&path)?;
        Ok(MappingLog {
            path,
            state: Mutex::new(State {
                records: state_records,
                keys,
                by_digest,
                log,
                needs_rewrite: false,
            }),
        })
    }

    /// Records a mapping unless one with the same (upstream, repository,
    /// tag, digest) exists. Returns whether it was new. Durable when
    /// it returns `Ok(true)`.
    pub fn append(&self, record: MappingRecord) -> Result<bool, StoreError> {
        let mut state = self.state.lock();
        let k = key(&record);
        if state.keys.contains(&k) {
            return Ok(false);
        }
        if state.needs_rewrite {
            jsonl::rewrite(&self.path, &state.records)?;
            state.log = jsonl::open_append(&self.path)?;
            state.needs_rewrite = false;
        }
        if let Err(e) = jsonl::append(&mut state.log, &self.path, &record, true) {
            state.needs_rewrite = true;
            return Err(e);
        }
        let position = state.records.len();
        state
            .by_digest
            .entry(record.digest.clone())
            .or_default()
            .push(position);
        state.keys.insert(k);
        state.records.push(record);
        Ok(true)
    }

    /// Every mapping, in first-seen order.
    pub fn list(&self) -> Vec<MappingRecord> {
        self.state.lock().records.clone()
    }

    /// The mapping that produced `digest` in a repository (first seen, if
    /// several tags produced the same bytes).
    pub fn find(&self, upstream: &str, repository: &str, digest: &Digest) -> Option<MappingRecord> {
        let state = self.state.lock();
        state
            .by_digest
            .get(digest)?
            .iter()
            .map(|&i| &state.records[i])
            .find(|r| r.upstream == upstream && r.repository == repository)
            .cloned()
    }

    /// [`find`](Self::find), for one direction only.
    pub fn find_made(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
        direction: Direction,
    ) -> Option<MappingRecord> {
        let state = self.state.lock();
        state
            .by_digest
            .get(digest)?
            .iter()
            .map(|&i| &state.records[i])
            .find(|r| {
                r.upstream == upstream && r.repository == repository && r.direction == direction
            })
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.state.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for MappingLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappingLog")
            .field("path", &self.path)
            .field("records", &self.len())
            .finish()
    }
}

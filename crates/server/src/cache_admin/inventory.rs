//! What the cache holds, as `regcache ls` shows it, and what a purge would
//! remove.
//!
//! Built from three things the store keeps anyway: the tag index
//! (upstream, repository, tag → manifest digest), the disk tier's entries
//! (digest, size, last access) and the cached manifests themselves, whose
//! references (config, layers, an index's children) say which blobs each
//! tag needs. Nothing here does I/O: the caller passes the tags, the
//! entries and a reader of cached manifest bytes, so the same code serves
//! a running instance (its live index) and a data dir read offline.
//!
//! Repositories are known through tags: content pulled only by digest is
//! listed among the blobs (unreferenced) but belongs to no repository.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use regcache_formats::Digest;
use regcache_formats::manifest::{Manifest, ManifestKind};
use regcache_store::{EntryInfo, TagEntry};
use serde::{Deserialize, Serialize};

use super::imageref::Resolved;

/// Index children are followed this deep (an index of indexes is legal,
/// a loop is not, but a tampered cache must not hang a listing).
const MAX_DEPTH: usize = 4;

/// One cached tag and the bytes it holds on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRow {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    /// Bytes on disk of the manifest, its children and every blob they
    /// reference that is cached (shared blobs count for each image).
    pub size: u64,
    /// Referenced manifests and blobs that are cached, and those that are
    /// not (evicted, or never pulled: a platform nobody asked for).
    pub cached: usize,
    pub missing: usize,
    /// Last pull: latest access of its cached manifests, Unix seconds.
    pub last_use_unix: Option<u64>,
}

/// One disk entry and the tags that reference it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRow {
    pub digest: Digest,
    pub size: u64,
    /// `manifest` or `blob`.
    pub kind: String,
    pub last_use_unix: u64,
    /// `upstream/repository:tag` of every tag that references it.
    pub used_by: Vec<String>,
}

/// Everything `regcache ls` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub images: Vec<ImageRow>,
    pub blobs: Vec<BlobRow>,
    /// All disk entries and their bytes.
    pub entries: u64,
    pub bytes: u64,
}

/// The cache's content and the reference graph between its entries.
#[derive(Debug)]
pub struct Graph {
    tags: Vec<TagEntry>,
    entries: HashMap<Digest, EntryInfo>,
    /// Manifest digest → what it references directly (children first).
    refs: HashMap<Digest, Vec<Digest>>,
}

impl Graph {
    /// Reads every manifest the tags reach through `read` (the cached bytes
    /// of a digest, `None` when absent or unreadable).
    pub fn build(
        tags: Vec<TagEntry>,
        entries: Vec<EntryInfo>,
        read: &mut dyn FnMut(&Digest) -> Option<Vec<u8>>,
    ) -> Graph {
        let entries: HashMap<Digest, EntryInfo> =
            entries.into_iter().map(|e| (e.digest.clone(), e)).collect();
        let mut graph = Graph {
            tags,
            entries,
            refs: HashMap::new(),
        };
        let roots: Vec<(Digest, String)> = graph
            .tags
            .iter()
            .map(|t| (t.record.digest.clone(), t.record.media_type.clone()))
            .collect();
        for (digest, media_type) in roots {
            graph.load(&digest, Some(&media_type), read, 0);
        }
        graph
    }

    /// Also loads the manifests `digest` reaches (a purge of `repo@digest`
    /// that no tag names).
    pub fn load_root(&mut self, digest: &Digest, read: &mut dyn FnMut(&Digest) -> Option<Vec<u8>>) {
        self.load(digest, None, read, 0);
    }

    fn load(
        &mut self,
        digest: &Digest,
        hint: Option<&str>,
        read: &mut dyn FnMut(&Digest) -> Option<Vec<u8>>,
        depth: usize,
    ) {
        if depth > MAX_DEPTH || self.refs.contains_key(digest) || !self.entries.contains_key(digest)
        {
            return;
        }
        let Some(m) = read(digest).and_then(|raw| Manifest::parse(raw, hint).ok()) else {
            return;
        };
        let (children, blobs): (Vec<Digest>, Vec<Digest>) = match &m.kind {
            ManifestKind::Image(i) => (
                Vec::new(),
                std::iter::once(i.config.digest.clone())
                    .chain(i.layers.iter().map(|l| l.digest.clone()))
                    .collect(),
            ),
            ManifestKind::Index(i) => (
                i.manifests.iter().map(|d| d.digest.clone()).collect(),
                Vec::new(),
            ),
            ManifestKind::Schema1(s) => (Vec::new(), s.fs_layers.clone()),
        };
        let mut all = children.clone();
        all.extend(blobs);
        self.refs.insert(digest.clone(), all);
        for child in children {
            self.load(&child, None, read, depth + 1);
        }
    }

    /// `root` and everything it references, cached or not, without repeats.
    pub fn closure(&self, root: &Digest) -> Vec<Digest> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut stack = vec![(root.clone(), 0)];
        while let Some((d, depth)) = stack.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            if depth <= MAX_DEPTH
                && let Some(refs) = self.refs.get(&d)
            {
                stack.extend(refs.iter().rev().map(|r| (r.clone(), depth + 1)));
            }
            out.push(d);
        }
        out
    }

    fn is_manifest(&self, digest: &Digest) -> bool {
        self.refs.contains_key(digest)
    }

    /// When the image `root` names was last pulled: the latest access of
    /// its cached manifests (the top one and an index's children), Unix
    /// nanoseconds. Every pull reads a manifest; blobs are left out because
    /// a blob shared with another image is touched by that image's pulls.
    fn last_use_nanos(&self, root: &Digest) -> Option<u64> {
        self.closure(root)
            .iter()
            .filter(|d| self.is_manifest(d))
            .filter_map(|d| self.entries.get(d))
            .map(|e| e.last_access_unix_nanos)
            .max()
    }

    pub fn tags(&self) -> &[TagEntry] {
        &self.tags
    }

    /// The listing: one row per tag, one per disk entry.
    pub fn inventory(&self) -> Inventory {
        let mut used_by: HashMap<&Digest, Vec<String>> = HashMap::new();
        let mut images = Vec::new();
        for t in &self.tags {
            let closure = self.closure(&t.record.digest);
            let label = format!("{}/{}:{}", t.upstream, t.repository, t.tag);
            let mut row = ImageRow {
                upstream: t.upstream.clone(),
                repository: t.repository.clone(),
                tag: t.tag.clone(),
                digest: t.record.digest.clone(),
                media_type: t.record.media_type.clone(),
                size: 0,
                cached: 0,
                missing: 0,
                last_use_unix: self.last_use_nanos(&t.record.digest).map(secs),
            };
            for d in &closure {
                match self.entries.get_key_value(d) {
                    Some((key, e)) => {
                        row.size += e.size;
                        row.cached += 1;
                        used_by.entry(key).or_default().push(label.clone());
                    }
                    None => row.missing += 1,
                }
            }
            images.push(row);
        }
        let mut blobs: Vec<BlobRow> = self
            .entries
            .values()
            .map(|e| BlobRow {
                digest: e.digest.clone(),
                size: e.size,
                kind: if self.is_manifest(&e.digest) {
                    "manifest".into()
                } else {
                    "blob".into()
                },
                last_use_unix: secs(e.last_access_unix_nanos),
                used_by: used_by.remove(&e.digest).unwrap_or_default(),
            })
            .collect();
        blobs.sort_by(|a, b| (&a.used_by, &a.digest).cmp(&(&b.used_by, &b.digest)));
        Inventory {
            images,
            entries: blobs.len() as u64,
            bytes: blobs.iter().map(|b| b.size).sum(),
            blobs,
        }
    }

    /// What purging `targets` (and, with `older_than`, everything not used
    /// for that long before `now_unix_nanos`) removes: the selected tags,
    /// and every cached manifest and blob they reach that no remaining tag
    /// reaches. A target that matches nothing cached is an error naming it.
    pub fn plan(
        &mut self,
        targets: &[(String, Resolved)],
        older_than: Option<Duration>,
        now_unix_nanos: u64,
        read: &mut dyn FnMut(&Digest) -> Option<Vec<u8>>,
    ) -> Result<PurgePlan, PlanError> {
        let mut selected: BTreeSet<usize> = BTreeSet::new();
        let mut roots: Vec<Digest> = Vec::new();
        for (typed, r) in targets {
            let in_repo =
                |t: &TagEntry| t.upstream == r.upstream && t.repository == r.repository.as_str();
            let before = selected.len();
            let mut matched = false;
            for (i, t) in self.tags.iter().enumerate() {
                if !in_repo(t) {
                    continue;
                }
                let hit = match (&r.digest, &r.tag) {
                    (Some(d), _) => t.record.digest == *d,
                    (None, Some(tag)) => t.tag == tag.as_str(),
                    (None, None) => true,
                };
                if hit {
                    selected.insert(i);
                    matched = true;
                }
            }
            if let Some(d) = &r.digest
                && self.entries.contains_key(d)
            {
                self.load_root(d, read);
                roots.push(d.clone());
                matched = true;
            }
            if !matched && selected.len() == before {
                return Err(PlanError::Unknown {
                    image: typed.clone(),
                    resolved: r.to_string(),
                    repository_known: self.tags.iter().any(in_repo),
                });
            }
        }
        let cutoff = older_than.map(|d| {
            now_unix_nanos.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        });
        if let Some(cutoff) = cutoff {
            for (i, t) in self.tags.iter().enumerate() {
                if self
                    .last_use_nanos(&t.record.digest)
                    .is_none_or(|used| used < cutoff)
                {
                    selected.insert(i);
                }
            }
        }
        let mut keep: BTreeSet<Digest> = BTreeSet::new();
        let mut candidates: BTreeSet<Digest> = BTreeSet::new();
        for (i, t) in self.tags.iter().enumerate() {
            let set = if selected.contains(&i) {
                &mut candidates
            } else {
                &mut keep
            };
            set.extend(self.closure(&t.record.digest));
        }
        for d in &roots {
            candidates.extend(self.closure(d));
        }
        if let Some(cutoff) = cutoff {
            // Entries no tag reaches (pulled by digest, generated) that
            // nobody used since the cutoff.
            let reached: BTreeSet<Digest> = self
                .tags
                .iter()
                .flat_map(|t| self.closure(&t.record.digest))
                .collect();
            candidates.extend(
                self.entries
                    .values()
                    .filter(|e| e.last_access_unix_nanos < cutoff && !reached.contains(&e.digest))
                    .map(|e| e.digest.clone()),
            );
        }
        let mut plan = PurgePlan::default();
        for i in &selected {
            let t = &self.tags[*i];
            plan.tags.push(PurgedTag {
                upstream: t.upstream.clone(),
                repository: t.repository.clone(),
                tag: t.tag.clone(),
                digest: t.record.digest.clone(),
            });
        }
        for d in candidates {
            let Some(e) = self.entries.get(&d) else {
                continue;
            };
            let row = PurgedEntry {
                digest: d.clone(),
                size: e.size,
                kind: if self.is_manifest(&d) {
                    "manifest".into()
                } else {
                    "blob".into()
                },
            };
            if keep.contains(&d) {
                plan.kept_shared.push(row);
            } else {
                plan.bytes += e.size;
                plan.remove.push(row);
            }
        }
        // Manifests before the blobs they reference: a pull that starts
        // mid-purge finds no manifest whose blobs are already gone.
        plan.remove.sort_by_key(|e| e.kind != "manifest");
        Ok(plan)
    }
}

fn secs(nanos: u64) -> u64 {
    nanos / 1_000_000_000
}

/// A tag a purge removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgedTag {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    pub digest: Digest,
}

/// A disk entry a purge removes (or keeps because another tag needs it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgedEntry {
    pub digest: Digest,
    pub size: u64,
    pub kind: String,
}

/// What a purge removes; after it ran, what it did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgePlan {
    pub dry_run: bool,
    pub tags: Vec<PurgedTag>,
    pub remove: Vec<PurgedEntry>,
    /// Reached by a purged tag and by one that stays: kept.
    pub kept_shared: Vec<PurgedEntry>,
    /// Bytes of `remove`.
    pub bytes: u64,
    /// Removals that failed (`digest: error`); empty on success.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// A purge target that matches nothing cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    Unknown {
        image: String,
        resolved: String,
        repository_known: bool,
    },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::Unknown {
                image,
                resolved,
                repository_known: true,
            } => write!(
                f,
                "{image:?} ({resolved}): no such tag or digest is cached in that repository"
            ),
            PlanError::Unknown {
                image, resolved, ..
            } => write!(
                f,
                "{image:?} ({resolved}): nothing of that repository is cached"
            ),
        }
    }
}

/// Sorted tags per repository, for the human table's grouping.
pub fn by_repository(images: &[ImageRow]) -> BTreeMap<(String, String), Vec<&ImageRow>> {
    let mut out: BTreeMap<(String, String), Vec<&ImageRow>> = BTreeMap::new();
    for row in images {
        out.entry((row.upstream.clone(), row.repository.clone()))
            .or_default()
            .push(row);
    }
    out
}

#[cfg(test)]
#[path = "inventory_tests.rs"]
mod tests;

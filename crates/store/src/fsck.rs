//! `fsck`: verify every disk entry against its digest, offline.
//!
//! The disk tier keeps no persisted index: at start-up it lists
//! `v1/blobs/<alg>/<hex[..2]>/<hex>` and every well-named regular file is an
//! entry (blobs and manifests alike). So "the index" on disk *is* that
//! listing, and the check is:
//!
//! * every entry is read in chunks and hashed ([`ContentHasher`], the store's
//!   own streaming hasher; nothing is buffered whole) and compared with the
//!   digest its name claims: a flipped byte or a truncated or extended file
//!   is [`ProblemKind::DigestMismatch`]; a read error is
//!   [`ProblemKind::Unreadable`];
//! * everything else under `blobs/` (wrong name, wrong prefix folder, not a
//!   regular file) is [`ProblemKind::Stray`]: the index never sees it, so it
//!   is never served nor evicted, only occupies the disk;
//! * every file under `tmp/` and every `*.tmp` next to the logs is
//!   [`ProblemKind::OrphanTemp`]: a write that never committed.
//!
//! An entry can't be "indexed without a file" (the index is the listing);
//! tags whose manifest is not cached are normal (evicted) and refetched.
//!
//! The check takes the root's lock (`v1/lock`, the one [`crate::DiskTier`]
//! takes), so it never races a running regcache: [`FsckError::Locked`] when
//! one holds it. With `repair`, every problem found is removed.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use regcache_formats::{Algorithm, Digest};

use crate::disk::LAYOUT_VERSION;
use crate::hasher::ContentHasher;

const ALGORITHMS: [Algorithm; 3] = [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512];
/// Read size while hashing: bounds memory whatever the entry size.
const CHUNK: usize = 1 << 20;

/// What is wrong with one path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The content does not hash to the digest in its name (a flipped byte,
    /// a truncated or extended file). `actual` is the full `alg:hex` of what
    /// is on disk, `len` its length.
    DigestMismatch { actual: String, len: u64 },
    /// Reading the entry failed.
    Unreadable { error: String },
    /// A write that never committed (`tmp/*`, `*.tmp`).
    OrphanTemp,
    /// Something under `blobs/` that is not an entry the index would load.
    Stray,
}

impl ProblemKind {
    /// A short stable name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            ProblemKind::DigestMismatch { .. } => "digest-mismatch",
            ProblemKind::Unreadable { .. } => "unreadable",
            ProblemKind::OrphanTemp => "orphan-temp",
            ProblemKind::Stray => "stray",
        }
    }
}

/// One bad path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub path: PathBuf,
    /// The digest the entry claims (entries only).
    pub digest: Option<Digest>,
    /// Whether it was removed (`repair`), and if removal failed, why not.
    pub removed: Result<bool, String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.removed {
            Ok(true) => "removed",
            Ok(false) => "found",
            Err(_) => "NOT removed",
        };
        write!(f, "{state} {} {}", self.kind.name(), self.path.display())?;
        if let Some(digest) = &self.digest {
            write!(f, " ({digest}")?;
            match &self.kind {
                ProblemKind::DigestMismatch { actual, len } => {
                    write!(f, ": {len} bytes hashing to {actual}")?
                }
                ProblemKind::Unreadable { error } => write!(f, ": {error}")?,
                _ => {}
            }
            write!(f, ")")?;
        }
        if let Err(e) = &self.removed {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Entries hashed.
    pub entries: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Entries that verified.
    pub good: u64,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Problems still on disk (not repaired, or removal failed).
    pub fn left(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.removed != Ok(true))
            .count()
    }
}

/// Why the check could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsckError {
    /// No `v1/` under the root: nothing regcache wrote is there.
    #[error("no regcache cache at {path} (expected {path}/{LAYOUT_VERSION})")]
    NoCache { path: PathBuf },
    /// A running regcache holds the root.
    #[error(
        "{path} is in use by a running regcache (it holds {path}/{LAYOUT_VERSION}/lock); stop it first"
    )]
    Locked { path: PathBuf },
    /// A directory could not be listed or the lock not taken.
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FsckError {
    let path = path.to_path_buf();
    move |source| FsckError::Io { op, path, source }
}

/// Checks the cache under `root` (the store root, holding `v1/`), calling
/// `on_problem` as each problem is found (and, with `repair`, removed).
/// Blocking; holds the root lock throughout.
pub fn fsck_blocking(
    root: &Path,
    repair: bool,
    mut on_problem: impl FnMut(&Problem),
) -> Result<FsckReport, FsckError> {
    let base = root.join(LAYOUT_VERSION);
    if !base.is_dir() {
        return Err(FsckError::NoCache {
            path: root.to_path_buf(),
        });
    }
    let _lock = lock_root(root, &base)?;
    let mut report = FsckReport::default();
    let mut found = |report: &mut FsckReport, kind, path: PathBuf, digest| {
        let removed = if repair { remove(&path) } else { Ok(false) };
        let problem = Problem {
            kind,
            path,
            digest,
            removed,
        };
        on_problem(&problem);
        report.problems.push(problem);
    };

    // Writes that never committed.
    let tmp = base.join("tmp");
    for path in list(&tmp)? {
        found(&mut report, ProblemKind::OrphanTemp, path, None);
    }
    for path in list(&base)? {
        if path.extension().is_some_and(|e| e == "tmp") {
            found(&mut report, ProblemKind::OrphanTemp, path, None);
        }
    }

    // Entries, and whatever else is under blobs/.
    let blobs = base.join("blobs");
    for alg_dir in list(&blobs)? {
        let name = file_name(&alg_dir);
        let Some(algorithm) = ALGORITHMS.into_iter().find(|a| a.name() == name) else {
            found(&mut report, ProblemKind::Stray, alg_dir, None);
            continue;
        };
        if !is_dir(&alg_dir) {
            found(&mut report, ProblemKind::Stray, alg_dir, None);
            continue;
        }
        for prefix_dir in list(&alg_dir)? {
            if !is_dir(&prefix_dir) {
                found(&mut report, ProblemKind::Stray, prefix_dir, None);
                continue;
            }
            let prefix = file_name(&prefix_dir);
            for path in list(&prefix_dir)? {
                let hex = file_name(&path);
                let digest = Digest::parse(&format!("{}:{hex}", algorithm.name()))
                    .ok()
                    .filter(|_| prefix.len() == 2 && hex.starts_with(&prefix));
                let regular = fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
                let Some(digest) = digest.filter(|_| regular) else {
                    found(&mut report, ProblemKind::Stray, path, None);
                    continue;
                };
                report.entries += 1;
                match verify_file(&path, &digest) {
                    Ok(len) => {
                        report.bytes += len;
                        report.good += 1;
                    }
                    Err(Bad::Mismatch { actual, len }) => {
                        report.bytes += len;
                        let kind = ProblemKind::DigestMismatch { actual, len };
                        found(&mut report, kind, path, Some(digest));
                    }
                    Err(Bad::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                        report.entries -= 1;
                    }
                    Err(Bad::Io(e)) => {
                        let kind = ProblemKind::Unreadable {
                            error: e.to_string(),
                        };
                        found(&mut report, kind, path, Some(digest));
                    }
                }
            }
        }
    }
    Ok(report)
}

enum Bad {
    Mismatch { actual: String, len: u64 },
    Io(io::Error),
}

/// Hashes the file in [`CHUNK`]s; its length when it matches `digest`.
fn verify_file(path: &Path, digest: &Digest) -> Result<u64, Bad> {
    let mut file = File::open(path).map_err(Bad::Io)?;
    let mut hasher = ContentHasher::new(digest.algorithm());
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Bad::Io(e)),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    hasher
        .verify(digest)
        .map(|()| len)
        .map_err(|actual| Bad::Mismatch { actual, len })
}

/// The same advisory lock [`crate::DiskTier::open`] takes.
fn lock_root(root: &Path, base: &Path) -> Result<File, FsckError> {
    let path = base.join("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(FsckError::Locked {
            path: root.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_err("lock", &path)(e)),
    }
}

/// The paths in `dir`, sorted (stable reports); none if it doesn't exist.
fn list(dir: &Path) -> Result<Vec<PathBuf>, FsckError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut paths = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("list", dir))?;
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn remove(path: &Path) -> Result<bool, String> {
    let result = if is_dir(path) {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
#[path = "fsck_tests.rs"]
mod tests;

//! The index snapshot: a million-entry start-up without a million `statx`.
//!
//! At a clean shutdown the disk tier writes its sha256 entries (digest,
//! size, last access) to `v1/index.snapshot`, oldest access first, with the
//! mtime of every prefix directory (`blobs/sha256/xx`) as it was when the
//! entries were read. The next open takes the snapshot and deletes it (so a
//! crash later never finds a stale one), lists the prefix directories, and
//! trusts the snapshot's entries only for directories whose mtime is the
//! one recorded; every other directory is scanned file by file, as a start
//! without a snapshot scans them all.
//!
//! Why a directory's mtime is enough: an entry is published by a rename
//! into its prefix directory and removed by an unlink there, and both
//! change the directory's mtime, whoever does them. A file's content never
//! changes in place (a digest names it). Entries and directory stamps are
//! read under the index lock, which the disk tier also holds across its
//! renames and unlinks, so the two agree. A directory changed within
//! [`SETTLE`] before the snapshot is not trusted (a later change in the
//! same tick of the file system's coarse clock could leave its mtime as
//! recorded).
//!
//! The last access restored is the in-memory one, so the LRU order survives
//! a clean restart exactly (a scan can only restore the persisted mtimes).
//! Other algorithms' entries (rare) are never in the snapshot: their
//! directories are always scanned. The file ends with a CRC-32 of
//! everything before it; a snapshot that is damaged, truncated, unsorted or
//! of another version is ignored (with a warning) and the directories are
//! scanned.

use std::collections::HashSet;
use std::io::{BufReader, BufWriter, Read};

use super::index::Key;
use super::scan::Found;
use super::*;

/// The snapshot's name in `<root>/v1`.
pub(super) const FILE: &str = "index.snapshot";
const MAGIC: &[u8; 8] = b"RCIDX\x00\x00\x01";
/// How long a prefix directory must have been left alone to be trusted.
const SETTLE: Duration = Duration::from_secs(1);
/// The bytes of one entry: the digest, its size, its last access.
const ENTRY_LEN: usize = 32 + 8 + 8;

/// A directory's mtime as `statx` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    sec: i64,
    nsec: u32,
}

impl Stamp {
    fn nanos(self) -> u64 {
        u64::try_from(self.sec).map_or(0, |s| {
            s.saturating_mul(1_000_000_000)
                .saturating_add(u64::from(self.nsec))
        })
    }
}

/// The mtime of `dir`, `None` if it can't be read.
pub(super) fn stamp_of(dir: &Path) -> Option<Stamp> {
    use rustix::fs::{AtFlags, CWD, StatxFlags};
    let meta = rustix::fs::statx(CWD, dir, AtFlags::empty(), StatxFlags::MTIME).ok()?;
    Some(Stamp {
        sec: meta.stx_mtime.tv_sec,
        nsec: meta.stx_mtime.tv_nsec,
    })
}

/// A sha256 prefix directory's name (`00`..`ff`) as its byte.
pub(super) fn prefix_byte(name: &str) -> Option<u8> {
    let b = name.as_bytes();
    if b.len() != 2 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u8::from_str_radix(name, 16).ok()
}

/// What an open takes from a snapshot.
pub(super) struct Snapshot {
    /// The prefix directories whose entries it holds: settled when it was
    /// written, and with the same mtime now.
    pub(super) trusted: HashSet<u8>,
    /// Their entries, oldest access first (ticks strictly increasing).
    pub(super) entries: Vec<Found>,
}

/// Reads and deletes `<base>/index.snapshot`, trusting it for the prefix
/// directories whose mtime is still the one it recorded (`now`: prefix →
/// the directory's mtime at this open). `None` when there is none or it
/// can't be used (said in a warning).
pub(super) fn take(base: &Path, now: &HashMap<u8, Stamp>) -> Option<Snapshot> {
    let path = base.join(FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the cache index snapshot; scanning the cache instead");
            return None;
        }
    };
    let read = read(file, now);
    // Deleted whatever it held: it describes this moment only. On a
    // read-only data directory it stays, which is right: nothing can change
    // the entries there, and the directory stamps catch anyone who does.
    if let Err(error) = fs::remove_file(&path)
        && !is_storage_full_or_read_only(&error)
    {
        tracing::warn!(path = %path.display(), %error, "cannot delete the cache index snapshot");
    }
    match read {
        Ok(snapshot) => Some(snapshot),
        Err(why) => {
            tracing::warn!(path = %path.display(), why, "ignoring the cache index snapshot; scanning the cache instead");
            None
        }
    }
}

/// CRC-32 over everything read through it.
struct Checked<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Checked<R> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("truncated: {e}"))?;
        self.crc.update(&buf);
        Ok(buf)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

fn read(file: File, now: &HashMap<u8, Stamp>) -> Result<Snapshot, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut r = Checked {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    if &r.take::<8>()? != MAGIC {
        return Err("not a snapshot of this version".into());
    }
    let _written = r.u64()?;
    let ndirs = u32::from_le_bytes(r.take()?);
    if ndirs > 256 {
        return Err(format!("{ndirs} prefix directories"));
    }
    let mut trusted = HashSet::new();
    for _ in 0..ndirs {
        let [prefix, settled] = r.take::<2>()?;
        let sec = i64::from_le_bytes(r.take()?);
        let nsec = u32::from_le_bytes(r.take()?);
        if settled == 1 && now.get(&prefix) == Some(&Stamp { sec, nsec }) {
            trusted.insert(prefix);
        }
    }
    let n = r.u64()?;
    // Reserved for what the file can hold, not for what it claims.
    let fits = len / ENTRY_LEN as u64;
    let mut entries = Vec::with_capacity(usize::try_from(n.min(fits)).unwrap_or(0));
    let mut last: Option<u64> = None;
    for _ in 0..n {
        let raw: [u8; ENTRY_LEN] = r.take()?;
        let (key, rest) = raw.split_at(32);
        let key: [u8; 32] = key.try_into().map_err(|_| "entry")?;
        let size = u64::from_le_bytes(rest[..8].try_into().map_err(|_| "entry")?);
        let tick = u64::from_le_bytes(rest[8..].try_into().map_err(|_| "entry")?);
        if last.is_some_and(|l| tick <= l) {
            return Err("entries out of order".into());
        }
        last = Some(tick);
        if !trusted.contains(&key[0]) {
            continue;
        }
        entries.push(Found {
            key: Key::Sha256(key),
            size,
            mtime: tick,
        });
    }
    let want = r.crc.clone().finalize();
    let mut tail = [0u8; 4];
    r.inner
        .read_exact(&mut tail)
        .map_err(|e| format!("truncated: {e}"))?;
    if u32::from_le_bytes(tail) != want {
        return Err("checksum mismatch".into());
    }
    if r.inner.read(&mut [0u8; 1]).map_err(|e| e.to_string())? != 0 {
        return Err("bytes after the checksum".into());
    }
    Ok(Snapshot { trusted, entries })
}

/// CRC-32 over everything written through it.
struct Summed<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Summed<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// Writes the snapshot of `index` into `base` (through a temp file and a
/// rename). `blobs` is `<base>/blobs`. Called with the index lock held, so
/// that no rename or unlink lands between the stamps and the entries.
/// Returns the entries written.
pub(super) fn write(base: &Path, blobs: &Path, index: &Index) -> io::Result<usize> {
    let now = unix_nanos(SystemTime::now());
    let settle = u64::try_from(SETTLE.as_nanos()).unwrap_or(u64::MAX);
    let mut dirs: Vec<(u8, Stamp, bool)> = Vec::new();
    let sha256 = blobs.join(Algorithm::Sha256.name());
    match fs::read_dir(&sha256) {
        Ok(listing) => {
            for entry in listing {
                let entry = entry?;
                let Some(prefix) = entry.file_name().to_str().and_then(prefix_byte) else {
                    continue;
                };
                if let Some(stamp) = stamp_of(&entry.path()) {
                    // In the future or within SETTLE of now: not trusted.
                    let settled = stamp.nanos().saturating_add(settle) <= now;
                    dirs.push((prefix, stamp, settled));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    dirs.sort_unstable_by_key(|d| d.0);
    let trusted: HashSet<u8> = dirs.iter().filter(|d| d.2).map(|d| d.0).collect();

    let tmp = base.join(format!("{FILE}.tmp"));
    let file = File::create(&tmp)?;
    let mut w = Summed {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    w.put(MAGIC)?;
    w.put(&now.to_le_bytes())?;
    w.put(&(dirs.len() as u32).to_le_bytes())?;
    for (prefix, stamp, settled) in &dirs {
        w.put(&[*prefix, u8::from(*settled)])?;
        w.put(&stamp.sec.to_le_bytes())?;
        w.put(&stamp.nsec.to_le_bytes())?;
    }
    let kept = || {
        index
            .oldest_first()
            .filter_map(|(tick, key, entry)| match key {
                Key::Sha256(raw) if trusted.contains(&raw[0]) => Some((raw, entry.size, tick)),
                _ => None,
            })
    };
    let n = kept().count();
    w.put(&(n as u64).to_le_bytes())?;
    for (raw, size, tick) in kept() {
        w.put(raw)?;
        w.put(&size.to_le_bytes())?;
        w.put(&tick.to_le_bytes())?;
    }
    let crc = w.crc.clone().finalize();
    w.inner.write_all(&crc.to_le_bytes())?;
    w.inner.into_inner().map_err(|e| e.into_error())?;
    fs::rename(&tmp, base.join(FILE))?;
    Ok(n)
}

use std::fs;
use std::io::{Seek, SeekFrom, Write};

use super::*;
use crate::{DiskTier, StoreConfig};

fn digest_of(bytes: &[u8]) -> Digest {
    use sha2::Digest as _;
    Digest::parse(&format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(bytes))
    ))
    .unwrap()
}

/// Bytes that differ from one seed to the next, `len` long.
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// A store root holding `entries` committed through the disk tier itself.
fn root_with(entries: &[Vec<u8>]) -> (tempfile::TempDir, Vec<Digest>) {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskTier::open(&StoreConfig::new(dir.path())).unwrap();
    let digests = entries
        .iter()
        .map(|bytes| {
            let digest = digest_of(bytes);
            disk.put_blocking(&digest, bytes).unwrap();
            digest
        })
        .collect();
    drop(disk);
    (dir, digests)
}

fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join("v1/blobs/sha256").join(&hex[..2]).join(hex)
}

fn flip_byte(path: &Path, at: u64) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&[byte[0] ^ 0x01]).unwrap();
}

fn check(root: &Path, repair: bool) -> FsckReport {
    let mut seen = Vec::new();
    let report = fsck_blocking(root, repair, |p| seen.push(p.clone())).unwrap();
    assert_eq!(
        seen, report.problems,
        "the callback sees every problem once"
    );
    report
}

#[test]
fn a_clean_cache_verifies_every_entry_streaming_past_one_chunk() {
    // 3 MiB + 1: several reads of CHUNK, the last one short.
    let entries = vec![content(1, 3 * CHUNK + 1), content(2, 10), Vec::new()];
    let (dir, _) = root_with(&entries);
    let report = check(dir.path(), true);
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.entries, 3);
    assert_eq!(report.good, 3);
    assert_eq!(report.bytes, (3 * CHUNK + 1 + 10) as u64);
}

#[test]
fn finds_each_kind_of_damage_and_leaves_it_without_repair() {
    let big = content(3, 2 * CHUNK + 17);
    let entries = vec![big.clone(), content(4, 5000), content(5, 700)];
    let (dir, d) = root_with(&entries);
    let root = dir.path();
    // A flipped byte in the second MiB, and a file cut short by a crash.
    flip_byte(&blob_path(root, &d[0]), CHUNK as u64 + 3);
    let truncated = blob_path(root, &d[1]);
    fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(1234)
        .unwrap();
    fs::write(root.join("v1/tmp/7.part"), b"half a fill").unwrap();
    fs::write(root.join("v1/tags.jsonl.tmp"), b"{}\n").unwrap();
    // A file the index would skip: its name is not in its prefix folder.
    let hex = d[2].hex();
    let wrong_prefix = if hex.starts_with("00") { "01" } else { "00" };
    let stray_dir = root.join("v1/blobs/sha256").join(wrong_prefix);
    fs::create_dir_all(&stray_dir).unwrap();
    fs::write(stray_dir.join(hex), b"x").unwrap();
    fs::write(root.join("v1/blobs/sha256/README"), b"x").unwrap();

    let report = check(root, false);
    let mut kinds: Vec<&str> = report.problems.iter().map(|p| p.kind.name()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "digest-mismatch",
            "digest-mismatch",
            "orphan-temp",
            "orphan-temp",
            "stray",
            "stray"
        ],
        "{report:#?}"
    );
    assert_eq!(report.entries, 3);
    assert_eq!(report.good, 1);
    assert_eq!(report.left(), 6);
    let cut = report
        .problems
        .iter()
        .find(|p| p.digest.as_ref() == Some(&d[1]))
        .unwrap();
    assert!(
        matches!(&cut.kind, ProblemKind::DigestMismatch { len: 1234, actual } if actual.starts_with("sha256:")),
        "{cut:#?}"
    );
    assert!(
        cut.to_string().starts_with("found digest-mismatch "),
        "{cut}"
    );
    assert!(report.problems.iter().all(|p| p.path.exists()));
    assert_eq!(
        check(root, false),
        report,
        "a check without repair changes nothing"
    );
}

#[test]
fn repair_removes_the_bad_and_keeps_the_good() {
    let entries = vec![content(6, 4096), content(7, 4096), content(8, 4096)];
    let (dir, d) = root_with(&entries);
    let root = dir.path();
    flip_byte(&blob_path(root, &d[0]), 0);
    fs::OpenOptions::new()
        .write(true)
        .open(blob_path(root, &d[1]))
        .unwrap()
        .set_len(0)
        .unwrap();
    fs::write(root.join("v1/tmp/0.part"), b"x").unwrap();

    let report = check(root, true);
    assert_eq!(report.problems.len(), 3, "{report:#?}");
    assert_eq!(report.left(), 0);
    assert!(report.problems.iter().all(|p| !p.path.exists()));
    assert!(check(root, true).is_clean(), "a second run is clean");

    // The store opens with only the good entry left, and it reads back.
    let disk = DiskTier::open(&StoreConfig::new(root)).unwrap();
    assert!(!disk.contains(&d[0]) && !disk.contains(&d[1]));
    let (mut file, len) = disk.open_blocking(&d[2]).unwrap().unwrap();
    let mut back = Vec::new();
    file.read_to_end(&mut back).unwrap();
    assert_eq!((len, back), (4096, entries[2].clone()));
}

#[test]
fn refuses_a_root_a_running_store_holds_and_a_root_without_a_cache() {
    let (dir, _) = root_with(&[content(9, 10)]);
    let disk = DiskTier::open(&StoreConfig::new(dir.path())).unwrap();
    let err = fsck_blocking(dir.path(), true, |_| {}).unwrap_err();
    assert!(matches!(err, FsckError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("running regcache"), "{err}");
    drop(disk);
    assert!(check(dir.path(), true).is_clean());

    let empty = tempfile::tempdir().unwrap();
    let err = fsck_blocking(&empty.path().join("nope"), true, |_| {}).unwrap_err();
    assert!(matches!(err, FsckError::NoCache { .. }), "{err:?}");
    assert!(!empty.path().join("nope").exists(), "fsck creates nothing");
}

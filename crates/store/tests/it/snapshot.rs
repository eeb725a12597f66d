//! The index snapshot a clean shutdown leaves (`DiskTier::save_index`) and
//! the next open starts from.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use regcache_formats::Digest;
use regcache_store::{DiskTier, Store, StoreConfig};

use crate::common::*;

const SNAPSHOT: &str = "v1/index.snapshot";

/// Accesses are never persisted to the files' mtimes: only the snapshot
/// can bring the in-memory order back.
fn config(root: &Path) -> StoreConfig {
    disk_only(root, 1 << 30).access_persist_interval(Duration::from_secs(3600))
}

fn prefix_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("v1/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn set_mtime(path: &Path, when: SystemTime) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

/// The digests the disk index holds, least recently accessed first.
fn listed(store: &Store) -> Vec<Digest> {
    store
        .disk()
        .entries()
        .into_iter()
        .map(|e| e.digest)
        .collect()
}

/// Writes `content` as an entry behind the store's back, then puts its
/// directory's mtime back as it was: a snapshot that trusts the directory
/// does not see the file, a scan does.
fn hide(root: &Path, content: &[u8]) -> Digest {
    let d = digest(content);
    let path = DiskTier::entry_path_in(root, &d);
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let stamp = mtime(dir);
    std::fs::write(&path, content).unwrap();
    set_mtime(dir, stamp);
    d
}

/// Every prefix directory last changed an hour ago, as in a cache that
/// has been left alone (the snapshot trusts only settled directories).
fn settle(root: &Path) {
    let then = SystemTime::now() - Duration::from_secs(3600);
    for dir in prefix_dirs(root) {
        set_mtime(&dir, then);
    }
}

/// A store holding `n` entries, accessed in an order that is not the order
/// they were written in.
async fn populated(root: &Path, n: u64) -> (Store, Vec<Digest>) {
    let store = open(config(root)).await;
    let mut digests = Vec::new();
    for i in 0..n {
        let content = blob(i, 100 + i as usize);
        let d = digest(&content);
        store.put_bytes(&d, content).await.unwrap();
        digests.push(d);
    }
    // Oldest first becomes: the odd ones, then the even ones backwards.
    for d in digests.iter().step_by(2).rev() {
        assert!(store.disk().len_of(d).is_some());
        store.get(d).await.unwrap().unwrap();
    }
    (store, digests)
}

#[tokio::test]
async fn a_clean_restart_brings_back_every_entry_and_the_exact_access_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, digests) = populated(dir.path(), 40).await;
    let before = store.disk().entries();
    assert_eq!(before.len(), 40);
    settle(dir.path());
    assert_eq!(store.disk().save_index().unwrap(), 40);
    drop(store);
    assert!(dir.path().join(SNAPSHOT).exists());

    let store = open(config(dir.path())).await;
    assert!(
        !dir.path().join(SNAPSHOT).exists(),
        "an open takes the snapshot: a crash later must not find it"
    );
    assert_eq!(
        store.disk().entries(),
        before,
        "same entries, sizes and last accesses, in the same order"
    );
    assert_eq!(
        store.stats().disk.bytes_used,
        before.iter().map(|e| e.size).sum::<u64>()
    );
    for d in &digests {
        assert!(get_bytes(&store, d).await.is_some(), "{d}");
    }
    drop(store);

    // Without a snapshot (a crash), the order is the persisted mtimes':
    // here the commit order, since no access was persisted. This is what
    // the snapshot saved the order from.
    let store = open(config(dir.path())).await;
    let scanned = listed(&store);
    let mut want = scanned.clone();
    want.sort_by_key(|d| digests.iter().position(|x| x == d));
    assert_eq!(scanned, want, "a scan restores the commit order");
    assert_ne!(
        scanned,
        before.iter().map(|e| e.digest.clone()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn directories_changed_after_the_snapshot_are_scanned_and_unchanged_ones_are_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, digests) = populated(dir.path(), 60).await;
    settle(dir.path());
    store.disk().save_index().unwrap();
    drop(store);

    // Removed behind regcache's back: its directory's mtime moves.
    let removed = &digests[3];
    std::fs::remove_file(DiskTier::entry_path_in(dir.path(), removed)).unwrap();
    // Added behind its back, in a directory that held entries.
    let added_content = blob(1000, 321);
    let added = digest(&added_content);
    let added_path = DiskTier::entry_path_in(dir.path(), &added);
    std::fs::create_dir_all(added_path.parent().unwrap()).unwrap();
    std::fs::write(&added_path, &added_content).unwrap();
    // Added with the directory's mtime put back as it was: the snapshot is
    // trusted for that directory, so the open does not see the file (what
    // proves the unchanged directories were not scanned).
    let hidden_content = (2000..)
        .map(|seed| blob(seed, 50))
        .find(|c| {
            let p = DiskTier::entry_path_in(dir.path(), &digest(c));
            p.parent().unwrap().exists()
                && p.parent() != added_path.parent()
                && p.parent() != DiskTier::entry_path_in(dir.path(), removed).parent()
        })
        .unwrap();
    let hidden = hide(dir.path(), &hidden_content);

    let store = open(config(dir.path())).await;
    let listed = listed(&store);
    assert!(!listed.contains(removed), "a removed file is not listed");
    assert!(listed.contains(&added), "a file added later is found");
    assert_eq!(
        get_bytes(&store, &added).await,
        Some(added_content.to_vec())
    );
    assert!(
        !listed.contains(&hidden),
        "trusted directories are not scanned"
    );
    assert_eq!(listed.len(), 60);
    for d in digests.iter().filter(|d| *d != removed) {
        assert!(listed.contains(d), "{d}");
    }
}

#[tokio::test]
async fn a_directory_changed_just_before_the_snapshot_is_scanned_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, digests) = populated(dir.path(), 10).await;
    // Not settled: every directory changed a moment ago. A change in the
    // same tick of the file system's clock could leave its mtime as
    // recorded, so the snapshot can't vouch for any of them.
    assert_eq!(store.disk().save_index().unwrap(), 0);
    drop(store);
    let hidden = hide(dir.path(), &blob(77, 40));

    let store = open(config(dir.path())).await;
    let listed = listed(&store);
    assert!(listed.contains(&hidden));
    assert_eq!(listed.len(), digests.len() + 1);
}

#[tokio::test]
async fn a_damaged_snapshot_is_ignored_and_the_cache_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let (store, digests) = populated(dir.path(), 30).await;
    settle(dir.path());
    store.disk().save_index().unwrap();
    let good = std::fs::read(dir.path().join(SNAPSHOT)).unwrap();
    // Header, 256 directory records at most, then 48 bytes per entry.
    assert!(good.len() > 30 * 48);

    let mut flipped = good.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x40;
    let damages: [(&str, Vec<u8>); 4] = [
        ("a flipped bit", flipped),
        ("truncated", good[..good.len() - 7].to_vec()),
        ("empty", Vec::new()),
        ("another format", b"not a snapshot at all".to_vec()),
    ];
    drop(store);
    // A file the intact snapshot hides (its directory's stamp put back, as
    // in the test above): a scan lists it, the snapshot does not, so the
    // count says which one an open used.
    let hidden_content = (3000..)
        .map(|seed| blob(seed, 60))
        .find(|c| {
            DiskTier::entry_path_in(dir.path(), &digest(c))
                .parent()
                .unwrap()
                .exists()
        })
        .unwrap();
    hide(dir.path(), &hidden_content);

    for (what, bytes) in damages {
        std::fs::write(dir.path().join(SNAPSHOT), &bytes).unwrap();
        let store = open(config(dir.path())).await;
        let listed: Vec<Digest> = store
            .disk()
            .entries()
            .into_iter()
            .map(|e| e.digest)
            .collect();
        assert_eq!(listed.len(), 31, "{what}: scanned, the hidden file too");
        for d in &digests {
            assert!(listed.contains(d), "{what}: {d}");
        }
        assert!(
            !dir.path().join(SNAPSHOT).exists(),
            "{what}: not left for the next open"
        );
        drop(store);
    }

    // The intact snapshot is still used after all that.
    std::fs::write(dir.path().join(SNAPSHOT), &good).unwrap();
    let store = open(config(dir.path())).await;
    assert_eq!(store.disk().entries().len(), 30);
}

//! Disk tier, tiers and restart behaviour.

use std::time::Duration;

use bytes::Bytes;
use regcache_formats::{Algorithm, Digest};
use regcache_store::{Begin, Installed, Source, Store, StoreConfig, StoreError};

use crate::common::*;

#[tokio::test]
async fn put_bytes_is_visible_on_disk_and_stat_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 20)).await;
    let content = blob(1, 5000);
    let d = digest(&content);

    assert!(
        store.get(&d).await.unwrap().is_none(),
        "absence is Ok(None)"
    );
    assert_eq!(store.stat(&d).await.unwrap(), None);
    store.put_bytes(&d, content.clone()).await.unwrap();

    assert_eq!(store.stat(&d).await.unwrap(), Some(5000));
    let path = store.disk().blob_path(&d);
    assert!(path.ends_with(format!("v1/blobs/sha256/{}/{}", &d.hex()[..2], d.hex())));
    assert_eq!(std::fs::read(&path).unwrap(), content);
    match store.get(&d).await.unwrap().unwrap() {
        Source::File { len, .. } => assert_eq!(len, 5000),
        other => panic!("memory tier is off, expected a file: {other:?}"),
    }
    assert_eq!(temp_files(dir.path()), 0);
    let stats = store.stats();
    assert_eq!(stats.disk.entries, 1);
    assert_eq!(stats.disk.bytes_used, 5000);
    assert_eq!(stats.tier("disk").unwrap().hits, 1);
    assert_eq!(stats.tier("disk").unwrap().misses, 1);
}

#[tokio::test]
async fn put_bytes_rejects_a_digest_mismatch_with_both_digests_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 20)).await;
    let claimed = digest(b"what the manifest said");
    let actual = digest(b"what arrived");
    let err = store
        .put_bytes(&claimed, Bytes::from_static(b"what arrived"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(claimed.as_str()), "{msg}");
    assert!(msg.contains(actual.as_str()), "{msg}");
    assert!(store.get(&claimed).await.unwrap().is_none());
    assert_eq!(temp_files(dir.path()), 0);
}

#[tokio::test]
async fn other_algorithms_are_stored_under_their_own_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 20)).await;
    let content = blob(2, 300);
    let d = Digest::compute(Algorithm::Sha512, &content);
    store.put_bytes(&d, content.clone()).await.unwrap();
    assert!(
        store
            .disk()
            .blob_path(&d)
            .to_string_lossy()
            .contains("/sha512/")
    );
    drop(store);
    let store = open(disk_only(dir.path(), 1 << 20)).await;
    assert_eq!(get_bytes(&store, &d).await.unwrap(), content);
}

#[tokio::test]
async fn restart_keeps_entries_tags_and_mappings_and_removes_stale_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = blob(10, 1000);
    let b = blob(11, 70_000);
    let (da, db) = (digest(&a), digest(&b));
    let record = regcache_store::TagRecord {
        digest: da.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 1000,
        fetched_at_unix: 1_700_000_000,
    };
    {
        let store = open(disk_only(dir.path(), 1 << 20)).await;
        store.put_bytes(&da, a.clone()).await.unwrap();
        let Begin::Leader(mut w) = store.begin_fill(&db, Some(b.len() as u64)).await.unwrap()
        else {
            panic!("first begin leads");
        };
        for chunk in b.chunks(8192) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        w.commit().await.unwrap();
        store
            .tags()
            .put("hub", "library/alpine", "3.20", record.clone())
            .unwrap();
        // An interrupted write from "before the crash".
        std::fs::write(dir.path().join("v1/tmp/999.part"), b"partial").unwrap();
        // A second process on the same root is refused.
        let err = Store::open(disk_only(dir.path(), 1 << 20))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    }
    let store = open(disk_only(dir.path(), 1 << 20)).await;
    assert_eq!(
        temp_files(dir.path()),
        0,
        "stale temp files are removed at start"
    );
    assert_eq!(get_bytes(&store, &da).await.unwrap(), a);
    assert_eq!(get_bytes(&store, &db).await.unwrap(), b);
    assert_eq!(store.stats().disk.bytes_used, 71_000);
    assert_eq!(
        store.tags().get("hub", "library/alpine", "3.20"),
        Some(record)
    );
}

#[tokio::test]
async fn lru_evicts_least_recently_accessed_and_stays_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1000)).await;
    let items: Vec<Bytes> = (0..4).map(|i| blob(100 + i, 300)).collect();
    let ds: Vec<Digest> = items.iter().map(|b| digest(b)).collect();
    for i in 0..3 {
        store.put_bytes(&ds[i], items[i].clone()).await.unwrap();
    }
    // Access 0: now 1 is the least recently accessed.
    assert!(store.get(&ds[0]).await.unwrap().is_some());
    store.put_bytes(&ds[3], items[3].clone()).await.unwrap();
    assert!(
        store.get(&ds[1]).await.unwrap().is_none(),
        "1 was least recently accessed"
    );
    let order: Vec<Digest> = store
        .disk()
        .lru_order()
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(order, vec![ds[2].clone(), ds[0].clone(), ds[3].clone()]);
    assert!(!store.disk().blob_path(&ds[1]).exists());

    // The order survives a restart (access times are persisted as mtimes).
    drop(store);
    let store = open(disk_only(dir.path(), 1000)).await;
    let after: Vec<Digest> = store
        .disk()
        .lru_order()
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(after, order);

    // Inserting far more than the budget keeps usage under it.
    for i in 0..40 {
        let b = blob(1000 + i, 90 + (i as usize * 37) % 200);
        store.put_bytes(&digest(&b), b).await.unwrap();
        let stats = store.stats().disk;
        assert!(stats.bytes_used <= 1000, "{stats:?}");
    }
    let stats = store.stats().disk;
    assert!(stats.evictions >= 30, "{stats:?}");
    assert_eq!(
        stats.bytes_used,
        store.disk().lru_order().iter().map(|(_, s)| s).sum::<u64>()
    );
}

#[tokio::test]
async fn lowering_the_budget_evicts_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ds: Vec<Digest> = {
        let store = open(disk_only(dir.path(), 10_000)).await;
        let mut ds = Vec::new();
        for i in 0..5 {
            let b = blob(200 + i, 1000);
            ds.push(digest(&b));
            store.put_bytes(&digest(&b), b).await.unwrap();
        }
        ds
    };
    let store = open(disk_only(dir.path(), 2500)).await;
    let kept: Vec<Digest> = store
        .disk()
        .lru_order()
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(kept, ds[3..].to_vec(), "the two most recent survive");
    assert_eq!(store.stats().disk.bytes_used, 2000);
}

#[tokio::test]
async fn pinned_entries_are_not_evicted_and_oversized_content_is_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1000)).await;
    let a = blob(300, 600);
    let b = blob(301, 600);
    store.put_bytes(&digest(&a), a.clone()).await.unwrap();
    let pin = store.pin(&digest(&a)).unwrap();
    // b doesn't fit next to pinned a: not cached, a stays.
    store.put_bytes(&digest(&b), b.clone()).await.unwrap();
    assert!(store.disk().contains(&digest(&a)));
    assert!(!store.disk().contains(&digest(&b)));
    drop(pin);
    store.put_bytes(&digest(&b), b.clone()).await.unwrap();
    assert!(!store.disk().contains(&digest(&a)));
    assert!(store.disk().contains(&digest(&b)));

    // Larger than the whole budget: a fill still serves its readers.
    let big = blob(302, 5000);
    let Begin::Leader(mut w) = store.begin_fill(&digest(&big), None).await.unwrap() else {
        panic!()
    };
    let reader = w.subscribe();
    w.write(big.clone()).await.unwrap();
    let committed = w.commit().await.unwrap();
    assert_eq!(committed.installed, Installed::NotCached);
    assert_eq!(collect(reader).await.unwrap(), big);
    assert!(store.get(&digest(&big)).await.unwrap().is_none());
    assert_eq!(store.stats().disk.not_cached, 2);
    assert_eq!(temp_files(dir.path()), 0);
}

#[tokio::test]
async fn eviction_never_takes_content_from_an_open_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1000)).await;
    let a = blob(400, 800);
    store.put_bytes(&digest(&a), a.clone()).await.unwrap();
    let source = store.get(&digest(&a)).await.unwrap().unwrap();
    let b = blob(401, 800);
    store.put_bytes(&digest(&b), b).await.unwrap();
    assert!(!store.disk().contains(&digest(&a)), "a was evicted");
    assert_eq!(
        source_bytes(source).await,
        a,
        "but the open file still reads"
    );
}

#[tokio::test]
async fn small_disk_hits_are_promoted_to_memory_and_memory_hits_count_as_disk_access() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::new(dir.path())
        .disk_max_bytes(1000)
        .memory_max_bytes(1 << 20)
        .memory_max_object_bytes(250)
        .access_persist_interval(Duration::ZERO);
    let small = blob(500, 200);
    let large = blob(501, 300);
    let (ds, dl) = (digest(&small), digest(&large));
    {
        let store = open(config.clone()).await;
        store.put_bytes(&ds, small.clone()).await.unwrap();
        store.put_bytes(&dl, large.clone()).await.unwrap();
        assert!(
            store.memory().unwrap().contains(&ds),
            "small put goes to memory too"
        );
        assert!(
            !store.memory().unwrap().contains(&dl),
            "over the memory object limit"
        );
    }
    let store = open(config).await;
    assert!(!store.memory().unwrap().contains(&ds), "memory starts cold");
    let hit = store.get(&ds).await.unwrap().unwrap();
    assert!(
        matches!(hit, Source::Bytes(_)),
        "small disk hit is returned as bytes"
    );
    assert!(store.memory().unwrap().contains(&ds), "and promoted");
    let hit = store.get(&dl).await.unwrap().unwrap();
    assert!(
        matches!(hit, Source::File { .. }),
        "large disk hit stays a file"
    );
    let stats = store.stats();
    assert_eq!(stats.tier("memory").unwrap().misses, 2);
    assert_eq!(stats.tier("disk").unwrap().hits, 2);

    // Memory hit on `small` refreshes it on disk, so `large` is older.
    store.get(&ds).await.unwrap().unwrap();
    assert_eq!(store.stats().tier("memory").unwrap().hits, 1);
    let order: Vec<Digest> = store
        .disk()
        .lru_order()
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(order, vec![dl.clone(), ds.clone()]);
    let more = blob(502, 600);
    store.put_bytes(&digest(&more), more).await.unwrap();
    assert!(!store.disk().contains(&dl));
    assert!(store.disk().contains(&ds));
}

#[tokio::test]
async fn remove_deletes_from_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(StoreConfig::new(dir.path())).await;
    let a = blob(600, 100);
    let d = digest(&a);
    store.put_bytes(&d, a).await.unwrap();
    assert!(store.remove(&d).await.unwrap());
    assert!(store.get(&d).await.unwrap().is_none());
    assert!(!store.remove(&d).await.unwrap());
}

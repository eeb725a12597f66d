//! Fills that can't be cached still reach every reader (`relay.rs`).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use regcache_store::{Begin, Installed};

use crate::common::*;

/// Everything under the data directory, temp files included.
fn dir_bytes(root: &std::path::Path) -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_larger_than_the_budget_passes_through_to_every_reader_and_caches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 20)).await;
    let content = blob(11, 20 << 20);
    let d = digest(&content);
    let Begin::Leader(mut w) = store.begin_fill(&d, None).await.unwrap() else {
        panic!("expected to lead");
    };
    let fast = tokio::spawn(collect(w.subscribe()));
    // A slow reader: the writer must wait for it instead of buffering the blob.
    let mut slow = w.subscribe();
    w.set_len(content.len() as u64).unwrap();
    let writer = tokio::spawn(async move {
        for chunk in content.chunks(256 << 10) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        w.commit().await.unwrap()
    });
    let mut got = Vec::new();
    let mut max_dir = 0;
    while let Some(chunk) = slow.next().await {
        got.extend_from_slice(&chunk.unwrap());
        max_dir = max_dir.max(dir_bytes(dir.path()));
        if got.len() < (1 << 20) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let committed = writer.await.unwrap();
    assert_eq!(committed.installed, Installed::NotCached);
    assert_eq!(got.len(), 20 << 20);
    assert_eq!(digest(&got), d);
    assert_eq!(fast.await.unwrap().unwrap(), got);
    assert!(max_dir <= 1 << 20, "data dir reached {max_dir} bytes");
    assert!(store.get(&d).await.unwrap().is_none());
    assert_eq!(temp_files(dir.path()), 0);
    assert_eq!(store.stats().fills.passed_through, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_growing_past_the_budget_switches_mid_way_and_readers_see_one_body() {
    let dir = tempfile::tempdir().unwrap();
    // Budget below the blob; the length is never announced, so the fill
    // reserves as it grows and switches to memory when it no longer fits.
    let store = open(disk_only(dir.path(), 3 << 20)).await;
    let content = blob(12, 10 << 20);
    let d = digest(&content);
    let Begin::Leader(mut w) = store.begin_fill(&d, None).await.unwrap() else {
        panic!("expected to lead");
    };
    let readers: Vec<_> = (0..5)
        .map(|_| tokio::spawn(collect(w.subscribe())))
        .collect();
    for chunk in content.chunks(500_000) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        assert!(dir_bytes(dir.path()) <= 3 << 20);
    }
    let committed = w.commit().await.unwrap();
    assert_eq!(committed.installed, Installed::NotCached);
    for r in readers {
        assert_eq!(r.await.unwrap().unwrap(), content);
    }
    assert_eq!(temp_files(dir.path()), 0);
    // Caching still works for what fits.
    let small = blob(13, 100_000);
    let sd = digest(&small);
    let Begin::Leader(mut w) = store
        .begin_fill(&sd, Some(small.len() as u64))
        .await
        .unwrap()
    else {
        panic!("expected to lead");
    };
    w.write(small.clone()).await.unwrap();
    assert_eq!(w.commit().await.unwrap().installed, Installed::Added);
    assert_eq!(get_bytes(&store, &sd).await.unwrap(), small);
}

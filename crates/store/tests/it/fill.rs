//! One fill per digest: leaders, followers, failures.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use regcache_formats::Digest;
use regcache_store::{Begin, FillError, FillReader, FillWriter, Store};
use tokio::sync::Barrier;

use crate::common::*;

async fn leader(store: &Store, d: &Digest, len: Option<u64>) -> FillWriter {
    match store.begin_fill(d, len).await.unwrap() {
        Begin::Leader(w) => w,
        Begin::Follower(r) => panic!("expected to lead, got {r:?}"),
    }
}

async fn follower(store: &Store, d: &Digest, len: Option<u64>) -> FillReader {
    match store.begin_fill(d, len).await.unwrap() {
        Begin::Follower(r) => r,
        Begin::Leader(w) => panic!("expected to follow, got {w:?}"),
    }
}

#[tokio::test]
async fn commit_makes_content_visible_and_drop_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let content = blob(1, 100_000);
    let d = digest(&content);

    // Dropped half-way: invisible, temp file gone, the next begin leads.
    let mut w = leader(&store, &d, Some(content.len() as u64)).await;
    let reader = w.subscribe();
    w.write(content.slice(..50_000)).await.unwrap();
    assert!(store.fills().is_filling(&d));
    assert_eq!(temp_files(dir.path()), 1);
    drop(w);
    let (partial, err) = collect(reader).await.unwrap_err();
    assert!(partial.len() <= 50_000);
    assert!(matches!(err, FillError::Abandoned { .. }), "{err:?}");
    assert!(store.get(&d).await.unwrap().is_none());
    assert_eq!(temp_files(dir.path()), 0);
    assert!(!store.fills().is_filling(&d));

    // Committed: visible through get, stat and a new begin.
    let mut w = leader(&store, &d, Some(content.len() as u64)).await;
    for chunk in content.chunks(9999) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let committed = w.commit().await.unwrap();
    assert_eq!(committed.len, 100_000);
    assert_eq!(store.stat(&d).await.unwrap(), Some(100_000));
    assert_eq!(get_bytes(&store, &d).await.unwrap(), content);
    assert_eq!(temp_files(dir.path()), 0);
    let stats = store.stats().fills;
    assert_eq!((stats.started, stats.committed, stats.failed), (2, 1, 1));
}

#[tokio::test]
async fn digest_mismatch_is_rejected_for_writer_and_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let claimed = digest(b"the real layer");
    let wrong = Bytes::from_static(b"a poisoned layer");
    let mut w = leader(&store, &claimed, None).await;
    let reader = w.subscribe();
    w.write(wrong.clone()).await.unwrap();
    let err = w.commit().await.unwrap_err();
    assert!(matches!(err, FillError::DigestMismatch { .. }), "{err:?}");
    assert!(err.is_bad_content());
    // The message names both full digests (leading zeros intact).
    let msg = err.to_string();
    assert!(msg.contains(claimed.as_str()), "{msg}");
    assert!(msg.contains(digest(&wrong).as_str()), "{msg}");
    let (_, reader_err) = collect(reader).await.unwrap_err();
    assert_eq!(reader_err.to_string(), msg);
    assert!(store.get(&claimed).await.unwrap().is_none());
    assert_eq!(temp_files(dir.path()), 0);
}

#[tokio::test]
async fn truncated_and_overlong_fills_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let content = blob(2, 10_000);
    let d = digest(&content);

    let mut w = leader(&store, &d, Some(10_000)).await;
    let reader = w.subscribe();
    w.write(content.slice(..6000)).await.unwrap();
    let err = w.commit().await.unwrap_err();
    assert!(
        matches!(
            err,
            FillError::Truncated {
                expected: 10_000,
                written: 6000,
                ..
            }
        ),
        "{err:?}"
    );
    let (got, reader_err) = collect(reader).await.unwrap_err();
    assert_eq!(
        got,
        content[..got.len()],
        "whatever arrived was the right prefix"
    );
    assert!(matches!(reader_err, FillError::Truncated { .. }));
    assert!(store.get(&d).await.unwrap().is_none());

    // Announced 5000 but upstream sends 10000.
    let mut w = leader(&store, &d, Some(5000)).await;
    w.write(content.slice(..4000)).await.unwrap();
    let err = w.write(content.slice(4000..8000)).await.unwrap_err();
    assert!(
        matches!(err, FillError::TooLong { expected: 5000, .. }),
        "{err:?}"
    );
    // Later calls repeat the failure; commit too.
    assert!(matches!(
        w.write(content.slice(..1)).await,
        Err(FillError::TooLong { .. })
    ));
    assert!(matches!(w.commit().await, Err(FillError::TooLong { .. })));
    assert!(store.get(&d).await.unwrap().is_none());
    assert_eq!(temp_files(dir.path()), 0);
}

/// The core scenario: a slow upstream, 50 clients joining at different
/// times, all getting identical and correct bytes in bounded chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_readers_of_a_trickling_fill_get_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let chunk_limit = store.config().read_chunk_bytes;
    let content = blob(3, 2 * 1024 * 1024 + 12_345);
    let d = digest(&content);
    let len = content.len() as u64;

    let mut w = leader(&store, &d, Some(len)).await;
    let first = w.subscribe();
    let start = Arc::new(Barrier::new(26));
    let mut readers = Vec::new();
    // 25 readers join before any byte is written...
    for _ in 0..25 {
        let store = store.clone();
        let d = d.clone();
        let start = start.clone();
        readers.push(tokio::spawn(async move {
            let reader = follower(&store, &d, Some(len)).await;
            assert_eq!(reader.len(), Some(len));
            start.wait().await;
            read_bounded(reader, chunk_limit).await
        }));
    }
    start.wait().await;
    let writer_content = content.clone();
    let writer = tokio::spawn(async move {
        let mut offset = 0;
        let mut i = 0usize;
        while offset < writer_content.len() {
            // Uneven chunk sizes, including tiny ones.
            let size =
                [1, 7, 100, 4096, 16_384, 65_536, 3][i % 7].min(writer_content.len() - offset);
            w.write(writer_content.slice(offset..offset + size))
                .await
                .unwrap();
            offset += size;
            i += 1;
            if i.is_multiple_of(16) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        w.commit().await.unwrap()
    });
    // ...and 25 join while it trickles in (late joiners start at offset 0).
    for i in 0..25 {
        tokio::time::sleep(Duration::from_millis(2 + i % 3)).await;
        let store = store.clone();
        let d = d.clone();
        readers.push(tokio::spawn(async move {
            // May land after the commit: then it reads the committed entry.
            let reader = match store.begin_fill(&d, Some(len)).await.unwrap() {
                Begin::Follower(r) => r,
                Begin::Leader(_) => panic!("a second leader while the first is filling"),
            };
            read_bounded(reader, chunk_limit).await
        }));
    }
    let from_first = read_bounded(first, chunk_limit).await;
    let committed = writer.await.unwrap();
    assert_eq!(committed.len, len);
    assert!(from_first == content, "leader's own reader got wrong bytes");
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.await.unwrap();
        assert_eq!(got.len(), content.len(), "reader {i}");
        assert!(got == content, "reader {i} got different bytes");
    }
    let stats = store.stats().fills;
    assert_eq!(stats.started, 1);
    assert_eq!(stats.joined + stats.already_cached, 50);
}

async fn read_bounded(mut reader: FillReader, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = reader.next().await {
        let chunk = chunk.expect("reader error");
        assert!(
            chunk.len() <= limit,
            "chunk of {} over the {limit} read buffer",
            chunk.len()
        );
        assert!(!chunk.is_empty());
        out.extend_from_slice(&chunk);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_failing_midway_errors_every_reader_and_frees_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let content = blob(4, 300_000);
    let d = digest(&content);
    let len = Some(content.len() as u64);

    let mut w = leader(&store, &d, len).await;
    let mut readers = vec![tokio::spawn(collect(w.subscribe()))];
    for _ in 0..10 {
        readers.push(tokio::spawn(collect(follower(&store, &d, len).await)));
    }
    w.write(content.slice(..100_000)).await.unwrap();
    readers.push(tokio::spawn(collect(follower(&store, &d, len).await)));
    w.abort(std::io::Error::other("upstream: connection reset"));

    for r in readers {
        let (got, err) = r.await.unwrap().expect_err("no reader may end cleanly");
        assert!(got.len() <= 100_000);
        // Readers get the writer's own error, typed.
        assert!(
            err.cause()
                .and_then(|c| c.downcast_ref::<std::io::Error>())
                .is_some_and(|e| e.kind() == std::io::ErrorKind::Other),
            "{err:?}"
        );
        assert_eq!(got, content[..got.len()]);
        assert!(
            matches!(&err, FillError::Aborted { cause, .. } if cause.to_string().contains("connection reset")),
            "{err:?}"
        );
    }
    assert!(store.get(&d).await.unwrap().is_none());

    // The next begin is a fresh leader, and its fill works.
    let mut w = leader(&store, &d, len).await;
    let reader = w.subscribe();
    w.write(content.clone()).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(collect(reader).await.unwrap(), content);
    assert_eq!(temp_files(dir.path()), 0);
}

#[tokio::test]
async fn a_reader_dropped_midway_does_not_stop_the_fill() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let content = blob(5, 50_000);
    let d = digest(&content);
    let mut w = leader(&store, &d, None).await;
    let mut quitter = w.subscribe();
    w.write(content.slice(..20_000)).await.unwrap();
    let first = quitter.next().await.unwrap().unwrap();
    assert_eq!(first, content.slice(..first.len()));
    drop(quitter); // the client disconnected
    w.write(content.slice(20_000..)).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(get_bytes(&store, &d).await.unwrap(), content);
}

#[tokio::test]
async fn late_joiners_start_at_zero_and_joiners_after_commit_get_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let content = blob(6, 40_000);
    let d = digest(&content);
    let mut w = leader(&store, &d, None).await;
    w.write(content.slice(..30_000)).await.unwrap();
    let late = follower(&store, &d, None).await;
    assert_eq!(late.len(), None, "no length announced");
    w.write(content.slice(30_000..)).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(collect(late).await.unwrap(), content);

    let after = follower(&store, &d, None).await;
    assert_eq!(after.len(), Some(40_000), "committed length is known");
    assert_eq!(collect(after).await.unwrap(), content);
    assert_eq!(store.stats().fills.already_cached, 1);
}

#[tokio::test]
async fn ranges_follow_a_partial_file_but_end_only_after_verification() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let content = blob(7, 100_000);
    let d = digest(&content);
    let mut w = leader(&store, &d, Some(100_000)).await;
    w.write(content.slice(..60_000)).await.unwrap();

    let mut ranged = w.subscribe().range(10_000, Some(20_000));
    let mut got = Vec::new();
    while got.len() < 10_000 {
        got.extend_from_slice(&ranged.next().await.unwrap().unwrap());
    }
    assert_eq!(got, content[10_000..20_000]);
    // All range bytes are there, but the end waits for the commit.
    let waiting = tokio::time::timeout(Duration::from_millis(50), ranged.next()).await;
    assert!(
        waiting.is_err(),
        "range ended before the content was verified"
    );
    let tail = w.subscribe().range(90_000, None);
    w.write(content.slice(60_000..)).await.unwrap();
    w.commit().await.unwrap();
    assert!(ranged.next().await.is_none());
    assert_eq!(collect(tail).await.unwrap(), content[90_000..]);

    let beyond = follower(&store, &d, None).await.range(200_000, None);
    let (_, err) = collect(beyond).await.unwrap_err();
    assert!(
        matches!(err, FillError::RangeNotSatisfiable { len: 100_000, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_cancelled_write_fails_the_fill() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let content = blob(8, 4 * 1024 * 1024);
    let d = digest(&content);
    let mut w = leader(&store, &d, None).await;
    let reader = w.subscribe();
    {
        // Poll the write once, then drop it mid-flight.
        let fut = w.write(content.clone());
        let _ = futures_util::poll!(Box::pin(fut));
    }
    let err = w.write(Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, FillError::Abandoned { .. }), "{err:?}");
    assert!(collect(reader).await.is_err());
    drop(w);
    assert_eq!(temp_files(dir.path()), 0);
    assert!(matches!(
        store.begin_fill(&d, None).await.unwrap(),
        Begin::Leader(_)
    ));
}

#[tokio::test]
async fn small_committed_fills_are_copied_to_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(regcache_store::StoreConfig::new(dir.path())).await;
    let content = blob(9, 2000);
    let d = digest(&content);
    let mut w = leader(&store, &d, Some(2000)).await;
    w.write(content.clone()).await.unwrap();
    w.commit().await.unwrap();
    assert!(store.memory().unwrap().contains(&d));
    // A begin now follows from memory.
    assert_eq!(
        collect(follower(&store, &d, None).await).await.unwrap(),
        content
    );
}

#[tokio::test]
async fn empty_content_fills_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let d = digest(b"");
    let w = leader(&store, &d, Some(0)).await;
    let reader = w.subscribe();
    w.commit().await.unwrap();
    assert_eq!(collect(reader).await.unwrap(), Vec::<u8>::new());
    assert_eq!(get_bytes(&store, &d).await.unwrap(), Vec::<u8>::new());
}

#[tokio::test]
async fn a_length_announced_after_begin_reaches_waiting_readers_and_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let content = blob(7, 300_000);
    let d = digest(&content);
    let mut w = leader(&store, &d, None).await;
    let mut mine = w.subscribe();
    let mut other = follower(&store, &d, None).await;
    assert_eq!(other.len(), None);
    let waiting = tokio::spawn(async move {
        let len = other.wait_len().await.unwrap();
        (len, collect(other).await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !waiting.is_finished(),
        "wait_len returned before a length was known"
    );
    w.set_len(content.len() as u64).unwrap();
    assert_eq!(mine.wait_len().await.unwrap(), content.len() as u64);
    // A reader that joins after the announcement knows the length at once.
    let late = follower(&store, &d, None).await;
    assert_eq!(late.len(), Some(content.len() as u64));
    for chunk in content.chunks(65_536) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    w.commit().await.unwrap();
    let (len, bytes) = waiting.await.unwrap();
    assert_eq!(len, content.len() as u64);
    assert_eq!(bytes, content.to_vec());
    assert_eq!(collect(mine).await.unwrap(), content.to_vec());

    // Announced length enforced: a short fill fails every reader.
    let other_content = blob(8, 1000);
    let d2 = digest(&other_content);
    let mut w = leader(&store, &d2, None).await;
    w.set_len(2000).unwrap();
    let r = w.subscribe();
    w.write(other_content.clone()).await.unwrap();
    assert!(matches!(w.commit().await, Err(FillError::Truncated { .. })));
    assert!(collect(r).await.is_err());
}

#[tokio::test]
async fn a_fill_aborted_before_its_length_is_known_fails_wait_len() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let d = digest(b"never arrives");
    let w = leader(&store, &d, None).await;
    let mut r = follower(&store, &d, None).await;
    let waiting = tokio::spawn(async move { r.wait_len().await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    w.abort(std::io::Error::other("upstream answered 404"));
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("upstream answered 404"), "{err}");
    // The digest is free again: the next begin leads.
    assert!(matches!(
        store.begin_fill(&d, None).await.unwrap(),
        Begin::Leader(_)
    ));
}

#[tokio::test]
async fn a_fill_file_reports_progress_and_verification_for_sendfile() {
    use regcache_store::FillProgress;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    let content = blob(11, 300_000);
    let d = digest(&content);
    let mut w = leader(&store, &d, Some(300_000)).await;
    let mut f = w
        .subscribe()
        .into_file()
        .expect("a fill in progress has a file");
    assert_eq!(f.digest(), &d);

    // Batched writes land in order and publish once.
    w.write_chunks(vec![content.slice(..1_000), content.slice(1_000..120_000)])
        .await
        .unwrap();
    assert_eq!(
        f.wait(1).await.unwrap(),
        FillProgress::Writing { written: 120_000 }
    );
    let mut head = vec![0u8; 120_000];
    f.file().read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, content[..120_000]);
    // Everything written is not enough: waiting for verification blocks.
    let early = tokio::time::timeout(Duration::from_millis(50), f.wait(u64::MAX)).await;
    assert!(early.is_err(), "verified before the commit");
    w.write(content.slice(120_000..)).await.unwrap();
    assert_eq!(
        f.wait(300_000).await.unwrap(),
        FillProgress::Writing { written: 300_000 }
    );
    let verify = tokio::spawn(async move { f.wait(u64::MAX).await });
    w.commit().await.unwrap();
    assert_eq!(
        verify.await.unwrap().unwrap(),
        FillProgress::Verified { len: 300_000 }
    );

    // A committed disk entry also yields a (verified) file; a polled reader doesn't.
    let mut again = follower(&store, &d, None).await.into_file().unwrap();
    assert_eq!(
        again.wait(u64::MAX).await.unwrap(),
        FillProgress::Verified { len: 300_000 }
    );
    let mut polled = follower(&store, &d, None).await;
    polled.next().await.unwrap().unwrap();
    assert!(polled.into_file().is_err());

    // A failing fill reaches a waiting sender as its error.
    let bad = blob(12, 10_000);
    let bd = digest(&bad);
    let mut w = leader(&store, &bd, Some(10_000)).await;
    let mut f = w.subscribe().into_file().unwrap();
    let waiting = tokio::spawn(async move { f.wait(u64::MAX).await });
    w.write(blob(13, 10_000)).await.unwrap();
    assert!(w.commit().await.is_err());
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, FillError::DigestMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn fills_in_progress_lists_progress_readers_and_repository() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(disk_only(dir.path(), 1 << 30)).await;
    assert!(store.fills_in_progress().is_empty());
    let content = blob(7, 30_000);
    let d = digest(&content);

    let mut w = leader(&store, &d, None).await;
    w.set_repository("team/app");
    w.set_repository("other/name");
    let own = w.subscribe();
    let joined = follower(&store, &d, None).await;
    w.write(content.slice(..10_000)).await.unwrap();
    let listed = store.fills_in_progress();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let f = &listed[0];
    assert_eq!(f.digest, d);
    assert_eq!(
        f.repository.as_deref(),
        Some("team/app"),
        "the first name stays"
    );
    assert_eq!((f.written, f.len, f.readers), (10_000, None, 2));
    assert!(!f.passing_through);

    w.set_len(content.len() as u64).unwrap();
    drop(joined);
    let f = store.fills_in_progress().remove(0);
    assert_eq!((f.written, f.len, f.readers), (10_000, Some(30_000), 1));

    w.write(content.slice(10_000..)).await.unwrap();
    w.commit().await.unwrap();
    drop(own);
    assert!(
        store.fills_in_progress().is_empty(),
        "committed fills are gone"
    );
}

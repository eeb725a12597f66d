//! Stale-while-revalidate against the in-memory registry: a tag moved
//! upstream, a HEAD held at a gate, and requests that must (or must not)
//! wait for it.

use std::time::Duration;

use bytes::Bytes;
use regcache_formats::media_type;
use regcache_upstream::mock::{Gate, MemoryRegistry, Op};

use super::*;
use crate::services::Services;
use crate::services::test_support::{target_for, temp_services};

fn schema2_manifest(seed: u8) -> Bytes {
    let config = Digest::sha256_of(&[seed]);
    Bytes::from(format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"config\":{{\"mediaType\":\"{}\",\"size\":1,\"digest\":\"{config}\"}},\"layers\":[]}}",
        media_type::SCHEMA2,
        media_type::DOCKER_CONFIG,
    ))
}

struct MovedTag {
    services: Services,
    registry: Arc<MemoryRegistry>,
    target: Target,
    gate: Gate,
    old: Digest,
    new: Digest,
    _dir: tempfile::TempDir,
}

/// `team/app:v1` moved upstream from manifest 1 (what the tag index says,
/// `age_secs` old) to manifest 2; every HEAD of a manifest waits at `gate`.
async fn moved_tag(age_secs: u64, swr_secs: u64) -> MovedTag {
    let (dir, services) = temp_services().await;
    let registry = Arc::new(MemoryRegistry::new("quay.io"));
    let old = registry.put_manifest("team/app", media_type::SCHEMA2, schema2_manifest(1));
    let new = registry.put_manifest("team/app", media_type::SCHEMA2, schema2_manifest(2));
    registry.tag("team/app", "v1", &new);
    services
        .store
        .tags()
        .put(
            "quay.io",
            "team/app",
            "v1",
            TagRecord {
                digest: old.clone(),
                media_type: media_type::SCHEMA2.into(),
                size: 0,
                fetched_at_unix: unix_now() - age_secs,
            },
        )
        .unwrap();
    let target = target_for(registry.clone(), |u| {
        u.set_ttls(crate::request::Ttls {
            tag_ttl: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(3600),
            stale_while_revalidate: Duration::from_secs(swr_secs),
        });
    });
    let gate = registry.hold(Op::HeadManifest);
    MovedTag {
        services,
        registry,
        target,
        gate,
        old,
        new,
        _dir: dir,
    }
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_heads_once() {
    // TTL 10 s, window 60 s, record 15 s old: inside the window.
    let t = moved_tag(15, 60).await;
    let tags = &t.services.tags;
    let name = RepositoryName::parse("team/app").unwrap();
    let tag = Tag::parse("v1").unwrap();
    let heads = || t.registry.calls(Op::HeadManifest);

    // The HEAD is held at the gate: these answer without it, all stale.
    let answers = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all((0..16).map(|_| tags.resolve(&t.target, &name, &tag))),
    )
    .await
    .expect("stale-while-revalidate requests waited for the upstream HEAD");
    for m in answers {
        assert_eq!(m.unwrap().digest, t.old);
    }
    assert!(heads() <= 1, "{} HEADs for one stale tag", heads());

    t.gate.let_through(1000);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t
        .services
        .store
        .tags()
        .get("quay.io", "team/app", "v1")
        .is_none_or(|r| r.digest != t.new)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the background revalidation never recorded the new digest"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        tags.resolve(&t.target, &name, &tag).await.unwrap().digest,
        t.new
    );
    assert_eq!(heads(), 1, "16 stale requests, then a fresh one: one HEAD");

    // The task has ended and unmarked the tag. A request that read the old
    // record before the revalidation ended starts no second HEAD.
    while !tags.refreshing.lock().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the background task never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stale = TagRecord {
        digest: t.old.clone(),
        media_type: media_type::SCHEMA2.into(),
        size: 0,
        fetched_at_unix: unix_now() - 15,
    };
    tags.revalidate_in_background(&t.target, &name, &tag, stale);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(heads(), 1);

    let text = tags.metrics.encode();
    assert!(
        text.contains(
            "regcache_cache_lookups_total{kind=\"tag\",result=\"stale_while_revalidate\"} 16"
        ),
        "{text}"
    );
    assert!(!text.contains("result=\"stale\"}"), "{text}");
}

#[tokio::test]
async fn past_the_window_or_with_it_off_requests_wait_for_the_head() {
    // (record age, window): past TTL + window, and the window off.
    for (age, swr) in [(75, 60), (15, 0)] {
        let t = moved_tag(age, swr).await;
        let name = RepositoryName::parse("team/app").unwrap();
        let tag = Tag::parse("v1").unwrap();
        let waiting = t.services.tags.resolve(&t.target, &name, &tag);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut waiting)
                .await
                .is_err(),
            "age {age}, window {swr}: answered without waiting for the HEAD"
        );
        t.gate.let_through(1000);
        assert_eq!(
            waiting.await.unwrap().digest,
            t.new,
            "age {age}, window {swr}"
        );
        assert_eq!(t.registry.calls(Op::HeadManifest), 1);
    }
}

#[tokio::test]
async fn an_unknown_tag_is_manifest_unknown() {
    let t = moved_tag(15, 0).await;
    t.gate.let_through(1000);
    let name = RepositoryName::parse("team/app").unwrap();
    let err = t
        .services
        .tags
        .resolve(&t.target, &name, &Tag::parse("nope").unwrap())
        .await
        .unwrap_err();
    let r = crate::rescue::classify(&err);
    assert_eq!(
        (r.status, r.envelope.errors[0].code),
        (404, ErrorCode::ManifestUnknown),
        "{err}"
    );
}

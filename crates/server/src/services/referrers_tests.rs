//! The referrers service against the in-memory registry, which has no
//! referrers API (its raw routes answer `404 UNSUPPORTED` for them): the
//! fallback tag, the empty index, the missing API remembered, local
//! filtering on the kept list, and upstream failures.

use std::time::Duration;

use regcache_formats::media_type;
use regcache_upstream::mock::{FailureUpstream, Fault, MemoryRegistry, Op};
use regcache_upstream::{UpstreamApi, UpstreamError};
use serde_json::json;

use super::*;
use crate::services::test_support::{target_for, temp_services};

const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM: &str = "application/spdx+json";

fn subject(n: u8) -> Digest {
    Digest::sha256_of(&[n])
}

fn fallback_index() -> Vec<u8> {
    let desc = |n: u8, t: &str| {
        json!({"mediaType": media_type::OCI_MANIFEST, "digest": Digest::sha256_of(&[100 + n]).as_str(),
               "size": 10 + u64::from(n), "artifactType": t})
    };
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": [desc(1, SIG), desc(2, SBOM)],
    }))
    .unwrap()
}

fn manifests(body: &[u8]) -> Vec<Value> {
    let doc: Value = serde_json::from_slice(body).unwrap();
    doc["manifests"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_fallback_tag_answers_and_the_missing_api_is_remembered() {
    let (_dir, services) = temp_services().await;
    let registry = Arc::new(MemoryRegistry::new("quay.io"));
    let index = fallback_index();
    let d = registry.put_manifest("team/app", media_type::OCI_INDEX, index.clone());
    registry.tag("team/app", &index::fallback_tag(&subject(1)), &d);
    let target = target_for(registry.clone(), |_| {});
    let name = RepositoryName::parse("team/app").unwrap();
    let referrers = &services.referrers;

    let all = referrers
        .list(&target, &name, &subject(1), None)
        .await
        .unwrap();
    assert_eq!(all.origin, Origin::FallbackTag);
    assert_eq!(&all.body[..], &index[..]);
    assert_eq!(all.filters_applied, None);
    let sigs = referrers
        .list(&target, &name, &subject(1), Some(SIG))
        .await
        .unwrap();
    let listed = manifests(&sigs.body);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["artifactType"], SIG);
    assert_eq!(sigs.filters_applied.as_deref(), Some("artifactType"));

    // No fallback tag: the empty index; the API was asked about once only.
    let none = referrers
        .list(&target, &name, &subject(2), None)
        .await
        .unwrap();
    assert_eq!(none.origin, Origin::Empty);
    assert_eq!(&none.body[..], EMPTY_INDEX);
    assert_eq!(registry.calls(Op::Send), 1);
}

#[tokio::test]
async fn upstream_failures_are_the_upstreams_unless_a_kept_list_covers_them() {
    let (_dir, services) = temp_services().await;
    let upstream = Arc::new(FailureUpstream::new(MemoryRegistry::new("quay.io")));
    // Every request is past the TTL; stale-if-error for an hour.
    let target = target_for(upstream.clone() as Arc<dyn UpstreamApi>, |u| {
        u.set_ttls(crate::request::Ttls {
            tag_ttl: Duration::ZERO,
            stale_if_error: Duration::from_secs(3600),
            ..u.ttls()
        });
    });
    let name = RepositoryName::parse("team/app").unwrap();
    let referrers = &services.referrers;

    upstream.inject_times(Op::Send, Fault::unavailable(), 1);
    let e = referrers
        .list(&target, &name, &subject(3), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Upstream(UpstreamError::Registry { status: 503, .. })
        ),
        "{e:?}"
    );

    // Kept (the empty index), then the upstream goes away: still answered.
    let kept = referrers
        .list(&target, &name, &subject(3), None)
        .await
        .unwrap();
    assert_eq!(kept.origin, Origin::Empty);
    upstream.inject(Op::HeadManifest, Fault::connect_refused());
    upstream.inject(Op::Send, Fault::connect_refused());
    let stale = referrers
        .list(&target, &name, &subject(3), Some(SIG))
        .await
        .unwrap();
    assert_eq!(stale.origin, Origin::Empty);
    assert!(manifests(&stale.body).is_empty());
    // Nothing kept for another subject: the upstream's failure.
    let e = referrers
        .list(&target, &name, &subject(4), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Upstream(u) if u.is_unavailable()),
        "{e:?}"
    );
}

#[tokio::test]
async fn acting_as_the_client_nothing_cached_answers() {
    let (_dir, services) = temp_services().await;
    let registry = Arc::new(MemoryRegistry::new("quay.io"));
    let d = registry.put_manifest("team/app", media_type::OCI_INDEX, fallback_index());
    registry.tag("team/app", &index::fallback_tag(&subject(5)), &d);
    let mut target = target_for(registry.clone(), |_| {});
    target.acting_as = Some(registry.clone());
    let name = RepositoryName::parse("team/app").unwrap();
    for round in 1..=2 {
        let r = services
            .referrers
            .list(&target, &name, &subject(5), Some(SBOM))
            .await
            .unwrap();
        assert_eq!(r.origin, Origin::FallbackTag);
        assert_eq!(manifests(&r.body)[0]["artifactType"], SBOM);
        // The API asked each time (its absence not remembered for a
        // client), and the fallback tag checked with the client's HEAD every
        // time (the tag service's own revalidating HEAD came once: the tag
        // was then fresh).
        assert_eq!(registry.calls(Op::Send), round);
        assert_eq!(registry.calls(Op::HeadManifest), round + 1);
    }
    // The client's answers were not kept for anyone else.
    target.acting_as = None;
    services
        .referrers
        .list(&target, &name, &subject(5), None)
        .await
        .unwrap();
    assert_eq!(registry.calls(Op::Send), 3);
}

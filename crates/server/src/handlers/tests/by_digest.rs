//! Prepared answers by digest.

use super::*;

/// A warm by-digest GET is the prepared answer of the first: the same
/// bytes, counted as a manifest hit (no tag hit), no upstream call; a
/// removal from the store (a purge) or a policy reload drops it, and a
/// by-tag answer of the same manifest is a different answer.
#[tokio::test]
async fn a_warm_by_digest_get_is_the_prepared_answer_until_a_removal() {
    use crate::fastpath::{FastPath, ReplyBody};
    let t = two_upstreams().await;
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let config = Digest::sha256_of(&blob(9, 10));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{oci}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":10}},"layers":[]}}"#
    );
    let digest = t.a.put_manifest("team/app", oci, manifest.clone());
    let path: &'static str =
        Box::leak(format!("/v2/team/app/manifests/{digest}?ns=a.test").into_boxed_str());
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let request = || {
        Request::get(path)
            .header("accept", accept)
            .body(ReqBody::Empty)
            .unwrap()
    };
    let counter = |app: &App, line: &str| {
        let text = app.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .map_or(0.0, |n| n.trim().parse::<f64>().unwrap())
    };
    let prepared = "regcache_responses_total{via=\"prepared\"}";
    let manifest_hits = "regcache_cache_lookups_total{kind=\"manifest\",result=\"hit\"}";
    let tag_lookups = |app: &App| {
        counter(
            app,
            "regcache_cache_lookups_total{kind=\"tag\",result=\"hit\"}",
        ) + counter(
            app,
            "regcache_cache_lookups_total{kind=\"tag\",result=\"miss\"}",
        )
    };

    let full = FastPath::respond(&*t.app, request()).await;
    assert_eq!(full.status, StatusCode::OK, "{:?}", full.body);
    let ReplyBody::Bytes(full_body) = &full.body else {
        panic!("the full path answers with bytes: {:?}", full.body);
    };
    assert_eq!(&full_body[..], manifest.as_bytes());
    let mut full_headers = full.headers.clone();
    full_headers.remove(&crate::access_log::X_REQUEST_ID);
    let upstream_calls = t.a.calls(Op::GetManifest) + t.a.calls(Op::HeadManifest);
    let hits = counter(&t.app, manifest_hits);

    let warm = FastPath::respond(&*t.app, request()).await;
    let ReplyBody::Prepared { head, body } = &warm.body else {
        panic!("the second GET is not the prepared answer: {:?}", warm.body);
    };
    assert_eq!(&body[..], manifest.as_bytes());
    assert_eq!(head, &crate::fastpath::head_lines(&full_headers));
    assert_eq!(counter(&t.app, prepared), 1.0);
    assert_eq!(counter(&t.app, manifest_hits), hits + 1.0);
    assert_eq!(tag_lookups(&t.app), 0.0, "no tag involved");
    assert_eq!(
        t.a.calls(Op::GetManifest) + t.a.calls(Op::HeadManifest),
        upstream_calls
    );

    // The tag's answer is its own, even for the same manifest and Accept.
    t.a.tag("team/app", "v1", &digest);
    let by_tag = Request::get("/v2/team/app/manifests/v1?ns=a.test")
        .header("accept", accept)
        .body(ReqBody::Empty)
        .unwrap();
    let by_tag = FastPath::respond(&*t.app, by_tag).await;
    assert!(
        matches!(by_tag.body, ReplyBody::Bytes(_)),
        "{:?}",
        by_tag.body
    );

    // A purge removes the manifest (as the admin API's does: the parsed
    // copy, then the store's): the next GET is the full path's, which
    // fetches it again, then prepared again.
    t.app.services().manifests.forget(&digest);
    assert!(t.app.store().remove(&digest).await.unwrap());
    let purged = FastPath::respond(&*t.app, request()).await;
    assert!(
        matches!(purged.body, ReplyBody::Bytes(_)),
        "a removal must void the answer: {:?}",
        purged.body
    );
    assert!(t.a.calls(Op::GetManifest) > upstream_calls, "fetched again");
    let again = FastPath::respond(&*t.app, request()).await;
    assert!(
        matches!(again.body, ReplyBody::Prepared { .. }),
        "{:?}",
        again.body
    );

    // A reload of the policies drops it too.
    t.app.set_policies(Policies::default());
    let reloaded = FastPath::respond(&*t.app, request()).await;
    assert!(
        matches!(reloaded.body, ReplyBody::Bytes(_)),
        "{:?}",
        reloaded.body
    );
}

//! Unit tests of the handlers, through [`App::handle`] on in-memory
//! registries: two upstreams, where only the second has the blobs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use regcache_formats::Digest;
use regcache_formats::jws::SigningKey;
use regcache_store::{Store, StoreConfig};
use regcache_upstream::mock::{MemoryRegistry, Op};

use super::App;
use crate::policy::Policies;
use crate::request::Upstreams;
use crate::services::test_support::upstream_for;
use crate::web::body::ReqBody;

mod by_digest;

struct TwoUpstreams {
    app: Arc<App>,
    /// Has no blobs.
    a: Arc<MemoryRegistry>,
    /// Has every blob, in `team/app` only.
    b: Arc<MemoryRegistry>,
    _dir: tempfile::TempDir,
}

async fn two_upstreams() -> TwoUpstreams {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    // Small chunks: a fill takes many steps, so waiters really overlap.
    let a = Arc::new(MemoryRegistry::new("a.test").with_chunk_size(4096));
    let b = Arc::new(MemoryRegistry::new("b.test").with_chunk_size(4096));
    let upstreams = Upstreams::new(
        vec![
            upstream_for(a.clone(), |_| {}),
            upstream_for(b.clone(), |_| {}),
        ],
        0,
    );
    let app = App::new(
        store,
        SigningKey::generate(),
        upstreams,
        Policies::default(),
    );
    TwoUpstreams {
        app,
        a,
        b,
        _dir: dir,
    }
}

/// Random-looking bytes, different for every seed.
fn blob(seed: u32, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn get(app: &Arc<App>, uri: &str) -> (StatusCode, Bytes) {
    let req = Request::get(uri).body(ReqBody::Empty).unwrap();
    let resp = app.clone().handle(req).await;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (status, body)
}

fn blob_uri(digest: &Digest, repo: &str, upstream: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}?ns={upstream}")
}

/// The issue-10 bug: a fill is keyed by digest, so a GET through the second
/// upstream that joins a fill started through the first (which lacks the
/// blob) must not get the first one's 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_fails_on_another_route_is_retried_on_this_one() {
    let t = two_upstreams().await;
    let bytes = blob(1, 300_000);
    let digest = t.b.put_blob("team/app", bytes.clone());
    // Through A first, held at A's GET: it leads the fill.
    let gate = t.a.hold(Op::GetBlob);
    let through_a = tokio::spawn({
        let app = t.app.clone();
        let uri = blob_uri(&digest, "team/app", "a.test");
        async move { get(&app, &uri).await }
    });
    gate.until_waiting(1).await;
    // Through B: joins A's fill, which is still waiting for A's answer.
    let through_b: Vec<_> = (0..8)
        .map(|_| {
            let app = t.app.clone();
            let uri = blob_uri(&digest, "team/app", "b.test");
            tokio::spawn(async move { get(&app, &uri).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.release();
    let (status, body) = through_a.await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body:?}");
    assert!(
        String::from_utf8_lossy(&body).contains("BLOB_UNKNOWN"),
        "{body:?}"
    );
    for b in through_b {
        let (status, body) = b.await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(body, bytes);
    }
    assert_eq!(t.a.calls(Op::GetBlob), 1);
    assert_eq!(
        t.b.calls(Op::GetBlob),
        1,
        "B's waiters share one retry fill"
    );
}

/// The issue's must-show, in process: 20 rounds of concurrent cold GETs
/// through both upstreams; every GET through the second gets 200 and the
/// right bytes, every GET through the first a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rounds_of_concurrent_cold_gets_through_both_upstreams() {
    let t = two_upstreams().await;
    for round in 0..20u32 {
        let bytes = blob(100 + round, 64_000 + round as usize * 1000);
        let digest = t.b.put_blob("team/app", bytes.clone());
        let mut tasks = Vec::new();
        for i in 0..12 {
            let upstream = if (i + round) % 2 == 0 {
                "a.test"
            } else {
                "b.test"
            };
            let app = t.app.clone();
            let uri = blob_uri(&digest, "team/app", upstream);
            tasks.push((upstream, tokio::spawn(async move { get(&app, &uri).await })));
        }
        for (upstream, task) in tasks {
            let (status, body) = task.await.unwrap();
            if upstream == "b.test" {
                assert_eq!(status, StatusCode::OK, "round {round}: {body:?}");
                assert_eq!(body, bytes, "round {round}");
            } else {
                // Cached by then (through B), or A's own 404.
                assert!(
                    status == StatusCode::NOT_FOUND || (status == StatusCode::OK && body == bytes),
                    "round {round}: {status} {body:?}"
                );
            }
        }
    }
}

/// Right after a failure through the first upstream, the second one's GET
/// is not answered with that failure (no error is remembered by digest).
#[tokio::test]
async fn a_get_right_after_a_failure_on_another_route_succeeds() {
    let t = two_upstreams().await;
    for seed in 0..5 {
        let bytes = blob(200 + seed, 10_000);
        let digest = t.b.put_blob("team/app", bytes.clone());
        let (status, _) = get(&t.app, &blob_uri(&digest, "team/app", "a.test")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // Same upstream, a repository without the blob: its own 404.
        let (status, _) = get(&t.app, &blob_uri(&digest, "team/other", "b.test")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = get(&t.app, &blob_uri(&digest, "team/app", "b.test")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, bytes);
    }
}

#[tokio::test]
async fn invalid_tags_answer_404_manifest_unknown_without_asking_the_upstream() {
    let t = two_upstreams().await;
    for method in ["GET", "HEAD"] {
        let req = Request::builder()
            .method(method)
            .uri("/v2/team/app/manifests/.INVALID_MANIFEST_NAME")
            .body(ReqBody::Empty)
            .unwrap();
        let resp = t.app.clone().handle(req).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if method == "GET" {
            assert!(
                String::from_utf8_lossy(&body).contains("MANIFEST_UNKNOWN"),
                "{body:?}"
            );
        }
    }
    let (status, body) = get(&t.app, "/v2/team/app/manifests/sha256:abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("DIGEST_INVALID"));
    assert_eq!(t.a.calls(Op::HeadManifest) + t.a.calls(Op::GetManifest), 0);
}

/// Writes and the catalog follow each upstream's keys: `a` has them off (the
/// default), `b` on with regcache's credentials. A refused request never
/// reaches its upstream; a manifest declaring more than the limit is refused
/// before its body is read.
#[tokio::test]
async fn writes_and_catalog_follow_each_upstreams_keys() {
    use crate::writes::Forwarding;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let a = Arc::new(MemoryRegistry::new("a.test"));
    let b = Arc::new(MemoryRegistry::new("b.test"));
    let upstreams = Upstreams::new(
        vec![
            upstream_for(a.clone(), |_| {}),
            upstream_for(b.clone(), |u| {
                u.writes = Forwarding::StoredCredentials;
                u.catalog = Forwarding::StoredCredentials;
            }),
        ],
        0,
    );
    let app = App::new(
        store,
        SigningKey::generate(),
        upstreams,
        Policies::default(),
    );
    let send = |method: &str, uri: &str, len: Option<u64>| {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(len) = len {
            req = req.header("content-length", len);
        }
        let app = app.clone();
        let req = req.body(ReqBody::Empty).unwrap();
        async move {
            let resp = app.handle(req).await;
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    for (method, path) in [
        ("POST", "/v2/team/app/blobs/uploads/"),
        ("PATCH", "/v2/team/app/blobs/uploads/u-1"),
        ("PUT", "/v2/team/app/manifests/1"),
        ("DELETE", "/v2/team/app/manifests/1"),
        (
            "DELETE",
            "/v2/team/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ] {
        let (status, body) = send(method, &format!("{path}?ns=a.test"), None).await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        assert!(
            body.contains("UNSUPPORTED") && body.contains("writes = \\\"client-credentials\\\""),
            "{body}"
        );
    }
    let (status, body) = send("GET", "/v2/_catalog?ns=a.test", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(a.calls(Op::Send), 0, "nothing refused reached a");

    let (status, body) = send("POST", "/v2/team/app/blobs/uploads/?ns=b.test", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = send("GET", "/v2/_catalog?ns=b.test", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(b.calls(Op::Send), 2);
    let (status, body) = send("PUT", "/v2/team/app/manifests/1?ns=b.test", Some(10 << 30)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body.contains("MANIFEST_INVALID") && body.contains("10737418240"),
        "{body}"
    );
    assert_eq!(
        b.calls(Op::Send),
        2,
        "the oversize manifest never went upstream"
    );
}

/// A warm by-tag GET through the fast path is answered from the prepared
/// answer: the same bytes as the full path's, counted as a tag and a
/// manifest hit, no upstream call; a tag index change, other `Accept`
/// values or `If-None-Match` go the full path.
#[tokio::test]
async fn a_warm_by_tag_get_is_the_prepared_answer_of_the_first() {
    use crate::fastpath::{FastPath, ReplyBody};
    let t = two_upstreams().await;
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let manifest = |seed: u32| {
        let config = Digest::sha256_of(&blob(seed, 10));
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{oci}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":10}},"layers":[]}}"#
        )
    };
    let first = manifest(1);
    let digest = t.a.put_manifest("team/app", oci, first.clone());
    t.a.tag("team/app", "v1", &digest);
    let request = |accept: &'static str, extra: Option<(&'static str, &'static str)>| {
        let mut b = Request::get("/v2/team/app/manifests/v1?ns=a.test").header("accept", accept);
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        b.body(ReqBody::Empty).unwrap()
    };
    let accept =
        "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
    let via = |app: &App, v: &str| {
        let text = app.metrics.encode();
        let line = format!("regcache_responses_total{{via=\"{v}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0.0, |n| n.parse::<f64>().unwrap())
    };

    let full = FastPath::respond(&*t.app, request(accept, None)).await;
    assert_eq!(full.status, StatusCode::OK);
    let ReplyBody::Bytes(full_body) = &full.body else {
        panic!("the full path answers with bytes: {:?}", full.body);
    };
    assert_eq!(&full_body[..], first.as_bytes());
    let mut full_headers = full.headers.clone();
    full_headers.remove(&crate::access_log::X_REQUEST_ID);
    let upstream_calls = t.a.calls(Op::GetManifest) + t.a.calls(Op::HeadManifest);

    let warm = FastPath::respond(&*t.app, request(accept, None)).await;
    assert_eq!(warm.status, StatusCode::OK);
    let ReplyBody::Prepared { head, body } = &warm.body else {
        panic!("the second GET is not the prepared answer: {:?}", warm.body);
    };
    assert_eq!(&body[..], first.as_bytes());
    assert_eq!(head, &crate::fastpath::head_lines(&full_headers));
    assert!(warm.headers.contains_key(&crate::access_log::X_REQUEST_ID));
    assert_eq!(via(&t.app, "prepared"), 1.0);
    let text = t.app.metrics.encode();
    assert!(
        text.contains("regcache_cache_lookups_total{kind=\"tag\",result=\"hit\"} 1"),
        "{text}"
    );
    assert_eq!(
        t.a.calls(Op::GetManifest) + t.a.calls(Op::HeadManifest),
        upstream_calls
    );

    // HEAD shares it (the writer sends its head only).
    let head_req = Request::head("/v2/team/app/manifests/v1?ns=a.test")
        .header("accept", accept)
        .body(ReqBody::Empty)
        .unwrap();
    assert!(matches!(
        FastPath::respond(&*t.app, head_req).await.body,
        ReplyBody::Prepared { .. }
    ));

    // Other Accept values, or a conditional request: the full path.
    let other = FastPath::respond(
        &*t.app,
        request("application/vnd.oci.image.manifest.v1+json", None),
    )
    .await;
    assert!(
        matches!(other.body, ReplyBody::Bytes(_)),
        "{:?}",
        other.body
    );
    let etag = format!("\"{digest}\"");
    let etag: &'static str = Box::leak(etag.into_boxed_str());
    let conditional =
        FastPath::respond(&*t.app, request(accept, Some(("if-none-match", etag)))).await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);

    // The tag moves (a revalidation would put the new record): the next
    // GET is the full path's answer of the new manifest, then prepared again.
    let second = manifest(2);
    let moved = t.a.put_manifest("team/app", oci, second.clone());
    t.a.tag("team/app", "v1", &moved);
    let tags = t.app.store().tags();
    let mut record = tags.get("a.test", "team/app", "v1").unwrap();
    record.digest = moved.clone();
    record.size = second.len() as u64;
    tags.put("a.test", "team/app", "v1", record).unwrap();
    let after = FastPath::respond(&*t.app, request(accept, None)).await;
    let ReplyBody::Bytes(after_body) = &after.body else {
        panic!(
            "a changed tag index must not be answered from the old answer: {:?}",
            after.body
        );
    };
    assert_eq!(&after_body[..], second.as_bytes());
    let again = FastPath::respond(&*t.app, request(accept, None)).await;
    let ReplyBody::Prepared { body, .. } = &again.body else {
        panic!("{:?}", again.body);
    };
    assert_eq!(&body[..], second.as_bytes());

    // A reload of the policies (even to the same rules) drops it.
    t.app.set_policies(Policies::default());
    let reloaded = FastPath::respond(&*t.app, request(accept, None)).await;
    assert!(
        matches!(reloaded.body, ReplyBody::Bytes(_)),
        "{:?}",
        reloaded.body
    );
    let after_reload = FastPath::respond(&*t.app, request(accept, None)).await;
    assert!(matches!(after_reload.body, ReplyBody::Prepared { .. }));
}

/// A rendering regcache keeps (here the Docker twin of an OCI image, for a
/// client without the OCI types) is prepared like a stored answer: the
/// second GET is the same bytes, counted as a bridge hit too.
#[tokio::test]
async fn a_warm_by_tag_rendering_is_prepared_with_its_own_digest_and_hit() {
    use crate::fastpath::{FastPath, ReplyBody};
    let t = two_upstreams().await;
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let config = t.a.put_blob("team/app", Bytes::from_static(b"{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}"));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{oci}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":77}},"layers":[]}}"#
    );
    let digest = t.a.put_manifest("team/app", oci, manifest);
    t.a.tag("team/app", "v1", &digest);
    let docker17 = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/json";
    let request = || {
        Request::get("/v2/team/app/manifests/v1?ns=a.test")
            .header("accept", docker17)
            .body(ReqBody::Empty)
            .unwrap()
    };
    let full = FastPath::respond(&*t.app, request()).await;
    assert_eq!(full.status, StatusCode::OK, "{:?}", full.body);
    let ReplyBody::Bytes(full_body) = &full.body else {
        panic!("the full path answers with bytes: {:?}", full.body);
    };
    let twin = full.headers.get("docker-content-digest").unwrap().clone();
    assert_ne!(
        twin.to_str().unwrap(),
        digest.as_str(),
        "the twin has its own digest"
    );
    assert_eq!(
        full.headers.get("content-type").unwrap(),
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let mut full_headers = full.headers.clone();
    full_headers.remove(&crate::access_log::X_REQUEST_ID);
    let bridge_hits = |app: &App| {
        let text = app.metrics.encode();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("regcache_cache_lookups_total{kind=\"bridge\",result=\"hit\"} ")
            })
            .map_or(0.0, |n| n.parse::<f64>().unwrap())
    };
    let before = bridge_hits(&t.app);
    let warm = FastPath::respond(&*t.app, request()).await;
    let ReplyBody::Prepared { head, body } = &warm.body else {
        panic!("the second GET is not the prepared answer: {:?}", warm.body);
    };
    assert_eq!(body, full_body);
    assert_eq!(head, &crate::fastpath::head_lines(&full_headers));
    assert_eq!(bridge_hits(&t.app), before + 1.0);
}

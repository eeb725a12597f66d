//! `mock::MemoryRegistry`: typed calls, the raw API, counters and gates,
//! and composition with `FailureUpstream`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use regcache_formats::media_type::{OCI_INDEX, OCI_MANIFEST, SCHEMA1_SIGNED, SCHEMA2};
use regcache_formats::{Digest, ErrorCode};
use regcache_upstream::mock::{FailureUpstream, Fault, MemoryRegistry, Op};
use regcache_upstream::{
    BlobBody, RawRequest, RawResponse, RequestBody, UpstreamApi, UpstreamError,
};

const BLOB: &[u8] = b"0123456789abcdef";

fn code(e: &UpstreamError) -> Option<ErrorCode> {
    e.envelope()
        .and_then(|env| env.errors.first())
        .map(|e| e.code)
}

async fn chunks(body: BlobBody) -> Vec<Bytes> {
    body.stream.map(|c| c.unwrap()).collect().await
}

async fn send(reg: &MemoryRegistry, method: Method, pq: &str, body: &[u8]) -> RawResponse {
    let req = RawRequest::new(method, pq).body(Bytes::copy_from_slice(body));
    reg.send(req).await.unwrap()
}

fn header<'a>(resp: &'a RawResponse, name: &str) -> &'a str {
    resp.headers.get(name).unwrap().to_str().unwrap()
}

async fn json(resp: RawResponse) -> serde_json::Value {
    serde_json::from_slice(&resp.bytes(1 << 20).await.unwrap()).unwrap()
}

#[tokio::test]
async fn manifests_by_tag_and_digest_with_moving_tags() {
    let reg = MemoryRegistry::new("quay.io");
    let one = reg.put_manifest("team/app", SCHEMA2, &b"{\"one\":1}"[..]);
    let two = reg.put_manifest("team/app", OCI_MANIFEST, &b"{\"two\":22}"[..]);
    assert_eq!(one, Digest::sha256_of(b"{\"one\":1}"));
    assert_eq!(reg.tag("team/app", "v1", &one), None);

    let head = reg
        .head_manifest("team/app", "v1", &[SCHEMA2])
        .await
        .unwrap();
    assert_eq!(
        (head.digest, head.media_type.as_deref(), head.size),
        (Some(one.clone()), Some(SCHEMA2), Some(9))
    );
    // The stored type comes back even when Accept does not list it.
    let body = reg
        .get_manifest("team/app", two.as_str(), &[OCI_INDEX])
        .await
        .unwrap();
    assert_eq!(&body.bytes[..], b"{\"two\":22}");
    assert_eq!(body.content_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!(body.digest_header, Some(two.clone()));

    assert_eq!(reg.tag("team/app", "v1", &two), Some(one.clone()), "moved");
    let head = reg.head_manifest("team/app", "v1", &[]).await.unwrap();
    assert_eq!(head.digest, Some(two.clone()));
    assert_eq!(reg.untag("team/app", "v1"), Some(two));

    // Missing: GET carries the envelope, HEAD (no body) only the status.
    let err = reg.get_manifest("team/app", "v1", &[]).await.unwrap_err();
    assert_eq!(err.registry_status(), Some(404));
    assert_eq!(code(&err), Some(ErrorCode::ManifestUnknown));
    assert_eq!(err.upstream(), "quay.io");
    let err = reg.head_manifest("nope/x", "v1", &[]).await.unwrap_err();
    assert!(err.is_not_found() && err.envelope().is_none());
    let err = reg.get_manifest("Bad Name", "v1", &[]).await.unwrap_err();
    assert!(matches!(err, UpstreamError::InvalidRequest { .. }));

    // Signed schema 1: the digest is the caller's.
    let payload_digest = Digest::sha256_of(b"canonical payload");
    reg.put_manifest_with_digest(
        "team/app",
        SCHEMA1_SIGNED,
        &b"{jws}"[..],
        payload_digest.clone(),
    );
    let body = reg.manifest("team/app", payload_digest.as_str()).unwrap();
    assert_eq!(&body.bytes[..], b"{jws}");
    assert!(reg.delete_manifest("team/app", &payload_digest));
    assert!(!reg.delete_manifest("team/app", &payload_digest));
    assert_eq!(
        reg.calls(Op::GetManifest),
        3,
        "calls, invalid ones too; not inspection"
    );
    assert_eq!(reg.stats().count("GET", 404), 1);
    assert_eq!(reg.stats().count("HEAD", 200), 2);
}

#[tokio::test]
async fn blobs_stream_in_chunks_and_honour_ranges() {
    let reg = MemoryRegistry::new("hub");
    let digest = reg.put_blob("a", BLOB);
    let head = reg.head_blob("a", &digest).await.unwrap();
    assert_eq!((head.size, head.digest_header), (16, Some(digest.clone())));

    let body = reg.get_blob("a", &digest, None).await.unwrap();
    assert_eq!((body.status, body.len), (200, Some(16)));
    let parts = chunks(body).await;
    assert_eq!(parts.len(), 3, "a third at a time by default");
    assert_eq!(parts.concat(), BLOB);

    let small = MemoryRegistry::new("hub").with_chunk_size(5);
    let digest = small.put_blob("a", BLOB);
    let parts = chunks(small.get_blob("a", &digest, None).await.unwrap()).await;
    assert_eq!(
        parts.iter().map(Bytes::len).collect::<Vec<_>>(),
        [5, 5, 5, 1]
    );

    for (range, want, content_range) in [
        ((6, Some(9)), &BLOB[6..=9], "bytes 6-9/16"),
        ((6, None), &BLOB[6..], "bytes 6-15/16"),
        ((10, Some(99)), &BLOB[10..], "bytes 10-15/16"),
    ] {
        let body = small.get_blob("a", &digest, Some(range)).await.unwrap();
        assert_eq!(body.status, 206);
        assert_eq!(body.content_range.as_deref(), Some(content_range));
        assert_eq!(body.len, Some(want.len() as u64));
        assert_eq!(chunks(body).await.concat(), want);
    }
    let err = small
        .get_blob("a", &digest, Some((16, None)))
        .await
        .unwrap_err();
    assert_eq!(err.registry_status(), Some(416));
    let err = small
        .get_blob("a", &digest, Some((5, Some(4))))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::InvalidRequest { .. }));

    let ignoring = MemoryRegistry::new("cdn").ignoring_ranges();
    let digest = ignoring.put_blob("a", BLOB);
    let body = ignoring
        .get_blob("a", &digest, Some((6, None)))
        .await
        .unwrap();
    assert_eq!((body.status, body.content_range.as_deref()), (200, None));
    assert_eq!(chunks(body).await.concat(), BLOB);

    assert!(ignoring.delete_blob("a", &digest));
    let err = ignoring.get_blob("a", &digest, None).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::BlobUnknown));
    let err = ignoring.head_blob("a", &digest).await.unwrap_err();
    assert!(err.is_not_found() && err.envelope().is_none());
}

#[tokio::test]
async fn chunked_upload_then_manifest_push_and_delete() {
    let reg = MemoryRegistry::new("local");
    let resp = send(&reg, Method::POST, "/v2/team/app/blobs/uploads/", b"").await;
    assert_eq!(resp.status, StatusCode::ACCEPTED);
    let location = header(&resp, "location").to_owned();
    assert!(
        location.starts_with("/v2/team/app/blobs/uploads/"),
        "{location}"
    );
    let resp = send(&reg, Method::PATCH, &location, &BLOB[..10]).await;
    assert_eq!((resp.status.as_u16(), header(&resp, "range")), (202, "0-9"));
    // A streamed chunk is read whole too.
    let stream =
        futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(&BLOB[10..]))]);
    let req = RawRequest::new(Method::PATCH, &location).body(RequestBody::stream(stream));
    assert_eq!(header(&reg.send(req).await.unwrap(), "range"), "0-15");

    let (wrong, complete) = (Digest::sha256_of(b"other"), format!("{location}?digest="));
    let resp = send(&reg, Method::PUT, &format!("{complete}{wrong}"), b"").await;
    let err = resp.error_for_status().await.unwrap_err();
    assert_eq!(
        (err.registry_status(), code(&err)),
        (Some(400), Some(ErrorCode::DigestInvalid))
    );
    let digest = Digest::sha256_of(BLOB);
    let resp = send(&reg, Method::PUT, &format!("{complete}{digest}"), b"").await;
    assert_eq!(resp.status, StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), digest.as_str());
    assert_eq!(
        header(&resp, "location"),
        format!("/v2/team/app/blobs/{digest}")
    );
    assert_eq!(reg.blob("team/app", &digest).as_deref(), Some(BLOB));
    let resp = send(&reg, Method::PATCH, &location, b"x").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND, "the session is gone");

    // Monolithic upload and cross-repository mount.
    let other = Digest::sha256_of(b"mono");
    let pq = format!("/v2/other/blobs/uploads/?digest={other}");
    assert_eq!(send(&reg, Method::POST, &pq, b"mono").await.status, 201);
    let pq = format!("/v2/team/app/blobs/uploads/?mount={other}&from=other");
    assert_eq!(send(&reg, Method::POST, &pq, b"").await.status, 201);
    assert_eq!(reg.blob("team/app", &other).as_deref(), Some(&b"mono"[..]));

    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static(OCI_MANIFEST));
    let req = RawRequest::new(Method::PUT, "/v2/team/app/manifests/v1")
        .headers(headers.clone())
        .body(Bytes::from_static(b"{\"m\":1}"));
    let resp = reg.send(req).await.unwrap();
    let manifest = Digest::sha256_of(b"{\"m\":1}");
    assert_eq!(resp.status, StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), manifest.as_str());
    let head = reg.head_manifest("team/app", "v1", &[]).await.unwrap();
    assert_eq!(
        (head.digest, head.media_type.as_deref()),
        (Some(manifest.clone()), Some(OCI_MANIFEST))
    );
    let req = RawRequest::new(Method::PUT, format!("/v2/team/app/manifests/{wrong}"))
        .headers(headers)
        .body(Bytes::from_static(b"{\"m\":1}"));
    assert_eq!(reg.send(req).await.unwrap().status, 400);

    let pq = format!("/v2/team/app/manifests/{manifest}");
    assert_eq!(send(&reg, Method::DELETE, &pq, b"").await.status, 202);
    assert!(
        reg.tags("team/app").is_empty(),
        "deleting a manifest drops its tags"
    );
    assert_eq!(send(&reg, Method::DELETE, &pq, b"").await.status, 404);
    assert_eq!(reg.calls(Op::Send), 12);
    assert_eq!(reg.stats().count("PATCH", 202), 2);
}

#[tokio::test]
async fn tag_lists_catalog_and_unrouted_requests() {
    let reg = MemoryRegistry::new("local");
    let d = reg.put_manifest("b/app", SCHEMA2, &b"{}"[..]);
    for tag in ["v2", "latest", "v1"] {
        reg.tag("b/app", tag, &d);
    }
    reg.put_blob("a", BLOB);

    let resp = send(&reg, Method::GET, "/v2/b/app/tags/list", b"").await;
    assert_eq!(
        json(resp).await,
        serde_json::json!({"name": "b/app", "tags": ["latest", "v1", "v2"]})
    );
    let resp = send(&reg, Method::GET, "/v2/b/app/tags/list?n=2", b"").await;
    assert_eq!(
        header(&resp, "link"),
        "</v2/b/app/tags/list?last=v1&n=2>; rel=\"next\""
    );
    assert_eq!(
        json(resp).await["tags"],
        serde_json::json!(["latest", "v1"])
    );
    let resp = send(&reg, Method::GET, "/v2/b/app/tags/list?last=v1&n=2", b"").await;
    assert!(resp.headers.get("link").is_none());
    assert_eq!(json(resp).await["tags"], serde_json::json!(["v2"]));

    let resp = send(&reg, Method::GET, "/v2/_catalog", b"").await;
    assert_eq!(
        json(resp).await,
        serde_json::json!({"repositories": ["a", "b/app"]})
    );

    for (method, pq, status, want) in [
        (
            Method::GET,
            "/v2/nope/tags/list",
            404,
            ErrorCode::NameUnknown,
        ),
        (
            Method::GET,
            "/v2/b/app/manifests/nope",
            404,
            ErrorCode::ManifestUnknown,
        ),
        (
            Method::POST,
            "/v2/b/app/tags/list",
            405,
            ErrorCode::Unsupported,
        ),
        (
            Method::GET,
            "/v2/b/app/whatever",
            404,
            ErrorCode::Unsupported,
        ),
        (
            Method::GET,
            "/v2/Bad/tags/list",
            400,
            ErrorCode::NameInvalid,
        ),
    ] {
        let resp = send(&reg, method, pq, b"").await;
        assert_eq!(resp.status.as_u16(), status, "{pq}");
        let err = resp.error_for_status().await.unwrap_err();
        assert_eq!(code(&err), Some(want), "{pq}");
    }
    let resp = send(&reg, Method::HEAD, &format!("/v2/b/app/manifests/{d}"), b"").await;
    assert_eq!((resp.status.as_u16(), resp.content_length), (200, Some(2)));
    assert!(resp.bytes(10).await.unwrap().is_empty(), "HEAD has no body");
    let err = reg
        .send(RawRequest::new(Method::GET, "/other"))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::InvalidRequest { .. }));
}

#[tokio::test]
async fn a_gate_holds_calls_until_released() {
    let reg = Arc::new(MemoryRegistry::new("quay.io"));
    let d = reg.put_manifest("a", SCHEMA2, &b"{}"[..]);
    reg.tag("a", "v1", &d);
    let gate = reg.hold(Op::HeadManifest);
    let spawn_head = || {
        let reg = reg.clone();
        tokio::spawn(async move { reg.head_manifest("a", "v1", &[]).await })
    };
    let first = spawn_head();
    let second = spawn_head();
    tokio::time::timeout(Duration::from_secs(5), gate.until_waiting(2))
        .await
        .unwrap();
    assert_eq!(reg.calls(Op::HeadManifest), 2, "counted while waiting");
    reg.get_manifest("a", "v1", &[])
        .await
        .expect("other ops pass");

    gate.let_through(1);
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        while gate.waiting() != 1 {
            tokio::task::yield_now().await;
        }
    });
    done.await.unwrap();
    assert!(!(first.is_finished() && second.is_finished()));

    // A call dropped while it waits leaves the gate.
    let dropped = spawn_head();
    gate.until_waiting(2).await;
    dropped.abort();
    while gate.waiting() != 1 {
        tokio::task::yield_now().await;
    }

    gate.release();
    for task in [first, second] {
        assert_eq!(task.await.unwrap().unwrap().digest, Some(d.clone()));
    }
    reg.head_manifest("a", "v1", &[])
        .await
        .expect("released for good");
    assert_eq!(reg.calls(Op::HeadManifest), 4);
}

#[tokio::test]
async fn composes_with_failure_upstream() {
    let reg = MemoryRegistry::new("quay.io").with_chunk_size(4);
    let digest = reg.put_blob("a", BLOB);
    let up: Arc<dyn UpstreamApi> = {
        let f = FailureUpstream::new(reg);
        f.inject_times(Op::GetBlob, Fault::unavailable(), 1);
        f.inject_times(Op::GetBlob, Fault::TruncateBody { after: 6 }, 1);
        Arc::new(f)
    };
    let err = up.get_blob("a", &digest, None).await.unwrap_err();
    assert_eq!(err.upstream(), "quay.io", "the inner registry's name");
    let mut stream = up.get_blob("a", &digest, None).await.unwrap().stream;
    assert_eq!(&stream.next().await.unwrap().unwrap()[..], &BLOB[..4]);
    assert_eq!(&stream.next().await.unwrap().unwrap()[..], &BLOB[4..6]);
    assert!(stream.next().await.unwrap().unwrap_err().is_unavailable());
    let body = up.get_blob("a", &digest, None).await.unwrap();
    assert_eq!(chunks(body).await.concat(), BLOB);
    assert_eq!(
        up.stats().count("GET", 200),
        2,
        "the faulted call never reached it"
    );

    // FailureUpstream holds calls too, and counts them before they pass.
    let f = Arc::new(FailureUpstream::new(MemoryRegistry::new("m")));
    let gate = f.hold(Op::Ping);
    let task = tokio::spawn({
        let f = f.clone();
        async move { f.ping().await }
    });
    gate.until_waiting(1).await;
    assert_eq!((f.calls(Op::Ping), f.inner().calls(Op::Ping)), (1, 0));
    drop(gate);
    task.await.unwrap().unwrap();
    assert_eq!(f.inner().calls(Op::Ping), 1);
}

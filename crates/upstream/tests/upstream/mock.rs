//! `FailureUpstream` (feature `mock`) over the real client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::Method;
use regcache_formats::ErrorCode;
use regcache_upstream::{FailureUpstream, Fault, Op, RawRequest, UpstreamApi, UpstreamClient};

use crate::support::*;

const BLOB: &[u8] = b"0123456789abcdef";

async fn registry() -> TestServer {
    TestServer::start(|req| async move {
        if req.path().contains("/blobs/") {
            return reply(200, &[], Bytes::from_static(BLOB));
        }
        if req.path().contains("/manifests/") {
            return reply(200, &[("content-type", SCHEMA2)], MANIFEST);
        }
        json(200, "{}")
    })
    .await
}

async fn collect(up: &dyn UpstreamApi) -> Result<Vec<u8>, regcache_upstream::UpstreamError> {
    let body = up.get_blob("a", &sha256(BLOB), None).await?;
    let mut out = Vec::new();
    let mut s = body.stream;
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[tokio::test]
async fn injects_errors_a_number_of_times() {
    let server = registry().await;
    let up = FailureUpstream::new(UpstreamClient::new(config(server.url())).unwrap());
    up.inject_times(Op::HeadManifest, Fault::unavailable(), 2);
    for _ in 0..2 {
        let err = up.head_manifest("a", "latest", &[]).await.unwrap_err();
        assert!(err.is_unavailable());
        assert_eq!(err.upstream(), "test", "name filled in");
    }
    up.head_manifest("a", "latest", &[]).await.unwrap();
    assert_eq!(up.calls(Op::HeadManifest), 3);
    assert_eq!(server.total(), 1, "faulted calls never reach the upstream");

    up.inject_for_repo(
        Op::GetManifest,
        "b",
        Fault::status(404, ErrorCode::ManifestUnknown),
        None,
    );
    up.get_manifest("a", "latest", &[]).await.unwrap();
    let err = up.get_manifest("b", "latest", &[]).await.unwrap_err();
    assert!(err.is_not_found());
    up.inject(Op::Ping, Fault::connect_refused());
    assert_eq!(up.ping().await.unwrap_err().status_hint(), 502);
    up.clear();
    up.ping().await.unwrap();
}

#[tokio::test]
async fn truncates_and_corrupts_bodies() {
    let server = registry().await;
    let up: Arc<dyn UpstreamApi> = {
        let f = FailureUpstream::new(UpstreamClient::new(config(server.url())).unwrap());
        f.inject_times(Op::GetBlob, Fault::TruncateBody { after: 5 }, 1);
        f.inject_times(Op::GetBlob, Fault::CorruptBody { offset: 3 }, 1);
        Arc::new(f)
    };
    let err = collect(up.as_ref()).await.unwrap_err();
    assert!(err.is_unavailable());
    let corrupted = collect(up.as_ref()).await.unwrap();
    assert_eq!(corrupted.len(), BLOB.len());
    assert_ne!(corrupted, BLOB);
    assert_eq!(collect(up.as_ref()).await.unwrap(), BLOB);
}

#[tokio::test]
async fn delays_and_send_faults() {
    let server = registry().await;
    let up = FailureUpstream::new(UpstreamClient::new(config(server.url())).unwrap());
    up.inject_times(Op::Send, Fault::Delay(Duration::from_millis(150)), 1);
    up.inject_for_repo(Op::Send, "x", Fault::timeout(), Some(1));
    let started = Instant::now();
    let resp = up
        .send(RawRequest::new(Method::GET, "/v2/a/tags/list"))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(resp.status, 200);
    let err = up
        .send(RawRequest::new(Method::GET, "/v2/x/tags/list"))
        .await
        .unwrap_err();
    assert_eq!(err.status_hint(), 504);
    assert_eq!(up.stats().count("GET", 200), 1);
}

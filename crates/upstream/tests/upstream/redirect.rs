//! Redirects: followed by hand, `Authorization` only on the upstream's own
//! origin.

use bytes::Bytes;
use futures_util::StreamExt;
use regcache_upstream::{Credentials, UpstreamClient, UpstreamError};

use crate::support::*;

const BLOB: &[u8] = b"0123456789abcdef";

/// A "CDN" on its own port serving `BLOB` (honouring `bytes=N-`).
async fn cdn() -> TestServer {
    TestServer::start(|req| async move {
        if let Some(start) = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|s| s.parse::<usize>().ok())
        {
            let range = format!("bytes {start}-{}/{}", BLOB.len() - 1, BLOB.len());
            return reply(
                206,
                &[("content-range", range.as_str())],
                Bytes::from_static(&BLOB[start..]),
            );
        }
        reply(
            200,
            &[("content-type", "application/octet-stream")],
            Bytes::from_static(BLOB),
        )
    })
    .await
}

/// A Basic-auth registry whose blob endpoints redirect to `target`.
async fn redirecting_registry(target: String) -> TestServer {
    let auth = "Basic dXNlcjpwYXNz"; // user:pass
    TestServer::start(move |req| {
        let target = target.clone();
        async move {
            if req.authorization() != Some(auth) {
                return reply(401, &[("www-authenticate", "Basic realm=\"r\"")], "");
            }
            if req.path().contains("/blobs/") {
                return reply(307, &[("location", target.as_str())], "");
            }
            if req.path() == "/local/blob" {
                return reply(200, &[], Bytes::from_static(BLOB));
            }
            empty(404)
        }
    })
    .await
}

fn digest() -> regcache_formats::Digest {
    sha256(BLOB)
}

#[tokio::test]
async fn redirect_to_another_origin_drops_authorization() {
    let cdn = cdn().await;
    let target = format!("{}blobs/x?sig=SIGNED-QUERY", cdn.url());
    let registry = redirecting_registry(target).await;
    let up = UpstreamClient::new(
        config(registry.url()).with_credentials(Credentials::new("user", "pass")),
    )
    .unwrap();

    let body = up.get_blob("lib/app", &digest(), None).await.unwrap();
    assert_eq!(body.status, 200);
    assert_eq!(body.len, Some(BLOB.len() as u64));
    let bytes: Vec<Bytes> = body.stream.map(|c| c.unwrap()).collect().await;
    assert_eq!(bytes.concat(), BLOB);

    let range = up
        .get_blob("lib/app", &digest(), Some((6, None)))
        .await
        .unwrap();
    assert_eq!(range.status, 206);
    assert_eq!(range.content_range.as_deref(), Some("bytes 6-15/16"));
    assert_eq!(range.len, Some(10));

    let head = up.head_blob("lib/app", &digest()).await.unwrap();
    assert_eq!(head.size, BLOB.len() as u64);

    let reg = registry.requests();
    assert!(
        reg.iter()
            .any(|r| r.authorization() == Some("Basic dXNlcjpwYXNz"))
    );
    let seen = cdn.requests();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(r.authorization(), None, "CDN saw Authorization: {r:?}");
        assert_eq!(r.query(), "sig=SIGNED-QUERY");
    }
    assert_eq!(
        seen[1].header("range"),
        Some("bytes=6-"),
        "Range follows the redirect"
    );
    let stats = up.stats();
    assert_eq!(stats.count("GET", 307), 2);
    assert_eq!(stats.count("HEAD", 307), 1);
}

#[tokio::test]
async fn same_origin_redirect_keeps_authorization() {
    // The registry redirects to a path on itself.
    let registry = TestServer::start(|req| async move {
        if req.authorization() != Some("Basic dXNlcjpwYXNz") {
            return reply(401, &[("www-authenticate", "Basic realm=\"r\"")], "");
        }
        if req.path().contains("/blobs/") {
            return reply(302, &[("location", "/local/blob")], "");
        }
        reply(200, &[], Bytes::from_static(BLOB))
    })
    .await;
    let up = UpstreamClient::new(
        config(registry.url()).with_credentials(Credentials::new("user", "pass")),
    )
    .unwrap();
    let body = up.get_blob("a", &digest(), None).await.unwrap();
    let bytes: Vec<Bytes> = body.stream.map(|c| c.unwrap()).collect().await;
    assert_eq!(bytes.concat(), BLOB);
    let last = registry.requests().pop().unwrap();
    assert_eq!(last.path(), "/local/blob");
    assert_eq!(last.authorization(), Some("Basic dXNlcjpwYXNz"));
}

#[tokio::test]
async fn redirect_loops_are_bounded() {
    let registry =
        TestServer::start(|_req| async { reply(302, &[("location", "/v2/a/blobs/again")], "") })
            .await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();
    let err = up.head_blob("a", &digest()).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Redirect { .. }), "{err:?}");
    assert_eq!(err.status_hint(), 502);
    assert_eq!(registry.total(), 6, "first request plus 5 hops");
}

#[tokio::test]
async fn redirect_without_location_is_an_error() {
    let registry = TestServer::start(|_req| async { empty(307) }).await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();
    let err = up.get_blob("a", &digest(), None).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Redirect { .. }), "{err:?}");
}

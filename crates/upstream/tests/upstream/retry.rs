//! Retry counts, backoff limits and timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::Method;
use regcache_upstream::{RawRequest, RetryConfig, TimeoutPhase, UpstreamClient, UpstreamError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// A server that answers `status` (with `headers`) `failures` times, then
/// serves the manifest.
async fn flaky(
    failures: usize,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
) -> TestServer {
    let n = Arc::new(AtomicUsize::new(0));
    TestServer::start(move |_req| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        async move {
            if i < failures {
                return reply(
                    status,
                    headers,
                    r#"{"errors":[{"code":"UNAVAILABLE","message":"later"}]}"#,
                );
            }
            reply(200, &[("content-type", SCHEMA2)], MANIFEST)
        }
    })
    .await
}

#[tokio::test]
async fn retries_503_until_success() {
    let server = flaky(2, 503, &[]).await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    let m = up.get_manifest("a", "latest", &[]).await.unwrap();
    assert_eq!(m.bytes, Bytes::from(MANIFEST));
    assert_eq!(server.total(), 3);
    let stats = up.stats();
    assert_eq!(stats.retries, 2);
    assert_eq!(stats.count("GET", 503), 2);
    assert_eq!(stats.count("GET", 200), 1);
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let server = flaky(usize::MAX, 503, &[]).await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    let err = up.get_manifest("a", "latest", &[]).await.unwrap_err();
    assert_eq!(server.total(), 3, "max_attempts = 3");
    assert_eq!(err.registry_status(), Some(503));
    assert!(err.is_unavailable());
    assert_eq!(
        err.envelope().unwrap().errors[0].code,
        regcache_formats::ErrorCode::Unavailable
    );

    let mut c = config(server.url());
    c.retry = RetryConfig::none();
    let up = UpstreamClient::new(c).unwrap();
    up.head_manifest("a", "latest", &[]).await.unwrap_err();
    assert_eq!(server.total(), 4, "no retries");
}

#[tokio::test]
async fn honours_small_retry_after_on_429() {
    let server = flaky(1, 429, &[("retry-after", "1")]).await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    let started = Instant::now();
    up.head_manifest("a", "latest", &[]).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited Retry-After"
    );
    assert_eq!(server.total(), 2);
}

#[tokio::test]
async fn long_retry_after_is_relayed_not_waited() {
    let server = flaky(usize::MAX, 429, &[("retry-after", "3600")]).await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    let err = up.get_manifest("a", "latest", &[]).await.unwrap_err();
    assert_eq!(server.total(), 1);
    assert_eq!(err.registry_status(), Some(429));
    assert_eq!(err.retry_after(), Some("3600"));
    assert!(err.is_unavailable());
}

#[tokio::test]
async fn retries_429_without_retry_after() {
    let server = flaky(2, 429, &[]).await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    up.head_manifest("a", "latest", &[]).await.unwrap();
    assert_eq!(server.total(), 3);
}

#[tokio::test]
async fn does_not_retry_404_or_501() {
    let server = flaky(usize::MAX, 404, &[]).await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    up.get_manifest("a", "latest", &[]).await.unwrap_err();
    assert_eq!(server.total(), 1);
    let server = flaky(usize::MAX, 501, &[]).await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    up.get_manifest("a", "latest", &[]).await.unwrap_err();
    assert_eq!(server.total(), 1);
}

#[tokio::test]
async fn connection_refused_is_retried_then_transport_error() {
    let addr = closed_port().await;
    let url = url::Url::parse(&format!("http://{addr}")).unwrap();
    let up = UpstreamClient::new(config(url)).unwrap();
    let err = up.head_manifest("a", "latest", &[]).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Transport { .. }), "{err:?}");
    assert!(err.is_unavailable());
    assert_eq!(err.status_hint(), 502);
    let stats = up.stats();
    assert_eq!(stats.count("HEAD", 0), 3, "three connection attempts");
    assert_eq!(stats.retries, 2);
    assert!(err.to_string().contains("test (127.0.0.1:"), "{err}");
}

#[tokio::test]
async fn post_is_not_retried() {
    let server = flaky(usize::MAX, 503, &[]).await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    let resp = up
        .send(RawRequest::new(Method::POST, "/v2/a/blobs/uploads/").body(Bytes::from_static(b"x")))
        .await
        .unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(server.total(), 1);
    // The caller can turn it into an error carrying the envelope.
    let err = resp.error_for_status().await.unwrap_err();
    assert_eq!(err.registry_status(), Some(503));
    assert!(err.envelope().is_some());

    // GET through send is retried.
    let resp = up
        .send(RawRequest::new(Method::GET, "/v2/a/tags/list"))
        .await
        .unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(server.total(), 4);
    // …unless the caller says it is not idempotent.
    up.send(RawRequest::new(Method::GET, "/v2/a/tags/list").idempotent(false))
        .await
        .unwrap();
    assert_eq!(server.total(), 5);
}

#[tokio::test]
async fn post_is_retried_when_the_connection_was_refused() {
    let addr = closed_port().await;
    let url = url::Url::parse(&format!("http://{addr}")).unwrap();
    let up = UpstreamClient::new(config(url)).unwrap();
    up.send(RawRequest::new(Method::POST, "/v2/a/blobs/uploads/"))
        .await
        .unwrap_err();
    assert_eq!(
        up.stats().count("POST", 0),
        3,
        "nothing was sent: safe to retry"
    );
}

#[tokio::test]
async fn first_byte_timeout() {
    let server = TestServer::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        empty(200)
    })
    .await;
    let mut c = config(server.url());
    c.first_byte_timeout = Duration::from_millis(200);
    c.retry.max_attempts = 2;
    let up = UpstreamClient::new(c).unwrap();
    let started = Instant::now();
    let err = up.get_manifest("a", "latest", &[]).await.unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Timeout {
                phase: TimeoutPhase::FirstByte,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.status_hint(), 504);
    assert!(err.is_unavailable());
    assert!(started.elapsed() < Duration::from_secs(5));
    // Wait for the second request to be recorded.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.total(), 2, "one retry");
}

/// A raw TCP server: each connection gets the next scripted answer (bytes
/// to write, then how long to keep the connection open).
async fn scripted(answers: Vec<(Vec<u8>, Duration)>) -> (url::Url, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let Some((bytes, hold)) = answers.next() else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(&bytes).await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    (url, conns)
}

fn head_of(len: usize, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n{body}")
        .into_bytes()
}

#[tokio::test]
async fn stalled_blob_body_hits_body_stall_timeout() {
    let (url, _) = scripted(vec![(head_of(100, "0123456789"), Duration::from_secs(30))]).await;
    let mut c = config(url);
    c.body_stall_timeout = Duration::from_millis(300);
    let up = UpstreamClient::new(c).unwrap();
    let body = up
        .get_blob("a", &sha256(b"x"), None)
        .await
        .expect("headers arrive");
    assert_eq!(body.len, Some(100));
    let items: Vec<_> = body.stream.collect().await;
    let got: Vec<u8> = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .flat_map(|b| b.to_vec())
        .collect();
    assert_eq!(got, b"0123456789");
    let err = items
        .into_iter()
        .find_map(Result::err)
        .expect("stream fails");
    assert!(
        matches!(
            err,
            UpstreamError::Timeout {
                phase: TimeoutPhase::Body,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn truncated_blob_body_is_an_error_not_retried() {
    let (url, conns) = scripted(vec![
        (head_of(100, "0123456789"), Duration::ZERO),
        (head_of(3, "abc"), Duration::ZERO),
    ])
    .await;
    let up = UpstreamClient::new(config(url)).unwrap();
    let body = up.get_blob("a", &sha256(b"x"), None).await.unwrap();
    let items: Vec<_> = body.stream.collect().await;
    let err = items
        .into_iter()
        .find_map(Result::err)
        .expect("early EOF is an error");
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(conns.load(Ordering::SeqCst), 1, "streams are never retried");
}

#[tokio::test]
async fn truncated_manifest_body_is_retried() {
    let full = MANIFEST;
    let (url, conns) = scripted(vec![
        (head_of(full.len(), &full[..5]), Duration::ZERO),
        (head_of(full.len(), full), Duration::ZERO),
    ])
    .await;
    let up = UpstreamClient::new(config(url)).unwrap();
    let m = up.get_manifest("a", "latest", &[]).await.unwrap();
    assert_eq!(m.bytes, Bytes::from(full));
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

//! Registry errors, protocol errors, input validation, secrets in logs.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use parking_lot::Mutex;
use regcache_formats::ErrorCode;
use regcache_upstream::{Credentials, RawRequest, UpstreamClient, UpstreamError};

use crate::support::*;

#[tokio::test]
async fn error_envelope_is_relayed() {
    let server = TestServer::start(|_req| async {
        json(
            404,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nosuch"}}]}"#,
        )
    })
    .await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    let err = up.get_manifest("a", "nosuch", &[]).await.unwrap_err();
    assert!(err.is_not_found());
    assert!(!err.is_unavailable());
    assert_eq!(err.status_hint(), 404);
    let env = err.envelope().unwrap();
    assert_eq!(env.errors[0].code, ErrorCode::ManifestUnknown);
    assert_eq!(
        env.errors[0].detail,
        Some(serde_json::json!({"Tag": "nosuch"}))
    );
    assert_eq!(
        err.to_string(),
        format!(
            "upstream test ({}) answered HTTP 404: MANIFEST_UNKNOWN (manifest unknown)",
            server.addr
        )
    );
    // HEAD has no body: status only.
    let err = up.head_manifest("a", "nosuch", &[]).await.unwrap_err();
    assert_eq!(err.registry_status(), Some(404));
    assert!(err.envelope().is_none());
    // A non-JSON error body gives no envelope.
    let html = TestServer::start(|_req| async { reply(500, &[], "<html>oops</html>") }).await;
    let mut c = config(html.url());
    c.retry.max_attempts = 1;
    let err = UpstreamClient::new(c)
        .unwrap()
        .get_blob("a", &sha256(b"x"), None)
        .await
        .unwrap_err();
    assert_eq!(err.registry_status(), Some(500));
    assert!(err.envelope().is_none());
}

#[tokio::test]
async fn bad_headers_are_protocol_errors() {
    let server = TestServer::start(|req| async move {
        if req.path().contains("/manifests/") {
            reply(200, &[("docker-content-digest", "sha256:NOTHEX")], MANIFEST)
        } else {
            // A blob HEAD without Content-Length (chunked).
            reply(200, &[("transfer-encoding", "chunked")], "")
        }
    })
    .await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    let err = up.get_manifest("a", "latest", &[]).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Protocol { .. }), "{err:?}");
    assert_eq!(err.status_hint(), 502);
    assert!(!err.is_unavailable());
    assert_eq!(server.total(), 1, "protocol errors are not retried");
}

#[tokio::test]
async fn invalid_requests_are_refused_locally() {
    let server = TestServer::start(|_req| async { empty(200) }).await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    for path in [
        "//evil.example/v2/",
        "/notv2",
        "http://evil.example/v2/",
        "/v2/a b",
    ] {
        let err = up
            .send(RawRequest::new(Method::GET, path))
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::InvalidRequest { .. }),
            "{path}: {err:?}"
        );
    }
    let err = up
        .head_manifest("UPPER/case", "latest", &[])
        .await
        .unwrap_err();
    assert_eq!(err.status_hint(), 400);
    up.head_manifest("a", "../../x", &[]).await.unwrap_err();
    up.get_blob("a", &sha256(b"x"), Some((5, Some(2))))
        .await
        .unwrap_err();
    assert_eq!(server.total(), 0);

    let mut bad = config(server.url());
    bad.url = url::Url::parse(&format!("http://u:p@{}", server.addr)).unwrap();
    assert!(format!("{bad:?}").contains("redacted"));
    assert!(!format!("{bad:?}").contains(":p@"));
    assert!(UpstreamClient::new(bad).is_err());
}

#[tokio::test]
async fn send_passes_status_headers_and_body_through() {
    let server = TestServer::start(|req| async move {
        let loc = format!(
            "http://upstream.example/v2/a/blobs/uploads/u1?_state={}",
            req.query()
        );
        reply(
            202,
            &[
                ("location", loc.as_str()),
                ("docker-upload-uuid", "u1"),
                ("range", "0-0"),
            ],
            "",
        )
    })
    .await;
    let up = UpstreamClient::new(config(server.url())).unwrap();
    let resp = up
        .send(RawRequest::new(Method::POST, "/v2/a/blobs/uploads/?x=1"))
        .await
        .unwrap();
    assert_eq!(resp.status, 202);
    assert_eq!(
        resp.headers.get("location").unwrap(),
        "http://upstream.example/v2/a/blobs/uploads/u1?_state=x=1"
    );
    assert_eq!(resp.url.path(), "/v2/a/blobs/uploads/");
    assert_eq!(resp.bytes(10).await.unwrap(), Bytes::new());
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_reach_logs_debug_or_errors() {
    const PASSWORD: &str = "pw-SECRET-7f3a";
    const TOKEN: &str = "tok-SECRET-91bc";
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let tokens = TestServer::start(|_req| async {
        json(200, &format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#))
    })
    .await;
    let realm = format!("{}token", tokens.url());
    let registry = TestServer::start(move |req| {
        let realm = realm.clone();
        async move {
            if req.authorization() == Some(&format!("Bearer {TOKEN}")) {
                if req.path().ends_with("/fail") {
                    return json(503, r#"{"errors":[{"code":"UNAVAILABLE","message":"x"}]}"#);
                }
                return reply(200, &[("content-type", SCHEMA2)], MANIFEST);
            }
            let c = format!("Bearer realm=\"{realm}\",service=\"s\"");
            reply(401, &[("www-authenticate", c.as_str())], "")
        }
    })
    .await;
    let cfg = config(registry.url()).with_credentials(Credentials::new("carol", PASSWORD));
    let up = UpstreamClient::new(cfg.clone()).unwrap();
    up.get_manifest("a/b", "latest", &[SCHEMA2]).await.unwrap();
    let err = up.get_manifest("a/b", "fail", &[]).await.unwrap_err();

    let mut seen = String::from_utf8(buf.0.lock().clone()).unwrap();
    assert!(seen.contains("fetching token"), "logs captured: {seen}");
    seen.push_str(&format!(
        "{cfg:?}\n{up:?}\n{err}\n{err:?}\n{:?}",
        cfg.credentials
    ));
    assert!(seen.contains("<redacted>"));
    assert!(!seen.contains(PASSWORD), "password leaked:\n{seen}");
    assert!(!seen.contains(TOKEN), "token leaked:\n{seen}");
    // The Basic header's base64 form must not leak either.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("carol:{PASSWORD}"));
    assert!(!seen.contains(&b64), "basic credentials leaked");
}

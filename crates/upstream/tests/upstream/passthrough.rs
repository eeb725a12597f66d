//! Requests sent with the client's own identity ([`Identity::Client`]), and
//! a forwarded request body that breaks off ([`UpstreamError::RequestBody`]).

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method};
use regcache_upstream::{Credentials, Identity, RawRequest, RequestBody, UpstreamClient};

use crate::support::*;

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// An htpasswd-style registry that redirects `/v2/moved/…` to itself.
async fn basic_registry() -> TestServer {
    TestServer::start(|req| async move {
        if req.path().starts_with("/v2/moved/") {
            let to = req.path().replace("/v2/moved/", "/v2/landed/");
            return reply(307, &[("location", to.as_str())], "");
        }
        if req.authorization() != Some(basic("bob", "hunter2").as_str()) {
            return reply(
                401,
                &[("www-authenticate", r#"Basic realm="Registry Realm""#)],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        }
        reply(201, &[("location", "/v2/a/blobs/sha256:x")], "")
    })
    .await
}

fn client_identity(value: Option<&str>) -> Identity {
    Identity::Client(value.map(|v| {
        let mut h = HeaderValue::from_str(v).unwrap();
        h.set_sensitive(true);
        h
    }))
}

#[tokio::test]
async fn client_identity_uses_the_clients_header_and_never_the_stored_one() {
    let registry = basic_registry().await;
    // regcache has working credentials; a client identity must not use them.
    let up = UpstreamClient::new(
        config(registry.url()).with_credentials(Credentials::new("bob", "hunter2")),
    )
    .unwrap();

    // Anonymous client: one request, no Authorization, the 401 and its
    // challenge come back as the answer (no retry with stored credentials).
    let resp = up
        .send(RawRequest::new(Method::POST, "/v2/a/blobs/uploads/").identity(client_identity(None)))
        .await
        .unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.headers.get("www-authenticate").unwrap(),
        r#"Basic realm="Registry Realm""#
    );
    let reqs = registry.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].authorization(), None);

    // Wrong client credentials: relayed, never replaced by the stored ones.
    let resp = up
        .send(
            RawRequest::new(Method::POST, "/v2/a/blobs/uploads/")
                .identity(client_identity(Some(&basic("bob", "wrong")))),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(registry.total(), 2);

    // The client's own good credentials go through as they are.
    let good = basic("bob", "hunter2");
    let resp = up
        .send(
            RawRequest::new(Method::POST, "/v2/a/blobs/uploads/")
                .identity(client_identity(Some(&good))),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 201);
    let last = registry.requests().pop().unwrap();
    assert_eq!(last.authorization(), Some(good.as_str()));
    assert_eq!(up.stats().token_requests, 0);
}

#[tokio::test]
async fn client_credentials_never_follow_a_redirect_even_to_the_same_origin() {
    let registry = basic_registry().await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();
    let good = basic("bob", "hunter2");
    let resp = up
        .send(
            RawRequest::new(Method::DELETE, "/v2/moved/manifests/sha256:x")
                .identity(client_identity(Some(&good))),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.status, 401,
        "the redirected hop went without credentials"
    );
    let reqs = registry.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].authorization(), Some(good.as_str()));
    assert_eq!(reqs[1].path(), "/v2/landed/manifests/sha256:x");
    assert_eq!(reqs[1].authorization(), None);
}

#[tokio::test]
async fn a_forwarded_body_that_breaks_off_is_a_request_body_error_and_not_counted() {
    let registry = TestServer::start(|_req| async { empty(202) }).await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();
    up.ping().await.unwrap();
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"hello ")),
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid chunk size line",
        )),
    ];
    let req = RawRequest::new(Method::PATCH, "/v2/a/blobs/uploads/u-1")
        .body(RequestBody::stream(futures_util::stream::iter(chunks)))
        .identity(client_identity(None));
    let err = up.send(req).await.unwrap_err();
    assert!(err.is_request_body(), "{err:?}");
    assert_eq!(err.status_hint(), 400);
    assert!(!err.is_unavailable());
    let stats = up.stats();
    assert_eq!(stats.total("PATCH"), 0, "{stats:?}");
    assert_eq!(stats.retries, 0);
}

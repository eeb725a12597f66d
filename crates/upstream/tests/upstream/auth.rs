//! Token and Basic authentication against loopback registries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use regcache_upstream::{Credentials, RawRequest, RequestBody, UpstreamClient, UpstreamError};

use crate::support::*;

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// A registry that wants `Bearer <token>` and challenges with `realm`.
async fn bearer_registry(realm: String, token: &'static str) -> TestServer {
    TestServer::start(move |req| {
        let realm = realm.clone();
        async move {
            if req.authorization() != Some(&format!("Bearer {token}")) {
                let repo = req
                    .path()
                    .strip_prefix("/v2/")
                    .and_then(|p| p.split("/manifests/").next())
                    .unwrap_or("");
                let scope = if repo.is_empty() {
                    String::new()
                } else {
                    format!(",scope=\"repository:{repo}:pull\"")
                };
                let challenge =
                    format!("Bearer realm=\"{realm}\",service=\"test-registry\"{scope}");
                return reply(
                    401,
                    &[
                        ("www-authenticate", challenge.as_str()),
                        ("content-type", "application/json"),
                    ],
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                );
            }
            if req.path() == "/v2/" {
                return json(200, "{}");
            }
            reply(
                200,
                &[
                    ("content-type", SCHEMA2),
                    (
                        "docker-content-digest",
                        sha256(MANIFEST.as_bytes()).as_str(),
                    ),
                ],
                MANIFEST,
            )
        }
    })
    .await
}

/// A token server that requires `auth` (if given) and answers `body`.
async fn token_server(auth: Option<String>, body: &'static str) -> TestServer {
    TestServer::start(move |req| {
        let auth = auth.clone();
        async move {
            if auth.is_some() && req.authorization() != auth.as_deref() {
                return json(401, r#"{"details":"incorrect username or password"}"#);
            }
            json(200, body)
        }
    })
    .await
}

#[tokio::test]
async fn bearer_flow_end_to_end_with_cached_token() {
    let tokens = token_server(
        Some(basic("alice", "s3cret-pw")),
        r#"{"token":"tok-1","expires_in":300}"#,
    )
    .await;
    let registry = bearer_registry(format!("{}token", tokens.url()), "tok-1").await;
    let mut cfg = config(registry.url()).with_credentials(Credentials::new("alice", "s3cret-pw"));
    // The token server is another origin (another port): it gets the
    // credentials only because it is listed.
    cfg.auth_realms = vec![tokens.url().authority().to_owned()];
    let up = UpstreamClient::new(cfg).unwrap();

    let m = up
        .get_manifest("library/alpine", "latest", &[SCHEMA2])
        .await
        .unwrap();
    assert_eq!(m.bytes, Bytes::from(MANIFEST));
    assert_eq!(m.content_type.as_deref(), Some(SCHEMA2));
    assert_eq!(m.digest_header, Some(sha256(MANIFEST.as_bytes())));

    let reg = registry.requests();
    assert_eq!(reg.len(), 2, "challenge, then retry with the token");
    assert_eq!(reg[0].authorization(), None);
    assert_eq!(reg[1].authorization(), Some("Bearer tok-1"));
    assert_eq!(reg[1].header("accept"), Some(SCHEMA2));
    let tok = tokens.requests();
    assert_eq!(tok.len(), 1);
    assert_eq!(tok[0].path(), "/token");
    assert_eq!(
        tok[0].query(),
        "service=test-registry&scope=repository%3Alibrary%2Falpine%3Apull"
    );
    assert_eq!(
        tok[0].authorization(),
        Some(basic("alice", "s3cret-pw").as_str()),
        "credentials go to the realm"
    );

    // Same scope again: the cached token is sent straight away.
    up.head_manifest("library/alpine", "latest", &[SCHEMA2])
        .await
        .unwrap();
    assert_eq!(registry.total(), 3);
    assert_eq!(registry.requests()[2].authorization(), Some("Bearer tok-1"));
    assert_eq!(tokens.total(), 1, "token reused until expiry");

    // A new scope: the realm is known, so the token is fetched before the
    // request and the registry sees no unauthenticated attempt.
    up.head_manifest("library/busybox", "1", &[]).await.unwrap();
    assert_eq!(tokens.total(), 2);
    assert!(tokens.requests()[1].query().contains("library%2Fbusybox"));
    assert_eq!(registry.total(), 4);
    assert_eq!(registry.requests()[3].authorization(), Some("Bearer tok-1"));

    let stats = up.stats();
    assert_eq!(stats.token_requests, 2);
    assert_eq!(stats.count("GET", 401), 1);
    assert_eq!(stats.count("GET", 200), 1);
    assert_eq!(stats.count("HEAD", 200), 2);
}

/// A realm the operator did not list gets no credentials, not even over
/// loopback on the same host: the token request goes out anonymously, and
/// the refusal says why.
#[tokio::test]
async fn unlisted_realm_gets_no_credentials() {
    let tokens = token_server(
        Some(basic("alice", "s3cret-pw")),
        r#"{"token":"tok-1","expires_in":300}"#,
    )
    .await;
    let registry = bearer_registry(format!("{}token", tokens.url()), "tok-1").await;
    let up = UpstreamClient::new(
        config(registry.url()).with_credentials(Credentials::new("alice", "s3cret-pw")),
    )
    .unwrap();
    let err = up
        .get_manifest("library/alpine", "latest", &[SCHEMA2])
        .await
        .unwrap_err();
    let tok = tokens.requests();
    assert!(!tok.is_empty());
    assert!(
        tok.iter().all(|r| r.authorization().is_none()),
        "no Authorization reached the unlisted realm"
    );
    let msg = err.to_string();
    assert!(msg.contains("auth_realms"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    // Listed, but plain http to another host than the upstream's: still no.
    let mut cfg = config(registry.url()).with_credentials(Credentials::new("alice", "s3cret-pw"));
    cfg.auth_realms = vec!["localhost".into()];
    let realm_elsewhere = bearer_registry(
        format!("http://localhost:{}/token", tokens.url().port().unwrap()),
        "tok-1",
    )
    .await;
    cfg.url = realm_elsewhere.url();
    let up = UpstreamClient::new(cfg).unwrap();
    let before = tokens.total();
    up.get_manifest("a/b", "c", &[]).await.unwrap_err();
    let tok = tokens.requests();
    assert!(tok.len() > before);
    assert!(tok[before..].iter().all(|r| r.authorization().is_none()));
}

/// An identity made by `acting_as` sends its own credentials (and keeps its
/// own tokens), never the configured ones; the counters are shared.
#[tokio::test]
async fn identities_use_their_own_credentials() {
    let tokens = TestServer::start(|req| async move {
        let token = if req.authorization() == Some(basic("bob", "bob-pw").as_str()) {
            "tok-bob"
        } else if req.authorization() == Some(basic("robot", "robot-pw").as_str()) {
            "tok-robot"
        } else if req.authorization().is_none() {
            "tok-anon"
        } else {
            return json(401, "{}");
        };
        json(200, &format!(r#"{{"token":"{token}","expires_in":300}}"#))
    })
    .await;
    let registry = bearer_registry(format!("{}token", tokens.url()), "tok-bob").await;
    let mut cfg = config(registry.url()).with_credentials(Credentials::new("robot", "robot-pw"));
    cfg.auth_realms = vec![tokens.url().authority().to_owned()];
    let up = UpstreamClient::new(cfg).unwrap();
    // The robot's token is refused by this registry.
    assert!(up.head_manifest("a/b", "latest", &[]).await.is_err());
    let bob = up.acting_as(Some(Credentials::new("bob", "bob-pw")));
    bob.head_manifest("a/b", "latest", &[]).await.unwrap();
    let anonymous = up.acting_as(None);
    assert!(anonymous.head_manifest("a/b", "latest", &[]).await.is_err());
    let sent: Vec<Option<String>> = tokens
        .requests()
        .iter()
        .map(|r| r.authorization().map(str::to_owned))
        .collect();
    assert!(sent.contains(&Some(basic("bob", "bob-pw"))));
    assert!(sent.contains(&None), "the anonymous identity sends nothing");
    assert_eq!(
        registry
            .requests()
            .iter()
            .filter(|r| r.authorization() == Some("Bearer tok-bob"))
            .count(),
        1
    );
    // One set of counters for the upstream, whoever acted.
    assert!(up.stats().count("HEAD", 200) >= 1);
}

/// A configuration reload replaces the credentials: the next token is
/// fetched with the new ones (the cached one is dropped), identities made
/// before keep theirs, and unchanged credentials keep the cached token.
#[tokio::test]
async fn replaced_credentials_drop_the_cached_tokens() {
    let tokens = TestServer::start(|req| async move {
        let token = if req.authorization() == Some(basic("bob", "bob-pw").as_str()) {
            "tok-bob"
        } else if req.authorization() == Some(basic("robot", "robot-pw").as_str()) {
            "tok-robot"
        } else {
            return json(401, "{}");
        };
        json(200, &format!(r#"{{"token":"{token}","expires_in":300}}"#))
    })
    .await;
    let registry = bearer_registry(format!("{}token", tokens.url()), "tok-bob").await;
    let mut cfg = config(registry.url()).with_credentials(Credentials::new("robot", "robot-pw"));
    cfg.auth_realms = vec![tokens.url().authority().to_owned()];
    let up = UpstreamClient::new(cfg).unwrap();
    let robot = up.acting_as(Some(Credentials::new("robot", "robot-pw")));
    assert!(up.head_manifest("a/b", "latest", &[]).await.is_err());
    assert!(!up.set_credentials(Some(Credentials::new("robot", "robot-pw"))));
    assert!(up.set_credentials(Some(Credentials::new("bob", "bob-pw"))));
    assert_eq!(up.credentials().unwrap().username, "bob");
    up.head_manifest("a/b", "latest", &[]).await.unwrap();
    let fetched = tokens.requests().len();
    up.head_manifest("a/b", "latest", &[]).await.unwrap();
    assert_eq!(tokens.requests().len(), fetched, "bob's token is cached");
    assert!(!up.set_credentials(Some(Credentials::new("bob", "bob-pw"))));
    up.head_manifest("a/b", "latest", &[]).await.unwrap();
    assert_eq!(tokens.requests().len(), fetched, "unchanged: still cached");
    // An identity made before the reload keeps its own credentials.
    assert!(robot.head_manifest("a/b", "latest", &[]).await.is_err());
}

#[tokio::test]
async fn anonymous_token_uses_access_token_and_no_credentials() {
    let tokens = token_server(None, r#"{"access_token":"anon-tok"}"#).await;
    let registry = bearer_registry(format!("{}token?x=1", tokens.url()), "anon-tok").await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();
    up.head_manifest("library/alpine", "latest", &[])
        .await
        .unwrap();
    let tok = tokens.requests();
    assert_eq!(tok.len(), 1);
    assert_eq!(tok[0].authorization(), None, "anonymous token request");
    assert!(
        tok[0]
            .query()
            .starts_with("x=1&service=test-registry&scope="),
        "realm query kept: {}",
        tok[0].query()
    );
}

#[tokio::test]
async fn expired_token_is_fetched_again() {
    // Issued 55 s ago with a 60 s lifetime: usable once, never cached.
    let issued = (time::OffsetDateTime::now_utc() - time::Duration::seconds(55))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body: &'static str = Box::leak(
        format!(r#"{{"token":"tok-1","expires_in":60,"issued_at":"{issued}"}}"#).into_boxed_str(),
    );
    let tokens = token_server(None, body).await;
    let registry = bearer_registry(format!("{}token", tokens.url()), "tok-1").await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();
    up.head_manifest("a/b", "latest", &[]).await.unwrap();
    up.head_manifest("a/b", "latest", &[]).await.unwrap();
    assert_eq!(tokens.total(), 2, "an expiring token is not reused");
    assert_eq!(registry.total(), 3, "401, then two authorised requests");
}

#[tokio::test]
async fn refused_cached_token_is_replaced_once() {
    // The token server hands out tok-1, then tok-2; the registry only
    // accepts tok-2 (tok-1 was "revoked").
    let n = Arc::new(AtomicUsize::new(0));
    let tokens = TestServer::start(move |_req| {
        let n = n.fetch_add(1, Ordering::SeqCst) + 1;
        async move { json(200, &format!(r#"{{"token":"tok-{n}","expires_in":300}}"#)) }
    })
    .await;
    let registry = bearer_registry(format!("{}token", tokens.url()), "tok-2").await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();

    // 401 → tok-1 → 401 again: only one auth retry, the 401 is relayed.
    let err = up.head_manifest("a/b", "1", &[]).await.unwrap_err();
    assert_eq!(err.registry_status(), Some(401));
    assert!(!err.is_unavailable());
    assert_eq!(registry.total(), 2);
    // Next request: cached tok-1 refused → fresh token → success.
    up.head_manifest("a/b", "1", &[]).await.unwrap();
    assert_eq!(tokens.total(), 2);
    let reg = registry.requests();
    assert_eq!(reg[2].authorization(), Some("Bearer tok-1"));
    assert_eq!(reg[3].authorization(), Some("Bearer tok-2"));
}

#[tokio::test]
async fn concurrent_requests_share_one_token_fetch() {
    let tokens = TestServer::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        json(200, r#"{"token":"tok-1","expires_in":300}"#)
    })
    .await;
    let registry = bearer_registry(format!("{}token", tokens.url()), "tok-1").await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let up = up.clone();
        tasks.push(tokio::spawn(async move {
            up.head_manifest("library/alpine", "latest", &[]).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(tokens.total(), 1, "one fetch for one scope");
}

#[tokio::test]
async fn token_service_rejecting_credentials_is_unauthorized() {
    let tokens = token_server(Some(basic("alice", "right")), r#"{"token":"t"}"#).await;
    let registry = bearer_registry(format!("{}token", tokens.url()), "t").await;
    let up = UpstreamClient::new(
        config(registry.url()).with_credentials(Credentials::new("alice", "wrong-pw-XYZ")),
    )
    .unwrap();
    let err = up.ping().await.unwrap_err();
    assert!(matches!(err, UpstreamError::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.status_hint(), 401);
    let msg = format!("{err} {err:?}");
    assert!(!msg.contains("wrong-pw-XYZ"), "{msg}");
    assert_eq!(up.stats().token_failures, 1);
}

#[tokio::test]
async fn ping_authenticates_without_scope() {
    let tokens = token_server(None, r#"{"token":"tok-1"}"#).await;
    let registry = bearer_registry(format!("{}token", tokens.url()), "tok-1").await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();
    up.ping().await.unwrap();
    assert_eq!(tokens.requests()[0].query(), "service=test-registry");
}

/// An htpasswd-style registry: `Basic` challenge, credentials on every request.
async fn basic_registry() -> TestServer {
    TestServer::start(|req| async move {
        if req.authorization() != Some(basic("bob", "hunter2").as_str()) {
            return reply(
                401,
                &[("www-authenticate", r#"Basic realm="Registry Realm""#)],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        }
        reply(
            200,
            &[("content-length", "42"), ("content-type", SCHEMA2)],
            "",
        )
    })
    .await
}

#[tokio::test]
async fn basic_auth_upstream() {
    let registry = basic_registry().await;
    let up = UpstreamClient::new(
        config(registry.url()).with_credentials(Credentials::new("bob", "hunter2")),
    )
    .unwrap();
    let h = up.head_manifest("a", "latest", &[]).await.unwrap();
    assert_eq!(h.size, Some(42));
    assert_eq!(h.media_type.as_deref(), Some(SCHEMA2));
    assert_eq!(registry.total(), 2);
    up.head_manifest("b", "latest", &[]).await.unwrap();
    assert_eq!(registry.total(), 3, "Basic sent proactively once learned");
    assert_eq!(up.stats().token_requests, 0);

    // Without credentials the 401 is relayed as a registry error.
    let anon = UpstreamClient::new(config(registry.url())).unwrap();
    let err = anon.get_manifest("a", "latest", &[]).await.unwrap_err();
    assert_eq!(err.registry_status(), Some(401));
    assert_eq!(
        err.envelope().unwrap().errors[0].code,
        regcache_formats::ErrorCode::Unauthorized
    );
}

#[tokio::test]
async fn push_scope_and_streamed_body_are_authorised_first() {
    let tokens = token_server(None, r#"{"token":"tok-push"}"#).await;
    let registry = bearer_registry(format!("{}token", tokens.url()), "tok-push").await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();

    // A streamed PATCH cannot be replayed: the client pings /v2/ to learn
    // the challenge, gets a push token, then sends the body exactly once.
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"hello ")),
        Ok(Bytes::from_static(b"world")),
    ];
    let req = RawRequest::new(Method::PATCH, "/v2/team/app/blobs/uploads/u-1?_state=abc")
        .body(RequestBody::stream(futures_util::stream::iter(chunks)));
    let resp = up.send(req).await.unwrap();
    assert_eq!(resp.status, 200);
    let reg = registry.requests();
    assert_eq!(reg.len(), 2, "{reg:?}");
    assert_eq!(reg[0].path(), "/v2/");
    assert_eq!(reg[1].method, Method::PATCH);
    assert_eq!(reg[1].query(), "_state=abc");
    assert_eq!(reg[1].authorization(), Some("Bearer tok-push"));
    assert_eq!(reg[1].body, Bytes::from_static(b"hello world"));
    let tok = tokens.requests();
    assert_eq!(tok.len(), 1, "the /v2/ probe only learns the challenge");
    assert_eq!(
        tok[0].query(),
        "service=test-registry&scope=repository%3Ateam%2Fapp%3Apull%2Cpush"
    );
}

#[tokio::test]
async fn client_authorization_header_is_not_forwarded() {
    let registry = TestServer::start(|_req| async { json(200, "{}") }).await;
    let up = UpstreamClient::new(config(registry.url())).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer client-token".parse().unwrap());
    headers.insert("x-keep", "1".parse().unwrap());
    let resp = up
        .send(RawRequest::new(Method::GET, "/v2/a/tags/list").headers(headers))
        .await
        .unwrap();
    assert_eq!(resp.bytes(1024).await.unwrap(), Bytes::from_static(b"{}"));
    let r = &registry.requests()[0];
    assert_eq!(r.authorization(), None);
    assert_eq!(r.header("x-keep"), Some("1"));
}

//! Whose credentials go where: regcache's upstream credentials reach only
//! the upstream's own origin and the token realms the operator listed
//! (`auth_realms`), never a realm an upstream names on another host.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use hyper::{Response, StatusCode};
use regcache_tests::http_server::{ServerThread, full};
use regcache_tests::{Credentials, Regcache, RegcacheOptions, RegistryClient};

use crate::support::FULL_ACCEPT;

/// What one peer saw: a request's path and its `Authorization`, if any.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn recorder(
    name: &str,
    ip: Ipv4Addr,
    seen: Seen,
    answer: fn(&str) -> Response<regcache_tests::http_server::Body>,
) -> ServerThread {
    ServerThread::spawn_on(name, ip, move |req| {
        let seen = seen.clone();
        async move {
            let auth = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let path = req.uri().path().to_owned();
            seen.lock().unwrap().push((path.clone(), auth));
            answer(&path)
        }
    })
}

fn token_answer(_path: &str) -> Response<regcache_tests::http_server::Body> {
    let mut r = Response::new(full(r#"{"token":"anonymous-token","expires_in":300}"#));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A fake upstream on 127.0.0.1 whose every 401 names a token realm on
/// 127.0.0.2 (another host) over plain http. regcache holds credentials for
/// it. Whether or not the operator lists that host, the realm must never
/// see them: not listed, it is not trusted; listed, it is still plain http
/// to a host that is not the upstream's.
#[tokio::test]
async fn a_foreign_realm_never_receives_the_upstream_credentials() {
    const PASSWORD: &str = "robot-secret-7f3a";
    let realm_seen: Seen = Arc::default();
    let realm = recorder(
        "foreign-realm",
        Ipv4Addr::new(127, 0, 0, 2),
        realm_seen.clone(),
        token_answer,
    );
    let realm_url = format!("http://{}/token", realm.addr());
    let upstream_seen: Seen = Arc::default();
    let challenge: &'static str =
        Box::leak(format!("Bearer realm=\"{realm_url}\",service=\"fake\"").into_boxed_str());
    let upstream = {
        let seen = upstream_seen.clone();
        ServerThread::spawn("fake-upstream", move |req| {
            let seen = seen.clone();
            async move {
                let auth = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                seen.lock()
                    .unwrap()
                    .push((req.uri().path().to_owned(), auth));
                let mut r = Response::new(full(
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                ));
                *r.status_mut() = StatusCode::UNAUTHORIZED;
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static(challenge),
                );
                r
            }
        })
    };
    let upstream_url = format!("http://{}", upstream.addr());

    for listed in [Vec::new(), vec!["127.0.0.2".to_owned()]] {
        let mut options = RegcacheOptions::new(upstream_url.clone())
            .credentials(Some(Credentials::new("robot", PASSWORD)));
        options.auth_realms = listed.clone();
        let mut regcache = Regcache::start(options);
        let client = RegistryClient::new(regcache.url());
        let accept = FULL_ACCEPT.join(", ");
        let before = realm_seen.lock().unwrap().len();
        for path in [
            "/v2/private/app/manifests/v1",
            "/v2/private/app/manifests/v2",
            "/v2/private/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let r = client
                .request(
                    reqwest::Method::GET,
                    path,
                    &[("accept", accept.as_str())],
                    None,
                )
                .await
                .unwrap();
            assert!(
                r.status == 401 || r.status >= 500,
                "{path}: the upstream refuses everyone, so must regcache: {} {}",
                r.status,
                r.text()
            );
            assert!(!r.text().contains(PASSWORD), "{}", r.text());
        }
        let seen = realm_seen.lock().unwrap().clone();
        let at_realm = &seen[before..];
        assert!(
            !at_realm.is_empty(),
            "regcache asked the realm for (anonymous) tokens"
        );
        let with_auth: Vec<_> = at_realm.iter().filter(|(_, a)| a.is_some()).collect();
        assert!(
            with_auth.is_empty(),
            "listed = {listed:?}: the foreign realm received Authorization: {with_auth:?}"
        );
        eprintln!(
            "listed = {listed:?}: the realm on 127.0.0.2 got {} requests, {} with Authorization",
            at_realm.len(),
            with_auth.len()
        );
        regcache.stop();
        let log = regcache.log();
        assert!(!log.contains(PASSWORD));
        assert!(
            log.contains("not sending credentials to the token realm"),
            "the refusal is logged:\n{log}"
        );
    }
    // Nor did the upstream itself get the password in any form: it only ever
    // challenged with Bearer.
    let upstream_seen = upstream_seen.lock().unwrap().clone();
    assert!(!upstream_seen.is_empty());
    assert!(
        upstream_seen
            .iter()
            .all(|(_, a)| a.as_deref().is_none_or(|a| !a.starts_with("Basic"))),
        "{upstream_seen:?}"
    );
}

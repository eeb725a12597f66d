//! Whose credentials go where: regcache's upstream credentials reach only
//! the upstream's own origin and the token realms the operator listed
//! (`auth_realms`), never a realm an upstream names on another host.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use hyper::{Response, StatusCode};
use regcache_tests::http_server::{ServerThread, full};
use regcache_tests::skopeo::CopyOptions;
use regcache_tests::{
    Credentials, ManifestFormat, Platform, Regcache, RegcacheOptions, Registry, RegistryClient,
    RegistryOptions, Skopeo, TokenServer, TokenServerOptions,
};

use crate::support::{FULL_ACCEPT, small_image};

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

/// `auth = "upstream"`: the client's own upstream credentials decide. A
/// token-auth docker-registry whose token server lets alice into `team/a`
/// only and bob into `team/b` only; regcache holds no credentials of its
/// own. Once alice pulled `team/a` (so it is cached), bob and anonymous
/// clients still get nothing of it, by tag, by digest or blob by blob, and
/// the upstream only ever issued each user's token to that user.
#[tokio::test]
async fn upstream_decides_who_reads_cached_content() {
    let alice = Credentials::new("alice", "alice-pw-1");
    let bob = Credentials::new("bob", "bob-pw-2");
    let pusher = Credentials::new("pusher", "pusher-pw-3");
    let tokens = TokenServer::start(TokenServerOptions {
        users: vec![alice.clone(), bob.clone(), pusher.clone()],
        grants: Some(vec![
            ("alice".into(), "team/a".into()),
            ("bob".into(), "team/b".into()),
            ("pusher".into(), "team/*".into()),
        ]),
        ..TokenServerOptions::default()
    });
    let registry = Registry::start(RegistryOptions {
        token_auth: Some(tokens.registry_auth()),
        ..RegistryOptions::default()
    });
    let direct = RegistryClient::new(registry.url()).with_bearer(tokens.mint(
        "pusher",
        &["repository:team/a:pull,push", "repository:team/b:pull,push"],
    ));
    let image_a = small_image(41, Platform::linux_amd64());
    let image_b = small_image(42, Platform::linux_amd64());
    let digest_a = direct
        .push_image("team/a", "v1", &image_a, ManifestFormat::Docker)
        .await;
    let digest_b = direct
        .push_image("team/b", "v1", &image_b, ManifestFormat::Docker)
        .await;

    let mut options = RegcacheOptions::new(registry.url());
    options.auth_realms = vec![tokens.authority()];
    options.extra_toml = "[auth]\nmode = \"upstream\"\nallow_insecure_http = true\n".into();
    let regcache = Regcache::start(options);
    let skopeo = Skopeo::new();
    let pull = |creds: Option<Credentials>, repo: &'static str| {
        let skopeo = &skopeo;
        let host = regcache.host();
        async move {
            let out = tempfile::tempdir().unwrap();
            let dst = format!("dir:{}", out.path().display());
            let options = CopyOptions {
                src_creds: creds,
                ..CopyOptions::default()
            };
            skopeo
                .try_copy(
                    &format!("docker://{host}/{repo}:v1"),
                    &dst,
                    None,
                    false,
                    &options,
                )
                .await
        }
    };

    // alice pulls team/a: now every blob of it is cached.
    pull(Some(alice.clone()), "team/a").await.unwrap();
    let layer_a = image_a.blobs()[1].0.clone();
    let as_user = |c: Option<&Credentials>| {
        let client = RegistryClient::new(regcache.url());
        match c {
            Some(c) => client.with_basic_auth(c.clone()),
            None => client,
        }
    };
    // Cached, but not for bob, nor for anonymous clients: by tag, by
    // digest, and the blob (the fast path's warm sendfile included).
    for (who, creds) in [("bob", Some(&bob)), ("anonymous", None)] {
        let client = as_user(creds);
        for path in [
            "/v2/team/a/manifests/v1".to_owned(),
            format!("/v2/team/a/manifests/{digest_a}"),
            format!("/v2/team/a/blobs/{layer_a}"),
        ] {
            for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
                let r = client
                    .request(method.clone(), &path, &[], None)
                    .await
                    .unwrap();
                assert!(
                    matches!(r.status, 401 | 403),
                    "{who} {method} {path}: {} {}",
                    r.status,
                    r.text()
                );
                if r.status == 401 {
                    assert!(
                        r.header("www-authenticate").is_some(),
                        "{who} {method} {path}: a 401 carries a challenge"
                    );
                }
            }
        }
        assert!(
            pull(creds.cloned(), "team/a").await.is_err(),
            "{who} pulls team/a"
        );
    }
    let anon = as_user(None)
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(anon.status, 401, "{}", anon.text());
    assert!(
        anon.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Basic")),
        "{:?}",
        anon.header("www-authenticate")
    );

    // bob pulls team/b, which alice cannot.
    pull(Some(bob.clone()), "team/b").await.unwrap();
    let r = as_user(Some(&alice))
        .request(
            reqwest::Method::GET,
            &format!("/v2/team/b/manifests/{digest_b}"),
            &[],
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(r.status, 401 | 403),
        "alice on team/b: {}",
        r.status
    );
    assert!(pull(Some(alice.clone()), "team/b").await.is_err());
    // Content is cached by digest, shared by repositories; alice, let into
    // team/a, must not read team/b's (cached) manifest or layer by naming
    // its digest under team/a.
    let layer_b = image_b.blobs()[1].0.clone();
    for path in [
        format!("/v2/team/a/blobs/{layer_b}"),
        format!("/v2/team/a/manifests/{digest_b}"),
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let r = as_user(Some(&alice))
                .request(method.clone(), &path, &[], None)
                .await
                .unwrap();
            assert_eq!(r.status, 404, "alice {method} {path}: {}", r.text());
        }
    }
    // alice, allowed, still gets team/a (now from the cache) with the same
    // bytes the upstream has.
    let r = as_user(Some(&alice))
        .request(
            reqwest::Method::GET,
            &format!("/v2/team/a/blobs/{layer_a}"),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(regcache_tests::sha256_digest(&r.body), layer_a);

    // The upstream saw each user's own token: every token request carried
    // that user's credentials and asked for that user's repositories only
    // when it succeeded with access.
    let requests = tokens.requests();
    for r in &requests {
        assert_ne!(
            r.user.as_deref(),
            Some("pusher"),
            "regcache never acts as another user"
        );
    }
    assert!(requests.iter().any(
        |r| r.user.as_deref() == Some("alice") && r.scopes.iter().any(|s| s.contains("team/a"))
    ));
    assert!(
        requests
            .iter()
            .any(|r| r.user.as_deref() == Some("bob")
                && r.scopes.iter().any(|s| s.contains("team/b")))
    );
    let log = registry.log();
    assert!(
        log.contains("alice") && log.contains("bob"),
        "the registry logs each user's token"
    );
    eprintln!(
        "token requests: {}",
        requests
            .iter()
            .map(|r| format!(
                "{}:{}:{}",
                r.user.as_deref().unwrap_or("-"),
                r.scopes.join(" "),
                r.status
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

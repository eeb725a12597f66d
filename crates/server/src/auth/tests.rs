//! [`Auth::authorize`] and the token endpoint on in-memory upstreams: who
//! gets through, the challenges, 401 versus 403, tokens end to end.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use regcache_upstream::mock::MemoryRegistry;

use super::access::{AccessRuleConfig, AccessRules};
use super::*;
use crate::metrics::Metrics;
use crate::request::{Upstreams, route};
use crate::services::test_support::upstream_for;

const RULES: &str = r#"
[groups]
devs = ["alice"]

[[access]]
groups = ["devs"]
repositories = ["team/**"]
actions = ["pull", "push"]

[[access]]
users = ["anonymous"]
repositories = ["public/**"]
actions = ["pull"]

[[access]]
users = ["bob"]
repositories = ["bob/*"]
actions = ["pull", "delete"]
"#;

struct Fixture {
    auth: Auth,
    upstreams: Upstreams,
    metrics: Metrics,
    _dir: tempfile::TempDir,
}

fn fixture(tweak: impl FnOnce(&mut AuthSettings)) -> Fixture {
    #[derive(serde::Deserialize)]
    struct F {
        groups: BTreeMap<String, Vec<String>>,
        access: Vec<AccessRuleConfig>,
    }
    let f: F = toml::from_str(RULES).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(
        &file,
        format!(
            "alice:{}\nbob:{}\n",
            bcrypt::hash("alice-pw", 4).unwrap(),
            bcrypt::hash("bob-pw", 4).unwrap()
        ),
    )
    .unwrap();
    let mut settings = AuthSettings {
        mode: AuthMode::Htpasswd,
        htpasswd_file: Some(file),
        rules: AccessRules::new(&f.access, &f.groups).unwrap(),
        ..AuthSettings::default()
    };
    tweak(&mut settings);
    let metrics = Metrics::new();
    let key = TokenKey::new(
        p256::ecdsa::SigningKey::random(&mut rand_core::OsRng),
        "test-kid",
    );
    let auth = Auth::new(
        &settings,
        key,
        false,
        "0.0.0.0:5000".parse().unwrap(),
        &metrics,
    )
    .unwrap();
    let upstreams = Upstreams::new(
        vec![upstream_for(Arc::new(MemoryRegistry::new("up")), |_| {})],
        0,
    );
    Fixture {
        auth,
        upstreams,
        metrics,
        _dir: dir,
    }
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

fn request(method: Method, uri: &str, authorization: Option<&str>) -> Request<()> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, "mirror.test:5000");
    if let Some(a) = authorization {
        b = b.header(http::header::AUTHORIZATION, a);
    }
    b.body(()).unwrap()
}

impl Fixture {
    async fn check(&self, method: Method, uri: &str, auth: Option<&str>) -> Result<Grant, Error> {
        let req = request(method, uri, auth);
        let routed = route(req.uri(), &self.upstreams).ok();
        self.auth.authorize(&req, routed.as_ref()).await
    }

    async fn token(&self, query: &str, auth: Option<&str>) -> Result<serde_json::Value, Error> {
        let req = request(Method::GET, &format!("{TOKEN_PATH}?{query}"), auth);
        let resp = self.auth.token_endpoint(&req, &self.upstreams).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[http::header::CACHE_CONTROL], "no-store");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(serde_json::from_slice(&body).unwrap())
    }

    fn failures(&self, reason: &'static str) -> u64 {
        self.metrics
            .auth_failures
            .get_or_create(&crate::metrics::AuthFailure { reason })
            .get()
    }
}

/// (status, code, message, challenge) of a refusal.
fn refusal(r: Result<Grant, Error>) -> (u16, &'static str, String, Option<String>) {
    let e = r.expect_err("expected a refusal");
    let rescued = crate::rescue::classify(&e);
    let err = &rescued.envelope.errors[0];
    (
        rescued.status,
        err.code.as_str(),
        err.message.clone(),
        rescued.challenge,
    )
}

fn user(name: &str) -> Grant {
    Grant::of(Principal::User(name.into()))
}

#[tokio::test]
async fn challenges_name_realm_service_and_scope() {
    let f = fixture(|_| {});
    let (status, code, _, ch) = refusal(f.check(Method::GET, "/v2/", None).await);
    assert_eq!((status, code), (401, "UNAUTHORIZED"));
    assert_eq!(
        ch.as_deref(),
        Some(r#"Bearer realm="http://mirror.test:5000/auth/token",service="regcache""#)
    );
    let (_, _, msg, ch) = refusal(
        f.check(Method::HEAD, "/v2/team/app/manifests/v1", None)
            .await,
    );
    assert_eq!(
        ch.as_deref(),
        Some(
            r#"Bearer realm="http://mirror.test:5000/auth/token",service="regcache",scope="repository:team/app:pull""#
        )
    );
    assert_eq!(msg, "authentication required to pull repository team/app");
    let (_, _, _, ch) = refusal(
        f.check(Method::POST, "/v2/team/app/blobs/uploads/", None)
            .await,
    );
    assert!(
        ch.unwrap()
            .ends_with(r#"scope="repository:team/app:pull,push""#)
    );
    let (_, _, _, ch) = refusal(f.check(Method::GET, "/v2/_catalog", None).await);
    assert!(ch.unwrap().ends_with(r#"scope="registry:catalog:*""#));
    // A registry prefix stays in the scope: it is the name the client used.
    let (status, ..) = refusal(
        f.check(Method::GET, "/v2/up.test/team/app/tags/list", None)
            .await,
    );
    assert_eq!(status, 401);

    // A configured realm; a Host that cannot go into a header parameter.
    let f = fixture(|s| s.realm = Some("https://m.example/auth/token".into()));
    let (.., ch) = refusal(f.check(Method::GET, "/v2/", None).await);
    assert!(
        ch.unwrap()
            .starts_with(r#"Bearer realm="https://m.example/auth/token","#)
    );
    let f = fixture(|_| {});
    let mut req = request(Method::GET, "/v2/", None);
    req.headers_mut()
        .insert(http::header::HOST, "evil\",x=\"y".parse().unwrap());
    let (.., ch) = refusal(f.auth.authorize(&req, None).await);
    assert!(
        ch.unwrap()
            .starts_with(r#"Bearer realm="http://0.0.0.0:5000/auth/token""#)
    );

    let f = fixture(|s| s.challenge = ChallengeKind::Basic);
    let (.., ch) = refusal(f.check(Method::GET, "/v2/team/app/tags/list", None).await);
    assert_eq!(ch.as_deref(), Some(r#"Basic realm="regcache""#));
    assert_eq!(f.failures("no_credentials"), 1);
}

#[tokio::test]
async fn basic_credentials_and_rules() {
    let f = fixture(|_| {});
    let alice = basic("alice", "alice-pw");
    // Plain HTTP without the operator's word: refused, saying why.
    let (status, _, msg, ch) = refusal(
        f.check(Method::GET, "/v2/team/app/tags/list", Some(&alice))
            .await,
    );
    assert_eq!(status, 401);
    assert!(
        msg.contains("plain HTTP") && msg.contains("allow_insecure_http"),
        "{msg}"
    );
    assert!(ch.is_some());
    assert_eq!(f.failures("insecure_transport"), 1);

    let f = fixture(|s| s.allow_insecure_http = true);
    let uri = "/v2/team/app/manifests/v1";
    assert_eq!(
        f.check(Method::GET, uri, Some(&alice)).await.unwrap(),
        user("alice")
    );
    assert_eq!(
        f.check(Method::PUT, uri, Some(&alice)).await.unwrap(),
        user("alice")
    );
    assert_eq!(
        f.check(Method::GET, "/v2/", Some(&alice)).await.unwrap(),
        user("alice")
    );
    // Outside the rules: 403 naming the action and the repository.
    let (status, code, msg, ch) = refusal(f.check(Method::DELETE, uri, Some(&alice)).await);
    assert_eq!((status, code, ch), (403, "DENIED", None));
    assert_eq!(msg, "access denied: you may not delete repository team/app");
    let bob = basic("bob", "bob-pw");
    let (status, ..) = refusal(f.check(Method::GET, uri, Some(&bob)).await);
    assert_eq!(status, 403);
    assert_eq!(
        f.check(Method::DELETE, "/v2/bob/x/manifests/v1", Some(&bob))
            .await
            .unwrap(),
        user("bob")
    );
    // Wrong password and unknown user: the same 401.
    let wrong = refusal(
        f.check(Method::GET, uri, Some(&basic("alice", "nope")))
            .await,
    );
    let unknown = refusal(
        f.check(Method::GET, uri, Some(&basic("mallory", "x")))
            .await,
    );
    assert_eq!(wrong, unknown);
    assert_eq!(
        (wrong.0, wrong.2.as_str()),
        (401, "invalid username or password")
    );
    assert_eq!(f.failures("bad_credentials"), 2);
    // Anonymous: public/** only.
    assert_eq!(
        f.check(Method::GET, "/v2/public/x/manifests/v1", None)
            .await
            .unwrap(),
        Grant::anonymous()
    );
    let (status, ..) = refusal(
        f.check(Method::PUT, "/v2/public/x/manifests/v1", None)
            .await,
    );
    assert_eq!(status, 401, "anonymous refusals invite a login");
}

#[tokio::test]
async fn tokens_carry_what_the_rules_allow() {
    let f = fixture(|s| s.allow_insecure_http = true);
    let alice = basic("alice", "alice-pw");
    let t = f
        .token(
            "service=regcache&scope=repository:team/app:pull,push&scope=repository:bob/x:pull&account=alice&offline_token=true",
            Some(&alice),
        )
        .await
        .unwrap();
    assert_eq!(t["token"], t["access_token"]);
    assert_eq!(t["expires_in"], 300);
    assert!(t["issued_at"].as_str().unwrap().ends_with('Z'), "{t}");
    let token = t["token"].as_str().unwrap();
    let claims = f.auth.verify_token(token).unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.aud, "regcache");
    assert_eq!(
        claims.access,
        vec![token::ResourceActions {
            kind: "repository".into(),
            name: "team/app".into(),
            actions: vec!["pull".into(), "push".into()],
        }],
        "bob/x is not alice's"
    );
    let bearer = format!("Bearer {token}");
    let uri = "/v2/team/app/manifests/v1";
    assert_eq!(
        f.check(Method::GET, uri, Some(&bearer)).await.unwrap(),
        user("alice")
    );
    assert_eq!(
        f.check(Method::GET, "/v2/", Some(&bearer)).await.unwrap(),
        user("alice")
    );
    // Allowed by the rules but not in the token: fetch another.
    let (status, _, _, ch) = refusal(
        f.check(Method::GET, "/v2/team/other/manifests/v1", Some(&bearer))
            .await,
    );
    assert_eq!(status, 401);
    assert!(
        ch.unwrap()
            .ends_with(r#"scope="repository:team/other:pull",error="insufficient_scope""#)
    );
    assert_eq!(f.failures("insufficient_scope"), 1);
    // Not allowed at all: 403.
    let (status, code, ..) = refusal(
        f.check(Method::GET, "/v2/bob/x/manifests/v1", Some(&bearer))
            .await,
    );
    assert_eq!((status, code), (403, "DENIED"));

    // Anonymous tokens: public/** only.
    let t = f
        .token(
            "scope=repository:public/x:pull,push&scope=repository:team/app:pull",
            None,
        )
        .await
        .unwrap();
    let anon = format!("Bearer {}", t["token"].as_str().unwrap());
    let claims = f.auth.verify_token(t["token"].as_str().unwrap()).unwrap();
    assert_eq!(claims.sub, "");
    assert_eq!(claims.access.len(), 1);
    assert_eq!(claims.access[0].actions, ["pull"]);
    assert_eq!(
        f.check(Method::GET, "/v2/public/x/blobs/sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4", Some(&anon)).await.unwrap(),
        Grant::anonymous()
    );
    let (status, ..) = refusal(f.check(Method::GET, uri, Some(&anon)).await);
    assert_eq!(status, 401);

    // Bad logins, a wrong service, a forged token.
    let e = f
        .token("scope=repository:team/app:pull", Some(&basic("alice", "x")))
        .await
        .unwrap_err();
    let r = crate::rescue::classify(&e);
    assert_eq!(
        (r.status, r.challenge.as_deref()),
        (401, Some(r#"Basic realm="regcache""#))
    );
    let e = f.token("service=other", None).await.unwrap_err();
    assert_eq!(crate::rescue::classify(&e).status, 400);
    let mut forged = token.to_owned();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let (status, _, msg, _) = refusal(
        f.check(Method::GET, uri, Some(&format!("Bearer {forged}")))
            .await,
    );
    assert_eq!(
        (status, msg.as_str()),
        (401, "invalid or expired token; fetch a new one")
    );
    assert_eq!(f.failures("invalid_token"), 1);

    // Over plain HTTP without allow_insecure_http the token endpoint refuses
    // Basic credentials too.
    let strict = fixture(|_| {});
    let e = strict
        .token("scope=repository:team/app:pull", Some(&alice))
        .await
        .unwrap_err();
    assert!(
        crate::rescue::classify(&e).envelope.errors[0]
            .message
            .contains("plain HTTP")
    );
}

#[tokio::test]
async fn off_lets_everything_through() {
    let auth = Auth::disabled();
    let req = request(Method::DELETE, "/v2/a/manifests/v1", None);
    assert_eq!(
        auth.authorize(&req, None).await.unwrap(),
        Grant::anonymous()
    );
    assert!(!auth.serves(TOKEN_PATH));
}

#[test]
fn actions_of_routes() {
    let r = |p: &str| crate::routes::Route::parse(p).unwrap().unwrap();
    let m = "/v2/a/manifests/v1";
    let b = "/v2/a/blobs/sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    let table = [
        (Method::GET, m, Action::Pull),
        (Method::HEAD, m, Action::Pull),
        (Method::PUT, m, Action::Push),
        (Method::DELETE, m, Action::Delete),
        (Method::GET, b, Action::Pull),
        (Method::DELETE, b, Action::Delete),
        (Method::POST, "/v2/a/blobs/uploads/", Action::Push),
        (Method::GET, "/v2/a/blobs/uploads/abc", Action::Push),
        (Method::PATCH, "/v2/a/blobs/uploads/abc", Action::Push),
        (Method::DELETE, "/v2/a/blobs/uploads/abc", Action::Push),
        (Method::GET, "/v2/a/tags/list", Action::Pull),
        (Method::POST, m, Action::Push),
    ];
    for (method, path, want) in table {
        assert_eq!(action_of(&method, &r(path)), want, "{method} {path}");
    }
}

#[tokio::test]
async fn a_reload_swaps_the_access_rules_and_the_htpasswd_file() {
    let f = fixture(|s| s.allow_insecure_http = true);
    let uri = "/v2/team/app/manifests/v1";
    let (alice, bob) = (basic("alice", "alice-pw"), basic("bob", "bob-pw"));
    assert!(f.check(Method::GET, uri, Some(&alice)).await.is_ok());
    assert!(f.check(Method::GET, uri, Some(&bob)).await.is_err());

    // New rules: bob may pull team/**, alice nothing; a new htpasswd file
    // where bob has another password.
    let rules: Vec<AccessRuleConfig> = toml::from_str::<BTreeMap<String, Vec<AccessRuleConfig>>>(
        "[[access]]\nusers = [\"bob\"]\nrepositories = [\"team/**\"]\nactions = [\"pull\"]\n",
    )
    .unwrap()
    .remove("access")
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd2");
    std::fs::write(
        &file,
        format!(
            "alice:{}\nbob:{}\n",
            bcrypt::hash("alice-pw", 4).unwrap(),
            bcrypt::hash("bob-new", 4).unwrap()
        ),
    )
    .unwrap();
    let settings = AuthSettings {
        mode: AuthMode::Htpasswd,
        htpasswd_file: Some(file),
        rules: AccessRules::new(&rules, &BTreeMap::new()).unwrap(),
        ..AuthSettings::default()
    };
    f.auth.reload(&settings).unwrap();
    let (status, ..) = refusal(f.check(Method::GET, uri, Some(&alice)).await);
    assert_eq!(status, 403, "alice's rule is gone");
    let (status, ..) = refusal(f.check(Method::GET, uri, Some(&bob)).await);
    assert_eq!(status, 401, "bob's old password is gone");
    assert_eq!(
        f.check(Method::GET, uri, Some(&basic("bob", "bob-new")))
            .await
            .unwrap(),
        user("bob")
    );
    // A missing htpasswd file is refused and changes nothing.
    let broken = AuthSettings {
        htpasswd_file: Some(dir.path().join("missing")),
        rules: AccessRules::default(),
        ..settings
    };
    assert!(f.auth.reload(&broken).is_err());
    assert!(
        f.check(Method::GET, uri, Some(&basic("bob", "bob-new")))
            .await
            .is_ok()
    );
}

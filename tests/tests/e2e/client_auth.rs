//! Client authentication (`[auth] mode = "htpasswd"`) and `[[access]]`
//! rules, against a real docker-registry upstream with real clients:
//! skopeo (`--src-creds`), and in `client_auth_clients.rs` podman
//! (`podman login`), containerd (`ctr --user`) and the Docker 20.10 daemon
//! (`docker login` to regcache as a registry), pull with the right
//! credentials, by tag and by digest; without credentials they get 401 with
//! a `WWW-Authenticate` challenge, and a user outside the rules gets 403
//! `DENIED`. A warm blob (the sendfile fast path) is refused without
//! credentials too. Both challenges work: Bearer (the token flow, the
//! default) and Basic.
//!
//! regcache listens on plain HTTP with `allow_insecure_http = true` (the
//! clients treat 127.0.0.0/8 as an insecure registry).

use regcache_tests::image::Platform;
use regcache_tests::registry::Credentials;
use regcache_tests::skopeo::CopyOptions;
use regcache_tests::{
    ManifestFormat, Regcache, RegcacheOptions, Registry, RegistryClient, RegistryOptions, Skopeo,
    sha256_digest,
};
use serde_json::Value;

use std::time::Duration;

use crate::support::{FULL_ACCEPT, eventually, small_image};

pub(crate) const ALICE: (&str, &str) = ("alice", "alice-secret-7f3a");
pub(crate) const BOB: (&str, &str) = ("bob", "bob-secret-91c2");

/// The upstream with `team/app:v1`, `other/app:v1` and `public/app:v1`, and
/// a regcache in htpasswd mode where alice (group `team`) may pull
/// `team/**`, bob may pull `other/*`, and anyone (anonymous) `public/**`.
pub(crate) struct Fixture {
    pub(crate) regcache: Regcache,
    _upstream: Registry,
    /// Manifest digest of `team/app:v1`.
    pub(crate) team: String,
    /// Its layer digests.
    team_layers: Vec<String>,
    /// The htpasswd file regcache reads.
    htpasswd: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn creds((user, pw): (&str, &str)) -> Credentials {
    Credentials::new(user, pw)
}

pub(crate) async fn fixture(challenge: &str, seed: u64) -> Fixture {
    fixture_with(challenge, seed, true, None).await
}

/// [`fixture`] with `allow_insecure_http` as given, and TLS on regcache's
/// listener with these (chain, key) files.
pub(crate) async fn fixture_with(
    challenge: &str,
    seed: u64,
    allow_insecure_http: bool,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> Fixture {
    let upstream = Registry::start(RegistryOptions::default());
    let direct = RegistryClient::new(upstream.url());
    let team_image = small_image(seed, Platform::linux_amd64());
    let team = direct
        .push_image("team/app", "v1", &team_image, ManifestFormat::Docker)
        .await;
    let other_image = small_image(seed + 1, Platform::linux_amd64());
    direct
        .push_image("other/app", "v1", &other_image, ManifestFormat::Docker)
        .await;
    let public_image = small_image(seed + 2, Platform::linux_amd64());
    direct
        .push_image("public/app", "v1", &public_image, ManifestFormat::Docker)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    // The hashes `htpasswd -B` writes ($2y$), made with the bcrypt crate.
    let hash = |pw: &str| bcrypt::hash(pw, 5).unwrap().replacen("$2b$", "$2y$", 1);
    std::fs::write(
        &htpasswd,
        format!(
            "# regcache e2e users\n{}:{}\n{}:{}\n",
            ALICE.0,
            hash(ALICE.1),
            BOB.0,
            hash(BOB.1)
        ),
    )
    .unwrap();
    let htpasswd_text = htpasswd.display().to_string();
    let mut options = RegcacheOptions::new(upstream.url());
    if let Some((chain, key)) = tls {
        options = options.tls(chain, key);
    }
    let regcache = Regcache::start(options.extra_toml(&format!(
        "[auth]\nmode = \"htpasswd\"\nhtpasswd_file = {:?}\nallow_insecure_http = {allow_insecure_http}\n\
         challenge = \"{challenge}\"\n\n[auth.groups]\nteam = [\"alice\"]\n\n\
         [[access]]\ngroups = [\"team\"]\nrepositories = [\"team/**\"]\nactions = [\"pull\"]\n\n\
         [[access]]\nusers = [\"bob\"]\nrepositories = [\"other/*\"]\nactions = [\"pull\"]\n\n\
         [[access]]\nusers = [\"anonymous\"]\nrepositories = [\"public/**\"]\nactions = [\"pull\"]\n",
        htpasswd_text
    )));
    Fixture {
        regcache,
        _upstream: upstream,
        team,
        team_layers: team_image.layer_digests(),
        htpasswd,
        _dir: dir,
    }
}

fn code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A token from regcache's token endpoint for `scope`, as `who`.
async fn token(regcache: &Regcache, who: Option<(&str, &str)>, scope: &str) -> String {
    let mut client = RegistryClient::new(regcache.url());
    if let Some(w) = who {
        client = client.with_basic_auth(creds(w));
    }
    let got = client
        .request(
            reqwest::Method::GET,
            &format!("/auth/token?service=regcache&scope={scope}"),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(got.status, 200, "token for {scope}: {}", got.text());
    let v: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["token"], v["access_token"]);
    assert!(v["expires_in"].as_u64().unwrap() > 0, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn http_challenges_tokens_rules_and_the_fast_path() {
    let fx = fixture("bearer", 0xa170).await;
    let rc = &fx.regcache;
    let anon = RegistryClient::new(rc.url());
    let realm = format!(
        "Bearer realm=\"{}/auth/token\",service=\"regcache\"",
        rc.url()
    );

    // The ping tells clients to log in.
    let ping = anon
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(ping.status, 401, "{}", ping.text());
    assert_eq!(ping.header("www-authenticate"), Some(realm.as_str()));
    assert_eq!(code(&ping.body), "UNAUTHORIZED");

    // A manifest: the challenge names the scope.
    let m = anon
        .get_manifest("team/app", "v1", FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(m.status, 401, "{}", m.text());
    assert_eq!(
        m.header("www-authenticate"),
        Some(format!("{realm},scope=\"repository:team/app:pull\"").as_str())
    );

    // alice's token: by tag, by digest, and a layer (now cached on disk).
    let t = token(rc, Some(ALICE), "repository:team/app:pull").await;
    let alice = RegistryClient::new(rc.url()).with_bearer(&t);
    let got = alice
        .get_manifest("team/app", "v1", FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.digest(), Some(fx.team.as_str()));
    let got = alice
        .get_manifest("team/app", &fx.team, FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(
        (got.status, sha256_digest(&got.body)),
        (200, fx.team.clone())
    );
    let layer = &fx.team_layers[0];
    let got = alice.get_blob("team/app", layer).await.unwrap();
    assert_eq!((got.status, sha256_digest(&got.body)), (200, layer.clone()));

    // The warm blob without credentials: 401 on the fast path, no bytes.
    let from_cache =
        |m: &regcache_tests::Metrics| m.sum("regcache_served_bytes_total", &[("source", "cache")]);
    let fast = |m: &regcache_tests::Metrics| {
        m.sum("regcache_responses_total", &[("via", "fast")])
            + m.sum("regcache_responses_total", &[("via", "sendfile")])
    };
    let before = rc.metrics().await;
    let got = anon.get_blob("team/app", layer).await.unwrap();
    assert_eq!((got.status, code(&got.body)), (401, "UNAUTHORIZED".into()));
    assert!(got.header("www-authenticate").is_some());
    let after = rc.metrics_when(|m| fast(m) > fast(&before)).await;
    assert_eq!(
        from_cache(&after),
        from_cache(&before),
        "no cached bytes went out"
    );
    assert_eq!(
        fast(&after),
        fast(&before) + 1.0,
        "answered on the fast path"
    );
    // ... and with the token it is served from the cache, on the fast path.
    let got = alice.get_blob("team/app", layer).await.unwrap();
    assert_eq!((got.status, sha256_digest(&got.body)), (200, layer.clone()));
    let served = rc
        .metrics_when(|m| from_cache(m) > from_cache(&after) && fast(m) > fast(&after))
        .await;
    assert_eq!(
        from_cache(&served),
        from_cache(&after) + got.body.len() as f64,
        "{}",
        served.text
    );
    assert_eq!(fast(&served), fast(&after) + 1.0);

    // bob is outside the rules for team/app: his token does not carry it,
    // and the rules say no: 403 DENIED naming the action and repository.
    let bob_token = token(rc, Some(BOB), "repository:team/app:pull").await;
    let bob = RegistryClient::new(rc.url()).with_bearer(&bob_token);
    let got = bob
        .get_manifest("team/app", "v1", FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(
        (got.status, code(&got.body)),
        (403, "DENIED".into()),
        "{}",
        got.text()
    );
    assert_eq!(
        message(&got.body),
        "access denied: you may not pull repository team/app"
    );
    let got = bob.get_blob("team/app", layer).await.unwrap();
    assert_eq!(got.status, 403, "a warm blob by digest too");
    // With Basic credentials straight on /v2/: the same.
    let bob_basic = RegistryClient::new(rc.url()).with_basic_auth(creds(BOB));
    let got = bob_basic
        .get_manifest("team/app", &fx.team, FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(got.status, 403);
    let got = bob_basic
        .get_manifest("other/app", "v1", FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    // alice's token does not reach other/app.
    let got = alice
        .get_manifest("other/app", "v1", FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(got.status, 403, "{}", got.text());

    // The catalog is for principals with pull on "**": nobody here.
    let got = bob_basic
        .request(reqwest::Method::GET, "/v2/_catalog", &[], None)
        .await
        .unwrap();
    assert_eq!((got.status, code(&got.body)), (403, "DENIED".into()));
    assert_eq!(
        message(&got.body),
        "access denied: you may not pull the catalog"
    );

    // The operator asks why, with the same configuration file.
    let config = rc.config_path().display().to_string();
    for (user, want) in [
        ("bob", "denied: no access rule grants it"),
        ("alice", "allowed by access rule #1"),
    ] {
        let (status, stdout, stderr) = regcache_tests::regcache::run_regcache(
            &[
                "policy", "explain", "team/app", "--user", user, "--config", &config,
            ],
            &[],
        )
        .await;
        assert_eq!(status, Some(0), "{stderr}");
        assert!(
            stdout.contains(&format!(
                "access: user \"{user}\" pull repository \"team/app\""
            )) && stdout.contains(want),
            "{user}: {stdout}"
        );
    }

    // Wrong password and unknown user: the same answer.
    let wrong = RegistryClient::new(rc.url()).with_basic_auth(creds((ALICE.0, "nope")));
    let nobody = RegistryClient::new(rc.url()).with_basic_auth(creds(("mallory", "x")));
    let a = wrong
        .get_manifest("team/app", "v1", FULL_ACCEPT)
        .await
        .unwrap();
    let b = nobody
        .get_manifest("team/app", "v1", FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    assert_eq!(a.status, 401);
    // A tampered token.
    let forged = format!("{}x", &t[..t.len() - 1]);
    let got = RegistryClient::new(rc.url())
        .with_bearer(forged)
        .get_manifest("team/app", "v1", FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(got.status, 401);

    // Counted by reason, without names; no secret in the log.
    let metrics = rc.metrics().await;
    for reason in [
        "no_credentials",
        "denied",
        "bad_credentials",
        "invalid_token",
    ] {
        assert!(
            metrics.sum("regcache_auth_failures_total", &[("reason", reason)]) >= 1.0,
            "{reason}:\n{}",
            metrics.text
        );
    }
    assert!(!metrics.text.contains("alice") && !metrics.text.contains("bob"));
    let log = rc.log();
    for secret in [ALICE.1, BOB.1, t.as_str(), bob_token.as_str()] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

/// `skopeo copy` through regcache into `dir:`; the manifest digest.
pub(crate) async fn skopeo_pull(
    rc: &Regcache,
    reference: &str,
    who: Option<(&str, &str)>,
) -> Result<String, regcache_tests::skopeo::SkopeoError> {
    let out = tempfile::tempdir().unwrap();
    Skopeo::new()
        .try_copy(
            &format!("docker://{}/{reference}", rc.host()),
            &format!("dir:{}", out.path().display()),
            None,
            false,
            &CopyOptions {
                src_creds: who.map(creds),
                ..CopyOptions::default()
            },
        )
        .await?;
    Ok(sha256_digest(
        &std::fs::read(out.path().join("manifest.json")).unwrap(),
    ))
}

#[tokio::test]
async fn skopeo_with_bearer_and_basic_challenges() {
    for (challenge, seed) in [("bearer", 0xa180), ("basic", 0xa190)] {
        let fx = fixture(challenge, seed).await;
        let rc = &fx.regcache;
        let by_digest = format!("team/app@{}", fx.team);
        for reference in ["team/app:v1", by_digest.as_str()] {
            let got = skopeo_pull(rc, reference, Some(ALICE))
                .await
                .unwrap_or_else(|e| panic!("{challenge}: {e}\n{}", rc.log()));
            assert_eq!(got, fx.team, "{challenge} {reference}");
            let e = skopeo_pull(rc, reference, None).await.unwrap_err();
            assert!(
                e.stderr.contains("authentication required"),
                "{challenge} {reference} without credentials: {e}"
            );
            let e = skopeo_pull(rc, reference, Some(BOB)).await.unwrap_err();
            assert!(
                e.stderr.contains("denied") && e.stderr.contains("pull repository team/app"),
                "{challenge} {reference} as bob: {e}"
            );
        }
        let e = skopeo_pull(rc, "team/app:v1", Some((ALICE.0, "wrong")))
            .await
            .unwrap_err();
        assert!(
            e.stderr.contains("invalid username or password"),
            "{challenge}: {e}"
        );
        skopeo_pull(rc, "other/app:v1", Some(BOB))
            .await
            .unwrap_or_else(|e| panic!("{challenge}: {e}"));
        // Anonymous access, where a rule names `anonymous`: pull only.
        skopeo_pull(rc, "public/app:v1", None)
            .await
            .unwrap_or_else(|e| panic!("{challenge} anonymous: {e}"));
        let metrics = rc.metrics().await;
        let via_basic = metrics.sum("regcache_auth_failures_total", &[]);
        assert!(via_basic >= 3.0, "{}", metrics.text);
    }
}

#[tokio::test]
async fn a_changed_htpasswd_file_applies_within_seconds() {
    let fx = fixture("basic", 0xa1d0).await;
    let rc = &fx.regcache;
    let status = async |who: (&str, &str)| {
        RegistryClient::new(rc.url())
            .with_basic_auth(creds(who))
            .get_manifest("other/app", "v1", FULL_ACCEPT)
            .await
            .unwrap()
            .status
    };
    assert_eq!(status(BOB).await, 200);
    let new_pw = "bob-rotated-55e0";
    let alice_line = std::fs::read_to_string(&fx.htpasswd)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("alice:"))
        .unwrap()
        .to_owned();
    std::fs::write(
        &fx.htpasswd,
        format!("{alice_line}\nbob:{}\n", bcrypt::hash(new_pw, 5).unwrap()),
    )
    .unwrap();
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(5), async || status((BOB.0, new_pw))
            .await
            == 200)
        .await,
        "the new password was not taken within 5 s"
    );
    let took = started.elapsed();
    assert_eq!(
        status(BOB).await,
        401,
        "the old password (cached before) no longer works"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // A file that does not load keeps the users, and is counted.
    std::fs::write(&fx.htpasswd, "bob:$apr1$abc$notbcrypt\n").unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || {
            // The file is looked at when a password is checked.
            status((BOB.0, new_pw)).await;
            rc.metrics()
                .await
                .sum("regcache_htpasswd_reload_errors_total", &[])
                >= 1.0
        })
        .await,
        "the bad file was not noticed"
    );
    assert_eq!(status((BOB.0, new_pw)).await, 200);
    let log = rc.log();
    assert!(log.contains("keeping the previous users"), "{log}");
    assert!(
        !log.contains("notbcrypt"),
        "the file's content is never logged"
    );
}

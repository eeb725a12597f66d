//! Self-checks of the harness against the real tools: auth (htpasswd and
//! our token server), proxy mode, skopeo pushes from a generated OCI layout,
//! access-log reading, and the fault proxy.

use std::time::{Duration, Instant};

use regcache_tests::image::{config, default_history, media};
use regcache_tests::registry::Credentials;
use regcache_tests::skopeo::CopyOptions;
use regcache_tests::token::TokenSigning;
use regcache_tests::{
    Fault, FaultProxy, Image, ImageGen, ManifestFormat, OciLayout, Platform, Registry,
    RegistryClient, RegistryOptions, Skopeo, SkopeoFormat, Target, TokenServer, TokenServerOptions,
};
use serde_json::Value;

fn small_image(seed: u64) -> Image {
    let mut g = ImageGen::new(seed);
    let platform = Platform::linux_amd64();
    let layers = g.layers(2);
    let cfg = config(&platform, &layers, &default_history(2), Value::Null);
    Image::new(&cfg, layers, platform)
}

#[tokio::test]
async fn htpasswd_registry_takes_a_skopeo_push_with_credentials() {
    let creds = Credentials::new("alice", "wonderland");
    let registry = Registry::start(RegistryOptions {
        htpasswd: Some(creds.clone()),
        ..RegistryOptions::default()
    });
    let anonymous = RegistryClient::new(registry.url());
    let ping = anonymous
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(ping.status, 401);
    assert!(
        ping.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic")),
        "{:?}",
        ping.headers
    );
    let authed = RegistryClient::new(registry.url()).with_basic_auth(creds.clone());
    let ping = authed
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(ping.status, 200);

    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(work.path());
    let image = small_image(1);
    layout.add_image("small", &image);
    let dst = format!("docker://{}/auth/small:1", registry.host());
    let skopeo = Skopeo::new();
    let without = skopeo
        .try_copy(
            &layout.reference("small"),
            &dst,
            Some(SkopeoFormat::V2s2),
            false,
            &CopyOptions::default(),
        )
        .await;
    assert!(without.is_err(), "push without credentials must fail");
    skopeo
        .try_copy(
            &layout.reference("small"),
            &dst,
            Some(SkopeoFormat::V2s2),
            false,
            &CopyOptions {
                dest_creds: Some(creds),
                ..CopyOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = authed
        .get_manifest(
            "auth/small",
            "1",
            &[regcache_tests::image::media::DOCKER_MANIFEST],
        )
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let manifest: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(manifest["config"]["digest"], image.config_digest().as_str());

    let entries = registry.access_entries();
    assert!(
        entries.iter().any(|e| e.method == "PUT"
            && e.path == "/v2/auth/small/manifests/1"
            && e.status == 201),
        "access log: {:#?}",
        registry.access_log()
    );
    assert!(entries.iter().any(|e| e.path == "/v2/" && e.status == 401));
}

#[tokio::test]
async fn proxy_mode_registry_pulls_through_and_logs_upstream_gets() {
    let upstream = Registry::start(RegistryOptions::default());
    let image = small_image(2);
    RegistryClient::new(upstream.url())
        .push_image("library/small", "latest", &image, ManifestFormat::Docker)
        .await;
    let proxy = Registry::start(RegistryOptions {
        proxy_remote: Some(upstream.url()),
        ..RegistryOptions::default()
    });

    let out = tempfile::tempdir().unwrap();
    Skopeo::new()
        .copy(
            &format!("docker://{}/library/small:latest", proxy.host()),
            &format!("dir:{}", out.path().join("pulled").display()),
            None,
            false,
        )
        .await;
    let pulled_config = std::fs::read(
        out.path()
            .join("pulled")
            .join(&image.config_digest()["sha256:".len()..]),
    )
    .unwrap();
    assert_eq!(pulled_config, image.config.to_vec());

    // The proxy fetched every layer from the upstream at least once.
    let blob_gets = |digest: &str| {
        upstream
            .access_entries()
            .iter()
            .filter(|e| e.method == "GET" && e.path.ends_with(&format!("/blobs/{digest}")))
            .count()
    };
    let mut waited = 0;
    while image.layers.iter().any(|l| blob_gets(&l.digest) == 0) && waited < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    for layer in &image.layers {
        assert!(
            blob_gets(&layer.digest) >= 1,
            "upstream access log: {:#?}",
            upstream.access_log()
        );
    }
}

/// Upload-API push of `image` with a Bearer token minted for `repo`.
async fn push_with_token(
    registry: &Registry,
    tokens: &TokenServer,
    repo: &str,
    image: &Image,
) -> String {
    let token = tokens.mint("alice", &[&format!("repository:{repo}:pull,push")]);
    RegistryClient::new(registry.url())
        .with_bearer(token)
        .push_image(repo, "1", image, ManifestFormat::Docker)
        .await
}

#[tokio::test]
async fn token_server_is_trusted_by_the_registry() {
    let alice = Credentials::new("alice", "tok3n-pass");
    let tokens = TokenServer::start(TokenServerOptions::with_user(alice.clone()));
    let registry = Registry::start(RegistryOptions {
        token_auth: Some(tokens.registry_auth()),
        ..RegistryOptions::default()
    });

    // The challenge names our realm and service.
    let anonymous = RegistryClient::new(registry.url());
    let ping = anonymous
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(ping.status, 401, "{}", ping.text());
    let challenge = ping.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&format!("realm=\"{}\"", tokens.realm()))
            && challenge.contains(&format!("service=\"{}\"", tokens.service())),
        "{challenge}"
    );

    // The token endpoint checks Basic credentials and counts requests.
    let scope = "repository:tok/small:pull,push";
    let ask = |creds: Option<Credentials>| {
        let mut client = RegistryClient::new(tokens.realm());
        if let Some(c) = creds {
            client = client.with_basic_auth(c);
        }
        let url = format!(
            "{}?service={}&scope={}",
            tokens.realm(),
            tokens.service(),
            scope.replace(':', "%3A").replace('/', "%2F")
        );
        async move {
            client
                .request(reqwest::Method::GET, &url, &[], None)
                .await
                .unwrap()
        }
    };
    let wrong = ask(Some(Credentials::new("alice", "wrong"))).await;
    assert_eq!(wrong.status, 401);
    let anonymous_token = ask(None).await;
    assert_eq!(anonymous_token.status, 401, "anonymous pull is off");
    let granted = ask(Some(alice.clone())).await;
    assert_eq!(granted.status, 200, "{}", granted.text());
    let answer: Value = serde_json::from_slice(&granted.body).unwrap();
    let token = answer["token"].as_str().unwrap().to_owned();
    assert_eq!(answer["access_token"], token.as_str());
    assert_eq!(tokens.request_count(), 3);
    let last = tokens.requests().pop().unwrap();
    assert_eq!(
        (last.user.as_deref(), last.scopes, last.status),
        (Some("alice"), vec![scope.to_owned()], 200)
    );

    // A direct client with that token pushes and pulls.
    let image = small_image(31);
    let with_token = RegistryClient::new(registry.url()).with_bearer(token);
    let digest = with_token
        .push_image("tok/small", "1", &image, ManifestFormat::Docker)
        .await;
    let got = with_token
        .get_manifest("tok/small", &digest, &[media::DOCKER_MANIFEST])
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.body.to_vec(), image.docker_manifest());

    // A pull-only token cannot push; a token for another repository cannot pull.
    let pull_only = tokens.mint("alice", &["repository:tok/small:pull"]);
    let refused = RegistryClient::new(registry.url())
        .with_bearer(pull_only)
        .put_manifest(
            "tok/small",
            "2",
            media::DOCKER_MANIFEST,
            &image.docker_manifest(),
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    let other = tokens.mint("alice", &["repository:tok/other:pull"]);
    let refused = RegistryClient::new(registry.url())
        .with_bearer(other)
        .get_manifest("tok/small", "1", &[media::DOCKER_MANIFEST])
        .await
        .unwrap();
    assert_eq!(refused.status, 401, "{}", refused.text());

    // A token signed by a key outside the bundle is rejected.
    let stranger = TokenServer::start(TokenServerOptions {
        key_seed: 99,
        ..TokenServerOptions::with_user(alice.clone())
    });
    let forged = stranger.mint("alice", &["repository:tok/small:pull"]);
    let refused = RegistryClient::new(registry.url())
        .with_bearer(forged)
        .get_manifest("tok/small", "1", &[media::DOCKER_MANIFEST])
        .await
        .unwrap();
    assert_eq!(refused.status, 401, "{}", refused.text());

    // skopeo does the whole challenge → token → retry dance.
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(work.path());
    layout.add_image("s", &small_image(32));
    let creds = CopyOptions {
        dest_creds: Some(alice.clone()),
        src_creds: Some(alice.clone()),
        ..CopyOptions::default()
    };
    let skopeo = Skopeo::new();
    let reference = format!("docker://{}/tok/skopeo:1", registry.host());
    skopeo
        .try_copy(
            &layout.reference("s"),
            &reference,
            Some(SkopeoFormat::V2s2),
            false,
            &creds,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    skopeo
        .try_copy(
            &reference,
            &format!("dir:{}", work.path().join("out").display()),
            None,
            false,
            &creds,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        tokens.requests().iter().any(|r| r
            .scopes
            .iter()
            .any(|s| s.starts_with("repository:tok/skopeo:"))
            && r.user.as_deref() == Some("alice")
            && r.status == 200),
        "{:#?}",
        tokens.requests()
    );
}

#[tokio::test]
async fn token_server_x5c_chain_is_trusted_by_the_registry() {
    let alice = Credentials::new("alice", "x5c");
    let tokens = TokenServer::start(TokenServerOptions {
        signing: TokenSigning::CertChain,
        ..TokenServerOptions::with_user(alice)
    });
    let registry = Registry::start(RegistryOptions {
        token_auth: Some(tokens.registry_auth()),
        ..RegistryOptions::default()
    });
    let digest = push_with_token(&registry, &tokens, "x5c/small", &small_image(33)).await;
    assert!(digest.starts_with("sha256:"));
}

#[tokio::test]
async fn fault_proxy_forwards_counts_and_damages() {
    let registry = Registry::start(RegistryOptions::default());
    let proxy = FaultProxy::start(&registry.url());
    let via = RegistryClient::new(proxy.url());
    // Pushes go through the proxy too (the registry builds the upload
    // Location from the Host header, which is forwarded unchanged).
    let blob = regcache_tests::image::random_bytes(41, 1 << 20);
    let digest = via.push_blob("fault/blob", blob.clone().into()).await;
    let path = format!("/v2/fault/blob/blobs/{digest}");

    let clean = via.get_compared(&path, &[], &blob).await.unwrap();
    assert!(clean.is_exact(), "{clean:?}");
    assert_eq!(proxy.blob_gets(&digest), 1);

    proxy.inject(Target::Blob(digest.clone()), Fault::Corrupt);
    let corrupt = via.get_compared(&path, &[], &blob).await.unwrap();
    assert_eq!(corrupt.len, blob.len() as u64);
    assert_eq!(corrupt.first_difference, Some(blob.len() as u64 / 2));
    assert!(corrupt.is_clean_but_wrong(), "{corrupt:?}");

    proxy.clear();
    proxy.inject(Target::AllBlobs, Fault::Truncate);
    let cut = via.get_compared(&path, &[], &blob).await.unwrap();
    assert_eq!(cut.status, 200);
    assert!(cut.error.is_some(), "{cut:?}");
    // hyper drops what it had not flushed when the body fails.
    assert!(cut.len <= blob.len() as u64 / 2, "{cut:?}");

    proxy.clear();
    proxy.inject_times(Target::Path("/manifests/".into()), Fault::Status(503), 1);
    let unavailable = via
        .get_manifest("fault/blob", "latest", &[media::DOCKER_MANIFEST])
        .await
        .unwrap();
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.error_code().as_deref(), Some("UNAVAILABLE"));
    let passed = via
        .get_manifest("fault/blob", "latest", &[media::DOCKER_MANIFEST])
        .await
        .unwrap();
    assert_eq!(
        passed.status,
        404,
        "the rule was used up: {}",
        passed.text()
    );

    proxy.inject(Target::Path("/v2/".into()), Fault::Status(429));
    let limited = via
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("1"));

    proxy.clear();
    proxy.inject(
        Target::Path("/v2/".into()),
        Fault::Stall(Duration::from_millis(300)),
    );
    let started = Instant::now();
    let ping = via
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(ping.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    proxy.clear();
    proxy.inject(Target::AllBlobs, Fault::Throttle(4 << 20));
    let started = Instant::now();
    let slow = via.get_compared(&path, &[], &blob).await.unwrap();
    assert!(slow.is_exact(), "{slow:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "1 MiB at 4 MiB/s took {:?}",
        started.elapsed()
    );

    assert_eq!(
        proxy.blob_gets(&digest),
        4,
        "clean, corrupt, truncated, slow"
    );
    assert_eq!(proxy.count("GET", "/manifests/latest"), 2);
    let seen = proxy.requests();
    assert!(
        seen.iter()
            .any(|s| s.fault == Some(Fault::Status(429)) && s.status == 429),
        "{seen:#?}"
    );
}

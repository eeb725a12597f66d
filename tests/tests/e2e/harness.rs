//! Self-checks of the harness against the real tools: auth, proxy mode,
//! skopeo pushes from a generated OCI layout, and access-log reading.

use regcache_tests::image::{config, default_history};
use regcache_tests::registry::Credentials;
use regcache_tests::skopeo::CopyOptions;
use regcache_tests::{
    Image, ImageGen, ManifestFormat, OciLayout, Platform, Registry, RegistryClient,
    RegistryOptions, Skopeo, SkopeoFormat,
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

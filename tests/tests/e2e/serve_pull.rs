//! `regcache serve` as a pull-through cache, driven by skopeo: the same bytes
//! as a direct pull in every upstream auth mode, a warm second pull that costs
//! the upstream no blob download, and an offline restart.

use std::time::Duration;

use regcache_tests::skopeo::CopyOptions;
use regcache_tests::{Regcache, RegistryClient, Skopeo, sha256_digest};

use crate::support::{
    FULL_ACCEPT, Mode, Pushed, Upstream, all_upstream_blob_gets, assert_api_version, dir_contents,
    push_test_images, settle,
};

const RESPONSES: &str = "regcache_responses_total";

/// `skopeo copy` of every image from `host` into `out/<label>`.
async fn copy_all(host: &str, images: &[Pushed], out: &std::path::Path, creds: &CopyOptions) {
    std::fs::create_dir_all(out).unwrap();
    let skopeo = Skopeo::new();
    let copies = images.iter().map(|image| {
        let src = format!("docker://{host}/{}:{}", image.repo, image.tag);
        let dst = format!("dir:{}", out.join(image.label).display());
        let skopeo = &skopeo;
        async move {
            skopeo
                .try_copy(&src, &dst, None, image.list, creds)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    });
    futures_util::future::join_all(copies).await;
}

/// Pushes the test images (with the 100 MiB one), copies them directly and
/// through regcache, compares, then copies through regcache again and checks
/// the upstream saw no blob GET for it.
async fn pull_through_matches_direct(mode: Mode) {
    let upstream = Upstream::start(mode);
    let prefix = format!("e2e-{mode:?}").to_lowercase();
    let images = push_test_images(&upstream, &prefix, true).await;
    let regcache = upstream.start_regcache();
    let work = tempfile::tempdir().unwrap();

    copy_all(
        &upstream.registry.host(),
        &images,
        &work.path().join("direct"),
        &upstream.skopeo_creds(),
    )
    .await;
    settle(&upstream.registry, Duration::from_millis(300)).await;
    let before_regcache = all_upstream_blob_gets(&upstream.registry).len();

    // Clients of regcache need no credentials: regcache has the upstream's.
    copy_all(
        &regcache.host(),
        &images,
        &work.path().join("first"),
        &CopyOptions::default(),
    )
    .await;
    // A pull is all bodiless GETs and HEADs: regcache's own HTTP/1 loop answers
    // every one (hyper would only see pushes and HTTP/2), and the cold 100 MiB
    // layer goes out with sendfile from the fill's file as it arrives.
    let first = regcache.metrics().await;
    let via = |m: &regcache_tests::Metrics, via: &str| m.sum(RESPONSES, &[("via", via)]);
    assert_eq!(
        via(&first, "hyper"),
        0.0,
        "{mode:?}: a pull reached hyper; metrics:\n{}",
        first.text
    );
    assert!(
        via(&first, "sendfile_fill") >= 1.0 && via(&first, "fast") >= 1.0,
        "{mode:?}: the first pull should be answered on the fast path, the cold big layer with sendfile; metrics:\n{}",
        first.text
    );
    for image in &images {
        let direct = dir_contents(&work.path().join("direct").join(image.label));
        let through = dir_contents(&work.path().join("first").join(image.label));
        assert_eq!(
            through, direct,
            "{mode:?} {}: files (path, size, sha256) through regcache differ from a direct copy",
            image.label
        );
        let manifest = std::fs::read(
            work.path()
                .join("first")
                .join(image.label)
                .join("manifest.json"),
        )
        .unwrap();
        assert_eq!(
            sha256_digest(&manifest),
            image.digest,
            "{mode:?} {}",
            image.label
        );
        for blob in &image.blobs {
            let hex = &blob["sha256:".len()..];
            assert!(
                through.iter().any(|(p, ..)| p.to_str() == Some(hex)),
                "{mode:?} {}: blob {blob} not copied",
                image.label
            );
        }
    }

    // The first copy fetched every blob from the upstream at least once.
    settle(&upstream.registry, Duration::from_millis(500)).await;
    let after_first = all_upstream_blob_gets(&upstream.registry);
    for image in &images {
        for blob in &image.blobs {
            assert!(
                after_first[before_regcache..]
                    .iter()
                    .any(|p| p.ends_with(blob.as_str())),
                "{mode:?}: regcache never fetched {blob} from the upstream"
            );
        }
    }

    copy_all(
        &regcache.host(),
        &images,
        &work.path().join("second"),
        &CopyOptions::default(),
    )
    .await;
    settle(&upstream.registry, Duration::from_millis(500)).await;
    let after_second = all_upstream_blob_gets(&upstream.registry);
    assert_eq!(
        &after_second[after_first.len()..],
        &[] as &[String],
        "{mode:?}: the second copy through regcache made upstream blob GETs"
    );
    let second = regcache.metrics().await;
    assert_eq!(
        via(&second, "hyper"),
        0.0,
        "{mode:?}: metrics:\n{}",
        second.text
    );
    assert!(
        via(&second, "sendfile") > via(&first, "sendfile"),
        "{mode:?}: the warm 100 MiB layer should go out with sendfile from the cache; metrics:\n{}",
        second.text
    );
    for image in &images {
        assert_eq!(
            dir_contents(&work.path().join("second").join(image.label)),
            dir_contents(&work.path().join("direct").join(image.label)),
            "{mode:?} {}: second copy",
            image.label
        );
    }

    if let Some(tokens) = &upstream.tokens {
        let regcache_requests: Vec<_> = tokens
            .requests()
            .into_iter()
            .filter(|r| {
                r.status == 200
                    && r.scopes.iter().any(|s| s.contains(&format!(":{prefix}/")))
                    && r.scopes.iter().all(|s| s.ends_with(":pull"))
            })
            .collect();
        assert!(
            !regcache_requests.is_empty(),
            "regcache fetched no pull-only token with its credentials: {:#?}",
            tokens.requests()
        );
    }
    let metrics = regcache.metrics().await;
    assert!(
        metrics.sum("regcache_served_bytes_total", &[]) >= 2.0 * crate::support::BIG as f64,
        "two copies of the 100 MiB layer went through regcache; metrics:\n{}",
        metrics.text
    );
}

#[tokio::test]
async fn pull_through_plain_upstream() {
    pull_through_matches_direct(Mode::Plain).await;
}

#[tokio::test]
async fn pull_through_htpasswd_upstream() {
    pull_through_matches_direct(Mode::Htpasswd).await;
}

#[tokio::test]
async fn pull_through_token_upstream() {
    pull_through_matches_direct(Mode::Token).await;
}

#[tokio::test]
async fn lifecycle_health_ready_metrics_and_sigterm() {
    let upstream = Upstream::start(Mode::Plain);
    let mut regcache = upstream.start_regcache();
    let admin = RegistryClient::new(regcache.admin_url());
    for path in ["/healthz", "/readyz"] {
        let got = admin
            .request(reqwest::Method::GET, path, &[], None)
            .await
            .unwrap();
        assert_eq!(got.status, 200, "{path}: {}", got.text());
    }
    let ping = RegistryClient::new(regcache.url())
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(ping.status, 200, "{}", ping.text());
    assert_api_version("GET /v2/", &ping);
    let metrics = regcache.metrics().await;
    for name in [
        "regcache_fill_waiters",
        "regcache_cache_bytes",
        "regcache_evictions_total",
        "regcache_fills_failed_total",
    ] {
        assert!(
            metrics.has(name),
            "/metrics lacks {name}:\n{}",
            metrics.text
        );
    }
    // After one upstream request the labelled families exist too.
    let missing = RegistryClient::new(regcache.url())
        .get_manifest("lifecycle/none", "v1", FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(missing.status, 404, "{}", missing.text());
    let metrics = regcache.metrics().await;
    for name in [
        "regcache_cache_lookups_total",
        "regcache_upstream_requests_total",
    ] {
        assert!(
            metrics.has(name),
            "/metrics lacks {name}:\n{}",
            metrics.text
        );
    }
    assert!(
        metrics.sum(
            "regcache_upstream_requests_total",
            &[("upstream", "e2e-upstream")]
        ) >= 1.0,
        "{}",
        metrics.text
    );

    let status = regcache.stop();
    assert!(
        status.success(),
        "SIGTERM should exit 0, got {status}; log:\n{}",
        regcache.log()
    );
    regcache.restart();
    let ping = RegistryClient::new(regcache.url())
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(ping.status, 200);
}

/// Pull everything through regcache, stop it, kill the registry, start
/// regcache again on the same data dir: every tag, digest and blob is still
/// served, by the tag index's stale answer once the tag TTL has passed.
#[tokio::test]
async fn restart_serves_everything_with_the_upstream_gone() {
    let mut upstream = Upstream::start(Mode::Plain);
    let images = push_test_images(&upstream, "offline", false).await;
    let mut regcache = Regcache::start(
        upstream
            .regcache_options()
            .tag_ttl_secs(1)
            .retry_attempts(1),
    );
    let work = tempfile::tempdir().unwrap();
    copy_all(
        &regcache.host(),
        &images,
        &work.path().join("online"),
        &CopyOptions::default(),
    )
    .await;
    // Record what regcache answered online, by tag and by digest.
    let client = RegistryClient::new(regcache.url());
    let mut answers = Vec::new();
    for image in &images {
        let mut references = vec![image.tag.clone(), image.digest.clone()];
        references.extend(image.children.iter().cloned());
        for reference in references {
            let got = client
                .get_manifest(&image.repo, &reference, FULL_ACCEPT)
                .await
                .unwrap();
            assert_eq!(got.status, 200, "{}:{reference} online", image.repo);
            answers.push((image.repo.clone(), reference, got));
        }
    }

    let status = regcache.stop();
    assert!(status.success(), "SIGTERM exit {status}");
    // A clean shutdown leaves the index snapshot the next start reads
    // (which of its directories it trusts is the store's tests' business).
    let snapshot = regcache.data_dir().join("cache/v1/index.snapshot");
    assert!(
        snapshot.exists(),
        "no index snapshot after SIGTERM; log:\n{}",
        regcache.log()
    );
    assert!(
        regcache.log().contains("saved the cache index"),
        "{}",
        regcache.log()
    );
    upstream.registry.kill();
    regcache.restart();
    assert!(!snapshot.exists(), "the start took the snapshot");
    // Past the tag TTL, so tags must be revalidated, and that fails.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    for (repo, reference, online) in &answers {
        let got = client
            .get_manifest(repo, reference, FULL_ACCEPT)
            .await
            .unwrap();
        assert_eq!(
            got.status,
            200,
            "{repo}:{reference} offline after restart: {}\nlog:\n{}",
            got.text(),
            regcache.log()
        );
        assert_eq!(got.body, online.body, "{repo}:{reference} body");
        for header in ["content-type", "docker-content-digest"] {
            assert_eq!(
                got.header(header),
                online.header(header),
                "{repo}:{reference} {header}"
            );
        }
    }
    for image in &images {
        for blob in &image.blobs {
            let got = client.get_blob(&image.repo, blob).await.unwrap();
            assert_eq!(got.status, 200, "{} blob {blob} offline", image.repo);
            assert_eq!(sha256_digest(&got.body), *blob);
        }
    }
    // And a whole skopeo pull, byte for byte the same.
    copy_all(
        &regcache.host(),
        &images,
        &work.path().join("offline"),
        &CopyOptions::default(),
    )
    .await;
    for image in &images {
        assert_eq!(
            dir_contents(&work.path().join("offline").join(image.label)),
            dir_contents(&work.path().join("online").join(image.label)),
            "{}",
            image.label
        );
    }
}

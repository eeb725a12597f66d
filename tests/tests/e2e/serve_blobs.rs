//! The blob path of `regcache serve`: one upstream fetch however many
//! clients, fills that outlive their client, failed fills that abort every
//! client and cache nothing, the disk budget, and Range / HEAD semantics.

use std::time::{Duration, Instant};

use regcache_tests::image::random_bytes;
use regcache_tests::{
    Fault, FaultProxy, Fetched, Regcache, RegcacheOptions, RegistryClient, Streamed, Target,
    sha256_digest,
};

use crate::support::{
    FULL_ACCEPT, Mode, Upstream, assert_api_version, assert_error, big_layer, eventually,
    file_named_exists, push_test_images, settle, tree_size, upstream_blob_gets,
};

#[tokio::test]
async fn fifty_concurrent_gets_of_a_cold_blob_make_one_upstream_get() {
    let upstream = Upstream::start(Mode::Plain);
    let layer = big_layer();
    let repo = "many/clients";
    let digest = upstream
        .client(&[repo])
        .push_blob(repo, layer.blob.clone())
        .await;
    let regcache = upstream.start_regcache();
    let client = RegistryClient::new(regcache.url());
    let path = format!("/v2/{repo}/blobs/{digest}");

    let started = Instant::now();
    let gets = (0..50).map(|_| client.get_compared(&path, &[], &layer.blob));
    let results: Vec<Streamed> = futures_util::future::join_all(gets)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let elapsed = started.elapsed();
    for (i, got) in results.iter().enumerate() {
        assert!(
            got.is_exact(),
            "client {i} of 50: status {}, {} of {} bytes, first difference {:?}, error {:?}",
            got.status,
            got.len,
            layer.blob.len(),
            got.first_difference,
            got.error
        );
        assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
    }
    settle(&upstream.registry, Duration::from_millis(300)).await;
    assert_eq!(
        upstream_blob_gets(&upstream.registry, &digest),
        1,
        "50 concurrent cold GETs (served in {elapsed:?}) must make exactly one upstream GET; \
         access log:\n{}",
        upstream.registry.access_log().join("\n")
    );
    let metrics = regcache.metrics().await;
    assert_eq!(
        metrics.sum("regcache_fills_failed_total", &[]),
        0.0,
        "{}",
        metrics.text
    );
    // regcache_fill_waiters is a histogram of clients per fill: one fill.
    assert_eq!(
        metrics.sum("regcache_fill_waiters_count", &[]),
        1.0,
        "{}",
        metrics.text
    );
}

/// A client reads a few MiB of a cold blob that the upstream sends slowly,
/// then hangs up. The fill goes on; the blob is then served without any
/// further upstream GET.
#[tokio::test]
async fn client_disconnect_does_not_stop_the_fill() {
    let upstream = Upstream::start(Mode::Plain);
    let proxy = FaultProxy::start(&upstream.registry.url());
    let blob = random_bytes(0xd15c, 24 << 20);
    let repo = "hang/up";
    let digest = upstream
        .client(&[repo])
        .push_blob(repo, blob.clone().into())
        .await;
    let regcache = Regcache::start(RegcacheOptions::new(proxy.url()));
    proxy.inject(Target::Blob(digest.clone()), Fault::Throttle(12 << 20));
    let client = RegistryClient::new(regcache.url());
    let path = format!("/v2/{repo}/blobs/{digest}");

    let mut response = client.send(reqwest::Method::GET, &path, &[]).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut read = 0usize;
    while read < 4 << 20 {
        let chunk = response.chunk().await.unwrap().expect("body ended early");
        assert_eq!(&chunk[..], &blob[read..read + chunk.len()]);
        read += chunk.len();
    }
    drop(response);
    let hung_up = Instant::now();
    let data = regcache.blobs_dir();
    assert!(
        !file_named_exists(&data, &digest),
        "the throttled fill cannot be done yet: the test would prove nothing"
    );

    // The fill finishes in the background (about 2 s at 12 MiB/s).
    let filled = eventually(Duration::from_secs(20), async || {
        file_named_exists(&data, &digest)
    })
    .await;
    assert!(
        filled,
        "the fill did not complete after the client left ({:?} ago); data dir {:#?}; log:\n{}",
        hung_up.elapsed(),
        crate::support::dir_listing(regcache.data_dir()),
        regcache.log()
    );
    proxy.clear();
    let again = client.get_compared(&path, &[], &blob).await.unwrap();
    assert!(again.is_exact(), "{again:?}");
    assert_eq!(
        proxy.blob_gets(&digest),
        1,
        "one upstream GET in all: {:#?}",
        proxy.requests()
    );
    let metrics = regcache.metrics().await;
    assert_eq!(metrics.sum("regcache_fills_failed_total", &[]), 0.0);
}

/// Three clients wait on a cold blob that the upstream damages on every GET
/// (so a truncation outlasts the fill's resumes: see `resume.rs` for one
/// that doesn't). None may get a clean 200 with wrong bytes; nothing is
/// cached; with the fault gone the blob is fetched again and served right.
async fn damaged_upstream_blob_is_never_served(fault: Fault, size: usize, seed: u64) {
    let upstream = Upstream::start(Mode::Plain);
    let proxy = FaultProxy::start(&upstream.registry.url());
    let blob = random_bytes(seed, size);
    let repo = "damaged/blob";
    let digest = upstream
        .client(&[repo])
        .push_blob(repo, blob.clone().into())
        .await;
    let regcache = Regcache::start(RegcacheOptions::new(proxy.url()));
    let client = RegistryClient::new(regcache.url());
    let path = format!("/v2/{repo}/blobs/{digest}");
    let what = format!("{fault:?} of a {size}-byte blob");

    proxy.inject(Target::Blob(digest.clone()), fault.clone());
    let gets = (0..3).map(|_| client.get_compared(&path, &[], &blob));
    let results = futures_util::future::join_all(gets).await;
    let summary: Vec<String> = results
        .iter()
        .map(|r| match r {
            Err(e) => format!("failed before headers: {e}"),
            Ok(got) => format!(
                "status {}, {} bytes, first difference {:?}, error {:?}",
                got.status, got.len, got.first_difference, got.error
            ),
        })
        .collect();
    for (i, got) in results.iter().enumerate() {
        if let Ok(got) = got {
            assert!(
                !got.is_clean_but_wrong(),
                "{what}: client {i} got a clean 200 with wrong bytes; all clients: {summary:#?}\n\
                 regcache log:\n{}",
                regcache.log()
            );
            assert!(
                got.status != 200 || got.error.is_some(),
                "{what}: client {i} got the whole blob although the upstream damaged it; \
                 all clients: {summary:#?}"
            );
        }
    }
    let upstream_gets = proxy.blob_gets(&digest);
    assert!(upstream_gets >= 1);
    let data = regcache.blobs_dir();
    assert!(data.is_dir(), "no disk tier at {}", data.display());
    assert!(
        !file_named_exists(&data, &digest),
        "{what}: the damaged blob was committed to the disk cache"
    );
    // The clients see the cut as soon as the store fails the fill; the fill
    // task counts it a moment later (on a loaded machine, later still).
    let counted = eventually(Duration::from_secs(5), async || {
        regcache
            .metrics()
            .await
            .sum("regcache_fills_failed_total", &[])
            >= 1.0
    })
    .await;
    let metrics = regcache.metrics().await;
    assert!(
        counted,
        "{what}: regcache_fills_failed_total:\n{}",
        metrics.text
    );

    proxy.clear();
    let healed = client.get_compared(&path, &[], &blob).await.unwrap();
    assert!(healed.is_exact(), "{what}: after the fault: {healed:?}");
    assert!(
        proxy.blob_gets(&digest) > upstream_gets,
        "{what}: the next GET must go upstream again (nothing cached)"
    );
    let fetched = proxy.blob_gets(&digest);
    let warm = client.get_compared(&path, &[], &blob).await.unwrap();
    assert!(warm.is_exact());
    assert_eq!(proxy.blob_gets(&digest), fetched, "{what}: now cached");
}

#[tokio::test]
async fn corrupt_upstream_blob_fails_the_transfer_and_caches_nothing() {
    damaged_upstream_blob_is_never_served(Fault::Corrupt, 6 << 20, 0xc0).await;
    damaged_upstream_blob_is_never_served(Fault::Corrupt, 300 << 10, 0xc1).await;
}

#[tokio::test]
async fn truncated_upstream_blob_fails_the_transfer_and_caches_nothing() {
    damaged_upstream_blob_is_never_served(Fault::Truncate, 6 << 20, 0x7c).await;
    damaged_upstream_blob_is_never_served(Fault::Truncate, 300 << 10, 0x7d).await;
}

#[tokio::test]
async fn disk_budget_evicts_least_recently_used_blobs() {
    const MIB: u64 = 1 << 20;
    const LIMIT: u64 = 40 * MIB;
    let upstream = Upstream::start(Mode::Plain);
    let repo = "lru/blobs";
    let direct = upstream.client(&[repo]);
    let blobs: Vec<Vec<u8>> = (0..7).map(|i| random_bytes(0x1e0 + i, 10 << 20)).collect();
    let mut digests = Vec::new();
    for blob in &blobs {
        digests.push(direct.push_blob(repo, blob.clone().into()).await);
    }
    // Blobs over memory_max_object live on disk only, so an evicted blob
    // cannot be served from memory.
    let mut options = upstream.regcache_options().disk_size("40MiB");
    options.memory_max_object = Some("1MiB".into());
    let regcache = Regcache::start(options);
    let client = RegistryClient::new(regcache.url());
    let data = regcache.blobs_dir();

    for (i, (blob, digest)) in blobs.iter().zip(&digests).enumerate() {
        let got = client
            .get_compared(&format!("/v2/{repo}/blobs/{digest}"), &[], blob)
            .await
            .unwrap();
        assert!(got.is_exact(), "blob {i}: {got:?}");
        if i == 0 {
            let stored = eventually(Duration::from_secs(3), async || {
                file_named_exists(&data, digest)
            })
            .await;
            assert!(stored, "blob 0 not found under {}", data.display());
        }
        let within = eventually(Duration::from_secs(3), async || tree_size(&data) <= LIMIT).await;
        assert!(
            within,
            "after blob {i}: {} bytes under {} (limit {LIMIT})",
            tree_size(&data),
            data.display()
        );
    }
    settle(&upstream.registry, Duration::from_millis(200)).await;
    for digest in &digests {
        assert_eq!(upstream_blob_gets(&upstream.registry, digest), 1);
    }
    // 70 MiB went through a 40 MiB cache: the first blob was evicted and is
    // fetched again; the last one is still cached.
    assert!(
        !file_named_exists(&data, &digests[0]),
        "blob 0 still on disk"
    );
    let metrics = regcache.metrics().await;
    assert!(
        metrics.sum("regcache_evictions_total", &[]) >= 3.0,
        "{}",
        metrics.text
    );
    assert!(
        metrics.sum("regcache_cache_bytes", &[("tier", "disk")]) <= LIMIT as f64,
        "{}",
        metrics.text
    );
    let last = digests.len() - 1;
    for (i, expected_gets) in [(last, 1), (0, 2)] {
        let got = client
            .get_compared(&format!("/v2/{repo}/blobs/{}", digests[i]), &[], &blobs[i])
            .await
            .unwrap();
        assert!(got.is_exact(), "blob {i} again: {got:?}");
        settle(&upstream.registry, Duration::from_millis(200)).await;
        assert_eq!(
            upstream_blob_gets(&upstream.registry, &digests[i]),
            expected_gets,
            "blob {i}: upstream GETs"
        );
    }
    assert!(tree_size(&data) <= LIMIT);
}

/// One `Range` case: the header and what must come back.
struct RangeCase {
    range: String,
    /// `Some((first, last))` → 206; `None` → 416.
    expect: Option<(usize, usize)>,
}

fn range_cases(size: usize) -> Vec<RangeCase> {
    vec![
        RangeCase {
            range: "bytes=6-".into(),
            expect: Some((6, size - 1)),
        },
        RangeCase {
            range: "bytes=-10".into(),
            expect: Some((size - 10, size - 1)),
        },
        RangeCase {
            range: "bytes=100-199".into(),
            expect: Some((100, 199)),
        },
        RangeCase {
            range: format!("bytes={size}-"),
            expect: None,
        },
    ]
}

fn check_range(what: &str, got: &Fetched, case: &RangeCase, blob: &[u8]) {
    let size = blob.len();
    assert_api_version(what, got);
    match case.expect {
        Some((first, last)) => {
            assert_eq!(got.status, 206, "{what}: {}", got.text());
            assert_eq!(
                got.header("content-range"),
                Some(format!("bytes {first}-{last}/{size}").as_str()),
                "{what}"
            );
            assert_eq!(
                got.header("content-length"),
                Some((last - first + 1).to_string().as_str()),
                "{what}"
            );
            assert!(
                got.body[..] == blob[first..=last],
                "{what}: wrong bytes ({} bytes)",
                got.body.len()
            );
        }
        None => {
            assert_eq!(got.status, 416, "{what}: {}", got.text());
            assert_eq!(
                got.header("content-range"),
                Some(format!("bytes */{size}").as_str()),
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn range_requests_on_cached_and_cold_blobs() {
    let upstream = Upstream::start(Mode::Plain);
    let repo = "range/blobs";
    let direct = upstream.client(&[repo]);
    let regcache = upstream.start_regcache();
    let client = RegistryClient::new(regcache.url());
    // A memory-tier size and a disk-tier size (over memory_max_object).
    for (size, seed) in [(100_000usize, 0x2a00u64), (6 << 20, 0x2b00)] {
        let cases = range_cases(size);
        // Cold: a fresh blob per case, so each request is the first.
        for (i, case) in cases.iter().enumerate() {
            let blob = random_bytes(seed + i as u64, size);
            let digest = direct.push_blob(repo, blob.clone().into()).await;
            let what = format!("cold {size}-byte blob, Range: {}", case.range);
            let got = client
                .request(
                    reqwest::Method::GET,
                    &format!("/v2/{repo}/blobs/{digest}"),
                    &[("range", &case.range)],
                    None,
                )
                .await
                .unwrap();
            check_range(&what, &got, case, &blob);
        }
        // Cached: fetch whole, then every case.
        let blob = random_bytes(seed + 99, size);
        let digest = direct.push_blob(repo, blob.clone().into()).await;
        let path = format!("/v2/{repo}/blobs/{digest}");
        let whole = client.get_compared(&path, &[], &blob).await.unwrap();
        assert!(whole.is_exact(), "{whole:?}");
        assert_eq!(whole.header("accept-ranges"), Some("bytes"));
        settle(&upstream.registry, Duration::from_millis(200)).await;
        let fetched = upstream_blob_gets(&upstream.registry, &digest);
        for case in &cases {
            let what = format!("cached {size}-byte blob, Range: {}", case.range);
            let got = client
                .request(reqwest::Method::GET, &path, &[("range", &case.range)], None)
                .await
                .unwrap();
            check_range(&what, &got, case, &blob);
        }
        settle(&upstream.registry, Duration::from_millis(200)).await;
        assert_eq!(
            upstream_blob_gets(&upstream.registry, &digest),
            fetched,
            "ranges of a cached blob go nowhere"
        );
    }
}

/// The headers HEAD must share with GET.
const ENTITY_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "docker-content-digest",
    "etag",
];

fn assert_head_matches_get(what: &str, head: &Fetched, get: &Fetched) {
    assert_api_version(&format!("HEAD {what}"), head);
    assert_api_version(&format!("GET {what}"), get);
    assert_eq!((head.status, get.status), (200, 200), "{what}");
    assert!(head.body.is_empty(), "HEAD {what} has a body");
    for name in ENTITY_HEADERS {
        assert!(get.header(name).is_some(), "GET {what} lacks {name}");
        assert_eq!(
            head.header(name),
            get.header(name),
            "{what}: HEAD and GET differ in {name}"
        );
    }
    assert_eq!(
        get.header("content-length"),
        Some(get.body.len().to_string().as_str()),
        "GET {what}"
    );
}

#[tokio::test]
async fn head_carries_the_same_headers_as_get() {
    let upstream = Upstream::start(Mode::Plain);
    let images = push_test_images(&upstream, "head", false).await;
    let repos: Vec<&str> = images.iter().map(|i| i.repo.as_str()).collect();
    let direct = upstream.client(&repos);
    let regcache = upstream.start_regcache();
    let client = RegistryClient::new(regcache.url());
    let accept: Vec<(&str, &str)> = FULL_ACCEPT.iter().map(|a| ("accept", *a)).collect();

    for image in &images {
        // HEAD first (cold), then GET, then HEAD again (warm); by tag and digest.
        let mut references = vec![image.tag.clone(), image.digest.clone()];
        references.extend(image.children.iter().cloned());
        for reference in references {
            let path = format!("/v2/{}/manifests/{reference}", image.repo);
            let what = format!("manifest {}:{reference}", image.repo);
            let cold_head = client
                .request(reqwest::Method::HEAD, &path, &accept, None)
                .await
                .unwrap();
            let get = client
                .request(reqwest::Method::GET, &path, &accept, None)
                .await
                .unwrap();
            let warm_head = client
                .request(reqwest::Method::HEAD, &path, &accept, None)
                .await
                .unwrap();
            assert_head_matches_get(&format!("{what} (cold HEAD)"), &cold_head, &get);
            assert_head_matches_get(&format!("{what} (warm HEAD)"), &warm_head, &get);
            assert_eq!(
                get.digest().map(str::to_owned),
                Some(sha256_digest(&get.body)),
                "{what}"
            );
            // And the same as the registry says directly.
            let upstream_get = direct
                .request(reqwest::Method::GET, &path, &accept, None)
                .await
                .unwrap();
            assert_eq!(get.body, upstream_get.body, "{what}: body");
            for name in ["content-type", "docker-content-digest"] {
                assert_eq!(
                    get.header(name),
                    upstream_get.header(name),
                    "{what}: {name}"
                );
            }
        }
        for blob in &image.blobs {
            let path = format!("/v2/{}/blobs/{blob}", image.repo);
            let what = format!("blob {}@{blob}", image.repo);
            let cold_head = client
                .request(reqwest::Method::HEAD, &path, &[], None)
                .await
                .unwrap();
            let get = client
                .request(reqwest::Method::GET, &path, &[], None)
                .await
                .unwrap();
            let warm_head = client
                .request(reqwest::Method::HEAD, &path, &[], None)
                .await
                .unwrap();
            assert_head_matches_get(&format!("{what} (cold HEAD)"), &cold_head, &get);
            assert_head_matches_get(&format!("{what} (warm HEAD)"), &warm_head, &get);
            assert_eq!(sha256_digest(&get.body), *blob);
        }
    }

    // Unknown things: 404 on HEAD too, with the version header.
    let unknown_blob = format!("/v2/{}/blobs/sha256:{}", images[0].repo, "0".repeat(64));
    for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
        let got = client
            .request(method.clone(), &unknown_blob, &[], None)
            .await
            .unwrap();
        assert_eq!(got.status, 404, "{method} unknown blob");
        assert_api_version(&format!("{method} unknown blob"), &got);
        if method == reqwest::Method::GET {
            assert_error("GET unknown blob", &got, 404, "BLOB_UNKNOWN");
        }
    }
}

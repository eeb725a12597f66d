//! A full or read-only disk never stops regcache: fills pass the bytes
//! through without caching, `/readyz` and the metrics say the cache is
//! degraded, start-up works, caching resumes by itself, and the disk budget
//! holds with fills in flight.
//!
//! The data directory sits on a small tmpfs the test mounts, so these tests
//! need root. Without it they fail saying so (never skip: CI runs as root).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regcache_tests::skopeo::CopyOptions;
use regcache_tests::{
    ManifestFormat, Regcache, RegcacheOptions, Registry, RegistryClient, RegistryOptions, Skopeo,
    sha256_digest,
};

use regcache_tests::mounts::{Bind, Tmpfs, require_root};

use crate::support::{big_image, big_layer, file_named_exists, tree_size, upstream_blob_gets};

const MIB: usize = 1 << 20;

/// Distinct incompressible bytes.
fn noise(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Files under the cache's temp folder (fills in progress).
fn temp_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("cache/v1/tmp")).map_or(0, |d| d.count())
}

async fn readyz(regcache: &Regcache) -> (u16, String) {
    let r = reqwest::get(format!("{}/readyz", regcache.admin_url()))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// GET a blob through regcache and check it is whole and verified.
async fn pull_blob(client: &RegistryClient, repo: &str, digest: &str) {
    let got = client.get_blob(repo, digest).await.unwrap();
    assert_eq!(got.status, 200, "GET {digest}: {}", got.text());
    assert_eq!(sha256_digest(&got.body), digest, "body of {digest}");
}

/// `skopeo copy` of `repo:v1` through regcache into a fresh dir; checks the
/// big layer's bytes.
async fn skopeo_pull(regcache: &Regcache, repo: &str, out: &Path) {
    let dst = out.join(format!("pull-{}", rand_suffix()));
    let src = format!("docker://{}/{repo}:v1", regcache.host());
    Skopeo::new()
        .try_copy(
            &src,
            &format!("dir:{}", dst.display()),
            None,
            false,
            &CopyOptions::default(),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "skopeo copy through a degraded cache failed: {e}\nregcache log:\n{}",
                regcache.log()
            )
        });
    let hex = big_layer_digest();
    let hex = hex.trim_start_matches("sha256:");
    let layer = std::fs::read(dst.join(hex)).unwrap();
    assert_eq!(sha256_digest(&layer), big_layer_digest());
    std::fs::remove_dir_all(&dst).unwrap();
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn big_layer_digest() -> String {
    big_layer().digest.clone()
}

async fn metric(regcache: &Regcache, name: &str, labels: &[(&str, &str)]) -> f64 {
    regcache.metrics().await.get(name, labels).unwrap_or(0.0)
}

struct Setup {
    registry: Registry,
    direct: RegistryClient,
}

async fn upstream_with_big_image() -> Setup {
    let registry = Registry::start(RegistryOptions::default());
    let direct = RegistryClient::new(registry.url());
    direct
        .push_image("disk/big", "v1", &big_image(), ManifestFormat::Docker)
        .await;
    Setup { registry, direct }
}

fn options(registry: &Registry, data: &Path, disk_size: &str) -> RegcacheOptions {
    RegcacheOptions::new(registry.url())
        .data_dir(data)
        .disk_size(disk_size)
}

/// Data dir on a 60 MiB tmpfs, budget 1 GiB: ten cold pulls of the 100 MiB
/// image all succeed; small blobs are cached while there is room; a full
/// file system degrades the cache (said by `/readyz` and the metrics), a cold
/// manifest by tag is still served, nothing partial stays on disk; deleting
/// the filler lets caching resume without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_passes_through_and_caching_resumes_when_space_is_freed() {
    let fs = Tmpfs::mount("60m");
    let data = fs.path().join("data");
    let up = upstream_with_big_image().await;
    let small: Vec<(Bytes, String)> = (0..4)
        .map(|i| {
            let b = noise(100 + i, 4 * MIB);
            let d = sha256_digest(&b);
            (b, d)
        })
        .collect();
    for (b, _) in &small {
        up.direct.push_blob("disk/small", b.clone()).await;
    }
    // Larger than what a full file system can free by evicting.
    let medium = noise(150, 20 * MIB);
    let medium_digest = up.direct.push_blob("disk/small", medium).await;
    let regcache = Regcache::start(options(&up.registry, &data, "1GiB"));
    let client = RegistryClient::new(regcache.url());
    let blobs = regcache.blobs_dir();
    let work = tempfile::tempdir().unwrap();

    // Room: a small blob is cached.
    pull_blob(&client, "disk/small", &small[0].1).await;
    assert!(
        file_named_exists(&blobs, &small[0].1),
        "a 4 MiB blob with room must be cached"
    );

    // Ten cold pulls of the 100 MiB image: the layer can never fit, so each
    // is a pass-through from the upstream, whole and verified.
    let started = Instant::now();
    for _ in 0..10 {
        skopeo_pull(&regcache, "disk/big", work.path()).await;
        assert_eq!(temp_files(&data), 0, "a temp file outlived its fill");
    }
    eprintln!(
        "10 pulls of the 100 MiB image through a 60 MiB tmpfs took {:?}",
        started.elapsed()
    );
    let big = big_layer_digest();
    assert_eq!(
        upstream_blob_gets(&up.registry, &big),
        10,
        "each pull was cold"
    );
    assert!(!file_named_exists(&blobs, &big));
    assert!(metric(&regcache, "regcache_fills_passed_through_total", &[]).await >= 10.0);
    // A small blob is still cached after all that.
    pull_blob(&client, "disk/small", &small[1].1).await;
    assert!(file_named_exists(&blobs, &small[1].1));

    // Now fill the file system: a cold blob is still served (and not
    // cached), so is a cold manifest by tag, and the cache says degraded.
    let filler = fs.fill("filler", 1024 * 1024);
    let tagged = RegistryClient::new(up.registry.url());
    let image = crate::support::small_image(77, regcache_tests::Platform::linux_amd64());
    tagged
        .push_image("disk/tagged", "v1", &image, ManifestFormat::Docker)
        .await;
    // Before failing a write for space, regcache evicts to make room: the
    // cold 4 MiB blob is cached in place of older entries.
    pull_blob(&client, "disk/small", &small[2].1).await;
    assert!(
        file_named_exists(&blobs, &small[2].1),
        "eviction should have made room"
    );
    assert!(
        !file_named_exists(&blobs, &small[0].1),
        "the oldest entry makes room"
    );
    // 20 MiB can't be made room for: served whole, not cached.
    pull_blob(&client, "disk/small", &medium_digest).await;
    assert!(!file_named_exists(&blobs, &medium_digest));
    let no_space = metric(
        &regcache,
        "regcache_cache_write_errors_total",
        &[("kind", "no_space")],
    )
    .await;
    assert!(no_space >= 1.0, "write errors not counted");
    assert_eq!(
        metric(&regcache, "regcache_cache_state", &[("state", "degraded")]).await,
        1.0
    );
    let (status, body) = readyz(&regcache).await;
    assert_eq!(status, 200, "a proxy that proxies stays ready");
    assert!(body.contains("degraded"), "{body}");
    let m = client
        .get_manifest("disk/tagged", "v1", crate::support::FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(
        m.status,
        200,
        "a cold manifest by tag on a full disk: {}",
        m.text()
    );
    skopeo_pull(&regcache, "disk/big", work.path()).await;
    assert_eq!(temp_files(&data), 0, "nothing partial on a full disk");
    // Said once per change of state, not per request.
    let log = regcache.log();
    let (cannot, resumed) = (
        log.matches("disk cache cannot write").count(),
        log.matches("caching resumed").count(),
    );
    assert!(
        cannot >= 1 && cannot <= resumed + 1,
        "{cannot} warnings, {resumed} recoveries:\n{log}"
    );
    let no_space = metric(
        &regcache,
        "regcache_cache_write_errors_total",
        &[("kind", "no_space")],
    )
    .await;
    assert!(
        no_space >= cannot as f64,
        "every failed write counted ({no_space}), the log only on changes ({cannot})"
    );

    // Space freed: the next fill caches again, without a restart.
    std::fs::remove_file(filler).unwrap();
    pull_blob(&client, "disk/small", &small[3].1).await;
    assert!(
        file_named_exists(&blobs, &small[3].1),
        "caching did not resume"
    );
    assert_eq!(
        metric(&regcache, "regcache_cache_state", &[("state", "ok")]).await,
        1.0
    );
    let (_, body) = readyz(&regcache).await;
    // The first line is the cache's; the upstreams' breakers follow.
    assert_eq!(body.lines().next(), Some("ready"), "{body}");
    assert!(!body.contains("cache"), "{body}");
    // And what was cached is served from the cache.
    pull_blob(&client, "disk/small", &small[3].1).await;
    assert_eq!(upstream_blob_gets(&up.registry, &small[3].1), 1);
}

/// The data dir remounted read-only after start: cached content serves,
/// cold pulls pass through, the state is read_only; a restart on the
/// read-only dir serves; remounted read-write, caching resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_data_dir_passes_through_and_start_up_still_works() {
    let fs = Tmpfs::mount("60m");
    let bind = Bind::new(fs.path().join("data"));
    let data = bind.path().to_owned();
    let up = upstream_with_big_image().await;
    let small: Vec<(Bytes, String)> = (0..3)
        .map(|i| {
            let b = noise(200 + i, 2 * MIB);
            let d = sha256_digest(&b);
            (b, d)
        })
        .collect();
    for (b, _) in &small {
        up.direct.push_blob("disk/small", b.clone()).await;
    }
    let mut regcache = Regcache::start(options(&up.registry, &data, "1GiB"));
    let client = RegistryClient::new(regcache.url());
    let blobs = regcache.blobs_dir();
    let work = tempfile::tempdir().unwrap();
    pull_blob(&client, "disk/small", &small[0].1).await;
    assert!(file_named_exists(&blobs, &small[0].1));

    bind.set_read_only(true);
    assert!(
        std::fs::write(data.join("probe"), b"x").is_err(),
        "the data dir should be read-only now"
    );
    for _ in 0..3 {
        skopeo_pull(&regcache, "disk/big", work.path()).await;
    }
    pull_blob(&client, "disk/small", &small[1].1).await;
    assert!(!file_named_exists(&blobs, &small[1].1));
    // Cached content still serves, from the cache.
    pull_blob(&client, "disk/small", &small[0].1).await;
    assert_eq!(upstream_blob_gets(&up.registry, &small[0].1), 1);
    assert!(
        metric(
            &regcache,
            "regcache_cache_write_errors_total",
            &[("kind", "read_only")]
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(&regcache, "regcache_cache_state", &[("state", "read_only")]).await,
        1.0
    );
    let (status, body) = readyz(&regcache).await;
    assert_eq!(status, 200);
    assert!(body.contains("read_only"), "{body}");

    // Start-up on the read-only data dir: it starts and serves.
    regcache.restart();
    let client = RegistryClient::new(regcache.url());
    pull_blob(&client, "disk/small", &small[0].1).await;
    skopeo_pull(&regcache, "disk/big", work.path()).await;
    let m = client
        .get_manifest("disk/big", "v1", crate::support::FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(m.status, 200);

    // Read-write again: the next fill caches, without a restart.
    bind.set_read_only(false);
    pull_blob(&client, "disk/small", &small[2].1).await;
    assert!(
        file_named_exists(&blobs, &small[2].1),
        "caching did not resume"
    );
    assert_eq!(
        metric(&regcache, "regcache_cache_state", &[("state", "ok")]).await,
        1.0
    );
}

/// Start-up with a fresh data dir on a file system with no space left: the
/// signing key lives in memory (with a warning) and pulls are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_up_on_a_full_disk_serves() {
    let fs = Tmpfs::mount("60m");
    let up = upstream_with_big_image().await;
    fs.fill("filler", 0);
    let data = fs.path().join("data");
    let regcache = Regcache::start(options(&up.registry, &data, "1GiB"));
    let work = tempfile::tempdir().unwrap();
    skopeo_pull(&regcache, "disk/big", work.path()).await;
    assert!(
        regcache.log().contains("kept in memory only"),
        "{}",
        regcache.log()
    );
    let (status, _) = readyz(&regcache).await;
    assert_eq!(status, 200);
}

/// `disk_size = 30MiB`: the data dir, temp files included, stays within
/// the budget plus one fill's reservation while 200 MiB of distinct blobs
/// (and the 100 MiB layer, larger than the budget) are pulled, four at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_disk_budget_counts_fills_in_flight() {
    require_root();
    let up = upstream_with_big_image().await;
    let blobs: Vec<(Bytes, String)> = (0..20)
        .map(|i| {
            let b = noise(300 + i, 10 * MIB);
            let d = sha256_digest(&b);
            (b, d)
        })
        .collect();
    for (b, _) in &blobs {
        up.direct.push_blob("disk/budget", b.clone()).await;
    }
    let data = tempfile::tempdir().unwrap();
    let regcache = Regcache::start(options(&up.registry, data.path(), "30MiB"));
    let client = RegistryClient::new(regcache.url());

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (done, dir) = (done.clone(), data.path().to_owned());
        std::thread::spawn(move || {
            let mut max = 0;
            let mut samples = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(tree_size(&dir));
                samples += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            (max, samples)
        })
    };
    let big = big_layer_digest();
    let mut pulls: Vec<(&str, &str)> = blobs
        .iter()
        .map(|(_, d)| ("disk/budget", d.as_str()))
        .collect();
    pulls.insert(10, ("disk/big", big.as_str()));
    for group in pulls.chunks(4) {
        let gets = group.iter().map(|(repo, d)| pull_blob(&client, repo, d));
        futures_util::future::join_all(gets).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max, samples) = sampler.join().unwrap();
    let budget = 30 * MIB as u64;
    let one_fill = 10 * MIB as u64;
    eprintln!(
        "data dir max {:.1} MiB over {samples} samples (budget 30 MiB, one fill 10 MiB)",
        max as f64 / MIB as f64
    );
    assert!(
        max <= budget + one_fill,
        "data dir reached {max} bytes, over the budget {budget} plus one fill {one_fill}"
    );
    assert!(samples >= 5, "too few samples ({samples}) to say anything");
    assert!(!file_named_exists(&regcache.blobs_dir(), &big));
}

//! A cold blob's upstream body that breaks off mid-way (a reset, a stall) is
//! resumed with a `Range` request from the byte the fill reached: every
//! waiting client gets one uninterrupted, exact body, from one full GET and
//! one ranged GET. A resumed body that does not hash to the digest still
//! fails every client and caches nothing.
//!
//! The upstream is the real registry behind the fault proxy, which counts
//! the GETs and their `Range` headers.

use std::time::{Duration, Instant};

use regcache_tests::{Fault, Regcache, RegcacheOptions, RegistryClient, Streamed, Target};

use crate::support::{ProxiedRegistry, big_layer, eventually, file_named_exists};

const CLIENTS: usize = 20;

/// The big layer pushed to a fresh registry behind a fault proxy; regcache
/// in front of the proxy.
async fn setup(repo: &str, options: impl FnOnce(RegcacheOptions) -> RegcacheOptions) -> Fixture {
    let px = ProxiedRegistry::start();
    let digest = px.direct().push_blob(repo, big_layer().blob.clone()).await;
    let regcache = Regcache::start(options(RegcacheOptions::new(px.proxy.url())));
    let path = format!("/v2/{repo}/blobs/{digest}");
    Fixture {
        px,
        regcache,
        digest,
        path,
    }
}

struct Fixture {
    px: ProxiedRegistry,
    regcache: Regcache,
    digest: String,
    path: String,
}

impl Fixture {
    /// `n` concurrent GETs of the cold blob, each compared byte for byte
    /// with the layer (so verified against its digest), and how long all took.
    async fn concurrent_gets(&self, n: usize) -> (Vec<Streamed>, Duration) {
        let client = RegistryClient::new(self.regcache.url());
        let blob = &big_layer().blob;
        let started = Instant::now();
        let gets = (0..n).map(|_| client.get_compared(&self.path, &[], blob));
        let results = futures_util::future::join_all(gets)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("GET {} failed before headers: {e}", self.path)))
            .collect();
        (results, started.elapsed())
    }

    /// The blob's GETs at the proxy, as `method path range status` lines.
    fn upstream_gets(&self) -> String {
        self.px
            .proxy
            .requests()
            .iter()
            .filter(|s| s.path.contains(&self.digest))
            .map(|s| format!("{} {} {:?} {}", s.method, s.path, s.range, s.status))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `Range` of the one ranged GET, as its first byte.
    fn ranged_from(&self) -> u64 {
        let ranges: Vec<String> = self
            .px
            .proxy
            .requests()
            .into_iter()
            .filter_map(|s| s.range)
            .collect();
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        ranges[0]
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("Range {:?} is not bytes=N-", ranges[0]))
    }

    fn assert_all_exact(&self, what: &str, results: &[Streamed]) {
        let blob_len = big_layer().blob.len();
        for (i, got) in results.iter().enumerate() {
            assert!(
                got.is_exact(),
                "{what}: client {i} of {}: status {}, {} of {blob_len} bytes, first difference \
                 {:?}, error {:?}\nupstream GETs:\n{}\nregcache log:\n{}",
                results.len(),
                got.status,
                got.len,
                got.first_difference,
                got.error,
                self.upstream_gets(),
                self.regcache.log()
            );
            assert_eq!(
                got.header("docker-content-digest"),
                Some(self.digest.as_str())
            );
        }
    }

    /// One full GET and one ranged GET, from a byte after 0 and no later
    /// than where the fault hit (`at`).
    fn assert_one_get_and_one_ranged(&self, what: &str, at: u64) {
        let gets = self.px.proxy.blob_gets(&self.digest);
        let ranged = self.px.proxy.ranged_blob_gets(&self.digest);
        assert_eq!(
            (gets - ranged, ranged),
            (1, 1),
            "{what}: want 1 GET + 1 ranged GET upstream; saw:\n{}",
            self.upstream_gets()
        );
        let from = self.ranged_from();
        assert!(
            from > 0 && from <= at,
            "{what}: resumed from byte {from}, the body broke at {at}"
        );
    }

    /// The one broken body is counted once, under its cause.
    async fn assert_failure_counted(&self, what: &str, cause: &str) {
        let metrics = self.regcache.metrics().await;
        let name = "regcache_upstream_failures_total";
        assert_eq!(
            (
                metrics.sum(name, &[("cause", cause)]),
                metrics.sum(name, &[])
            ),
            (1.0, 1.0),
            "{what}: want one failure with cause {cause}: {}",
            metrics.text
        );
    }

    async fn assert_cached_and_served_warm(&self, what: &str) {
        let data = self.regcache.blobs_dir();
        let cached = eventually(Duration::from_secs(10), async || {
            file_named_exists(&data, &self.digest)
        })
        .await;
        assert!(cached, "{what}: the resumed blob was not cached");
        let before = self.px.proxy.blob_gets(&self.digest);
        let (warm, _) = self.concurrent_gets(1).await;
        self.assert_all_exact(what, &warm);
        assert_eq!(
            self.px.proxy.blob_gets(&self.digest),
            before,
            "{what}: warm"
        );
        let metrics = self.regcache.metrics().await;
        assert_eq!(
            metrics.sum("regcache_fills_failed_total", &[]),
            0.0,
            "{what}: {}",
            metrics.text
        );
    }
}

fn half() -> u64 {
    big_layer().blob.len() as u64 / 2
}

#[tokio::test]
async fn a_reset_at_half_of_a_cold_blob_is_resumed_for_twenty_clients() {
    let fx = setup("resume/reset", |o| o).await;
    fx.px
        .proxy
        .inject_times(Target::Blob(fx.digest.clone()), Fault::ResetAt(50), 1);

    let (results, elapsed) = fx.concurrent_gets(CLIENTS).await;
    let what = format!("reset at 50% ({CLIENTS} clients, {elapsed:?})");
    fx.assert_all_exact(&what, &results);
    fx.assert_one_get_and_one_ranged(&what, half());
    let log = fx.regcache.log();
    assert!(
        log.contains("asking again from where it stopped"),
        "{what}: the resume is not logged:\n{log}"
    );
    fx.assert_failure_counted(&what, "closed").await;
    fx.assert_cached_and_served_warm(&what).await;
    eprintln!("{what}: all exact; upstream GETs:\n{}", fx.upstream_gets());
}

#[tokio::test]
async fn a_stall_at_half_times_out_after_body_stall_timeout_and_resumes() {
    let fx = setup("resume/stall", |o| o.body_stall_timeout_secs(2)).await;
    fx.px.proxy.inject_times(
        Target::Blob(fx.digest.clone()),
        Fault::StallAt(50, Duration::from_secs(120)),
        1,
    );

    let (results, elapsed) = fx.concurrent_gets(CLIENTS).await;
    let what =
        format!("stall at 50% with body_stall_timeout_secs = 2 ({CLIENTS} clients, {elapsed:?})");
    fx.assert_all_exact(&what, &results);
    assert!(
        elapsed < Duration::from_secs(30),
        "{what}: the stall held the clients too long (a 60 s stall timeout holds them over 60 s)"
    );
    assert!(
        elapsed >= Duration::from_secs(2),
        "{what}: faster than the stall timeout: did the stall happen?"
    );
    fx.assert_one_get_and_one_ranged(&what, half());
    let log = fx.regcache.log();
    assert!(
        log.contains("timed out reading the response body"),
        "{what}: the log does not name the stall:\n{log}"
    );
    fx.assert_failure_counted(&what, "timeout_body").await;
    fx.assert_cached_and_served_warm(&what).await;
    eprintln!("{what}: all exact");
}

#[tokio::test]
async fn a_resumed_body_that_does_not_match_the_digest_fails_every_client_and_caches_nothing() {
    let fx = setup("resume/corrupt", |o| o).await;
    let target = Target::Blob(fx.digest.clone());
    fx.px
        .proxy
        .inject_times(target.clone(), Fault::ResetAt(50), 1);
    // Then every GET (the ranged one) gets a byte flipped in its middle:
    // after the resume point.
    fx.px.proxy.inject(target, Fault::Corrupt);

    let (results, elapsed) = fx.concurrent_gets(CLIENTS).await;
    let what = format!("reset at 50%, then a corrupt resumed body ({elapsed:?})");
    for (i, got) in results.iter().enumerate() {
        assert!(
            !got.is_clean_but_wrong() && !got.is_exact(),
            "{what}: client {i} got {} bytes with error {:?}, first difference {:?}: every \
             client must see the transfer fail",
            got.len,
            got.error,
            got.first_difference
        );
    }
    fx.assert_one_get_and_one_ranged(&what, half());
    let data = fx.regcache.blobs_dir();
    assert!(
        !file_named_exists(&data, &fx.digest),
        "{what}: the corrupt blob was cached"
    );
    let metrics = fx.regcache.metrics().await;
    assert_eq!(
        metrics.sum("regcache_fills_failed_total", &[]),
        1.0,
        "{what}: {}",
        metrics.text
    );

    // With the fault gone, the next GET goes upstream again and is exact.
    fx.px.proxy.clear();
    let (healed, _) = fx.concurrent_gets(1).await;
    fx.assert_all_exact(&format!("{what}, healed"), &healed);
    assert_eq!(
        fx.px.proxy.blob_gets(&fx.digest),
        3,
        "{}",
        fx.upstream_gets()
    );
}

#[tokio::test]
async fn an_upstream_that_ignores_range_is_read_again_from_the_start() {
    let fx = setup("resume/norange", |o| o).await;
    let target = Target::Blob(fx.digest.clone());
    fx.px
        .proxy
        .inject_times(target.clone(), Fault::ResetAt(50), 1);
    fx.px.proxy.inject_times(target, Fault::IgnoreRange, 1);

    let (results, elapsed) = fx.concurrent_gets(CLIENTS).await;
    let what = format!("reset at 50%, Range ignored ({CLIENTS} clients, {elapsed:?})");
    fx.assert_all_exact(&what, &results);
    let statuses: Vec<(Option<String>, u16)> = fx
        .px
        .proxy
        .requests()
        .into_iter()
        .filter(|s| s.path.contains(&fx.digest))
        .map(|s| (s.range, s.status))
        .collect();
    assert_eq!(statuses.len(), 2, "{what}: {}", fx.upstream_gets());
    assert_eq!(statuses[0], (None, 200), "{what}");
    assert!(
        statuses[1].0.is_some() && statuses[1].1 == 200,
        "{what}: the resume asks for a range and gets the whole blob: {statuses:?}"
    );
    let log = fx.regcache.log();
    assert!(
        log.contains("the upstream ignored Range"),
        "{what}: not logged:\n{log}"
    );
    fx.assert_cached_and_served_warm(&what).await;
}

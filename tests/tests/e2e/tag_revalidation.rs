//! Tag revalidation against the real registry: a tag re-pushed upstream
//! to another image, then pulled through regcache once its `tag_ttl_secs`
//! has passed. With `stale_while_revalidate_secs`, pulls are answered at
//! once with the old digest while one background `HEAD` revalidates the tag,
//! and the pulls after it get the new digest; a `HEAD` the fault proxy holds
//! up for 5 s delays no pull. Without it, the first pull past the TTL waits
//! for the `HEAD` and gets the new digest. Upstream `HEAD`s are counted in
//! the registry's access log.
//!
//! The TTL is 3 s, not 1 s: the tag index counts whole seconds from the
//! `HEAD`'s start, so with 1 s an answer can expire the moment it is written
//! and the next pull would (rightly) revalidate again, making "one `HEAD`"
//! a matter of luck.

use std::time::{Duration, Instant};

use regcache_tests::{
    Fault, FaultProxy, ManifestFormat, Platform, Regcache, RegcacheOptions, RegistryClient, Target,
};

use crate::support::{FULL_ACCEPT, Mode, Upstream, eventually, settle, small_image};

const REPO: &str = "swr/app";
const TAG: &str = "v1";
const TTL: Duration = Duration::from_secs(3);

/// Past the TTL (whole seconds, plus a margin).
async fn outlive_the_ttl() {
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
}

/// The registry, the proxy regcache talks to it through, and a regcache
/// that has pulled `REPO:TAG` while it pointed at `old`; the tag has since
/// been re-pushed to `new` and its TTL has passed.
struct Moved {
    upstream: Upstream,
    proxy: FaultProxy,
    regcache: Regcache,
    old: String,
    new: String,
}

impl Moved {
    async fn start(stale_while_revalidate_secs: u64) -> Moved {
        let upstream = Upstream::start(Mode::Plain);
        let proxy = FaultProxy::start(&upstream.registry.url());
        let direct = upstream.client(&[REPO]);
        let old = direct
            .push_image(
                REPO,
                TAG,
                &small_image(7101, Platform::linux_amd64()),
                ManifestFormat::Docker,
            )
            .await;
        let regcache = Regcache::start(RegcacheOptions::with_upstreams_toml(format!(
            "[upstream]\nname = \"e2e-upstream\"\nurl = \"{}\"\ntag_ttl_secs = {}\n\
             stale_while_revalidate_secs = {stale_while_revalidate_secs}\n",
            proxy.url(),
            TTL.as_secs(),
        )));
        let got = RegistryClient::new(regcache.url())
            .get_manifest(REPO, TAG, FULL_ACCEPT)
            .await
            .unwrap();
        assert_eq!(
            (got.status, got.digest()),
            (200, Some(old.as_str())),
            "first pull: {}",
            got.text()
        );
        let new = direct
            .push_image(
                REPO,
                TAG,
                &small_image(7102, Platform::linux_amd64()),
                ManifestFormat::Docker,
            )
            .await;
        assert_ne!(old, new);
        outlive_the_ttl().await;
        settle(&upstream.registry, Duration::from_millis(200)).await;
        Moved {
            upstream,
            proxy,
            regcache,
            old,
            new,
        }
    }

    fn client(&self) -> RegistryClient {
        RegistryClient::new(self.regcache.url())
    }

    /// `HEAD /v2/REPO/manifests/TAG` lines in the registry's access log.
    fn upstream_heads(&self) -> usize {
        let path = format!("/v2/{REPO}/manifests/{TAG}");
        self.upstream
            .registry
            .access_entries()
            .iter()
            .filter(|e| e.method == "HEAD" && e.path.split('?').next() == Some(path.as_str()))
            .count()
    }

    /// The digest regcache answers for `REPO:TAG` now.
    async fn pulled_digest(&self) -> String {
        let got = self
            .client()
            .get_manifest(REPO, TAG, FULL_ACCEPT)
            .await
            .unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        got.digest().unwrap_or_default().to_owned()
    }

    /// Whether regcache answers `REPO:TAG` with `digest` within 20 s.
    async fn eventually_serves(&self, digest: &str) -> bool {
        eventually(Duration::from_secs(20), async || {
            self.pulled_digest().await == digest
        })
        .await
    }
}

#[tokio::test]
async fn stale_while_revalidate_serves_the_old_digest_at_once_then_the_new_one() {
    let fx = Moved::start(60).await;
    let heads_before = fx.upstream_heads();

    // Many pulls of the stale tag at once, the HEAD held up a little so that
    // all of them ask while it runs: the cached (old) digest for every one (a
    // pull that waited for the HEAD would get the new one).
    fx.proxy.inject_times(
        Target::Path(format!("/{REPO}/manifests/{TAG}")),
        Fault::Stall(Duration::from_millis(600)),
        1,
    );
    let digests =
        futures_util::future::join_all((0..8).map(|_| async { fx.pulled_digest().await })).await;
    for digest in &digests {
        assert_eq!(
            digest, &fx.old,
            "within the stale-while-revalidate window the cached (old) digest is served"
        );
    }
    assert!(
        fx.eventually_serves(&fx.new).await,
        "the background revalidation never brought the new digest {}; log:\n{}",
        fx.new,
        fx.regcache.log()
    );
    settle(&fx.upstream.registry, Duration::from_millis(300)).await;
    assert_eq!(
        fx.upstream_heads() - heads_before,
        1,
        "one upstream HEAD for all the pulls of the stale tag: {:#?}\nlog:\n{}",
        fx.proxy.requests(),
        fx.regcache.log()
    );
    let metrics = fx.regcache.metrics().await;
    let stale = metrics.sum(
        "regcache_cache_lookups_total",
        &[("kind", "tag"), ("result", "stale_while_revalidate")],
    );
    assert!(stale >= 8.0, "{}", metrics.text);
    assert_eq!(
        metrics.sum(
            "regcache_cache_lookups_total",
            &[("kind", "tag"), ("result", "stale")]
        ),
        0.0,
        "not counted as stale-if-error: {}",
        metrics.text
    );

    // Move the tag again, and hold the revalidating HEAD up for 5 s: the pull
    // past the TTL is answered (with the digest it had) without waiting.
    let newest = fx
        .upstream
        .client(&[REPO])
        .push_image(
            REPO,
            TAG,
            &small_image(7103, Platform::linux_amd64()),
            ManifestFormat::Docker,
        )
        .await;
    outlive_the_ttl().await;
    let stall = Duration::from_secs(5);
    fx.proxy.inject_times(
        Target::Path(format!("/{REPO}/manifests/{TAG}")),
        Fault::Stall(stall),
        1,
    );
    let started = Instant::now();
    assert_eq!(fx.pulled_digest().await, fx.new);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a stale pull took {took:?}: it waited for the {stall:?} upstream HEAD"
    );
    assert!(
        fx.eventually_serves(&newest).await,
        "the slow background revalidation never brought {newest}"
    );
}

#[tokio::test]
async fn without_stale_while_revalidate_the_first_pull_past_the_ttl_gets_the_new_digest() {
    let fx = Moved::start(0).await;
    let heads_before = fx.upstream_heads();
    assert_eq!(fx.pulled_digest().await, fx.new);
    settle(&fx.upstream.registry, Duration::from_millis(300)).await;
    assert_eq!(fx.upstream_heads() - heads_before, 1);
    assert_eq!(fx.pulled_digest().await, fx.new);
}

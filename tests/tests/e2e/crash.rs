//! kill -9 during concurrent cold fills: whatever instant the process dies,
//! a restarted regcache serves only whole, verified content (even with the
//! upstream down), leaves no temp file behind, refetches the rest, and
//! `regcache fsck` finds nothing wrong on the data dir.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use regcache_tests::image::random_bytes;
use regcache_tests::{
    Fault, FaultProxy, Regcache, RegcacheOptions, RegistryClient, Streamed, Target,
};

use crate::fsck::fsck;
use crate::support::{Mode, Upstream};

const ROUNDS: u64 = 10;
const BLOBS_PER_ROUND: usize = 40;
/// Sizes cycled through: whole in one read, a few reads, many.
const SIZES: [usize; 5] = [1 << 10, 8 << 10, 64 << 10, 256 << 10, 1 << 20];
/// Upstream body rate per response, so fills are in flight when the kill
/// lands: the 1 MiB bodies take 500 ms, the 8 KiB ones 4 ms.
const THROTTLE: u64 = 2 << 20;

struct Blob {
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn path(&self, repo: &str) -> String {
        format!("/v2/{repo}/blobs/{}", self.digest)
    }
}

/// GETs every blob at once. Each body is compared byte for byte with the
/// pushed content (whose sha256 the registry checked against the digest at
/// upload): equal to hashing it, and much faster in the debug test build.
async fn get_all(client: &RegistryClient, repo: &str, blobs: &[Blob]) -> Vec<Option<Streamed>> {
    join_all(
        blobs
            .iter()
            .map(|b| async { client.get_compared(&b.path(repo), &[], &b.bytes).await.ok() }),
    )
    .await
}

/// Asserts no response is a clean 200 with wrong bytes, or a 200 whose
/// body is short without an error; returns how many were whole and exact.
fn count_exact(what: &str, results: &[Option<Streamed>], blobs: &[Blob]) -> usize {
    let mut exact = 0;
    for (got, blob) in results.iter().zip(blobs) {
        let Some(got) = got else { continue };
        assert!(
            !got.is_clean_but_wrong(),
            "{what}: {} ({} bytes) was served whole but wrong: {got:?}",
            blob.digest,
            blob.bytes.len()
        );
        if got.is_exact() {
            assert_eq!(
                got.header("docker-content-digest"),
                Some(blob.digest.as_str())
            );
            exact += 1;
        }
    }
    exact
}

fn temp_files(regcache: &Regcache) -> Vec<String> {
    let tmp = regcache.data_dir().join("cache").join("v1").join("tmp");
    std::fs::read_dir(&tmp)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn kill_9_during_cold_fills_never_serves_a_corrupt_body() {
    let started = Instant::now();
    let upstream = Upstream::start(Mode::Plain);
    let proxy = FaultProxy::start(&upstream.registry.url());
    let repo = "crash/fills";
    let direct = upstream.client(&[repo]);
    // The outage of each round opens the upstream's circuit breaker; a 1 s
    // probe lets it see the upstream back soon after.
    let mut regcache = Regcache::start(
        RegcacheOptions::new(proxy.url())
            .retry_attempts(0)
            .extra_toml("breaker_probe_secs = 1\n"),
    );
    // One random MiB; each blob is a slice of it behind its own 16-byte stamp
    // (generating fresh random bytes per blob dominated the run in a debug build).
    let base = random_bytes(0xc0de, 1 << 20);
    let make = |seed: u64, len: usize| -> Vec<u8> {
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&seed.to_le_bytes());
        bytes.extend_from_slice(&(len as u64).to_le_bytes());
        let from = (seed as usize).wrapping_mul(7919) % (1 << 19);
        bytes.extend_from_slice(&base[from..][..len.saturating_sub(16).min((1 << 20) - from)]);
        bytes.resize(len, 0x5a);
        bytes
    };
    let (mut killed_with_temp, mut served_down, mut refetched, mut cut) = (0, 0, 0, 0);

    for round in 0..ROUNDS {
        let t0 = Instant::now();
        let blobs: Vec<Blob> = join_all((0..BLOBS_PER_ROUND).map(|i| {
            let bytes = make(round * 100 + i as u64, SIZES[i % SIZES.len()]);
            let direct = &direct;
            async move {
                let digest = direct.push_blob(repo, bytes.clone().into()).await;
                Blob { digest, bytes }
            }
        }))
        .await;

        let t_push = t0.elapsed();
        // 40 cold fills, killed 50–500 ms in: small ones done, large ones mid-body.
        proxy.inject(Target::AllBlobs, Fault::Throttle(THROTTLE));
        let client = RegistryClient::new(regcache.url());
        let pulls = tokio::spawn({
            let client = client.clone();
            let blobs: Vec<(String, Vec<u8>)> = blobs
                .iter()
                .map(|b| (b.path(repo), b.bytes.clone()))
                .collect();
            async move {
                join_all(blobs.iter().map(|(path, bytes)| async {
                    client.get_compared(path, &[], bytes).await.ok()
                }))
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50 + round * 50)).await;
        if !temp_files(&regcache).is_empty() {
            killed_with_temp += 1;
        }
        regcache.kill();
        let during = pulls.await.unwrap();
        let whole = count_exact(&format!("round {round}, before the kill"), &during, &blobs);
        cut += BLOBS_PER_ROUND - whole;

        // Restart with the upstream down: only whole cached entries are served.
        proxy.clear();
        proxy.inject(Target::Path("/v2/".into()), Fault::Status(503));
        let t_kill = t0.elapsed();
        regcache.restart();
        let t_restart = t0.elapsed();
        let left = temp_files(&regcache);
        assert!(
            left.is_empty(),
            "round {round}: temp files after start-up: {left:?}"
        );
        let client = RegistryClient::new(regcache.url());
        let down = get_all(&client, repo, &blobs).await;
        for (got, blob) in down.iter().zip(&blobs) {
            let got = got
                .as_ref()
                .unwrap_or_else(|| panic!("round {round}: no answer for {}", blob.digest));
            assert!(
                got.status != 200 || got.is_exact(),
                "round {round}, upstream down: a cached body must be whole: {} {got:?}",
                blob.digest
            );
        }
        served_down += count_exact(&format!("round {round}, upstream down"), &down, &blobs);

        let t_down = t0.elapsed();
        // Upstream back: everything is pulled whole, once the upstream's
        // circuit breaker (opened by the outage) has seen it answer again:
        // its probe runs every breaker_probe_secs (1 s here).
        proxy.clear();
        let deadline = Instant::now() + Duration::from_secs(15);
        let (back, exact) = loop {
            let back = get_all(&client, repo, &blobs).await;
            let exact = count_exact(&format!("round {round}, upstream back"), &back, &blobs);
            if exact == BLOBS_PER_ROUND || Instant::now() > deadline {
                break (back, exact);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(
            exact,
            BLOBS_PER_ROUND,
            "round {round}: with the upstream back every blob must be served whole: {back:#?}\nlog:\n{}",
            regcache.log()
        );
        refetched += exact;
        eprintln!(
            "round {round}: push {t_push:?} kill {t_kill:?} restart {t_restart:?} down {t_down:?} back {:?}",
            t0.elapsed()
        );
    }
    eprintln!(
        "kill -9 suite: {ROUNDS} rounds of {BLOBS_PER_ROUND} cold fills in {:?}: \
         {cut} responses cut by the kill, {killed_with_temp} kills with fills in flight, \
         {served_down} bodies served with the upstream down, {refetched} pulled once it was back, \
         0 corrupt",
        started.elapsed()
    );
    assert!(
        killed_with_temp >= ROUNDS / 2 && cut > 0,
        "the kills must land while fills are in flight ({killed_with_temp} of {ROUNDS} did, \
         {cut} responses cut): the test would prove nothing"
    );
    assert!(served_down > 0, "nothing was cached before the kills");

    // Killed once more mid-fill, then checked offline.
    proxy.inject(Target::AllBlobs, Fault::Throttle(THROTTLE));
    let client = RegistryClient::new(regcache.url());
    let last: Vec<Blob> = join_all((0..8).map(|i| {
        let bytes = make(10_000 + i, SIZES[i as usize % SIZES.len()] * 2);
        let direct = &direct;
        async move {
            let digest = direct.push_blob(repo, bytes.clone().into()).await;
            Blob { digest, bytes }
        }
    }))
    .await;
    let pulls = tokio::spawn({
        let paths: Vec<String> = last.iter().map(|b| b.path(repo)).collect();
        async move {
            join_all(
                paths
                    .iter()
                    .map(|p| client.send(reqwest::Method::GET, p, &[])),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    regcache.kill();
    drop(pulls.await);
    // Start-up removes the killed fills' temp files; then the whole data dir
    // is checked offline (one pass: hashing is slow in the debug build).
    proxy.clear();
    regcache.restart();
    assert!(regcache.stop().success());
    let fsck_started = Instant::now();
    let (code, out, err) = fsck(regcache.data_dir(), &[]).await;
    assert_eq!(code, Some(0), "fsck after the kills: {out}{err}");
    eprintln!(
        "{} (fsck took {:?})",
        out.trim_end(),
        fsck_started.elapsed()
    );
}

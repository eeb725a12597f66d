//! Cluster mode (issue 15) against the real docker-registry, moto's S3 and
//! skopeo: replicas that share one upstream fill per blob (the digest's
//! rendezvous owner fills, the others stream from it), warm up from the
//! shared bucket, survive their owner's death mid-fill, and share tag
//! answers through S3.
//!
//! Upstream requests are counted at the fault proxy in front of the registry
//! (every GET, ranged or not) or in the registry's access log. Every test
//! prints its figures (`--nocapture`) so they can be quoted.
//!
//! The fixture is [`TestCluster`]; `cluster_harness.rs` checks it on
//! replicas without the cluster tables. The internal endpoint's lock is in
//! `cluster_internal.rs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use regcache_tests::cluster::{BUCKET, TestCluster};
use regcache_tests::image::{media, random_bytes};
use regcache_tests::{
    Fault, ManifestFormat, Platform, Registry, RegistryClient, RegistryOptions, Skopeo, Target,
};

use crate::support::{
    ProxiedRegistry, all_upstream_blob_gets, big_layer, dir_contents, eventually, settle,
    small_image,
};

/// What one client's streamed GET gave.
#[derive(Debug)]
struct Timed {
    replica: usize,
    status: u16,
    digest_header: Option<String>,
    /// Request sent → first body byte.
    ttfb: Option<Duration>,
    len: u64,
    /// First offset where the body differs from the blob (too short or too
    /// long included); `None`: the exact blob.
    first_difference: Option<u64>,
    error: Option<String>,
}

impl Timed {
    fn is_exact(&self) -> bool {
        self.status == 200 && self.error.is_none() && self.first_difference.is_none()
    }
}

/// A loopback client with a timeout for 100 MiB bodies in a debug build.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// GET `url`, streaming the body and comparing it with `blob` (whose SHA-256
/// is the digest asked for: an equal body is a verified one; comparing is
/// far faster than hashing 100 MiB thirty times in a debug build).
async fn timed_get(http: reqwest::Client, replica: usize, url: String, blob: Bytes) -> Timed {
    let started = Instant::now();
    let mut timed = Timed {
        replica,
        status: 0,
        digest_header: None,
        ttfb: None,
        len: 0,
        first_difference: None,
        error: None,
    };
    let mut response = match http.get(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            timed.error = Some(format!("before headers: {e}"));
            return timed;
        }
    };
    timed.status = response.status().as_u16();
    timed.digest_header = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut len = 0usize;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                timed.ttfb.get_or_insert_with(|| started.elapsed());
                if timed.first_difference.is_none()
                    && blob.get(len..len + chunk.len()) != Some(&chunk[..])
                {
                    timed.first_difference = Some(len as u64);
                }
                len += chunk.len();
            }
            Ok(None) => break,
            Err(e) => {
                timed.error = Some(format!("after {len} bytes: {e}"));
                break;
            }
        }
    }
    if timed.first_difference.is_none() && len != blob.len() {
        timed.first_difference = Some(len as u64);
    }
    timed.len = len as u64;
    timed
}

fn median(mut values: Vec<Duration>) -> Duration {
    assert!(!values.is_empty());
    values.sort();
    values[values.len() / 2]
}

fn millis(values: &[Duration]) -> Vec<u128> {
    values.iter().map(Duration::as_millis).collect()
}

/// The blob's GETs at the fault proxy, one line each.
fn proxy_lines(px: &ProxiedRegistry, digest: &str) -> String {
    px.proxy
        .requests()
        .iter()
        .filter(|s| s.path.contains(digest))
        .map(|s| format!("{} {} range {:?} → {}", s.method, s.path, s.range, s.status))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_blob_pulled_through_three_replicas_is_fetched_upstream_once() {
    let px = ProxiedRegistry::start();
    let repo = "cluster/fanin";
    let blob = big_layer().blob.clone();
    let digest = px.direct().push_blob(repo, blob.clone()).await;
    let cluster = TestCluster::start(3, &px.proxy.url(), |o| o).await;
    let owner = cluster.owner_of(&digest);
    let path = format!("/v2/{repo}/blobs/{digest}");

    let http = http();
    let started = Instant::now();
    let clients: Vec<_> = (0..30)
        .map(|i| {
            let replica = i % 3;
            let url = format!("{}{path}", cluster.url(replica));
            tokio::spawn(timed_get(http.clone(), replica, url, blob.clone()))
        })
        .collect();
    let mut results = Vec::new();
    for client in clients {
        results.push(client.await.unwrap());
    }
    let elapsed = started.elapsed();
    for (i, got) in results.iter().enumerate() {
        assert!(
            got.is_exact() && got.digest_header.as_deref() == Some(digest.as_str()),
            "client {i} (replica {}): {got:?}\nupstream:\n{}\n{}",
            got.replica,
            proxy_lines(&px, &digest),
            cluster.logs()
        );
    }
    settle(&px.registry, Duration::from_millis(300)).await;
    let upstream_gets = px.proxy.blob_gets(&digest);
    eprintln!(
        "fan-in: 30 clients × {} bytes over 3 replicas in {elapsed:?}; upstream GETs of the \
         blob: {upstream_gets}; owner: replica {owner} ({})",
        blob.len(),
        cluster.internal_addr(owner)
    );
    let ttfbs = |owned: bool| -> Vec<Duration> {
        results
            .iter()
            .filter(|r| (r.replica == owner) == owned)
            .filter_map(|r| r.ttfb)
            .collect()
    };
    let (at_owner, elsewhere) = (ttfbs(true), ttfbs(false));
    for replica in 0..3 {
        let mine: Vec<Duration> = results
            .iter()
            .filter(|r| r.replica == replica)
            .filter_map(|r| r.ttfb)
            .collect();
        eprintln!(
            "fan-in: replica {replica}{} TTFB ms: {:?}",
            if replica == owner { " (owner)" } else { "" },
            millis(&mine)
        );
    }
    assert_eq!(
        (at_owner.len(), elsewhere.len()),
        (10, 20),
        "every client got a first byte"
    );
    let (owner_median, other_median) = (median(at_owner), median(elsewhere));
    let bound = owner_median * 2 + Duration::from_millis(50);
    eprintln!(
        "fan-in: median TTFB: owner's clients {owner_median:?}, the others' {other_median:?} \
         (bound {bound:?})"
    );
    assert_eq!(
        upstream_gets,
        1,
        "one upstream GET for 30 clients on 3 replicas:\n{}\n{}",
        proxy_lines(&px, &digest),
        cluster.logs()
    );
    assert!(
        other_median <= bound,
        "non-owner replicas' clients wait for their first byte {other_median:?} (median), more \
         than 2 × the owner's {owner_median:?} + 50 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_later_pulls_from_the_bucket_not_the_upstream() {
    let registry = Registry::start(RegistryOptions::default());
    let (repo, tag) = ("cluster/warm", "v1");
    let image = small_image(1501, Platform::linux_amd64());
    RegistryClient::new(registry.url())
        .push_image(repo, tag, &image, ManifestFormat::Docker)
        .await;
    let blobs: Vec<String> = image.blobs().into_iter().map(|(d, _)| d).collect();
    let mut cluster = TestCluster::start(1, &registry.url(), |o| o.tag_ttl_secs(60)).await;
    let skopeo = Skopeo::new();
    let work = tempfile::tempdir().unwrap();
    let (via_a, via_b) = (work.path().join("a"), work.path().join("b"));

    let a_src = format!("docker://{}/{repo}:{tag}", cluster.host(0));
    skopeo
        .copy(&a_src, &format!("dir:{}", via_a.display()), None, false)
        .await;
    let wanted: Vec<String> = blobs
        .iter()
        .map(|d| format!("blobs/sha256/{}", d.trim_start_matches("sha256:")))
        .collect();
    let waited = Instant::now();
    let uploaded = eventually(Duration::from_secs(30), async || {
        let keys = cluster.moto().list_keys(BUCKET, "blobs/").await;
        wanted.iter().all(|k| keys.contains(k))
    })
    .await;
    let keys = cluster.moto().list_keys(BUCKET, "").await;
    assert!(
        uploaded,
        "replica A's blobs {wanted:?} did not reach the bucket in 30 s; it holds {keys:?}\n{}",
        cluster.logs()
    );
    eprintln!(
        "warm start: {} blobs in the bucket {:?} after A's pull; keys {keys:?}",
        wanted.len(),
        waited.elapsed()
    );

    settle(&registry, Duration::from_millis(300)).await;
    let before = all_upstream_blob_gets(&registry).len();
    let b = cluster.add_replica();
    let b_src = format!("docker://{}/{repo}:{tag}", cluster.host(b));
    skopeo
        .copy(&b_src, &format!("dir:{}", via_b.display()), None, false)
        .await;
    settle(&registry, Duration::from_millis(300)).await;
    let during_b = &all_upstream_blob_gets(&registry)[before..];
    eprintln!(
        "warm start: upstream blob GETs during B's pull (empty data dir): {}",
        during_b.len()
    );
    assert!(
        during_b.is_empty(),
        "B must take every blob from the bucket, yet asked the upstream for {during_b:?}\n{}",
        cluster.logs()
    );
    assert_eq!(
        dir_contents(&via_a),
        dir_contents(&via_b),
        "the same image through A and B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_other_replicas_get_the_blob_when_its_owner_is_killed_mid_fill() {
    const SIZE: usize = 32 << 20;
    const RATE: u64 = 4 << 20;
    let px = ProxiedRegistry::start();
    let repo = "cluster/owner-dies";
    let blob = Bytes::from(random_bytes(0xc1a5, SIZE));
    let digest = px.direct().push_blob(repo, blob.clone()).await;
    let mut cluster = TestCluster::start(3, &px.proxy.url(), |o| o).await;
    let owner = cluster.owner_of(&digest);
    let others: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    px.proxy
        .inject(Target::Blob(digest.clone()), Fault::Throttle(RATE));
    let path = format!("/v2/{repo}/blobs/{digest}");

    let http = http();
    let started = Instant::now();
    let clients: Vec<_> = others
        .iter()
        .flat_map(|&replica| [replica; 3])
        .map(|replica| {
            let url = format!("{}{path}", cluster.url(replica));
            tokio::spawn(timed_get(http.clone(), replica, url, blob.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The non-owners' clients join the owner's one fill (at the throttled
    // rate it has seconds to go).
    let fill_started = px.proxy.blob_gets(&digest);
    assert!(
        fill_started == 1 && clients.iter().all(|c| !c.is_finished()),
        "1 s in, the owner's throttled fill ({SIZE} bytes at {RATE} B/s) must be the one \
         upstream GET and still running: upstream GETs {fill_started}, clients done {}\n{}\n{}",
        clients.iter().filter(|c| c.is_finished()).count(),
        proxy_lines(&px, &digest),
        cluster.logs()
    );
    cluster.kill9(owner);
    eprintln!(
        "owner killed: replica {owner} ({}) SIGKILLed {:?} after the GETs started",
        cluster.internal_addr(owner),
        started.elapsed()
    );

    let mut results = Vec::new();
    for client in clients {
        let got = tokio::time::timeout(Duration::from_secs(90), client)
            .await
            .unwrap_or_else(|_| panic!("a client still waits 90 s on\n{}", cluster.logs()))
            .unwrap();
        results.push(got);
    }
    let elapsed = started.elapsed();
    for (i, got) in results.iter().enumerate() {
        assert!(
            got.is_exact() && got.digest_header.as_deref() == Some(digest.as_str()),
            "client {i} (replica {}): {got:?}\nupstream:\n{}\n{}",
            got.replica,
            proxy_lines(&px, &digest),
            cluster.logs()
        );
    }
    let (gets, ranged) = (
        px.proxy.blob_gets(&digest),
        px.proxy.ranged_blob_gets(&digest),
    );
    eprintln!(
        "owner killed: 6 clients of replicas {others:?} got the {SIZE}-byte blob exact in \
         {elapsed:?}; upstream GETs {gets} ({ranged} ranged):\n{}",
        proxy_lines(&px, &digest)
    );
    assert!(
        gets <= 2,
        "at most the owner's GET and one more: {gets}\n{}\n{}",
        proxy_lines(&px, &digest),
        cluster.logs()
    );
}

/// `HEAD` or `GET` of `/v2/<repo>/manifests/<tag>` in the access log.
/// Upstream `GET`/`HEAD`s of `/v2/<repo>/manifests/<reference>` (a tag or a digest).
fn upstream_tag_requests(registry: &Registry, repo: &str, tag: &str) -> usize {
    let path = format!("/v2/{repo}/manifests/{tag}");
    registry
        .access_entries()
        .iter()
        .filter(|e| {
            (e.method == "GET" || e.method == "HEAD")
                && e.path.split('?').next() == Some(path.as_str())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_answered_by_one_replica_is_not_asked_upstream_by_the_others() {
    let registry = Registry::start(RegistryOptions::default());
    let (repo, tag) = ("cluster/tags", "v1");
    let pushed = RegistryClient::new(registry.url())
        .push_image(
            repo,
            tag,
            &small_image(1504, Platform::linux_amd64()),
            ManifestFormat::Docker,
        )
        .await;
    let cluster = TestCluster::start(3, &registry.url(), |o| o.tag_ttl_secs(60)).await;
    settle(&registry, Duration::from_millis(200)).await;
    let before = upstream_tag_requests(&registry, repo, tag);
    let before_by_digest = upstream_tag_requests(&registry, repo, &pushed);
    let accept = [
        media::OCI_MANIFEST,
        media::DOCKER_MANIFEST,
        media::DOCKER_LIST,
        media::OCI_INDEX,
    ];

    let mut digests = Vec::new();
    for replica in 0..3 {
        let got = RegistryClient::new(cluster.url(replica))
            .get_manifest(repo, tag, &accept)
            .await
            .unwrap();
        assert_eq!(
            got.status,
            200,
            "replica {replica}: {}\n{}",
            got.text(),
            cluster.logs()
        );
        digests.push(got.digest().unwrap_or_default().to_owned());
        if replica == 0 {
            // The answer is shared through a record in the bucket; wait for
            // it, so the next replica's lookup cannot race its upload.
            let suffix = format!("/{repo}/{tag}");
            // The manifest itself goes to the bucket too (in the background).
            let manifest_key = format!("blobs/{}", pushed.replace(':', "/"));
            let shared = eventually(Duration::from_secs(10), async || {
                let keys = cluster.moto().list_keys(BUCKET, "").await;
                keys.iter()
                    .any(|k| k.starts_with("tags/") && k.ends_with(&suffix))
                    && keys.contains(&manifest_key)
            })
            .await;
            let keys = cluster.moto().list_keys(BUCKET, "").await;
            assert!(
                shared,
                "no tags/<upstream>{suffix} record in the bucket after replica 0's answer: \
                 {keys:?}\n{}",
                cluster.logs()
            );
            eprintln!("tags: bucket keys after replica 0's answer: {keys:?}");
        }
    }
    settle(&registry, Duration::from_millis(300)).await;
    let by_tag = upstream_tag_requests(&registry, repo, tag) - before;
    let by_digest = upstream_tag_requests(&registry, repo, &pushed) - before_by_digest;
    eprintln!(
        "tags: digests via replicas 0, 1, 2: {digests:?}; upstream manifest requests by tag: \
         {by_tag}, by digest: {by_digest}"
    );
    assert!(
        digests.iter().all(|d| *d == pushed),
        "every replica answers the pushed digest {pushed}: {digests:?}"
    );
    assert_eq!(
        by_tag,
        1,
        "one upstream manifest request by tag for three replicas within the TTL; access log:\n{}",
        registry.access_log().join("\n")
    );
    assert_eq!(
        by_digest,
        1,
        "the manifest is fetched by digest once (replica 0); the others read the bucket; \
         access log:\n{}",
        registry.access_log().join("\n")
    );
}

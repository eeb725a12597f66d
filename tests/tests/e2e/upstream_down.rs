//! The upstream's circuit breaker against a real registry that is killed and
//! started again: with the upstream known down, pulls of a stale tag are
//! answered from the cache at once (no retries against the dead upstream),
//! cold requests get 503 with `Retry-After`, the breaker state is a metric
//! and is in `/readyz` (which stays 200); when the registry is back the
//! probe closes the breaker and fresh answers resume.
//!
//! And `regcache_served_bytes_total` counts bytes written: a client that
//! leaves after 1 MiB of the cached 100 MiB blob moves it by about 1 MiB
//! (plus what the socket buffers took), on the sendfile path and on hyper's.

use std::time::{Duration, Instant};

use regcache_tests::{
    ManifestFormat, Platform, Regcache, RegcacheOptions, Registry, RegistryClient, RegistryOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{FULL_ACCEPT, Mode, Upstream, big_layer, eventually, small_image};

const REPO: &str = "down/app";
const TAG: &str = "v1";

fn state(m: &regcache_tests::Metrics, s: &str) -> f64 {
    m.sum("regcache_upstream_state", &[("state", s)])
}

async fn readyz(regcache: &Regcache) -> (u16, String) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/readyz", regcache.admin_url()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn with_the_upstream_down_stale_tags_are_answered_at_once_until_it_is_back() {
    let mut registry = Registry::start(RegistryOptions::default());
    let direct = RegistryClient::new(registry.url());
    let old = direct
        .push_image(
            REPO,
            TAG,
            &small_image(9101, Platform::linux_amd64()),
            ManifestFormat::Docker,
        )
        .await;
    let regcache = Regcache::start(RegcacheOptions::with_upstreams_toml(format!(
        "[upstream]\nname = \"e2e-upstream\"\nurl = \"{}\"\ntag_ttl_secs = 1\n\
         stale_if_error_secs = 600\nbreaker_failures = 3\nbreaker_probe_secs = 1\n",
        registry.url(),
    )));
    let client = RegistryClient::new(regcache.url());
    let got = client.get_manifest(REPO, TAG, FULL_ACCEPT).await.unwrap();
    assert_eq!((got.status, got.digest()), (200, Some(old.as_str())));
    let m = regcache.metrics().await;
    assert_eq!(
        (state(&m, "closed"), state(&m, "open")),
        (1.0, 0.0),
        "{}",
        m.text
    );

    registry.kill();
    tokio::time::sleep(Duration::from_millis(1300)).await; // past the TTL

    let mut times = Vec::new();
    for i in 0..100 {
        let started = Instant::now();
        let got = client.get_manifest(REPO, TAG, FULL_ACCEPT).await.unwrap();
        times.push(started.elapsed());
        assert_eq!(
            (got.status, got.digest()),
            (200, Some(old.as_str())),
            "pull {i}: {}",
            got.text()
        );
    }
    let first: Vec<_> = times.iter().take(5).copied().collect();
    times.sort();
    let (median, p95) = (times[50], times[95]);
    println!(
        "100 stale pulls with the upstream down: median {median:?}, p95 {p95:?}, max {:?}; first five {first:?}",
        times[99]
    );
    assert!(
        median <= Duration::from_millis(20),
        "median {median:?}; log:\n{}",
        regcache.log()
    );
    let m = regcache.metrics().await;
    assert_eq!(state(&m, "open"), 1.0, "{}", m.text);
    assert_eq!(state(&m, "closed"), 0.0, "{}", m.text);
    let short = m.sum("regcache_upstream_short_circuits_total", &[]);
    assert!(short >= 90.0, "{short} short circuits; {}", m.text);
    let refused = m.sum("regcache_upstream_requests_total", &[("status", "0")]);
    println!("upstream requests that found nobody: {refused}; short circuits: {short}");
    assert!(
        refused <= 20.0,
        "{refused} upstream requests to the dead upstream: {}",
        m.text
    );

    // Cold: nothing to serve, refused at once with Retry-After.
    let started = Instant::now();
    let got = client
        .get_manifest(REPO, "never-pulled", FULL_ACCEPT)
        .await
        .unwrap();
    let took = started.elapsed();
    crate::support::assert_error("cold pull, upstream down", &got, 503, "UNAVAILABLE");
    assert_eq!(got.header("retry-after"), Some("1"), "{:?}", got.headers);
    assert!(got.text().contains("e2e-upstream"), "{}", got.text());
    assert!(took < Duration::from_millis(200), "took {took:?}");

    let (status, body) = readyz(&regcache).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("upstream e2e-upstream: open"), "{body}");

    // Back: same port, same storage; the tag moves meanwhile.
    registry.revive();
    let new = direct
        .push_image(
            REPO,
            TAG,
            &small_image(9102, Platform::linux_amd64()),
            ManifestFormat::Docker,
        )
        .await;
    assert_ne!(old, new);
    let fresh = eventually(Duration::from_secs(15), async || {
        let got = client.get_manifest(REPO, TAG, FULL_ACCEPT).await.unwrap();
        got.status == 200 && got.digest() == Some(new.as_str())
    })
    .await;
    assert!(
        fresh,
        "never served the new digest; log:\n{}",
        regcache.log()
    );
    let m = regcache.metrics().await;
    assert_eq!(
        (
            state(&m, "closed"),
            state(&m, "open"),
            state(&m, "half_open")
        ),
        (1.0, 0.0, 0.0),
        "{}",
        m.text
    );
    let (status, body) = readyz(&regcache).await;
    assert_eq!(status, 200);
    assert!(body.contains("upstream e2e-upstream: closed"), "{body}");
    let log = regcache.log();
    let opened = log.matches("upstream circuit breaker open").count();
    let closed = log.matches("upstream circuit breaker closed").count();
    assert_eq!((opened, closed), (1, 1), "each change logged once:\n{log}");
}

/// The head of an HTTP/1.1 response, byte by byte.
async fn read_head(conn: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(conn.read(&mut b).await.unwrap(), 1, "closed in the head");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn bytes_served_counts_what_a_client_that_leaves_after_one_mib_got() {
    let repo = "down/big";
    let upstream = Upstream::start(Mode::Plain);
    let layer = big_layer();
    let digest = upstream
        .client(&[repo])
        .push_blob(repo, layer.blob.clone())
        .await;
    let regcache = upstream.start_regcache();
    let got = RegistryClient::new(regcache.url())
        .get_compared(&format!("/v2/{repo}/blobs/{digest}"), &[], &layer.blob)
        .await
        .unwrap();
    assert!(got.is_exact(), "{:?}", got.error);
    let served = async |source: &str| {
        regcache
            .metrics()
            .await
            .sum("regcache_served_bytes_total", &[("source", source)])
    };
    let from_upstream = served("upstream").await;
    assert_eq!(
        from_upstream,
        layer.blob.len() as f64,
        "the cold pull wrote the whole blob"
    );

    let host = regcache.addr();
    let requests = [
        (
            "sendfile",
            format!("GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        ),
        // A request body hands the connection to hyper.
        (
            "hyper",
            format!(
                "GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
    ];
    const MIB: usize = 1 << 20;
    for (via, request) in requests {
        let before = served("cache").await;
        let responses = regcache
            .metrics()
            .await
            .sum("regcache_responses_total", &[("via", via)]);
        let mut conn = TcpStream::connect(host).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let mut body = vec![0u8; MIB];
        conn.read_exact(&mut body).await.unwrap();
        assert_eq!(&body[..], &layer.blob[..MIB]);
        drop(conn);
        // The server sees the reset on its next write and ends the response.
        let mut last = f64::NAN;
        let settled = eventually(Duration::from_secs(10), async || {
            let now = served("cache").await;
            let same = now == last && now > before;
            last = now;
            if !same {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            same
        })
        .await;
        assert!(settled, "{via}: the counter never settled ({last})");
        let moved = last - before;
        println!(
            "{via}: a client that read 1 MiB of {} moved regcache_served_bytes_total by {:.2} MiB",
            layer.blob.len(),
            moved / MIB as f64
        );
        assert!(
            moved >= MIB as f64 && moved < (16 * MIB) as f64,
            "{via}: moved by {moved}"
        );
        let after = regcache
            .metrics()
            .await
            .sum("regcache_responses_total", &[("via", via)]);
        assert_eq!(after, responses + 1.0, "{via}: answered that way");
    }
}

/// The same for a blob still coming from the upstream (counted as
/// `source="upstream"`): the fill's file with sendfile, and hyper's body.
#[tokio::test]
async fn bytes_served_from_a_fill_count_what_a_client_that_leaves_got() {
    let repo = "down/cold";
    let upstream = Upstream::start(Mode::Plain);
    let layer = big_layer();
    let digest = upstream
        .client(&[repo])
        .push_blob(repo, layer.blob.clone())
        .await;
    const MIB: usize = 1 << 20;
    for (via, chunked) in [("sendfile_fill", false), ("hyper", true)] {
        // A fresh cache each time: the blob is cold.
        let regcache = upstream.start_regcache();
        let host = regcache.addr();
        let body = if chunked {
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        } else {
            "\r\n"
        };
        let request = format!("GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n{body}");
        let mut conn = TcpStream::connect(host).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let mut got = vec![0u8; MIB];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &layer.blob[..MIB]);
        drop(conn);
        let served = async || {
            regcache
                .metrics()
                .await
                .sum("regcache_served_bytes_total", &[("source", "upstream")])
        };
        let mut last = f64::NAN;
        let settled = eventually(Duration::from_secs(20), async || {
            let now = served().await;
            let same = now == last && now > 0.0;
            last = now;
            if !same {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            same
        })
        .await;
        assert!(settled, "{via}: the counter never settled ({last})");
        println!(
            "{via}: a client that read 1 MiB of a cold {} byte blob moved regcache_served_bytes_total{{source=\"upstream\"}} by {:.2} MiB",
            layer.blob.len(),
            last / MIB as f64
        );
        assert!(
            last >= MIB as f64 && last < (16 * MIB) as f64,
            "{via}: moved by {last}"
        );
        let m = regcache.metrics().await;
        assert_eq!(
            m.sum("regcache_responses_total", &[("via", via)]),
            1.0,
            "{via}: {}",
            m.text
        );
    }
}

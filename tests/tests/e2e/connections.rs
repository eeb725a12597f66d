//! Connection safety (issue 11, item 6): one host holding thousands of idle
//! connections does not lock out another; connections that send nothing are
//! closed after the header timeout; a client that stops reading is cut after
//! the write timeout, one that stops sending a body after the body timeout;
//! `/readyz` reports saturation. Against real docker-registry upstreams, on
//! the fast path and on hyper alike. (Per-request rules: `request_rules`.)

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use regcache_tests::{Regcache, RegistryClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{Mode, Upstream, big_layer, eventually};

const OPEN: &str = "regcache_open_connections";
const CUT: &str = "regcache_connections_cut_total";
const REFUSED: &str = "regcache_connections_refused_total";

/// The soft open-files limit raised to the hard one (this process holds
/// thousands of sockets here).
fn raise_open_files(need: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let have = getrlimit(Resource::Nofile);
    if let Some(hard) = have.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|n| n >= need),
        "this test needs {need} open files; the limit is {now:?}"
    );
}

/// A TCP connection to `to` from the loopback address `from`.
pub(crate) async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends `request` as it is on a new connection and reads until the server
/// closes it (or `within` passes): (the bytes, how long it took).
pub(crate) async fn raw(
    to: SocketAddr,
    from: IpAddr,
    request: &[u8],
    within: Duration,
) -> (String, Duration) {
    let started = Instant::now();
    let mut conn = connect_from(from, to).await;
    conn.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, conn.read_to_end(&mut got)).await;
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

pub(crate) fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

pub(crate) fn other_host() -> IpAddr {
    IpAddr::from([127, 0, 0, 2])
}

pub(crate) async fn metric(regcache: &Regcache, name: &str, labels: &[(&str, &str)]) -> f64 {
    regcache.metrics().await.sum(name, labels)
}

#[tokio::test]
async fn five_thousand_idle_connections_from_one_address_lock_nobody_out() {
    raise_open_files(6000);
    let upstream = Upstream::start(Mode::Plain);
    let repo = "conn/idle";
    let blob = Bytes::from_static(b"served while another host hoards connections");
    let digest = upstream.client(&[repo]).push_blob(repo, blob.clone()).await;
    let regcache = Regcache::start(
        upstream
            .regcache_options()
            .extra_toml("[limits]\nheader_timeout_secs = 5\n"),
    );
    let addr = regcache.addr();

    // 5,000 connections from 127.0.0.1 that send nothing.
    let started = Instant::now();
    let mut idle = Vec::with_capacity(5000);
    for _ in 0..50 {
        // A refused one may be reset before `connect` returns.
        let batch = (0..100).map(|_| async {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(localhost(), 0)).unwrap();
            socket.connect(addr).await.ok()
        });
        idle.extend(futures_util::future::join_all(batch).await);
    }
    let held: Vec<TcpStream> = idle.into_iter().flatten().collect();
    // regcache keeps its per-client share (256) and closes the rest at once.
    let settled = eventually(Duration::from_secs(20), async || {
        metric(&regcache, REFUSED, &[("reason", "per_client")]).await >= 4744.0
    })
    .await;
    println!(
        "5,000 connections made and accepted in {:?}",
        started.elapsed()
    );
    let metrics = regcache.metrics().await;
    assert!(
        settled,
        "refused: {}, open: {:?}",
        metrics.sum(REFUSED, &[("reason", "per_client")]),
        metrics.get(OPEN, &[("listener", "api")])
    );
    let open = metrics.get(OPEN, &[("listener", "api")]).unwrap();
    println!("open connections with 5,000 idle from 127.0.0.1: {open}");
    assert_eq!(open, 256.0, "{}", metrics.text);

    // A normal client on another address is served at once.
    let request = format!(
        "GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let (answer, took) = raw(
        addr,
        other_host(),
        request.as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    println!("GET of a blob from 127.0.0.2 meanwhile: {took:?}");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with(std::str::from_utf8(&blob).unwrap()),
        "{answer}"
    );
    assert!(took < Duration::from_secs(2), "served in {took:?}");
    // Readiness: 256 of 4,096 is not saturation.
    assert_eq!(
        regcache_tests::regcache::http_status(regcache.admin_addr(), "/readyz"),
        Some(200)
    );

    // The idle ones are closed at the header timeout (from accept: they sent
    // no byte to start any other clock).
    let started = Instant::now();
    let closed = eventually(Duration::from_secs(15), async || {
        metric(&regcache, OPEN, &[("listener", "api")]).await == 0.0
    })
    .await;
    println!("idle connections all closed {:?} later", started.elapsed());
    let metrics = regcache.metrics().await;
    assert!(closed, "{}", metrics.text);
    assert_eq!(
        metrics.get(CUT, &[("listener", "api"), ("reason", "first_byte")]),
        Some(256.0),
        "{}",
        metrics.text
    );
    // The client side sees them closed (EOF), not reset mid-request.
    let mut buf = [0u8; 1];
    let mut first = held.into_iter().next().unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn readyz_reports_saturation_and_healthz_stays_live() {
    let upstream = Upstream::start(Mode::Plain);
    let regcache = Regcache::start(upstream.regcache_options().extra_toml(
        "[limits]\nmax_connections = 20\nmax_connections_per_client = 0\nheader_timeout_secs = 30\n",
    ));
    let admin = regcache.admin_url();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut held = Vec::new();
    for _ in 0..18 {
        held.push(TcpStream::connect(regcache.addr()).await.unwrap());
    }
    let saturated = eventually(Duration::from_secs(10), async || {
        http.get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 503
    })
    .await;
    assert!(saturated, "18 of 20 connections open and /readyz still 200");
    let body = http
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("saturated: 18 of 20"), "{body}");
    let live = http.get(format!("{admin}/healthz")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    drop(held);
    let ready = eventually(Duration::from_secs(10), async || {
        http.get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    assert!(ready, "/readyz stays 503 after the connections closed");
}

/// Reads the response head of `conn` (byte by byte: the body must stay in
/// the socket), returning it.
async fn read_head(conn: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut b).await.unwrap();
        assert_eq!(n, 1, "closed before the head ended: {head:?}");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_write_timeout() {
    let repo = "conn/slow-reader";
    // Cached first: the slow readers below get it with sendfile / hyper.
    let (_upstream, regcache, digest) = cached_big_blob(repo).await;
    let layer = big_layer();

    let host = regcache.addr();
    // The fast path (sendfile), then hyper (a chunked request body makes the
    // fast path hand the connection over).
    let requests = [
        format!("GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!(
            "GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
    ];
    for (i, request) in requests.iter().enumerate() {
        let mut conn = TcpStream::connect(host).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        // Read nothing for 5 s (socket buffers fill within a moment), then
        // everything: the response must have been cut short.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut rest = Vec::new();
        let started = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut rest)).await;
        assert!(end.is_ok(), "request {i}: the connection was not closed");
        println!(
            "request {i}: {} of {} bytes before the cut, the rest read in {:?}",
            rest.len(),
            layer.blob.len(),
            started.elapsed()
        );
        assert!(
            rest.len() < layer.blob.len(),
            "request {i}: the whole blob arrived"
        );
        let cut = metric(&regcache, CUT, &[("listener", "api"), ("reason", "write")]).await;
        assert_eq!(cut, (i + 1) as f64, "request {i}");
    }
    let metrics = regcache.metrics().await;
    assert!(metrics.sum("regcache_responses_total", &[("via", "sendfile")]) >= 1.0);
    assert!(metrics.sum("regcache_responses_total", &[("via", "hyper")]) >= 1.0);
    // A reader that keeps reading, however slow the pauses between reads
    // (each shorter than the timeout), gets it all.
    let mut conn = TcpStream::connect(host).await.unwrap();
    conn.write_all(requests[0].as_bytes()).await.unwrap();
    let _ = read_head(&mut conn).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let mut pauses = [0, 8 << 20, 40 << 20].into_iter().peekable();
    while total < layer.blob.len() {
        // Pauses shorter than the timeout, each after the reader caught up.
        if pauses.next_if(|at| total >= *at).is_some() {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "cut after {total} bytes although the client kept reading"
        );
        total += n;
    }
}

/// The 100 MiB test blob pushed to `repo` upstream and pulled once through a
/// regcache whose write timeout is 2 s, so it is cached; its digest.
async fn cached_big_blob(repo: &str) -> (Upstream, Regcache, String) {
    let upstream = Upstream::start(Mode::Plain);
    let layer = big_layer();
    let digest = upstream
        .client(&[repo])
        .push_blob(repo, layer.blob.clone())
        .await;
    let regcache = Regcache::start(
        upstream
            .regcache_options()
            .extra_toml("[limits]\nwrite_timeout_secs = 2\n"),
    );
    let got = RegistryClient::new(regcache.url())
        .get_compared(&format!("/v2/{repo}/blobs/{digest}"), &[], &layer.blob)
        .await
        .unwrap();
    assert!(got.is_exact(), "{:?}", got.error);
    (upstream, regcache, digest)
}

/// A reader that does read, but at 1 KiB/s, holds a connection (and a
/// 100 MiB blob's worth of time) for a day unless cut. The write timeout is
/// "no progress for write_timeout_secs", as nginx's send_timeout, yet such a
/// reader is cut: the kernel reports the socket writable again only when
/// much of its full send buffer has drained, which takes this reader far
/// longer than the timeout.
#[tokio::test]
async fn a_reader_trickling_at_one_kib_per_second_is_cut() {
    let repo = "conn/trickle";
    let (_upstream, regcache, digest) = cached_big_blob(repo).await;
    let layer = big_layer();
    let host = regcache.addr();
    let mut conn = TcpStream::connect(host).await.unwrap();
    let request = format!("GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let started = Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1024];
    // 1 KiB a second for 8 s, four times the write timeout.
    while started.elapsed() < Duration::from_secs(8) {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "the trickling reader saw the end after {total} bytes"
        );
        total += n;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cut = metric(&regcache, CUT, &[("listener", "api"), ("reason", "write")]).await;
    assert_eq!(cut, 1.0, "a 1 KiB/s reader is cut within 8 s");
    // What the kernel had buffered still arrives; then the connection ends
    // short of the blob.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the connection was not closed");
    assert!(
        total + rest.len() < layer.blob.len(),
        "the whole blob arrived"
    );
    println!(
        "trickling reader: cut within 8 s, {} of {} bytes delivered",
        total + rest.len(),
        layer.blob.len()
    );
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408() {
    let upstream = Upstream::start(Mode::Plain);
    let regcache = Regcache::start(
        upstream
            .regcache_options()
            .writes("client-credentials")
            .extra_toml("[limits]\nbody_timeout_secs = 2\n"),
    );
    let host = regcache.addr();
    let digest = format!("sha256:{}", "0".repeat(64));
    // A monolithic upload announcing 1,000 bytes and sending 10.
    let mut conn = TcpStream::connect(host).await.unwrap();
    let request = format!(
        "POST /v2/conn/upload/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n0123456789"
    );
    let started = Instant::now();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut got)).await;
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&got);
    println!("stalled upload answered after {took:?}: {answer}");
    assert!(end.is_ok(), "the stalled upload was never cut");
    assert!(took >= Duration::from_secs(2), "cut after {took:?}");
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\"code\":\"UNKNOWN\""), "{answer}");
    assert_eq!(
        metric(&regcache, CUT, &[("listener", "api"), ("reason", "body")]).await,
        1.0
    );
    assert!(
        regcache.log().contains("whose=\"client\"") || regcache.log().contains("whose=client"),
        "{}",
        regcache.log()
    );
}

#[tokio::test]
async fn a_handler_slower_than_the_body_timeout_after_the_body_arrived_is_not_cut() {
    use regcache_tests::{Fault, RegcacheOptions, Target};

    use crate::support::ProxiedRegistry;
    // The upstream (behind a fault proxy) takes 4 s to answer an upload;
    // regcache has the whole body long before, so the 2 s body timeout must
    // not fire while it waits.
    let upstream = ProxiedRegistry::start();
    upstream.proxy.inject(
        Target::Path("/blobs/uploads/".into()),
        Fault::Stall(Duration::from_secs(4)),
    );
    let regcache = Regcache::start(
        RegcacheOptions::new(upstream.proxy.url())
            .writes("client-credentials")
            .extra_toml("[limits]\nbody_timeout_secs = 2\n"),
    );
    let blob = Bytes::from_static(b"a small blob, pushed whole");
    let digest = regcache_tests::sha256_digest(&blob);
    let client = RegistryClient::new(regcache.url());
    let started = Instant::now();
    let r = client
        .request(
            reqwest::Method::POST,
            &format!("/v2/conn/slow-upstream/blobs/uploads/?digest={digest}"),
            &[("content-type", "application/octet-stream")],
            Some(blob.clone()),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    println!(
        "monolithic upload through a 4 s upstream: {} after {took:?}",
        r.status
    );
    // distribution 2.8 starts an upload on a POST with a body (it takes
    // `?digest=` on PUT only): 202, and not regcache's 408.
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(
        took >= Duration::from_secs(4),
        "{took:?}: the stall did not apply"
    );
    assert_eq!(
        metric(&regcache, CUT, &[("listener", "api"), ("reason", "body")]).await,
        0.0
    );
}

//! Request bodies a client gets wrong, through regcache with writes on, against
//! a real docker-registry 2.8 (issue 11):
//!
//! - a broken upload body (bad chunked framing, a body shorter than its
//!   Content-Length) is the client's 400 `BLOB_UPLOAD_INVALID`, logged as the
//!   client's below WARN, and `regcache_upstream_requests_total` does not
//!   move (it used to count a `status="0"`, with a 502 and a WARN "upstream
//!   unavailable"); a broken manifest body is the client's 400
//!   `MANIFEST_INVALID`;
//! - a manifest PUT declaring 10 GiB with `Expect: 100-continue` gets 413
//!   (405 from a read-only regcache) and never `100 Continue`.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use regcache_tests::image::media;
use regcache_tests::{Regcache, RegcacheOptions, Registry, RegistryClient, RegistryOptions};

const UPSTREAM_REQUESTS: &str = "regcache_upstream_requests_total";

/// `request` on a fresh connection; the raw answer until the peer closes or
/// 3 s pass.
fn raw_exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream.write_all(request).unwrap();
    if half_close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn regcache_addr(regcache: &Regcache) -> SocketAddr {
    regcache.host().parse().unwrap()
}

#[tokio::test]
async fn broken_upload_and_manifest_bodies_are_the_clients_400_and_no_upstream_metric_moves() {
    let registry = Registry::start(RegistryOptions::default());
    let regcache = Regcache::start(
        RegcacheOptions::new(registry.url())
            .writes("client-credentials")
            .retry_attempts(1),
    );
    let client = RegistryClient::new(regcache.url());
    let addr = regcache_addr(&regcache);
    // (what, the raw request for an upload's Location, half-close after it)
    type Case<'a> = (&'a str, &'a dyn Fn(&str) -> String, bool);
    let cases: [Case<'_>; 2] = [
        (
            "a garbage chunk size",
            &|location: &str| {
                format!(
                    "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
                     Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ-not-hex\r\nmore\r\n0\r\n\r\n"
                )
            },
            false,
        ),
        (
            "a body shorter than its Content-Length",
            &|location: &str| {
                format!(
                    "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: 100000\r\n\r\nonly a few bytes"
                )
            },
            true,
        ),
    ];
    for (what, request, half_close) in cases {
        let started = client
            .request(
                reqwest::Method::POST,
                "/v2/broken/body/blobs/uploads/",
                &[],
                None,
            )
            .await
            .unwrap();
        assert_eq!(started.status, 202, "{what}: {}", started.text());
        let location = started.header("location").unwrap().to_owned();
        assert!(
            location.starts_with("/v2/broken/body/blobs/uploads/"),
            "{location}"
        );

        let before = regcache.metrics().await;
        let log_before = regcache.log().len();
        let answer = raw_exchange(addr, request(&location).as_bytes(), half_close);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{what}: {answer}\nregcache log:\n{}",
            &regcache.log()[log_before..]
        );
        assert!(answer.contains("BLOB_UPLOAD_INVALID"), "{what}: {answer}");
        let after = regcache.metrics().await;
        assert_eq!(
            after.sum(UPSTREAM_REQUESTS, &[]),
            before.sum(UPSTREAM_REQUESTS, &[]),
            "{what}: regcache_upstream_requests_total moved:\n{}",
            after.text
        );
        assert_eq!(
            after.sum(UPSTREAM_REQUESTS, &[("status", "0")]),
            0.0,
            "{what}"
        );
        let log = &regcache.log()[log_before..];
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("request failed"))
            .collect();
        assert!(
            !failed.is_empty()
                && failed
                    .iter()
                    .all(|l| l.contains("whose=\"client\"") || l.contains("whose=client")),
            "{what}: logged as the client's failure:\n{log}"
        );
        assert!(
            !log.lines().any(|l| l.contains("WARN")),
            "{what}: nothing at WARN:\n{log}"
        );
    }

    // A manifest body is read whole before it goes upstream: broken
    // framing there is the client's MANIFEST_INVALID, and nothing is sent.
    let before = regcache.metrics().await;
    let request = format!(
        "PUT /v2/broken/body/manifests/v1 HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\nnot-hex\r\n\r\n",
        media::DOCKER_MANIFEST
    );
    let answer = raw_exchange(addr, request.as_bytes(), false);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("MANIFEST_INVALID"), "{answer}");
    let after = regcache.metrics().await;
    assert_eq!(
        after.sum(UPSTREAM_REQUESTS, &[]),
        before.sum(UPSTREAM_REQUESTS, &[]),
        "{}",
        after.text
    );
    assert!(
        !registry
            .access_entries()
            .iter()
            .any(|e| e.method == "PUT" && e.path.contains("/manifests/")),
        "nothing reached the registry"
    );
}

#[tokio::test]
async fn a_declared_oversize_manifest_gets_413_and_never_100_continue() {
    let registry = Registry::start(RegistryOptions::default());
    let regcache =
        Regcache::start(RegcacheOptions::new(registry.url()).writes("client-credentials"));
    let read_only = Regcache::start(RegcacheOptions::new(registry.url()));
    for (regcache, status, code) in [
        (&regcache, "413", "MANIFEST_INVALID"),
        (&read_only, "405", "UNSUPPORTED"),
    ] {
        let addr = regcache_addr(regcache);
        let request = format!(
            "PUT /v2/big/manifest/manifests/v1 HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: {}\r\nContent-Length: 10737418240\r\nExpect: 100-continue\r\n\r\n",
            media::DOCKER_MANIFEST
        );
        let answer = raw_exchange(addr, request.as_bytes(), false);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "first line should be {status}: {answer}"
        );
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(answer.contains(code), "{answer}");
    }
    assert!(
        !registry.access_entries().iter().any(|e| e.method == "PUT"),
        "nothing reached the registry"
    );
}

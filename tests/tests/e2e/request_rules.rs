//! Per-request rules (issue 11, items 6 to 8): over the per-client rate a
//! client gets 429 with `Retry-After`, others do not; RFC 9112's `Host`
//! rules on the fast path and on hyper; the admin listener's state-changing
//! endpoints need the admin token off loopback.

use std::time::Duration;

use bytes::Bytes;
use regcache_tests::{Fetched, Regcache, RegistryClient};

use crate::connections::{localhost, other_host, raw};
use crate::support::{Mode, Upstream, assert_error};

#[tokio::test]
async fn over_the_rate_a_client_gets_429_with_retry_after_and_others_do_not() {
    let upstream = Upstream::start(Mode::Plain);
    let regcache = Regcache::start(upstream.regcache_options().extra_toml(
        "[limits]\nrequests_per_second_per_client = 2\nrequest_burst_per_client = 5\n",
    ));
    let client = RegistryClient::new(regcache.url());
    let mut statuses = Vec::new();
    let mut limited: Option<Fetched> = None;
    for _ in 0..12 {
        let r = client
            .request(reqwest::Method::GET, "/v2/", &[], None)
            .await
            .unwrap();
        statuses.push(r.status);
        if r.status == 429 {
            limited = Some(r);
        }
    }
    println!("12 pings at once: {statuses:?}");
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    let limited = limited.expect("no 429 after a burst of 12");
    assert_error("over the rate", &limited, 429, "TOOMANYREQUESTS");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    // hyper's path too (a request with a body).
    let r = client
        .request(
            reqwest::Method::POST,
            "/v2/conn/rate/blobs/uploads/",
            &[],
            Some(Bytes::from_static(b"x")),
        )
        .await
        .unwrap();
    assert_error("over the rate on hyper", &r, 429, "TOOMANYREQUESTS");
    // Another address has its own budget.
    let host = regcache.addr();
    let (answer, _) = raw(
        host,
        other_host(),
        format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // And the first one again after waiting.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = client
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let metrics = regcache.metrics().await;
    assert!(
        metrics.sum(
            "regcache_requests_refused_total",
            &[("reason", "rate_limit")]
        ) >= 2.0,
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn host_rules_of_rfc_9112_on_both_paths() {
    let upstream = Upstream::start(Mode::Plain);
    let regcache = Regcache::start(upstream.regcache_options());
    let host = regcache.addr();
    let cases: [(&str, String, &str); 6] = [
        (
            "no Host",
            "GET /v2/ HTTP/1.1\r\n\r\n".into(),
            "400 Bad Request",
        ),
        (
            "two Hosts",
            format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n\r\n"),
            "400 Bad Request",
        ),
        (
            "user info in Host",
            "GET /v2/ HTTP/1.1\r\nHost: user@example\r\n\r\n".into(),
            "400 Bad Request",
        ),
        (
            "no Host, hyper",
            "POST /v2/conn/host/blobs/uploads/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n".into(),
            "400 Bad Request",
        ),
        (
            "two Hosts, hyper",
            "POST /v2/conn/host/blobs/uploads/ HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 0\r\n\r\n"
                .to_string(),
            "400 Bad Request",
        ),
        (
            "HTTP/1.0 without Host",
            "GET /v2/ HTTP/1.0\r\n\r\n".into(),
            "200 OK",
        ),
    ];
    for (what, request, status) in cases {
        let (answer, _) = raw(
            host,
            localhost(),
            request.as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{what}: {answer}"
        );
        if status.starts_with("400") {
            assert!(
                answer.contains("\"code\":\"UNSUPPORTED\""),
                "{what}: {answer}"
            );
            assert!(answer.contains("RFC 9112"), "{what}: {answer}");
            assert!(
                answer
                    .to_ascii_lowercase()
                    .contains("docker-distribution-api-version: registry/2.0"),
                "{what}: {answer}"
            );
        }
    }
    let metrics = regcache.metrics().await;
    assert_eq!(
        metrics.sum("regcache_requests_refused_total", &[("reason", "host")]),
        5.0,
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn admin_state_changes_need_the_token_off_loopback() {
    let upstream = Upstream::start(Mode::Plain);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = async |regcache: &Regcache, auth: Option<&str>| {
        let mut r = http.post(format!("{}/tls/reload", regcache.admin_url()));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, challenge, resp.text().await.unwrap())
    };
    let reads = async |regcache: &Regcache| {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let s = http
                .get(format!("{}{path}", regcache.admin_url()))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(s, 200, "{path}");
        }
    };

    // On loopback without a token (the default): allowed (409: no TLS to reload).
    let local = Regcache::start(upstream.regcache_options());
    assert_eq!(post(&local, None).await.0, 409);

    // On 0.0.0.0 without a token: refused, saying how to set one.
    let mut options = upstream.regcache_options();
    options.admin_on_all_addresses = true;
    let open = Regcache::start(options.clone());
    let (status, _, body) = post(&open, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("\"code\":\"DENIED\"") && body.contains("token_file"),
        "{body}"
    );
    reads(&open).await;
    assert!(
        open.log()
            .contains("state-changing admin endpoints are refused")
    );

    // On 0.0.0.0 with a token: only with it.
    let dir = tempfile::tempdir().unwrap();
    let token = "e2e-admin-token-7f3a9c1d5b";
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let guarded = Regcache::start(options.extra_toml(&format!(
        "[admin]\ntoken_file = {:?}\n",
        file.display().to_string()
    )));
    for wrong in [None, Some("Bearer nope"), Some("Basic ZTJlOmUyZQ==")] {
        let (status, challenge, body) = post(&guarded, wrong).await;
        assert_eq!(status, 401, "{wrong:?}: {body}");
        assert!(body.contains("\"code\":\"UNAUTHORIZED\""), "{body}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"regcache-admin\"")
        );
    }
    let (status, _, body) = post(&guarded, Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, 409, "{body}");
    // Any other method on any path is a state change too.
    let s = http
        .delete(format!("{}/metrics", guarded.admin_url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 401);
    reads(&guarded).await;
    assert!(!guarded.log().contains(token), "the token is in the log");
    let metrics = guarded.metrics().await;
    assert!(!metrics.text.contains(token));
}

//! What `regcache serve` answers when something is wrong: malformed names,
//! digests and tags (400 with the right code, without asking the upstream),
//! upstream 404s and 429s relayed, a failed revalidation masked by the cached
//! tag, an unreachable upstream (502 naming it), and a bad
//! configuration file (exit 78, `EX_CONFIG`, before binding anything).

use std::net::TcpListener;
use std::time::Duration;

use regcache_tests::regcache::run_regcache;
use regcache_tests::{
    Fault, FaultProxy, Regcache, RegcacheOptions, RegistryClient, Target, free_addr,
};

use crate::support::{
    FULL_ACCEPT, Mode, Upstream, assert_api_version, assert_error, push_test_images, settle,
};

#[tokio::test]
async fn malformed_requests_are_rejected_without_asking_the_upstream() {
    let upstream = Upstream::start(Mode::Plain);
    let regcache = upstream.start_regcache();
    let client = RegistryClient::new(regcache.url());
    let hex = "a".repeat(64);
    let cases: Vec<(String, &str)> = vec![
        // names
        ("/v2/UPPER/manifests/x".into(), "NAME_INVALID"),
        ("/v2/library/Alpine/manifests/latest".into(), "NAME_INVALID"),
        ("/v2/-lead/manifests/latest".into(), "NAME_INVALID"),
        ("/v2/a..b/manifests/latest".into(), "NAME_INVALID"),
        ("/v2/trail-/manifests/latest".into(), "NAME_INVALID"),
        (format!("/v2/UPPER/blobs/sha256:{hex}"), "NAME_INVALID"),
        (
            format!("/v2/{}/manifests/latest", "a".repeat(256)),
            "NAME_INVALID",
        ),
        // digests, as manifest references and as blobs
        ("/v2/ok/manifests/sha256:XYZ".into(), "DIGEST_INVALID"),
        (
            format!("/v2/ok/manifests/sha256:{}", &hex[..63]),
            "DIGEST_INVALID",
        ),
        (format!("/v2/ok/manifests/sha256:{hex}a"), "DIGEST_INVALID"),
        (
            format!("/v2/ok/manifests/sha256:{}", hex.to_uppercase()),
            "DIGEST_INVALID",
        ),
        (
            "/v2/ok/manifests/md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            "DIGEST_INVALID",
        ),
        ("/v2/ok/blobs/sha256:XYZ".into(), "DIGEST_INVALID"),
        (
            format!("/v2/ok/blobs/sha256:{}", &hex[..63]),
            "DIGEST_INVALID",
        ),
        (
            "/v2/ok/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            "DIGEST_INVALID",
        ),
        ("/v2/ok/blobs/latest".into(), "DIGEST_INVALID"),
        // tags that cannot exist: a manifest that is not there (404), as the
        // OCI conformance suite expects (docker-registry and zot answer so)
        ("/v2/ok/manifests/.hidden".into(), "MANIFEST_UNKNOWN"),
        ("/v2/ok/manifests/-dash".into(), "MANIFEST_UNKNOWN"),
        (
            "/v2/ok/manifests/.INVALID_MANIFEST_NAME".into(),
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/ok/manifests/{}", "t".repeat(129)),
            "MANIFEST_UNKNOWN",
        ),
    ];
    settle(&upstream.registry, Duration::from_millis(100)).await;
    let upstream_before = upstream.registry.access_entries().len();
    // Every case is checked; the failures are reported together.
    let mut wrong = Vec::new();
    for (path, code) in &cases {
        let get = client
            .request(reqwest::Method::GET, path, FULL_ACCEPT_HEADERS, None)
            .await
            .unwrap();
        let head = client
            .request(reqwest::Method::HEAD, path, FULL_ACCEPT_HEADERS, None)
            .await
            .unwrap();
        let status = if *code == "MANIFEST_UNKNOWN" {
            404
        } else {
            400
        };
        let checked = std::panic::catch_unwind(|| {
            assert_error(&format!("GET {path}"), &get, status, code);
            assert_eq!(head.status, status, "HEAD {path}");
            assert_api_version(&format!("HEAD {path}"), &head);
        });
        if checked.is_err() {
            wrong.push(format!(
                "{path}: want {status} {code}, got GET {} {} / HEAD {}",
                get.status,
                get.text(),
                head.status
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} malformed requests answered wrongly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    settle(&upstream.registry, Duration::from_millis(200)).await;
    let asked: Vec<_> = upstream.registry.access_entries()[upstream_before..]
        .iter()
        .filter(|e| e.path != "/v2/")
        .cloned()
        .collect();
    assert!(
        asked.is_empty(),
        "malformed requests reached the upstream: {asked:#?}"
    );
}

const FULL_ACCEPT_HEADERS: &[(&str, &str)] = &[
    ("accept", FULL_ACCEPT[0]),
    ("accept", FULL_ACCEPT[1]),
    ("accept", FULL_ACCEPT[2]),
    ("accept", FULL_ACCEPT[3]),
    ("accept", FULL_ACCEPT[4]),
    ("accept", FULL_ACCEPT[5]),
];

#[tokio::test]
async fn upstream_not_found_is_relayed() {
    let upstream = Upstream::start(Mode::Plain);
    let images = push_test_images(&upstream, "relay", false).await;
    let regcache = upstream.start_regcache();
    let client = RegistryClient::new(regcache.url());
    let direct = upstream.client(&[]);
    let repo = &images[0].repo;
    let zero = format!("sha256:{}", "0".repeat(64));
    let cases = [
        (
            format!("/v2/{repo}/manifests/no-such-tag"),
            "MANIFEST_UNKNOWN",
        ),
        (format!("/v2/{repo}/manifests/{zero}"), "MANIFEST_UNKNOWN"),
        (format!("/v2/{repo}/blobs/{zero}"), "BLOB_UNKNOWN"),
    ];
    for (path, code) in &cases {
        let got = client
            .request(reqwest::Method::GET, path, FULL_ACCEPT_HEADERS, None)
            .await
            .unwrap();
        assert_error(&format!("GET {path}"), &got, 404, code);
        let head = client
            .request(reqwest::Method::HEAD, path, FULL_ACCEPT_HEADERS, None)
            .await
            .unwrap();
        assert_eq!(head.status, 404, "HEAD {path}");
        assert_api_version(&format!("HEAD {path}"), &head);
    }
    // An unknown repository: whatever the registry says, regcache says.
    let path = "/v2/relay/nothing-here/manifests/v1";
    let upstream_answer = direct
        .request(reqwest::Method::GET, path, FULL_ACCEPT_HEADERS, None)
        .await
        .unwrap();
    let got = client
        .request(reqwest::Method::GET, path, FULL_ACCEPT_HEADERS, None)
        .await
        .unwrap();
    assert_eq!(
        (got.status, got.error_code()),
        (upstream_answer.status, upstream_answer.error_code()),
        "unknown repository: regcache {} vs registry {}",
        got.text(),
        upstream_answer.text()
    );
    assert_api_version("unknown repository", &got);
}

/// Through the fault proxy: a 429 on a cold tag is relayed as 429
/// `TOOMANYREQUESTS` with its `Retry-After`; once the tag is cached, a 503 on
/// revalidation is masked by the cached answer.
#[tokio::test]
async fn upstream_429_is_relayed_and_503_on_revalidation_serves_the_cached_tag() {
    let upstream = Upstream::start(Mode::Plain);
    let images = push_test_images(&upstream, "flaky", false).await;
    let proxy = FaultProxy::start(&upstream.registry.url());
    let regcache = Regcache::start(
        RegcacheOptions::new(proxy.url())
            .tag_ttl_secs(1)
            .retry_attempts(1),
    );
    let client = RegistryClient::new(regcache.url());
    let image = &images[0];
    let path = format!("/v2/{}/manifests/{}", image.repo, image.tag);

    proxy.inject(Target::Path("/manifests/".into()), Fault::Status(429));
    let limited = client
        .request(reqwest::Method::GET, &path, FULL_ACCEPT_HEADERS, None)
        .await
        .unwrap();
    assert_error(
        "GET with the upstream rate-limiting",
        &limited,
        429,
        "TOOMANYREQUESTS",
    );
    assert_eq!(
        limited.header("retry-after"),
        Some("1"),
        "Retry-After is preserved"
    );

    proxy.clear();
    let fresh = client
        .request(reqwest::Method::GET, &path, FULL_ACCEPT_HEADERS, None)
        .await
        .unwrap();
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    assert_eq!(fresh.digest(), Some(image.digest.as_str()));

    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.inject(Target::Path("/manifests/".into()), Fault::Status(503));
    let before = proxy.count("HEAD", "/manifests/") + proxy.count("GET", "/manifests/");
    let stale = client
        .request(reqwest::Method::GET, &path, FULL_ACCEPT_HEADERS, None)
        .await
        .unwrap();
    assert_eq!(
        stale.status,
        200,
        "a cached tag must be served when revalidation fails: {}",
        stale.text()
    );
    assert_eq!(stale.body, fresh.body);
    assert_eq!(stale.digest(), Some(image.digest.as_str()));
    let after = proxy.count("HEAD", "/manifests/") + proxy.count("GET", "/manifests/");
    assert!(
        after > before,
        "past tag_ttl_secs the tag must be revalidated upstream: {:#?}",
        proxy.requests()
    );
}

#[tokio::test]
async fn unreachable_upstream_with_nothing_cached_is_a_502_naming_it() {
    // Nothing listens there: connections are refused.
    let dead = free_addr();
    let regcache = Regcache::start(
        RegcacheOptions::new(format!("http://{dead}"))
            .retry_attempts(1)
            .tag_ttl_secs(1),
    );
    let client = RegistryClient::new(regcache.url());
    let upstream_name = &regcache.options().upstream_name;
    let paths = [
        "/v2/library/alpine/manifests/latest".to_owned(),
        format!("/v2/library/alpine/manifests/sha256:{}", "1".repeat(64)),
        format!("/v2/library/alpine/blobs/sha256:{}", "2".repeat(64)),
    ];
    for path in &paths {
        let got = tokio::time::timeout(
            Duration::from_secs(30),
            client.request(reqwest::Method::GET, path, FULL_ACCEPT_HEADERS, None),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {path} with the upstream down took over 30 s"))
        .unwrap();
        assert_api_version(&format!("GET {path}"), &got);
        assert_eq!(got.status, 502, "GET {path}: {}", got.text());
        let envelope: serde_json::Value = serde_json::from_slice(&got.body)
            .unwrap_or_else(|e| panic!("GET {path}: not a JSON envelope ({e}): {}", got.text()));
        let message = envelope["errors"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            message.contains(upstream_name.as_str()) || message.contains(&dead.to_string()),
            "GET {path}: the message should name the upstream ({upstream_name} / {dead}): {}",
            got.text()
        );
    }
}

#[tokio::test]
async fn unknown_config_keys_exit_78_listing_every_problem_before_binding() {
    // Hold the configured ports: a regcache that bound before validating
    // would report them in use.
    let listen = TcpListener::bind(free_addr()).unwrap();
    let admin = TcpListener::bind(free_addr()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let data_dir = dir.path().join("data");
    std::fs::write(
        &config,
        format!(
            "listen = \"{}\"\nadmin_listen = \"{}\"\ndata_dir = {:?}\ncolour = \"blue\"\n\n\
             [log]\nformat = \"text\"\nverbosity = 3\n\n\
             [cache]\ndisk_sise = \"1GiB\"\n\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\ntag_tll_secs = 5\n",
            listen.local_addr().unwrap(),
            admin.local_addr().unwrap(),
            data_dir.to_string_lossy(),
        ),
    )
    .unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    let (code, stdout, stderr) = tokio::time::timeout(
        Duration::from_secs(20),
        run_regcache(&["serve", "--config", &config_arg], &[]),
    )
    .await
    .expect("regcache serve with a bad config must exit, not serve");
    assert_eq!(
        code,
        Some(78),
        "exit status for unknown keys\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for key in ["colour", "verbosity", "disk_sise", "tag_tll_secs"] {
        assert!(
            stderr.contains(key),
            "stderr does not name the unknown key `{key}`:\n{stderr}"
        );
    }
    let lower = stderr.to_lowercase();
    for sign_of_binding in ["in use", "listening", "bind"] {
        assert!(
            !lower.contains(sign_of_binding),
            "regcache seems to have bound a port before validating (`{sign_of_binding}`):\n{stderr}"
        );
    }
    drop((listen, admin));
}

/// The OCI conformance suite's "nonexistent manifest" reference,
/// `.INVALID_MANIFEST_NAME`, is not a valid tag: GET and HEAD answer 404
/// `MANIFEST_UNKNOWN` (HEAD: the status only), as the suite expects. A
/// reference that is a digest in form but malformed is still 400
/// `DIGEST_INVALID`.
#[tokio::test]
async fn an_invalid_tag_is_an_unknown_manifest_and_a_malformed_digest_is_invalid() {
    let upstream = Upstream::start(Mode::Plain);
    let repo = "conformance/app";
    upstream
        .client(&[repo])
        .push_image(
            repo,
            "v1",
            &crate::support::small_image(0xc0f, regcache_tests::Platform::linux_amd64()),
            regcache_tests::ManifestFormat::Oci,
        )
        .await;
    let regcache = upstream.start_regcache();
    let client = RegistryClient::new(regcache.url());
    let mut wrong = Vec::new();
    for (path, status, code) in [
        (
            format!("/v2/{repo}/manifests/.INVALID_MANIFEST_NAME"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/{repo}/manifests/sha256:abc"),
            400,
            "DIGEST_INVALID",
        ),
    ] {
        let get = client
            .request(reqwest::Method::GET, &path, FULL_ACCEPT_HEADERS, None)
            .await
            .unwrap();
        let head = client
            .request(reqwest::Method::HEAD, &path, FULL_ACCEPT_HEADERS, None)
            .await
            .unwrap();
        let checked = std::panic::catch_unwind(|| {
            assert_error(&format!("GET {path}"), &get, status, code);
            assert_eq!(head.status, status, "HEAD {path}");
            assert!(head.body.is_empty(), "HEAD {path}: a body");
            assert_api_version(&format!("HEAD {path}"), &head);
        });
        if checked.is_err() {
            wrong.push(format!(
                "{path}: want {status} {code}, got GET {} {} / HEAD {}",
                get.status,
                get.text().trim(),
                head.status
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

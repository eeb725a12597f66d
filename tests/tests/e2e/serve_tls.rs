//! `regcache serve` with TLS on the API listener (`tls_cert_file`,
//! `tls_key_file`): skopeo pulls through it with certificate verification on
//! and gets the same files as a direct copy; a client without the CA, and a
//! plain-HTTP client, get no registry answer and are counted as failed
//! handshakes; HTTP/2 is negotiated with ALPN; every request is served by
//! hyper (the `sendfile` fast path is for plain TCP); a bad certificate/key
//! pair stops start-up with exit 78 (`EX_CONFIG`); SIGHUP (and `POST /tls/reload` on the
//! admin listener) swaps in a rotated certificate, keeps the old one when the
//! new files are bad, and is harmless without TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regcache_tests::regcache::{http_status, run_regcache};
use regcache_tests::skopeo::CopyOptions;
use regcache_tests::{Regcache, Skopeo, free_addr, sha256_digest};

use crate::support::{Mode, Pushed, Upstream, dir_contents, eventually, push_test_images};

const FAILURES: &str = "regcache_tls_handshake_failures_total";
const RESPONSES: &str = "regcache_responses_total";
const RELOADS: &str = "regcache_tls_reloads_total";

/// A CA and a leaf for IP 127.0.0.1 that it signed, as files.
struct Pki {
    _dir: tempfile::TempDir,
    /// `ca.crt` alone: skopeo's `--src-cert-dir`.
    cert_dir: PathBuf,
    /// The CA certificate (PEM).
    ca_pem: String,
    /// Leaf, then CA: what `tls_cert_file` holds.
    chain_file: PathBuf,
    /// The leaf's PKCS#8 key.
    key_file: PathBuf,
    /// A key that is not the leaf's.
    other_key_file: PathBuf,
}

fn make_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "regcache-tests TLS CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "regcache-tests 127.0.0.1");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    let dir = tempfile::Builder::new()
        .prefix("regcache-tls-")
        .tempdir()
        .unwrap();
    let cert_dir = dir.path().join("certs");
    std::fs::create_dir(&cert_dir).unwrap();
    std::fs::write(cert_dir.join("ca.crt"), ca_cert.pem()).unwrap();
    let chain_file = dir.path().join("chain.pem");
    std::fs::write(&chain_file, format!("{}{}", leaf_cert.pem(), ca_cert.pem())).unwrap();
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, leaf_key.serialize_pem()).unwrap();
    let other_key_file = dir.path().join("other-key.pem");
    std::fs::write(
        &other_key_file,
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        _dir: dir,
        cert_dir,
        chain_file,
        key_file,
        other_key_file,
    }
}

/// `skopeo copy` from `src` (a `docker://` reference) into `dir:out` with TLS
/// verification on, trusting the CAs in `cert_dir` when given.
async fn verified_copy(
    src: &str,
    out: &Path,
    all: bool,
    cert_dir: Option<&Path>,
) -> Result<(), regcache_tests::skopeo::SkopeoError> {
    let mut args: Vec<String> = vec![
        "--insecure-policy".into(),
        "copy".into(),
        "--src-tls-verify=true".into(),
    ];
    if let Some(dir) = cert_dir {
        args.push("--src-cert-dir".into());
        args.push(dir.display().to_string());
    }
    if all {
        args.push("--all".into());
    }
    args.push(src.into());
    args.push(format!("dir:{}", out.display()));
    Skopeo::new().run(args).await.map(drop)
}

async fn failures(regcache: &Regcache) -> f64 {
    regcache.metrics().await.sum(FAILURES, &[])
}

/// Waits (up to 5 s) until the failed-handshake counter exceeds `above`.
async fn failures_exceed(regcache: &Regcache, above: f64) -> bool {
    eventually(Duration::from_secs(5), async || {
        failures(regcache).await > above
    })
    .await
}

#[tokio::test]
async fn pulls_over_verified_tls_match_a_direct_copy() {
    let pki = make_pki();
    let upstream = Upstream::start(Mode::Plain);
    let images: Vec<Pushed> = push_test_images(&upstream, "e2e-tls", false).await;
    let regcache = Regcache::start(
        upstream
            .regcache_options()
            .tls(&pki.chain_file, &pki.key_file),
    );
    assert!(regcache.url().starts_with("https://"), "{}", regcache.url());
    let log = regcache.log();
    assert!(
        log.contains("scheme=\"https\"") && log.contains("tls on the api listener"),
        "start-up log should say the API listener is TLS:\n{log}"
    );
    assert_eq!(
        failures(&regcache).await,
        0.0,
        "the counter is exported from the start"
    );

    // Direct (plain HTTP upstream) and through regcache with verification on.
    let work = tempfile::tempdir().unwrap();
    for image in &images {
        let direct = work.path().join("direct").join(image.label);
        let through = work.path().join("tls").join(image.label);
        std::fs::create_dir_all(&direct).unwrap();
        std::fs::create_dir_all(&through).unwrap();
        Skopeo::new()
            .try_copy(
                &format!(
                    "docker://{}/{}:{}",
                    upstream.registry.host(),
                    image.repo,
                    image.tag
                ),
                &format!("dir:{}", direct.display()),
                None,
                image.list,
                &CopyOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        verified_copy(
            &format!("docker://{}/{}:{}", regcache.host(), image.repo, image.tag),
            &through,
            image.list,
            Some(&pki.cert_dir),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}\nregcache log:\n{}", image.label, regcache.log()));
        assert_eq!(
            dir_contents(&through),
            dir_contents(&direct),
            "{}: files (path, size, sha256) over TLS differ from a direct copy",
            image.label
        );
        let manifest = std::fs::read(through.join("manifest.json")).unwrap();
        assert_eq!(sha256_digest(&manifest), image.digest, "{}", image.label);
    }

    // skopeo speaks HTTP/1.1 over TLS: its pulls take the fast path (blobs
    // from their files), over kernel TLS iff the kernel has it.
    let metrics = regcache.metrics().await;
    let via = |v: &str| metrics.sum(RESPONSES, &[("via", v)]);
    assert!(via("fast") > 0.0, "{}", metrics.text);
    assert!(
        via("sendfile") + via("sendfile_fill") > 0.0,
        "{}",
        metrics.text
    );
    let path = |p: &str| metrics.sum("regcache_tls_connections_total", &[("path", p)]);
    let (kernel, user) = (path("kernel"), path("user"));
    if std::path::Path::new("/proc/net/tls_stat").exists() {
        assert!(
            kernel > 0.0,
            "kernel TLS unused; metrics:\n{}",
            metrics.text
        );
    } else {
        assert_eq!(
            kernel, 0.0,
            "no kernel TLS here; metrics:\n{}",
            metrics.text
        );
        assert!(user > 0.0, "{}", metrics.text);
    }
    assert_eq!(
        metrics.sum(FAILURES, &[]),
        0.0,
        "verified copies made no failed handshakes; metrics:\n{}",
        metrics.text
    );

    // Without the CA, skopeo refuses regcache's certificate ...
    let image = &images[0];
    let refused = verified_copy(
        &format!("docker://{}/{}:{}", regcache.host(), image.repo, image.tag),
        &work.path().join("no-ca"),
        false,
        None,
    )
    .await
    .expect_err("a copy without the CA must fail");
    assert!(
        refused.stderr.contains("x509") || refused.stderr.contains("certificate"),
        "expected a certificate error: {refused}"
    );
    // ... and the aborted handshake is counted.
    assert!(
        failures_exceed(&regcache, 0.0).await,
        "a refused certificate was not counted; metrics:\n{}",
        regcache.metrics().await.text
    );

    // Plain HTTP to the TLS port gets no HTTP answer, and is counted too.
    let before = failures(&regcache).await;
    assert_eq!(http_status(regcache.addr(), "/v2/"), None);
    assert!(
        failures_exceed(&regcache, before).await,
        "plain HTTP on the TLS port was not counted; metrics:\n{}",
        regcache.metrics().await.text
    );

    let log = regcache.log();
    assert!(
        log.contains("tls handshake failed"),
        "failed handshakes are logged at debug:\n{log}"
    );

    // The admin listener stays plain HTTP.
    assert_eq!(http_status(regcache.admin_addr(), "/healthz"), Some(200));
}

#[tokio::test]
async fn alpn_negotiates_h2_and_http1() {
    let pki = make_pki();
    let upstream = Upstream::start(Mode::Plain);
    let regcache = Regcache::start(
        upstream
            .regcache_options()
            .tls(&pki.chain_file, &pki.key_file),
    );
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let client = |http1_only: bool| {
        let builder = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone())
            .timeout(Duration::from_secs(10));
        let builder = if http1_only {
            builder.http1_only()
        } else {
            builder
        };
        builder.build().unwrap()
    };
    for (http1_only, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let response = client(http1_only)
            .get(format!("{}/v2/", regcache.url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /v2/ over TLS ({version:?}): {e:?}"));
        assert_eq!(response.status().as_u16(), 200, "{version:?}");
        assert_eq!(response.version(), version);
        assert_eq!(
            response
                .headers()
                .get("docker-distribution-api-version")
                .and_then(|v| v.to_str().ok()),
            Some("registry/2.0"),
            "{version:?}"
        );
    }
    // A client that does not trust the CA gets an error, not an answer.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(make_pki().ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("{}/v2/", regcache.url()))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_bad_certificate_or_key_stops_start_up_with_exit_78() {
    let pki = make_pki();
    let data = tempfile::tempdir().unwrap();
    let listen = free_addr().to_string();
    let admin = free_addr().to_string();
    let base = |cert: &Path| -> Vec<String> {
        vec![
            "serve".into(),
            "--listen".into(),
            listen.clone(),
            "--admin-listen".into(),
            admin.clone(),
            "--data-dir".into(),
            data.path().display().to_string(),
            "--upstream".into(),
            "http://127.0.0.1:9".into(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
        ]
    };
    let run = async |args: Vec<String>, env: &[(&str, &str)]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_regcache(&args, env).await
    };

    // A certificate without a key.
    let (code, _, stderr) = run(base(&pki.chain_file), &[]).await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("tls_key_file is not"), "{stderr}");

    // The wrong key (from the environment), and an unreadable certificate
    // together with a bad address: every problem listed.
    let mut args = base(&pki.chain_file);
    args.extend([
        "--tls-key-file".into(),
        pki.other_key_file.display().to_string(),
    ]);
    let (code, _, stderr) = run(args, &[]).await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("does not match the certificate"),
        "{stderr}"
    );
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");

    let missing = data.path().join("missing.pem");
    let key = pki.key_file.display().to_string();
    let mut args = base(&missing);
    args[2] = "not-an-address".into();
    let (code, _, stderr) = run(args, &[("REGCACHE_TLS_KEY_FILE", &key)]).await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(stderr.contains("missing.pem: cannot read"), "{stderr}");
    assert!(stderr.contains("not-an-address"), "{stderr}");

    // Nothing was bound, nothing written.
    assert!(std::net::TcpListener::bind(&admin).is_ok());
    assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 0);
}

/// `GET /v2/` over TLS with a fresh client (no pooled connection) that
/// trusts only `ca_pem`: the status, or the error.
async fn get_v2_trusting(regcache: &Regcache, ca_pem: &str) -> Result<u16, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    client
        .get(format!("{}/v2/", regcache.url()))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

async fn reloads(regcache: &Regcache, result: &str) -> f64 {
    regcache.metrics().await.sum(RELOADS, &[("result", result)])
}

/// `POST /tls/reload` on the admin listener: (status, body).
async fn post_reload(regcache: &Regcache) -> (u16, String) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .post(format!("{}/tls/reload", regcache.admin_url()))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn sighup_reloads_a_rotated_certificate_and_keeps_it_when_the_next_is_bad() {
    let (first, second) = (make_pki(), make_pki());
    // The files regcache reads, as a mounted Secret would change them.
    let files = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    std::fs::copy(&first.chain_file, &cert_file).unwrap();
    std::fs::copy(&first.key_file, &key_file).unwrap();
    let upstream = Upstream::start(Mode::Plain);
    let mut regcache = Regcache::start(upstream.regcache_options().tls(&cert_file, &key_file));
    assert_eq!(get_v2_trusting(&regcache, &first.ca_pem).await, Ok(200));
    assert!(get_v2_trusting(&regcache, &second.ca_pem).await.is_err());
    assert_eq!(reloads(&regcache, "ok").await, 0.0);
    assert_eq!(reloads(&regcache, "error").await, 0.0);

    // Rotate to a certificate from another CA, then SIGHUP.
    std::fs::copy(&second.chain_file, &cert_file).unwrap();
    std::fs::copy(&second.key_file, &key_file).unwrap();
    regcache.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), async || {
            get_v2_trusting(&regcache, &second.ca_pem).await == Ok(200)
        })
        .await,
        "the rotated certificate was not served after SIGHUP; log:\n{}",
        regcache.log()
    );
    assert!(
        get_v2_trusting(&regcache, &first.ca_pem).await.is_err(),
        "new handshakes must not get the old certificate"
    );
    assert_eq!(reloads(&regcache, "ok").await, 1.0);
    let log = regcache.log();
    assert!(log.contains("tls certificate reloaded"), "{log}");
    let fingerprint = log
        .split("leaf_sha256=")
        .nth(1)
        .map(|rest| {
            rest.trim_start_matches('"')
                .chars()
                .take(95)
                .collect::<String>()
        })
        .unwrap_or_default();
    assert!(
        fingerprint.len() == 95
            && fingerprint
                .split(':')
                .all(|pair| pair.len() == 2 && pair.chars().all(|c| c.is_ascii_hexdigit())),
        "the new leaf's SHA-256 fingerprint should be logged: {log}"
    );

    // A key that is not the certificate's: logged, counted, nothing changes.
    std::fs::copy(&second.other_key_file, &key_file).unwrap();
    regcache.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), async || {
            reloads(&regcache, "error").await >= 1.0
        })
        .await,
        "a bad reload was not counted; log:\n{}",
        regcache.log()
    );
    assert!(
        regcache.is_running(),
        "SIGHUP with a bad key must not stop regcache"
    );
    assert_eq!(get_v2_trusting(&regcache, &second.ca_pem).await, Ok(200));
    assert_eq!(reloads(&regcache, "error").await, 1.0);
    assert_eq!(reloads(&regcache, "ok").await, 1.0);
    let log = regcache.log();
    assert!(
        log.contains("tls certificate reload failed")
            && log.contains("does not match the certificate"),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "{log}");

    // The admin listener reloads too: refused while the key is wrong, then
    // fine once the right key is back.
    let (status, body) = post_reload(&regcache).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("does not match"), "{body}");
    std::fs::copy(&second.key_file, &key_file).unwrap();
    let (status, body) = post_reload(&regcache).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reloads(&regcache, "error").await, 2.0);
    assert_eq!(reloads(&regcache, "ok").await, 2.0);
    assert_eq!(get_v2_trusting(&regcache, &second.ca_pem).await, Ok(200));

    let status = regcache.stop();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sighup_without_tls_is_harmless() {
    let upstream = Upstream::start(Mode::Plain);
    let mut regcache = Regcache::start(upstream.regcache_options());
    regcache.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), async || {
            regcache.log().contains("nothing to reload")
        })
        .await,
        "SIGHUP without TLS was not logged; log:\n{}",
        regcache.log()
    );
    assert!(regcache.is_running(), "SIGHUP must not stop regcache");
    assert_eq!(http_status(regcache.addr(), "/v2/"), Some(200));
    assert_eq!(post_reload(&regcache).await.0, 409);
    assert_eq!(regcache.metrics().await.sum(RELOADS, &[]), 0.0);
}

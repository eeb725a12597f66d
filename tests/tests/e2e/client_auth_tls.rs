//! Basic credentials and the transport: over plain HTTP without
//! `allow_insecure_http` they are refused with a message saying why (and
//! start-up warns); over TLS the token flow runs with an `https` realm and a
//! verified certificate. The fixture is `client_auth`'s.

use regcache_tests::{Skopeo, sha256_digest};

use crate::client_auth::{ALICE, BOB, fixture_with, skopeo_pull};

/// A CA and a leaf for 127.0.0.1 it signed: (`ca.crt` folder for skopeo's
/// `--src-cert-dir`, chain file, key file) under `dir`.
fn pki(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), ca_cert.pem()).unwrap();
    let chain = dir.join("chain.pem");
    std::fs::write(&chain, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (certs, chain, key)
}

#[tokio::test]
async fn basic_credentials_need_tls_or_the_operators_word() {
    // Plain HTTP, allow_insecure_http = false: refused, saying why.
    let fx = fixture_with("bearer", 0xa1e0, false, None).await;
    let e = skopeo_pull(&fx.regcache, "team/app:v1", Some(ALICE))
        .await
        .unwrap_err();
    assert!(
        e.stderr
            .contains("does not accept Basic credentials over plain HTTP")
            && e.stderr.contains("allow_insecure_http"),
        "{e}"
    );
    let metrics = fx.regcache.metrics().await;
    assert!(
        metrics.sum(
            "regcache_auth_failures_total",
            &[("reason", "insecure_transport")]
        ) >= 1.0,
        "{}",
        metrics.text
    );
    assert!(
        fx.regcache
            .log()
            .contains("Basic credentials will be refused"),
        "start-up warns about it"
    );

    // TLS: the token flow with a https realm, certificate verified.
    let dir = tempfile::tempdir().unwrap();
    let (certs, chain, key) = pki(dir.path());
    let fx = fixture_with("bearer", 0xa1f0, false, Some((&chain, &key))).await;
    let rc = &fx.regcache;
    let out = tempfile::tempdir().unwrap();
    let copy = async |who: Option<(&str, &str)>| {
        let mut args: Vec<String> = vec![
            "--insecure-policy".into(),
            "copy".into(),
            "--src-tls-verify=true".into(),
            "--src-cert-dir".into(),
            certs.display().to_string(),
        ];
        if let Some((u, p)) = who {
            args.push("--src-creds".into());
            args.push(format!("{u}:{p}"));
        }
        args.push(format!("docker://{}/team/app@{}", rc.host(), fx.team));
        args.push(format!("dir:{}", out.path().display()));
        Skopeo::new().run(args).await
    };
    copy(Some(ALICE))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", rc.log()));
    assert_eq!(
        sha256_digest(&std::fs::read(out.path().join("manifest.json")).unwrap()),
        fx.team
    );
    let e = copy(None).await.unwrap_err();
    assert!(e.stderr.contains("authentication required"), "{e}");
    let e = copy(Some(BOB)).await.unwrap_err();
    assert!(e.stderr.contains("denied"), "{e}");
}

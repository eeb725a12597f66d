//! Independent checks of regcache's Schema 1 signatures against
//! docker/distribution 2.8 (`compatibility.schema1.enabled: true`, signing
//! with a key file written by `p256` in the harness):
//!
//! (a) a manifest signed by `regcache convert --key` is accepted by the
//!     registry's libtrust verifier on PUT (201, same digest), while a copy
//!     with one signature character changed is refused;
//! (b) regcache's verifier (`regcache_formats::jws::verify`) accepts what the
//!     registry signs (its own conversions and re-signed stored manifests),
//!     and regcache computes the same `kid` for the same key file.

use std::path::{Path, PathBuf};

use regcache_tests::image::{History, config, media};
use regcache_tests::regcache::{ConvertArgs, convert};
use regcache_tests::{
    EMPTY_LAYER_BYTES, EMPTY_LAYER_DIGEST, Image, ImageGen, ManifestFormat, Platform, Registry,
    RegistryClient, RegistryOptions, jws, keys, sha256_digest,
};
use serde_json::Value;

/// A registry that accepts Schema 1 pushes and signs with a known key.
struct Setup {
    _work: tempfile::TempDir,
    key_path: PathBuf,
    registry: Registry,
    client: RegistryClient,
    image: Image,
}

fn setup(seed: u64) -> Setup {
    let work = tempfile::tempdir().unwrap();
    let key_path = work.path().join("signing-key.pem");
    keys::write_ec_pem(&key_path, seed);
    let registry = Registry::start(RegistryOptions {
        schema1_enabled: true,
        signing_key: Some(key_path.clone()),
        ..RegistryOptions::default()
    });
    let client = RegistryClient::new(registry.url());
    let mut g = ImageGen::new(seed);
    let platform = Platform::linux_amd64();
    let layers = g.layers(2);
    let history = vec![
        History::empty("ARG V=1"),
        History::layer("ADD rootfs.tar /"),
        History::empty("ENV A=<&>"),
        History::layer("RUN make && make install"),
        History::empty("CMD [\"/app\"]"),
    ];
    let cfg = config(&platform, &layers, &history, Value::Null);
    Setup {
        _work: work,
        key_path,
        registry,
        client,
        image: Image::new(&cfg, layers, platform),
    }
}

/// regcache's `kid` for a key file.
fn regcache_kid(key_path: &Path) -> String {
    let pem = std::fs::read_to_string(key_path).unwrap();
    regcache_formats::jws::SigningKey::from_pem(&pem)
        .unwrap_or_else(|e| panic!("regcache cannot load the harness's SEC 1 key: {e}"))
        .kid()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_accepts_regcache_signed_schema1() {
    let Setup {
        _work: work,
        key_path,
        registry: _registry,
        client,
        image,
    } = setup(0x51_6e);
    let config_path = work.path().join("config.json");
    let manifest_path = work.path().join("manifest.json");
    std::fs::write(&config_path, &image.config).unwrap();
    std::fs::write(&manifest_path, image.docker_manifest()).unwrap();

    let (name, tag) = ("sig/pushed", "v1");
    let args = ConvertArgs {
        name,
        tag,
        config: &config_path,
        manifest: &manifest_path,
        child: None,
        key: Some(&key_path),
        payload: false,
    };
    let signed = convert(&args).await;
    assert!(
        signed.success(),
        "`{}` failed: {}",
        signed.command,
        signed.stderr
    );
    let signed = signed.stdout;
    let payload = jws::payload_of(&signed)
        .unwrap_or_else(|e| panic!("regcache's output is not a signed manifest: {e}"));
    let digest = sha256_digest(&payload);
    let payload_only = convert(&ConvertArgs {
        payload: true,
        ..args.clone()
    })
    .await;
    assert!(payload_only.success(), "{}", payload_only.stderr);
    assert_eq!(
        payload_only.stdout, payload,
        "--payload prints the signed document's payload"
    );
    let recovered: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(recovered["name"], name);
    assert_eq!(recovered["tag"], tag);
    let blob_sums: Vec<&str> = recovered["fsLayers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["blobSum"].as_str().unwrap())
        .collect();
    assert!(blob_sums.contains(&EMPTY_LAYER_DIGEST), "{blob_sums:?}");
    let tails: Vec<Value> = jws::protected_headers(&signed)
        .unwrap()
        .into_iter()
        .map(|h| h["formatTail"].clone())
        .collect();
    assert_eq!(
        tails,
        ["Cn0"],
        "one signature whose formatTail is \"\\n}}\""
    );

    // distribution checks that every fsLayer exists in the repository.
    for layer in &image.layers {
        client.push_blob(name, layer.blob.clone()).await;
    }
    let empty = client
        .push_blob(name, EMPTY_LAYER_BYTES.to_vec().into())
        .await;
    assert_eq!(empty, EMPTY_LAYER_DIGEST);

    // Negative control: the registry really verifies signatures.
    let tampered = tamper_signature(&signed);
    let refused = client
        .put_manifest(name, tag, media::SCHEMA1_SIGNED, &tampered)
        .await;
    assert_eq!(
        refused.status,
        400,
        "a wrong signature must be refused: {}",
        refused.text()
    );
    println!(
        "registry on a tampered signature: {} {}",
        refused.status,
        refused.text().trim_end()
    );

    let accepted = client
        .put_manifest(name, tag, media::SCHEMA1_SIGNED, &signed)
        .await;
    assert_eq!(
        accepted.status,
        201,
        "distribution refused regcache's signed manifest: {}",
        accepted.text()
    );
    assert_eq!(accepted.digest(), Some(digest.as_str()));

    // The registry stores the payload and re-signs it on every GET.
    let back = client
        .get_manifest(name, &digest, &[media::SCHEMA1_SIGNED])
        .await
        .unwrap();
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(back.digest(), Some(digest.as_str()));
    assert_eq!(jws::payload_of(&back.body).unwrap(), payload);

    let ours = regcache_formats::jws::verify(&signed)
        .unwrap_or_else(|e| panic!("regcache cannot verify its own signature: {e}"));
    assert_eq!(ours.digest.as_str(), digest);
    assert_eq!(ours.key_ids, [regcache_kid(&key_path)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regcache_verifies_distribution_signed_schema1() {
    let Setup {
        _work,
        key_path,
        registry: _registry,
        client,
        image,
    } = setup(0x51_6f);
    let kid = regcache_kid(&key_path);

    // A conversion the registry makes on GET by tag.
    let (name, tag) = ("sig/converted", "latest");
    client
        .push_image(name, tag, &image, ManifestFormat::Docker)
        .await;
    let converted = client
        .get_manifest(name, tag, &[media::SCHEMA1_SIGNED])
        .await
        .unwrap();
    assert_eq!(converted.status, 200, "{}", converted.text());
    let verified = regcache_formats::jws::verify(&converted.body)
        .unwrap_or_else(|e| panic!("regcache rejects distribution's conversion: {e}"));
    assert_eq!(Some(verified.digest.as_str()), converted.digest());
    assert_eq!(verified.payload, jws::payload_of(&converted.body).unwrap());
    assert_eq!(
        verified.key_ids,
        std::slice::from_ref(&kid),
        "same key file, same kid (distribution vs regcache)"
    );

    // A stored Schema 1 manifest, re-signed by the registry on GET: push the
    // registry's own conversion back under a tag of the same name.
    let payload = verified.payload;
    let doc: Value = serde_json::from_slice(&payload).unwrap();
    for layer in &image.layers {
        client.push_blob(name, layer.blob.clone()).await;
    }
    client
        .push_blob(name, EMPTY_LAYER_BYTES.to_vec().into())
        .await;
    assert_eq!(doc["tag"], tag);
    let stored = client
        .put_manifest(name, tag, media::SCHEMA1_SIGNED, &converted.body)
        .await;
    assert_eq!(stored.status, 201, "{}", stored.text());
    let digest = sha256_digest(&payload);
    assert_eq!(stored.digest(), Some(digest.as_str()));
    let resigned = client
        .get_manifest(name, &digest, &[media::SCHEMA1_SIGNED])
        .await
        .unwrap();
    assert_eq!(resigned.status, 200, "{}", resigned.text());
    let verified = regcache_formats::jws::verify(&resigned.body)
        .unwrap_or_else(|e| panic!("regcache rejects distribution's re-signed manifest: {e}"));
    assert_eq!(verified.payload, payload);
    assert_eq!(verified.digest.as_str(), digest);
    assert_eq!(verified.key_ids, [kid]);

    // And a tampered copy is rejected by regcache too.
    assert!(
        regcache_formats::jws::verify(&tamper_signature(&resigned.body)).is_err(),
        "regcache accepted a tampered signature"
    );
}

/// Changes the first character of the first `signature` value.
fn tamper_signature(signed: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(signed).unwrap();
    let marker = "\"signature\": \"";
    let at = text.find(marker).expect("a signature member") + marker.len();
    let mut bytes = signed.to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    bytes
}

/// A key file written by regcache (`SigningKey::to_pem`) is one distribution
/// can load as `signingkeyfile`, and both compute the same `kid` for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_loads_a_regcache_written_key() {
    let work = tempfile::tempdir().unwrap();
    let harness_key = work.path().join("harness.pem");
    keys::write_ec_pem(&harness_key, 0x51_70);
    let key = regcache_formats::jws::SigningKey::from_pem(
        &std::fs::read_to_string(&harness_key).unwrap(),
    )
    .unwrap();
    let key_path = work.path().join("regcache.pem");
    std::fs::write(&key_path, key.to_pem()).unwrap();
    let registry = Registry::start(RegistryOptions {
        signing_key: Some(key_path.clone()),
        ..RegistryOptions::default()
    });
    let client = RegistryClient::new(registry.url());
    let mut g = ImageGen::new(0x51_70);
    let platform = Platform::linux_amd64();
    let layers = g.layers(1);
    let cfg = config(
        &platform,
        &layers,
        &[History::layer("ADD a /")],
        Value::Null,
    );
    let image = Image::new(&cfg, layers, platform);
    client
        .push_image("sig/key", "latest", &image, ManifestFormat::Docker)
        .await;
    let converted = client
        .get_manifest("sig/key", "latest", &[media::SCHEMA1_SIGNED])
        .await
        .unwrap();
    assert_eq!(converted.status, 200, "{}", converted.text());
    let verified = regcache_formats::jws::verify(&converted.body).unwrap();
    assert_eq!(verified.key_ids, [key.kid().to_owned()]);
    assert_eq!(regcache_kid(&key_path), key.kid());
}

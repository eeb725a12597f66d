//! Schema 2 → Schema 1 conversion followed by libtrust signing, on a fuzzed
//! image config.
//!
//! Input layout (NUL-separated, later parts optional):
//!
//! ```text
//! <config bytes> \0 <repository name> \0 <tag> \0 <layer spec>
//! ```
//!
//! * name / tag: used if they are a valid `RepositoryName` / `Tag` (the server
//!   only ever converts under validated ones), else `library/fuzz` / `latest`;
//! * layer spec: empty → as many layers as the config's `rootfs.diff_ids`
//!   (so the seeds reach the success path); otherwise byte 0 gives the count
//!   (mod 48) and bit 7 of byte 1 picks sha512 instead of sha256 digests, the
//!   rest salts the digests.
//!
//! When `schema1::canonical_payload` returns Ok, these must hold (a failure is
//! a finding):
//!
//! 1. the payload is a valid unsigned Schema 1 for `Manifest::parse`, with the
//!    same name and tag, one `fsLayers` entry per history step, each blobSum
//!    one of the layers or the empty layer, and every `v1Compatibility` valid
//!    Go JSON;
//! 2. `jws::sign` accepts it; `jws::verify` and `jws::payload_of` of the
//!    signed document give back exactly the payload and
//!    `schema1::canonical_digest(payload)`, under the signing key's `kid`;
//! 3. the signed document parses as a signed Schema 1 with the same fields;
//! 4. conversion is deterministic (a second run gives the same bytes).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use regcache_formats::manifest::Manifest;
use regcache_formats::reference::{RepositoryName, Tag};
use regcache_formats::schema1::{self, EMPTY_LAYER_DIGEST};
use regcache_formats::{Algorithm, Digest, MediaType, gojson, jws};

const KEY_PEM: &str = include_str!("../../crates/formats/tests/fixtures/jws-key.sec1.pem");
const SIGN_TIME: i64 = 1_700_000_000;

static KEY: LazyLock<jws::SigningKey> =
    LazyLock::new(|| jws::SigningKey::from_pem(KEY_PEM).expect("fixture key loads"));

/// Number of `rootfs.diff_ids` as serde reads it (0 if that fails).
fn inferred_layer_count(config: &[u8]) -> usize {
    serde_json::from_slice::<serde_json::Value>(config)
        .ok()
        .and_then(|v| v.get("rootfs")?.get("diff_ids")?.as_array().map(Vec::len))
        .unwrap_or(0)
}

fn layers_for(config: &[u8], spec: &[u8]) -> Vec<Digest> {
    let (count, algorithm, salt) = match spec {
        [] => (
            inferred_layer_count(config).min(256),
            Algorithm::Sha256,
            &[][..],
        ),
        [n] => (usize::from(*n) % 48, Algorithm::Sha256, &[][..]),
        [n, flags, salt @ ..] => {
            let algorithm = if flags & 0x80 != 0 {
                Algorithm::Sha512
            } else {
                Algorithm::Sha256
            };
            (usize::from(*n) % 48, algorithm, salt)
        }
    };
    (0..count)
        .map(|i| {
            let mut seed = format!("layer {i}:").into_bytes();
            seed.extend_from_slice(salt);
            Digest::compute(algorithm, &seed)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == 0);
    let config = parts.next().unwrap_or_default();
    let name = parts
        .next()
        .and_then(|b| std::str::from_utf8(b).ok())
        .filter(|s| RepositoryName::parse(s).is_ok())
        .unwrap_or("library/fuzz");
    let tag = parts
        .next()
        .and_then(|b| std::str::from_utf8(b).ok())
        .filter(|s| Tag::parse(s).is_ok())
        .unwrap_or("latest");
    let layers = layers_for(config, parts.next().unwrap_or_default());

    let Ok(payload) = schema1::canonical_payload(config, &layers, name, tag) else {
        return;
    };

    // 4. Deterministic.
    let again = schema1::canonical_payload(config, &layers, name, tag)
        .expect("second conversion of the same input failed");
    assert_eq!(payload, again, "conversion is not deterministic");

    // 1. A valid unsigned Schema 1.
    let unsigned = match Manifest::parse(payload.clone(), None) {
        Ok(m) => m,
        Err(e) => panic!(
            "canonical payload does not parse: {e}\n{}",
            String::from_utf8_lossy(&payload)
        ),
    };
    assert_eq!(unsigned.media_type, MediaType::Schema1);
    let s1 = unsigned.as_schema1().expect("schema1 view");
    assert!(!s1.signed);
    assert_eq!(s1.name, name);
    assert_eq!(s1.tag, tag);
    assert!(!s1.fs_layers.is_empty());
    assert_eq!(s1.fs_layers.len(), s1.history.len());
    for blob in &s1.fs_layers {
        assert!(
            blob.as_str() == EMPTY_LAYER_DIGEST || layers.contains(blob),
            "blobSum {blob} is neither a layer nor the empty layer"
        );
    }
    for (i, v1) in s1.history.iter().enumerate() {
        if let Err(e) = gojson::validate(v1.as_bytes()) {
            panic!("history[{i}].v1Compatibility is not valid JSON: {e}\n{v1}");
        }
    }
    let digest = schema1::canonical_digest(&payload);
    assert_eq!(digest, unsigned.digest);

    // 2. Sign, verify, recover.
    let signed = match jws::sign(&payload, &KEY, SIGN_TIME) {
        Ok(doc) => doc,
        Err(e) => panic!("canonical payload cannot be signed: {e}"),
    };
    let verified = match jws::verify(&signed) {
        Ok(v) => v,
        Err(e) => panic!(
            "signed document does not verify: {e}\n{}",
            String::from_utf8_lossy(&signed)
        ),
    };
    assert!(
        verified.payload == payload,
        "verify recovered another payload"
    );
    assert_eq!(verified.digest, digest);
    assert_eq!(verified.key_ids, [KEY.kid()]);
    let (recovered, recovered_digest) = jws::payload_of(&signed).expect("payload_of");
    assert!(recovered == payload, "payload_of recovered another payload");
    assert_eq!(recovered_digest, digest);

    // 3. The signed document is a signed Schema 1 with the same content.
    let signed_m = match Manifest::parse(signed.clone(), None) {
        Ok(m) => m,
        Err(e) => panic!("signed document does not parse: {e}"),
    };
    assert_eq!(signed_m.media_type, MediaType::Schema1Signed);
    let s1s = signed_m.as_schema1().expect("schema1 view");
    assert!(s1s.signed);
    assert_eq!(s1s.name, s1.name);
    assert_eq!(s1s.tag, s1.tag);
    assert_eq!(s1s.architecture, s1.architecture);
    assert_eq!(s1s.fs_layers, s1.fs_layers);
    assert_eq!(s1s.history, s1.history);
});

//! libtrust pretty-JWS signing and verification (spec chapter 04) against the
//! signed sample produced by distribution 2.8.3 and keys generated once with
//! openssl (committed under `tests/fixtures/`).

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use regcache_formats::ErrorCode;
use regcache_formats::jws::{self, JwsError, SigningKey};
use serde_json::Value;

const SAMPLE: &[u8] = include_bytes!("fixtures/example1.schema1.signed-sample.json");
const CANONICAL: &[u8] = include_bytes!("fixtures/example1.schema1.canonical.json");
const CANONICAL_DIGEST: &str =
    "sha256:3d9f9a165dab083e64baf8fffe764e5935495205c0b2080ce8c4d258fcdca1ab";
const SAMPLE_KID: &str = "UZ4O:KOUZ:ETY5:XG2L:FZD4:BE5S:GHZB:FFRN:WH2Y:V7I5:XKEQ:K5RA";
const SAMPLE_X: &str = "qgh20J_PxqvHVar5psfRfcyHrtjFf6mxRBzXPquRiPY";
const SAMPLE_Y: &str = "3UVPNOxQ0Ta4YcE3j1DCeLgLov1BRXdJYfJI6w7uDMs";
/// 2026-11-22T19:00:44Z, the `time` in the sample's protected header.
const SAMPLE_TIME: i64 = 1_795_374_044;

const SEC1_PEM: &str = include_str!("fixtures/jws-key.sec1.pem");
const PKCS8_PEM: &str = include_str!("fixtures/jws-key.pkcs8.pem");
const HEADERS_PEM: &str = include_str!("fixtures/jws-key.headers.pem");
/// Computed independently for the fixture key with
/// `openssl ec -pubout -outform DER | sha256sum | head -c60 | xxd -r -p | base32`.
const FIXTURE_KID: &str = "NMNZ:FILZ:TGCT:FB2H:NATQ:CTNE:6GJR:BKMJ:H27M:G2SM:EUDH:VVSY";

fn first_signature(doc: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(doc).unwrap();
    v["signatures"][0].clone()
}

fn protected_json(sig: &Value) -> Value {
    let raw = URL_SAFE_NO_PAD
        .decode(sig["protected"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// Replace the first occurrence of `from` (which must exist) with `to`.
fn replace_once(doc: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = std::str::from_utf8(doc).unwrap();
    assert!(text.contains(from), "{from:?} not in document");
    text.replacen(from, to, 1).into_bytes()
}

#[test]
fn verifies_distribution_sample() {
    let verified = jws::verify(SAMPLE).unwrap();
    assert_eq!(verified.payload, CANONICAL);
    assert_eq!(verified.digest.as_str(), CANONICAL_DIGEST);
    assert_eq!(verified.key_ids, vec![SAMPLE_KID.to_owned()]);
}

#[test]
fn payload_of_sample_without_verifying() {
    let (payload, digest) = jws::payload_of(SAMPLE).unwrap();
    assert_eq!(payload, CANONICAL);
    assert_eq!(digest.as_str(), CANONICAL_DIGEST);
}

#[test]
fn kid_recomputed_from_sample_jwk() {
    assert_eq!(jws::key_id_from_xy(SAMPLE_X, SAMPLE_Y).unwrap(), SAMPLE_KID);
    assert!(
        jws::key_id_from_xy(SAMPLE_X, SAMPLE_X).is_err(),
        "not a curve point"
    );
    assert!(
        jws::key_id_from_xy("AAAA", SAMPLE_Y).is_err(),
        "wrong length"
    );
}

#[test]
fn signing_example1_reproduces_sample_layout() {
    let key = SigningKey::generate();
    let doc = jws::sign(CANONICAL, &key, SAMPLE_TIME).unwrap();
    assert_eq!(doc.len(), 2745);
    assert_eq!(doc.len(), SAMPLE.len());

    let sig = first_signature(&doc);
    assert_eq!(
        protected_json(&sig).to_string(),
        r#"{"formatLength":2098,"formatTail":"Cn0","time":"2026-11-22T19:00:44Z"}"#
    );
    // Same payload, same time: only the key and the signature differ.
    let sample_sig = first_signature(SAMPLE);
    assert_eq!(sig["protected"], sample_sig["protected"]);
    let jwk = &sig["header"]["jwk"];
    let mut normalised = doc.clone();
    for (ours, theirs) in [
        (jwk["kid"].as_str().unwrap(), SAMPLE_KID),
        (jwk["x"].as_str().unwrap(), SAMPLE_X),
        (jwk["y"].as_str().unwrap(), SAMPLE_Y),
        (
            sig["signature"].as_str().unwrap(),
            sample_sig["signature"].as_str().unwrap(),
        ),
    ] {
        normalised = replace_once(&normalised, ours, theirs);
    }
    assert_eq!(
        String::from_utf8(normalised).unwrap(),
        String::from_utf8(SAMPLE.to_vec()).unwrap()
    );
}

#[test]
fn signed_length_is_fixed_for_any_p256_key() {
    for _ in 0..8 {
        let key = SigningKey::generate();
        let doc = jws::sign(CANONICAL, &key, SAMPLE_TIME + 1).unwrap();
        assert_eq!(doc.len(), 2745);
    }
}

#[test]
fn sign_verify_round_trip() {
    let key = SigningKey::generate();
    let doc = jws::sign(CANONICAL, &key, 1_700_000_000).unwrap();
    let verified = jws::verify(&doc).unwrap();
    assert_eq!(verified.payload, CANONICAL);
    assert_eq!(verified.digest.as_str(), CANONICAL_DIGEST);
    assert_eq!(verified.key_ids, vec![key.kid().to_owned()]);
    assert_eq!(first_signature(&doc)["header"]["alg"], "ES256");
    assert_ne!(doc, SAMPLE, "different key and time");
}

#[test]
fn signing_is_deterministic() {
    let key = SigningKey::from_pem(SEC1_PEM).unwrap();
    let a = jws::sign(CANONICAL, &key, SAMPLE_TIME).unwrap();
    let b = jws::sign(CANONICAL, &key, SAMPLE_TIME).unwrap();
    assert_eq!(a, b);
    let c = jws::sign(CANONICAL, &key, SAMPLE_TIME + 1).unwrap();
    assert_ne!(a, c);
}

#[test]
fn signs_other_canonical_fixtures() {
    let key = SigningKey::generate();
    for name in ["c1", "c2", "c3", "c4"] {
        let path = format!(
            "{}/tests/fixtures/{name}.schema1.canonical.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let payload = std::fs::read(path).unwrap();
        let doc = jws::sign(&payload, &key, SAMPLE_TIME).unwrap();
        let verified = jws::verify(&doc).unwrap();
        assert_eq!(verified.payload, payload, "{name}");
        assert!(doc.ends_with(b"\n   ]\n}"), "{name}");
    }
}

#[test]
fn compact_payload_uses_compact_splice() {
    let key = SigningKey::generate();
    let payload = br#"{"b":[1,2],"a":"x"}"#;
    let doc = jws::sign(payload, &key, SAMPLE_TIME).unwrap();
    let text = String::from_utf8(doc.clone()).unwrap();
    assert!(
        text.starts_with(
            r#"{"b":[1,2],"a":"x","signatures":[{"header":{"jwk":{"crv":"P-256","kid":""#
        ),
        "{text}"
    );
    assert!(text.ends_with(r#""}]}"#), "{text}");
    assert!(!text.contains('\n'));
    assert_eq!(jws::verify(&doc).unwrap().payload, payload);

    // Trailing whitespace becomes part of formatTail and is restored.
    let payload = b"{\"a\": 1 }\n\n";
    let doc = jws::sign(payload, &key, SAMPLE_TIME).unwrap();
    assert_eq!(protected_json(&first_signature(&doc))["formatLength"], 7);
    assert_eq!(jws::verify(&doc).unwrap().payload, payload);
}

#[test]
fn other_indents_are_detected() {
    let key = SigningKey::generate();
    let payload = b"{\n\t\"a\": {\n\t\t\"b\": 1\n\t}\n}";
    let doc = jws::sign(payload, &key, SAMPLE_TIME).unwrap();
    let text = String::from_utf8(doc.clone()).unwrap();
    assert!(text.starts_with("{\n\t\"a\": {\n\t\t\"b\": 1\n\t},\n\t\"signatures\": [\n\t\t{\n\t\t\t\"header\": {\n\t\t\t\t\"jwk\": {\n\t\t\t\t\t\"crv\": \"P-256\",\n"), "{text}");
    assert!(text.ends_with("\"\n\t\t}\n\t]\n}"), "{text}");
    assert_eq!(jws::verify(&doc).unwrap().payload, payload);
}

#[test]
fn unsignable_payloads_are_rejected() {
    let key = SigningKey::generate();
    for payload in [
        &b""[..],
        b"   ",
        b"null",
        b"[]",
        b"[1]",
        b"\"s\"",
        b"{}",
        b"{\n}",
        b"{\"a\":1",
        b"{\"a\":1,}",
        b"{\"a\":1}x",
        b"\xff",
    ] {
        let err = jws::sign(payload, &key, SAMPLE_TIME).unwrap_err();
        assert!(
            matches!(err, JwsError::InvalidPayload(_)),
            "{payload:?}: {err:?}"
        );
        assert_eq!(err.error_code(), ErrorCode::ManifestInvalid);
    }
    assert!(matches!(
        jws::sign(CANONICAL, &key, i64::MAX),
        Err(JwsError::InvalidTime(_))
    ));
    assert!(matches!(
        jws::sign(CANONICAL, &key, -62_167_219_201),
        Err(JwsError::InvalidTime(_))
    ));
}

#[test]
fn tampered_payload_is_rejected() {
    let doc = replace_once(SAMPLE, "\"tag\": \"latest\"", "\"tag\": \"lateST\"");
    let err = jws::verify(&doc).unwrap_err();
    assert!(
        matches!(err, JwsError::BadSignature { index: 0, .. }),
        "{err:?}"
    );
    assert_eq!(err.error_code(), ErrorCode::ManifestUnverified);
    // Recovery without verification still works, with another digest.
    let (payload, digest) = jws::payload_of(&doc).unwrap();
    assert_eq!(payload.len(), CANONICAL.len());
    assert_ne!(digest.as_str(), CANONICAL_DIGEST);
}

#[test]
fn tampered_signature_is_rejected() {
    let sig = first_signature(SAMPLE)["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut chars: Vec<char> = sig.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    let flipped: String = chars.into_iter().collect();
    let err = jws::verify(&replace_once(SAMPLE, &sig, &flipped)).unwrap_err();
    assert!(matches!(err, JwsError::BadSignature { .. }), "{err:?}");

    // Truncated, not base64url, zero scalars.
    for bad in [&sig[..84], "!!!!", &"A".repeat(86), ""] {
        let err = jws::verify(&replace_once(SAMPLE, &sig, bad)).unwrap_err();
        assert!(
            matches!(err, JwsError::BadSignature { .. }),
            "{bad:?}: {err:?}"
        );
        assert_eq!(err.error_code(), ErrorCode::ManifestUnverified);
    }
}

#[test]
fn tampered_protected_header_is_rejected() {
    let sig = first_signature(SAMPLE);
    let protected = sig["protected"].as_str().unwrap();
    // Same format, different time: payload recovery works, signature fails.
    let other_time = URL_SAFE_NO_PAD
        .encode(r#"{"formatLength":2098,"formatTail":"Cn0","time":"2026-11-22T19:00:45Z"}"#);
    let doc = replace_once(SAMPLE, protected, &other_time);
    assert_eq!(jws::payload_of(&doc).unwrap().0, CANONICAL);
    assert!(matches!(
        jws::verify(&doc),
        Err(JwsError::BadSignature { .. })
    ));

    // Different splice: other payload, and the signature no longer matches.
    let other_length = URL_SAFE_NO_PAD
        .encode(r#"{"formatLength":2097,"formatTail":"fQp9","time":"2026-11-22T19:00:44Z"}"#);
    let doc = replace_once(SAMPLE, protected, &other_length);
    assert!(matches!(
        jws::verify(&doc),
        Err(JwsError::BadSignature { .. })
    ));
}

#[test]
fn high_s_signatures_verify_like_go() {
    // Go's ecdsa.Verify accepts both (r, s) and (r, n - s).
    let key = SigningKey::generate();
    let doc = jws::sign(CANONICAL, &key, SAMPLE_TIME).unwrap();
    let encoded = first_signature(&doc)["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let sig =
        p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(&encoded).unwrap()).unwrap();
    let (r, s) = sig.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
    let doc = replace_once(&doc, &encoded, &URL_SAFE_NO_PAD.encode(flipped.to_bytes()));
    assert_eq!(jws::verify(&doc).unwrap().payload, CANONICAL);
}

#[test]
fn multiple_signatures_all_verified() {
    let (a, b) = (SigningKey::generate(), SigningKey::generate());
    let sig_a = first_signature(&jws::sign(CANONICAL, &a, SAMPLE_TIME).unwrap());
    let sig_b = first_signature(&jws::sign(CANONICAL, &b, SAMPLE_TIME + 5).unwrap());
    let build = |sigs: Vec<&Value>| {
        let mut doc = CANONICAL[..2098].to_vec();
        doc.extend_from_slice(b",\"signatures\":");
        doc.extend_from_slice(serde_json::to_string(&sigs).unwrap().as_bytes());
        doc.push(b'}');
        doc
    };
    let verified = jws::verify(&build(vec![&sig_a, &sig_b])).unwrap();
    assert_eq!(verified.payload, CANONICAL);
    assert_eq!(
        verified.key_ids,
        vec![a.kid().to_owned(), b.kid().to_owned()]
    );

    // One bad signature spoils the lot.
    let mut broken = sig_b.clone();
    broken["signature"] = sig_a["signature"].clone();
    let err = jws::verify(&build(vec![&sig_a, &broken])).unwrap_err();
    assert!(
        matches!(err, JwsError::BadSignature { index: 1, .. }),
        "{err:?}"
    );

    // Signatures must agree on the splice.
    let mut other = sig_b.clone();
    other["protected"] = Value::String(
        URL_SAFE_NO_PAD.encode(r#"{"formatLength":2098,"formatTail":"IH0","time":"x"}"#),
    );
    let err = jws::payload_of(&build(vec![&sig_a, &other])).unwrap_err();
    assert!(matches!(err, JwsError::Malformed(_)), "{err:?}");
}

#[test]
fn unsupported_keys_and_chains() {
    let sig = first_signature(SAMPLE);
    let with_header = |header: Value| {
        let mut s = sig.clone();
        s["header"] = header;
        let mut doc = CANONICAL[..2098].to_vec();
        doc.extend_from_slice(b",\"signatures\":");
        doc.extend_from_slice(serde_json::to_string(&vec![s]).unwrap().as_bytes());
        doc.push(b'}');
        doc
    };
    let cases = [
        serde_json::json!({"alg": "ES256", "x5c": ["MIIB"]}),
        serde_json::json!({"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}, "alg": "RS256"}),
        serde_json::json!({"jwk": {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}, "alg": "ES384"}),
        serde_json::json!({"jwk": sig["header"]["jwk"], "alg": "ES256", "x5c": ["MIIB"]}),
    ];
    for header in cases {
        let doc = with_header(header.clone());
        let err = jws::verify(&doc).unwrap_err();
        assert!(matches!(err, JwsError::Unsupported(_)), "{header}: {err:?}");
        assert_eq!(err.error_code(), ErrorCode::ManifestUnverified);
        assert_eq!(
            jws::payload_of(&doc).unwrap().0,
            CANONICAL,
            "recovery ignores keys"
        );
    }
    // A P-256 key claiming another algorithm is a failed verification.
    let doc = with_header(serde_json::json!({"jwk": sig["header"]["jwk"], "alg": "ES384"}));
    assert!(matches!(
        jws::verify(&doc),
        Err(JwsError::BadSignature { .. })
    ));
    let doc = with_header(serde_json::json!({"alg": "ES256"}));
    assert!(matches!(
        jws::verify(&doc),
        Err(JwsError::BadSignature { .. })
    ));
}

#[test]
fn document_jwk_with_wrong_kid_is_rejected() {
    let doc = replace_once(SAMPLE, SAMPLE_KID, FIXTURE_KID);
    let err = jws::verify(&doc).unwrap_err();
    assert_eq!(
        err,
        JwsError::KidMismatch {
            found: FIXTURE_KID.to_owned(),
            expected: SAMPLE_KID.to_owned()
        }
    );
    assert_eq!(err.error_code(), ErrorCode::ManifestInvalid);
    // A jwk without kid is fine; the kid is recomputed.
    let doc = replace_once(SAMPLE, &format!("\"kid\": \"{SAMPLE_KID}\",\n"), "");
    assert_eq!(
        jws::verify(&doc).unwrap().key_ids,
        vec![SAMPLE_KID.to_owned()]
    );
}

#[test]
fn pem_keys_load_with_the_openssl_kid() {
    let sec1 = SigningKey::from_pem(SEC1_PEM).unwrap();
    let pkcs8 = SigningKey::from_pem(PKCS8_PEM).unwrap();
    assert_eq!(sec1.kid(), FIXTURE_KID);
    assert_eq!(pkcs8.kid(), FIXTURE_KID);
    assert_eq!(sec1.to_jwk(), pkcs8.to_jwk());
    assert!(sec1.extra_members().is_empty());

    // to_pem writes SEC 1, byte-identical to openssl's encoding.
    let pem = sec1.to_pem();
    assert_eq!(pem, SEC1_PEM);
    assert_eq!(pkcs8.to_pem(), SEC1_PEM);
    assert_eq!(SigningKey::from_pem(&pem).unwrap().kid(), FIXTURE_KID);

    // Explanatory text before the block and CRLF line ends are tolerated.
    let noisy = format!("key for tests\r\n{}", SEC1_PEM.replace('\n', "\r\n"));
    assert_eq!(SigningKey::from_pem(&noisy).unwrap().kid(), FIXTURE_KID);
    // `openssl ecparam -genkey` without `-noout` puts the curve first.
    let with_params = format!(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{SEC1_PEM}"
    );
    assert_eq!(
        SigningKey::from_pem(&with_params).unwrap().kid(),
        FIXTURE_KID
    );
    let only_params =
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
    assert!(SigningKey::from_pem(only_params).is_err());
    assert_eq!(
        SigningKey::from_key_text(SEC1_PEM).unwrap().kid(),
        FIXTURE_KID
    );
    assert_eq!(
        SigningKey::from_key_text(PKCS8_PEM).unwrap().kid(),
        FIXTURE_KID
    );
    assert_eq!(
        SigningKey::from_key_text(&noisy).unwrap().kid(),
        FIXTURE_KID
    );
}

#[test]
fn pem_headers_become_jwk_members() {
    let key = SigningKey::from_pem(HEADERS_PEM).unwrap();
    assert_eq!(key.kid(), FIXTURE_KID);
    let public: Value = serde_json::from_str(&key.public_jwk_json()).unwrap();
    assert_eq!(
        public["hosts"],
        serde_json::json!(["registry.example.com", "mirror.example.com"])
    );
    assert_eq!(public["keyID"], FIXTURE_KID);
    assert!(
        key.public_jwk_json()
            .starts_with(r#"{"crv":"P-256","hosts":["#)
    );

    // Signed documents carry them, sorted and indented like Go does.
    let doc = jws::sign(CANONICAL, &key, SAMPLE_TIME).unwrap();
    let text = String::from_utf8(doc.clone()).unwrap();
    assert!(text.contains(
        "\"crv\": \"P-256\",\n               \"hosts\": [\n                  \"registry.example.com\",\n                  \"mirror.example.com\"\n               ],\n               \"keyID\": \""
    ), "{text}");
    assert_eq!(
        jws::verify(&doc).unwrap().key_ids,
        vec![FIXTURE_KID.to_owned()]
    );

    // They survive PEM and JWK round trips.
    let again = SigningKey::from_pem(&key.to_pem()).unwrap();
    assert_eq!(again.extra_members(), key.extra_members());
    let again = SigningKey::from_jwk(&key.to_jwk()).unwrap();
    assert_eq!(again.extra_members(), key.extra_members());
    assert_eq!(again.public_jwk_json(), key.public_jwk_json());
}

#[test]
fn jwk_round_trip_keeps_kid() {
    let key = SigningKey::generate();
    let jwk = key.to_jwk();
    let v: Value = serde_json::from_str(&jwk).unwrap();
    let names: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(names, ["crv", "d", "kid", "kty", "x", "y"]);
    assert_eq!(v["kid"], key.kid());
    let again = SigningKey::from_jwk(&jwk).unwrap();
    assert_eq!(again.kid(), key.kid());
    assert_eq!(again.to_jwk(), jwk);
    assert_eq!(SigningKey::from_key_text(&jwk).unwrap().kid(), key.kid());
    let spaced = format!("\n  {jwk}\n");
    assert_eq!(SigningKey::from_key_text(&spaced).unwrap().kid(), key.kid());

    // PEM round trip of a generated key.
    let from_pem = SigningKey::from_pem(&key.to_pem()).unwrap();
    assert_eq!(from_pem.to_jwk(), jwk);

    // kid is optional.
    let mut no_kid = v.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        SigningKey::from_jwk(&no_kid.to_string()).unwrap().kid(),
        key.kid()
    );

    // public_jwk_json is the private one without d.
    let mut public = v.clone();
    public.as_object_mut().unwrap().remove("d");
    assert_eq!(key.public_jwk_json(), public.to_string());
}

#[test]
fn jwk_with_wrong_kid_or_foreign_parts_is_rejected() {
    let key = SigningKey::generate();
    let v: Value = serde_json::from_str(&key.to_jwk()).unwrap();
    let with = |name: &str, value: Value| {
        let mut w = v.clone();
        w[name] = value;
        SigningKey::from_jwk(&w.to_string())
    };
    assert!(matches!(
        with("kid", SAMPLE_KID.into()),
        Err(JwsError::KidMismatch { .. })
    ));
    assert!(matches!(
        with("kid", 7.into()),
        Err(JwsError::InvalidKey(_))
    ));
    // x/y of another key.
    let mut other = v.clone();
    other["x"] = SAMPLE_X.into();
    other["y"] = SAMPLE_Y.into();
    other.as_object_mut().unwrap().remove("kid");
    assert!(matches!(
        SigningKey::from_jwk(&other.to_string()),
        Err(JwsError::InvalidKey(_))
    ));
    assert!(matches!(
        with("d", "AAAA".into()),
        Err(JwsError::InvalidKey(_))
    ));
    assert!(matches!(
        with("d", URL_SAFE_NO_PAD.encode([0u8; 32]).into()),
        Err(JwsError::InvalidKey(_))
    ));
    assert!(matches!(
        with("d", URL_SAFE_NO_PAD.encode([0xffu8; 32]).into()),
        Err(JwsError::InvalidKey(_))
    ));
    assert!(matches!(
        with("crv", "P-384".into()),
        Err(JwsError::Unsupported(_))
    ));
    assert!(matches!(
        with("crv", "P-257".into()),
        Err(JwsError::InvalidKey(_))
    ));
    assert!(matches!(
        with("kty", "RSA".into()),
        Err(JwsError::Unsupported(_))
    ));
    assert!(matches!(
        with("kty", "oct".into()),
        Err(JwsError::InvalidKey(_))
    ));
    let mut no_d = v.clone();
    no_d.as_object_mut().unwrap().remove("d");
    assert!(SigningKey::from_jwk(&no_d.to_string()).is_err());
    // Extra members are kept, as libtrust does.
    let extended = with("use", "sig".into()).unwrap();
    assert_eq!(
        extended.public_jwk_json(),
        format!(
            r#"{{"crv":"P-256","kid":"{}","kty":"EC","use":"sig","x":{},"y":{}}}"#,
            key.kid(),
            v["x"],
            v["y"]
        )
    );
}

#[test]
fn garbage_keys_are_rejected() {
    for pem in [
        "",
        "hello",
        "-----BEGIN EC PRIVATE KEY-----\n",
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        "-----BEGIN EC PRIVATE KEY-----\n!!!!\n-----END EC PRIVATE KEY-----\n",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END EC PRIVATE KEY-----\n",
    ] {
        assert!(
            matches!(SigningKey::from_pem(pem), Err(JwsError::InvalidKey(_))),
            "{pem:?}"
        );
    }
    let rsa = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    assert!(matches!(
        SigningKey::from_pem(rsa),
        Err(JwsError::Unsupported(_))
    ));
    // A PKCS #8 body under the SEC 1 label is refused, not misread.
    let swapped = PKCS8_PEM.replace("PRIVATE KEY", "EC PRIVATE KEY");
    assert!(SigningKey::from_pem(&swapped).is_err());
    for jwk in ["", "{", "[]", "null", "{}", r#"{"kty":"EC"}"#] {
        assert!(SigningKey::from_jwk(jwk).is_err(), "{jwk:?}");
    }
    // By content: neither JSON object nor PEM says what it is not.
    for text in ["", "  \n", "hello", "[]", "null", "BEGIN EC PRIVATE KEY"] {
        match SigningKey::from_key_text(text) {
            Err(JwsError::InvalidKey(m)) => assert!(m.contains("neither a JWK"), "{text:?}: {m}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
    // A JSON object is a JWK and PEM is PEM, with their own errors.
    assert!(matches!(
        SigningKey::from_key_text(r#"{"kty":"EC"}"#),
        Err(JwsError::InvalidKey(m)) if m.contains("JWK")
    ));
    assert!(matches!(
        SigningKey::from_key_text(rsa),
        Err(JwsError::Unsupported(_))
    ));
}

#[test]
fn debug_shows_only_the_kid() {
    let key = SigningKey::from_pem(SEC1_PEM).unwrap();
    let debug = format!("{key:?}");
    assert!(debug.contains(FIXTURE_KID), "{debug}");
    let v: Value = serde_json::from_str(&key.to_jwk()).unwrap();
    for secretish in [v["d"].as_str().unwrap(), v["x"].as_str().unwrap()] {
        assert!(!debug.contains(secretish), "{debug}");
    }
    assert!(!format!("{key:#?}").contains(v["d"].as_str().unwrap()));
}

#[test]
fn garbage_documents_are_errors() {
    let sig = first_signature(SAMPLE);
    let with_protected = |protected: &str| {
        let mut s = sig.clone();
        s["protected"] = Value::String(protected.to_owned());
        let mut doc = CANONICAL[..2098].to_vec();
        doc.extend_from_slice(b",\"signatures\":");
        doc.extend_from_slice(serde_json::to_string(&vec![s]).unwrap().as_bytes());
        doc.push(b'}');
        doc
    };
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let mut docs: Vec<Vec<u8>> = [
        &b""[..],
        b"null",
        b"[]",
        b"[[]]",
        b"\"signatures\"",
        b"{",
        b"{}",
        br#"{"signatures":null}"#,
        br#"{"signatures":[]}"#,
        br#"{"signatures":"x"}"#,
        br#"{"signatures":{}}"#,
        br#"{"signatures":[1]}"#,
        br#"{"signatures":[{}]}"#,
        br#"{"signatures":[{"protected":7}]}"#,
        br#"{"signatures":[{"protected":"A"}]}"#,
        br#"{"signatures":[{"protected":"*!"}]}"#,
        b"\xff\xfe",
    ]
    .iter()
    .map(|d| d.to_vec())
    .collect();
    for protected in [
        b64("not json"),
        b64("[]"),
        b64(r#"{"formatTail":"Cn0"}"#),
        b64(r#"{"formatLength":2098}"#),
        b64(r#"{"formatLength":-1,"formatTail":"Cn0"}"#),
        b64(r#"{"formatLength":"2098","formatTail":"Cn0"}"#),
        b64(r#"{"formatLength":1e300,"formatTail":"Cn0"}"#),
        b64(r#"{"formatLength":99999999,"formatTail":"Cn0"}"#),
        b64(r#"{"formatLength":2098,"formatTail":"C"}"#),
        b64(r#"{"formatLength":2098,"formatTail":5}"#),
    ] {
        docs.push(with_protected(&protected));
    }
    for doc in &docs {
        let err = jws::payload_of(doc).unwrap_err();
        assert!(
            matches!(err, JwsError::Malformed(_) | JwsError::MissingSignatures),
            "{:?}: {err:?}",
            String::from_utf8_lossy(doc)
        );
        assert_eq!(err.error_code(), ErrorCode::ManifestInvalid);
        assert!(jws::verify(doc).is_err());
    }
    // Go truncates a fractional formatLength; so do we (and the result fails
    // verification rather than anything worse).
    let doc = with_protected(&b64(r#"{"formatLength":2098.9,"formatTail":"Cn0"}"#));
    assert_eq!(jws::payload_of(&doc).unwrap().0, CANONICAL);
    assert!(matches!(
        jws::verify(&doc),
        Err(JwsError::BadSignature { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mutated_samples_never_panic(edits in prop::collection::vec((0usize..2745, any::<u8>()), 1..6)) {
        let mut doc = SAMPLE.to_vec();
        for (at, byte) in edits {
            doc[at] = byte;
        }
        let _ = jws::payload_of(&doc);
        if let Ok(verified) = jws::verify(&doc) {
            // Only edits that do not change what is signed can survive.
            prop_assert_eq!(verified.payload, CANONICAL);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(doc in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = jws::payload_of(&doc);
        let _ = jws::verify(&doc);
        let _ = SigningKey::from_pem(&String::from_utf8_lossy(&doc));
        let _ = SigningKey::from_jwk(&String::from_utf8_lossy(&doc));
    }

    #[test]
    fn signed_objects_round_trip(map in prop::collection::btree_map("[a-z<>&\u{2028}é]{1,8}", "[ -~]{0,12}", 1..6), pretty in any::<bool>()) {
        let payload = if pretty {
            serde_json::to_vec_pretty(&map).unwrap()
        } else {
            serde_json::to_vec(&map).unwrap()
        };
        let key = SigningKey::generate();
        let doc = jws::sign(&payload, &key, SAMPLE_TIME).unwrap();
        let verified = jws::verify(&doc).unwrap();
        prop_assert_eq!(&verified.payload, &payload);
        let parsed: Value = serde_json::from_slice(&doc).unwrap();
        prop_assert_eq!(parsed["signatures"][0]["header"]["jwk"]["kid"].as_str(), Some(key.kid()));
    }
}

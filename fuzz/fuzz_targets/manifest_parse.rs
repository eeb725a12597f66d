//! Arbitrary bytes through every parser of `regcache-formats` that sees
//! untrusted input: manifests (with and without an upstream `Content-Type`),
//! signed Schema 1 documents, `Accept` header values, and references.
//!
//! Besides "no panic, no hang", it asserts the cross-parser invariants:
//!
//! * `Manifest::parse` Ok ⇒ `digest` is the sha256 of the bytes, `raw` is the
//!   bytes, and `classify` (which checks less) agrees on the media type;
//! * a parsed Schema 1 has as many `history` entries as `fsLayers`;
//! * `jws::verify` Ok ⇒ `jws::payload_of` Ok with the same payload and digest,
//!   and the digest is the sha256 of the payload;
//! * `Reference` / `RepositoryName` / `Tag` / `Digest` parse Ok ⇒ `as_str()`
//!   gives back the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regcache_formats::accept::{self, Accepts, RequestKind};
use regcache_formats::manifest::{self, Manifest};
use regcache_formats::reference::{Reference, RepositoryName, Tag};
use regcache_formats::{Digest, jws, media_type};

/// Content-Type hints an upstream might send, good and useless.
const HINTS: [&str; 10] = [
    media_type::SCHEMA1,
    media_type::SCHEMA1_SIGNED,
    media_type::SCHEMA2,
    media_type::MANIFEST_LIST,
    media_type::OCI_MANIFEST,
    media_type::OCI_INDEX,
    "application/vnd.oci.image.index.v1+json; charset=utf-8",
    "application/json",
    "application/octet-stream",
    "text/plain; charset=utf-8",
];

fn check_manifest(data: &[u8], hint: Option<&str>, accepts: Accepts) {
    let parsed = Manifest::parse(data.to_vec(), hint);
    let classified = manifest::classify(data, hint);
    let Ok(m) = parsed else {
        return;
    };
    assert_eq!(m.as_bytes(), data, "raw bytes not kept");
    assert_eq!(
        m.digest,
        Digest::sha256_of(data),
        "digest is not sha256(raw)"
    );
    match classified {
        Ok(t) => assert_eq!(t, m.media_type, "classify disagrees with parse"),
        Err(e) => panic!("parse Ok ({:?}) but classify failed: {e}", m.media_type),
    }
    if let Some(s1) = m.as_schema1() {
        assert_eq!(s1.fs_layers.len(), s1.history.len());
        assert!(m.media_type.is_schema1());
    }
    let _ = m.handler_kind();
    let _ = m.declared_media_type();
    for request in [RequestKind::Tag, RequestKind::Digest] {
        let decision = accept::decide(request, accepts, &m);
        let _ = decision.error();
        if let accept::Decision::SelectChild(child) = decision {
            assert!(m.as_index().is_some(), "child selected from a non-index");
            let _ = accept::decide_child(m.handler_kind(), accepts);
            let _ = child;
        }
    }
    let _ = accept::if_none_match_hits([m.digest.as_str()], &m.digest);
}

fn check_jws(data: &[u8]) {
    let recovered = jws::payload_of(data);
    if let Ok((payload, digest)) = &recovered {
        assert_eq!(*digest, Digest::sha256_of(payload));
    }
    if let Ok(v) = jws::verify(data) {
        let Ok((payload, digest)) = recovered else {
            panic!("verify Ok but payload_of failed");
        };
        assert_eq!(v.payload, payload, "verify and payload_of disagree");
        assert_eq!(v.digest, digest);
        assert!(!v.key_ids.is_empty(), "verified with no signature");
    }
}

fn check_text(s: &str) {
    if let Ok(r) = Reference::parse(s) {
        assert_eq!(r.as_str(), s);
        assert_eq!(r.is_digest(), s.contains(':'));
    }
    if let Ok(n) = RepositoryName::parse(s) {
        assert_eq!(n.as_str(), s);
        assert!(n.components().all(|c| !c.is_empty()));
    }
    if let Ok(t) = Tag::parse(s) {
        assert_eq!(t.as_str(), s);
    }
    if let Ok(d) = Digest::parse(s) {
        assert_eq!(d.as_str(), s);
        assert_eq!(d.hex().len(), d.algorithm().hex_len());
    }
}

fuzz_target!(|data: &[u8]| {
    let accepts = Accepts::from_headers([data]);
    // Also as several header lines, split at newlines.
    let _ = Accepts::from_headers(data.split(|&b| b == b'\n'));

    check_manifest(data, None, accepts);
    if let Some(&first) = data.first() {
        let hint = HINTS[usize::from(first) % HINTS.len()];
        check_manifest(data, Some(hint), accepts);
    }
    check_jws(data);
    if let Ok(s) = std::str::from_utf8(data) {
        check_text(s);
        // The hint itself comes from the network too.
        let _ = manifest::classify(br#"{"schemaVersion":2,"manifests":[]}"#, Some(s));
    }
});

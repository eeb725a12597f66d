//! Property tests for the parsers that face untrusted input: digests, names,
//! tags and references from request paths, and manifests from upstreams.
//!
//! Two kinds of property: valid values round trip (parse → to_string, or
//! generate a document → parse → the same fields and the exact bytes), and
//! arbitrary input never panics. The generated manifest documents are built
//! with hand-written JSON (not the crate's own `Serialize` derives), so a field
//! rename bug in the parser cannot hide behind a matching bug in the writer.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use regcache_formats::manifest::{Descriptor, HandlerKind, ManifestKind, Platform, classify};
use regcache_formats::media_type::{self, MediaType};
use regcache_formats::reference::{Reference, RepositoryName, Tag};
use regcache_formats::{Algorithm, Digest, manifest::Manifest};
use serde_json::{Value, json};

// ---------- strategies ----------

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::Sha256),
        Just(Algorithm::Sha384),
        Just(Algorithm::Sha512)
    ]
}

/// A valid digest string: a supported algorithm and lowercase hex of its exact length.
fn digest_string() -> impl Strategy<Value = String> {
    algorithm().prop_flat_map(|alg| {
        proptest::string::string_regex(&format!("[0-9a-f]{{{}}}", alg.hex_len()))
            .unwrap()
            .prop_map(move |hex| format!("{}:{hex}", alg.name()))
    })
}

fn digest() -> impl Strategy<Value = Digest> {
    digest_string().prop_map(|s| Digest::parse(&s).unwrap())
}

/// A name component built from the grammar `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn name_component() -> impl Strategy<Value = String> {
    let alnum = "[a-z0-9]{1,8}";
    let sep = prop_oneof![
        Just("."),
        Just("_"),
        Just("__"),
        Just("-"),
        Just("--"),
        Just("---")
    ];
    (alnum, proptest::collection::vec((sep, alnum), 0..3)).prop_map(|(first, rest)| {
        let mut s = first;
        for (sep, part) in rest {
            s.push_str(sep);
            s.push_str(&part);
        }
        s
    })
}

/// At most 4 × (8 + 2 × (3 + 8)) + 3 = 123 characters, well under the limit.
fn repository_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(name_component(), 1..5).prop_map(|c| c.join("/"))
}

fn tag() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
}

fn short_text() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn layer_media_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(media_type::DOCKER_LAYER_GZIP.to_owned()),
        Just(media_type::DOCKER_LAYER_FOREIGN_GZIP.to_owned()),
        Just(media_type::OCI_LAYER_GZIP.to_owned()),
        Just(media_type::OCI_LAYER_ZSTD.to_owned()),
        Just(String::new()),
        short_text(),
    ]
}

fn platform() -> impl Strategy<Value = Platform> {
    (
        prop_oneof![
            Just("amd64".to_owned()),
            Just("arm64".to_owned()),
            Just("AMD64".to_owned()),
            short_text()
        ],
        prop_oneof![
            Just("linux".to_owned()),
            Just("windows".to_owned()),
            short_text()
        ],
        proptest::option::of(short_text()),
        proptest::collection::vec(short_text(), 0..3),
        proptest::option::of(prop_oneof![
            Just("v7".to_owned()),
            Just("v8".to_owned()),
            short_text()
        ]),
        proptest::collection::vec(short_text(), 0..3),
    )
        .prop_map(
            |(architecture, os, os_version, os_features, variant, features)| Platform {
                architecture,
                os,
                os_version,
                os_features,
                variant,
                features,
            },
        )
}

fn descriptor(with_platform: bool) -> impl Strategy<Value = Descriptor> {
    let platform = if with_platform {
        proptest::option::of(platform()).boxed()
    } else {
        Just(None).boxed()
    };
    (
        layer_media_type(),
        digest(),
        any::<u64>(),
        proptest::collection::vec(short_text(), 0..3),
        proptest::collection::btree_map(short_text(), short_text(), 0..3),
        platform,
        proptest::option::of(short_text()),
    )
        .prop_map(
            |(media_type, digest, size, urls, annotations, platform, artifact_type)| Descriptor {
                media_type,
                digest,
                size,
                urls,
                annotations,
                platform: platform.map(Box::new),
                artifact_type,
            },
        )
}

/// Hand-written JSON for a descriptor; optional members are omitted when empty.
fn descriptor_json(d: &Descriptor) -> Value {
    let mut v = json!({"mediaType": d.media_type, "digest": d.digest.as_str(), "size": d.size});
    if !d.urls.is_empty() {
        v["urls"] = json!(d.urls);
    }
    if !d.annotations.is_empty() {
        v["annotations"] = json!(d.annotations);
    }
    if let Some(p) = &d.platform {
        let mut pj = json!({"architecture": p.architecture, "os": p.os});
        if let Some(ov) = &p.os_version {
            pj["os.version"] = json!(ov);
        }
        if !p.os_features.is_empty() {
            pj["os.features"] = json!(p.os_features);
        }
        if let Some(var) = &p.variant {
            pj["variant"] = json!(var);
        }
        if !p.features.is_empty() {
            pj["features"] = json!(p.features);
        }
        v["platform"] = pj;
    }
    if let Some(at) = &d.artifact_type {
        v["artifactType"] = json!(at);
    }
    v
}

/// Compact or pretty, so the kept bytes are not always the canonical form.
fn to_bytes(v: &Value, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(v).unwrap()
    } else {
        serde_json::to_vec(v).unwrap()
    }
}

/// A hint that must not change the outcome for a document with a mediaType field.
fn hint() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/octet-stream".to_owned())),
        Just(Some("text/plain; charset=utf-8".to_owned())),
        Just(Some(media_type::OCI_INDEX.to_owned())),
        Just(Some(media_type::SCHEMA2.to_owned())),
        proptest::option::of(short_text()),
    ]
}

// ---------- digests ----------

proptest! {
    #[test]
    fn valid_digests_round_trip(s in digest_string()) {
        let d = Digest::parse(&s).unwrap();
        prop_assert_eq!(d.to_string(), s.clone());
        prop_assert_eq!(d.as_str(), s.as_str());
        prop_assert_eq!(d.hex().len(), d.algorithm().hex_len());
        let back: Digest = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        prop_assert_eq!(back, d);
    }

    #[test]
    fn computed_digests_parse(bytes in proptest::collection::vec(any::<u8>(), 0..64), alg in algorithm()) {
        let d = Digest::compute(alg, &bytes);
        prop_assert!(d.verifies(&bytes));
        prop_assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
    }

    #[test]
    fn arbitrary_digest_strings_never_panic(s in any::<String>()) {
        if let Ok(d) = Digest::parse(&s) {
            prop_assert_eq!(d.as_str(), s.as_str());
        }
    }

    #[test]
    fn digest_like_strings_never_panic(s in "[a-zA-Z0-9+._-]{0,10}:[0-9a-fA-F=_-]{0,130}") {
        if let Ok(d) = Digest::parse(&s) {
            prop_assert_eq!(d.to_string(), s);
        }
    }
}

// ---------- names, tags, references ----------

proptest! {
    #[test]
    fn valid_names_round_trip(s in repository_name()) {
        let n = RepositoryName::parse(&s).unwrap();
        prop_assert_eq!(n.to_string(), s.clone());
        prop_assert_eq!(n.components().count(), s.split('/').count());
        let back: RepositoryName = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        prop_assert_eq!(back, n);
    }

    #[test]
    fn names_with_an_upper_case_letter_are_invalid(s in repository_name(), at in any::<prop::sample::Index>()) {
        let mut chars: Vec<char> = s.chars().collect();
        let i = at.index(chars.len());
        chars[i] = 'A';
        let bad: String = chars.into_iter().collect();
        prop_assert!(RepositoryName::parse(&bad).is_err());
    }

    #[test]
    fn valid_tags_round_trip(s in tag()) {
        let t = Tag::parse(&s).unwrap();
        prop_assert_eq!(t.to_string(), s.clone());
        let r = Reference::parse(&s).unwrap();
        prop_assert_eq!(r.as_tag(), Some(&t));
        prop_assert_eq!(r.to_string(), s);
    }

    #[test]
    fn digest_references_round_trip(s in digest_string()) {
        let r = Reference::parse(&s).unwrap();
        prop_assert!(r.is_digest());
        prop_assert_eq!(r.to_string(), s);
        let back: Reference = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn arbitrary_references_never_panic(s in any::<String>()) {
        // Whatever parses prints back unchanged; what fails has a short message.
        match Reference::parse(&s) {
            Ok(r) => prop_assert_eq!(r.to_string(), s.clone()),
            Err(e) => prop_assert!(e.to_string().len() < 1024),
        }
        if let Ok(n) = RepositoryName::parse(&s) {
            prop_assert_eq!(n.as_str(), s.as_str());
        }
        if let Ok(t) = Tag::parse(&s) {
            prop_assert_eq!(t.as_str(), s.as_str());
        }
    }

    #[test]
    fn path_like_strings_never_panic(s in "[a-zA-Z0-9._/:-]{0,300}") {
        let _ = Reference::parse(&s);
        if let Ok(n) = RepositoryName::parse(&s) {
            prop_assert!(n.as_str().len() <= 255);
        }
    }
}

// ---------- manifests ----------

proptest! {
    #[test]
    fn image_manifests_round_trip(
        oci in any::<bool>(),
        config in descriptor(false),
        layers in proptest::collection::vec(descriptor(false), 0..5),
        subject in proptest::option::of(descriptor(false)),
        artifact_type in proptest::option::of(short_text()),
        annotations in proptest::collection::btree_map(short_text(), short_text(), 0..3),
        pretty in any::<bool>(),
        hint in hint(),
    ) {
        let mt = if oci { MediaType::OciManifest } else { MediaType::Schema2 };
        let mut v = json!({
            "schemaVersion": 2,
            "mediaType": mt.as_str(),
            "config": descriptor_json(&config),
            "layers": layers.iter().map(descriptor_json).collect::<Vec<_>>(),
        });
        if let Some(s) = &subject {
            v["subject"] = descriptor_json(s);
        }
        if let Some(at) = &artifact_type {
            v["artifactType"] = json!(at);
        }
        if !annotations.is_empty() {
            v["annotations"] = json!(annotations);
        }
        let raw = to_bytes(&v, pretty);
        let m = Manifest::parse(raw.clone(), hint.as_deref()).unwrap();
        prop_assert_eq!(m.as_bytes(), &raw[..]);
        prop_assert_eq!(&m.digest, &Digest::sha256_of(&raw));
        prop_assert_eq!(m.media_type, mt);
        prop_assert_eq!(classify(&raw, hint.as_deref()).unwrap(), mt);
        prop_assert_eq!(
            m.handler_kind(),
            if oci { HandlerKind::OciManifest } else { HandlerKind::Schema2 }
        );
        let ManifestKind::Image(img) = &m.kind else {
            return Err(TestCaseError::fail("not an image manifest"));
        };
        prop_assert_eq!(&img.config, &config);
        prop_assert_eq!(&img.layers, &layers);
        prop_assert_eq!(&img.subject, &subject);
        prop_assert_eq!(&img.artifact_type, &artifact_type);
        prop_assert_eq!(&img.annotations, &annotations);
    }

    #[test]
    fn indexes_round_trip(
        declared in prop_oneof![
            Just(Some(MediaType::ManifestList)),
            Just(Some(MediaType::OciIndex)),
            Just(None)
        ],
        manifests in proptest::collection::vec(descriptor(true), 0..6),
        annotations in proptest::collection::btree_map(short_text(), short_text(), 0..3),
        pretty in any::<bool>(),
    ) {
        let mut v = json!({
            "schemaVersion": 2,
            "manifests": manifests.iter().map(descriptor_json).collect::<Vec<_>>(),
        });
        if let Some(t) = declared {
            v["mediaType"] = json!(t.as_str());
        }
        if !annotations.is_empty() {
            v["annotations"] = json!(annotations);
        }
        let raw = to_bytes(&v, pretty);
        // No hint: a document without mediaType is structurally an OCI index.
        let m = Manifest::parse(raw.clone(), None).unwrap();
        prop_assert_eq!(m.as_bytes(), &raw[..]);
        prop_assert_eq!(&m.digest, &Digest::sha256_of(&raw));
        prop_assert_eq!(m.media_type, declared.unwrap_or(MediaType::OciIndex));
        prop_assert_eq!(m.declared_media_type(), declared);
        prop_assert_eq!(m.handler_kind(), match declared {
            Some(MediaType::ManifestList) => HandlerKind::List,
            Some(_) => HandlerKind::OciIndex,
            None => HandlerKind::Schema1,
        });
        let idx = m.as_index().unwrap();
        prop_assert_eq!(&idx.manifests, &manifests);
        prop_assert_eq!(&idx.annotations, &annotations);
        let expected = manifests.iter().find(|d| {
            d.platform.as_ref().is_some_and(|p| p.architecture == "amd64" && p.os == "linux")
        });
        prop_assert_eq!(idx.linux_amd64(), expected);
    }

    #[test]
    fn schema1_round_trips(
        name in repository_name(),
        tag in tag(),
        layers in proptest::collection::vec((digest(), short_text()), 0..5),
        signed in any::<bool>(),
        pretty in any::<bool>(),
    ) {
        let mut v = json!({
            "schemaVersion": 1,
            "name": name,
            "tag": tag,
            "architecture": "amd64",
            "fsLayers": layers.iter().map(|(d, _)| json!({"blobSum": d.as_str()})).collect::<Vec<_>>(),
            "history": layers.iter().map(|(_, h)| json!({"v1Compatibility": h})).collect::<Vec<_>>(),
        });
        if signed {
            v["signatures"] = json!([{"header": {"alg": "ES256"}, "signature": "x", "protected": "y"}]);
        }
        let raw = to_bytes(&v, pretty);
        let m = Manifest::parse(raw.clone(), None).unwrap();
        prop_assert_eq!(m.as_bytes(), &raw[..]);
        prop_assert_eq!(
            m.media_type,
            if signed { MediaType::Schema1Signed } else { MediaType::Schema1 }
        );
        let s = m.as_schema1().unwrap();
        prop_assert_eq!(&s.name, &name);
        prop_assert_eq!(&s.tag, &tag);
        prop_assert_eq!(s.signed, signed);
        prop_assert_eq!(
            s.fs_layers.clone(),
            layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()
        );
        prop_assert_eq!(
            s.history.clone(),
            layers.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let parsed = Manifest::parse(bytes.clone(), None);
        let classified = classify(&bytes, None);
        if let Ok(m) = parsed {
            prop_assert_eq!(classified.ok(), Some(m.media_type));
            prop_assert_eq!(m.as_bytes(), &bytes[..]);
        }
    }

    #[test]
    fn json_shaped_input_never_panics(
        v in arbitrary_json(),
        hint in hint(),
    ) {
        let raw = serde_json::to_vec(&v).unwrap();
        match Manifest::parse(raw.clone(), hint.as_deref()) {
            Ok(m) => prop_assert_eq!(classify(&raw, hint.as_deref()).ok(), Some(m.media_type)),
            Err(e) => prop_assert!(e.to_string().len() < 2048),
        }
    }

    #[test]
    fn mutated_manifests_never_panic(
        config in descriptor(false),
        layers in proptest::collection::vec(descriptor(false), 0..3),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let v = json!({
            "schemaVersion": 2,
            "mediaType": media_type::SCHEMA2,
            "config": descriptor_json(&config),
            "layers": layers.iter().map(descriptor_json).collect::<Vec<_>>(),
        });
        let mut raw = serde_json::to_vec(&v).unwrap();
        let i = flip.index(raw.len());
        raw[i] = byte;
        let _ = Manifest::parse(raw.clone(), None);
        raw.truncate(cut.index(raw.len()));
        let _ = Manifest::parse(raw.clone(), Some(media_type::SCHEMA2));
        let _ = classify(&raw, None);
    }
}

/// JSON objects that look a little like manifests: the known member names with
/// random values of random types, so classification and typed parsing see
/// every wrong-type combination.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop_oneof![Just(1i64), Just(2i64)].prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        short_text().prop_map(Value::String),
        digest_string().prop_map(Value::String),
        prop_oneof![
            Just(media_type::SCHEMA1),
            Just(media_type::SCHEMA2),
            Just(media_type::MANIFEST_LIST),
            Just(media_type::OCI_MANIFEST),
            Just(media_type::OCI_INDEX),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    let key = prop_oneof![
        Just("schemaVersion".to_owned()),
        Just("mediaType".to_owned()),
        Just("config".to_owned()),
        Just("layers".to_owned()),
        Just("manifests".to_owned()),
        Just("digest".to_owned()),
        Just("size".to_owned()),
        Just("platform".to_owned()),
        Just("fsLayers".to_owned()),
        Just("history".to_owned()),
        Just("blobSum".to_owned()),
        Just("signatures".to_owned()),
        short_text(),
    ];
    let value = leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m: BTreeMap<String, Value>| Value::Object(m.into_iter().collect())),
        ]
    });
    proptest::collection::btree_map(
        prop_oneof![
            Just("schemaVersion".to_owned()),
            Just("mediaType".to_owned()),
            Just("config".to_owned()),
            Just("layers".to_owned()),
            Just("manifests".to_owned()),
            Just("fsLayers".to_owned()),
            Just("history".to_owned()),
            Just("signatures".to_owned()),
        ],
        value,
        0..7,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

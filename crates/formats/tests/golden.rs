//! Golden vectors of spec 03 (produced by distribution v2.8.3) and the
//! validation / Go-decoder corner cases of the Schema 2 → Schema 1 conversion.

#![allow(clippy::unwrap_used)]

use regcache_formats::digest::Digest;
use regcache_formats::error::ErrorCode;
use regcache_formats::gojson::TimeError;
use regcache_formats::schema1::{
    ConvertError, EMPTY_LAYER_BYTES, EMPTY_LAYER_DIGEST, canonical_digest, canonical_payload,
    canonical_payload_from_strs,
};
use serde_json::Value;

struct Vector {
    config: &'static [u8],
    expected: &'static [u8],
    name: &'static str,
    tag: &'static str,
    layers: &'static [&'static str],
    config_sha256: &'static str,
    canonical_sha256: &'static str,
    len: usize,
}

const VECTORS: [Vector; 5] = [
    Vector {
        config: include_bytes!("fixtures/example1.config.json"),
        expected: include_bytes!("fixtures/example1.schema1.canonical.json"),
        name: "library/example",
        tag: "latest",
        layers: &[
            "sha256:ef9cff5a3f5e0ab793b36a5c56fa1e65439b85344371904994f6ec2d085bc00e",
            "sha256:b1906b872d2cbb337b7aeb238a1f52277e9ce7a02506672475b055c4eb15af37",
        ],
        config_sha256: "59aa9bc0c1a27d4b4acb0b3258c2928c1f0a558fd64e88af5e9f2ef26bfe759c",
        canonical_sha256: "3d9f9a165dab083e64baf8fffe764e5935495205c0b2080ce8c4d258fcdca1ab",
        len: 2100,
    },
    Vector {
        config: include_bytes!("fixtures/c1.config.json"),
        expected: include_bytes!("fixtures/c1.schema1.canonical.json"),
        name: "library/t",
        tag: "latest",
        layers: &[
            "sha256:2804bad6fe94a55f18b2b37e300919a5fd517b95aa81e95db574c0ba069a3740",
            "sha256:8a1cee436cbac1489a1883c9d886fcfc46f302c55ed4106ae31729e4f4eb9041",
        ],
        config_sha256: "c1493546bb87848aa233ec55c7f66e83b9802922f812f37717ee487742fb0ee0",
        canonical_sha256: "1975273b785f25e3fa177b0cef18218a5d7a91485cfa189df366f13ce1d2ed8b",
        len: 1396,
    },
    Vector {
        config: include_bytes!("fixtures/c2.config.json"),
        expected: include_bytes!("fixtures/c2.schema1.canonical.json"),
        name: "library/t",
        tag: "latest",
        layers: &["sha256:10dacdccfe877dc064d57442e6fa7a4e3085dc94e11a29819c2290fc3d788724"],
        config_sha256: "7edce34553cbc7916f9c5985dd34361dca017f7388cea4f9b21e95c5be26ee8b",
        canonical_sha256: "ef15586b44a67af5dd71938587dc5c1198b165a6ff350385ecc6bfe1032b55cd",
        len: 420,
    },
    Vector {
        config: include_bytes!("fixtures/c3.config.json"),
        expected: include_bytes!("fixtures/c3.schema1.canonical.json"),
        name: "library/t",
        tag: "latest",
        layers: &[
            "sha256:9f102fe3a7d618f9960701e25169aff66169d27e1d7dcf220124a9bf2047436d",
            "sha256:a99e27f8d40e114ff48dc9c44b04cd7418328c15b7a5ed0ceeaa180783c45fa0",
        ],
        config_sha256: "8f6f82dfaa9c7a77e862311da8a7087da45cc3c396ecff4bf6896931a8813e69",
        canonical_sha256: "ff22770b7e7cb33e997d4760362e19a6b1d9a83f930b7d4a5f772225b8db029f",
        len: 894,
    },
    Vector {
        config: include_bytes!("fixtures/c4.config.json"),
        expected: include_bytes!("fixtures/c4.schema1.canonical.json"),
        name: "library/t",
        tag: "latest",
        layers: &[
            "sha256:b737ca7ee563ae80e457bb3d1dfe64edd2b4c015a8f88b6f87d5c113b68897fd",
            "sha256:fd26db45a8b53034aa38939294bb619aebfc5739f35d25be34583fca6480a2d7",
        ],
        config_sha256: "462f44e9a45b0fc1b6381d7b25e761537fddc118ef1d020c8691ebe1dcc10267",
        canonical_sha256: "c61abd7dd68b899454bda657927f630832e0930c6f7005944dd225d1624ac072",
        len: 1373,
    },
];

const L1: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const L2: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";
const L3: &str = "sha256:5555555555555555555555555555555555555555555555555555555555555555";

/// Outputs of `reference_convert.py` (spec testdata) on hand-made configs,
/// frozen: Unicode keys sorted by bytes, `\u0061rch` decoded, nested escapes
/// and number spellings kept, a config-supplied `parent`/`throwaway`
/// overridden, a surplus layer dropped, +05:30/-08:00 offsets, a >9-digit
/// fraction (extra_a); CRLF/tab-indented config with a trailing newline,
/// `-00:00`, `+14:00`, a 10 ns fraction, empty steps between real ones (extra_b).
/// (config, expected payload, name, tag, layers).
type Extra = (
    &'static [u8],
    &'static [u8],
    &'static str,
    &'static str,
    &'static [&'static str],
);

const EXTRA: [Extra; 2] = [
    (
        include_bytes!("fixtures/extra_a.config.json"),
        include_bytes!("fixtures/extra_a.schema1.canonical.json"),
        "team/app",
        "v1.2",
        &[L1, L2],
    ),
    (
        include_bytes!("fixtures/extra_b.config.json"),
        include_bytes!("fixtures/extra_b.schema1.canonical.json"),
        "library/busybox",
        "1.0",
        &[L1, L2, L3],
    ),
];

fn digests(layers: &[&str]) -> Vec<Digest> {
    layers.iter().map(|l| Digest::parse(l).unwrap()).collect()
}

fn convert(config: &[u8], layers: &[&str]) -> Result<Vec<u8>, ConvertError> {
    canonical_payload(config, &digests(layers), "library/t", "latest")
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn golden_vectors_byte_for_byte() {
    for v in &VECTORS {
        assert_eq!(
            Digest::sha256_of(v.config).hex(),
            v.config_sha256,
            "fixture config changed"
        );
        let got = canonical_payload(v.config, &digests(v.layers), v.name, v.tag).unwrap();
        assert_eq!(show(&got), show(v.expected), "{}", v.config_sha256);
        assert_eq!(got, v.expected);
        assert_eq!(got.len(), v.len);
        assert_eq!(
            canonical_digest(&got).as_str(),
            format!("sha256:{}", v.canonical_sha256)
        );
        // The string-layer variant gives the same bytes.
        let again = canonical_payload_from_strs(v.config, v.layers, v.name, v.tag).unwrap();
        assert_eq!(again, got);
    }
}

#[test]
fn extra_fixtures_from_reference_transcription() {
    for (config, expected, name, tag, layers) in EXTRA {
        let got = canonical_payload(config, &digests(layers), name, tag).unwrap();
        assert_eq!(show(&got), show(expected));
        assert_eq!(got, expected);
    }
}

fn v1(payload: &[u8]) -> Vec<Value> {
    let doc: Value = serde_json::from_slice(payload).unwrap();
    doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| serde_json::from_str(h["v1Compatibility"].as_str().unwrap()).unwrap())
        .collect()
}

fn blobs(payload: &[u8]) -> Vec<String> {
    let doc: Value = serde_json::from_slice(payload).unwrap();
    doc["fsLayers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["blobSum"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn v1_id_chain_of_the_worked_example() {
    let v = &VECTORS[0];
    let out = canonical_payload(v.config, &digests(v.layers), v.name, v.tag).unwrap();
    let h = v1(&out);
    let ids: Vec<&str> = h.iter().map(|e| e["id"].as_str().unwrap()).collect();
    // §3.6 table, history i = 3 (top) … 0, newest first as in the document.
    assert_eq!(
        ids,
        [
            "353b3520554a7f0a882c2b268a18c83cb66a2d00a058b7c6f55f113d50a62c4d",
            "be683d19c85208535802ea09663f33605ff6eda0e6df4c0701d78bc8ba8775ff",
            "161d991fc3687a08ba4f820924a8aba693a1c4ffb377fe75283967738ad70f76",
            "25d0ab535fc77cc254096cbcc74eb0f7cf44d3c9ed0661b4500686997cfe3750",
        ]
    );
    // Recompute the chain from its definition.
    let sha = |s: &[u8]| Digest::sha256_of(s).hex().to_owned();
    let l0 = &v.layers[0][7..];
    let l1 = &v.layers[1][7..];
    let e = &EMPTY_LAYER_DIGEST[7..];
    let id0 = sha(format!("{l0} ").as_bytes());
    let id1 = sha(format!("{l1} {id0}").as_bytes());
    let id2 = sha(format!("{e} {id1}").as_bytes());
    let mut top = format!("{e} {id2} ").into_bytes();
    top.extend_from_slice(v.config);
    assert_eq!(vec![sha(&top), id2, id1, id0], ids);
    assert!(h[3].get("parent").is_none());
    assert_eq!(h[0]["parent"], ids[1]);
}

#[test]
fn empty_layer_blob() {
    assert_eq!(
        Digest::sha256_of(&EMPTY_LAYER_BYTES).as_str(),
        EMPTY_LAYER_DIGEST
    );
    assert_ne!(
        EMPTY_LAYER_DIGEST,
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    );
}

// --- validation table (§3.3) ------------------------------------------------

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn cfg(history: &str, diff_ids: usize) -> String {
    let ids = vec![format!("\"{D1}\""); diff_ids].join(",");
    format!(
        r#"{{"architecture":"amd64","history":{history},"rootfs":{{"type":"layers","diff_ids":[{ids}]}}}}"#
    )
}

fn err(config: &str, layers: &[&str]) -> ConvertError {
    let e = convert(config.as_bytes(), layers).unwrap_err();
    assert_eq!(e.error_code(), ErrorCode::ManifestInvalid);
    assert_eq!(e.error_code().status(), 400);
    e
}

#[test]
fn invalid_json_is_refused() {
    for bad in [
        "",
        "{",
        "{\"history\":[}",
        "{} x",
        "{\"a\":01}",
        "\u{feff}{}",
        "{'a':1}",
    ] {
        assert!(
            matches!(err(bad, &[L1]), ConvertError::InvalidJson(_)),
            "{bad:?}"
        );
    }
}

#[test]
fn wrong_types_are_refused() {
    let cases = [
        (cfg(r#"[{"empty_layer":"true"}]"#, 1), "history.empty_layer"),
        (cfg(r#"[{"empty_layer":1}]"#, 1), "history.empty_layer"),
        (cfg(r#"[{"created_by":["a"]}]"#, 1), "history.created_by"),
        (cfg(r#"[{"author":7}]"#, 1), "history.author"),
        (cfg(r#"[{"comment":true}]"#, 1), "history.comment"),
        (cfg("[1]", 1), "history"),
        (cfg("[[]]", 1), "history"),
        (cfg(r#"{"a":1}"#, 1), "history"),
        (cfg(r#""x""#, 1), "history"),
        (
            r#"{"architecture":5,"history":[{}],"rootfs":{"diff_ids":[]}}"#.to_owned(),
            "architecture",
        ),
        (r#"{"history":[{}],"rootfs":[]}"#.to_owned(), "rootfs"),
        (
            r#"{"history":[{}],"rootfs":{"diff_ids":{}}}"#.to_owned(),
            "rootfs.diff_ids",
        ),
        (
            r#"{"history":[{}],"rootfs":{"diff_ids":[1]}}"#.to_owned(),
            "rootfs.diff_ids",
        ),
        (
            r#"{"history":[{}],"rootfs":{"type":1,"diff_ids":[]}}"#.to_owned(),
            "rootfs.type",
        ),
        (
            r#"{"history":[{}],"rootfs":{"base_layer":{},"diff_ids":[]}}"#.to_owned(),
            "rootfs.base_layer",
        ),
        ("[]".to_owned(), "(config)"),
        ("\"config\"".to_owned(), "(config)"),
    ];
    for (config, field) in cases {
        match err(&config, &[L1]) {
            ConvertError::WrongType { field: f, .. } => assert_eq!(f, field, "{config}"),
            other => panic!("{config}: {other:?}"),
        }
    }
}

#[test]
fn bad_created_is_refused_even_on_the_top_entry() {
    for created in [
        r#""yesterday""#,
        r#""2024-03-01T10:20:30""#,
        r#""2024-02-30T00:00:00Z""#,
        "1",
        "{}",
        "[]",
    ] {
        let c = cfg(&format!(r#"[{{}},{{"created":{created}}}]"#), 2);
        assert!(
            matches!(err(&c, &[L1, L2]), ConvertError::InvalidTimestamp(_)),
            "{created}"
        );
    }
    // Go's Time.UnmarshalJSON does not unescape: a valid JSON escape still fails.
    let c = cfg(r#"[{"created":"2024-03-01T10:20:30\u005a"}]"#, 1);
    assert!(matches!(
        err(&c, &[L1]),
        ConvertError::InvalidTimestamp(TimeError::Syntax(_))
    ));
}

#[test]
fn unmarshallable_offset_fails_only_where_go_marshals_it() {
    // +24:00 parses (Go 1.20 has no offset range check) but MarshalJSON refuses it.
    let c = cfg(r#"[{"created":"2024-01-01T00:00:00+24:00"},{}]"#, 2);
    assert_eq!(
        err(&c, &[L1, L2]),
        ConvertError::InvalidTimestamp(TimeError::TimezoneHourOutOfRange)
    );
    // The top entry's created is parsed but never marshalled: fine.
    let c = cfg(r#"[{},{"created":"2024-01-01T00:00:00+24:00"}]"#, 2);
    assert!(convert(c.as_bytes(), &[L1, L2]).is_ok());
    // Normalised like Go: +05:75 is +06:15, a one-digit hour and a comma fraction are accepted.
    let c = cfg(r#"[{"created":"2024-01-01T1:02:03,50+05:75"},{}]"#, 2);
    let out = convert(c.as_bytes(), &[L1, L2]).unwrap();
    assert_eq!(v1(&out)[1]["created"], "2024-01-01T01:02:03.5+06:15");
}

#[test]
fn empty_or_missing_history() {
    for h in [
        r#"{"rootfs":{"diff_ids":[]}}"#.to_owned(),
        cfg("[]", 0),
        cfg("null", 0),
        "null".to_owned(),
    ] {
        let e = err(&h, &[]);
        assert_eq!(e, ConvertError::EmptyHistory, "{h}");
        assert_eq!(
            e.to_string(),
            "empty history when trying to create schema1 manifest"
        );
    }
}

#[test]
fn missing_rootfs() {
    assert_eq!(
        err(r#"{"history":[{}]}"#, &[L1]),
        ConvertError::MissingRootfs
    );
    assert_eq!(
        err(r#"{"history":[{}],"rootfs":null}"#, &[L1]),
        ConvertError::MissingRootfs
    );
    // null after an object sets Go's pointer back to nil.
    assert_eq!(
        err(
            &format!(r#"{{"history":[{{}}],"rootfs":{{"diff_ids":["{D1}"]}},"rootfs":null}}"#),
            &[L1]
        ),
        ConvertError::MissingRootfs
    );
    // An empty rootfs object is fine when there are no layers at all.
    let out = convert(br#"{"history":[{"empty_layer":true}],"rootfs":{}}"#, &[]).unwrap();
    assert_eq!(blobs(&out), [EMPTY_LAYER_DIGEST]);
}

#[test]
fn diff_ids_must_match_layers() {
    assert_eq!(
        err(&cfg("[{}]", 2), &[L1]),
        ConvertError::LayerCountMismatch {
            diff_ids: 2,
            layers: 1
        }
    );
    assert_eq!(
        err(&cfg("[{}]", 0), &[L1]),
        ConvertError::LayerCountMismatch {
            diff_ids: 0,
            layers: 1
        }
    );
    // null elements count (they decode to "").
    let c = r#"{"history":[{}],"rootfs":{"diff_ids":[null]}}"#;
    assert!(convert(c.as_bytes(), &[L1]).is_ok());
}

#[test]
fn too_many_non_empty_layers() {
    for h in [
        "[{},{}]",
        "[{},{\"empty_layer\":true},{}]",
        "[{\"empty_layer\":false},{}]",
    ] {
        let e = err(&cfg(h, 1), &[L1]);
        assert_eq!(e, ConvertError::TooManyNonEmptyLayers, "{h}");
        assert_eq!(
            e.to_string(),
            "too many non-empty layers in History section"
        );
    }
    // With zero layers, even one non-empty top step is too many.
    assert_eq!(
        err(&cfg("[{}]", 0), &[]),
        ConvertError::TooManyNonEmptyLayers
    );
}

#[test]
fn surplus_layers_are_silently_dropped() {
    let out = convert(
        cfg(r#"[{},{"empty_layer":true}]"#, 3).as_bytes(),
        &[L1, L2, L3],
    )
    .unwrap();
    assert_eq!(blobs(&out), [EMPTY_LAYER_DIGEST, L1]);
    let out = convert(cfg(r#"[{"empty_layer":true}]"#, 2).as_bytes(), &[L1, L2]).unwrap();
    assert_eq!(blobs(&out), [EMPTY_LAYER_DIGEST]);
}

#[test]
fn invalid_layer_digests_are_refused() {
    let c = cfg("[{}]", 1);
    for bad in ["sha256:abc", "md5:00", "sha256", "SHA256:00", ""] {
        let e = canonical_payload_from_strs(c.as_bytes(), &[bad], "n", "t").unwrap_err();
        assert!(matches!(e, ConvertError::InvalidLayerDigest(_)), "{bad}");
        assert_eq!(e.error_code(), ErrorCode::ManifestInvalid);
    }
    // sha512 layers are valid digests; their hex part feeds the id chain.
    let l512 = format!("sha512:{}", "ab".repeat(64));
    let out = canonical_payload_from_strs(c.as_bytes(), &[&l512], "n", "t").unwrap();
    assert_eq!(blobs(&out), [l512]);
}

// --- Go decoder corner cases ----------------------------------------------------

#[test]
fn keys_match_case_insensitively() {
    let c = format!(
        r#"{{"Architecture":"arm64","HISTORY":[{{"Created_By":"x","EMPTY_LAYER":true,"Created":"2020-01-01T00:00:00Z","AUTHOR":"me","Comment":"c"}},{{}}],"RootFS":{{"Diff_IDs":["{D1}"]}}}}"#
    );
    let out = convert(c.as_bytes(), &[L1]).unwrap();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["architecture"], "arm64");
    assert_eq!(blobs(&out), [L1, EMPTY_LAYER_DIGEST]);
    let h = v1(&out);
    assert_eq!(h[1]["container_config"]["Cmd"][0], "x");
    assert_eq!(h[1]["author"], "me");
    assert_eq!(h[1]["comment"], "c");
    assert_eq!(h[1]["throwaway"], true);
    assert_eq!(h[1]["created"], "2020-01-01T00:00:00Z");
    // Only the exact names "rootfs"/"history" are deleted from the top entry.
    assert!(h[0].get("HISTORY").is_some());
    assert!(h[0].get("RootFS").is_some());
    assert_eq!(h[0]["Architecture"], "arm64");
    // Unicode folding: long s matches 's', like Go.
    let c = format!(r#"{{"hiſtory":[{{}}],"rootfſ":{{"diff_idſ":["{D1}"]}}}}"#);
    assert!(convert(c.as_bytes(), &[L1]).is_ok());
    // Escaped keys are decoded before matching.
    let c = format!(r#"{{"\u0068istory":[{{}}],"\u0072ootfs":{{"diff_ids":["{D1}"]}}}}"#);
    let out = convert(c.as_bytes(), &[L1]).unwrap();
    assert!(v1(&out)[0].get("history").is_none());
    assert!(v1(&out)[0].get("rootfs").is_none());
}

#[test]
fn last_matching_key_wins_whatever_its_case() {
    // Go decodes every matching key in order: the later "History" overrides "history".
    let c =
        format!(r#"{{"history":[{{}},{{}}],"History":[{{}}],"rootfs":{{"diff_ids":["{D1}"]}}}}"#);
    assert_eq!(blobs(&convert(c.as_bytes(), &[L1]).unwrap()), [L1]);
    let c = format!(
        r#"{{"History":[{{}}],"history":[{{"empty_layer":true}},{{}}],"rootfs":{{"diff_ids":["{D1}"]}}}}"#
    );
    assert_eq!(
        blobs(&convert(c.as_bytes(), &[L1]).unwrap()),
        [L1, EMPTY_LAYER_DIGEST]
    );
    let c = format!(
        r#"{{"architecture":"a","ARCHITECTURE":"b","history":[{{}}],"rootfs":{{"diff_ids":["{D1}"]}}}}"#
    );
    let doc: Value = serde_json::from_slice(&convert(c.as_bytes(), &[L1]).unwrap()).unwrap();
    assert_eq!(doc["architecture"], "b");
}

#[test]
fn duplicate_keys_and_null() {
    // Within a history entry: last wins; null leaves the earlier value (Go).
    let c = cfg(
        r#"[{"created_by":"a","created_by":"b","author":"x","author":null,"empty_layer":true,"empty_layer":null},{}]"#,
        1,
    );
    let out = convert(c.as_bytes(), &[L1]).unwrap();
    let h = v1(&out);
    assert_eq!(h[1]["container_config"]["Cmd"][0], "b");
    assert_eq!(h[1]["author"], "x");
    assert_eq!(h[1]["throwaway"], true);
    // A repeated history array decodes into the previous elements (Go reuses them).
    let c = format!(
        r#"{{"history":[{{"author":"kept","created_by":"old"}},{{}},{{}}],"history":[{{"created_by":"new"}},{{}}],"rootfs":{{"diff_ids":["{D1}","{D1}"]}}}}"#
    );
    let out = convert(c.as_bytes(), &[L1, L2]).unwrap();
    let h = v1(&out);
    assert_eq!(h.len(), 2);
    assert_eq!(h[1]["author"], "kept");
    assert_eq!(h[1]["container_config"]["Cmd"][0], "new");
    // A repeated rootfs object merges into the previous one.
    let c = format!(
        r#"{{"history":[{{}}],"rootfs":{{"diff_ids":["{D1}"]}},"rootfs":{{"type":"layers"}}}}"#
    );
    assert!(convert(c.as_bytes(), &[L1]).is_ok());
    // null history elements are zero entries.
    let out = convert(cfg("[null,null]", 2).as_bytes(), &[L1, L2]).unwrap();
    assert_eq!(v1(&out)[1]["created"], "0001-01-01T00:00:00Z");
    assert_eq!(v1(&out)[1]["container_config"]["Cmd"][0], "");
    // Top-level duplicate members: last value, in sorted position, decoded key.
    let c = format!(
        r#"{{"os":"a","\u006fs":"b","zz":1,"history":[{{}}],"rootfs":{{"diff_ids":["{D1}"]}},"id":"x","parent":"p","throwaway":"no"}}"#
    );
    let out = convert(c.as_bytes(), &[L1]).unwrap();
    let top = &v1(&out)[0];
    assert_eq!(top["os"], "b");
    assert_ne!(top["id"], "x");
    assert_eq!(top["parent"], "p"); // no parent computed: the config's stays
    assert_eq!(top["throwaway"], "no"); // top step not empty: the config's stays
    let doc: Value = serde_json::from_slice(&out).unwrap();
    let text = doc["history"][0]["v1Compatibility"].as_str().unwrap();
    assert!(text.starts_with(r#"{"id":"#), "{text}");
    assert!(
        text.ends_with(r#","os":"b","parent":"p","throwaway":"no","zz":1}"#),
        "{text}"
    );
}

#[test]
fn base_layer_needs_two_history_entries() {
    let c = format!(
        r#"{{"history":[{{}}],"rootfs":{{"base_layer":"sha256:abc","diff_ids":["{D1}"]}}}}"#
    );
    let out = convert(c.as_bytes(), &[L1]).unwrap();
    assert!(v1(&out)[0].get("parent").is_none());
}

#[test]
fn go_decoding_of_odd_strings() {
    // Invalid UTF-8 and lone surrogates are accepted like Go: decoded strings get
    // U+FFFD, raw bytes copied into the top entry become the escape \ufffd.
    let mut c = br#"{"raw":""#.to_vec();
    c.extend_from_slice(b"a\xffb");
    c.extend_from_slice(br#"","history":[{"created_by":"\ud800x"},{}],"rootfs":{"diff_ids":[""#);
    c.extend_from_slice(D1.as_bytes());
    c.extend_from_slice(br#"",""#);
    c.extend_from_slice(D1.as_bytes());
    c.extend_from_slice(br#""]}}"#);
    let out = convert(&c, &[L1, L2]).unwrap();
    let text = show(&out);
    assert!(text.contains(r#"\"raw\":\"a\ufffdb\""#), "{text}");
    assert_eq!(v1(&out)[1]["container_config"]["Cmd"][0], "\u{FFFD}x");
}

#[test]
fn nesting_depth_is_gos() {
    let ok = format!(
        r#"{{"deep":{}{},"history":[{{}}],"rootfs":{{"diff_ids":["{D1}"]}}}}"#,
        "[".repeat(9_999),
        "]".repeat(9_999)
    );
    let out = convert(ok.as_bytes(), &[L1]).unwrap();
    assert!(show(&out).contains(&"[".repeat(9_999)));
    let bad = ok.replace("[[", "[[[").replace("]]", "]]]");
    assert!(matches!(err(&bad, &[L1]), ConvertError::InvalidJson(_)));
}

#[test]
fn name_tag_and_arch_are_e1_encoded() {
    let c =
        format!(r#"{{"architecture":"a<b","history":[{{}}],"rootfs":{{"diff_ids":["{D1}"]}}}}"#);
    let out = canonical_payload(c.as_bytes(), &digests(&[L1]), "te&m/app", "").unwrap();
    let text = show(&out);
    assert!(text.contains("\n   \"name\": \"te\\u0026m/app\",\n   \"tag\": \"\",\n   \"architecture\": \"a\\u003cb\",\n"));
    assert!(text.ends_with("\n   ]\n}"));
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["name"], "te&m/app");
}

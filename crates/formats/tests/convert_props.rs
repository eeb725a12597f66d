//! Properties of the Go-compatible JSON pieces and of the conversion: no
//! panics on hostile input, agreement with `serde_json` where Go and serde
//! agree, and the structural invariants of §3.5.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use regcache_formats::digest::Digest;
use regcache_formats::gojson::{self, Timestamp};
use regcache_formats::schema1::{EMPTY_LAYER_DIGEST, canonical_payload};
use serde_json::Value;

const EXAMPLE: &[u8] = include_bytes!("fixtures/example1.config.json");
const HTML_UNSAFE: [char; 5] = ['<', '>', '&', '\u{2028}', '\u{2029}'];
const C1: &[u8] = include_bytes!("fixtures/c1.config.json");

fn layer(i: usize) -> Digest {
    Digest::sha256_of(format!("layer {i}").as_bytes())
}

fn layers(n: usize) -> Vec<Digest> {
    (0..n).map(layer).collect()
}

#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn apply(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = base.to_vec();
    for e in edits {
        let len = v.len().max(1);
        match *e {
            Edit::Set(i, b) => {
                if !v.is_empty() {
                    v[i % len] = b;
                }
            }
            Edit::Insert(i, b) => v.insert(i % (v.len() + 1), b),
            Edit::Delete(i) => {
                if !v.is_empty() {
                    v.remove(i % len);
                }
            }
        }
    }
    v
}

fn edit() -> impl Strategy<Value = Edit> {
    let interesting = prop::sample::select(b"{}[]\",:\\ntf0-.eu< \xe2\x80\xa8\xff".to_vec());
    let byte = prop_oneof![any::<u8>(), interesting];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let text = "[a-z<>&\"\\\\/ \u{e9}\u{2028}\u{2029}\u{1}\u{8}\u{c}\n\t😀]{0,8}";
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Quarters: exact in binary, so serde_json's float parsing round-trips them.
        (-4_000_000i32..4_000_000).prop_map(|q| Value::from(f64::from(q) / 4.0)),
        text.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((text, inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_bytes(config in prop::collection::vec(any::<u8>(), 0..300), n in 0usize..4) {
        let _ = canonical_payload(&config, &layers(n), "n", "t");
        let _ = gojson::top_level_members(&config);
    }

    #[test]
    fn never_panics_on_mutated_configs(
        which in any::<bool>(),
        edits in prop::collection::vec(edit(), 1..6),
        n in 0usize..4,
    ) {
        let config = apply(if which { EXAMPLE } else { C1 }, &edits);
        if let Ok(out) = canonical_payload(&config, &layers(n), "library/x", "latest") {
            // Whatever the config held, the document is valid UTF-8 JSON.
            let doc: Value = serde_json::from_slice(&out).expect("output parses");
            prop_assert_eq!(doc["history"].as_array().map(Vec::len), doc["fsLayers"].as_array().map(Vec::len));
        }
    }

    #[test]
    fn validate_agrees_with_serde_json(s in "[\\[\\]{}:,\" a-f0-9.eE+\\-\\\\/ntrul]{0,24}") {
        // serde_json and Go disagree on lone surrogate escapes; leave \u out.
        prop_assume!(!s.contains("\\u"));
        let ours = gojson::validate(s.as_bytes()).is_ok();
        let serde = serde_json::from_str::<serde::de::IgnoredAny>(&s).is_ok();
        prop_assert_eq!(ours, serde, "{:?}", s);
    }

    #[test]
    fn e1_round_trips_and_is_html_safe(s in any::<String>()) {
        let mut out = Vec::new();
        gojson::append_string(&mut out, &s);
        let text = std::str::from_utf8(&out).unwrap();
        prop_assert!(!text.contains(HTML_UNSAFE), "{}", text);
        prop_assert!(!text.chars().any(|c| c < ' '));
        prop_assert_eq!(serde_json::from_str::<String>(text).unwrap(), s.clone());
        let mut bytes = Vec::new();
        gojson::append_string_bytes(&mut bytes, s.as_bytes());
        prop_assert_eq!(bytes, out);
    }

    #[test]
    fn e3_compacts_any_spelling_to_the_same_text(v in json_value()) {
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let compact = serde_json::to_string(&v).unwrap();
        let mut a = Vec::new();
        gojson::append_compact(&mut a, pretty.as_bytes());
        let mut b = Vec::new();
        gojson::append_compact(&mut b, compact.as_bytes());
        prop_assert_eq!(&a, &b);
        let text = std::str::from_utf8(&a).unwrap();
        prop_assert!(!text.contains(HTML_UNSAFE), "{}", text);
        prop_assert_eq!(serde_json::from_str::<Value>(text).unwrap(), v);
        prop_assert!(gojson::validate(pretty.as_bytes()).is_ok());
    }

    #[test]
    fn top_level_members_match_serde(v in prop::collection::btree_map("[a-z\u{e9}]{0,3}", json_value(), 0..6)) {
        let doc = serde_json::to_string_pretty(&v).unwrap();
        let members = gojson::top_level_members(doc.as_bytes()).unwrap();
        prop_assert_eq!(members.len(), v.len());
        for (k, raw) in members {
            let parsed: Value = serde_json::from_slice(raw).unwrap();
            prop_assert_eq!(Some(&parsed), v.get(k.as_ref()));
        }
    }

    #[test]
    fn timestamps_reformat_like_go(
        (y, mo, d) in (0u32..=9999, 1u32..=12, 1u32..=28),
        (h, mi, s) in (0u32..24, 0u32..60, 0u32..60),
        frac in "[0-9]{0,12}",
        off in prop::option::of((any::<bool>(), 0u32..24, 0u32..60)),
    ) {
        let mut input = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
        if !frac.is_empty() {
            input.push('.');
            input.push_str(&frac);
        }
        let zone = match off {
            None => { input.push('Z'); "Z".to_owned() }
            Some((neg, oh, om)) => {
                let sign = if neg { '-' } else { '+' };
                input.push_str(&format!("{sign}{oh:02}:{om:02}"));
                if oh == 0 && om == 0 { "Z".to_owned() } else { format!("{sign}{oh:02}:{om:02}") }
            }
        };
        let mut f: String = frac.chars().take(9).collect();
        while f.ends_with('0') { f.pop(); }
        let expected = format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}{zone}",
            if f.is_empty() { String::new() } else { format!(".{f}") }
        );
        prop_assert_eq!(Timestamp::reformat(input.as_bytes()).unwrap(), expected);
    }

    #[test]
    fn conversion_structure(empties in prop::collection::vec(any::<bool>(), 1..12), surplus in 0usize..3) {
        let non_empty = empties.iter().filter(|e| !**e).count();
        let k = non_empty + surplus;
        let history: Vec<String> = empties
            .iter()
            .enumerate()
            .map(|(i, e)| format!(r#"{{"created_by":"step {i} && <x>","empty_layer":{e}}}"#))
            .collect();
        let diff_ids = vec!["\"sha256:00\""; k].join(",");
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","history":[{}],"rootfs":{{"type":"layers","diff_ids":[{diff_ids}]}}}}"#,
            history.join(",")
        );
        let ls = layers(k);
        let out = canonical_payload(config.as_bytes(), &ls, "library/p", "latest").unwrap();
        let doc: Value = serde_json::from_slice(&out).unwrap();
        let fs: Vec<&str> = doc["fsLayers"].as_array().unwrap().iter().map(|l| l["blobSum"].as_str().unwrap()).collect();
        prop_assert_eq!(fs.len(), empties.len());
        // Newest first; non-empty steps take the layers in order, surplus ones dropped.
        let mut next = 0;
        for (i, e) in empties.iter().enumerate() {
            let blob = fs[empties.len() - 1 - i];
            if *e {
                prop_assert_eq!(blob, EMPTY_LAYER_DIGEST);
            } else {
                prop_assert_eq!(blob, ls[next].as_str());
                next += 1;
            }
        }
        let v1: Vec<Value> = doc["history"].as_array().unwrap().iter()
            .map(|h| serde_json::from_str(h["v1Compatibility"].as_str().unwrap()).unwrap())
            .collect();
        for i in 0..v1.len() - 1 {
            prop_assert_eq!(&v1[i]["parent"], &v1[i + 1]["id"]);
        }
        prop_assert!(v1[v1.len() - 1].get("parent").is_none());
        prop_assert_eq!(v1[0]["throwaway"].as_bool(), empties.last().copied().filter(|e| *e));
        prop_assert_eq!(&v1[0]["os"], "linux");
        prop_assert!(v1[0].get("history").is_none() && v1[0].get("rootfs").is_none());
        prop_assert!(!String::from_utf8(out).unwrap().contains('&'));
    }
}

//! Fixed vectors for the Schema 1 → Schema 2 upgrade. The expected bytes
//! are written out by hand from containers/image's rules (module docs); the
//! end-to-end test compares real images with skopeo's own output.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::schema1::EMPTY_LAYER_DIGEST;

fn id(c: char) -> String {
    c.to_string().repeat(64)
}

fn digest(pair: &str) -> Digest {
    Digest::parse(&format!("sha256:{}", pair.repeat(32))).unwrap()
}

fn s1(fs_layers: Vec<Digest>, history: Vec<String>) -> Schema1 {
    Schema1 {
        name: "team/app".into(),
        tag: "v1".into(),
        architecture: "amd64".into(),
        fs_layers,
        history,
        signed: false,
    }
}

/// Three entries, newest first: an empty CMD step on top (pretty-printed,
/// with the keys containers/image drops), a RUN layer, the base layer.
fn sample() -> Schema1 {
    let top = format!(
        concat!(
            "{{\"id\":\"{}\", \"parent\":\"{}\",\n",
            "  \"created\": \"2024-03-01T10:20:30.500+01:00\",\n",
            "  \"container_config\": {{\"Cmd\": [\"/bin/sh\",\"-c\",\"#(nop) \",\"CMD [\\\"sh\\\"]\"]}},\n",
            "  \"config\": {{\"Cmd\": [\"sh\"], \"Env\": [\"A=<b>&c\"]}},\n",
            "  \"architecture\": \"amd64\", \"os\": \"linux\", \"Throwaway\": true, \"Size\": 0,\n",
            "  \"docker_version\": \"20.10.5\", \"layer_id\": \"x\", \"parent_id\": \"y\"}}"
        ),
        id('3'),
        id('2')
    );
    let mid = format!(
        "{{\"id\":\"{}\",\"parent\":\"{}\",\"created\":\"2024-03-01T10:00:00Z\",\"container_config\":{{\"Cmd\":[\"/bin/sh -c echo hi && true\"]}},\"author\":\"Jane <j@x>\"}}",
        id('2'),
        id('1')
    );
    let base = format!(
        "{{\"id\":\"{}\",\"created\":\"2024-02-29T23:59:59.000000001Z\",\"comment\":\"base\",\"container_config\":{{\"Cmd\":null}}}}",
        id('1')
    );
    s1(
        vec![
            Digest::parse(EMPTY_LAYER_DIGEST).unwrap(),
            digest("b2"),
            digest("b1"),
        ],
        vec![top, mid, base],
    )
}

fn facts() -> Vec<LayerFacts> {
    vec![
        LayerFacts {
            diff_id: digest("d1"),
            size: 100,
        },
        LayerFacts {
            diff_id: digest("d2"),
            size: 200,
        },
    ]
}

const SAMPLE_CONFIG: &str = concat!(
    // `ToSchema2Config` deletes `throwaway` by its exact name only.
    "{\"Throwaway\":true,\"architecture\":\"amd64\",",
    "\"config\":{\"Cmd\":[\"sh\"],\"Env\":[\"A=\\u003cb\\u003e\\u0026c\"]},",
    "\"container_config\":{\"Cmd\":[\"/bin/sh\",\"-c\",\"#(nop) \",\"CMD [\\\"sh\\\"]\"]},",
    "\"created\":\"2024-03-01T10:20:30.500+01:00\",",
    "\"docker_version\":\"20.10.5\",",
    "\"history\":[",
    "{\"created\":\"2024-02-29T23:59:59.000000001Z\",\"comment\":\"base\"},",
    "{\"created\":\"2024-03-01T10:00:00Z\",\"author\":\"Jane \\u003cj@x\\u003e\",\"created_by\":\"/bin/sh -c echo hi \\u0026\\u0026 true\"},",
    "{\"created\":\"2024-03-01T10:20:30.5+01:00\",\"created_by\":\"/bin/sh -c #(nop)  CMD [\\\"sh\\\"]\",\"empty_layer\":true}",
    "],",
    "\"os\":\"linux\",",
    "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[",
    "\"sha256:d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1\",",
    "\"sha256:d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2\"]}}"
);

#[test]
fn sample_config_and_manifest() {
    let p = plan(&sample()).unwrap();
    assert_eq!(p.layers(), vec![digest("b1"), digest("b2")]);
    let u = p.build(&facts()).unwrap();
    assert_eq!(String::from_utf8(u.config.clone()).unwrap(), SAMPLE_CONFIG);
    assert_eq!(u.config_digest, Digest::sha256_of(SAMPLE_CONFIG.as_bytes()));
    let expected = format!(
        concat!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.v2+json\",",
            "\"config\":{{\"mediaType\":\"application/vnd.docker.container.image.v1+json\",\"size\":{},\"digest\":\"{}\"}},",
            "\"layers\":[",
            "{{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"size\":100,\"digest\":\"{}\"}},",
            "{{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"size\":200,\"digest\":\"{}\"}}]}}"
        ),
        SAMPLE_CONFIG.len(),
        Digest::sha256_of(SAMPLE_CONFIG.as_bytes()),
        digest("b1"),
        digest("b2"),
    );
    assert_eq!(String::from_utf8(u.manifest.clone()).unwrap(), expected);
    assert_eq!(u.manifest_digest, Digest::sha256_of(expected.as_bytes()));
    // The one-call form agrees, and the bytes are deterministic.
    assert_eq!(upgrade(&sample(), &facts()).unwrap(), u);
}

#[test]
fn only_empty_layers_omit_diff_ids_and_keep_an_empty_layer_list() {
    let top = format!(
        "{{\"id\":\"{}\",\"throwaway\":true,\"os\":\"linux\"}}",
        id('a')
    );
    let u = upgrade(
        &s1(vec![Digest::parse(EMPTY_LAYER_DIGEST).unwrap()], vec![top]),
        &[],
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(u.config).unwrap(),
        "{\"history\":[{\"created\":\"0001-01-01T00:00:00Z\",\"empty_layer\":true}],\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\"}}"
    );
    assert!(
        String::from_utf8(u.manifest)
            .unwrap()
            .ends_with("\"layers\":[]}")
    );
}

#[test]
fn consecutive_repeated_ids_are_merged_like_fix_manifest_layers() {
    // The top two entries share an ID: the newer one goes, with its fsLayer.
    let a = format!(
        "{{\"id\":\"{}\",\"parent\":\"{}\",\"os\":\"new\"}}",
        id('2'),
        id('1')
    );
    let b = format!(
        "{{\"id\":\"{}\",\"parent\":\"{}\",\"os\":\"old\"}}",
        id('2'),
        id('1')
    );
    let c = format!("{{\"id\":\"{}\"}}", id('1'));
    let p = plan(&s1(
        vec![digest("c3"), digest("c2"), digest("c1")],
        vec![a, b, c],
    ))
    .unwrap();
    assert_eq!(p.layers(), vec![digest("c1"), digest("c2")]);
    let f = vec![
        LayerFacts {
            diff_id: digest("e1"),
            size: 1,
        },
        LayerFacts {
            diff_id: digest("e2"),
            size: 2,
        },
    ];
    let config = String::from_utf8(p.build(&f).unwrap().config).unwrap();
    assert!(config.contains("\"os\":\"old\""), "{config}");
    assert_eq!(config.matches("\"created\"").count(), 2, "{config}");
}

#[test]
fn malformed_manifests_are_manifest_invalid() {
    let ok_base = format!("{{\"id\":\"{}\"}}", id('1'));
    let one = |h: String| s1(vec![digest("c1")], vec![h]);
    type Check = fn(&UpgradeError) -> bool;
    let cases: Vec<(Schema1, Check)> = vec![
        (s1(vec![], vec![]), |e| matches!(e, UpgradeError::NoLayers)),
        (s1(vec![digest("c1")], vec![]), |e| {
            matches!(e, UpgradeError::LengthMismatch { .. })
        }),
        (one("{\"id\":".into()), |e| {
            matches!(e, UpgradeError::InvalidJson { index: 0, .. })
        }),
        (
            one(format!("{{\"id\":\"{}\",\"throwaway\":\"yes\"}}", id('1'))),
            |e| {
                matches!(
                    e,
                    UpgradeError::WrongType {
                        field: "throwaway",
                        ..
                    }
                )
            },
        ),
        (
            one(format!(
                "{{\"id\":\"{}\",\"created\":\"yesterday\"}}",
                id('1')
            )),
            |e| matches!(e, UpgradeError::InvalidTimestamp { .. }),
        ),
        (one("{\"id\":\"ABC\"}".into()), |e| {
            matches!(e, UpgradeError::InvalidId(_))
        }),
        (
            one(format!(
                "{{\"id\":\"{}\",\"parent\":\"{}\"}}",
                id('1'),
                id('0')
            )),
            |e| matches!(e, UpgradeError::BaseHasParent),
        ),
        (
            s1(
                vec![digest("c2"), digest("c1")],
                vec![
                    format!("{{\"id\":\"{}\",\"parent\":\"{}\"}}", id('2'), id('9')),
                    ok_base.clone(),
                ],
            ),
            |e| matches!(e, UpgradeError::BrokenChain { .. }),
        ),
        (
            one(format!("{{\"id\":\"{}\",\"Size\":1.5}}", id('1'))),
            |e| matches!(e, UpgradeError::WrongType { field: "Size", .. }),
        ),
        // Go decodes `null` into an empty struct: its ID is "".
        (
            one("null".into()),
            |e| matches!(e, UpgradeError::InvalidId(id) if id.is_empty()),
        ),
    ];
    for (i, (m, check)) in cases.into_iter().enumerate() {
        let e = plan(&m).unwrap_err();
        assert!(check(&e), "case {i}: {e:?}");
        assert_eq!(e.error_code(), ErrorCode::ManifestInvalid, "case {i}");
    }
}

#[test]
fn diff_id_count_must_match_the_non_empty_layers() {
    let e = upgrade(&sample(), &facts()[..1]).unwrap_err();
    assert_eq!(
        e,
        UpgradeError::LayerCountMismatch {
            expected: 2,
            got: 1
        }
    );
    assert_eq!(e.error_code(), ErrorCode::ManifestInvalid);
}

#[test]
fn configs_of_docker_before_1_8_3_are_refused_as_unsupported() {
    let h = format!("{{\"id\":\"{}\",\"docker_version\":\"1.8.2\"}}", id('1'));
    let e = plan(&s1(vec![digest("c1")], vec![h])).unwrap_err();
    assert_eq!(e, UpgradeError::LegacyDockerVersion("1.8.2".into()));
    assert_eq!(e.error_code(), ErrorCode::Unsupported);
    let h = format!("{{\"id\":\"{}\",\"docker_version\":\"1.8.3\"}}", id('1'));
    assert!(plan(&s1(vec![digest("c1")], vec![h])).is_ok());
    assert!(version_less("1.7", "1.8.3"));
    assert!(!version_less("1.10.0", "1.8.3"));
    assert!(version_less("x.y", "1.8.3"));
}

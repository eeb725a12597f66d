#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::manifest::Manifest;

fn d(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn image(v: serde_json::Value) -> ImageManifest {
    Manifest::parse(serde_json::to_vec(&v).unwrap(), None)
        .unwrap()
        .as_image()
        .unwrap()
        .clone()
}

fn oci(layers: serde_json::Value) -> ImageManifest {
    image(json!({
        "schemaVersion": 2,
        "mediaType": mt::OCI_MANIFEST,
        "config": {"mediaType": mt::OCI_CONFIG, "digest": d(1), "size": 1166,
                   "annotations": {"a": "b"}},
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }))
}

#[test]
fn twin_keeps_blobs_and_changes_only_media_types_in_go_struct_order() {
    let m = oci(json!([
        {"mediaType": mt::OCI_LAYER_GZIP, "digest": d(2), "size": 10, "annotations": {"x": "y"}},
        {"mediaType": mt::OCI_LAYER_TAR, "digest": d(3), "size": 20},
        {"mediaType": mt::OCI_LAYER_ND_GZIP, "digest": d(4), "size": 30,
         "urls": ["https://example.com/a?x=1&y=<2>"]},
    ]));
    let twin = docker_twin(&m).unwrap();
    let expected = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","#,
            r#""config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":1166,"digest":"{}"}},"#,
            r#""layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":10,"digest":"{}"}},"#,
            r#"{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","size":20,"digest":"{}"}},"#,
            r#"{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","size":30,"digest":"{}","urls":["https://example.com/a?x=1\u0026y=\u003c2\u003e"]}}]}}"#
        ),
        d(1),
        d(2),
        d(3),
        d(4)
    );
    assert_eq!(String::from_utf8(twin.bytes.clone()).unwrap(), expected);
    assert_eq!(twin.digest, Digest::sha256_of(expected.as_bytes()));
    // It parses as the Docker manifest it claims to be, same blobs.
    let parsed = Manifest::parse(twin.bytes, None).unwrap();
    assert_eq!(parsed.media_type, crate::MediaType::Schema2);
    let back = parsed.as_image().unwrap();
    assert_eq!(back.config.digest, m.config.digest);
    assert_eq!(
        back.layers
            .iter()
            .map(|l| (&l.digest, l.size))
            .collect::<Vec<_>>(),
        m.layers
            .iter()
            .map(|l| (&l.digest, l.size))
            .collect::<Vec<_>>()
    );
}

#[test]
fn twin_of_an_image_without_layers_has_an_empty_layer_array() {
    let twin = docker_twin(&oci(json!([]))).unwrap();
    assert!(
        String::from_utf8(twin.bytes)
            .unwrap()
            .ends_with(r#","layers":[]}"#)
    );
}

#[test]
fn twin_refusals_name_the_layer() {
    let zstd = oci(json!([
        {"mediaType": mt::OCI_LAYER_GZIP, "digest": d(2), "size": 10},
        {"mediaType": mt::OCI_LAYER_ZSTD, "digest": d(3), "size": 20},
    ]));
    let e = docker_twin(&zstd).unwrap_err();
    assert_eq!(
        e,
        BridgeError::Zstd {
            digest: d(3).parse().unwrap(),
            media_type: mt::OCI_LAYER_ZSTD.into()
        }
    );
    assert!(e.to_string().contains(&d(3)), "{e}");
    assert_eq!(e.layer().unwrap().as_str(), d(3));
    assert_eq!(e.error_code(), ErrorCode::Unsupported);

    let odd =
        oci(json!([{"mediaType": "application/vnd.in-toto+json", "digest": d(5), "size": 1}]));
    assert!(matches!(
        docker_twin(&odd).unwrap_err(),
        BridgeError::UnknownLayer { .. }
    ));
    let ftp = oci(
        json!([{"mediaType": mt::OCI_LAYER_ND_TAR, "digest": d(6), "size": 1,
                          "urls": ["https://ok.example/x", "ftp://nope.example/x"]}]),
    );
    assert_eq!(
        docker_twin(&ftp).unwrap_err(),
        BridgeError::UnfetchableForeign {
            digest: d(6).parse().unwrap(),
            url: "ftp://nope.example/x".into()
        }
    );
    let artifact = image(json!({
        "schemaVersion": 2, "mediaType": mt::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.dev.cosign.artifact.sig.v1+json", "digest": d(1), "size": 2},
        "layers": [],
    }));
    assert!(matches!(
        docker_twin(&artifact).unwrap_err(),
        BridgeError::NotAnImage { .. }
    ));
}

#[test]
fn schema1_refuses_foreign_layers_with_urls_only() {
    let plain = oci(json!([{"mediaType": mt::OCI_LAYER_ND_GZIP, "digest": d(2), "size": 1}]));
    assert_eq!(check_schema1_layers(&plain), Ok(()));
    let far = oci(
        json!([{"mediaType": mt::OCI_LAYER_ND_GZIP, "digest": d(2), "size": 1,
                          "urls": ["https://far.example/l"]}]),
    );
    assert!(matches!(
        check_schema1_layers(&far),
        Err(BridgeError::ForeignInSchema1 { .. })
    ));
}

fn index(v: serde_json::Value) -> Index {
    Manifest::parse(serde_json::to_vec(&v).unwrap(), None)
        .unwrap()
        .as_index()
        .unwrap()
        .clone()
}

#[test]
fn list_keeps_runnable_entries_in_order_with_go_platform_order() {
    let idx = index(json!({
        "schemaVersion": 2, "mediaType": mt::OCI_INDEX,
        "manifests": [
            {"mediaType": mt::OCI_MANIFEST, "digest": d(1), "size": 100,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": mt::OCI_MANIFEST, "digest": d(2), "size": 200,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8",
                          "os.features": ["f1"], "os.version": "1"}},
            {"mediaType": mt::OCI_MANIFEST, "digest": d(3), "size": 300,
             "platform": {"architecture": "unknown", "os": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                             "vnd.docker.reference.digest": d(1)}},
            {"mediaType": mt::OCI_MANIFEST, "digest": d(4), "size": 300,
             "platform": {"architecture": "amd64", "os": "linux"},
             "artifactType": "application/spdx+json"},
            {"mediaType": mt::OCI_INDEX, "digest": d(5), "size": 300,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": mt::OCI_MANIFEST, "digest": d(6), "size": 300},
        ],
        "annotations": {"k": "v"},
    }));
    let kept: Vec<&Descriptor> = runnable_entries(&idx).collect();
    assert_eq!(
        kept.iter()
            .map(|d| d.digest.to_string())
            .collect::<Vec<_>>(),
        vec![d(1), d(2)]
    );
    let list = docker_list(&[
        ListEntry {
            entry: kept[0],
            digest: d(11).parse().unwrap(),
            size: 584,
        },
        ListEntry {
            entry: kept[1],
            digest: d(12).parse().unwrap(),
            size: 585,
        },
    ])
    .unwrap();
    let expected = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":["#,
            r#"{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":584,"digest":"{}","platform":{{"architecture":"amd64","os":"linux"}}}},"#,
            r#"{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":585,"digest":"{}","platform":{{"architecture":"arm64","os":"linux","os.version":"1","os.features":["f1"],"variant":"v8"}}}}]}}"#
        ),
        d(11),
        d(12)
    );
    assert_eq!(String::from_utf8(list.bytes.clone()).unwrap(), expected);
    let parsed = Manifest::parse(list.bytes, None).unwrap();
    assert_eq!(parsed.media_type, crate::MediaType::ManifestList);
    assert_eq!(
        parsed
            .as_index()
            .unwrap()
            .linux_amd64()
            .unwrap()
            .digest
            .as_str(),
        d(11)
    );
    assert_eq!(docker_list(&[]).unwrap_err(), BridgeError::NoImages);
}

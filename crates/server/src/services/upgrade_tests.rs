//! The upgrade service against the in-memory registry: layers hashed once
//! (gzip inflated, a plain tar as is), remembered across a "restart" (new
//! services over the same store), an evicted config rebuilt without the
//! upstream, and generated content linked to its repository.

use std::io::Write;

use regcache_formats::manifest::ManifestKind;
use regcache_formats::media_type::SCHEMA1;
use regcache_upstream::mock::{MemoryRegistry, Op};

use super::*;
use crate::metrics::Metrics;
use crate::services::Services;
use crate::services::links::Object;
use crate::services::test_support::{target_for, temp_services};

const REPO: &str = "team/old";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    services: Services,
    registry: Arc<MemoryRegistry>,
    target: Target,
    name: RepositoryName,
    schema1: Arc<Manifest>,
    /// (blob digest, diff ID), base first.
    layers: Vec<(Digest, Digest)>,
}

/// A Schema 1 image: a plain-tar base layer, a gzip layer, an empty step on top.
async fn fixture() -> Fixture {
    let (dir, services) = temp_services().await;
    let registry = Arc::new(MemoryRegistry::new("quay.io"));
    let base = b"base layer, an uncompressed tar".to_vec();
    let top_tar = vec![7u8; 50_000];
    let top = gzip(&top_tar);
    let base_digest = registry.put_blob(REPO, base.clone());
    let top_digest = registry.put_blob(REPO, top.clone());
    let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let v1 = |s: String| serde_json::to_string(&s).unwrap();
    let doc = format!(
        r#"{{"schemaVersion":1,"name":"{REPO}","tag":"v1","architecture":"amd64",
        "fsLayers":[{{"blobSum":"{e}"}},{{"blobSum":"{top_digest}"}},{{"blobSum":"{base_digest}"}}],
        "history":[{{"v1Compatibility":{h0}}},{{"v1Compatibility":{h1}}},{{"v1Compatibility":{h2}}}]}}"#,
        e = regcache_formats::schema1::EMPTY_LAYER_DIGEST,
        h0 = v1(format!(
            r#"{{"id":"{c}","parent":"{b}","os":"linux","throwaway":true,"config":{{"Cmd":["sh"]}}}}"#
        )),
        h1 = v1(format!(
            r#"{{"id":"{b}","parent":"{a}","container_config":{{"Cmd":["RUN x"]}}}}"#
        )),
        h2 = v1(format!(
            r#"{{"id":"{a}","created":"2020-01-01T00:00:00Z"}}"#
        )),
    );
    let m = Manifest::parse(doc.into_bytes(), Some(SCHEMA1)).unwrap();
    let schema1 = services.manifests.keep(m).await.unwrap();
    let target = target_for(registry.clone(), |_| {});
    Fixture {
        _dir: dir,
        services,
        registry,
        target,
        name: RepositoryName::parse(REPO).unwrap(),
        schema1,
        layers: vec![
            (base_digest, Digest::sha256_of(&base)),
            (top_digest, Digest::sha256_of(&top_tar)),
        ],
    }
}

fn config_of(m: &Manifest) -> Digest {
    let ManifestKind::Image(image) = &m.kind else {
        panic!("not an image manifest: {m:?}");
    };
    image.config.digest.clone()
}

#[tokio::test]
async fn layers_are_hashed_once_and_remembered_across_a_restart() {
    let f = fixture().await;
    let tag = Tag::parse("v1").unwrap();
    let up = &f.services.upgrade;
    let m = up
        .upgrade(&f.target, &f.name, &tag, &f.schema1)
        .await
        .unwrap();
    let image = m.as_image().unwrap();
    let blobs: Vec<&Digest> = image.layers.iter().map(|l| &l.digest).collect();
    assert_eq!(blobs, vec![&f.layers[0].0, &f.layers[1].0]);
    let config_digest = config_of(&m);
    let config = f
        .services
        .store
        .get(&config_digest)
        .await
        .unwrap()
        .unwrap()
        .into_bytes()
        .await
        .unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&config).unwrap();
    // The plain tar is hashed as it is; the gzip layer uncompressed.
    assert_eq!(
        cfg["rootfs"]["diff_ids"],
        serde_json::json!([f.layers[0].1.as_str(), f.layers[1].1.as_str()])
    );
    assert_eq!(f.registry.calls(Op::GetBlob), 2);
    for (blob, diff_id) in &f.layers {
        let r = f.services.store.diff_ids().get(blob).unwrap();
        assert_eq!(&r.diff_id, diff_id);
    }
    // Again: served from memory, no download.
    let again = up
        .upgrade(&f.target, &f.name, &tag, &f.schema1)
        .await
        .unwrap();
    assert_eq!(again.digest, m.digest);
    assert_eq!(f.registry.calls(Op::GetBlob), 2);

    // "Restart": fresh services over the same store, the config evicted,
    // the upstream's layers gone. The config is rebuilt from the logged
    // diff IDs, identical.
    let fresh = Services::new(
        f.services.store.clone(),
        regcache_formats::jws::SigningKey::generate(),
        Arc::new(Metrics::new()),
    );
    f.services.store.remove(&config_digest).await.unwrap();
    for (blob, _) in &f.layers {
        f.registry.delete_blob(REPO, blob);
    }
    let src = fresh
        .upgrade
        .generated_blob(&f.target, &f.name, &config_digest)
        .await
        .unwrap()
        .expect("the upgraded config is regcache's to serve");
    assert_eq!(src.into_bytes().await.unwrap(), config);
    assert_eq!(f.registry.calls(Op::GetBlob), 2, "no layer hashed again");
    // Not a generated blob: left to the upstream.
    assert!(
        fresh
            .upgrade
            .generated_blob(&f.target, &f.name, &f.layers[0].0)
            .await
            .unwrap()
            .is_none()
    );
    // Another repository did not get this upgrade.
    let other = RepositoryName::parse("team/other").unwrap();
    assert!(
        fresh
            .upgrade
            .mapping(&f.target, &other, &config_digest)
            .is_none()
    );
}

#[tokio::test]
async fn generated_content_belongs_to_its_repository_without_asking_the_upstream() {
    let f = fixture().await;
    let tag = Tag::parse("v1").unwrap();
    let m = f
        .services
        .upgrade
        .upgrade(&f.target, &f.name, &tag, &f.schema1)
        .await
        .unwrap();
    let config_digest = config_of(&m);
    // After a restart the learned links are gone; the mapping log says
    // whose they are. The upstream has neither.
    let fresh = Services::new(
        f.services.store.clone(),
        regcache_formats::jws::SigningKey::generate(),
        Arc::new(Metrics::new()),
    );
    let heads = f.registry.calls(Op::HeadBlob) + f.registry.calls(Op::HeadManifest);
    for (digest, object) in [
        (&config_digest, Object::Blob),
        (&m.digest, Object::Manifest),
    ] {
        fresh
            .links
            .check(&f.target, &f.name, digest, object)
            .await
            .unwrap_or_else(|e| panic!("{digest} should belong to {REPO}: {e:?}"));
    }
    assert_eq!(
        f.registry.calls(Op::HeadBlob) + f.registry.calls(Op::HeadManifest),
        heads,
        "the upstream was asked"
    );
    let other = RepositoryName::parse("team/other").unwrap();
    assert!(
        fresh
            .links
            .check(&f.target, &other, &config_digest, Object::Blob)
            .await
            .is_err(),
        "another repository must not read the generated config"
    );
}

#[tokio::test]
async fn a_malformed_schema1_is_manifest_invalid() {
    let f = fixture().await;
    let doc = format!(
        r#"{{"schemaVersion":1,"name":"{REPO}","tag":"v1","architecture":"amd64","fsLayers":[{{"blobSum":"{}"}}],"history":[{{"v1Compatibility":"{{\"id\":\"nothex\"}}"}}]}}"#,
        f.layers[0].0
    );
    let bad = Manifest::parse(doc.into_bytes(), Some(SCHEMA1)).unwrap();
    let e = f
        .services
        .upgrade
        .upgrade(&f.target, &f.name, &Tag::parse("v1").unwrap(), &bad)
        .await
        .unwrap_err();
    match e {
        Error::Client { status, error } => {
            assert_eq!(status, 400);
            assert_eq!(error.code, regcache_formats::ErrorCode::ManifestInvalid);
        }
        other => panic!("expected MANIFEST_INVALID, got {other:?}"),
    }
}

#[tokio::test]
async fn a_config_containers_image_would_re_encode_is_served_as_schema1() {
    let f = fixture().await;
    let doc = format!(
        r#"{{"schemaVersion":1,"name":"{REPO}","tag":"v1","architecture":"amd64","fsLayers":[{{"blobSum":"{}"}}],"history":[{{"v1Compatibility":"{{\"id\":\"{}\",\"docker_version\":\"1.8.2\"}}"}}]}}"#,
        f.layers[0].0,
        "d".repeat(64)
    );
    let legacy = Manifest::parse(doc.into_bytes(), Some(SCHEMA1)).unwrap();
    let got = f
        .services
        .upgrade
        .upgrade(&f.target, &f.name, &Tag::parse("v1").unwrap(), &legacy)
        .await
        .unwrap();
    assert_eq!(got.digest, legacy.digest);
    assert!(got.media_type.is_schema1());
    assert_eq!(f.registry.calls(Op::GetBlob), 0, "nothing to hash");
    assert!(f.services.store.mappings().is_empty());
}

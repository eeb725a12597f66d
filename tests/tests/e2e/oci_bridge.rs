//! Issue 13: OCI images for clients without the OCI types, against real
//! docker-registry 2.8 upstreams, with images pushed by skopeo.
//!
//! 1. Docker twins: a client that takes Docker Schema 2 but not OCI (Docker
//!    1.10–17.x) gets, by tag, exactly what `skopeo copy --format v2s2`
//!    (`--all` for an index) writes for the same image: manifest, list and
//!    every child, byte for byte; HEAD agrees with GET; the OCI digest still
//!    answers with the OCI bytes.
//! 2. OCI → Schema 1: an old client's by-tag pull of an OCI image (and of the
//!    linux/amd64 entry of an OCI index) gets what docker-registry 2.8 gives
//!    for the Docker twin pushed to a second registry under the same name
//!    and tag; signatures verify; every layer pulls.
//! 3. Every bridged digest pulls after a restart with the upstream stopped,
//!    and `regcache mappings export` lists it as `oci-to-docker`.
//! 4. Refusals (zstd layers, an index without linux/amd64 for an old client,
//!    a foreign layer for an old client) are registry errors naming the
//!    cause, and nothing is recorded for them; attestations are dropped from
//!    lists; `oci = "refuse"` is distribution's 404.

use regcache_tests::image::{History, ListEntry, config, media, oci_index};
use regcache_tests::policy_support::{PolicyRegcache, PolicyRegcacheOptions, PolicyRule};
use regcache_tests::{
    Fetched, Image, ImageGen, ManifestFormat, OciLayout, Platform, Registry, RegistryClient,
    RegistryOptions, Skopeo, SkopeoFormat, sha256_digest,
};
use serde_json::{Value, json};

use crate::support::{get_manifest, request_accepting};

/// Docker 1.10–17.x: Schema 2 and lists, no OCI types.
const DOCKER_17: &[&str] = &[
    media::SCHEMA1_SIGNED,
    "application/json",
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
];
/// Docker ≤ 1.9: no `Accept` at all.
const NO_ACCEPT: &[&str] = &[];
/// Everything (Docker 20.10's six lines).
const MODERN: &[&str] = &[
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::SCHEMA1_SIGNED,
    "application/json",
];

fn image(seed: u64, platform: Platform) -> Image {
    let layers = ImageGen::new(seed).layers(2);
    let history = [
        History::empty("ARG V=1"),
        History::layer("ADD rootfs.tar /"),
        History::empty("ENV A=<b> & c"),
        History::layer("RUN make"),
    ];
    let cfg = config(&platform, &layers, &history, Value::Null);
    Image::new(&cfg, layers, platform)
}

async fn head(client: &RegistryClient, repo: &str, reference: &str, accept: &[&str]) -> Fetched {
    let path = format!("/v2/{repo}/manifests/{reference}");
    request_accepting(client, reqwest::Method::HEAD, &path, accept).await
}

/// GET through regcache must be 200 with `content_type` and the body's own
/// digest, and HEAD must agree with it. Returns the GET.
async fn bridged(
    via: &RegistryClient,
    repo: &str,
    reference: &str,
    accept: &[&str],
    content_type: &str,
) -> Fetched {
    let got = get_manifest(via, repo, reference, accept).await;
    let what = format!("{repo}:{reference} with Accept {accept:?}");
    assert_eq!(got.status, 200, "{what}: {}", got.text());
    assert_eq!(got.content_type(), Some(content_type), "{what}");
    if content_type != media::SCHEMA1_SIGNED {
        assert_eq!(
            got.digest(),
            Some(sha256_digest(&got.body).as_str()),
            "{what}"
        );
    }
    let h = head(via, repo, reference, accept).await;
    assert_eq!(h.status, 200, "HEAD {what}");
    assert_eq!(h.content_type(), got.content_type(), "HEAD {what}");
    assert_eq!(h.digest(), got.digest(), "HEAD {what}");
    assert_eq!(
        h.header("content-length"),
        Some(got.body.len().to_string().as_str()),
        "HEAD {what}"
    );
    got
}

fn error_of(got: &Fetched) -> Value {
    let v: Value = serde_json::from_slice(&got.body)
        .unwrap_or_else(|e| panic!("not a registry error ({e}): {}", got.text()));
    v["errors"][0].clone()
}

struct Fixture {
    _work: tempfile::TempDir,
    registry: Registry,
    /// The second registry: the Docker twins pushed by skopeo, for distribution's Schema 1.
    twins: Registry,
    regcache: PolicyRegcache,
    app: Image,
    amd64: Image,
    /// skopeo's `--format v2s2` of `bridge/app:v1` and of `bridge/multi:v1` (`--all`).
    oracle_app: std::path::PathBuf,
    oracle_multi: std::path::PathBuf,
}

async fn fixture(rules: Vec<PolicyRule>) -> Fixture {
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions::default());
    let twins = Registry::start(RegistryOptions::default());
    let mut layout = OciLayout::create(&work.path().join("layout"));
    let app = image(1301, Platform::linux_amd64());
    let amd64 = image(1302, Platform::linux_amd64());
    let arm64 = image(1303, Platform::new("linux", "arm64", Some("v8")));
    layout.add_image("app", &app);
    layout.add_index("multi", &[&arm64, &amd64]);
    let skopeo = Skopeo::new();
    let up = |repo: &str| format!("docker://{}/{repo}:v1", registry.host());
    skopeo
        .copy(
            &layout.reference("app"),
            &up("bridge/app"),
            Some(SkopeoFormat::Oci),
            false,
        )
        .await;
    skopeo
        .copy(
            &layout.reference("multi"),
            &up("bridge/multi"),
            Some(SkopeoFormat::Oci),
            true,
        )
        .await;
    // The oracles, from the pushed OCI images.
    let oracle_app = work.path().join("oracle-app");
    let oracle_multi = work.path().join("oracle-multi");
    let dir = |p: &std::path::Path| format!("dir:{}", p.display());
    skopeo
        .copy(
            &up("bridge/app"),
            &dir(&oracle_app),
            Some(SkopeoFormat::V2s2),
            false,
        )
        .await;
    skopeo
        .copy(
            &up("bridge/multi"),
            &dir(&oracle_multi),
            Some(SkopeoFormat::V2s2),
            true,
        )
        .await;
    // distribution's Schema 1 reference: the twins under the same names and tags.
    for repo in ["bridge/app", "bridge/multi"] {
        skopeo
            .copy(
                &up(repo),
                &format!("docker://{}/{repo}:v1", twins.host()),
                Some(SkopeoFormat::V2s2),
                repo.ends_with("multi"),
            )
            .await;
    }
    let mut options = PolicyRegcacheOptions::new(registry.url());
    for rule in rules {
        options = options.rule(rule);
    }
    let regcache = PolicyRegcache::start(options);
    Fixture {
        _work: work,
        registry,
        twins,
        regcache,
        app,
        amd64,
        oracle_app,
        oracle_multi,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_twins_equal_skopeo_v2s2_byte_for_byte_and_survive_a_restart() {
    let mut fx = fixture(vec![]).await;
    let via = RegistryClient::new(fx.regcache.url());
    let direct = RegistryClient::new(fx.registry.url());

    // The image: its twin is skopeo's manifest.json.
    let oracle = std::fs::read(fx.oracle_app.join("manifest.json")).unwrap();
    let twin = bridged(&via, "bridge/app", "v1", DOCKER_17, media::DOCKER_MANIFEST).await;
    assert_eq!(
        twin.text(),
        String::from_utf8_lossy(&oracle),
        "the Docker twin differs from skopeo's --format v2s2"
    );
    let oci_digest = sha256_digest(&fx.app.oci_manifest());
    assert_ne!(twin.digest(), Some(oci_digest.as_str()));
    // The config and layers are the same blobs, and pull through regcache.
    let doc: Value = serde_json::from_slice(&twin.body).unwrap();
    assert_eq!(doc["config"]["digest"], json!(fx.app.config_digest()));
    for layer in doc["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        let blob = via.get_blob("bridge/app", digest).await.unwrap();
        assert_eq!(
            (blob.status, sha256_digest(&blob.body)),
            (200, digest.to_owned())
        );
    }
    // Modern clients still get the OCI manifest; its digest still means it.
    let modern = get_manifest(&via, "bridge/app", "v1", MODERN).await;
    assert_eq!(modern.content_type(), Some(media::OCI_MANIFEST));
    assert_eq!(modern.body, fx.app.oci_manifest());
    let by_digest = get_manifest(&via, "bridge/app", &oci_digest, MODERN).await;
    assert_eq!(by_digest.body, fx.app.oci_manifest());

    // The index: a Docker list of the twins, as skopeo --all --format v2s2 wrote it.
    let oracle_list = std::fs::read(fx.oracle_multi.join("manifest.json")).unwrap();
    let list = bridged(&via, "bridge/multi", "v1", DOCKER_17, media::DOCKER_LIST).await;
    assert_eq!(
        list.text(),
        String::from_utf8_lossy(&oracle_list),
        "the Docker list differs from skopeo's --all --format v2s2"
    );
    let list_doc: Value = serde_json::from_slice(&list.body).unwrap();
    let children: Vec<String> = list_doc["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(children.len(), 2);
    for child in &children {
        let file = fx
            .oracle_multi
            .join(format!("{}.manifest.json", &child["sha256:".len()..]));
        let expected = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("skopeo wrote no {}: {e}", file.display()));
        let got = bridged(
            &via,
            "bridge/multi",
            child,
            DOCKER_17,
            media::DOCKER_MANIFEST,
        )
        .await;
        assert_eq!(got.body, expected, "child {child}");
    }
    // A client without lists gets the linux/amd64 entry's twin.
    let single = bridged(
        &via,
        "bridge/multi",
        "v1",
        &[media::DOCKER_MANIFEST],
        media::DOCKER_MANIFEST,
    )
    .await;
    let amd64_twin = children
        .iter()
        .zip(list_doc["manifests"].as_array().unwrap())
        .find(|(_, m)| m["platform"]["architecture"] == "amd64")
        .unwrap()
        .0;
    assert_eq!(single.digest(), Some(amd64_twin.as_str()));
    assert_eq!(
        serde_json::from_slice::<Value>(&single.body).unwrap()["config"]["digest"],
        json!(fx.amd64.config_digest())
    );

    // After a restart with the upstream stopped, every bridged digest pulls.
    let bridged_digests: Vec<(&str, String, &str)> = vec![
        (
            "bridge/app",
            twin.digest().unwrap().to_owned(),
            media::DOCKER_MANIFEST,
        ),
        (
            "bridge/multi",
            list.digest().unwrap().to_owned(),
            media::DOCKER_LIST,
        ),
        ("bridge/multi", children[0].clone(), media::DOCKER_MANIFEST),
        ("bridge/multi", children[1].clone(), media::DOCKER_MANIFEST),
    ];
    fx.regcache.stop();
    fx.registry.kill();
    assert!(
        direct
            .get_manifest("bridge/app", "v1", MODERN)
            .await
            .is_err(),
        "the upstream should be down"
    );
    fx.regcache.start_again();
    for (repo, digest, content_type) in &bridged_digests {
        let got = bridged(&via, repo, digest, DOCKER_17, content_type).await;
        assert_eq!(got.digest(), Some(digest.as_str()));
    }
    let csv = fx.regcache.mappings_export("csv").await;
    for (repo, digest, _) in &bridged_digests {
        assert!(
            csv.lines()
                .any(|l| l.starts_with(&format!("{repo},v1,oci-to-docker,"))
                    && l.ends_with(digest.as_str())),
            "mappings export lacks {repo} {digest}:\n{csv}"
        );
    }
    assert!(
        csv.contains(&format!("bridge/app,v1,oci-to-docker,{oci_digest},")),
        "{csv}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_clients_get_distributions_schema1_of_the_docker_twin() {
    let fx = fixture(vec![]).await;
    let via = RegistryClient::new(fx.regcache.url());
    let twins = RegistryClient::new(fx.twins.url());
    for repo in ["bridge/app", "bridge/multi"] {
        let reference = get_manifest(&twins, repo, "v1", NO_ACCEPT).await;
        assert_eq!(reference.status, 200, "distribution: {}", reference.text());
        assert_eq!(reference.content_type(), Some(media::SCHEMA1_SIGNED));
        let got = bridged(&via, repo, "v1", NO_ACCEPT, media::SCHEMA1_SIGNED).await;
        assert_eq!(
            got.digest(),
            reference.digest(),
            "{repo}: Docker-Content-Digest"
        );
        let (ours, our_digest) = regcache_formats::jws::payload_of(&got.body).unwrap();
        let (theirs, _) = regcache_formats::jws::payload_of(&reference.body).unwrap();
        assert!(
            ours == theirs,
            "{repo}: canonical payloads differ\n--- distribution ---\n{}\n--- regcache ---\n{}",
            String::from_utf8_lossy(&theirs),
            String::from_utf8_lossy(&ours)
        );
        assert_eq!(Some(our_digest.as_str()), got.digest());
        regcache_formats::jws::verify(&got.body)
            .unwrap_or_else(|e| panic!("{repo}: signature does not verify: {e}"));
        let doc: Value = serde_json::from_slice(&got.body).unwrap();
        for layer in doc["fsLayers"].as_array().unwrap() {
            let digest = layer["blobSum"].as_str().unwrap();
            let blob = via.get_blob(repo, digest).await.unwrap();
            assert_eq!(
                (blob.status, sha256_digest(&blob.body)),
                (200, digest.to_owned()),
                "{repo}: layer {digest}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_cause_and_leave_nothing_behind() {
    let registry = Registry::start(RegistryOptions {
        allow_foreign_urls: true,
        ..RegistryOptions::default()
    });
    let direct = RegistryClient::new(registry.url());
    let mut g = ImageGen::new(1310);
    let amd64 = Platform::linux_amd64();
    let with = |layers: Vec<regcache_tests::image::Layer>, platform: &Platform| {
        let n = layers.len();
        let cfg = config(
            platform,
            &layers,
            &regcache_tests::image::default_history(n),
            Value::Null,
        );
        Image::new(&cfg, layers, platform.clone())
    };
    let zstd = with(vec![g.layer(), g.zstd_layer()], &amd64);
    let zstd_layer = zstd.layers[1].digest.clone();
    direct
        .push_image("refuse/zstd", "v1", &zstd, ManifestFormat::Oci)
        .await;
    let foreign = with(
        vec![
            g.foreign_layer(&["https://far.example.com/layer.tar.gz"]),
            g.layer(),
        ],
        &amd64,
    );
    let foreign_layer = foreign.layers[0].digest.clone();
    direct
        .push_image("refuse/foreign", "v1", &foreign, ManifestFormat::Oci)
        .await;
    let arm = with(vec![g.layer()], &Platform::new("linux", "arm64", None));
    direct
        .push_image(
            "refuse/armonly",
            &sha256_digest(&arm.oci_manifest()),
            &arm,
            ManifestFormat::Oci,
        )
        .await;
    direct
        .push_manifest(
            "refuse/armonly",
            "v1",
            media::OCI_INDEX,
            &oci_index(&[ListEntry::oci(&arm)]),
        )
        .await;
    // An index with BuildKit's attestation manifest next to the image.
    let app = with(vec![g.layer()], &amd64);
    let app_digest = direct
        .push_image(
            "refuse/attested",
            &sha256_digest(&app.oci_manifest()),
            &app,
            ManifestFormat::Oci,
        )
        .await;
    let statement_bytes: &[u8] = b"{\"_type\":\"https://in-toto.io/Statement/v0.1\"}";
    let statement = direct
        .push_blob(
            "refuse/attested",
            bytes::Bytes::from_static(statement_bytes),
        )
        .await;
    let att_config_bytes: &[u8] = b"{\"architecture\":\"unknown\",\"os\":\"unknown\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}";
    let att_config = direct
        .push_blob(
            "refuse/attested",
            bytes::Bytes::from_static(att_config_bytes),
        )
        .await;
    let attestation = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": att_config, "size": att_config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": statement, "size": statement_bytes.len(),
                    "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}}],
    }))
    .unwrap();
    let att_digest = direct
        .push_manifest(
            "refuse/attested",
            &sha256_digest(&attestation),
            media::OCI_MANIFEST,
            &attestation,
        )
        .await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": media::OCI_INDEX,
        "manifests": [
            {"mediaType": media::OCI_MANIFEST, "digest": app_digest, "size": app.oci_manifest().len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": media::OCI_MANIFEST, "digest": att_digest, "size": attestation.len(),
             "platform": {"architecture": "unknown", "os": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                             "vnd.docker.reference.digest": app_digest}},
        ],
    }))
    .unwrap();
    direct
        .push_manifest("refuse/attested", "v1", media::OCI_INDEX, &index)
        .await;

    let regcache = PolicyRegcache::start(
        PolicyRegcacheOptions::new(registry.url())
            .rule(PolicyRule::new(&["refuse/distribution"]).oci("refuse")),
    );
    let via = RegistryClient::new(regcache.url());

    // zstd: refused to both old kinds of client, naming the layer.
    for accept in [DOCKER_17, NO_ACCEPT] {
        let got = get_manifest(&via, "refuse/zstd", "v1", accept).await;
        let e = error_of(&got);
        assert_eq!(
            (got.status, e["code"].as_str()),
            (404, Some("UNSUPPORTED")),
            "{}",
            got.text()
        );
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(&zstd_layer) && message.contains("zstd"),
            "{message}"
        );
        assert_eq!(e["detail"]["layer"], json!(zstd_layer));
        let h = head(&via, "refuse/zstd", "v1", accept).await;
        assert_eq!(h.status, 404, "HEAD agrees with GET");
    }
    // A foreign layer: its twin is fine for Docker 17, but Schema 1 can't carry it.
    let twin = bridged(
        &via,
        "refuse/foreign",
        "v1",
        DOCKER_17,
        media::DOCKER_MANIFEST,
    )
    .await;
    let doc: Value = serde_json::from_slice(&twin.body).unwrap();
    assert_eq!(
        doc["layers"][0]["mediaType"],
        json!("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    );
    assert_eq!(
        doc["layers"][0]["urls"],
        json!(["https://far.example.com/layer.tar.gz"])
    );
    let got = get_manifest(&via, "refuse/foreign", "v1", NO_ACCEPT).await;
    let e = error_of(&got);
    assert_eq!(
        (got.status, e["code"].as_str()),
        (404, Some("UNSUPPORTED")),
        "{}",
        got.text()
    );
    assert!(
        e["message"].as_str().unwrap().contains(&foreign_layer),
        "{e}"
    );
    // No linux/amd64 image: an old client gets MANIFEST_UNKNOWN saying so;
    // Docker 17 gets the list and picks its own platform.
    let got = get_manifest(&via, "refuse/armonly", "v1", NO_ACCEPT).await;
    let e = error_of(&got);
    assert_eq!(
        (got.status, e["code"].as_str()),
        (404, Some("MANIFEST_UNKNOWN"))
    );
    assert!(
        e["message"].as_str().unwrap().contains("linux/amd64"),
        "{e}"
    );
    bridged(&via, "refuse/armonly", "v1", DOCKER_17, media::DOCKER_LIST).await;
    // Attestations are dropped from the Docker list.
    let list = bridged(&via, "refuse/attested", "v1", DOCKER_17, media::DOCKER_LIST).await;
    let doc: Value = serde_json::from_slice(&list.body).unwrap();
    let entries = doc["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}", list.text());
    assert_eq!(
        entries[0]["platform"],
        json!({"architecture": "amd64", "os": "linux"})
    );
    // `oci = "refuse"`: distribution's own 404.
    direct
        .push_image("refuse/distribution", "v1", &app, ManifestFormat::Oci)
        .await;
    let got = get_manifest(&via, "refuse/distribution", "v1", DOCKER_17).await;
    let e = error_of(&got);
    assert_eq!(
        (got.status, e["code"].as_str(), e["message"].as_str()),
        (
            404,
            Some("MANIFEST_UNKNOWN"),
            Some("OCI manifest found, but accept header does not support OCI manifests")
        )
    );
    let explained = regcache.policy_explain("refuse/distribution").await;
    assert!(
        explained.contains("oci = \"refuse\" (set by the rule)"),
        "{explained}"
    );

    // Nothing was generated for the refused images.
    let csv = regcache.mappings_export("csv").await;
    for repo in ["refuse/zstd", "refuse/distribution"] {
        assert!(!csv.contains(repo), "{repo} in mappings:\n{csv}");
    }
    assert!(
        !csv.lines()
            .any(|l| l.starts_with("refuse/foreign,v1,to-schema1")),
        "{csv}"
    );
}

//! Issue 4: the per-repository Schema 1 policy, end to end, against real
//! docker-registry 2.8 upstreams and real clients.
//!
//! 1. Simulated old clients (Docker ≤ 1.9: no `Accept`; Docker 1.10: one
//!    `Accept` line per type, an empty one included) pull by tag through
//!    regcache under `convert` and get exactly what distribution 2.8 gives
//!    them (digest, canonical payload, valid signature), then every layer.
//! 2. `schema1 = "reject"` and `schema1_digests = "reject"`: 404
//!    `UNSUPPORTED` in the registry error envelope; modern clients unaffected.
//! 3. A converted Schema 1 digest still pulls after regcache restarts with
//!    the upstream gone; `regcache mappings export` lists it; same key.
//! 4. `schema1 = "force"` with real modern clients: skopeo, podman, Docker
//!    20.10 and containerd 1.6 all pull the Schema 1 form and end up with
//!    the right layers.
//! 5. Pushes: skopeo `--format v2s1` through regcache; Docker 20.10 falling
//!    back to Schema 1 under `schema2_push = "reject"` only when its daemon
//!    has `DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE=1`; Schema 2 landing unchanged
//!    under `accept`.

use std::collections::BTreeSet;
use std::io::Read as _;

use regcache_tests::client::header_pairs;

use crate::support::{get_manifest, request_accepting};
use regcache_tests::clients::{
    CmdOutput, Containerd, DockerDaemon, DockerDaemonOptions, Podman, digest_after, docker_archive,
};
use regcache_tests::image::{History, ListEntry, config, media};
use regcache_tests::policy_support::{
    PolicyRegcache, PolicyRegcacheOptions, PolicyRule, PutRecorder,
};
use regcache_tests::skopeo::CopyOptions;
use regcache_tests::{
    EMPTY_LAYER_BYTES, EMPTY_LAYER_DIGEST, Fetched, Image, ImageGen, ManifestFormat, OciLayout,
    Platform, Registry, RegistryClient, RegistryOptions, Skopeo, SkopeoFormat, sha256_digest,
};
use serde_json::{Value, json};

/// Docker ≤ 1.9 (distribution client ≤ 2.2.1): no `Accept` at all.
const NO_ACCEPT: &[&str] = &[];
/// Docker 1.10 (distribution client 2.3): one line per registered type, in
/// this order, an empty value included.
const DOCKER_1_10: &[&str] = &[
    media::SCHEMA1_SIGNED,
    "application/json",
    "",
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
];
/// Docker 20.10 (six lines).
const MODERN: &[&str] = &[
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::SCHEMA1_SIGNED,
    "application/json",
];
/// containerd's single-line resolve `Accept`.
const CONTAINERD_RESOLVE: &[&str] = &["application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"];

/// Red Hat's message for Schema 1 digests (spec: `schema1_digests = "reject"`).
const RED_HAT_MESSAGE: &str = "V2 schema 1 manifest digests are no longer supported for image pulls. Use the equivalent V2 schema 2 manifest digest instead.";
/// What regcache says when it refuses a Schema 2 push.
const PUSH_REFUSAL: &str = "regcache accepts only Schema 1 manifests for";

/// An image whose config has `history` (layers for the non-empty steps).
fn image(seed: u64, platform: Platform, history: &[History]) -> Image {
    let layers = ImageGen::new(seed).layers(history.iter().filter(|h| !h.empty_layer).count());
    let cfg = config(&platform, &layers, history, Value::Null);
    Image::new(&cfg, layers, platform)
}

/// Two layers and three metadata-only steps around them.
fn image_with_empty_layers(seed: u64) -> Image {
    image(
        seed,
        Platform::linux_amd64(),
        &[
            History::empty("ARG VERSION=1"),
            History::layer("ADD rootfs.tar /"),
            History::empty("ENV APP_HOME=/srv"),
            History::layer("RUN make install"),
            History::empty("CMD [\"/bin/sh\"]"),
        ],
    )
}

fn regcache_with(upstream: &Registry, rules: Vec<PolicyRule>) -> PolicyRegcache {
    start_with(PolicyRegcacheOptions::new(upstream.url()), rules)
}

/// [`regcache_with`], with pushes passed through (`writes =
/// "client-credentials"`; the upstream is open, so they go anonymously).
fn push_regcache_with(upstream: &Registry, rules: Vec<PolicyRule>) -> PolicyRegcache {
    let options = PolicyRegcacheOptions::new(upstream.url()).writes("client-credentials");
    start_with(options, rules)
}

async fn head(client: &RegistryClient, path: &str, accept: &[&str]) -> Fetched {
    request_accepting(client, reqwest::Method::HEAD, path, accept).await
}

fn start_with(mut options: PolicyRegcacheOptions, rules: Vec<PolicyRule>) -> PolicyRegcache {
    for rule in rules {
        options = options.rule(rule);
    }
    PolicyRegcache::start(options)
}

/// The canonical payload and its digest (regcache's reading, cross-checked
/// with the harness's independent one).
fn payload(signed: &[u8], context: &str) -> (Vec<u8>, String) {
    let (payload, digest) = regcache_formats::jws::payload_of(signed).unwrap_or_else(|e| {
        panic!(
            "{context}: not a signed Schema 1 manifest ({e}):\n{}",
            String::from_utf8_lossy(signed)
        )
    });
    let independent = regcache_tests::jws::payload_of(signed)
        .unwrap_or_else(|e| panic!("{context}: harness payload recovery failed: {e}"));
    assert_eq!(payload, independent, "{context}: payload recoveries differ");
    (payload, digest.to_string())
}

/// Signatures verify; returns the key ids.
fn verified_kids(signed: &[u8], context: &str) -> Vec<String> {
    let verified = regcache_formats::jws::verify(signed).unwrap_or_else(|e| {
        panic!(
            "{context}: signature does not verify ({e}):\n{}",
            String::from_utf8_lossy(signed)
        )
    });
    verified.key_ids
}

/// The same manifest request to distribution and to regcache must get the
/// same answer: status 200, `Content-Type`, `Docker-Content-Digest`; the
/// same bytes, or for Schema 1 the same canonical payload (signatures
/// differ: each signs with its own key) and a valid signature. HEAD through
/// regcache must agree with its GET. Returns regcache's GET.
async fn same_answer(
    direct: &RegistryClient,
    via: &RegistryClient,
    repo: &str,
    reference: &str,
    accept: &[&str],
) -> Fetched {
    let context = format!("GET /v2/{repo}/manifests/{reference} with Accept {accept:?}");
    let d = get_manifest(direct, repo, reference, accept).await;
    assert_eq!(
        d.status,
        200,
        "{context}: distribution itself answered {}: {}",
        d.status,
        d.text()
    );
    let v = get_manifest(via, repo, reference, accept).await;
    assert_eq!(
        v.status,
        200,
        "{context} through regcache: {} {}",
        v.status,
        v.text()
    );
    assert_eq!(
        v.content_type(),
        d.content_type(),
        "{context}: Content-Type (regcache vs distribution)"
    );
    assert_eq!(
        v.digest(),
        d.digest(),
        "{context}: Docker-Content-Digest (regcache vs distribution)"
    );
    if v.content_type() == Some(media::SCHEMA1_SIGNED) {
        let (dp, dd) = payload(&d.body, &format!("{context} (distribution)"));
        let (vp, vd) = payload(&v.body, &format!("{context} (regcache)"));
        assert!(
            vp == dp,
            "{context}: canonical payloads differ\n--- distribution ---\n{}\n--- regcache ---\n{}",
            String::from_utf8_lossy(&dp),
            String::from_utf8_lossy(&vp)
        );
        assert_eq!(
            Some(dd.as_str()),
            d.digest(),
            "{context}: distribution digest"
        );
        assert_eq!(Some(vd.as_str()), v.digest(), "{context}: payload digest");
        verified_kids(&v.body, &format!("{context} (regcache)"));
    } else {
        assert!(
            v.body == d.body,
            "{context}: bodies differ\n--- distribution ---\n{}\n--- regcache ---\n{}",
            d.text(),
            v.text()
        );
    }
    let h = head(via, &format!("/v2/{repo}/manifests/{reference}"), accept).await;
    assert_eq!(
        h.status,
        200,
        "HEAD of {context}: {:?}",
        header_pairs(&h.headers)
    );
    assert_eq!(h.content_type(), v.content_type(), "HEAD of {context}");
    assert_eq!(h.digest(), v.digest(), "HEAD of {context}");
    assert_eq!(
        h.header("content-length"),
        Some(v.body.len().to_string().as_str()),
        "HEAD of {context}: Content-Length must be what GET sends"
    );
    assert!(h.body.is_empty(), "HEAD of {context} has a body");
    v
}

/// `fsLayers[].blobSum` of a signed Schema 1 manifest, in document order
/// (top layer first).
fn fs_layers(signed: &[u8]) -> Vec<String> {
    let doc: Value = serde_json::from_slice(signed).unwrap();
    doc["fsLayers"]
        .as_array()
        .unwrap_or_else(|| panic!("no fsLayers: {}", String::from_utf8_lossy(signed)))
        .iter()
        .map(|l| l["blobSum"].as_str().unwrap().to_owned())
        .collect()
}

/// `throwaway` of each `history[].v1Compatibility`, in document order.
fn throwaways(signed: &[u8]) -> Vec<bool> {
    let doc: Value = serde_json::from_slice(signed).unwrap();
    doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let v1: Value = serde_json::from_str(h["v1Compatibility"].as_str().unwrap()).unwrap();
            v1["throwaway"].as_bool().unwrap_or(false)
        })
        .collect()
}

/// The Schema 1 blob list distribution's conversion of `image` produces:
/// one entry per history step, top first, the empty-layer blob for
/// metadata-only steps.
fn expected_fs_layers(image: &Image) -> Vec<String> {
    let cfg: Value = serde_json::from_slice(&image.config).unwrap();
    let mut layers = image.layers.iter();
    let mut out: Vec<String> = cfg["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            if h["empty_layer"].as_bool().unwrap_or(false) {
                EMPTY_LAYER_DIGEST.to_owned()
            } else {
                layers.next().unwrap().digest.clone()
            }
        })
        .collect();
    out.reverse();
    out
}

/// GETs a blob through `client` and checks its bytes hash to `digest`.
async fn pull_blob(client: &RegistryClient, repo: &str, digest: &str) {
    let got = client
        .get_blob(repo, digest)
        .await
        .unwrap_or_else(|e| panic!("GET blob {digest} in {repo}: {e}"));
    assert_eq!(
        got.status,
        200,
        "GET /v2/{repo}/blobs/{digest} through {}: {}",
        client.base_url(),
        got.text()
    );
    assert_eq!(
        sha256_digest(&got.body),
        digest,
        "GET /v2/{repo}/blobs/{digest}: body does not hash to the digest"
    );
    if digest == EMPTY_LAYER_DIGEST {
        assert_eq!(&got.body[..], &EMPTY_LAYER_BYTES[..]);
    }
}

/// What a simulated old client does for `repo:tag`: the manifest by tag (and
/// for a list, the linux/amd64 child by digest), each compared with
/// distribution, then every blob through regcache. Returns the by-tag answer.
async fn pull_like_client(
    direct: &RegistryClient,
    via: &RegistryClient,
    repo: &str,
    tag: &str,
    accept: &[&str],
) -> Fetched {
    let top = same_answer(direct, via, repo, tag, accept).await;
    let mut blobs: Vec<String> = Vec::new();
    let mut manifest = top.clone();
    if manifest.content_type() == Some(media::DOCKER_LIST) {
        let list: Value = serde_json::from_slice(&manifest.body).unwrap();
        let child = list["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == "amd64" && m["platform"]["os"] == "linux")
            .unwrap_or_else(|| panic!("{repo}:{tag}: no linux/amd64 entry"))["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        manifest = same_answer(direct, via, repo, &child, accept).await;
    }
    match manifest.content_type() {
        Some(media::SCHEMA1_SIGNED) => blobs.extend(fs_layers(&manifest.body)),
        Some(media::DOCKER_MANIFEST) => {
            let doc: Value = serde_json::from_slice(&manifest.body).unwrap();
            blobs.push(doc["config"]["digest"].as_str().unwrap().to_owned());
            for layer in doc["layers"].as_array().unwrap() {
                blobs.push(layer["digest"].as_str().unwrap().to_owned());
            }
        }
        other => panic!("{repo}:{tag}: unexpected manifest type {other:?}"),
    }
    let unique: BTreeSet<String> = blobs.into_iter().collect();
    for digest in &unique {
        pull_blob(via, repo, digest).await;
    }
    top
}

/// Checks a 404 `UNSUPPORTED` in distribution's error envelope:
/// `{"errors":[{"code":"UNSUPPORTED","message":…,"detail":{…}}]}` and
/// nothing else. Returns (message, detail).
fn unsupported(answer: &Fetched, context: &str) -> (String, Value) {
    assert_eq!(
        answer.status,
        404,
        "{context}: want 404 UNSUPPORTED, got {} {:?}: {}",
        answer.status,
        header_pairs(&answer.headers),
        answer.text()
    );
    assert_eq!(
        answer.content_type(),
        Some("application/json; charset=utf-8"),
        "{context}: error Content-Type"
    );
    assert_eq!(
        answer.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{context}: Docker-Distribution-API-Version on the error"
    );
    let body: Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("{context}: error body is not JSON ({e}): {}", answer.text()));
    let top = body
        .as_object()
        .unwrap_or_else(|| panic!("{context}: {body}"));
    assert_eq!(
        top.keys().collect::<Vec<_>>(),
        vec!["errors"],
        "{context}: envelope: {body}"
    );
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{context}: one error: {body}");
    let error = errors[0].as_object().unwrap();
    let keys: BTreeSet<&str> = error.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["code", "detail", "message"]),
        "{context}: error members: {body}"
    );
    assert_eq!(error["code"], "UNSUPPORTED", "{context}: {body}");
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{context}: message is not a string: {body}"))
        .to_owned();
    (message, error["detail"].clone())
}

/// Layer digests a client should end up with: the image's, in order.
fn layer_digests(image: &Image) -> Vec<String> {
    image.layer_digests()
}

fn diff_ids(image: &Image) -> Vec<String> {
    image.layers.iter().map(|l| l.diff_id.clone()).collect()
}

/// The `config` member of the image config (Env, Cmd, …).
fn container_config(image: &Image) -> Value {
    let cfg: Value = serde_json::from_slice(&image.config).unwrap();
    cfg["config"].clone()
}

/// Decompresses a gzip blob and returns the sha256 of the tar (a diff id).
fn gunzip_digest(blob: &[u8]) -> String {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(blob)
        .read_to_end(&mut tar)
        .unwrap_or_else(|e| panic!("blob is not gzip: {e}"));
    sha256_digest(&tar)
}

// ---------------------------------------------------------------------------
// 1. Simulated old clients under `convert`
// ---------------------------------------------------------------------------

#[tokio::test]
async fn old_clients_pull_by_tag_exactly_as_from_distribution() {
    let registry = Registry::start(RegistryOptions::default());
    let direct = RegistryClient::new(registry.url());

    // Several Schema 2 images with empty layers (leading, interleaved,
    // trailing), one without, and a Docker list whose linux/amd64 entry is
    // third.
    let alpha = image_with_empty_layers(4001);
    let beta = image(
        4002,
        Platform::linux_amd64(),
        &[
            History::layer("ADD one.tar /"),
            History::empty("LABEL a=b"),
            History::empty("ENTRYPOINT [\"/one\"]"),
        ],
    );
    let gamma = image(
        4003,
        Platform::linux_amd64(),
        &[
            History::layer("ADD a /"),
            History::layer("ADD b /"),
            History::layer("ADD c /"),
        ],
    );
    let arm64 = image(
        4004,
        Platform::new("linux", "arm64", Some("v8")),
        &[History::layer("ADD arm /"), History::empty("CMD x")],
    );
    let armv7 = image(
        4005,
        Platform::new("linux", "arm", Some("v7")),
        &[History::layer("ADD armhf /")],
    );
    let amd64 = image_with_empty_layers(4006);
    direct
        .push_image("old/alpha", "1.0", &alpha, ManifestFormat::Docker)
        .await;
    // The same image under a second tag: a different Schema 1 document.
    direct
        .push_image("old/alpha", "other", &alpha, ManifestFormat::Docker)
        .await;
    direct
        .push_image("old/beta", "latest", &beta, ManifestFormat::Docker)
        .await;
    direct
        .push_image("old/gamma", "v3", &gamma, ManifestFormat::Docker)
        .await;
    direct
        .push_docker_list(
            "old/multi",
            "2024",
            &[&arm64, &armv7, &amd64],
            &[
                ListEntry::docker(&arm64),
                ListEntry::docker(&armv7),
                ListEntry::docker(&amd64),
            ],
        )
        .await;

    let regcache = regcache_with(
        &registry,
        vec![PolicyRule::new(&["old/**"]).schema1("convert")],
    );
    let via = RegistryClient::new(regcache.url());

    // The v2 ping an old engine insists on.
    let ping = via
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    assert_eq!(ping.status, 200, "GET /v2/: {}", ping.text());
    assert_eq!(
        ping.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    let kids = regcache.logged_kids();
    let cases: [(&str, &str, &Image); 5] = [
        ("old/alpha", "1.0", &alpha),
        ("old/alpha", "other", &alpha),
        ("old/beta", "latest", &beta),
        ("old/gamma", "v3", &gamma),
        ("old/multi", "2024", &amd64),
    ];
    let mut schema1_digests = Vec::new();
    for (repo, tag, image) in cases {
        // Docker ≤ 1.9: Schema 1, converted.
        let got = pull_like_client(&direct, &via, repo, tag, NO_ACCEPT).await;
        assert_eq!(
            got.content_type(),
            Some(media::SCHEMA1_SIGNED),
            "{repo}:{tag} without Accept"
        );
        assert_eq!(
            fs_layers(&got.body),
            expected_fs_layers(image),
            "{repo}:{tag}: fsLayers (top first; the empty-layer blob for metadata-only steps)"
        );
        let used = verified_kids(&got.body, repo);
        assert!(
            !kids.is_empty() && used.iter().all(|k| kids.contains(k)),
            "{repo}:{tag}: signed with {used:?}, regcache logged its key as {kids:?}"
        );
        schema1_digests.push(got.digest().unwrap().to_owned());

        // Docker 1.10: accepts Schema 2 and lists (lines incl. an empty one).
        let got = pull_like_client(&direct, &via, repo, tag, DOCKER_1_10).await;
        let want = if repo == "old/multi" {
            media::DOCKER_LIST
        } else {
            media::DOCKER_MANIFEST
        };
        assert_eq!(
            got.content_type(),
            Some(want),
            "{repo}:{tag} with Docker 1.10's Accept"
        );
    }
    assert_ne!(
        schema1_digests[0], schema1_digests[1],
        "the same image under two tags has two Schema 1 digests"
    );
}

// ---------------------------------------------------------------------------
// 2. `reject` and `schema1_digests = "reject"`
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reject_policies_answer_unsupported_in_the_registry_envelope() {
    let registry = Registry::start(RegistryOptions {
        schema1_enabled: true,
        ..RegistryOptions::default()
    });
    let direct = RegistryClient::new(registry.url());
    let app = image_with_empty_layers(4021);
    let arm64 = image(
        4022,
        Platform::new("linux", "arm64", Some("v8")),
        &[History::layer("ADD arm /")],
    );
    let amd64 = image_with_empty_layers(4023);
    let app_s2 = direct
        .push_image("deny/app", "stable", &app, ManifestFormat::Docker)
        .await;
    let list_digest = direct
        .push_docker_list(
            "deny/multi",
            "stable",
            &[&arm64, &amd64],
            &[ListEntry::docker(&arm64), ListEntry::docker(&amd64)],
        )
        .await;
    let amd64_s2 = sha256_digest(&amd64.docker_manifest());
    let nodigest_s2 = direct
        .push_image("nodigest/app", "stable", &app, ManifestFormat::Docker)
        .await;

    // Genuine Schema 1 manifests, pushed as v2s1 by skopeo.
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&work.path().join("layout"));
    let legacy = image_with_empty_layers(4024);
    layout.add_image("legacy", &legacy);
    let skopeo = Skopeo::new();
    for repo in ["nodigest/legacy", "open/legacy"] {
        skopeo
            .copy(
                &layout.reference("legacy"),
                &format!("docker://{}/{repo}:v1", registry.host()),
                Some(SkopeoFormat::V2s1),
                false,
            )
            .await;
    }

    let regcache = regcache_with(
        &registry,
        vec![
            PolicyRule::new(&["deny/*"]).schema1("reject"),
            PolicyRule::new(&["nodigest/*"]).schema1_digests("reject"),
        ],
    );
    let via = RegistryClient::new(regcache.url());

    // The operator's view of the two rules.
    let explained = regcache.policy_explain("deny/app").await;
    assert!(
        explained.contains("matched policy rule #1")
            && explained.contains("schema1 = \"reject\" (set by the rule)"),
        "regcache policy explain deny/app:\n{explained}"
    );
    let explained = regcache.policy_explain("nodigest/app").await;
    assert!(
        explained.contains("matched policy rule #2")
            && explained.contains("schema1_digests = \"reject\" (set by the rule)")
            && explained.contains("schema1 = \"convert\" (default)"),
        "regcache policy explain nodigest/app:\n{explained}"
    );

    // (a) An old client pulling a Schema 2 image by tag.
    for accept in [NO_ACCEPT, &[media::SCHEMA1_SIGNED][..]] {
        let context = format!("deny/app:stable with Accept {accept:?}");
        let got = get_manifest(&via, "deny/app", "stable", accept).await;
        let (message, detail) = unsupported(&got, &context);
        for needle in ["deny/app", "stable", app_s2.as_str()] {
            assert!(
                message.contains(needle),
                "{context}: message should name {needle}: {message}"
            );
        }
        assert_eq!(
            detail,
            json!({"repository": "deny/app", "tag": "stable", "schema2_digest": app_s2}),
            "{context}: detail"
        );
        let h = head(&via, "/v2/deny/app/manifests/stable", accept).await;
        assert_eq!(h.status, 404, "HEAD of {context}");
        assert!(h.body.is_empty());
    }

    // (b) …and a list: the linux/amd64 entry is what would have been converted.
    let got = get_manifest(&via, "deny/multi", "stable", NO_ACCEPT).await;
    let (message, detail) = unsupported(&got, "deny/multi:stable without Accept");
    for needle in [
        "deny/multi",
        "stable",
        amd64_s2.as_str(),
        list_digest.as_str(),
    ] {
        assert!(
            message.contains(needle),
            "deny/multi: message should name {needle}: {message}"
        );
    }
    assert_eq!(
        detail,
        json!({"repository": "deny/multi", "tag": "stable", "schema2_digest": amd64_s2})
    );

    // (c) Clients that accept Schema 2 are unaffected.
    for accept in [DOCKER_1_10, MODERN, CONTAINERD_RESOLVE] {
        let got = same_answer(&direct, &via, "deny/app", "stable", accept).await;
        assert_eq!(got.digest(), Some(app_s2.as_str()));
        let got = same_answer(&direct, &via, "deny/multi", "stable", accept).await;
        assert_eq!(got.digest(), Some(list_digest.as_str()));
    }

    // (d) schema1_digests = reject: by tag an old client still gets the
    // conversion, but regcache's own Schema 1 digest is refused, naming the
    // Schema 2 digest it came from.
    let converted = same_answer(&direct, &via, "nodigest/app", "stable", NO_ACCEPT).await;
    assert_eq!(converted.content_type(), Some(media::SCHEMA1_SIGNED));
    let generated = converted.digest().unwrap().to_owned();
    for accept in [NO_ACCEPT, MODERN] {
        let context = format!("nodigest/app@{generated} (regcache-generated) with {accept:?}");
        let got = get_manifest(&via, "nodigest/app", &generated, accept).await;
        let (message, detail) = unsupported(&got, &context);
        assert!(
            message.starts_with(RED_HAT_MESSAGE),
            "{context}: message: {message}"
        );
        assert!(
            message.contains(&nodigest_s2),
            "{context}: the equivalent Schema 2 digest is known and should be named: {message}"
        );
        assert_eq!(detail["repository"], "nodigest/app", "{context}: {detail}");
        assert_eq!(
            detail["schema1_digest"],
            generated.as_str(),
            "{context}: {detail}"
        );
        assert_eq!(
            detail["schema2_digest"],
            nodigest_s2.as_str(),
            "{context}: {detail}"
        );
    }
    let h = head(
        &via,
        &format!("/v2/nodigest/app/manifests/{generated}"),
        NO_ACCEPT,
    )
    .await;
    assert_eq!(h.status, 404, "HEAD nodigest/app@{generated}");
    let got = same_answer(&direct, &via, "nodigest/app", &nodigest_s2, MODERN).await;
    assert_eq!(got.content_type(), Some(media::DOCKER_MANIFEST));

    // (e) …and a genuine upstream Schema 1 manifest by its digest.
    let upstream_s1 = get_manifest(&direct, "nodigest/legacy", "v1", MODERN).await;
    assert_eq!(
        upstream_s1.content_type(),
        Some(media::SCHEMA1_SIGNED),
        "skopeo --format v2s1 stored Schema 1: {}",
        upstream_s1.text()
    );
    let legacy_digest = upstream_s1.digest().unwrap().to_owned();
    for accept in [NO_ACCEPT, MODERN] {
        let context = format!("nodigest/legacy@{legacy_digest} (pushed as v2s1) with {accept:?}");
        let got = get_manifest(&via, "nodigest/legacy", &legacy_digest, accept).await;
        let (message, detail) = unsupported(&got, &context);
        assert_eq!(message, RED_HAT_MESSAGE, "{context}");
        assert_eq!(detail["repository"], "nodigest/legacy", "{context}");
        assert_eq!(
            detail["schema1_digest"],
            legacy_digest.as_str(),
            "{context}"
        );
    }

    // The rule is about digests: by tag the stored Schema 1 manifest serves.
    let by_tag = same_answer(&direct, &via, "nodigest/legacy", "v1", NO_ACCEPT).await;
    assert_eq!(by_tag.digest(), Some(legacy_digest.as_str()));

    // Control: the same kind of digest in a repository without the rule.
    let open_digest = get_manifest(&direct, "open/legacy", "v1", MODERN)
        .await
        .digest()
        .unwrap()
        .to_owned();
    let got = same_answer(&direct, &via, "open/legacy", &open_digest, NO_ACCEPT).await;
    assert_eq!(got.content_type(), Some(media::SCHEMA1_SIGNED));
}

// ---------------------------------------------------------------------------
// 3. Pull by converted digest after a restart, upstream gone
// ---------------------------------------------------------------------------

#[tokio::test]
async fn converted_digest_pulls_after_restart_with_the_upstream_gone() {
    let mut registry = Registry::start(RegistryOptions::default());
    let direct = RegistryClient::new(registry.url());
    let app = image_with_empty_layers(4031);
    let app_s2 = direct
        .push_image("keep/app", "1.2", &app, ManifestFormat::Docker)
        .await;
    let arm64 = image(
        4032,
        Platform::new("linux", "arm64", Some("v8")),
        &[History::layer("ADD arm /")],
    );
    let amd64 = image_with_empty_layers(4033);
    direct
        .push_docker_list(
            "keep/multi",
            "1.2",
            &[&arm64, &amd64],
            &[ListEntry::docker(&arm64), ListEntry::docker(&amd64)],
        )
        .await;
    let amd64_s2 = sha256_digest(&amd64.docker_manifest());

    let data = tempfile::tempdir().unwrap();
    let mut regcache = PolicyRegcache::start(
        PolicyRegcacheOptions::new(registry.url()).data_dir(data.path().join("data")),
    );
    let via = RegistryClient::new(regcache.url());

    // The old client pulls by tag (manifest and layers) before the restart.
    let mut before = Vec::new();
    for repo in ["keep/app", "keep/multi"] {
        let got = pull_like_client(&direct, &via, repo, "1.2", NO_ACCEPT).await;
        assert_eq!(got.content_type(), Some(media::SCHEMA1_SIGNED));
        before.push((repo, got));
    }
    let kid_before = verified_kids(&before[0].1.body, "before restart");

    let status = regcache.stop();
    assert!(status.success(), "regcache exited {status} on SIGTERM");
    registry.kill();
    assert!(
        direct
            .request(reqwest::Method::GET, "/v2/", &[], None)
            .await
            .is_err(),
        "the registry is still answering"
    );
    regcache.start_again();
    let via = RegistryClient::new(regcache.url());

    for (repo, old) in &before {
        let d = old.digest().unwrap();
        for accept in [NO_ACCEPT, MODERN] {
            let context = format!("after restart, upstream down: GET {repo}@{d} with {accept:?}");
            let got = get_manifest(&via, repo, d, accept).await;
            assert_eq!(
                got.status,
                200,
                "{context}: {} {}\nregcache log:\n{}",
                got.status,
                got.text(),
                regcache.log()
            );
            assert_eq!(got.content_type(), Some(media::SCHEMA1_SIGNED), "{context}");
            assert_eq!(got.digest(), Some(d), "{context}");
            let (_, payload_digest) = payload(&got.body, &context);
            assert_eq!(payload_digest, d, "{context}: payload digest");
            assert_eq!(
                verified_kids(&got.body, &context),
                kid_before,
                "{context}: signing key kid across the restart"
            );
            let h = head(&via, &format!("/v2/{repo}/manifests/{d}"), accept).await;
            assert_eq!(h.status, 200, "HEAD {context}");
            assert_eq!(h.digest(), Some(d), "HEAD {context}");
        }
        // The layers the client pulled before are still served, the
        // empty-layer blob included.
        for blob in fs_layers(&old.body)
            .into_iter()
            .collect::<BTreeSet<String>>()
        {
            pull_blob(&via, repo, &blob).await;
        }
    }
    // By tag too: the tag index and the conversion survive the restart
    // (within the tag TTL, and stale-if-error beyond it).
    for (repo, old) in &before {
        let context = format!("after restart, upstream down: GET {repo}:1.2 without Accept");
        let got = get_manifest(&via, repo, "1.2", NO_ACCEPT).await;
        assert_eq!(
            got.status,
            200,
            "{context}: {} {}\nregcache log:\n{}",
            got.status,
            got.text(),
            regcache.log()
        );
        assert_eq!(got.content_type(), Some(media::SCHEMA1_SIGNED), "{context}");
        assert_eq!(got.digest(), old.digest(), "{context}");
    }
    let kids = regcache.logged_kids();
    assert!(
        kids.len() >= 2 && kids.iter().all(|k| k == &kids[0]),
        "regcache logged these signing key kids over two starts: {kids:?}"
    );

    let csv = regcache.mappings_export("redhat").await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("repository,tag,schema1_digest,schema2_digest"),
        "{csv}"
    );
    for (repo, old, s2) in [
        ("keep/app", &before[0].1, &app_s2),
        ("keep/multi", &before[1].1, &amd64_s2),
    ] {
        let row = format!("{repo},1.2,{},{s2}", old.digest().unwrap());
        assert!(
            lines.contains(&row.as_str()),
            "mappings export should list {row}:\n{csv}"
        );
    }
}

// ---------------------------------------------------------------------------
// 4. `force` with real modern clients
// ---------------------------------------------------------------------------

/// A registry with one Schema 2 image under `repo:tag` and regcache forcing
/// Schema 1 for `forced/**`.
struct Forced {
    registry: Registry,
    regcache: PolicyRegcache,
    image: Image,
    repo: String,
    tag: &'static str,
    /// distribution's conversion of `repo:tag` (what a no-Accept client
    /// gets directly): regcache must serve this document to everyone.
    schema1_digest: String,
    schema1_payload: Vec<u8>,
}

impl Forced {
    /// `127.0.0.1:PORT/forced/NAME:TAG` through regcache.
    fn reference(&self) -> String {
        format!("{}/{}:{}", self.regcache.host(), self.repo, self.tag)
    }
}

async fn forced(name: &str, seed: u64) -> Forced {
    let registry = Registry::start(RegistryOptions::default());
    let direct = RegistryClient::new(registry.url());
    let image = image_with_empty_layers(seed);
    let repo = format!("forced/{name}");
    let tag = "1.0";
    direct
        .push_image(&repo, tag, &image, ManifestFormat::Docker)
        .await;
    let converted = get_manifest(&direct, &repo, tag, NO_ACCEPT).await;
    assert_eq!(converted.content_type(), Some(media::SCHEMA1_SIGNED));
    let (schema1_payload, schema1_digest) = payload(&converted.body, "distribution's conversion");
    let regcache = regcache_with(
        &registry,
        vec![PolicyRule::new(&["forced/**"]).schema1("force")],
    );
    // Every client, whatever it accepts, gets that Schema 1 document by tag.
    let via = RegistryClient::new(regcache.url());
    for accept in [MODERN, CONTAINERD_RESOLVE, DOCKER_1_10, NO_ACCEPT] {
        let context = format!("force: GET {repo}:{tag} with {accept:?}");
        let got = get_manifest(&via, &repo, tag, accept).await;
        assert_eq!(got.status, 200, "{context}: {}", got.text());
        assert_eq!(got.content_type(), Some(media::SCHEMA1_SIGNED), "{context}");
        assert_eq!(
            got.digest(),
            Some(schema1_digest.as_str()),
            "{context}: Docker-Content-Digest"
        );
        let (p, _) = payload(&got.body, &context);
        assert!(p == schema1_payload, "{context}: payload differs");
        verified_kids(&got.body, &context);
    }
    Forced {
        registry,
        regcache,
        image,
        repo,
        tag,
        schema1_digest,
        schema1_payload,
    }
}

#[tokio::test]
async fn force_skopeo_copy_gets_schema1_and_the_right_layers() {
    let forced = forced("skopeo", 4041).await;
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("pulled");
    Skopeo::new()
        .copy(
            &format!("docker://{}", forced.reference()),
            &format!("dir:{}", dir.display()),
            None,
            false,
        )
        .await;
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let doc: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        doc["schemaVersion"],
        1,
        "skopeo stored a non-Schema-1 manifest: {}",
        String::from_utf8_lossy(&manifest)
    );
    let (p, digest) = payload(&manifest, "skopeo's manifest.json");
    assert_eq!(digest, forced.schema1_digest);
    assert!(p == forced.schema1_payload);
    let blobs = fs_layers(&manifest);
    assert_eq!(blobs, expected_fs_layers(&forced.image));
    // Every real layer is in the directory with the right bytes.
    for layer in &forced.image.layers {
        let file = dir.join(&layer.digest["sha256:".len()..]);
        let bytes = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("skopeo did not store layer {}: {e}", layer.digest));
        assert_eq!(sha256_digest(&bytes), layer.digest);
        assert_eq!(gunzip_digest(&bytes), layer.diff_id);
    }
    // Whatever else it stored hashes to its name.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.len() == 64 {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(sha256_digest(&bytes), format!("sha256:{name}"));
        }
    }

    // A Docker list under `force`: the Schema 1 form of its linux/amd64
    // entry (second here), exactly as distribution converts it.
    let direct = RegistryClient::new(forced.registry.url());
    let arm64 = image(
        4045,
        Platform::new("linux", "arm64", Some("v8")),
        &[History::layer("ADD arm /")],
    );
    let amd64 = image_with_empty_layers(4046);
    direct
        .push_docker_list(
            "forced/skopeo-multi",
            "1.0",
            &[&arm64, &amd64],
            &[ListEntry::docker(&arm64), ListEntry::docker(&amd64)],
        )
        .await;
    let want = get_manifest(&direct, "forced/skopeo-multi", "1.0", NO_ACCEPT).await;
    let (want_payload, want_digest) = payload(&want.body, "distribution's list conversion");
    let dir = out.path().join("pulled-list");
    Skopeo::new()
        .copy(
            &format!(
                "docker://{}/forced/skopeo-multi:1.0",
                forced.regcache.host()
            ),
            &format!("dir:{}", dir.display()),
            None,
            false,
        )
        .await;
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let (p, digest) = payload(&manifest, "skopeo's manifest.json (list)");
    assert_eq!(digest, want_digest, "force on a list");
    assert!(p == want_payload, "force on a list: payload differs");
    assert_eq!(fs_layers(&manifest), expected_fs_layers(&amd64));
    for layer in &amd64.layers {
        let bytes = std::fs::read(dir.join(&layer.digest["sha256:".len()..]))
            .unwrap_or_else(|e| panic!("skopeo did not store layer {}: {e}", layer.digest));
        assert_eq!(sha256_digest(&bytes), layer.digest);
    }
}

#[tokio::test]
async fn force_podman_pull_gets_schema1_and_the_right_layers() {
    let forced = forced("podman", 4042).await;
    let podman = Podman::new();
    let reference = forced.reference();
    podman
        .pull(&reference)
        .await
        .expect_success("podman pull through regcache (force)");
    let inspect = podman.inspect_image(&reference).await;
    assert_eq!(
        inspect["Digest"],
        forced.schema1_digest.as_str(),
        "podman's manifest digest: {inspect:#}"
    );
    assert_eq!(
        inspect["ManifestType"],
        media::SCHEMA1_SIGNED,
        "podman stored a non-Schema-1 manifest: {inspect:#}"
    );
    // The synthesised config has one (empty) diff id per real layer; the
    // layer digests podman recorded are in its storage.
    assert_eq!(
        inspect["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(forced.image.layers.len()),
        "podman's rootfs: {inspect:#}"
    );
    let stored: Vec<(String, String)> = forced
        .image
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.diff_id.clone()))
        .collect();
    assert_eq!(
        podman.storage_layers(&reference),
        stored,
        "podman's storage layers (compressed, uncompressed), bottom first"
    );
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    let want = container_config(&forced.image);
    assert_eq!(inspect["Config"]["Cmd"], want["Cmd"], "{inspect:#}");
    assert_eq!(inspect["Config"]["Env"], want["Env"], "{inspect:#}");
}

#[tokio::test]
async fn force_docker_20_10_pull_gets_schema1_and_the_right_layers() {
    let forced = forced("docker", 4043).await;
    let docker = DockerDaemon::shared();
    let reference = forced.reference();
    let out = docker
        .docker(&["pull", &reference])
        .await
        .expect_success("docker pull through regcache (force)");
    assert_eq!(
        digest_after(&out.stdout, "Digest:"),
        Some(forced.schema1_digest.clone()),
        "docker pull should report the Schema 1 digest: {out}"
    );
    let inspect = docker.inspect_image(&reference).await;
    assert_eq!(
        inspect["RootFS"]["Layers"],
        json!(diff_ids(&forced.image)),
        "Docker's rootfs diff ids: {inspect:#}"
    );
    let repo_digest = format!(
        "{}/{}@{}",
        forced.regcache.host(),
        forced.repo,
        forced.schema1_digest
    );
    assert!(
        inspect["RepoDigests"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == repo_digest.as_str())),
        "RepoDigests should hold {repo_digest}: {inspect:#}"
    );
    let want = container_config(&forced.image);
    assert_eq!(inspect["Config"]["Cmd"], want["Cmd"], "{inspect:#}");
    assert_eq!(inspect["Config"]["Env"], want["Env"], "{inspect:#}");
    assert_eq!(inspect["Architecture"], "amd64");
    let _ = docker.docker(&["image", "rm", &reference]).await;
}

#[tokio::test]
async fn force_containerd_pull_gets_schema1_and_the_right_layers() {
    let forced = forced("containerd", 4044).await;
    let containerd = Containerd::start();
    let reference = forced.reference();
    let out = containerd
        .ctr(&["images", "pull", "--plain-http", &reference])
        .await;
    assert!(
        out.success(),
        "ctr images pull through regcache (force): {out}\ncontainerd log:\n{}",
        containerd.log()
    );
    assert!(
        out.stdout.contains("unpacking") && out.stdout.contains("done"),
        "ctr should unpack the image: {out}"
    );
    // containerd converts Schema 1 to a Schema 2 manifest locally.
    let list = containerd
        .ctr(&["images", "ls"])
        .await
        .expect_success("ctr images ls");
    let line = list
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference.as_str()))
        .unwrap_or_else(|| panic!("{reference} not in `ctr images ls`: {list}"));
    let target = line.split_whitespace().nth(2).unwrap().to_owned();
    let manifest: Value = serde_json::from_slice(&containerd.content(&target).await).unwrap();
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("converted manifest has no layers: {manifest:#}"))
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        layers,
        layer_digests(&forced.image),
        "containerd's layer digests: {manifest:#}"
    );
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let cfg: Value = serde_json::from_slice(&containerd.content(config_digest).await).unwrap();
    assert_eq!(
        cfg["rootfs"]["diff_ids"],
        json!(diff_ids(&forced.image)),
        "containerd's config: {cfg:#}"
    );
    assert_eq!(cfg["architecture"], "amd64");
    let want = container_config(&forced.image);
    assert_eq!(cfg["config"]["Cmd"], want["Cmd"], "{cfg:#}");
}

// ---------------------------------------------------------------------------
// 5. Pushes through regcache
// ---------------------------------------------------------------------------

#[tokio::test]
async fn skopeo_pushes_schema1_through_regcache() {
    let registry = Registry::start(RegistryOptions {
        schema1_enabled: true,
        ..RegistryOptions::default()
    });
    let direct = RegistryClient::new(registry.url());
    let regcache = push_regcache_with(
        &registry,
        vec![PolicyRule::new(&["sidecar/**"]).schema2_push("reject")],
    );
    let via = RegistryClient::new(regcache.url());
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&work.path().join("layout"));
    let app = image_with_empty_layers(4051);
    layout.add_image("app", &app);
    let skopeo = Skopeo::new();

    skopeo
        .copy(
            &layout.reference("app"),
            &format!("docker://{}/sidecar/s1:1.0", regcache.host()),
            Some(SkopeoFormat::V2s1),
            false,
        )
        .await;
    let stored = get_manifest(&direct, "sidecar/s1", "1.0", MODERN).await;
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_eq!(
        stored.content_type(),
        Some(media::SCHEMA1_SIGNED),
        "the registry should hold Schema 1: {}",
        stored.text()
    );
    let (_, digest) = payload(&stored.body, "the pushed manifest");
    assert_eq!(stored.digest(), Some(digest.as_str()));
    let blobs = fs_layers(&stored.body);
    assert_eq!(blobs, expected_fs_layers(&app));
    assert_eq!(
        throwaways(&stored.body),
        blobs
            .iter()
            .map(|b| b == EMPTY_LAYER_DIGEST)
            .collect::<Vec<_>>()
    );
    // The registry accepted it, so it has every blob, the empty layer too.
    for blob in blobs.iter().collect::<BTreeSet<_>>() {
        let h = head(&direct, &format!("/v2/sidecar/s1/blobs/{blob}"), &[]).await;
        assert_eq!(h.status, 200, "upstream blob {blob}");
    }
    assert!(
        registry.access_entries().iter().any(|e| e.method == "PUT"
            && e.path == "/v2/sidecar/s1/manifests/1.0"
            && e.status == 201),
        "the manifest PUT reached the registry: {:#?}",
        registry.access_log()
    );
    // And it pulls back through regcache unchanged.
    let back = same_answer(&direct, &via, "sidecar/s1", "1.0", MODERN).await;
    assert_eq!(back.digest(), Some(digest.as_str()));

    // Schema 2 into the same rule is refused, with regcache's explanation.
    let refused = skopeo
        .try_copy(
            &layout.reference("app"),
            &format!("docker://{}/sidecar/s2:1.0", regcache.host()),
            Some(SkopeoFormat::V2s2),
            false,
            &CopyOptions::default(),
        )
        .await
        .expect_err("a Schema 2 push under schema2_push = reject must fail");
    assert!(
        refused.stderr.contains(PUSH_REFUSAL),
        "skopeo should relay regcache's message: {refused}"
    );
    assert_eq!(
        get_manifest(&direct, "sidecar/s2", "1.0", MODERN)
            .await
            .status,
        404,
        "nothing landed upstream"
    );

    // Every non-Schema-1 manifest type is refused before it goes upstream.
    let entries = [ListEntry::docker(&app)];
    let oci_entries = [ListEntry::oci(&app)];
    for (content_type, body) in [
        (media::DOCKER_MANIFEST, app.docker_manifest()),
        (media::OCI_MANIFEST, app.oci_manifest()),
        (
            media::DOCKER_LIST,
            regcache_tests::image::manifest_list(&entries),
        ),
        (
            media::OCI_INDEX,
            regcache_tests::image::oci_index(&oci_entries),
        ),
    ] {
        let answer = via
            .put_manifest("sidecar/raw", "1.0", content_type, &body)
            .await;
        let context = format!("PUT {content_type} to sidecar/raw:1.0");
        assert_eq!(answer.status, 400, "{context}: {}", answer.text());
        assert_eq!(
            answer.error_code().as_deref(),
            Some("MANIFEST_INVALID"),
            "{context}: {}",
            answer.text()
        );
        let text = answer.text();
        assert!(
            text.contains(PUSH_REFUSAL) && text.contains("DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE=1"),
            "{context}: {text}"
        );
    }
    assert!(
        !registry
            .access_entries()
            .iter()
            .any(|e| e.method == "PUT" && e.path.starts_with("/v2/sidecar/raw/manifests/")),
        "a refused manifest reached the registry: {:#?}",
        registry.access_log()
    );
}

/// Loads `image` into `docker` as `SRC`, tags it `target` and pushes it.
async fn docker_push(
    docker: &DockerDaemon,
    image: &Image,
    source: &str,
    target: &str,
) -> CmdOutput {
    docker.load(&docker_archive(image, &[source])).await;
    docker
        .docker(&["tag", source, target])
        .await
        .expect_success("docker tag");
    docker.docker(&["push", target]).await
}

/// The upstream's blobs of a pushed manifest gunzip to the image's diff ids.
async fn assert_layers_match(direct: &RegistryClient, repo: &str, blobs: &[String], image: &Image) {
    let mut got = Vec::new();
    for blob in blobs {
        let fetched = direct.get_blob(repo, blob).await.unwrap();
        assert_eq!(fetched.status, 200, "upstream blob {blob}");
        assert_eq!(sha256_digest(&fetched.body), *blob);
        got.push(gunzip_digest(&fetched.body));
    }
    assert_eq!(got, diff_ids(image), "{repo}: uncompressed layers");
}

#[tokio::test]
async fn docker_push_schema2_refused_without_the_variable_and_unchanged_when_accepted() {
    let registry = Registry::start(RegistryOptions {
        schema1_enabled: true,
        ..RegistryOptions::default()
    });
    let direct = RegistryClient::new(registry.url());
    let regcache = push_regcache_with(
        &registry,
        vec![PolicyRule::new(&["s2reject/**"]).schema2_push("reject")],
    );
    let docker = DockerDaemon::shared();
    let app = image_with_empty_layers(4052);
    let source = "regcache-e2e/push-plain:1";

    // schema2_push = reject, daemon without DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE.
    let target = format!("{}/s2reject/plain:1.0", regcache.host());
    let out = docker_push(docker, &app, source, &target).await;
    assert!(
        !out.success(),
        "the push must fail without the variable: {out}"
    );
    assert!(
        out.output().contains(PUSH_REFUSAL)
            && out
                .output()
                .contains("DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE=1"),
        "docker should show regcache's message: {out}"
    );
    assert_eq!(
        get_manifest(&direct, "s2reject/plain", "1.0", MODERN)
            .await
            .status,
        404,
        "nothing landed upstream"
    );

    // schema2_push = accept (the default): Schema 2 lands unchanged.
    let target = format!("{}/s2accept/plain:1.0", regcache.host());
    let out = docker_push(docker, &app, source, &target)
        .await
        .expect_success("docker push under schema2_push = accept");
    let pushed = digest_after(&out.stdout, "digest:")
        .unwrap_or_else(|| panic!("no digest in docker push output: {out}"));
    let stored = get_manifest(&direct, "s2accept/plain", "1.0", MODERN).await;
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_eq!(stored.content_type(), Some(media::DOCKER_MANIFEST));
    assert_eq!(
        stored.digest(),
        Some(pushed.as_str()),
        "upstream digest vs the daemon's"
    );
    assert_eq!(sha256_digest(&stored.body), pushed);
    let doc: Value = serde_json::from_slice(&stored.body).unwrap();
    assert_eq!(
        doc["config"]["digest"],
        app.config_digest().as_str(),
        "Docker pushes the loaded config unchanged"
    );
    let blobs: Vec<String> = doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_layers_match(&direct, "s2accept/plain", &blobs, &app).await;
    for reference in [source.to_owned(), target] {
        let _ = docker.docker(&["image", "rm", &reference]).await;
    }
}

#[tokio::test]
async fn docker_push_falls_back_to_schema1_when_the_daemon_allows_it() {
    let registry = Registry::start(RegistryOptions {
        schema1_enabled: true,
        ..RegistryOptions::default()
    });
    let direct = RegistryClient::new(registry.url());
    let recorder = PutRecorder::start(&registry.url());
    let regcache = PolicyRegcache::start(
        PolicyRegcacheOptions::new(recorder.url())
            .writes("client-credentials")
            .rule(PolicyRule::new(&["s2reject/**"]).schema2_push("reject")),
    );
    let docker = DockerDaemon::start(DockerDaemonOptions {
        env: vec![("DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE".into(), "1".into())],
        ..DockerDaemonOptions::default()
    });
    let app = image_with_empty_layers(4053);
    let target = format!("{}/s2reject/fallback:1.0", regcache.host());
    let out = docker_push(&docker, &app, "regcache-e2e/push-fallback:1", &target).await;
    assert!(
        out.success(),
        "docker push with DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE=1: {out}\nregcache log:\n{}\ndockerd log:\n{}",
        regcache.log(),
        docker.log()
    );
    let log = docker.log();
    let fallback = log
        .lines()
        .find(|l| l.contains("falling back to schema1"))
        .unwrap_or_else(|| panic!("the daemon log should show the Schema 1 fallback:\n{log}"));
    assert!(
        fallback.contains(PUSH_REFUSAL),
        "the fallback was caused by regcache's refusal: {fallback}"
    );
    let pushed = digest_after(&out.stdout, "digest:")
        .unwrap_or_else(|| panic!("no digest in docker push output: {out}"));

    let stored = get_manifest(&direct, "s2reject/fallback", "1.0", MODERN).await;
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_eq!(
        stored.content_type(),
        Some(media::SCHEMA1_SIGNED),
        "the upstream should hold Schema 1: {}",
        stored.text()
    );
    let (_, digest) = payload(&stored.body, "the daemon's Schema 1 manifest");
    assert_eq!(stored.digest(), Some(digest.as_str()));
    assert_eq!(digest, pushed, "upstream digest vs the daemon's");
    let blobs = fs_layers(&stored.body);
    let cfg: Value = serde_json::from_slice(&app.config).unwrap();
    assert_eq!(
        blobs.len(),
        cfg["history"].as_array().unwrap().len(),
        "one fsLayer per history step"
    );
    let real: Vec<String> = blobs
        .iter()
        .rev()
        .filter(|b| *b != EMPTY_LAYER_DIGEST)
        .cloned()
        .collect();
    assert_layers_match(&direct, "s2reject/fallback", &real, &app).await;
    let h = head(
        &direct,
        &format!("/v2/s2reject/fallback/blobs/{EMPTY_LAYER_DIGEST}"),
        &[],
    )
    .await;
    assert_eq!(h.status, 200, "the empty-layer blob is upstream");
    // The registry verified the daemon's signature when it took the PUT.
    assert!(
        registry.access_entries().iter().any(|e| e.method == "PUT"
            && e.path == "/v2/s2reject/fallback/manifests/1.0"
            && e.status == 201),
        "the daemon's manifest PUT reached the registry: {:#?}",
        registry.access_log()
    );
    // What went upstream was signed by the daemon's own libtrust key (the
    // registry verifies Schema 1 signatures on PUT, and then keeps only the
    // canonical payload, so the recorder is where the daemon's JWS is seen).
    let puts = recorder.puts();
    let put = puts
        .iter()
        .find(|p| p.path == "/v2/s2reject/fallback/manifests/1.0")
        .unwrap_or_else(|| panic!("no manifest PUT went upstream: {puts:#?}"));
    assert_eq!(
        puts.len(),
        1,
        "only the Schema 1 manifest went upstream: {puts:#?}"
    );
    assert_eq!(put.status, 201);
    assert_eq!(put.content_type.as_deref(), Some(media::SCHEMA1_SIGNED));
    let (_, put_digest) = payload(&put.body, "the daemon's PUT");
    assert_eq!(put_digest, digest);
    let key: Value =
        serde_json::from_slice(&std::fs::read(docker.trust_key_path()).unwrap()).unwrap();
    assert_eq!(
        verified_kids(&put.body, "the daemon's PUT"),
        vec![key["kid"].as_str().unwrap().to_owned()],
        "signed with the daemon's trust key"
    );
    docker.stop();
}

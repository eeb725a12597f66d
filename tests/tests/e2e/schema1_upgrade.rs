//! The Schema 1 → Docker Schema 2 upgrade (`schema1_upgrade = "upgrade"`,
//! the default), end to end, against a real docker-registry 2.8 holding an
//! image pushed by skopeo as Schema 1.
//!
//! The oracle is skopeo itself: `skopeo copy --format v2s2` from the Schema
//! 1 source into a `dir:` writes the manifest and config that regcache must
//! serve byte for byte to a client whose `Accept` names Schema 2 but no
//! Schema 1 type (containerd's).

use regcache_tests::clients::{Containerd, DockerDaemon, Podman, digest_after};
use regcache_tests::image::{History, config, media};
use regcache_tests::policy_support::{PolicyRegcache, PolicyRegcacheOptions, PolicyRule};
use regcache_tests::{
    Image, ImageGen, OciLayout, Platform, Registry, RegistryClient, RegistryOptions, Skopeo,
    SkopeoFormat, sha256_digest,
};
use serde_json::Value;

use crate::support::{get_manifest, request_accepting};

/// containerd's single-line resolve `Accept` (`*/*` does not name Schema 1).
const CONTAINERD: &[&str] = &["application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"];
/// Docker 20.10 (names Schema 1).
const DOCKER_20_10: &[&str] = &[
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::SCHEMA1_SIGNED,
    "application/json",
];
const TAG: &str = "v1";

/// A registry with one image pushed as Schema 1 under `up/NAME:v1` and
/// `off/NAME:v1`, skopeo's v2s2 conversion of it, and regcache in front
/// (upgrades off for `off/**`).
struct Upgraded {
    registry: Registry,
    regcache: PolicyRegcache,
    repo: String,
    off_repo: String,
    /// Digest of the stored Schema 1 manifest (`repo`; the name is in it).
    schema1_digest: String,
    /// The same for `off_repo`.
    off_schema1_digest: String,
    /// skopeo's v2s2 manifest and config.
    manifest: Vec<u8>,
    config: Vec<u8>,
    _work: tempfile::TempDir,
}

impl Upgraded {
    fn digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    fn config_digest(&self) -> String {
        sha256_digest(&self.config)
    }

    fn via(&self) -> RegistryClient {
        RegistryClient::new(self.regcache.url())
    }

    fn reference(&self) -> String {
        format!("{}/{}:{TAG}", self.regcache.host(), self.repo)
    }
}

/// Three gzip layers and three metadata-only steps (one with `&&` and `<>`).
fn legacy_image(seed: u64) -> Image {
    let history = [
        History::empty("ARG VERSION=1"),
        History::layer("ADD rootfs.tar /"),
        History::empty("ENV APP_HOME=/srv && <x>"),
        History::layer("RUN make install"),
        History::layer("COPY app /srv"),
        History::empty("CMD [\"/bin/sh\"]"),
    ];
    let layers = ImageGen::new(seed).layers(3);
    let platform = Platform::linux_amd64();
    let cfg = config(&platform, &layers, &history, Value::Null);
    Image::new(&cfg, layers, platform)
}

async fn setup(name: &str, seed: u64) -> Upgraded {
    let registry = Registry::start(RegistryOptions {
        schema1_enabled: true,
        ..RegistryOptions::default()
    });
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&work.path().join("layout"));
    layout.add_image("legacy", &legacy_image(seed));
    let skopeo = Skopeo::new();
    let repo = format!("up/{name}");
    let off_repo = format!("off/{name}");
    for r in [&repo, &off_repo] {
        skopeo
            .copy(
                &layout.reference("legacy"),
                &format!("docker://{}/{r}:{TAG}", registry.host()),
                Some(SkopeoFormat::V2s1),
                false,
            )
            .await;
    }
    let direct = RegistryClient::new(registry.url());
    let stored = get_manifest(&direct, &repo, TAG, DOCKER_20_10).await;
    assert_eq!(stored.content_type(), Some(media::SCHEMA1_SIGNED));
    let schema1_digest = stored.digest().unwrap().to_owned();
    let off = get_manifest(&direct, &off_repo, TAG, DOCKER_20_10).await;
    let off_schema1_digest = off.digest().unwrap().to_owned();
    let doc: Value = serde_json::from_slice(&stored.body).unwrap();
    assert!(
        doc["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["v1Compatibility"]
                .as_str()
                .unwrap()
                .contains("\"throwaway\":true")),
        "the Schema 1 source should have empty-layer entries: {doc:#}"
    );

    // The oracle: skopeo's own Schema 1 → Schema 2 conversion.
    let oracle = work.path().join("oracle");
    skopeo
        .copy(
            &format!("docker://{}/{repo}:{TAG}", registry.host()),
            &format!("dir:{}", oracle.display()),
            Some(SkopeoFormat::V2s2),
            false,
        )
        .await;
    let manifest = std::fs::read(oracle.join("manifest.json")).unwrap();
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        m["mediaType"],
        media::DOCKER_MANIFEST,
        "skopeo's v2s2: {m:#}"
    );
    let config_digest = m["config"]["digest"].as_str().unwrap();
    let config = std::fs::read(oracle.join(&config_digest["sha256:".len()..])).unwrap();
    assert_eq!(m["layers"].as_array().map(Vec::len), Some(3), "{m:#}");

    let data = work.path().join("data");
    let regcache = PolicyRegcache::start(
        PolicyRegcacheOptions::new(registry.url())
            .data_dir(&data)
            .rule(PolicyRule::new(&["off/**"]).schema1_upgrade("off")),
    );
    Upgraded {
        registry,
        regcache,
        repo,
        off_repo,
        schema1_digest,
        off_schema1_digest,
        manifest,
        config,
        _work: work,
    }
}

/// GET and HEAD of `reference` with containerd's Accept: the upgraded
/// manifest, byte for byte skopeo's, with agreeing headers.
async fn assert_serves_upgrade(u: &Upgraded, reference: &str, context: &str) {
    let via = u.via();
    let got = get_manifest(&via, &u.repo, reference, CONTAINERD).await;
    assert_eq!(
        got.status,
        200,
        "{context}: {}\nregcache log:\n{}",
        got.text(),
        u.regcache.log()
    );
    assert_eq!(
        got.content_type(),
        Some(media::DOCKER_MANIFEST),
        "{context}"
    );
    assert!(
        got.body[..] == u.manifest[..],
        "{context}: regcache's upgrade differs from skopeo's:\nregcache: {}\nskopeo:   {}",
        got.text(),
        String::from_utf8_lossy(&u.manifest)
    );
    assert_eq!(got.digest(), Some(u.digest().as_str()), "{context}");
    let path = format!("/v2/{}/manifests/{reference}", u.repo);
    let head = request_accepting(&via, reqwest::Method::HEAD, &path, CONTAINERD).await;
    assert_eq!(head.status, 200, "HEAD {context}");
    for h in ["content-type", "content-length", "docker-content-digest"] {
        assert_eq!(head.header(h), got.header(h), "HEAD vs GET {h}: {context}");
    }
    assert_eq!(
        got.header("content-length"),
        Some(u.manifest.len().to_string().as_str()),
        "{context}"
    );
}

/// GET and HEAD of the upgraded config blob: skopeo's bytes.
async fn assert_serves_config(u: &Upgraded, context: &str) {
    let via = u.via();
    let d = u.config_digest();
    let got = via.get_blob(&u.repo, &d).await.unwrap();
    assert_eq!(
        got.status,
        200,
        "{context}: GET config {d}: {}\nregcache log:\n{}",
        got.text(),
        u.regcache.log()
    );
    assert!(
        got.body[..] == u.config[..],
        "{context}: config bytes differ from skopeo's"
    );
    let head = request_accepting(
        &via,
        reqwest::Method::HEAD,
        &format!("/v2/{}/blobs/{d}", u.repo),
        &[],
    )
    .await;
    assert_eq!(head.status, 200, "{context}: HEAD config");
    assert_eq!(
        head.header("content-length"),
        Some(u.config.len().to_string().as_str()),
        "{context}: HEAD config length"
    );
}

#[tokio::test]
async fn containerd_accept_gets_skopeos_v2s2_and_it_survives_a_restart() {
    let mut u = setup("app", 5101).await;
    let via = u.via();
    assert_serves_upgrade(&u, TAG, "by tag").await;
    // Built once: the second pull is a hit.
    assert_serves_upgrade(&u, TAG, "by tag, again").await;
    assert!(
        u.regcache
            .log()
            .matches("upgraded schema 1 to schema 2")
            .count()
            == 1,
        "the upgrade should be built once:\n{}",
        u.regcache.log()
    );
    // Four by-tag requests (two GET, two HEAD): one miss, then hits.
    let metrics = u.regcache.regcache().metrics().await;
    let lookups = |result| {
        metrics.get(
            "regcache_cache_lookups_total",
            &[("kind", "upgrade"), ("result", result)],
        )
    };
    assert_eq!(
        (lookups("miss"), lookups("hit")),
        (Some(1.0), Some(3.0)),
        "{}",
        metrics.text
    );
    assert_serves_upgrade(&u, &u.digest(), "by the upgraded digest").await;
    assert_serves_config(&u, "before restart").await;

    // Clients that name Schema 1 keep it; so does `schema1_upgrade = "off"`.
    let old = get_manifest(&via, &u.repo, TAG, DOCKER_20_10).await;
    assert_eq!(
        old.content_type(),
        Some(media::SCHEMA1_SIGNED),
        "{}",
        old.text()
    );
    assert_eq!(old.digest(), Some(u.schema1_digest.as_str()));
    let off = get_manifest(&via, &u.off_repo, TAG, CONTAINERD).await;
    assert_eq!(off.status, 200, "{}", off.text());
    assert_eq!(
        off.content_type(),
        Some(media::SCHEMA1_SIGNED),
        "upgrade off"
    );
    assert_eq!(
        off.digest(),
        Some(u.off_schema1_digest.as_str()),
        "upgrade off"
    );

    // Restart with the upstream gone, and the config evicted meanwhile: it
    // is rebuilt from the Schema 1 source and the logged diff IDs.
    let status = u.regcache.stop();
    assert!(status.success(), "regcache exited {status} on SIGTERM");
    u.registry.kill();
    let hex = &u.config_digest()["sha256:".len()..];
    let file = u
        .regcache
        .data_dir()
        .join(format!("cache/v1/blobs/sha256/{}/{hex}", &hex[..2]));
    std::fs::remove_file(&file)
        .unwrap_or_else(|e| panic!("the config should be cached at {}: {e}", file.display()));
    u.regcache.start_again();
    assert_serves_upgrade(&u, &u.digest(), "after restart, upstream down, by digest").await;
    assert_serves_config(&u, "after restart, upstream down, config evicted").await;

    let csv = u.regcache.mappings_export("csv").await;
    let row = format!(
        "{},{TAG},schema1-to-schema2,{},{}",
        u.repo,
        u.schema1_digest,
        u.digest()
    );
    assert!(
        csv.lines().any(|l| l == row),
        "mappings export should list {row}:\n{csv}"
    );
}

#[tokio::test]
async fn ctr_pull_ends_with_the_upgraded_config() {
    let u = setup("ctr", 5102).await;
    let containerd = Containerd::start();
    let reference = u.reference();
    let out = containerd
        .ctr(&["images", "pull", "--plain-http", &reference])
        .await;
    assert!(
        out.success(),
        "ctr images pull through regcache: {out}\ncontainerd log:\n{}\nregcache log:\n{}",
        containerd.log(),
        u.regcache.log()
    );
    let list = containerd
        .ctr(&["images", "ls"])
        .await
        .expect_success("ctr images ls");
    let line = list
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference.as_str()))
        .unwrap_or_else(|| panic!("{reference} not in `ctr images ls`: {list}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], media::DOCKER_MANIFEST, "{line}");
    assert_eq!(fields[2], u.digest(), "the image's manifest digest: {line}");
    let manifest = containerd.content(&u.digest()).await;
    assert!(
        manifest == u.manifest,
        "containerd's manifest differs from skopeo's"
    );
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m["config"]["digest"], u.config_digest().as_str());
    let config = containerd.content(&u.config_digest()).await;
    assert!(
        config == u.config,
        "containerd's config differs from skopeo's"
    );
}

#[tokio::test]
async fn docker_and_podman_still_pull_the_schema1() {
    let u = setup("engines", 5103).await;
    let reference = u.reference();

    let docker = DockerDaemon::shared();
    let out = docker
        .docker(&["pull", &reference])
        .await
        .expect_success("docker pull through regcache");
    assert_eq!(
        digest_after(&out.stdout, "Digest:"),
        Some(u.schema1_digest.clone()),
        "Docker 20.10 should pull the Schema 1: {out}"
    );
    let _ = docker.docker(&["image", "rm", &reference]).await;

    let podman = Podman::new();
    podman
        .pull(&reference)
        .await
        .expect_success("podman pull through regcache");
    let inspect = podman.inspect_image(&reference).await;
    assert_eq!(inspect["Digest"], u.schema1_digest.as_str(), "{inspect:#}");
    assert_eq!(
        inspect["ManifestType"],
        media::SCHEMA1_SIGNED,
        "{inspect:#}"
    );
    assert!(
        !u.regcache.log().contains("upgraded schema 1 to schema 2"),
        "no client here should have caused an upgrade:\n{}",
        u.regcache.log()
    );
}

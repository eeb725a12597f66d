//! One regcache in front of several registries (issue 5), driven by the real
//! clients the way `deploy/` configures them: two docker-registry 2.8
//! instances stand in for `docker.io` and `quay.io` (each behind a
//! pass-through [`FaultProxy`] that counts requests and can answer 429), and
//! one regcache has an `[[upstream]]` table for each.
//!
//! * Docker 20.10 `registry-mirrors` (Docker Hub short names, no `ns=`, the
//!   default upstream), a multi-arch list, and a fresh daemon that pulls
//!   again without a single upstream blob GET.
//! * containerd `hosts.toml` for both registries (`?ns=docker.io`,
//!   `?ns=quay.io`).
//! * podman `registries.conf` mirrors with registry path prefixes.
//! * skopeo with a path-prefix reference, compared with a direct copy.
//! * The same tag on both upstreams with different content: every client
//!   gets the right one.
//! * A registry no upstream names: 403 `DENIED`, no outgoing request.
//! * The docker.io upstream answering 429: cached images still pull, the
//!   rest fails with `TOOMANYREQUESTS`.
//! * `tags/list` names the repository as the client did (`quay.io/team/app`
//!   under a path prefix), from the upstream and from regcache's own tag
//!   index; `_catalog` under a prefix lists the upstream's names.
//!
//! Every primary registry in the client configurations is the dead
//! `127.0.0.1:9`, and dockerd's own fallback (`registry-1.docker.io`) does not
//! resolve here: a pull that succeeds came through regcache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regcache_tests::clients::{
    CmdOutput, Containerd, DockerDaemon, DockerDaemonOptions, Podman, digest_after,
};
use regcache_tests::image::{ListEntry, media};
use regcache_tests::{
    Fault, Fetched, Image, ManifestFormat, Metrics, Platform, Regcache, RegcacheOptions,
    RegistryClient, Skopeo, Target,
};
use serde_json::Value;

use crate::support::{
    ProxiedRegistry, all_upstream_blob_gets, assert_error, dir_contents, settle, small_image,
};

/// The dead primary of every client configuration (the discard port: nothing
/// listens on loopback), so that only the regcache mirror can serve a pull.
const DEAD_PRIMARY: &str = "127.0.0.1:9";

/// The manifest types a modern client accepts, one line each.
const ACCEPT: &[&str] = &[
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
    media::OCI_INDEX,
];

const UPSTREAM_REQUESTS: &str = "regcache_upstream_requests_total";

// ---------------------------------------------------------------------------
// Fixture: two registries, the images on them, one regcache
// ---------------------------------------------------------------------------

/// An image as pushed: what clients must end up with.
#[derive(Debug, Clone)]
struct Pushed {
    /// The digest of the manifest (or list) under the tag.
    manifest: String,
    /// The config digest of the (linux/amd64) image: Docker's and podman's
    /// image ID.
    config: String,
    /// Layer digests of the (linux/amd64) image.
    layers: Vec<String>,
}

impl Pushed {
    fn of(manifest: String, image: &Image) -> Pushed {
        Pushed {
            manifest,
            config: image.config_digest(),
            layers: image.layer_digests(),
        }
    }
}

/// Everything the tests pull. Seeds differ per image, so no two images
/// share a blob (except where a test says so).
struct Images {
    /// docker.io `library/small:latest`.
    small: Pushed,
    /// docker.io `library/multi:latest`: a Docker manifest list with
    /// linux/arm64 first and linux/amd64 second.
    multi: Pushed,
    /// docker.io `library/same:1` and quay.io `library/same:1`: same name
    /// and tag, different content.
    hub_same: Pushed,
    quay_same: Pushed,
    /// docker.io `team/same:1` and quay.io `team/same:1`, the same again
    /// without Docker Hub's `library/`.
    hub_team_same: Pushed,
    quay_team_same: Pushed,
    /// quay.io `team/app:1`.
    app: Pushed,
    /// docker.io `library/warm:1` (pulled before the 429s start) and
    /// `library/cold:1` (never pulled before).
    warm: Pushed,
    cold: Pushed,
}

async fn push_images(hub: &ProxiedRegistry, quay: &ProxiedRegistry) -> Images {
    let hub_client = hub.direct();
    let quay_client = quay.direct();
    let amd64 = Platform::linux_amd64();
    let push = async |client: &RegistryClient, repo: &str, tag: &str, seed: u64| {
        let image = small_image(seed, Platform::linux_amd64());
        let digest = client
            .push_image(repo, tag, &image, ManifestFormat::Docker)
            .await;
        Pushed::of(digest, &image)
    };
    let small = push(&hub_client, "library/small", "latest", 5101).await;
    let arm64 = small_image(5102, Platform::new("linux", "arm64", Some("v8")));
    let x86 = small_image(5103, amd64.clone());
    let list = hub_client
        .push_docker_list(
            "library/multi",
            "latest",
            &[&arm64, &x86],
            &[ListEntry::docker(&arm64), ListEntry::docker(&x86)],
        )
        .await;
    let multi = Pushed::of(list, &x86);
    Images {
        small,
        multi,
        hub_same: push(&hub_client, "library/same", "1", 5104).await,
        quay_same: push(&quay_client, "library/same", "1", 5105).await,
        hub_team_same: push(&hub_client, "team/same", "1", 5106).await,
        quay_team_same: push(&quay_client, "team/same", "1", 5107).await,
        app: push(&quay_client, "team/app", "1", 5108).await,
        warm: push(&hub_client, "library/warm", "1", 5109).await,
        cold: push(&hub_client, "library/cold", "1", 5110).await,
    }
}

/// Two upstreams, their images, and one regcache in front of both.
struct Fixture {
    hub: ProxiedRegistry,
    quay: ProxiedRegistry,
    images: Images,
    regcache: Regcache,
}

impl Fixture {
    /// `hub_extra`: more keys for the docker.io `[[upstream]]` table.
    ///
    /// quay.io is listed first and docker.io says `default = true`: requests
    /// that name no registry (Docker's mirror requests) must still go to
    /// docker.io.
    async fn start(hub_extra: &str) -> Fixture {
        let hub = ProxiedRegistry::start();
        let quay = ProxiedRegistry::start();
        let images = push_images(&hub, &quay).await;
        let upstreams = format!(
            "[[upstream]]\nname = \"quay.io\"\nurl = \"{quay}\"\ncatalog = \"stored-credentials\"\n\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"{hub}\"\ndefault = true\n{hub_extra}\n",
            quay = quay.proxy.url(),
            hub = hub.proxy.url(),
        );
        let regcache = Regcache::start(RegcacheOptions::with_upstreams_toml(upstreams));
        Fixture {
            hub,
            quay,
            images,
            regcache,
        }
    }

    fn client(&self) -> RegistryClient {
        RegistryClient::new(self.regcache.url())
    }

    /// A containerd hosts directory with a `hosts.toml` for each registry:
    /// dead primary, regcache as the one `pull`+`resolve` host.
    fn hosts_dir(&self, root: &Path, registries: &[&str]) -> PathBuf {
        let dir = root.join("certs.d");
        for registry in registries {
            write_hosts_toml(&dir, registry, &self.regcache.url());
        }
        dir
    }

    /// regcache's debug log lines with `message`, as `(field value,
    /// upstream)` for `field` (`ns` or `prefix`).
    fn routes(&self, message: &str, field: &str) -> Vec<(String, String)> {
        self.regcache
            .log()
            .lines()
            .filter(|l| l.contains(message))
            .filter_map(|l| Some((log_field(l, field)?, log_field(l, "upstream")?)))
            .collect()
    }

    async fn metrics(&self) -> Metrics {
        self.regcache.metrics().await
    }
}

/// `DIR/<registry>/hosts.toml` as in `deploy/containerd/certs.d`, with the
/// dead primary and the mirror on loopback.
fn write_hosts_toml(dir: &Path, registry: &str, mirror_url: &str) {
    let sub = dir.join(registry);
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(
        sub.join("hosts.toml"),
        format!(
            "server = \"http://{DEAD_PRIMARY}\"\n\n\
             [host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
}

/// The value of `key=value` or `key="value"` in a text log line.
fn log_field(line: &str, key: &str) -> Option<String> {
    let needle = format!(" {key}=");
    let at = line.find(&needle)? + needle.len();
    let rest = &line[at..];
    let value = if let Some(quoted) = rest.strip_prefix('"') {
        &quoted[..quoted.find('"')?]
    } else {
        rest.split_whitespace().next()?
    };
    Some(value.to_owned())
}

/// Starts `n` Docker daemons with regcache as their only registry mirror,
/// in parallel (each takes a few seconds).
fn docker_daemons(mirror_url: &str, n: usize) -> Vec<DockerDaemon> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let options = DockerDaemonOptions {
                registry_mirrors: vec![mirror_url.to_owned()],
                ..DockerDaemonOptions::default()
            };
            std::thread::spawn(move || DockerDaemon::start(options))
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect()
}

/// A containerd of its own, started on a thread (joined when needed).
fn containerd_in_background() -> std::thread::JoinHandle<Containerd> {
    std::thread::spawn(Containerd::start)
}

fn join<T>(handle: std::thread::JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

/// `docker pull REF`, which must succeed through the mirror: the daemon log
/// must show the attempt at regcache and no attempt at Docker Hub itself.
async fn docker_pull(docker: &DockerDaemon, regcache: &Regcache, reference: &str) -> CmdOutput {
    let log_before = docker.log().len();
    let out = docker.docker(&["pull", reference]).await;
    let log = docker.log();
    let new_log = &log[log_before.min(log.len())..];
    assert!(
        out.success(),
        "docker pull {reference} through the regcache mirror: {out}\n\
         regcache log:\n{}\ndockerd log (this pull):\n{new_log}",
        regcache.log()
    );
    let familiar = reference.split(':').next().unwrap_or(reference);
    let tried_mirror = format!("Trying to pull {familiar} from {}/ v2", regcache.url());
    assert!(
        new_log.contains(&tried_mirror),
        "dockerd should have tried the mirror ({tried_mirror:?}); its log:\n{new_log}"
    );
    assert!(
        !new_log.contains(&format!(
            "Trying to pull {familiar} from https://registry-1"
        )),
        "dockerd fell back to Docker Hub, so the mirror failed; its log:\n{new_log}"
    );
    out
}

/// Asserts what `docker image inspect REF` says: image ID = config digest,
/// a repo digest `NAME@MANIFEST`, linux/amd64.
async fn assert_docker_image(docker: &DockerDaemon, reference: &str, want: &Pushed, what: &str) {
    let inspect = docker.inspect_image(reference).await;
    assert_eq!(
        inspect["Id"],
        want.config.as_str(),
        "{what}: Docker's image ID must be the config digest: {inspect:#}"
    );
    assert_eq!(inspect["Architecture"], "amd64", "{what}: {inspect:#}");
    let name = reference.rsplit_once(':').map_or(reference, |(n, _)| n);
    let repo_digest = format!("{name}@{}", want.manifest);
    assert!(
        inspect["RepoDigests"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == repo_digest.as_str())),
        "{what}: RepoDigests should hold {repo_digest}: {inspect:#}"
    );
}

/// `ctr images pull --hosts-dir DIR REF`.
async fn ctr_pull(containerd: &Containerd, hosts: &Path, reference: &str) -> CmdOutput {
    let hosts = hosts.to_string_lossy().into_owned();
    containerd
        .ctr(&["images", "pull", "--hosts-dir", &hosts, reference])
        .await
}

/// `ctr images pull` that must succeed (with regcache's and containerd's
/// logs in the message otherwise).
async fn ctr_pull_ok(
    containerd: &Containerd,
    hosts: &Path,
    reference: &str,
    regcache: &Regcache,
) -> CmdOutput {
    let out = ctr_pull(containerd, hosts, reference).await;
    assert!(
        out.success(),
        "ctr images pull {reference} through regcache: {out}\nregcache log:\n{}\n\
         containerd log:\n{}",
        regcache.log(),
        containerd.log()
    );
    out
}

/// The target digest of `reference` in `ctr images ls`, and the config
/// digest of the manifest it names.
async fn ctr_image(containerd: &Containerd, reference: &str) -> (String, String) {
    let list = containerd
        .ctr(&["images", "ls"])
        .await
        .expect_success("ctr images ls");
    let line = list
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("{reference} not in `ctr images ls`: {list}"));
    let target = line.split_whitespace().nth(2).unwrap().to_owned();
    let manifest: Value = serde_json::from_slice(&containerd.content(&target).await)
        .unwrap_or_else(|e| panic!("{reference}: manifest {target} is not JSON: {e}"));
    let config = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("{reference}: manifest without a config: {manifest:#}"))
        .to_owned();
    (target, config)
}

/// `ctr images pull` and then the image's target and config digests must be
/// those pushed.
async fn assert_ctr_pulls(
    containerd: &Containerd,
    hosts: &Path,
    reference: &str,
    want: &Pushed,
    regcache: &Regcache,
) {
    let out = ctr_pull_ok(containerd, hosts, reference, regcache).await;
    let (target, config) = ctr_image(containerd, reference).await;
    assert_eq!(
        (target.as_str(), config.as_str()),
        (want.manifest.as_str(), want.config.as_str()),
        "{reference}: containerd's (manifest, config) digests; pull output:\n{out}"
    );
}

/// `podman pull REF` (must succeed), then its image ID and manifest digest.
async fn podman_pull(podman: &Podman, reference: &str, regcache: &Regcache) -> (String, String) {
    let out = podman.pull(reference).await;
    assert!(
        out.success(),
        "podman pull {reference} through regcache: {out}\nregcache log:\n{}",
        regcache.log()
    );
    let inspect = podman.inspect_image(reference).await;
    let id = inspect["Id"].as_str().unwrap_or_default();
    (
        format!("sha256:{}", id.trim_start_matches("sha256:")),
        inspect["Digest"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `skopeo copy docker://SRC dir:DEST`; returns `manifest.json`'s config
/// digest.
async fn skopeo_to_dir(src: &str, dest: &Path) -> String {
    Skopeo::new()
        .copy(
            &format!("docker://{src}"),
            &format!("dir:{}", dest.display()),
            None,
            false,
        )
        .await;
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dest.join("manifest.json")).unwrap()).unwrap();
    manifest["config"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("{src}: manifest without a config: {manifest:#}"))
        .to_owned()
}

async fn get(client: &RegistryClient, method: reqwest::Method, path: &str) -> Fetched {
    let accept: Vec<(&str, &str)> = ACCEPT.iter().map(|a| ("accept", *a)).collect();
    client
        .request(method, path, &accept, None)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------
// 1. Docker 20.10 with registry-mirrors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn docker_mirror_pulls_hub_short_names_and_a_fresh_daemon_needs_no_upstream_blobs() {
    let fx = Fixture::start("").await;
    let mut daemons = docker_daemons(&fx.regcache.url(), 2).into_iter();
    let (first, fresh) = (daemons.next().unwrap(), daemons.next().unwrap());
    let img = &fx.images;

    // Short Docker Hub names: no ns=, no prefix; the default upstream
    // (docker.io, listed second) adds library/.
    let out = docker_pull(&first, &fx.regcache, "small").await;
    assert_eq!(
        digest_after(&out.stdout, "Digest:"),
        Some(img.small.manifest.clone()),
        "{out}"
    );
    assert_docker_image(&first, "small:latest", &img.small, "small").await;

    let out = docker_pull(&first, &fx.regcache, "multi").await;
    assert_eq!(
        digest_after(&out.stdout, "Digest:"),
        Some(img.multi.manifest.clone()),
        "the list digest: {out}"
    );
    assert_docker_image(
        &first,
        "multi:latest",
        &img.multi,
        "multi (linux/amd64 of a list)",
    )
    .await;

    // The same tags exist on quay.io with other content, and regcache has
    // cached quay.io's first: Docker's mirror requests must get docker.io's.
    let client = fx.client();
    for (path, want) in [
        ("/v2/library/same/manifests/1?ns=quay.io", &img.quay_same),
        ("/v2/quay.io/team/same/manifests/1", &img.quay_team_same),
    ] {
        let answer = get(&client, reqwest::Method::GET, path).await;
        assert_eq!(
            (answer.status, answer.digest()),
            (200, Some(want.manifest.as_str())),
            "GET {path}: {}",
            answer.text()
        );
    }
    docker_pull(&first, &fx.regcache, "same:1").await;
    assert_docker_image(
        &first,
        "same:1",
        &img.hub_same,
        "same:1 (docker.io, not quay.io)",
    )
    .await;
    docker_pull(&first, &fx.regcache, "team/same:1").await;
    assert_docker_image(
        &first,
        "team/same:1",
        &img.hub_team_same,
        "team/same:1 (docker.io, not quay.io)",
    )
    .await;

    // regcache did fetch from the docker.io registry (the pulls were not
    // answered from elsewhere), and nothing from quay.io's.
    let hub_gets = all_upstream_blob_gets(&fx.hub.registry);
    for digest in img.small.layers.iter().chain(&img.multi.layers) {
        assert!(
            hub_gets.iter().any(|p| p.ends_with(digest.as_str())),
            "the docker.io registry never served {digest}: {hub_gets:#?}"
        );
    }
    assert!(
        all_upstream_blob_gets(&fx.quay.registry).is_empty(),
        "Docker Hub pulls reached the quay.io registry: {:#?}",
        fx.quay.registry.access_log()
    );

    // A fresh daemon (own data root): everything comes from regcache's cache.
    settle(&fx.hub.registry, Duration::from_millis(300)).await;
    let before = all_upstream_blob_gets(&fx.hub.registry);
    for (reference, want) in [
        ("small:latest", &img.small),
        ("multi:latest", &img.multi),
        ("same:1", &img.hub_same),
        ("team/same:1", &img.hub_team_same),
    ] {
        docker_pull(&fresh, &fx.regcache, reference).await;
        assert_docker_image(
            &fresh,
            reference,
            want,
            &format!("{reference} on a fresh daemon"),
        )
        .await;
    }
    settle(&fx.hub.registry, Duration::from_millis(300)).await;
    let after = all_upstream_blob_gets(&fx.hub.registry);
    assert_eq!(
        after.len(),
        before.len(),
        "the second pull (fresh daemon) made upstream blob GETs: {:#?}",
        &after[before.len().min(after.len())..]
    );

    // A direct pull from the registry (no regcache) gives the same image IDs.
    for (repo, want) in [("library/small", &img.small), ("library/multi", &img.multi)] {
        let direct = format!("{}/{repo}:latest", fx.hub.registry.host());
        fresh
            .docker(&["pull", &direct])
            .await
            .expect_success("direct docker pull");
        let inspect = fresh.inspect_image(&direct).await;
        assert_eq!(
            inspect["Id"],
            want.config.as_str(),
            "direct {repo}: {inspect:#}"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. containerd with hosts.toml for both registries (ns=)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn containerd_hosts_toml_pulls_from_both_registries_routed_by_ns() {
    let containerd = containerd_in_background();
    let fx = Fixture::start("").await;
    let work = tempfile::tempdir().unwrap();
    let hosts = fx.hosts_dir(work.path(), &["docker.io", "quay.io"]);
    let containerd = join(containerd);
    let img = &fx.images;

    for (reference, want) in [
        ("docker.io/library/small:latest", &img.small),
        ("quay.io/team/app:1", &img.app),
        // Same name and tag on both registries: docker.io first, so the
        // quay.io pull would see docker.io's cached tag if tags were not
        // kept per upstream; then quay.io first for team/same.
        ("docker.io/library/same:1", &img.hub_same),
        ("quay.io/library/same:1", &img.quay_same),
        ("quay.io/team/same:1", &img.quay_team_same),
        ("docker.io/team/same:1", &img.hub_team_same),
    ] {
        assert_ctr_pulls(&containerd, &hosts, reference, want, &fx.regcache).await;
    }

    let routes = fx.routes("routed by ns", "ns");
    for (ns, repo) in [("docker.io", "library/small"), ("quay.io", "team/app")] {
        assert!(
            routes.iter().any(|(n, up)| n == ns && up == ns),
            "regcache should log \"routed by ns\" with ns={ns} upstream={ns} (for {repo}); \
             got {routes:?}; log:\n{}",
            fx.regcache.log()
        );
    }
    assert!(
        routes.iter().all(|(n, up)| n == up),
        "an ns= request went to another upstream: {routes:?}"
    );
    // Each registry served its own image's layers.
    for (upstream, pushed) in [(&fx.hub, &img.small), (&fx.quay, &img.app)] {
        let gets = all_upstream_blob_gets(&upstream.registry);
        for digest in &pushed.layers {
            assert!(
                gets.iter().any(|p| p.ends_with(digest.as_str())),
                "{digest} was not fetched from its registry: {gets:#?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 3. podman with registries.conf mirrors (path prefixes)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn podman_registries_conf_mirrors_pull_from_both_registries_by_path_prefix() {
    let fx = Fixture::start("").await;
    let podman = Podman::new();
    let host = fx.regcache.host();
    podman.write_registries_conf(&format!(
        "unqualified-search-registries = []\n\n\
         [[registry]]\nprefix = \"docker.io\"\nlocation = \"{DEAD_PRIMARY}\"\n\n\
         [[registry.mirror]]\nlocation = \"{host}/docker.io\"\ninsecure = true\n\n\
         [[registry]]\nprefix = \"quay.io\"\nlocation = \"{DEAD_PRIMARY}\"\n\n\
         [[registry.mirror]]\nlocation = \"{host}/quay.io\"\ninsecure = true\n"
    ));
    let img = &fx.images;
    for (reference, want) in [
        ("docker.io/library/small:latest", &img.small),
        ("quay.io/team/app:1", &img.app),
        ("quay.io/library/same:1", &img.quay_same),
        ("docker.io/library/same:1", &img.hub_same),
    ] {
        let (id, digest) = podman_pull(&podman, reference, &fx.regcache).await;
        assert_eq!(
            (id.as_str(), digest.as_str()),
            (want.config.as_str(), want.manifest.as_str()),
            "{reference}: podman's (image ID, manifest digest)"
        );
    }
    let routes = fx.routes("routed by path prefix", "prefix");
    for registry in ["docker.io", "quay.io"] {
        assert!(
            routes.iter().any(|(p, up)| p == registry && up == registry),
            "regcache should log \"routed by path prefix\" with prefix={registry} \
             upstream={registry}; got {routes:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 4. skopeo with a path-prefix reference
// ---------------------------------------------------------------------------

#[tokio::test]
async fn skopeo_path_prefix_copies_match_direct_copies_and_same_tags_stay_apart() {
    let fx = Fixture::start("").await;
    let work = tempfile::tempdir().unwrap();
    let host = fx.regcache.host();
    let img = &fx.images;

    let via = work.path().join("via-regcache");
    let direct = work.path().join("direct");
    let config = skopeo_to_dir(&format!("{host}/quay.io/team/app:1"), &via).await;
    assert_eq!(config, img.app.config);
    skopeo_to_dir(&format!("{}/team/app:1", fx.quay.registry.host()), &direct).await;
    assert_eq!(
        dir_contents(&via),
        dir_contents(&direct),
        "skopeo's copy through regcache (path prefix) differs from the direct copy"
    );

    // Same name and tag on both upstreams; every spelling lands on the right
    // one, in an order where a shared tag cache would mix them up.
    for (i, (reference, want)) in [
        (format!("{host}/docker.io/library/same:1"), &img.hub_same),
        (format!("{host}/quay.io/library/same:1"), &img.quay_same),
        (format!("{host}/docker.io/same:1"), &img.hub_same),
        (format!("{host}/same:1"), &img.hub_same),
        (format!("{host}/library/same:1"), &img.hub_same),
        (format!("{host}/quay.io/team/same:1"), &img.quay_team_same),
        (format!("{host}/docker.io/team/same:1"), &img.hub_team_same),
        (format!("{host}/team/same:1"), &img.hub_team_same),
    ]
    .iter()
    .enumerate()
    {
        let config = skopeo_to_dir(reference, &work.path().join(format!("same-{i}"))).await;
        assert_eq!(&config, &want.config, "skopeo copy {reference}");
    }
    let routes = fx.routes("routed by path prefix", "prefix");
    assert!(
        routes
            .iter()
            .any(|(p, up)| p == "quay.io" && up == "quay.io"),
        "{routes:?}"
    );
}

// ---------------------------------------------------------------------------
// 6. A registry no upstream names
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_registry_no_upstream_names_is_denied_without_an_outgoing_request() {
    let containerd = containerd_in_background();
    let fx = Fixture::start("").await;
    let client = fx.client();
    let work = tempfile::tempdir().unwrap();
    let hosts = fx.hosts_dir(work.path(), &["ghcr.io"]);

    let sent = |fx: &Fixture| {
        (
            fx.hub.proxy.requests().len(),
            fx.quay.proxy.requests().len(),
            fx.hub.registry.access_entries().len(),
            fx.quay.registry.access_entries().len(),
        )
    };
    settle(&fx.hub.registry, Duration::from_millis(200)).await;
    let before = sent(&fx);
    let metrics_before = fx.metrics().await.sum(UPSTREAM_REQUESTS, &[]);

    let hex = "a".repeat(64);
    for (path, registry) in [
        ("/v2/team/x/manifests/1?ns=ghcr.io".to_owned(), "ghcr.io"),
        (
            "/v2/library/x/manifests/latest?ns=ghcr.io".to_owned(),
            "ghcr.io",
        ),
        (
            format!("/v2/team/x/blobs/sha256:{hex}?ns=ghcr.io"),
            "ghcr.io",
        ),
        (
            "/v2/team/x/manifests/1?ns=ghcr.io%3A5000".to_owned(),
            "ghcr.io:5000",
        ),
        ("/v2/ghcr.io/team/x/manifests/1".to_owned(), "ghcr.io"),
        (format!("/v2/ghcr.io/team/x/blobs/sha256:{hex}"), "ghcr.io"),
        ("/v2/ghcr.io/team/x/tags/list".to_owned(), "ghcr.io"),
        (
            "/v2/localhost:5000/team/x/manifests/1".to_owned(),
            "localhost:5000",
        ),
    ] {
        let answer = get(&client, reqwest::Method::GET, &path).await;
        assert_error(&format!("GET {path}"), &answer, 403, "DENIED");
        let message =
            serde_json::from_slice::<Value>(&answer.body).unwrap()["errors"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        assert!(
            message.contains("regcache has no upstream for registry")
                && message.contains(&format!("{registry:?}")),
            "GET {path}: the message should name {registry:?}: {message}"
        );
        let head = get(&client, reqwest::Method::HEAD, &path).await;
        assert_eq!(head.status, 403, "HEAD {path}");
    }

    // containerd with a hosts.toml for ghcr.io that points at regcache.
    let containerd = join(containerd);
    let out = ctr_pull(&containerd, &hosts, "ghcr.io/team/x:1").await;
    assert!(
        !out.success(),
        "ctr pulled an image of an unconfigured registry: {out}"
    );
    assert!(
        out.output().contains("403"),
        "ctr should report regcache's 403: {out}\nregcache log:\n{}",
        fx.regcache.log()
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = sent(&fx);
    assert_eq!(
        after,
        before,
        "(docker.io proxy, quay.io proxy, docker.io registry, quay.io registry) request \
         counts changed: regcache went upstream for an unconfigured registry; new \
         requests: {:#?} {:#?}",
        &fx.hub.proxy.requests()[before.0..],
        &fx.quay.proxy.requests()[before.1..]
    );
    let metrics = fx.metrics().await;
    assert_eq!(
        metrics.sum(UPSTREAM_REQUESTS, &[]),
        metrics_before,
        "{UPSTREAM_REQUESTS} changed:\n{}",
        metrics.text
    );

    // Controls: configured registries by name, URL-encoded host:port of the
    // upstream URL, and path prefix, all answer.
    let quay_host = fx.quay.proxy.host();
    let encoded = quay_host.replace(':', "%3A");
    for path in [
        "/v2/team/app/manifests/1?ns=quay.io".to_owned(),
        format!("/v2/team/app/manifests/1?ns={encoded}"),
        format!("/v2/{quay_host}/team/app/manifests/1"),
        "/v2/quay.io/team/app/manifests/1".to_owned(),
    ] {
        let answer = get(&client, reqwest::Method::GET, &path).await;
        assert_eq!(
            (answer.status, answer.digest()),
            (200, Some(fx.images.app.manifest.as_str())),
            "GET {path}: {}",
            answer.text()
        );
    }
}

// ---------------------------------------------------------------------------
// 7. docker.io answers 429
// ---------------------------------------------------------------------------

#[tokio::test]
async fn upstream_429_cached_images_still_pull_and_uncached_ones_get_toomanyrequests() {
    let warm_containerd = containerd_in_background();
    let cold_containerd = containerd_in_background();
    // A 1 s tag TTL, so that pulls after the 429s start revalidate (and hit
    // them); one attempt, so that a 429 is not retried.
    let fx = Fixture::start("tag_ttl_secs = 1\nretry_attempts = 1").await;
    let docker = docker_daemons(&fx.regcache.url(), 1).pop().unwrap();
    let work = tempfile::tempdir().unwrap();
    let hosts = fx.hosts_dir(work.path(), &["docker.io", "quay.io"]);
    let host = fx.regcache.host();
    let img = &fx.images;
    let client = fx.client();

    // Warm: docker (mirror), containerd (ns=docker.io), skopeo (prefix).
    docker_pull(&docker, &fx.regcache, "warm:1").await;
    assert_docker_image(&docker, "warm:1", &img.warm, "warm:1 before the 429s").await;
    let warm_containerd = join(warm_containerd);
    assert_ctr_pulls(
        &warm_containerd,
        &hosts,
        "docker.io/library/warm:1",
        &img.warm,
        &fx.regcache,
    )
    .await;
    let config = skopeo_to_dir(
        &format!("{host}/docker.io/library/warm:1"),
        &work.path().join("warm-before"),
    )
    .await;
    assert_eq!(config, img.warm.config);

    // From now on docker.io answers every request with 429.
    fx.hub
        .proxy
        .inject(Target::Path("/v2/".into()), Fault::Status(429));
    let seen_before = fx.hub.proxy.requests().len();
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the tag TTL

    // Cached: every client still pulls (after forgetting its local copy).
    docker
        .docker(&["image", "rm", "warm:1"])
        .await
        .expect_success("docker image rm");
    docker_pull(&docker, &fx.regcache, "warm:1").await;
    assert_docker_image(&docker, "warm:1", &img.warm, "warm:1 during the 429s").await;
    let cold_containerd = join(cold_containerd);
    assert_ctr_pulls(
        &cold_containerd,
        &hosts,
        "docker.io/library/warm:1",
        &img.warm,
        &fx.regcache,
    )
    .await;
    let config = skopeo_to_dir(
        &format!("{host}/docker.io/library/warm:1"),
        &work.path().join("warm-during"),
    )
    .await;
    assert_eq!(config, img.warm.config);
    let fetched = get(
        &client,
        reqwest::Method::GET,
        "/v2/library/warm/manifests/1",
    )
    .await;
    assert_eq!(
        (fetched.status, fetched.digest()),
        (200, Some(img.warm.manifest.as_str())),
        "a cached tag during the 429s: {}",
        fetched.text()
    );
    // The revalidations really met the 429s.
    let revalidations: Vec<_> = fx.hub.proxy.requests()[seen_before..]
        .iter()
        .filter(|s| s.path.contains("/library/warm/manifests/") && s.status == 429)
        .cloned()
        .collect();
    assert!(
        !revalidations.is_empty(),
        "regcache never asked docker.io about warm:1 after the TTL: {:#?}",
        &fx.hub.proxy.requests()[seen_before..]
    );

    // quay.io is unaffected.
    let config = skopeo_to_dir(
        &format!("{host}/quay.io/team/app:1"),
        &work.path().join("quay-during"),
    )
    .await;
    assert_eq!(config, img.app.config);

    // Uncached: 429 TOOMANYREQUESTS, with every spelling of the request.
    for path in [
        "/v2/library/cold/manifests/1".to_owned(),
        "/v2/cold/manifests/1".to_owned(),
        "/v2/library/cold/manifests/1?ns=docker.io".to_owned(),
        "/v2/docker.io/library/cold/manifests/1".to_owned(),
        format!("/v2/library/cold/blobs/{}", img.cold.config),
    ] {
        let answer = get(&client, reqwest::Method::GET, &path).await;
        assert_error(&format!("GET {path}"), &answer, 429, "TOOMANYREQUESTS");
        let head = get(&client, reqwest::Method::HEAD, &path).await;
        assert_eq!(head.status, 429, "HEAD {path}");
    }
    let skopeo = Skopeo::new()
        .try_copy(
            &format!("docker://{host}/docker.io/library/cold:1"),
            &format!("dir:{}", work.path().join("cold").display()),
            None,
            false,
            &Default::default(),
        )
        .await;
    let err = skopeo.expect_err("skopeo copied an uncached image during the 429s");
    assert!(
        err.stderr.to_lowercase().contains("toomanyrequests") || err.stderr.contains("429"),
        "skopeo should report the 429: {err}"
    );
    let out = ctr_pull(&cold_containerd, &hosts, "docker.io/library/cold:1").await;
    assert!(
        !out.success(),
        "ctr pulled an uncached image during the 429s: {out}"
    );
    assert!(
        out.output().contains("429"),
        "ctr should report regcache's 429: {out}"
    );
    let log_before = docker.log().len();
    let out = docker.docker(&["pull", "cold:1"]).await;
    assert!(
        !out.success(),
        "docker pulled an uncached image during the 429s: {out}"
    );
    let log = docker.log();
    assert!(
        log[log_before.min(log.len())..]
            .to_lowercase()
            .contains("toomanyrequests"),
        "dockerd's log should show regcache's TOOMANYREQUESTS before its fallback: {out}\n{}",
        &log[log_before.min(log.len())..]
    );

    let metrics = fx.metrics().await;
    assert!(
        metrics.sum(
            UPSTREAM_REQUESTS,
            &[("upstream", "docker.io"), ("status", "429")]
        ) > 0.0,
        "{UPSTREAM_REQUESTS} should count docker.io's 429s:\n{}",
        metrics.text
    );
}

// ---------------------------------------------------------------------------
// 8. Listings under a registry path prefix
// ---------------------------------------------------------------------------

/// `GET path`: 200 with a JSON body whose `Content-Length` is its length.
async fn listing(client: &RegistryClient, path: &str) -> Value {
    let answer = get(client, reqwest::Method::GET, path).await;
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.text());
    assert_eq!(
        answer.header("content-length"),
        Some(answer.body.len().to_string().as_str()),
        "GET {path}: Content-Length"
    );
    serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {}", answer.text()))
}

#[tokio::test]
async fn tag_lists_name_the_repository_as_the_client_did() {
    let fx = Fixture::start("").await;
    let client = fx.client();
    let direct = get(
        &fx.quay.direct(),
        reqwest::Method::GET,
        "/v2/team/app/tags/list",
    )
    .await;
    let upstream: Value = serde_json::from_slice(&direct.body).unwrap();
    assert_eq!(upstream["name"], "team/app", "{upstream}");

    for (path, name, tags) in [
        (
            "/v2/quay.io/team/app/tags/list",
            "quay.io/team/app",
            vec!["1"],
        ),
        ("/v2/team/app/tags/list?ns=quay.io", "team/app", vec!["1"]),
        (
            "/v2/docker.io/library/small/tags/list",
            "docker.io/library/small",
            vec!["latest"],
        ),
        (
            "/v2/docker.io/small/tags/list",
            "docker.io/small",
            vec!["latest"],
        ),
        (
            "/v2/library/small/tags/list",
            "library/small",
            vec!["latest"],
        ),
        ("/v2/small/tags/list", "small", vec!["latest"]),
    ] {
        let body = listing(&client, path).await;
        assert_eq!(
            body,
            serde_json::json!({ "name": name, "tags": tags }),
            "GET {path}"
        );
    }

    // skopeo, given a path-prefix reference.
    let out = Skopeo::new()
        .run(vec![
            "list-tags".into(),
            "--tls-verify=false".into(),
            format!("docker://{}/quay.io/team/app", fx.regcache.host()),
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listed: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(listed["Tags"], serde_json::json!(["1"]), "{listed}");

    // The catalog under a prefix lists the upstream's own names: they are what
    // its `last=` pagination takes.
    let catalog = listing(&client, "/v2/quay.io/_catalog").await;
    let repositories = catalog["repositories"].as_array().unwrap();
    assert!(
        repositories.iter().any(|r| r == "team/app")
            && !repositories
                .iter()
                .any(|r| r.as_str().unwrap_or_default().starts_with("quay.io/")),
        "{catalog}"
    );

    // The upstream failing: regcache answers from its tag index, with the
    // same name.
    let pulled = get(
        &client,
        reqwest::Method::GET,
        "/v2/quay.io/team/app/manifests/1",
    )
    .await;
    assert_eq!(pulled.status, 200, "{}", pulled.text());
    fx.quay
        .proxy
        .inject(Target::Path("/tags/list".into()), Fault::Status(503));
    let body = listing(&client, "/v2/quay.io/team/app/tags/list").await;
    assert_eq!(
        body,
        serde_json::json!({ "name": "quay.io/team/app", "tags": ["1"] }),
        "from regcache's tag index; log:\n{}",
        fx.regcache.log()
    );
    assert!(
        fx.quay
            .proxy
            .requests()
            .iter()
            .any(|s| s.path.contains("/tags/list") && s.status == 503),
        "the upstream was asked and failed: {:#?}",
        fx.quay.proxy.requests()
    );
}

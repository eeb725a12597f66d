//! Shared fixtures of the `regcache serve` tests: the upstream in one of three
//! auth modes, the test images, the one 100 MiB layer (generated once per
//! test run), and waits on the registry's access log.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use regcache_tests::image::{config, default_history, media};
use regcache_tests::registry::Credentials;
use regcache_tests::skopeo::CopyOptions;
use regcache_tests::{
    FaultProxy, Fetched, Image, ImageGen, Layer, ManifestFormat, OciLayout, Platform, Regcache,
    RegcacheOptions, Registry, RegistryClient, RegistryOptions, Skopeo, SkopeoFormat, TokenServer,
    TokenServerOptions,
};
use serde_json::Value;

/// Every manifest type, one line each, in skopeo's order (REAL-COMPONENTS).
pub const FULL_ACCEPT: &[&str] = &[
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST,
    media::SCHEMA1_SIGNED,
    "application/vnd.docker.distribution.manifest.v1+json",
    media::DOCKER_LIST,
    media::OCI_INDEX,
];

/// Size of the big layer's file (the blob is a few bytes larger).
pub const BIG: usize = 100 << 20;

/// The 100 MiB layer, made once per test binary run.
pub fn big_layer() -> &'static Layer {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    LAYER.get_or_init(|| regcache_tests::image::big_layer(0xb16, BIG))
}

/// An image with the big layer on top of a small one.
pub fn big_image() -> Image {
    let mut g = ImageGen::new(0xb17);
    let layers = vec![g.layer(), big_layer().clone()];
    let platform = Platform::linux_amd64();
    let cfg = config(&platform, &layers, &default_history(2), Value::Null);
    Image::new(&cfg, layers, platform)
}

/// A two-layer image for `platform`.
pub fn small_image(seed: u64, platform: Platform) -> Image {
    let mut g = ImageGen::new(seed);
    let layers = g.layers(2);
    let cfg = config(&platform, &layers, &default_history(2), Value::Null);
    Image::new(&cfg, layers, platform)
}

/// How the upstream registry authenticates clients (regcache included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Htpasswd,
    Token,
}

/// A registry behind a pass-through fault proxy: regcache talks to the
/// proxy, the test pushes straight to the registry.
pub struct ProxiedRegistry {
    pub registry: Registry,
    pub proxy: FaultProxy,
}

impl ProxiedRegistry {
    pub fn start() -> ProxiedRegistry {
        let registry = Registry::start(RegistryOptions::default());
        let proxy = FaultProxy::start(&registry.url());
        ProxiedRegistry { registry, proxy }
    }

    /// A client straight to the registry (pushes, direct pulls).
    pub fn direct(&self) -> RegistryClient {
        RegistryClient::new(self.registry.url())
    }
}

/// The real registry in one [`Mode`], with what it takes to talk to it.
#[derive(Debug)]
pub struct Upstream {
    pub registry: Registry,
    pub tokens: Option<TokenServer>,
    pub creds: Option<Credentials>,
}

impl Upstream {
    pub fn start(mode: Mode) -> Upstream {
        let creds = Credentials::new("regcache-e2e", "upstream-secret");
        match mode {
            Mode::Plain => Upstream {
                registry: Registry::start(RegistryOptions::default()),
                tokens: None,
                creds: None,
            },
            Mode::Htpasswd => Upstream {
                registry: Registry::start(RegistryOptions {
                    htpasswd: Some(creds.clone()),
                    ..RegistryOptions::default()
                }),
                tokens: None,
                creds: Some(creds),
            },
            Mode::Token => {
                let tokens = TokenServer::start(TokenServerOptions::with_user(creds.clone()));
                let registry = Registry::start(RegistryOptions {
                    token_auth: Some(tokens.registry_auth()),
                    ..RegistryOptions::default()
                });
                Upstream {
                    registry,
                    tokens: Some(tokens),
                    creds: Some(creds),
                }
            }
        }
    }

    /// A direct client allowed to push and pull `repos`.
    pub fn client(&self, repos: &[&str]) -> RegistryClient {
        let client = RegistryClient::new(self.registry.url());
        match (&self.tokens, &self.creds) {
            (Some(tokens), _) => {
                let scopes: Vec<String> = repos
                    .iter()
                    .map(|r| format!("repository:{r}:pull,push"))
                    .collect();
                let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
                client.with_bearer(tokens.mint("regcache-e2e", &scopes))
            }
            (None, Some(creds)) => client.with_basic_auth(creds.clone()),
            (None, None) => client,
        }
    }

    /// skopeo credentials for both sides of a direct copy.
    pub fn skopeo_creds(&self) -> CopyOptions {
        CopyOptions {
            src_creds: self.creds.clone(),
            dest_creds: self.creds.clone(),
            ..CopyOptions::default()
        }
    }

    /// Options for a regcache in front of this upstream.
    pub fn regcache_options(&self) -> RegcacheOptions {
        let mut options = RegcacheOptions::new(self.registry.url()).credentials(self.creds.clone());
        if let Some(tokens) = &self.tokens {
            // The token server is another origin (its own port): regcache
            // sends it the credentials only when told to.
            options.auth_realms = vec![tokens.authority()];
        }
        options
    }

    pub fn start_regcache(&self) -> Regcache {
        Regcache::start(self.regcache_options())
    }
}

/// One image in the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub label: &'static str,
    pub repo: String,
    pub tag: String,
    /// A manifest list / index (copied with `--all`).
    pub list: bool,
    /// The digest the registry serves for the tag.
    pub digest: String,
    /// Digests of every blob of every image (config and layers).
    pub blobs: Vec<String>,
    /// Child manifest digests (lists only).
    pub children: Vec<String>,
}

/// Pushes the test images: Schema 2, OCI manifest, Docker manifest list, OCI
/// index (all with skopeo from an OCI layout) and, when `with_big`, the
/// 100 MiB image (upload API: skopeo would copy the blob twice more).
pub async fn push_test_images(upstream: &Upstream, prefix: &str, with_big: bool) -> Vec<Pushed> {
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(work.path());
    let schema2 = small_image(11, Platform::linux_amd64());
    let oci = small_image(12, Platform::linux_amd64());
    let list = [
        small_image(13, Platform::linux_amd64()),
        small_image(14, Platform::new("linux", "arm64", Some("v8"))),
    ];
    let index = [
        small_image(15, Platform::linux_amd64()),
        small_image(16, Platform::new("linux", "s390x", None)),
    ];
    layout.add_image("schema2", &schema2);
    layout.add_image("oci", &oci);
    layout.add_index("list", &[&list[0], &list[1]]);
    layout.add_index("index", &[&index[0], &index[1]]);
    let blobs_of = |images: &[&Image]| -> Vec<String> {
        images
            .iter()
            .flat_map(|i| i.blobs().into_iter().map(|(d, _)| d))
            .collect()
    };
    let specs: Vec<(&'static str, SkopeoFormat, bool, Vec<String>)> = vec![
        ("schema2", SkopeoFormat::V2s2, false, blobs_of(&[&schema2])),
        ("oci", SkopeoFormat::Oci, false, blobs_of(&[&oci])),
        (
            "list",
            SkopeoFormat::V2s2,
            true,
            blobs_of(&[&list[0], &list[1]]),
        ),
        (
            "index",
            SkopeoFormat::Oci,
            true,
            blobs_of(&[&index[0], &index[1]]),
        ),
    ];
    let skopeo = Skopeo::new();
    let creds = upstream.skopeo_creds();
    let host = upstream.registry.host();
    let pushes = specs.iter().map(|(label, format, all, _)| {
        let (skopeo, creds, layout) = (&skopeo, &creds, &layout);
        let dst = format!("docker://{host}/{prefix}/{label}:v1");
        async move {
            skopeo
                .try_copy(&layout.reference(label), &dst, Some(*format), *all, creds)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    });
    futures_util::future::join_all(pushes).await;

    let mut repos: Vec<String> = specs
        .iter()
        .map(|(label, ..)| format!("{prefix}/{label}"))
        .collect();
    repos.push(format!("{prefix}/big"));
    let repo_refs: Vec<&str> = repos.iter().map(String::as_str).collect();
    let client = upstream.client(&repo_refs);
    let mut pushed = Vec::new();
    for (label, _, list, blobs) in specs {
        let repo = format!("{prefix}/{label}");
        let got = client.get_manifest(&repo, "v1", FULL_ACCEPT).await.unwrap();
        assert_eq!(got.status, 200, "{repo}:v1 {}", got.text());
        let digest = got.digest().unwrap().to_owned();
        assert_eq!(digest, regcache_tests::sha256_digest(&got.body));
        let children = if list {
            let doc: Value = serde_json::from_slice(&got.body).unwrap();
            doc["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["digest"].as_str().unwrap().to_owned())
                .collect()
        } else {
            Vec::new()
        };
        pushed.push(Pushed {
            label,
            repo,
            tag: "v1".into(),
            list,
            digest,
            blobs,
            children,
        });
    }
    if with_big {
        let repo = format!("{prefix}/big");
        let image = big_image();
        let digest = client
            .push_image(&repo, "v1", &image, ManifestFormat::Docker)
            .await;
        pushed.push(Pushed {
            label: "big",
            repo,
            tag: "v1".into(),
            list: false,
            digest,
            blobs: image.blobs().into_iter().map(|(d, _)| d).collect(),
            children: Vec::new(),
        });
    }
    pushed
}

/// Waits until the registry's access log has not grown for `quiet`
/// (at most 15 s): every request whose response finished is logged.
pub async fn settle(registry: &Registry, quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = registry.access_entries().len();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = registry.access_entries().len();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

/// `GET …/blobs/<digest>` lines in the registry's access log.
pub fn upstream_blob_gets(registry: &Registry, digest: &str) -> usize {
    registry
        .access_entries()
        .iter()
        .filter(|e| {
            e.method == "GET"
                && e.path
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .ends_with(&format!("/blobs/{digest}"))
        })
        .count()
}

/// Every `GET …/blobs/…` line (not uploads) in the registry's access log.
pub fn all_upstream_blob_gets(registry: &Registry) -> Vec<String> {
    registry
        .access_entries()
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.contains("/blobs/sha256:"))
        .map(|e| e.path)
        .collect()
}

/// Polls `check` every 50 ms for up to `timeout`; true once it held.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every file under `dir` (relative path → bytes of small files, or a
/// digest of large ones).
pub fn dir_contents(dir: &Path) -> Vec<(PathBuf, usize, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((
                    path.strip_prefix(dir).unwrap().to_owned(),
                    bytes.len(),
                    regcache_tests::sha256_digest(&bytes),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Every path under `dir` with its size, for failure messages.
pub fn dir_listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((path.strip_prefix(dir).unwrap_or(&path).to_owned(), size));
        }
    }
    out.sort();
    out
}

/// Total size of the files under `dir` (0 when it does not exist).
pub fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(_) => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

/// Whether a file named like the digest's hex exists under `dir`.
pub fn file_named_exists(dir: &Path, digest: &str) -> bool {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            } else if entry.file_name().to_string_lossy() == hex {
                return true;
            }
        }
    }
    false
}

/// Asserts `Docker-Distribution-API-Version: registry/2.0` on a response.
pub fn assert_api_version(what: &str, response: &Fetched) {
    assert_eq!(
        response.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{what}: missing Docker-Distribution-API-Version; headers {:?}",
        response.headers
    );
}

/// Asserts a registry error envelope with `code` (and the right content type).
pub fn assert_error(what: &str, response: &Fetched, status: u16, code: &str) {
    assert_api_version(what, response);
    assert_eq!(
        (response.status, response.error_code().as_deref()),
        (status, Some(code)),
        "{what}: body {}",
        response.text()
    );
    let envelope: Value = serde_json::from_slice(&response.body).unwrap();
    assert!(
        envelope["errors"][0]["message"].is_string(),
        "{what}: no message in {envelope}"
    );
    assert!(
        response
            .content_type()
            .is_some_and(|t| t.starts_with("application/json")),
        "{what}: content type {:?}",
        response.content_type()
    );
}

/// `GET /v2/<repo>/manifests/<reference>` with these `Accept` lines.
///
/// # Panics
/// On a transport failure.
pub async fn get_manifest(
    client: &RegistryClient,
    repo: &str,
    reference: &str,
    accept: &[&str],
) -> Fetched {
    client
        .get_manifest(repo, reference, accept)
        .await
        .unwrap_or_else(|e| panic!("GET {repo}:{reference} from {}: {e}", client.base_url()))
}

/// `method path` with these `Accept` lines and no body.
///
/// # Panics
/// On a transport failure.
pub async fn request_accepting(
    client: &RegistryClient,
    method: reqwest::Method,
    path: &str,
    accept: &[&str],
) -> Fetched {
    let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
    client
        .request(method.clone(), path, &headers, None)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

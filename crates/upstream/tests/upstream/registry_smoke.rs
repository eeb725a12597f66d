//! Smoke test against the real distribution registry (`/usr/bin/docker-registry`,
//! Debian package `docker-registry`; `scripts/test` installs it). A missing
//! registry fails the test with that advice; it is never skipped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method};
use regcache_formats::ErrorCode;
use regcache_formats::media_type::ALL_MANIFEST_TYPES;
use regcache_upstream::{Credentials, RawRequest, RequestBody, UpstreamClient};

use crate::support::*;

const BINARY: &str = "/usr/bin/docker-registry";

struct Registry {
    child: Child,
    _dir: tempfile::TempDir,
    url: url::Url,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require_registry() {
    assert!(
        Path::new(BINARY).exists(),
        "{BINARY} is missing: install it with `sudo apt-get install -y docker-registry` (or run scripts/test, which does)"
    );
}

async fn start_registry(htpasswd: Option<&str>) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let addr = closed_port().await;
    let mut config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n",
        dir.path().join("data").display()
    );
    if let Some(entry) = htpasswd {
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("{entry}\n")).unwrap();
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: regcache-test\n    path: {}\n",
            path.display()
        ));
    }
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(BINARY)
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = url::Url::parse(&format!("http://{addr}")).unwrap();
    Registry {
        child,
        _dir: dir,
        url,
    }
}

/// Wait until the registry answers `/v2/` at all (any status).
async fn wait_ready(url: &url::Url) {
    let up = UpstreamClient::new(config(url.clone())).unwrap();
    for _ in 0..100 {
        match up.ping().await {
            Ok(()) => return,
            Err(e) if e.registry_status().is_some() => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("registry did not start");
}

/// The path and query of an absolute `Location`.
fn path_and_query(location: &str) -> String {
    let u = url::Url::parse(location).unwrap();
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    }
}

async fn push_blob(up: &UpstreamClient, repo: &str, data: &'static [u8], streamed: bool) {
    let start = up
        .send(RawRequest::new(
            Method::POST,
            format!("/v2/{repo}/blobs/uploads/"),
        ))
        .await
        .unwrap();
    assert_eq!(start.status, 202);
    let location = start.headers["location"].to_str().unwrap().to_owned();
    let mut pq = path_and_query(&location);
    if streamed {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/octet-stream".parse().unwrap());
        h.insert("content-length", data.len().to_string().parse().unwrap());
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            data.chunks(3).map(|c| Ok(Bytes::from_static(c))).collect();
        let patch = up
            .send(
                RawRequest::new(Method::PATCH, pq.clone())
                    .headers(h)
                    .body(RequestBody::stream(futures_util::stream::iter(chunks))),
            )
            .await
            .unwrap();
        assert_eq!(patch.status, 202);
        pq = path_and_query(patch.headers["location"].to_str().unwrap());
    }
    let sep = if pq.contains('?') { '&' } else { '?' };
    let put = RawRequest::new(Method::PUT, format!("{pq}{sep}digest={}", sha256(data)));
    let put = if streamed {
        put
    } else {
        put.body(Bytes::from_static(data))
    };
    let done = up.send(put).await.unwrap();
    assert_eq!(done.status, 201, "{done:?}");
}

#[tokio::test]
async fn against_distribution_registry() {
    require_registry();
    let registry = start_registry(None).await;
    wait_ready(&registry.url).await;
    let up = UpstreamClient::new(config(registry.url.clone())).unwrap();
    up.ping().await.unwrap();
    push_and_pull(&up).await;
}

async fn push_and_pull(up: &UpstreamClient) {
    const CONFIG: &[u8] =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    const LAYER: &[u8] = b"not really a tarball, but a blob all the same";
    push_blob(up, "smoke/app", CONFIG, false).await;
    push_blob(up, "smoke/app", LAYER, true).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{SCHEMA2}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{}"}}]}}"#,
        CONFIG.len(),
        sha256(CONFIG),
        LAYER.len(),
        sha256(LAYER)
    );
    let mut h = HeaderMap::new();
    h.insert("content-type", SCHEMA2.parse().unwrap());
    let put = up
        .send(
            RawRequest::new(Method::PUT, "/v2/smoke/app/manifests/v1")
                .headers(h)
                .body(manifest.clone().into_bytes()),
        )
        .await
        .unwrap();
    assert_eq!(put.status, 201);
    let digest = sha256(manifest.as_bytes());

    let head = up
        .head_manifest("smoke/app", "v1", &ALL_MANIFEST_TYPES)
        .await
        .unwrap();
    assert_eq!(head.digest.as_ref(), Some(&digest));
    assert_eq!(head.media_type.as_deref(), Some(SCHEMA2));
    assert_eq!(head.size, Some(manifest.len() as u64));
    let got = up
        .get_manifest("smoke/app", digest.as_str(), &ALL_MANIFEST_TYPES)
        .await
        .unwrap();
    assert_eq!(got.bytes, Bytes::from(manifest.clone()));
    assert_eq!(got.digest_header, Some(digest));

    let blob = up.head_blob("smoke/app", &sha256(LAYER)).await.unwrap();
    assert_eq!(blob.size, LAYER.len() as u64);
    let range = up
        .get_blob("smoke/app", &sha256(LAYER), Some((4, None)))
        .await
        .unwrap();
    assert_eq!(range.status, 206);
    let bytes: Vec<Bytes> = range.stream.map(|c| c.unwrap()).collect().await;
    assert_eq!(bytes.concat(), &LAYER[4..]);

    let tags = up
        .send(RawRequest::new(Method::GET, "/v2/smoke/app/tags/list"))
        .await
        .unwrap();
    assert_eq!(tags.status, 200);
    let tags: serde_json::Value = serde_json::from_slice(&tags.bytes(4096).await.unwrap()).unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));

    let err = up
        .get_manifest("smoke/app", "nosuch", &ALL_MANIFEST_TYPES)
        .await
        .unwrap_err();
    assert_eq!(err.registry_status(), Some(404));
    assert_eq!(
        err.envelope().unwrap().errors[0].code,
        ErrorCode::ManifestUnknown
    );
    let err = up
        .head_blob("smoke/app", &sha256(b"missing"))
        .await
        .unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn against_distribution_registry_with_htpasswd() {
    require_registry();
    // bcrypt, as htpasswd -B writes it (cost 4 keeps the test fast).
    let entry = format!("smoke:{}", bcrypt::hash("smoke-pw", 4).unwrap());
    let registry = start_registry(Some(entry.trim())).await;
    wait_ready(&registry.url).await;

    let anonymous = UpstreamClient::new(config(registry.url.clone())).unwrap();
    let err = anonymous.ping().await.unwrap_err();
    assert_eq!(err.registry_status(), Some(401));

    let up = UpstreamClient::new(
        config(registry.url.clone()).with_credentials(Credentials::new("smoke", "smoke-pw")),
    )
    .unwrap();
    up.ping().await.unwrap();
    push_and_pull(&up).await;
    assert_eq!(up.stats().token_requests, 0, "htpasswd: Basic, no tokens");
}

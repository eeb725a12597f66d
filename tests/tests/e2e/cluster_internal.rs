//! The cluster's internal endpoint (issue 15) is locked: `/internal/v1/…`
//! on a replica's internal listener answers only requests that carry the
//! cluster secret as a bearer token (401 with a registry-style
//! `UNAUTHORIZED` envelope otherwise, and a refused blob request starts no
//! upstream fill), and no route of the registry or admin listener reaches
//! it, whatever the path.

use bytes::Bytes;
use regcache_tests::cluster::TestCluster;
use regcache_tests::image::random_bytes;
use regcache_tests::{Registry, RegistryClient, RegistryOptions};
use std::time::Duration;

use crate::cluster::http;
use crate::support::{all_upstream_blob_gets, settle};

/// `GET url` with an optional bearer token: status and body.
async fn get_with(http: &reqwest::Client, url: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = http.get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap_or_else(|e| {
        panic!("GET {url} (does the replica serve its [cluster] listen address?): {e}")
    });
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn assert_unauthorized(what: &str, (status, body): &(u16, String)) {
    assert_eq!(*status, 401, "{what}: {body}");
    let envelope: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: the 401 body is not JSON ({e}): {body}"));
    assert_eq!(
        envelope["errors"][0]["code"].as_str(),
        Some("UNAUTHORIZED"),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_endpoint_needs_the_secret_and_is_not_on_the_registry_port() {
    let registry = Registry::start(RegistryOptions::default());
    let repo = "cluster/locked";
    let digest = RegistryClient::new(registry.url())
        .push_blob(repo, Bytes::from(random_bytes(0x10c, 4096)))
        .await;
    let cluster = TestCluster::start(2, &registry.url(), |o| o).await;
    let http = http();
    let secret = cluster.secret().to_owned();
    let internal = cluster.internal_url(0);
    let health = format!("{internal}/internal/v1/health");
    let blob =
        format!("{internal}/internal/v1/blobs/{digest}?upstream=e2e-upstream&repository={repo}");

    let without = get_with(&http, &health, None).await;
    assert_unauthorized("health without a secret", &without);
    let wrong = get_with(&http, &health, Some("not-the-secret")).await;
    assert_unauthorized("health with a wrong secret", &wrong);
    let right = get_with(&http, &health, Some(&secret)).await;
    assert_eq!(right.0, 200, "health with the secret: {}", right.1);
    let blob_without = get_with(&http, &blob, None).await;
    assert_unauthorized("blob without a secret", &blob_without);
    let blob_wrong = get_with(&http, &blob, Some("not-the-secret")).await;
    assert_unauthorized("blob with a wrong secret", &blob_wrong);
    settle(&registry, Duration::from_millis(200)).await;
    let fetched = all_upstream_blob_gets(&registry);
    assert!(
        fetched.is_empty(),
        "a refused internal request must not start a fill: {fetched:?}"
    );

    let mut outside = Vec::new();
    for base in [cluster.url(0), cluster.replica(0).admin_url()] {
        for path in ["/internal/v1/health", "/v2/internal/v1/health"] {
            let url = format!("{base}{path}");
            let (status, body) = get_with(&http, &url, Some(&secret)).await;
            assert_ne!(status, 200, "{url} with the secret: {body}");
            outside.push(format!("{url} → {status}"));
        }
    }
    eprintln!(
        "internal endpoint: without secret {}, wrong secret {}, right secret {}, blob without \
         secret {}; elsewhere: {outside:?}",
        without.0, wrong.0, right.0, blob_without.0
    );
}

//! Request spans, in a test binary of their own: the subscriber is global
//! here, so no other test's thread can cache a callsite as uninteresting.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use regcache_formats::Digest;
use regcache_formats::jws::SigningKey;
use regcache_server::handlers::App;
use regcache_server::policy::Policies;
use regcache_server::request::{Upstream, Upstreams};
use regcache_server::web::body::ReqBody;
use regcache_store::{Store, StoreConfig};
use regcache_upstream::UpstreamApi;
use regcache_upstream::mock::MemoryRegistry;

fn upstream(client: Arc<dyn UpstreamApi>) -> Arc<Upstream> {
    Arc::new(Upstream {
        breaker: regcache_server::breaker::Breaker::new(
            client.name(),
            0,
            Duration::from_secs(2),
            client.clone(),
        ),
        name: client.name().to_owned(),
        aliases: vec![],
        host: format!("{}.test", client.name()),
        docker_hub: false,
        client,
        ttls: arc_swap::ArcSwap::from_pointee(regcache_server::request::Ttls {
            tag_ttl: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
        }),
        writes: regcache_server::writes::Forwarding::Off,
        catalog: regcache_server::writes::Forwarding::Off,
    })
}

async fn get(app: &Arc<App>, uri: &str) -> (StatusCode, Bytes) {
    let req = Request::get(uri).body(ReqBody::Empty).unwrap();
    let resp = app.clone().handle(req).await;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (status, body)
}

fn blob_uri(digest: &Digest, repo: &str, upstream: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}?ns={upstream}")
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// Every log line of a request's slow work carries its span (id, method,
/// route, repository, upstream), the fill's own lines included; a cache
/// hit logs nothing at info (and makes no span).
#[tokio::test]
async fn a_request_logs_in_its_span_and_a_hit_logs_nothing() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let a = Arc::new(MemoryRegistry::new("a.test"));
    let b = Arc::new(MemoryRegistry::new("b.test"));
    let app = App::new(
        store,
        SigningKey::generate(),
        Upstreams::new(vec![upstream(a), upstream(b.clone())], 0),
        Policies::default(),
    );
    let bytes = Bytes::from(vec![7u8; 20_000]);
    let digest = b.put_blob("team/app", bytes.clone());

    let (status, _) = get(&app, &blob_uri(&digest, "team/app", "a.test")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let failed = log.lines_with("request failed");
    assert_eq!(failed.len(), 1, "{}", log.text());
    for field in [
        "request{id=",
        "method=GET",
        "route=\"blob\"",
        "repository=\"team/app\"",
        "upstream=a.test",
        "whose=\"upstream\"",
        "BLOB_UNKNOWN",
    ] {
        assert!(failed[0].contains(field), "{field} in {}", failed[0]);
    }

    let (status, body) = get(&app, &blob_uri(&digest, "team/app", "b.test")).await;
    assert_eq!((status, body), (StatusCode::OK, bytes.clone()));
    // The fill's task logs its commit as it ends, after the last byte left.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.lines_with("blob cached").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cached = log.lines_with("blob cached");
    assert_eq!(cached.len(), 1, "{}", log.text());
    assert!(
        cached[0].contains("route=\"blob\"") && cached[0].contains("upstream=b.test"),
        "the fill logs in the span of the request that started it: {}",
        cached[0]
    );
    // Two requests, two ids.
    assert_ne!(
        failed[0].split("id=").nth(1).map(|s| s.split(' ').next()),
        cached[0].split("id=").nth(1).map(|s| s.split(' ').next())
    );

    let before = log.text().len();
    let (status, body) = get(&app, &blob_uri(&digest, "team/app", "b.test")).await;
    assert_eq!((status, body), (StatusCode::OK, bytes));
    let after = log.text()[before..].to_owned();
    assert!(
        after
            .lines()
            .all(|l| l.contains("routed by ns") || l.contains(" regcache::access: ")),
        "a hit logs nothing but the router's debug line and its access line: {after}"
    );
    let access: Vec<&str> = after
        .lines()
        .filter(|l| l.contains(" regcache::access: "))
        .collect();
    assert_eq!(access.len(), 1, "{after}");
    assert!(
        access[0].contains("cache=\"hit\"") && access[0].contains("bytes=20000"),
        "{}",
        access[0]
    );
    assert!(!after.contains("request{"), "a hit makes no span: {after}");
}

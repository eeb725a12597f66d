//! The cockpit wired into the app: requests through [`App::handle`] on an
//! in-memory registry show up in [`Stats`] and on the admin endpoints.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use regcache_formats::jws::SigningKey;
use regcache_store::{Store, StoreConfig};
use regcache_upstream::mock::{MemoryRegistry, Op};

use super::stats::Stats;
use crate::admin::{Admin, AdminAccess};
use crate::handlers::App;
use crate::policy::Policies;
use crate::request::Upstreams;
use crate::services::test_support::upstream_for;
use crate::web::body::ReqBody;

async fn get(app: &Arc<App>, uri: &str) -> (StatusCode, Bytes) {
    let req = Request::get(uri).body(ReqBody::Empty).unwrap();
    let resp = app.clone().handle(req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

async fn admin_get(admin: &Admin, path: &str) -> (StatusCode, String, Bytes) {
    let resp = admin
        .handle(
            Request::get(path)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await;
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = resp.status();
    (
        status,
        ct,
        resp.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_tops_errors_and_the_sampler_reach_the_stats() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let reg = Arc::new(MemoryRegistry::new("up.test").with_chunk_size(4096));
    let upstreams = Upstreams::new(vec![upstream_for(reg.clone(), |_| {})], 0);
    let app = App::new(
        store,
        SigningKey::generate(),
        upstreams,
        Policies::default(),
    );
    let sampler = super::spawn_sampler(&app);

    let bytes = Bytes::from(vec![7u8; 50_000]);
    let digest = reg.put_blob("cockpit/app", bytes.clone());
    let uri = format!("/v2/cockpit/app/blobs/{digest}");

    // A cold GET held at the upstream: its fill is listed in progress.
    let gate = reg.hold(Op::GetBlob);
    let cold = tokio::spawn({
        let (app, uri) = (app.clone(), uri.clone());
        async move { get(&app, &uri).await }
    });
    gate.until_waiting(1).await;
    let fills = Stats::collect(&app).fills;
    assert_eq!(fills.len(), 1, "{fills:?}");
    assert_eq!(fills[0].digest, digest.to_string());
    assert_eq!(fills[0].repository.as_deref(), Some("cockpit/app"));
    assert_eq!((fills[0].bytes, fills[0].waiters), (0, 1));
    gate.release();
    let (status, body) = cold.await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, bytes.len()));

    // A warm GET, and a 404 for the recent errors.
    let (status, _) = get(&app, &uri).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&app, "/v2/cockpit/missing/manifests/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let s = Stats::collect(&app);
    assert!(s.fills.is_empty(), "{:?}", s.fills);
    let repo = s
        .top_repositories
        .by_requests
        .iter()
        .find(|r| r.name == "cockpit/app")
        .unwrap();
    assert_eq!((repo.requests, repo.bytes), (2, 100_000));
    let blob = &s.top_blobs.by_bytes[0];
    assert_eq!(blob.name, digest.to_string());
    assert_eq!(blob.repository.as_deref(), Some("cockpit/app"));
    assert_eq!((blob.requests, blob.bytes), (2, 100_000));
    assert_eq!(
        (s.served_bytes.cache, s.served_bytes.upstream),
        (50_000, 50_000)
    );
    assert!(
        s.lookups.hits >= 1 && s.lookups.misses >= 1,
        "{:?}",
        s.lookups
    );
    let err = s
        .recent_errors
        .iter()
        .find(|e| e.repository.as_deref() == Some("cockpit/missing"))
        .expect("the 404 is remembered");
    assert_eq!((err.status, err.route.as_str()), (404, "manifest"));
    assert_eq!(err.code, "MANIFEST_UNKNOWN");
    assert_eq!(s.upstreams[0].state, "closed");
    // The sampler's first tick is at once.
    assert!(!s.hit_ratio_history.is_empty());

    // The admin endpoints serve the same figures.
    let metrics = app.metrics.clone();
    let admin = Admin {
        app: app.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        reloader: None,
        config_reloader: None,
        api: Arc::new(crate::conn::Guard::new(
            "api",
            crate::config::ConnLimits::default(),
            &metrics,
            true,
        )),
        access: AdminAccess::Loopback,
    };
    let (status, ct, body) = admin_get(&admin, "/api/stats").await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, "application/json"));
    let json: Stats = serde_json::from_slice(&body).unwrap();
    assert_eq!(json.served_bytes, s.served_bytes);
    assert_eq!(json.lookups.hits, s.lookups.hits);
    for path in ["/", "/ui"] {
        let (status, ct, body) = admin_get(&admin, path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ct.starts_with("text/html"), "{ct}");
        let page = String::from_utf8(body.to_vec()).unwrap();
        assert!(page.contains("cockpit/app") && page.contains("data-metric=\"hits\""));
    }
    sampler.abort();
}

//! `[cluster]` in start-up: `server::bind_internal`, `server::build` making
//! the app a member, `server::serve` serving the internal listener (with
//! the 503 placeholder for blobs) until shutdown.

use std::time::Duration;

use crate::config::test_support::env;
use crate::config::{ClusterSecret, ClusterSettings, Config, Overrides, PeerSource};
use crate::server;

const SECRET: &str = "startup-cluster-secret-0123456789";

#[tokio::test]
async fn serve_runs_the_internal_listener_with_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.2:0".into()),
        upstream: Some("http://127.0.0.1:9".into()),
        data_dir: Some(dir.path().to_path_buf()),
        ..Overrides::default()
    };
    let mut settings = Config::load(None, &env(&[]), &o).unwrap();
    assert!(server::bind_internal(&settings).await.unwrap().is_none());
    // Port 0 is refused in the file; here it picks a free port.
    settings.cluster = Some(ClusterSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: "10.9.8.7:5002".into(),
        peers: PeerSource::Static(vec![]),
        secret: ClusterSecret::new(SECRET.into()).unwrap(),
        refresh: Duration::from_secs(60),
    });
    let (api, admin) = server::bind(&settings).await.unwrap();
    let internal = server::bind_internal(&settings).await.unwrap().unwrap();
    let internal_addr = internal.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let running = server::build(&settings)
        .await
        .unwrap()
        .with_internal_listener(Some(internal));
    let app = running.app.clone();
    assert_eq!(app.cluster().unwrap().me().0, "10.9.8.7:5002");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(running, api, admin, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{internal_addr}/internal/v1/health"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"member":"10.9.8.7:5002"}"#);
    let r = client
        .get(format!(
            "http://{internal_addr}/internal/v1/blobs/{}?upstream=nowhere&repository=library/alpine",
            regcache_formats::Digest::sha256_of(b"x")
        ))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    // Served by the app's blob path (handlers::peer): an upstream this
    // replica does not have is the asker's error, in a registry error body.
    assert_eq!(r.status().as_u16(), 404);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("NAME_UNKNOWN")
            && body.contains("no upstream named")
            && body.contains("nowhere"),
        "{body}"
    );
    let metrics = client
        .get(format!("http://{admin_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("regcache_cluster_members{state=\"live\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("regcache_cluster_members{state=\"suspect\"} 0"),
        "{metrics}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("serve stops, the internal listener with it")
        .unwrap();
    assert!(
        client
            .get(format!("http://{internal_addr}/internal/v1/health"))
            .bearer_auth(SECRET)
            .send()
            .await
            .is_err(),
        "the internal listener is closed after shutdown"
    );
}

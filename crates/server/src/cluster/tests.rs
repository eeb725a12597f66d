//! The cluster over real sockets on 127.0.0.1: the internal listener, the
//! peer client against it, and membership probes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use regcache_formats::Digest;
use regcache_formats::reference::RepositoryName;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::*;
use crate::config::{ClusterSecret, PeerSource};
use crate::error::Error;

const SECRET: &str = "test-cluster-secret-0123456789";

fn settings(advertise: &str, peers: &[String], refresh: Duration) -> ClusterSettings {
    ClusterSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: advertise.to_owned(),
        peers: PeerSource::Static(peers.to_vec()),
        secret: ClusterSecret::new(SECRET.to_owned()).unwrap(),
        refresh,
    }
}

/// Serves `len` bytes (byte i is i % 251) and remembers what it was asked.
#[derive(Default)]
struct Fake {
    asked: Mutex<Vec<(String, String, String, u64)>>,
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

const LEN: usize = 300_000;

impl InternalBlobs for Fake {
    fn blob<'a>(
        &'a self,
        upstream: &'a str,
        repository: &'a RepositoryName,
        digest: &'a Digest,
        offset: u64,
    ) -> BoxFuture<'a, Result<InternalBlob, Error>> {
        self.asked.lock().push((
            upstream.to_owned(),
            repository.as_str().to_owned(),
            digest.to_string(),
            offset,
        ));
        Box::pin(async move {
            let tail = Bytes::from(content(LEN)).slice(offset as usize..);
            // In several chunks, as a fill would send them.
            let chunks: Vec<Result<Bytes, std::io::Error>> = (0..tail.len())
                .step_by(64 << 10)
                .map(|s| Ok(tail.slice(s..tail.len().min(s + (64 << 10)))))
                .collect();
            Ok(InternalBlob {
                len: LEN as u64,
                body: futures_util::stream::iter(chunks).boxed(),
            })
        })
    }
}

/// A replica's internal listener on `listener`, stopped when the sender drops.
fn serve(
    listener: TcpListener,
    cluster: Cluster,
    blobs: Arc<dyn InternalBlobs>,
) -> watch::Sender<bool> {
    let (tx, mut rx) = watch::channel(false);
    let metrics = crate::metrics::Metrics::new();
    let guard = Arc::new(crate::conn::Guard::new(
        "internal",
        crate::config::ConnLimits::default(),
        &metrics,
        false,
    ));
    tokio::spawn(serve_internal(
        listener,
        cluster,
        blobs,
        guard,
        async move {
            let _ = rx.changed().await;
        },
    ));
    tx
}

/// A replica alone in its cluster, serving `blobs`; its address.
async fn replica(blobs: Arc<dyn InternalBlobs>) -> (String, Cluster, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cluster = Cluster::start(&settings(&addr, &[], Duration::from_secs(60)));
    let stop = serve(listener, cluster.clone(), blobs);
    (addr, cluster, stop)
}

async fn get(url: &str, auth: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

fn digest() -> Digest {
    Digest::sha256_of(&content(LEN))
}

#[tokio::test]
async fn requests_without_the_secret_are_refused_and_health_answers_with_it() {
    let (addr, _cluster, _stop) = replica(Arc::new(Fake::default())).await;
    let health = format!("http://{addr}/internal/v1/health");
    for auth in [
        None,
        Some("Bearer wrong-secret-0123456789"),
        Some("Basic dGVzdDp0ZXN0"),
        Some("Bearer "),
    ] {
        let (status, body) = get(&health, auth).await;
        assert_eq!(status, 401, "{auth:?}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{body}");
        assert!(v["errors"][0]["detail"].is_null(), "{body}");
        assert!(!body.contains(SECRET));
    }
    // The blob endpoint too, before anything else is looked at.
    let (status, _) = get(
        &format!(
            "http://{addr}/internal/v1/blobs/{}?upstream=u&repository=r",
            digest()
        ),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {SECRET}");
    let (status, body) = get(&health, Some(&bearer)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["member"], addr.as_str());
    let (status, body) = get(&format!("http://{addr}/internal/v1/nothing"), Some(&bearer)).await;
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNSUPPORTED", "{body}");
    // Bad names are client errors, as on the registry listener.
    let (status, body) = get(
        &format!("http://{addr}/internal/v1/blobs/sha256:nothex?upstream=u&repository=r"),
        Some(&bearer),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("DIGEST_INVALID"), "{body}");
    let (status, body) = get(
        &format!(
            "http://{addr}/internal/v1/blobs/{}?upstream=u&repository=Bad%20Name",
            digest()
        ),
        Some(&bearer),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("NAME_INVALID"), "{body}");
}

#[tokio::test]
async fn fetch_blob_round_trip_whole_and_from_an_offset() {
    let fake = Arc::new(Fake::default());
    let (addr, _owner, _stop) = replica(fake.clone()).await;
    let asker = Cluster::start(&settings(
        "127.0.0.1:1",
        std::slice::from_ref(&addr),
        Duration::from_secs(60),
    ));
    let member = Member(addr.clone());
    let d = digest();
    let collect = |body: PeerBody| async move {
        let mut out = Vec::new();
        let mut s = body.stream;
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    };
    let whole = asker
        .fetch_blob(&member, "docker.io", "library/alpine", &d, 0)
        .await
        .unwrap();
    assert_eq!((whole.len, whole.offset), (LEN as u64, 0));
    assert_eq!(collect(whole).await, content(LEN));
    let tail = asker
        .fetch_blob(&member, "my registry&x", "team/app-1", &d, 123_457)
        .await
        .unwrap();
    assert_eq!((tail.len, tail.offset), (LEN as u64, 123_457));
    assert_eq!(collect(tail).await, content(LEN)[123_457..].to_vec());
    let asked = fake.asked.lock().clone();
    assert_eq!(
        asked,
        vec![
            (
                "docker.io".into(),
                "library/alpine".into(),
                d.to_string(),
                0
            ),
            (
                "my registry&x".into(),
                "team/app-1".into(),
                d.to_string(),
                123_457
            ),
        ],
        "query parameters arrive decoded"
    );
    // The 206's headers, as the asker's HTTP sees them.
    let r = reqwest::Client::new()
        .get(format!(
            "http://{addr}/internal/v1/blobs/{d}?upstream=u&repository=r"
        ))
        .header("authorization", format!("Bearer {SECRET}"))
        .header("range", "bytes=299990-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 299990-299999/300000");
    assert_eq!(r.headers()["content-length"], "10");
    // Past the end: 416.
    let err = asker
        .fetch_blob(&member, "u", "r", &d, LEN as u64)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PeerError::Status { status: 416, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn peer_errors_name_the_member_and_never_the_secret() {
    let (addr, _owner, _stop) = replica(Arc::new(Unwired)).await;
    let asker = Cluster::start(&settings(
        "127.0.0.1:1",
        std::slice::from_ref(&addr),
        Duration::from_secs(60),
    ));
    let err = asker
        .fetch_blob(&Member(addr.clone()), "u", "r", &digest(), 0)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, PeerError::Status { status: 503, .. }) && !err.is_unreachable(),
        "{text}"
    );
    assert!(
        text.contains(&addr) && text.contains("not wired yet"),
        "{text}"
    );
    // A replica with another secret: 401, named.
    let stranger = Cluster::start(&ClusterSettings {
        secret: ClusterSecret::new("another-secret-0123456789".into()).unwrap(),
        ..settings("127.0.0.1:1", &[], Duration::from_secs(60))
    });
    let err = stranger
        .fetch_blob(&Member(addr.clone()), "u", "r", &digest(), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PeerError::Status { status: 401, .. }),
        "{err}"
    );
    // Nobody listening: unreachable.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = Member(closed.local_addr().unwrap().to_string());
    drop(closed);
    let err = asker
        .fetch_blob(&gone, "u", "r", &digest(), 0)
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert_eq!(err.member(), &gone);
    for text in [err.to_string(), format!("{err:?}"), format!("{asker:?}")] {
        assert!(!text.contains(SECRET), "{text}");
    }
}

/// Polls `f` until it holds (5 s at most).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 5 s: {what}");
}

fn live(cluster: &Cluster, member: &str) -> bool {
    (cluster.members().iter()).any(|s| s.member.0 == member && s.live)
}

#[tokio::test]
async fn a_member_refusing_connections_is_not_live_until_it_answers() {
    let spot = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = spot.local_addr().unwrap();
    drop(spot);
    let peer = addr.to_string();
    let me = "127.0.0.1:1";
    let cluster = Cluster::start(&settings(
        me,
        std::slice::from_ref(&peer),
        Duration::from_millis(100),
    ));
    eventually("the refusing member is probed down", || {
        !live(&cluster, &peer)
    })
    .await;
    let members = cluster.members();
    assert_eq!(members.len(), 2);
    assert!(members[0].is_me && members[0].live, "{members:?}");
    assert!(members[1].last_probe_ok.is_none(), "{members:?}");
    // Everything is ours while it is down.
    for i in 0..50 {
        let d = Digest::sha256_of(format!("{i}").as_bytes());
        assert_eq!(cluster.owner(&d), Owner::Me);
    }
    // It starts answering on that address.
    let listener = TcpListener::bind(addr).await.unwrap();
    let other = Cluster::start(&settings(&peer, &[], Duration::from_secs(60)));
    let _stop = serve(listener, other, Arc::new(Unwired));
    eventually("the member is live again", || live(&cluster, &peer)).await;
    let status = cluster.members()[1].clone();
    assert!(
        status
            .last_probe_ok
            .is_some_and(|age| age < Duration::from_secs(5))
    );
    let owners: Vec<Owner> = (0..50)
        .map(|i| cluster.owner(&Digest::sha256_of(format!("{i}").as_bytes())))
        .collect();
    assert!(
        owners.contains(&Owner::Peer(Member(peer.clone()))),
        "it owns a share again"
    );
}

#[tokio::test]
async fn suspect_moves_the_owner_at_once_and_a_probe_brings_it_back() {
    let (a, _ca, _sa) = replica(Arc::new(Unwired)).await;
    let (b, _cb, _sb) = replica(Arc::new(Unwired)).await;
    let me = "127.0.0.1:1";
    let cluster = Cluster::start(&settings(
        me,
        &[a.clone(), b.clone()],
        Duration::from_millis(300),
    ));
    eventually("both peers probed live", || {
        cluster
            .members()
            .iter()
            .all(|s| s.live && (s.is_me || s.last_probe_ok.is_some()))
    })
    .await;
    let owned_by_a: Vec<Digest> = (0..100)
        .map(|i| Digest::sha256_of(format!("blob {i}").as_bytes()))
        .filter(|d| cluster.owner(d) == Owner::Peer(Member(a.clone())))
        .collect();
    assert!(!owned_by_a.is_empty());
    cluster.suspect(&Member(a.clone()));
    assert!(!live(&cluster, &a));
    let rest = [Member(me.into()), Member(b.clone())];
    for d in &owned_by_a {
        let want = match rendezvous::pick(&rest, d.as_str()) {
            Some(m) if m.0 == me => Owner::Me,
            Some(m) => Owner::Peer(m.clone()),
            None => unreachable!(),
        };
        assert_eq!(cluster.owner(d), want, "{d} moved to its runner-up");
    }
    // Suspecting this replica changes nothing.
    cluster.suspect(&Member(me.into()));
    assert!(live(&cluster, me));
    // a answers its probes: live again once the suspicion is a refresh old.
    eventually("a is live again", || live(&cluster, &a)).await;
    assert_eq!(
        cluster.owner(&owned_by_a[0]),
        Owner::Peer(Member(a.clone()))
    );
}

//! Self-check of the cluster fixture ([`TestCluster`], [`MotoServer`]) on
//! replicas started *without* the `[cluster]` / `[shared]` tables: moto
//! answers and keeps objects, each replica has its own ports, data dir and
//! process and gets the secrets in its environment, the tables the cluster
//! tests add are valid TOML naming the right addresses, and a late replica
//! and a `kill -9` work. It passes with or without cluster mode in regcache,
//! so a failing `cluster.rs` test points at the feature, not the harness.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use regcache_tests::cluster::{BUCKET, S3_SECRET_ENV, SECRET_ENV, TestCluster};
use regcache_tests::image::random_bytes;
use regcache_tests::{Registry, RegistryClient, RegistryOptions};

/// The `NAME=value` pairs of a running process.
fn environ(pid: u32) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/environ: {e}"));
    raw.split(|b| *b == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (k, v) = text.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_fixture_runs_moto_and_separate_replicas() {
    let registry = Registry::start(RegistryOptions::default());
    let repo = "harness/cluster";
    let blob = Bytes::from(random_bytes(0x4a5, 300 << 10));
    let digest = RegistryClient::new(registry.url())
        .push_blob(repo, blob.clone())
        .await;
    let mut cluster = TestCluster::start_without_cluster_config(3, &registry.url(), |o| o).await;

    // moto: the bucket exists (listing a missing one is a 404), keeps
    // objects, lists them by prefix.
    let moto = cluster.moto();
    assert_eq!(moto.list_keys(BUCKET, "").await, Vec::<String>::new());
    moto.put_object(BUCKET, "blobs/sha256/ab", Bytes::from_static(b"x"))
        .await;
    moto.put_object(BUCKET, "tags/u/r/t", Bytes::from_static(b"{}"))
        .await;
    assert_eq!(
        moto.list_keys(BUCKET, "blobs/").await,
        vec!["blobs/sha256/ab".to_owned()]
    );
    assert_eq!(
        moto.get_object(BUCKET, "tags/u/r/t").await.as_deref(),
        Some(&b"{}"[..])
    );
    assert_eq!(moto.get_object(BUCKET, "nothing/here").await, None);

    // Separate replicas, each serving the blob.
    let distinct = |values: Vec<String>| values.iter().collect::<HashSet<_>>().len();
    let all = |f: &dyn Fn(usize) -> String| (0..cluster.len()).map(f).collect::<Vec<_>>();
    assert_eq!(cluster.len(), 3);
    assert_eq!(distinct(all(&|i| cluster.url(i))), 3);
    assert_eq!(distinct(all(&|i| cluster.replica(i).admin_url())), 3);
    assert_eq!(distinct(all(&|i| cluster.internal_addr(i).to_string())), 3);
    assert_eq!(
        distinct(all(&|i| cluster
            .replica(i)
            .data_dir()
            .display()
            .to_string())),
        3
    );
    assert_eq!(distinct(all(&|i| format!("{:?}", cluster.pid(i)))), 3);
    for i in 0..3 {
        let got = RegistryClient::new(cluster.url(i))
            .get_blob(repo, &digest)
            .await
            .unwrap();
        assert_eq!(
            (got.status, got.body.len()),
            (200, blob.len()),
            "replica {i}"
        );
        assert!(got.body == blob, "replica {i}: wrong bytes");
        let env = environ(cluster.pid(i).unwrap());
        let value = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(value(SECRET_ENV).as_deref(), Some(cluster.secret()));
        assert_eq!(value(S3_SECRET_ENV).as_deref(), Some("test"));
        let config = std::fs::read_to_string(cluster.replica(i).config_path()).unwrap();
        assert!(!config.contains("[cluster]"), "{config}");
    }

    // The tables the cluster tests add: valid TOML with this replica's
    // address, every member as a peer, and moto as the endpoint.
    let members = cluster.members();
    let tables: toml::Value = toml::from_str(&cluster.cluster_toml(1)).unwrap();
    assert_eq!(
        tables["cluster"]["listen"].as_str(),
        Some(members[1].as_str())
    );
    assert_eq!(tables["cluster"]["advertise"], tables["cluster"]["listen"]);
    let peers: Vec<&str> = tables["cluster"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    assert_eq!(
        peers,
        members.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(tables["cluster"]["secret_env"].as_str(), Some(SECRET_ENV));
    assert_eq!(
        tables["shared"]["endpoint"].as_str(),
        Some(cluster.moto().url().as_str())
    );
    assert_eq!(tables["shared"]["bucket"].as_str(), Some(BUCKET));
    assert_eq!(tables["shared"]["path_style"].as_bool(), Some(true));

    // A late replica (peers: all four), and a kill -9.
    let late = cluster.add_replica();
    assert_eq!((late, cluster.members().len()), (3, 4));
    let got = RegistryClient::new(cluster.url(late))
        .get_blob(repo, &digest)
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let late_tables: toml::Value = toml::from_str(&cluster.cluster_toml(late)).unwrap();
    assert_eq!(
        late_tables["cluster"]["peers"].as_array().map(Vec::len),
        Some(4)
    );
    let killed_pid = cluster.pid(1).unwrap();
    cluster.kill9(1);
    assert_eq!(cluster.pid(1), None);
    let gone = crate::support::eventually(Duration::from_secs(5), async || {
        !std::path::Path::new(&format!("/proc/{killed_pid}")).exists()
    })
    .await;
    assert!(gone, "process {killed_pid} still exists after kill9");
    for n in 0..50 {
        let digest = format!("sha256:{n:064x}");
        assert_ne!(
            cluster.owner_of(&digest),
            1,
            "a killed replica owns {digest}"
        );
    }
    eprintln!(
        "cluster harness: moto at {}, replicas {:?}, internal {:?}",
        cluster.moto().url(),
        (0..cluster.len())
            .map(|i| cluster.url(i))
            .collect::<Vec<_>>(),
        members
    );
}

//! The shared tier against a real S3-compatible server (moto).

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use regcache_formats::Digest;
use regcache_store::{
    MIN_PART_SIZE, SharedConfig, SharedTier, Source, StoreError, Stored, TagRecord, Tier,
};

use crate::common::{blob, digest};
use crate::moto::{self, Moto};

const MIB: usize = 1024 * 1024;

fn tier(moto: &Moto, prefix: &str) -> SharedTier {
    SharedTier::new(moto.config(prefix)).expect("shared tier")
}

/// A file holding `bytes`, positioned at 0.
fn file_of(bytes: &[u8]) -> std::fs::File {
    let mut file = tempfile::tempfile().expect("tempfile");
    file.write_all(bytes).expect("write tempfile");
    file
}

async fn read_all(tier: &SharedTier, digest: &Digest, offset: u64) -> (u64, Vec<u8>) {
    let body = tier
        .open(digest, offset)
        .await
        .expect("open")
        .expect("object present");
    assert_eq!(body.offset, offset);
    let chunks: Vec<Bytes> = body.stream.try_collect().await.expect("stream");
    (body.len, chunks.concat())
}

async fn keys_under(moto: &Moto, prefix: &str) -> Vec<String> {
    let prefix = ObjectPath::from(prefix);
    moto.raw()
        .list(Some(&prefix))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .expect("list")
}

#[tokio::test]
async fn small_objects_round_trip_and_bad_content_is_refused() {
    let moto = Moto::start().await;
    let mut config = moto.config("regcache/");
    config.small_object_max = 4096;
    let tier = SharedTier::new(config).unwrap();

    let bytes = blob(1, 3000);
    let d = digest(&bytes);
    assert_eq!(tier.head(&d).await.unwrap(), None);
    assert!(Tier::get(&tier, &d).await.unwrap().is_none());
    assert!(tier.open(&d, 0).await.unwrap().is_none());

    assert_eq!(
        tier.put_bytes(&d, bytes.clone()).await.unwrap(),
        Stored::Created
    );
    assert_eq!(tier.head(&d).await.unwrap(), Some(3000));
    assert_eq!(Tier::stat(&tier, &d).await.unwrap(), Some(3000));
    match Tier::get(&tier, &d).await.unwrap() {
        Some(Source::Bytes(got)) => assert_eq!(got, bytes),
        other => panic!("expected bytes, got {other:?}"),
    }
    // The layout the lead's other replicas read.
    let keys = keys_under(&moto, "regcache/blobs").await;
    assert_eq!(keys, vec![format!("regcache/blobs/sha256/{}", d.hex())]);
    // A second writer is told, and nothing is rewritten.
    assert_eq!(
        tier.put_bytes(&d, bytes.clone()).await.unwrap(),
        Stored::AlreadyThere
    );
    // remove is a no-op on the shared copy.
    assert!(!Tier::remove(&tier, &d).await.unwrap());
    assert_eq!(tier.head(&d).await.unwrap(), Some(3000));

    // Wrong bytes for a digest: refused, nothing stored.
    let other = digest(b"something else");
    match tier.put_bytes(&other, bytes.clone()).await {
        Err(StoreError::DigestMismatch { expected, .. }) => assert_eq!(expected, other),
        r => panic!("expected a digest mismatch, got {r:?}"),
    }
    assert_eq!(tier.head(&other).await.unwrap(), None);

    // Larger than small_object_max: stat knows it, get leaves it to `open`.
    let big = blob(2, 5000);
    let big_d = digest(&big);
    assert_eq!(tier.put_bytes(&big_d, big).await.unwrap(), Stored::Created);
    assert_eq!(tier.head(&big_d).await.unwrap(), Some(5000));
    assert!(Tier::get(&tier, &big_d).await.unwrap().is_none());

    // An object that does not match its key (written behind the tier's back)
    // is a miss for get, never served.
    let liar = digest(b"the real content");
    let liar_key = ObjectPath::from(format!("regcache/blobs/sha256/{}", liar.hex()));
    moto.raw()
        .put(&liar_key, Bytes::from_static(b"forged content").into())
        .await
        .unwrap();
    assert!(Tier::get(&tier, &liar).await.unwrap().is_none());

    let stats = tier.stats();
    assert_eq!(stats.puts_created, 2);
    assert_eq!(stats.puts_existing, 1);
    assert_eq!(stats.errors, 1, "the digest mismatch");
}

#[tokio::test]
async fn large_file_uploads_in_parts_and_streams_from_an_offset() {
    let moto = Moto::start().await;
    let mut config = moto.config("");
    config.part_size = MIN_PART_SIZE;
    let tier = SharedTier::new(config).unwrap();

    let bytes = blob(40, 40 * MIB);
    let d = digest(&bytes);
    let stored = tier
        .upload_file(&d, file_of(&bytes), bytes.len() as u64)
        .await
        .unwrap();
    assert_eq!(stored, Stored::Created);

    let (len, whole) = read_all(&tier, &d, 0).await;
    assert_eq!(len, bytes.len() as u64);
    assert_eq!(digest(&whole), d, "the stored object hashes to its digest");

    let offset = 17 * MIB as u64 + 3;
    let (len, tail) = read_all(&tier, &d, offset).await;
    assert_eq!(len, bytes.len() as u64, "len is the whole object's");
    assert_eq!(tail.len(), bytes.len() - offset as usize);
    assert!(tail == bytes[offset as usize..], "the tail differs");

    let (_, empty) = read_all(&tier, &d, bytes.len() as u64).await;
    assert!(empty.is_empty());
    match tier.open(&d, bytes.len() as u64 + 1).await {
        Err(StoreError::RangeNotSatisfiable { start, len, .. }) => {
            assert_eq!((start, len), (bytes.len() as u64 + 1, bytes.len() as u64));
        }
        r => panic!(
            "expected range not satisfiable, got {:?}",
            r.map(|b| b.is_some())
        ),
    }

    assert_eq!(keys_under(&moto, "tmp").await, Vec::<String>::new());
    let stats = tier.stats();
    assert_eq!(stats.uploads, 1);
    assert_eq!(stats.upload_bytes, bytes.len() as u64);

    // A second upload of the same file finds it and sends nothing.
    let again = tier
        .upload_file(&d, file_of(&bytes), bytes.len() as u64)
        .await
        .unwrap();
    assert_eq!(again, Stored::AlreadyThere);
    assert_eq!(tier.stats().upload_bytes, bytes.len() as u64);
}

#[tokio::test]
async fn upload_of_a_damaged_file_stores_nothing() {
    let moto = Moto::start().await;
    let mut config = moto.config("");
    config.part_size = MIN_PART_SIZE;
    let tier = SharedTier::new(config).unwrap();

    for len in [1000, 6 * MIB] {
        let bytes = blob(7, len);
        let d = digest(&bytes);
        let mut damaged = bytes.to_vec();
        damaged[len / 2] ^= 1;
        match tier.upload_file(&d, file_of(&damaged), len as u64).await {
            Err(StoreError::DigestMismatch { .. }) => {}
            r => panic!("expected a digest mismatch for {len} bytes, got {r:?}"),
        }
        assert_eq!(tier.head(&d).await.unwrap(), None);
        // A file shorter than announced: an I/O error, nothing stored.
        assert!(matches!(
            tier.upload_file(&d, file_of(&bytes[..len - 1]), len as u64)
                .await,
            Err(StoreError::Io { .. })
        ));
        assert_eq!(tier.head(&d).await.unwrap(), None);
    }
    assert_eq!(keys_under(&moto, "").await, Vec::<String>::new());
}

#[tokio::test]
async fn concurrent_put_bytes_create_exactly_once() {
    let moto = Moto::start().await;
    // Separate tiers, as separate replicas would have.
    let tiers: Vec<SharedTier> = (0..8).map(|_| tier(&moto, "race/")).collect();
    for round in 0..10u64 {
        let bytes = blob(100 + round, 64 * 1024);
        let d = digest(&bytes);
        let barrier = Arc::new(tokio::sync::Barrier::new(tiers.len()));
        let tasks: Vec<_> = tiers
            .iter()
            .map(|t| {
                let (t, d, bytes, barrier) = (t.clone(), d.clone(), bytes.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    t.put_bytes(&d, bytes).await
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            if task.await.unwrap().unwrap() == Stored::Created {
                created += 1;
            }
        }
        assert_eq!(
            created, 1,
            "round {round}: {created} writers created the object"
        );
        let (_, got) = read_all(&tiers[0], &d, 0).await;
        assert!(got == bytes, "round {round}: content differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_file_uploads_create_exactly_once() {
    let moto = Moto::start().await;
    let raw = moto.raw();
    let tiers: Vec<SharedTier> = (0..4)
        .map(|_| {
            let mut config = moto.config("race/");
            config.part_size = MIN_PART_SIZE;
            SharedTier::new(config).unwrap()
        })
        .collect();
    let len = 12 * MIB;
    let rounds = 5;
    for round in 0..rounds {
        let bytes = blob(200 + round, len);
        let d = digest(&bytes);
        let barrier = Arc::new(tokio::sync::Barrier::new(tiers.len()));
        let tasks: Vec<_> = tiers
            .iter()
            .map(|t| {
                let (t, d, barrier) = (t.clone(), d.clone(), barrier.clone());
                let file = file_of(&bytes);
                tokio::spawn(async move {
                    barrier.wait().await;
                    t.upload_file(&d, file, len as u64).await
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            if task.await.unwrap().unwrap() == Stored::Created {
                created += 1;
            }
        }
        assert_eq!(
            created, 1,
            "round {round}: {created} uploads created the object"
        );
        let (got_len, got) = read_all(&tiers[0], &d, 0).await;
        assert_eq!(got_len, len as u64);
        assert_eq!(digest(&got), d, "round {round}: the object is not whole");
        // Free moto's memory for the next round.
        let key = ObjectPath::from(format!("race/blobs/sha256/{}", d.hex()));
        raw.delete(&key).await.unwrap();
    }
    assert_eq!(keys_under(&moto, "race/tmp").await, Vec::<String>::new());
    // The race reached the conditional copy (more than one full upload in some
    // round), rather than being settled by the HEAD before uploading.
    let sent: u64 = tiers.iter().map(|t| t.stats().upload_bytes).sum();
    assert!(
        sent > (rounds * len as u64),
        "only {sent} bytes uploaded in {rounds} rounds: no round raced to the copy"
    );
}

/// The mechanism the large-file path relies on: moto refuses
/// copy-if-not-exists (multipart copy completed with If-None-Match) onto an
/// existing key, and leaves that key's content alone.
#[tokio::test]
async fn conditional_copy_refuses_an_existing_key() {
    let moto = Moto::start().await;
    let raw = moto.raw();
    let (a, b, dest) = (
        ObjectPath::from("tmp/a"),
        ObjectPath::from("tmp/b"),
        ObjectPath::from("dest"),
    );
    raw.put(&a, Bytes::from_static(b"first").into())
        .await
        .unwrap();
    raw.put(&b, Bytes::from_static(b"second").into())
        .await
        .unwrap();
    raw.copy_if_not_exists(&a, &dest).await.unwrap();
    match raw.copy_if_not_exists(&b, &dest).await {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        r => panic!("expected AlreadyExists, got {r:?}"),
    }
    let got = raw.get(&dest).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"first");
}

#[tokio::test]
async fn tags_round_trip() {
    let moto = Moto::start().await;
    let tier = tier(&moto, "regcache/");
    assert_eq!(
        tier.get_tag("docker.io", "library/alpine", "3.20")
            .await
            .unwrap(),
        None
    );
    let mut record = TagRecord {
        digest: digest(b"manifest"),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        size: 8,
        fetched_at_unix: 1_700_000_000,
    };
    tier.put_tag("docker.io", "library/alpine", "3.20", &record)
        .await
        .unwrap();
    assert_eq!(
        tier.get_tag("docker.io", "library/alpine", "3.20")
            .await
            .unwrap(),
        Some(record.clone())
    );
    assert_eq!(
        keys_under(&moto, "regcache/tags").await,
        vec!["regcache/tags/docker.io/library/alpine/3.20".to_owned()]
    );
    // Other tags, repositories and upstreams are separate.
    assert_eq!(
        tier.get_tag("docker.io", "library/alpine", "3.21")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        tier.get_tag("ghcr.io", "library/alpine", "3.20")
            .await
            .unwrap(),
        None
    );
    // Overwrite.
    record.fetched_at_unix += 60;
    tier.put_tag("docker.io", "library/alpine", "3.20", &record)
        .await
        .unwrap();
    assert_eq!(
        tier.get_tag("docker.io", "library/alpine", "3.20")
            .await
            .unwrap(),
        Some(record)
    );
}

#[tokio::test]
async fn check_proves_the_bucket_and_names_a_wrong_one() {
    let moto = Moto::start().await;
    tier(&moto, "regcache/").check().await.unwrap();
    tier(&moto, "").check().await.unwrap();

    let mut config = moto.config("");
    config.bucket = "no-such-bucket".into();
    let err = SharedTier::new(config).unwrap().check().await.unwrap_err();
    assert!(
        matches!(err, StoreError::Shared { op, .. } if op.starts_with("check")),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("NoSuchBucket"), "{message}");
    assert!(!message.contains(moto::SECRET_KEY), "{message}");
}

#[test]
fn debug_output_never_shows_secrets() {
    let mut config = SharedConfig::new("bucket-name");
    config.endpoint = Some("http://127.0.0.1:1".into());
    config.path_style = true;
    config.access_key_id = Some("AKIDEXAMPLE".into());
    config.secret_access_key = Some("wJalrXUtnFEMI-secret".into());
    config.session_token = Some("FwoGZXIvYXdzEJr-token".into());
    let tier = SharedTier::new(config.clone()).unwrap();
    for text in [
        format!("{config:?}"),
        format!("{tier:?}"),
        format!("{:?}", tier.config()),
    ] {
        assert!(text.contains("bucket-name"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
        assert!(!text.contains("FwoGZXIvYXdzEJr"), "{text}");
    }
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let mut small_parts = SharedConfig::new("b");
    small_parts.part_size = MIN_PART_SIZE - 1;
    let mut half_keys = SharedConfig::new("b");
    half_keys.access_key_id = Some("id".into());
    for config in [small_parts, half_keys, SharedConfig::new("")] {
        assert!(matches!(
            SharedTier::new(config),
            Err(StoreError::SharedConfig(_))
        ));
    }
}

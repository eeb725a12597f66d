//! `regcache purge` and `ls` against a real docker-registry upstream,
//! pulled with skopeo: a purge of one repository removes its own blobs and
//! keeps the ones another cached repository shares; `--older-than` purges
//! what was not used since; a blob being read when it is purged is read to
//! the end; and `ls` on a stopped instance's data dir lists what the
//! running one did.

use std::collections::BTreeSet;
use std::time::Duration;

use regcache_tests::image::{config, default_history};
use regcache_tests::regcache::run_regcache;
use regcache_tests::{Image, ImageGen, ManifestFormat, Platform, Regcache};
use serde_json::Value;

use crate::cache_commands::{cli, disk_usage, entry_exists, image_on, json, listed, pull};
use crate::support::{Mode, ProxiedRegistry, Upstream, all_upstream_blob_gets, settle};

/// Two repositories sharing a base layer, each with its own layer, cached
/// through regcache.
struct Shared {
    upstream: Upstream,
    regcache: Regcache,
    a: Image,
    b: Image,
    a_manifest: String,
    b_manifest: String,
}

async fn shared_repositories(prefix: &str) -> Shared {
    let upstream = Upstream::start(Mode::Plain);
    let base = ImageGen::new(0xba5e).layer();
    let a = image_on(0xa1, &base);
    let b = image_on(0xb1, &base);
    let direct = upstream.client(&[]);
    let a_manifest = direct
        .push_image(&format!("{prefix}/a"), "v1", &a, ManifestFormat::Oci)
        .await;
    let b_manifest = direct
        .push_image(&format!("{prefix}/b"), "v1", &b, ManifestFormat::Oci)
        .await;
    let regcache = upstream.start_regcache();
    pull(&regcache, &format!("{prefix}/a:v1"), false).await;
    pull(&regcache, &format!("{prefix}/b:v1"), false).await;
    Shared {
        upstream,
        regcache,
        a,
        b,
        a_manifest,
        b_manifest,
    }
}

#[tokio::test]
async fn purging_a_repository_keeps_the_blobs_another_one_shares() {
    let mut s = shared_repositories("purge").await;
    let regcache = &s.regcache;
    let shared = s.a.layer_digests()[0].clone();
    assert_eq!(shared, s.b.layer_digests()[0]);
    let a_own = [
        s.a_manifest.clone(),
        s.a.config_digest(),
        s.a.layer_digests()[1].clone(),
    ];
    let b_all = [
        s.b_manifest.clone(),
        s.b.config_digest(),
        s.b.layer_digests()[1].clone(),
        shared.clone(),
    ];
    for d in a_own.iter().chain(&b_all) {
        assert!(entry_exists(regcache, d), "{d} cached");
    }

    let (code, table, err) = cli(regcache, &["ls"]).await;
    println!("regcache ls before the purge:\n{table}{err}");
    assert_eq!(code, Some(0), "{err}");
    let host = s.upstream.registry.host();
    for repo in ["purge/a", "purge/b"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("e2e-upstream/{repo} ")))
            .unwrap_or_else(|| panic!("{repo} not listed:\n{table}"));
        assert!(
            row.contains(" v1 ") && row.contains("oci manifest"),
            "{row}"
        );
        assert!(row.contains(" all ") && row.contains(" ago)"), "{row}");
    }
    let (code, blobs, _) = cli(regcache, &["ls", "--blobs"]).await;
    assert_eq!(code, Some(0));
    let shared_row = blobs.lines().find(|l| l.starts_with(&shared)).unwrap();
    assert!(
        shared_row.contains("purge/a:v1") && shared_row.contains("purge/b:v1"),
        "{blobs}"
    );
    let (before_bytes, before_files) = disk_usage(&regcache.blobs_dir());
    println!("on disk before: {before_bytes} bytes in {before_files} files");

    // A dry run lists what would go and removes nothing.
    let (code, out, err) = cli(regcache, &["purge", "purge/a", "--dry-run"]).await;
    println!("regcache purge purge/a --dry-run:\n{out}{err}");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("would untag ") && out.contains("would purge 1 tags, 3 entries"),
        "{out}"
    );
    assert!(out.contains(&format!("kept blob {shared}")), "{out}");
    assert_eq!(
        disk_usage(&regcache.blobs_dir()),
        (before_bytes, before_files)
    );

    // Offline purge next to the running instance: refused (75).
    let data_dir = regcache.data_dir().to_str().unwrap().to_owned();
    let config_file = regcache.config_path().to_str().unwrap().to_owned();
    let offline_flags = ["--config", config_file.as_str(), "--offline"];
    let mut args = vec!["purge", "purge/b"];
    args.extend(offline_flags);
    let (code, _, err) = run_regcache(&args, &[]).await;
    assert_eq!(code, Some(75), "{err}");
    assert!(err.contains("in use by a running regcache"), "{err}");

    // The purge, with the registry host as a user types it.
    let (code, out, err) = cli(regcache, &["purge", &format!("{host}/purge/a")]).await;
    println!("regcache purge {host}/purge/a:\n{out}{err}");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("purged 1 tags, 3 entries"), "{out}");
    for d in &a_own {
        assert!(
            !entry_exists(regcache, d),
            "{d} of purge/a is still on disk"
        );
    }
    for d in &b_all {
        assert!(entry_exists(regcache, d), "{d} of purge/b was removed");
    }
    let (after_bytes, after_files) = disk_usage(&regcache.blobs_dir());
    println!("on disk after: {after_bytes} bytes in {after_files} files");
    let a_own_bytes: u64 = s.a.blobs()[..]
        .iter()
        .filter(|(d, _)| *d != shared)
        .map(|(_, b)| b.len() as u64)
        .sum::<u64>()
        + s.a.oci_manifest().len() as u64;
    assert_eq!(before_bytes - after_bytes, a_own_bytes);
    assert_eq!(before_files - after_files, 3);
    let (code, table, _) = cli(regcache, &["ls"]).await;
    println!("regcache ls after the purge:\n{table}");
    assert_eq!(code, Some(0));
    assert!(!table.contains("purge/a"), "{table}");
    assert!(table.contains("e2e-upstream/purge/b "), "{table}");

    // B still pulls from the cache alone; A comes back from the upstream.
    let gets = all_upstream_blob_gets(&s.upstream.registry).len();
    pull(regcache, "purge/b:v1", false).await;
    settle(&s.upstream.registry, Duration::from_millis(300)).await;
    assert_eq!(all_upstream_blob_gets(&s.upstream.registry).len(), gets);
    pull(regcache, "purge/a:v1", false).await;
    settle(&s.upstream.registry, Duration::from_millis(300)).await;
    let refetched = &all_upstream_blob_gets(&s.upstream.registry)[gets..];
    assert_eq!(
        refetched.len(),
        2,
        "A's config and own layer: {refetched:?}"
    );
    for d in &a_own {
        assert!(entry_exists(regcache, d), "{d} cached again");
    }

    // Unknown names and bad references: registry errors, clear exits.
    let (code, _, err) = cli(regcache, &["purge", "purge/zzz"]).await;
    assert_eq!(code, Some(66), "{err}");
    assert!(
        err.contains("NAME_UNKNOWN") && err.contains("purge/zzz"),
        "{err}"
    );
    let (code, _, err) = cli(regcache, &["purge", "purge/A"]).await;
    assert_eq!(code, Some(64), "{err}");
    let resp = reqwest::Client::new()
        .post(format!("{}/api/purge", regcache.admin_url()))
        .body(r#"{"images":["UPPER/case"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = json(&resp.text().await.unwrap());
    assert_eq!(body["errors"][0]["code"], "NAME_INVALID", "{body}");

    // Offline ls of the stopped instance lists what the running one did.
    let (code, online, _) = cli(&s.regcache, &["ls", "--json"]).await;
    assert_eq!(code, Some(0));
    assert!(s.regcache.stop().success());
    let (code, offline, err) = run_regcache(&["ls", "--json", "--data-dir", &data_dir], &[]).await;
    assert_eq!(code, Some(0), "{err}");
    let strip = |v: &mut Value| {
        for key in ["images", "blobs"] {
            for row in v[key].as_array_mut().unwrap() {
                row.as_object_mut().unwrap().remove("last_use_unix");
            }
        }
    };
    let (mut online, mut offline) = (json(&online), json(&offline));
    strip(&mut online);
    strip(&mut offline);
    assert_eq!(online, offline, "offline ls differs from the online one");
    assert_eq!(
        listed(&offline),
        BTreeSet::from(["purge/a:v1".into(), "purge/b:v1".into()])
    );
    let (code, table, _) = run_regcache(&["ls", "--data-dir", &data_dir], &[]).await;
    println!("regcache ls --data-dir (stopped):\n{table}");
    assert_eq!(code, Some(0));
    let missing = format!("{}/none", data_dir);
    let (code, _, err) = run_regcache(&["ls", "--data-dir", &missing], &[]).await;
    assert_eq!(code, Some(66), "{err}");

    // Offline purge of a stopped instance works.
    let mut args = vec!["purge", "purge/b:v1"];
    args.extend(offline_flags);
    let (code, out, err) = run_regcache(&args, &[]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("purged 1 tags, 3 entries"), "{out}");
}

#[tokio::test]
async fn older_than_purges_what_was_not_used_since() {
    let s = shared_repositories("aged").await;
    let regcache = &s.regcache;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // B is used again; A is not.
    pull(regcache, "aged/b:v1", false).await;
    let (code, out, err) = cli(regcache, &["purge", "--older-than", "3s"]).await;
    println!("regcache purge --older-than 3s:\n{out}{err}");
    assert_eq!(code, Some(0), "{err}");
    let (code, inv, _) = cli(regcache, &["ls", "--json"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        listed(&json(&inv)),
        BTreeSet::from(["aged/b:v1".to_owned()]),
        "{inv}"
    );
    assert!(!entry_exists(regcache, &s.a_manifest));
    assert!(!entry_exists(regcache, &s.a.layer_digests()[1]));
    assert!(entry_exists(regcache, &s.b_manifest));
    assert!(
        entry_exists(regcache, &s.a.layer_digests()[0]),
        "shared base kept"
    );
    let (code, _, err) = cli(regcache, &["purge", "--older-than", "2 days"]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("bad duration"), "{err}");
}

#[tokio::test]
async fn a_blob_being_read_when_it_is_purged_is_read_to_the_end() {
    let up = ProxiedRegistry::start();
    let mut g = ImageGen::new(0x1f1);
    let big = regcache_tests::image::big_layer(0x1f2, 24 << 20);
    let layers = vec![g.layer(), big.clone()];
    let platform = Platform::linux_amd64();
    let cfg = config(&platform, &layers, &default_history(2), Value::Null);
    let image = Image::new(&cfg, layers, platform);
    up.direct()
        .push_image("inflight/app", "v1", &image, ManifestFormat::Docker)
        .await;
    let regcache = Regcache::start(regcache_tests::RegcacheOptions::new(up.proxy.url()));
    pull(&regcache, "inflight/app:v1", false).await;
    assert_eq!(up.proxy.blob_gets(&big.digest), 1);
    assert!(entry_exists(&regcache, &big.digest));

    // A client reads a few bytes of the cached 24 MiB layer and stalls
    // (the socket buffers fill, regcache's copy waits on its open file).
    let url = format!("{}/v2/inflight/app/blobs/{}", regcache.url(), big.digest);
    let mut resp = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    body.extend_from_slice(&resp.chunk().await.unwrap().unwrap());

    let (code, out, err) = cli(&regcache, &["purge", "inflight/app"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("removed blob {}", big.digest)),
        "{out}"
    );
    assert!(!entry_exists(&regcache, &big.digest), "purged from disk");

    // The read in flight finishes whole.
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(body.len(), big.blob.len());
    assert_eq!(regcache_tests::sha256_digest(&body), big.digest);
    // The next read fetches it from the upstream again.
    let again = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(regcache_tests::sha256_digest(&again), big.digest);
    assert_eq!(up.proxy.blob_gets(&big.digest), 2);
}

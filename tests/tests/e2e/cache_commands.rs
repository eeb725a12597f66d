//! `regcache ls`, `purge` and `prefetch` against a real docker-registry
//! upstream, pulled with skopeo: prefetch warms every blob (a pull after it
//! costs the upstream no blob GET) and shows bars in a terminal; a purge of
//! one repository removes its own blobs and keeps the ones another cached
//! repository shares; `--older-than` purges what was not used since; and
//! `ls` on a stopped instance's data dir lists what the running one did.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regcache_tests::image::{config, default_history};
use regcache_tests::regcache::run_regcache;
use regcache_tests::tools::require_program;
use regcache_tests::{Image, ImageGen, Layer, ManifestFormat, Platform, Regcache, Skopeo};
use serde_json::Value;

use crate::support::{
    Mode, ProxiedRegistry, Upstream, all_upstream_blob_gets, push_test_images, settle,
};

/// `regcache ARGS… --admin URL`: (exit code, stdout, stderr).
async fn cli(regcache: &Regcache, args: &[&str]) -> (Option<i32>, String, String) {
    let admin = regcache.admin_url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--admin", admin.as_str()]);
    run_regcache(&all, &[]).await
}

/// skopeo copy through regcache into a fresh `dir:` (`--all` for lists).
async fn pull(regcache: &Regcache, image: &str, all: bool) {
    let out = tempfile::tempdir().unwrap();
    let dst = format!("dir:{}", out.path().display());
    Skopeo::new()
        .copy(
            &format!("docker://{}/{image}", regcache.host()),
            &dst,
            None,
            all,
        )
        .await;
}

/// Bytes and file count under the blob directories.
fn disk_usage(dir: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                bytes += meta.len();
                files += 1;
            }
        }
    }
    (bytes, files)
}

fn entry_exists(regcache: &Regcache, digest: &str) -> bool {
    crate::fsck::entry_path(regcache, digest).exists()
}

fn image_on(seed: u64, base: &Layer) -> Image {
    let mut g = ImageGen::new(seed);
    let layers = vec![base.clone(), g.layer()];
    let platform = Platform::linux_amd64();
    let cfg = config(&platform, &layers, &default_history(2), Value::Null);
    Image::new(&cfg, layers, platform)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `upstream/repository:tag` of every image row of an `ls --json`.
fn listed(inv: &Value) -> BTreeSet<String> {
    inv["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["repository"].as_str().unwrap(),
                r["tag"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn prefetch_warms_every_blob_and_a_pull_after_it_costs_no_upstream_blob_get() {
    let upstream = Upstream::start(Mode::Plain);
    let pushed = push_test_images(&upstream, "prefetch", false).await;
    let regcache = upstream.start_regcache();
    let chosen: Vec<_> = pushed
        .iter()
        .filter(|p| ["schema2", "oci", "list"].contains(&p.label))
        .collect();
    assert_eq!(chosen.len(), 3);
    assert!(chosen.iter().any(|p| p.list && p.children.len() == 2));

    // Two images from a file, the multi-platform one on the command line.
    let work = tempfile::tempdir().unwrap();
    let list_file = work.path().join("images.txt");
    std::fs::write(
        &list_file,
        "# rollout 42\nprefetch/schema2:v1\n\nprefetch/oci:v1  # the OCI one\n",
    )
    .unwrap();
    let before = all_upstream_blob_gets(&upstream.registry).len();
    let (code, out, err) = cli(
        &regcache,
        &["prefetch", list_file.to_str().unwrap(), "prefetch/list:v1"],
    )
    .await;
    println!("regcache prefetch (not a terminal):\n{out}{err}");
    assert_eq!(code, Some(0), "{out}{err}");
    let blob_lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("prefetch prefetch/") && l.ends_with(" done"))
        .collect();
    let want: usize = chosen.iter().map(|p| p.blobs.len()).sum();
    assert_eq!(blob_lines.len(), want, "a line per blob: {out}");
    for p in &chosen {
        for blob in &p.blobs {
            let short = &blob[.."sha256:".len() + 12];
            assert!(
                blob_lines
                    .iter()
                    .any(|l| l.contains(&format!("prefetch/{}:v1 {short} ", p.label))),
                "no line for {} {blob}: {out}",
                p.label
            );
        }
    }
    assert!(
        out.contains("prefetch: 3 images") && out.contains("; 0 failed"),
        "{out}"
    );
    let fetched = all_upstream_blob_gets(&upstream.registry).len() - before;
    assert_eq!(fetched, want, "one upstream GET per blob");

    // A pull of all three now needs no blob from the upstream.
    let before = all_upstream_blob_gets(&upstream.registry);
    for p in &chosen {
        pull(&regcache, &format!("prefetch/{}:v1", p.label), p.list).await;
    }
    settle(&upstream.registry, Duration::from_millis(300)).await;
    let after = all_upstream_blob_gets(&upstream.registry);
    assert_eq!(
        after.len(),
        before.len(),
        "upstream blob GETs after the prefetch: {:?}",
        &after[before.len()..]
    );

    // A second run finds everything cached; --platform keeps one child.
    let (code, out, err) = cli(
        &regcache,
        &["prefetch", "prefetch/list:v1", "--platform", "linux/arm64"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let cached: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with(" already cached"))
        .collect();
    assert_eq!(cached.len(), 3, "one platform's config and layers: {out}");

    // A missing image fails after the others finish, and says which.
    let (code, out, err) = cli(
        &regcache,
        &["prefetch", "prefetch/oci:v1", "prefetch/missing:v1"],
    )
    .await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("prefetched prefetch/oci:v1"), "{out}");
    assert!(
        err.contains("1 of 2 images failed") && err.contains("prefetch/missing:v1: manifest: "),
        "{err}"
    );
    // Bad input: a usage error before anything is asked.
    let (code, _, err) = cli(&regcache, &["prefetch", "Not An/Image"]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("bad image reference"), "{err}");
    let (code, _, err) =
        run_regcache(&["prefetch", "x/y:z", "--admin", "http://127.0.0.1:1"], &[]).await;
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("cannot reach regcache's admin API"), "{err}");
}

/// Where test artifacts go: `target/test-artifacts/`.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn prefetch_in_a_terminal_draws_progress_bars() {
    let tmux = require_program("tmux", "tmux");
    let up = ProxiedRegistry::start();
    let mut g = ImageGen::new(0x7a1);
    let layers = vec![
        g.layer(),
        regcache_tests::image::big_layer(0x7a2, 3 << 20),
        regcache_tests::image::big_layer(0x7a3, 3 << 20),
    ];
    let platform = Platform::linux_amd64();
    let cfg = config(&platform, &layers, &default_history(3), Value::Null);
    let image = Image::new(&cfg, layers, platform);
    up.direct()
        .push_image("tty/app", "v1", &image, ManifestFormat::Docker)
        .await;
    // About 3 s per big layer: bars are on screen for a while.
    up.proxy.inject(
        regcache_tests::fault::Target::AllBlobs,
        regcache_tests::fault::Fault::Throttle(1 << 20),
    );
    let regcache =
        Regcache::start(regcache_tests::RegcacheOptions::new(up.proxy.url()).retry_attempts(1));

    let work = tempfile::tempdir().unwrap();
    let socket = work.path().join("tmux.sock");
    let socket = socket.to_str().unwrap();
    let done_marker = work.path().join("exit-code");
    let command = format!(
        "{} prefetch tty/app:v1 --admin {}; echo $? > {}; sleep 60",
        regcache_tests::regcache::regcache_bin().display(),
        regcache.admin_url(),
        done_marker.display()
    );
    let status = std::process::Command::new(&tmux)
        .args([
            "-S",
            socket,
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "30",
            "-s",
            "prefetch",
        ])
        .arg(&command)
        .status()
        .unwrap();
    assert!(status.success(), "tmux new-session");
    let capture = || {
        let out = std::process::Command::new(&tmux)
            .args(["-S", socket, "capture-pane", "-p", "-t", "prefetch"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Poll until a blob bar is mid-way (a percentage below 100 and a
    // partial bar), with a deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mid = loop {
        let screen = capture();
        let bar = screen.lines().any(|l| {
            l.starts_with("tty/app:v1 sha256:")
                && l.contains("[")
                && l.contains("=>")
                && l.contains("MiB")
                && !l.contains("100%")
        });
        if bar && screen.contains("total  [") {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "no progress bar seen within 60 s; last screen:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let path = artifacts_dir().join("prefetch-tty.txt");
    std::fs::write(&path, &mid).unwrap();
    println!(
        "terminal capture mid-flight saved to {}:\n{mid}",
        path.display()
    );
    assert!(mid.contains('%'), "{mid}");

    let deadline = Instant::now() + Duration::from_secs(90);
    while !done_marker.exists() {
        assert!(
            Instant::now() < deadline,
            "prefetch did not finish:\n{}",
            capture()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let end = capture();
    let _ = std::process::Command::new(&tmux)
        .args(["-S", socket, "kill-server"])
        .status();
    println!("terminal at the end:\n{end}");
    assert_eq!(
        std::fs::read_to_string(&done_marker).unwrap().trim(),
        "0",
        "{end}"
    );
    assert!(end.contains("prefetched tty/app:v1"), "{end}");
    assert_eq!(
        end.lines()
            .filter(|l| l.starts_with("prefetch tty/app:v1 sha256:") && l.ends_with(" done"))
            .count(),
        4,
        "a line per finished blob stays on screen: {end}"
    );
}

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

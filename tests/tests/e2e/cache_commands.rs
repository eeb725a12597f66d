//! `regcache ls`, `purge` and `prefetch` against a real docker-registry
//! upstream, pulled with skopeo: prefetch warms every blob (a pull after it
//! costs the upstream no blob GET) and shows bars in a terminal, and the
//! admin token guards it. The purge tests are in `cache_purge.rs`.

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
pub(crate) async fn cli(regcache: &Regcache, args: &[&str]) -> (Option<i32>, String, String) {
    let admin = regcache.admin_url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--admin", admin.as_str()]);
    run_regcache(&all, &[]).await
}

/// skopeo copy through regcache into a fresh `dir:` (`--all` for lists).
pub(crate) async fn pull(regcache: &Regcache, image: &str, all: bool) {
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
pub(crate) fn disk_usage(dir: &Path) -> (u64, usize) {
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

pub(crate) fn entry_exists(regcache: &Regcache, digest: &str) -> bool {
    crate::fsck::entry_path(regcache, digest).exists()
}

pub(crate) fn image_on(seed: u64, base: &Layer) -> Image {
    let mut g = ImageGen::new(seed);
    let layers = vec![base.clone(), g.layer()];
    let platform = Platform::linux_amd64();
    let cfg = config(&platform, &layers, &default_history(2), Value::Null);
    Image::new(&cfg, layers, platform)
}

pub(crate) fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `upstream/repository:tag` of every image row of an `ls --json`.
pub(crate) fn listed(inv: &Value) -> BTreeSet<String> {
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

#[tokio::test]
async fn prefetch_and_purge_send_the_admin_token_and_never_show_it() {
    let upstream = Upstream::start(Mode::Plain);
    let base = ImageGen::new(0x70c).layer();
    let image = image_on(0x70d, &base);
    upstream
        .client(&[])
        .push_image("guarded/app", "v1", &image, ManifestFormat::Oci)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token = "e2e-cache-admin-token-5c0ffee";
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let regcache = Regcache::start(upstream.regcache_options().extra_toml(&format!(
        "[admin]\ntoken_file = {:?}\n",
        file.display().to_string()
    )));

    // Without the token: refused (77), saying what is needed.
    let (code, out, err) = cli(&regcache, &["prefetch", "guarded/app:v1"]).await;
    assert_eq!(code, Some(77), "{out}{err}");
    assert!(err.contains("401") && err.contains("UNAUTHORIZED"), "{err}");
    let (code, _, err) = cli(&regcache, &["purge", "guarded/app", "--dry-run"]).await;
    assert_eq!(code, Some(77), "{err}");
    // ls only reads: no token needed.
    let (code, _, err) = cli(&regcache, &["ls"]).await;
    assert_eq!(code, Some(0), "{err}");

    // With --token-file, or REGCACHE_ADMIN_TOKEN.
    let token_file = file.to_str().unwrap();
    let (code, out, err) = cli(
        &regcache,
        &["prefetch", "guarded/app:v1", "--token-file", token_file],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("prefetched guarded/app:v1"), "{out}");
    let admin = regcache.admin_url();
    let (code, out, err) = run_regcache(
        &["purge", "guarded/app", "--admin", &admin],
        &[("REGCACHE_ADMIN_TOKEN", token)],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("purged 1 tags, 4 entries"), "{out}");
    for text in [out, err, regcache.log()] {
        assert!(!text.contains(token), "the token is shown: {text}");
    }
}

//! The admin page (issue 14) in a real headless browser: three images
//! pulled through regcache with skopeo, then Debian's `chromium` loads the
//! page on the admin listener, runs its live script, and dumps the DOM;
//! the figures in it must be the numbers `/metrics` reports. Screenshots
//! (desktop and phone width) are kept at `target/test-artifacts/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regcache_tests::regcache::run_regcache;
use regcache_tests::skopeo::CopyOptions;
use regcache_tests::tools::require_program;
use regcache_tests::{Metrics, Regcache, RegistryClient, Skopeo, regcache_bin};

use crate::support::{FULL_ACCEPT, Mode, Pushed, Upstream, push_test_images};

const LOOKUPS: &str = "regcache_cache_lookups_total";
const SERVED: &str = "regcache_served_bytes_total";

/// `target/test-artifacts`, next to the `regcache` binary's profile dir.
fn artifacts_dir() -> PathBuf {
    let bin = regcache_bin();
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/regcache");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless chromium on `url` with `extra` arguments (a fresh
/// profile, nothing but loopback: no sync, no component updates, no
/// background networking) and returns its stdout.
async fn chromium(url: &str, size: (u32, u32), extra: &[String]) -> String {
    let bin = require_program("chromium", "chromium");
    let profile = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--hide-scrollbars".to_owned(),
        format!("--user-data-dir={}", profile.path().display()),
        format!("--window-size={},{}", size.0, size.1),
    ];
    args.extend(extra.iter().cloned());
    args.push(url.to_owned());
    let run = tokio::process::Command::new(&bin)
        .args(&args)
        .env("HOME", profile.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish within 120 s: {args:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn screenshot(url: &str, size: (u32, u32), name: &str) -> PathBuf {
    let path = artifacts_dir().join(name);
    let _ = std::fs::remove_file(&path);
    chromium(
        url,
        size,
        &[
            "--virtual-time-budget=5000".to_owned(),
            format!("--screenshot={}", path.display()),
        ],
    )
    .await;
    let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a page's screenshot ({} bytes)",
        path.display(),
        png.len()
    );
    println!("admin page screenshot: {}", path.display());
    path
}

async fn dump_dom(url: &str, size: (u32, u32)) -> String {
    chromium(
        url,
        size,
        &[
            "--virtual-time-budget=5000".to_owned(),
            "--dump-dom".to_owned(),
        ],
    )
    .await
}

/// The opening tag of the element with `id="{id}"`.
fn tag_with_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element with id {id} in the DOM:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..=end]
}

/// The value of `attr` in an opening tag.
fn attr<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let key = format!(" {attr}=\"");
    let at = tag.find(&key)? + key.len();
    Some(&tag[at..at + tag[at..].find('"')?])
}

/// The exact figure (`data-value`) of the element with `id`.
fn figure(dom: &str, id: &str) -> u64 {
    let tag = tag_with_id(dom, id);
    attr(tag, "data-value")
        .unwrap_or_else(|| panic!("{tag} has no data-value"))
        .parse()
        .unwrap_or_else(|e| panic!("{tag}: {e}"))
}

/// The `data-name`s of the rows of the table `data-top="{which}"`.
fn top_names(dom: &str, which: &str) -> Vec<String> {
    let at = dom
        .find(&format!("data-top=\"{which}\""))
        .unwrap_or_else(|| panic!("no top table {which} in the DOM"));
    let table = &dom[at..at + dom[at..].find("</table>").unwrap()];
    table
        .match_indices("<tr data-name=\"")
        .map(|(i, m)| {
            let rest = &table[i + m.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

/// The figures the page shows, as `/metrics` has them.
fn figures(m: &Metrics) -> [f64; 5] {
    [
        m.sum(LOOKUPS, &[("result", "hit")]),
        m.sum(LOOKUPS, &[("result", "miss")]),
        m.sum(SERVED, &[("source", "cache")]),
        m.sum(SERVED, &[("source", "upstream")]),
        m.sum("regcache_cache_bytes", &[("tier", "disk")]),
    ]
}

/// `/metrics` once two scrapes 300 ms apart agree on the figures the page
/// shows (the last response's bytes reach their counter just after the
/// client has them), up to 10 s.
async fn settled(regcache: &Regcache) -> Metrics {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = regcache.metrics().await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = regcache.metrics().await;
        if figures(&now) == figures(&last) || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

async fn pull(host: &str, image: &Pushed, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    Skopeo::new()
        .try_copy(
            &format!("docker://{host}/{}:{}", image.repo, image.tag),
            &format!("dir:{}", out.join(image.label).display()),
            None,
            image.list,
            &CopyOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn admin_page_in_a_browser_shows_what_metrics_report() {
    require_program("chromium", "chromium");
    let upstream = Upstream::start(Mode::Plain);
    let images = push_test_images(&upstream, "cockpit", false).await;
    let images: Vec<&Pushed> = images.iter().take(3).collect();
    let regcache = Regcache::start(
        upstream
            .regcache_options()
            .extra_toml("\n[[policy]]\nrepositories = [\"legacy/**\"]\nschema1 = \"force\"\n"),
    );
    let work = tempfile::tempdir().unwrap();

    // Cold pulls (misses, bytes from the upstream), then one warm pull
    // (hits, bytes from the cache), and one error for the recent errors.
    for image in &images {
        pull(&regcache.host(), image, &work.path().join("cold")).await;
    }
    pull(&regcache.host(), images[0], &work.path().join("warm")).await;
    let missing = RegistryClient::new(regcache.url())
        .get_manifest(&images[0].repo, "no-such-tag", FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(missing.status, 404, "{}", missing.text());

    let before = settled(&regcache).await;
    let page = format!("{}/", regcache.admin_url());
    let shot = screenshot(&page, (1280, 2000), "admin-page.png").await;
    let phone = screenshot(&page, (390, 844), "admin-page-phone.png").await;
    let dom = dump_dom(&page, (1280, 2000)).await;
    let phone_dom = dump_dom(&page, (390, 844)).await;
    let metrics = regcache.metrics().await;
    assert_eq!(
        figures(&before),
        figures(&metrics),
        "nothing should have moved while the browser looked"
    );

    // The live script ran (it re-fetched the page and swapped the figures in).
    assert!(
        dom.contains("data-refreshed=\""),
        "the page's script did not run:\n{dom}"
    );

    let hits = metrics.sum(LOOKUPS, &[("result", "hit")]) as u64;
    let misses = metrics.sum(LOOKUPS, &[("result", "miss")]) as u64;
    let from_cache = metrics.sum(SERVED, &[("source", "cache")]) as u64;
    let from_upstream = metrics.sum(SERVED, &[("source", "upstream")]) as u64;
    let disk = metrics.sum("regcache_cache_bytes", &[("tier", "disk")]) as u64;
    assert!(
        hits > 0 && misses > 0 && from_cache > 0 && from_upstream > 0 && disk > 0,
        "the pulls should have hit, missed and filled:\n{}",
        metrics.text
    );
    assert_eq!(figure(&dom, "hits"), hits, "hits");
    assert_eq!(figure(&dom, "misses"), misses, "misses");
    assert_eq!(
        figure(&dom, "served_cache"),
        from_cache,
        "bytes from the cache"
    );
    assert_eq!(
        figure(&dom, "served_upstream"),
        from_upstream,
        "bytes from the upstream"
    );
    assert_eq!(figure(&dom, "disk_bytes"), disk, "disk cache bytes");
    let ratio: f64 = attr(tag_with_id(&dom, "hit_ratio"), "data-value")
        .unwrap()
        .parse()
        .unwrap();
    let want = hits as f64 / (hits + misses) as f64;
    assert!(
        (ratio - want).abs() < 1e-5,
        "hit ratio {ratio}, metrics say {want}"
    );

    // The three repositories in the top list, the sparkline, the policy's
    // glob, the upstream's breaker, the 404 among the recent errors.
    let top = top_names(&dom, "repositories-by-requests");
    for image in &images {
        assert!(top.contains(&image.repo), "{} not in {top:?}", image.repo);
    }
    assert!(
        !top_names(&dom, "blobs-by-bytes").is_empty(),
        "no blob in the top blobs"
    );
    let spark = tag_with_id(&dom, "hit-ratio-history");
    assert!(spark.starts_with("<section"), "{spark}");
    assert!(
        dom.contains("<polyline class=\"line\""),
        "no sparkline line:\n{dom}"
    );
    assert!(
        dom.contains("<code>legacy/**</code>"),
        "policy glob missing"
    );
    assert!(dom.contains("data-upstream=\""), "no upstream row");
    assert!(dom.contains(">closed<"), "the breaker should be closed");
    let errors = &dom[dom.find("id=\"errors\"").unwrap()..];
    assert!(
        errors.contains("MANIFEST_UNKNOWN") && errors.contains(&images[0].repo),
        "the 404 is not among the recent errors"
    );

    // At phone width the page fits: no horizontal scrolling.
    assert!(
        phone_dom.contains("data-fits=\"true\""),
        "the page scrolls sideways at 390 px:\n{phone_dom}"
    );

    // /api/stats and `regcache stats` give the same figures.
    let body = reqwest::get(format!("{}/api/stats", regcache.admin_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["lookups"]["hits"], hits);
    assert_eq!(json["served_bytes"]["cache"], from_cache);
    let admin = regcache.admin_url();
    let (code, out, err) = run_regcache(&["stats", "--admin", &admin], &[]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("{hits} hits, {misses} misses")) && out.contains(&images[0].repo),
        "{out}"
    );
    let (code, out, _) = run_regcache(&["stats", "--admin", &admin, "--json"], &[]).await;
    assert_eq!(code, Some(0));
    let cli: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli["lookups"]["misses"], misses);

    println!("screenshots: {} and {}", shot.display(), phone.display());
}

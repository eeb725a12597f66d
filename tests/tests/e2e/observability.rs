//! The operator's cockpit (issue 14): a skopeo pull through regcache leaves
//! one access line per request (JSON lines with unique keys), moves the
//! request counter and latency histogram by exactly that, passes
//! `promtool check metrics` without a complaint, and serves every metric the
//! Grafana dashboard queries; upstream failures (DNS, refused, TLS) are
//! logged and counted with their cause.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regcache_tests::image::Platform;
use regcache_tests::tools::{require_program, run_with_stdin};
use regcache_tests::{
    ManifestFormat, Regcache, RegcacheOptions, Registry, RegistryClient, RegistryOptions, Skopeo,
};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::support::{FULL_ACCEPT, Mode, Upstream, small_image};

const REQUESTS: &str = "regcache_http_requests_total";

/// A JSON value parsed with duplicate keys refused (serde_json keeps the
/// last one silently, as jq does).
struct Unique;

impl<'de> de::Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<Unique>()?;
        }
        Ok(Unique)
    }
}

/// Every log line as JSON, each checked for unique keys (the harness's
/// own `=====` start markers aside).
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("===== "))
        .map(|line| {
            if let Err(e) = serde_json::from_str::<Unique>(line) {
                panic!("not JSON with unique keys ({e}): {line}");
            }
            serde_json::from_str(line).unwrap()
        })
        .collect()
}

/// jq, as an operator would use it, reads every log line: one compact
/// object out for each line in (`json_lines` has checked the keys are unique,
/// which jq can't: it keeps the last of a repeated key).
fn jq_reads_every_line(log: &str, expected: usize) {
    let jq = require_program("jq", "jq");
    let input: String = log
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("===== "))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = run_with_stdin(&jq, &["-c", "{level, target, message}"], input.as_bytes());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "jq could not read the log: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), expected, "{stdout}");
    for line in stdout.lines() {
        assert!(
            !line.contains("\"message\":null"),
            "an event without its message: {line}"
        );
    }
    println!("jq read {expected} log lines, each with its level, target and message");
}

fn access_lines(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["target"] == "regcache::access")
        .collect()
}

/// `promtool check metrics` on `text`: its complaints (empty when clean).
fn promtool_check(text: &str) -> String {
    let promtool = require_program("promtool", "prometheus");
    let out = run_with_stdin(&promtool, &["check", "metrics"], text.as_bytes());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        String::new()
    } else {
        format!("exit {:?}: {said}", out.status.code())
    }
}

/// `# TYPE name kind` of a scrape.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, k)| (n.to_owned(), k.to_owned()))
        .collect()
}

/// Every `regcache_…` / `process_…` identifier in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("regcache_") || rest.starts_with("process_")) {
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
                .count();
            out.push(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    out
}

/// Every `expr` anywhere in the dashboard's JSON.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

async fn scrape(regcache: &Regcache) -> String {
    reqwest::get(format!("{}/metrics", regcache.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_is_logged_counted_and_lints_clean_and_the_dashboard_finds_its_metrics() {
    let upstream = Upstream::start(Mode::Plain);
    let repo = "obs/app";
    upstream
        .client(&[repo])
        .push_image(
            repo,
            "v1",
            &small_image(0x0b5, Platform::linux_amd64()),
            ManifestFormat::Docker,
        )
        .await;
    let mut options = upstream.regcache_options();
    options.log_format = "json".into();
    let regcache = Regcache::start(options);

    // Two pulls: cold (misses, fills), then warm (hits).
    let skopeo = Skopeo::new();
    let work = tempfile::tempdir().unwrap();
    for round in ["cold", "warm"] {
        let dst = format!("dir:{}", work.path().join(round).display());
        skopeo
            .copy(
                &format!("docker://{}/{repo}:v1", regcache.host()),
                &dst,
                None,
                false,
            )
            .await;
    }
    // A request with its own id, and one without.
    let client = RegistryClient::new(regcache.url());
    let accept = FULL_ACCEPT.join(", ");
    let tagged = client
        .request(
            reqwest::Method::GET,
            &format!("/v2/{repo}/manifests/v1"),
            &[("X-Request-Id", "obs-e2e-42"), ("Accept", accept.as_str())],
            None,
        )
        .await
        .unwrap();
    assert_eq!(tagged.status, 200, "{}", tagged.text());
    assert_eq!(tagged.header("x-request-id"), Some("obs-e2e-42"));
    let plain = client
        .request(reqwest::Method::GET, "/v2/", &[], None)
        .await
        .unwrap();
    let made = plain.header("x-request-id").unwrap_or_default().to_owned();
    assert!(!made.is_empty() && made != "obs-e2e-42", "{made:?}");

    // Every request regcache answered has its line (lines are written when
    // the last byte is: poll).
    let metrics = regcache
        .metrics_when(|m| {
            let lines = json_lines(&regcache.log());
            m.sum(REQUESTS, &[]) as usize == access_lines(&lines).len()
        })
        .await;
    let log = regcache.log();
    let lines = json_lines(&log);
    jq_reads_every_line(&log, lines.len());
    let access = access_lines(&lines);
    let total = metrics.sum(REQUESTS, &[]);
    assert_eq!(total as usize, access.len(), "{log}\n{}", metrics.text);
    for line in &access {
        for key in [
            "method",
            "route",
            "repository",
            "status",
            "bytes",
            "duration_ms",
            "cache",
            "upstream",
            "request_id",
        ] {
            assert!(!line[key].is_null(), "{key} missing: {line}");
        }
        assert_ne!(line["route"], "none", "{line}");
    }
    let count = |route: &str, method: &str| {
        access
            .iter()
            .filter(|l| l["route"] == route && l["method"] == method)
            .count()
    };
    // Two skopeo pulls and one manual GET of the manifest by tag; three
    // blobs (config, two layers) per pull.
    assert_eq!(count("manifest", "GET"), 3, "{log}");
    assert_eq!(
        metrics.sum(REQUESTS, &[("route", "manifest"), ("method", "GET")]),
        3.0,
        "{}",
        metrics.text
    );
    assert_eq!(count("blob", "GET"), 6, "{log}");
    assert_eq!(
        metrics.sum(REQUESTS, &[("route", "blob"), ("method", "GET")]),
        6.0,
        "{}",
        metrics.text
    );
    // The latency histogram counted the same requests.
    assert_eq!(
        metrics.sum(
            "regcache_http_request_duration_seconds_count",
            &[("route", "manifest")]
        ),
        metrics.sum(REQUESTS, &[("route", "manifest")]),
        "{}",
        metrics.text
    );
    assert_eq!(
        metrics.sum("regcache_http_request_duration_seconds_count", &[]),
        total,
        "{}",
        metrics.text
    );
    // Blob outcomes: three misses on the cold pull, three hits on the warm one.
    let blob_cache: Vec<&str> = access
        .iter()
        .filter(|l| l["route"] == "blob")
        .map(|l| l["cache"].as_str().unwrap())
        .collect();
    assert_eq!(
        blob_cache.iter().filter(|c| **c == "miss").count(),
        3,
        "{blob_cache:?}"
    );
    assert_eq!(
        blob_cache.iter().filter(|c| **c == "hit").count(),
        3,
        "{blob_cache:?}"
    );
    let blob_bytes: u64 = access
        .iter()
        .filter(|l| l["route"] == "blob")
        .map(|l| l["bytes"].as_u64().unwrap())
        .sum();
    // Each pull wrote every blob once: the lines' bytes are the blobs' sizes.
    let blob_files: u64 = std::fs::read_dir(work.path().join("cold"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !["manifest.json", "version"].contains(&e.file_name().to_str().unwrap()))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(blob_files > 0);
    assert_eq!(blob_bytes, 2 * blob_files, "{blob_cache:?}");
    assert!(
        access
            .iter()
            .any(|l| l["request_id"] == "obs-e2e-42" && l["route"] == "manifest"),
        "{log}"
    );
    assert!(
        access.iter().any(|l| l["request_id"] == made.as_str()),
        "{log}"
    );
    assert!(
        access
            .iter()
            .all(|l| l["upstream"] == "e2e-upstream" || l["route"] == "ping"),
        "{log}"
    );

    // promtool's lint: not one complaint.
    let text = scrape(&regcache).await;
    let complaints = promtool_check(&text);
    assert!(complaints.is_empty(), "{complaints}\n{text}");
    let types = families(&text);
    for family in [
        "regcache_http_requests_total",
        "regcache_http_request_duration_seconds",
        "regcache_upstream_request_duration_seconds",
        "regcache_fills_in_flight",
        "regcache_cache_bytes",
        "regcache_cache_entries",
        "regcache_cache_budget_bytes",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(types.contains_key(family), "{family} missing:\n{text}");
    }
    let m = regcache_tests::Metrics::parse(&text);
    assert_eq!(m.sum("regcache_fills_in_flight", &[]), 0.0, "{text}");
    assert!(
        m.sum("regcache_upstream_request_duration_seconds_count", &[]) >= 4.0,
        "the cold pull's upstream requests were timed:\n{text}"
    );
    assert!(
        m.sum("regcache_cache_bytes", &[("tier", "disk")]) > 0.0,
        "{text}"
    );

    // The dashboard queries only metrics regcache exports.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/regcache-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        dashboard["templating"]["list"][0]["type"], "datasource",
        "the Prometheus datasource is a variable"
    );
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 10, "{all:?}");
    let mut unknown = Vec::new();
    for expr in &all {
        for name in metric_names(expr) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(&name);
            if !types.contains_key(family) {
                unknown.push(format!("{name} (in {expr})"));
            }
        }
    }
    assert!(unknown.is_empty(), "not in /metrics: {unknown:#?}\n{text}");
}

/// One regcache in front of `url`, one manifest GET through it: the log and
/// the scrape.
async fn fail_through(url: &str, cause: &str) {
    let mut options = RegcacheOptions::new(url).retry_attempts(1);
    options.upstream_name = format!("obs-{cause}");
    let regcache = Regcache::start(options);
    let got = RegistryClient::new(regcache.url())
        .get_manifest("obs/app", "v1", FULL_ACCEPT)
        .await
        .unwrap();
    assert!(
        [502, 503, 504].contains(&got.status),
        "{cause}: {} {}",
        got.status,
        got.text()
    );
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert!(body["errors"][0]["code"].is_string(), "{}", got.text());
    let label = format!("cause=\"{cause}\"");
    let metrics = regcache
        .metrics_when(|m| {
            m.text
                .lines()
                .any(|l| l.starts_with("regcache_upstream_failures_total") && l.contains(&label))
        })
        .await;
    assert!(
        metrics.sum("regcache_upstream_failures_total", &[("cause", cause)]) >= 1.0,
        "{}",
        metrics.text
    );
    assert!(
        metrics.sum("regcache_upstream_requests_total", &[("status", "error")]) >= 1.0,
        "{}",
        metrics.text
    );
    assert_eq!(
        metrics.sum("regcache_upstream_requests_total", &[("status", "0")]),
        0.0,
        "{}",
        metrics.text
    );
    let log = regcache.log();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("upstream request failed"))
        .collect();
    assert!(!failed.is_empty(), "{cause}: no failure line:\n{log}");
    for line in &failed {
        assert!(line.contains(&format!(" cause={cause} ")), "{line}");
        // The chain says more than the cause: at least two links.
        let chain = line
            .split("error.chain=")
            .nth(1)
            .unwrap_or_else(|| panic!("no error.chain: {line}"));
        assert!(chain.matches(": ").count() >= 2, "{line}");
    }
    // The request's own line says the cause too.
    assert!(
        log.lines()
            .any(|l| l.contains(" request failed ") && l.contains(&format!(" cause={cause} "))),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_logged_and_counted_with_their_cause() {
    // `.invalid` never resolves (RFC 6761); the resolver here says so at once.
    fail_through("http://no-such-host.invalid:5000", "dns").await;
    let closed = regcache_tests::free_port();
    fail_through(&format!("http://127.0.0.1:{closed}"), "refused").await;
    // TLS to a plain-HTTP registry: the handshake gets an HTTP answer.
    let registry = Registry::start(RegistryOptions::default());
    fail_through(&format!("https://{}", registry.host()), "tls").await;
}

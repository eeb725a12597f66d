//! The results: the summary table (each figure and the ratio regcache/peer),
//! the per-run details, the warm-up checks, the load-generator check, and
//! whatever the servers logged; rendered as Markdown for the terminal and
//! for `benches/RESULTS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::cold::FanIn;
use super::convert::{self, ConversionRecord};
use super::harness::{Options, S2_CONNECTIONS, Scenario};
use super::imageset::Object;
use super::machine::Machine;

/// One measured run.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub scenario: Scenario,
    pub target: &'static str,
    pub round: usize,
    /// MiB/s (S1) or requests/s (S2).
    pub value: f64,
    pub p99_ms: Option<f64>,
    pub detail: String,
    pub errors: Vec<String>,
    pub wall: Duration,
    /// CPU used, in cores (CPU seconds per wall second).
    pub client_cores: f64,
    pub server_cores: f64,
    pub upstream_cores: f64,
    /// Everything else on the machine (other jobs): the noise.
    pub other_cores: f64,
    pub command: String,
}

impl RunRecord {
    pub fn new(scenario: Scenario, target: &'static str, round: usize) -> RunRecord {
        RunRecord {
            scenario,
            target,
            round,
            value: 0.0,
            p99_ms: None,
            detail: String::new(),
            errors: Vec::new(),
            wall: Duration::ZERO,
            client_cores: 0.0,
            server_cores: 0.0,
            upstream_cores: 0.0,
            other_cores: 0.0,
            command: String::new(),
        }
    }

    /// One line for the progress log.
    pub fn summary(&self) -> String {
        let mut s = format!("{:.0} {}", self.value, self.scenario.unit());
        if let Some(p99) = self.p99_ms {
            s.push_str(&format!(", p99 {p99:.2} ms"));
        }
        s.push_str(&format!(
            " ({}; cores: client {:.2}, server {:.2}, upstream {:.2}, other {:.2})",
            self.detail,
            self.client_cores,
            self.server_cores,
            self.upstream_cores,
            self.other_cores
        ));
        if !self.errors.is_empty() {
            s.push_str(&format!(" ERRORS: {}", self.errors.join("; ")));
        }
        s
    }
}

/// Per-server facts outside the runs.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    pub name: &'static str,
    /// Peak RSS (VmHWM summed over its processes) during S1, max over rounds.
    pub peak_rss_s1: u64,
}

/// What warming one server showed.
#[derive(Debug, Clone)]
pub struct WarmRecord {
    pub target: &'static str,
    pub proxies: bool,
    /// Time of the first (cold) GET of each object.
    pub cold: Vec<(&'static str, Duration)>,
    /// What the cold GETs asked of the upstream, grouped (e.g. `GET blob ×2`).
    pub upstream_on_cold_gets: String,
    /// Upstream access-log lines caused by the second GET of every object.
    pub upstream_on_second_get: Vec<String>,
    /// `X-Cache-Status` of the second GETs (nginx proxy_cache).
    pub cache_status: Vec<String>,
    /// Peak RSS from start through the warm-up.
    pub peak_rss_warm: u64,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub options: Options,
    /// Runs made again because the best one was noisy.
    pub retries: usize,
    /// Where servers and client ran (see `harness::Pinning`).
    pub pinning: String,
    /// CPUs the load generator had.
    pub client_cpus: usize,
    /// Whether the load generator had CPUs of its own.
    pub pinned: bool,
    /// CPUs the servers had (when pinned).
    pub server_cpus: usize,
    pub machine: Machine,
    pub loadavg_end: String,
    pub date: String,
    pub elapsed: Duration,
    pub versions: Vec<(String, String)>,
    pub targets: Vec<TargetInfo>,
    pub warm: Vec<WarmRecord>,
    pub runs: Vec<RunRecord>,
    /// `name{labels}: delta` of regcache's counters over the measured runs.
    pub regcache_metrics_delta: Vec<String>,
    pub regcache_log: String,
    pub distribution_log: String,
    pub nginx_logs: String,
    pub distribution_config: String,
    pub nginx_cache_conf: String,
    pub nginx_static_conf: String,
    /// S3, per proxying server.
    pub fan_in: Vec<FanInRecord>,
    /// S3's reference: one direct GET of a cold blob from the upstream.
    pub direct_ttlb: Result<Duration, String>,
    /// S6 and S7, per server that converts (regcache, docker-registry proxy).
    pub conversions: Vec<ConversionRecord>,
    /// S7's OCI manifest as pushed upstream.
    pub oci_manifest: Object,
    /// S4: cold image pulls with skopeo, through each proxy and direct.
    pub pull: PullReport,
}

/// The `target` of S4's reference copies, straight from the upstream.
pub const PULL_DIRECT: &str = "direct from the upstream";

/// S4's goal: a cold pull through a proxy takes at most this many times
/// the direct copy.
pub const PULL_GOAL: f64 = 1.1;

/// Why nginx static has no S4 figure.
pub const PULL_STATIC_NA: &str = "nginx static serves only the files written for S1/S2 at their URL paths; it does not implement the registry API a pull needs (the `/v2/` ping, the tag resolved to a manifest with its `Content-Type`, every blob of the image)";

/// S4: every copy and what the client was.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// `skopeo --version`.
    pub skopeo_version: String,
    /// Sizes of the image's layer blobs, in layer order.
    pub layer_bytes: Vec<u64>,
    /// Config and layers.
    pub image_bytes: u64,
    /// Generating and pushing every S4 image.
    pub push_time: Duration,
    /// Where skopeo ran, e.g. `skopeo pinned to CPU(s) 1 with …`.
    pub client_pinning: String,
    /// Fresh images per proxy (one per round).
    pub rounds: usize,
    /// Every copy, in run order (direct ones included).
    pub runs: Vec<PullRecord>,
}

/// One S4 copy.
#[derive(Debug, Clone)]
pub struct PullRecord {
    /// A server's name, or [`PULL_DIRECT`].
    pub target: &'static str,
    pub round: usize,
    /// `bench/pull:TAG`.
    pub tag: String,
    /// Spawn to exit of skopeo.
    pub wall: Duration,
    pub client_cpu_secs: f64,
    /// CPU of the server (for the direct copies: the upstream), up to the
    /// settled upstream log after the copy (background fills included).
    pub server_cpu_secs: f64,
    /// The upstream's CPU (`None` for the direct copies: that is the server).
    pub upstream_cpu_secs: Option<f64>,
    /// Everything else the machine did during the copy, in cores: the noise.
    pub other_cores: f64,
    /// What the copy asked of the upstream, grouped (e.g. `GET blob ×9`).
    pub upstream_requests: String,
    /// Response bytes in the upstream's access log for those requests.
    pub upstream_bytes: u64,
    /// Config and layers of the image copied.
    pub image_bytes: u64,
    /// skopeo failed or the copy did not match the pushed digests.
    pub error: Option<String>,
    pub command: String,
}

impl PullRecord {
    /// One line for the progress log.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:.2} s (skopeo CPU {:.2} s, server CPU {:.2} s{}, other cores {:.2}; upstream: {}, {:.1} MiB = {:.2}× the image)",
            self.wall.as_secs_f64(),
            self.client_cpu_secs,
            self.server_cpu_secs,
            self.upstream_cpu_secs
                .map(|u| format!(", upstream CPU {u:.2} s"))
                .unwrap_or_default(),
            self.other_cores,
            self.upstream_requests,
            self.upstream_bytes as f64 / MIB,
            self.upstream_bytes as f64 / self.image_bytes.max(1) as f64
        );
        if let Some(e) = &self.error {
            s.push_str(&format!(" FAILED: {e}"));
        }
        s
    }
}

impl PullReport {
    /// The successful copies through `target`, fastest first.
    fn ok_runs(&self, target: &str) -> Vec<&PullRecord> {
        let mut runs: Vec<&PullRecord> = self
            .runs
            .iter()
            .filter(|r| r.target == target && r.error.is_none())
            .collect();
        runs.sort_by_key(|r| r.wall);
        runs
    }

    /// The fastest successful copy through `target`.
    pub fn best(&self, target: &str) -> Option<&PullRecord> {
        self.ok_runs(target).first().copied()
    }

    /// The median wall time of the successful copies (the mean of the
    /// middle two for an even count).
    pub fn median(&self, target: &str) -> Option<Duration> {
        let runs = self.ok_runs(target);
        let n = runs.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(runs[n / 2].wall),
            _ => Some((runs[n / 2 - 1].wall + runs[n / 2].wall) / 2),
        }
    }

    fn count(&self, target: &str) -> usize {
        self.runs.iter().filter(|r| r.target == target).count()
    }

    /// Best through `target` / best direct.
    pub fn ratio_to_direct(&self, target: &str) -> Option<f64> {
        let direct = self.best(PULL_DIRECT)?.wall.as_secs_f64();
        Some(self.best(target)?.wall.as_secs_f64() / direct.max(1e-9))
    }
}

/// S3 against one server.
#[derive(Debug, Clone)]
pub struct FanInRecord {
    pub target: &'static str,
    /// 0 in a full run; `--fanin` runs `--rounds` rounds, a fresh blob each.
    pub round: usize,
    pub clients: usize,
    pub blob_len: u64,
    /// 200 GETs of the blob's path in the upstream's access log during
    /// the cold fan-in.
    pub upstream_gets: usize,
    /// The same during the warm fan-in (should be 0).
    pub upstream_gets_warm: usize,
    /// The cold fan-in.
    pub result: FanIn,
    /// The same clients again once the blob is cached.
    pub warm: FanIn,
    /// Peak RSS of the server's processes during both fan-ins (S5).
    pub peak_rss: u64,
}

/// The peers, in column order.
pub const PEERS: [&str; 3] = ["docker-registry proxy", "nginx proxy_cache", "nginx static"];

const MIB: f64 = (1u64 << 20) as f64;

/// Counter values (`name{labels}` → value) of a Prometheus text page.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// regcache's lookup, upstream and failure counters that moved between two
/// `/metrics` pages.
pub fn metrics_delta(before: &str, after: &str) -> Vec<String> {
    let before = parse_metrics(before);
    parse_metrics(after)
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("regcache_cache_lookups")
                || k.starts_with("regcache_upstream_requests")
                || k.starts_with("regcache_fills_failed")
                || k.starts_with("regcache_served_bytes")
        })
        .filter_map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| format!("{k} +{d}"))
        })
        .collect()
}

/// Lines of a log at warning level or worse (or every line, for logs that
/// only hold those).
fn notable_lines(log: &str, limit: usize) -> (usize, Vec<String>) {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let shown = lines
        .iter()
        .take(limit)
        .map(|l| {
            let l = l.trim();
            if l.len() > 300 {
                format!("{}…", &l[..l.floor_char_boundary(300)])
            } else {
                l.to_owned()
            }
        })
        .collect();
    (lines.len(), shown)
}

pub(super) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a > 0.0 {
        let r = a / b;
        if r >= 100.0 {
            format!("{r:.0}×")
        } else if r < 0.1 {
            format!("{r:.3}×")
        } else {
            format!("{r:.2}×")
        }
    } else {
        "–".into()
    }
}

pub(super) fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 {
                s.push_str(&format!(" {c}{} |", " ".repeat(pad)));
            } else {
                s.push_str(&format!(" {}{c} |", " ".repeat(pad)));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        if i == 0 {
            out.push_str(&format!("{}|", "-".repeat(w + 2)));
        } else {
            out.push_str(&format!("{}:|", "-".repeat(w + 1)));
        }
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

impl Report {
    /// The best (highest-throughput) run of `scenario` against `target`.
    pub fn best(&self, scenario: Scenario, target: &str) -> Option<&RunRecord> {
        self.runs
            .iter()
            .filter(|r| r.scenario == scenario && r.target == target)
            .max_by(|a, b| a.value.total_cmp(&b.value))
    }

    fn rss(&self, target: &str) -> f64 {
        self.targets
            .iter()
            .find(|t| t.name == target)
            .map_or(0.0, |t| t.peak_rss_s1 as f64 / MIB)
    }

    /// The summary table: each figure and regcache/peer.
    pub fn summary_table(&self) -> String {
        let mut header = vec!["scenario", "regcache"];
        for peer in PEERS {
            header.push(peer);
            header.push("ratio");
        }
        let mut rows = Vec::new();
        for scenario in Scenario::ALL {
            let value = |t: &str| self.best(scenario, t).map_or(0.0, |r| r.value);
            let flagged = |t: &str| {
                let v = fmt_value(value(t));
                match self.best(scenario, t) {
                    Some(r) if !r.errors.is_empty() => format!("{v} (!)"),
                    _ => v,
                }
            };
            let mut row = vec![
                format!("{} ({})", scenario.label(), scenario.unit()),
                flagged("regcache"),
            ];
            for peer in PEERS {
                row.push(flagged(peer));
                row.push(ratio(value("regcache"), value(peer)));
            }
            rows.push(row);
            if !scenario.is_blob() {
                let p99 = |t: &str| self.best(scenario, t).and_then(|r| r.p99_ms).unwrap_or(0.0);
                let what = match scenario {
                    Scenario::Manifest { by_digest: true } => "by digest",
                    _ => "by tag",
                };
                let mut row = vec![
                    format!("S2 manifest {what}, p99 latency (ms)"),
                    fmt_value(p99("regcache")),
                ];
                for peer in PEERS {
                    row.push(fmt_value(p99(peer)));
                    row.push(ratio(p99("regcache"), p99(peer)));
                }
                rows.push(row);
            }
        }
        let pull_cell = |t: &str| {
            if t == "nginx static" {
                "n/a".to_owned()
            } else if let Some(r) = self.pull.best(t) {
                format!("{:.2}", r.wall.as_secs_f64())
            } else if self.pull.count(t) > 0 {
                "failed".to_owned()
            } else {
                "–".to_owned()
            }
        };
        let pull_secs = |t: &str| self.pull.best(t).map_or(0.0, |r| r.wall.as_secs_f64());
        let mut row = vec![
            "S4 cold image pull, skopeo copy (s)".to_owned(),
            pull_cell("regcache"),
        ];
        for peer in PEERS {
            row.push(pull_cell(peer));
            row.push(if peer == "nginx static" {
                "n/a".to_owned()
            } else {
                ratio(pull_secs("regcache"), pull_secs(peer))
            });
        }
        rows.push(row);
        let mut row = vec![
            "peak RSS during S1 (MiB)".to_owned(),
            fmt_value(self.rss("regcache")),
        ];
        for peer in PEERS {
            row.push(fmt_value(self.rss(peer)));
            row.push(ratio(self.rss("regcache"), self.rss(peer)));
        }
        rows.push(row);
        table(&header, &rows)
    }

    /// S3, S6 and S7.
    pub fn cold_and_conversion_tables(&self) -> String {
        let mut out = String::new();
        let ms = |d: Duration| fmt_value(d.as_secs_f64() * 1e3);
        let direct = self.direct_ttlb.as_ref().ok().copied();
        if !self.fan_in.is_empty() {
            let _ = writeln!(
                out,
                "S3 cold fan-in: {} concurrent GETs of one uncached 100 MiB blob (a different blob per server), then the same clients again once it is cached (warm); reference: one direct GET of a cold blob from the upstream, time to last byte {}. Goals: upstream bytes 1.0× the blob; TTLB max cold ≤ 1.2× warm (on one machine the clients' 9.8 GiB through loopback rule out 1.2× direct, still shown).\n",
                self.fan_in[0].clients,
                match &self.direct_ttlb {
                    Ok(d) => format!("{} ms", ms(*d)),
                    Err(e) => format!("unmeasured ({e})"),
                }
            );
            out.push_str(&super::fanin::report::table_of(&self.fan_in, direct));
        }
        let s2_tag = self
            .best(Scenario::Manifest { by_digest: false }, "regcache")
            .map_or(0.0, |r| r.value);
        out.push_str(&convert::tables(
            &self.conversions,
            Some(&self.oci_manifest),
            s2_tag,
        ));
        out
    }

    /// S4: the intro line and the per-server table.
    pub fn pull_table(&self) -> String {
        let p = &self.pull;
        let mut out = String::new();
        let secs =
            |d: Option<Duration>| d.map_or("–".to_owned(), |d| format!("{:.2}", d.as_secs_f64()));
        let best_secs = |t: &str| secs(p.best(t).map(|r| r.wall));
        let layers: Vec<String> = p
            .layer_bytes
            .iter()
            .map(|b| fmt_value(*b as f64 / MIB))
            .collect();
        let _ = writeln!(
            out,
            "S4 cold image pull: `skopeo copy` of an image of {} layers ({:.0} MiB: layers of {} MiB and a config) into a fresh `dir:` directory; figure: wall time of the skopeo process, every blob of the copy then hashed against its digest. Each proxy pulls an image nothing has fetched before ({} round(s), a fresh image each; best reported); reference: the same copy straight from the upstream, {} run(s) interleaved with the proxies' (best {} s, median {} s; ratios use the best). Goal: ≤ {PULL_GOAL}× the direct copy. Client: {}, {}.\n",
            p.layer_bytes.len(),
            p.image_bytes as f64 / MIB,
            layers.join(", "),
            p.rounds,
            p.count(PULL_DIRECT),
            best_secs(PULL_DIRECT),
            secs(p.median(PULL_DIRECT)),
            p.skopeo_version,
            p.client_pinning
        );
        let header = [
            "server",
            "runs",
            "best (s)",
            "median (s)",
            "best / direct best",
            "goal ≤ 1.1×",
            "upstream requests (best run)",
            "upstream bytes (× image)",
            "skopeo CPU (s)",
            "server CPU (s)",
            "other cores",
        ];
        let mut rows = Vec::new();
        let mut servers = vec![PULL_DIRECT, "regcache"];
        servers.extend(PEERS);
        for server in servers {
            let shown = self.targets.iter().any(|t| t.name == server) || server == PULL_DIRECT;
            if !shown {
                continue;
            }
            if server == "nginx static" {
                let mut row = vec![server.to_owned(), "0".to_owned()];
                row.extend(std::iter::repeat_n("n/a".to_owned(), header.len() - 2));
                rows.push(row);
                continue;
            }
            let best = p.best(server);
            let failed = p
                .runs
                .iter()
                .filter(|r| r.target == server && r.error.is_some())
                .count();
            let runs = if failed > 0 {
                format!("{} ({failed} failed)", p.count(server))
            } else {
                p.count(server).to_string()
            };
            let (ratio_cell, goal) = if server == PULL_DIRECT {
                ("1.00× (reference)".to_owned(), "–".to_owned())
            } else {
                match (p.ratio_to_direct(server), failed) {
                    (_, f) if f > 0 => (
                        p.ratio_to_direct(server)
                            .map_or("–".into(), |r| format!("{r:.2}×")),
                        "NOT met: a copy failed".to_owned(),
                    ),
                    (Some(r), _) if r <= PULL_GOAL => (format!("{r:.2}×"), "met".to_owned()),
                    (Some(r), _) => (format!("{r:.2}×"), "NOT met".to_owned()),
                    (None, _) => ("–".to_owned(), "unmeasured".to_owned()),
                }
            };
            rows.push(vec![
                server.to_owned(),
                runs,
                best_secs(server),
                secs(p.median(server)),
                ratio_cell,
                goal,
                best.map_or("–".into(), |r| r.upstream_requests.clone()),
                best.map_or("–".into(), |r| {
                    format!(
                        "{:.1} MiB ({:.2}×)",
                        r.upstream_bytes as f64 / MIB,
                        r.upstream_bytes as f64 / r.image_bytes.max(1) as f64
                    )
                }),
                best.map_or("–".into(), |r| format!("{:.2}", r.client_cpu_secs)),
                best.map_or("–".into(), |r| {
                    let mut s = format!("{:.2}", r.server_cpu_secs);
                    if let Some(u) = r.upstream_cpu_secs {
                        s.push_str(&format!(" (+ upstream {u:.2})"));
                    }
                    s
                }),
                best.map_or("–".into(), |r| format!("{:.2}", r.other_cores)),
            ]);
        }
        out.push_str(&table(&header, &rows));
        if self.targets.iter().any(|t| t.name == "nginx static") {
            let _ = writeln!(out, "\nnginx static: n/a, {PULL_STATIC_NA}.");
        }
        let command = p
            .runs
            .iter()
            .find(|r| r.target == "regcache")
            .or_else(|| p.runs.first())
            .map(|r| r.command.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\nS4 command (the {} run; per server the port and tag differ): `{command}`",
            p.runs
                .iter()
                .find(|r| r.target == "regcache")
                .or_else(|| p.runs.first())
                .map_or("", |r| r.target)
        );
        out
    }

    /// S4: every copy.
    fn pull_runs_table(&self) -> String {
        let header = [
            "server",
            "round",
            "image",
            "wall (s)",
            "skopeo CPU (s)",
            "server CPU (s)",
            "upstream CPU (s)",
            "other cores",
            "upstream requests",
            "upstream bytes",
            "result",
        ];
        let rows: Vec<Vec<String>> = self
            .pull
            .runs
            .iter()
            .map(|r| {
                vec![
                    r.target.to_owned(),
                    if r.round >= self.pull.rounds {
                        "last".to_owned()
                    } else {
                        (r.round + 1).to_string()
                    },
                    format!("`bench/pull:{}`", r.tag),
                    format!("{:.2}", r.wall.as_secs_f64()),
                    format!("{:.2}", r.client_cpu_secs),
                    format!("{:.2}", r.server_cpu_secs),
                    r.upstream_cpu_secs
                        .map_or("–".into(), |u| format!("{u:.2}")),
                    format!("{:.2}", r.other_cores),
                    r.upstream_requests.clone(),
                    format!("{:.1} MiB", r.upstream_bytes as f64 / MIB),
                    match &r.error {
                        None => "ok, every blob verified".to_owned(),
                        Some(e) => format!("FAILED: {e}"),
                    },
                ]
            })
            .collect();
        table(&header, &rows)
    }

    /// Every run, with where the CPU went.
    pub fn details_table(&self) -> String {
        let header = [
            "scenario",
            "server",
            "round",
            "figure",
            "client cores",
            "server cores",
            "upstream cores",
            "other cores",
            "notes",
        ];
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                let mut figure = format!("{} {}", fmt_value(r.value), r.scenario.unit());
                if let Some(p99) = r.p99_ms {
                    figure.push_str(&format!(", p99 {p99:.2} ms"));
                }
                let mut notes = r.detail.clone();
                if !r.errors.is_empty() {
                    notes.push_str(&format!("; ERRORS: {}", r.errors.join("; ")));
                }
                vec![
                    r.scenario.label(),
                    r.target.to_owned(),
                    self.round_label(r),
                    figure,
                    format!("{:.2}", r.client_cores),
                    format!("{:.2}", r.server_cores),
                    format!("{:.2}", r.upstream_cores),
                    format!("{:.2}", r.other_cores),
                    notes,
                ]
            })
            .collect();
        table(&header, &rows)
    }

    fn warm_table(&self) -> String {
        let header = [
            "server",
            "cold GET manifest by tag",
            "cold GET manifest by digest",
            "cold GET blob 100 MiB",
            "upstream requests caused by the cold GETs",
            "upstream requests caused by the second GETs",
            "peak RSS through warm-up (MiB)",
        ];
        let rows: Vec<Vec<String>> = self
            .warm
            .iter()
            .map(|w| {
                let mut row = vec![w.target.to_owned()];
                for (_, d) in &w.cold {
                    row.push(format!("{:.1} ms", d.as_secs_f64() * 1e3));
                }
                row.push(if w.proxies {
                    w.upstream_on_cold_gets.clone()
                } else {
                    "n/a".to_owned()
                });
                let mut upstream = if !w.proxies {
                    "n/a (no upstream)".to_owned()
                } else if w.upstream_on_second_get.is_empty() {
                    "none".to_owned()
                } else {
                    w.upstream_on_second_get.join("; ")
                };
                if !w.cache_status.is_empty() {
                    upstream.push_str(&format!(" (X-Cache-Status {})", w.cache_status.join(", ")));
                }
                row.push(upstream);
                row.push(fmt_value(w.peak_rss_warm as f64 / MIB));
                row
            })
            .collect();
        table(&header, &rows)
    }

    /// Is the load generator the bottleneck? Two checks per scenario:
    /// (a) pinned to CPUs of its own, it must leave some of them idle during
    /// regcache's run; (b) the practical ceiling: nginx static, driven by
    /// the *same* client settings, goes past regcache's figure.
    pub fn generator_check(&self) -> String {
        let mut out = String::new();
        let cap = self.client_cpus as f64;
        for scenario in Scenario::ALL {
            let (Some(rc), Some(st)) = (
                self.best(scenario, "regcache"),
                self.best(scenario, "nginx static"),
            ) else {
                continue;
            };
            let headroom = st.value / rc.value.max(1e-9);
            let client = if scenario.is_blob() {
                "the built-in blob client"
            } else {
                "wrk"
            };
            let usage = if self.pinned {
                format!(
                    "{client} used {:.2} of its {} CPU(s) during regcache's best run (regcache {:.2} of its {})",
                    rc.client_cores, self.client_cpus, rc.server_cores, self.server_cpus
                )
            } else {
                format!(
                    "{client} used {:.2} cores (shared with the servers) during regcache's best run",
                    rc.client_cores
                )
            };
            let idle = self.pinned && rc.client_cores < 0.85 * cap;
            let server_busy =
                self.pinned && rc.server_cores >= 0.85 * self.server_cpus.max(1) as f64;
            let verdict = match (idle, headroom >= 1.15) {
                (true, true) => {
                    "its CPU had idle time and it drove nginx static further: the client was not the limit"
                }
                (true, false) => "its CPU had idle time, so it was not the limit",
                (false, true) => {
                    "it drove nginx static further with the same settings, so it was not what limited regcache"
                }
                (false, false) if server_busy => {
                    "client and server CPUs were both nearly saturated and nginx static got less than 15% further: this is about the machine's loopback ceiling, which regcache reaches; as the client may be a co-limit there, the figure cannot rank servers that reach it"
                }
                (false, false) => "this cannot rule the client out",
            };
            let ceiling_note = if self.pinned && st.client_cores >= 0.85 * cap {
                format!(
                    " (in nginx static's run the client used {:.2} of its CPU: that figure is a lower bound of nginx's)",
                    st.client_cores
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "- {}: {usage}; nginx static reached {} {} with the same settings ({:.2}× regcache): {verdict}{ceiling_note}.",
                scenario.label(),
                fmt_value(st.value),
                scenario.unit(),
                headroom,
            );
        }
        out
    }

    fn round_label(&self, r: &RunRecord) -> String {
        if r.round >= self.options.rounds {
            "retry".to_owned()
        } else {
            (r.round + 1).to_string()
        }
    }

    fn errors(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|r| !r.errors.is_empty())
            .map(|r| {
                format!(
                    "{} against {} (round {}): {}",
                    r.scenario.label(),
                    r.target,
                    self.round_label(r),
                    r.errors.join("; ")
                )
            })
            .chain(super::fanin::report::errors_of(&self.fan_in))
            .chain(
                self.conversions
                    .iter()
                    .filter(|r| !r.errors.is_empty())
                    .map(|r| {
                        format!(
                            "{} against {}: {}",
                            r.conversion.label(),
                            r.target,
                            r.errors.join("; ")
                        )
                    }),
            )
            .chain(
                self.direct_ttlb
                    .as_ref()
                    .err()
                    .map(|e| format!("S3 direct GET from the upstream: {e}")),
            )
            .chain(self.pull.runs.iter().filter_map(|r| {
                r.error.as_ref().map(|e| {
                    format!(
                        "S4 cold image pull of bench/pull:{} {}: {e}",
                        r.tag,
                        if r.target == PULL_DIRECT {
                            PULL_DIRECT.to_owned()
                        } else {
                            format!("through {}", r.target)
                        }
                    )
                })
            }))
            .collect()
    }

    /// The sum of the moved counters whose line contains every one of `parts`.
    fn counter_delta(&self, parts: &[&str]) -> f64 {
        self.regcache_metrics_delta
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit_once(" +").and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    /// What to print at the end of a run.
    pub fn terminal(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nregcache load harness: best of {} round(s) of {} s per run; {}; ratio = regcache / peer (throughput: > 1 is better for regcache; latency, S4 time and RSS: < 1 is better)\n",
            self.options.rounds,
            self.options.duration.as_secs(),
            self.pinning
        );
        out.push_str(&self.summary_table());
        out.push('\n');
        out.push_str(&self.cold_and_conversion_tables());
        out.push('\n');
        out.push_str(&self.pull_table());
        out.push_str("\nLoad generator check:\n");
        out.push_str(&self.generator_check());
        out.push_str("\nWarm-up:\n");
        out.push_str(&self.warm_table());
        for e in self.errors() {
            let _ = writeln!(out, "ERROR {e}");
        }
        let (n, _) = notable_lines(&self.regcache_log, 0);
        let _ = writeln!(
            out,
            "\nregcache logged {n} line(s) at warn or above; counters over the measured runs: {}",
            if self.regcache_metrics_delta.is_empty() {
                "none moved".to_owned()
            } else {
                self.regcache_metrics_delta.join(", ")
            }
        );
        let _ = writeln!(out, "total time {:.0} s", self.elapsed.as_secs_f64());
        out
    }

    /// The command that reproduces this run.
    pub fn command(&self) -> String {
        let mut cmd =
            "cargo build --release -p regcache-server && cargo bench -p regcache-benches --bench load"
                .to_owned();
        if !self.options.shown_args.is_empty() {
            cmd.push_str(" -- ");
            cmd.push_str(&self.options.shown_args.join(" "));
        }
        cmd
    }

    /// The whole of `benches/RESULTS.md`.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# Load harness results\n");
        let _ = writeln!(
            out,
            "Side by side on one machine, over loopback: regcache, docker-registry 2.8 in `proxy:` mode, nginx `proxy_cache` in front of the same upstream, and nginx serving the same files statically (`sendfile on`, the practical ceiling). Written by `benches/benches/load.rs`; re-run the command below to refresh it.\n"
        );
        out.push_str(&m.facts(&self.date, &self.loadavg_end));
        for (name, version) in &self.versions {
            let _ = writeln!(out, "- **{name}**: {version}");
        }
        let _ = writeln!(out, "- **Command**: `{}`", self.command());
        let _ = writeln!(
            out,
            "- **Method**: each (scenario, server) pair ran {} time(s) for {} s, servers in a rotated order each round, plus {} retried run(s) of pairs whose best run had other work using more than {} cores (within a {} s budget); the best run is reported; {}. Total time {:.0} s.\n",
            self.options.rounds,
            self.options.duration.as_secs(),
            self.retries,
            super::harness::NOISY_CORES,
            self.options.budget.as_secs(),
            self.pinning,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "## Summary\n");
        let _ = writeln!(
            out,
            "Ratio = regcache / peer. For throughput (MiB/s, req/s) above 1 favours regcache; for p99 latency, S4 pull time and RSS below 1 does. \"(!)\" marks a figure whose run had errors (listed under Observations).\n"
        );
        out.push_str(&self.summary_table());
        let _ = writeln!(
            out,
            "\n## Cold fan-in (S3), Schema 1 conversion (S6) and OCI to Docker bridge (S7)\n"
        );
        let _ = writeln!(
            out,
            "Run once per server after the S1/S2 rounds (S3 is cold by construction, so it has no repeat; S6 and S7 take the best of the rounds). S3 upstream GETs are the 200 GETs of that blob's path in the upstream's access log after it settled (each counted as the whole blob); TTFB is the time to the response head from the common start, TTLB to the last body byte.\n"
        );
        out.push_str(&self.cold_and_conversion_tables());
        for r in &self.conversions {
            if r.target == "regcache" && !r.command.is_empty() {
                let _ = writeln!(
                    out,
                    "\n- {} command: `{}`; {}",
                    r.conversion.id(),
                    r.command,
                    r.detail
                );
            }
        }
        let _ = writeln!(out, "\n## Cold image pull (S4)\n");
        let _ = writeln!(
            out,
            "Run after S3. Every image is `bench/pull:TAG`, generated from its own seed and pushed to the upstream just before S4 ({:.0} s for all of them), so no cache has seen it; its manifest is Docker Schema 2 with gzip layer media types (each layer a tar of one file of random bytes in stored-deflate gzip: incompressible, like real compressed layers on the wire). skopeo runs as a process, pinned like the other load generators; its `dir:` destination keeps each blob as fetched, so after each copy `manifest.json` must hash to the pushed manifest digest and every layer and the config file to their digests (a mismatch fails that copy, which then has no figure, and is listed under Observations). After each copy the upstream's access log is left to settle (a proxy may still be storing what it streamed); its new lines are the copy's upstream requests and their response bytes, and the server and upstream CPU columns run up to then; \"other cores\" (everything else the machine did: the noise) covers the copy alone. The direct copies hit the upstream itself, which logs every request at debug level (the proxies pay that cost too, once per upstream request).\n",
            self.pull.push_time.as_secs_f64()
        );
        out.push_str(&self.pull_table());
        let _ = writeln!(out, "\nEvery copy, in run order:\n");
        out.push_str(&self.pull_runs_table());
        let _ = writeln!(out, "\n## Noise\n");
        let _ = writeln!(
            out,
            "The machine has {} cores, shared with other jobs while this ran (which no pinning keeps off our CPUs); pairs whose best run was disturbed were retried while time allowed. The \"other cores\" column below is everything else the machine did during a run (from `/proc/stat`, minus the harness's own processes): the higher it is, the less the figure is worth. Treat differences under ~20% as noise.\n",
            m.cores
        );
        let _ = writeln!(out, "## Is the load generator the bottleneck?\n");
        let _ = writeln!(
            out,
            "S1 uses a built-in client (one thread and one keep-alive connection per client; bodies are consumed with `recv(MSG_TRUNC)`, which on TCP drops the bytes in the kernel without copying them, so the client needs about a third of its CPU and the server is what limits the figure; the bytes were hashed during the warm-up); wrk reads 8 KiB per `read` (`RECVBUF` in wrk.h), ~12,800 system calls per 100 MiB, and would need more CPU for the same bytes. S2 uses wrk ({} connections, one thread per client CPU, a Lua `done` hook for the figures). {}. Two checks: the client's own CPU use (per thread from `/proc/thread-self/stat`; wrk's from this process's reaped-children CPU) must leave its CPU(s) some idle time, and the same client must drive nginx static (the ceiling) further than regcache.\n",
            S2_CONNECTIONS, self.pinning
        );
        out.push_str(&self.generator_check());
        let _ = writeln!(out, "\n## Warm-up\n");
        let _ = writeln!(
            out,
            "Every server gets the same requests: one GET of each object (manifest by tag, manifest by digest, the 100 MiB blob) with the exact headers the load uses (so nginx's cache key, which includes `Accept`, matches), every body hashed and checked against its digest; then a second GET of each, during which the upstream's access log must not grow. The first GETs are cold fills through each proxy; the blob column is the fill of 100 MiB from the upstream.\n"
        );
        out.push_str(&self.warm_table());
        let _ = writeln!(out, "\n## Every run\n");
        out.push_str(&self.details_table());
        let _ = writeln!(out, "\nCommands (per server, the URL differs):\n");
        let mut seen = Vec::new();
        for r in &self.runs {
            if r.target == "regcache" && !seen.contains(&r.scenario) {
                seen.push(r.scenario);
                let _ = writeln!(out, "- {}: `{}`", r.scenario.label(), r.command);
            }
        }
        let _ = writeln!(out, "\n## Observations\n");
        let errors = self.errors();
        if errors.is_empty() {
            let refusals: Vec<String> = self
                .conversions
                .iter()
                .filter(|r| r.status != 200)
                .map(|r| format!("{}'s {} {}s", r.target, r.conversion.id(), r.status))
                .collect();
            let _ = writeln!(
                out,
                "- No run had a client-side error (every answer 200{}, every blob whole and of the right length, no socket errors).",
                if refusals.is_empty() {
                    String::new()
                } else {
                    format!(" but the expected refusals: {}", refusals.join(", "))
                }
            );
        }
        for e in errors {
            let _ = writeln!(out, "- ERROR {e}");
        }
        let _ = writeln!(
            out,
            "- regcache counters that moved during the measured runs (after warm-up): {}",
            if self.regcache_metrics_delta.is_empty() {
                "none".to_owned()
            } else {
                format!("`{}`", self.regcache_metrics_delta.join("`, `"))
            }
        );
        let tag_misses = self.counter_delta(&["kind=\"tag\"", "result=\"miss\""]);
        if tag_misses > 0.0 {
            let heads = self.counter_delta(&["regcache_upstream_requests", "method=\"HEAD\""]);
            let _ = writeln!(
                out,
                "- {tag_misses} GET(s) by tag during the runs found the tag past regcache's TTL (60 s) and waited for {heads} coalesced upstream HEAD revalidation(s) before being answered (nginx proxy_cache, configured with `proxy_cache_use_stale updating` and `proxy_cache_background_update on`, serves the stale copy meanwhile)."
            );
        }
        for (name, log) in [
            ("regcache (REGCACHE_LOG=warn)", &self.regcache_log),
            ("docker-registry proxy (level warn)", &self.distribution_log),
            ("nginx (error_log warn)", &self.nginx_logs),
        ] {
            let (n, shown) = notable_lines(log, 5);
            let _ = writeln!(
                out,
                "- {name} logged {n} line(s){}",
                if n == 0 { "." } else { ", the first:" }
            );
            if n > 0 {
                let _ = writeln!(out, "\n  ```");
                for l in shown {
                    let _ = writeln!(out, "  {l}");
                }
                let _ = writeln!(out, "  ```\n");
            }
        }
        let _ = writeln!(out, "\n## Configurations\n");
        let _ = writeln!(
            out,
            "regcache runs `regcache serve --config regcache.toml --listen … --admin-listen … --upstream … --data-dir …` on its defaults but for `[limits] requests_per_second_per_client = 0` (the default per-client rate limit, 200/s with a burst of 400, would answer the single-address load generator 429; no peer limits rates) (tag TTL 60 s, 256 MiB memory tier for objects ≤ 4 MiB, disk tier) with `REGCACHE_LOG=warn`. The upstream is docker-registry 2.8 started by `regcache_tests::Registry` (debug log and access log on: the warm-up check reads it). The image set is generated from seed {} (`bench/big:v1` with the 100 MiB layer, `bench/app:v1` whose manifest S2 and S6 fetch, `bench/oci:v1` under an OCI image manifest, which S7 fetches).\n",
            super::harness::SEED
        );
        for (title, text, lang) in [
            (
                "docker-registry proxy config.yml",
                &self.distribution_config,
                "yaml",
            ),
            (
                "nginx proxy_cache nginx.conf",
                &self.nginx_cache_conf,
                "nginx",
            ),
            ("nginx static nginx.conf", &self.nginx_static_conf, "nginx"),
        ] {
            let _ = writeln!(
                out,
                "<details><summary>{title}</summary>\n\n```{lang}\n{}```\n\n</details>\n",
                text
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_delta_lists_moved_counters() {
        let before = "# HELP x\nregcache_cache_lookups_total{kind=\"blob\",result=\"hit\"} 2\nregcache_upstream_requests_total{method=\"GET\"} 5\n";
        let after = "regcache_cache_lookups_total{kind=\"blob\",result=\"hit\"} 7\nregcache_upstream_requests_total{method=\"GET\"} 5\nregcache_fills_failed_total 1\n";
        assert_eq!(
            metrics_delta(before, after),
            vec![
                "regcache_cache_lookups_total{kind=\"blob\",result=\"hit\"} +5".to_owned(),
                "regcache_fills_failed_total +1".to_owned(),
            ]
        );
    }

    #[test]
    fn pull_figures_use_successful_copies() {
        let record = |target: &'static str, ms: u64, error: Option<&str>| PullRecord {
            target,
            round: 0,
            tag: "t".into(),
            wall: Duration::from_millis(ms),
            client_cpu_secs: 0.0,
            server_cpu_secs: 0.0,
            upstream_cpu_secs: None,
            other_cores: 0.0,
            upstream_requests: String::new(),
            upstream_bytes: 0,
            image_bytes: 1,
            error: error.map(str::to_owned),
            command: String::new(),
        };
        let report = PullReport {
            skopeo_version: String::new(),
            layer_bytes: Vec::new(),
            image_bytes: 1,
            push_time: Duration::ZERO,
            client_pinning: String::new(),
            rounds: 2,
            runs: vec![
                record(PULL_DIRECT, 1000, None),
                record("regcache", 1050, None),
                record("regcache", 900, Some("layer hashes to something else")),
                record(PULL_DIRECT, 1200, None),
                record("regcache", 1300, None),
                record(PULL_DIRECT, 1100, None),
            ],
        };
        assert_eq!(
            report.best(PULL_DIRECT).map(|r| r.wall.as_millis()),
            Some(1000)
        );
        assert_eq!(
            report.median(PULL_DIRECT),
            Some(Duration::from_millis(1100))
        );
        assert_eq!(
            report.best("regcache").map(|r| r.wall.as_millis()),
            Some(1050)
        );
        assert_eq!(report.median("regcache"), Some(Duration::from_millis(1175)));
        assert_eq!(report.count("regcache"), 3);
        let r = report.ratio_to_direct("regcache").expect("ratio");
        assert!((r - 1.05).abs() < 1e-9, "{r}");
        assert!(report.best("nginx proxy_cache").is_none());
    }

    #[test]
    fn tables_align() {
        let t = table(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "| a   | bb |\n|-----|---:|\n| xyz |  1 |\n");
        assert_eq!(ratio(2.0, 1.0), "2.00×");
        assert_eq!(ratio(539.0, 1.0), "539×");
        assert_eq!(ratio(0.79, 434.0), "0.002×");
        assert_eq!(ratio(1.0, 0.0), "–");
    }
}

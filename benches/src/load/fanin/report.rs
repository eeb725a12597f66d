//! S3's table (cold against warm, and against one direct GET) and the
//! section of RESULTS.md that `-- --fanin` writes.

use std::fmt::Write as _;
use std::time::Duration;

use super::super::harness::Options;
use super::super::machine::Machine;
use super::super::report::{FanInRecord, fmt_value, ratio, table};
use super::super::sections::Markers;
use super::CLIENTS;

/// The markers of `--fanin`'s section.
pub const MARKERS: Markers = Markers {
    begin: "<!-- S3 fan-in: begin (written by `cargo bench -p regcache-benches --bench load -- --fanin`; a full run keeps it) -->",
    end: "<!-- S3 fan-in: end -->",
};

/// The goal: TTLB max of the cold fan-in over that of the warm one.
pub const GOAL_COLD_OVER_WARM: f64 = 1.2;

const MIB: f64 = (1u64 << 20) as f64;

fn ms(d: Duration) -> String {
    fmt_value(d.as_secs_f64() * 1e3)
}

/// Cold TTLB max over warm TTLB max, when both are measured.
pub fn cold_over_warm(f: &FanInRecord) -> Option<f64> {
    let warm = f.warm.ttlb_max().as_secs_f64();
    (!f.result.ttlb.is_empty() && !f.warm.ttlb.is_empty() && warm > 0.0)
        .then(|| f.result.ttlb_max().as_secs_f64() / warm)
}

/// One row per server: upstream GETs, cold and warm TTFB/TTLB, the ratios.
pub fn table_of(records: &[FanInRecord], direct: Option<Duration>) -> String {
    let rounds = records.iter().any(|f| f.round > 0);
    let header = [
        "server",
        "upstream GETs (cold + warm)",
        "cold TTFB median / max (ms)",
        "cold TTLB median (ms)",
        "cold TTLB max (ms)",
        "warm TTLB median (ms)",
        "warm TTLB max (ms)",
        "TTLB max cold / warm",
        "cold TTLB max / direct",
        "clients OK (cold, warm)",
        "peak RSS (MiB)",
    ];
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|f| {
            let name = if rounds {
                format!("{} (round {})", f.target, f.round + 1)
            } else {
                f.target.to_owned()
            };
            let verdict = match cold_over_warm(f) {
                Some(r) if r <= GOAL_COLD_OVER_WARM => format!("{r:.2}× ✓"),
                Some(r) => format!("{r:.2}× ✗"),
                None => "–".into(),
            };
            vec![
                name,
                format!("{} + {}", f.upstream_gets, f.upstream_gets_warm),
                format!(
                    "{} / {}",
                    ms(f.result.ttfb_median()),
                    ms(f.result.ttfb_max())
                ),
                ms(f.result.ttlb_median()),
                ms(f.result.ttlb_max()),
                ms(f.warm.ttlb_median()),
                ms(f.warm.ttlb_max()),
                verdict,
                direct.map_or("–".into(), |d| {
                    ratio(f.result.ttlb_max().as_secs_f64(), d.as_secs_f64())
                }),
                format!(
                    "{}, {} of {}",
                    f.result.ttlb.len(),
                    f.warm.ttlb.len(),
                    f.clients
                ),
                fmt_value(f.peak_rss as f64 / MIB),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// Failed clients, per server and run.
pub fn errors_of(records: &[FanInRecord]) -> Vec<String> {
    let mut out = Vec::new();
    for f in records {
        for (which, run) in [("cold", &f.result), ("warm", &f.warm)] {
            if run.errors.is_empty() {
                continue;
            }
            let mut distinct = run.errors.clone();
            distinct.sort();
            distinct.dedup();
            distinct.truncate(3);
            out.push(format!(
                "S3 {which} fan-in against {}: {} of {} clients failed, e.g. {}",
                f.target,
                run.errors.len(),
                f.clients,
                distinct.join("; ")
            ));
        }
    }
    out
}

/// The sentence under the table: the goal, met or not, per server (over
/// several rounds: each round's ratio, and the goal judged on their median,
/// the upper one of two).
pub fn verdict(records: &[FanInRecord]) -> String {
    let mut servers: Vec<&str> = Vec::new();
    for f in records {
        if !servers.contains(&f.target) {
            servers.push(f.target);
        }
    }
    let parts: Vec<String> = servers
        .iter()
        .map(|name| {
            let mine: Vec<&FanInRecord> = records.iter().filter(|f| f.target == *name).collect();
            let mut ratios: Vec<f64> = mine.iter().filter_map(|f| cold_over_warm(f)).collect();
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}×")).collect();
            ratios.sort_by(f64::total_cmp);
            let gets: Vec<String> = mine
                .iter()
                .map(|f| (f.upstream_gets + f.upstream_gets_warm).to_string())
                .collect();
            let judged = match ratios.get(ratios.len() / 2) {
                Some(m) if *m <= GOAL_COLD_OVER_WARM => "met",
                Some(_) => "not met",
                None => "unmeasured",
            };
            let ratio = if shown.is_empty() {
                "unmeasured".to_owned()
            } else {
                shown.join(", ")
            };
            format!(
                "{name}: {ratio} ({judged}), upstream GETs {}",
                gets.join(", ")
            )
        })
        .collect();
    format!(
        "Goal: TTLB max of the {CLIENTS} cold clients ≤ {GOAL_COLD_OVER_WARM}× that of the same {CLIENTS} clients warm (over rounds: the median ratio), with 1 upstream GET. {}.",
        parts.join("; ")
    )
}

/// Everything `--fanin` found.
#[derive(Debug, Clone)]
pub struct FanInReport {
    pub options: Options,
    pub pinning: String,
    pub machine: Machine,
    pub loadavg_end: String,
    pub date: String,
    pub elapsed: Duration,
    /// `regcache --version` and the binary's path.
    pub regcache: String,
    pub commit: String,
    pub direct_ttlb: Result<Duration, String>,
    pub records: Vec<FanInRecord>,
    pub regcache_log: String,
}

impl FanInReport {
    fn direct(&self) -> Option<Duration> {
        self.direct_ttlb.as_ref().ok().copied()
    }

    fn direct_text(&self) -> String {
        match &self.direct_ttlb {
            Ok(d) => format!("{} ms", ms(*d)),
            Err(e) => format!("unmeasured ({e})"),
        }
    }

    pub fn command(&self) -> String {
        self.options
            .command_line("cargo bench -p regcache-benches --bench load -- --fanin")
    }

    /// What to print at the end of the run.
    pub fn terminal(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nS3 fan-in, cold then warm; {}; direct GET {}\n",
            self.pinning,
            self.direct_text()
        );
        out.push_str(&table_of(&self.records, self.direct()));
        let _ = writeln!(out, "\n{}", verdict(&self.records));
        for e in errors_of(&self.records) {
            let _ = writeln!(out, "ERROR: {e}");
        }
        let n = self
            .regcache_log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        let _ = writeln!(out, "regcache logged {n} line(s) at warn or above");
        let _ = writeln!(out, "total time {:.0} s", self.elapsed.as_secs_f64());
        out
    }

    /// The section of RESULTS.md, markers included.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "{}\n", MARKERS.begin);
        let _ = writeln!(out, "## Cold fan-in against warm (S3, issue 16)\n");
        let _ = writeln!(
            out,
            "{CLIENTS} concurrent clients of one uncached 100 MiB blob (a different blob per server), each on its own fresh connection, all released at once; as soon as the upstream's access log has settled, the same {CLIENTS} clients (same threads, a fresh connection each, as before) GET the same blob again, now cached. On one machine {CLIENTS} × 100 MiB is 9.8 GiB through loopback, so the fan-in cannot end near one direct GET (still shown, last column: {}); the yardstick is the warm fan-in: a cold fan-in should cost little more. TTFB is the time to the response head from the common start, TTLB to the last body byte; upstream GETs are the 200 GETs of the blob's path in the upstream's access log during each fan-in. Run alone, so with its own facts:\n",
            self.direct_text()
        );
        out.push_str(&m.facts(&self.date, &self.loadavg_end));
        let _ = writeln!(out, "- **regcache**: {}", self.regcache);
        let _ = writeln!(out, "- **regcache commit**: {}", self.commit);
        let _ = writeln!(out, "- **Command**: `{}`", self.command());
        let _ = writeln!(
            out,
            "- **Method**: {}; one cold and one warm fan-in per server (cold has no repeat). Total time {:.0} s.\n",
            self.pinning,
            self.elapsed.as_secs_f64()
        );
        out.push_str(&table_of(&self.records, self.direct()));
        let _ = writeln!(out, "\n{}", verdict(&self.records));
        let errors = errors_of(&self.records);
        if !errors.is_empty() {
            let _ = writeln!(out);
            for e in errors {
                let _ = writeln!(out, "- {e}");
            }
        }
        let _ = writeln!(out, "\n{}", MARKERS.end);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::cold::FanIn;
    use super::*;

    fn record(cold_ms: &[u64], warm_ms: &[u64]) -> FanInRecord {
        let run = |v: &[u64]| FanIn {
            ttfb: v.iter().map(|m| Duration::from_millis(m / 10)).collect(),
            ttlb: v.iter().map(|m| Duration::from_millis(*m)).collect(),
            errors: Vec::new(),
        };
        FanInRecord {
            target: "regcache",
            round: 0,
            clients: cold_ms.len(),
            blob_len: 100 << 20,
            upstream_gets: 1,
            upstream_gets_warm: 0,
            result: run(cold_ms),
            warm: run(warm_ms),
            peak_rss: 64 << 20,
        }
    }

    #[test]
    fn ratio_is_cold_max_over_warm_max() {
        let f = record(&[1000, 2000, 3300], &[900, 2000, 3000]);
        let r = cold_over_warm(&f).expect("both measured");
        assert!((r - 1.1).abs() < 1e-9, "{r}");
        let t = table_of(std::slice::from_ref(&f), Some(Duration::from_millis(300)));
        assert!(t.contains("1.10× ✓"), "{t}");
        assert!(t.contains("1 + 0"), "{t}");
        assert!(t.contains("11.00×"), "{t}");
        let slow = record(&[4000], &[2000]);
        assert!(table_of(&[slow], None).contains("2.00× ✗"));
        let v = verdict(std::slice::from_ref(&f));
        assert!(v.contains("regcache: 1.10× (met), upstream GETs 1"), "{v}");
        // Two rounds: both shown, judged on the upper one.
        let mut second = record(&[1000, 2600], &[900, 2000]);
        second.round = 1;
        let v = verdict(&[f.clone(), second.clone()]);
        assert!(
            v.contains("regcache: 1.10×, 1.30× (not met), upstream GETs 1, 1"),
            "{v}"
        );
        assert!(table_of(&[f, second], None).contains("regcache (round 2)"));
    }

    #[test]
    fn failed_warm_run_has_no_ratio_and_is_reported() {
        let mut f = record(&[1000], &[]);
        f.warm.errors = vec!["connect: refused".into(); 2];
        assert_eq!(cold_over_warm(&f), None);
        assert!(table_of(&[f.clone()], None).contains('–'));
        let e = errors_of(&[f]);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("S3 warm fan-in against regcache: 2 of 1"));
    }
}

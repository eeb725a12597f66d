//! S9's table and the section of RESULTS.md that `-- --connections` writes.

use std::fmt::Write as _;
use std::time::Duration;

use super::super::harness::Options;
use super::super::machine::Machine;
use super::super::report::{fmt_value, table};
use super::super::sections::Markers;
use super::client::{ConnLoad, quantile};
use super::{CONNECTIONS, PERIOD, REGCACHE_CONFIG};

/// The markers of `--connections`' section.
pub const MARKERS: Markers = Markers {
    begin: "<!-- S9 connections: begin (written by `cargo bench -p regcache-benches --bench load -- --connections`; a full run keeps it) -->",
    end: "<!-- S9 connections: end -->",
};

/// Goals for regcache.
pub const GOAL_RSS_MIB: f64 = 512.0;
pub const GOAL_P99_MS: f64 = 5.0;

const MIB: f64 = (1u64 << 20) as f64;

/// One server's run.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    pub target: &'static str,
    /// Which round (1-based): the servers take turns, round after round.
    pub round: usize,
    pub connections: usize,
    pub load: ConnLoad,
    /// Peak RSS (`VmHWM`) of its processes, reset before the run.
    pub peak_rss: u64,
    /// Its CPU over the run, in cores.
    pub server_cores: f64,
    /// What everything else on the machine (other jobs) used meanwhile, in
    /// cores: the noise.
    pub other_cores: f64,
    /// CPU time the hypervisor took from this machine during the run
    /// (`steal` in /proc/stat, both CPUs): stalls no process can see.
    pub stolen: Duration,
}

fn ms(d: Duration) -> String {
    fmt_value(d.as_secs_f64() * 1e3)
}

impl ConnRecord {
    pub fn p99(&self) -> Duration {
        quantile(&self.load.latencies, 0.99)
    }

    pub fn rss_mib(&self) -> f64 {
        self.peak_rss as f64 / MIB
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.load.ok as f64 / self.load.elapsed.as_secs_f64().max(1e-9)
    }

    /// Whether this run meets regcache's goals (nginx has none).
    pub fn goals_met(&self) -> bool {
        self.clean()
            && self.rss_mib() <= GOAL_RSS_MIB
            && self.p99().as_secs_f64() * 1e3 <= GOAL_P99_MS
    }

    /// Every connection made, every request answered right.
    fn clean(&self) -> bool {
        self.load.errors.is_empty() && self.load.established == self.connections
    }

    pub fn summary(&self) -> String {
        let l = &self.load;
        format!(
            "{} of {} connections, {} requests ({:.0}/s), {} errors, p50 {} ms, p99 {} ms (send → last byte {} ms; ramp: first GET with connect p99 {} ms), max {} ms, peak RSS {} MiB, server {:.2} cores, client {:.2} cores, other {:.2} cores, stolen {:.0} ms, send lag p99 {} ms",
            l.established,
            self.connections,
            l.ok,
            self.requests_per_sec(),
            l.errors.len(),
            ms(quantile(&l.latencies, 0.5)),
            ms(self.p99()),
            ms(quantile(&l.service, 0.99)),
            ms(quantile(&l.ramp, 0.99)),
            ms(quantile(&l.latencies, 1.0)),
            fmt_value(self.rss_mib()),
            self.server_cores,
            l.client_cpu_ticks as f64
                / super::super::procstat::TICKS_PER_SEC
                / l.elapsed.as_secs_f64().max(1e-9),
            self.other_cores,
            self.stolen.as_secs_f64() * 1e3,
            ms(quantile(&l.send_lag, 0.99)),
        )
    }
}

/// A server's run of median p99 among its rounds (of an even number, the
/// worse of the middle two): one stall of the machine (other jobs, the
/// hypervisor) in one round neither makes nor breaks the figure.
pub fn median_round<'a>(records: &'a [ConnRecord], target: &str) -> Option<&'a ConnRecord> {
    let mut runs: Vec<&ConnRecord> = records.iter().filter(|r| r.target == target).collect();
    runs.sort_by_key(|r| r.p99());
    runs.get(runs.len() / 2).copied()
}

/// One row per server and round.
pub fn table_of(records: &[ConnRecord]) -> String {
    let header = [
        "server",
        "round",
        "connections established",
        "requests (req/s)",
        "errors",
        "p50 (ms)",
        "p99 (ms)",
        "max (ms)",
        "p99 send → last byte (ms)",
        "ramp: first GET with connect, p99 (ms)",
        "peak RSS (MiB)",
        "server cores",
        "other cores (noise)",
        "stolen by the hypervisor (ms)",
        "generator send lag p99 (ms)",
    ];
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let l = &r.load;
            vec![
                r.target.to_owned(),
                r.round.to_string(),
                format!("{} of {}", l.established, r.connections),
                format!("{} ({:.0})", l.ok, r.requests_per_sec()),
                l.errors.len().to_string(),
                ms(quantile(&l.latencies, 0.5)),
                ms(r.p99()),
                ms(quantile(&l.latencies, 1.0)),
                ms(quantile(&l.service, 0.99)),
                ms(quantile(&l.ramp, 0.99)),
                fmt_value(r.rss_mib()),
                format!("{:.2}", r.server_cores),
                format!("{:.2}", r.other_cores),
                format!("{:.0}", r.stolen.as_secs_f64() * 1e3),
                ms(quantile(&l.send_lag, 0.99)),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// The goals and regcache's standing against them: p99 of its median
/// round; peak RSS, connections and errors of every round.
pub fn verdict(records: &[ConnRecord]) -> String {
    let goals = format!(
        "Goals for regcache: peak RSS ≤ {GOAL_RSS_MIB:.0} MiB, p99 ≤ {GOAL_P99_MS:.0} ms (its median round), every connection established, no errors"
    );
    let runs: Vec<&ConnRecord> = records.iter().filter(|r| r.target == "regcache").collect();
    let Some(median) = median_round(records, "regcache") else {
        return format!("{goals}: regcache not measured.");
    };
    let rss = runs.iter().map(|r| r.rss_mib()).fold(0.0, f64::max);
    let errors: usize = runs.iter().map(|r| r.load.errors.len()).sum();
    let least = runs.iter().map(|r| r.load.established).min().unwrap_or(0);
    let p99_ms = median.p99().as_secs_f64() * 1e3;
    let met = runs.iter().all(|r| r.clean()) && rss <= GOAL_RSS_MIB && p99_ms <= GOAL_P99_MS;
    let rounds = runs
        .iter()
        .map(|r| ms(r.p99()))
        .collect::<Vec<_>>()
        .join(", ");
    if met {
        format!(
            "{goals}: met (peak {} MiB, p99 {} ms in the median round; each round: {rounds} ms).",
            fmt_value(rss),
            ms(median.p99())
        )
    } else {
        format!(
            "{goals}: NOT met (peak {} MiB, p99 {} ms in the median round; each round: {rounds} ms; at least {least} of {} connections, {errors} errors).",
            fmt_value(rss),
            ms(median.p99()),
            median.connections,
        )
    }
}

/// What the figures say about the tail, from the figures alone: regcache
/// against nginx static under the same load, and the machine's other work
/// during each run (on a shared machine a p99 of a few ms is scheduling).
pub fn reading(records: &[ConnRecord]) -> String {
    let Some(r) = median_round(records, "regcache") else {
        return String::new();
    };
    let mut out = format!(
        "In its median round regcache used {:.2} cores for ~{:.0} requests/s (p99 from the actual send {} ms; the generator itself sent with a p99 lag of {} ms) while everything else on the machine used {:.2} cores",
        r.server_cores,
        r.requests_per_sec(),
        ms(quantile(&r.load.service, 0.99)),
        ms(quantile(&r.load.send_lag, 0.99)),
        r.other_cores
    );
    if let Some(n) = median_round(records, "nginx static") {
        out.push_str(&format!(
            "; nginx static's median round, same load: p99 {} ms ({:.2}× regcache's), {} MiB, with {:.2} other cores",
            ms(n.p99()),
            n.p99().as_secs_f64() / r.p99().as_secs_f64().max(1e-9),
            fmt_value(n.rss_mib()),
            n.other_cores
        ));
    }
    out.push('.');
    out
}

/// A few distinct failures per server.
pub fn errors_of(records: &[ConnRecord]) -> Vec<String> {
    records
        .iter()
        .filter(|r| !r.load.errors.is_empty())
        .map(|r| {
            let mut distinct = r.load.errors.clone();
            distinct.sort();
            distinct.dedup();
            distinct.truncate(3);
            format!(
                "S9 against {}, round {}: {} connection(s) failed, e.g. {}",
                r.target,
                r.round,
                r.load.errors.len(),
                distinct.join("; ")
            )
        })
        .collect()
}

/// Everything `--connections` found.
#[derive(Debug, Clone)]
pub struct ConnectionsReport {
    pub options: Options,
    pub pinning: String,
    pub machine: Machine,
    pub loadavg_end: String,
    pub date: String,
    pub elapsed: Duration,
    /// Length of each run's measured phase.
    pub duration: Duration,
    /// Rounds (each server once per round).
    pub rounds: usize,
    /// The bench's open-files limit after raising it.
    pub nofile: Option<u64>,
    pub regcache: String,
    pub commit: String,
    pub nginx: String,
    pub manifest_len: u64,
    pub records: Vec<ConnRecord>,
    pub regcache_log: String,
    pub nginx_log: String,
}

impl ConnectionsReport {
    pub fn command(&self) -> String {
        self.options
            .command_line("cargo bench -p regcache-benches --bench load -- --connections")
    }

    fn logged(&self) -> Vec<String> {
        [("regcache", &self.regcache_log), ("nginx", &self.nginx_log)]
            .iter()
            .filter(|(_, log)| !log.trim().is_empty())
            .map(|(name, log)| {
                let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
                let shown: Vec<String> = lines
                    .iter()
                    .take(3)
                    .map(|l| format!("`{}`", l.trim()))
                    .collect();
                format!(
                    "{name} logged {} line(s) at warn or above, e.g. {}",
                    lines.len(),
                    shown.join(", ")
                )
            })
            .collect()
    }

    /// What to print at the end of the run.
    pub fn terminal(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nS9 {CONNECTIONS} keep-alive connections, a warm manifest GET by tag per {PERIOD:?} each, {} s; {}\n",
            self.duration.as_secs(),
            self.pinning
        );
        out.push_str(&table_of(&self.records));
        let _ = writeln!(
            out,
            "\n{} {}",
            verdict(&self.records),
            reading(&self.records)
        );
        for e in errors_of(&self.records).into_iter().chain(self.logged()) {
            let _ = writeln!(out, "- {e}");
        }
        let _ = writeln!(out, "total time {:.0} s", self.elapsed.as_secs_f64());
        out
    }

    /// The section of RESULTS.md, markers included.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "{}\n", MARKERS.begin);
        let _ = writeln!(out, "## 10,000 keep-alive connections (S9, issue 16)\n");
        let _ = writeln!(
            out,
            "{CONNECTIONS} concurrent keep-alive HTTP/1.1 connections from 127.0.0.1, each sending one manifest GET by tag ({} bytes, warm: fetched twice through each server first) every {} s on its own schedule: connection *i* connects and sends a first GET at *i*/{CONNECTIONS} s (a staggered ramp), then, from 2 s after the start (every connection up), one GET every second at the same offset for {} s, the measured phase: an open loop of ~{CONNECTIONS} requests/s in all, not a closed loop at full speed (where latency is only connections/throughput). Latency runs from each request's intended send time to its last body byte, so a late generator or a stalled server counts against it; the generator's own lateness is the last column. The p50, p99, max and send → last byte columns are the measured phase's: kept-alive GETs on 10,000 open connections. The ramp's first GETs, which also wait for the TCP handshake and the accept while the other connections are being made, have their own column. The generator is one tokio thread (built-in client) on the load CPU; the bench raises its open-files limit to {} and the servers inherit it. Peak RSS is `VmHWM`, reset through `/proc/PID/clear_refs` just before each run (nginx: master and worker summed). nginx static serves the same manifest file with `sendfile on`, for reference. The servers take turns, round after round; each one's figure is its median round by p99, because on this shared virtual machine a tail of a few ms is mostly stalls that hit every request in flight at once (the hypervisor's steal, counted per run in its own column, and other jobs). Run alone, so with its own facts:\n",
            self.manifest_len,
            PERIOD.as_secs(),
            self.duration.as_secs(),
            self.nofile.map_or("unlimited".into(), |n| n.to_string())
        );
        out.push_str(&m.facts(&self.date, &self.loadavg_end));
        let _ = writeln!(out, "- **regcache**: {}", self.regcache);
        let _ = writeln!(out, "- **regcache commit**: {}", self.commit);
        let _ = writeln!(out, "- **nginx**: {}", self.nginx);
        let _ = writeln!(out, "- **Command**: `{}`", self.command());
        let _ = writeln!(
            out,
            "- **Method**: {}; {} round(s), the servers taking turns in each. Total time {:.0} s.\n",
            self.pinning,
            self.rounds,
            self.elapsed.as_secs_f64()
        );
        out.push_str(&table_of(&self.records));
        let _ = writeln!(
            out,
            "\n{} {}",
            verdict(&self.records),
            reading(&self.records)
        );
        let notes: Vec<String> = errors_of(&self.records)
            .into_iter()
            .chain(self.logged())
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(out);
            for n in notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        let _ = writeln!(
            out,
            "\n<details><summary>regcache.toml</summary>\n\n```toml\n{REGCACHE_CONFIG}```\n\n</details>\n"
        );
        let _ = writeln!(out, "{}", MARKERS.end);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target: &'static str, p99_ms: u64, rss_mib: u64, errors: usize) -> ConnRecord {
        let mut latencies: Vec<Duration> = (0..99).map(|_| Duration::from_micros(500)).collect();
        latencies.push(Duration::from_millis(p99_ms));
        latencies.push(Duration::from_millis(p99_ms * 2));
        ConnRecord {
            target,
            round: 1,
            connections: 10,
            load: ConnLoad {
                established: 10,
                ok: latencies.len() as u64,
                ramp: latencies.clone(),
                service: latencies.clone(),
                latencies,
                send_lag: vec![Duration::from_micros(100)],
                errors: vec!["read: reset".into(); errors],
                elapsed: Duration::from_secs(10),
                client_cpu_ticks: 100,
            },
            peak_rss: rss_mib << 20,
            server_cores: 0.5,
            other_cores: 0.1,
            stolen: Duration::from_millis(30),
        }
    }

    #[test]
    fn verdict_follows_the_goals() {
        let good = record("regcache", 4, 300, 0);
        assert_eq!(good.p99(), Duration::from_millis(4));
        assert!(good.goals_met());
        assert!(
            verdict(std::slice::from_ref(&good))
                .contains(": met (peak 300 MiB, p99 4.00 ms in the median round")
        );
        assert!(!record("regcache", 6, 300, 0).goals_met());
        assert!(!record("regcache", 4, 600, 0).goals_met());
        let failing = record("regcache", 4, 300, 2);
        assert!(!failing.goals_met());
        assert!(verdict(std::slice::from_ref(&failing)).contains("NOT met"));
        assert_eq!(errors_of(&[failing]).len(), 1);
        let t = table_of(&[good, record("nginx static", 1, 20, 0)]);
        assert!(t.contains("10 of 10"), "{t}");
        assert!(t.contains("101 (10)"), "{t}");
        assert!(t.lines().count() >= 4, "{t}");
        let nginx = record("nginx static", 8, 20, 0);
        let read = reading(&[record("regcache", 4, 300, 0), nginx]);
        assert!(read.contains("regcache used 0.50 cores"), "{read}");
        assert!(
            read.contains("nginx static's median round, same load: p99 8.00 ms (2.00× regcache's)"),
            "{read}"
        );
    }

    #[test]
    fn the_median_round_decides_the_p99_and_every_round_the_rest() {
        let rounds = |p99s: &[u64], rss: &[u64], errors: &[usize]| -> Vec<ConnRecord> {
            p99s.iter()
                .zip(rss)
                .zip(errors)
                .enumerate()
                .map(|(i, ((p, m), e))| ConnRecord {
                    round: i + 1,
                    ..record("regcache", *p, *m, *e)
                })
                .collect()
        };
        // One stalled round of three: the median is 4 ms, met.
        let one_stall = rounds(&[4, 12, 3], &[100, 100, 100], &[0, 0, 0]);
        assert_eq!(
            median_round(&one_stall, "regcache").map(|r| r.round),
            Some(1)
        );
        let v = verdict(&one_stall);
        assert!(v.contains(": met (peak 100 MiB, p99 4.00 ms"), "{v}");
        assert!(v.contains("each round: 4.00, 12.0, 3.00 ms"), "{v}");
        // Two slow rounds of three: the median is over the goal.
        assert!(verdict(&rounds(&[6, 12, 3], &[100; 3], &[0; 3])).contains("NOT met"));
        // Of two rounds, the worse of the middle two.
        let two = rounds(&[3, 6], &[100; 2], &[0; 2]);
        assert_eq!(median_round(&two, "regcache").map(|r| r.round), Some(2));
        // RSS and errors count in every round, not only the median one.
        assert!(verdict(&rounds(&[4, 4, 4], &[100, 600, 100], &[0; 3])).contains("NOT met"));
        let v = verdict(&rounds(&[4, 4, 4], &[100; 3], &[0, 0, 1]));
        assert!(v.contains("NOT met") && v.contains("1 errors"), "{v}");
        assert!(median_round(&one_stall, "nginx static").is_none());
    }
}

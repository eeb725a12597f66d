//! S8's part of `benches/RESULTS.md`: one section between two markers,
//! written by an S8 run (`-- --cluster`) into the existing file and carried
//! over by a full run, which rewrites everything else. S8 runs alone, so the
//! section has its own date, machine, versions and command.

use std::fmt::Write as _;
use std::time::Duration;

use super::super::harness::Options;
use super::super::machine::Machine;
use super::super::report::{fmt_value, ratio, table};
use super::super::sections::Markers;
use super::{CLIENTS, Case, ClusterMode, ClusterRun, REPLICAS, ReplicaWarm};

/// The line before S8's section in RESULTS.md.
pub const BEGIN: &str = "<!-- S8 cluster: begin (written by `cargo bench -p regcache-benches --bench load -- --cluster`; a full run keeps it) -->";
/// The line after it.
pub const END: &str = "<!-- S8 cluster: end -->";
/// Both, for splicing the section ([`Markers`]).
pub const MARKERS: Markers = Markers {
    begin: BEGIN,
    end: END,
};

/// Everything an S8 run found.
#[derive(Debug, Clone)]
pub struct ClusterReport {
    pub mode: ClusterMode,
    pub options: Options,
    pub pinning: String,
    pub machine: Machine,
    pub loadavg_end: String,
    pub date: String,
    pub elapsed: Duration,
    /// `regcache --version` and the binary's path.
    pub regcache: String,
    pub commit: String,
    /// moto's version.
    pub moto: String,
    /// Replica 1's regcache.toml (the others differ in their ports).
    pub replica_config: String,
    /// What each replica logged at warn or above.
    pub replica_logs: Vec<String>,
    pub warm: Vec<ReplicaWarm>,
    pub runs: Vec<ClusterRun>,
}

impl ClusterReport {
    /// The best (highest-throughput) run of `case`.
    pub fn best(&self, case: Case) -> Option<&ClusterRun> {
        self.runs
            .iter()
            .filter(|r| r.case == case)
            .max_by(|a, b| a.mib_per_sec.total_cmp(&b.mib_per_sec))
    }

    /// (b) / (a) of the best runs.
    pub fn ratio(&self) -> Option<f64> {
        let a = self.best(Case::OneReplica)?.mib_per_sec;
        let b = self.best(Case::Spread)?.mib_per_sec;
        (a > 0.0).then(|| b / a)
    }

    /// The command that reproduces this run.
    pub fn command(&self) -> String {
        let flag = match self.mode {
            ClusterMode::Cluster => "--cluster",
            ClusterMode::Plain => "--cluster-plain",
        };
        self.options.command_line(&format!(
            "cargo build --release -p regcache-server && cargo bench -p regcache-benches --bench load -- {flag}"
        ))
    }

    /// The summary table: (a), (b) and their ratio, in S1's format.
    pub fn summary_table(&self) -> String {
        let cell = |case: Case| match self.best(case) {
            Some(r) if !r.errors.is_empty() => format!("{} (!)", fmt_value(r.mib_per_sec)),
            Some(r) => fmt_value(r.mib_per_sec),
            None => "–".to_owned(),
        };
        let value = |case: Case| self.best(case).map_or(0.0, |r| r.mib_per_sec);
        table(
            &[
                "scenario",
                &format!("{REPLICAS} replicas (b)"),
                "1 replica (a)",
                "ratio (b)/(a)",
            ],
            &[vec![
                format!("S8 blob 100 MiB, {CLIENTS} clients (MiB/s)"),
                cell(Case::Spread),
                cell(Case::OneReplica),
                ratio(value(Case::Spread), value(Case::OneReplica)),
            ]],
        )
    }

    /// What the ratio means here.
    pub fn meaning(&self) -> String {
        let cpus = if self.pinning.starts_with("not pinned") {
            format!("all {} cores, with the load generator", self.machine.cores)
        } else {
            "the same server CPU(s)".to_owned()
        };
        let costs = match self.mode {
            ClusterMode::Cluster => {
                "the replicas' cluster and S3 traffic, three processes' scheduling"
            }
            ClusterMode::Plain => {
                "three processes' scheduling; plain replicas have no cluster traffic"
            }
        };
        let verdict = match self.ratio() {
            Some(r) if r >= 0.8 => format!(
                "at {r:.2}× (≥ 0.8×) it holds up: spreading the clients costs little ({costs})"
            ),
            Some(r) => format!(
                "at {r:.2}× (< 0.8×) it does not hold up: look at the replicas' logs and the per-replica bytes below"
            ),
            None => "there is no ratio (a case has no run)".to_owned(),
        };
        format!(
            "On this {}-core machine the {REPLICAS} replicas share {cpus}, so (b) cannot gain CPU over (a): no speed-up is expected here (on real nodes each replica brings its own CPUs and NIC); the point is that it does not collapse, and {verdict}.",
            self.machine.cores
        )
    }

    fn warm_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .warm
            .iter()
            .map(|w| {
                vec![
                    format!("replica {}", w.replica),
                    w.fetched.clone(),
                    format!("{:.1} ms", w.cold_blob.as_secs_f64() * 1e3),
                    w.upstream_cold.clone(),
                    if w.upstream_second.is_empty() {
                        "none".to_owned()
                    } else {
                        w.upstream_second.join("; ")
                    },
                ]
            })
            .collect();
        table(
            &[
                "replica",
                "first GETs",
                "first GET of the blob",
                "upstream requests caused by the first GETs",
                "by a second GET of the blob",
            ],
            &rows,
        )
    }

    fn runs_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                let total: u64 = r.bytes_per_replica.iter().sum();
                let shares: Vec<String> = r
                    .bytes_per_replica
                    .iter()
                    .map(|b| format!("{:.0}%", *b as f64 * 100.0 / total.max(1) as f64))
                    .collect();
                let mut notes = format!("{} whole blobs", r.completed);
                if let Some(m) = r.median_blob {
                    let _ = write!(notes, ", median {:.0} ms each", m.as_secs_f64() * 1e3);
                }
                if !r.errors.is_empty() {
                    let _ = write!(notes, "; ERRORS: {}", r.errors.join("; "));
                }
                vec![
                    r.case.label(),
                    (r.round + 1).to_string(),
                    format!("{} MiB/s", fmt_value(r.mib_per_sec)),
                    shares.join(" / "),
                    format!("{:.2}", r.client_cores),
                    format!("{:.2}", r.server_cores),
                    format!("{:.2}", r.upstream_cores),
                    format!("{:.2}", r.s3_cores),
                    format!("{:.2}", r.other_cores),
                    notes,
                ]
            })
            .collect();
        table(
            &[
                "case",
                "round",
                "figure",
                "bytes per replica",
                "client cores",
                "replica cores",
                "upstream cores",
                "S3 cores",
                "other cores",
                "notes",
            ],
            &rows,
        )
    }

    /// What to print at the end of the run.
    pub fn terminal(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nS8 cluster{}: best of {} round(s) of {} s per case; {}\n",
            if self.mode == ClusterMode::Plain {
                " (plain: independent replicas, no [cluster]/[shared])"
            } else {
                ""
            },
            self.options.rounds,
            self.options.duration.as_secs(),
            self.pinning
        );
        out.push_str(&self.summary_table());
        let _ = writeln!(out, "\n{}\n", self.meaning());
        out.push_str(&self.warm_table());
        out.push('\n');
        out.push_str(&self.runs_table());
        for (i, log) in self.replica_logs.iter().enumerate() {
            let n = log.lines().filter(|l| !l.trim().is_empty()).count();
            let _ = writeln!(out, "replica {} logged {n} line(s) at warn or above", i + 1);
        }
        let _ = writeln!(out, "total time {:.0} s", self.elapsed.as_secs_f64());
        out
    }

    /// The section of RESULTS.md, markers included.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "{BEGIN}\n");
        let _ = writeln!(out, "## Cluster (S8)\n");
        let _ = writeln!(
            out,
            "S8 cluster: warm blobs, {REPLICAS} replicas × {CLIENTS} clients vs 1 replica × {CLIENTS} clients. {REPLICAS} regcache replicas on loopback with `[cluster]` (static `peers`, each its own ports and data directory) and `[shared]` on moto (a local S3), in front of the same upstream and image set as S1. Warm-up: replica 1 GETs every object, replicas 2 and 3 the 100 MiB blob once each, then one more GET of the blob on each. Then S1's {CLIENTS}-client warm-blob load (built-in blob client, one keep-alive connection per thread): (a) all {CLIENTS} connections to replica 1; (b) the {CLIENTS} connections spread over the {REPLICAS} replicas. Run alone, apart from S1-S7, so with its own facts:\n"
        );
        out.push_str(&m.facts(&self.date, &self.loadavg_end));
        let _ = writeln!(out, "- **regcache**: {}", self.regcache);
        let _ = writeln!(out, "- **regcache commit**: {}", self.commit);
        let _ = writeln!(out, "- **S3**: {}", self.moto);
        let _ = writeln!(out, "- **Command**: `{}`", self.command());
        let _ = writeln!(
            out,
            "- **Method**: each case ran {} time(s) for {} s, alternating which goes first; the best run is reported; {} (the {REPLICAS} replicas, the upstream and moto on the servers' side). Total time {:.0} s.\n",
            self.options.rounds,
            self.options.duration.as_secs(),
            self.pinning,
            self.elapsed.as_secs_f64()
        );
        out.push_str(&self.summary_table());
        let _ = writeln!(out, "\n{}\n", self.meaning());
        let _ = writeln!(
            out,
            "Warm-up (in cluster mode replicas 2 and 3 should take the blob from the cluster or the bucket: no upstream blob GET):\n"
        );
        out.push_str(&self.warm_table());
        let _ = writeln!(
            out,
            "\nEvery run (replica cores: all {REPLICAS} replicas, idle or not; other cores: everything else the machine did, the noise):\n"
        );
        out.push_str(&self.runs_table());
        let logged: Vec<String> = self
            .replica_logs
            .iter()
            .enumerate()
            .filter(|(_, log)| !log.trim().is_empty())
            .map(|(i, log)| {
                let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
                let shown: Vec<String> = lines
                    .iter()
                    .take(5)
                    .map(|l| format!("`{}`", l.trim()))
                    .collect();
                format!(
                    "replica {}: {} line(s) at warn or above, e.g. {}",
                    i + 1,
                    lines.len(),
                    shown.join(", ")
                )
            })
            .collect();
        if logged.is_empty() {
            let _ = writeln!(out, "\nThe replicas logged nothing at warn or above.");
        } else {
            let _ = writeln!(out);
            for l in logged {
                let _ = writeln!(out, "- {l}");
            }
        }
        let _ = writeln!(
            out,
            "\n<details><summary>replica 1's regcache.toml</summary>\n\n```toml\n{}```\n\n</details>\n",
            self.replica_config
        );
        let _ = writeln!(out, "{END}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: &str) -> String {
        format!("{BEGIN}\n\n## Cluster (S8)\n\n{body}\n{END}\n")
    }

    #[test]
    fn splice_appends_then_replaces() {
        let results = "# Load harness results\n\nS1 table\n";
        let once = MARKERS.splice(results, &sample("first"));
        assert!(once.starts_with("# Load harness results\n\nS1 table\n\n"));
        assert!(once.contains("first"));
        let twice = MARKERS.splice(&once, &sample("second"));
        assert!(twice.contains("second") && !twice.contains("first"));
        assert_eq!(twice.matches(BEGIN).count(), 1);
        assert!(twice.starts_with("# Load harness results\n\nS1 table\n\n"));
    }

    #[test]
    fn a_full_run_keeps_the_s8_section() {
        let old = MARKERS.splice("# old results\n", &sample("S8 figures"));
        let new = MARKERS.carry_over(&old, "# new results\n");
        assert!(new.starts_with("# new results\n"));
        assert!(new.contains("S8 figures"));
        assert!(!new.contains("old results"));
        // Nothing to carry: the new file as rendered.
        assert_eq!(MARKERS.carry_over("# old\n", "# new\n"), "# new\n");
    }

    #[test]
    fn a_section_without_its_end_marker_is_not_one() {
        let broken = format!("# r\n{BEGIN}\nno end");
        assert_eq!(MARKERS.find(&broken), None);
    }
}

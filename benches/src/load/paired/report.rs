//! The paired rounds' tables and the section of RESULTS.md that
//! `-- --paired` writes.

use std::fmt::Write as _;
use std::time::Duration;

use super::super::harness::{Options, S2_CONNECTIONS, Scenario};
use super::super::machine::Machine;
use super::super::report::{RunRecord, fmt_value, table};
use super::super::sections::Markers;
use super::SCENARIOS;

/// The markers of `--paired`' section.
pub const MARKERS: Markers = Markers {
    begin: "<!-- Paired: begin (written by `cargo bench -p regcache-benches --bench load -- --paired`; a full run keeps it) -->",
    end: "<!-- Paired: end -->",
};

/// The other regcache build of `--baseline-bin`.
pub const BASELINE: &str = "regcache (baseline)";

/// The peers regcache is compared with, in table order (the baseline only
/// when there is one).
pub const PEERS: [&str; 3] = ["nginx static", "nginx proxy_cache", BASELINE];

/// Issue 16's goal: S2 plain by tag ≥ 1.0× nginx static (median ratio).
pub const GOAL_RATIO: f64 = 1.0;

/// One run and what the hypervisor took meanwhile.
#[derive(Debug, Clone)]
pub struct PairedRecord {
    pub run: RunRecord,
    /// CPU time the hypervisor took from this machine during the run
    /// (`steal` in /proc/stat, both CPUs).
    pub stolen: Duration,
}

impl PairedRecord {
    pub fn summary(&self) -> String {
        format!(
            "{}, stolen {:.0} ms",
            self.run.summary(),
            self.stolen.as_secs_f64() * 1e3
        )
    }
}

/// The quantile `q` of sorted `v` (nearest rank below: of an even count
/// the median is the lower middle one, the figure less kind to regcache).
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).floor() as usize;
    Some(sorted[i])
}

/// Per round with a clean run of both: regcache's rate over `peer`'s.
pub fn ratios(records: &[PairedRecord], scenario: Scenario, peer: &str) -> Vec<(usize, f64)> {
    let of = |target: &str, round: usize| {
        records
            .iter()
            .map(|r| &r.run)
            .find(|r| {
                r.scenario == scenario
                    && r.target == target
                    && r.round == round
                    && r.errors.is_empty()
                    && r.value > 0.0
            })
            .map(|r| r.value)
    };
    let mut rounds: Vec<usize> = records.iter().map(|r| r.run.round).collect();
    rounds.sort_unstable();
    rounds.dedup();
    rounds
        .into_iter()
        .filter_map(|round| Some((round, of("regcache", round)? / of(peer, round)?)))
        .collect()
}

/// What the ratios of one (scenario, peer) say.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    pub rounds: usize,
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
    /// Rounds in which regcache was at least as fast.
    pub at_least_even: usize,
}

pub fn spread(ratios: &[(usize, f64)]) -> Option<Spread> {
    let mut v: Vec<f64> = ratios.iter().map(|(_, r)| *r).collect();
    v.sort_by(f64::total_cmp);
    Some(Spread {
        rounds: v.len(),
        median: quantile(&v, 0.5)?,
        q1: quantile(&v, 0.25)?,
        q3: quantile(&v, 0.75)?,
        min: *v.first()?,
        max: *v.last()?,
        at_least_even: v.iter().filter(|r| **r >= 1.0).count(),
    })
}

/// A server's median rate and p99 (S2 only) over its clean runs of
/// `scenario`.
fn medians(
    records: &[PairedRecord],
    scenario: Scenario,
    target: &str,
) -> Option<(f64, Option<f64>)> {
    let runs: Vec<&RunRecord> = records
        .iter()
        .map(|r| &r.run)
        .filter(|r| r.scenario == scenario && r.target == target && r.errors.is_empty())
        .collect();
    let mut rate: Vec<f64> = runs.iter().map(|r| r.value).collect();
    let mut p99: Vec<f64> = runs.iter().filter_map(|r| r.p99_ms).collect();
    rate.sort_by(f64::total_cmp);
    p99.sort_by(f64::total_cmp);
    // The median of each, the upper middle one for p99 (less kind).
    Some((quantile(&rate, 0.5)?, p99.get(p99.len() / 2).copied()))
}

fn x(r: f64) -> String {
    format!("{r:.2}×")
}

/// The summary: per scenario and peer, the spread of the per-round ratios.
pub fn summary_table(records: &[PairedRecord]) -> String {
    let header = [
        "scenario",
        "peer",
        "regcache median",
        "peer median",
        "median of per-round ratios",
        "quartiles",
        "min – max",
        "rounds regcache ≥ peer",
        "p99 median, regcache / peer (ms)",
    ];
    let mut rows = Vec::new();
    for scenario in SCENARIOS {
        for peer in PEERS {
            let (Some(s), Some(ours), Some(theirs)) = (
                spread(&ratios(records, scenario, peer)),
                medians(records, scenario, "regcache"),
                medians(records, scenario, peer),
            ) else {
                continue;
            };
            rows.push(vec![
                scenario.label(),
                peer.to_owned(),
                format!("{:.0} {}", ours.0, scenario.unit()),
                format!("{:.0} {}", theirs.0, scenario.unit()),
                format!("**{}**", x(s.median)),
                format!("{} – {}", x(s.q1), x(s.q3)),
                format!("{} – {}", x(s.min), x(s.max)),
                format!("{} of {}", s.at_least_even, s.rounds),
                match (ours.1, theirs.1) {
                    (Some(a), Some(b)) => format!("{} / {}", fmt_value(a), fmt_value(b)),
                    _ => "–".into(),
                },
            ]);
        }
    }
    table(&header, &rows)
}

/// Every run, in run order.
pub fn runs_table(records: &[PairedRecord]) -> String {
    let header = [
        "round",
        "scenario",
        "server",
        "figure",
        "p99 (ms)",
        "client cores",
        "server cores",
        "other cores",
        "stolen (ms)",
        "errors",
    ];
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let run = &r.run;
            vec![
                run.round.to_string(),
                run.scenario.label(),
                run.target.to_owned(),
                format!("{:.0} {}", run.value, run.scenario.unit()),
                run.p99_ms.map_or("–".into(), fmt_value),
                format!("{:.2}", run.client_cores),
                format!("{:.2}", run.server_cores),
                format!("{:.2}", run.other_cores),
                format!("{:.0}", r.stolen.as_secs_f64() * 1e3),
                if run.errors.is_empty() {
                    "0".into()
                } else {
                    run.errors.join("; ")
                },
            ]
        })
        .collect();
    table(&header, &rows)
}

/// Issue 16's goal for S2 plain by tag against nginx static.
pub fn verdict(records: &[PairedRecord]) -> String {
    let scenario = Scenario::Manifest { by_digest: false };
    let goal = format!(
        "Goal (issue 16): S2 plain by tag ≥ {GOAL_RATIO:.1}× nginx static, as the median of the per-round ratios"
    );
    let errors = records.iter().filter(|r| !r.run.errors.is_empty()).count();
    match spread(&ratios(records, scenario, "nginx static")) {
        None => format!("{goal}: not measured."),
        Some(s) => format!(
            "{goal}: {} (median {}, quartiles {} – {}, regcache ahead in {} of {} rounds{}).",
            if s.median >= GOAL_RATIO && errors == 0 {
                "met"
            } else {
                "NOT met"
            },
            x(s.median),
            x(s.q1),
            x(s.q3),
            s.at_least_even,
            s.rounds,
            if errors > 0 {
                format!("; {errors} run(s) had errors and count in no ratio")
            } else {
                String::new()
            }
        ),
    }
}

/// Everything `--paired` found.
#[derive(Debug, Clone)]
pub struct PairedReport {
    pub options: Options,
    pub pinning: String,
    pub machine: Machine,
    pub loadavg_end: String,
    pub date: String,
    pub elapsed: Duration,
    pub duration: Duration,
    pub rounds: usize,
    pub regcache: String,
    /// The `--baseline-bin` build, if any.
    pub baseline: Option<String>,
    pub commit: String,
    pub nginx: String,
    pub wrk: String,
    pub records: Vec<PairedRecord>,
}

impl PairedReport {
    pub fn command(&self) -> String {
        self.options
            .command_line("cargo bench -p regcache-benches --bench load -- --paired")
    }

    fn errors(&self) -> Vec<String> {
        self.records
            .iter()
            .filter(|r| !r.run.errors.is_empty())
            .map(|r| {
                format!(
                    "round {}, {} against {}: {}",
                    r.run.round,
                    r.run.scenario.label(),
                    r.run.target,
                    r.run.errors.join("; ")
                )
            })
            .collect()
    }

    /// What to print at the end of the run.
    pub fn terminal(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nPaired rounds: {} rounds of {} s per server and scenario; {}\n",
            self.rounds,
            self.duration.as_secs(),
            self.pinning
        );
        out.push_str(&summary_table(&self.records));
        let _ = writeln!(out, "\n{}", verdict(&self.records));
        for e in self.errors() {
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
        let _ = writeln!(
            out,
            "## Paired rounds: S1 and S2 plain, per-round ratios (issue 16)\n"
        );
        let _ = writeln!(
            out,
            "The full run's S1 and S2 figures are each server's best of 2 runs of 5 s; on this shared virtual machine one server's rate moves by ±20% from one run to the next (the host's load: the \"other cores\" column stays near 0 while it happens), so a best-of-2 ranking of servers within 20% of each other is a coin toss. Here the same loads (S1: the built-in blob client on the same 100 MiB blob; S2: wrk, {S2_CONNECTIONS} connections, the same `Accept` and objects; every server warmed and checked the same way) run in {} rounds of {} s; in each round every server runs once per scenario, the order rotated by one each round so each server is first, second and third equally often. Runs a few seconds apart see nearly the same machine: the ratio regcache/peer of one round cancels most of what the host did, and the median of the rounds' ratios (of an even count, the lower middle one) is the figure. The quartiles and the rounds regcache won say how sure the ranking is. Run alone, so with its own facts:\n",
            self.rounds,
            self.duration.as_secs()
        );
        out.push_str(&m.facts(&self.date, &self.loadavg_end));
        let _ = writeln!(out, "- **regcache**: {}", self.regcache);
        let _ = writeln!(out, "- **regcache commit**: {}", self.commit);
        if let Some(b) = &self.baseline {
            let _ = writeln!(
                out,
                "- **regcache (baseline)**: {b}, measured as one more peer in the same rounds"
            );
        }
        let _ = writeln!(out, "- **nginx**: {}", self.nginx);
        let _ = writeln!(out, "- **wrk**: {}", self.wrk);
        let _ = writeln!(out, "- **Command**: `{}`", self.command());
        let _ = writeln!(
            out,
            "- **Method**: {}. Total time {:.0} s.\n",
            self.pinning,
            self.elapsed.as_secs_f64()
        );
        out.push_str(&summary_table(&self.records));
        let _ = writeln!(out, "\n{}", verdict(&self.records));
        let errors = self.errors();
        if !errors.is_empty() {
            let _ = writeln!(out);
            for e in errors {
                let _ = writeln!(out, "- {e}");
            }
        }
        let _ = writeln!(
            out,
            "\n<details><summary>Every run</summary>\n\n{}\n</details>\n",
            runs_table(&self.records)
        );
        let _ = writeln!(out, "{}", MARKERS.end);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: Scenario = Scenario::Manifest { by_digest: false };
    const DIGEST: Scenario = Scenario::Manifest { by_digest: true };

    fn rec(scenario: Scenario, target: &'static str, round: usize, value: f64) -> PairedRecord {
        let mut run = RunRecord::new(scenario, target, round);
        run.value = value;
        run.p99_ms = Some(1.0);
        PairedRecord {
            run,
            stolen: Duration::ZERO,
        }
    }

    #[test]
    fn the_figure_is_the_median_of_per_round_ratios() {
        // The machine halves everyone's rate in round 2; regcache is 10%
        // ahead in every round but 3, where it is 5% behind.
        let mut records = Vec::new();
        for (round, scale, ours) in [(1, 1.0, 1.1), (2, 0.5, 1.1), (3, 1.0, 0.95), (4, 1.0, 1.1)] {
            records.push(rec(TAG, "regcache", round, 100.0 * scale * ours));
            records.push(rec(TAG, "nginx static", round, 100.0 * scale));
        }
        let r = ratios(&records, TAG, "nginx static");
        assert_eq!(r.len(), 4);
        let s = spread(&r).expect("ratios");
        // Sorted: 0.95, 1.1, 1.1, 1.1; the lower middle one is 1.1.
        assert!((s.median - 1.1).abs() < 1e-9, "{s:?}");
        assert!((s.min - 0.95).abs() < 1e-9 && (s.max - 1.1).abs() < 1e-9);
        assert_eq!(s.at_least_even, 3);
        let v = verdict(&records);
        assert!(v.contains(": met (median 1.10×"), "{v}");
        assert!(v.contains("ahead in 3 of 4 rounds"), "{v}");
        // No by-digest runs, no other peer: nothing to compare there.
        assert!(ratios(&records, DIGEST, "nginx static").is_empty());
        assert!(ratios(&records, TAG, "nginx proxy_cache").is_empty());
        let t = summary_table(&records);
        assert!(t.contains("**1.10×**") && t.contains("3 of 4"), "{t}");
    }

    #[test]
    fn behind_in_most_rounds_is_not_met_and_errors_count_in_no_ratio() {
        let mut records = Vec::new();
        for (round, ours) in [(1, 0.9), (2, 1.2), (3, 0.95)] {
            records.push(rec(TAG, "regcache", round, 100.0 * ours));
            records.push(rec(TAG, "nginx static", round, 100.0));
        }
        assert!(verdict(&records).contains("NOT met (median 0.95×"));
        // A run with errors drops its round from the ratios and fails the goal.
        records[2].run.errors.push("wrk: 3 socket errors".into());
        assert_eq!(ratios(&records, TAG, "nginx static").len(), 2);
        let v = verdict(&records);
        assert!(
            v.contains("NOT met") && v.contains("1 run(s) had errors"),
            "{v}"
        );
    }

    #[test]
    fn a_baseline_build_is_one_more_peer() {
        let mut records = Vec::new();
        for round in 1..=3 {
            records.push(rec(TAG, "regcache", round, 120.0));
            records.push(rec(TAG, "nginx static", round, 100.0));
            records.push(rec(TAG, BASELINE, round, 80.0));
        }
        let s = spread(&ratios(&records, TAG, BASELINE)).expect("ratios");
        assert!((s.median - 1.5).abs() < 1e-9, "{s:?}");
        let t = summary_table(&records);
        assert!(
            t.contains("| regcache (baseline) |") && t.contains("**1.50×**"),
            "{t}"
        );
        // Without one, no row for it.
        records.retain(|r| r.run.target != BASELINE);
        assert!(!summary_table(&records).contains(BASELINE));
    }

    #[test]
    fn quantiles_take_the_rank_below() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), Some(1.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.25), Some(2.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.75), Some(4.0));
    }
}

//! The TLS scenarios' part of `benches/RESULTS.md`: one section between two
//! markers, written by a TLS run (`-- --tls`) into the existing file and
//! carried over by a full run, as S8's is. It has its own date, machine,
//! versions and command, since it runs alone.

use std::fmt::Write as _;
use std::time::Duration;

use super::super::harness::Options;
use super::super::machine::Machine;
use super::super::report::{fmt_value, ratio, table};
use super::super::sections::Markers;
use super::{NGINX_CACHE, NGINX_STATIC, REGCACHE, TlsRun, TlsScenario};

/// The line before the TLS section in RESULTS.md.
pub const BEGIN: &str = "<!-- TLS: begin (written by `cargo bench -p regcache-benches --bench load -- --tls`; a full run keeps it) -->";
/// The line after it.
pub const END: &str = "<!-- TLS: end -->";
/// Both, for splicing the section ([`Markers`]).
pub const MARKERS: Markers = Markers {
    begin: BEGIN,
    end: END,
};

/// The peers, in column order.
const PEERS: [&str; 2] = [NGINX_STATIC, NGINX_CACHE];

/// Everything a TLS run found.
#[derive(Debug, Clone)]
pub struct TlsReport {
    pub options: Options,
    pub pinning: String,
    pub machine: Machine,
    pub loadavg_end: String,
    pub date: String,
    pub elapsed: Duration,
    pub versions: Vec<(String, String)>,
    /// Whether the kernel has kTLS, and what that means for nginx.
    pub ktls: String,
    /// (server, what its warm-up did and saw).
    pub warm: Vec<(String, String)>,
    pub runs: Vec<TlsRun>,
    pub regcache_log: String,
    pub nginx_logs: String,
    pub nginx_static_conf: String,
}

impl TlsReport {
    /// The best (highest-value) run of `scenario` against `target`.
    pub fn best(&self, scenario: TlsScenario, target: &str) -> Option<&TlsRun> {
        self.runs
            .iter()
            .filter(|r| r.scenario == scenario && r.target == target)
            .max_by(|a, b| a.value.total_cmp(&b.value))
    }

    /// The command that reproduces this run.
    pub fn command(&self) -> String {
        self.options.command_line("cargo build --release -p regcache-server && cargo bench -p regcache-benches --bench load --profile release -- --tls")
    }

    /// Throughput (S1 MiB/s, S2 req/s; S2 p99 too) and regcache / peer.
    pub fn summary_table(&self) -> String {
        let mut header = vec!["scenario", REGCACHE];
        for peer in PEERS {
            header.push(peer);
            header.push("ratio");
        }
        let mut rows = Vec::new();
        for scenario in TlsScenario::ALL {
            let unit = match scenario {
                TlsScenario::Blob { .. } => "MiB/s",
                TlsScenario::Manifest { .. } => "req/s",
            };
            let value = |t: &str| self.best(scenario, t).map_or(0.0, |r| r.value);
            let cell = |t: &str| match self.best(scenario, t) {
                Some(r) if !r.errors.is_empty() => format!("{} (!)", fmt_value(r.value)),
                Some(r) => fmt_value(r.value),
                None => "–".into(),
            };
            let mut row = vec![format!("{} ({unit})", scenario.label()), cell(REGCACHE)];
            for peer in PEERS {
                row.push(cell(peer));
                row.push(ratio(value(REGCACHE), value(peer)));
            }
            rows.push(row);
            if let TlsScenario::Manifest { .. } = scenario {
                let p99 = |t: &str| self.best(scenario, t).and_then(|r| r.p99_ms);
                let mut row = vec![
                    format!("{}: p99 of the best run (ms)", scenario.label()),
                    p99(REGCACHE).map_or("–".into(), fmt_value),
                ];
                for peer in PEERS {
                    row.push(p99(peer).map_or("–".into(), fmt_value));
                    row.push(ratio(
                        p99(REGCACHE).unwrap_or(0.0),
                        p99(peer).unwrap_or(0.0),
                    ));
                }
                rows.push(row);
            }
        }
        table(&header, &rows)
    }

    /// S1: CPU seconds per GiB of the server and of the client, each best
    /// run, and what it negotiated.
    pub fn cpu_table(&self) -> String {
        let mut rows = Vec::new();
        for scenario in TlsScenario::ALL {
            let TlsScenario::Blob { .. } = scenario else {
                continue;
            };
            let server = |t: &str| {
                self.best(scenario, t)
                    .and_then(TlsRun::server_cpu_per_gib)
                    .unwrap_or(0.0)
            };
            for target in [REGCACHE, NGINX_STATIC, NGINX_CACHE] {
                let Some(r) = self.best(scenario, target) else {
                    continue;
                };
                let vs = |peer: &str| {
                    if target == peer {
                        "–".to_owned()
                    } else {
                        ratio(server(target), server(peer))
                    }
                };
                rows.push(vec![
                    scenario.label(),
                    target.to_owned(),
                    fmt_value(r.value),
                    format!("{:.2}", r.server_cpu_per_gib().unwrap_or(0.0)),
                    if target == REGCACHE {
                        format!("{} / {}", vs(NGINX_STATIC), vs(NGINX_CACHE))
                    } else {
                        "".into()
                    },
                    format!("{:.2}", r.client_cpu_per_gib().unwrap_or(0.0)),
                    format!("{:.2}", r.other_cores),
                    format!("`{}`", r.negotiated),
                ]);
            }
        }
        table(
            &[
                "S1 over TLS (best run)",
                "server",
                "MiB/s",
                "server CPU s/GiB",
                "regcache/nginx static / regcache/nginx cache",
                "client CPU s/GiB",
                "other cores",
                "negotiated (client side)",
            ],
            &rows,
        )
    }

    /// Every run, for the record.
    pub fn runs_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                vec![
                    r.scenario.label(),
                    r.target.to_owned(),
                    (r.round + 1).to_string(),
                    r.summary(),
                ]
            })
            .collect();
        table(&["scenario", "server", "round", "result"], &rows)
    }

    /// Errors of any run.
    pub fn errors(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.errors
                    .iter()
                    .map(move |e| format!("{} against {}: {e}", r.scenario.label(), r.target))
            })
            .collect()
    }

    /// The goals of issue 16 (TLS part), each met or not.
    pub fn goals(&self) -> Vec<String> {
        let mut out = Vec::new();
        let value = |s: TlsScenario, t: &str| self.best(s, t).map_or(0.0, |r| r.value);
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        for scenario in TlsScenario::ALL {
            match scenario {
                TlsScenario::Blob { .. } => {
                    let (r, n) = (value(scenario, REGCACHE), value(scenario, NGINX_STATIC));
                    let cpu = |t: &str| {
                        self.best(scenario, t)
                            .and_then(TlsRun::server_cpu_per_gib)
                            .unwrap_or(f64::INFINITY)
                    };
                    let (rc, nc) = (cpu(REGCACHE), cpu(NGINX_STATIC));
                    if r <= 0.0 || n <= 0.0 {
                        out.push(format!(
                            "{}: no figure for regcache or nginx static (ssl) (see Errors)",
                            scenario.label()
                        ));
                        continue;
                    }
                    out.push(format!(
                        "{}: regcache {} nginx static (ssl) (goal ≥ 1.0×: {}); server CPU per GiB {:.2} vs {:.2} s ({}; goal ≤ 1.0×: {})",
                        scenario.label(),
                        ratio(r, n),
                        verdict(r >= n),
                        rc,
                        nc,
                        ratio(rc, nc),
                        verdict(rc <= nc)
                    ));
                }
                TlsScenario::Manifest { .. } => {
                    let (r, n) = (value(scenario, REGCACHE), value(scenario, NGINX_CACHE));
                    out.push(format!(
                        "{}: regcache {} nginx proxy_cache (ssl) (goal ≥ 1.0×: {})",
                        scenario.label(),
                        ratio(r, n),
                        verdict(r >= n && n > 0.0)
                    ));
                }
            }
        }
        out
    }

    /// A warning when other work used more than
    /// [`NOISY_CORES`](super::super::harness::NOISY_CORES) during a
    /// reported (best) run, with the range it used.
    pub fn noise(&self) -> Option<String> {
        let others: Vec<f64> = TlsScenario::ALL
            .iter()
            .flat_map(|s| [REGCACHE, NGINX_STATIC, NGINX_CACHE].map(|t| self.best(*s, t)))
            .flatten()
            .map(|r| r.other_cores)
            .collect();
        let max = others.iter().copied().fold(0.0, f64::max);
        let min = others.iter().copied().fold(f64::INFINITY, f64::min);
        (max > super::super::harness::NOISY_CORES).then(|| {
            format!(
                "other work on the machine used {min:.2}-{max:.2} cores (of {}) during the reported runs: throughput and latency are depressed and uneven (the servers' CPU was shared); CPU per GiB is the steadier figure",
                self.machine.cores
            )
        })
    }

    /// What to print at the end of a run.
    pub fn terminal(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nregcache load harness, TLS: best of {} round(s) of {} s per run; {}; ratio = regcache / peer\n",
            self.options.rounds,
            self.options.duration.as_secs(),
            self.pinning
        );
        out.push_str(&self.summary_table());
        out.push('\n');
        out.push_str(&self.cpu_table());
        out.push('\n');
        for g in self.goals() {
            let _ = writeln!(out, "- {g}");
        }
        let _ = writeln!(out, "- {}", self.ktls);
        if let Some(noise) = self.noise() {
            let _ = writeln!(out, "- NOISY: {noise}");
        }
        for e in self.errors() {
            let _ = writeln!(out, "ERROR {e}");
        }
        let _ = writeln!(out, "total time {:.0} s", self.elapsed.as_secs_f64());
        out
    }

    /// The section of RESULTS.md, markers included.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "{BEGIN}\n");
        let _ = writeln!(out, "## TLS: S1 and S2 over TLS 1.3 and 1.2\n");
        let _ = writeln!(
            out,
            "Run alone (`--tls`): regcache with TLS on its API listener against nginx with `ssl` serving the same files as S1/S2 statically and nginx `proxy_cache` with `ssl` in front of the same upstream, all three on one self-signed ECDSA P-256 certificate for 127.0.0.1 and HTTP/1.1 (the client offers ALPN `http/1.1` only; wrk offers no ALPN). S1's client is rustls 0.23 (ring) offering exactly one suite per version and the groups X25519 then P-256 (OpenSSL refuses ECDSA suites in TLS 1.2 to a client without the certificate's curve), with version, suite and group X25519 checked on every connection (no session resumption): TLS 1.3 `TLS13_AES_256_GCM_SHA384` (what OpenSSL's and rustls's clients negotiate by default with both servers), TLS 1.2 `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`. It decrypts every body (no `MSG_TRUNC` possible) into a reused 1 MiB buffer, reading the socket through a 1 MiB buffer. S2 uses wrk over `https://` (OpenSSL defaults: TLS 1.3, `TLS_AES_256_GCM_SHA384`); there is no S2 over TLS 1.2 because wrk has no option to choose the version or the suites. CPU per GiB is the CPU seconds (user + system, from `/proc`) of the server's processes (nginx: master and workers) or of the client threads during the run, over the GiB served.\n"
        );
        let _ = writeln!(out, "- **Date**: {}", self.date);
        let _ = writeln!(
            out,
            "- **Machine**: {} cores, {}, {:.1} GiB RAM, Linux {}; load average {} at the start, {} at the end",
            m.cores, m.cpu_model, m.mem_total_gib, m.kernel, m.loadavg, self.loadavg_end
        );
        let _ = writeln!(out, "- **kTLS**: {}", self.ktls);
        for (name, version) in &self.versions {
            let _ = writeln!(out, "- **{name}**: {version}");
        }
        let _ = writeln!(out, "- **Command**: `{}`", self.command());
        let _ = writeln!(
            out,
            "- **Method**: each (scenario, server) pair ran {} time(s) for {} s, servers in a rotated order each round; the best run is reported; {}. Total time {:.0} s.\n",
            self.options.rounds,
            self.options.duration.as_secs(),
            self.pinning,
            self.elapsed.as_secs_f64()
        );
        if let Some(noise) = self.noise() {
            let _ = writeln!(out, "**Noisy run**: {noise}.\n");
        }
        let _ = writeln!(
            out,
            "Ratio = regcache / peer: above 1 favours regcache for throughput, below 1 for p99 and CPU per GiB. \"(!)\" marks a run with errors.\n"
        );
        out.push_str(&self.summary_table());
        let _ = writeln!(out);
        out.push_str(&self.cpu_table());
        let _ = writeln!(out, "\nGoals (issue 16):\n");
        for g in self.goals() {
            let _ = writeln!(out, "- {g}");
        }
        let _ = writeln!(out, "\nWarm-up over TLS 1.3:\n");
        for (target, what) in &self.warm {
            let _ = writeln!(out, "- {target}: {what}");
        }
        let errors = self.errors();
        if !errors.is_empty() {
            let _ = writeln!(out, "\nErrors:\n");
            for e in errors {
                let _ = writeln!(out, "- {e}");
            }
        }
        for (name, log) in [
            ("regcache", &self.regcache_log),
            ("nginx", &self.nginx_logs),
        ] {
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let _ = writeln!(
                out,
                "\n{name} logged {} line(s) at warn or above{}",
                lines.len(),
                lines
                    .first()
                    .map(|l| format!(", e.g. `{}`", l.chars().take(300).collect::<String>()))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "\n<details><summary>every run</summary>\n\n{}\n</details>\n",
            self.runs_table()
        );
        let _ = writeln!(
            out,
            "<details><summary>nginx static (ssl) nginx.conf</summary>\n\n```nginx\n{}```\n\n</details>\n",
            self.nginx_static_conf
        );
        let _ = writeln!(out, "{END}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::Tls;
    use super::*;

    fn sample(body: &str) -> String {
        format!("{BEGIN}\n\n## TLS\n\n{body}\n{END}\n")
    }

    #[test]
    fn splice_appends_then_replaces_and_a_full_run_keeps_it() {
        let results = "# Load harness results\n\nS1 table\n";
        let once = MARKERS.splice(results, &sample("first"));
        assert!(once.starts_with(results) && once.contains("first"));
        let twice = MARKERS.splice(&once, &sample("second"));
        assert!(twice.contains("second") && !twice.contains("first"));
        assert_eq!(twice.matches(BEGIN).count(), 1);
        let kept = MARKERS.carry_over(&twice, "# new results\n");
        assert!(kept.starts_with("# new results\n") && kept.contains("second"));
        assert_eq!(MARKERS.carry_over("# old\n", "# new\n"), "# new\n");
        // S8's section and the TLS one are independent.
        let both = super::super::super::cluster::report::MARKERS.splice(
            &twice,
            &format!(
                "{}\nS8\n{}",
                super::super::super::cluster::report::BEGIN,
                super::super::super::cluster::report::END
            ),
        );
        assert_eq!(MARKERS.find(&both), MARKERS.find(&twice));
    }

    #[test]
    fn a_section_without_its_end_marker_is_not_one() {
        assert_eq!(MARKERS.find(&format!("# r\n{BEGIN}\nno end")), None);
    }

    #[test]
    fn both_versions_have_s1_rows() {
        let labels: Vec<String> = TlsScenario::ALL.iter().map(|s| s.label()).collect();
        for tls in Tls::ALL {
            assert_eq!(
                labels.iter().filter(|l| l.contains(tls.label())).count(),
                if tls == Tls::V13 { 4 } else { 2 },
                "{labels:?}"
            );
        }
    }
}

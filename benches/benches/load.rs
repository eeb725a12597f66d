//! The side-by-side load harness: regcache against docker-registry 2.8 in
//! `proxy:` mode, nginx `proxy_cache` and nginx static, on loopback.
//!
//! ```sh
//! sudo apt-get install -y nginx wrk docker-registry skopeo  # once
//! cargo build --release -p regcache-server               # the binary under test
//! cargo bench -p regcache-benches --bench load           # ~5-6 min; writes benches/RESULTS.md
//! cargo bench -p regcache-benches --bench load -- --quick  # ~2 min; prints only
//! cargo bench -p regcache-benches --bench load -- --cluster  # S8 alone, ~1 min
//! cargo bench -p regcache-benches --bench load -- --tls      # TLS alone, ~2.5 min
//! cargo bench -p regcache-benches --bench load -- --fanin    # S3 alone, ~1 min
//! cargo bench -p regcache-benches --bench load -- --connections  # S9 alone, ~4 min
//! cargo bench -p regcache-benches --bench load -- --paired   # S1, S2 in 10 short rounds, ~5 min
//! ```
//!
//! Flags (after `--`): `--quick` (also `REGCACHE_BENCH_QUICK=1`): one round
//! of 2 s runs, nothing written; `--duration SECS` per run (default 5);
//! `--rounds N` (default 2, best run reported; S4 pulls a fresh image
//! through each proxy per round and copies directly `N + 1` times);
//! `--no-pin` to let servers and load generator share every CPU (by
//! default the servers get the first half of the CPUs and the generator,
//! skopeo included, the rest, via `taskset`);
//! `--servers a,b` to measure only some of `regcache`, `distribution`,
//! `nginx-cache`, `nginx-static` (all are started; a partial run does not
//! write RESULTS.md);
//! `--regcache-bin PATH` to measure another build of regcache (say, of an
//! older commit) instead of `target/release/regcache`;
//! `--no-write` to leave RESULTS.md alone;
//! `--cluster` to run S8 alone instead (3 regcache replicas in cluster mode
//! on moto, warm-blob load spread over them against all on one; needs
//! `moto_server` in the test virtualenv, `$REGCACHE_TEST_VENV` or
//! `target/test-venv`; ~1 min): it writes only its own section of
//! RESULTS.md, which a full run keeps; `--cluster-plain` runs the same with
//! independent replicas (no `[cluster]`/`[shared]`: a check of the harness
//! with a binary that has no cluster mode) and writes nothing.
//! `--fanin` to run S3 alone (cold fan-in of 100 clients, then the same
//! 100 warm, through regcache, docker-registry proxy and nginx
//! `proxy_cache`; `--servers` picks among them); `--connections` to run S9
//! alone (10,000 keep-alive connections each sending a warm manifest GET
//! about once a second, regcache and nginx static). Like `--cluster`, each
//! writes only its own section of RESULTS.md, which a full run keeps.
//! `--paired` runs S1 and S2 alone against nginx static and nginx
//! `proxy_cache` in 10 rounds of 2 s (`--rounds`, `--duration` change them), each server
//! once per round in a rotated order, and reports the median of the
//! per-round ratios; it too writes only its own section. With
//! `--baseline-bin PATH` another regcache build runs in the same rounds as
//! "regcache (baseline)", a peer like the others: how the build under test
//! compares with, say, the commit an issue started from.
//! The other flags apply to S8 too (`--quick`, `--duration`, `--rounds`,
//! `--no-pin`, `--regcache-bin`, `--no-write`).
//! `--tls` to run the TLS scenarios alone instead (S1 and S2 over TLS 1.3
//! and 1.2, regcache against nginx static and nginx `proxy_cache` with
//! `ssl`, one certificate; 2 rounds of 3 s unless `--rounds`/`--duration`
//! say otherwise; ~2.5 min): it writes only its own section of RESULTS.md,
//! which a full run keeps; `--quick`, `--duration`, `--rounds`, `--no-pin`,
//! `--regcache-bin` and `--no-write` apply.
//!
//! What is measured and how: `regcache_benches::load`.
//!
//! Run without `--bench` (as `cargo test --benches` does) it does nothing
//! but say so: the load run takes minutes and needs nginx, wrk and skopeo.

use std::process::ExitCode;
use std::time::Duration;

use regcache_benches::load::cluster::{self, ClusterMode};
use regcache_benches::load::harness::{self, Alone, Options};
use regcache_benches::load::{connections, fanin, paired, tls};

const USAGE: &str = "usage: cargo bench -p regcache-benches --bench load [-- [--quick] [--duration SECS] [--rounds N] [--servers regcache,distribution,nginx-cache,nginx-static] [--regcache-bin PATH] [--baseline-bin PATH] [--no-pin] [--no-write] [--cluster | --cluster-plain | --tls | --fanin | --connections | --paired]]";

fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    if !args.iter().any(|a| a == "--bench") {
        return Ok(None);
    }
    let quick_env = std::env::var("REGCACHE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let mut options = if quick_env || args.iter().any(|a| a == "--quick") {
        Options::quick()
    } else {
        Options::full()
    };
    let mut it = args.iter();
    let (mut duration_given, mut rounds_given) = (false, false);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let v = it
                .next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
            options.shown_args.push(format!("{name} {v}"));
            v.parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} {v}: not a positive number\n{USAGE}"))
        };
        match arg.as_str() {
            "--bench" | "--quick" => {}
            "--duration" => {
                options.duration = Duration::from_secs(number("--duration")?);
                duration_given = true;
            }
            "--rounds" => {
                options.rounds = number("--rounds")? as usize;
                rounds_given = true;
            }
            "--servers" => {
                let list = it
                    .next()
                    .ok_or_else(|| format!("--servers needs a value\n{USAGE}"))?;
                let names: Vec<String> = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = names
                    .iter()
                    .find(|n| !harness::SERVER_NAMES.contains(&n.as_str()))
                {
                    return Err(format!(
                        "--servers: unknown server {bad:?} (known: {})\n{USAGE}",
                        harness::SERVER_NAMES.join(", ")
                    ));
                }
                options.shown_args.push(format!("--servers {list}"));
                options.servers = Some(names);
                options.write_results = false;
            }
            "--regcache-bin" => {
                let path = it
                    .next()
                    .ok_or_else(|| format!("--regcache-bin needs a path\n{USAGE}"))?;
                options.shown_args.push(format!("--regcache-bin {path}"));
                options.regcache_bin = Some(path.into());
            }
            "--baseline-bin" => {
                let path = it
                    .next()
                    .ok_or_else(|| format!("--baseline-bin needs a path\n{USAGE}"))?;
                options.shown_args.push(format!("--baseline-bin {path}"));
                options.baseline_bin = Some(path.into());
            }
            "--no-pin" => {
                options.pin = false;
                options.shown_args.push("--no-pin".into());
            }
            "--cluster" => options.cluster = Some(ClusterMode::Cluster),
            "--cluster-plain" => {
                options.cluster = Some(ClusterMode::Plain);
                options.write_results = false;
            }
            "--tls" => options.tls = true,
            "--fanin" => options.alone = Some(Alone::FanIn),
            "--connections" => options.alone = Some(Alone::Connections),
            "--paired" => options.alone = Some(Alone::Paired),
            "--no-write" => {
                options.write_results = false;
                options.shown_args.push("--no-write".into());
            }
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let alone = [
        options.tls,
        options.cluster.is_some(),
        options.alone.is_some(),
    ];
    if alone.iter().filter(|a| **a).count() > 1 {
        return Err(format!(
            "--tls, --cluster, --fanin, --connections and --paired each run alone: pick one\n{USAGE}"
        ));
    }
    // 18 pairs: 2 rounds of 3 s keep a TLS run near 2.5 minutes.
    if options.tls && !options.quick {
        if !duration_given {
            options.duration = Duration::from_secs(3);
        }
        if !rounds_given {
            options.rounds = 2;
        }
    }
    if options.baseline_bin.is_some() && options.alone != Some(Alone::Paired) {
        return Err(format!("--baseline-bin is for --paired only\n{USAGE}"));
    }
    if options.alone == Some(Alone::Paired) {
        if !duration_given {
            options.duration = paired::DURATION;
        }
        if !rounds_given {
            options.rounds = if options.quick { 2 } else { paired::ROUNDS };
        }
    }
    Ok(Some(options))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!(
                "load: not run without --bench (it takes minutes and needs nginx, wrk and skopeo); run `cargo bench -p regcache-benches --bench load`"
            );
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    if let Some(mode) = options.cluster {
        return run_cluster(&options, mode);
    }
    if options.tls {
        let report = tls::run(&options).map(|r| (r.terminal(), r.markdown()));
        let markers = tls::report::MARKERS;
        return run_alone(&options, "TLS", report, |old, new| markers.splice(old, new));
    }
    match options.alone {
        Some(Alone::FanIn) => {
            let report = fanin::run(&options).map(|r| (r.terminal(), r.markdown()));
            let markers = fanin::report::MARKERS;
            return run_alone(&options, "S3", report, |old, new| markers.splice(old, new));
        }
        Some(Alone::Connections) => {
            let report = connections::run(&options).map(|r| (r.terminal(), r.markdown()));
            let markers = connections::report::MARKERS;
            return run_alone(&options, "S9", report, |old, new| markers.splice(old, new));
        }
        Some(Alone::Paired) => {
            let report = paired::run(&options).map(|r| (r.terminal(), r.markdown()));
            let markers = paired::report::MARKERS;
            return run_alone(&options, "paired", report, |old, new| {
                markers.splice(old, new)
            });
        }
        None => {}
    }
    let report = match harness::run(&options) {
        Ok(report) => report,
        Err(msg) => {
            eprintln!("load: {msg}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.terminal());
    if options.write_results {
        let path = harness::workspace_root().join("benches").join("RESULTS.md");
        // S8, TLS, S3 alone, S9, the paired rounds and the scale bench's figures are not part
        // of a full run: their sections of the old file stay.
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let mut new = report.markdown();
        for markers in [
            cluster::report::MARKERS,
            tls::report::MARKERS,
            fanin::report::MARKERS,
            connections::report::MARKERS,
            paired::report::MARKERS,
            regcache_benches::load::sections::SCALE,
        ] {
            new = markers.carry_over(&old, &new);
        }
        match std::fs::write(&path, new) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("load: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("(RESULTS.md not written: quick or --no-write run)");
    }
    ExitCode::SUCCESS
}

/// S8 alone: prints its tables and, unless quick, plain or `--no-write`,
/// puts its section into RESULTS.md (replacing the previous one).
fn run_cluster(options: &Options, mode: ClusterMode) -> ExitCode {
    let report = match cluster::run(options, mode) {
        Ok(report) => report,
        Err(msg) => {
            eprintln!("load: S8: {msg}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.terminal());
    if !options.write_results {
        println!("(RESULTS.md not written: quick, --cluster-plain or --no-write run)");
        return ExitCode::SUCCESS;
    }
    let path = harness::workspace_root().join("benches").join("RESULTS.md");
    let old = match std::fs::read_to_string(&path) {
        Ok(old) => old,
        Err(e) => {
            eprintln!("load: cannot read {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match std::fs::write(
        &path,
        cluster::report::MARKERS.splice(&old, &report.markdown()),
    ) {
        Ok(()) => {
            println!("wrote S8's section of {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("load: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// A scenario run alone: prints its tables and, unless quick or
/// `--no-write`, puts its section into RESULTS.md (replacing the previous
/// one) with `splice(old, section)`.
fn run_alone(
    options: &Options,
    name: &str,
    report: Result<(String, String), String>,
    splice: impl Fn(&str, &str) -> String,
) -> ExitCode {
    let (terminal, markdown) = match report {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("load: {name}: {msg}");
            return ExitCode::FAILURE;
        }
    };
    println!("{terminal}");
    if !options.write_results {
        println!("(RESULTS.md not written: quick, --servers or --no-write run)");
        return ExitCode::SUCCESS;
    }
    let path = harness::workspace_root().join("benches").join("RESULTS.md");
    let old = match std::fs::read_to_string(&path) {
        Ok(old) => old,
        Err(e) => {
            eprintln!("load: cannot read {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match std::fs::write(&path, splice(&old, &markdown)) {
        Ok(()) => {
            println!("wrote {name}'s section of {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("load: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

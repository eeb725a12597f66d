//! Paired rounds (`-- --paired`): the plain-HTTP warm scenarios of the full
//! run (S1: the 100 MiB blob, 1 and 16 clients; S2: manifest GETs by tag
//! and by digest, 64 connections, wrk), regcache against nginx static and
//! nginx `proxy_cache`, in many short rounds, each server once per round
//! and scenario in a rotated order; the figure is the median of the
//! per-round ratios regcache/peer. It writes only its own section of
//! RESULTS.md (see [`report`]).
//!
//! Why not the full run's best-of-2: on this shared virtual machine the
//! same server's rate moves by ±20% from one 5 s run to the next (the
//! host's load, which no process here can see), and whichever server
//! happens to catch the quiet seconds "wins". Runs of 2 s next to each
//! other see nearly the same machine, so their ratio carries most of the
//! difference between the servers and little of the machine's; the median
//! of a dozen such ratios, and their spread, says how sure the ranking is.

pub mod report;

use std::time::{Duration, Instant};

use super::harness::{self, Options, SEED, Scenario, Target, log};
use super::imageset::{BIG_BLOB_BYTES, ImageSet};
use super::machine;
use super::procstat::{self, TICKS_PER_SEC};
use super::servers::{Nginx, NginxMode, RegcacheServer};
use super::wrk::Wrk;

pub use report::{PairedRecord, PairedReport};

/// Rounds unless `--rounds` says otherwise (`--quick`: 2).
pub const ROUNDS: usize = 10;
/// One run's length unless `--duration` says otherwise.
pub const DURATION: Duration = Duration::from_secs(2);

/// The scenarios, in the order each round runs them.
pub const SCENARIOS: [Scenario; 4] = Scenario::ALL;

/// The order of `n` servers in round `round` (0-based): rotated by one
/// each round, so each server runs first, second, … equally often.
pub fn order(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round) % n).collect()
}

/// Runs the paired rounds; `Err` is a message for the user.
/// `options.rounds` and `options.duration` are this scenario's (the
/// command line sets [`ROUNDS`] and [`DURATION`] unless told otherwise).
pub fn run(options: &Options) -> Result<PairedReport, String> {
    let started = Instant::now();
    let harness::Prelude {
        tools,
        machine,
        commit,
        pinning,
    } = harness::prelude(options)?;
    let (rounds, duration) = (options.rounds, options.duration);

    log("paired: generating the image set and starting the upstream docker-registry");
    let set = ImageSet::generate(SEED, BIG_BLOB_BYTES);
    let upstream = harness::start_upstream(&set, &pinning.servers)?;

    log(
        "paired: starting regcache, nginx proxy_cache and nginx static (and the baseline regcache, if any)",
    );
    let cpus = &pinning.servers;
    let regcache = RegcacheServer::start(&tools.regcache, &upstream.url(), cpus)?;
    let nginx_cache = Nginx::start(
        &tools.nginx,
        &NginxMode::ProxyCache {
            upstream: upstream.addr(),
        },
        cpus,
    )?;
    let (nginx_static, _www) = harness::start_nginx_static(&tools.nginx, &set, cpus)?;
    let baseline = match &options.baseline_bin {
        Some(bin) => Some(RegcacheServer::start(bin, &upstream.url(), cpus)?),
        None => None,
    };
    let mut targets = vec![
        Target {
            name: "regcache",
            addr: regcache.addr(),
            pids: vec![regcache.pid()],
            proxies: true,
        },
        Target {
            name: "nginx proxy_cache",
            addr: nginx_cache.addr(),
            pids: nginx_cache.pids(),
            proxies: true,
        },
        Target {
            name: "nginx static",
            addr: nginx_static.addr(),
            pids: nginx_static.pids(),
            proxies: false,
        },
    ];
    if let Some(b) = &baseline {
        targets.push(Target {
            name: report::BASELINE,
            addr: b.addr(),
            pids: vec![b.pid()],
            proxies: true,
        });
    }
    for target in &targets {
        log(format!("warming {}", target.name));
        harness::warm_target(target, &set, &upstream)?;
    }

    pinning.client.pin_running(std::process::id(), false)?;
    let wrk = Wrk::new(tools.wrk.clone());
    let all_pids: Vec<u32> = targets
        .iter()
        .flat_map(|t| t.pids.iter().copied())
        .chain([upstream.pid()])
        .collect();
    let mut records = Vec::new();
    for round in 0..rounds {
        for scenario in SCENARIOS {
            for i in order(targets.len(), round) {
                let target = &targets[i];
                let before = procstat::machine_cpu();
                let run = harness::measure(
                    target,
                    scenario,
                    &set,
                    &wrk,
                    pinning.client_cpus,
                    duration,
                    upstream.pid(),
                    &all_pids,
                    round + 1,
                )?;
                let stolen = procstat::machine_cpu().steal.saturating_sub(before.steal);
                let record = PairedRecord {
                    run,
                    stolen: Duration::from_secs_f64(stolen as f64 / TICKS_PER_SEC),
                };
                log(format!(
                    "round {}/{rounds}: {} against {}: {}",
                    round + 1,
                    scenario.label(),
                    target.name,
                    record.summary()
                ));
                records.push(record);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    Ok(PairedReport {
        options: options.clone(),
        pinning: pinning.description.clone(),
        machine,
        loadavg_end: machine::loadavg(),
        date: machine::utc_now(),
        elapsed: started.elapsed(),
        duration,
        rounds,
        regcache: format!(
            "{} (`{}`)",
            machine::first_line(&tools.regcache, &["--version"]),
            tools.regcache.display()
        ),
        baseline: options.baseline_bin.as_ref().map(|bin| {
            format!(
                "{} (`{}`)",
                machine::first_line(bin, &["--version"]),
                bin.display()
            )
        }),
        commit,
        nginx: machine::first_line(&tools.nginx, &["-v"]),
        wrk: machine::first_line(&tools.wrk, &["-v"]),
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_takes_every_place_equally_often() {
        let n = 3;
        let mut places = vec![vec![0; n]; n];
        for round in 0..12 {
            let o = order(n, round);
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2], "each server once per round");
            for (place, server) in o.into_iter().enumerate() {
                places[server][place] += 1;
            }
        }
        assert!(places.iter().flatten().all(|&c| c == 4), "{places:?}");
    }
}

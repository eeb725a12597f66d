//! S9: 10,000 concurrent keep-alive HTTP/1.1 connections, each sending one
//! warm manifest GET by tag about once a second (an open loop of ~10,000
//! requests/s in all), for ~20 s, against regcache and, for reference,
//! nginx serving the same manifest file statically. Run alone
//! (`-- --connections`); it writes only its own section of RESULTS.md
//! (see [`report`]).
//!
//! Goals (issue 16): regcache's peak RSS ≤ 512 MiB, p99 ≤ 5 ms, no errors.
//!
//! The bench raises its soft open-files limit to the hard one (its 10,000
//! client sockets; the servers it starts inherit it), and regcache runs with
//! `[limits]` that admit 10,000 connections from 127.0.0.1 (the defaults,
//! 4,096 in all and 256 per client address, would queue or refuse most).

pub mod client;
pub mod report;

use std::time::{Duration, Instant};

use super::harness::{self, Options, SEED, Target, fetch_checked, log};
use super::http::{Conn, get_request};
use super::imageset::ImageSet;
use super::machine;
use super::procstat::{self, TICKS_PER_SEC};
use super::servers::RegcacheServer;

pub use report::{ConnRecord, ConnectionsReport};

/// Concurrent connections.
pub const CONNECTIONS: usize = 10_000;
/// Each connection's request period.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Length of a run's measured phase (`--quick`: 5 s).
pub const DURATION: Duration = Duration::from_secs(20);
/// Rounds (`--quick`: 1): the servers take turns, and each one's median
/// round is its figure, so one stall of this shared machine in one run
/// decides nothing.
pub const ROUNDS: usize = 5;

/// regcache's config for S9: no rate limit (one client address), and
/// connection limits above 10,000 in all and per client address (and
/// below the open-files limit the bench gives it, 20,000 here).
pub const REGCACHE_CONFIG: &str = "[limits]\nrequests_per_second_per_client = 0\nmax_connections = 15000\nmax_connections_per_client = 15000\n";

/// The soft open-files limit raised to the hard one; the limit after.
fn raise_open_files() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let have = getrlimit(Resource::Nofile);
    if let Some(hard) = have.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    getrlimit(Resource::Nofile).current
}

/// Runs S9; `Err` is a message for the user.
pub fn run(options: &Options) -> Result<ConnectionsReport, String> {
    let started = Instant::now();
    let nofile = raise_open_files();
    // Client sockets, the servers' (they inherit the limit), stdio, logs.
    let need = CONNECTIONS as u64 + 1000;
    if nofile.is_some_and(|n| n < need) {
        return Err(format!(
            "S9 needs {need} open files per process; the limit is {nofile:?} (raise the hard limit: `ulimit -Hn {need}` as root, or `nofile` in /etc/security/limits.conf)"
        ));
    }
    let harness::Prelude {
        tools,
        machine,
        commit,
        pinning,
    } = harness::prelude(options)?;
    let duration = if options.quick {
        Duration::from_secs(5)
    } else {
        DURATION
    };

    // The manifest is what matters; the blobs are kept small.
    log("S9: generating a small image set and starting the upstream docker-registry");
    let set = ImageSet::generate(SEED, 1 << 20);
    let upstream = harness::start_upstream(&set, &pinning.servers)?;

    log("S9: starting regcache and nginx static");
    let cpus = &pinning.servers;
    let regcache =
        RegcacheServer::start_with_config(&tools.regcache, &upstream.url(), cpus, REGCACHE_CONFIG)?;
    let (nginx, _www) = harness::start_nginx_static(&tools.nginx, &set, cpus)?;
    let targets = [
        Target {
            name: "regcache",
            addr: regcache.addr(),
            pids: vec![regcache.pid()],
            proxies: true,
        },
        Target {
            name: "nginx static",
            addr: nginx.addr(),
            pids: nginx.pids(),
            proxies: false,
        },
    ];
    let object = &set.manifest_by_tag;
    for target in &targets {
        let mut conn = Conn::connect(target.addr)
            .map_err(|e| format!("{}: cannot connect to {}: {e}", target.name, target.addr))?;
        // Twice: the first fills regcache's cache, the second is warm.
        fetch_checked(&mut conn, target, object)?;
        fetch_checked(&mut conn, target, object)?;
    }

    pinning.client.pin_running(std::process::id(), false)?;
    let rounds = if options.quick { 1 } else { ROUNDS };
    let mut records = Vec::new();
    for (round, target) in (1..=rounds).flat_map(|r| targets.iter().map(move |t| (r, t))) {
        log(format!(
            "S9 round {round} of {rounds}: {CONNECTIONS} keep-alive connections, one manifest GET by tag per {PERIOD:?} each, {} s, against {}",
            duration.as_secs(),
            target.name
        ));
        for pid in &target.pids {
            procstat::reset_peak_rss(*pid);
        }
        let cpu =
            |pids: &[u32]| -> u64 { pids.iter().filter_map(|p| procstat::process_cpu(*p)).sum() };
        let server_before = cpu(&target.pids);
        let upstream_before = cpu(&[upstream.pid()]);
        let machine_before = procstat::machine_cpu();
        let req = get_request(target.addr, &object.path, &object.headers);
        let load = client::run(target.addr, &req, object.len, CONNECTIONS, PERIOD, duration)?;
        let server_ticks = cpu(&target.pids).saturating_sub(server_before);
        // Everything else the machine did meanwhile (other jobs): the noise.
        let ours = server_ticks
            + cpu(&[upstream.pid()]).saturating_sub(upstream_before)
            + load.client_cpu_ticks;
        let machine_after = procstat::machine_cpu();
        let other_ticks = machine_after
            .busy
            .saturating_sub(machine_before.busy)
            .saturating_sub(ours);
        let stolen_ticks = machine_after.steal.saturating_sub(machine_before.steal);
        let peak_rss: u64 = target
            .pids
            .iter()
            .filter_map(|p| procstat::peak_rss(*p))
            .sum();
        let wall = load.elapsed.as_secs_f64().max(1e-9);
        let record = ConnRecord {
            target: target.name,
            round,
            connections: CONNECTIONS,
            load,
            peak_rss,
            server_cores: server_ticks as f64 / TICKS_PER_SEC / wall,
            other_cores: other_ticks as f64 / TICKS_PER_SEC / wall,
            stolen: Duration::from_secs_f64(stolen_ticks as f64 / TICKS_PER_SEC),
        };
        log(format!("  {}", record.summary()));
        records.push(record);
        // Let the closed connections' sockets go before the next server.
        std::thread::sleep(Duration::from_secs(2));
    }

    Ok(ConnectionsReport {
        options: options.clone(),
        pinning: pinning.description.clone(),
        machine,
        loadavg_end: machine::loadavg(),
        date: machine::utc_now(),
        elapsed: started.elapsed(),
        duration,
        rounds,
        nofile,
        regcache: format!(
            "{} (`{}`){}",
            machine::first_line(&tools.regcache, &["--version"]),
            tools.regcache.display(),
            tools
                .regcache_stale
                .as_ref()
                .map(|s| format!("; warning: {s}"))
                .unwrap_or_default()
        ),
        commit,
        nginx: machine::first_line(&tools.nginx, &["-v"]),
        manifest_len: object.len,
        records,
        regcache_log: regcache.log(),
        nginx_log: nginx.error_log(),
    })
}

//! S8 cluster: warm blobs, 3 replicas × 16 clients vs 1 replica × 16
//! clients. Run alone, on request (`-- --cluster`; see `benches/load.rs`):
//! it needs moto and regcache's cluster mode, and it answers a different
//! question from S1-S7 (does spreading clients over replicas hold up?), not
//! regcache against a peer.
//!
//! On loopback: the upstream docker-registry with the same image set as
//! S1, moto as the S3 of `[shared]` (bucket created by an unsigned PUT), and
//! three regcache replicas with `[cluster]` (static `peers`, each its own
//! ports and data directory). Warm-up: replica 1 GETs every object of the
//! set, replicas 2 and 3 GET the blob once each (in cluster mode they should
//! get it from the cluster or the bucket, not the upstream: the upstream's
//! access log is split per replica to show it), then one more GET of the
//! blob on each must not reach the upstream. Then, in rounds with the order
//! alternated, S1's 16-client warm-blob load ([`super::blobload`]):
//!
//! * (a) all 16 connections to replica 1;
//! * (b) the 16 connections spread over the 3 replicas (6, 5, 5).
//!
//! The figure is the aggregate MiB/s of each, and (b)/(a). The replicas,
//! the upstream and moto are pinned to the servers' CPUs and the load
//! generator to the rest, as in S1-S7: on a small machine the three replicas
//! share the same CPUs, so (b) cannot gain there; it must not collapse.
//!
//! `--cluster-plain` runs the same with independent replicas (no
//! `[cluster]`, no `[shared]`; moto is started and its bucket created all
//! the same, unused): it checks the harness with a binary that has no
//! cluster mode, and never writes RESULTS.md.

mod launch;
pub mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::RngCore as _;
use regcache_tests::Registry;

use super::blobload;
use super::harness::{
    self, Options, SEED, Target, fetch_checked, log, plan_pinning, settle, summarize_upstream,
};
use super::http::{Conn, get_request};
use super::imageset::{BIG_BLOB_BYTES, ImageSet};
use super::machine::{self, Machine};
use super::procstat::{self, TICKS_PER_SEC};
use launch::{BUCKET, Mode, Moto, Replica};

pub use report::ClusterReport;

/// Replicas in case (b).
pub const REPLICAS: usize = 3;
/// Client connections in both cases (S1's larger figure).
pub const CLIENTS: usize = 16;

/// Which S8 to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMode {
    /// The real thing: `[cluster]` and `[shared]` on moto.
    Cluster,
    /// Independent replicas: checks the harness without cluster mode.
    Plain,
}

/// The two loads compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// (a) every connection to replica 1.
    OneReplica,
    /// (b) connections spread over every replica.
    Spread,
}

impl Case {
    pub fn label(self) -> String {
        match self {
            Case::OneReplica => format!("(a) 1 replica × {CLIENTS} clients"),
            Case::Spread => format!("(b) {REPLICAS} replicas, {CLIENTS} clients spread"),
        }
    }
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct ClusterRun {
    pub case: Case,
    pub round: usize,
    pub mib_per_sec: f64,
    pub completed: u64,
    pub median_blob: Option<Duration>,
    /// Body bytes from each replica the load used.
    pub bytes_per_replica: Vec<u64>,
    pub errors: Vec<String>,
    /// CPU, in cores: the load generator, all replicas together (idle ones
    /// included: cluster work counts wherever it runs), the upstream, moto,
    /// everything else on the machine.
    pub client_cores: f64,
    pub server_cores: f64,
    pub upstream_cores: f64,
    pub s3_cores: f64,
    pub other_cores: f64,
}

impl ClusterRun {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:.0} MiB/s ({} whole blobs; cores: client {:.2}, replicas {:.2}, upstream {:.2}, s3 {:.2}, other {:.2})",
            self.mib_per_sec,
            self.completed,
            self.client_cores,
            self.server_cores,
            self.upstream_cores,
            self.s3_cores,
            self.other_cores
        );
        if !self.errors.is_empty() {
            s.push_str(&format!(" ERRORS: {}", self.errors.join("; ")));
        }
        s
    }
}

/// What warming one replica took and caused upstream.
#[derive(Debug, Clone)]
pub struct ReplicaWarm {
    pub replica: usize,
    /// What it GET (every object, or the blob alone).
    pub fetched: String,
    /// The first GET of the blob.
    pub cold_blob: Duration,
    /// Upstream requests caused by its first GETs (grouped).
    pub upstream_cold: String,
    /// Upstream requests caused by its second GET of the blob.
    pub upstream_second: Vec<String>,
}

/// Runs S8; `Err` is a message for the user.
pub fn run(options: &Options, mode: ClusterMode) -> Result<ClusterReport, String> {
    let started = Instant::now();
    let (bin, stale) = match &options.regcache_bin {
        Some(bin) if bin.is_file() => (bin.clone(), None),
        Some(bin) => return Err(format!("--regcache-bin {}: no such file", bin.display())),
        None => harness::release_binary()?,
    };
    let moto_program = Moto::locate()?;
    if let Some(stale) = &stale {
        log(format!("warning: {stale}"));
    }
    let machine = Machine::probe();
    let commit =
        machine::git_commit(&harness::workspace_root()).unwrap_or_else(|| "unknown".into());
    let pinning = plan_pinning(options.pin)?;
    log(&pinning.description);

    log("S8: generating the image set and starting the upstream docker-registry");
    let set = ImageSet::generate(SEED, BIG_BLOB_BYTES);
    let upstream = harness::start_upstream(&set, &pinning.servers)?;

    log("S8: starting moto (S3) and creating the bucket");
    let moto = Moto::start(&moto_program, launch::free_addrs(1)?[0], &pinning.servers)?;
    moto.create_bucket(BUCKET)?;
    let launch_mode = match mode {
        ClusterMode::Cluster => {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            Mode::Cluster {
                s3_endpoint: moto.url(),
                secret: hex::encode(secret),
            }
        }
        ClusterMode::Plain => Mode::Plain,
    };
    log(format!(
        "S8: starting {REPLICAS} regcache replicas ({})",
        match mode {
            ClusterMode::Cluster => "[cluster] with static peers, [shared] on moto",
            ClusterMode::Plain => "plain: independent caches, no [cluster] or [shared]",
        }
    ));
    let replicas = launch::start_replicas(
        &bin,
        &upstream.url(),
        &pinning.servers,
        &launch_mode,
        REPLICAS,
    )?;

    let warm = warm_replicas(&replicas, &set, &upstream)?;

    pinning.client.pin_running(std::process::id(), false)?;
    let pids = Pids {
        replicas: replicas.iter().map(Replica::pid).collect(),
        upstream: upstream.pid(),
        s3: moto.pid(),
    };
    let mut runs = Vec::new();
    for round in 0..options.rounds {
        let order = if round % 2 == 0 {
            [Case::OneReplica, Case::Spread]
        } else {
            [Case::Spread, Case::OneReplica]
        };
        for case in order {
            log(format!(
                "S8 round {}/{}: {}",
                round + 1,
                options.rounds,
                case.label()
            ));
            let run = measure(case, &replicas, &set, options.duration, &pids, round);
            log(format!("  {}", run.summary()));
            runs.push(run);
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    Ok(ClusterReport {
        mode,
        options: options.clone(),
        pinning: pinning.description.clone(),
        machine,
        loadavg_end: machine::loadavg(),
        date: machine::utc_now(),
        elapsed: started.elapsed(),
        regcache: format!(
            "{} (`{}`){}",
            machine::first_line(&bin, &["--version"]),
            bin.display(),
            stale.map(|s| format!("; warning: {s}")).unwrap_or_default()
        ),
        commit,
        moto: moto_version(moto.program()),
        replica_config: replicas
            .first()
            .map(|r| r.config().to_owned())
            .unwrap_or_default(),
        replica_logs: replicas.iter().map(Replica::log).collect(),
        warm,
        runs,
    })
}

/// moto's version, from the virtualenv's python next to moto_server.
fn moto_version(program: &std::path::Path) -> String {
    let python = program
        .parent()
        .map(|bin| bin.join("python3"))
        .unwrap_or_else(|| PathBuf::from("python3"));
    format!(
        "moto {}",
        machine::first_line(&python, &["-c", "import moto; print(moto.__version__)"])
    )
}

fn target_of(i: usize, replica: &Replica) -> Target {
    Target {
        name: ["replica 1", "replica 2", "replica 3"]
            .get(i)
            .copied()
            .unwrap_or("replica"),
        addr: replica.addr(),
        pids: vec![replica.pid()],
        proxies: true,
    }
}

/// Replica 1 GETs every object, the others the blob alone, each body
/// checked against its digest; each replica's upstream requests are settled
/// before the next one starts. Then one more GET of the blob on each, which
/// must not reach the upstream.
fn warm_replicas(
    replicas: &[Replica],
    set: &ImageSet,
    upstream: &Registry,
) -> Result<Vec<ReplicaWarm>, String> {
    let mut warm = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        let target = target_of(i, replica);
        log(format!("S8: warming {}", target.name));
        let mut conn = Conn::connect(target.addr)
            .map_err(|e| format!("{}: cannot connect to {}: {e}", target.name, target.addr))?;
        let start = settle(upstream);
        let (objects, fetched) = if i == 0 {
            (set.objects().to_vec(), "every object of the set")
        } else {
            (vec![&set.blob], "the blob")
        };
        let mut cold_blob = Duration::ZERO;
        for object in objects {
            let t0 = Instant::now();
            fetch_checked(&mut conn, &target, object)?;
            if object.path == set.blob.path {
                cold_blob = t0.elapsed();
            }
        }
        let end = settle(upstream);
        warm.push(ReplicaWarm {
            replica: i + 1,
            fetched: fetched.to_owned(),
            cold_blob,
            upstream_cold: summarize_upstream(&upstream.access_entries()[start..end]),
            upstream_second: Vec::new(),
        });
    }
    // New connections: the first ones may have gone idle past the server's
    // keep-alive timeout while the others warmed.
    for (i, (record, replica)) in warm.iter_mut().zip(replicas).enumerate() {
        let target = target_of(i, replica);
        let mut conn = Conn::connect(target.addr)
            .map_err(|e| format!("{}: cannot connect to {}: {e}", target.name, target.addr))?;
        let start = settle(upstream);
        fetch_checked(&mut conn, &target, &set.blob)?;
        let end = settle(upstream);
        record.upstream_second = upstream.access_entries()[start..end]
            .iter()
            .map(|e| format!("{} {} → {}", e.method, e.path, e.status))
            .collect();
    }
    Ok(warm)
}

/// The processes whose CPU a run accounts for.
struct Pids {
    replicas: Vec<u32>,
    upstream: u32,
    s3: u32,
}

struct Snapshot {
    machine: procstat::MachineCpu,
    replicas: u64,
    upstream: u64,
    s3: u64,
    me: u64,
}

fn snapshot(pids: &Pids) -> Snapshot {
    let cpu = |pid: u32| procstat::process_cpu(pid).unwrap_or(0);
    Snapshot {
        machine: procstat::machine_cpu(),
        replicas: pids.replicas.iter().map(|p| cpu(*p)).sum(),
        upstream: cpu(pids.upstream),
        s3: cpu(pids.s3),
        me: cpu(std::process::id()),
    }
}

fn measure(
    case: Case,
    replicas: &[Replica],
    set: &ImageSet,
    duration: Duration,
    pids: &Pids,
    round: usize,
) -> ClusterRun {
    let used = match case {
        Case::OneReplica => &replicas[..1],
        Case::Spread => replicas,
    };
    let targets: Vec<(SocketAddr, Vec<u8>)> = used
        .iter()
        .map(|r| {
            (
                r.addr(),
                get_request(r.addr(), &set.blob.path, &set.blob.headers),
            )
        })
        .collect();
    let before = snapshot(pids);
    let t0 = Instant::now();
    let load = blobload::run_spread(&targets, set.blob.len, CLIENTS, duration);
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let after = snapshot(pids);
    let cores = |ticks: u64| ticks as f64 / TICKS_PER_SEC / wall;
    let replicas_ticks = after.replicas.saturating_sub(before.replicas);
    let upstream_ticks = after.upstream.saturating_sub(before.upstream);
    let s3_ticks = after.s3.saturating_sub(before.s3);
    let ours = replicas_ticks + upstream_ticks + s3_ticks + after.me.saturating_sub(before.me);
    let busy = after.machine.busy.saturating_sub(before.machine.busy);
    ClusterRun {
        case,
        round,
        mib_per_sec: load.mib_per_sec(),
        completed: load.completed,
        median_blob: load.blob_times.get(load.blob_times.len() / 2).copied(),
        bytes_per_replica: load.bytes_per_target.clone(),
        errors: load.errors.clone(),
        client_cores: cores(load.client_cpu_ticks),
        server_cores: cores(replicas_ticks),
        upstream_cores: cores(upstream_ticks),
        s3_cores: cores(s3_ticks),
        other_cores: cores(busy.saturating_sub(ours)),
    }
}

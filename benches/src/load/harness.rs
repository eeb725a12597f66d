//! The run itself: start everything, warm every cache the same way, measure
//! each scenario against each server, report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regcache_tests::tools::find_program;
use regcache_tests::{Registry, RegistryClient, RegistryOptions};
use sha2::Digest as _;

use super::blobload;
use super::cold;
use super::convert::{self, Conversion};
use super::http::{Conn, get_request};
use super::imageset::{BIG_BLOB_BYTES, ImageSet, Object, PULL_LAYER_FILES, PullImage};
use super::machine::{self, Machine};
use super::procstat::{self, TICKS_PER_SEC};
use super::pull::{self, Skopeo};
use super::report::{
    self, FanInRecord, PULL_DIRECT, PullRecord, PullReport, Report, RunRecord, TargetInfo,
    WarmRecord,
};
use super::servers::{Cpus, DistributionProxy, Nginx, NginxMode, RegcacheServer};
use super::wrk::{Wrk, WrkArgs};

/// Seed of the generated image set.
pub const SEED: u64 = 20_240_601;

/// How the harness was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Length of each measured run.
    pub duration: Duration,
    /// Every (scenario, server) pair is measured this many times, servers
    /// in a rotated order each round; the best run is reported. S4 pulls
    /// this many fresh images through each proxy.
    pub rounds: usize,
    pub quick: bool,
    /// Write `benches/RESULTS.md`.
    pub write_results: bool,
    /// Pin the servers to the first half of the CPUs and the load
    /// generator to the other half (`taskset`), so the generator cannot
    /// take the servers' CPU and its own headroom is visible.
    pub pin: bool,
    /// Measure this regcache binary instead of `target/release/regcache`
    /// (e.g. one built from another commit).
    pub regcache_bin: Option<PathBuf>,
    /// `--paired` only: another regcache build measured in the same rounds
    /// as "regcache (baseline)" (say, of the commit an issue started from).
    pub baseline_bin: Option<PathBuf>,
    /// Measure only these servers (`SERVER_NAMES`); all of them when `None`.
    pub servers: Option<Vec<String>>,
    /// Extra passes over the pairs whose best run was noisy.
    pub max_retries: usize,
    /// Retries stop when the whole run would exceed this.
    pub budget: Duration,
    /// The arguments after `--`, for the reproduce command.
    pub shown_args: Vec<String>,
    /// Run S8 alone instead of S1-S7 (`--cluster`, `--cluster-plain`).
    pub cluster: Option<super::cluster::ClusterMode>,
    /// Run the TLS scenarios alone instead of S1-S7 (`--tls`).
    pub tls: bool,
    /// Run one other scenario alone (`--fanin`, `--connections`, `--paired`).
    pub alone: Option<Alone>,
}

/// Scenarios that run alone, each writing only its own section of
/// RESULTS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alone {
    /// S3, cold fan-in then warm ([`super::fanin`]).
    FanIn,
    /// S9, 10,000 keep-alive connections ([`super::connections`]).
    Connections,
    /// S2 in many short rounds, per-round ratios ([`super::paired`]).
    Paired,
}

/// A run during which everything else on the machine used more than this
/// many cores is "noisy" and its pair is retried (time permitting).
pub const NOISY_CORES: f64 = 0.25;

impl Options {
    /// `base` (a command that runs a scenario alone) followed by the flags
    /// this run was given: the command that reproduces it.
    pub fn command_line(&self, base: &str) -> String {
        let mut cmd = base.to_owned();
        for arg in &self.shown_args {
            cmd.push(' ');
            cmd.push_str(arg);
        }
        cmd
    }

    pub fn full() -> Options {
        Options {
            duration: Duration::from_secs(5),
            rounds: 2,
            quick: false,
            write_results: true,
            pin: true,
            regcache_bin: None,
            baseline_bin: None,
            servers: None,
            max_retries: 2,
            budget: Duration::from_secs(290),
            shown_args: Vec::new(),
            cluster: None,
            tls: false,
            alone: None,
        }
    }

    pub fn quick() -> Options {
        Options {
            duration: Duration::from_secs(2),
            rounds: 1,
            quick: true,
            write_results: false,
            pin: true,
            regcache_bin: None,
            baseline_bin: None,
            servers: None,
            max_retries: 0,
            budget: Duration::from_secs(120),
            shown_args: vec!["--quick".into()],
            cluster: None,
            tls: false,
            alone: None,
        }
    }
}

/// The scenarios, in run order within a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// S1: warm 100 MiB blob GET with `clients` concurrent clients.
    Blob { clients: usize },
    /// S2: warm manifest GET over 64 connections, by tag or by digest.
    Manifest { by_digest: bool },
}

pub const S2_CONNECTIONS: usize = 64;

/// S3: concurrent clients of the cold blob.
pub const S3_CLIENTS: usize = 100;

/// S4: the proxying servers, in the order their images are numbered (so a
/// server pulls the same image whatever `--servers` selects).
pub const PULL_SERVERS: [&str; 3] = ["regcache", "docker-registry proxy", "nginx proxy_cache"];

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Blob { clients: 1 },
        Scenario::Blob { clients: 16 },
        Scenario::Manifest { by_digest: false },
        Scenario::Manifest { by_digest: true },
    ];

    pub fn label(self) -> String {
        match self {
            Scenario::Blob { clients: 1 } => "S1 blob 100 MiB, 1 client".into(),
            Scenario::Blob { clients } => format!("S1 blob 100 MiB, {clients} clients"),
            Scenario::Manifest { by_digest: false } => {
                format!("S2 manifest by tag, {S2_CONNECTIONS} conns")
            }
            Scenario::Manifest { by_digest: true } => {
                format!("S2 manifest by digest, {S2_CONNECTIONS} conns")
            }
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Blob { .. } => "MiB/s",
            Scenario::Manifest { .. } => "req/s",
        }
    }

    pub fn is_blob(self) -> bool {
        matches!(self, Scenario::Blob { .. })
    }
}

/// A server under test, as the measuring code sees it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Every process of it (nginx: master and workers).
    pub pids: Vec<u32>,
    /// Whether it talks to the upstream (nginx static does not).
    pub proxies: bool,
}

/// The names `--servers` takes.
pub const SERVER_NAMES: [&str; 4] = ["regcache", "distribution", "nginx-cache", "nginx-static"];

/// `--servers` name of a target.
pub fn short_name(name: &str) -> &'static str {
    match name {
        "regcache" => "regcache",
        "docker-registry proxy" => "distribution",
        "nginx proxy_cache" => "nginx-cache",
        _ => "nginx-static",
    }
}

/// Everything a run needs: external programs and the regcache binary.
#[derive(Debug)]
pub struct Tools {
    pub nginx: PathBuf,
    pub wrk: PathBuf,
    pub registry: PathBuf,
    pub skopeo: PathBuf,
    pub regcache: PathBuf,
    /// Set when a source file is newer than `regcache`.
    pub regcache_stale: Option<String>,
}

/// The workspace root (this crate is `benches/` in it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Finds nginx, wrk, docker-registry, skopeo and `target/release/regcache`;
/// every missing piece is reported with the command that provides it.
pub fn locate_tools(regcache_bin: Option<&Path>) -> Result<Tools, String> {
    let regcache = match regcache_bin {
        Some(bin) if bin.is_file() => Ok((bin.to_path_buf(), None)),
        Some(bin) => Err(format!("--regcache-bin {}: no such file", bin.display())),
        None => release_binary(),
    };
    locate_tools_with(find_program, regcache)
}

fn locate_tools_with(
    find_program: impl Fn(&str) -> Option<PathBuf>,
    regcache: Result<(PathBuf, Option<String>), String>,
) -> Result<Tools, String> {
    let mut problems = Vec::new();
    let mut find = |program: &str, package: &str| {
        find_program(program).unwrap_or_else(|| {
            problems.push(format!(
                "`{program}` is not installed: install it with `sudo apt-get install -y {package}`"
            ));
            PathBuf::new()
        })
    };
    let nginx = find("nginx", "nginx");
    let wrk = find("wrk", "wrk");
    let registry = find("docker-registry", "docker-registry");
    let skopeo = find("skopeo", "skopeo");
    if let Err(e) = &regcache {
        problems.push(e.clone());
    }
    if !problems.is_empty() {
        return Err(format!(
            "the load harness cannot run:\n  - {}\n(all at once: `sudo apt-get install -y nginx wrk docker-registry skopeo && cargo build --release -p regcache-server`)",
            problems.join("\n  - ")
        ));
    }
    let (regcache, regcache_stale) = regcache.unwrap_or_default();
    Ok(Tools {
        nginx,
        wrk,
        registry,
        skopeo,
        regcache,
        regcache_stale,
    })
}

/// `target/release/regcache` next to this bench executable
/// (`target/release/deps/load-…`); `Err` when missing. With it, a warning
/// when a server source file is newer than the binary (the figures are then
/// for the binary as built, which the report says).
pub(super) fn release_binary() -> Result<(PathBuf, Option<String>), String> {
    let build = "build it with `cargo build --release -p regcache-server`";
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("regcache");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .map_err(|_| format!("{} is missing: {build}", bin.display()))?;
    let root = workspace_root();
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for dir in ["crates", "Cargo.lock", "Cargo.toml"] {
        newest_file(&root.join(dir), &mut newest);
    }
    let stale = newest
        .filter(|(modified, _)| *modified > built)
        .map(|(_, path)| {
            format!(
                "{} is older than {} (re{build} to measure the current sources)",
                bin.display(),
                path.strip_prefix(&root).unwrap_or(&path).display()
            )
        });
    Ok((bin, stale))
}

/// The most recently modified `.rs`/`.toml`/`.lock` file under `path`.
fn newest_file(path: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if path
            .file_name()
            .is_some_and(|n| n == "target" || n == "tests")
        {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                newest_file(&entry.path(), newest);
            }
        }
        return;
    }
    let relevant = path
        .extension()
        .is_some_and(|e| e == "rs" || e == "toml" || e == "lock");
    if let (true, Ok(modified)) = (relevant, meta.modified())
        && newest.as_ref().is_none_or(|(t, _)| modified > *t)
    {
        *newest = Some((modified, path.to_path_buf()));
    }
}

/// Which CPUs the servers and the load generator get.
#[derive(Debug, Clone, Default)]
pub struct Pinning {
    pub servers: Cpus,
    pub client: Cpus,
    /// How many CPUs the client has (wrk threads, the check).
    pub client_cpus: usize,
    /// For the report, e.g. `servers on CPU 0, load generator on CPU 1`.
    pub description: String,
}

/// The CPUs this process may run on (`Cpus_allowed_list`), in order.
fn allowed_cpus() -> Vec<u32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim();
    parse_cpu_list(list)
}

fn parse_cpu_list(list: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.trim().parse::<u32>().ok()),
        }
    }
    cpus
}

fn cpu_list(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Servers on the first half of the allowed CPUs, the generator on the
/// rest; no pinning when asked not to or with a single CPU.
pub(super) fn plan_pinning(pin: bool) -> Result<Pinning, String> {
    let cpus = allowed_cpus();
    let total = cpus.len().max(1);
    if !pin || cpus.len() < 2 {
        return Ok(Pinning {
            client_cpus: total,
            description: "not pinned: servers and load generator share all CPUs".into(),
            ..Pinning::default()
        });
    }
    let taskset = find_program("taskset").ok_or(
        "`taskset` is not installed: install it with `sudo apt-get install -y util-linux` (or pass --no-pin)",
    )?;
    let (servers, client) = cpus.split_at(cpus.len() / 2);
    let (servers, client) = (cpu_list(servers), cpu_list(client));
    let plural = |list: &str| if list.contains(',') { "CPUs" } else { "CPU" };
    Ok(Pinning {
        description: format!(
            "servers and upstream pinned to {} {servers}, load generator to {} {client} (`taskset`)",
            plural(&servers),
            plural(&client)
        ),
        servers: Cpus {
            pin: Some((taskset.clone(), servers)),
        },
        client: Cpus {
            pin: Some((taskset, client)),
        },
        client_cpus: cpus.len() - cpus.len() / 2,
    })
}

/// What a scenario runner finds before it starts anything: its tools, the
/// machine, the workspace commit and its CPU plan.
pub(super) struct Prelude {
    pub tools: Tools,
    pub machine: Machine,
    pub commit: String,
    pub pinning: Pinning,
}

/// The [`Prelude`] of a run with `options`, logging the CPU plan and a
/// regcache binary older than its sources.
pub(super) fn prelude(options: &Options) -> Result<Prelude, String> {
    let tools = locate_tools(options.regcache_bin.as_deref())?;
    let machine = Machine::probe();
    // Read now, next to the binary check: other work may commit meanwhile.
    let commit = machine::git_commit(&workspace_root()).unwrap_or_else(|| "unknown".into());
    if let Some(stale) = &tools.regcache_stale {
        log(format!("warning: {stale}"));
    }
    let pinning = plan_pinning(options.pin)?;
    log(&pinning.description);
    Ok(Prelude {
        tools,
        machine,
        commit,
        pinning,
    })
}

/// The upstream every scenario runs against: the real docker-registry on a
/// loopback port, pinned to the servers' CPUs, with `set` pushed to it.
pub(super) fn start_upstream(set: &ImageSet, cpus: &Cpus) -> Result<Registry, String> {
    let upstream = Registry::start(RegistryOptions::default());
    cpus.pin_running(upstream.pid(), true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    rt.block_on(set.push(&RegistryClient::new(upstream.url())));
    Ok(upstream)
}

/// nginx serving `set`'s objects as files at their URL paths (`sendfile
/// on`), from a temporary directory that lives as long as the returned one.
pub(super) fn start_nginx_static(
    nginx: &Path,
    set: &ImageSet,
    cpus: &Cpus,
) -> Result<(Nginx, tempfile::TempDir), String> {
    let www = tempfile::Builder::new()
        .prefix("regcache-load-www-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    set.write_static_tree(www.path())
        .map_err(|e| format!("cannot write the static tree: {e}"))?;
    let server = Nginx::start(
        nginx,
        &NginxMode::Static {
            root: www.path().to_path_buf(),
        },
        cpus,
    )?;
    Ok((server, www))
}

pub(super) fn log(msg: impl AsRef<str>) {
    eprintln!("[load] {}", msg.as_ref());
}

/// Runs everything; `Err` is a message for the user (exit status 1).
pub fn run(options: &Options) -> Result<Report, String> {
    let tools = locate_tools(options.regcache_bin.as_deref())?;
    let started = Instant::now();
    let machine = Machine::probe();
    // Read now, next to the binary check: other work may commit meanwhile.
    let commit = machine::git_commit(&workspace_root()).unwrap_or_else(|| "unknown".into());
    if let Some(stale) = &tools.regcache_stale {
        log(format!("warning: {stale}"));
    }
    log(format!(
        "{} cores ({}), {:.1} GiB RAM, load average {}",
        machine.cores, machine.cpu_model, machine.mem_total_gib, machine.loadavg
    ));
    if machine::load1() > machine.cores as f64 * 0.5 {
        log(format!(
            "the machine is busy (1-minute load {} on {} cores): figures will be noisy",
            machine::load1(),
            machine.cores
        ));
    }

    let pinning = plan_pinning(options.pin)?;
    log(&pinning.description);

    // The upstream and its image set.
    log("generating the image set and starting the upstream docker-registry");
    let set = ImageSet::generate(SEED, BIG_BLOB_BYTES);
    let upstream = start_upstream(&set, &pinning.servers)?;

    // The servers under test.
    log("starting regcache, docker-registry (proxy), nginx proxy_cache, nginx static");
    let cpus = &pinning.servers;
    let regcache = RegcacheServer::start(&tools.regcache, &upstream.url(), cpus)?;
    let distribution = DistributionProxy::start(&tools.registry, &upstream.url(), cpus)?;
    let nginx_cache = Nginx::start(
        &tools.nginx,
        &NginxMode::ProxyCache {
            upstream: upstream.addr(),
        },
        cpus,
    )?;
    let (nginx_static, _www) = start_nginx_static(&tools.nginx, &set, cpus)?;
    let targets = vec![
        Target {
            name: "regcache",
            addr: regcache.addr(),
            pids: vec![regcache.pid()],
            proxies: true,
        },
        Target {
            name: "docker-registry proxy",
            addr: distribution.addr(),
            pids: vec![distribution.pid()],
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

    let targets: Vec<Target> = targets
        .into_iter()
        .filter(|t| {
            options
                .servers
                .as_ref()
                .is_none_or(|only| only.iter().any(|o| o == short_name(t.name)))
        })
        .collect();

    // Warm every cache identically and check the second GET.
    let mut warm = Vec::new();
    for target in &targets {
        log(format!("warming {}", target.name));
        warm.push(warm_target(target, &set, &upstream)?);
    }
    let metrics_after_warm = regcache.metrics();

    // Measure. From here on this thread, the client threads it starts and
    // wrk run on the client's CPUs.
    pinning.client.pin_running(std::process::id(), false)?;
    let wrk = Wrk::new(tools.wrk.clone());
    let all_pids: Vec<u32> = targets
        .iter()
        .flat_map(|t| t.pids.iter().copied())
        .chain([upstream.pid()])
        .collect();
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut peak_rss_s1 = vec![0u64; targets.len()];
    for round in 0..options.rounds {
        let order: Vec<usize> = (0..targets.len())
            .map(|i| (i + round) % targets.len())
            .collect();
        for t in &targets {
            for pid in &t.pids {
                procstat::reset_peak_rss(*pid);
            }
        }
        for scenario in Scenario::ALL {
            if scenario == (Scenario::Manifest { by_digest: false }) {
                // S1 is over for this round: record peak RSS since the reset.
                for (i, t) in targets.iter().enumerate() {
                    let rss: u64 = t.pids.iter().filter_map(|p| procstat::peak_rss(*p)).sum();
                    peak_rss_s1[i] = peak_rss_s1[i].max(rss);
                }
            }
            for &i in &order {
                let target = &targets[i];
                log(format!(
                    "round {}/{}: {} against {}",
                    round + 1,
                    options.rounds,
                    scenario.label(),
                    target.name
                ));
                let record = measure(
                    target,
                    scenario,
                    &set,
                    &wrk,
                    pinning.client_cpus,
                    options.duration,
                    upstream.pid(),
                    &all_pids,
                    round,
                )?;
                log(format!("  {}", record.summary()));
                runs.push(record);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    // Retries: a pair whose best run shared the machine with other work
    // (see `NOISY_CORES`) runs again while the time budget allows.
    let mut retries = 0;
    'retry: for _ in 0..options.max_retries {
        for scenario in Scenario::ALL {
            for target in &targets {
                let best_other = runs
                    .iter()
                    .filter(|r| r.scenario == scenario && r.target == target.name)
                    .max_by(|a, b| a.value.total_cmp(&b.value))
                    .map_or(0.0, |r| r.other_cores);
                if best_other <= NOISY_CORES {
                    continue;
                }
                if started.elapsed() + options.duration + Duration::from_secs(2) > options.budget {
                    break 'retry;
                }
                log(format!(
                    "retry (best run had {best_other:.2} other cores): {} against {}",
                    scenario.label(),
                    target.name
                ));
                let record = measure(
                    target,
                    scenario,
                    &set,
                    &wrk,
                    pinning.client_cpus,
                    options.duration,
                    upstream.pid(),
                    &all_pids,
                    options.rounds,
                )?;
                log(format!("  {}", record.summary()));
                runs.push(record);
                retries += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    let metrics_end = regcache.metrics();

    // S6 and S7: by-tag GETs that regcache answers with a conversion
    // (Schema 1 for no Accept; the Docker twin of an OCI image for Docker 17).
    let mut conversions = Vec::new();
    for conversion in Conversion::ALL {
        for target in targets
            .iter()
            .filter(|t| convert::SERVERS.contains(&t.name))
        {
            log(format!("{} against {}", conversion.label(), target.name));
            let record = convert::measure(
                conversion,
                target,
                &all_pids,
                &set,
                &wrk,
                pinning.client_cpus,
                options.duration,
                options.rounds,
            )?;
            log(format!("  {}", record.summary()));
            conversions.push(record);
        }
    }

    // S3: cold fan-in, a blob no warm-up touched, a different one per server.
    let direct_ttlb = {
        let blob = &set.cold_blobs[0];
        let req = get_request(upstream.addr(), &blob.path, &blob.headers);
        cold::single(upstream.addr(), &req, blob.len)
    };
    log(format!(
        "S3 reference: direct GET from the upstream {direct_ttlb:?}"
    ));
    let fan_in: Vec<FanInRecord> = targets
        .iter()
        .filter(|t| t.proxies)
        .zip(&set.cold_blobs)
        .map(|(target, blob)| super::fanin::measure(target, blob, &upstream, 0))
        .collect();

    // S4: a cold pull of a whole image with skopeo, through each proxy and
    // straight from the upstream.
    let pull = measure_pulls(
        &Skopeo {
            program: tools.skopeo.clone(),
        },
        &targets,
        &upstream,
        &pinning.client,
        &all_pids,
        options.rounds,
    )?;

    let report = Report {
        options: options.clone(),
        retries,
        pinning: pinning.description.clone(),
        client_cpus: pinning.client_cpus,
        pinned: pinning.client.pin.is_some(),
        server_cpus: pinning.servers.count().unwrap_or(pinning.client_cpus),
        machine,
        loadavg_end: machine::loadavg(),
        date: machine::utc_now(),
        elapsed: started.elapsed(),
        versions: vec![
            (
                "regcache".into(),
                format!(
                    "{} (`{}`){}",
                    machine::first_line(&tools.regcache, &["--version"]),
                    tools.regcache.display(),
                    tools
                        .regcache_stale
                        .as_ref()
                        .map(|s| format!("; warning: {s}"))
                        .unwrap_or_default()
                ),
            ),
            (
                if options.regcache_bin.is_some() {
                    "workspace commit (not necessarily the binary's: --regcache-bin)".into()
                } else {
                    "regcache commit".into()
                },
                commit,
            ),
            (
                "docker-registry".into(),
                machine::first_line(&tools.registry, &["--version"]),
            ),
            ("nginx".into(), machine::first_line(&tools.nginx, &["-v"])),
            ("wrk".into(), machine::first_line(&tools.wrk, &["-v"])),
            (
                "skopeo".into(),
                machine::first_line(&tools.skopeo, &["--version"]),
            ),
        ],
        targets: targets
            .iter()
            .zip(&peak_rss_s1)
            .map(|(t, rss)| TargetInfo {
                name: t.name,
                peak_rss_s1: *rss,
            })
            .collect(),
        warm,
        runs,
        regcache_metrics_delta: report::metrics_delta(&metrics_after_warm, &metrics_end),
        regcache_log: regcache.log(),
        distribution_log: distribution.log(),
        nginx_logs: format!("{}{}", nginx_cache.error_log(), nginx_static.error_log()),
        distribution_config: distribution.config().to_owned(),
        nginx_cache_conf: nginx_cache.conf().to_owned(),
        nginx_static_conf: nginx_static.conf().to_owned(),
        fan_in,
        direct_ttlb,
        conversions,
        oci_manifest: set.oci_by_tag.clone(),
        pull,
    };
    Ok(report)
}

/// The seed of S4's image number `slot` (0: the direct reference; then
/// one per round and `PULL_SERVERS` entry).
fn pull_seed(slot: usize) -> u64 {
    SEED ^ 0x5400_0000 ^ slot as u64
}

/// S4: pushes one fresh `bench/pull` image per (proxying target, round)
/// and one for the reference, then in each round copies the reference
/// straight from the upstream and each target's image through it (targets
/// in a rotated order), plus one last direct copy: `rounds + 1` direct
/// copies in all, interleaved with the proxies'. Each copy is checked
/// against the pushed digests and followed by a settled upstream access
/// log, whose new lines are what that copy caused. `Err` only when the
/// run itself cannot go on (no runtime, no scratch directory); a failed
/// copy is recorded in its [`PullRecord`].
fn measure_pulls(
    skopeo: &Skopeo,
    targets: &[Target],
    upstream: &Registry,
    client_cpus: &super::servers::Cpus,
    all_pids: &[u32],
    rounds: usize,
) -> Result<PullReport, String> {
    let proxies: Vec<(usize, &Target)> = targets
        .iter()
        .filter(|t| t.proxies)
        .filter_map(|t| Some((PULL_SERVERS.iter().position(|n| *n == t.name)?, t)))
        .collect();
    // (tag, image number): the reference, then round by round.
    let mut slots = vec![("direct".to_owned(), 0)];
    for round in 0..rounds {
        for (slot, target) in &proxies {
            slots.push((
                format!("{}-r{}", short_name(target.name), round + 1),
                1 + round * PULL_SERVERS.len() + slot,
            ));
        }
    }
    let image_mib = PULL_LAYER_FILES.iter().sum::<usize>() as f64 / (1u64 << 20) as f64;
    log(format!(
        "S4: generating and pushing {} images of {} layers (~{image_mib:.0} MiB each)",
        slots.len(),
        PULL_LAYER_FILES.len()
    ));
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let registry = RegistryClient::new(upstream.url());
    // A thread generates the next image while this one pushes the last
    // (the upstream stores it on the servers' CPUs); the channel holds one,
    // so at most three images are in memory at once.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let mut generating = Duration::ZERO;
    let pushed: Vec<PullImage> = std::thread::scope(|scope| {
        scope.spawn(move || {
            for (tag, slot) in slots {
                let t = Instant::now();
                let image = PullImage::generate(pull_seed(slot));
                if tx.send((tag, image, t.elapsed())).is_err() {
                    break;
                }
            }
        });
        rx.iter()
            .map(|(tag, image, took)| {
                generating += took;
                rt.block_on(PullImage::push(&registry, &tag, &image))
            })
            .collect()
    });
    drop(rt);
    let push_time = t0.elapsed();
    log(format!(
        "  done in {:.1} s (generating took {:.1} s of it, alongside the pushes)",
        push_time.as_secs_f64(),
        generating.as_secs_f64()
    ));
    let mut pushed = pushed.into_iter();
    let direct_image = pushed
        .next()
        .ok_or("S4: the reference image was not pushed")?;
    let images: Vec<Vec<PullImage>> = (0..rounds)
        .map(|_| pushed.by_ref().take(proxies.len()).collect())
        .collect();

    let scratch = tempfile::Builder::new()
        .prefix("regcache-load-s4-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let direct = Target {
        name: PULL_DIRECT,
        addr: upstream.addr(),
        pids: vec![upstream.pid()],
        proxies: false,
    };
    settle(upstream);
    let mut puller = Puller {
        skopeo,
        cpus: client_cpus,
        upstream,
        all_pids,
        scratch: scratch.path(),
        seen: upstream.access_entries().len(),
        copies: 0,
    };
    let mut runs = Vec::new();
    for (round, row) in images.iter().enumerate() {
        runs.push(puller.pull(&direct, &direct_image, round));
        for k in 0..row.len() {
            let i = (k + round) % row.len();
            runs.push(puller.pull(proxies[i].1, &row[i], round));
        }
    }
    runs.push(puller.pull(&direct, &direct_image, rounds));
    Ok(PullReport {
        skopeo_version: machine::first_line(&skopeo.program, &["--version"]),
        layer_bytes: direct_image.layers.iter().map(|l| l.len).collect(),
        image_bytes: direct_image.blob_bytes(),
        push_time,
        client_pinning: match &client_cpus.pin {
            Some((_, list)) => format!("skopeo pinned to CPU(s) {list} with `taskset -c {list}`"),
            None => "skopeo not pinned".to_owned(),
        },
        rounds,
        runs,
    })
}

/// S4's copies, one after another, and where the upstream's access log was.
struct Puller<'a> {
    skopeo: &'a Skopeo,
    cpus: &'a super::servers::Cpus,
    upstream: &'a Registry,
    /// Every server's processes and the upstream (for the "other" CPU).
    all_pids: &'a [u32],
    scratch: &'a Path,
    /// Access-log lines of the upstream already accounted for.
    seen: usize,
    /// Copies so far (names the destination directories).
    copies: usize,
}

impl Puller<'_> {
    /// One timed copy of `image` through `target`, then its check; the
    /// upstream's access log is settled afterwards (a proxy may still be
    /// storing what it streamed), and the server and upstream CPU counted
    /// up to then. The rest of the machine's CPU ("other") is counted over
    /// the copy alone.
    fn pull(&mut self, target: &Target, image: &PullImage, round: usize) -> PullRecord {
        log(format!(
            "S4 cold image pull ({}:{}) from {}",
            image.repo, image.tag, target.name
        ));
        let upstream_pid = self.upstream.pid();
        let is_direct = target.pids == [upstream_pid];
        self.copies += 1;
        let dest = self.scratch.join(format!("{}-{}", self.copies, image.tag));
        let before = snapshot(target, upstream_pid, self.all_pids);
        let copy = self.skopeo.copy(self.cpus, target.addr, image, &dest);
        let end_of_copy = snapshot(target, upstream_pid, self.all_pids);
        let result = copy.result.and_then(|()| pull::verify_dir(&dest, image));
        let _ = std::fs::remove_dir_all(&dest);
        settle(self.upstream);
        let after = snapshot(target, upstream_pid, self.all_pids);
        let entries = self.upstream.access_entries();
        let window = entries.get(self.seen..).unwrap_or_default();
        self.seen = entries.len();
        let secs = |ticks: u64| ticks as f64 / TICKS_PER_SEC;
        let ours = end_of_copy.ours.saturating_sub(before.ours)
            + end_of_copy.me.saturating_sub(before.me)
            + copy.client_cpu_ticks;
        let busy = end_of_copy.machine.busy.saturating_sub(before.machine.busy);
        let record = PullRecord {
            target: target.name,
            round,
            tag: image.tag.clone(),
            wall: copy.wall,
            client_cpu_secs: secs(copy.client_cpu_ticks),
            server_cpu_secs: secs(after.target.saturating_sub(before.target)),
            upstream_cpu_secs: (!is_direct)
                .then(|| secs(after.upstream.saturating_sub(before.upstream))),
            other_cores: secs(busy.saturating_sub(ours)) / copy.wall.as_secs_f64().max(1e-9),
            upstream_requests: summarize_upstream(window),
            upstream_bytes: window.iter().map(|e| e.bytes).sum(),
            image_bytes: image.blob_bytes(),
            error: result.err(),
            command: copy.command,
        };
        log(format!("  {}", record.summary()));
        record
    }
}

/// Warms `target`: one full GET of each object (timed: the cold fill), then
/// waits for the upstream's access log to settle (a proxy may still be
/// storing what it streamed), then a second GET of each, which must not
/// reach the upstream (where the target has one). Every body is hashed and
/// compared with its digest.
pub(super) fn warm_target(
    target: &Target,
    set: &ImageSet,
    upstream: &Registry,
) -> Result<WarmRecord, String> {
    let mut conn = Conn::connect(target.addr)
        .map_err(|e| format!("{}: cannot connect to {}: {e}", target.name, target.addr))?;
    let mut cold = Vec::new();
    let seen_start = upstream.access_entries().len();
    for object in set.objects() {
        let t0 = Instant::now();
        fetch_checked(&mut conn, target, object)?;
        cold.push((object.label, t0.elapsed()));
    }
    let seen_before = settle(upstream);
    let upstream_cold = summarize_upstream(&upstream.access_entries()[seen_start..seen_before]);
    let mut cache_status = Vec::new();
    for object in set.objects() {
        let head = fetch_checked(&mut conn, target, object)?;
        if let Some(s) = head.header("x-cache-status") {
            cache_status.push(format!("{}: {s}", object.label));
        }
    }
    let seen_after = settle(upstream);
    let upstream_second: Vec<String> = upstream.access_entries()[seen_before..seen_after]
        .iter()
        .map(|e| format!("{} {} → {}", e.method, e.path, e.status))
        .collect();
    Ok(WarmRecord {
        target: target.name,
        proxies: target.proxies,
        cold,
        upstream_on_cold_gets: upstream_cold,
        upstream_on_second_get: upstream_second,
        cache_status,
        peak_rss_warm: target
            .pids
            .iter()
            .filter_map(|p| procstat::peak_rss(*p))
            .sum::<u64>(),
    })
}

/// Waits until the upstream's access log has not grown for 1 s (at most
/// 30 s: the registry logs a request only once it has answered it, and a
/// proxy may still be fetching); returns its length.
pub(super) fn settle(upstream: &Registry) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut len = upstream.access_entries().len();
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = upstream.access_entries().len();
        if now != len {
            len = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    len
}

/// `GET /v2/ ×2, HEAD manifest ×1, GET blob ×2 (100 MiB)`: what a cold
/// fill asked of the upstream, grouped.
pub(super) fn summarize_upstream(entries: &[regcache_tests::AccessLogEntry]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for e in entries {
        let kind = if e.path == "/v2/" {
            "/v2/"
        } else if e.path.contains("/manifests/") {
            "manifest"
        } else if e.path.contains("/blobs/") {
            "blob"
        } else {
            "other"
        };
        let key = format!("{} {kind}", e.method);
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One GET of `object`, which must be a 200 whose body hashes to its
/// digest (and, where the server says, with the right
/// `Docker-Content-Digest`).
pub(super) fn fetch_checked<S: std::io::Read + std::io::Write>(
    conn: &mut Conn<S>,
    target: &Target,
    object: &Object,
) -> Result<super::http::Head, String> {
    let req = get_request(target.addr, &object.path, &object.headers);
    let (head, body) = conn
        .get(&req)
        .map_err(|e| format!("{}: GET {}: {e}", target.name, object.path))?;
    if head.status != 200 {
        return Err(format!(
            "{}: GET {} answered {} {:?}: {}",
            target.name,
            object.path,
            head.status,
            head.headers,
            String::from_utf8_lossy(&body[..body.len().min(500)])
        ));
    }
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
    if digest != object.digest {
        return Err(format!(
            "{}: GET {} returned {} bytes hashing to {digest}, expected {} ({} bytes)",
            target.name,
            object.path,
            body.len(),
            object.digest,
            object.len
        ));
    }
    if let Some(d) = head.header("docker-content-digest")
        && d != object.digest
    {
        return Err(format!(
            "{}: GET {} has Docker-Content-Digest {d}, expected {}",
            target.name, object.path, object.digest
        ));
    }
    Ok(head)
}

/// CPU counters around one run.
struct CpuSnapshot {
    machine: procstat::MachineCpu,
    target: u64,
    upstream: u64,
    ours: u64,
    me: u64,
}

fn snapshot(target: &Target, upstream_pid: u32, all_pids: &[u32]) -> CpuSnapshot {
    let sum = |pids: &[u32]| pids.iter().filter_map(|p| procstat::process_cpu(*p)).sum();
    CpuSnapshot {
        machine: procstat::machine_cpu(),
        target: sum(&target.pids),
        upstream: procstat::process_cpu(upstream_pid).unwrap_or(0),
        ours: sum(all_pids),
        me: procstat::process_cpu(std::process::id()).unwrap_or(0),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn measure(
    target: &Target,
    scenario: Scenario,
    set: &ImageSet,
    wrk: &Wrk,
    client_cpus: usize,
    duration: Duration,
    upstream_pid: u32,
    all_pids: &[u32],
    round: usize,
) -> Result<RunRecord, String> {
    let before = snapshot(target, upstream_pid, all_pids);
    let t0 = Instant::now();
    let mut record = RunRecord::new(scenario, target.name, round);
    let client_ticks;
    let mut wrk_ticks = 0;
    match scenario {
        Scenario::Blob { clients } => {
            let req = get_request(target.addr, &set.blob.path, &set.blob.headers);
            let load = blobload::run(target.addr, &req, set.blob.len, clients, duration);
            record.value = load.mib_per_sec();
            record.detail = format!("{} whole blobs", load.completed);
            if let Some(median) = load.blob_times.get(load.blob_times.len() / 2) {
                record.detail.push_str(&format!(
                    ", median {:.0} ms each",
                    median.as_secs_f64() * 1e3
                ));
            }
            record.errors = load.errors;
            record.wall = load.elapsed;
            client_ticks = load.client_cpu_ticks;
            record.command = format!(
                "built-in blob client: {clients} thread(s), one keep-alive connection each, GET {} for {}s",
                set.blob.path,
                duration.as_secs()
            );
        }
        Scenario::Manifest { by_digest } => {
            let object = if by_digest {
                &set.manifest_by_digest
            } else {
                &set.manifest_by_tag
            };
            let url = format!("http://{}{}", target.addr, object.path);
            let threads = client_cpus.clamp(1, 4);
            let run = wrk.run(&WrkArgs {
                url: &url,
                threads,
                connections: S2_CONNECTIONS,
                duration,
                headers: &object.headers,
            })?;
            record.value = run.requests_per_sec();
            record.p99_ms = Some(run.p99_us as f64 / 1e3);
            record.detail = format!(
                "{} requests, p50 {:.2} ms, p90 {:.2} ms, max {:.1} ms",
                run.requests,
                run.p50_us as f64 / 1e3,
                run.p90_us as f64 / 1e3,
                run.max_us as f64 / 1e3
            );
            if run.socket_errors > 0 || run.status_errors > 0 {
                record.errors.push(format!(
                    "wrk: {} socket errors, {} non-2xx/3xx answers",
                    run.socket_errors, run.status_errors
                ));
            }
            record.wall = run.duration;
            client_ticks = run.client_cpu_ticks;
            wrk_ticks = run.client_cpu_ticks;
            record.command = run.command;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let after = snapshot(target, upstream_pid, all_pids);
    let cores = |ticks: u64| ticks as f64 / TICKS_PER_SEC / wall.max(1e-9);
    let me = after.me.saturating_sub(before.me);
    let ours = after.ours.saturating_sub(before.ours) + me + wrk_ticks;
    let busy = after.machine.busy.saturating_sub(before.machine.busy);
    record.client_cores = cores(client_ticks);
    record.server_cores = cores(after.target.saturating_sub(before.target));
    record.upstream_cores = if target.pids.contains(&upstream_pid) {
        0.0
    } else {
        cores(after.upstream.saturating_sub(before.upstream))
    };
    record.other_cores = cores(busy.saturating_sub(ours));
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_fail_with_install_commands() {
        let err = locate_tools_with(
            |p| (p == "docker-registry").then(|| PathBuf::from("/usr/bin/docker-registry")),
            Err("target/release/regcache is missing: build it".into()),
        )
        .expect_err("nginx and wrk are missing");
        assert!(
            err.contains(
                "`nginx` is not installed: install it with `sudo apt-get install -y nginx`"
            ),
            "{err}"
        );
        assert!(
            err.contains("`wrk` is not installed: install it with `sudo apt-get install -y wrk`"),
            "{err}"
        );
        assert!(!err.contains("`docker-registry` is not installed"), "{err}");
        assert!(err.contains("regcache is missing"), "{err}");
        let tools = locate_tools_with(
            |p| Some(PathBuf::from(format!("/usr/bin/{p}"))),
            Ok((PathBuf::from("/t/regcache"), None)),
        )
        .expect("everything is there");
        assert_eq!(tools.wrk, PathBuf::from("/usr/bin/wrk"));
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-1"), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-4,7"), vec![0, 2, 3, 4, 7]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
        assert_eq!(cpu_list(&[2, 3]), "2,3");
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn scenarios_are_labelled() {
        assert_eq!(Scenario::ALL.len(), 4);
        assert_eq!(Scenario::Blob { clients: 16 }.unit(), "MiB/s");
        assert!(
            Scenario::Manifest { by_digest: true }
                .label()
                .contains("by digest")
        );
    }
}

//! S3 cold fan-in against warm: 100 concurrent clients of one uncached
//! 100 MiB blob, then the same 100 clients (same threads, same fresh
//! connection each) of the same blob once it is cached, same server, same
//! run.
//!
//! Why warm is the yardstick: 100 clients × 100 MiB is 9.8 GiB through
//! loopback, so on one machine the fan-in can never finish near one direct
//! GET of the blob (S3's first goal, still shown). What a cache can promise
//! is that a cold fan-in costs little more than the same fan-in served from
//! the cache: goal TTLB max cold ≤ 1.2× warm, with 1 upstream GET.
//!
//! [`measure`] is S3 in a full run (`harness::run`); [`run`] is S3 alone
//! (`-- --fanin`): the upstream, regcache, docker-registry proxy and nginx
//! `proxy_cache`, no S1/S2/S4-S7, in `--rounds` rounds (a fresh blob per
//! server and round: one pair of fan-ins is at the mercy of whatever else
//! the machine does); it writes only its own section of RESULTS.md (see
//! [`report`]), which a full run keeps.

pub mod report;

use std::time::Instant;

use regcache_tests::{Registry, RegistryClient};

use super::cold;
use super::harness::{self, Options, SEED, Target, log, settle};
use super::http::get_request;
use super::imageset::{BIG_BLOB_BYTES, COLD_BLOBS, ImageSet, Object, cold_blob};
use super::machine;
use super::procstat;
use super::report::FanInRecord;
use super::servers::{DistributionProxy, Nginx, NginxMode, RegcacheServer};

pub use report::FanInReport;

/// Concurrent clients of the blob, cold and warm.
pub const CLIENTS: usize = harness::S3_CLIENTS;

/// S3 against one server: the cold fan-in of `blob` (which nothing has
/// fetched through `target`), the upstream left to settle, then the same
/// fan-in again, warm. Upstream GETs count both (the warm one must add
/// none); peak RSS is over both.
pub fn measure(target: &Target, blob: &Object, upstream: &Registry, round: usize) -> FanInRecord {
    log(format!(
        "S3 cold fan-in ({CLIENTS} clients) against {} (round {})",
        target.name,
        round + 1
    ));
    let seen_start = settle(upstream);
    for pid in &target.pids {
        procstat::reset_peak_rss(*pid);
    }
    let req = get_request(target.addr, &blob.path, &blob.headers);
    let cold = cold::fan_in(target.addr, &req, blob.len, CLIENTS);
    let seen_cold = settle(upstream);
    log(format!(
        "  cold: TTFB median {:?} max {:?}, TTLB median {:?} max {:?}, {} errors",
        cold.ttfb_median(),
        cold.ttfb_max(),
        cold.ttlb_median(),
        cold.ttlb_max(),
        cold.errors.len()
    ));
    log(format!(
        "S3 warm fan-in ({CLIENTS} clients) against {}",
        target.name
    ));
    let warm = cold::fan_in(target.addr, &req, blob.len, CLIENTS);
    let peak_rss: u64 = target
        .pids
        .iter()
        .filter_map(|p| procstat::peak_rss(*p))
        .sum();
    let seen_end = settle(upstream);
    let entries = upstream.access_entries();
    let gets = |from: usize, to: usize| {
        entries[from..to]
            .iter()
            .filter(|e| e.method == "GET" && e.path == blob.path && e.status == 200)
            .count()
    };
    let upstream_gets = gets(seen_start, seen_cold);
    let upstream_gets_warm = gets(seen_cold, seen_end);
    log(format!(
        "  warm: TTLB median {:?} max {:?}, {} errors; upstream GETs {upstream_gets} cold, {upstream_gets_warm} warm",
        warm.ttlb_median(),
        warm.ttlb_max(),
        warm.errors.len()
    ));
    FanInRecord {
        target: target.name,
        round,
        clients: CLIENTS,
        blob_len: blob.len,
        upstream_gets,
        upstream_gets_warm,
        result: cold,
        warm,
        peak_rss,
    }
}

/// Runs S3 alone; `Err` is a message for the user.
pub fn run(options: &Options) -> Result<FanInReport, String> {
    let started = Instant::now();
    let harness::Prelude {
        tools,
        machine,
        commit,
        pinning,
    } = harness::prelude(options)?;

    log("S3: generating the image set and starting the upstream docker-registry");
    let set = ImageSet::generate(SEED, BIG_BLOB_BYTES);
    let upstream = harness::start_upstream(&set, &pinning.servers)?;

    log("S3: starting regcache, docker-registry (proxy), nginx proxy_cache");
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
    let targets = [
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
    ];
    let targets: Vec<&Target> = targets
        .iter()
        .filter(|t| {
            options
                .servers
                .as_ref()
                .is_none_or(|only| only.iter().any(|o| o == harness::short_name(t.name)))
        })
        .collect();

    pinning.client.pin_running(std::process::id(), false)?;
    let direct_ttlb = {
        let blob = &set.cold_blobs[0];
        let req = get_request(upstream.addr(), &blob.path, &blob.headers);
        cold::single(upstream.addr(), &req, blob.len)
    };
    log(format!(
        "S3 reference: direct GET from the upstream {direct_ttlb:?}"
    ));
    // Round 1 uses the set's cold blobs, later rounds fresh ones; the
    // servers take turns going first.
    let mut records = Vec::new();
    for round in 0..options.rounds.max(1) {
        let blobs: Vec<Object> = if round == 0 {
            set.cold_blobs.clone()
        } else {
            let first = COLD_BLOBS + (round - 1) * targets.len();
            let blobs: Vec<Object> = (0..targets.len())
                .map(|k| cold_blob(SEED, (first + k) as u64, BIG_BLOB_BYTES))
                .collect();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
            let client = RegistryClient::new(upstream.url());
            for blob in &blobs {
                rt.block_on(ImageSet::push_cold_blob(&client, blob));
            }
            blobs
        };
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            records.push(measure(targets[i], &blobs[i], &upstream, round));
        }
    }

    Ok(FanInReport {
        options: options.clone(),
        pinning: pinning.description.clone(),
        machine,
        loadavg_end: machine::loadavg(),
        date: machine::utc_now(),
        elapsed: started.elapsed(),
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
        direct_ttlb,
        records,
        regcache_log: regcache.log(),
    })
}

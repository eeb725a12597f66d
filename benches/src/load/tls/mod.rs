//! The TLS scenarios (issue 16), run alone on request (`-- --tls`; see
//! `benches/load.rs`): S1 and S2 over TLS, regcache against nginx with
//! `ssl`, all three on one self-signed ECDSA P-256 certificate
//! ([`cert`]) and HTTP/1.1.
//!
//! On loopback: the upstream docker-registry with S1/S2's image set, then
//! regcache with TLS on its API listener, nginx static (`listen … ssl`) on
//! the same files as plain S1/S2, and nginx `proxy_cache` with `ssl` in
//! front of the upstream ([`servers`]). Each is warmed over TLS (every
//! object twice, each body hashed against its digest), then in rounds
//! with the server order rotated:
//!
//! * S1 over TLS: the warm 100 MiB blob, 1 and 16 clients, TLS 1.3 and TLS
//!   1.2, with [`blobload`] (rustls, one fixed suite per version, checked
//!   on every connection: [`client::Tls`]); MiB/s, and the CPU seconds per
//!   GiB served of the server (all its processes) and of the client;
//! * S2 over TLS 1.3: manifest by tag and by digest, 64 keep-alive
//!   connections, with wrk over `https://` (OpenSSL; it offers its default
//!   TLS 1.3 suites, so it gets `TLS_AES_256_GCM_SHA384` as S1's client
//!   does); requests/s and p99. No S2 over TLS 1.2: wrk has no option to
//!   choose the version or the suites.
//!
//! The servers and the upstream are pinned to the first half of the CPUs,
//! the load generator to the rest, as in S1-S7; the best run of each pair
//! is reported ([`report`]), with ratios regcache / nginx.

pub mod blobload;
pub mod cert;
pub mod client;
pub mod report;
pub mod servers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::harness::{self, Options, S2_CONNECTIONS, SEED, Target, fetch_checked, log};
use super::http::get_request;
use super::imageset::{BIG_BLOB_BYTES, ImageSet};
use super::machine;
use super::procstat::{self, TICKS_PER_SEC};
use super::servers::{Nginx, NginxMode, RegcacheServer};
use super::wrk::{Wrk, WrkArgs};
use cert::TlsFiles;
use client::Tls;
pub use report::TlsReport;

/// The servers, in report order.
pub const REGCACHE: &str = "regcache";
pub const NGINX_STATIC: &str = "nginx static (ssl)";
pub const NGINX_CACHE: &str = "nginx proxy_cache (ssl)";

/// A TLS scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsScenario {
    Blob { tls: Tls, clients: usize },
    Manifest { by_digest: bool },
}

impl TlsScenario {
    pub const ALL: [TlsScenario; 6] = [
        TlsScenario::Blob {
            tls: Tls::V13,
            clients: 1,
        },
        TlsScenario::Blob {
            tls: Tls::V13,
            clients: 16,
        },
        TlsScenario::Blob {
            tls: Tls::V12,
            clients: 1,
        },
        TlsScenario::Blob {
            tls: Tls::V12,
            clients: 16,
        },
        TlsScenario::Manifest { by_digest: false },
        TlsScenario::Manifest { by_digest: true },
    ];

    pub fn label(self) -> String {
        match self {
            TlsScenario::Blob { tls, clients: 1 } => {
                format!("S1 {} blob 100 MiB, 1 client", tls.label())
            }
            TlsScenario::Blob { tls, clients } => {
                format!("S1 {} blob 100 MiB, {clients} clients", tls.label())
            }
            TlsScenario::Manifest { by_digest } => format!(
                "S2 TLS 1.3 manifest by {}, {S2_CONNECTIONS} conns",
                if by_digest { "digest" } else { "tag" }
            ),
        }
    }
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct TlsRun {
    pub scenario: TlsScenario,
    pub target: &'static str,
    pub round: usize,
    /// MiB/s (S1) or requests/s (S2).
    pub value: f64,
    pub p99_ms: Option<f64>,
    /// Body bytes (S1).
    pub bytes: u64,
    /// CPU seconds of the server's processes and of the client.
    pub server_cpu_secs: f64,
    pub client_cpu_secs: f64,
    /// Everything else on the machine, in cores: the noise.
    pub other_cores: f64,
    pub wall: Duration,
    /// What the client's connections negotiated (S1).
    pub negotiated: String,
    pub detail: String,
    pub errors: Vec<String>,
    pub command: String,
}

impl TlsRun {
    fn gib(&self) -> f64 {
        self.bytes as f64 / (1u64 << 30) as f64
    }

    /// Server CPU seconds per GiB served (S1).
    pub fn server_cpu_per_gib(&self) -> Option<f64> {
        (self.bytes > 0).then(|| self.server_cpu_secs / self.gib())
    }

    /// Client CPU seconds per GiB received (S1).
    pub fn client_cpu_per_gib(&self) -> Option<f64> {
        (self.bytes > 0).then(|| self.client_cpu_secs / self.gib())
    }

    pub fn summary(&self) -> String {
        let mut s = match self.scenario {
            TlsScenario::Blob { .. } => format!(
                "{:.0} MiB/s, server {:.2} CPU s/GiB, client {:.2} CPU s/GiB, {} ({})",
                self.value,
                self.server_cpu_per_gib().unwrap_or(0.0),
                self.client_cpu_per_gib().unwrap_or(0.0),
                self.negotiated,
                self.detail
            ),
            TlsScenario::Manifest { .. } => format!(
                "{:.0} req/s, p99 {:.2} ms ({})",
                self.value,
                self.p99_ms.unwrap_or(0.0),
                self.detail
            ),
        };
        s.push_str(&format!(", other {:.2} cores", self.other_cores));
        if !self.errors.is_empty() {
            s.push_str(&format!(" ERRORS: {}", self.errors.join("; ")));
        }
        s
    }
}

/// Runs the TLS scenarios; `Err` is a message for the user.
pub fn run(options: &Options) -> Result<TlsReport, String> {
    let started = Instant::now();
    let harness::Prelude {
        tools,
        machine,
        commit,
        pinning,
    } = harness::prelude(options)?;

    log("TLS: generating the image set and starting the upstream docker-registry");
    let set = ImageSet::generate(SEED, BIG_BLOB_BYTES);
    let upstream = harness::start_upstream(&set, &pinning.servers)?;

    let dir = tempfile::Builder::new()
        .prefix("regcache-load-tls-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let files = TlsFiles::generate(dir.path())?;
    let www = dir.path().join("www");
    set.write_static_tree(&www)
        .map_err(|e| format!("cannot write the static tree: {e}"))?;

    log("TLS: starting regcache, nginx static and nginx proxy_cache, all with TLS");
    let cpus = &pinning.servers;
    let regcache = RegcacheServer::start_with(
        &tools.regcache,
        &upstream.url(),
        cpus,
        &servers::regcache_top(&files),
    )?;
    let start_nginx = |mode: &NginxMode| {
        Nginx::start_with(&tools.nginx, mode, cpus, |conf, _| {
            let addr = listen_addr(&conf)?;
            let probe = regcache_tests::free_addr();
            Ok((
                servers::nginx_ssl_conf(&conf, addr, probe, &files)?,
                Some(probe),
            ))
        })
    };
    let nginx_static = start_nginx(&NginxMode::Static { root: www.clone() })?;
    let nginx_cache = start_nginx(&NginxMode::ProxyCache {
        upstream: upstream.addr(),
    })?;
    let targets = vec![
        Target {
            name: REGCACHE,
            addr: regcache.addr(),
            pids: vec![regcache.pid()],
            proxies: true,
        },
        Target {
            name: NGINX_STATIC,
            addr: nginx_static.addr(),
            pids: nginx_static.pids(),
            proxies: false,
        },
        Target {
            name: NGINX_CACHE,
            addr: nginx_cache.addr(),
            pids: nginx_cache.pids(),
            proxies: true,
        },
    ];

    let configs = [
        (Tls::V13, client::client_config(Tls::V13, &files.cert_der)),
        (Tls::V12, client::client_config(Tls::V12, &files.cert_der)),
    ];
    let config = |tls: Tls| -> Result<Arc<rustls::ClientConfig>, String> {
        match configs.iter().find(|(t, _)| *t == tls) {
            Some((_, Ok(c))) => Ok(c.clone()),
            Some((_, Err(e))) => Err(format!("TLS client: {e}")),
            None => Err("TLS client: no config".into()),
        }
    };

    let mut warm = Vec::new();
    for target in &targets {
        log(format!("TLS: warming {} over TLS 1.3", target.name));
        warm.push(warm_target(target, &set, &config(Tls::V13)?)?);
    }

    pinning.client.pin_running(std::process::id(), false)?;
    let wrk = Wrk::new(tools.wrk.clone());
    let mut runs = Vec::new();
    for round in 0..options.rounds {
        for scenario in TlsScenario::ALL {
            for k in 0..targets.len() {
                let target = &targets[(k + round) % targets.len()];
                log(format!(
                    "TLS round {}/{}: {} against {}",
                    round + 1,
                    options.rounds,
                    scenario.label(),
                    target.name
                ));
                let tls = match scenario {
                    TlsScenario::Blob { tls, .. } => tls,
                    TlsScenario::Manifest { .. } => Tls::V13,
                };
                let record = measure(
                    target,
                    scenario,
                    &set,
                    &config(tls)?,
                    &wrk,
                    pinning.client_cpus,
                    options.duration,
                    round,
                )?;
                log(format!("  {}", record.summary()));
                runs.push(record);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    Ok(TlsReport {
        options: options.clone(),
        pinning: pinning.description.clone(),
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
            ("workspace commit".into(), commit),
            ("nginx".into(), machine::first_line(&tools.nginx, &["-v"])),
            ("wrk".into(), machine::first_line(&tools.wrk, &["-v"])),
            (
                "OpenSSL (nginx, wrk)".into(),
                machine::first_line(std::path::Path::new("openssl"), &["version"]),
            ),
            ("rustls (client)".into(), "0.23, ring provider".into()),
        ],
        ktls: ktls_fact(),
        warm,
        runs,
        regcache_log: regcache.log(),
        nginx_logs: format!("{}{}", nginx_static.error_log(), nginx_cache.error_log()),
        nginx_static_conf: nginx_static.conf().to_owned(),
    })
}

/// The address of the first `listen ADDR reuseport;` line of a rendered
/// nginx.conf.
fn listen_addr(conf: &str) -> Result<SocketAddr, String> {
    conf.lines()
        .find_map(|l| l.trim().strip_prefix("listen "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.trim_end_matches(';').parse().ok())
        .ok_or_else(|| "nginx.conf has no `listen ADDR` line".to_owned())
}

/// Whether the kernel has kTLS (`/proc/net/tls_stat`), for the report.
fn ktls_fact() -> String {
    if std::path::Path::new("/proc/net/tls_stat").exists() {
        "this kernel has kTLS (`/proc/net/tls_stat` present), but the harness does not enable it in nginx (no `ssl_conf_command Options KTLS`): nginx encrypts in user space".into()
    } else {
        "this kernel has no kTLS (`/proc/net/tls_stat` absent): nginx cannot `sendfile` over TLS and encrypts in user space, as regcache does".into()
    }
}

/// One warm-up: every object GET twice over one TLS connection, each body
/// hashed; returns the `X-Cache-Status` of the second GETs (nginx
/// `proxy_cache`) or what was fetched.
fn warm_target(
    target: &Target,
    set: &ImageSet,
    config: &Arc<rustls::ClientConfig>,
) -> Result<(String, String), String> {
    let mut conn = client::connect(target.addr, config, Tls::V13)
        .map_err(|e| format!("{}: TLS connect to {}: {e}", target.name, target.addr))?;
    for object in set.objects() {
        fetch_checked(&mut conn, target, object)?;
    }
    let mut status = Vec::new();
    for object in set.objects() {
        let head = fetch_checked(&mut conn, target, object)?;
        if let Some(s) = head.header("x-cache-status") {
            status.push(format!("{}: {s}", object.label));
        }
    }
    let summary = if status.is_empty() {
        "every object twice, bodies hashed".to_owned()
    } else {
        format!(
            "every object twice, bodies hashed; second GETs {}",
            status.join(", ")
        )
    };
    Ok((target.name.to_owned(), summary))
}

#[allow(clippy::too_many_arguments)]
fn measure(
    target: &Target,
    scenario: TlsScenario,
    set: &ImageSet,
    config: &Arc<rustls::ClientConfig>,
    wrk: &Wrk,
    client_cpus: usize,
    duration: Duration,
    round: usize,
) -> Result<TlsRun, String> {
    let cpu = |pids: &[u32]| -> u64 { pids.iter().filter_map(|p| procstat::process_cpu(*p)).sum() };
    let machine0 = procstat::machine_cpu();
    let server0 = cpu(&target.pids);
    let me0 = procstat::process_cpu(std::process::id()).unwrap_or(0);
    let t0 = Instant::now();
    let mut run = TlsRun {
        scenario,
        target: target.name,
        round,
        value: 0.0,
        p99_ms: None,
        bytes: 0,
        server_cpu_secs: 0.0,
        client_cpu_secs: 0.0,
        other_cores: 0.0,
        wall: Duration::ZERO,
        negotiated: String::new(),
        detail: String::new(),
        errors: Vec::new(),
        command: String::new(),
    };
    let client_ticks;
    let mut child_ticks = 0;
    match scenario {
        TlsScenario::Blob { tls, clients } => {
            let req = get_request(target.addr, &set.blob.path, &set.blob.headers);
            let out = blobload::run(
                target.addr,
                config,
                tls,
                &req,
                set.blob.len,
                clients,
                duration,
            );
            run.value = out.load.mib_per_sec();
            run.bytes = out.load.bytes;
            run.negotiated = out.negotiated;
            run.detail = format!("{} whole blobs", out.load.completed);
            run.errors = out.load.errors;
            run.wall = out.load.elapsed;
            client_ticks = out.load.client_cpu_ticks;
            run.command = format!(
                "built-in rustls blob client: {clients} thread(s), one keep-alive TLS connection each ({}), GET {} for {}s",
                tls.expected(),
                set.blob.path,
                duration.as_secs()
            );
        }
        TlsScenario::Manifest { by_digest } => {
            let object = if by_digest {
                &set.manifest_by_digest
            } else {
                &set.manifest_by_tag
            };
            let url = format!("https://{}{}", target.addr, object.path);
            let out = wrk.run(&WrkArgs {
                url: &url,
                threads: client_cpus.clamp(1, 4),
                connections: S2_CONNECTIONS,
                duration,
                headers: &object.headers,
            })?;
            run.value = out.requests_per_sec();
            run.p99_ms = Some(out.p99_us as f64 / 1e3);
            run.detail = format!(
                "{} requests, p50 {:.2} ms, p90 {:.2} ms",
                out.requests,
                out.p50_us as f64 / 1e3,
                out.p90_us as f64 / 1e3
            );
            if out.socket_errors > 0 || out.status_errors > 0 {
                run.errors.push(format!(
                    "wrk: {} socket errors, {} non-2xx/3xx answers",
                    out.socket_errors, out.status_errors
                ));
            }
            run.wall = out.duration;
            client_ticks = out.client_cpu_ticks;
            child_ticks = out.client_cpu_ticks;
            run.negotiated = "wrk (OpenSSL defaults)".into();
            run.command = out.command;
        }
    }
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let server = cpu(&target.pids).saturating_sub(server0);
    let me = procstat::process_cpu(std::process::id())
        .unwrap_or(0)
        .saturating_sub(me0);
    let busy = procstat::machine_cpu().busy.saturating_sub(machine0.busy);
    let secs = |ticks: u64| ticks as f64 / TICKS_PER_SEC;
    run.server_cpu_secs = secs(server);
    run.client_cpu_secs = secs(client_ticks);
    run.other_cores = secs(busy.saturating_sub(server + me + child_ticks)) / wall;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_is_read_from_the_rendered_conf() {
        let conf = super::super::servers::render_nginx_conf(
            std::path::Path::new("/tmp/x"),
            "127.0.0.1:4431".parse().expect("addr"),
            &NginxMode::Static {
                root: "/tmp/www".into(),
            },
            false,
            None,
        );
        assert_eq!(
            listen_addr(&conf),
            Ok("127.0.0.1:4431".parse().expect("addr"))
        );
        assert!(listen_addr("events {}").is_err());
    }

    #[test]
    fn cpu_per_gib_is_seconds_over_gibibytes() {
        let mut run = TlsRun {
            scenario: TlsScenario::ALL[0],
            target: REGCACHE,
            round: 0,
            value: 0.0,
            p99_ms: None,
            bytes: 2 << 30,
            server_cpu_secs: 3.0,
            client_cpu_secs: 1.0,
            other_cores: 0.0,
            wall: Duration::ZERO,
            negotiated: String::new(),
            detail: String::new(),
            errors: Vec::new(),
            command: String::new(),
        };
        assert_eq!(run.server_cpu_per_gib(), Some(1.5));
        assert_eq!(run.client_cpu_per_gib(), Some(0.5));
        run.bytes = 0;
        assert_eq!(run.server_cpu_per_gib(), None);
    }
}

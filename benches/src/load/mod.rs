//! The side-by-side load harness behind `cargo bench -p regcache-benches
//! --bench load` (see `benches/load.rs` for how to run it).
//!
//! On loopback it starts the real docker-registry 2.8 as the upstream with a
//! generated image set, then four servers in front of (or beside) it:
//! regcache, docker-registry in `proxy:` mode, nginx `proxy_cache`, and
//! nginx serving the same files statically (`sendfile on`). It warms each
//! cache the same way and runs the same requests against each:
//!
//! * S1: warm 100 MiB blob GET, 1 and 16 concurrent clients: throughput;
//! * S2: warm manifest GET by tag and by digest, 64 connections: requests/s
//!   and p99 latency;
//! * S3 (once, after the rounds): 100 concurrent GETs of one uncached
//!   100 MiB blob through each proxy: upstream GETs of it, time to first
//!   and last byte, against one direct GET from the upstream;
//! * S4 (after S3): a cold pull of a whole image (8 layers, ~180 MiB) with
//!   `skopeo copy … dir:` through each proxy, a fresh image per server and
//!   round, against the same copy straight from the upstream (goal: ≤ 1.1×
//!   the direct copy); every copied blob is hashed against its digest.
//!   nginx static cannot serve a pull (no registry API): n/a;
//! * S6 (after the rounds): manifest GET by tag with no `Accept` (Schema 1
//!   conversion), 64 connections, regcache and docker-registry proxy;
//!   goal: regcache ≥ 0.9× its own S2 by-tag rate of the same run;
//! * S7 (after S6): manifest GET by tag of an image stored upstream under
//!   an OCI image manifest, with Docker 17's `Accept` (Schema 2, lists,
//!   Schema 1, no OCI type), 64 connections: regcache answers with the
//!   image's Docker twin (checked first: `Content-Type` Docker Schema 2, a
//!   `Docker-Content-Digest` of its own; a wrong answer fails S7), goal
//!   ≥ 0.9× its own S2 by-tag rate of the same run; docker-registry proxy
//!   refuses (404), its rate is shown as not comparable;
//!
//! and, only when asked, run alone: S1 and S2 in ten short rounds against
//! nginx static and `proxy_cache`, the figure being the median of the
//! per-round ratios (`-- --paired`, see [`paired`]); S3 (`-- --fanin`, see
//! [`fanin`]); S9
//! (`-- --connections`, 10,000 keep-alive connections, see
//! [`connections`]); S8 (`-- --cluster`), warm-blob load on 3 regcache
//! replicas in cluster mode against 1 (see [`cluster`]); S1 and S2 over TLS
//! 1.3 and 1.2 against nginx with `ssl` (`-- --tls`, see [`tls`]);
//!
//! then prints a table of each figure and the ratio regcache/peer and
//! writes `benches/RESULTS.md` (machine, date, the reproducing command).
//!
//! Method, in short: the servers (and the upstream) are pinned to the first
//! half of the CPUs and the load generator to the rest, so the generator's
//! own headroom is visible (its CPU use is measured per run, as is
//! everything else the machine did: the noise); each (scenario, server)
//! pair runs in rounds with the server order rotated, noisy pairs are
//! retried within a time budget, and the best run is reported. Peak RSS is
//! `VmHWM`, reset through `/proc/PID/clear_refs` before S1.
//!
//! | module | what |
//! |---|---|
//! | [`harness`] | the run: tools, servers, warm-up, rounds of measurements |
//! | [`servers`] | launchers: regcache, docker-registry proxy, nginx (static / proxy_cache) |
//! | [`imageset`] | the seeded image set and the objects fetched |
//! | [`http`] | a minimal keep-alive HTTP/1.1 client (warm-up checks, S1) |
//! | [`blobload`] | S1's load generator (S8's too: connections spread over several servers) |
//! | [`cluster`] | S8: moto, the replicas, the two cases, its section of RESULTS.md |
//! | [`tls`] | S1/S2 over TLS: the certificate, the rustls client, nginx `ssl`, its section of RESULTS.md |
//! | [`cold`] | S3's fan-in client |
//! | [`connections`] | S9 alone (`--connections`): 10,000 keep-alive connections, open-loop manifest GETs |
//! | [`paired`] | S1 and S2 alone (`--paired`) in many short rounds: the median of per-round ratios |
//! | [`fanin`] | S3 cold against warm, in a full run or alone (`--fanin`), its table and section |
//! | [`sections`] | sections of RESULTS.md written by a scenario run alone, kept by a full run |
//! | [`convert`] | S6 and S7: conversions by tag (Schema 1, OCI to Docker twin), their check and table |
//! | [`pull`] | S4's client (`skopeo copy`) and the check of its copy |
//! | [`wrk`] | S2's load generator (Debian's `wrk`) |
//! | [`procstat`] | CPU time and peak RSS from `/proc` |
//! | [`machine`] | machine facts and tool versions for the report |
//! | [`report`] | the tables and RESULTS.md |

pub mod blobload;
pub mod cluster;
pub mod cold;
pub mod connections;
pub mod convert;
pub mod fanin;
pub mod harness;
pub mod http;
pub mod imageset;
pub mod machine;
pub mod paired;
pub mod procstat;
pub mod pull;
pub mod report;
pub mod sections;
pub mod servers;
pub mod tls;
pub mod wrk;

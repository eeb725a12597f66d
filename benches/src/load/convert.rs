//! S6 and S7: manifest GETs by tag that regcache answers with a converted
//! document, measured with wrk like S2 and compared with regcache's own S2
//! by-tag rate of the same run.
//!
//! * S6, Schema 1 conversion: `bench/app:v1` (Docker Schema 2 upstream)
//!   with no `Accept` at all (Docker ≤ 1.9): regcache and docker-registry
//!   proxy (with `compatibility.schema1.enabled`) both convert to signed
//!   Schema 1.
//! * S7, OCI to Docker bridge: `bench/oci:v1` (an OCI image manifest
//!   upstream) with Docker 17's `Accept` ([`DOCKER17_ACCEPT`]: Schema 2,
//!   lists, Schema 1, no OCI type). regcache answers with the image's
//!   Docker twin, which is checked before any load ([`check_twin`]: a
//!   wrong answer fails the scenario, nothing is measured);
//!   docker-registry 2.8 refuses (404 `MANIFEST_UNKNOWN`, "OCI manifest
//!   found, but accept header does not support OCI manifests"): its rate
//!   is measured and shown, but a rate of refusals is not comparable with
//!   a rate of manifests, and the table says so.
//!
//! Each runs after the S1/S2 rounds, `rounds` wrk runs per server, best kept.

use std::fmt::Write as _;
use std::time::Duration;

use regcache_tests::image::media;
use sha2::Digest as _;

use super::harness::{S2_CONNECTIONS, Target};
use super::http::{Conn, Head, get_request};
use super::imageset::{DOCKER17_ACCEPT, ImageSet, Object};
use super::procstat::{self, TICKS_PER_SEC};
use super::report::{fmt_value, ratio, table};
use super::wrk::{Wrk, WrkArgs};

/// S6 and S7's goal: regcache's rate at least this share of its S2 by-tag rate.
pub const GOAL_OF_S2: f64 = 0.9;

/// The servers that run S6 and S7 (nginx does no conversion).
pub const SERVERS: [&str; 2] = ["regcache", "docker-registry proxy"];

/// Which conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// S6: no `Accept`, Schema 2 upstream → Schema 1.
    Schema1,
    /// S7: Docker 17 `Accept`, OCI upstream → the Docker twin.
    Bridge,
}

impl Conversion {
    pub const ALL: [Conversion; 2] = [Conversion::Schema1, Conversion::Bridge];

    pub fn label(self) -> &'static str {
        match self {
            Conversion::Schema1 => "S6 Schema 1 conversion",
            Conversion::Bridge => "S7 OCI to Docker bridge",
        }
    }

    /// The short name, as in "S6 command".
    pub fn id(self) -> &'static str {
        match self {
            Conversion::Schema1 => "S6",
            Conversion::Bridge => "S7",
        }
    }

    /// The path and headers every GET of the scenario carries.
    fn request(self, set: &ImageSet) -> (&str, &[(String, String)]) {
        match self {
            Conversion::Schema1 => (&set.manifest_by_tag.path, &[]),
            Conversion::Bridge => (&set.oci_by_tag.path, &set.oci_by_tag.headers),
        }
    }
}

/// S6 or S7 against one server.
#[derive(Debug, Clone)]
pub struct ConversionRecord {
    pub conversion: Conversion,
    pub target: &'static str,
    /// Best run: requests/s and its p99.
    pub rps: f64,
    pub p99_ms: f64,
    /// Everything else the machine did during the best run, in cores
    /// (busy CPU minus the servers', the upstream's, wrk's and this
    /// process's): the noise.
    pub other_cores: f64,
    pub detail: String,
    /// Status, `Content-Type`, `Docker-Content-Digest` and body length of
    /// the warm-up GET (what every answer of the load is).
    pub status: u16,
    pub content_type: String,
    pub digest: Option<String>,
    pub body_len: u64,
    /// The start of a non-200 body (the refusal's message).
    pub refusal: String,
    pub errors: Vec<String>,
    pub command: String,
}

impl ConversionRecord {
    /// Whether its rate counts manifests served (a 200 warm-up, no error).
    pub fn comparable(&self) -> bool {
        self.status == 200 && self.errors.is_empty()
    }

    /// One line for the progress log.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:.0} req/s, p99 {:.2} ms, other cores {:.2}, {} {}",
            self.rps, self.p99_ms, self.other_cores, self.status, self.content_type
        );
        if let Some(d) = &self.digest {
            let _ = write!(s, ", Docker-Content-Digest {d}");
        }
        if !self.errors.is_empty() {
            let _ = write!(s, ", ERRORS: {}", self.errors.join("; "));
        }
        s
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// S7's check of regcache's answer against the OCI manifest `oci` as
/// pushed: a 200 with `Content-Type` Docker Schema 2 and a
/// `Docker-Content-Digest` that differs from the OCI manifest's and is the
/// body's sha256; the body a Docker Schema 2 manifest of the same config
/// and layers.
pub fn check_twin(head: &Head, body: &[u8], oci: &Object) -> Result<(), String> {
    if head.status != 200 {
        return Err(format!(
            "answered {}, not 200 with the Docker twin: {}",
            head.status,
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    let content_type = head.header("content-type").unwrap_or("none");
    if content_type != media::DOCKER_MANIFEST {
        return Err(format!(
            "Content-Type {content_type}, expected {} (the Docker twin)",
            media::DOCKER_MANIFEST
        ));
    }
    let digest = head
        .header("docker-content-digest")
        .ok_or("no Docker-Content-Digest")?;
    if digest == oci.digest {
        return Err(format!(
            "Docker-Content-Digest {digest} is the OCI manifest's own: not a twin"
        ));
    }
    let body_digest = sha256(body);
    if digest != body_digest {
        return Err(format!(
            "Docker-Content-Digest {digest}, but the {} bytes hash to {body_digest}",
            body.len()
        ));
    }
    let parse = |bytes: &[u8], what: &str| -> Result<serde_json::Value, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("{what} is not JSON: {e}"))
    };
    let (twin, oci) = (
        parse(body, "the answer")?,
        parse(&oci.body, "the OCI manifest")?,
    );
    if twin["mediaType"] != media::DOCKER_MANIFEST || twin["schemaVersion"] != 2 {
        return Err(format!(
            "the body has mediaType {} and schemaVersion {}, not a Docker Schema 2 manifest",
            twin["mediaType"], twin["schemaVersion"]
        ));
    }
    let blobs = |m: &serde_json::Value| -> Vec<serde_json::Value> {
        std::iter::once(&m["config"])
            .chain(m["layers"].as_array().into_iter().flatten())
            .map(|d| serde_json::json!([d["digest"], d["size"]]))
            .collect()
    };
    if blobs(&twin) != blobs(&oci) {
        return Err(format!(
            "the twin's config and layers {:?} are not the OCI manifest's {:?}",
            blobs(&twin),
            blobs(&oci)
        ));
    }
    Ok(())
}

/// `conversion` against `target`: one warm-up GET, checked (S6: a 200; S7
/// against regcache: [`check_twin`]; a failed check records the error and
/// measures nothing), then `rounds` wrk runs, the best kept. A server that
/// refuses S7 is measured all the same, every answer of the load having to be a
/// refusal like the warm-up's. `all_pids`: every server's processes and
/// the upstream (for the noise figure).
#[allow(clippy::too_many_arguments)]
pub fn measure(
    conversion: Conversion,
    target: &Target,
    all_pids: &[u32],
    set: &ImageSet,
    wrk: &Wrk,
    client_cpus: usize,
    duration: Duration,
    rounds: usize,
) -> Result<ConversionRecord, String> {
    let (path, headers) = conversion.request(set);
    let mut record = ConversionRecord {
        conversion,
        target: target.name,
        rps: 0.0,
        p99_ms: 0.0,
        other_cores: 0.0,
        detail: String::new(),
        status: 0,
        content_type: String::new(),
        digest: None,
        body_len: 0,
        refusal: String::new(),
        errors: Vec::new(),
        command: String::new(),
    };
    let warm = Conn::connect(target.addr)
        .and_then(|mut c| c.get(&get_request(target.addr, path, headers)));
    let (head, body) = match warm {
        Ok(answer) => answer,
        Err(e) => {
            record.errors.push(format!("warm-up GET {path}: {e}"));
            return Ok(record);
        }
    };
    record.status = head.status;
    record.content_type = head.header("content-type").unwrap_or("none").to_owned();
    record.digest = head.header("docker-content-digest").map(str::to_owned);
    record.body_len = body.len() as u64;
    if head.status != 200 {
        record.refusal = String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_owned();
    }
    let check = match conversion {
        Conversion::Schema1 if head.status != 200 => {
            Err(format!("answered {}: {}", head.status, record.refusal))
        }
        Conversion::Bridge if target.name == "regcache" => {
            check_twin(&head, &body, &set.oci_by_tag)
        }
        _ => Ok(()),
    };
    if let Err(e) = check {
        record.errors.push(format!("warm-up GET {path}: {e}"));
        return Ok(record);
    }
    let url = format!("http://{}{}", target.addr, path);
    let ours = || -> u64 {
        all_pids
            .iter()
            .chain([&std::process::id()])
            .filter_map(|p| procstat::process_cpu(*p))
            .sum()
    };
    for _ in 0..rounds.max(1) {
        let (busy0, ours0) = (procstat::machine_cpu().busy, ours());
        let run = wrk.run(&WrkArgs {
            url: &url,
            threads: client_cpus.clamp(1, 4),
            connections: S2_CONNECTIONS,
            duration,
            headers,
        })?;
        let busy = procstat::machine_cpu().busy.saturating_sub(busy0);
        let mine = ours().saturating_sub(ours0) + run.client_cpu_ticks;
        let other =
            busy.saturating_sub(mine) as f64 / TICKS_PER_SEC / run.duration.as_secs_f64().max(1e-9);
        let rps = run.requests_per_sec();
        // wrk counts answers outside 2xx/3xx: all of them for a refusal.
        let unexpected = if head.status == 200 {
            run.status_errors
        } else {
            run.requests.saturating_sub(run.status_errors)
        };
        if run.socket_errors > 0 || unexpected > 0 {
            record.errors.push(format!(
                "wrk: {} socket errors, {unexpected} of {} answers unlike the warm-up's {}",
                run.socket_errors, run.requests, head.status
            ));
        }
        if rps > record.rps {
            record.rps = rps;
            record.p99_ms = run.p99_us as f64 / 1e3;
            record.other_cores = other;
            record.detail = format!(
                "{} requests, p50 {:.2} ms, p90 {:.2} ms, max {:.1} ms",
                run.requests,
                run.p50_us as f64 / 1e3,
                run.p90_us as f64 / 1e3,
                run.max_us as f64 / 1e3
            );
            record.command = run.command;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(record)
}

/// `sha256:0123456789ab…`
fn short_digest(d: &str) -> String {
    match d.get(..19) {
        Some(head) if d.len() > 19 => format!("{head}…"),
        _ => d.to_owned(),
    }
}

/// The S6 and S7 tables, each with its intro line; `s2_tag` is regcache's
/// best S2 by-tag rate of the run (0: unmeasured).
pub fn tables(records: &[ConversionRecord], set_oci: Option<&Object>, s2_tag: f64) -> String {
    let mut out = String::new();
    let s2 = if s2_tag > 0.0 {
        format!("{} req/s", fmt_value(s2_tag))
    } else {
        "unmeasured".to_owned()
    };
    let rate = |r: &ConversionRecord| {
        let v = fmt_value(r.rps);
        if !r.errors.is_empty() {
            format!("{v} (!)")
        } else if r.status != 200 {
            format!("{v} ({}s, not comparable)", r.status)
        } else {
            v
        }
    };
    let of = |c: Conversion| records.iter().filter(move |r| r.conversion == c);
    if of(Conversion::Schema1).next().is_some() {
        let regcache = of(Conversion::Schema1)
            .find(|r| r.target == "regcache")
            .map_or(0.0, |r| r.rps);
        let _ = writeln!(
            out,
            "\nS6 Schema 1 conversion: manifest GET by tag with no `Accept` header (an old client), {S2_CONNECTIONS} connections (wrk). Goals: regcache ≥ {GOAL_OF_S2}× its own S2 by-tag rate ({s2}), ≥ 5× docker-registry proxy.\n"
        );
        let header = [
            "server",
            "req/s",
            "p99 (ms)",
            "Content-Type",
            "ratio to regcache S2 by tag",
            "regcache / this",
            "other cores",
        ];
        let rows: Vec<Vec<String>> = of(Conversion::Schema1)
            .map(|r| {
                vec![
                    r.target.to_owned(),
                    rate(r),
                    fmt_value(r.p99_ms),
                    format!("`{}`", r.content_type),
                    ratio(r.rps, s2_tag),
                    ratio(regcache, r.rps),
                    format!("{:.2}", r.other_cores),
                ]
            })
            .collect();
        out.push_str(&table(&header, &rows));
    }
    if of(Conversion::Bridge).next().is_some() {
        let stored = set_oci.map_or(String::new(), |o| {
            format!(" ({}, {} bytes)", short_digest(&o.digest), o.len)
        });
        let _ = writeln!(
            out,
            "\nS7 OCI to Docker bridge: manifest GET by tag of `bench/oci:v1`, stored upstream as an OCI image manifest{stored}, with Docker 17's `Accept` (`{DOCKER17_ACCEPT}`: no OCI type), {S2_CONNECTIONS} connections (wrk). regcache answers with the image's Docker twin, checked before the runs (200, `Content-Type` `{}`, a `Docker-Content-Digest` other than the OCI manifest's that the body hashes to, the same config and layers). Goal: regcache ≥ {GOAL_OF_S2}× its own S2 by-tag rate of this run ({s2}). docker-registry proxy refuses such a pull (404 `MANIFEST_UNKNOWN`): its rate of refusals is shown but is not comparable with a rate of manifests.\n",
            media::DOCKER_MANIFEST
        );
        let header = [
            "server",
            "status",
            "req/s",
            "p99 (ms)",
            "Content-Type",
            "Docker-Content-Digest",
            "bytes",
            "ratio to regcache S2 by tag",
            "goal ≥ 0.9×",
            "other cores",
        ];
        let rows: Vec<Vec<String>> = of(Conversion::Bridge)
            .map(|r| {
                let comparable = r.comparable();
                vec![
                    r.target.to_owned(),
                    if r.status == 0 {
                        "–".into()
                    } else {
                        r.status.to_string()
                    },
                    rate(r),
                    fmt_value(r.p99_ms),
                    format!("`{}`", r.content_type),
                    r.digest
                        .as_deref()
                        .map_or("none".into(), |d| format!("`{}`", short_digest(d))),
                    r.body_len.to_string(),
                    if comparable {
                        ratio(r.rps, s2_tag)
                    } else {
                        "n/a".into()
                    },
                    match (r.target, comparable) {
                        ("regcache", true) if s2_tag > 0.0 => {
                            if r.rps >= GOAL_OF_S2 * s2_tag {
                                "met".into()
                            } else {
                                "NOT met".into()
                            }
                        }
                        ("regcache", _) => "failed".into(),
                        _ => "–".into(),
                    },
                    format!("{:.2}", r.other_cores),
                ]
            })
            .collect();
        out.push_str(&table(&header, &rows));
        for r in of(Conversion::Bridge).filter(|r| !r.refusal.is_empty()) {
            let _ = writeln!(
                out,
                "\n{} answered {} with: `{}`",
                r.target, r.status, r.refusal
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&str, &str)]) -> Head {
        Head {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
                .collect(),
            content_length: None,
        }
    }

    #[test]
    fn the_twin_is_checked() {
        let set = ImageSet::generate(3, 1024);
        let oci = &set.oci_by_tag;
        let twin = set.oci.docker_manifest();
        let twin_digest = sha256(&twin);
        let ok = head(
            200,
            &[
                ("Content-Type", media::DOCKER_MANIFEST),
                ("Docker-Content-Digest", &twin_digest),
            ],
        );
        assert_eq!(check_twin(&ok, &twin, oci), Ok(()));
        let as_stored = head(
            200,
            &[
                ("Content-Type", media::OCI_MANIFEST),
                ("Docker-Content-Digest", &oci.digest),
            ],
        );
        let err = check_twin(&as_stored, &oci.body, oci).expect_err("OCI as is");
        assert!(err.contains("Content-Type"), "{err}");
        let same_digest = head(
            200,
            &[
                ("Content-Type", media::DOCKER_MANIFEST),
                ("Docker-Content-Digest", &oci.digest),
            ],
        );
        let err = check_twin(&same_digest, &oci.body, oci).expect_err("OCI digest");
        assert!(err.contains("not a twin"), "{err}");
        let other = set.app.docker_manifest();
        let other_digest = sha256(&other);
        let wrong_image = head(
            200,
            &[
                ("Content-Type", media::DOCKER_MANIFEST),
                ("Docker-Content-Digest", &other_digest),
            ],
        );
        let err = check_twin(&wrong_image, &other, oci).expect_err("other blobs");
        assert!(err.contains("config and layers"), "{err}");
        let refused = head(404, &[("Content-Type", "application/json")]);
        let err = check_twin(&refused, b"{\"errors\":[]}", oci).expect_err("404");
        assert!(err.contains("answered 404"), "{err}");
        assert_eq!(short_digest(&twin_digest).chars().count(), 20);
    }
}

//! End-to-end test harness for regcache.
//!
//! Everything here drives *real* components on loopback, on ephemeral ports
//! (STYLE habit 11): the Debian `docker-registry` (docker/distribution 2.8),
//! `skopeo`, and the `regcache` binary built from this workspace. Test data
//! is generated offline from a seed (habit 12), so every run pushes the same
//! bytes and gets the same digests.
//!
//! | module | what it gives you |
//! |---|---|
//! | [`ports`] | a free loopback port |
//! | [`registry`] | [`Registry`]: start `docker-registry serve` with a generated config, wait for `/v2/`, read its logs, kill on drop |
//! | [`skopeo`] | [`Skopeo`]: `skopeo copy` with the flags loopback tests need, stderr in panic messages |
//! | [`image`] | the seeded image generator: layers, configs, manifests, OCI layouts |
//! | [`client`] | [`RegistryClient`]: exact-bytes pushes through the upload API, manifest GETs |
//! | [`regcache`] | locating and running the `regcache` binary: `regcache convert`, and [`Regcache`] for `regcache serve` (ephemeral ports, readiness, metrics, SIGTERM, restarts) |
//! | [`metrics`] | parsed Prometheus text from regcache's `/metrics` |
//! | [`mounts`] | [`mounts::Tmpfs`] (a small tmpfs, unmounted on drop) and [`mounts::Bind`] (a data dir switched to read-only under a running regcache); root only |
//! | [`moto`] | [`moto::MotoServer`]: moto's S3 server from the test virtualenv, a bucket, key listings, kill on drop |
//! | [`cluster`] | [`cluster::TestCluster`]: n regcache replicas sharing a moto bucket, with `[cluster]`/`[shared]` tables, rendezvous owners, `kill9`, a late replica |
//! | [`fault`] | [`FaultProxy`]: forwards to the registry, corrupts / truncates blob bodies, injects statuses and stalls, counts requests |
//! | [`token`] | [`TokenServer`]: a JWT token service that distribution's `auth: token` trusts |
//! | [`referrers`] | [`referrers::ReferrersUpstream`]: a small registry with the OCI 1.1 referrers API (distribution 2.8 has none), counting requests |
//! | [`http_server`] | the small hyper server thread the in-process peers run on |
//! | [`keys`] | deterministic P-256 signing keys as SEC 1 PEM files |
//! | [`jws`] | an independent recovery of a signed Schema 1 manifest's canonical payload (spec 04 §4.5) |
//!
//! A missing external tool is a test failure with an install hint, never a
//! silent skip: see [`tools`].

#![allow(clippy::unwrap_used)]

pub mod client;
pub mod clients;
pub mod cluster;
pub mod fault;
pub mod http_server;
pub mod image;
pub mod jws;
pub mod keys;
pub mod metrics;
pub mod moto;
pub mod mounts;
pub mod policy_support;
pub mod ports;
pub mod referrers;
pub mod regcache;
pub mod registry;
pub mod skopeo;
pub mod token;
pub mod tools;

pub use client::{Fetched, ManifestFormat, RegistryClient, Streamed};
pub use fault::{Fault, FaultProxy, Target};
pub use image::{Image, ImageGen, Layer, LayerKind, OciLayout, Platform};
pub use metrics::Metrics;
pub use ports::{free_addr, free_port};
pub use regcache::{ConvertArgs, ConvertOutput, regcache_bin};
pub use regcache::{EnvVars, Regcache, RegcacheOptions};
pub use registry::{AccessLogEntry, Credentials, Registry, RegistryOptions};
pub use skopeo::{Skopeo, SkopeoFormat};
pub use token::{TokenAuth, TokenServer, TokenServerOptions};

/// `"sha256:" + hex(sha256(bytes))`.
///
/// Test code is built without optimisation, where the `sha2` crate hashes at
/// about 20 MB/s; inputs over 4 MiB are therefore hashed by coreutils'
/// `sha256sum` (about 200 MB/s), which every Debian system has.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    if bytes.len() > 4 << 20 {
        return sha256_external(bytes);
    }
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn sha256_external(bytes: &[u8]) -> String {
    use std::io::{Read as _, Write as _};
    let program = tools::require_program("sha256sum", "coreutils");
    let mut child = std::process::Command::new(&program)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut out = String::new();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            stdin
                .write_all(bytes)
                .unwrap_or_else(|e| panic!("writing to sha256sum: {e}"));
        });
        stdout.read_to_string(&mut out).unwrap();
    });
    let status = child.wait().unwrap();
    assert!(status.success(), "sha256sum failed: {status}");
    let hex = out.split_whitespace().next().unwrap_or_default();
    assert_eq!(hex.len(), 64, "sha256sum printed {out:?}");
    format!("sha256:{hex}")
}

/// The digest of the 32-byte gzip'd empty tar that Schema 1 conversion uses
/// for empty layers (spec 03 §3.2).
pub const EMPTY_LAYER_DIGEST: &str =
    "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

/// The bytes behind [`EMPTY_LAYER_DIGEST`].
pub const EMPTY_LAYER_BYTES: [u8; 32] = [
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x09, 0x6e, 0x88, 0x00, 0xff, 0x62, 0x18, 0x05, 0xa3, 0x60, 0x14,
    0x8c, 0x58, 0x00, 0x08, 0x00, 0x00, 0xff, 0xff, 0x2e, 0xaf, 0xb5, 0xef, 0x00, 0x04, 0x00, 0x00,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_and_internal_sha256_agree() {
        use sha2::Digest as _;
        let data = image::random_bytes(1, (4 << 20) + 1);
        assert_eq!(
            sha256_digest(&data),
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)))
        );
    }

    #[test]
    fn empty_layer_bytes_match_their_digest() {
        assert_eq!(sha256_digest(&EMPTY_LAYER_BYTES), EMPTY_LAYER_DIGEST);
    }
}

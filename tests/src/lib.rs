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
//! | [`regcache`] | locating and running the `regcache` binary (`regcache convert`) |
//! | [`keys`] | deterministic P-256 signing keys as SEC 1 PEM files |
//! | [`jws`] | an independent recovery of a signed Schema 1 manifest's canonical payload (spec 04 §4.5) |
//!
//! A missing external tool is a test failure with an install hint, never a
//! silent skip: see [`tools`].

#![allow(clippy::unwrap_used)]

pub mod client;
pub mod image;
pub mod jws;
pub mod keys;
pub mod ports;
pub mod regcache;
pub mod registry;
pub mod skopeo;
pub mod tools;

pub use client::{Fetched, ManifestFormat, RegistryClient};
pub use image::{Image, ImageGen, Layer, LayerKind, OciLayout, Platform};
pub use ports::{free_addr, free_port};
pub use regcache::{ConvertArgs, ConvertOutput, regcache_bin};
pub use registry::{AccessLogEntry, Credentials, Registry, RegistryOptions};
pub use skopeo::{Skopeo, SkopeoFormat};

/// `"sha256:" + hex(sha256(bytes))`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
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
    fn empty_layer_bytes_match_their_digest() {
        assert_eq!(sha256_digest(&EMPTY_LAYER_BYTES), EMPTY_LAYER_DIGEST);
    }
}

//! Streaming hash for every digest algorithm regcache accepts.
//!
//! `regcache_formats::Sha256Hasher` covers sha256 only; blobs may be addressed
//! by sha384/sha512 too, so the store keeps its own small enum. The result is
//! compared on the hex string, which avoids building (and re-validating) a
//! second `Digest` on the hot path.

use regcache_formats::{Algorithm, Digest};
use sha2::Digest as _;

#[derive(Clone)]
pub(crate) enum ContentHasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl ContentHasher {
    pub(crate) fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => ContentHasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => ContentHasher::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => ContentHasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            ContentHasher::Sha256(h) => h.update(bytes),
            ContentHasher::Sha384(h) => h.update(bytes),
            ContentHasher::Sha512(h) => h.update(bytes),
        }
    }

    /// Returns `Ok(())` when the content matches `expected`, otherwise the full
    /// `algorithm:hex` of what was hashed (for the error message; full hex
    /// with leading zeros, see STYLE habit 6).
    pub(crate) fn verify(self, expected: &Digest) -> Result<(), String> {
        let name = expected.algorithm().name();
        let hex = match self {
            ContentHasher::Sha256(h) => hex::encode(h.finalize()),
            ContentHasher::Sha384(h) => hex::encode(h.finalize()),
            ContentHasher::Sha512(h) => hex::encode(h.finalize()),
        };
        if hex == expected.hex() {
            Ok(())
        } else {
            Err(format!("{name}:{hex}"))
        }
    }
}

/// Checks whole in-memory content against a digest.
pub(crate) fn verify_bytes(expected: &Digest, bytes: &[u8]) -> Result<(), String> {
    let mut h = ContentHasher::new(expected.algorithm());
    h.update(bytes);
    h.verify(expected)
}

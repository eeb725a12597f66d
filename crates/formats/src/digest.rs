//! Content digests: `algorithm:encoded`, validated at construction.
//!
//! distribution 2.8 (go-digest) accepts `sha256`, `sha384` and `sha512` with
//! lowercase hex of the exact length; so do we. Anything else is refused, so a
//! [`Digest`] value is always one regcache can verify content against.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A digest algorithm regcache can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    /// The name used in the digest string (`sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha384 => 96,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha384" => Some(Algorithm::Sha384),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// Why a string is not a digest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} has no ':' separating algorithm and hex")]
    MissingSeparator(String),
    #[error("digest {0:?} has an algorithm that is not well formed")]
    BadAlgorithm(String),
    #[error("digest {0:?} uses an unsupported algorithm (sha256, sha384 and sha512 are supported)")]
    Unsupported(String),
    #[error("digest {0:?} has a hex part of the wrong length")]
    BadLength(String),
    #[error("digest {0:?} has a hex part that is not lowercase hex")]
    BadHex(String),
}

/// A validated digest such as `sha256:a3ed95ca…`.
///
/// Stored as the full string so `as_str` is free (it is used as a cache key
/// and a header value on every hot path).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    text: Box<str>,
    algorithm: Algorithm,
}

impl Digest {
    /// Parse and validate `algorithm:hex`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(DigestError::MissingSeparator(truncate(s)));
        };
        if !valid_algorithm_grammar(alg) {
            return Err(DigestError::BadAlgorithm(truncate(s)));
        }
        let Some(algorithm) = Algorithm::from_name(alg) else {
            return Err(DigestError::Unsupported(truncate(s)));
        };
        if hex.len() != algorithm.hex_len() {
            return Err(DigestError::BadLength(truncate(s)));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadHex(truncate(s)));
        }
        Ok(Digest {
            text: s.into(),
            algorithm,
        })
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        let mut h = Sha256Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// The digest of `bytes` with `algorithm`.
    pub fn compute(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let hex = match algorithm {
            Algorithm::Sha256 => hex::encode(sha2::Sha256::digest(bytes)),
            Algorithm::Sha384 => hex::encode(sha2::Sha384::digest(bytes)),
            Algorithm::Sha512 => hex::encode(sha2::Sha512::digest(bytes)),
        };
        Digest {
            text: format!("{}:{hex}", algorithm.name()).into(),
            algorithm,
        }
    }

    /// The sha256 digest whose raw 32 bytes are `bytes` (the inverse of
    /// hex-decoding [`Digest::hex`]); lets an index keep digests compactly.
    pub fn from_sha256_bytes(bytes: &[u8; 32]) -> Self {
        Digest {
            text: format!("sha256:{}", hex::encode(bytes)).into(),
            algorithm: Algorithm::Sha256,
        }
    }

    /// Does `bytes` hash to this digest?
    pub fn verifies(&self, bytes: &[u8]) -> bool {
        Digest::compute(self.algorithm, bytes) == *self
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part (after the colon).
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.name().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Incremental hashing for streamed content, for every supported algorithm.
#[derive(Clone)]
pub struct Sha256Hasher(sha2::Sha256);

impl Sha256Hasher {
    pub fn new() -> Self {
        Sha256Hasher(sha2::Sha256::new())
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Digest {
        Digest {
            text: format!("sha256:{}", hex::encode(self.0.finalize())).into(),
            algorithm: Algorithm::Sha256,
        }
    }
}

impl Default for Sha256Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Hasher")
    }
}

/// `component ( [+._-] component )*`, `component ::= [a-z0-9]+` (OCI grammar).
fn valid_algorithm_grammar(alg: &str) -> bool {
    let mut prev_sep = true;
    for b in alg.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => prev_sep = false,
            b'+' | b'.' | b'_' | b'-' if !prev_sep => prev_sep = true,
            _ => return false,
        }
    }
    !prev_sep
}

/// Error messages quote the input; keep hostile inputs from growing them without bound.
fn truncate(s: &str) -> String {
    crate::error::truncate(s, 160)
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn from_sha256_bytes_round_trips_hex() {
        let d = Digest::parse(EMPTY).unwrap();
        let mut raw = [0u8; 32];
        hex::decode_to_slice(d.hex(), &mut raw).unwrap();
        assert_eq!(Digest::from_sha256_bytes(&raw), d);
        assert_eq!(raw[0], 0xe3);
    }

    #[test]
    fn parses_and_computes() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d, Digest::sha256_of(b""));
        assert_eq!(d.hex().len(), 64);
        assert!(d.verifies(b""));
        assert!(!d.verifies(b"x"));
        assert_eq!(d.to_string(), EMPTY);
        let d512 = Digest::compute(Algorithm::Sha512, b"abc");
        assert_eq!(Digest::parse(d512.as_str()).unwrap(), d512);
        let d384 = Digest::compute(Algorithm::Sha384, b"abc");
        assert!(d384.verifies(b"abc"));
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(matches!(
            Digest::parse("sha256"),
            Err(DigestError::MissingSeparator(_))
        ));
        assert!(matches!(
            Digest::parse("SHA256:00"),
            Err(DigestError::BadAlgorithm(_))
        ));
        assert!(matches!(
            Digest::parse("md5:00"),
            Err(DigestError::Unsupported(_))
        ));
        assert!(matches!(
            Digest::parse("sha256:00"),
            Err(DigestError::BadLength(_))
        ));
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(matches!(Digest::parse(&upper), Err(DigestError::BadHex(_))));
        assert!(matches!(
            Digest::parse("sha256+:00"),
            Err(DigestError::BadAlgorithm(_))
        ));
        let long = "x".repeat(10_000);
        let msg = Digest::parse(&format!("sha256:{long}"))
            .unwrap_err()
            .to_string();
        assert!(msg.len() < 300, "{msg}");
    }
}

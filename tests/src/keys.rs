//! Deterministic signing keys for tests, written with `p256` directly (not
//! through `regcache_formats`, so key loading is tested against an
//! independent writer).

use std::path::Path;

use base64::Engine as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use rand::{RngCore as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

/// A P-256 private key derived from `seed`.
pub fn p256_key(seed: u64) -> p256::SecretKey {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    loop {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        // Almost every 32-byte string is a valid scalar; retry otherwise.
        if let Ok(key) = p256::SecretKey::from_slice(&bytes) {
            return key;
        }
    }
}

/// Writes [`p256_key`] as a SEC 1 `EC PRIVATE KEY` PEM file: the format
/// distribution's `compatibility.schema1.signingkeyfile` and
/// `regcache convert --key` read.
pub fn write_ec_pem(path: &Path, seed: u64) {
    std::fs::write(path, ec_pem(&p256_key(seed)))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// SEC 1 DER of `key` *with* the named-curve parameters.
///
/// Go's `x509.ParseECPrivateKey` (used by distribution and libtrust) fails
/// with "x509: unknown elliptic curve" without the `[0] namedCurve` member,
/// which `p256::SecretKey::to_sec1_der` leaves out; so the structure is
/// written by hand here:
///
/// ```text
/// SEQUENCE { INTEGER 1, OCTET STRING d, [0] { OID prime256v1 }, [1] { BIT STRING 04||X||Y } }
/// ```
pub fn ec_sec1_der(key: &p256::SecretKey) -> Vec<u8> {
    const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let d = key.to_bytes();
    let point = key.public_key().to_encoded_point(false);
    let point = point.as_bytes(); // 65 bytes: 04 || X || Y
    let mut body = vec![0x02, 0x01, 0x01, 0x04, 0x20];
    body.extend_from_slice(&d);
    body.extend_from_slice(&[0xa0, P256_OID.len() as u8]);
    body.extend_from_slice(&P256_OID);
    body.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00]);
    body.extend_from_slice(point);
    let mut der = vec![0x30, body.len() as u8];
    der.extend_from_slice(&body);
    der
}

/// `-----BEGIN EC PRIVATE KEY-----` PEM of [`ec_sec1_der`].
pub fn ec_pem(key: &p256::SecretKey) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(ec_sec1_der(key));
    let mut pem = String::from("-----BEGIN EC PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END EC PRIVATE KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_is_sec1_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
        write_ec_pem(&a, 1);
        write_ec_pem(&b, 1);
        let text = std::fs::read_to_string(&a).unwrap();
        assert!(
            text.starts_with("-----BEGIN EC PRIVATE KEY-----\n"),
            "{text}"
        );
        assert_eq!(text, std::fs::read_to_string(&b).unwrap());
    }

    #[test]
    fn der_round_trips_through_p256() {
        let key = p256_key(9);
        let der = ec_sec1_der(&key);
        assert_eq!(der.len(), 121);
        let parsed = p256::SecretKey::from_sec1_der(&der).unwrap();
        assert_eq!(parsed.to_bytes(), key.to_bytes());
    }
}

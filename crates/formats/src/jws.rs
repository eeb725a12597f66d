//! libtrust-flavoured JSON Web Signatures ("pretty JWS") for Schema 1 manifests
//! (spec chapter 04).
//!
//! A signed Schema 1 manifest is its canonical payload with a `signatures`
//! member spliced in before the final `}`; each signature's protected header
//! records where the splice happened (`formatLength`) and which bytes it
//! replaced (`formatTail`), so the exact payload — and therefore the digest
//! clients pull by — can be recovered from any rendering.
//!
//! What this module does:
//!
//! * [`SigningKey`]: an ECDSA P-256 key with its libtrust key id (`kid`),
//!   loadable from the files docker/distribution accepts as
//!   `compatibility.schema1.signingkeyfile` (SEC 1 `EC PRIVATE KEY` PEM, or a
//!   JWK) plus PKCS #8 `PRIVATE KEY` PEM.
//! * [`sign`]: byte-for-byte the layout libtrust's `PrettySignature` emits,
//!   with the signing time passed in by the caller (this crate does no I/O
//!   and reads no clock).
//! * [`verify`] and [`payload_of`]: parse a signed document, recover the
//!   canonical payload and its digest, and (for `verify`) check every
//!   signature.
//!
//! Only ES256 over P-256 is implemented for verification; documents signed
//! with ES384/ES512/RSA keys or carrying `x5c` certificate chains are
//! reported as [`JwsError::Unsupported`] by [`verify`] (their payload can
//! still be recovered with [`payload_of`], which does not look at keys).
//!
//! All cryptography is RustCrypto's (`p256`, `ecdsa`, `sha2`); this module
//! only does encodings. Everything that parses untrusted bytes returns an
//! error instead of panicking: documents come from upstream registries and
//! from pushes.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD,
};
use p256::ecdsa::signature::{DigestVerifier as _, Signer as _};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::DecodePrivateKey as _;
use serde_json::Value;
use sha2::Digest as _;

use crate::digest::Digest;
use crate::error::ErrorCode;
use crate::gojson::{self, Timestamp};

/// The member libtrust splices into the payload (distribution always uses
/// `signatures`).
const SIGNATURES_KEY: &str = "signatures";

/// The only JOSE algorithm this module signs and verifies with.
pub const ALG_ES256: &str = "ES256";

/// DER prefix of an X.509 SubjectPublicKeyInfo for an uncompressed P-256
/// point: `SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING }`.
/// With it the SPKI (and so the `kid`) is built without a fallible encoder;
/// a test checks it against `p256`'s own `to_public_key_der`.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// DER of a SEC 1 `ECPrivateKey` for P-256 up to the private key octets:
/// `SEQUENCE (119 bytes) { INTEGER 1, OCTET STRING (32 bytes)`.
const SEC1_P256_PREFIX: [u8; 7] = [0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];

/// What follows the private key: `[0] { OID prime256v1 }`, then
/// `[1] { BIT STRING (66 bytes, 0 unused bits) }` holding the uncompressed point.
const SEC1_P256_MIDDLE: [u8; 17] = [
    0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0xa1, 0x44, 0x03, 0x42,
    0x00,
];

/// Byte length of a P-256 coordinate, scalar, and of each half of `r||s`.
const P256_FIELD_LEN: usize = 32;

/// base64url decoding the way libtrust's `joseBase64UrlDecode` does it: the
/// missing `=` padding is tolerated (as is present padding), and so are
/// non-zero trailing bits, since Go's non-strict decoder accepts them.
const JOSE_B64_DECODE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// JWK members that libtrust always computes itself; any extra member with
/// one of these names is dropped instead of being carried along.
const RESERVED_JWK_MEMBERS: [&str; 6] = ["crv", "d", "kid", "kty", "x", "y"];

/// Why signing, verifying, or loading a key failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// The payload handed to [`sign`] is not a non-empty JSON object.
    #[error("payload cannot be signed: {0}")]
    InvalidPayload(&'static str),
    /// The signing time cannot be written as `YYYY-MM-DDTHH:MM:SSZ`.
    #[error("signing time {0} is outside the years 0000-9999")]
    InvalidTime(i64),
    /// The document is not a libtrust pretty JWS (bad JSON, bad protected
    /// header, inconsistent `formatLength`/`formatTail`, ...).
    #[error("malformed signed manifest: {0}")]
    Malformed(String),
    /// The document has no (or an empty) `signatures` member.
    #[error("manifest is not signed: no \"signatures\"")]
    MissingSignatures,
    /// A key (loaded by the caller, or a signature's `jwk`) is unusable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A JWK names a `kid` that is not the fingerprint of its key; libtrust
    /// refuses such keys when parsing them.
    #[error("JWK key id {found:?} does not match the key (its fingerprint is {expected})")]
    KidMismatch { found: String, expected: String },
    /// A signature is well-formed enough to check but does not verify.
    #[error("signature {index} does not verify: {reason}")]
    BadSignature { index: usize, reason: String },
    /// Valid for libtrust, but not implemented here (ES384/ES512/RSA keys,
    /// `x5c` certificate chains).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl JwsError {
    /// The registry error code a handler should answer with.
    ///
    /// Documents that cannot even be parsed (including a `jwk` libtrust
    /// itself would refuse to parse, which makes distribution answer
    /// `MANIFEST_INVALID`) are invalid; signatures that fail, or that this
    /// implementation cannot check, leave the manifest unverified.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            JwsError::InvalidPayload(_)
            | JwsError::Malformed(_)
            | JwsError::MissingSignatures
            | JwsError::InvalidKey(_)
            | JwsError::KidMismatch { .. } => ErrorCode::ManifestInvalid,
            JwsError::BadSignature { .. } | JwsError::Unsupported(_) => {
                ErrorCode::ManifestUnverified
            }
            JwsError::InvalidTime(_) => ErrorCode::Unknown,
        }
    }
}

/// The result of a successful [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The canonical payload (what distribution stores and hashes).
    pub payload: Vec<u8>,
    /// `sha256` of `payload`: the manifest digest for schema 1.
    pub digest: Digest,
    /// The `kid` of each signature's key, in document order.
    pub key_ids: Vec<String>,
}

/// An ECDSA P-256 signing key with its libtrust identity.
///
/// `extra` holds the libtrust "extended fields": PEM headers of a key file
/// (`hosts` split at commas, like libtrust) or the non-standard members of a
/// JWK. libtrust copies them into the public JWK of every signature, so they
/// are kept to produce the same bytes distribution would with the same key
/// file. A generated key has none, which keeps the signed length of a
/// payload fixed (spec §4.6).
#[derive(Clone)]
pub struct SigningKey {
    inner: p256::ecdsa::SigningKey,
    kid: String,
    extra: BTreeMap<String, Value>,
}

impl fmt::Debug for SigningKey {
    /// Only the key id: key material must never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random key from the operating system's RNG.
    pub fn generate() -> Self {
        Self::from_inner(
            p256::ecdsa::SigningKey::random(&mut rand_core::OsRng),
            BTreeMap::new(),
        )
    }

    /// Load a PEM private key: SEC 1 `EC PRIVATE KEY` (what distribution and
    /// libtrust read and write) or PKCS #8 `PRIVATE KEY` (what
    /// `openssl genpkey` writes).
    ///
    /// Like Go's `pem.Decode`, text before the `BEGIN` line is skipped and
    /// `Name: value` headers are accepted; like libtrust, the headers become
    /// extra members of the public JWK (`hosts` as an array split at commas).
    /// Encrypted keys are refused. A leading `EC PARAMETERS` block (what
    /// `openssl ecparam -genkey` writes without `-noout`) is skipped.
    pub fn from_pem(pem: &str) -> Result<Self, JwsError> {
        const PARAMS_END: &str = "-----END EC PARAMETERS-----";
        let mut text = pem;
        let block = loop {
            let block = PemBlock::parse(text)?;
            if block.label != "EC PARAMETERS" {
                break block;
            }
            // `parse` found this END line, so the text strictly shrinks.
            let Some(end) = text.find(PARAMS_END) else {
                return Err(JwsError::InvalidKey("PEM: no private key block".into()));
            };
            text = text.get(end + PARAMS_END.len()..).unwrap_or_default();
        };
        if block.label.contains("ENCRYPTED")
            || block
                .headers
                .iter()
                .any(|(k, v)| k == "Proc-Type" && v.contains("ENCRYPTED"))
        {
            return Err(JwsError::InvalidKey(
                "encrypted PEM keys are not supported".into(),
            ));
        }
        let secret = match block.label.as_str() {
            "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&block.der).map_err(|_| {
                JwsError::InvalidKey("EC PRIVATE KEY is not a valid SEC 1 P-256 key".into())
            })?,
            "PRIVATE KEY" => p256::SecretKey::from_pkcs8_der(&block.der).map_err(|_| {
                JwsError::InvalidKey("PRIVATE KEY is not a valid PKCS #8 P-256 key".into())
            })?,
            "RSA PRIVATE KEY" => {
                return Err(JwsError::Unsupported(
                    "RSA signing keys (only P-256 is supported)".into(),
                ));
            }
            other => {
                return Err(JwsError::InvalidKey(format!(
                    "PEM block {:?} is not a private key",
                    clip(other)
                )));
            }
        };
        let mut extra = BTreeMap::new();
        for (name, value) in block.headers {
            let value = if name == "hosts" {
                Value::Array(
                    value
                        .split(',')
                        .map(|h| Value::String(h.to_owned()))
                        .collect(),
                )
            } else {
                Value::String(value)
            };
            insert_extra(&mut extra, name, value);
        }
        Ok(Self::from_inner(
            p256::ecdsa::SigningKey::from(&secret),
            extra,
        ))
    }

    /// Load a private JWK (`kty` `EC`, `crv` `P-256`, `x`, `y`, `d`).
    ///
    /// As in libtrust: a `kid`, if present, must equal the recomputed
    /// fingerprint, and members other than the standard ones are kept as
    /// extra public JWK members. Unlike libtrust, `x`/`y` must also match
    /// `d`: a mismatched pair would sign with one key while publishing
    /// another, producing signatures nobody can verify.
    pub fn from_jwk(jwk: &str) -> Result<Self, JwsError> {
        let Ok(Value::Object(mut members)) = serde_json::from_str::<Value>(jwk) else {
            return Err(JwsError::InvalidKey("JWK is not a JSON object".into()));
        };
        let public = parse_public_jwk(&members)?;
        let d = take_b64_member(&members, "d")?;
        let secret = p256::SecretKey::from_slice(&d)
            .ok()
            .filter(|_| d.len() == P256_FIELD_LEN)
            .ok_or_else(|| JwsError::InvalidKey("JWK \"d\" is not a valid P-256 scalar".into()))?;
        if secret.public_key() != public {
            return Err(JwsError::InvalidKey(
                "JWK \"x\"/\"y\" do not belong to \"d\"".into(),
            ));
        }
        for name in RESERVED_JWK_MEMBERS {
            members.remove(name);
        }
        Ok(Self::from_inner(
            p256::ecdsa::SigningKey::from(&secret),
            members.into_iter().collect(),
        ))
    }

    /// Load a key file's contents, whatever the file is called, by what they
    /// are: a JSON object (first non-blank character `{`) is a JWK
    /// ([`from_jwk`](Self::from_jwk)), text with a `-----BEGIN` line is PEM
    /// ([`from_pem`](Self::from_pem): SEC 1 or PKCS #8). Anything else is
    /// [`JwsError::InvalidKey`] saying so.
    ///
    /// distribution decides by the file name instead (`.json`/`.jwk` is a
    /// JWK); for every file it can load, the content says the same.
    pub fn from_key_text(text: &str) -> Result<Self, JwsError> {
        if text.trim_start().starts_with('{') {
            Self::from_jwk(text)
        } else if text.contains("-----BEGIN") {
            Self::from_pem(text)
        } else {
            Err(JwsError::InvalidKey(
                "neither a JWK (a JSON object) nor PEM (a \"-----BEGIN\" line)".into(),
            ))
        }
    }

    /// SEC 1 `EC PRIVATE KEY` PEM, the format distribution's `signingkeyfile`
    /// reads. Extra members that libtrust can store as PEM headers (strings,
    /// and `hosts` arrays joined with commas) are written as headers, so
    /// `from_pem(to_pem())` keeps them; others are dropped, as in libtrust.
    /// libtrust also adds a `keyID` header when saving; that is not done
    /// here, because reloading such a file adds `keyID` to the public JWK
    /// and changes every signed document.
    ///
    /// The DER always names the curve (`[0] prime256v1`): Go's
    /// `x509.ParseECPrivateKey`, which distribution uses, rejects SEC 1 keys
    /// without it, and `p256`'s own `to_sec1_der` omits it. The layout is
    /// the one Go's `x509.MarshalECPrivateKey` and openssl write.
    pub fn to_pem(&self) -> String {
        let der = self.sec1_der();
        let mut headers: Vec<(&str, String)> = Vec::new();
        for (name, value) in &self.extra {
            let text = match value {
                Value::String(s) => Some(s.clone()),
                Value::Array(items) if name == "hosts" => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.join(",")),
                _ => None,
            };
            if let Some(text) = text {
                let safe = |s: &str| !s.contains(['\n', '\r']);
                if safe(name) && safe(&text) && !name.contains(':') && !name.trim().is_empty() {
                    headers.push((name.as_str(), text));
                }
            }
        }
        // Go's pem.Encode writes Proc-Type first, then the others sorted.
        headers.sort_by_key(|(name, _)| (*name != "Proc-Type", *name));
        let mut out = String::from("-----BEGIN EC PRIVATE KEY-----\n");
        for (name, value) in &headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        }
        if !headers.is_empty() {
            out.push('\n');
        }
        let body = Zeroizing::new(STANDARD.encode(der.as_slice()));
        for chunk in body.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END EC PRIVATE KEY-----\n");
        out
    }

    /// SEC 1 `ECPrivateKey` DER with named curve and public key (121 bytes).
    fn sec1_der(&self) -> Zeroizing<Vec<u8>> {
        let secret = Zeroizing::new(self.inner.to_bytes());
        let point = self.inner.verifying_key().to_encoded_point(false);
        let mut der = Zeroizing::new(Vec::with_capacity(121));
        der.extend_from_slice(&SEC1_P256_PREFIX);
        der.extend_from_slice(&secret);
        der.extend_from_slice(&SEC1_P256_MIDDLE);
        der.extend_from_slice(point.as_bytes());
        der
    }

    /// The private JWK, compact with members sorted (libtrust's
    /// `MarshalJSON`). Contains the secret scalar `d`.
    pub fn to_jwk(&self) -> String {
        let secret = Zeroizing::new(self.inner.to_bytes());
        let mut members = self.public_members();
        members.insert(
            "d".into(),
            Value::String(URL_SAFE_NO_PAD.encode(&secret[..])),
        );
        let mut out = Vec::new();
        GoJson::compact(&mut out).value(&Value::Object(members.into_iter().collect()), 0);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The ECDSA key itself, for other P-256 signatures made with a key
    /// file of this format (regcache's client tokens).
    pub fn ecdsa(&self) -> &p256::ecdsa::SigningKey {
        &self.inner
    }

    /// The libtrust key id (spec §4.2).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK as it appears in signatures, compact with members
    /// sorted: `crv`, `kid`, `kty`, `x`, `y` plus any extra members.
    pub fn public_jwk_json(&self) -> String {
        let mut out = Vec::new();
        GoJson::compact(&mut out).value(
            &Value::Object(self.public_members().into_iter().collect()),
            0,
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The extra public JWK members (PEM headers or non-standard JWK
    /// members), see the type documentation.
    pub fn extra_members(&self) -> &BTreeMap<String, Value> {
        &self.extra
    }

    fn from_inner(inner: p256::ecdsa::SigningKey, extra: BTreeMap<String, Value>) -> Self {
        let kid = kid_of(&p256::PublicKey::from(inner.verifying_key()));
        SigningKey { inner, kid, extra }
    }

    /// Public JWK members, sorted (BTreeMap order is Go's byte-wise key order).
    fn public_members(&self) -> BTreeMap<String, Value> {
        let point = self.inner.verifying_key().to_encoded_point(false);
        let mut members = self.extra.clone();
        let mut put = |k: &str, v: String| members.insert(k.to_owned(), Value::String(v));
        put("crv", "P-256".into());
        put("kid", self.kid.clone());
        put("kty", "EC".into());
        put(
            "x",
            URL_SAFE_NO_PAD.encode(point.x().map(|x| &x[..]).unwrap_or_default()),
        );
        put(
            "y",
            URL_SAFE_NO_PAD.encode(point.y().map(|y| &y[..]).unwrap_or_default()),
        );
        members
    }
}

/// Recompute a P-256 key id from a JWK's base64url `x` and `y`.
pub fn key_id_from_xy(x_b64url: &str, y_b64url: &str) -> Result<String, JwsError> {
    let mut members = serde_json::Map::new();
    members.insert("kty".into(), Value::String("EC".into()));
    members.insert("crv".into(), Value::String("P-256".into()));
    members.insert("x".into(), Value::String(x_b64url.into()));
    members.insert("y".into(), Value::String(y_b64url.into()));
    Ok(kid_of(&parse_public_jwk(&members)?))
}

/// Sign `payload` (a JSON object; for Schema 1 the canonical payload of
/// chapter 03) with `key` at `unix_time_secs`, producing libtrust's pretty
/// signed document (spec §4.3–4.4).
///
/// Signatures use RFC 6979 deterministic nonces, so the output is a pure
/// function of the arguments: re-signing with the same key and time yields
/// the same bytes (libtrust uses random nonces; verifiers cannot tell).
pub fn sign(payload: &[u8], key: &SigningKey, unix_time_secs: i64) -> Result<Vec<u8>, JwsError> {
    if serde_json::from_slice::<serde_json::Map<String, Value>>(payload).is_err() {
        return Err(JwsError::InvalidPayload("not a JSON object"));
    }
    // libtrust: the splice point is after the last non-space byte before the
    // closing brace. For valid JSON only JSON whitespace can surround it.
    let close = last_non_space(payload).ok_or(JwsError::InvalidPayload("empty"))?;
    if payload.get(close) != Some(&b'}') {
        return Err(JwsError::InvalidPayload("does not end with '}'"));
    }
    let last = last_non_space(payload.get(..close).unwrap_or_default())
        .ok_or(JwsError::InvalidPayload("no opening brace"))?;
    match payload.get(last) {
        Some(b',') => return Err(JwsError::InvalidPayload("trailing comma before '}'")),
        // libtrust would emit `{,"signatures":…}`, which is not JSON.
        Some(b'{') => return Err(JwsError::InvalidPayload("empty object")),
        _ => {}
    }
    let format_length = last + 1;
    let (head, tail) = payload.split_at(format_length);

    let protected_json = format!(
        r#"{{"formatLength":{format_length},"formatTail":"{}","time":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(tail),
        rfc3339_utc(unix_time_secs)?,
    );
    let protected = URL_SAFE_NO_PAD.encode(protected_json);
    let signing_input = format!("{protected}.{}", URL_SAFE_NO_PAD.encode(payload));
    let signature: p256::ecdsa::Signature = key.inner.sign(signing_input.as_bytes());

    let jwk = key
        .public_members()
        .into_iter()
        .map(|(k, v)| (k, GoNode::Value(v)))
        .collect();
    let signatures = GoNode::Array(vec![GoNode::Object(vec![
        (
            "header".into(),
            GoNode::Object(vec![
                ("jwk".into(), GoNode::Object(jwk)),
                ("alg".into(), GoNode::Value(Value::String(ALG_ES256.into()))),
            ]),
        ),
        (
            "signature".into(),
            GoNode::Value(Value::String(URL_SAFE_NO_PAD.encode(signature.to_bytes()))),
        ),
        ("protected".into(), GoNode::Value(Value::String(protected))),
    ])]);

    let indent = detect_indent(payload);
    let mut out = Vec::with_capacity(payload.len() + 700);
    out.extend_from_slice(head);
    out.push(b',');
    if indent.is_empty() {
        out.extend_from_slice(format!("\"{SIGNATURES_KEY}\":").as_bytes());
        GoJson::compact(&mut out).node(&signatures, 0);
    } else {
        out.push(b'\n');
        out.extend_from_slice(indent);
        out.extend_from_slice(format!("\"{SIGNATURES_KEY}\": ").as_bytes());
        GoJson::pretty(&mut out, indent, indent).node(&signatures, 0);
        out.push(b'\n');
    }
    out.push(b'}');
    Ok(out)
}

/// Recover the canonical payload and its digest from a signed document
/// without checking any signature or key (spec §4.5).
///
/// This is what a registry does for schema 1 manifests it stores or relays:
/// the digest names the payload, and modern clients do not verify the JWS.
/// The payload itself is not validated as a manifest here.
pub fn payload_of(doc: &[u8]) -> Result<(Vec<u8>, Digest), JwsError> {
    let parsed = ParsedDoc::parse(doc)?;
    let digest = Digest::sha256_of(&parsed.payload);
    Ok((parsed.payload, digest))
}

/// Recover the payload like [`payload_of`] and verify every signature with
/// its `jwk` (all must verify, as in libtrust).
pub fn verify(doc: &[u8]) -> Result<Verified, JwsError> {
    let parsed = ParsedDoc::parse(doc)?;
    let encoded_payload = URL_SAFE_NO_PAD.encode(&parsed.payload);
    let mut key_ids = Vec::with_capacity(parsed.signatures.len());
    for (index, sig) in parsed.signatures.iter().enumerate() {
        key_ids.push(verify_one(index, sig, &encoded_payload)?);
    }
    let digest = Digest::sha256_of(&parsed.payload);
    Ok(Verified {
        payload: parsed.payload,
        digest,
        key_ids,
    })
}

/// Verify one signature object; returns the key's `kid`.
fn verify_one(index: usize, sig: &Value, encoded_payload: &str) -> Result<String, JwsError> {
    let bad = |reason: &str| JwsError::BadSignature {
        index,
        reason: reason.to_owned(),
    };
    let Some(header) = sig.get("header").and_then(Value::as_object) else {
        return Err(bad("missing \"header\""));
    };
    // libtrust prefers the certificate chain over the jwk when both exist.
    match header.get("x5c") {
        None | Some(Value::Null) => {}
        Some(Value::Array(chain)) if chain.is_empty() => {}
        Some(Value::Array(_)) => {
            return Err(JwsError::Unsupported(format!(
                "signature {index} uses an x5c certificate chain"
            )));
        }
        Some(_) => return Err(bad("\"x5c\" is not an array")),
    }
    let jwk = match header.get("jwk") {
        Some(Value::Object(jwk)) => jwk,
        None | Some(Value::Null) => return Err(bad("no public key (\"jwk\")")),
        Some(_) => return Err(JwsError::InvalidKey("\"jwk\" is not an object".into())),
    };
    let public = parse_public_jwk(jwk)?;
    match header.get("alg").and_then(Value::as_str) {
        Some(ALG_ES256) => {}
        Some(alg) => {
            return Err(bad(&format!(
                "algorithm {:?} does not match a P-256 key",
                clip(alg)
            )));
        }
        None => return Err(bad("missing \"alg\"")),
    }
    let Some(protected) = sig.get("protected").and_then(Value::as_str) else {
        return Err(bad("missing \"protected\""));
    };
    let Some(signature) = sig.get("signature").and_then(Value::as_str) else {
        return Err(bad("missing \"signature\""));
    };
    let raw = jose_b64_decode(signature).ok_or_else(|| bad("signature is not base64url"))?;
    if raw.len() != 2 * P256_FIELD_LEN {
        return Err(bad("signature is not 64 bytes (r||s)"));
    }
    let signature =
        p256::ecdsa::Signature::from_slice(&raw).map_err(|_| bad("r or s is out of range"))?;
    // The signing input is `protected.b64u(payload)`; hash it in pieces so a
    // document with many signatures does not copy the payload for each.
    let signing_input = sha2::Sha256::new()
        .chain_update(protected)
        .chain_update(b".")
        .chain_update(encoded_payload);
    p256::ecdsa::VerifyingKey::from(&public)
        .verify_digest(signing_input, &signature)
        .map_err(|_| bad("ECDSA verification failed"))?;
    Ok(kid_of(&public))
}

/// The parts of a signed document shared by [`verify`] and [`payload_of`].
struct ParsedDoc {
    payload: Vec<u8>,
    signatures: Vec<Value>,
}

impl ParsedDoc {
    fn parse(doc: &[u8]) -> Result<Self, JwsError> {
        // Only the top level is materialised as a map; member values stay
        // raw so a large manifest is not turned into a tree.
        // Duplicate keys: the last one wins, as with Go's map decoding.
        let top: std::collections::HashMap<String, &serde_json::value::RawValue> =
            serde_json::from_slice(doc)
                .map_err(|e| JwsError::Malformed(format!("not a JSON object: {e}")))?;
        let Some(raw) = top.get(SIGNATURES_KEY) else {
            return Err(JwsError::MissingSignatures);
        };
        let signatures = match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Null) => return Err(JwsError::MissingSignatures),
            Ok(Value::Array(sigs)) if sigs.is_empty() => return Err(JwsError::MissingSignatures),
            Ok(Value::Array(sigs)) => sigs,
            _ => return Err(JwsError::Malformed("\"signatures\" is not an array".into())),
        };
        let mut format: Option<(usize, Vec<u8>)> = None;
        for (index, sig) in signatures.iter().enumerate() {
            let this = parse_protected(index, sig)?;
            match &format {
                None => format = Some(this),
                Some(first) if *first == this => {}
                Some(_) => {
                    return Err(JwsError::Malformed(format!(
                        "signature {index} disagrees on formatLength/formatTail"
                    )));
                }
            }
        }
        let Some((format_length, tail)) = format else {
            return Err(JwsError::MissingSignatures);
        };
        let Some(head) = doc.get(..format_length) else {
            return Err(JwsError::Malformed(
                "formatLength exceeds the document".into(),
            ));
        };
        let mut payload = Vec::with_capacity(head.len() + tail.len());
        payload.extend_from_slice(head);
        payload.extend_from_slice(&tail);
        Ok(ParsedDoc {
            payload,
            signatures,
        })
    }
}

/// Decode a signature's protected header into `(formatLength, formatTail)`.
fn parse_protected(index: usize, sig: &Value) -> Result<(usize, Vec<u8>), JwsError> {
    let bad = |what: &str| JwsError::Malformed(format!("signature {index}: {what}"));
    let protected = sig
        .get("protected")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing \"protected\" string"))?;
    let json =
        jose_b64_decode(protected).ok_or_else(|| bad("protected header is not base64url"))?;
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&json) else {
        return Err(bad("protected header is not a JSON object"));
    };
    // Go decodes numbers as float64 and truncates to int.
    let format_length = header
        .get("formatLength")
        .and_then(Value::as_f64)
        .filter(|f| f.is_finite() && *f >= 0.0)
        .ok_or_else(|| bad("missing or negative formatLength"))?;
    let tail = header
        .get("formatTail")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing formatTail"))?;
    let tail = jose_b64_decode(tail).ok_or_else(|| bad("formatTail is not base64url"))?;
    // `as` saturates; anything beyond the document is rejected by the caller.
    Ok((format_length as usize, tail))
}

/// Parse the public part of an EC JWK, checking its `kid` like libtrust.
fn parse_public_jwk(members: &serde_json::Map<String, Value>) -> Result<p256::PublicKey, JwsError> {
    match members.get("kty").and_then(Value::as_str) {
        Some("EC") => {}
        Some("RSA") => return Err(JwsError::Unsupported("RSA keys".into())),
        Some(other) => {
            return Err(JwsError::InvalidKey(format!(
                "JWK kty {:?} is not EC",
                clip(other)
            )));
        }
        None => return Err(JwsError::InvalidKey("JWK has no string \"kty\"".into())),
    }
    match members.get("crv").and_then(Value::as_str) {
        Some("P-256") => {}
        Some(crv @ ("P-384" | "P-521")) => {
            return Err(JwsError::Unsupported(format!("EC curve {crv}")));
        }
        Some(other) => {
            return Err(JwsError::InvalidKey(format!(
                "JWK curve {:?} is unknown",
                clip(other)
            )));
        }
        None => return Err(JwsError::InvalidKey("JWK has no string \"crv\"".into())),
    }
    let x = take_b64_member(members, "x")?;
    let y = take_b64_member(members, "y")?;
    if x.len() != P256_FIELD_LEN || y.len() != P256_FIELD_LEN {
        return Err(JwsError::InvalidKey(
            "JWK x and y must be 32 bytes each".into(),
        ));
    }
    let mut sec1 = Vec::with_capacity(1 + 2 * P256_FIELD_LEN);
    sec1.push(0x04);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    let public = p256::PublicKey::from_sec1_bytes(&sec1)
        .map_err(|_| JwsError::InvalidKey("JWK x/y is not a point on P-256".into()))?;
    match members.get("kid") {
        None => {}
        Some(Value::String(found)) => {
            let expected = kid_of(&public);
            if *found != expected {
                return Err(JwsError::KidMismatch {
                    found: clip(found),
                    expected,
                });
            }
        }
        Some(_) => return Err(JwsError::InvalidKey("JWK \"kid\" is not a string".into())),
    }
    Ok(public)
}

fn take_b64_member(
    members: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Vec<u8>, JwsError> {
    let text = members
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| JwsError::InvalidKey(format!("JWK has no string {name:?}")))?;
    jose_b64_decode(text)
        .ok_or_else(|| JwsError::InvalidKey(format!("JWK {name:?} is not base64url")))
}

fn insert_extra(extra: &mut BTreeMap<String, Value>, name: String, value: Value) {
    if !RESERVED_JWK_MEMBERS.contains(&name.as_str()) {
        extra.insert(name, value);
    }
}

/// libtrust fingerprint (spec §4.2): SHA-256 of the SPKI DER, first 240 bits,
/// base32 (48 characters), 12 groups of 4 joined with `:`.
fn kid_of(public: &p256::PublicKey) -> String {
    let point = public.to_encoded_point(false);
    let mut hasher = sha2::Sha256::new();
    hasher.update(P256_SPKI_PREFIX);
    hasher.update(point.as_bytes());
    let hash = hasher.finalize();
    let encoded = data_encoding::BASE32_NOPAD.encode(hash.get(..30).unwrap_or_default());
    let groups: Vec<&str> = encoded
        .as_bytes()
        .chunks(4)
        .map(|g| std::str::from_utf8(g).unwrap_or_default())
        .collect();
    groups.join(":")
}

/// libtrust's `joseBase64UrlDecode`: re-add padding; a length of 1 mod 4
/// can never be valid.
fn jose_b64_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    JOSE_B64_DECODE.decode(text).ok()
}

/// Index of the last byte that is not JSON whitespace. Go's
/// `unicode.IsSpace` accepts more, but in valid JSON only these four can
/// surround the closing brace.
fn last_non_space(bytes: &[u8]) -> Option<usize> {
    bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// libtrust's `detectJSONIndent`: the bytes between `{\n` and the first `"`.
/// Empty means the compact form.
fn detect_indent(payload: &[u8]) -> &[u8] {
    if payload.len() > 2 && payload.starts_with(b"{\n") {
        let after_brace = payload.get(1..).unwrap_or_default();
        if let Some(quote) = after_brace.iter().position(|&b| b == b'"')
            && quote > 0
        {
            return payload.get(2..quote + 1).unwrap_or_default();
        }
    }
    &[]
}

/// `YYYY-MM-DDTHH:MM:SSZ`, Go's `time.RFC3339` layout for a UTC time.
fn rfc3339_utc(unix_time_secs: i64) -> Result<String, JwsError> {
    Timestamp::from_unix_utc(unix_time_secs)
        .and_then(|t| t.to_rfc3339_nano().ok())
        .ok_or(JwsError::InvalidTime(unix_time_secs))
}

/// Cut attacker-controlled text to a size fit for an error message.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// One PEM block, decoded the way Go's `encoding/pem` does.
struct PemBlock {
    label: String,
    headers: Vec<(String, String)>,
    der: Vec<u8>,
}

impl PemBlock {
    fn parse(text: &str) -> Result<Self, JwsError> {
        let err = |what: &str| JwsError::InvalidKey(format!("PEM: {what}"));
        let mut lines = text.lines();
        let label = loop {
            let Some(line) = lines.next() else {
                return Err(err("no BEGIN line"));
            };
            if let Some(label) = line
                .trim_end()
                .strip_prefix("-----BEGIN ")
                .and_then(|rest| rest.strip_suffix("-----"))
            {
                break label.to_owned();
            }
        };
        let end = format!("-----END {label}-----");
        let mut headers = Vec::new();
        let mut in_headers = true;
        let mut body = String::new();
        let mut ended = false;
        for line in lines {
            if line.trim() == end {
                ended = true;
                break;
            }
            if in_headers {
                if let Some((name, value)) = line.split_once(':') {
                    headers.push((name.trim().to_owned(), value.trim().to_owned()));
                    continue;
                }
                in_headers = false;
            }
            body.extend(line.chars().filter(|c| !c.is_ascii_whitespace()));
        }
        if !ended {
            return Err(err("no matching END line"));
        }
        let der = STANDARD
            .decode(body)
            .map_err(|_| err("body is not base64"))?;
        Ok(PemBlock {
            label,
            headers,
            der,
        })
    }
}

/// A JSON tree with an explicit member order, for the parts libtrust
/// marshals from Go structs (fixed field order) rather than maps.
enum GoNode {
    /// Any JSON value; objects inside are written with sorted keys like a Go
    /// `map[string]interface{}`.
    Value(Value),
    Object(Vec<(String, GoNode)>),
    Array(Vec<GoNode>),
}

/// Writes JSON like Go's `encoding/json` (`Marshal` or `MarshalIndent`):
/// `": "` separators when indenting, empty containers as `{}`/`[]`, HTML
/// characters escaped (strings by [`gojson::append_string`]), numbers as float64.
struct GoJson<'a> {
    out: &'a mut Vec<u8>,
    /// `None` for compact output; `(prefix, indent)` for `MarshalIndent`.
    pretty: Option<(&'a [u8], &'a [u8])>,
}

impl<'a> GoJson<'a> {
    fn compact(out: &'a mut Vec<u8>) -> Self {
        GoJson { out, pretty: None }
    }

    fn pretty(out: &'a mut Vec<u8>, prefix: &'a [u8], indent: &'a [u8]) -> Self {
        GoJson {
            out,
            pretty: Some((prefix, indent)),
        }
    }

    fn newline(&mut self, depth: usize) {
        if let Some((prefix, indent)) = self.pretty {
            self.out.push(b'\n');
            self.out.extend_from_slice(prefix);
            for _ in 0..depth {
                self.out.extend_from_slice(indent);
            }
        }
    }

    fn colon(&mut self) {
        self.out
            .extend_from_slice(if self.pretty.is_some() { b": " } else { b":" });
    }

    fn node(&mut self, node: &GoNode, depth: usize) {
        match node {
            GoNode::Value(v) => self.value(v, depth),
            GoNode::Object(members) => self.object(
                members.iter().map(|(k, v)| (k.as_str(), v)),
                depth,
                |w, v, d| w.node(v, d),
            ),
            GoNode::Array(items) => self.array(items.iter(), depth, |w, v, d| w.node(v, d)),
        }
    }

    fn value(&mut self, value: &Value, depth: usize) {
        match value {
            Value::Null => self.out.extend_from_slice(b"null"),
            Value::Bool(b) => self
                .out
                .extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Number(n) => {
                let text = n.as_f64().map(go_float).unwrap_or_else(|| n.to_string());
                self.out.extend_from_slice(text.as_bytes());
            }
            Value::String(s) => gojson::append_string(self.out, s),
            Value::Array(items) => self.array(items.iter(), depth, |w, v, d| w.value(v, d)),
            Value::Object(map) => {
                // Sort explicitly: serde_json's map order depends on features.
                let mut members: Vec<(&str, &Value)> =
                    map.iter().map(|(k, v)| (k.as_str(), v)).collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                self.object(members.into_iter(), depth, |w, v, d| w.value(v, d))
            }
        }
    }

    fn object<'v, T: 'v>(
        &mut self,
        members: impl ExactSizeIterator<Item = (&'v str, &'v T)>,
        depth: usize,
        mut write: impl FnMut(&mut Self, &T, usize),
    ) {
        if members.len() == 0 {
            self.out.extend_from_slice(b"{}");
            return;
        }
        self.out.push(b'{');
        for (i, (key, value)) in members.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.newline(depth + 1);
            gojson::append_string(self.out, key);
            self.colon();
            write(self, value, depth + 1);
        }
        self.newline(depth);
        self.out.push(b'}');
    }

    fn array<'v, T: 'v>(
        &mut self,
        items: impl ExactSizeIterator<Item = &'v T>,
        depth: usize,
        mut write: impl FnMut(&mut Self, &T, usize),
    ) {
        if items.len() == 0 {
            self.out.extend_from_slice(b"[]");
            return;
        }
        self.out.push(b'[');
        for (i, item) in items.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.newline(depth + 1);
            write(self, item, depth + 1);
        }
        self.newline(depth);
        self.out.push(b']');
    }
}

/// Format a float64 like Go's `encoding/json`: shortest round-trip digits,
/// plain notation for 1e-6 <= |f| < 1e21, otherwise exponent form with an
/// explicit sign and no leading zero in the exponent.
fn go_float(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let text = format!("{f:e}");
        match text.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
            _ => text,
        }
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spki_prefix_matches_p256_encoder() {
        use p256::pkcs8::EncodePublicKey as _;
        let key = SigningKey::generate();
        let public = p256::PublicKey::from(key.inner.verifying_key());
        let der = public.to_public_key_der().unwrap();
        assert_eq!(der.as_bytes().len(), 91);
        assert_eq!(&der.as_bytes()[..26], &P256_SPKI_PREFIX);
        assert_eq!(
            &der.as_bytes()[26..],
            public.to_encoded_point(false).as_bytes()
        );
    }

    #[test]
    fn go_strings_and_numbers() {
        let mut out = Vec::new();
        GoJson::compact(&mut out).value(
            &serde_json::json!({"b": "<a&b>\u{8}\u{2028}é\"\\", "a": [1.0, 1e21, 1.5e-7, 0.5, -0.0, 12345678], "c": {}}),
            0,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":[1,1e+21,1.5e-7,0.5,-0,12345678],"b":"\u003ca\u0026b\u003e\u0008\u2028é\"\\","c":{}}"#
        );
        // Keys and the remaining escapes of E1 (the shared gojson encoder).
        let mut out = Vec::new();
        GoJson::compact(&mut out).value(
            &serde_json::json!({"k>\u{2029}": "\u{0}\u{1f}\n\r\t\u{c}\u{7f}\u{2027}"}),
            0,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"k\\u003e\\u2029\":\"\\u0000\\u001f\\n\\r\\t\\u000c\u{7f}\u{2027}\"}"
        );
    }

    #[test]
    fn go_indent_layout() {
        let mut out = Vec::new();
        GoJson::pretty(&mut out, b"P", b"..").value(&serde_json::json!({"k": [1, {}], "e": []}), 0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\nP..\"e\": [],\nP..\"k\": [\nP....1,\nP....{}\nP..]\nP}"
        );
    }

    #[test]
    fn indent_detection() {
        assert_eq!(detect_indent(b"{\n   \"a\": 1\n}"), b"   ");
        assert_eq!(detect_indent(b"{\n\"a\": 1\n}"), b"");
        assert_eq!(detect_indent(b"{\"a\": 1}"), b"");
        assert_eq!(detect_indent(b"{\n}"), b"");
    }

    #[test]
    fn time_layout() {
        assert_eq!(rfc3339_utc(1795374044).unwrap(), "2026-11-22T19:00:44Z");
        assert_eq!(rfc3339_utc(0).unwrap(), "1970-01-01T00:00:00Z");
        assert!(rfc3339_utc(i64::MAX).is_err());
        assert!(rfc3339_utc(-62_167_219_201).is_err());
    }
}

//! The short-lived ES256 JSON Web Tokens regcache issues to its clients (the
//! registry token flow, spec §5.9, as distribution's token auth) and checks
//! on every `/v2/` request that carries one.
//!
//! A JWT here is the compact JWS `base64url(header).base64url(claims).
//! base64url(r‖s)` with the header `{"typ":"JWT","alg":"ES256","kid":…}`,
//! signed with regcache's P-256 key. Written with `p256` directly rather
//! than a JWT crate: regcache both issues and verifies the tokens, with one
//! algorithm, so the only verification path is "ES256 with our key" (no
//! algorithm negotiation to get wrong), and `jsonwebtoken`'s pure-Rust
//! backend would pull RSA, Ed25519 and HMAC in for nothing. The project
//! already signs Schema 1 manifests with the same key type
//! (`regcache_formats::jws`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Who signs: the `iss` claim of every token.
pub const ISSUER: &str = "regcache";

/// How far `nbf`/`iat` may lie in the future (clocks of one process agree;
/// this only absorbs rounding).
const LEEWAY_SECS: i64 = 5;

/// One `access` entry: a resource and the actions granted on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// A token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user name; empty for an anonymous client.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<ResourceActions>,
}

impl Claims {
    /// Whether the token grants `action` on the resource `kind:name`.
    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == kind && a.name == name && a.actions.iter().any(|x| x == action || x == "*")
        })
    }
}

/// Why a token is not accepted. The client is told only that it is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token for another service or issuer")]
    Audience,
}

impl TokenError {
    /// The `reason` label of `regcache_auth_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Expired => "expired_token",
            _ => "invalid_token",
        }
    }
}

/// The key tokens are signed and verified with.
#[derive(Clone)]
pub struct TokenKey {
    signing: SigningKey,
    verifying: VerifyingKey,
    kid: String,
}

impl std::fmt::Debug for TokenKey {
    /// Only the key id.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    typ: Option<String>,
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl TokenKey {
    pub fn new(signing: SigningKey, kid: impl Into<String>) -> TokenKey {
        TokenKey {
            verifying: *signing.verifying_key(),
            signing,
            kid: kid.into(),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signed compact JWT of `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        let header = Header {
            typ: Some("JWT".into()),
            alg: "ES256".into(),
            kid: Some(self.kid.clone()),
        };
        let enc = |v: &[u8]| B64.encode(v);
        let head = serde_json::to_vec(&header).unwrap_or_default();
        let body = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!("{}.{}", enc(&head), enc(&body));
        let sig: Signature = self.signing.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", enc(&sig.to_bytes()))
    }

    /// The claims of `token` if it is ours (ES256 with this key), for
    /// `audience`, and valid at `now` (unix seconds).
    pub fn verify(&self, token: &str, audience: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let dec = |p: &str| B64.decode(p).map_err(|_| TokenError::Malformed);
        let header: Header = serde_json::from_slice(&dec(h)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != "ES256" {
            return Err(TokenError::Signature);
        }
        let sig = Signature::from_slice(&dec(s)?).map_err(|_| TokenError::Signature)?;
        let signing_input = &token[..h.len() + 1 + c.len()];
        self.verifying
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = serde_json::from_slice(&dec(c)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != ISSUER || claims.aud != audience {
            return Err(TokenError::Audience);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + LEEWAY_SECS || claims.iat > now + LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// One requested scope: `repository:NAME:pull,push`, `registry:catalog:*`
/// (a type may carry a class, `repository(plugin)`, which is dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    /// Parse one scope; the name may itself hold ':' (a registry host with
    /// a port), so the type ends at the first ':' and the actions start
    /// after the last one.
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
        if kind.is_empty() || name.is_empty() || name.len() > 512 {
            return None;
        }
        let actions = actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        Some(Scope {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions,
        })
    }

    /// `type:name:a,b`, as a challenge names it.
    pub fn render(kind: &str, name: &str, actions: &[&str]) -> String {
        format!("{kind}:{name}:{}", actions.join(","))
    }
}

/// A fresh token id.
pub fn jti() -> String {
    use rand_core::RngCore as _;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    hex_lower(&b)
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::new(SigningKey::random(&mut rand_core::OsRng), "KID")
    }

    fn claims(now: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: "regcache".into(),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: jti(),
            access: vec![ResourceActions {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into()],
            }],
        }
    }

    #[test]
    fn round_trip() {
        let k = key();
        let now = 1_700_000_000;
        let c = claims(now);
        let t = k.issue(&c);
        let got = k.verify(&t, "regcache", now + 10).unwrap();
        assert_eq!(got, c);
        assert!(got.grants("repository", "team/app", "pull"));
        assert!(!got.grants("repository", "team/app", "push"));
        assert!(!got.grants("repository", "team/other", "pull"));
        let header = String::from_utf8(B64.decode(t.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header, r#"{"typ":"JWT","alg":"ES256","kid":"KID"}"#);
    }

    #[test]
    fn time_audience_and_key_are_checked() {
        let k = key();
        let now = 1_700_000_000;
        let t = k.issue(&claims(now));
        assert_eq!(
            k.verify(&t, "regcache", now + 300),
            Err(TokenError::Expired)
        );
        assert_eq!(
            k.verify(&t, "regcache", now - 60),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(k.verify(&t, "other", now), Err(TokenError::Audience));
        assert_eq!(
            key().verify(&t, "regcache", now),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn tampering_is_refused() {
        let k = key();
        let now = 1_700_000_000;
        let t = k.issue(&claims(now));
        let parts: Vec<&str> = t.split('.').collect();
        // More access in the claims, same signature.
        let mut c = claims(now);
        c.access[0].actions.push("push".into());
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert_eq!(
            k.verify(&forged, "regcache", now),
            Err(TokenError::Signature)
        );
        // alg "none", and no signature at all.
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"typ":"JWT","alg":"none"}"#),
            parts[1]
        );
        assert_eq!(k.verify(&none, "regcache", now), Err(TokenError::Signature));
        let hs = format!(
            "{}.{}.{}",
            B64.encode(br#"{"alg":"HS256"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(k.verify(&hs, "regcache", now), Err(TokenError::Signature));
        // A flipped signature bit; garbage.
        let mut sig = B64.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
        assert_eq!(
            k.verify(&flipped, "regcache", now),
            Err(TokenError::Signature)
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(
                k.verify(bad, "regcache", now),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(
            Scope::parse("repository:team/app:pull,push"),
            Some(Scope {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into(), "push".into()]
            })
        );
        let s = Scope::parse("repository(plugin):127.0.0.1:5000/a/b:pull").unwrap();
        assert_eq!(
            (s.kind.as_str(), s.name.as_str()),
            ("repository", "127.0.0.1:5000/a/b")
        );
        assert_eq!(Scope::parse("registry:catalog:*").unwrap().actions, ["*"]);
        assert_eq!(
            Scope::parse("repository:a:").unwrap().actions,
            Vec::<String>::new()
        );
        assert_eq!(Scope::parse("nonsense"), None);
        assert_eq!(Scope::parse("repository::pull"), None);
        assert_eq!(
            Scope::render("repository", "a/b", &["pull", "push"]),
            "repository:a/b:pull,push"
        );
    }
}

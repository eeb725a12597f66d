//! `Authorization: Basic` credentials, and the rule for plain HTTP.
//!
//! Basic credentials are the password itself, readable by anyone on the path
//! to regcache. On a TLS listener they are accepted; on a plain-HTTP
//! listener only when the operator set `[auth] allow_insecure_http = true`
//! (a loopback-only or otherwise trusted network, or a TLS-terminating proxy
//! in front), and otherwise refused with a message saying why. The upstream
//! auth mode uses the same function for the credentials it forwards.

use base64::Engine as _;
use http::{HeaderMap, header};

/// A user name and password from a request. `Debug` never shows the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl BasicCredentials {
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> BasicCredentials {
        BasicCredentials {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The password, for verification or forwarding only: never log it.
    pub fn password(&self) -> &str {
        &self.password
    }
}

/// Why a request's Basic credentials cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BasicError {
    /// The header is not `Basic base64(user:password)` in UTF-8.
    Malformed,
    /// Basic credentials on a plain-HTTP listener that does not allow them.
    InsecureTransport,
}

/// What a request's `Authorization` header holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presented {
    None,
    Basic(BasicCredentials),
    /// The token of `Authorization: Bearer TOKEN`.
    Bearer(String),
}

/// The credentials a request presents. `tls`: the request came over TLS;
/// `allow_insecure_http`: Basic credentials are accepted over plain HTTP
/// anyway. An unknown scheme counts as none (the client gets the challenge).
pub fn presented(
    headers: &HeaderMap,
    tls: bool,
    allow_insecure_http: bool,
) -> Result<Presented, BasicError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Presented::None);
    };
    let value = value.to_str().map_err(|_| BasicError::Malformed)?.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(BasicError::Malformed);
        }
        return Ok(Presented::Bearer(rest.to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(Presented::None);
    }
    // Some clients answer a Basic challenge with empty credentials when
    // they have none (containers/image sends `Basic Og==`): anonymous.
    if base64::engine::general_purpose::STANDARD
        .decode(rest)
        .is_ok_and(|raw| raw == b":")
    {
        return Ok(Presented::None);
    }
    if !tls && !allow_insecure_http {
        return Err(BasicError::InsecureTransport);
    }
    basic_credentials(rest)
        .map(Presented::Basic)
        .ok_or(BasicError::Malformed)
}

/// `base64(user:password)` → the credentials (the password may hold ':').
pub fn basic_credentials(encoded: &str) -> Option<BasicCredentials> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    Some(BasicCredentials::new(user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn basic_needs_tls_or_the_operators_word() {
        let h = headers(&format!("Basic {}", b64("alice:pa:ss")));
        let want = Presented::Basic(BasicCredentials::new("alice", "pa:ss"));
        assert_eq!(presented(&h, true, false), Ok(want.clone()));
        assert_eq!(presented(&h, false, true), Ok(want));
        assert_eq!(
            presented(&h, false, false),
            Err(BasicError::InsecureTransport)
        );
        let h = headers(&format!("basic   {}", b64("alice:x")));
        assert!(matches!(
            presented(&h, true, false),
            Ok(Presented::Basic(_))
        ));
    }

    #[test]
    fn other_headers() {
        assert_eq!(
            presented(&HeaderMap::new(), false, false),
            Ok(Presented::None)
        );
        assert_eq!(
            presented(&headers("Bearer abc.def.ghi"), false, false),
            Ok(Presented::Bearer("abc.def.ghi".into()))
        );
        assert_eq!(
            presented(&headers("Bearer"), true, false),
            Err(BasicError::Malformed)
        );
        assert_eq!(
            presented(&headers("Negotiate xyz"), true, false),
            Ok(Presented::None)
        );
        for bad in [
            "Basic !!!",
            &format!("Basic {}", b64("nocolon")),
            &format!("Basic {}", b64(":pw")),
        ] {
            assert_eq!(
                presented(&headers(bad), true, false),
                Err(BasicError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn empty_credentials_are_none() {
        let h = headers(&format!("Basic {}", b64(":")));
        assert_eq!(presented(&h, false, false), Ok(Presented::None));
    }

    #[test]
    fn debug_hides_the_password() {
        let c = BasicCredentials::new("alice", "hunter2");
        let d = format!("{c:?}");
        assert!(d.contains("alice") && !d.contains("hunter2"), "{d}");
    }
}

//! Who may act on an upstream through regcache, beyond reading: writes
//! (uploads, cross-repository mounts, manifest PUTs, deletes) and the
//! repository listing `/v2/_catalog`.
//!
//! regcache holds credentials for its upstreams so that it can *read* on
//! everyone's behalf. Used for a push, a delete or a catalog, they would make
//! regcache a confused deputy: whoever reaches it could push, delete and list
//! as the robot account. So each upstream says, per kind of request, what
//! regcache does ([`Forwarding`], keys `writes` and `catalog`):
//!
//! - `off` (the default): refused. Writes get 405 `UNSUPPORTED`, the catalog
//!   403 `DENIED`, each with a message saying how to turn it on.
//! - `client-credentials`: passed through with the *client's* own
//!   `Authorization` (or none), sent only to the upstream's own origin and
//!   never on a redirect hop; the upstream's `401` and `WWW-Authenticate`
//!   come back unchanged, so Docker, skopeo and podman authenticate with the
//!   upstream themselves (the sidecar case). regcache's own credentials and
//!   tokens are never used for these requests. With writes on this mode,
//!   `GET /v2/` (the default upstream's, or the `ns=` one's) is answered by
//!   the upstream too, so clients learn its challenge: Docker and skopeo send
//!   credentials only after a challenge, and a `200` from regcache would
//!   make them push anonymously (the e2e test fails that way without it).
//! - `stored-credentials`: regcache's configured credentials, as for reads.
//!   An explicit opt-in: anyone who can reach regcache acts as that account.
//!
//! [`decide`] is the one pure decision, with a table test.

use http::{HeaderMap, HeaderValue, header};
use regcache_formats::{ErrorCode, RegistryError};
use regcache_upstream::Identity;
use serde::Deserialize;

use crate::error::Error;

/// What regcache does with one kind of request (writes, catalog) for an
/// upstream. The config keys `writes` and `catalog` take these values.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarding {
    /// Refused.
    #[default]
    Off,
    /// Passed through with the client's own `Authorization`.
    ClientCredentials,
    /// Sent with regcache's configured credentials (confused-deputy risk).
    StoredCredentials,
}

impl Forwarding {
    /// The value as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Forwarding::Off => "off",
            Forwarding::ClientCredentials => "client-credentials",
            Forwarding::StoredCredentials => "stored-credentials",
        }
    }
}

/// The kinds of request [`Forwarding`] governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gated {
    /// Uploads (start, mount, PATCH, PUT, GET, DELETE), manifest PUTs,
    /// manifest and blob DELETEs. Key `writes`.
    Write,
    /// `GET /v2/_catalog`. Key `catalog`.
    Catalog,
}

/// Whose identity a gated request goes upstream with, or the refusal.
/// `headers` are the client's request headers (its `Authorization`).
pub fn decide(
    mode: Forwarding,
    kind: Gated,
    upstream: &str,
    headers: &HeaderMap,
) -> Result<Identity, Error> {
    match mode {
        Forwarding::Off => Err(refusal(kind, upstream)),
        Forwarding::StoredCredentials => Ok(Identity::Stored),
        Forwarding::ClientCredentials => Ok(Identity::Client(client_authorization(headers))),
    }
}

/// The client's `Authorization`, marked sensitive; none when it sent none
/// or several (which one would it mean?).
fn client_authorization(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let mut value = first.clone();
    value.set_sensitive(true);
    Some(value)
}

fn refusal(kind: Gated, upstream: &str) -> Error {
    match kind {
        Gated::Write => Error::policy(
            405,
            RegistryError::with_message(
                ErrorCode::Unsupported,
                format!(
                    "regcache is a read-only cache of upstream {upstream:?}: pushes, uploads, mounts and deletes are off. \
                     To push through regcache with your own upstream credentials, its operator sets writes = \"client-credentials\" \
                     in that upstream's [[upstream]] table (writes = \"stored-credentials\" would use regcache's own credentials \
                     for anyone who reaches it); or push to the upstream directly."
                ),
            )
            .detail(serde_json::json!({ "upstream": upstream, "writes": "off" })),
        ),
        Gated::Catalog => Error::policy(
            403,
            RegistryError::with_message(
                ErrorCode::Denied,
                format!(
                    "regcache does not list the repositories of upstream {upstream:?}: catalog is off. \
                     Its operator can set catalog = \"client-credentials\" in that upstream's [[upstream]] table \
                     (the upstream lists what your own credentials may see), or catalog = \"stored-credentials\" \
                     (everything regcache's credentials see, for anyone)."
                ),
            )
            .detail(serde_json::json!({ "upstream": upstream, "catalog": "off" })),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rescue::classify;

    fn headers(auth: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in auth {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h.insert("x-other", HeaderValue::from_static("1"));
        h
    }

    /// Every mode, kind and client header: the identity, or the refusal's
    /// status, code and the key it names.
    #[test]
    fn every_mode_kind_and_client_header() {
        use Forwarding::*;
        const BASIC: &str = "Basic dTpw";
        type Want = Result<Option<Option<&'static str>>, (u16, ErrorCode, &'static str)>;
        // Ok(None): stored identity; Ok(Some(h)): the client's header h.
        let table: Vec<(Forwarding, Gated, &[&str], Want)> = vec![
            (
                Off,
                Gated::Write,
                &[],
                Err((
                    405,
                    ErrorCode::Unsupported,
                    "writes = \"client-credentials\"",
                )),
            ),
            (
                Off,
                Gated::Write,
                &[BASIC],
                Err((
                    405,
                    ErrorCode::Unsupported,
                    "writes = \"client-credentials\"",
                )),
            ),
            (
                Off,
                Gated::Catalog,
                &[BASIC],
                Err((403, ErrorCode::Denied, "catalog = \"client-credentials\"")),
            ),
            (
                ClientCredentials,
                Gated::Write,
                &[BASIC],
                Ok(Some(Some(BASIC))),
            ),
            (ClientCredentials, Gated::Write, &[], Ok(Some(None))),
            (
                ClientCredentials,
                Gated::Write,
                &[BASIC, "Bearer x"],
                Ok(Some(None)),
            ),
            (
                ClientCredentials,
                Gated::Catalog,
                &["Bearer t"],
                Ok(Some(Some("Bearer t"))),
            ),
            (StoredCredentials, Gated::Write, &[BASIC], Ok(None)),
            (StoredCredentials, Gated::Catalog, &[], Ok(None)),
        ];
        for (mode, kind, auth, want) in table {
            let context = format!("{mode:?} {kind:?} {auth:?}");
            let got = decide(mode, kind, "hub", &headers(auth));
            match (got, want) {
                (Ok(Identity::Stored), Ok(None)) => {}
                (Ok(Identity::Client(h)), Ok(Some(want))) => {
                    assert_eq!(h.as_ref().map(|h| h.to_str().unwrap()), want, "{context}");
                    assert!(h.is_none_or(|h| h.is_sensitive()), "{context}");
                }
                (Err(e), Err((status, code, names))) => {
                    let r = classify(&e);
                    assert_eq!((r.status, r.whose), (status, "policy"), "{context}");
                    let err = &r.envelope.errors[0];
                    assert_eq!(err.code, code, "{context}");
                    assert!(
                        err.message.contains(names) && err.message.contains("\"hub\""),
                        "{context}: {}",
                        err.message
                    );
                }
                (got, want) => panic!("{context}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_client_header_never_shows_in_debug() {
        let id = decide(
            Forwarding::ClientCredentials,
            Gated::Write,
            "hub",
            &headers(&["Basic c2VjcmV0OnNlY3JldA=="]),
        )
        .unwrap();
        let shown = format!("{id:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
    }

    #[test]
    fn config_values_parse_and_print() {
        #[derive(Deserialize)]
        struct T {
            m: Forwarding,
        }
        for mode in [
            Forwarding::Off,
            Forwarding::ClientCredentials,
            Forwarding::StoredCredentials,
        ] {
            let t: T = toml::from_str(&format!("m = {:?}", mode.as_str())).unwrap();
            assert_eq!(t.m, mode);
        }
        let err = toml::from_str::<T>("m = \"on\"").err().unwrap().to_string();
        assert!(err.contains("client-credentials"), "{err}");
    }
}

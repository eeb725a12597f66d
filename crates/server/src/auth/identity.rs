//! Upstream-authorized access (`auth = "upstream"`): the client's own
//! upstream credentials decide what it may read, and every upstream call of
//! its request is made with them.
//!
//! A client's credentials (HTTP Basic to regcache, or none) get an identity
//! of the upstream's client ([`regcache_upstream::UpstreamClient::acting_as`]),
//! kept per (upstream, credential hash) so its tokens are reused. Before a
//! request may touch anything cached for a repository, the upstream is
//! asked, with those credentials, about the very thing requested (a `HEAD` of
//! the manifest or blob, `GET /v2/` for the ping). Its yes is remembered per
//! (credential hash, upstream, repository) for `decision_ttl`; a no is never
//! remembered, so a grant made upstream takes effect at once. Content stays
//! shared by digest: the second authorized user of a blob still pulls it
//! from the cache, but only after the upstream let them into the repository.
//!
//! Listings (tags, catalog, referrers) are no probe: they are forwarded with
//! the client's identity, and nothing cached answers them (a referrers
//! fallback tag is checked with a `HEAD` under that identity first).

use std::sync::Arc;
use std::time::Duration;

use regcache_formats::Digest;
use regcache_formats::media_type::ALL_MANIFEST_TYPES;
use regcache_upstream::{Credentials, UpstreamApi, UpstreamError};
use sha2::{Digest as _, Sha256};

use crate::request::Upstream;

/// What the upstream is asked before cached content is served.
#[derive(Debug, Clone, Copy)]
pub enum Probe<'a> {
    /// `GET /v2/`: are these credentials good at all (`docker login`).
    Ping,
    /// `HEAD /v2/<repo>/manifests/<reference>`.
    Manifest(&'a str),
    /// `HEAD /v2/<repo>/blobs/<digest>`.
    Blob(&'a Digest),
    /// Nothing: the request itself goes upstream with the client's identity
    /// and nothing cached answers it (listings, writes).
    Forwarded,
}

/// Why the upstream did not let the client in.
#[derive(Debug)]
pub enum Refusal {
    /// No credentials, or credentials the upstream (or its token service)
    /// refused: the client should authenticate (401 with a challenge).
    NeedCredentials(String),
    /// Credentials the upstream accepted, but not for this repository (403).
    Forbidden(String),
    /// The upstream answered something else (404, 5xx) or could not be
    /// reached: relayed as the upstream's error, nothing cached is served.
    Upstream(UpstreamError),
    /// The upstream's client can't act for clients (a test double).
    Unsupported,
}

/// The verdict on one probe's outcome (pure; see the module docs).
pub fn verdict(
    outcome: Result<(), UpstreamError>,
    with_credentials: bool,
    repository: &str,
) -> Result<(), Refusal> {
    let e = match outcome {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let what = if repository.is_empty() {
        "the registry".to_owned()
    } else {
        format!("repository {repository:?}")
    };
    match (&e, e.registry_status()) {
        (UpstreamError::Unauthorized { .. }, _) | (_, Some(401)) if !with_credentials => Err(
            Refusal::NeedCredentials(format!("the upstream requires credentials for {what}")),
        ),
        (UpstreamError::Unauthorized { .. }, _) => Err(Refusal::NeedCredentials(format!(
            "the upstream refused these credentials for {what}"
        ))),
        (_, Some(401 | 403)) => Err(Refusal::Forbidden(format!(
            "the upstream does not let these credentials read {what}"
        ))),
        _ => Err(Refusal::Upstream(e)),
    }
}

/// Identities and decisions; shared by all requests.
pub struct Identities {
    clients: moka::sync::Cache<(String, [u8; 32]), Arc<dyn UpstreamApi>>,
    decisions: moka::sync::Cache<(String, [u8; 32], String), ()>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("clients", &self.clients.entry_count())
            .field("decisions", &self.decisions.entry_count())
            .finish()
    }
}

/// At most this many identities and decisions are kept (least recently
/// used go first); a forgotten one costs one probe.
const MAX_ENTRIES: u64 = 100_000;
/// An identity unused this long is dropped with its tokens.
const IDENTITY_IDLE: Duration = Duration::from_secs(600);

impl Identities {
    pub fn new(decision_ttl: Duration) -> Identities {
        Identities {
            clients: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_idle(IDENTITY_IDLE)
                .build(),
            decisions: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(decision_ttl)
                .build(),
        }
    }

    /// The upstream acting as the client with `credentials`, once the
    /// upstream let them at `repository` (`""` for the registry as a whole)
    /// through `probe`, or a remembered yes.
    pub async fn authorize(
        &self,
        upstream: &Upstream,
        credentials: Option<Credentials>,
        repository: &str,
        probe: Probe<'_>,
    ) -> Result<Arc<dyn UpstreamApi>, Refusal> {
        let with_credentials = credentials.is_some();
        let who = credential_hash(credentials.as_ref());
        let client = self.identity(upstream, who, credentials)?;
        let key = (upstream.name.clone(), who, repository.to_owned());
        if matches!(probe, Probe::Forwarded) || self.decisions.contains_key(&key) {
            return Ok(client);
        }
        let outcome = match probe {
            Probe::Ping => client.ping().await,
            Probe::Manifest(reference) => client
                .head_manifest(repository, reference, &ALL_MANIFEST_TYPES)
                .await
                .map(drop),
            Probe::Blob(digest) => client.head_blob(repository, digest).await.map(drop),
            Probe::Forwarded => Ok(()),
        };
        verdict(outcome, with_credentials, repository)?;
        self.decisions.insert(key, ());
        Ok(client)
    }

    fn identity(
        &self,
        upstream: &Upstream,
        who: [u8; 32],
        credentials: Option<Credentials>,
    ) -> Result<Arc<dyn UpstreamApi>, Refusal> {
        let key = (upstream.name.clone(), who);
        if let Some(c) = self.clients.get(&key) {
            return Ok(c);
        }
        let client = upstream
            .client
            .identity(credentials)
            .ok_or(Refusal::Unsupported)?;
        self.clients.insert(key, client.clone());
        Ok(client)
    }
}

/// SHA-256 of the user name's length, the name and the password (all zero
/// for anonymous): the key of a client's identity and decisions. Only the
/// hash is kept as a key.
fn credential_hash(credentials: Option<&Credentials>) -> [u8; 32] {
    let Some(c) = credentials else {
        return [0; 32];
    };
    let mut h = Sha256::new();
    h.update((c.username.len() as u64).to_le_bytes());
    h.update(c.username.as_bytes());
    h.update(c.password.expose().as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(status: u16) -> UpstreamError {
        UpstreamError::Registry {
            upstream: "up".into(),
            status,
            envelope: None,
            retry_after: None,
        }
    }

    fn token_refused() -> UpstreamError {
        UpstreamError::Unauthorized {
            upstream: "up".into(),
            detail: "HTTP 401 from tokens".into(),
        }
    }

    #[test]
    fn verdicts() {
        use Refusal::*;
        type Want = fn(&Result<(), Refusal>) -> bool;
        let cases: [(Result<(), UpstreamError>, bool, Want); 10] = [
            (Ok(()), false, |r| r.is_ok()),
            (Ok(()), true, |r| r.is_ok()),
            // Anonymous and challenged: authenticate.
            (Err(registry(401)), false, |r| {
                matches!(r, Err(NeedCredentials(_)))
            }),
            (Err(token_refused()), false, |r| {
                matches!(r, Err(NeedCredentials(_)))
            }),
            // Bad credentials (the token service said no): authenticate again.
            (Err(token_refused()), true, |r| {
                matches!(r, Err(NeedCredentials(_)))
            }),
            // Good credentials, not for this repository.
            (Err(registry(401)), true, |r| matches!(r, Err(Forbidden(_)))),
            (Err(registry(403)), true, |r| matches!(r, Err(Forbidden(_)))),
            (Err(registry(403)), false, |r| {
                matches!(r, Err(Forbidden(_)))
            }),
            // Anything else is the upstream's answer, relayed.
            (Err(registry(404)), true, |r| matches!(r, Err(Upstream(_)))),
            (Err(registry(503)), false, |r| matches!(r, Err(Upstream(_)))),
        ];
        for (i, (outcome, creds, want)) in cases.into_iter().enumerate() {
            let got = verdict(outcome, creds, "team/a");
            assert!(want(&got), "case {i}: {got:?}");
        }
        let Err(Forbidden(msg)) = verdict(Err(registry(401)), true, "team/a") else {
            unreachable!()
        };
        assert!(msg.contains("\"team/a\""), "{msg}");
    }

    #[test]
    fn credential_hashes_tell_users_apart() {
        let a = Credentials::new("a", "pw");
        let a2 = Credentials::new("a", "pw2");
        // The user/password boundary counts: ("ap", "w") is not ("a", "pw").
        let split = Credentials::new("ap", "w");
        assert_eq!(credential_hash(None), [0; 32]);
        assert_ne!(credential_hash(Some(&a)), credential_hash(Some(&a2)));
        assert_ne!(credential_hash(Some(&a)), credential_hash(None));
        assert_eq!(credential_hash(Some(&a)), credential_hash(Some(&a.clone())));
        assert_ne!(
            credential_hash(Some(&split)),
            credential_hash(Some(&Credentials::new("a", "pw")))
        );
    }
}

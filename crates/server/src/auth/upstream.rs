//! `mode = "upstream"`: the client's own upstream credentials decide what
//! it may read ([`super::identity`] asks the upstream and remembers its
//! yes); every upstream call of the request is then made with them.
//!
//! Clients log in to regcache with their upstream user name and password
//! (HTTP Basic; regcache challenges with `Basic realm=…`, since it needs the
//! password itself to act for them, not a token of its own). Basic over
//! plain HTTP follows the same rule as in htpasswd mode. Anonymous clients
//! get exactly what the upstream gives anonymous clients.

use std::sync::Arc;

use http::{Method, Request};
use regcache_formats::{ErrorCode, RegistryError};
use regcache_upstream::{Credentials, UpstreamApi};

use super::access::Principal;
use super::basic::{self, BasicError, Presented};
use super::identity::{Probe, Refusal};
use super::{Auth, Failure, Grant};
use crate::error::Error;
use crate::request::Routed;
use crate::routes::Route;

/// The upstream acting as one client. Compared by identity (the same
/// client object), shown without anything of the credentials.
#[derive(Clone)]
pub struct ActingAs(pub Arc<dyn UpstreamApi>);

impl std::fmt::Debug for ActingAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActingAs({})", self.0.name())
    }
}

impl PartialEq for ActingAs {
    fn eq(&self, other: &ActingAs) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ActingAs {}

/// What the upstream is asked before a request may go on, and about which
/// repository (`""`: the registry as a whole).
fn probe_of<'a>(method: &Method, route: &'a Route) -> (&'a str, Probe<'a>) {
    let read = method == Method::GET || method == Method::HEAD;
    match route {
        Route::Ping => ("", Probe::Ping),
        Route::Manifest { name, reference } if read => {
            (name.as_str(), Probe::Manifest(reference.as_str()))
        }
        Route::Blob { name, digest } if read => (name.as_str(), Probe::Blob(digest)),
        other => (other.name().map_or("", |n| n.as_str()), Probe::Forwarded),
    }
}

impl Auth {
    /// See the module documentation. `routed` is `None` for a request that
    /// did not route: its routing error is answered as it is (it names no
    /// content), and there is no token endpoint in this mode.
    pub(super) async fn authorize_upstream<B>(
        &self,
        req: &Request<B>,
        routed: Option<&Routed>,
    ) -> Result<Grant, Error> {
        let Some(identities) = &self.identities else {
            return Err(Error::bug("auth mode \"upstream\" without its identities"));
        };
        let credentials = match basic::presented(
            req.headers(),
            self.tls,
            self.settings.allow_insecure_http,
        ) {
            Ok(Presented::None) => None,
            Ok(Presented::Basic(c)) => Some(Credentials::new(c.user.clone(), c.password())),
            // Not a token of ours in this mode, nor one regcache could
            // use upstream: log in with Basic.
            Ok(Presented::Bearer(_)) | Err(BasicError::Malformed) => {
                return Err(self.refuse(
                    Failure::BadCredentials,
                    "log in with your upstream user name and password (Basic)".into(),
                ));
            }
            Err(BasicError::InsecureTransport) => {
                return Err(self.refuse(
                        Failure::InsecureTransport,
                        "regcache does not accept Basic credentials over plain HTTP: they would cross the network readable by anyone on the path. Connect over TLS, or the operator sets [auth] allow_insecure_http = true on a trusted network".into(),
                    ));
            }
        };
        let Some(routed) = routed else {
            return Ok(Grant::anonymous());
        };
        let principal = match &credentials {
            Some(c) => Principal::User(c.username.clone()),
            None => Principal::Anonymous,
        };
        let (repository, probe) = probe_of(req.method(), &routed.route);
        let authorized = routed
            .target
            .in_span(identities.authorize(&routed.target.upstream, credentials, repository, probe))
            .await;
        match authorized {
            Ok(client) => Ok(Grant {
                principal,
                acting_as: Some(ActingAs(client)),
            }),
            Err(Refusal::NeedCredentials(message)) => {
                let why = if principal == Principal::Anonymous {
                    Failure::NoCredentials
                } else {
                    Failure::BadCredentials
                };
                Err(self.refuse(why, message))
            }
            Err(Refusal::Forbidden(message)) => {
                self.count(Failure::Denied);
                Err(Error::policy(
                    403,
                    RegistryError::with_message(ErrorCode::Denied, message)
                        .detail(serde_json::json!({ "name": repository })),
                ))
            }
            Err(Refusal::Upstream(e)) => Err(Error::Upstream(e)),
            Err(Refusal::Unsupported) => {
                Err(Error::bug("this upstream's client cannot act for clients"))
            }
        }
    }

    /// 401 with a Basic challenge (regcache needs the password itself).
    fn refuse(&self, why: Failure, message: String) -> Error {
        self.count(why);
        Error::Unauthenticated {
            challenge: format!("Basic realm=\"{}\"", self.settings.service),
            error: RegistryError::with_message(ErrorCode::Unauthorized, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regcache_formats::Digest;
    use regcache_formats::reference::RepositoryName;

    #[test]
    fn probes_follow_the_route() {
        let name = RepositoryName::parse("team/a").unwrap();
        let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let manifest = Route::parse("/v2/team/a/manifests/v1").unwrap().unwrap();
        let blob = Route::Blob {
            name: name.clone(),
            digest: digest.clone(),
        };
        assert!(matches!(
            probe_of(&Method::GET, &Route::Ping),
            ("", Probe::Ping)
        ));
        assert!(matches!(
            probe_of(&Method::HEAD, &manifest),
            ("team/a", Probe::Manifest("v1"))
        ));
        assert!(matches!(
            probe_of(&Method::GET, &blob),
            ("team/a", Probe::Blob(d)) if *d == digest
        ));
        // Writes and listings go upstream as the client: nothing to ask first.
        assert!(matches!(
            probe_of(&Method::PUT, &manifest),
            ("team/a", Probe::Forwarded)
        ));
        assert!(matches!(
            probe_of(&Method::DELETE, &blob),
            ("team/a", Probe::Forwarded)
        ));
        let tags = Route::parse("/v2/team/a/tags/list").unwrap().unwrap();
        assert!(matches!(
            probe_of(&Method::GET, &tags),
            ("team/a", Probe::Forwarded)
        ));
    }
}

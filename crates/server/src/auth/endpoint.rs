//! `GET /auth/token?service=…&scope=…`: the token endpoint of the registry
//! token flow (spec §5.9), as distribution's token servers answer it.
//!
//! The client presents Basic credentials (checked as on `/v2/`, with the
//! same plain-HTTP rule) or none (an anonymous token). Each requested scope
//! (`scope` may repeat, or hold several space-separated scopes) is
//! intersected with what the access rules allow that principal; `account`,
//! `client_id` and `offline_token` are accepted and change nothing (no
//! refresh tokens are issued, so clients log in with their password again).
//! The answer is `{"token","access_token","expires_in","issued_at"}`.
//!
//! `POST` (the OAuth2 password grant) answers 404, which makes containerd
//! fall back to `GET`, as it does for registries without it.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use regcache_formats::{ErrorCode, RegistryError};

use super::access::{Action, Principal, Resource, decide};
use super::basic::{self, BasicError, Presented};
use super::token::{Claims, ISSUER, ResourceActions, Scope, jti};
use super::{Auth, Failure, Need, unix_now};
use crate::error::Error;
use crate::request::{Upstreams, route};
use crate::web::body::Body;

impl Auth {
    /// Answer a request to [`super::TOKEN_PATH`].
    pub async fn token_endpoint<B>(
        &self,
        req: &Request<B>,
        upstreams: &Upstreams,
    ) -> Result<Response<Body>, Error> {
        if req.method() == Method::POST {
            return Err(Error::client_status(
                404,
                RegistryError::with_message(
                    ErrorCode::Unsupported,
                    "regcache's token endpoint takes GET only (no OAuth2 POST)",
                ),
            ));
        }
        if req.method() != Method::GET {
            return Err(Error::client_status(
                405,
                RegistryError::with_message(
                    ErrorCode::Unsupported,
                    format!(
                        "method {} is not supported on the token endpoint",
                        req.method()
                    ),
                ),
            ));
        }
        let mut scopes = Vec::new();
        for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        {
            match k.as_ref() {
                "service" if v != self.settings.service => {
                    return Err(Error::client_status(
                        400,
                        RegistryError::with_message(
                            ErrorCode::Unsupported,
                            format!(
                                "this token endpoint serves service {:?}, not {:?}",
                                self.settings.service,
                                v.chars().take(100).collect::<String>()
                            ),
                        ),
                    ));
                }
                "scope" => scopes.extend(v.split(' ').filter_map(Scope::parse)),
                _ => {}
            }
        }
        if scopes.len() > 64 {
            return Err(Error::client(
                ErrorCode::Unsupported,
                "at most 64 scopes per token request",
            ));
        }
        let principal = self.token_principal(req).await?;
        let access: Vec<ResourceActions> = scopes
            .iter()
            .filter_map(|s| self.grant_scope(&principal, s, upstreams))
            .collect();
        let now = unix_now();
        let ttl = self.settings.token_ttl.as_secs() as i64;
        let claims = Claims {
            iss: ISSUER.into(),
            sub: match &principal {
                Principal::Anonymous => String::new(),
                Principal::User(u) => u.clone(),
            },
            aud: self.settings.service.clone(),
            exp: now + ttl,
            nbf: now,
            iat: now,
            jti: jti(),
            access,
        };
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| Error::bug("client authentication without a token key"))?;
        let token = key.issue(&claims);
        let issued_at = time::OffsetDateTime::from_unix_timestamp(now)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": ttl,
            "issued_at": issued_at,
        });
        let mut resp = Response::new(Body::full(Bytes::from(body.to_string())));
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        // A token is a credential: no cache may keep it.
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        Ok(resp)
    }

    /// Who asks for a token: the Basic credentials' user, or anonymous.
    async fn token_principal<B>(&self, req: &Request<B>) -> Result<Principal, Error> {
        let need = Need::Authenticated;
        match basic::presented(req.headers(), self.tls, self.settings.allow_insecure_http) {
            // A bearer token is no login: the client gets an anonymous one.
            Ok(Presented::None | Presented::Bearer(_)) => Ok(Principal::Anonymous),
            Ok(Presented::Basic(c)) => match self.check_password(&c).await {
                Some(p) => Ok(p),
                None => Err(self.token_fail(Failure::BadCredentials, req, &need)),
            },
            Err(BasicError::InsecureTransport) => {
                Err(self.token_fail(Failure::InsecureTransport, req, &need))
            }
            Err(BasicError::Malformed) => Err(self.token_fail(Failure::BadCredentials, req, &need)),
        }
    }

    /// A failed login at the token endpoint: 401 with a Basic challenge
    /// (the endpoint takes Basic credentials), same messages as `/v2/`.
    fn token_fail<B>(&self, why: Failure, req: &Request<B>, need: &Need<'_>) -> Error {
        match self.fail(why, req, need, false) {
            Error::Unauthenticated { error, .. } => Error::Unauthenticated {
                challenge: format!("Basic realm=\"{}\"", self.settings.service),
                error,
            },
            other => other,
        }
    }

    /// The part of `scope` the rules allow `principal`, if any. A name with
    /// a registry prefix reaches one upstream; a plain name may reach any
    /// (containerd's `ns=`), so an action is granted if some upstream's
    /// rules allow it; every use of the token is checked against the rules
    /// for the upstream it actually reaches.
    fn grant_scope(
        &self,
        principal: &Principal,
        scope: &Scope,
        upstreams: &Upstreams,
    ) -> Option<ResourceActions> {
        let candidates: Vec<(String, Resource<'static>, Option<String>)> = match scope.kind.as_str()
        {
            "registry" if scope.name == "catalog" => upstreams
                .iter()
                .map(|u| (u.name.clone(), Resource::Catalog, None))
                .collect(),
            "repository" => repository_candidates(&scope.name, upstreams)
                .into_iter()
                .map(|(u, repo)| (u, Resource::Catalog, Some(repo)))
                .collect(),
            _ => return None,
        };
        let mut granted = BTreeSet::new();
        for wanted in &scope.actions {
            let actions: Vec<Action> = match (scope.kind.as_str(), wanted.as_str()) {
                ("registry", "*") => vec![Action::Pull],
                (_, a) => Action::parse(a).into_iter().collect(),
            };
            for action in actions {
                let ok = candidates.iter().any(|(up, res, repo)| {
                    let resource = match repo {
                        Some(r) => Resource::Repository(r),
                        None => *res,
                    };
                    decide(principal, up, resource, action, &self.rules.load()).allowed()
                });
                if ok {
                    granted.insert(wanted.clone());
                }
            }
        }
        if granted.is_empty() {
            return None;
        }
        // In the order the client asked.
        let actions = scope
            .actions
            .iter()
            .filter(|a| granted.contains(*a))
            .cloned()
            .collect::<Vec<_>>();
        Some(ResourceActions {
            kind: scope.kind.clone(),
            name: scope.name.clone(),
            actions,
        })
    }
}

/// The (upstream, repository) pairs a client-side repository name can reach,
/// by the same routing as `/v2/` requests.
fn repository_candidates(name: &str, upstreams: &Upstreams) -> Vec<(String, String)> {
    let probe = |query: &str| -> Option<(String, String, bool)> {
        let uri: http::Uri = format!("/v2/{name}/tags/list{query}").parse().ok()?;
        let routed = route(&uri, upstreams).ok()?;
        let repo = routed.route.name()?.as_str().to_owned();
        Some((
            routed.target.upstream.name.clone(),
            repo,
            routed.target.prefix.is_some(),
        ))
    };
    match probe("") {
        None => Vec::new(),
        Some((up, repo, true)) => vec![(up, repo)],
        Some(_) => upstreams
            .iter()
            .filter_map(|u| {
                let ns: String = url::form_urlencoded::byte_serialize(u.name.as_bytes()).collect();
                probe(&format!("?ns={ns}")).map(|(up, repo, _)| (up, repo))
            })
            .collect(),
    }
}

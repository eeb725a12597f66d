//! Client authentication and access rules (`[auth]`, `[[access]]`).
//!
//! With `mode = "none"` (the default) every request is let through, as
//! before. With `mode = "htpasswd"` every `/v2/` request, on hyper and on
//! the fast path alike, goes through [`Auth::authorize`] once it is routed:
//!
//! - the request's action comes from its route and method ([`action_of`]):
//!   reads are `pull`; manifest PUTs and uploads are `push`; `DELETE` of a
//!   manifest or blob is `delete`;
//! - who asks comes from `Authorization`: Basic credentials checked against
//!   the htpasswd file ([`htpasswd`]; only over TLS unless
//!   `allow_insecure_http`, see [`basic`]), a token regcache issued
//!   ([`token`]), or nothing (anonymous);
//! - [`access::decide`] says whether the rules grant it.
//!
//! Not authenticated, or not allowed as anonymous: 401 `UNAUTHORIZED` with a
//! challenge (`Bearer realm="<base>/auth/token",service=…,scope=…` by
//! default; `Basic realm=…` with `challenge = "basic"`); wrong credentials
//! get exactly the same answer. A token without the scope, for a request the
//! rules allow its subject: 401 with `error="insufficient_scope"`, so the
//! client fetches a new token. Authenticated but outside the rules: 403
//! `DENIED`, naming the action and repository (not the rules). The ping
//! `/v2/` answers 401 to anonymous clients: that is how clients discover
//! they must log in. Tokens are checked against the rules again on use, so
//! a token names the most a client may do, never more than the rules allow
//! for the upstream the request actually reaches.
//!
//! `GET /auth/token` ([`TOKEN_PATH`], outside `/v2/` so it meets no
//! registry route) is the token endpoint ([`endpoint`]).

pub mod access;
pub mod basic;
mod endpoint;
pub mod htpasswd;
pub mod identity;
pub mod token;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Method, Request, header};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use regcache_formats::{ErrorCode, RegistryError};
use sha2::{Digest as _, Sha256};

use self::access::{AccessRules, Action, Principal, Resource, decide};
use self::basic::{BasicError, Presented};
use self::htpasswd::Htpasswd;
use self::token::{Claims, TokenError, TokenKey};
use crate::config::{AuthMode, AuthSettings, ChallengeKind};
use crate::error::Error;
use crate::metrics::AuthFailure;
use crate::request::Routed;
use crate::routes::Route;

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/auth/token";

/// How long a verified token's claims are remembered (each use still checks
/// its expiry): one ECDSA verification per token per minute.
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// Who a request was let through as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub principal: Principal,
    /// `auth = "upstream"`: the upstream acting as this client, for every
    /// upstream call of the request ([`crate::request::Target::acting_as`]).
    pub acting_as: Option<upstream::ActingAs>,
}

/// Why a request was refused: the `reason` label of
/// `regcache_auth_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No credentials, where anonymous clients may not go.
    NoCredentials,
    /// Unknown user or wrong password (one reason: no enumeration).
    BadCredentials,
    /// Basic credentials on a plain-HTTP listener that does not take them.
    InsecureTransport,
    InvalidToken,
    ExpiredToken,
    /// A valid token without the scope (the client fetches another).
    InsufficientScope,
    /// Authenticated, outside the rules (403).
    Denied,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::NoCredentials => "no_credentials",
            Failure::BadCredentials => "bad_credentials",
            Failure::InsecureTransport => "insecure_transport",
            Failure::InvalidToken => "invalid_token",
            Failure::ExpiredToken => "expired_token",
            Failure::InsufficientScope => "insufficient_scope",
            Failure::Denied => "denied",
        }
    }
}

/// What a routed request needs.
#[derive(Debug)]
enum Need<'a> {
    /// The ping, or a request that did not route: any authenticated client.
    Authenticated,
    Access {
        upstream: &'a str,
        resource: Resource<'a>,
        action: Action,
        /// The scope's resource type and name as the client named it.
        kind: &'static str,
        scope_name: String,
    },
}

/// The action a request performs on its repository.
pub fn action_of(method: &Method, route: &Route) -> Action {
    match route {
        Route::UploadStart { .. } | Route::Upload { .. } => Action::Push,
        _ if method == Method::GET || method == Method::HEAD => Action::Pull,
        Route::Manifest { .. } | Route::Blob { .. } if method == Method::DELETE => Action::Delete,
        _ => Action::Push,
    }
}

/// Client authentication as the server runs it.
pub struct Auth {
    /// As at start-up; `rules` and `htpasswd` are what a reload replaces.
    settings: AuthSettings,
    /// The `[[access]]` rules in force (a reload swaps them whole).
    rules: ArcSwap<AccessRules>,
    htpasswd: ArcSwapOption<Htpasswd>,
    /// Failed htpasswd reloads (for an htpasswd file opened by a reload).
    htpasswd_errors: Counter,
    key: Option<TokenKey>,
    /// The API listener speaks TLS.
    tls: bool,
    /// `host:port` for a derived realm when a request's `Host` is unusable.
    fallback_host: String,
    verified: moka::sync::Cache<[u8; 32], Arc<Claims>>,
    failures: Family<AuthFailure, Counter>,
    /// `auth = "upstream"`: identities and the upstream's decisions.
    identities: Option<identity::Identities>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.settings.mode)
            .field("htpasswd", &self.htpasswd)
            .field("key", &self.key)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// No client authentication (`mode = "none"`).
    pub fn disabled() -> Auth {
        Auth {
            settings: AuthSettings::default(),
            rules: ArcSwap::default(),
            htpasswd: ArcSwapOption::empty(),
            htpasswd_errors: Counter::default(),
            key: None,
            tls: false,
            fallback_host: String::new(),
            verified: moka::sync::Cache::new(0),
            failures: Family::default(),
            identities: None,
        }
    }

    /// Client authentication per `settings`: the htpasswd file is loaded
    /// now; `key` signs and verifies tokens; `tls` says whether the API
    /// listener speaks TLS (Basic credentials are refused over plain HTTP
    /// unless `allow_insecure_http`).
    pub fn new(
        settings: &AuthSettings,
        key: TokenKey,
        tls: bool,
        listen: SocketAddr,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Auth, String> {
        let htpasswd = match (&settings.mode, &settings.htpasswd_file) {
            (AuthMode::Htpasswd, Some(path)) => Some(
                Htpasswd::open(path, metrics.htpasswd_reload_errors.clone())
                    .map_err(|p| p.join("; "))?,
            ),
            (AuthMode::Htpasswd, None) => return Err("htpasswd mode needs htpasswd_file".into()),
            (AuthMode::None, _) => return Ok(Auth::disabled()),
            (AuthMode::Upstream, _) => None,
        };
        Ok(Auth {
            settings: settings.clone(),
            rules: ArcSwap::from_pointee(settings.rules.clone()),
            htpasswd: ArcSwapOption::from(htpasswd.map(Arc::new)),
            htpasswd_errors: metrics.htpasswd_reload_errors.clone(),
            key: Some(key),
            tls,
            fallback_host: listen.to_string(),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
            failures: metrics.auth_failures.clone(),
            identities: (settings.mode == AuthMode::Upstream)
                .then(|| identity::Identities::new(settings.upstream_decision_ttl)),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.settings.mode
    }

    /// A configuration reload: the `[[access]]` rules of `settings` from
    /// now on, and its htpasswd file if it names another one (loaded first:
    /// a bad file keeps the old one and is the error). The mode, realm,
    /// service and token settings stay as started (a restart changes them).
    pub fn reload(&self, settings: &AuthSettings) -> Result<(), String> {
        if self.settings.mode == AuthMode::Htpasswd
            && let Some(path) = &settings.htpasswd_file
            && self.htpasswd.load().as_deref().map(Htpasswd::path) != Some(path.as_path())
        {
            let h = Htpasswd::open(path, self.htpasswd_errors.clone()).map_err(|p| p.join("; "))?;
            self.htpasswd.store(Some(Arc::new(h)));
            self.verified.invalidate_all();
        }
        self.rules.store(Arc::new(settings.rules.clone()));
        Ok(())
    }

    /// Whether `path` is the token endpoint and client authentication is on.
    pub fn serves(&self, path: &str) -> bool {
        self.settings.mode == AuthMode::Htpasswd && path == TOKEN_PATH
    }

    /// May this request go on? `routed` is `None` when it did not route
    /// (the token endpoint, or a request answered with a routing error,
    /// which only authenticated clients get to see). See the module
    /// documentation.
    pub async fn authorize<B>(
        &self,
        req: &Request<B>,
        routed: Option<&Routed>,
    ) -> Result<Grant, Error> {
        let need = match (self.settings.mode, routed) {
            (AuthMode::None, _) => return Ok(Grant::anonymous()),
            (AuthMode::Upstream, _) => return self.authorize_upstream(req, routed).await,
            (_, None) if req.uri().path() == TOKEN_PATH => return Ok(Grant::anonymous()),
            (_, None) => Need::Authenticated,
            (_, Some(r)) => need_of(req.method(), r),
        };
        let (principal, claims) = self.authenticate(req, &need).await?;
        let Need::Access {
            upstream,
            resource,
            action,
            kind,
            scope_name,
        } = &need
        else {
            if principal == Principal::Anonymous && claims.is_none() {
                return Err(self.fail(Failure::NoCredentials, req, &need, false));
            }
            return Ok(Grant::of(principal));
        };
        let allowed =
            decide(&principal, upstream, *resource, *action, &self.rules.load()).allowed();
        let in_token = claims
            .as_ref()
            .is_none_or(|c| c.grants(kind, scope_name, action.as_str()));
        match (allowed, in_token) {
            (true, true) => Ok(Grant::of(principal)),
            (true, false) => Err(self.fail(Failure::InsufficientScope, req, &need, true)),
            (false, _) if principal == Principal::Anonymous => {
                Err(self.fail(Failure::NoCredentials, req, &need, false))
            }
            (false, _) => Err(self.fail(Failure::Denied, req, &need, false)),
        }
    }

    /// The principal a request presents, and its token's claims if it
    /// came with one; 401 for unusable credentials.
    async fn authenticate<B>(
        &self,
        req: &Request<B>,
        need: &Need<'_>,
    ) -> Result<(Principal, Option<Arc<Claims>>), Error> {
        match basic::presented(req.headers(), self.tls, self.settings.allow_insecure_http) {
            Ok(Presented::None) => Ok((Principal::Anonymous, None)),
            Ok(Presented::Basic(c)) => match self.check_password(&c).await {
                Some(p) => Ok((p, None)),
                None => Err(self.fail(Failure::BadCredentials, req, need, false)),
            },
            Ok(Presented::Bearer(t)) => match self.verify_token(&t) {
                Ok(claims) => Ok((principal_of(&claims), Some(claims))),
                Err(TokenError::Expired) => Err(self.fail(Failure::ExpiredToken, req, need, false)),
                Err(_) => Err(self.fail(Failure::InvalidToken, req, need, false)),
            },
            Err(BasicError::InsecureTransport) => {
                Err(self.fail(Failure::InsecureTransport, req, need, false))
            }
            Err(BasicError::Malformed) => Err(self.fail(Failure::BadCredentials, req, need, false)),
        }
    }

    /// The user whose password `c` holds, if any.
    async fn check_password(&self, c: &basic::BasicCredentials) -> Option<Principal> {
        let h = self.htpasswd.load_full()?;
        h.verify(&c.user, c.password())
            .await
            .then(|| Principal::User(c.user.clone()))
    }

    /// A token's claims, if it is one of ours and valid now.
    fn verify_token(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let key = self.key.as_ref().ok_or(TokenError::Signature)?;
        let now = unix_now();
        let id: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(c) = self.verified.get(&id) {
            return if c.exp > now {
                Ok(c)
            } else {
                Err(TokenError::Expired)
            };
        }
        let claims = Arc::new(key.verify(token, &self.settings.service, now)?);
        self.verified.insert(id, claims.clone());
        Ok(claims)
    }

    fn count(&self, why: Failure) {
        self.failures
            .get_or_create(&AuthFailure {
                reason: why.reason(),
            })
            .inc();
    }

    /// Count the failure and make its error: 401 with the challenge, or
    /// 403 `DENIED`.
    fn fail<B>(
        &self,
        why: Failure,
        req: &Request<B>,
        need: &Need<'_>,
        insufficient: bool,
    ) -> Error {
        self.count(why);
        let what = match need {
            Need::Access {
                action,
                resource: Resource::Catalog,
                ..
            } => format!("{} the catalog", action.as_str()),
            Need::Access {
                action, scope_name, ..
            } => format!("{} repository {scope_name}", action.as_str()),
            Need::Authenticated => String::new(),
        };
        if why == Failure::Denied {
            let detail = match need {
                Need::Access {
                    action, scope_name, ..
                } => serde_json::json!({ "action": action.as_str(), "name": scope_name }),
                Need::Authenticated => serde_json::Value::Null,
            };
            return Error::policy(
                403,
                RegistryError::with_message(
                    ErrorCode::Denied,
                    format!("access denied: you may not {what}"),
                )
                .detail(detail),
            );
        }
        let message = match why {
            Failure::InsecureTransport => "regcache does not accept Basic credentials over plain HTTP: they would cross the network readable by anyone on the path. Connect over TLS, or the operator sets [auth] allow_insecure_http = true on a trusted network".to_owned(),
            Failure::BadCredentials => "invalid username or password".to_owned(),
            Failure::InvalidToken | Failure::ExpiredToken => {
                "invalid or expired token; fetch a new one".to_owned()
            }
            Failure::InsufficientScope => format!("the token does not allow you to {what}"),
            _ if what.is_empty() => "authentication required".to_owned(),
            _ => format!("authentication required to {what}"),
        };
        Error::Unauthenticated {
            challenge: self.challenge(req, need, insufficient),
            error: RegistryError::with_message(ErrorCode::Unauthorized, message),
        }
    }

    /// The `WWW-Authenticate` value for a 401 on `req`.
    fn challenge<B>(&self, req: &Request<B>, need: &Need<'_>, insufficient: bool) -> String {
        if self.settings.challenge == ChallengeKind::Basic {
            return format!("Basic realm=\"{}\"", self.settings.service);
        }
        let mut c = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(req),
            self.settings.service
        );
        if let Need::Access {
            kind,
            scope_name,
            action,
            ..
        } = need
        {
            let actions: &[&str] = match (kind, action) {
                (&"registry", _) => &["*"],
                (_, Action::Pull) => &["pull"],
                (_, Action::Push) => &["pull", "push"],
                (_, Action::Delete) => &["delete"],
            };
            c.push_str(&format!(
                ",scope=\"{}\"",
                token::Scope::render(kind, scope_name, actions)
            ));
        }
        if insufficient {
            c.push_str(",error=\"insufficient_scope\"");
        }
        c
    }

    /// The token endpoint clients are sent to: the configured `realm`, or
    /// this listener's scheme with the request's `Host`.
    fn realm<B>(&self, req: &Request<B>) -> String {
        if let Some(r) = &self.settings.realm {
            return r.clone();
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .filter(|h| is_host(h))
            .unwrap_or(&self.fallback_host);
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}{TOKEN_PATH}")
    }
}

impl Grant {
    pub fn anonymous() -> Grant {
        Grant::of(Principal::Anonymous)
    }

    pub fn of(principal: Principal) -> Grant {
        Grant {
            principal,
            acting_as: None,
        }
    }
}

fn need_of<'a>(method: &Method, routed: &'a Routed) -> Need<'a> {
    let upstream = routed.target.upstream.name.as_str();
    let action = action_of(method, &routed.route);
    match (&routed.route, routed.route.name()) {
        (Route::Catalog, _) => Need::Access {
            upstream,
            resource: Resource::Catalog,
            action,
            kind: "registry",
            scope_name: "catalog".into(),
        },
        (_, Some(name)) => Need::Access {
            upstream,
            resource: Resource::Repository(name.as_str()),
            action,
            kind: "repository",
            scope_name: routed.target.client_name(name),
        },
        (_, None) => Need::Authenticated,
    }
}

fn principal_of(claims: &Claims) -> Principal {
    if claims.sub.is_empty() {
        Principal::Anonymous
    } else {
        Principal::User(claims.sub.clone())
    }
}

/// `host[:port]` safe to put in a quoted challenge parameter.
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 260
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests;

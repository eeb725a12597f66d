//! The registry API over HTTP: [`App`] routes each request once
//! ([`crate::request::route`]), opens its span, dispatches it to the handler
//! of its resource, and rescues every error into a registry error response.
//!
//! Handlers per resource: [`manifests`] (content negotiation and the Schema 1
//! policies), [`blobs`], [`listings`] (tags, catalog), [`referrers`], [`push`]
//! (uploads and manifest pushes forwarded upstream), and [`fast`], the
//! adapter for the HTTP/1 fast path. They speak HTTP on top of
//! [`crate::services`], which do the work. Writes and the catalog go
//! upstream only as each upstream's `writes` and `catalog` keys allow
//! ([`crate::writes`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64};

use http::{Method, Request, Response};
use regcache_formats::jws::SigningKey;
use regcache_formats::{ErrorCode, RegistryError};
use regcache_store::Store;
use regcache_upstream::Identity;

use crate::auth::Auth;
use crate::error::Error;
use crate::metrics::{Metrics, ResponseVia, UpstreamCall, UpstreamFailure};
use crate::policy::Policies;
use crate::request::{RequestSpan, Routed, Target, Upstreams, route};
use crate::rescue::{rescue, rescue_at};
use crate::routes::Route;
use crate::services::Services;
use crate::services::links::Object;
use crate::web::body::{Body, ReqBody};
use crate::web::response::{ping, with_api_version};
use crate::writes::{Forwarding, Gated, decide};

pub mod blobs;
pub mod fast;
mod gated;
pub mod listings;
pub mod manifests;
mod observed;
pub mod peer;
pub mod prepared;
pub mod push;
pub mod referrers;

/// Everything a request handler needs; shared by all connections.
pub struct App {
    upstreams: Upstreams,
    /// The `[[policy]]` rules in force (a reload swaps them whole; a
    /// request loads them once).
    policies: arc_swap::ArcSwap<Policies>,
    services: Services,
    /// Client authentication and access rules ([`crate::auth`]).
    auth: Auth,
    pub metrics: Arc<Metrics>,
    /// The admin page's tables ([`crate::cockpit`]).
    pub cockpit: crate::cockpit::Cockpit,
    /// The next generated request id's number ([`crate::access_log`]).
    next_id: AtomicU64,
    /// This process's prefix of generated request ids.
    id_prefix: u32,
    /// `[log] access` ([`crate::access_log::AccessLevel`]).
    access: AtomicU8,
    /// The cluster this replica is a member of (`[cluster]`), set once at
    /// start-up after the app exists (its metrics count in the app's
    /// registry); unset: a single replica.
    cluster: std::sync::OnceLock<crate::cluster::Cluster>,
    /// Warm by-tag manifest answers kept ready ([`prepared`]).
    prepared: prepared::Prepared,
    /// How many times the policies were replaced (a prepared answer's
    /// basis; an address could be reused by a later reload's rules).
    policies_reloads: AtomicU64,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("upstreams", &self.upstreams)
            .field("kid", &self.services.schema1.key().kid())
            .finish_non_exhaustive()
    }
}

impl App {
    pub fn new(
        store: Store,
        key: SigningKey,
        upstreams: Upstreams,
        policies: Policies,
    ) -> Arc<App> {
        let app = App::with_auth(store, key, upstreams, policies, |_| {
            Ok::<_, std::convert::Infallible>(Auth::disabled())
        });
        match app {
            Ok(app) => app,
            Err(never) => match never {},
        }
    }

    /// An app whose client authentication `auth` makes (it registers its
    /// counters in the app's metrics).
    pub fn with_auth<E>(
        store: Store,
        key: SigningKey,
        upstreams: Upstreams,
        policies: Policies,
        auth: impl FnOnce(&Metrics) -> Result<Auth, E>,
    ) -> Result<Arc<App>, E> {
        let metrics = Arc::new(Metrics::new());
        let auth = auth(&metrics)?;
        Ok(Arc::new(App {
            services: Services::new(store, key, metrics.clone()),
            upstreams,
            policies: arc_swap::ArcSwap::from_pointee(policies),
            auth,
            metrics,
            cockpit: crate::cockpit::Cockpit::default(),
            next_id: AtomicU64::new(1),
            id_prefix: crate::access_log::id_prefix(),
            access: AtomicU8::new(crate::access_log::AccessLevel::Info.as_u8()),
            cluster: std::sync::OnceLock::new(),
            prepared: prepared::Prepared::default(),
            policies_reloads: AtomicU64::new(0),
        }))
    }

    /// The cluster, when `[cluster]` is configured.
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.get()
    }

    /// Make this app a cluster member (once; a second call is ignored and
    /// logged).
    pub fn set_cluster(&self, cluster: crate::cluster::Cluster) {
        if self.cluster.set(cluster).is_err() {
            tracing::warn!("the cluster was set twice; keeping the first");
        }
    }

    /// Client authentication (a reload replaces its access rules).
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Use `policies` from the next request on (a configuration reload).
    pub fn set_policies(&self, policies: Policies) {
        self.policies.store(Arc::new(policies));
        // After the store: an answer prepared under the old rules carries
        // an older number and is dropped on its next use.
        self.policies_reloads
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The configured upstreams (their breakers, for `/readyz`).
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    pub fn store(&self) -> &Store {
        &self.services.store
    }

    /// The services (the cache admin endpoints prefetch and purge through them).
    pub fn services(&self) -> &Services {
        &self.services
    }

    pub fn signing_key(&self) -> &SigningKey {
        self.services.schema1.key()
    }

    /// Refresh gauges from the store and counters from the upstream clients.
    pub fn refresh_metrics(&self) {
        let s = self.store().stats();
        let http = &self.metrics.http;
        http.tier(
            "disk",
            s.disk.bytes_used,
            s.disk.entries,
            Some(s.disk.max_bytes),
        );
        if let Some(m) = &s.memory {
            // Its budget is set at start-up (`server::build`).
            http.tier("memory", m.bytes_used, m.entries, None);
        }
        self.metrics.cache.update(&s.disk, &s.fills);
        if let Some(shared) = self.store().shared() {
            self.metrics.cluster.set_shared(&shared.stats());
        }
        let evicted = s.disk.evictions;
        let counted = self.metrics.evictions.get();
        if evicted > counted {
            self.metrics.evictions.inc_by(evicted - counted);
        }
        for u in self.upstreams.iter() {
            let now = u.breaker.state();
            for s in crate::breaker::State::ALL {
                let g = self
                    .metrics
                    .upstream_state
                    .get_or_create(&crate::metrics::UpstreamState {
                        upstream: u.name.clone(),
                        state: s.as_str(),
                    })
                    .clone();
                g.set(i64::from(s == now));
            }
            let c = self
                .metrics
                .upstream_short_circuits
                .get_or_create(&crate::metrics::UpstreamLabel {
                    upstream: u.name.clone(),
                })
                .clone();
            let (n, have) = (u.breaker.short_circuits(), c.get());
            if n > have {
                c.inc_by(n - have);
            }
            let up = u.client.stats();
            for ((method, status), n) in &up.requests {
                let c = self.metrics.upstream_requests.get_or_create(&UpstreamCall {
                    upstream: u.name.clone(),
                    method: method.clone(),
                    // No response at all: `error` (its cause is in
                    // `regcache_upstream_failures_total`).
                    status: if *status == 0 {
                        "error".to_owned()
                    } else {
                        status.to_string()
                    },
                });
                let have = c.get();
                if *n > have {
                    c.inc_by(n - have);
                }
            }
            http.upstream_durations.set(&u.name, up.durations);
            for (cause, n) in &up.failures {
                let c = self
                    .metrics
                    .upstream_failures
                    .get_or_create(&UpstreamFailure {
                        upstream: u.name.clone(),
                        cause,
                    });
                let have = c.get();
                if *n > have {
                    c.inc_by(n - have);
                }
            }
        }
    }

    /// Entry point for every request hyper serves.
    pub async fn handle(self: Arc<Self>, mut req: Request<ReqBody>) -> Response<Body> {
        self.metrics.responded(ResponseVia::Hyper);
        let routed = route(req.uri(), &self.upstreams);
        let observed = self.observe(&mut req, &routed);
        let (mut resp, outcome) = if observed.logging() {
            crate::access_log::scoped(self.respond(routed, req)).await
        } else {
            (
                self.respond(routed, req).await,
                crate::access_log::Outcome::None,
            )
        };
        let (id, line) = self.observed(observed, resp.status().as_u16(), outcome);
        resp.headers_mut()
            .insert(crate::access_log::X_REQUEST_ID.clone(), id);
        match line {
            Some(line) => resp.map(|body| crate::access_log::logged(body, line)),
            None => resp,
        }
    }

    /// Answer a routed request. Its span ([`Target::span`]) is made at
    /// once for requests that always reach the upstream (pushes, listings);
    /// reads make it only when they leave the cache (the services run their
    /// upstream work in it) or fail.
    async fn respond(
        &self,
        routed: Result<Routed, Error>,
        req: Request<ReqBody>,
    ) -> Response<Body> {
        match self.admit(&req, routed).await {
            Ok(routed) => self.respond_authorized(routed, req).await,
            Err(refused) => refused,
        }
    }

    /// Client authentication and access ([`crate::auth`]), once per
    /// request on both paths: the routed request, acting as its client when
    /// the grant says so, or the refusal's response.
    async fn admit(
        &self,
        req: &Request<ReqBody>,
        routed: Result<Routed, Error>,
    ) -> Result<Result<Routed, Error>, Response<Body>> {
        let grant = match self.auth.authorize(req, routed.as_ref().ok()).await {
            Ok(grant) => grant,
            Err(e) => return Err(self.refused(req, routed.as_ref().ok(), e)),
        };
        let routed = routed.map(|mut r| {
            r.target.acting_as = grant.acting_as.map(|a| a.0);
            r
        });
        // A blob is shared by digest across repositories; a client let into
        // this one reads it here only if it belongs here ([`links`]).
        if let Ok(Routed {
            target,
            route: Route::Blob { name, digest },
        }) = &routed
            && self.access_controlled()
            && (req.method() == Method::GET || req.method() == Method::HEAD)
            && let Err(e) = target
                .in_span(
                    self.services
                        .links
                        .check(target, name, digest, Object::Blob),
                )
                .await
        {
            return Err(self.refused(req, routed.as_ref().ok(), e));
        }
        Ok(routed)
    }

    /// Client authentication is on: what a client may read depends on the
    /// repository, so content shared by digest is served per repository.
    fn access_controlled(&self) -> bool {
        self.auth.mode() != crate::config::AuthMode::None
    }

    /// A request refused before dispatch (authentication, routing), rescued
    /// in its span.
    fn refused(&self, req: &Request<ReqBody>, routed: Option<&Routed>, e: Error) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        let resp = match routed {
            Some(r) => {
                let span = self.request_span(req, &r.route);
                let mut target = r.target.clone();
                target.span = span;
                let at = target.span.at();
                target.span().in_scope(|| rescue_at(e, head, at))
            }
            None => {
                let id = req
                    .extensions()
                    .get::<crate::access_log::RequestId>()
                    .and_then(|id| id.0.to_str().ok())
                    .unwrap_or("-");
                let span = tracing::info_span!("request", id, method = %req.method());
                span.in_scope(|| rescue(e, head))
            }
        };
        with_api_version(resp)
    }

    /// [`App::respond`] once client authentication let the request through.
    async fn respond_authorized(
        &self,
        routed: Result<Routed, Error>,
        req: Request<ReqBody>,
    ) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        let Routed { mut target, route } = match routed {
            Ok(r) => r,
            Err(_) if self.auth.serves(req.uri().path()) => {
                return match self.auth.token_endpoint(&req, &self.upstreams).await {
                    Ok(resp) => resp,
                    Err(e) => self.refused(&req, None, e),
                };
            }
            Err(e) => return self.refused(&req, None, e),
        };
        target.span = self.request_span(&req, &route);
        let tally = self.cockpit.tally(&route);
        let get = req.method() == Method::GET;
        let cached_read = matches!(
            route,
            Route::Ping | Route::Manifest { .. } | Route::Blob { .. }
        ) && (head || req.method() == Method::GET);
        let resp = if cached_read {
            self.dispatch(&target, route, req).await
        } else {
            target.in_span(self.dispatch(&target, route, req)).await
        };
        let resp = resp.unwrap_or_else(|e| {
            let at = target.span.at();
            target.span().in_scope(|| rescue_at(e, head, at))
        });
        if get && resp.status().is_success() {
            tally.bytes(body_len(&resp));
        }
        with_api_version(resp)
    }

    /// A request's span fields, with its id (the span itself is made on
    /// first use).
    fn request_span(&self, req: &Request<ReqBody>, route: &Route) -> RequestSpan {
        let id = req
            .extensions()
            .get::<crate::access_log::RequestId>()
            .map(|id| id.0.clone());
        RequestSpan::new(id, req.method(), route)
    }

    /// The dispatch table: route and method to handler.
    async fn dispatch(
        &self,
        target: &Target,
        route: Route,
        req: Request<ReqBody>,
    ) -> Result<Response<Body>, Error> {
        let method = req.method().clone();
        let head = method == Method::HEAD;
        let read = method == Method::GET || head;
        let up = &target.upstream;
        let writes = || {
            acting(
                target,
                decide(up.writes, Gated::Write, &up.name, req.headers()),
            )
        };
        match route {
            Route::Ping
                if read
                    && up.writes == Forwarding::ClientCredentials
                    && target.acting_as.is_none() =>
            {
                self.relay_ping(target, req).await
            }
            Route::Ping if read => Ok(ping(head)),
            Route::Manifest { name, reference } if read => {
                self.get_manifest(target, &name, &reference, req.headers(), head)
                    .await
            }
            Route::Blob { name, digest } if read => {
                self.get_blob(target, &name, &digest, req.headers(), head)
                    .await
            }
            Route::Tags { name } if method == Method::GET => {
                self.listing(
                    target,
                    &req,
                    listings::Listing::Tags(name),
                    Identity::Stored,
                )
                .await
            }
            Route::Catalog if method == Method::GET => {
                let identity = acting(
                    target,
                    decide(up.catalog, Gated::Catalog, &up.name, req.headers()),
                )?;
                self.listing(target, &req, listings::Listing::Catalog, identity)
                    .await
            }
            Route::Referrers { name, digest } if read => {
                self.get_referrers(target, &name, &digest, &req, head).await
            }
            Route::Manifest { name, reference } if method == Method::PUT => {
                let identity = writes()?;
                self.push_manifest(target, req, &name, &reference, identity)
                    .await
            }
            Route::Manifest { .. } | Route::Blob { .. } if method == Method::DELETE => {
                let identity = writes()?;
                self.forward(target, req, identity).await
            }
            Route::UploadStart { .. } if method == Method::POST => {
                let identity = writes()?;
                self.forward(target, req, identity).await
            }
            Route::Upload { .. }
                if matches!(
                    method,
                    Method::GET | Method::PATCH | Method::PUT | Method::DELETE
                ) =>
            {
                let identity = writes()?;
                self.forward(target, req, identity).await
            }
            _ => Err(Error::client_status(
                405,
                RegistryError::with_message(
                    ErrorCode::Unsupported,
                    format!("method {method} is not supported on this endpoint"),
                ),
            )),
        }
    }
}

/// A gated request's identity when the request acts as its client
/// (`auth = "upstream"`): the client's credentials are already those of
/// [`Target::client`], which does the token dance with them, so a write that
/// would pass the client's `Authorization` through goes as that client
/// instead; regcache's own credentials are never used in that mode.
fn acting(target: &Target, identity: Result<Identity, Error>) -> Result<Identity, Error> {
    Ok(match identity? {
        Identity::Client(_) if target.acting_as.is_some() => Identity::Stored,
        other => other,
    })
}

#[cfg(test)]
mod tests;

/// A response's body length for the top tables: its `Content-Length`, else
/// the body's exact size hint, else 0 (a stream of unknown length).
fn body_len(resp: &Response<Body>) -> u64 {
    resp.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or_else(|| http_body::Body::size_hint(resp.body()).exact())
        .unwrap_or(0)
}

//! The admin listener's endpoints: `/healthz` (liveness), `/readyz`
//! (readiness, 503 while starting, stopping or saturated), `/metrics`,
//! `/mappings`, the cockpit (`/` and `/ui`: the admin page; `/api/stats`:
//! its figures as JSON; [`crate::cockpit`]), the cache listing
//! `GET /api/cache`, and the state-changing ones (`POST /tls/reload`,
//! `POST /reload` of the configuration ([`crate::reload`]), `POST /api/purge`,
//! `POST /api/prefetch`; the cache endpoints live in
//! [`crate::cache_admin::api`]).
//!
//! Every request that is not a `GET` or `HEAD` changes state, so it is
//! protected by default, whatever endpoint it names: with an admin token
//! configured (`[admin] token_file`, `REGCACHE_ADMIN_TOKEN`) it must carry
//! `Authorization: Bearer <token>`; without one, it is allowed only when
//! `admin_listen` is a loopback address. The token is compared in constant
//! time and never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use regcache_formats::{ErrorCode, RegistryError};

use crate::config::AdminToken;
use crate::conn::Guard;
use crate::error::Error;
use crate::handlers::App;
use crate::rescue::rescue;
use crate::web::body::Body;

/// Everything the admin endpoints read or act on.
#[derive(Debug)]
pub struct Admin {
    pub app: Arc<App>,
    pub ready: Arc<AtomicBool>,
    pub reloader: Option<Arc<crate::tls::Reloader>>,
    /// `POST /reload` (None: started without a configuration to re-read).
    pub config_reloader: Option<Arc<crate::reload::ConfigReloader>>,
    /// The API listener's guard: its open connections for `/readyz`.
    pub api: Arc<Guard>,
    pub access: AdminAccess,
}

/// Who may call the state-changing endpoints.
#[derive(Debug, Clone)]
pub enum AdminAccess {
    /// No token and a loopback listener: whoever reaches it.
    Loopback,
    /// A bearer token is required.
    Token(AdminToken),
    /// No token off loopback: nobody.
    Refused { listen: SocketAddr },
}

impl AdminAccess {
    pub fn new(listen: SocketAddr, token: Option<AdminToken>) -> AdminAccess {
        match token {
            Some(t) => AdminAccess::Token(t),
            None if listen.ip().is_loopback() => AdminAccess::Loopback,
            None => AdminAccess::Refused { listen },
        }
    }

    /// Whether a state-changing request with these headers may proceed;
    /// `Err` is its registry error (401 with a challenge, or 403).
    pub fn check(&self, headers: &http::HeaderMap) -> Result<(), Error> {
        match self {
            AdminAccess::Loopback => Ok(()),
            AdminAccess::Refused { listen } => Err(Error::policy(
                403,
                RegistryError::with_message(
                    ErrorCode::Denied,
                    format!(
                        "state-changing admin endpoints are off: admin_listen ({listen}) is not a loopback address and no admin token is set; set [admin] token_file (or REGCACHE_ADMIN_TOKEN) and send Authorization: Bearer <token>"
                    ),
                ),
            )),
            AdminAccess::Token(token) => {
                let presented = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| bearer(v.as_bytes()));
                match presented {
                    Some(p) if token.matches(p) => Ok(()),
                    _ => Err(Error::client_status(
                        401,
                        RegistryError::with_message(
                            ErrorCode::Unauthorized,
                            "this admin endpoint needs Authorization: Bearer <admin token>",
                        ),
                    )),
                }
            }
        }
    }
}

/// The credentials of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn text(status: StatusCode, ct: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

impl Admin {
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let read = matches!(*req.method(), Method::GET | Method::HEAD);
        if !read && let Err(e) = self.access.check(req.headers()) {
            let mut resp = rescue(e, false);
            if resp.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"regcache-admin\""),
                );
            }
            return resp;
        }
        if crate::cache_admin::api::owns(req.uri().path()) {
            return self.cache_endpoint(req).await;
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
            "/readyz" => self.readyz(),
            "/mappings" => {
                let records = self.app.store().mappings().list();
                text(
                    StatusCode::OK,
                    "application/json",
                    Bytes::from(crate::admin_cli::to_json(&records)),
                )
            }
            "/tls/reload" if req.method() != Method::POST => {
                let mut r = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain",
                    Bytes::from_static(b"POST to reload the tls certificate\n"),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                r
            }
            "/tls/reload" => self.tls_reload(),
            "/" | "/ui" => {
                let mut r = text(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    Bytes::from(crate::cockpit::page::render(&self.stats())),
                );
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            "/api/stats" => match serde_json::to_vec(&self.stats()) {
                Ok(json) => text(StatusCode::OK, "application/json", Bytes::from(json)),
                Err(e) => rescue(Error::bug(format!("encoding /api/stats: {e}")), false),
            },
            "/reload" if req.method() != Method::POST => {
                let mut r = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain",
                    Bytes::from_static(b"POST to reload the configuration\n"),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                r
            }
            "/reload" => self.config_reload(),
            "/metrics" => {
                self.app.refresh_metrics();
                // OpenMetrics for whoever asks for it (Prometheus does); the
                // classic text format for everyone else (curl, promtool).
                let open = req
                    .headers()
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                if open {
                    text(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        Bytes::from(self.app.metrics.encode_openmetrics()),
                    )
                } else {
                    text(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        Bytes::from(self.app.metrics.encode()),
                    )
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                Bytes::from_static(b"not found\n"),
            ),
        }
    }

    /// The cockpit's figures now (gauges refreshed as for `/metrics`).
    fn stats(&self) -> crate::cockpit::stats::Stats {
        self.app.refresh_metrics();
        crate::cockpit::stats::Stats::collect(&self.app)
    }

    async fn cache_endpoint<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use http_body_util::BodyExt as _;
        let (parts, body) = req.into_parts();
        let limited = http_body_util::Limited::new(body, crate::cache_admin::api::MAX_BODY_BYTES);
        let body = match limited.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return rescue(
                    Error::client_status(
                        400,
                        RegistryError::with_message(
                            ErrorCode::Unsupported,
                            format!(
                                "request body unreadable or over {} bytes: {e}",
                                crate::cache_admin::api::MAX_BODY_BYTES
                            ),
                        ),
                    ),
                    false,
                );
            }
        };
        crate::cache_admin::api::handle(&self.app, &parts.method, parts.uri.path(), body).await
    }

    /// 200 once serving; 503 while starting or stopping, and while the API
    /// listener's open connections are at 90% of `max_connections` or more
    /// (new clients would wait in the accept queue). The body lists each
    /// upstream's circuit breaker; an open one does not make regcache
    /// unready (it still serves what it has cached).
    fn readyz(&self) -> Response<Body> {
        if !self.ready.load(Ordering::SeqCst) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from_static(b"not ready\n"),
            );
        }
        if self.api.saturated() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from(format!(
                    "saturated: {} of {} connections open\n",
                    self.api.open_now(),
                    self.api.limits.max_connections
                )),
            );
        }
        // Ready while regcache can serve: a cache that can't write still
        // proxies (fills pass through), and an upstream whose breaker is open
        // still has the cache in front of it. A load balancer should keep
        // sending traffic to a proxy that proxies; the body says what is
        // degraded (the cache's state, each upstream's breaker), for people
        // and probes that read it, and metrics carry the same states.
        let mut body = match self.app.store().disk().health().state() {
            regcache_store::CacheState::Ok => String::from("ready\n"),
            state => format!(
                "ready; cache {}: new content is served through from the upstream without being cached\n",
                state.as_str()
            ),
        };
        for u in self.app.upstreams().iter() {
            body.push_str(&u.breaker.report());
        }
        text(StatusCode::OK, "text/plain", Bytes::from(body))
    }

    /// 200 with what was applied and what needs a restart; 422 with every
    /// problem when the configuration is bad (nothing changed). JSON.
    fn config_reload(&self) -> Response<Body> {
        let json = |status, value: serde_json::Value| {
            text(
                status,
                "application/json",
                Bytes::from(format!("{value}\n")),
            )
        };
        let Some(reloader) = &self.config_reloader else {
            return json(
                StatusCode::CONFLICT,
                serde_json::json!({"reloaded": false, "problems": ["regcache was not started with a configuration to reload"]}),
            );
        };
        match reloader.reload() {
            Ok(out) => json(
                StatusCode::OK,
                serde_json::json!({"reloaded": true, "applied": out.applied, "needs_restart": out.needs_restart}),
            ),
            // Problems name keys and files, never a secret's value.
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"reloaded": false, "problems": e.problems}),
            ),
        }
    }

    fn tls_reload(&self) -> Response<Body> {
        match &self.reloader {
            None => text(
                StatusCode::CONFLICT,
                "text/plain",
                Bytes::from_static(b"tls is not configured: nothing to reload\n"),
            ),
            // Two small files; the admin listener can wait for them.
            Some(reloader) => match reloader.reload() {
                Ok(n) => text(
                    StatusCode::OK,
                    "text/plain",
                    Bytes::from(format!("reloaded ({n} certificate(s))\n")),
                ),
                // The problems name files, never key bytes.
                Err(e) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "text/plain",
                    Bytes::from(format!(
                        "not reloaded, still serving the previous certificate: {e}\n"
                    )),
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn state_changes_need_loopback_or_the_token() {
        let lo: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:5001".parse().unwrap();
        let token = AdminToken::new("0123456789abcdef0123".into()).unwrap();

        assert!(AdminAccess::new(lo, None).check(&headers(None)).is_ok());

        let refused = AdminAccess::new(any, None)
            .check(&headers(None))
            .unwrap_err();
        let resp = rescue(refused.clone(), false);
        assert_eq!(resp.status(), 403);
        assert!(refused.to_string().contains("token_file"), "{refused}");
        // A token does not help when none is configured.
        assert!(
            AdminAccess::new(any, None)
                .check(&headers(Some("Bearer 0123456789abcdef0123")))
                .is_err()
        );

        for listen in [lo, any] {
            let access = AdminAccess::new(listen, Some(token.clone()));
            assert!(
                access
                    .check(&headers(Some("Bearer 0123456789abcdef0123")))
                    .is_ok()
            );
            assert!(
                access
                    .check(&headers(Some("bearer  0123456789abcdef0123 ")))
                    .is_ok()
            );
            for bad in [
                None,
                Some("Bearer 0123456789abcdef012"),
                Some("Bearer "),
                Some("Basic MDEyMzQ1Njc4OWFiY2RlZjAxMjM="),
                Some("0123456789abcdef0123"),
            ] {
                let e = access.check(&headers(bad)).unwrap_err();
                assert_eq!(rescue(e, false).status(), 401, "{bad:?}");
            }
        }
        assert!(!format!("{:?}", AdminAccess::new(any, Some(token))).contains("0123456789"));
    }
}

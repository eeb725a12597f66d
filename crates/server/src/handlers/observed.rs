//! What both serving paths do around every request: give it its id (the
//! client's `X-Request-Id` if sane, else a new one; its span's `id`),
//! count it in `regcache_http_requests_total` and time it to its response
//! head in `regcache_http_request_duration_seconds`, and keep its access
//! line ([`crate::access_log`]) when access logging is on.

use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{HeaderValue, Method, Request};

use super::App;
use crate::access_log::{self, AccessLevel, Line, Outcome, RequestId};
use crate::conn::ConnInfo;
use crate::error::Error;
use crate::metrics_http::route_index;
use crate::request::Routed;
use crate::web::body::ReqBody;

/// A request being answered.
#[derive(Debug)]
pub(super) struct Observed {
    started: Instant,
    method: Method,
    route: usize,
    id: HeaderValue,
    line: Option<Line>,
}

impl Observed {
    /// Whether its access line is kept (then the cache outcome is noted).
    pub(super) fn logging(&self) -> bool {
        self.line.is_some()
    }
}

impl App {
    /// `[log] access`.
    pub fn set_access_log(&self, level: AccessLevel) {
        self.access.store(level.as_u8(), Ordering::Relaxed);
    }

    /// Start observing `req` (routed as `routed`): its id goes in its
    /// extensions, for its span.
    pub(super) fn observe(
        &self,
        req: &mut Request<ReqBody>,
        routed: &Result<Routed, Error>,
    ) -> Observed {
        let started = Instant::now();
        let id = access_log::request_id(req.headers(), || {
            access_log::generated_id(self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed))
        });
        req.extensions_mut().insert(RequestId(id.clone()));
        let route = match routed {
            Ok(r) => r.route.kind(),
            Err(_) if self.auth.serves(req.uri().path()) => "token",
            Err(_) => "none",
        };
        let level = AccessLevel::from_u8(self.access.load(Ordering::Relaxed));
        let line = level.enabled().then(|| {
            let r = routed.as_ref().ok();
            Line::new(access_log::Request {
                level,
                started,
                method: req.method(),
                route,
                repository: r.and_then(|r| r.route.name()).map(|n| n.as_str()),
                upstream: r.map(|r| r.target.upstream.name.as_str()),
                id: &id,
                peer: req.extensions().get::<ConnInfo>().map(|c| c.peer),
            })
        });
        Observed {
            started,
            method: req.method().clone(),
            route: route_index(route),
            id,
            line,
        }
    }

    /// The response head is ready: count and time it. Returns the id for
    /// the `X-Request-Id` header and the access line to finish once the
    /// body is written.
    pub(super) fn observed(
        &self,
        o: Observed,
        status: u16,
        outcome: Outcome,
    ) -> (HeaderValue, Option<Line>) {
        self.metrics
            .http
            .answered(o.route, &o.method, status, o.started.elapsed());
        let line = o.line.map(|mut l| {
            l.answered(status, outcome);
            l
        });
        (o.id, line)
    }
}

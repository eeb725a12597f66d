//! What a listener allows a connection and a client address: the limits of
//! `[limits]`, applied the same way on the fast path and on hyper.
//!
//! - [`Guard`]: one per listener; the per-client connection slots
//!   ([`clients`]), the per-client request rate (a `governor` keyed limiter),
//!   the `Host` rules ([`host`]), the timeouts, and the connection metrics.
//! - [`Watched`] ([`watched`]): hyper's IO, with write and body timeouts.
//! - [`ConnInfo`]: the peer of a request, a request extension on both paths.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use regcache_formats::{ErrorCode, RegistryError};

use crate::config::ConnLimits;
use crate::error::Error;
use crate::metrics::{ConnReason, ListenerLabel, Metrics};
use crate::rescue::rescue;
use crate::web::body::Body;
use crate::web::response::with_api_version;

pub mod clients;
pub mod host;
pub mod watched;

pub use clients::{ClientSlot, ClientSlots};
pub use watched::{ConnState, IoCut, TrackedBody, Watched};

/// The connection a request came on; in every request's extensions (the
/// fast path's and hyper's), for handlers that need the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Why a connection was closed by a timeout (the `reason` label of
/// `regcache_connections_cut_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing at all arrived within the header timeout.
    FirstByte,
    /// A request head (or a TLS handshake) began but did not finish in time.
    Header,
    /// Kept alive without a next request.
    Idle,
    /// The client stopped reading a response.
    Write,
    /// The client stopped sending a request body.
    Body,
}

/// The connection metrics of one listener, resolved once.
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    pub open: Gauge,
    refused_per_client: Counter,
    cut: [Counter; 5],
    rate_limited: Counter,
    bad_host: Counter,
}

impl ConnMetrics {
    pub fn new(metrics: &Metrics, listener: &'static str) -> ConnMetrics {
        // One statement per series (see `Metrics::new`): a family's read
        // guard must be gone before the next insert.
        let reason = |family: &prometheus_client::metrics::family::Family<ConnReason, Counter>,
                      reason: &'static str| {
            let c = family.get_or_create(&ConnReason { listener, reason });
            c.clone()
        };
        let open = {
            let g = metrics
                .open_connections
                .get_or_create(&ListenerLabel { listener });
            g.clone()
        };
        ConnMetrics {
            open,
            refused_per_client: reason(&metrics.connections_refused, "per_client"),
            cut: [
                reason(&metrics.connections_cut, "first_byte"),
                reason(&metrics.connections_cut, "header"),
                reason(&metrics.connections_cut, "idle"),
                reason(&metrics.connections_cut, "write"),
                reason(&metrics.connections_cut, "body"),
            ],
            rate_limited: reason(&metrics.requests_refused, "rate_limit"),
            bad_host: reason(&metrics.requests_refused, "host"),
        }
    }

    pub fn cut(&self, why: Cut) {
        let i = match why {
            Cut::FirstByte => 0,
            Cut::Header => 1,
            Cut::Idle => 2,
            Cut::Write => 3,
            Cut::Body => 4,
        };
        self.cut[i].inc();
    }
}

/// An open connection, counted in the gauge until dropped.
#[derive(Debug)]
pub struct Open {
    gauge: Gauge,
    _slot: Option<ClientSlot>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A listener's limits and the state they need.
pub struct Guard {
    pub name: &'static str,
    pub limits: ConnLimits,
    pub metrics: ConnMetrics,
    slots: Option<ClientSlots>,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The keyed limiter drops addresses idle long enough to be full again
/// every this many requests, so its memory follows the active clients.
const RATE_SWEEP_EVERY: u64 = 4096;

impl Guard {
    /// `rate_limited`: whether `limits.rate` applies here (the API listener;
    /// not the admin one, which Kubernetes probes and Prometheus poll).
    pub fn new(
        name: &'static str,
        limits: ConnLimits,
        metrics: &Metrics,
        rate_limited: bool,
    ) -> Guard {
        let rate = limits
            .rate
            .filter(|_| rate_limited)
            .and_then(|(rps, burst)| {
                let rps = NonZeroU32::new(rps)?;
                let burst = NonZeroU32::new(burst).unwrap_or(rps);
                Some(RateLimiter::keyed(
                    Quota::per_second(rps).allow_burst(burst),
                ))
            });
        Guard {
            name,
            slots: limits.max_connections_per_client.map(ClientSlots::new),
            limits,
            metrics: ConnMetrics::new(metrics, name),
            rate,
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// A new connection from `peer`, or `None` (counted) when its address
    /// already holds its share.
    pub fn open(&self, peer: SocketAddr) -> Option<Open> {
        let slot = match &self.slots {
            None => None,
            Some(slots) => match slots.take(peer.ip()) {
                Some(s) => Some(s),
                None => {
                    self.metrics.refused_per_client.inc();
                    return None;
                }
            },
        };
        self.metrics.open.inc();
        Some(Open {
            gauge: self.metrics.open.clone(),
            _slot: slot,
        })
    }

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        usize::try_from(self.metrics.open.get()).unwrap_or(0)
    }

    /// Whether open connections are at 90% of `max_connections` or more.
    pub fn saturated(&self) -> bool {
        self.open_now().saturating_mul(10) >= self.limits.max_connections.saturating_mul(9)
    }

    /// The checks every request passes before it is routed: `Host` rules,
    /// then the client's rate. `Err` is the response to send.
    pub fn admit<B>(&self, req: &Request<B>, peer: SocketAddr) -> Result<(), Error> {
        if let Err(p) = host::check_host(req.version(), req.headers()) {
            self.metrics.bad_host.inc();
            return Err(Error::client_status(
                400,
                RegistryError::with_message(ErrorCode::Unsupported, p.message()),
            ));
        }
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % RATE_SWEEP_EVERY == RATE_SWEEP_EVERY - 1 {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
        match rate.check_key(&peer.ip().to_canonical()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                self.metrics.rate_limited.inc();
                let wait = not_until.wait_time_from(self.clock.now());
                // Whole seconds, rounded up: `Retry-After: 0` would invite
                // an immediate retry.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(Error::Throttled {
                    retry_after_secs: secs.max(1),
                })
            }
        }
    }

    /// [`Guard::admit`]'s refusal made into its response; `None`: admitted.
    pub fn refusal<B>(&self, req: &Request<B>, peer: SocketAddr) -> Option<Response<Body>> {
        let e = self.admit(req, peer).err()?;
        let head = req.method() == http::Method::HEAD;
        let span = tracing::debug_span!("refused", listener = self.name, %peer);
        Some(with_api_version(span.in_scope(|| rescue(e, head))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: Option<(u32, u32)>) -> ConnLimits {
        ConnLimits {
            rate,
            max_connections_per_client: Some(2),
            max_connections: 10,
            ..ConnLimits::default()
        }
    }

    fn get(host: Option<&str>) -> Request<()> {
        let mut b = Request::get("/v2/");
        if let Some(h) = host {
            b = b.header(http::header::HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn rate_limit_answers_429_with_retry_after_per_address() {
        let metrics = Metrics::new();
        let guard = Guard::new("api", limits(Some((1, 3))), &metrics, true);
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        for _ in 0..3 {
            guard.admit(&get(Some("x")), a).unwrap();
        }
        let err = guard.admit(&get(Some("x")), a).unwrap_err();
        let Error::Throttled { retry_after_secs } = err else {
            panic!("{err}");
        };
        assert_eq!(retry_after_secs, 1);
        // Another address has its own bucket.
        guard.admit(&get(Some("x")), b).unwrap();
        let resp = guard.refusal(&get(Some("x")), a).unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "1");
        let text = metrics.encode();
        assert!(
            text.contains(
                "regcache_requests_refused_total{listener=\"api\",reason=\"rate_limit\"} 2"
            ),
            "{text}"
        );
        // Not rate limited where it does not apply.
        let admin = Guard::new("admin", limits(Some((1, 1))), &metrics, false);
        for _ in 0..10 {
            admin.admit(&get(Some("x")), a).unwrap();
        }
    }

    #[test]
    fn host_rules_come_before_the_rate() {
        let metrics = Metrics::new();
        let guard = Guard::new("api", limits(None), &metrics, true);
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let resp = guard.refusal(&get(None), a).unwrap();
        assert_eq!(resp.status(), 400);
        guard.admit(&get(Some("registry:5000")), a).unwrap();
    }

    #[test]
    fn connections_are_counted_and_limited_per_address() {
        let metrics = Metrics::new();
        let guard = Guard::new("api", limits(None), &metrics, true);
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let c1 = guard.open(a).unwrap();
        let c2 = guard.open(a).unwrap();
        assert!(guard.open(a).is_none());
        assert_eq!(guard.open_now(), 2);
        assert!(!guard.saturated());
        let others: Vec<_> = (0..7)
            .map(|i| guard.open(SocketAddr::from(([10, 0, 1, i], 1))).unwrap())
            .collect();
        assert!(guard.saturated(), "9 of 10");
        drop((c1, c2, others));
        assert_eq!(guard.open_now(), 0);
        let text = metrics.encode();
        assert!(
            text.contains(
                "regcache_connections_refused_total{listener=\"api\",reason=\"per_client\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("regcache_open_connections{listener=\"api\"} 0"),
            "{text}"
        );
    }
}

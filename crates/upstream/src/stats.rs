//! Per-upstream request counters for the server's metrics endpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use http::Method;
use parking_lot::Mutex;

/// Counters of one [`crate::UpstreamClient`]. Every HTTP exchange counts once,
/// redirect hops and retries included; token requests are counted apart.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// (method, status) → count; status `0` = no response (transport
    /// failure or timeout). The set of keys is small (a handful of methods
    /// times the statuses seen), so a map under a short lock is enough.
    requests: Mutex<HashMap<(Method, u16), u64>>,
    retries: AtomicU64,
    token_requests: AtomicU64,
    token_failures: AtomicU64,
    /// [`crate::Cause::label`] → exchanges or bodies that failed with it.
    failures: Mutex<HashMap<&'static str, u64>>,
    /// (method, status class) → how long exchanges took to their response
    /// head (or to their failure).
    durations: Mutex<HashMap<(Method, &'static str), Durations>>,
}

/// Upper bounds (seconds) of the buckets of upstream exchange durations:
/// from a warm connection on loopback to a first-byte timeout.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of exchange durations: per-bucket (not cumulative) counts of
/// [`DURATION_BUCKETS`], plus one for slower ones; their sum in seconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Durations {
    pub counts: [u64; DURATION_BUCKETS.len() + 1],
    pub sum: f64,
}

impl Durations {
    fn observe(&mut self, secs: f64) {
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
    }

    /// Exchanges observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Cumulative `(upper bound, count)` pairs, `+Inf` last (the
    /// Prometheus histogram buckets).
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, n) in self.counts.iter().enumerate() {
            total += n;
            out.push((
                DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                total,
            ));
        }
        out
    }
}

/// A status's class as a metric label: `2xx` … `5xx`, or `error` for no
/// response at all (status 0: connect failure, timeout, reset).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "error",
    }
}

impl Stats {
    pub fn record(&self, method: &Method, status: u16) {
        *self
            .requests
            .lock()
            .entry((method.clone(), status))
            .or_insert(0) += 1;
    }

    /// How long an exchange took to its response head (status 0: to its
    /// failure).
    pub fn duration(&self, method: &Method, status: u16, took: std::time::Duration) {
        self.durations
            .lock()
            .entry((method.clone(), status_class(status)))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// An exchange without a response, or a body that broke off.
    pub fn failure(&self, cause: crate::Cause) {
        *self.failures.lock().entry(cause.label()).or_insert(0) += 1;
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn token_request(&self, ok: bool) {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.token_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self, upstream: &str) -> UpstreamStats {
        UpstreamStats {
            upstream: upstream.to_owned(),
            requests: self
                .requests
                .lock()
                .iter()
                .map(|((m, s), n)| ((m.as_str().to_owned(), *s), *n))
                .collect(),
            retries: self.retries.load(Ordering::Relaxed),
            token_requests: self.token_requests.load(Ordering::Relaxed),
            token_failures: self.token_failures.load(Ordering::Relaxed),
            failures: self.failures.lock().iter().map(|(c, n)| (*c, *n)).collect(),
            durations: self
                .durations
                .lock()
                .iter()
                .map(|((m, c), d)| ((m.as_str().to_owned(), *c), d.clone()))
                .collect(),
        }
    }
}

/// A copy of an upstream's counters (monotonic since start).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpstreamStats {
    /// The upstream's configured name (a metrics label).
    pub upstream: String,
    /// (method, status) → requests sent, redirect hops and retries
    /// included; status `0` means no HTTP response (connect failure,
    /// timeout, reset).
    pub requests: BTreeMap<(String, u16), u64>,
    /// Retries scheduled (attempts after the first).
    pub retries: u64,
    /// Requests to token realms, and how many of them failed.
    pub token_requests: u64,
    pub token_failures: u64,
    /// Cause label ([`crate::Cause::label`], a dozen values) → exchanges
    /// that got no response and response bodies that broke off.
    pub failures: BTreeMap<&'static str, u64>,
    /// (method, status class: [`status_class`]) → exchange durations.
    pub durations: BTreeMap<(String, &'static str), Durations>,
}

impl UpstreamStats {
    /// Requests with this method and status.
    pub fn count(&self, method: &str, status: u16) -> u64 {
        self.requests
            .get(&(method.to_owned(), status))
            .copied()
            .unwrap_or(0)
    }

    /// All requests with this method.
    pub fn total(&self, method: &str) -> u64 {
        self.requests
            .iter()
            .filter(|((m, _), _)| m == method)
            .map(|(_, n)| n)
            .sum()
    }
}

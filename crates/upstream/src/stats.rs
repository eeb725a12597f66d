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
}

impl Stats {
    pub fn record(&self, method: &Method, status: u16) {
        *self
            .requests
            .lock()
            .entry((method.clone(), status))
            .or_insert(0) += 1;
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
        }
    }
}

/// A copy of an upstream's counters (monotonic since start).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

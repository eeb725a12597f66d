//! Request metrics of the operator's cockpit: requests by route, method and
//! status class, their latency, upstream exchange latency, fills in
//! flight, the cache's size by tier, and the process (`process_*`).
//!
//! `regcache_http_request_duration_seconds` is the time from the request
//! head read to the response head ready to write (time to headers: what
//! regcache adds, whatever the client's bandwidth; a cold blob's is the
//! upstream's answer time). The access log's `duration_ms` runs to the last
//! body byte.
//!
//! The hot path pays no label hashing: each `(route, method, status class)`
//! counter and `(route, status class)` histogram is resolved from its
//! family once, on first use, and kept in a fixed array.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Method;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use regcache_upstream::Durations;

/// Buckets (seconds) of request latency: a warm manifest on loopback answers
/// in well under a millisecond, a cold blob waits for its upstream.
pub const REQUEST_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `route` label: [`crate::routes::Route::kind`], `token` for the
/// token endpoint, `none` for paths that are no API endpoint.
pub const ROUTES: [&str; 9] = [
    "ping",
    "catalog",
    "manifest",
    "blob",
    "upload",
    "tags",
    "referrers",
    "token",
    "none",
];
const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OTHER"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRequest {
    pub route: &'static str,
    pub method: &'static str,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpDuration {
    pub route: &'static str,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Tier {
    /// `memory` or `disk`.
    pub tier: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// The index of a route label in [`ROUTES`] (`none` for anything else).
pub fn route_index(route: &str) -> usize {
    ROUTES
        .iter()
        .position(|r| *r == route)
        .unwrap_or(ROUTES.len() - 1)
}

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::PUT => 2,
        Method::POST => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        _ => 6,
    }
}

fn class_index(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

/// Requests, latency, fills in flight, cache tiers, upstream latency.
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<HttpRequest, Counter>,
    durations: HistogramFamily<HttpDuration>,
    counters: Box<[OnceLock<Counter>]>,
    histograms: Box<[OnceLock<Histogram>]>,
    /// Blob fills downloading now.
    pub fills_in_flight: Gauge,
    pub cache_bytes: Family<Tier, Gauge>,
    pub cache_entries: Family<Tier, Gauge>,
    pub cache_budget: Family<Tier, Gauge>,
    /// The upstream clients' exchange durations as of the last refresh.
    pub upstream_durations: UpstreamDurations,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let requests = Family::<HttpRequest, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered on the API listener, by route, method and status class",
            requests.clone(),
        );
        let durations: HistogramFamily<HttpDuration> =
            Family::new_with_constructor(request_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's head to its response head, by route and status class",
            durations.clone(),
        );
        let fills_in_flight = Gauge::default();
        registry.register(
            "fills_in_flight",
            "Blob fills downloading from an upstream now",
            fills_in_flight.clone(),
        );
        let cache_bytes = Family::<Tier, Gauge>::default();
        registry.register(
            "cache_bytes",
            "Bytes held by each cache tier (memory, disk)",
            cache_bytes.clone(),
        );
        let cache_entries = Family::<Tier, Gauge>::default();
        registry.register(
            "cache_entries",
            "Entries held by each cache tier (memory, disk)",
            cache_entries.clone(),
        );
        let cache_budget = Family::<Tier, Gauge>::default();
        registry.register(
            "cache_budget_bytes",
            "Configured size of each cache tier (cache.memory_size, cache.disk_size)",
            cache_budget.clone(),
        );
        let upstream_durations = UpstreamDurations::default();
        registry.register_collector(Box::new(upstream_durations.clone()));
        HttpMetrics {
            requests,
            durations,
            counters: (0..ROUTES.len() * METHODS.len() * CLASSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            histograms: (0..ROUTES.len() * CLASSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            fills_in_flight,
            cache_bytes,
            cache_entries,
            cache_budget,
            upstream_durations,
        }
    }

    /// One request answered: `route` an index of [`ROUTES`], `took` the time
    /// to its response head.
    pub fn answered(&self, route: usize, method: &Method, status: u16, took: Duration) {
        let (r, m, c) = (
            route.min(ROUTES.len() - 1),
            method_index(method),
            class_index(status),
        );
        let counter =
            self.counters[(r * METHODS.len() + m) * CLASSES.len() + c].get_or_init(|| {
                let got = self.requests.get_or_create(&HttpRequest {
                    route: ROUTES[r],
                    method: METHODS[m],
                    status_class: CLASSES[c],
                });
                got.clone()
            });
        counter.inc();
        let histogram = self.histograms[r * CLASSES.len() + c].get_or_init(|| {
            let got = self.durations.get_or_create(&HttpDuration {
                route: ROUTES[r],
                status_class: CLASSES[c],
            });
            got.clone()
        });
        histogram.observe(took.as_secs_f64());
    }

    /// Set a tier's size, entry count and budget.
    pub fn tier(&self, tier: &'static str, bytes: u64, entries: u64, budget: Option<u64>) {
        let label = Tier { tier };
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.cache_bytes.get_or_create(&label).set(g(bytes));
        self.cache_entries.get_or_create(&label).set(g(entries));
        if let Some(b) = budget {
            self.cache_budget.get_or_create(&label).set(g(b));
        }
    }

    /// A guard that counts one fill in flight until it is dropped.
    pub fn fill_started(&self) -> InFlight {
        self.fills_in_flight.inc();
        InFlight(self.fills_in_flight.clone())
    }
}

/// One fill in `regcache_fills_in_flight`, however its task ends.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamTiming {
    upstream: String,
    method: String,
    status_class: String,
}

/// `regcache_upstream_request_duration_seconds{upstream,method,status_class}`:
/// the upstream clients keep their own bucket counts
/// ([`regcache_upstream::Durations`]); each scrape copies them here
/// ([`crate::handlers::App::refresh_metrics`]) and this collector writes them.
#[derive(Clone, Debug, Default)]
pub struct UpstreamDurations {
    latest: Arc<Mutex<BTreeMap<String, ByMethodAndClass>>>,
}

/// (method, status class) → durations, as the upstream client keeps them.
type ByMethodAndClass = BTreeMap<(String, &'static str), Durations>;

impl UpstreamDurations {
    pub fn set(&self, upstream: &str, durations: ByMethodAndClass) {
        self.latest.lock().insert(upstream.to_owned(), durations);
    }
}

impl Collector for UpstreamDurations {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut metric = encoder.encode_descriptor(
            "upstream_request_duration_seconds",
            "Time from sending an upstream request to its response head (status_class error: to its failure), redirect hops and retries each counted",
            None,
            MetricType::Histogram,
        )?;
        for (upstream, by) in self.latest.lock().iter() {
            for ((method, class), d) in by {
                let labels = UpstreamTiming {
                    upstream: upstream.clone(),
                    method: method.clone(),
                    status_class: (*class).to_owned(),
                };
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(d.sum, d.count(), &d.cumulative(), None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_method_and_class() {
        let mut registry = Registry::with_prefix("regcache");
        let m = HttpMetrics::register(&mut registry);
        let blob = route_index("blob");
        m.answered(blob, &Method::GET, 200, Duration::from_micros(300));
        m.answered(blob, &Method::GET, 206, Duration::from_millis(2));
        m.answered(route_index("weird"), &Method::OPTIONS, 404, Duration::ZERO);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "regcache_http_requests_total{route=\"blob\",method=\"GET\",status_class=\"2xx\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "regcache_http_requests_total{route=\"none\",method=\"OTHER\",status_class=\"4xx\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("regcache_http_request_duration_seconds_bucket{le=\"0.0005\",route=\"blob\",status_class=\"2xx\"} 1")
                || text.contains("regcache_http_request_duration_seconds_bucket{route=\"blob\",status_class=\"2xx\",le=\"0.0005\"} 1"),
            "{text}"
        );
        let mut d = BTreeMap::new();
        let mut one = Durations::default();
        one.counts[0] = 1;
        one.sum = 0.0005;
        d.insert(("GET".to_owned(), "error"), one);
        m.upstream_durations.set("hub", d);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("regcache_upstream_request_duration_seconds_count{upstream=\"hub\",method=\"GET\",status_class=\"error\"} 1"),
            "{text}"
        );
        let f = m.fill_started();
        assert_eq!(m.fills_in_flight.get(), 1);
        drop(f);
        assert_eq!(m.fills_in_flight.get(), 0);
    }
}

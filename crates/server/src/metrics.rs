//! Prometheus metrics, served on the admin listener at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Lookup {
    /// `manifest`, `blob`, `tag` or `schema1`.
    pub kind: &'static str,
    /// `hit`, `miss`, `stale` (served past its TTL because the upstream
    /// failed: stale-if-error) or `stale_while_revalidate` (served past its
    /// TTL at once while a background request revalidates it).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Source {
    /// `cache` or `upstream`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Via {
    /// How a response was written; see [`Metrics::responded`].
    pub via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsReload {
    /// `ok` (new handshakes use the new certificate) or `error` (the old one stays).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailure {
    /// Why a client was refused (never who): see `crate::auth::Failure`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `api`, `admin` or `internal` (`[cluster]`).
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnReason {
    /// `api`, `admin` or `internal` (`[cluster]`).
    pub listener: &'static str,
    /// Why; see the metric's help.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamFailure {
    pub upstream: String,
    /// `regcache_upstream::Cause::label`: a dozen fixed values.
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamCall {
    pub upstream: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamState {
    pub upstream: String,
    /// `closed`, `open` or `half_open` ([`crate::breaker::State`]).
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

/// Every metric regcache exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub lookups: Family<Lookup, Counter>,
    pub bytes_served: Family<Source, Counter>,
    pub upstream_requests: Family<UpstreamCall, Counter>,
    pub upstream_failures: Family<UpstreamFailure, Counter>,
    /// 1 for each upstream's circuit breaker state now, 0 for the others.
    pub upstream_state: Family<UpstreamState, Gauge>,
    /// Requests answered without contacting the upstream (breaker open).
    pub upstream_short_circuits: Family<UpstreamLabel, Counter>,
    pub fill_waiters: Histogram,
    pub evictions: Counter,
    pub fills_failed: Counter,
    /// The disk cache's write health (`metrics_cache.rs`).
    pub cache: crate::metrics_cache::CacheMetrics,
    /// Requests, latency, fills in flight, cache tiers (`metrics_http.rs`).
    pub http: crate::metrics_http::HttpMetrics,
    /// Cluster members and peer requests (`metrics_cluster.rs`).
    pub cluster: crate::metrics_cluster::ClusterMetrics,
    /// `process_*`, apart: no `regcache_` prefix.
    process: Registry,
    /// Configuration reloads ([`crate::reload`]).
    pub reload: crate::reload::ReloadMetrics,
    pub responses: Family<Via, Counter>,
    /// TLS handshakes on the API listener that failed or timed out (a plain
    /// HTTP client on the TLS port, an untrusted certificate, a port scan).
    pub tls_handshake_failures: Counter,
    /// Reloads of the API listener's certificate (SIGHUP, `POST /tls/reload`)
    /// by result; `tls_reload_ok` and `tls_reload_error` are its two series.
    pub tls_reloads: Family<TlsReload, Counter>,
    pub tls_reload_ok: Counter,
    pub tls_reload_error: Counter,
    /// `regcache_tls_connections_total{path}` (`kernel_tls.rs`).
    pub tls_connections: crate::kernel_tls::TlsPaths,
    /// Requests refused by client authentication or the access rules, by
    /// reason (no user names in labels).
    pub auth_failures: Family<AuthFailure, Counter>,
    /// Changed htpasswd files that did not load (the previous users stay).
    pub htpasswd_reload_errors: Counter,
    /// Open client connections, by listener.
    pub open_connections: Family<ListenerLabel, Gauge>,
    /// Connections closed at accept by a limit, by listener and reason.
    pub connections_refused: Family<ConnReason, Counter>,
    /// Connections closed by a timeout, by listener and reason.
    pub connections_cut: Family<ConnReason, Counter>,
    /// Requests refused before routing (rate limit, bad `Host`).
    pub requests_refused: Family<ConnReason, Counter>,
    /// Counters of the hot paths, resolved once (a `Family` lookup takes a
    /// lock and hashes the labels on every call).
    hot: Hot,
}

#[derive(Debug, Clone, Default)]
struct Hot {
    tag_hit: Counter,
    manifest_hit: Counter,
    blob_hit: Counter,
    schema1_hit: Counter,
    bridge_hit: Counter,
    upgrade_hit: Counter,
    from_cache: Counter,
    from_upstream: Counter,
    via_sendfile: Counter,
    via_sendfile_fill: Counter,
    via_fast: Counter,
    via_prepared: Counter,
    via_hyper: Counter,
}

/// What a cache lookup looked for (the `kind` label of `regcache_cache_lookups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tag,
    Manifest,
    Blob,
    Schema1,
    Listing,
    /// Docker twins of OCI manifests and indexes.
    Bridge,
    /// Schema 1 images upgraded to Docker Schema 2.
    Upgrade,
    /// A subject's referrers list (OCI 1.1), kept for the tag TTL.
    Referrers,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tag => "tag",
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Schema1 => "schema1",
            Kind::Listing => "listing",
            Kind::Bridge => "bridge",
            Kind::Upgrade => "upgrade",
            Kind::Referrers => "referrers",
        }
    }
}

/// Where served bytes came from (the `source` label of `regcache_served_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedFrom {
    Cache,
    Upstream,
}

/// How a response went out, for [`Metrics::responded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseVia {
    /// Fast path, a cached blob file with `sendfile`.
    Sendfile,
    /// Fast path, a blob still being filled, with `sendfile`.
    SendfileFill,
    /// Fast path, any other body (manifests, errors, memory-tier blobs).
    Fast,
    /// Fast path, a by-tag manifest answer kept ready (`handlers::prepared`).
    Prepared,
    /// hyper (requests with bodies, HTTP/2, and everything after them on
    /// their connection).
    Hyper,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("regcache");
        let lookups = Family::<Lookup, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by kind and result",
            lookups.clone(),
        );
        let bytes_served = Family::<Source, Counter>::default();
        registry.register(
            "served_bytes",
            "Body bytes sent to clients, by where they came from",
            bytes_served.clone(),
        );
        let upstream_requests = Family::<UpstreamCall, Counter>::default();
        registry.register(
            "upstream_requests",
            "Requests made to upstream registries, by method and status",
            upstream_requests.clone(),
        );
        let upstream_failures = Family::<UpstreamFailure, Counter>::default();
        registry.register(
            "upstream_failures",
            "Upstream requests that got no response and response bodies that broke off, \
             by cause (dns, refused, tls, reset, closed, timeout_<phase>, …)",
            upstream_failures.clone(),
        );
        let upstream_state = Family::<UpstreamState, Gauge>::default();
        registry.register(
            "upstream_state",
            "Circuit breaker state of each upstream: 1 for the current state (closed, open, half_open), 0 for the others",
            upstream_state.clone(),
        );
        let upstream_short_circuits = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "upstream_short_circuits",
            "Upstream calls not made because the upstream's circuit breaker was open (answered from the cache, or 503)",
            upstream_short_circuits.clone(),
        );
        let fill_waiters = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]);
        registry.register(
            "fill_waiters",
            "Clients served by one upstream blob fill",
            fill_waiters.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "evictions",
            "Disk tier entries evicted to stay under the size limit",
            evictions.clone(),
        );
        let cache = crate::metrics_cache::CacheMetrics::register(&mut registry);
        let http = crate::metrics_http::HttpMetrics::register(&mut registry);
        let tls_connections = crate::kernel_tls::TlsPaths::register(&mut registry);
        let cluster = crate::metrics_cluster::ClusterMetrics::register(&mut registry);
        let mut process = Registry::with_prefix("process");
        if let Err(e) = kubert_prometheus_process::register(&mut process) {
            tracing::warn!(error = %e, "process metrics are not available");
        }
        let reload = crate::reload::ReloadMetrics::register(&mut registry);
        let fills_failed = Counter::default();
        registry.register(
            "fills_failed",
            "Blob fills that failed (upstream error, digest mismatch, truncation)",
            fills_failed.clone(),
        );
        // One statement per counter: `get_or_create` returns a read guard on the
        // family's map, and a second insert while a guard from the same
        // statement is alive would wait for a write lock forever.
        let counter = |kind: Kind| -> Counter {
            let c = lookups.get_or_create(&Lookup {
                kind: kind.as_str(),
                result: "hit",
            });
            c.clone()
        };
        let tag_hit = counter(Kind::Tag);
        let manifest_hit = counter(Kind::Manifest);
        let blob_hit = counter(Kind::Blob);
        let schema1_hit = counter(Kind::Schema1);
        let bridge_hit = counter(Kind::Bridge);
        let upgrade_hit = counter(Kind::Upgrade);
        let from_cache = {
            let c = bytes_served.get_or_create(&Source { source: "cache" });
            c.clone()
        };
        let from_upstream = {
            let c = bytes_served.get_or_create(&Source { source: "upstream" });
            c.clone()
        };
        let responses = Family::<Via, Counter>::default();
        registry.register(
            "responses",
            "Responses by how they were written: sendfile (cached blob), sendfile_fill (blob being fetched), fast (regcache's HTTP/1 loop), prepared (a warm by-tag manifest answer kept ready, on that loop) or hyper",
            responses.clone(),
        );
        let via = |via: &'static str| -> Counter {
            let c = responses.get_or_create(&Via { via });
            c.clone()
        };
        let via_sendfile = via("sendfile");
        let via_sendfile_fill = via("sendfile_fill");
        let via_fast = via("fast");
        let via_prepared = via("prepared");
        let via_hyper = via("hyper");
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the API listener that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let tls_reloads = Family::<TlsReload, Counter>::default();
        registry.register(
            "tls_reloads",
            "Reloads of the API listener's certificate and key, by result (ok: in use for new handshakes; error: the previous one stays)",
            tls_reloads.clone(),
        );
        // One statement each (see `counter` above): both series exist from the start.
        let tls_reload_ok = {
            let c = tls_reloads.get_or_create(&TlsReload { result: "ok" });
            c.clone()
        };
        let tls_reload_error = {
            let c = tls_reloads.get_or_create(&TlsReload { result: "error" });
            c.clone()
        };
        let auth_failures = Family::<AuthFailure, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused by client authentication or the access rules, by reason",
            auth_failures.clone(),
        );
        let htpasswd_reload_errors = Counter::default();
        registry.register(
            "htpasswd_reload_errors",
            "Changed htpasswd files that did not load (the previous users stay)",
            htpasswd_reload_errors.clone(),
        );
        let open_connections = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "open_connections",
            "Client connections open now, by listener (api, admin, internal)",
            open_connections.clone(),
        );
        let connections_refused = Family::<ConnReason, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept by a limit (per_client: the address already holds limits.max_connections_per_client)",
            connections_refused.clone(),
        );
        let connections_cut = Family::<ConnReason, Counter>::default();
        registry.register(
            "connections_cut",
            "Connections closed by a timeout: first_byte (nothing sent), header (a request head or TLS handshake too slow), idle (kept alive without a request), write (the client stopped reading), body (the client stopped sending a body)",
            connections_cut.clone(),
        );
        let requests_refused = Family::<ConnReason, Counter>::default();
        registry.register(
            "requests_refused",
            "Requests answered with an error before routing: rate_limit (429), host (400, RFC 9112 Host rules)",
            requests_refused.clone(),
        );
        let hot = Hot {
            via_sendfile,
            via_sendfile_fill,
            via_fast,
            via_prepared,
            via_hyper,
            tag_hit,
            manifest_hit,
            blob_hit,
            schema1_hit,
            bridge_hit,
            upgrade_hit,
            from_cache,
            from_upstream,
        };
        Metrics {
            hot,
            registry,
            lookups,
            bytes_served,
            upstream_requests,
            upstream_failures,
            upstream_state,
            upstream_short_circuits,
            fill_waiters,
            evictions,
            fills_failed,
            cache,
            http,
            cluster,
            process,
            reload,
            responses,
            tls_handshake_failures,
            tls_reloads,
            tls_reload_ok,
            tls_reload_error,
            tls_connections,
            auth_failures,
            htpasswd_reload_errors,
            open_connections,
            connections_refused,
            connections_cut,
            requests_refused,
        }
    }

    pub fn responded(&self, via: ResponseVia) {
        match via {
            ResponseVia::Sendfile => self.hot.via_sendfile.inc(),
            ResponseVia::SendfileFill => self.hot.via_sendfile_fill.inc(),
            ResponseVia::Fast => self.hot.via_fast.inc(),
            ResponseVia::Prepared => self.hot.via_prepared.inc(),
            ResponseVia::Hyper => self.hot.via_hyper.inc(),
        };
    }

    pub fn hit(&self, kind: Kind) {
        noted(kind, crate::access_log::Outcome::Hit);
        let counter = match kind {
            Kind::Tag => &self.hot.tag_hit,
            Kind::Manifest => &self.hot.manifest_hit,
            Kind::Blob => &self.hot.blob_hit,
            Kind::Schema1 => &self.hot.schema1_hit,
            Kind::Bridge => &self.hot.bridge_hit,
            Kind::Upgrade => &self.hot.upgrade_hit,
            Kind::Listing | Kind::Referrers => {
                return self.lookup(kind, "hit");
            }
        };
        counter.inc();
    }

    pub fn miss(&self, kind: Kind) {
        self.lookup(kind, "miss");
    }

    /// Served past its TTL because the upstream failed (stale-if-error).
    pub fn stale(&self, kind: Kind) {
        self.lookup(kind, "stale");
    }

    /// Served past its TTL without waiting, a background revalidation started
    /// (or joined); told apart from `stale` (stale-if-error) by its result label.
    pub fn stale_while_revalidate(&self, kind: Kind) {
        self.lookup(kind, "stale_while_revalidate");
    }

    fn lookup(&self, kind: Kind, result: &'static str) {
        use crate::access_log::Outcome;
        noted(
            kind,
            match result {
                "hit" => Outcome::Hit,
                "miss" => Outcome::Miss,
                _ => Outcome::Stale,
            },
        );
        self.lookups
            .get_or_create(&Lookup {
                kind: kind.as_str(),
                result,
            })
            .inc();
    }

    /// A meter for one response's body bytes from `from`: whoever writes
    /// the body adds what was written, and the total goes to
    /// `regcache_served_bytes_total` once (see [`Meter`]).
    pub fn meter(&self, from: ServedFrom) -> Meter {
        let counter = match from {
            ServedFrom::Cache => &self.hot.from_cache,
            ServedFrom::Upstream => &self.hot.from_upstream,
        };
        Meter {
            counter: counter.clone(),
            bytes: 0,
        }
    }

    /// The OpenMetrics text format (what Prometheus asks for first).
    pub fn encode_openmetrics(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        let ok = encode_registry(&mut out, &self.registry).is_ok()
            && encode_registry(&mut out, &self.process).is_ok()
            && encode_eof(&mut out).is_ok();
        if !ok {
            out.clear();
        }
        out
    }

    /// The Prometheus text format 0.0.4 (for clients that don't ask for
    /// OpenMetrics, `promtool check metrics` among them): counters' `HELP`
    /// and `TYPE` name the `_total` series, no `# UNIT`, no `# EOF`.
    pub fn encode(&self) -> String {
        crate::metrics_text::to_prometheus_text(&self.encode_openmetrics())
    }
}

/// Tell the access log what a lookup found: a generated manifest (a twin,
/// an upgrade, a Schema 1 conversion) says so whether it was cached or not.
fn noted(kind: Kind, result: crate::access_log::Outcome) {
    use crate::access_log::{Outcome, note};
    note(match kind {
        Kind::Bridge | Kind::Upgrade => Outcome::Bridged,
        Kind::Schema1 => Outcome::Converted,
        _ => result,
    });
}

/// Body bytes written for one response. Adding is a plain `u64` addition;
/// the total reaches its counter once, when the meter is flushed or dropped
/// (no atomic operation per chunk).
#[derive(Debug)]
pub struct Meter {
    counter: Counter,
    bytes: u64,
}

impl Meter {
    pub fn add(&mut self, bytes: u64) {
        self.bytes += bytes;
    }

    /// Hand what was counted so far to the counter.
    pub fn flush(&mut self) {
        if self.bytes > 0 {
            self.counter.inc_by(std::mem::take(&mut self.bytes));
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_does_not_deadlock_and_hot_counters_are_exported() {
        let m = Metrics::new();
        m.hit(Kind::Tag);
        m.hit(Kind::Blob);
        m.hit(Kind::Listing);
        m.miss(Kind::Blob);
        m.stale(Kind::Tag);
        m.stale_while_revalidate(Kind::Tag);
        m.stale_while_revalidate(Kind::Tag);
        let mut cache = m.meter(ServedFrom::Cache);
        cache.add(4);
        cache.add(6);
        let mut upstream = m.meter(ServedFrom::Upstream);
        upstream.add(5);
        upstream.flush();
        assert!(
            m.encode()
                .contains("regcache_served_bytes_total{source=\"cache\"} 0"),
            "counted once, when the meter goes"
        );
        drop(cache);
        upstream.add(0);
        drop(upstream);
        m.tls_handshake_failures.inc();
        m.tls_reload_error.inc();
        let text = m.encode();
        assert!(
            text.contains("regcache_cache_lookups_total{kind=\"tag\",result=\"hit\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("regcache_cache_lookups_total{kind=\"listing\",result=\"hit\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("regcache_cache_lookups_total{kind=\"tag\",result=\"stale\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "regcache_cache_lookups_total{kind=\"tag\",result=\"stale_while_revalidate\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("regcache_served_bytes_total{source=\"cache\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("regcache_served_bytes_total{source=\"upstream\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("regcache_tls_handshake_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains("regcache_tls_reloads_total{result=\"ok\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("regcache_tls_reloads_total{result=\"error\"} 1"),
            "{text}"
        );
    }
}

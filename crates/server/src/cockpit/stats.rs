//! The figures of the admin page and of `GET /api/stats` (the same
//! [`Stats`], as HTML or JSON), read from the sources `/metrics` reads:
//! the [`Metrics`] counters (`regcache_cache_lookups_total`,
//! `regcache_served_bytes_total`, `regcache_requests_refused_total`, …),
//! the store's sizes, the breakers; plus the cockpit's own tables.
//!
//! The JSON shape is documented in README ("Admin page and `regcache
//! stats`"); `version` changes when a field changes meaning.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use super::errors::ErrorRecord;
use super::history::{Point, Sample};
use super::setup::Setup;
use super::top::Row;
use crate::handlers::App;
use crate::metrics::{ConnReason, Kind, Lookup, Metrics, Source};

/// Rows in each top list.
pub const TOP_N: usize = 10;

/// Everything the admin page shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The shape's version (1).
    pub version: u32,
    /// Unix time of this snapshot, seconds.
    pub generated_at: u64,
    pub uptime_secs: u64,
    pub cache: CacheStats,
    pub lookups: LookupStats,
    pub served_bytes: ServedBytes,
    /// Hit ratio per sampling interval, oldest first.
    pub hit_ratio_history: Vec<Point>,
    pub hit_ratio_interval_secs: u64,
    pub top_repositories: TopLists,
    pub top_blobs: TopLists,
    pub fills: Vec<FillRow>,
    pub upstreams: Vec<UpstreamRow>,
    pub limits: LimitStats,
    /// Newest first.
    pub recent_errors: Vec<ErrorRecord>,
    pub setup: Setup,
    /// The other replicas and the shared tier; `None` on a replica alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
}

/// `[cluster]` and `[shared]` as this replica sees them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// This replica's advertised address; `None` without `[cluster]`.
    pub me: Option<String>,
    pub members: Vec<MemberRow>,
    /// The shared bucket; `None` without `[shared]`.
    pub shared_bucket: Option<String>,
    /// `regcache_fills_total` by source (`shared`, `peer`, `upstream`).
    pub fills_by_source: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberRow {
    pub member: String,
    pub live: bool,
    pub me: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    pub disk: TierRow,
    /// `None` when the memory tier is off.
    pub memory: Option<TierRow>,
    /// `ok`, `degraded` or `read_only` (`regcache_cache_state`).
    pub state: String,
    pub evictions: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TierRow {
    pub bytes: u64,
    pub entries: u64,
    pub max_bytes: u64,
}

/// Sums over every `kind` of `regcache_cache_lookups_total`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LookupStats {
    /// `result="hit"`.
    pub hits: u64,
    /// `result="miss"`.
    pub misses: u64,
    /// `result="stale"` and `result="stale_while_revalidate"`.
    pub stale: u64,
    /// `hits / (hits + misses)`; `None` before any lookup.
    pub hit_ratio: Option<f64>,
}

/// `regcache_served_bytes_total` by `source`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServedBytes {
    /// Bytes the upstream did not have to send again.
    pub cache: u64,
    pub upstream: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopLists {
    pub by_requests: Vec<Row>,
    pub by_bytes: Vec<Row>,
    /// Names in the table (it holds at most a few thousand).
    pub tracked: u64,
    /// Requests for names past the table's cap (not in the lists).
    pub untracked_requests: u64,
}

/// One blob fill in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FillRow {
    pub digest: String,
    pub repository: Option<String>,
    pub bytes: u64,
    /// `Content-Length`, once known.
    pub len: Option<u64>,
    /// Clients reading it now.
    pub waiters: u64,
    pub age_secs: f64,
    /// Served through without being cached.
    pub passing_through: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamRow {
    pub name: String,
    /// Breaker state: `closed`, `open` or `half_open`.
    pub state: String,
    pub state_secs: u64,
    /// The last failure's cause ("" before any).
    pub last_failure: String,
    /// `regcache_upstream_short_circuits_total`.
    pub short_circuits: u64,
}

/// Refusals by the `[limits]` (the settings are in `setup.limits`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitStats {
    /// `regcache_requests_refused_total{listener="api",reason="rate_limit"}`.
    pub rate_limited: u64,
    /// `…{reason="host"}`.
    pub bad_host: u64,
    /// `regcache_connections_refused_total{listener="api",reason="per_client"}`.
    pub per_client_refused: u64,
    /// `regcache_open_connections{listener="api"}`.
    pub open_connections: i64,
}

const KINDS: [Kind; 8] = [
    Kind::Tag,
    Kind::Manifest,
    Kind::Blob,
    Kind::Schema1,
    Kind::Listing,
    Kind::Bridge,
    Kind::Upgrade,
    Kind::Referrers,
];

/// The sum of `regcache_cache_lookups_total{result}` over every kind,
/// without creating series that do not exist yet.
pub fn lookups(m: &Metrics, result: &'static str) -> u64 {
    KINDS
        .iter()
        .map(|k| {
            m.lookups
                .get(&Lookup {
                    kind: k.as_str(),
                    result,
                })
                .map_or(0, |c| c.get())
        })
        .sum()
}

/// Cumulative hits and misses now, for the sparkline.
pub fn sample(m: &Metrics) -> Sample {
    Sample {
        t: unix_now(),
        hits: lookups(m, "hit"),
        misses: lookups(m, "miss"),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn refused(family: &Family<ConnReason, Counter>, reason: &'static str) -> u64 {
    family
        .get(&ConnReason {
            listener: "api",
            reason,
        })
        .map_or(0, |c| c.get())
}

impl Stats {
    /// A snapshot of `app` now.
    pub fn collect(app: &App) -> Stats {
        let m = &app.metrics;
        let c = &app.cockpit;
        let store = app.store();
        let s = store.stats();
        let now = sample(m);
        let hits = now.hits;
        let misses = now.misses;
        let served = |source: &'static str| {
            m.bytes_served
                .get(&Source { source })
                .map_or(0, |c| c.get())
        };
        let fills = store
            .fills_in_progress()
            .into_iter()
            .map(|f| FillRow {
                digest: f.digest.to_string(),
                repository: f.repository,
                bytes: f.written,
                len: f.len,
                waiters: f.readers as u64,
                age_secs: f.age.as_secs_f64(),
                passing_through: f.passing_through,
            })
            .collect();
        let upstreams = app
            .upstreams()
            .iter()
            .map(|u| {
                let (state, since, last_failure) = u.breaker.status();
                UpstreamRow {
                    name: u.name.clone(),
                    state: state.as_str().to_owned(),
                    state_secs: since.as_secs(),
                    last_failure,
                    short_circuits: u.breaker.short_circuits(),
                }
            })
            .collect();
        let top = |t: &super::top::Table| TopLists {
            by_requests: t.top_by_requests(TOP_N),
            by_bytes: t.top_by_bytes(TOP_N),
            tracked: t.len() as u64,
            untracked_requests: t.untracked(),
        };
        let cfg = store.config();
        Stats {
            version: 1,
            generated_at: now.t,
            uptime_secs: c.started.elapsed().as_secs(),
            cache: CacheStats {
                disk: TierRow {
                    bytes: s.disk.bytes_used,
                    entries: s.disk.entries,
                    max_bytes: s.disk.max_bytes,
                },
                memory: s.memory.as_ref().map(|mem| TierRow {
                    bytes: mem.bytes_used,
                    entries: mem.entries,
                    max_bytes: cfg.memory_max_bytes,
                }),
                state: s.disk.state.as_str().to_owned(),
                evictions: s.disk.evictions,
            },
            lookups: LookupStats {
                hits,
                misses,
                stale: lookups(m, "stale") + lookups(m, "stale_while_revalidate"),
                hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            },
            served_bytes: ServedBytes {
                cache: served("cache"),
                upstream: served("upstream"),
            },
            hit_ratio_history: c.history.points(now),
            hit_ratio_interval_secs: super::history::INTERVAL.as_secs(),
            top_repositories: top(&c.repositories),
            top_blobs: top(&c.blobs),
            fills,
            upstreams,
            limits: LimitStats {
                rate_limited: refused(&m.requests_refused, "rate_limit"),
                bad_host: refused(&m.requests_refused, "host"),
                per_client_refused: refused(&m.connections_refused, "per_client"),
                open_connections: m
                    .open_connections
                    .get(&crate::metrics::ListenerLabel { listener: "api" })
                    .map_or(0, |g| g.get()),
            },
            recent_errors: super::errors::recent().recent(),
            setup: c.setup().cloned().unwrap_or_default(),
            cluster: cluster_stats(app),
        }
    }
}

fn cluster_stats(app: &App) -> Option<ClusterStats> {
    let cluster = app.cluster();
    let shared = app.store().shared();
    if cluster.is_none() && shared.is_none() {
        return None;
    }
    let members = cluster.map_or_else(Vec::new, |c| {
        c.members()
            .into_iter()
            .map(|m| MemberRow {
                member: m.member.to_string(),
                live: m.live,
                me: m.is_me,
            })
            .collect()
    });
    let fills_by_source = ["shared", "peer", "upstream"]
        .into_iter()
        .map(|source| (source.to_owned(), app.metrics.cluster.fills_from(source)))
        .collect();
    Some(ClusterStats {
        me: cluster.map(|c| c.me().to_string()),
        members,
        shared_bucket: shared.map(|s| s.config().bucket.clone()),
        fills_by_source,
    })
}

//! Metrics of the cluster ([`crate::cluster`]): how many members are live
//! or suspect now, and how the requests to peers went.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberState {
    /// `live` or `suspect` (its last probe failed, or a request to it did).
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerResult {
    /// `ok`, `unreachable`, `status` (an error answer), `bad_response`
    /// (headers regcache cannot use) or `body` (the body broke off).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FillSource {
    /// Where a committed blob fill's bytes came from: `shared` (the S3
    /// tier), `peer` (the digest's owner) or `upstream`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SharedOp {
    /// `get`, `create`, `exists` (a create that found the object), `upload`
    /// or `error`.
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SharedDirection {
    /// `read` or `written`.
    pub direction: &'static str,
}

/// `regcache_cluster_members{state}`, `regcache_peer_requests_total{result}`,
/// `regcache_fills_total{source}` and the shared tier's
/// `regcache_shared_operations_total{op}` and `regcache_shared_bytes_total{direction}`.
/// Clones share their series; [`ClusterMetrics::default`] is unregistered
/// (tests, a cluster started without an app).
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    members: Family<MemberState, Gauge>,
    peer_requests: Family<PeerResult, Counter>,
    fills: Family<FillSource, Counter>,
    shared_ops: Family<SharedOp, Counter>,
    shared_bytes: Family<SharedDirection, Counter>,
}

impl ClusterMetrics {
    pub fn register(registry: &mut Registry) -> ClusterMetrics {
        let m = ClusterMetrics::default();
        registry.register(
            "cluster_members",
            "Cluster members by state: live (answering, or not probed yet) or suspect (a probe or a request failed); this replica counts as live",
            m.members.clone(),
        );
        registry.register(
            "peer_requests",
            "Blob requests to other replicas, by result (ok, unreachable, status, bad_response, body)",
            m.peer_requests.clone(),
        );
        registry.register(
            "fills",
            "Blob fills committed, by where their bytes came from: shared (the S3 tier), peer (the digest's owner) or upstream",
            m.fills.clone(),
        );
        registry.register(
            "shared_operations",
            "Shared tier operations: get (hits read), create (objects this replica stored), exists (creates that found the object there), upload (files uploaded), error",
            m.shared_ops.clone(),
        );
        registry.register(
            "shared_bytes",
            "Bytes read from and written to the shared tier",
            m.shared_bytes.clone(),
        );
        m
    }

    /// A fill committed with bytes from `source` (`shared`, `peer`, `upstream`).
    pub fn fill_from(&self, source: &'static str) {
        self.fills.get_or_create(&FillSource { source }).inc();
    }

    /// How many fills committed from `source` so far (no series is made).
    pub fn fills_from(&self, source: &'static str) -> u64 {
        self.fills
            .get(&FillSource { source })
            .map_or(0, |c| c.get())
    }

    /// Brings the shared tier's counters up to `stats` (they only grow).
    pub fn set_shared(&self, stats: &regcache_store::SharedStats) {
        let ops = [
            ("get", stats.gets),
            ("create", stats.puts_created),
            ("exists", stats.puts_existing),
            ("upload", stats.uploads),
            ("error", stats.errors),
        ];
        for (op, n) in ops {
            let c = self.shared_ops.get_or_create(&SharedOp { op }).clone();
            let have = c.get();
            if n > have {
                c.inc_by(n - have);
            }
        }
        for (direction, n) in [("read", stats.get_bytes), ("written", stats.upload_bytes)] {
            let c = self
                .shared_bytes
                .get_or_create(&SharedDirection { direction })
                .clone();
            let have = c.get();
            if n > have {
                c.inc_by(n - have);
            }
        }
    }

    /// Sets both gauges (one statement each: a family's guard must be gone
    /// before the next insert).
    pub fn set_members(&self, live: usize, suspect: usize) {
        let g = self.members.get_or_create(&MemberState { state: "live" });
        g.set(i64::try_from(live).unwrap_or(i64::MAX));
        drop(g);
        let g = self
            .members
            .get_or_create(&MemberState { state: "suspect" });
        g.set(i64::try_from(suspect).unwrap_or(i64::MAX));
    }

    pub fn peer_request(&self, result: &'static str) {
        self.peer_requests
            .get_or_create(&PeerResult { result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_peer_requests_are_exported() {
        let mut registry = Registry::with_prefix("regcache");
        let m = ClusterMetrics::register(&mut registry);
        m.set_members(2, 1);
        m.peer_request("ok");
        m.peer_request("ok");
        m.peer_request("unreachable");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "regcache_cluster_members{state=\"live\"} 2",
            "regcache_cluster_members{state=\"suspect\"} 1",
            "regcache_peer_requests_total{result=\"ok\"} 2",
            "regcache_peer_requests_total{result=\"unreachable\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
    }
}

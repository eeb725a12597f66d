//! Metrics of the disk cache's health: whether it can write, and how often
//! it could not. Refreshed from the store at each scrape
//! ([`crate::handlers::App::refresh_metrics`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use regcache_store::{CacheState, DiskStats, FillStats, WriteErrorKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteErrorLabel {
    /// `no_space` (ENOSPC, EDQUOT), `read_only` (EROFS) or `io`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `ok`, `degraded` or `read_only`.
    pub state: &'static str,
}

/// `regcache_cache_write_errors_total{kind}`, `regcache_cache_state{state}`
/// (1 for the current state, 0 for the others) and
/// `regcache_fills_passed_through_total`.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    write_errors: Family<WriteErrorLabel, Counter>,
    state: Family<StateLabel, Gauge>,
    passed_through: Counter,
}

impl CacheMetrics {
    pub fn register(registry: &mut Registry) -> CacheMetrics {
        let m = CacheMetrics::default();
        registry.register(
            "cache_write_errors",
            "Disk cache writes that failed, by kind (the content was served through without being cached)",
            m.write_errors.clone(),
        );
        registry.register(
            "cache_state",
            "Whether the disk cache can write: 1 for the current state (ok, degraded, read_only)",
            m.state.clone(),
        );
        registry.register(
            "fills_passed_through",
            "Blob fills served to their clients without being cached (disk full, read-only or failing, or larger than the budget)",
            m.passed_through.clone(),
        );
        m.refresh(
            &[
                (WriteErrorKind::NoSpace, 0),
                (WriteErrorKind::ReadOnly, 0),
                (WriteErrorKind::Io, 0),
            ],
            CacheState::Ok,
            0,
        );
        m
    }

    /// Copies the store's view (counters only move forward).
    pub fn update(&self, disk: &DiskStats, fills: &FillStats) {
        self.refresh(&disk.write_errors, disk.state, fills.passed_through);
    }

    fn refresh(&self, errors: &[(WriteErrorKind, u64)], state: CacheState, passed: u64) {
        for &(kind, n) in errors {
            let c = self.write_errors.get_or_create(&WriteErrorLabel {
                kind: kind.as_str(),
            });
            let have = c.get();
            if n > have {
                c.inc_by(n - have);
            }
        }
        for s in CacheState::ALL {
            self.state
                .get_or_create(&StateLabel { state: s.as_str() })
                .set(i64::from(s == state));
        }
        let have = self.passed_through.get();
        if passed > have {
            self.passed_through.inc_by(passed - have);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_one_hot_and_errors_follow_the_store() {
        let mut registry = Registry::with_prefix("regcache");
        let m = CacheMetrics::register(&mut registry);
        m.refresh(
            &[
                (WriteErrorKind::NoSpace, 3),
                (WriteErrorKind::ReadOnly, 0),
                (WriteErrorKind::Io, 1),
            ],
            CacheState::Degraded,
            2,
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "regcache_cache_write_errors_total{kind=\"no_space\"} 3",
            "regcache_cache_write_errors_total{kind=\"io\"} 1",
            "regcache_cache_state{state=\"degraded\"} 1",
            "regcache_cache_state{state=\"ok\"} 0",
            "regcache_fills_passed_through_total 2",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
    }
}

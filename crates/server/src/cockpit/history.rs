//! The hit ratio over time: a ring of cumulative lookup totals sampled
//! every [`INTERVAL`] by a task of the server ([`super::spawn_sampler`]),
//! [`SAMPLES`] of them (30 minutes). Each point of the sparkline is the hit
//! ratio of the lookups between two samples; an interval without lookups
//! has no ratio (a gap, not a zero).

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: 30 minutes at 10 s.
pub const SAMPLES: usize = 180;

/// Cumulative lookup totals at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: u64,
    pub hits: u64,
    pub misses: u64,
}

/// One interval of the sparkline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Unix time of the interval's end, seconds.
    pub t: u64,
    pub hits: u64,
    pub misses: u64,
    /// `hits / (hits + misses)`; `None` when there were no lookups.
    pub ratio: Option<f64>,
}

/// A bounded ring of samples. The lock is taken by the sampler every 10 s
/// and by the admin page, never by requests.
#[derive(Debug)]
pub struct History {
    ring: Mutex<VecDeque<Sample>>,
    cap: usize,
}

impl Default for History {
    fn default() -> Self {
        History::new(SAMPLES)
    }
}

impl History {
    pub fn new(cap: usize) -> History {
        History {
            ring: Mutex::new(VecDeque::with_capacity(cap + 1)),
            cap: cap.max(1),
        }
    }

    pub fn push(&self, s: Sample) {
        let mut ring = self.ring.lock();
        ring.push_back(s);
        while ring.len() > self.cap {
            ring.pop_front();
        }
    }

    /// The intervals between consecutive samples, oldest first, with `now`
    /// (the totals at this moment) closing the last one.
    pub fn points(&self, now: Sample) -> Vec<Point> {
        let ring = self.ring.lock();
        let mut out = Vec::with_capacity(ring.len());
        let mut prev: Option<Sample> = None;
        for s in ring.iter().copied().chain(std::iter::once(now)) {
            if let Some(p) = prev {
                // Counters only grow; saturate anyway.
                let hits = s.hits.saturating_sub(p.hits);
                let misses = s.misses.saturating_sub(p.misses);
                let total = hits + misses;
                out.push(Point {
                    t: s.t,
                    hits,
                    misses,
                    ratio: (total > 0).then(|| hits as f64 / total as f64),
                });
            }
            prev = Some(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: u64, hits: u64, misses: u64) -> Sample {
        Sample { t, hits, misses }
    }

    #[test]
    fn points_are_the_ratio_of_each_interval() {
        let h = History::new(10);
        h.push(s(0, 0, 0));
        h.push(s(10, 3, 1));
        h.push(s(20, 3, 1));
        let p = h.points(s(25, 5, 3));
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].ratio, Some(0.75));
        assert_eq!(p[1].ratio, None, "no lookups: no ratio");
        assert_eq!(
            (p[2].t, p[2].hits, p[2].misses, p[2].ratio),
            (25, 2, 2, Some(0.5))
        );
    }

    #[test]
    fn the_ring_keeps_the_last_samples() {
        let h = History::new(3);
        for i in 0..10 {
            h.push(s(i * 10, i, 0));
        }
        let p = h.points(s(100, 10, 0));
        assert_eq!(p.iter().map(|p| p.t).collect::<Vec<_>>(), [80, 90, 100]);
        assert!(History::new(3).points(s(1, 1, 1)).is_empty());
    }
}

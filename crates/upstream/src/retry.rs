//! Retry bookkeeping for one request: attempt count, time budget, backoff
//! with jitter and `Retry-After`. The policy itself is documented on
//! [`RetryConfig`].

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::config::RetryConfig;

/// Statuses worth another try: the server may answer differently soon.
/// `501`/`505`… are permanent and not retried.
pub(crate) fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// What a response's `Retry-After` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryAfter {
    /// No header (use the computed backoff).
    Absent,
    /// Delta-seconds.
    After(Duration),
    /// Present but not delta-seconds (an HTTP date): not honoured, and
    /// treated as "too long" so the error is relayed instead.
    Unusable,
}

pub(crate) fn parse_retry_after(headers: &HeaderMap) -> RetryAfter {
    match headers.get(http::header::RETRY_AFTER) {
        None => RetryAfter::Absent,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(secs) => RetryAfter::After(Duration::from_secs(secs)),
            None => RetryAfter::Unusable,
        },
    }
}

/// State of one request's retries.
#[derive(Debug)]
pub(crate) struct RetryState<'a> {
    config: &'a RetryConfig,
    started: Instant,
    /// Attempts made so far.
    attempts: u32,
}

impl<'a> RetryState<'a> {
    pub fn new(config: &'a RetryConfig) -> Self {
        RetryState {
            config,
            started: Instant::now(),
            attempts: 0,
        }
    }

    /// Call before each attempt; returns its 1-based number.
    pub fn begin_attempt(&mut self) -> u32 {
        self.attempts += 1;
        self.attempts
    }

    /// The delay before the next attempt, or `None` to give up.
    pub fn next_delay(&self, retry_after: RetryAfter) -> Option<Duration> {
        if self.attempts >= self.config.max_attempts.max(1) {
            return None;
        }
        let delay = match retry_after {
            RetryAfter::Absent => self.backoff(self.attempts),
            RetryAfter::After(d) if d <= self.config.max_retry_after => d,
            RetryAfter::After(_) | RetryAfter::Unusable => return None,
        };
        (self.started.elapsed() + delay <= self.config.max_total).then_some(delay)
    }

    /// `base * 2^(n-1)` capped at `max_backoff`, then equal jitter.
    fn backoff(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(20);
        let full = self
            .config
            .base_backoff
            .saturating_mul(1 << exp)
            .min(self.config.max_backoff);
        let half = full / 2;
        half + half.mul_f64(jitter_unit())
    }
}

/// A uniform value in `[0, 1)`; std's randomly keyed hasher is a good
/// enough source for jitter and needs no extra dependency.
fn jitter_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let x = std::collections::hash_map::RandomState::new().hash_one(n);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RetryConfig {
        RetryConfig {
            max_attempts: 4,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            max_total: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_grows_capped_with_jitter() {
        let c = cfg();
        let mut s = RetryState::new(&c);
        let mut seen = Vec::new();
        for _ in 0..3 {
            s.begin_attempt();
            seen.push(s.next_delay(RetryAfter::Absent).unwrap());
        }
        s.begin_attempt();
        assert_eq!(s.next_delay(RetryAfter::Absent), None, "4 attempts max");
        let bounds = [(50, 100), (100, 200), (150, 300)];
        for (d, (lo, hi)) in seen.iter().zip(bounds) {
            assert!(
                *d >= Duration::from_millis(lo) && *d <= Duration::from_millis(hi),
                "{d:?} not in {lo}..={hi} ms"
            );
        }
    }

    #[test]
    fn retry_after_small_large_and_dates() {
        let c = cfg();
        let mut s = RetryState::new(&c);
        s.begin_attempt();
        let d = Duration::from_secs(2);
        assert_eq!(s.next_delay(RetryAfter::After(d)), Some(d));
        assert_eq!(
            s.next_delay(RetryAfter::After(Duration::from_secs(60))),
            None
        );
        assert_eq!(s.next_delay(RetryAfter::Unusable), None);
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h), RetryAfter::Absent);
        h.insert(http::header::RETRY_AFTER, " 3 ".parse().unwrap());
        assert_eq!(
            parse_retry_after(&h),
            RetryAfter::After(Duration::from_secs(3))
        );
        h.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h), RetryAfter::Unusable);
    }

    #[test]
    fn total_budget_stops_retries() {
        let c = RetryConfig {
            max_total: Duration::from_millis(1),
            ..cfg()
        };
        let mut s = RetryState::new(&c);
        s.begin_attempt();
        assert_eq!(
            s.next_delay(RetryAfter::After(Duration::from_secs(1))),
            None
        );
        assert!(retryable_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(!retryable_status(StatusCode::NOT_IMPLEMENTED));
        assert!(!retryable_status(StatusCode::NOT_FOUND));
    }
}

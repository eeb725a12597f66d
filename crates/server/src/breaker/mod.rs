//! A circuit breaker per upstream: when the upstream is known down, requests
//! are not sent to it at all. Stale tags inside `stale_if_error_secs` are
//! then answered at once from the cache (stale-if-error on an
//! [`UpstreamError::Down`] costs no retries), and cold requests fail at once
//! with `503 UNAVAILABLE` and `Retry-After`.
//!
//! * `breaker_failures` consecutive failed upstream calls (no connection, a
//!   timeout, a `5xx`; each call has already been retried per
//!   `retry_attempts`) open it. A `429`, a `404`, a `401` are answers.
//! * While open, a background probe (`GET /v2/` as regcache's own identity,
//!   one attempt) runs every `breaker_probe_secs`; when it is answered the
//!   breaker is half-open and lets one request through as a trial: its
//!   answer closes the breaker, its failure opens it again (so does a probe
//!   that fails). A second answered probe also closes it.
//! * The breaker belongs to the upstream: every identity acting on it
//!   (`[auth] mode = "upstream"`) shares it ([`Guarded::identity`]).
//!
//! Each transition is logged once (`warn` when it opens, `info` otherwise);
//! the state is the `regcache_upstream_state{upstream,state}` gauge and is
//! listed in `/readyz`'s body. The machine itself is pure ([`state`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use regcache_upstream::{UpstreamApi, UpstreamError};
use tokio::time::Instant;

mod guarded;
pub mod state;

pub use guarded::Guarded;
pub use state::{Outcome, State};

use state::{Machine, Ticket, Transition};

/// One upstream's breaker. Shared (`Arc`) by every client of the upstream.
pub struct Breaker {
    upstream: String,
    probe_every: Duration,
    /// What the probe pings: the upstream as regcache itself, one attempt.
    probe: Arc<dyn UpstreamApi>,
    inner: Mutex<Inner>,
    /// Requests answered without contacting the upstream.
    short_circuits: AtomicU64,
}

struct Inner {
    machine: Machine,
    /// When the current state began.
    since: Instant,
    /// The last failure, for messages (upstream errors carry no secrets).
    last_failure: String,
    /// A probe task is running.
    probing: bool,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("upstream", &self.upstream)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker for `upstream`; `threshold` 0 never opens.
    pub fn new(
        upstream: impl Into<String>,
        threshold: u32,
        probe_every: Duration,
        probe: Arc<dyn UpstreamApi>,
    ) -> Arc<Breaker> {
        Arc::new(Breaker {
            upstream: upstream.into(),
            probe_every: probe_every.max(Duration::from_millis(10)),
            probe,
            inner: Mutex::new(Inner {
                machine: Machine::new(threshold),
                since: Instant::now(),
                last_failure: String::new(),
                probing: false,
            }),
            short_circuits: AtomicU64::new(0),
        })
    }

    pub fn state(&self) -> State {
        self.inner.lock().machine.state()
    }

    /// Requests refused so far without contacting the upstream.
    pub fn short_circuits(&self) -> u64 {
        self.short_circuits.load(Ordering::Relaxed)
    }

    /// The state, how long it has held, and the last failure's cause
    /// (empty before any; upstream errors carry no secrets), for the admin page.
    pub fn status(&self) -> (State, Duration, String) {
        let i = self.inner.lock();
        (i.machine.state(), i.since.elapsed(), i.last_failure.clone())
    }

    /// One line for `/readyz`: the state, and for how long when not closed.
    pub fn report(&self) -> String {
        let i = self.inner.lock();
        match i.machine.state() {
            State::Closed => format!("upstream {}: closed\n", self.upstream),
            s => format!(
                "upstream {}: {s} for {}s (last failure: {}); serving from the cache\n",
                self.upstream,
                i.since.elapsed().as_secs(),
                i.last_failure
            ),
        }
    }

    /// A permit to send one request, or the [`UpstreamError::Down`] to answer
    /// instead.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, UpstreamError> {
        let mut i = self.inner.lock();
        match i.machine.admit() {
            Some(ticket) => Ok(Permit {
                breaker: self.clone(),
                ticket,
                done: false,
            }),
            None => {
                drop(i);
                self.short_circuits.fetch_add(1, Ordering::Relaxed);
                Err(self.down())
            }
        }
    }

    fn down(&self) -> UpstreamError {
        let i = self.inner.lock();
        let reason = match i.machine.state() {
            State::HalfOpen => format!(
                "it failed {}s ago, and one trial request is checking it now",
                i.since.elapsed().as_secs()
            ),
            _ => format!(
                "unreachable for {}s; last failure: {}",
                i.since.elapsed().as_secs(),
                i.last_failure
            ),
        };
        UpstreamError::Down {
            upstream: self.upstream.clone(),
            reason,
            retry_after_secs: self.probe_every.as_secs().max(1),
        }
    }

    fn record(self: &Arc<Self>, ticket: Ticket, outcome: Outcome, failure: Option<String>) {
        let mut i = self.inner.lock();
        if let Some(f) = failure {
            i.last_failure = f;
        }
        let t = i.machine.record(ticket, outcome);
        self.after(i, t);
    }

    /// Log a transition, and start the probe when the breaker opened.
    fn after(self: &Arc<Self>, mut i: parking_lot::MutexGuard<'_, Inner>, t: Option<Transition>) {
        let Some((from, to)) = t else { return };
        let was = i.since.elapsed();
        i.since = Instant::now();
        let start_probe = to == State::Open && !i.probing;
        if start_probe {
            i.probing = true;
        }
        let failures = i.machine.failures();
        let last = i.last_failure.clone();
        drop(i);
        let up = &self.upstream;
        match to {
            State::Open => tracing::warn!(
                upstream = %up, from = %from, to = %to, consecutive_failures = failures, last_failure = %last,
                probe_every_secs = self.probe_every.as_secs(),
                "upstream circuit breaker open: requests to it are answered from the cache or refused with 503 until it answers again"
            ),
            State::HalfOpen => tracing::info!(
                upstream = %up, from = %from, to = %to, open_secs = was.as_secs(),
                "upstream answered the probe: letting one trial request through"
            ),
            State::Closed => tracing::info!(
                upstream = %up, from = %from, to = %to, down_secs = was.as_secs(),
                "upstream circuit breaker closed: the upstream answers again"
            ),
        }
        if start_probe {
            let me = self.clone();
            tokio::spawn(async move { me.probe_loop().await });
        }
    }

    /// Ping every `probe_every` until the breaker is closed.
    async fn probe_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.probe_every).await;
            if self.stop_probing_if_closed() {
                return;
            }
            let result = self.probe.ping().await;
            let (outcome, failure) = judge(&result);
            let answered = outcome == Outcome::Answered;
            tracing::debug!(upstream = %self.upstream, answered, "breaker probe");
            let mut i = self.inner.lock();
            if let Some(f) = failure {
                i.last_failure = f;
            }
            let t = i.machine.probe(answered);
            self.after(i, t);
            if self.stop_probing_if_closed() {
                return;
            }
        }
    }

    fn stop_probing_if_closed(&self) -> bool {
        let mut i = self.inner.lock();
        if i.machine.state() == State::Closed {
            i.probing = false;
            return true;
        }
        false
    }
}

/// What a finished call says about the upstream, and the failure's text.
pub fn judge<T>(result: &Result<T, UpstreamError>) -> (Outcome, Option<String>) {
    match result {
        Ok(_) => (Outcome::Answered, None),
        Err(e) => judge_error(e),
    }
}

/// See [`judge`]: no connection, a timeout or a `5xx` are failures; any
/// other answer from the registry (or its token service) is an answer; a
/// request that never left, or whose forwarded body broke, says nothing.
pub fn judge_error(e: &UpstreamError) -> (Outcome, Option<String>) {
    match e {
        UpstreamError::Transport { .. } | UpstreamError::Timeout { .. } => {
            (Outcome::Failed, Some(crate::error::chain(e)))
        }
        UpstreamError::Registry { status, .. } if *status >= 500 => {
            (Outcome::Failed, Some(e.to_string()))
        }
        UpstreamError::Registry { .. }
        | UpstreamError::Unauthorized { .. }
        | UpstreamError::Redirect { .. }
        | UpstreamError::Protocol { .. } => (Outcome::Answered, None),
        _ => (Outcome::Neutral, None),
    }
}

/// Leave to send one request; tell it how the request went with
/// [`Permit::finish`]. Dropped unfinished (the call was abandoned), it
/// counts as neutral.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    ticket: Ticket,
    done: bool,
}

impl Permit {
    pub fn finish(mut self, outcome: Outcome, failure: Option<String>) {
        self.done = true;
        self.breaker.record(self.ticket, outcome, failure);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.ticket, Outcome::Neutral, None);
        }
    }
}

#[cfg(test)]
mod tests;

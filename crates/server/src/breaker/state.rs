//! The circuit breaker's state machine, pure: no clock, no I/O, no logging.
//! [`super::Breaker`] wraps it in a lock, logs its transitions and runs the
//! probe.
//!
//! ```text
//!            N consecutive failures            probe answered
//!   Closed ───────────────────────────▶ Open ─────────────────▶ HalfOpen
//!     ▲                                  ▲                         │
//!     │      trial or probe answered     │  trial or probe failed  │
//!     └──────────────────────────────────┼─────────────────────────┘
//!                                        └─────────────────────────┘
//! ```
//!
//! Closed admits every request; Open admits none; HalfOpen admits one trial
//! request at a time (`/v2/` answering does not prove manifests and blobs
//! do). Outcomes of requests admitted before the last transition (another
//! epoch) are ignored: a request that was slow to fail says nothing new.

use std::fmt;

/// Where the breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub const ALL: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

    /// The metric label (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a finished upstream call says about the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (any status but a 5xx): it is up.
    Answered,
    /// No answer, a timeout or a 5xx.
    Failed,
    /// Nothing either way (the call was abandoned, the request was refused
    /// before it left, the body we forwarded broke).
    Neutral,
}

/// A request let through: which epoch it belongs to, and whether it is the
/// half-open trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub epoch: u64,
    pub trial: bool,
}

/// A change of state (from, to).
pub type Transition = (State, State);

/// The state machine of one upstream's breaker.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Consecutive failures that open the breaker; 0 turns it off.
    threshold: u32,
    state: State,
    /// Consecutive failures seen while closed.
    failures: u32,
    /// Bumped on every transition.
    epoch: u64,
    /// A half-open trial request is in flight.
    trial: bool,
}

impl Machine {
    pub fn new(threshold: u32) -> Machine {
        Machine {
            threshold,
            state: State::Closed,
            failures: 0,
            epoch: 0,
            trial: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Consecutive failures counted so far (while closed).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A ticket for a request, or `None`: do not send it.
    pub fn admit(&mut self) -> Option<Ticket> {
        let ticket = |trial| Ticket {
            epoch: self.epoch,
            trial,
        };
        match self.state {
            State::Closed => Some(ticket(false)),
            State::Open => None,
            State::HalfOpen if self.trial => None,
            State::HalfOpen => {
                self.trial = true;
                Some(ticket(true))
            }
        }
    }

    /// Record how an admitted request went.
    pub fn record(&mut self, ticket: Ticket, outcome: Outcome) -> Option<Transition> {
        if ticket.epoch != self.epoch {
            return None;
        }
        match (self.state, outcome) {
            (State::Closed, Outcome::Answered) => {
                self.failures = 0;
                None
            }
            (State::Closed, Outcome::Failed) => {
                self.failures = self.failures.saturating_add(1);
                (self.threshold > 0 && self.failures >= self.threshold)
                    .then(|| self.go(State::Open))
            }
            (State::HalfOpen, _) if ticket.trial => match outcome {
                Outcome::Answered => Some(self.go(State::Closed)),
                Outcome::Failed => Some(self.go(State::Open)),
                Outcome::Neutral => {
                    self.trial = false;
                    None
                }
            },
            _ => None,
        }
    }

    /// Record a background probe's result (ignored while closed).
    pub fn probe(&mut self, answered: bool) -> Option<Transition> {
        match (self.state, answered) {
            (State::Closed, _) => None,
            (State::Open, true) => Some(self.go(State::HalfOpen)),
            (State::Open, false) => None,
            // No trial came (or it is slow) and `/v2/` answered twice: closed.
            (State::HalfOpen, true) => Some(self.go(State::Closed)),
            (State::HalfOpen, false) => Some(self.go(State::Open)),
        }
    }

    fn go(&mut self, to: State) -> Transition {
        let from = self.state;
        self.state = to;
        self.epoch += 1;
        self.trial = false;
        if to == State::Closed {
            self.failures = 0;
        }
        (from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome::{Answered, Failed, Neutral};
    use super::State::{Closed, HalfOpen, Open};
    use super::*;

    /// One step of a table: a request with an outcome, a request refused, or
    /// a probe; and the state after it.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Call(Outcome),
        Refused,
        Probe(bool),
    }
    use Step::{Call, Probe, Refused};

    fn run(threshold: u32, steps: &[(Step, State)]) {
        let mut m = Machine::new(threshold);
        for (i, (step, want)) in steps.iter().enumerate() {
            match step {
                Call(outcome) => {
                    let t = m
                        .admit()
                        .unwrap_or_else(|| panic!("step {i}: {step:?} refused in {m:?}"));
                    m.record(t, *outcome);
                }
                Refused => assert!(m.admit().is_none(), "step {i}: admitted in {m:?}"),
                Probe(ok) => {
                    m.probe(*ok);
                }
            }
            assert_eq!(m.state(), *want, "after step {i} ({step:?}): {m:?}");
        }
    }

    #[test]
    fn consecutive_failures_open_and_an_answer_resets_the_count() {
        run(
            3,
            &[
                (Call(Failed), Closed),
                (Call(Failed), Closed),
                (Call(Answered), Closed),
                (Call(Failed), Closed),
                (Call(Neutral), Closed),
                (Call(Failed), Closed),
                (Call(Failed), Open),
                (Refused, Open),
                (Probe(false), Open),
                (Refused, Open),
                (Probe(true), HalfOpen),
                (Call(Answered), Closed),
                // The count starts over after closing.
                (Call(Failed), Closed),
                (Call(Failed), Closed),
                (Call(Failed), Open),
            ],
        );
    }

    #[test]
    fn half_open_trial_failing_reopens_and_neutral_frees_the_slot() {
        run(
            1,
            &[
                (Call(Failed), Open),
                (Probe(true), HalfOpen),
                (Call(Neutral), HalfOpen),
                (Call(Failed), Open),
                (Probe(true), HalfOpen),
                (Probe(false), Open),
                (Probe(true), HalfOpen),
                (Probe(true), Closed),
            ],
        );
    }

    #[test]
    fn one_trial_at_a_time_and_late_outcomes_are_ignored() {
        let mut m = Machine::new(2);
        let slow = m.admit().unwrap();
        let t1 = m.admit().unwrap();
        let t2 = m.admit().unwrap();
        assert_eq!(m.record(t1, Failed), None);
        assert_eq!(m.record(t2, Failed), Some((Closed, Open)));
        // A request admitted while closed answers late: no effect while open.
        assert_eq!(m.record(slow, Answered), None);
        assert_eq!(m.state(), Open);
        assert_eq!(m.probe(true), Some((Open, HalfOpen)));
        let trial = m.admit().unwrap();
        assert!(trial.trial);
        assert!(m.admit().is_none(), "a second request while the trial runs");
        assert_eq!(m.record(slow, Failed), None, "an old epoch's failure");
        assert_eq!(m.record(trial, Answered), Some((HalfOpen, Closed)));
        assert_eq!(m.failures(), 0);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let mut m = Machine::new(0);
        for _ in 0..1000 {
            let t = m.admit().unwrap();
            assert_eq!(m.record(t, Failed), None);
        }
        assert_eq!(m.state(), Closed);
        assert_eq!(m.probe(true), None);
    }
}

//! Call counters and gates shared by the mocks.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};

use super::Op;

/// Calls per [`Op`] and the gates currently holding ops.
#[derive(Debug, Default)]
pub(crate) struct Control {
    calls: Mutex<HashMap<Op, u64>>,
    gates: Mutex<HashMap<Op, Arc<GateState>>>,
}

impl Control {
    /// Count a call of `op`, then wait at its gate if one holds it. The
    /// call is counted before it waits.
    pub async fn enter(&self, op: Op) {
        *self.calls.lock().entry(op).or_insert(0) += 1;
        let gate = self.gates.lock().get(&op).cloned();
        if let Some(gate) = gate {
            gate.pass().await;
        }
    }

    pub fn calls(&self, op: Op) -> u64 {
        self.calls.lock().get(&op).copied().unwrap_or(0)
    }

    pub fn hold(&self, op: Op) -> Gate {
        let state = Arc::new(GateState {
            permits: Semaphore::new(0),
            waiting: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        self.gates.lock().insert(op, state.clone());
        Gate { op, state }
    }
}

#[derive(Debug)]
struct GateState {
    /// One permit per call let through; closed once released.
    permits: Semaphore,
    waiting: AtomicUsize,
    /// Woken whenever `waiting` changes.
    changed: Notify,
}

impl GateState {
    async fn pass(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        // Count down even if the call is dropped while it waits.
        let _leave = Leave(self);
        match self.permits.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_closed) => {} // released: everyone passes
        }
    }
}

struct Leave<'a>(&'a GateState);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// Holds every call of one [`Op`] until released: calls are counted, then
/// wait. Returned by `hold` on the mocks. Dropping the gate releases it, so
/// keep it in a variable (`let gate = reg.hold(Op::HeadManifest);`).
/// Holding an op again replaces the gate for calls that start afterwards.
#[derive(Debug)]
#[must_use = "a dropped Gate releases its calls at once"]
pub struct Gate {
    op: Op,
    state: Arc<GateState>,
}

impl Gate {
    /// The op this gate holds.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Calls waiting at the gate now.
    pub fn waiting(&self) -> usize {
        self.state.waiting.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` calls wait at the gate.
    pub async fn until_waiting(&self, n: usize) {
        loop {
            let mut changed = pin!(self.state.changed.notified());
            changed.as_mut().enable();
            if self.waiting() >= n {
                return;
            }
            changed.await;
        }
    }

    /// Let `n` calls through (waiting ones first, then later ones); the
    /// gate stays shut after them.
    pub fn let_through(&self, n: usize) {
        self.state.permits.add_permits(n);
    }

    /// Open the gate for good: every waiting and later call passes.
    pub fn release(self) {
        // Drop does it.
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.state.permits.close();
    }
}

//! The operator's cockpit (issue 14): the admin page at `GET /` (and
//! `/ui`) on the admin listener, its JSON twin `GET /api/stats`, and what
//! they read that `/metrics` does not already count.
//!
//! * [`top`]: requests and bytes per repository and per blob, in bounded
//!   sharded tables the request path bumps with atomics ([`Cockpit::tally`]).
//! * [`history`]: the hit ratio over the last 30 minutes, sampled every
//!   10 s by a task of the server ([`spawn_sampler`]).
//! * [`errors`]: the last 50 error responses `rescue` made.
//! * [`setup`]: the configuration as shown (no secrets).
//! * [`stats`]: all of it, with the metrics' own counters and the store's
//!   sizes and fills in progress, as one [`stats::Stats`].
//! * [`page`]: the HTML (server-rendered, everything embedded, every
//!   string escaped by [`escape`]).
//!
//! `regcache stats` (`crate::stats_cli`) reads `/api/stats`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::routes::Route;

pub mod errors;
pub mod escape;
pub mod format;
pub mod history;
pub mod page;
pub mod setup;
pub mod stats;
pub mod top;

#[cfg(test)]
mod tests;

/// The cockpit's state, one per [`crate::handlers::App`].
#[derive(Debug)]
pub struct Cockpit {
    pub started: Instant,
    pub history: history::History,
    pub repositories: top::Table,
    pub blobs: top::Table,
    setup: OnceLock<setup::Setup>,
}

impl Default for Cockpit {
    fn default() -> Self {
        Cockpit {
            started: Instant::now(),
            history: history::History::default(),
            repositories: top::Table::new(top::DEFAULT_CAP),
            blobs: top::Table::new(top::DEFAULT_CAP),
            setup: OnceLock::new(),
        }
    }
}

/// One request's counters in the top tables; [`Tally::bytes`] adds its
/// body bytes once the response is known.
#[derive(Debug, Default)]
pub struct Tally {
    repository: Option<Arc<top::Counts>>,
    blob: Option<Arc<top::Counts>>,
}

impl Tally {
    pub fn bytes(&self, n: u64) {
        if let Some(r) = &self.repository {
            r.add_bytes(n);
        }
        if let Some(b) = &self.blob {
            b.add_bytes(n);
        }
    }
}

impl Cockpit {
    /// Counts a request for `route` (its repository, and its blob).
    pub fn tally(&self, route: &Route) -> Tally {
        let Some(name) = route.name() else {
            return Tally::default();
        };
        let blob = match route {
            Route::Blob { digest, .. } => self.blobs.request(digest.as_str(), Some(name.as_str())),
            _ => None,
        };
        Tally {
            repository: self.repositories.request(name.as_str(), None),
            blob,
        }
    }

    /// The configuration shown, set once at start-up.
    pub fn set_setup(&self, s: setup::Setup) {
        let _ = self.setup.set(s);
    }

    pub fn setup(&self) -> Option<&setup::Setup> {
        self.setup.get()
    }
}

/// Samples the lookup totals into the hit-ratio history every
/// [`history::INTERVAL`] until the task is aborted (or the app dropped).
pub fn spawn_sampler(app: &Arc<crate::handlers::App>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(history::INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(app) = weak.upgrade() else { return };
            app.cockpit.history.push(stats::sample(&app.metrics));
        }
    })
}

//! One in-flight computation per key, shared by every caller that asks while it runs.
//!
//! The work runs as its own task, so a caller that goes away (a client
//! disconnect) neither cancels it nor makes the next caller start over; the
//! opposite of running it inside a request future (moka's `try_get_with`
//! restarts `init` when the enclosing future is dropped).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use tracing::Instrument;

use crate::error::Error;

type Flight<V> = Shared<BoxFuture<'static, Result<V, Error>>>;

pub struct Coalesce<K, V: Clone> {
    inflight: Mutex<HashMap<K, Flight<V>>>,
}

impl<K, V> Coalesce<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Coalesce {
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Join the flight for `key`, or start one with `make()`.
    pub async fn run<F>(&self, key: K, make: impl FnOnce() -> F) -> Result<V, Error>
    where
        F: Future<Output = Result<V, Error>> + Send + 'static,
    {
        let flight = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some(f) => f.clone(),
                None => {
                    // The leader's span goes with the work: its log lines are found.
                    let handle = tokio::spawn(make().in_current_span());
                    let f: Flight<V> = async move {
                        handle
                            .await
                            .unwrap_or_else(|e| Err(Error::internal("a coalesced task failed", e)))
                    }
                    .boxed()
                    .shared();
                    map.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        let out = flight.clone().await;
        let mut map = self.inflight.lock();
        if map.get(&key).is_some_and(|f| f.ptr_eq(&flight)) {
            map.remove(&key);
        }
        out
    }
}

impl<K, V> Default for Coalesce<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V: Clone> std::fmt::Debug for Coalesce<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coalesce")
    }
}

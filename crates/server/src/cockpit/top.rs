//! Top repositories and blobs by requests and bytes: a bounded table of
//! counters that the request path bumps without a global lock.
//!
//! Each table is a sharded concurrent map ([`dashmap`]) from a name to a
//! pair of atomics. A request looks its name up under one shard's read
//! lock, without allocating, and adds with relaxed atomics; only the first
//! request for a name takes a shard's write lock to insert it. The table
//! holds at most `cap` names (the first ones seen); requests for names
//! past that are counted in `untracked`, so a client inventing names can't
//! grow it. The top N are computed on demand, when the admin page asks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// How many repositories and blobs the tables track (each).
pub const DEFAULT_CAP: usize = 4096;

/// One name's counts.
#[derive(Debug, Default)]
pub struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
    /// For blobs: the repository of the first request (a blob is shared by
    /// digest across repositories).
    repository: Option<Box<str>>,
}

impl Counts {
    /// Body bytes sent for one of its requests.
    pub fn add_bytes(&self, n: u64) {
        if n > 0 {
            self.bytes.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// One row of a top list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    /// For blobs, the repository it was first requested from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    pub requests: u64,
    pub bytes: u64,
}

/// A bounded table of per-name counters.
#[derive(Debug)]
pub struct Table {
    map: DashMap<Box<str>, Arc<Counts>>,
    cap: usize,
    untracked: AtomicU64,
}

impl Table {
    pub fn new(cap: usize) -> Table {
        Table {
            map: DashMap::new(),
            cap,
            untracked: AtomicU64::new(0),
        }
    }

    /// Counts one request for `name` and returns its counters (for the
    /// bytes once the response is known), or `None` past the cap.
    pub fn request(&self, name: &str, repository: Option<&str>) -> Option<Arc<Counts>> {
        if let Some(c) = self.map.get(name) {
            c.requests.fetch_add(1, Ordering::Relaxed);
            return Some(c.clone());
        }
        if self.map.len() >= self.cap {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let c = self
            .map
            .entry(name.into())
            .or_insert_with(|| {
                Arc::new(Counts {
                    repository: repository.map(Into::into),
                    ..Counts::default()
                })
            })
            .clone();
        c.requests.fetch_add(1, Ordering::Relaxed);
        Some(c)
    }

    /// Names tracked now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Requests for names past the cap.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// The `n` rows with the most requests (ties: more bytes, then name).
    pub fn top_by_requests(&self, n: usize) -> Vec<Row> {
        self.top(n, |r| (r.requests, r.bytes))
    }

    /// The `n` rows with the most bytes (ties: more requests, then name).
    pub fn top_by_bytes(&self, n: usize) -> Vec<Row> {
        self.top(n, |r| (r.bytes, r.requests))
    }

    fn top(&self, n: usize, key: impl Fn(&Row) -> (u64, u64)) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .map
            .iter()
            .map(|e| Row {
                name: e.key().to_string(),
                repository: e.value().repository.as_deref().map(str::to_owned),
                requests: e.value().requests.load(Ordering::Relaxed),
                bytes: e.value().bytes.load(Ordering::Relaxed),
            })
            .collect();
        rows.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.name.cmp(&b.name)));
        rows.truncate(n);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_and_bytes_and_ranks_them() {
        let t = Table::new(10);
        for _ in 0..3 {
            t.request("a/one", None).unwrap().add_bytes(10);
        }
        t.request("b/two", None).unwrap().add_bytes(1000);
        t.request("c/three", None);
        let by_req = t.top_by_requests(2);
        assert_eq!(
            by_req.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a/one", "b/two"]
        );
        assert_eq!((by_req[0].requests, by_req[0].bytes), (3, 30));
        let by_bytes = t.top_by_bytes(3);
        assert_eq!(
            by_bytes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["b/two", "a/one", "c/three"]
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn the_table_is_bounded_and_counts_the_rest_as_untracked() {
        let t = Table::new(2);
        assert!(t.request("x", None).is_some());
        assert!(t.request("y", None).is_some());
        assert!(t.request("z", None).is_none());
        assert!(t.request("zz", None).is_none());
        // Names already tracked keep counting.
        assert!(t.request("x", None).is_some());
        assert_eq!((t.len(), t.untracked()), (2, 2));
    }

    #[test]
    fn a_blob_keeps_the_repository_of_its_first_request() {
        let t = Table::new(4);
        t.request("sha256:aa", Some("first/repo"));
        t.request("sha256:aa", Some("second/repo"));
        let rows = t.top_by_requests(1);
        assert_eq!(rows[0].repository.as_deref(), Some("first/repo"));
        assert_eq!(rows[0].requests, 2);
    }

    #[test]
    fn concurrent_requests_are_all_counted() {
        let t = Arc::new(Table::new(100));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for j in 0..1000 {
                        let name = format!("repo/{}", (i + j) % 8);
                        if let Some(c) = t.request(&name, None) {
                            c.add_bytes(2);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let rows = t.top_by_requests(100);
        assert_eq!(rows.len(), 8);
        assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), 4000);
        assert_eq!(rows.iter().map(|r| r.bytes).sum::<u64>(), 8000);
    }
}

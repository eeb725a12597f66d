//! The last errors regcache answered with (4xx and 5xx made by
//! [`crate::rescue`]), for the admin page: a bounded ring of [`CAP`].
//!
//! Process-wide, because `rescue` is a free function called from layers
//! that hold no application state (the connection guard's rate limit, the
//! listener). Each record keeps what the client was told (status, code and
//! the message of the registry error, which `rescue` already keeps free of
//! paths, tokens and credentials), the route kind and the repository; never
//! request headers. Messages are cut to [`MESSAGE_MAX`] characters.

use std::collections::VecDeque;
use std::sync::LazyLock;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Errors kept.
pub const CAP: usize = 50;
/// Characters of a message kept.
pub const MESSAGE_MAX: usize = 300;

/// One error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// Unix time, seconds.
    pub t: u64,
    /// The route kind (`manifest`, `blob`, …), `-` when it was not routed.
    pub route: String,
    pub repository: Option<String>,
    pub status: u16,
    /// The registry error code (`MANIFEST_UNKNOWN`, …).
    pub code: String,
    /// `client`, `policy`, `upstream` or `regcache`.
    pub whose: String,
    pub message: String,
}

/// A bounded ring of error records, newest last.
#[derive(Debug)]
pub struct ErrorRing {
    ring: Mutex<VecDeque<ErrorRecord>>,
    cap: usize,
}

impl ErrorRing {
    pub fn new(cap: usize) -> ErrorRing {
        ErrorRing {
            ring: Mutex::new(VecDeque::with_capacity(cap)),
            cap: cap.max(1),
        }
    }

    pub fn push(&self, mut r: ErrorRecord) {
        if let Some((cut, _)) = r.message.char_indices().nth(MESSAGE_MAX) {
            r.message.truncate(cut);
            r.message.push('…');
        }
        let mut ring = self.ring.lock();
        if ring.len() >= self.cap {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<ErrorRecord> {
        self.ring.lock().iter().rev().cloned().collect()
    }
}

static RECENT: LazyLock<ErrorRing> = LazyLock::new(|| ErrorRing::new(CAP));

/// The process's ring.
pub fn recent() -> &'static ErrorRing {
    &RECENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(status: u16, message: &str) -> ErrorRecord {
        ErrorRecord {
            t: 1,
            route: "manifest".into(),
            repository: Some("a/b".into()),
            status,
            code: "MANIFEST_UNKNOWN".into(),
            whose: "client".into(),
            message: message.into(),
        }
    }

    #[test]
    fn keeps_the_newest_and_cuts_long_messages() {
        let ring = ErrorRing::new(3);
        for s in 400..410 {
            ring.push(rec(s, "m"));
        }
        let got = ring.recent();
        assert_eq!(
            got.iter().map(|r| r.status).collect::<Vec<_>>(),
            [409, 408, 407]
        );
        ring.push(rec(500, &"é".repeat(1000)));
        let long = &ring.recent()[0];
        assert_eq!(long.message.chars().count(), MESSAGE_MAX + 1);
        assert!(long.message.ends_with('…'));
    }
}

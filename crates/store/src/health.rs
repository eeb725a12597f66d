//! Whether the disk cache can write, told truthfully and once.
//!
//! A cache is an optimisation: when the disk is full, read-only or failing,
//! regcache keeps proxying (fills pass the bytes through without caching,
//! see `relay.rs`) and this records why. Every failed write is counted by
//! [`WriteErrorKind`]; the [`CacheState`] changes on the first failure and
//! goes back to `Ok` on the next successful write, so caching resumes by
//! itself once space is freed or the file system is remounted read-write
//! (every fill tries the disk again first). The log says so once per change
//! of state, never per request.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::stats::Counter;

/// Why a cache write failed, for `regcache_cache_write_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteErrorKind {
    /// `ENOSPC` or `EDQUOT`: the file system (or the quota) is full.
    NoSpace,
    /// `EROFS`: the data directory is on a read-only file system.
    ReadOnly,
    /// Any other I/O error (`EIO`, permissions …).
    Io,
}

impl WriteErrorKind {
    pub const ALL: [WriteErrorKind; 3] = [
        WriteErrorKind::NoSpace,
        WriteErrorKind::ReadOnly,
        WriteErrorKind::Io,
    ];

    pub fn of(error: &io::Error) -> WriteErrorKind {
        match error.raw_os_error() {
            Some(code)
                if code == rustix::io::Errno::NOSPC.raw_os_error()
                    || code == rustix::io::Errno::DQUOT.raw_os_error() =>
            {
                WriteErrorKind::NoSpace
            }
            Some(code) if code == rustix::io::Errno::ROFS.raw_os_error() => {
                WriteErrorKind::ReadOnly
            }
            _ => WriteErrorKind::Io,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WriteErrorKind::NoSpace => "no_space",
            WriteErrorKind::ReadOnly => "read_only",
            WriteErrorKind::Io => "io",
        }
    }
}

/// What the disk cache can do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheState {
    /// Writes succeed.
    Ok,
    /// The last write failed (full disk, I/O error): cold content is passed
    /// through without being cached; cached content is still served.
    Degraded,
    /// The data directory is read-only: nothing new can be cached.
    ReadOnly,
}

impl CacheState {
    pub const ALL: [CacheState; 3] = [CacheState::Ok, CacheState::Degraded, CacheState::ReadOnly];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheState::Ok => "ok",
            CacheState::Degraded => "degraded",
            CacheState::ReadOnly => "read_only",
        }
    }

    fn from_u8(v: u8) -> CacheState {
        match v {
            1 => CacheState::Degraded,
            2 => CacheState::ReadOnly,
            _ => CacheState::Ok,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            CacheState::Ok => 0,
            CacheState::Degraded => 1,
            CacheState::ReadOnly => 2,
        }
    }
}

/// The disk tier's write health: counters by kind and the current state.
#[derive(Debug, Default)]
pub struct CacheHealth {
    state: AtomicU8,
    no_space: Counter,
    read_only: Counter,
    io: Counter,
}

impl CacheHealth {
    /// Counts a failed write (`what` names the step, for the one log line a
    /// change of state gets) and returns its kind.
    pub fn write_failed(&self, what: &str, error: &io::Error) -> WriteErrorKind {
        let kind = WriteErrorKind::of(error);
        match kind {
            WriteErrorKind::NoSpace => self.no_space.inc(),
            WriteErrorKind::ReadOnly => self.read_only.inc(),
            WriteErrorKind::Io => self.io.inc(),
        }
        let state = match kind {
            WriteErrorKind::ReadOnly => CacheState::ReadOnly,
            _ => CacheState::Degraded,
        };
        let before = CacheState::from_u8(self.state.swap(state.to_u8(), Ordering::Relaxed));
        if before != state {
            tracing::warn!(
                state = state.as_str(),
                kind = kind.as_str(),
                %error,
                step = what,
                "disk cache cannot write; content is served through from the upstream without being cached until a write succeeds again"
            );
        }
        kind
    }

    /// A write went through: the cache is healthy again.
    pub fn write_ok(&self) {
        let before =
            CacheState::from_u8(self.state.swap(CacheState::Ok.to_u8(), Ordering::Relaxed));
        if before != CacheState::Ok {
            tracing::warn!(
                was = before.as_str(),
                "disk cache writes succeed again; caching resumed"
            );
        }
    }

    pub fn state(&self) -> CacheState {
        CacheState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Failed writes of `kind` since start.
    pub fn errors(&self, kind: WriteErrorKind) -> u64 {
        match kind {
            WriteErrorKind::NoSpace => self.no_space.get(),
            WriteErrorKind::ReadOnly => self.read_only.get(),
            WriteErrorKind::Io => self.io.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_state_transitions() {
        let h = CacheHealth::default();
        assert_eq!(h.state(), CacheState::Ok);
        let enospc = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        let erofs = io::Error::from_raw_os_error(rustix::io::Errno::ROFS.raw_os_error());
        let eio = io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error());
        assert_eq!(h.write_failed("write", &enospc), WriteErrorKind::NoSpace);
        assert_eq!(h.state(), CacheState::Degraded);
        assert_eq!(h.write_failed("create", &erofs), WriteErrorKind::ReadOnly);
        assert_eq!(h.state(), CacheState::ReadOnly);
        assert_eq!(h.write_failed("write", &eio), WriteErrorKind::Io);
        assert_eq!(h.errors(WriteErrorKind::NoSpace), 1);
        assert_eq!(h.errors(WriteErrorKind::ReadOnly), 1);
        assert_eq!(h.errors(WriteErrorKind::Io), 1);
        h.write_ok();
        assert_eq!(h.state(), CacheState::Ok);
    }
}

//! Pass-through: a fill that can't be cached still reaches its clients.
//!
//! When the disk refuses a fill (full, read-only, failing) or the blob
//! doesn't fit the budget, the fill keeps going through an anonymous memory
//! file (`memfd_create(2)`) at the same offsets, so readers and `sendfile`
//! senders carry on unchanged; the content is verified at the end as always
//! and simply not cached. Memory stays bounded: every reader has a
//! [`Cursor`], the writer waits while it is more than [`WINDOW`] bytes ahead
//! of the slowest one, and the pages every reader has passed are punched out
//! of the memory file (`FALLOC_FL_PUNCH_HOLE`).
//!
//! A fill that passes through is released from the registry when it
//! switches: a client arriving later can't read its already-released start,
//! so it starts its own download.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// How far the writer of a pass-through fill may run ahead of its slowest
/// reader: the memory one such fill holds at most (plus one batch).
pub(crate) const WINDOW: u64 = 8 << 20;

const PAGE: u64 = 4096;

/// The pass-through side of one fill.
#[derive(Debug, Default)]
pub(crate) struct Relay {
    on: AtomicBool,
    cursors: Mutex<Vec<Weak<CursorAt>>>,
    moved: tokio::sync::Notify,
}

/// One reader's position in a fill; gone when the reader drops. One
/// pointer wide: it sits in every reader.
#[derive(Debug)]
pub(crate) struct Cursor(Arc<CursorAt>);

#[derive(Debug)]
pub(crate) struct CursorAt {
    pos: AtomicU64,
    relay: Weak<Relay>,
}

impl Relay {
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    pub(crate) fn switch_on(&self) {
        self.on.store(true, Ordering::Release);
    }

    /// Registers a reader at `pos`.
    pub(crate) fn cursor(self: &Arc<Self>, pos: u64) -> Cursor {
        let at = Arc::new(CursorAt {
            pos: AtomicU64::new(pos),
            relay: Arc::downgrade(self),
        });
        let mut cursors = self.cursors.lock();
        cursors.retain(|c| c.strong_count() > 0);
        cursors.push(Arc::downgrade(&at));
        Cursor(at)
    }

    /// The slowest live reader's position; `None` when every reader left.
    /// Readers following the fill now (one cursor each).
    pub(crate) fn readers(&self) -> usize {
        self.cursors
            .lock()
            .iter()
            .filter(|c| c.strong_count() > 0)
            .count()
    }

    pub(crate) fn min(&self) -> Option<u64> {
        let mut cursors = self.cursors.lock();
        cursors.retain(|c| c.strong_count() > 0);
        cursors
            .iter()
            .filter_map(|c| c.upgrade().map(|c| c.pos.load(Ordering::Acquire)))
            .min()
    }

    /// Waits until the slowest reader is within [`WINDOW`] of `written`
    /// (at once when no reader is left: like a fill on disk, the download
    /// goes on without them, and nothing is kept for them).
    pub(crate) async fn wait_for_readers(&self, written: u64) {
        loop {
            let notified = self.moved.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.min() {
                None => return,
                Some(min) if written.saturating_sub(min) <= WINDOW => return,
                Some(_) => notified.await,
            }
        }
    }

    fn moved(&self) {
        if self.is_on() {
            self.moved.notify_waiters();
        }
    }
}

impl Cursor {
    pub(crate) fn set(&self, pos: u64) {
        self.0.pos.store(pos, Ordering::Release);
        if let Some(relay) = self.0.relay.upgrade() {
            relay.moved();
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        // Make the writer look again: this reader no longer holds it back.
        self.0.pos.store(u64::MAX, Ordering::Release);
        if let Some(relay) = self.0.relay.upgrade() {
            relay.moved();
        }
    }
}

/// An anonymous file in memory, never on the data directory's file system.
pub(crate) fn memory_file() -> io::Result<File> {
    let fd = rustix::fs::memfd_create("regcache-pass-through", rustix::fs::MemfdFlags::CLOEXEC)?;
    Ok(File::from(fd))
}

/// Copies `start..end` of `from` to the same offsets of `to`. Blocking.
pub(crate) fn copy_range(from: &File, to: &File, start: u64, end: u64) -> io::Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(end.saturating_sub(start)) as usize];
    let mut pos = start;
    while pos < end {
        let n = ((end - pos) as usize).min(buf.len());
        from.read_exact_at(&mut buf[..n], pos)?;
        to.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Frees the memory of the whole pages in `from..to`. Returns the new
/// `from` (a page boundary). Best effort: a failure only costs memory.
pub(crate) fn punch(file: &File, from: u64, to: u64) -> u64 {
    let to = to / PAGE * PAGE;
    if to <= from {
        return from;
    }
    let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
    match rustix::fs::fallocate(file, flags, from, to - from) {
        Ok(()) => to,
        Err(error) => {
            tracing::debug!(%error, "releasing pass-through memory failed");
            from
        }
    }
}

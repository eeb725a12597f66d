//! One fill per digest, streamed to any number of readers.
//!
//! After pingora's cache lock and its `memory.rs` `watch` pattern (STYLE
//! habit 7). [`Fills::begin`] makes the first caller for a digest the
//! *leader*: it gets a [`FillWriter`], which writes a temp file in the disk
//! tier while hashing. Everyone else, and the leader's own client through
//! [`FillWriter::subscribe`], gets a [`FillReader`] that `pread`s the same
//! file up to the length the writer has published on a `tokio::sync::watch`
//! channel. Readers never buffer more than one chunk
//! ([`crate::StoreConfig::read_chunk_bytes`]), so memory stays flat however
//! many clients follow and however large the blob.
//!
//! # Outcomes
//!
//! * [`FillWriter::commit`] checks length and digest, `fsync`s, renames into
//!   the disk tier, then publishes `Done`: readers drain to the end and finish
//!   cleanly. The descriptor they read from survives the rename.
//! * Digest mismatch, truncation, [`FillWriter::abort`] or dropping the
//!   writer publishes a [`FillError`]: every reader's stream yields that error
//!   (never a clean end), nothing is cached, and the digest is released first
//!   so the next `begin` becomes a fresh leader.
//! * A fill the disk refuses (full, read-only, failing) or whose length does
//!   not fit the budget is not failed: it passes through a memory file to
//!   its readers, verified at the end all the same, and caches nothing
//!   (`relay.rs`).
//! * A reader never ends cleanly before the content is verified, even when it
//!   only wanted a range that is already written: a range served from a
//!   partial file must still be able to fail if the whole turns out bad.
//!
//! # Who drives the fill
//!
//! The server spawns the upstream download as its own task holding the
//! writer; request handlers only hold readers. A client that disconnects
//! drops its reader, which has no effect on the fill (STYLE habit 7: never run
//! a blob download inside a request future).
//!
//! # Waiting forever
//!
//! Readers wait for the writer's progress without a timeout; a stalled
//! upstream stalls its readers. The server should bound the download (and so
//! the writer) with its own timeout, after which dropping or aborting the
//! writer fails every reader.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use regcache_formats::Digest;
use tokio::sync::watch;

use crate::disk::{DiskTier, Installed, TempFile};
use crate::error::{FillError, StoreError};
use crate::hasher::ContentHasher;
use crate::health::WriteErrorKind;
use crate::memory::MemoryTier;
use crate::relay::{self, Cursor, Relay};
use crate::stats::{Counter, FillStats};
use crate::tier::Tier;

/// What the writer has published so far.
#[derive(Debug, Clone)]
enum Progress {
    /// This many bytes from offset 0 are in the file and may be read.
    Writing {
        written: u64,
        /// The total length once known: passed to `begin`, or announced later by
        /// [`FillWriter::set_len`] when the upstream's headers arrive.
        len: Option<u64>,
    },
    /// Verified and committed; the length is final.
    Done {
        len: u64,
    },
    Failed(FillError),
}

/// State shared by the writer, the registry and (through the channel and the
/// file) the readers of one fill.
struct FillShared {
    digest: Digest,
    /// Set at most once: at `begin`, or by [`FillWriter::set_len`].
    expected_len: std::sync::OnceLock<u64>,
    /// Where the content is: the temp file on disk, or, once the fill passes
    /// through without caching, a memory file (see `relay.rs`). Swapped
    /// before any progress past the swap is published, so a reader that
    /// reads the progress first and then the file always finds its bytes.
    file: Mutex<Arc<File>>,
    relay: Arc<Relay>,
    progress: watch::Sender<Progress>,
}

impl FillShared {
    fn file(&self) -> Arc<File> {
        self.file.lock().clone()
    }
}

/// The registry of fills in progress. Cheap to clone.
///
/// Concurrency: `begin` on the same digest from many tasks yields exactly one
/// leader while that leader's fill is open; the others follow it. Once the
/// fill commits, `begin` answers from the committed entry; once it fails, the
/// next `begin` leads a new fill.
#[derive(Clone)]
pub struct Fills {
    inner: Arc<FillsInner>,
}

struct FillsInner {
    disk: DiskTier,
    /// Small committed fills are copied here, and `begin` checks it first.
    memory: Option<MemoryTier>,
    active: Mutex<HashMap<Digest, Arc<FillShared>>>,
    read_chunk_bytes: usize,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    started: Counter,
    joined: Counter,
    already_cached: Counter,
    committed: Counter,
    failed: Counter,
    bytes_written: Counter,
    passed_through: Counter,
}

/// The answer to [`Fills::begin`].
#[derive(Debug)]
pub enum Begin {
    /// This caller must drive the fill: write every chunk, then `commit` (or
    /// `abort`). Call [`FillWriter::subscribe`] for the caller's own client.
    Leader(FillWriter),
    /// Someone else is filling, or the content is already cached (then the
    /// reader streams the committed entry). The server should still try
    /// [`crate::Store::get`] first for cached content: a `Source::File` can be
    /// sent with `sendfile`.
    Follower(FillReader),
}

/// How a successful commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Committed {
    pub len: u64,
    /// Whether the disk tier kept it (see [`Installed::NotCached`]); readers
    /// get the full content either way.
    pub installed: Installed,
}

impl Fills {
    /// A registry writing into `disk`, promoting small results into `memory`.
    /// `read_chunk_bytes` bounds each reader's buffer.
    pub fn new(disk: DiskTier, memory: Option<MemoryTier>, read_chunk_bytes: usize) -> Self {
        Fills {
            inner: Arc::new(FillsInner {
                disk,
                memory,
                active: Mutex::new(HashMap::new()),
                read_chunk_bytes: read_chunk_bytes.max(1),
                counters: Counters::default(),
            }),
        }
    }

    /// Claims the fill for `digest` or joins the existing one.
    ///
    /// `expected_len` (from the upstream's `Content-Length`) makes `commit`
    /// reject a short body and `write` reject a long one, and is what
    /// followers report from [`FillReader::len`].
    ///
    /// Cancel safety: safe. If the future is dropped before it returns, no
    /// fill is registered and its temp file is removed.
    ///
    /// Errors only when the temp file can't be created or a cached entry
    /// can't be opened.
    pub async fn begin(
        &self,
        digest: &Digest,
        expected_len: Option<u64>,
    ) -> Result<Begin, StoreError> {
        let inner = &self.inner;
        loop {
            if let Some(reader) = self.follow_active(digest) {
                return Ok(Begin::Follower(reader));
            }
            if let Some(reader) = self.follow_committed(digest).await? {
                inner.counters.already_cached.inc();
                return Ok(Begin::Follower(reader));
            }
            // Create the temp file outside the registry lock, then claim.
            let disk = inner.disk.clone();
            let temp = match tokio::task::spawn_blocking(move || disk.create_temp())
                .await
                .map_err(StoreError::task)?
            {
                Ok(temp) => temp,
                Err(StoreError::Io { op, source, .. }) => {
                    inner.disk.health().write_failed(op, &source);
                    return self.pass_through(digest, expected_len);
                }
                Err(e) => return Err(e),
            };
            let mut active = inner.active.lock();
            if let Some(shared) = active.get(digest) {
                inner.counters.joined.inc();
                let reader = FillReader::following(shared, inner.read_chunk_bytes);
                drop(active);
                return Ok(Begin::Follower(reader));
            }
            if inner.disk.contains(digest)
                || inner.memory.as_ref().is_some_and(|m| m.contains(digest))
            {
                // Committed while we created the temp file; go read it.
                continue;
            }
            let (progress, _) = watch::channel(Progress::Writing {
                written: 0,
                len: expected_len,
            });
            let cell = std::sync::OnceLock::new();
            if let Some(len) = expected_len {
                let _ = cell.set(len);
            }
            let shared = Arc::new(FillShared {
                digest: digest.clone(),
                expected_len: cell,
                file: Mutex::new(temp.file.clone()),
                relay: Arc::default(),
                progress,
            });
            active.insert(digest.clone(), shared.clone());
            drop(active);
            inner.counters.started.inc();
            tracing::debug!(%digest, ?expected_len, "fill started");
            let mut state = WriterState::new(inner, shared, Some(temp), digest);
            if let Some(len) = expected_len {
                state.reserve_up_to(len);
            }
            return Ok(Begin::Leader(FillWriter {
                digest: digest.clone(),
                state: Some(Box::new(state)),
                failed: None,
            }));
        }
    }

    /// A fill that can't touch the disk (the temp file could not be
    /// created): it passes through a memory file from the start, is not
    /// registered (nobody else can join it once its start is released) and
    /// caches nothing.
    fn pass_through(
        &self,
        digest: &Digest,
        expected_len: Option<u64>,
    ) -> Result<Begin, StoreError> {
        let inner = &self.inner;
        let file = relay::memory_file().map_err(StoreError::io("create memory file", "memfd"))?;
        let cell = std::sync::OnceLock::new();
        if let Some(len) = expected_len {
            let _ = cell.set(len);
        }
        let (progress, _) = watch::channel(Progress::Writing {
            written: 0,
            len: expected_len,
        });
        let relay = Arc::new(Relay::default());
        relay.switch_on();
        let shared = Arc::new(FillShared {
            digest: digest.clone(),
            expected_len: cell,
            file: Mutex::new(Arc::new(file)),
            relay,
            progress,
        });
        inner.counters.started.inc();
        inner.counters.passed_through.inc();
        tracing::debug!(%digest, ?expected_len, "fill started, passing through without caching");
        Ok(Begin::Leader(FillWriter {
            digest: digest.clone(),
            state: Some(Box::new(WriterState::new(inner, shared, None, digest))),
            failed: None,
        }))
    }

    /// Is a fill for `digest` in progress right now?
    pub fn is_filling(&self, digest: &Digest) -> bool {
        self.inner.active.lock().contains_key(digest)
    }

    pub fn stats(&self) -> FillStats {
        let c = &self.inner.counters;
        FillStats {
            started: c.started.get(),
            joined: c.joined.get(),
            already_cached: c.already_cached.get(),
            committed: c.committed.get(),
            failed: c.failed.get(),
            bytes_written: c.bytes_written.get(),
            passed_through: c.passed_through.get(),
        }
    }

    fn follow_active(&self, digest: &Digest) -> Option<FillReader> {
        let active = self.inner.active.lock();
        let shared = active.get(digest)?;
        self.inner.counters.joined.inc();
        Some(FillReader::following(shared, self.inner.read_chunk_bytes))
    }

    async fn follow_committed(&self, digest: &Digest) -> Result<Option<FillReader>, StoreError> {
        let chunk = self.inner.read_chunk_bytes;
        if let Some(bytes) = self.inner.memory.as_ref().and_then(|m| m.get_bytes(digest)) {
            self.inner.disk.touch(digest);
            return Ok(Some(FillReader::complete_bytes(digest, bytes, chunk)));
        }
        if !self.inner.disk.contains(digest) {
            return Ok(None);
        }
        let disk = self.inner.disk.clone();
        let d = digest.clone();
        let opened = tokio::task::spawn_blocking(move || disk.open_blocking(&d))
            .await
            .map_err(StoreError::task)??;
        Ok(opened.map(|(file, len)| FillReader::complete_file(digest, Arc::new(file), len, chunk)))
    }
}

impl fmt::Debug for Fills {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fills")
            .field("active", &self.inner.active.lock().len())
            .finish_non_exhaustive()
    }
}

impl FillsInner {
    /// Releases the digest, then tells readers. In that order, so a reader
    /// that sees the error and calls `begin` again becomes the new leader.
    fn fail(&self, shared: &Arc<FillShared>, error: FillError) {
        self.release(shared);
        self.counters.failed.inc();
        // Debug only: the writer's caller gets the error and logs it once at
        // the level it deserves (STYLE habit 4).
        tracing::debug!(digest = %shared.digest, %error, "fill failed");
        shared.progress.send_replace(Progress::Failed(error));
    }

    fn release(&self, shared: &Arc<FillShared>) {
        let mut active = self.active.lock();
        if active
            .get(&shared.digest)
            .is_some_and(|s| Arc::ptr_eq(s, shared))
        {
            active.remove(&shared.digest);
        }
    }
}

/// Budget promised to a fill's temp file; returned when dropped.
struct Reservation {
    disk: DiskTier,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.disk.unreserve(self.bytes);
        }
    }
}

struct WriterState {
    fills: Arc<FillsInner>,
    shared: Arc<FillShared>,
    /// Unlinked when dropped uncommitted. `None` once the fill passes
    /// through memory (or did from the start).
    temp: Option<TempFile>,
    reservation: Reservation,
    /// The announced length does not fit the budget: the next write
    /// switches to pass-through.
    over_budget: bool,
    /// Pass-through: memory below this offset was released.
    punched: u64,
    /// `None` while a write runs on the blocking pool. Still `None` on the
    /// next call means that write's future was dropped mid-way and the file
    /// contents are unknown.
    hasher: Option<ContentHasher>,
    written: u64,
}

/// How much a pass-through switch may copy from the temp file into memory
/// for readers behind the writer before it gives up on them.
const SWITCH_COPY_MAX: u64 = 256 << 20;

/// After `ENOSPC`, eviction frees at least this much before the write is retried.
const FREE_SLACK: u64 = 16 << 20;

impl WriterState {
    /// A new writer's state: nothing written, nothing reserved yet; `temp`
    /// is `None` for a fill that passes through memory from the start.
    fn new(
        fills: &Arc<FillsInner>,
        shared: Arc<FillShared>,
        temp: Option<TempFile>,
        digest: &Digest,
    ) -> WriterState {
        WriterState {
            fills: fills.clone(),
            shared,
            temp,
            reservation: Reservation {
                disk: fills.disk.clone(),
                bytes: 0,
            },
            over_budget: false,
            punched: 0,
            hasher: Some(ContentHasher::new(digest.algorithm())),
            written: 0,
        }
    }

    fn passing_through(&self) -> bool {
        self.temp.is_none()
    }

    /// Reserves budget so that `total` bytes are covered. `false` (and the
    /// fill marked over budget) when it can't.
    fn reserve_up_to(&mut self, total: u64) -> bool {
        if self.passing_through() || self.over_budget {
            return false;
        }
        let need = total.saturating_sub(self.reservation.bytes);
        if need == 0 {
            return true;
        }
        if self.fills.disk.reserve(need) {
            self.reservation.bytes += need;
            true
        } else {
            self.over_budget = true;
            false
        }
    }

    /// Switches to pass-through: releases the digest (later clients start
    /// their own fill), copies what readers still need into a memory file,
    /// swaps it in and drops the temp file and its reservation.
    async fn switch_to_memory(&mut self, why: &str) -> Result<(), io::Error> {
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        self.fills.release(&self.shared);
        let written = self.written;
        let from = self.shared.relay.min().unwrap_or(written).min(written);
        if written - from > SWITCH_COPY_MAX {
            return Err(io::Error::other(format!(
                "a reader is {} bytes behind; too far to pass through memory",
                written - from
            )));
        }
        let disk_file = temp.file.clone();
        let memory = tokio::task::spawn_blocking(move || {
            let memory = relay::memory_file()?;
            relay::copy_range(&disk_file, &memory, from, written)?;
            Ok::<_, io::Error>(memory)
        })
        .await
        .map_err(io::Error::other)??;
        *self.shared.file.lock() = Arc::new(memory);
        self.shared.relay.switch_on();
        self.punched = from / 4096 * 4096;
        self.reservation.disk.unreserve(self.reservation.bytes);
        self.reservation.bytes = 0;
        self.fills.counters.passed_through.inc();
        tracing::info!(digest = %self.shared.digest, written, why, "fill passes through without being cached");
        drop(temp);
        Ok(())
    }
}

/// `pwritev` `chunks` at `offset` on the blocking pool, hashing them into
/// `hasher` when they were written. Gives everything back for a retry.
async fn write_blocking(
    file: Arc<File>,
    chunks: Vec<Bytes>,
    offset: u64,
    mut hasher: ContentHasher,
) -> (Option<ContentHasher>, Vec<Bytes>, io::Result<()>) {
    let job = move || {
        let result = write_all_at_vectored(&file, &chunks, offset);
        if result.is_ok() {
            for chunk in &chunks {
                hasher.update(chunk);
            }
        }
        (Some(hasher), chunks, result)
    };
    match tokio::task::spawn_blocking(job).await {
        Ok(out) => out,
        // The job panicked: the hasher is lost; the caller fails the fill.
        Err(join) => (None, Vec::new(), Err(io::Error::other(join.to_string()))),
    }
}

/// The leader's handle on a fill.
///
/// # Drop
///
/// Dropping it without [`commit`](Self::commit) (or after an error) fails
/// the fill: every reader gets [`FillError::Abandoned`], the temp file is
/// removed, and the digest is free for a new leader.
///
/// # Cancel safety
///
/// [`write`](Self::write) is *not* cancel-safe: if its future is dropped the
/// chunk may or may not be in the file, so the next call on the writer fails
/// the fill. [`commit`](Self::commit) is: once called, the commit runs to
/// completion on the blocking pool and publishes its outcome to readers even
/// if the returned future is dropped.
pub struct FillWriter {
    digest: Digest,
    /// `None` once committed, aborted or failed. Boxed to keep [`Begin`] small.
    state: Option<Box<WriterState>>,
    /// Why the fill failed, returned by later calls.
    failed: Option<FillError>,
}

impl FillWriter {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.written)
    }

    /// A reader of this fill from offset 0, for the client whose request
    /// started it. If the fill has already failed, the reader yields the error.
    ///
    /// A fill passing through memory keeps only what its readers still need,
    /// so subscribing to one after bytes were written yields an error.
    pub fn subscribe(&self) -> FillReader {
        match &self.state {
            Some(state) if state.passing_through() && state.written > 0 => FillReader::failed(
                &self.digest,
                FillError::Abandoned {
                    digest: self.digest.clone(),
                    why: "joined a pass-through fill after its start was released",
                },
            ),
            Some(state) => FillReader::following(&state.shared, state.fills.read_chunk_bytes),
            None => FillReader::failed(&self.digest, self.failure()),
        }
    }

    /// Appends a chunk: `pwrite` at the current end and hash, on the
    /// blocking pool, then publish the new length to readers.
    ///
    /// On any error the fill is failed for everyone and this and every later
    /// call return that error.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), FillError> {
        self.write_chunks(vec![chunk]).await
    }

    /// Appends several chunks in one trip to the blocking pool (a download
    /// arrives in many small chunks; one hop each costs more than the copy),
    /// then publishes the new length once. Same errors as [`Self::write`].
    pub async fn write_chunks(&mut self, chunks: Vec<Bytes>) -> Result<(), FillError> {
        let Some(state) = self.state.as_mut() else {
            return Err(self.failure());
        };
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if len == 0 {
            return Ok(());
        }
        let Some(hasher) = state.hasher.take() else {
            return self.fail(FillError::Abandoned {
                digest: self.digest.clone(),
                why: "a write was cancelled mid-way",
            });
        };
        if let Some(&expected) = state.shared.expected_len.get()
            && state.written + len > expected
        {
            return self.fail(FillError::TooLong {
                digest: self.digest.clone(),
                expected,
            });
        }
        if !state.passing_through() && !state.reserve_up_to(state.written + len) {
            let why = "it does not fit the disk budget";
            if let Err(e) = state.switch_to_memory(why).await {
                return self.fail(FillError::io(&self.digest, "pass through", e));
            }
        }
        if state.passing_through() {
            state.shared.relay.wait_for_readers(state.written).await;
        }
        let offset = state.written;
        let (mut hasher, mut chunks, mut result) =
            write_blocking(state.shared.file(), chunks, offset, hasher).await;
        if let Err(e) = &result
            && !state.passing_through()
            && let Some(h) = hasher.take()
        {
            let kind = state.fills.disk.health().write_failed("write", e);
            // Full: make room by evicting, then try once more.
            let mut h = Some(h);
            if kind == WriteErrorKind::NoSpace
                && state.fills.disk.free_space_for(len + FREE_SLACK) > 0
                && let Some(again) = h.take()
            {
                (h, chunks, result) =
                    write_blocking(state.shared.file(), chunks, offset, again).await;
            }
            if result.is_err()
                && let Some(again) = h.take()
            {
                let why = format!("the disk refused the write: {}", kind.as_str());
                if let Err(e) = state.switch_to_memory(&why).await {
                    return self.fail(FillError::io(&self.digest, "pass through", e));
                }
                (h, _, result) = write_blocking(state.shared.file(), chunks, offset, again).await;
            }
            hasher = h;
        }
        let error = match (result, hasher) {
            (Ok(()), Some(hasher)) => {
                state.hasher = Some(hasher);
                state.written += len;
                state.fills.counters.bytes_written.add(len);
                if state.passing_through() {
                    // Nobody reading: nobody needs any of it.
                    let min = state
                        .shared
                        .relay
                        .min()
                        .unwrap_or(state.written)
                        .min(state.written);
                    state.punched = relay::punch(&state.shared.file(), state.punched, min);
                }
                state.shared.progress.send_replace(Progress::Writing {
                    written: state.written,
                    len: state.shared.expected_len.get().copied(),
                });
                return Ok(());
            }
            (Ok(()), None) => io::Error::other("the write task failed"),
            (Err(e), _) => e,
        };
        self.fail(FillError::io(&self.digest, "write", error))
    }

    /// Announces the total length after `begin` (the leader learns it only when
    /// the upstream's headers arrive). Readers waiting in
    /// [`FillReader::wait_len`] wake up; `commit` then rejects a short body and
    /// `write` a long one. Announcing a different length than before, or one
    /// shorter than what was already written, fails the fill.
    pub fn set_len(&mut self, len: u64) -> Result<(), FillError> {
        let Some(state) = self.state.as_mut() else {
            return Err(self.failure());
        };
        let current = *state.shared.expected_len.get_or_init(|| len);
        if current != len || state.written > len {
            return self.fail(FillError::TooLong {
                digest: self.digest.clone(),
                expected: current.min(len),
            });
        }
        state.reserve_up_to(len);
        state.shared.progress.send_replace(Progress::Writing {
            written: state.written,
            len: Some(len),
        });
        Ok(())
    }

    /// Verifies length and digest, makes the file durable, and moves it into
    /// the disk tier (small content is also copied into the memory tier).
    /// Readers then see the end of the content.
    ///
    /// Cancel-safe: see the type docs.
    pub async fn commit(mut self) -> Result<Committed, FillError> {
        let Some(state) = self.state.take() else {
            return Err(self.failure());
        };
        let digest = self.digest.clone();
        let job = move || {
            // Fails the fill if the job panics, so readers never hang.
            let mut guard = FailGuard {
                fills: state.fills.clone(),
                shared: state.shared.clone(),
                armed: true,
            };
            let result = commit_blocking(*state);
            guard.armed = false;
            result
        };
        match tokio::task::spawn_blocking(job).await {
            Ok(result) => result,
            Err(join) => Err(FillError::io(&digest, "commit", io::Error::other(join))),
        }
    }

    /// Fails the fill with `cause` (for example the upstream's error: its
    /// body broke, or it refused the download). Readers get
    /// [`FillError::Aborted`] carrying `cause`, typed, so each can decide
    /// what it means for it; nothing is cached.
    pub fn abort(mut self, cause: impl std::error::Error + Send + Sync + 'static) {
        let digest = self.digest.clone();
        let _ = self.fail::<()>(FillError::Aborted {
            digest,
            cause: Arc::new(cause),
        });
    }

    fn fail<T>(&mut self, error: FillError) -> Result<T, FillError> {
        if let Some(state) = self.state.take() {
            state.fills.fail(&state.shared, error.clone());
            // `state.temp` drops here: the temp file is unlinked.
        }
        self.failed = Some(error.clone());
        Err(error)
    }

    fn failure(&self) -> FillError {
        self.failed.clone().unwrap_or_else(|| FillError::Abandoned {
            digest: self.digest.clone(),
            why: "the writer was already committed",
        })
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            state.fills.fail(
                &state.shared,
                FillError::Abandoned {
                    digest: self.digest.clone(),
                    why: "the writer was dropped without commit",
                },
            );
        }
    }
}

impl fmt::Debug for FillWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillWriter")
            .field("digest", &self.digest)
            .field("written", &self.written())
            .field("open", &self.state.is_some())
            .finish()
    }
}

struct FailGuard {
    fills: Arc<FillsInner>,
    shared: Arc<FillShared>,
    armed: bool,
}

impl Drop for FailGuard {
    fn drop(&mut self) {
        if self.armed {
            self.fills.fail(
                &self.shared,
                FillError::Abandoned {
                    digest: self.shared.digest.clone(),
                    why: "the commit panicked",
                },
            );
        }
    }
}

fn commit_blocking(state: WriterState) -> Result<Committed, FillError> {
    let WriterState {
        fills,
        shared,
        temp,
        mut reservation,
        hasher,
        written,
        ..
    } = state;
    let digest = &shared.digest;
    let fail = |error: FillError| {
        fills.fail(&shared, error.clone());
        Err(error)
    };
    let Some(hasher) = hasher else {
        return fail(FillError::Abandoned {
            digest: digest.clone(),
            why: "a write was cancelled mid-way",
        });
    };
    if let Some(&expected) = shared.expected_len.get()
        && written != expected
    {
        return fail(FillError::Truncated {
            digest: digest.clone(),
            expected,
            written,
        });
    }
    if let Err(actual) = hasher.verify(digest) {
        return fail(FillError::DigestMismatch {
            digest: digest.clone(),
            actual,
        });
    }
    // Verified: from here on every reader gets the whole content, whether or
    // not the disk keeps it (a cache that can't write still proxies).
    let installed = match temp {
        None => {
            fills.disk.note_not_cached();
            Installed::NotCached
        }
        Some(temp) => match temp.file.sync_all() {
            Err(e) => {
                fills.disk.health().write_failed("fsync", &e);
                fills.disk.note_not_cached();
                Installed::NotCached
            }
            Ok(()) => {
                let reserved = std::mem::take(&mut reservation.bytes);
                match fills.disk.install(temp, digest, written, reserved) {
                    Ok(installed) => installed,
                    Err(error) => {
                        tracing::debug!(%digest, %error, "verified fill not cached");
                        fills.disk.note_not_cached();
                        Installed::NotCached
                    }
                }
            }
        },
    };
    if installed != Installed::NotCached
        && let Some(memory) = &fills.memory
        && written <= memory.max_object_bytes()
    {
        match read_at_exact(&shared.file(), 0, written) {
            Ok(bytes) => memory.insert(digest, bytes),
            Err(error) => {
                tracing::debug!(%digest, %error, "copying committed fill to memory failed")
            }
        }
    }
    fills.release(&shared);
    fills.counters.committed.inc();
    tracing::debug!(%digest, bytes = written, ?installed, "fill committed");
    shared
        .progress
        .send_replace(Progress::Done { len: written });
    Ok(Committed {
        len: written,
        installed,
    })
}

/// Writes `chunks` back to back from `offset` with as few `pwritev(2)` calls
/// as the kernel allows. One large write rather than one per chunk matters
/// beyond the system calls: the page cache backs a large write with large
/// folios, and `sendfile` from such a file later runs measurably faster (on
/// this machine a file written in 16 KiB pieces served ~12% slower than one
/// written in 1 MiB pieces).
fn write_all_at_vectored(file: &File, chunks: &[Bytes], mut offset: u64) -> io::Result<()> {
    /// `IOV_MAX` on Linux.
    const MAX_SLICES: usize = 1024;
    for group in chunks.chunks(MAX_SLICES) {
        let mut slices: Vec<io::IoSlice<'_>> = group.iter().map(|c| io::IoSlice::new(c)).collect();
        let mut bufs = &mut slices[..];
        while !bufs.is_empty() {
            let n = match rustix::io::pwritev(file, bufs, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            offset += n as u64;
            io::IoSlice::advance_slices(&mut bufs, n);
        }
    }
    Ok(())
}

fn read_at_exact(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}

enum ReadSource {
    /// A fill in progress: its current file (see [`FillShared::file`]); read
    /// with `pread`, so readers share one descriptor without sharing a file
    /// position. The cursor is this reader's position as the writer sees it
    /// (pass-through keeps only what readers still need).
    File(FileRef),
    /// A committed entry found in the memory tier.
    Bytes(Bytes),
}

/// Two kinds of file in one variant of [`ReadSource`]: `Bytes` offers a
/// single niche, so a third variant would make every reader 8 bytes larger.
enum FileRef {
    /// A fill in progress. Boxed: it keeps `FillReader` small.
    Filling(Box<Following>),
    /// A committed entry.
    Committed(Arc<File>),
}

struct Following {
    shared: Arc<FillShared>,
    cursor: Cursor,
}

struct ReadState {
    digest: Digest,
    progress: watch::Receiver<Progress>,
    source: ReadSource,
    pos: u64,
    /// Exclusive end requested by a range, if any.
    end: Option<u64>,
    chunk: usize,
}

type Step = (ReadState, Option<Result<Bytes, FillError>>);

/// A stream of one fill's content, as it is written.
///
/// Yields `Ok` chunks of at most `read_chunk_bytes` and then ends cleanly
/// only if the fill committed; if the fill fails, the last item is the
/// `Err` (even when every wanted byte was already delivered), after which it
/// ends. A reader created after the writer has written some bytes starts
/// from offset 0 (or its range start) all the same.
///
/// # Cancel safety
///
/// Polling is cancel-safe: a dropped `next()` future loses nothing, because
/// the in-progress read lives in the reader, not in the `next()` future.
/// Dropping the reader stops only this reader; the fill and its other
/// readers carry on.
pub struct FillReader {
    digest: Digest,
    /// Total length when known (committed, or announced by the leader).
    total: Option<u64>,
    /// `None` while a step runs (it owns the state) or after the end.
    state: Option<ReadState>,
    pending: Option<BoxFuture<'static, Step>>,
}

impl FillReader {
    fn following(shared: &Arc<FillShared>, chunk: usize) -> Self {
        FillReader::new(
            &shared.digest,
            shared.expected_len.get().copied(),
            shared.progress.subscribe(),
            ReadSource::File(FileRef::Filling(Box::new(Following {
                shared: shared.clone(),
                cursor: shared.relay.cursor(0),
            }))),
            chunk,
        )
    }

    fn complete_bytes(digest: &Digest, bytes: Bytes, chunk: usize) -> Self {
        let len = bytes.len() as u64;
        let (_, rx) = watch::channel(Progress::Done { len });
        FillReader::new(digest, Some(len), rx, ReadSource::Bytes(bytes), chunk)
    }

    fn complete_file(digest: &Digest, file: Arc<File>, len: u64, chunk: usize) -> Self {
        let (_, rx) = watch::channel(Progress::Done { len });
        FillReader::new(
            digest,
            Some(len),
            rx,
            ReadSource::File(FileRef::Committed(file)),
            chunk,
        )
    }

    fn failed(digest: &Digest, error: FillError) -> Self {
        let (_, rx) = watch::channel(Progress::Failed(error));
        FillReader::new(digest, None, rx, ReadSource::Bytes(Bytes::new()), 1)
    }

    fn new(
        digest: &Digest,
        total: Option<u64>,
        progress: watch::Receiver<Progress>,
        source: ReadSource,
        chunk: usize,
    ) -> Self {
        FillReader {
            digest: digest.clone(),
            total,
            state: Some(ReadState {
                digest: digest.clone(),
                progress,
                source,
                pos: 0,
                end: None,
                chunk,
            }),
            pending: None,
        }
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The full content length if known: the committed length, or the
    /// `expected_len` the leader passed to `begin`. For `Content-Length`.
    pub fn len(&self) -> Option<u64> {
        self.total
    }

    /// Waits until the total length is known (announced by the leader, or the
    /// fill committed) and returns it, or returns the fill's error if it fails
    /// first. For sending `Content-Length` before the first byte.
    ///
    /// Cancel-safe: it only watches the fill's progress. Call it before the
    /// first poll of the stream.
    pub async fn wait_len(&mut self) -> Result<u64, FillError> {
        if let Some(total) = self.total {
            return Ok(total);
        }
        let Some(state) = self.state.as_ref() else {
            return Err(FillError::Abandoned {
                digest: self.digest.clone(),
                why: "wait_len called after the stream was polled",
            });
        };
        let mut rx = state.progress.clone();
        loop {
            let known = match &*rx.borrow_and_update() {
                Progress::Writing { len, .. } => len.map(Ok),
                Progress::Done { len } => Some(Ok(*len)),
                Progress::Failed(e) => Some(Err(e.clone())),
            };
            if let Some(result) = known {
                if let Ok(len) = result {
                    self.total = Some(len);
                }
                return result;
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Abandoned {
                    digest: self.digest.clone(),
                    why: "the writer went away before announcing a length",
                });
            }
        }
    }

    /// Whether the known total length is zero.
    pub fn is_empty(&self) -> bool {
        self.total == Some(0)
    }

    /// Restricts the stream to bytes `start..end` (`end` exclusive, `None`
    /// for "to the end"), for `Range` requests on a blob that is still
    /// filling. Call before the first poll; a later call has no effect. If
    /// `start` turns out to be beyond the final length, the stream yields
    /// [`FillError::RangeNotSatisfiable`].
    pub fn range(mut self, start: u64, end: Option<u64>) -> Self {
        if let Some(state) = self.state.as_mut()
            && state.pos == 0
        {
            state.pos = start;
            state.end = end.map(|e| e.max(start));
            if let ReadSource::File(FileRef::Filling(f)) = &state.source {
                f.cursor.set(start);
            }
        }
        self
    }
    /// The file behind this reader, for senders that copy straight from it
    /// (`sendfile`) instead of reading chunks: the fill's temp file while it is
    /// written, or the committed entry. `Err(self)` when the content is in
    /// memory or the stream was already polled (boxed: it is large, and
    /// that case is rare).
    pub fn into_file(mut self) -> Result<FillFile, Box<FillReader>> {
        if self.pending.is_some() {
            return Err(Box::new(self));
        }
        match self.state.take() {
            Some(ReadState {
                digest,
                progress,
                source: ReadSource::File(FileRef::Committed(file)),
                pos: 0,
                end: None,
                ..
            }) => Ok(FillFile {
                digest,
                file,
                shared: None,
                cursor: None,
                progress,
            }),
            Some(ReadState {
                digest,
                progress,
                source: ReadSource::File(FileRef::Filling(f)),
                pos: 0,
                end: None,
                ..
            }) => Ok(FillFile {
                digest,
                file: f.shared.file(),
                shared: Some(f.shared),
                cursor: Some(f.cursor),
                progress,
            }),
            other => {
                self.state = other;
                Err(Box::new(self))
            }
        }
    }
}

/// A fill's file and its progress, for sending with `sendfile(2)`: wait for
/// bytes with [`FillFile::wait`], then copy up to what it reports. The same
/// rule as [`FillReader`] holds, and is the caller's to keep: a response may
/// only be completed after `wait` reported [`FillProgress::Verified`].
pub struct FillFile {
    digest: Digest,
    /// The file as of the last [`FillFile::wait`]: it holds every byte that
    /// call reported.
    file: Arc<File>,
    shared: Option<Arc<FillShared>>,
    cursor: Option<Cursor>,
    progress: watch::Receiver<Progress>,
}

/// How far a fill is, as seen by [`FillFile::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillProgress {
    /// The first `written` bytes are in the file; the content is not verified yet.
    Writing { written: u64 },
    /// Verified and committed: the whole `len` bytes may be sent.
    Verified { len: u64 },
}

impl FillFile {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The file to copy from (positional reads only: it is shared).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Waits until at least `want` bytes are written or the fill is verified,
    /// and reports which; or returns the fill's error. Pass `u64::MAX` to
    /// wait for verification alone. Cancel-safe.
    ///
    /// The caller must have sent everything before `want - 1` (a fill that
    /// passes through memory releases what every reader has passed).
    pub async fn wait(&mut self, want: u64) -> Result<FillProgress, FillError> {
        if let Some(cursor) = &self.cursor
            && want != u64::MAX
        {
            cursor.set(want.saturating_sub(1));
        }
        let mut sender_gone = false;
        loop {
            let answer = match &*self.progress.borrow_and_update() {
                Progress::Done { len } => Some(Ok(FillProgress::Verified { len: *len })),
                Progress::Failed(e) => Some(Err(e.clone())),
                Progress::Writing { written, .. } if *written >= want => {
                    Some(Ok(FillProgress::Writing { written: *written }))
                }
                Progress::Writing { .. } => None,
            };
            if let Some(answer) = answer {
                // After reading the progress: the file then holds those bytes.
                if let Some(shared) = &self.shared {
                    self.file = shared.file();
                }
                return answer;
            }
            if sender_gone {
                return Err(FillError::Abandoned {
                    digest: self.digest.clone(),
                    why: "the fill ended without an outcome",
                });
            }
            if self.progress.changed().await.is_err() {
                sender_gone = true;
            }
        }
    }
}

impl fmt::Debug for FillFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillFile")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for FillReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillReader")
            .field("digest", &self.digest)
            .field("len", &self.total)
            .field("pos", &self.state.as_ref().map(|s| s.pos))
            .finish_non_exhaustive()
    }
}

impl Stream for FillReader {
    type Item = Result<Bytes, FillError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let pending = match &mut this.pending {
            Some(pending) => pending,
            None => {
                let Some(state) = this.state.take() else {
                    return Poll::Ready(None);
                };
                this.pending.insert(step(state).boxed())
            }
        };
        let (state, item) = std::task::ready!(pending.as_mut().poll(cx));
        this.pending = None;
        // Keep going only after a chunk; an error or the end is final.
        if matches!(item, Some(Ok(_))) {
            this.state = Some(state);
        }
        Poll::Ready(item)
    }
}

/// Produces the next item: waits until bytes past `pos` are published (or
/// the fill ends), then reads at most one chunk.
async fn step(mut st: ReadState) -> Step {
    let mut sender_gone = false;
    loop {
        let progress = st.progress.borrow_and_update().clone();
        let (available, final_len) = match progress {
            Progress::Writing { written, .. } => (written, None),
            Progress::Done { len } => (len, Some(len)),
            Progress::Failed(error) => return (st, Some(Err(error))),
        };
        if let Some(len) = final_len
            && st.pos > len
        {
            let error = FillError::RangeNotSatisfiable {
                digest: st.digest.clone(),
                start: st.pos,
                len,
            };
            return (st, Some(Err(error)));
        }
        let limit = st.end.map_or(available, |end| end.min(available));
        if st.pos < limit {
            let want = (limit - st.pos).min(st.chunk as u64);
            let item = read_chunk(&st, want).await;
            if let Ok(bytes) = &item {
                st.pos += bytes.len() as u64;
                if let ReadSource::File(FileRef::Filling(f)) = &st.source {
                    f.cursor.set(st.pos);
                }
            }
            return (st, Some(item));
        }
        if final_len.is_some() {
            return (st, None);
        }
        if sender_gone {
            // Unreachable in practice: the writer and the commit guard always
            // publish a final state before the sender can drop.
            let error = FillError::Abandoned {
                digest: st.digest.clone(),
                why: "the fill ended without an outcome",
            };
            return (st, Some(Err(error)));
        }
        if st.progress.changed().await.is_err() {
            // Look once more: the final value may have been sent just before the drop.
            sender_gone = true;
        }
    }
}

async fn read_chunk(st: &ReadState, want: u64) -> Result<Bytes, FillError> {
    let file = match &st.source {
        ReadSource::Bytes(bytes) => {
            let start = usize::try_from(st.pos)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let end = usize::try_from(st.pos + want)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            return Ok(bytes.slice(start..end));
        }
        ReadSource::File(FileRef::Filling(f)) => f.shared.file(),
        ReadSource::File(FileRef::Committed(file)) => file.clone(),
    };
    let pos = st.pos;
    tokio::task::spawn_blocking(move || read_at_exact(&file, pos, want))
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(|e| FillError::io(&st.digest, "read", e))
}

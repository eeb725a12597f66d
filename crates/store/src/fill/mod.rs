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
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use regcache_formats::Digest;
use tokio::sync::watch;

use crate::disk::{DiskTier, Installed};
use crate::error::{FillError, StoreError};
use crate::memory::MemoryTier;
use crate::relay::{self, Relay};
use crate::stats::{Counter, FillStats};

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
    /// When the fill began (for [`Fills::in_progress`]).
    started: std::time::Instant,
    /// The repository the leader's client asked for, when the server said
    /// ([`FillWriter::set_repository`]); only for listings.
    repository: std::sync::OnceLock<String>,
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

/// One fill in progress, as [`Fills::in_progress`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FillStatus {
    pub digest: Digest,
    /// The repository of the request that started it, if the server said.
    pub repository: Option<String>,
    /// Bytes written (and readable) so far.
    pub written: u64,
    /// The total, once known (`Content-Length`).
    pub len: Option<u64>,
    /// Readers following it now (clients waiting for its bytes).
    pub readers: usize,
    /// Since the fill began.
    pub age: std::time::Duration,
    /// Streaming through memory without being cached (disk full, read-only).
    pub passing_through: bool,
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
                started: std::time::Instant::now(),
                repository: std::sync::OnceLock::new(),
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
            started: std::time::Instant::now(),
            repository: std::sync::OnceLock::new(),
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

    /// The fills registered right now, with their progress: a snapshot
    /// taken under the registry lock (a few field reads per fill; nothing
    /// waits on the fills). Fills that pass through memory from their start
    /// are not registered and not listed.
    pub fn in_progress(&self) -> Vec<FillStatus> {
        let active = self.inner.active.lock();
        active
            .values()
            .map(|shared| {
                let (written, len) = match &*shared.progress.borrow() {
                    Progress::Writing { written, len } => (*written, *len),
                    Progress::Done { len } => (*len, Some(*len)),
                    Progress::Failed(_) => (0, None),
                };
                FillStatus {
                    digest: shared.digest.clone(),
                    repository: shared.repository.get().cloned(),
                    written,
                    len: len.or_else(|| shared.expected_len.get().copied()),
                    readers: shared.relay.readers(),
                    age: shared.started.elapsed(),
                    passing_through: shared.relay.is_on(),
                }
            })
            .collect()
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

fn read_at_exact(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}

mod reader;
mod writer;

pub use reader::{FillFile, FillProgress, FillReader};

pub use writer::FillWriter;
use writer::WriterState;

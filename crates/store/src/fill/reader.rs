//! The followers' side of a fill: streams and files that read what the writer published.

use std::fmt;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::{BoxFuture, FutureExt};
use regcache_formats::Digest;
use tokio::sync::watch;

use crate::error::FillError;
use crate::relay::Cursor;

use super::*;

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
    pub(super) fn following(shared: &Arc<FillShared>, chunk: usize) -> Self {
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

    pub(super) fn complete_bytes(digest: &Digest, bytes: Bytes, chunk: usize) -> Self {
        let len = bytes.len() as u64;
        let (_, rx) = watch::channel(Progress::Done { len });
        FillReader::new(digest, Some(len), rx, ReadSource::Bytes(bytes), chunk)
    }

    pub(super) fn complete_file(digest: &Digest, file: Arc<File>, len: u64, chunk: usize) -> Self {
        let (_, rx) = watch::channel(Progress::Done { len });
        FillReader::new(
            digest,
            Some(len),
            rx,
            ReadSource::File(FileRef::Committed(file)),
            chunk,
        )
    }

    pub(super) fn failed(digest: &Digest, error: FillError) -> Self {
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

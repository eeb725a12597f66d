//! The leader's side of a fill: writing, hashing, switching to memory, committing.

use std::fmt;
use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use regcache_formats::Digest;

use crate::disk::{DiskTier, Installed, TempFile};
use crate::error::FillError;
use crate::hasher::ContentHasher;
use crate::health::WriteErrorKind;
use crate::relay::{self};
use crate::tier::Tier;

use super::*;

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

pub(super) struct WriterState {
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
    pub(super) fn new(
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

    pub(super) fn passing_through(&self) -> bool {
        self.temp.is_none()
    }

    /// Reserves budget so that `total` bytes are covered. `false` (and the
    /// fill marked over budget) when it can't.
    pub(super) fn reserve_up_to(&mut self, total: u64) -> bool {
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
    pub(super) async fn switch_to_memory(&mut self, why: &str) -> Result<(), io::Error> {
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
    pub(super) digest: Digest,
    /// `None` once committed, aborted or failed. Boxed to keep [`Begin`] small.
    pub(super) state: Option<Box<WriterState>>,
    /// Why the fill failed, returned by later calls.
    pub(super) failed: Option<FillError>,
}

impl FillWriter {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Names the repository whose request started this fill, for
    /// [`Fills::in_progress`] listings (the first name given stays).
    pub fn set_repository(&self, repository: &str) {
        if let Some(state) = &self.state {
            let _ = state.shared.repository.set(repository.to_owned());
        }
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

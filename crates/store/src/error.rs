//! Error types of the store.
//!
//! Two enums, because they travel differently: [`StoreError`] is returned once
//! to one caller (open, get, put), while [`FillError`] is *broadcast* to every
//! reader of a fill and so must be `Clone` (the `io::Error` inside sits in an
//! `Arc`). Absence is never an error: lookups return `Ok(None)`.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use regcache_formats::Digest;

/// Failure of a store operation other than a fill.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system call failed. `op` names the step so logs say what was
    /// attempted; the path is for operators and must not be sent to clients.
    #[error("cache {op} failed for {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Content offered to the store does not hash to the digest it was offered under.
    #[error("content does not match digest {expected}: it hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: String },
    /// Another process holds the cache root (two processes would delete each
    /// other's temporary files at start-up).
    #[error("cache directory {path} is locked by another process")]
    Locked { path: PathBuf },
    /// A blocking task panicked or the runtime is shutting down.
    #[error("cache background task failed: {0}")]
    Task(String),
    /// A persisted record could not be encoded.
    #[error("cache record could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// A request to the shared object store failed. `op` names the step
    /// ("head", "put", "complete upload", ...). object_store's errors name the
    /// key and the HTTP status, never the credentials (they travel in
    /// signature headers, which no error prints).
    #[error("shared object store {op} failed: {source}")]
    Shared {
        op: &'static str,
        #[source]
        source: object_store::Error,
    },
    /// The shared tier's settings can't work (say, a multipart part below the
    /// 5 MiB S3 minimum, or an access key without its secret).
    #[error("shared object store settings are invalid: {0}")]
    SharedConfig(String),
    /// A ranged read started past the end of the content.
    #[error("range start {start} is beyond the length {len} of {digest}")]
    RangeNotSatisfiable {
        digest: Digest,
        start: u64,
        len: u64,
    },
}

impl StoreError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }

    pub(crate) fn task(e: tokio::task::JoinError) -> StoreError {
        StoreError::Task(e.to_string())
    }

    pub(crate) fn shared(op: &'static str) -> impl FnOnce(object_store::Error) -> StoreError {
        move |source| StoreError::Shared { op, source }
    }
}

/// Why a fill ended without a cache entry, as seen by its writer and by every
/// reader.
///
/// A reader that receives any of these must treat the body it was streaming as
/// broken (abort the HTTP response), never as a short but complete body.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FillError {
    /// The bytes written do not hash to the digest the fill was started for.
    /// `actual` is the full `algorithm:hex` of what was received.
    #[error("fill of {digest} received content that hashes to {actual}")]
    DigestMismatch { digest: Digest, actual: String },
    /// `commit` was called after fewer bytes than announced at `begin`.
    #[error("fill of {digest} ended after {written} of {expected} bytes")]
    Truncated {
        digest: Digest,
        expected: u64,
        written: u64,
    },
    /// A write went past the length announced at `begin`.
    #[error("fill of {digest} received more than the {expected} bytes announced")]
    TooLong { digest: Digest, expected: u64 },
    /// The writer called `abort` (for example the upstream body failed);
    /// `cause` is the writer's own typed error, for readers to act on
    /// ([`FillError::cause`]).
    #[error("fill of {digest} aborted: {cause}")]
    Aborted {
        digest: Digest,
        #[source]
        cause: Arc<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The writer was dropped without `commit` or `abort` (task cancelled or panicked),
    /// or a write future was dropped mid-way, leaving the file in an unknown state.
    #[error("fill of {digest} abandoned: {why}")]
    Abandoned { digest: Digest, why: &'static str },
    /// Local I/O failed while writing the temporary file, committing it, or
    /// reading it back for a follower.
    #[error("fill of {digest} failed on local I/O during {op}: {source}")]
    Io {
        digest: Digest,
        op: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    /// A reader asked to start beyond the end of the completed content.
    #[error("fill of {digest}: range start {start} is beyond the length {len}")]
    RangeNotSatisfiable {
        digest: Digest,
        start: u64,
        len: u64,
    },
}

impl FillError {
    pub(crate) fn io(digest: &Digest, op: &'static str, e: io::Error) -> FillError {
        FillError::Io {
            digest: digest.clone(),
            op,
            source: Arc::new(e),
        }
    }

    /// What the writer aborted the fill with, when it did.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            FillError::Aborted { cause, .. } => Some(&**cause),
            _ => None,
        }
    }

    /// The digest of the fill this error belongs to.
    pub fn digest(&self) -> &Digest {
        match self {
            FillError::DigestMismatch { digest, .. }
            | FillError::Truncated { digest, .. }
            | FillError::TooLong { digest, .. }
            | FillError::Aborted { digest, .. }
            | FillError::Abandoned { digest, .. }
            | FillError::Io { digest, .. }
            | FillError::RangeNotSatisfiable { digest, .. } => digest,
        }
    }

    /// Whether the failure came from the content the writer supplied
    /// (upstream's fault) rather than local I/O or cancellation. The server can
    /// use this to pick a log level and an error code.
    pub fn is_bad_content(&self) -> bool {
        matches!(
            self,
            FillError::DigestMismatch { .. }
                | FillError::Truncated { .. }
                | FillError::TooLong { .. }
        )
    }
}

//! [`Error`]: why a request could not be served, and whose fault it is.
//!
//! Every handler and service returns this one type. It says *who* failed
//! (the client, regcache's own policy, the upstream, regcache itself) and
//! keeps the cause (the upstream's typed error, the source chain of a local
//! failure); it knows no HTTP types. [`crate::rescue`] is the one place that
//! turns it into a status, a registry error body and a log level.

use std::sync::Arc;

use regcache_formats::{ErrorCode, RegistryError};
use regcache_store::FillError;
use regcache_upstream::UpstreamError;

/// The cause of a local failure, shared (errors are cloned to every waiter of
/// a coalesced flight).
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why the upstream ended a fill, and through which route it was asked: the
/// cause a fill is aborted with, for its waiters to tell whether it concerns
/// them.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct UpstreamFillError {
    pub upstream: String,
    pub repository: String,
    pub error: UpstreamError,
}

/// Why a request could not be served.
#[derive(Clone, Debug)]
pub enum Error {
    /// The client's request is malformed, or names something that is not
    /// there. `status` is the registry code's own unless an endpoint says
    /// otherwise (405 for a method, 413 for a body too large).
    Client { status: u16, error: RegistryError },
    /// The client is not authenticated: no credentials, wrong ones (the same
    /// answer, so users cannot be enumerated), credentials regcache refuses
    /// to take (Basic over plain HTTP), or a token without the scope. 401,
    /// with `challenge` as `WWW-Authenticate` (how clients learn to log in).
    Unauthenticated {
        challenge: String,
        error: RegistryError,
    },
    /// regcache's configuration refuses the request: a registry no upstream
    /// names, a Schema 1 or push policy. Not an upstream error.
    Policy { status: u16, error: RegistryError },
    /// The client made more requests than its address's rate allows
    /// (`limits.requests_per_second_per_client`); it may retry after
    /// `retry_after_secs`.
    Throttled { retry_after_secs: u64 },
    /// The upstream answered with an error, or could not be reached.
    Upstream(UpstreamError),
    /// The upstream answered, with something regcache cannot use (a manifest
    /// that does not parse or hash to its digest, a refused helper upload).
    BadUpstream { upstream: String, message: String },
    /// regcache's local cache failed (the disk is full, read-only or
    /// failing) where it could not simply be bypassed. Never the upstream's
    /// fault: 500 from regcache, with a message about the cache (`context`,
    /// which names the step and never a path); the log gets the cause.
    Cache { context: String, source: Cause },
    /// regcache itself failed (local I/O, a bug). The client gets a generic
    /// message; the log gets `context` and the whole source chain.
    Internal {
        context: String,
        source: Option<Cause>,
    },
}

impl Error {
    /// A client error with the code's own status.
    pub fn client(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::from(RegistryError::with_message(code, message))
    }

    /// A client error with an explicit status (405, 413, 416 …).
    pub fn client_status(status: u16, error: RegistryError) -> Error {
        Error::Client { status, error }
    }

    /// Refused by configuration or policy.
    pub fn policy(status: u16, error: RegistryError) -> Error {
        Error::Policy { status, error }
    }

    /// A local failure with its cause.
    pub fn internal(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Internal {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The local cache failed doing `context` (no paths in it: clients see it).
    pub fn cache(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Cache {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// A local failure with no underlying error (an invariant broke).
    pub fn bug(context: impl Into<String>) -> Error {
        Error::Internal {
            context: context.into(),
            source: None,
        }
    }

    /// An upstream error, where a bodiless 404 (the answer to a `HEAD`)
    /// becomes the client error `absent` (`BLOB_UNKNOWN`, `MANIFEST_UNKNOWN`),
    /// as distribution answers for content it lacks.
    pub fn upstream_or_absent(e: UpstreamError, absent: RegistryError) -> Error {
        if e.is_not_found() && e.envelope().is_none() {
            return Error::from(absent);
        }
        Error::Upstream(e)
    }

    /// A failed blob fill: the upstream's error when the upstream ended it,
    /// bad content (from `upstream`) when the bytes did not verify, else a
    /// local failure.
    pub fn fill(e: FillError, upstream: &str) -> Error {
        if let Some(cause) = e.cause()
            && let Some(up) = cause.downcast_ref::<UpstreamFillError>()
        {
            return Error::Upstream(up.error.clone());
        }
        if e.is_bad_content() {
            return Error::BadUpstream {
                upstream: upstream.to_owned(),
                message: e.to_string(),
            };
        }
        Error::cache("a blob fill failed on local storage", e)
    }
}

impl From<RegistryError> for Error {
    fn from(error: RegistryError) -> Error {
        Error::Client {
            status: error.code.status(),
            error,
        }
    }
}

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Error {
        Error::Upstream(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Client { error, .. }
            | Error::Policy { error, .. }
            | Error::Unauthenticated { error, .. } => {
                write!(f, "{}: {}", error.code, error.message)
            }
            Error::Throttled { retry_after_secs } => write!(
                f,
                "too many requests from this address; retry after {retry_after_secs}s"
            ),
            Error::Upstream(e) => e.fmt(f),
            Error::BadUpstream { upstream, message } => {
                write!(f, "upstream {upstream} sent unusable content: {message}")
            }
            Error::Internal { context, .. } => f.write_str(context),
            Error::Cache { context, .. } => write!(f, "regcache's cache: {context}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Upstream(e) => std::error::Error::source(e),
            Error::Internal {
                source: Some(s), ..
            } => Some(&**s as &(dyn std::error::Error + 'static)),
            Error::Cache { source, .. } => Some(&**source as &(dyn std::error::Error + 'static)),
            _ => None,
        }
    }
}

/// `error: cause: cause's cause …`, for logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

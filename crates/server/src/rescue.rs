//! The single place where failures become responses: status plus the registry
//! envelope `{"errors":[{code,message,detail}]}`.
//!
//! Client mistakes are answered without a warning in the log; upstream failures
//! are relayed with their own status and code (429 stays 429, 404 stays 404);
//! internal errors get a generic message so no path, token or credential leaks,
//! and are logged once here.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use regcache_formats::{ErrorCode, ErrorEnvelope, RegistryError, media_type};

use crate::body::Body;

/// Why a request could not be served.
#[derive(Debug, Clone)]
pub enum ServeError {
    /// The client asked for something invalid or absent; the code decides the status.
    Client(RegistryError),
    /// A registry error with an explicit status (e.g. an upstream's, relayed).
    Relay {
        status: u16,
        envelope: ErrorEnvelope,
        retry_after: Option<String>,
    },
    /// The upstream could not be reached or did not answer in time (502 / 504).
    Unavailable { status: u16, message: String },
    /// A bug or a local failure (disk, say). Logged; the client sees a generic message.
    Internal(String),
}

impl ServeError {
    pub fn code(code: ErrorCode) -> ServeError {
        ServeError::Client(RegistryError::new(code))
    }

    pub fn msg(code: ErrorCode, message: impl Into<String>) -> ServeError {
        ServeError::Client(RegistryError::with_message(code, message))
    }

    pub fn internal(e: impl std::fmt::Display) -> ServeError {
        ServeError::Internal(e.to_string())
    }
}

impl From<RegistryError> for ServeError {
    fn from(e: RegistryError) -> Self {
        ServeError::Client(e)
    }
}

/// Build the error response. `head` drops the body but keeps its length, as
/// distribution does.
pub fn rescue(err: ServeError, head: bool) -> Response<Body> {
    let (status, envelope, retry_after) = match err {
        ServeError::Client(e) => {
            tracing::debug!(code = %e.code, message = %e.message, "client error");
            (e.code.status(), ErrorEnvelope::single(e), None)
        }
        ServeError::Relay {
            status,
            envelope,
            retry_after,
        } => {
            tracing::info!(status, code = ?envelope.errors.first().map(|e| e.code), "relaying upstream error");
            (status, envelope, retry_after)
        }
        ServeError::Unavailable { status, message } => {
            tracing::warn!(status, %message, "upstream unavailable");
            (
                status,
                ErrorEnvelope::single(RegistryError::with_message(ErrorCode::Unavailable, message)),
                None,
            )
        }
        ServeError::Internal(message) => {
            tracing::error!(%message, "internal error");
            (
                500,
                ErrorEnvelope::single(RegistryError::with_message(
                    ErrorCode::Unknown,
                    "internal error in regcache; see its log",
                )),
                None,
            )
        }
    };
    error_response(status, &envelope, retry_after.as_deref(), head)
}

/// Serialise an envelope with the given status.
pub fn error_response(
    status: u16,
    envelope: &ErrorEnvelope,
    retry_after: Option<&str>,
    head: bool,
) -> Response<Body> {
    let body = Bytes::from(envelope.to_body());
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(if head {
        Body::empty()
    } else {
        Body::full(body.clone())
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type::ERROR_JSON),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(ra) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert(header::RETRY_AFTER, ra);
    }
    resp
}

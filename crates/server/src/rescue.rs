//! The one place where an [`Error`] becomes a response: status, the registry
//! envelope `{"errors":[{code,message,detail}]}`, and a log level.
//!
//! [`classify`] is pure (a table test covers every kind); [`rescue`] logs
//! at the level it picks and builds the response. Client mistakes are logged
//! at debug; policy refusals at info, as refusals; upstream errors are relayed
//! with their own status and code (429 stays 429, 404 stays 404) and logged by
//! how much they say about the upstream's health; internal errors get a
//! generic message so no path, token or credential leaks, and their whole
//! source chain is logged here, once.

use http::Response;
use regcache_formats::{ErrorCode, ErrorEnvelope, RegistryError};
use regcache_upstream::UpstreamError;
use tracing::Level;

use crate::error::{Error, chain};
use crate::web::body::Body;
use crate::web::response::error_response;

/// What an error is answered with, and how loudly it is logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Rescued {
    pub status: u16,
    pub envelope: ErrorEnvelope,
    pub retry_after: Option<String>,
    /// `WWW-Authenticate` of a 401 from regcache's own client authentication.
    pub challenge: Option<String>,
    pub level: Level,
    /// Whose failure it is: `client`, `policy`, `upstream` or `regcache`.
    pub whose: &'static str,
}

/// Status, body and log level for `err`.
pub fn classify(err: &Error) -> Rescued {
    let single = |e: RegistryError| ErrorEnvelope::single(e);
    match err {
        Error::Client { status, error } => Rescued {
            status: *status,
            envelope: single(error.clone()),
            retry_after: None,
            challenge: None,
            level: Level::DEBUG,
            whose: "client",
        },
        Error::Policy { status, error } => Rescued {
            status: *status,
            envelope: single(error.clone()),
            retry_after: None,
            challenge: None,
            level: Level::INFO,
            whose: "policy",
        },
        Error::Unauthenticated { challenge, error } => Rescued {
            status: 401,
            envelope: single(error.clone()),
            retry_after: None,
            challenge: Some(challenge.clone()),
            level: Level::DEBUG,
            whose: "client",
        },
        // Debug: a client over its rate would otherwise flood the log.
        Error::Throttled { retry_after_secs } => Rescued {
            status: 429,
            envelope: single(RegistryError::with_message(
                ErrorCode::TooManyRequests,
                err.to_string(),
            )),
            retry_after: Some(retry_after_secs.to_string()),
            challenge: None,
            level: Level::DEBUG,
            whose: "client",
        },
        Error::Upstream(e) => upstream(e),
        Error::BadUpstream { .. } => Rescued {
            status: 502,
            envelope: single(RegistryError::with_message(
                ErrorCode::Unavailable,
                err.to_string(),
            )),
            retry_after: None,
            challenge: None,
            level: Level::WARN,
            whose: "upstream",
        },
        Error::Cache { context, .. } => Rescued {
            status: 500,
            envelope: single(RegistryError::with_message(
                ErrorCode::Unknown,
                format!("regcache's local cache failed: {context}; see its log"),
            )),
            retry_after: None,
            challenge: None,
            level: Level::ERROR,
            whose: "regcache",
        },
        Error::Internal { .. } => Rescued {
            status: 500,
            envelope: single(RegistryError::with_message(
                ErrorCode::Unknown,
                "internal error in regcache; see its log",
            )),
            retry_after: None,
            challenge: None,
            level: Level::ERROR,
            whose: "regcache",
        },
    }
}

/// An upstream's registry error is relayed as it came (an envelope it did
/// not send is made from its status); a transport failure is 502 or 504
/// naming the upstream.
fn upstream(e: &UpstreamError) -> Rescued {
    match e {
        UpstreamError::Registry {
            status,
            envelope,
            retry_after,
            ..
        } => {
            let envelope = envelope.clone().unwrap_or_else(|| {
                let code = match status {
                    404 => ErrorCode::ManifestUnknown,
                    401 => ErrorCode::Unauthorized,
                    403 => ErrorCode::Denied,
                    429 => ErrorCode::TooManyRequests,
                    _ => ErrorCode::Unknown,
                };
                ErrorEnvelope::single(RegistryError::with_message(code, e.to_string()))
            });
            let level = match status {
                404 => Level::DEBUG,
                s if *s >= 500 || *s == 429 => Level::WARN,
                _ => Level::INFO,
            };
            Rescued {
                status: *status,
                envelope,
                retry_after: retry_after.clone(),
                challenge: None,
                level,
                whose: "upstream",
            }
        }
        // The body the client sent broke off while regcache forwarded it
        // (bad chunked framing, shorter than its Content-Length, a client
        // gone): the client's error, not the upstream's.
        UpstreamError::RequestBody { .. } => Rescued {
            status: 400,
            envelope: ErrorEnvelope::single(RegistryError::with_message(
                ErrorCode::BlobUploadInvalid,
                format!("reading the request body failed: {}", chain(e)),
            )),
            retry_after: None,
            challenge: None,
            level: Level::DEBUG,
            whose: "client",
        },
        // The breaker is open: nothing was sent. Debug: the breaker logged
        // the outage once, when it opened.
        UpstreamError::Down {
            upstream,
            retry_after_secs,
            ..
        } => Rescued {
            status: 503,
            envelope: ErrorEnvelope::single(
                RegistryError::with_message(ErrorCode::Unavailable, e.to_string())
                    .detail(serde_json::json!({ "upstream": upstream })),
            ),
            retry_after: Some(retry_after_secs.to_string()),
            challenge: None,
            level: Level::DEBUG,
            whose: "upstream",
        },
        UpstreamError::Unauthorized { .. } => Rescued {
            status: 401,
            envelope: ErrorEnvelope::single(RegistryError::with_message(
                ErrorCode::Unauthorized,
                e.to_string(),
            )),
            retry_after: None,
            challenge: None,
            level: Level::INFO,
            whose: "upstream",
        },
        _ => Rescued {
            status: e.status_hint(),
            envelope: ErrorEnvelope::single(RegistryError::with_message(
                ErrorCode::Unavailable,
                chain(e),
            )),
            retry_after: None,
            challenge: None,
            level: Level::WARN,
            whose: "upstream",
        },
    }
}

/// Where a request failed, for the admin page's recent errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct At<'a> {
    /// The route kind (`manifest`, `blob`, …).
    pub route: &'static str,
    pub repository: Option<&'a str>,
}

/// Log `err` at its level and build its response. `head` drops the body but
/// keeps its length, as distribution does.
pub fn rescue(err: Error, head: bool) -> Response<Body> {
    rescue_at(err, head, At::default())
}

/// [`rescue`] for a routed request: the error is remembered with its route
/// and repository among the recent errors ([`crate::cockpit::errors`]).
pub fn rescue_at(err: Error, head: bool, at: At<'_>) -> Response<Body> {
    let r = classify(&err);
    remember(&r, at);
    let code = r.envelope.errors.first().map(|e| e.code.as_str());
    let cause = chain(&err);
    // An upstream failure says what failed (dns, refused, tls, …).
    let upstream_cause = match &err {
        Error::Upstream(e) => Some(tracing::field::display(e.cause().label())),
        _ => None,
    };
    macro_rules! log {
        ($lvl:expr) => {
            tracing::event!($lvl, status = r.status, code, whose = r.whose, cause = upstream_cause, error = %cause, "request failed")
        };
    }
    match r.level {
        Level::ERROR => log!(Level::ERROR),
        Level::WARN => log!(Level::WARN),
        Level::INFO => log!(Level::INFO),
        _ => log!(Level::DEBUG),
    }
    let mut resp = error_response(r.status, &r.envelope, r.retry_after.as_deref(), head);
    if let Some(v) = r
        .challenge
        .as_deref()
        .and_then(|c| http::HeaderValue::from_str(c).ok())
    {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// What the client was told, never more: status, code, the message (which
/// [`classify`] keeps free of paths and credentials) and whose fault.
/// regcache's own rate-limit refusals are left out: a client over its rate
/// would flush every other error from the ring (they are counted in
/// `regcache_requests_refused_total`, which the page shows).
fn remember(r: &Rescued, at: At<'_>) {
    if r.status == 429 && r.whose == "client" {
        return;
    }
    let first = r.envelope.errors.first();
    crate::cockpit::errors::recent().push(crate::cockpit::errors::ErrorRecord {
        t: crate::cockpit::stats::unix_now(),
        route: if at.route.is_empty() { "-" } else { at.route }.to_owned(),
        repository: at.repository.map(str::to_owned),
        status: r.status,
        code: first.map_or("", |e| e.code.as_str()).to_owned(),
        whose: r.whose.to_owned(),
        message: first.map_or(String::new(), |e| e.message.clone()),
    });
}

#[cfg(test)]
#[path = "rescue_tests.rs"]
mod tests;

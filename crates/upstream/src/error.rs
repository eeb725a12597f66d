//! [`UpstreamError`]: what went wrong talking to an upstream, who caused it
//! and whether the server may fall back to stale content.
//!
//! Registry-reported errors (a status, maybe the parsed JSON envelope) are
//! kept apart from transport failures, because the server relays the first
//! and turns the second into `502`/`504` (STYLE habit 3). No message ever
//! contains a credential, a token or a URL query (signed CDN URLs carry
//! signatures in their query); upstreams are named by their configured name
//! and host.

use std::fmt;
use std::sync::Arc;

use regcache_formats::ErrorEnvelope;

use crate::cause::Cause;

/// A boxed, shareable error source (`Arc` so [`UpstreamError`] is `Clone`
/// and one failure can be handed to every waiter of a coalesced request).
pub type BoxError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Which phase of a request ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// TCP/TLS connection setup (`connect_timeout`).
    Connect,
    /// Waiting for response headers (`first_byte_timeout`).
    FirstByte,
    /// A pause between body chunks (`body_stall_timeout`).
    Body,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connecting",
            TimeoutPhase::FirstByte => "waiting for response headers",
            TimeoutPhase::Body => "reading the response body",
        })
    }
}

/// An error from an upstream registry or from the way to it.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The registry answered with an error status. `envelope` is its
    /// `{"errors":[…]}` body when it sent one (never for `HEAD`);
    /// `retry_after` is its `Retry-After` header, to relay with a `429`.
    /// A `401` here means the registry refused us even after the token
    /// dance (for Docker Hub: private or missing repository).
    #[error("upstream {upstream} answered HTTP {status}{}", describe(.envelope))]
    Registry {
        upstream: String,
        status: u16,
        envelope: Option<ErrorEnvelope>,
        retry_after: Option<String>,
    },
    /// The token service refused to issue a token (`401`/`403` from the
    /// realm): wrong configured credentials, usually.
    #[error("upstream {upstream}: token service refused the request ({detail})")]
    Unauthorized { upstream: String, detail: String },
    /// No HTTP response: connection refused or reset, DNS, TLS, or the
    /// connection broke while reading a body.
    #[error("upstream {upstream}: {}", Cause::of_error(source.as_ref()))]
    Transport {
        upstream: String,
        #[source]
        source: BoxError,
    },
    /// A timeout; see [`TimeoutPhase`].
    #[error("upstream {upstream}: timed out {phase}")]
    Timeout {
        upstream: String,
        phase: TimeoutPhase,
    },
    /// Too many redirects, a redirect without a usable `Location`, or one
    /// that would need a streamed request body sent twice.
    #[error("upstream {upstream}: redirect failed ({detail})")]
    Redirect { upstream: String, detail: String },
    /// The upstream broke the protocol: missing or malformed header, bad
    /// digest, unparsable token response, body over the size limit…
    #[error("upstream {upstream}: protocol error ({detail})")]
    Protocol { upstream: String, detail: String },
    /// The request body being forwarded (a client's upload, streamed through)
    /// failed while it was sent: bad framing, a short body, a client that
    /// went away. The client's fault, not the upstream's: the exchange is not
    /// counted, and nothing is retried.
    #[error("upstream {upstream}: the request body being forwarded broke off")]
    RequestBody {
        upstream: String,
        #[source]
        source: BoxError,
    },
    /// The caller asked for something we refuse to send (invalid repository
    /// name or reference, a path outside `/v2/`, an invalid config).
    #[error("upstream {upstream}: invalid request ({detail})")]
    InvalidRequest { upstream: String, detail: String },
    /// Not sent: the upstream is known to be down (the server's circuit
    /// breaker is open after consecutive failures, `reason`), and is checked
    /// again in the background within `retry_after_secs`. Unavailable, so
    /// stale-if-error applies at once.
    #[error(
        "upstream {upstream} is down ({reason}); regcache did not contact it and checks it again within {retry_after_secs}s"
    )]
    Down {
        upstream: String,
        reason: String,
        retry_after_secs: u64,
    },
}

fn describe(envelope: &Option<ErrorEnvelope>) -> String {
    match envelope.as_ref().and_then(|e| e.errors.first()) {
        Some(first) if first.message.is_empty() => format!(": {}", first.code),
        Some(first) => format!(": {} ({})", first.code, truncate(&first.message, 200)),
        None => String::new(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The `upstream` field of an [`UpstreamError`] (`&String` or
/// `&mut String`, as the expression is borrowed): the one list of the
/// variants, all of which name their upstream.
macro_rules! upstream_of {
    ($e:expr) => {
        match $e {
            UpstreamError::Registry { upstream, .. }
            | UpstreamError::Unauthorized { upstream, .. }
            | UpstreamError::Transport { upstream, .. }
            | UpstreamError::Timeout { upstream, .. }
            | UpstreamError::Redirect { upstream, .. }
            | UpstreamError::Protocol { upstream, .. }
            | UpstreamError::RequestBody { upstream, .. }
            | UpstreamError::InvalidRequest { upstream, .. }
            | UpstreamError::Down { upstream, .. } => upstream,
        }
    };
}

impl UpstreamError {
    /// True when the upstream is (temporarily) not serving: no connection,
    /// a timeout, a `5xx` or a `429`, or known down ([`UpstreamError::Down`]). This is what stale-if-error keys on:
    /// a cached answer may be served instead. A `404` or `401` is an
    /// answer, not an outage, and is `false`.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Transport { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Down { .. } => true,
            UpstreamError::Registry { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The status the server should answer with when it relays this error:
    /// the upstream's own status for registry errors, `502` for transport,
    /// redirect and protocol failures, `504` for timeouts, `503` for an
    /// upstream known down, `401` when the
    /// token service refused us, `400` for an invalid request or a request
    /// body that broke off.
    pub fn status_hint(&self) -> u16 {
        match self {
            UpstreamError::Registry { status, .. } => *status,
            UpstreamError::Unauthorized { .. } => 401,
            UpstreamError::Timeout { .. } => 504,
            UpstreamError::Down { .. } => 503,
            UpstreamError::InvalidRequest { .. } | UpstreamError::RequestBody { .. } => 400,
            UpstreamError::Transport { .. }
            | UpstreamError::Redirect { .. }
            | UpstreamError::Protocol { .. } => 502,
        }
    }

    /// The HTTP status when the registry answered, else `None`.
    pub fn registry_status(&self) -> Option<u16> {
        match self {
            UpstreamError::Registry { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for a registry `404` (unknown manifest, blob or repository).
    pub fn is_not_found(&self) -> bool {
        self.registry_status() == Some(404)
    }

    /// The registry's error envelope, if it sent one.
    pub fn envelope(&self) -> Option<&ErrorEnvelope> {
        match self {
            UpstreamError::Registry { envelope, .. } => envelope.as_ref(),
            _ => None,
        }
    }

    /// The `Retry-After` header of a registry error, verbatim.
    pub fn retry_after(&self) -> Option<&str> {
        match self {
            UpstreamError::Registry { retry_after, .. } => retry_after.as_deref(),
            _ => None,
        }
    }

    /// What failed, for log lines and metric labels: for a transport
    /// failure, read from its source chain (DNS, refused, TLS, reset…).
    pub fn cause(&self) -> Cause {
        match self {
            UpstreamError::Registry { status, .. } => Cause::Status(*status),
            UpstreamError::Unauthorized { .. } => Cause::Unauthorized,
            UpstreamError::Transport { source, .. } => Cause::of_error(source.as_ref()),
            UpstreamError::Timeout { phase, .. } => Cause::Timeout(*phase),
            UpstreamError::Redirect { .. } | UpstreamError::Protocol { .. } => Cause::Protocol,
            UpstreamError::RequestBody { .. } => Cause::RequestBody,
            UpstreamError::InvalidRequest { .. } => Cause::Invalid,
            UpstreamError::Down { .. } => Cause::BreakerOpen,
        }
    }

    /// The upstream this error is about, as it appears in the message.
    pub fn upstream(&self) -> &str {
        upstream_of!(self)
    }

    /// Name the upstream in an error built without one (an empty
    /// `upstream`, as in an injected fault); a named error is unchanged.
    #[cfg(feature = "mock")]
    pub(crate) fn or_named(mut self, name: &str) -> Self {
        let upstream = upstream_of!(&mut self);
        if upstream.is_empty() {
            name.clone_into(upstream);
        }
        self
    }

    /// A transport error from a connection that was never established, so
    /// the request cannot have reached the server.
    pub(crate) fn is_connect_failure(&self) -> bool {
        match self {
            UpstreamError::Transport { source, .. } => source
                .downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_connect),
            _ => false,
        }
    }

    /// True when the request body we were forwarding failed (the client's
    /// fault), not the upstream or the way to it.
    pub fn is_request_body(&self) -> bool {
        matches!(self, UpstreamError::RequestBody { .. })
    }

    /// Map a reqwest error, dropping its URL (it may carry a signed query).
    pub(crate) fn from_reqwest(upstream: &str, e: reqwest::Error, in_body: bool) -> Self {
        let e = e.without_url();
        if e.is_timeout() {
            let phase = if e.is_connect() {
                TimeoutPhase::Connect
            } else if in_body || e.is_body() || e.is_decode() {
                TimeoutPhase::Body
            } else {
                TimeoutPhase::FirstByte
            };
            return UpstreamError::Timeout {
                upstream: upstream.to_owned(),
                phase,
            };
        }
        UpstreamError::Transport {
            upstream: upstream.to_owned(),
            source: Arc::new(e),
        }
    }
}

/// The error of a streamed request body ([`crate::RequestBody::stream`]),
/// wrapped in its own type so that a failed exchange can tell "the body we
/// were sending broke" from "the upstream broke": hyper and reqwest keep it
/// in their error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body failed")]
pub(crate) struct BodyFailed(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl BodyFailed {
    /// Whether `e`'s source chain holds a [`BodyFailed`].
    pub(crate) fn in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(e);
        while let Some(cur) = next {
            if cur.is::<BodyFailed>() {
                return true;
            }
            next = cur.source();
        }
        false
    }
}

/// `e` and every error in its source chain, `": "`-separated (a transport
/// error's own message is only its cause; the chain says what happened).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        // hyper and reqwest often repeat the inner message in the outer one.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use regcache_formats::{ErrorCode, RegistryError};

    fn registry(status: u16) -> UpstreamError {
        UpstreamError::Registry {
            upstream: "hub".into(),
            status,
            envelope: None,
            retry_after: None,
        }
    }

    #[test]
    fn unavailable_and_status_hints() {
        assert!(registry(503).is_unavailable());
        assert!(registry(500).is_unavailable());
        assert!(registry(429).is_unavailable());
        assert!(!registry(404).is_unavailable());
        assert!(!registry(401).is_unavailable());
        assert_eq!(registry(429).status_hint(), 429);
        let t = UpstreamError::Timeout {
            upstream: "hub".into(),
            phase: TimeoutPhase::FirstByte,
        };
        assert!(t.is_unavailable());
        assert_eq!(t.status_hint(), 504);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let tr = UpstreamError::Transport {
            upstream: "hub".into(),
            source: Arc::new(io),
        };
        assert!(tr.is_unavailable());
        assert_eq!(tr.status_hint(), 502);
        assert!(
            !tr.is_connect_failure(),
            "only reqwest connect errors count"
        );
    }

    #[test]
    fn message_names_upstream_and_code() {
        let e = UpstreamError::Registry {
            upstream: "docker.io".into(),
            status: 404,
            envelope: Some(ErrorEnvelope::single(RegistryError::new(
                ErrorCode::ManifestUnknown,
            ))),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "upstream docker.io answered HTTP 404: MANIFEST_UNKNOWN (manifest unknown)"
        );
        assert!(e.is_not_found());
        assert_eq!(registry(502).to_string(), "upstream hub answered HTTP 502");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer: inner broke")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_names_every_link_once() {
        let e = Outer(std::io::Error::other("inner broke"));
        // The outer message already ends with the inner one: not repeated.
        assert_eq!(chain(&e), "outer: inner broke");
        let tr = UpstreamError::Transport {
            upstream: "hub".into(),
            source: Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        let text = chain(&tr);
        assert!(
            text.starts_with("upstream hub: connection refused"),
            "{text}"
        );
    }
}

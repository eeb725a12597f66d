//! [`Cause`]: what an upstream failure was, in a few words and one bounded
//! metric label: DNS, refused, TLS, reset, a body that ended early, a timeout
//! (and its phase), an HTTP status…
//!
//! A transport failure arrives as a reqwest error wrapping hyper's, wrapping
//! an `io::Error` (which may wrap a rustls error). The chain is walked with
//! `source()`, and into each `io::Error`'s inner error with `get_ref()`
//! (`io::Error::source` skips its inner error and returns *that* one's
//! source). Nothing here reads or keeps a URL: a cause is a fixed phrase.

use std::fmt;
use std::io;

use crate::error::TimeoutPhase;

/// Why an upstream request failed. `Display` is a short phrase for log lines
/// ("connection refused"); [`Cause::label`] a fixed metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The upstream's name did not resolve.
    Dns,
    /// Nothing listens there (`ECONNREFUSED`).
    Refused,
    /// No route to the host or network.
    Unreachable,
    /// The TLS handshake or a TLS record failed (certificate, protocol).
    Tls,
    /// The connection was reset or aborted by the peer.
    Reset,
    /// The connection closed before the response (or its body) was complete.
    Closed,
    /// Ran out of time in this phase.
    Timeout(TimeoutPhase),
    /// The registry answered with this error status.
    Status(u16),
    /// The token service refused our credentials.
    Unauthorized,
    /// The upstream broke the HTTP or registry protocol, or a redirect failed.
    Protocol,
    /// The request body we were forwarding broke (the client's doing).
    RequestBody,
    /// We refused to send the request (invalid name, path, configuration).
    Invalid,
    /// Not sent: the upstream's circuit breaker is open (it is known down).
    BreakerOpen,
    /// A transport failure none of the above describes.
    Other,
}

impl Cause {
    /// The cause of a transport error, from its source chain.
    pub fn of_error(error: &(dyn std::error::Error + 'static)) -> Cause {
        let mut found = Cause::Other;
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(c) = Self::of_one(e) {
                // The innermost specific cause wins, except that a timeout or
                // TLS failure seen outside is already specific enough.
                found = c;
                if matches!(c, Cause::Tls | Cause::Timeout(_)) {
                    return c;
                }
            }
            next = match e.downcast_ref::<io::Error>() {
                Some(io) => io.get_ref().map(|inner| inner as _),
                None => e.source(),
            };
        }
        found
    }

    /// What one link of a chain says, if anything specific.
    fn of_one(e: &(dyn std::error::Error + 'static)) -> Option<Cause> {
        if e.is::<rustls::Error>() {
            return Some(Cause::Tls);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Self::of_io_kind(io.kind());
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return Some(Cause::Closed);
            }
            if h.is_parse() || h.is_parse_status() {
                return Some(Cause::Protocol);
            }
            return None;
        }
        // hyper-util's connector says which step failed only in its message
        // (its error type is private): "dns error", "tcp connect error".
        match e.to_string().as_str() {
            "dns error" => Some(Cause::Dns),
            _ => None,
        }
    }

    fn of_io_kind(kind: io::ErrorKind) -> Option<Cause> {
        use io::ErrorKind as K;
        Some(match kind {
            K::ConnectionRefused => Cause::Refused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Cause::Reset,
            K::UnexpectedEof | K::NotConnected => Cause::Closed,
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => Cause::Unreachable,
            K::TimedOut => Cause::Timeout(TimeoutPhase::Connect),
            _ => return None,
        })
    }

    /// A fixed label for metrics: one of a dozen values (HTTP statuses are
    /// grouped as `http_429`, `http_4xx`, `http_5xx`).
    pub fn label(self) -> &'static str {
        match self {
            Cause::Dns => "dns",
            Cause::Refused => "refused",
            Cause::Unreachable => "unreachable",
            Cause::Tls => "tls",
            Cause::Reset => "reset",
            Cause::Closed => "closed",
            Cause::Timeout(TimeoutPhase::Connect) => "timeout_connect",
            Cause::Timeout(TimeoutPhase::FirstByte) => "timeout_first_byte",
            Cause::Timeout(TimeoutPhase::Body) => "timeout_body",
            Cause::Status(429) => "http_429",
            Cause::Status(s) if s >= 500 => "http_5xx",
            Cause::Status(_) => "http_4xx",
            Cause::Unauthorized => "unauthorized",
            Cause::Protocol => "protocol",
            Cause::RequestBody => "request_body",
            Cause::Invalid => "invalid",
            Cause::BreakerOpen => "breaker_open",
            Cause::Other => "other",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Dns => f.write_str("DNS lookup failed"),
            Cause::Refused => f.write_str("connection refused"),
            Cause::Unreachable => f.write_str("host unreachable"),
            Cause::Tls => f.write_str("TLS failure"),
            Cause::Reset => f.write_str("connection reset"),
            Cause::Closed => f.write_str("connection closed before the response was complete"),
            Cause::Timeout(phase) => write!(f, "timed out {phase}"),
            Cause::Status(s) => write!(f, "HTTP {s}"),
            Cause::Unauthorized => f.write_str("token service refused the request"),
            Cause::Protocol => f.write_str("protocol error"),
            Cause::RequestBody => f.write_str("the request body being forwarded broke off"),
            Cause::Invalid => f.write_str("invalid request"),
            Cause::BreakerOpen => f.write_str("known down (circuit breaker open), not contacted"),
            Cause::Other => f.write_str("transport failure"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{msg}")]
    struct Wrap {
        msg: &'static str,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    }

    fn wrap(msg: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Wrap {
        Wrap {
            msg,
            source: Some(Box::new(source)),
        }
    }

    #[test]
    fn io_kinds_through_a_chain() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let chain = wrap("client error (Connect)", wrap("tcp connect error", refused));
        assert_eq!(Cause::of_error(&chain), Cause::Refused);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(Cause::of_error(&wrap("body", reset)), Cause::Reset);
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(Cause::of_error(&eof), Cause::Closed);
        let unreachable = io::Error::from(io::ErrorKind::HostUnreachable);
        assert_eq!(Cause::of_error(&unreachable), Cause::Unreachable);
    }

    #[test]
    fn dns_is_named_by_the_connector() {
        let gai = io::Error::other("failed to lookup address information");
        let chain = wrap("client error (Connect)", wrap("dns error", gai));
        assert_eq!(Cause::of_error(&chain), Cause::Dns);
        assert_eq!(Cause::Dns.to_string(), "DNS lookup failed");
    }

    #[test]
    fn tls_inside_an_io_error() {
        // tokio-rustls reports a bad certificate as io::Error(InvalidData, rustls::Error).
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let chain = wrap("client error (Connect)", tls);
        assert_eq!(Cause::of_error(&chain), Cause::Tls);
    }

    #[test]
    fn unknown_is_other_and_labels_are_bounded() {
        let e = wrap("something", io::Error::other("odd"));
        assert_eq!(Cause::of_error(&e), Cause::Other);
        assert_eq!(Cause::Other.to_string(), "transport failure");
        assert_eq!(Cause::Status(503).label(), "http_5xx");
        assert_eq!(Cause::Status(429).label(), "http_429");
        assert_eq!(Cause::Status(404).label(), "http_4xx");
        assert_eq!(Cause::Timeout(TimeoutPhase::Body).label(), "timeout_body");
    }
}

//! RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code
//! to any HTTP/1.1 request message that lacks a Host header field and to any
//! request message that contains more than one Host header field line or a
//! Host header field with an invalid field value."
//!
//! Pure, so the fast path and hyper apply the same rule.

use http::{HeaderMap, Version, header};

/// Why a request's `Host` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostProblem {
    Missing,
    Repeated,
    Invalid,
}

impl HostProblem {
    pub fn message(self) -> &'static str {
        match self {
            HostProblem::Missing => "an HTTP/1.1 request must carry a Host header (RFC 9112 §3.2)",
            HostProblem::Repeated => {
                "a request must carry one Host header, not several (RFC 9112 §3.2)"
            }
            HostProblem::Invalid => "the Host header is not a valid host[:port] (RFC 9112 §3.2)",
        }
    }
}

/// Checks the `Host` header lines of a request of `version`. HTTP/1.0 may
/// omit it; HTTP/2 and 3 carry `:authority` instead (hyper puts it in the
/// URI), so only a repeated or invalid `Host` is refused there.
pub fn check_host(version: Version, headers: &HeaderMap) -> Result<(), HostProblem> {
    let mut all = headers.get_all(header::HOST).iter();
    let Some(first) = all.next() else {
        return if version == Version::HTTP_11 {
            Err(HostProblem::Missing)
        } else {
            Ok(())
        };
    };
    if all.next().is_some() {
        return Err(HostProblem::Repeated);
    }
    let value = first.as_bytes();
    // `Host = uri-host [ ":" port ]`; an empty value is allowed (a target
    // without an authority), user info and paths are not.
    if value.is_empty() {
        return Ok(());
    }
    if value.contains(&b'@')
        || value.contains(&b'/')
        || value.contains(&b'?')
        || value.contains(&b'#')
    {
        return Err(HostProblem::Invalid);
    }
    let Ok(authority) = http::uri::Authority::try_from(value) else {
        return Err(HostProblem::Invalid);
    };
    let host = authority.host();
    // The host as written (brackets of an IPv6 literal included), then
    // nothing or `:` and digits.
    let port = value.get(host.len()..).unwrap_or_default();
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if host.is_empty() || !port_ok {
        return Err(HostProblem::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(hosts: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn host_rules_per_rfc_9112() {
        use HostProblem::*;
        type Case = (Version, &'static [&'static [u8]], Result<(), HostProblem>);
        let table: &[Case] = &[
            (Version::HTTP_11, &[b"registry.example:5000"], Ok(())),
            (Version::HTTP_11, &[b"127.0.0.1"], Ok(())),
            (Version::HTTP_11, &[b"[::1]:5000"], Ok(())),
            (Version::HTTP_11, &[b""], Ok(())),
            (Version::HTTP_11, &[], Err(Missing)),
            (Version::HTTP_11, &[b"a", b"a"], Err(Repeated)),
            (Version::HTTP_11, &[b"a", b"b"], Err(Repeated)),
            (Version::HTTP_11, &[b"user@host"], Err(Invalid)),
            (Version::HTTP_11, &[b"host/path"], Err(Invalid)),
            (Version::HTTP_11, &[b"host:port"], Err(Invalid)),
            (Version::HTTP_11, &[b"a b"], Err(Invalid)),
            (Version::HTTP_11, &[b":5000"], Err(Invalid)),
            (Version::HTTP_10, &[], Ok(())),
            (Version::HTTP_10, &[b"a", b"b"], Err(Repeated)),
            (Version::HTTP_2, &[], Ok(())),
            (Version::HTTP_2, &[b"x@y"], Err(Invalid)),
        ];
        for (version, hosts, want) in table {
            assert_eq!(
                check_host(*version, &headers(hosts)),
                *want,
                "{version:?} {hosts:?}"
            );
        }
    }
}

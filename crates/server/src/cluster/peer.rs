//! The peer client: `GET` a blob from another replica's internal listener,
//! and the membership probe.
//!
//! A client of its own, apart from the upstream clients: plain HTTP/1.1 on
//! the cluster network, no proxy (an `HTTP_PROXY` meant for the internet
//! must not see internal traffic or the secret), no redirects (the secret
//! goes to the member asked, nowhere else), a 1 s connect timeout (a
//! member that does not accept within it is as good as dead: the asker
//! fills itself), connections kept alive between requests.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{StatusCode, header};
use regcache_formats::{Digest, ErrorEnvelope};

use super::{Inner, Member};

/// How long a member may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A probe's whole budget.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the owner may take to answer with headers (it may be waiting
/// for the upstream's, to start its fill).
const HEADERS_TIMEOUT: Duration = Duration::from_secs(60);

/// A blob coming from a peer, from `offset` to its end.
pub struct PeerBody {
    /// The whole blob's length.
    pub len: u64,
    /// Where `stream` starts (0 when the peer sent the whole blob).
    pub offset: u64,
    /// `len - offset` bytes; an `Err` item means the body broke off.
    pub stream: BoxStream<'static, Result<Bytes, PeerError>>,
}

impl std::fmt::Debug for PeerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerBody")
            .field("len", &self.len)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// Why a peer could not serve a blob. Display names the member and why,
/// never the secret.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cluster member {member} is not a host:port to connect to")]
    Address { member: Member },
    #[error("cluster member {member} is unreachable: {source}")]
    Unreachable {
        member: Member,
        source: reqwest::Error,
    },
    #[error("cluster member {member} sent no answer within {after:?}")]
    Timeout { member: Member, after: Duration },
    #[error("cluster member {member} answered {status}: {message}")]
    Status {
        member: Member,
        status: u16,
        message: String,
    },
    #[error("cluster member {member} sent an unusable answer: {message}")]
    BadResponse { member: Member, message: String },
    #[error("the blob from cluster member {member} broke off: {source}")]
    Body {
        member: Member,
        source: reqwest::Error,
    },
}

impl PeerError {
    pub fn member(&self) -> &Member {
        match self {
            PeerError::Address { member }
            | PeerError::Unreachable { member, .. }
            | PeerError::Timeout { member, .. }
            | PeerError::Status { member, .. }
            | PeerError::BadResponse { member, .. }
            | PeerError::Body { member, .. } => member,
        }
    }

    /// Whether the member did not answer at all (unreachable, refused,
    /// timed out): what [`super::Cluster::suspect`] is for.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            PeerError::Address { .. } | PeerError::Unreachable { .. } | PeerError::Timeout { .. }
        )
    }

    /// The `result` label of `regcache_peer_requests_total`.
    fn label(&self) -> &'static str {
        match self {
            PeerError::Address { .. }
            | PeerError::Unreachable { .. }
            | PeerError::Timeout { .. } => "unreachable",
            PeerError::Status { .. } => "status",
            PeerError::BadResponse { .. } => "bad_response",
            PeerError::Body { .. } => "body",
        }
    }
}

/// The peers' HTTP client.
pub(super) fn client() -> reqwest::Client {
    let built = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .http1_only()
        .build();
    match built {
        Ok(c) => c,
        Err(e) => {
            // Only a TLS backend that cannot start fails here; peers speak
            // plain HTTP, so the default client serves as well.
            tracing::error!(error = %e, "cannot build the peer client; using defaults");
            reqwest::Client::new()
        }
    }
}

fn url(member: &Member, path: &str) -> Result<url::Url, PeerError> {
    url::Url::parse(&format!("http://{member}{path}")).map_err(|_| PeerError::Address {
        member: member.clone(),
    })
}

/// Whether `member`'s health endpoint answers 200 within a second.
pub(super) async fn probe(inner: &Inner, member: &Member) -> bool {
    let Ok(url) = url(member, "/internal/v1/health") else {
        return false;
    };
    let req = inner
        .client
        .get(url)
        .bearer_auth(inner.settings.secret.expose())
        .timeout(PROBE_TIMEOUT);
    match req.send().await {
        Ok(r) if r.status() == StatusCode::OK => true,
        Ok(r) => {
            tracing::debug!(%member, status = r.status().as_u16(), "cluster probe refused");
            false
        }
        Err(e) => {
            tracing::debug!(%member, error = %e, "cluster probe failed");
            false
        }
    }
}

pub(super) async fn fetch_blob(
    inner: &Inner,
    member: &Member,
    upstream: &str,
    repository: &str,
    digest: &Digest,
    offset: u64,
) -> Result<PeerBody, PeerError> {
    let result = request(inner, member, upstream, repository, digest, offset).await;
    let metrics = inner.metrics.clone();
    match result {
        Ok(body) => {
            metrics.peer_request("ok");
            let stream = body.stream.map(move |item| {
                if let Err(e) = &item {
                    metrics.peer_request(e.label());
                }
                item
            });
            Ok(PeerBody {
                stream: stream.boxed(),
                ..body
            })
        }
        Err(e) => {
            metrics.peer_request(e.label());
            Err(e)
        }
    }
}

async fn request(
    inner: &Inner,
    member: &Member,
    upstream: &str,
    repository: &str,
    digest: &Digest,
    offset: u64,
) -> Result<PeerBody, PeerError> {
    let mut url = url(member, &format!("/internal/v1/blobs/{digest}"))?;
    url.query_pairs_mut()
        .append_pair("upstream", upstream)
        .append_pair("repository", repository);
    let mut req = inner
        .client
        .get(url)
        .bearer_auth(inner.settings.secret.expose());
    if offset > 0 {
        req = req.header(header::RANGE, format!("bytes={offset}-"));
    }
    let resp = match tokio::time::timeout(HEADERS_TIMEOUT, req.send()).await {
        Err(_) => {
            return Err(PeerError::Timeout {
                member: member.clone(),
                after: HEADERS_TIMEOUT,
            });
        }
        Ok(Err(source)) => {
            return Err(PeerError::Unreachable {
                member: member.clone(),
                source,
            });
        }
        Ok(Ok(r)) => r,
    };
    let bad = |message: String| PeerError::BadResponse {
        member: member.clone(),
        message,
    };
    let status = resp.status();
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (start, len) = match status {
        StatusCode::OK => (
            0,
            length.ok_or_else(|| bad("200 without a Content-Length".into()))?,
        ),
        StatusCode::PARTIAL_CONTENT => {
            let range = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range)
                .ok_or_else(|| bad("206 without a Content-Range bytes N-M/L".into()))?;
            if range.0 != offset || length != Some(range.1 - range.0) {
                return Err(bad(format!(
                    "206 for bytes {}-/{} with Content-Length {length:?}, asked from {offset}",
                    range.0, range.1
                )));
            }
            range
        }
        _ => return Err(status_error(member, resp).await),
    };
    let owned = member.clone();
    let stream = resp.bytes_stream().map(move |r| {
        r.map_err(|source| PeerError::Body {
            member: owned.clone(),
            source,
        })
    });
    Ok(PeerBody {
        len,
        offset: start,
        stream: stream.boxed(),
    })
}

/// `bytes N-M/L` → (N, L), when M is L - 1.
fn content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, len) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, len) = (
        start.parse::<u64>().ok()?,
        end.parse::<u64>().ok()?,
        len.parse::<u64>().ok()?,
    );
    (start <= end && end.checked_add(1) == Some(len)).then_some((start, len))
}

/// The error answer's first registry error message (or its status).
async fn status_error(member: &Member, resp: reqwest::Response) -> PeerError {
    let status = resp.status();
    let body = tokio::time::timeout(PROBE_TIMEOUT, resp.bytes()).await;
    let message = match body {
        Ok(Ok(b)) => ErrorEnvelope::parse(&b)
            .and_then(|e| e.errors.into_iter().next())
            .map(|e| format!("{}: {}", e.code, e.message)),
        _ => None,
    }
    .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    PeerError::Status {
        member: member.clone(),
        status: status.as_u16(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::content_range;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 5-9/10"), Some((5, 10)));
        assert_eq!(content_range("bytes 0-0/1"), Some((0, 1)));
        assert_eq!(content_range("bytes 5-8/10"), None, "not to the end");
        assert_eq!(content_range("bytes */10"), None);
        assert_eq!(content_range("items 5-9/10"), None);
    }
}

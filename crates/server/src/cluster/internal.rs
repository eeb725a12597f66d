//! The internal listener: what other replicas ask this one.
//!
//! * `GET /internal/v1/health` → 200 `{"member":"<advertise>"}` (the probe).
//! * `GET|HEAD /internal/v1/blobs/<digest>?upstream=<name>&repository=<name>`,
//!   optionally with `Range: bytes=N-` → the blob from `N` (200, or 206
//!   with `Content-Range`), streamed as [`InternalBlobs`] produces it: the
//!   owner joins or starts its one fill and the asker gets the bytes as
//!   they arrive.
//!
//! Every request must carry `Authorization: Bearer <cluster secret>`
//! (compared in constant time); without it, 401 and nothing else is looked
//! at. Answers are registry-style JSON errors; the errors of serving a
//! blob go through [`crate::rescue`], as on the registry listener. It runs
//! on [`crate::listener::serve`] (hyper, HTTP/1.1), like the admin listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use regcache_formats::reference::RepositoryName;
use regcache_formats::{Digest, ErrorCode, ErrorEnvelope, RegistryError};
use tokio::net::TcpListener;

use super::Cluster;
use crate::conn::Guard;
use crate::error::Error;
use crate::web::body::Body;
use crate::web::response::{blob_headers, error_response, json_response, range_not_satisfiable};

/// How long open internal requests may finish after shutdown.
const GRACE: Duration = Duration::from_secs(10);

/// A blob from `offset` on, as the internal endpoint serves it.
pub struct InternalBlob {
    /// The whole blob's length.
    pub len: u64,
    /// `len - offset` bytes from the requested offset; an `Err` aborts the
    /// response (the asker sees a broken body, never a short one).
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

impl std::fmt::Debug for InternalBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalBlob")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Where the internal endpoint gets blobs (the server's blob path: the
/// local cache, the shared tier, a fill joined or started).
pub trait InternalBlobs: Send + Sync + 'static {
    fn blob<'a>(
        &'a self,
        upstream: &'a str,
        repository: &'a RepositoryName,
        digest: &'a Digest,
        offset: u64,
    ) -> BoxFuture<'a, Result<InternalBlob, Error>>;
}

/// A blob source that has nothing: 503 for every blob (tests of the
/// listener itself; the server serves [`crate::handlers::peer::PeerBlobs`]).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Unwired;

#[cfg(test)]
impl InternalBlobs for Unwired {
    fn blob<'a>(
        &'a self,
        _upstream: &'a str,
        _repository: &'a RepositoryName,
        _digest: &'a Digest,
        _offset: u64,
    ) -> BoxFuture<'a, Result<InternalBlob, Error>> {
        Box::pin(async {
            Err(Error::policy(
                503,
                RegistryError::with_message(
                    ErrorCode::Unavailable,
                    "cluster blob serving not wired yet",
                ),
            ))
        })
    }
}

/// Serve the internal endpoints on `listener` until `shutdown` resolves,
/// then let open requests finish (bounded). `guard` carries the
/// connection limits (see [`crate::conn::Guard`]).
pub async fn serve_internal(
    listener: TcpListener,
    cluster: Cluster,
    blobs: Arc<dyn InternalBlobs>,
    guard: Arc<Guard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    crate::listener::serve(
        listener,
        move |req: Request<crate::conn::TrackedBody>| {
            let cluster = cluster.clone();
            let blobs = blobs.clone();
            async move { handle(&cluster, &*blobs, req).await }
        },
        None,
        None,
        guard,
        shutdown,
        GRACE,
    )
    .await;
}

/// One internal request.
pub async fn handle<B>(
    cluster: &Cluster,
    blobs: &dyn InternalBlobs,
    req: Request<B>,
) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if !authorized(cluster, req.headers()) {
        tracing::debug!(
            path = req.uri().path(),
            "internal request without the cluster secret"
        );
        return refuse(
            401,
            ErrorCode::Unauthorized,
            "internal endpoints need Authorization: Bearer <cluster secret>",
            head,
        );
    }
    let path = req.uri().path();
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    if path == "/internal/v1/health" && get {
        let body = serde_json::json!({ "member": cluster.me().0 }).to_string();
        let mut r = json_response(StatusCode::OK, Bytes::from(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return r;
    }
    if let Some(digest) = path.strip_prefix("/internal/v1/blobs/") {
        if !get {
            return refuse(405, ErrorCode::Unsupported, "only GET and HEAD", head);
        }
        return match blob(blobs, digest, req.uri().query(), req.headers(), head).await {
            Ok(r) => r,
            Err(e) => crate::rescue::rescue_at(
                e,
                head,
                crate::rescue::At {
                    route: "internal_blob",
                    repository: None,
                },
            ),
        };
    }
    refuse(
        404,
        ErrorCode::Unsupported,
        "no such internal endpoint",
        head,
    )
}

fn authorized(cluster: &Cluster, headers: &http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
    else {
        return false;
    };
    let Some((scheme, rest)) = value.split_at_checked(7) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    match std::str::from_utf8(rest) {
        Ok(token) => cluster.secret_matches(token.trim()),
        Err(_) => false,
    }
}

/// A registry error answered directly (not through the rescue: a scanner
/// on the internal port must not fill the admin page's recent errors).
fn refuse(status: u16, code: ErrorCode, message: &str, head: bool) -> Response<Body> {
    let envelope = ErrorEnvelope::single(RegistryError::with_message(code, message));
    error_response(status, &envelope, None, head)
}

async fn blob(
    blobs: &dyn InternalBlobs,
    digest: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
    head: bool,
) -> Result<Response<Body>, Error> {
    let digest = Digest::parse(digest)
        .map_err(|e| Error::client(ErrorCode::DigestInvalid, format!("{digest:?}: {e}")))?;
    let mut upstream = None;
    let mut repository = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "upstream" => upstream = Some(v.into_owned()),
            "repository" => repository = Some(v.into_owned()),
            _ => {}
        }
    }
    let upstream = upstream.filter(|u| !u.is_empty()).ok_or_else(|| {
        Error::client(
            ErrorCode::NameInvalid,
            "the upstream query parameter is required",
        )
    })?;
    let repository = repository.ok_or_else(|| {
        Error::client(
            ErrorCode::NameInvalid,
            "the repository query parameter is required",
        )
    })?;
    let repository = RepositoryName::parse(&repository)
        .map_err(|e| Error::client(e.error_code(), format!("repository {repository:?}: {e}")))?;
    let offset = match headers.get(header::RANGE) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.strip_suffix('-'))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                Error::client_status(
                    416,
                    RegistryError::with_message(
                        ErrorCode::Unknown,
                        "only Range: bytes=N- is served on the internal listener",
                    ),
                )
            })?,
    };
    let b = blobs.blob(&upstream, &repository, &digest, offset).await?;
    if offset > 0 && offset >= b.len {
        return Ok(range_not_satisfiable(b.len));
    }
    let n = b.len - offset;
    let (status, content_range) = if offset > 0 {
        (
            StatusCode::PARTIAL_CONTENT,
            Some(format!("bytes {offset}-{}/{}", b.len - 1, b.len)),
        )
    } else {
        (StatusCode::OK, None)
    };
    let body = if head {
        Body::empty()
    } else {
        Body::stream(b.body, Some(n))
    };
    tracing::debug!(%digest, %upstream, repository = repository.as_str(), offset, len = b.len, "serving a blob to a peer");
    Ok(blob_headers(status, &digest, n, content_range, body))
}

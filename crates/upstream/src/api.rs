//! The [`UpstreamApi`] trait the server programs against, and the value
//! types it returns.
//!
//! Methods return boxed futures ([`BoxFuture`]) rather than using `async fn`
//! in the trait: the trait stays dyn-compatible, so the server can hold an
//! `Arc<dyn UpstreamApi>` per configured upstream and tests can swap in a
//! `FailureUpstream` without making the whole server generic. One
//! allocation per upstream call is noise next to a network round trip.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use regcache_formats::{Digest, ErrorEnvelope};
use url::Url;

use crate::config::Credentials;
use crate::error::UpstreamError;
use crate::scope::Scope;
use crate::stats::UpstreamStats;

/// A response body as it arrives: chunks, or the error that ended it.
/// Nothing is buffered; dropping the stream closes the connection.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static>>;

/// The answer to `HEAD /v2/<repo>/manifests/<reference>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`, when sent (validated).
    pub digest: Option<Digest>,
    /// `Content-Type` without parameters.
    pub media_type: Option<String>,
    /// `Content-Length`.
    pub size: Option<u64>,
}

/// The answer to `GET /v2/<repo>/manifests/<reference>`.
///
/// The bytes are exactly what the upstream sent. They are *not* checked
/// against the digest: for a signed schema-1 manifest the digest covers the
/// canonical payload, not the bytes (spec chapter 04), so verification
/// belongs to the caller, which knows the media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestBody {
    pub bytes: Bytes,
    /// `Content-Type` without parameters.
    pub content_type: Option<String>,
    /// `Docker-Content-Digest`, when sent (validated).
    pub digest_header: Option<Digest>,
}

/// The answer to `HEAD /v2/<repo>/blobs/<digest>` (after redirects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobHead {
    /// `Content-Length`; a HEAD without it is a protocol error.
    pub size: u64,
    pub content_type: Option<String>,
    pub digest_header: Option<Digest>,
}

/// A blob download in progress. The body has not been read: `stream`
/// yields it as it arrives and ends with an error if the connection breaks,
/// stalls longer than `body_stall_timeout` or ends before `Content-Length`.
/// Nothing is retried once this value exists.
pub struct BlobBody {
    /// `200`, or `206` for a range request the upstream honoured.
    pub status: u16,
    /// `Content-Length` of this response (of the range, for `206`).
    pub len: Option<u64>,
    /// `Content-Range` of a `206` (`bytes 6-15/16`).
    pub content_range: Option<String>,
    pub content_type: Option<String>,
    pub stream: ByteStream,
}

impl fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobBody")
            .field("status", &self.status)
            .field("len", &self.len)
            .field("content_range", &self.content_range)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// A request body for [`RawRequest`].
///
/// Bytes can be sent again (after a `401`, a `307`, or for a retry); a
/// stream is sent at most once, so before sending one the client makes
/// sure it has credentials (it pings `/v2/` to learn the challenge if it
/// must), and a streamed request is never retried.
pub struct RequestBody(pub(crate) BodyInner);

pub(crate) enum BodyInner {
    Empty,
    Bytes(Bytes),
    Stream(reqwest::Body),
}

impl RequestBody {
    pub fn empty() -> Self {
        RequestBody(BodyInner::Empty)
    }

    pub fn bytes(bytes: impl Into<Bytes>) -> Self {
        RequestBody(BodyInner::Bytes(bytes.into()))
    }

    /// A streamed body (an upload chunk passed through from a client).
    /// Send `Content-Length` in the headers when it is known: some
    /// registries refuse chunked uploads. An error of `stream` fails the
    /// request with [`UpstreamError::RequestBody`], not counted as an
    /// upstream exchange.
    pub fn stream<S, E>(stream: S) -> Self
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        use futures_util::TryStreamExt as _;
        let marked = stream.map_err(|e| crate::error::BodyFailed(e.into()));
        RequestBody(BodyInner::Stream(reqwest::Body::wrap_stream(marked)))
    }

    /// True when the body can be sent more than once.
    pub fn is_replayable(&self) -> bool {
        !matches!(self.0, BodyInner::Stream(_))
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        RequestBody::empty()
    }
}

impl From<Bytes> for RequestBody {
    fn from(b: Bytes) -> Self {
        RequestBody::bytes(b)
    }
}

impl From<Vec<u8>> for RequestBody {
    fn from(b: Vec<u8>) -> Self {
        RequestBody::bytes(b)
    }
}

impl From<reqwest::Body> for RequestBody {
    fn from(b: reqwest::Body) -> Self {
        match b.as_bytes() {
            Some(bytes) => RequestBody::bytes(Bytes::copy_from_slice(bytes)),
            None => RequestBody(BodyInner::Stream(b)),
        }
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            BodyInner::Empty => f.write_str("RequestBody::Empty"),
            BodyInner::Bytes(b) => write!(f, "RequestBody::Bytes({} bytes)", b.len()),
            BodyInner::Stream(_) => f.write_str("RequestBody::Stream"),
        }
    }
}

/// A pass-through request (tags/list, _catalog, referrers, uploads,
/// manifest PUT, DELETE).
#[derive(Debug)]
pub struct RawRequest {
    pub method: Method,
    /// Absolute path on the upstream, starting with `/v2/`, with query.
    pub path_and_query: String,
    /// Headers to send. `Authorization`, `Host` and hop-by-hop headers are
    /// dropped: credentials come from [`RawRequest::identity`] only.
    pub headers: HeaderMap,
    pub body: RequestBody,
    /// May the request be retried (and is the body replayable)? Defaults to
    /// true for `GET`/`HEAD` only.
    pub idempotent: bool,
    /// Token scope; `None` infers it from method and path
    /// ([`Scope::infer`]).
    pub scope: Option<Scope>,
    /// Whose credentials it goes out with: regcache's own (the default) or
    /// the client's ([`Identity::Client`]).
    pub identity: Identity,
}

/// Whose credentials a [`RawRequest`] is sent with.
#[derive(Clone, Default)]
pub enum Identity {
    /// regcache's configured credentials, with the token dance on a `401`.
    #[default]
    Stored,
    /// The client's own `Authorization` value (or none, for an anonymous
    /// client), passed through: sent only with the first request, to the
    /// upstream's own origin, never on a redirect hop; no stored credential
    /// or token is used, and a `401` (with its `WWW-Authenticate`) is the
    /// answer, for the client to authenticate itself.
    Client(Option<HeaderValue>),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Stored => f.write_str("Stored"),
            Identity::Client(None) => f.write_str("Client(anonymous)"),
            Identity::Client(Some(_)) => f.write_str("Client(<redacted>)"),
        }
    }
}

impl RawRequest {
    pub fn new(method: Method, path_and_query: impl Into<String>) -> Self {
        let idempotent = matches!(method, Method::GET | Method::HEAD);
        RawRequest {
            method,
            path_and_query: path_and_query.into(),
            headers: HeaderMap::new(),
            body: RequestBody::empty(),
            idempotent,
            scope: None,
            identity: Identity::Stored,
        }
    }

    /// Send with the client's credentials instead of regcache's.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = identity;
        self
    }

    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    pub fn body(mut self, body: impl Into<RequestBody>) -> Self {
        self.body = body.into();
        self
    }

    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }
}

/// The upstream's answer to a [`RawRequest`], whatever its status: the
/// server relays it (rewriting `Location`/`Link`, which may name `url`'s
/// origin). Only failures without a usable HTTP answer are errors.
/// A final `401` keeps the upstream's `WWW-Authenticate`; relay that header
/// to clients only for a request sent with the client's own identity
/// ([`Identity::Client`]), which is what lets the client authenticate: to a
/// request made with regcache's credentials it names a realm that is not
/// the client's business.
pub struct RawResponse {
    /// The upstream's configured name (for errors built from this).
    pub upstream: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The URL that answered (after redirects).
    pub url: Url,
    /// `Content-Length`, if sent.
    pub content_length: Option<u64>,
    pub body: ByteStream,
}

impl fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawResponse")
            .field("upstream", &self.upstream)
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("host", &self.url.host_str())
            .field("path", &self.url.path())
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

impl RawResponse {
    /// Read the whole body, refusing more than `limit` bytes.
    pub async fn bytes(self, limit: usize) -> Result<Bytes, UpstreamError> {
        let upstream = self.upstream;
        collect_limited(self.body, limit, true)
            .await
            .map_err(|e| match e {
                Collect::TooLarge => UpstreamError::Protocol {
                    upstream,
                    detail: format!("response body over {limit} bytes"),
                },
                Collect::Failed(e) => e,
            })
    }

    /// `self` when the status is 2xx or 3xx, else a
    /// [`UpstreamError::Registry`] with the parsed error envelope.
    pub async fn error_for_status(self) -> Result<Self, UpstreamError> {
        if self.status.as_u16() < 400 {
            return Ok(self);
        }
        let status = self.status.as_u16();
        let retry_after = header_string(&self.headers, http::header::RETRY_AFTER);
        let upstream = self.upstream.clone();
        let body = match collect_limited(self.body, ERROR_BODY_LIMIT, false).await {
            Ok(b) => b,
            Err(_) => Bytes::new(),
        };
        Err(UpstreamError::Registry {
            upstream,
            status,
            envelope: ErrorEnvelope::parse(&body),
            retry_after,
        })
    }
}

/// How much of an error body we read to find the envelope.
pub(crate) const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub(crate) enum Collect {
    TooLarge,
    Failed(UpstreamError),
}

/// Collect a stream into bytes. Over `limit`: an error when `strict`, else
/// the first `limit` bytes.
pub(crate) async fn collect_limited(
    mut body: ByteStream,
    limit: usize,
    strict: bool,
) -> Result<Bytes, Collect> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Collect::Failed)?;
        if buf.len() + chunk.len() > limit {
            if strict {
                return Err(Collect::TooLarge);
            }
            let room = limit - buf.len();
            buf.extend_from_slice(&chunk[..room]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub(crate) fn header_string(headers: &HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
}

/// Operations the server needs from an upstream registry.
///
/// Implemented by [`crate::UpstreamClient`] (the real client) and by
/// `FailureUpstream` (feature `mock`). `repo` is the repository
/// name *on the upstream*; `accept` is the list of manifest media types
/// for the `Accept` header (empty: none sent).
///
/// Cancellation: dropping a returned future abandons the request (and its
/// connection); a token fetch it was running is picked up by the next
/// caller that needs the same scope.
pub trait UpstreamApi: Send + Sync + 'static {
    /// The configured name, for logs and metrics.
    fn name(&self) -> &str;

    /// `GET /v2/`, authenticating if challenged. `Ok` on `200`.
    fn ping(&self) -> BoxFuture<'_, Result<(), UpstreamError>>;

    /// `HEAD /v2/<repo>/manifests/<reference>` (tag resolution; does not
    /// count as a pull on Docker Hub).
    fn head_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
        accept: &'a [&'a str],
    ) -> BoxFuture<'a, Result<ManifestHead, UpstreamError>>;

    /// `GET /v2/<repo>/manifests/<reference>`, body read fully (bounded).
    fn get_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
        accept: &'a [&'a str],
    ) -> BoxFuture<'a, Result<ManifestBody, UpstreamError>>;

    /// `HEAD /v2/<repo>/blobs/<digest>`, following redirects.
    fn head_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<BlobHead, UpstreamError>>;

    /// `GET /v2/<repo>/blobs/<digest>`, streaming. `range` is
    /// `(first, last_inclusive)`: `Some((6, None))` sends `bytes=6-`.
    fn get_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        range: Option<(u64, Option<u64>)>,
    ) -> BoxFuture<'a, Result<BlobBody, UpstreamError>>;

    /// A pass-through request; see [`RawRequest`] and [`RawResponse`].
    fn send(&self, req: RawRequest) -> BoxFuture<'_, Result<RawResponse, UpstreamError>>;

    /// `GET /v2/<repo>/referrers/<subject>` (OCI 1.1), unfiltered; see
    /// [`crate::referrers`]. Built on [`UpstreamApi::send`], so wrappers
    /// that guard or fault `send` guard or fault this too.
    fn get_referrers<'a>(
        &'a self,
        repo: &'a str,
        subject: &'a Digest,
    ) -> BoxFuture<'a, Result<crate::referrers::ReferrersAnswer, UpstreamError>> {
        Box::pin(crate::referrers::get_referrers(self, repo, subject))
    }

    /// Request counters.
    fn stats(&self) -> UpstreamStats;

    /// This upstream acting with a client's `credentials` (`None`:
    /// anonymous) instead of its own, for `auth = "upstream"`; `None` when
    /// the implementation can't (the mocks).
    fn identity(&self, _credentials: Option<Credentials>) -> Option<Arc<dyn UpstreamApi>> {
        None
    }
}

/// The body of an `impl UpstreamApi` that forwards every method to the
/// method of the same name on `$target` (an expression of `$this`, which
/// stands for `self`), passing each returned future through `$wrap`
/// (`Box::pin` for `async fn`s, `std::convert::identity` for futures that
/// are boxed already).
///
/// Used where a type's inherent `async fn`s *are* its implementation
/// (`UpstreamClient`, the mocks): inherent methods win method resolution, so
/// `$target.ping()` on `&UpstreamClient` calls `UpstreamClient::ping`. Were an inherent
/// method missing, the call would resolve to the trait method itself and
/// rustc's `unconditional_recursion` lint (an error under `-D warnings`)
/// would say so.
macro_rules! forward_upstream_api {
    (|$this:ident| $target:expr, $wrap:path) => {
        fn name(&self) -> &str {
            let $this = self;
            $target.name()
        }
        fn ping(&self) -> ::futures_util::future::BoxFuture<'_, Result<(), $crate::UpstreamError>> {
            let $this = self;
            $wrap($target.ping())
        }
        fn head_manifest<'a>(
            &'a self,
            repo: &'a str,
            reference: &'a str,
            accept: &'a [&'a str],
        ) -> ::futures_util::future::BoxFuture<'a, Result<$crate::ManifestHead, $crate::UpstreamError>> {
            let $this = self;
            $wrap($target.head_manifest(repo, reference, accept))
        }
        fn get_manifest<'a>(
            &'a self,
            repo: &'a str,
            reference: &'a str,
            accept: &'a [&'a str],
        ) -> ::futures_util::future::BoxFuture<'a, Result<$crate::ManifestBody, $crate::UpstreamError>> {
            let $this = self;
            $wrap($target.get_manifest(repo, reference, accept))
        }
        fn head_blob<'a>(
            &'a self,
            repo: &'a str,
            digest: &'a ::regcache_formats::Digest,
        ) -> ::futures_util::future::BoxFuture<'a, Result<$crate::BlobHead, $crate::UpstreamError>> {
            let $this = self;
            $wrap($target.head_blob(repo, digest))
        }
        fn get_blob<'a>(
            &'a self,
            repo: &'a str,
            digest: &'a ::regcache_formats::Digest,
            range: Option<(u64, Option<u64>)>,
        ) -> ::futures_util::future::BoxFuture<'a, Result<$crate::BlobBody, $crate::UpstreamError>> {
            let $this = self;
            $wrap($target.get_blob(repo, digest, range))
        }
        fn send(
            &self,
            req: $crate::RawRequest,
        ) -> ::futures_util::future::BoxFuture<'_, Result<$crate::RawResponse, $crate::UpstreamError>> {
            let $this = self;
            $wrap($target.send(req))
        }
        fn stats(&self) -> $crate::UpstreamStats {
            let $this = self;
            $target.stats()
        }
    };
}
pub(crate) use forward_upstream_api;

impl<T: UpstreamApi + ?Sized> UpstreamApi for Arc<T> {
    forward_upstream_api!(|this| (**this), std::convert::identity);

    fn identity(&self, credentials: Option<Credentials>) -> Option<Arc<dyn UpstreamApi>> {
        (**self).identity(credentials)
    }
}

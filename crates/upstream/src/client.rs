//! [`UpstreamClient`]: the real registry client over reqwest + rustls.
//!
//! One request goes through three nested loops:
//!
//! 1. **retry** ([`UpstreamClient::run`]): attempts with backoff, per
//!    [`crate::RetryConfig`];
//! 2. **auth** ([`UpstreamClient::authed_exchange`]): send with the best
//!    credentials we know; on a `401` from the upstream's own origin learn
//!    the challenge, get a token (or use Basic) and send once more;
//! 3. **redirects** ([`UpstreamClient::follow`]): reqwest's own redirect handling
//!    is off; we follow up to `max_redirects` hops and attach
//!    `Authorization` only on the upstream's own origin (scheme, host and
//!    port), so a token never reaches a CDN or a signed storage URL.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderName, HeaderValue,
    LOCATION, RANGE, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, StatusCode};
use parking_lot::Mutex;
use regcache_formats::reference::{Reference, RepositoryName};
use regcache_formats::{Digest, ErrorEnvelope};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use url::Url;

use crate::api::forward_upstream_api;
use crate::api::{
    BlobBody, BlobHead, BodyInner, ByteStream, Collect, ERROR_BODY_LIMIT, Identity, ManifestBody,
    ManifestHead, RawRequest, RawResponse, UpstreamApi, collect_limited, header_string,
};
use crate::auth::{
    AuthMode, BearerRealm, Challenge, TokenCache, TokenResponse, parse_challenges, realm_trust,
};
use crate::config::{ClientConfig, Credentials, Secret};
use crate::error::{BodyFailed, TimeoutPhase, UpstreamError};
use crate::retry::{RetryAfter, RetryState, parse_retry_after, retryable_status};
use crate::scope::Scope;
use crate::stats::{Stats, UpstreamStats};

/// Largest manifest we read (distribution accepts 4 MiB on push).
pub const MAX_MANIFEST_SIZE: usize = 8 * 1024 * 1024;
/// Largest token response we read.
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// Headers never forwarded from a [`RawRequest`]: our own credentials
/// replace the client's, and hop-by-hop headers belong to the other hop.
const DROPPED_REQUEST_HEADERS: [&str; 10] = [
    "authorization",
    "proxy-authorization",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A client for one upstream registry. Cheap to clone (shared state:
/// connection pool, token cache, counters).
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Its `credentials` are where they started; [`Inner::credentials`] has
    /// the ones in use ([`UpstreamClient::set_credentials`] replaces them).
    config: ClientConfig,
    credentials: ArcSwapOption<Credentials>,
    /// `name` or `name (host:port)`: how errors and logs name the upstream.
    label: String,
    /// Scheme, host and port of the registry.
    origin: url::Origin,
    base: Url,
    http: reqwest::Client,
    tokens: TokenCache,
    mode: Mutex<AuthMode>,
    /// Shared with the identities made by [`UpstreamClient::acting_as`].
    stats: Arc<Stats>,
}

impl fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("UpstreamClient")
            .field("config", &i.config)
            .field("auth", &*i.mode.lock())
            .field("tokens", &i.tokens)
            .finish()
    }
}

/// Where a request body comes from, per attempt.
enum BodySource {
    Empty,
    Bytes(Bytes),
    /// Sent at most once; `None` after it was taken.
    Once(Mutex<Option<reqwest::Body>>),
}

impl BodySource {
    fn replayable(&self) -> bool {
        !matches!(self, BodySource::Once(_))
    }

    fn is_empty(&self) -> bool {
        matches!(self, BodySource::Empty)
    }

    /// The body for one send; `None` when a one-shot body is gone.
    fn take(&self) -> Option<reqwest::Body> {
        match self {
            BodySource::Empty => Some(reqwest::Body::from(Bytes::new())),
            BodySource::Bytes(b) => Some(reqwest::Body::from(b.clone())),
            BodySource::Once(slot) => slot.lock().take(),
        }
    }
}

/// A request ready to run (possibly several times).
struct Prepared {
    op: &'static str,
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: BodySource,
    scope: Scope,
    idempotent: bool,
    /// Whose credentials: with [`Identity::Client`], the client's header
    /// goes with the first hop only and there is no token dance.
    identity: Identity,
}

/// What `authed_exchange` sent in `Authorization`.
enum Sent {
    None,
    Basic(HeaderValue),
    Bearer(HeaderValue, Secret),
}

impl Sent {
    fn header(&self) -> Option<&HeaderValue> {
        match self {
            Sent::None => None,
            Sent::Basic(h) | Sent::Bearer(h, _) => Some(h),
        }
    }
}

impl UpstreamClient {
    /// Build a client. Fails on a URL that is not `http(s)://host[:port]`
    /// or that embeds credentials (put them in `credentials`).
    pub fn new(config: ClientConfig) -> Result<Self, UpstreamError> {
        let invalid = |detail: String| UpstreamError::InvalidRequest {
            upstream: config.name.clone(),
            detail,
        };
        let url = &config.url;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid("upstream URL must be http(s)://host[:port]".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "upstream URL must not contain credentials; configure them separately".into(),
            ));
        }
        let mut base = url.clone();
        base.set_path("/");
        base.set_query(None);
        base.set_fragment(None);
        let host_port = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        let label = if config.name.is_empty() {
            host_port
        } else if config.name == host_port {
            config.name.clone()
        } else {
            format!("{} ({host_port})", config.name)
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("regcache/", env!("CARGO_PKG_VERSION")));
        if !config.use_env_proxy {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| invalid(format!("building the HTTP client: {}", e.without_url())))?;
        Ok(UpstreamClient {
            inner: Arc::new(Inner {
                origin: base.origin(),
                base,
                label,
                http,
                tokens: TokenCache::default(),
                mode: Mutex::new(AuthMode::Unknown),
                stats: Arc::default(),
                credentials: ArcSwapOption::from(config.credentials.clone().map(Arc::new)),
                config,
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// A copy of the request counters.
    pub fn stats(&self) -> UpstreamStats {
        self.inner.stats.snapshot(&self.inner.config.name)
    }

    /// Forget every cached token.
    pub fn clear_tokens(&self) {
        self.inner.tokens.clear();
    }

    /// The credentials requests go with now (`None`: anonymous).
    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        self.inner.credentials.load_full()
    }

    /// Go on with `credentials` (a configuration reload): requests from now
    /// on use them, and the tokens fetched with the old ones are dropped.
    /// The connection pool, the learned authentication scheme and the
    /// counters stay; other clients (other upstreams, identities made with
    /// [`UpstreamClient::acting_as`]) are not touched. Returns whether they
    /// changed (unchanged credentials keep the tokens).
    pub fn set_credentials(&self, credentials: Option<Credentials>) -> bool {
        if self.credentials().as_deref() == credentials.as_ref() {
            return false;
        }
        self.inner.credentials.store(credentials.map(Arc::new));
        self.inner.tokens.clear();
        info!(upstream = %self.inner.label, "upstream credentials replaced; cached tokens dropped");
        true
    }

    /// The same upstream acting with `credentials` instead of the configured
    /// ones (`None`: anonymous), for requests made on a client's behalf. It
    /// shares the connection pool and the request counters, starts from the
    /// authentication this client has learned, and keeps tokens of its own.
    pub fn acting_as(&self, credentials: Option<Credentials>) -> UpstreamClient {
        let i = &self.inner;
        UpstreamClient {
            inner: Arc::new(Inner {
                credentials: ArcSwapOption::from(credentials.clone().map(Arc::new)),
                config: ClientConfig {
                    credentials,
                    ..i.config.clone()
                },
                label: i.label.clone(),
                origin: i.origin.clone(),
                base: i.base.clone(),
                http: i.http.clone(),
                tokens: TokenCache::default(),
                mode: Mutex::new(i.mode.lock().clone()),
                stats: i.stats.clone(),
            }),
        }
    }

    /// `GET /v2/`, authenticating if challenged: `Ok` on `200`. With
    /// credentials and a Bearer upstream this also checks that the token
    /// service accepts them.
    #[tracing::instrument(level = "debug", skip_all, fields(upstream = %self.inner.label))]
    pub async fn ping(&self) -> Result<(), UpstreamError> {
        let p = self.prepare("ping", Method::GET, "/v2/", Scope::none())?;
        self.run(&p, |resp| async move {
            let ok = resp.status() == StatusCode::OK;
            self.check(resp, true).await?;
            if ok {
                let mut mode = self.inner.mode.lock();
                if *mode == AuthMode::Unknown {
                    *mode = AuthMode::Open;
                }
            }
            Ok(())
        })
        .await
    }

    /// `HEAD /v2/<repo>/manifests/<reference>`.
    #[tracing::instrument(level = "debug", skip_all, fields(upstream = %self.inner.label, repo, reference))]
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<ManifestHead, UpstreamError> {
        let mut p = self.manifest_request("head_manifest", Method::HEAD, repo, reference)?;
        set_accept(&mut p.headers, accept);
        self.run(&p, |resp| async move {
            let resp = self.check(resp, false).await?;
            let h = resp.headers();
            Ok(ManifestHead {
                digest: self.digest_header(h)?,
                media_type: media_type(h),
                size: self.content_length(h)?,
            })
        })
        .await
    }

    /// `GET /v2/<repo>/manifests/<reference>`; the body is read fully (at
    /// most [`MAX_MANIFEST_SIZE`]) and returned byte-exact, unverified (see
    /// [`ManifestBody`]). A body that breaks off is retried like a failed
    /// request: nothing has reached the caller yet.
    #[tracing::instrument(level = "debug", skip_all, fields(upstream = %self.inner.label, repo, reference))]
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<ManifestBody, UpstreamError> {
        let mut p = self.manifest_request("get_manifest", Method::GET, repo, reference)?;
        set_accept(&mut p.headers, accept);
        self.run(&p, |resp| async move {
            let resp = self.check(resp, true).await?;
            let content_type = media_type(resp.headers());
            let digest_header = self.digest_header(resp.headers())?;
            if let Some(len) = self.content_length(resp.headers())?
                && len > MAX_MANIFEST_SIZE as u64
            {
                return Err(self.protocol(format!("manifest of {len} bytes is too large")));
            }
            let bytes = match collect_limited(self.body_stream(resp), MAX_MANIFEST_SIZE, true).await
            {
                Ok(b) => b,
                Err(Collect::TooLarge) => {
                    return Err(self.protocol("manifest body is too large".into()));
                }
                Err(Collect::Failed(e)) => return Err(e),
            };
            Ok(ManifestBody {
                bytes,
                content_type,
                digest_header,
            })
        })
        .await
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`, following redirects.
    #[tracing::instrument(level = "debug", skip_all, fields(upstream = %self.inner.label, repo, digest = %digest))]
    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<BlobHead, UpstreamError> {
        let p = self.blob_request("head_blob", Method::HEAD, repo, digest)?;
        self.run(&p, |resp| async move {
            let resp = self.check(resp, false).await?;
            let h = resp.headers();
            let size = self
                .content_length(h)?
                .ok_or_else(|| self.protocol("blob HEAD without Content-Length".into()))?;
            Ok(BlobHead {
                size,
                content_type: media_type(h),
                digest_header: self.digest_header(h)?,
            })
        })
        .await
    }

    /// `GET /v2/<repo>/blobs/<digest>`, following redirects, streaming.
    /// Retries happen only until the response headers arrive.
    #[tracing::instrument(level = "debug", skip_all, fields(upstream = %self.inner.label, repo, digest = %digest))]
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<BlobBody, UpstreamError> {
        let mut p = self.blob_request("get_blob", Method::GET, repo, digest)?;
        if let Some((first, last)) = range {
            if last.is_some_and(|l| l < first) {
                return Err(self.invalid(format!("empty range {first}-{last:?}")));
            }
            let value = match last {
                Some(last) => format!("bytes={first}-{last}"),
                None => format!("bytes={first}-"),
            };
            p.headers.insert(RANGE, header_value(&value));
        }
        self.run(&p, |resp| async move {
            let resp = self.check(resp, true).await?;
            let status = resp.status().as_u16();
            let h = resp.headers();
            let content_range = header_string(h, CONTENT_RANGE);
            if status == 206 && content_range.is_none() {
                return Err(self.protocol("206 without Content-Range".into()));
            }
            Ok(BlobBody {
                status,
                len: self.content_length(h)?,
                content_range,
                content_type: media_type(h),
                stream: self.body_stream(resp),
            })
        })
        .await
    }

    /// A pass-through request. Any HTTP status is `Ok`; see [`RawResponse`].
    #[tracing::instrument(level = "debug", skip_all, fields(upstream = %self.inner.label, method = %req.method, path = path_only(&req.path_and_query)))]
    pub async fn send(&self, req: RawRequest) -> Result<RawResponse, UpstreamError> {
        let pq = req.path_and_query.as_str();
        if !(pq == "/v2" || pq.starts_with("/v2/") || pq.starts_with("/v2?")) {
            return Err(self.invalid("path must start with /v2/".into()));
        }
        if pq
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(self.invalid("path contains whitespace or control characters".into()));
        }
        let url = self
            .inner
            .base
            .join(pq)
            .map_err(|_| self.invalid("unparsable path".into()))?;
        if url.origin() != self.inner.origin {
            return Err(self.invalid("path leaves the upstream origin".into()));
        }
        let scope = req
            .scope
            .unwrap_or_else(|| Scope::infer(&req.method, &req.path_and_query));
        let mut headers = req.headers;
        for name in DROPPED_REQUEST_HEADERS {
            headers.remove(name);
        }
        let body = match req.body.0 {
            BodyInner::Empty => BodySource::Empty,
            BodyInner::Bytes(b) => BodySource::Bytes(b),
            BodyInner::Stream(s) => BodySource::Once(Mutex::new(Some(s))),
        };
        let idempotent = req.idempotent && body.replayable();
        let p = Prepared {
            op: "send",
            method: req.method,
            url,
            headers,
            body,
            scope,
            idempotent,
            identity: req.identity,
        };
        self.run(&p, |resp| async move {
            let status = resp.status();
            let headers = resp.headers().clone();
            let url = resp.url().clone();
            let content_length = self.content_length(&headers).ok().flatten();
            Ok(RawResponse {
                upstream: self.inner.label.clone(),
                status,
                headers,
                url,
                content_length,
                body: self.body_stream(resp),
            })
        })
        .await
    }

    // ----- request building -------------------------------------------------

    fn prepare(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        scope: Scope,
    ) -> Result<Prepared, UpstreamError> {
        let url = self
            .inner
            .base
            .join(path)
            .map_err(|_| self.invalid("unparsable path".into()))?;
        Ok(Prepared {
            op,
            method,
            url,
            headers: HeaderMap::new(),
            body: BodySource::Empty,
            scope,
            idempotent: true,
            identity: Identity::Stored,
        })
    }

    fn repo_name(&self, repo: &str) -> Result<RepositoryName, UpstreamError> {
        RepositoryName::parse(repo).map_err(|e| self.invalid(format!("repository name: {e}")))
    }

    fn manifest_request(
        &self,
        op: &'static str,
        method: Method,
        repo: &str,
        reference: &str,
    ) -> Result<Prepared, UpstreamError> {
        let name = self.repo_name(repo)?;
        let reference =
            Reference::parse(reference).map_err(|e| self.invalid(format!("reference: {e}")))?;
        let path = format!("/v2/{}/manifests/{}", name.as_str(), reference.as_str());
        self.prepare(op, method, &path, Scope::pull(name.as_str()))
    }

    fn blob_request(
        &self,
        op: &'static str,
        method: Method,
        repo: &str,
        digest: &Digest,
    ) -> Result<Prepared, UpstreamError> {
        let name = self.repo_name(repo)?;
        let path = format!("/v2/{}/blobs/{}", name.as_str(), digest.as_str());
        self.prepare(op, method, &path, Scope::pull(name.as_str()))
    }

    // ----- loop 1: retries --------------------------------------------------

    /// Run `p` with retries; `finish` turns a final response into the
    /// result. Errors from `finish` (e.g. a manifest body that broke off)
    /// are retried like request errors; `finish` must therefore not hand
    /// body bytes to anyone before it returns.
    async fn run<T, F, Fut>(&self, p: &Prepared, finish: F) -> Result<T, UpstreamError>
    where
        F: Fn(reqwest::Response) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let mut retry = RetryState::new(&self.inner.config.retry);
        loop {
            let attempt = retry.begin_attempt();
            let outcome = match self.authed_exchange(p).await {
                Ok(resp)
                    if p.idempotent && p.body.replayable() && retryable_status(resp.status()) =>
                {
                    let status = resp.status().as_u16();
                    if let Some(delay) = retry.next_delay(parse_retry_after(resp.headers())) {
                        info!(
                            upstream = %self.inner.label,
                            op = p.op,
                            status,
                            attempt,
                            delay_ms = delay.as_millis() as u64,
                            "upstream answered a retryable status, retrying"
                        );
                        drop(resp);
                        self.inner.stats.retry();
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    finish(resp).await
                }
                Ok(resp) => finish(resp).await,
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) if self.retryable_error(p, &e) => {
                    match retry.next_delay(RetryAfter::Absent) {
                        Some(delay) => {
                            info!(
                                upstream = %self.inner.label,
                                op = p.op,
                                attempt,
                                delay_ms = delay.as_millis() as u64,
                                error = %e,
                                "upstream request failed, retrying"
                            );
                            self.inner.stats.retry();
                            tokio::time::sleep(delay).await;
                        }
                        None => return Err(e),
                    }
                }
                other => return other,
            }
        }
    }

    fn retryable_error(&self, p: &Prepared, e: &UpstreamError) -> bool {
        if !p.body.replayable() {
            return false;
        }
        if e.is_connect_failure() {
            return true;
        }
        p.idempotent
            && matches!(
                e,
                UpstreamError::Transport { .. } | UpstreamError::Timeout { .. }
            )
    }

    // ----- loop 2: authentication -------------------------------------------

    async fn authed_exchange(&self, p: &Prepared) -> Result<reqwest::Response, UpstreamError> {
        if let Identity::Client(auth) = &p.identity {
            // Pass-through: the client's credentials or none; its 401 is the answer.
            return self.follow(p, auth.as_ref()).await;
        }
        if !p.body.replayable() && self.mode() == AuthMode::Unknown {
            // A streamed body can't be sent twice: learn the challenge first.
            self.discover().await?;
        }
        let sent = self.authorization(&p.scope).await?;
        let resp = self.follow(p, sent.header()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED
            || resp.url().origin() != self.inner.origin
            || !p.body.replayable()
        {
            return Ok(resp);
        }
        let challenges = challenges_of(resp.headers());
        let header = match self.learn(&challenges)? {
            Some((AuthMode::Bearer(realm), challenge_scope)) => {
                let stale = match &sent {
                    Sent::Bearer(_, token) => Some(token),
                    _ => None,
                };
                let request_scope = p.scope.and(&challenge_scope);
                let token = self
                    .bearer_token(&p.scope, &request_scope, &realm, stale)
                    .await?;
                bearer_header(&token)
            }
            Some((AuthMode::Basic, _)) if !matches!(sent, Sent::Basic(_)) => {
                match self.basic_header() {
                    Some(h) => h,
                    None => return Ok(resp),
                }
            }
            _ => return Ok(resp),
        };
        debug!(upstream = %self.inner.label, op = p.op, "challenged, sending again with credentials");
        drop(resp);
        self.follow(p, Some(&header)).await
    }

    fn mode(&self) -> AuthMode {
        self.inner.mode.lock().clone()
    }

    /// `GET /v2/` without credentials, to learn how the upstream
    /// authenticates before sending a body that can't be replayed.
    async fn discover(&self) -> Result<(), UpstreamError> {
        let p = self.prepare("discover", Method::GET, "/v2/", Scope::none())?;
        let resp = self.follow(&p, None).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.learn(&challenges_of(resp.headers()))?;
        } else {
            let mut mode = self.inner.mode.lock();
            if *mode == AuthMode::Unknown {
                *mode = AuthMode::Open;
            }
        }
        Ok(())
    }

    /// Record what a `401` asked for. Prefers Bearer (with a usable realm)
    /// over Basic. Returns the new mode and the challenge's scope.
    fn learn(&self, challenges: &[Challenge]) -> Result<Option<(AuthMode, Scope)>, UpstreamError> {
        let learned = if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = c
                .param("realm")
                .and_then(|r| Url::parse(r).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| self.protocol("Bearer challenge without a usable realm".into()))?;
            let mode = AuthMode::Bearer(BearerRealm {
                realm,
                service: c.param("service").map(str::to_owned),
            });
            Some((mode, c.param("scope").map(Scope::parse).unwrap_or_default()))
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            Some((AuthMode::Basic, Scope::none()))
        } else {
            None
        };
        if let Some((mode, _)) = &learned {
            let mut current = self.inner.mode.lock();
            if *current != *mode {
                debug!(upstream = %self.inner.label, auth = ?mode, "learned upstream authentication");
                *current = mode.clone();
            }
        }
        Ok(learned)
    }

    /// The `Authorization` to send first for `scope`.
    async fn authorization(&self, scope: &Scope) -> Result<Sent, UpstreamError> {
        match self.mode() {
            AuthMode::Bearer(realm) => {
                let token = self.bearer_token(scope, scope, &realm, None).await?;
                Ok(Sent::Bearer(bearer_header(&token), token))
            }
            AuthMode::Basic => Ok(self.basic_header().map_or(Sent::None, Sent::Basic)),
            AuthMode::Unknown | AuthMode::Open => Ok(match self.inner.tokens.peek(scope) {
                Some(token) => Sent::Bearer(bearer_header(&token), token),
                None => Sent::None,
            }),
        }
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        self.credentials().map(|c| {
            let raw = format!("{}:{}", c.username, c.password.expose());
            let mut h = header_value(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ));
            h.set_sensitive(true);
            h
        })
    }

    /// A token for cache key `key`, fetched for `request_scope` if the
    /// cache has none usable (or only `stale`, the one just refused).
    /// Concurrent callers for one key wait for a single fetch.
    async fn bearer_token(
        &self,
        key: &Scope,
        request_scope: &Scope,
        realm: &BearerRealm,
        stale: Option<&Secret>,
    ) -> Result<Secret, UpstreamError> {
        let slot = self.inner.tokens.slot(key);
        let mut guard = slot.lock().await;
        if let Some(t) = guard.as_ref()
            && t.usable(Instant::now())
            && stale != Some(&t.secret)
        {
            return Ok(t.secret.clone());
        }
        let token = self.fetch_token(realm, request_scope).await?;
        let secret = token.secret.clone();
        *guard = Some(token);
        Ok(secret)
    }

    /// `GET realm?service=…&scope=…` (spec §5.9). Configured credentials go
    /// along as Basic auth, but never in clear text to an `http` realm when
    /// the registry itself is `https`.
    async fn fetch_token(
        &self,
        realm: &BearerRealm,
        scope: &Scope,
    ) -> Result<crate::auth::Token, UpstreamError> {
        let mut url = realm.realm.clone();
        if realm.service.is_some() || !scope.is_empty() {
            let mut q = url.query_pairs_mut();
            if let Some(service) = &realm.service {
                q.append_pair("service", service);
            }
            for s in scope.iter() {
                q.append_pair("scope", s);
            }
        }
        let trust = realm_trust(
            &realm.realm,
            &self.inner.base,
            &self.inner.config.auth_realms,
        );
        let configured = self.credentials();
        let credentials = configured.as_ref().filter(|_| trust.is_ok());
        if let (Some(_), Err(why)) = (&configured, &trust) {
            warn!(upstream = %self.inner.label, reason = %why, "not sending credentials to the token realm; asking for an anonymous token");
        }
        debug!(
            upstream = %self.inner.label,
            realm = realm.realm.host_str().unwrap_or(""),
            service = realm.service.as_deref().unwrap_or(""),
            scope = %scope,
            anonymous = credentials.is_none(),
            "fetching token"
        );
        let mut req = reqwest::Request::new(Method::GET, url);
        if credentials.is_some()
            && let Some(h) = self.basic_header()
        {
            req.headers_mut().insert(AUTHORIZATION, h);
        }
        let mut result = self.token_exchange(req, &realm.realm).await;
        if let (Err(UpstreamError::Unauthorized { detail, .. }), Some(_), Err(why)) =
            (&mut result, &configured, &trust)
        {
            detail.push_str(&format!("; credentials were not sent: {why}"));
        }
        self.inner.stats.token_request(result.is_ok());
        if let Err(e) = &result {
            warn!(upstream = %self.inner.label, error = %e, "token request failed");
        }
        result
    }

    async fn token_exchange(
        &self,
        req: reqwest::Request,
        realm: &Url,
    ) -> Result<crate::auth::Token, UpstreamError> {
        let first_byte = self.inner.config.first_byte_timeout;
        let resp = match tokio::time::timeout(first_byte, self.inner.http.execute(req)).await {
            Err(_) => return Err(self.timeout(TimeoutPhase::FirstByte)),
            Ok(Err(e)) => return Err(UpstreamError::from_reqwest(&self.inner.label, e, false)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let received = Instant::now();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(UpstreamError::Unauthorized {
                upstream: self.inner.label.clone(),
                detail: format!(
                    "HTTP {} from {}",
                    status.as_u16(),
                    realm.host_str().unwrap_or("")
                ),
            });
        }
        if !status.is_success() {
            return Err(self.registry_error(resp, true).await);
        }
        let body = match collect_limited(self.body_stream(resp), MAX_TOKEN_RESPONSE, true).await {
            Ok(b) => b,
            Err(Collect::TooLarge) => return Err(self.protocol("token response too large".into())),
            Err(Collect::Failed(e)) => return Err(e),
        };
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(|t| t.into_token(received, time::OffsetDateTime::now_utc()))
            .ok_or_else(|| self.protocol("token response without a token".into()))
    }

    // ----- loop 3: redirects ------------------------------------------------

    async fn follow(
        &self,
        p: &Prepared,
        auth: Option<&HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut url = p.url.clone();
        let mut method = p.method.clone();
        let mut with_body = !p.body.is_empty();
        let max = self.inner.config.max_redirects;
        for hop in 0..=max {
            // A client's own credentials never follow a redirect, not even
            // to the same origin; regcache's go to its own origin only.
            let own = url.origin() == self.inner.origin
                && (hop == 0 || matches!(p.identity, Identity::Stored));
            let mut req = reqwest::Request::new(method.clone(), url.clone());
            *req.headers_mut() = p.headers.clone();
            if own && let Some(a) = auth {
                req.headers_mut().insert(AUTHORIZATION, a.clone());
            }
            if with_body {
                match p.body.take() {
                    Some(b) => *req.body_mut() = Some(b),
                    None => {
                        return Err(self.redirect("a streamed request body cannot be sent twice"));
                    }
                }
            } else {
                req.headers_mut().remove(CONTENT_LENGTH);
                req.headers_mut().remove(CONTENT_TYPE);
            }
            let resp = self.exchange(req).await?;
            let status = resp.status();
            if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let Some(location) = resp.headers().get(LOCATION) else {
                return Err(self.redirect("redirect without Location"));
            };
            let next = location
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| self.redirect("redirect to an unusable Location"))?;
            if hop == max {
                return Err(self.redirect(&format!("more than {max} redirects")));
            }
            let downgrade = (status == StatusCode::SEE_OTHER && method != Method::HEAD)
                || (matches!(status.as_u16(), 301 | 302) && method == Method::POST);
            if downgrade {
                method = Method::GET;
                with_body = false;
            }
            debug!(
                upstream = %self.inner.label,
                status = status.as_u16(),
                to_host = next.host_str().unwrap_or(""),
                to_path = next.path(),
                cross_origin = next.origin() != self.inner.origin,
                "following redirect"
            );
            url = next;
        }
        Err(self.redirect(&format!("more than {max} redirects")))
    }

    /// One HTTP exchange, bounded by `first_byte_timeout`, counted.
    async fn exchange(&self, req: reqwest::Request) -> Result<reqwest::Response, UpstreamError> {
        let method = req.method().clone();
        let host = req.url().host_str().unwrap_or("").to_owned();
        let path = req.url().path().to_owned();
        let started = Instant::now();
        let timeout = self.inner.config.first_byte_timeout;
        let result = match tokio::time::timeout(timeout, self.inner.http.execute(req)).await {
            Err(_) => Err(self.timeout(TimeoutPhase::FirstByte)),
            Ok(Err(e)) if BodyFailed::in_chain(&e) => {
                // The body we were forwarding broke (the client's upload):
                // not the upstream's doing, so not counted as its exchange.
                debug!(upstream = %self.inner.label, method = %method, path, "request body failed while forwarding it");
                return Err(UpstreamError::RequestBody {
                    upstream: self.inner.label.clone(),
                    source: Arc::new(e.without_url()),
                });
            }
            Ok(Err(e)) => Err(UpstreamError::from_reqwest(&self.inner.label, e, false)),
            Ok(Ok(resp)) => Ok(resp),
        };
        let status = result.as_ref().map_or(0, |r| r.status().as_u16());
        self.inner.stats.record(&method, status);
        self.inner
            .stats
            .duration(&method, status, started.elapsed());
        if let Err(e) = &result {
            let cause = e.cause();
            self.inner.stats.failure(cause);
            // Every failed exchange, retried or not, with what failed and
            // the whole chain (a transport error's Display is only its cause).
            macro_rules! failed {
                ($lvl:expr) => {
                    tracing::event!(
                        $lvl,
                        upstream = %self.inner.label,
                        method = %method,
                        host,
                        path,
                        cause = %cause.label(),
                        error.chain = %crate::error::chain(e),
                        "upstream request failed"
                    )
                };
            }
            if self.inner.config.quiet_failures {
                failed!(tracing::Level::DEBUG);
            } else {
                failed!(tracing::Level::WARN);
            }
        }
        debug!(
            upstream = %self.inner.label,
            method = %method,
            host,
            path,
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "upstream exchange"
        );
        result
    }

    // ----- responses --------------------------------------------------------

    /// `resp` if 2xx, else the registry error (envelope read from the body
    /// when `read_body`).
    async fn check(
        &self,
        resp: reqwest::Response,
        read_body: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.registry_error(resp, read_body).await)
    }

    async fn registry_error(&self, resp: reqwest::Response, read_body: bool) -> UpstreamError {
        let status = resp.status().as_u16();
        let retry_after = header_string(resp.headers(), http::header::RETRY_AFTER);
        let envelope = if read_body {
            match collect_limited(self.body_stream(resp), ERROR_BODY_LIMIT, false).await {
                Ok(body) => ErrorEnvelope::parse(&body),
                Err(_) => None,
            }
        } else {
            None
        };
        UpstreamError::Registry {
            upstream: self.inner.label.clone(),
            status,
            envelope,
            retry_after,
        }
    }

    /// The body as a [`ByteStream`] that ends right after its first error
    /// (reqwest may keep yielding after a read timeout; a consumer that
    /// drains to the end must not hang on a dead connection).
    ///
    /// A pause longer than `body_stall_timeout` between two chunks ends it
    /// with [`UpstreamError::Timeout`] in phase `Body` (timed here rather than
    /// by reqwest's `read_timeout`, which also bounds the wait for headers).
    fn body_stream(&self, resp: reqwest::Response) -> ByteStream {
        let label = self.inner.label.clone();
        let label_for_log = label.clone();
        let stats = self.inner.stats.clone();
        let stall = self.inner.config.body_stall_timeout;
        let stalled = self.timeout(TimeoutPhase::Body);
        let inner = resp
            .bytes_stream()
            .map_err(move |e| UpstreamError::from_reqwest(&label, e, true));
        let timed = futures_util::stream::unfold(
            (Box::pin(inner), stalled),
            move |(mut inner, stalled)| async move {
                match tokio::time::timeout(stall, inner.next()).await {
                    Ok(Some(item)) => Some((item, (inner, stalled))),
                    Ok(None) => None,
                    Err(_) => Some((Err(stalled.clone()), (inner, stalled))),
                }
            },
        );
        Box::pin(timed.scan(false, move |failed, item| {
            let out = if *failed {
                None
            } else {
                if let Err(e) = &item {
                    *failed = true;
                    let cause = e.cause();
                    stats.failure(cause);
                    warn!(
                        upstream = %label_for_log,
                        cause = %cause.label(),
                        error.chain = %crate::error::chain(e),
                        "upstream response body failed"
                    );
                }
                Some(item)
            };
            std::future::ready(out)
        }))
    }

    fn digest_header(&self, h: &HeaderMap) -> Result<Option<Digest>, UpstreamError> {
        match h.get(DOCKER_CONTENT_DIGEST) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| Digest::parse(s.trim()).ok())
                .map(Some)
                .ok_or_else(|| self.protocol("invalid Docker-Content-Digest".into())),
        }
    }

    fn content_length(&self, h: &HeaderMap) -> Result<Option<u64>, UpstreamError> {
        match h.get(CONTENT_LENGTH) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Some)
                .ok_or_else(|| self.protocol("invalid Content-Length".into())),
        }
    }

    // ----- errors -----------------------------------------------------------

    fn protocol(&self, detail: String) -> UpstreamError {
        UpstreamError::Protocol {
            upstream: self.inner.label.clone(),
            detail,
        }
    }

    fn invalid(&self, detail: String) -> UpstreamError {
        UpstreamError::InvalidRequest {
            upstream: self.inner.label.clone(),
            detail,
        }
    }

    fn redirect(&self, detail: &str) -> UpstreamError {
        UpstreamError::Redirect {
            upstream: self.inner.label.clone(),
            detail: detail.to_owned(),
        }
    }

    fn timeout(&self, phase: TimeoutPhase) -> UpstreamError {
        UpstreamError::Timeout {
            upstream: self.inner.label.clone(),
            phase,
        }
    }
}

fn challenges_of(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect()
}

fn bearer_header(token: &Secret) -> HeaderValue {
    let mut h = header_value(&format!("Bearer {}", token.expose()));
    h.set_sensitive(true);
    h
}

/// A header value from text we built; characters a header can't carry
/// (only possible through odd tokens or credentials) are dropped.
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        let cleaned: String = s
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .collect();
        HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static(""))
    })
}

fn set_accept(headers: &mut HeaderMap, accept: &[&str]) {
    if !accept.is_empty() {
        headers.insert(ACCEPT, header_value(&accept.join(", ")));
    }
}

/// `Content-Type` without parameters.
fn media_type(h: &HeaderMap) -> Option<String> {
    header_string(h, CONTENT_TYPE)
        .map(|s| s.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn path_only(pq: &str) -> &str {
    pq.split('?').next().unwrap_or(pq)
}

/// Each method is the inherent one of the same name, boxed.
impl UpstreamApi for UpstreamClient {
    forward_upstream_api!(|this| this, Box::pin);

    fn identity(&self, credentials: Option<Credentials>) -> Option<Arc<dyn UpstreamApi>> {
        Some(Arc::new(self.acting_as(credentials)))
    }
}

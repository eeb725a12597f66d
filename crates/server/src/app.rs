//! The request handlers: what regcache does for each API route.
//!
//! Manifests: tags resolve through a persisted tag index trusted for
//! `tag_ttl`, then revalidated with an upstream `HEAD` (which Docker Hub does not
//! count as a pull; for `stale_while_revalidate` past the TTL, the cached answer
//! is served while that `HEAD` runs in the background); the manifest itself is
//! fetched **by digest**, verified and
//! cached for good. Negotiation (spec 02) runs locally on the native object,
//! so one cached manifest serves every client, and Schema 1 renderings are
//! derived and cached per (repository, tag, source digest).
//!
//! Blobs: a hit is served from memory or from an open file; a miss starts one
//! upstream download per digest (a spawned task holding the store's fill
//! writer) that every client streams from as bytes arrive.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use regcache_formats::accept::{
    self, Accepts, ChildDecision, Decision, RequestKind, if_none_match_hits,
};
use regcache_formats::jws::{self, SigningKey};
use regcache_formats::manifest::{Manifest, ManifestKind};
use regcache_formats::media_type::{self, ALL_MANIFEST_TYPES};
use regcache_formats::reference::{Reference, RepositoryName, Tag};
use regcache_formats::schema1::{self, EMPTY_LAYER_BYTES, EMPTY_LAYER_DIGEST};
use regcache_formats::{Digest, ErrorCode, MediaType, RegistryError};
use regcache_store::{Begin, FillError, FillReader, MappingRecord, Source, Store, TagRecord};
use regcache_upstream::{RawRequest, RequestBody, UpstreamApi, UpstreamError};

use crate::body::{Body, ReqBody};
use crate::coalesce::Coalesce;
use crate::metrics::{Metrics, ResponseVia, UpstreamCall};
use crate::policy::{Schema1Digests, Schema1Mode, Schema2Push};
use crate::rescue::{ServeError, error_response, rescue};
use crate::routes::Route;

/// Largest config blob read into memory for a Schema 1 conversion.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest upstream listing (tags, catalog, referrers) relayed.
const MAX_LISTING_BYTES: usize = 32 << 20;
/// Chunk size for streaming files that are not sent with sendfile.
const FILE_CHUNK: usize = 1 << 20;

/// Tunables the handlers need (a subset of the validated settings).
#[derive(Clone, Debug)]
pub struct AppConfig {
    pub policies: crate::policy::Policies,
}

/// One upstream registry and its client.
pub struct Up {
    /// The registry name clients use for it (`docker.io`, `quay.io`): matched
    /// against `ns=` and path prefixes, and the key of its tags and policies.
    pub name: String,
    /// Other names that route here.
    pub aliases: Vec<String>,
    /// `host[:port]` of its URL (also routes here).
    pub host: String,
    /// One-component names get `library/` (Docker Hub only).
    pub docker_hub: bool,
    pub client: Arc<dyn UpstreamApi>,
    pub tag_ttl: Duration,
    pub stale_if_error: Duration,
    /// Past `tag_ttl` and within this, a by-tag request is answered from the
    /// cached tag at once and the revalidating HEAD runs in the background
    /// (zero: off, the request waits for the HEAD).
    pub stale_while_revalidate: Duration,
}

impl std::fmt::Debug for Up {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Up")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Up {
    fn answers_to(&self, registry: &str) -> bool {
        let r = registry.to_ascii_lowercase();
        self.name.eq_ignore_ascii_case(&r)
            || self.host.eq_ignore_ascii_case(&r)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(&r))
    }
}

/// Where one request goes: which upstream, and how the client named things.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub up: Arc<Up>,
    /// The registry path prefix the client used (`/v2/quay.io/team/app/…`).
    pub prefix: Option<String>,
    /// `library/` was added to a Docker Hub short name.
    pub short: bool,
    /// Path and query to send upstream: prefix and `ns=` removed.
    pub pq: String,
}

impl Ctx {
    /// The repository the upstream knows: Docker Hub's official images live
    /// under `library/`, so a one-component name gets that prefix (and the
    /// path sent upstream with it).
    fn upstream_name(&mut self, name: RepositoryName) -> RepositoryName {
        if !self.up.docker_hub || self.short || name.components().count() != 1 {
            return name;
        }
        match RepositoryName::parse(&format!("library/{name}")) {
            Ok(full) => {
                self.short = true;
                self.pq = self.pq.replacen("/v2/", "/v2/library/", 1);
                full
            }
            Err(_) => name,
        }
    }

    /// The repository as the client named it (what Schema 1 documents embed,
    /// spec 03 §3.8: the path the client used).
    pub fn client_name(&self, repo: &RepositoryName) -> String {
        let base = if self.short {
            repo.as_str()
                .strip_prefix("library/")
                .unwrap_or(repo.as_str())
        } else {
            repo.as_str()
        };
        match &self.prefix {
            Some(p) => format!("{p}/{base}"),
            None => base.to_owned(),
        }
    }

    /// An upstream `/v2/…` path as the client must see it (prefix put back).
    fn client_path(&self, path: &str) -> String {
        match (&self.prefix, path.strip_prefix("/v2/")) {
            (Some(p), Some(rest)) => format!("/v2/{p}/{rest}"),
            _ => path.to_owned(),
        }
    }
}

/// A Schema 1 rendering ready to serve.
#[derive(Clone, Debug)]
struct Rendered {
    digest: Digest,
    signed: Bytes,
}

/// Everything a request handler needs; shared by all connections.
pub struct App {
    cfg: AppConfig,
    store: Store,
    upstreams: Vec<Arc<Up>>,
    default_upstream: usize,
    key: SigningKey,
    pub metrics: Metrics,
    /// Parsed manifests by digest (the store keeps the bytes; parsing on every hit
    /// would cost more than the hit itself).
    parsed: moka::sync::Cache<Digest, Arc<Manifest>>,
    /// Schema 1 renderings by (repository, tag, source digest).
    converted: moka::sync::Cache<(String, String, Digest), Rendered>,
    /// Signed bodies of Schema 1 payloads served by digest (stable bytes per key).
    signed: moka::sync::Cache<Digest, Bytes>,
    /// The upstream error that ended a fill, for its followers to relay.
    fill_errors: moka::sync::Cache<Digest, UpstreamError>,
    /// Clients attached to each fill in progress (for the waiters-per-fill histogram).
    fill_clients: Arc<parking_lot::Mutex<std::collections::HashMap<Digest, u64>>>,
    /// Keyed by (upstream, repository, tag): the same name on two upstreams is two things.
    /// Shared (`Arc`) so a stale-while-revalidate task can join it after its
    /// request has been answered.
    tag_flights: Arc<Coalesce<(String, String, String), Resolved>>,
    /// Tags a stale-while-revalidate task is running for: later stale requests
    /// start none (the flight would coalesce them anyway; this keeps a burst
    /// during a slow HEAD from piling up one waiting task per request).
    tag_refreshes: Arc<parking_lot::Mutex<std::collections::HashSet<(String, String, String)>>>,
    /// Keyed by (upstream, repository, digest): the fetch asks that upstream for that
    /// repository, and another upstream (or repository) may not have it.
    manifest_flights: Coalesce<(String, String, Digest), Arc<Manifest>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("upstreams", &self.upstreams)
            .field("kid", &self.key.kid())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl App {
    pub fn new(
        cfg: AppConfig,
        store: Store,
        upstreams: Vec<Arc<Up>>,
        default_upstream: usize,
        key: SigningKey,
    ) -> Arc<App> {
        Arc::new(App {
            cfg,
            store,
            upstreams,
            default_upstream,
            key,
            metrics: Metrics::new(),
            parsed: moka::sync::Cache::builder()
                .max_capacity(64 << 20)
                .weigher(|_, m: &Arc<Manifest>| u32::try_from(m.raw.len()).unwrap_or(u32::MAX))
                .build(),
            converted: moka::sync::Cache::builder()
                .max_capacity(32 << 20)
                .weigher(|_, r: &Rendered| u32::try_from(r.signed.len()).unwrap_or(u32::MAX))
                .build(),
            signed: moka::sync::Cache::builder()
                .max_capacity(16 << 20)
                .weigher(|_, b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
                .build(),
            fill_errors: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            fill_clients: Arc::default(),
            tag_flights: Arc::new(Coalesce::new()),
            tag_refreshes: Arc::default(),
            manifest_flights: Coalesce::new(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Refresh gauges from the store and counters from the upstream client.
    pub fn refresh_metrics(&self) {
        let s = self.store.stats();
        self.metrics
            .disk_bytes
            .set(i64::try_from(s.disk.bytes_used).unwrap_or(i64::MAX));
        if let Some(m) = &s.memory {
            self.metrics
                .memory_bytes
                .set(i64::try_from(m.bytes_used).unwrap_or(i64::MAX));
        }
        let evicted = s.disk.evictions;
        let counted = self.metrics.evictions.get();
        if evicted > counted {
            self.metrics.evictions.inc_by(evicted - counted);
        }
        for u in &self.upstreams {
            let up = u.client.stats();
            for ((method, status), n) in &up.requests {
                let c = self.metrics.upstream_requests.get_or_create(&UpstreamCall {
                    upstream: u.name.clone(),
                    method: method.clone(),
                    status: status.to_string(),
                });
                let have = c.get();
                if *n > have {
                    c.inc_by(n - have);
                }
            }
        }
    }

    /// Entry point for every client request.
    pub async fn handle(self: Arc<Self>, req: Request<ReqBody>) -> Response<Body> {
        self.metrics.responded(ResponseVia::Hyper);
        self.respond_to(req).await
    }

    async fn respond_to(&self, req: Request<ReqBody>) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        let resp = match self.dispatch(req).await {
            Ok(r) => r,
            Err(e) => rescue(e, head),
        };
        with_api_version(resp)
    }

    /// Which upstream a request is for: containerd's `ns=` parameter, else a
    /// registry path prefix (`/v2/<host>/<name>/…`, a first component with a
    /// dot or a colon, or `localhost`), else the default upstream. A registry
    /// no upstream names is refused, without any outgoing connection:
    /// regcache is not an open proxy.
    pub fn route(&self, uri: &http::Uri) -> Result<Ctx, ServeError> {
        let path = uri.path();
        let mut ns = None;
        let mut kept: Vec<&str> = Vec::new();
        for piece in uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match piece.split_once('=') {
                Some(("ns", v)) => {
                    ns = Some(
                        percent_encoding::percent_decode_str(&v.replace('+', " "))
                            .decode_utf8_lossy()
                            .into_owned(),
                    )
                }
                _ => kept.push(piece),
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        if let Some(ns) = ns {
            let up = self.find_upstream(&ns)?;
            tracing::debug!(ns, upstream = %up.name, "routed by ns");
            return Ok(Ctx {
                up,
                prefix: None,
                short: false,
                pq: format!("{path}{query}"),
            });
        }
        if let Some(rest) = path.strip_prefix("/v2/")
            && let Some((first, tail)) = rest.split_once('/')
            && !tail.is_empty()
            && (first.contains('.') || first.contains(':') || first == "localhost")
            && is_registry_host(first)
        {
            let up = self.find_upstream(first)?;
            tracing::debug!(prefix = first, upstream = %up.name, "routed by path prefix");
            return Ok(Ctx {
                up,
                prefix: Some(first.to_owned()),
                short: false,
                pq: format!("/v2/{tail}{query}"),
            });
        }
        let up = self.upstreams[self.default_upstream].clone();
        Ok(Ctx {
            up,
            prefix: None,
            short: false,
            pq: format!("{path}{query}"),
        })
    }

    fn find_upstream(&self, registry: &str) -> Result<Arc<Up>, ServeError> {
        if let Some(up) = self.upstreams.iter().find(|u| u.answers_to(registry)) {
            return Ok(up.clone());
        }
        let names: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
        let shown: String = registry.chars().take(200).collect();
        Err(ServeError::Relay {
            status: 403,
            envelope: regcache_formats::ErrorEnvelope::single(
                RegistryError::with_message(
                    ErrorCode::Denied,
                    format!(
                        "regcache has no upstream for registry {shown:?} (configured: {}); it only proxies the registries its configuration names",
                        names.join(", ")
                    ),
                )
                .detail(serde_json::json!({ "registry": shown })),
            ),
            retry_after: None,
        })
    }

    async fn dispatch(&self, req: Request<ReqBody>) -> Result<Response<Body>, ServeError> {
        let mut ctx = self.route(req.uri())?;
        let path = ctx.pq.split('?').next().unwrap_or_default().to_owned();
        let route = match Route::parse(&path) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(ServeError::Relay {
                    status: 404,
                    envelope: regcache_formats::ErrorEnvelope::single(RegistryError::with_message(
                        ErrorCode::Unsupported,
                        "no such registry API endpoint",
                    )),
                    retry_after: None,
                });
            }
            Err(e) => return Err(ServeError::Client(e.0)),
        };
        let route = route.map_name(|n| ctx.upstream_name(n));
        let ctx = &ctx;
        let method = req.method().clone();
        let head = method == Method::HEAD;
        let read = method == Method::GET || head;
        match route {
            Route::Ping if read => Ok(ping(head)),
            Route::Manifest { name, reference } if read => {
                self.get_manifest(ctx, &name, &reference, req.headers(), head)
                    .await
            }
            Route::Blob { name, digest } if read => {
                self.get_blob(ctx, &name, &digest, req.headers(), head)
                    .await
            }
            Route::Tags { name } if method == Method::GET => {
                self.listing(ctx, req, ListingKind::Tags(name)).await
            }
            Route::Catalog if method == Method::GET => {
                self.listing(ctx, req, ListingKind::Catalog).await
            }
            Route::Referrers { .. } if method == Method::GET => {
                self.listing(ctx, req, ListingKind::Referrers).await
            }
            Route::Manifest { name, reference } if method == Method::PUT => {
                self.push_manifest(ctx, req, &name, &reference).await
            }
            Route::Manifest { .. } | Route::Blob { .. } if method == Method::DELETE => {
                self.pass_through(ctx, req).await
            }
            Route::UploadStart { .. } if method == Method::POST => {
                self.pass_through(ctx, req).await
            }
            Route::Upload { .. }
                if matches!(
                    method,
                    Method::GET | Method::PATCH | Method::PUT | Method::DELETE
                ) =>
            {
                self.pass_through(ctx, req).await
            }
            _ => Err(ServeError::Relay {
                status: 405,
                envelope: regcache_formats::ErrorEnvelope::single(RegistryError::with_message(
                    ErrorCode::Unsupported,
                    format!("method {method} is not supported on this endpoint"),
                )),
                retry_after: None,
            }),
        }
    }

    // ----- manifests -------------------------------------------------------

    async fn get_manifest(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        reference: &Reference,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response<Body>, ServeError> {
        let policy = self.cfg.policies.resolve(&ctx.up.name, name.as_str());
        let accepts = Accepts::from_headers(headers.get_all(header::ACCEPT).iter());
        let (stored, tag) = match reference {
            Reference::Tag(t) => (self.resolve_tag(ctx, name, t).await?, Some(t)),
            Reference::Digest(d) => (self.manifest_by_digest(ctx, name, d, None).await?, None),
        };
        if tag.is_none()
            && stored.media_type.is_schema1()
            && policy.schema1_digests == Schema1Digests::Reject
        {
            return Err(self.schema1_digest_refused(ctx, name, &stored.digest));
        }
        // distribution 2.8 compares If-None-Match with the stored object's digest,
        // before any conversion (spec 02 §2.3 quirk 7); we keep its behaviour.
        if if_none_match_hits(
            headers.get_all(header::IF_NONE_MATCH).iter(),
            &stored.digest,
        ) {
            return Ok(not_modified(&stored.digest));
        }
        let Some(tag) = tag else {
            // By digest: never rewritten (content addressing), only refused for OCI.
            return match accept::decide(RequestKind::Digest, accepts, &stored) {
                Decision::RefuseOci(msg) => Err(ServeError::msg(ErrorCode::ManifestUnknown, msg)),
                _ => self.serve_manifest(&stored, head),
            };
        };
        if policy.schema1 == Schema1Mode::Force {
            return self.force_schema1(ctx, name, tag, &stored, head).await;
        }
        // What distribution 2.8 would serve: the object itself, a refusal, or a
        // Schema 1 rewrite of it (or of its linux/amd64 entry).
        let convert_source = match accept::decide(RequestKind::Tag, accepts, &stored) {
            Decision::ServeAsIs => return self.serve_manifest(&stored, head),
            d @ (Decision::RefuseOci(_) | Decision::NoAmd64Entry) => {
                return Err(ServeError::Client(
                    d.error()
                        .unwrap_or_else(|| RegistryError::new(ErrorCode::ManifestUnknown)),
                ));
            }
            Decision::ConvertToSchema1 => stored.clone(),
            Decision::SelectChild(child) => {
                let c = self
                    .manifest_by_digest(ctx, name, &child.digest, Some(&child.media_type))
                    .await?;
                match accept::decide_child(c.handler_kind(), accepts) {
                    ChildDecision::ServeChildAsIs => return self.serve_manifest(&c, head),
                    ChildDecision::ConvertChild => c,
                }
            }
        };
        match policy.schema1 {
            Schema1Mode::Convert | Schema1Mode::Force => {
                self.serve_converted(ctx, name, tag, &convert_source, head)
                    .await
            }
            Schema1Mode::Reject => {
                Err(self.schema1_refused(ctx, name, tag, &stored, &convert_source, policy))
            }
            Schema1Mode::Passthrough => {
                self.passthrough_manifest(ctx, name, tag, headers, head)
                    .await
            }
        }
    }

    /// `force`: every by-tag pull gets Schema 1: an image manifest (Docker or
    /// OCI) is converted; a list or index contributes its linux/amd64 entry;
    /// a stored Schema 1 manifest is served as it is.
    async fn force_schema1(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        tag: &Tag,
        stored: &Arc<Manifest>,
        head: bool,
    ) -> Result<Response<Body>, ServeError> {
        let image = match &stored.kind {
            ManifestKind::Image(_) => stored.clone(),
            ManifestKind::Schema1(_) => return self.serve_manifest(stored, head),
            ManifestKind::Index(index) => {
                let Some(child) = index.linux_amd64() else {
                    return Err(ServeError::msg(
                        ErrorCode::ManifestUnknown,
                        format!(
                            "{name}:{tag} is a list with no linux/amd64 entry, so there is no Schema 1 form of it"
                        ),
                    ));
                };
                let c = self
                    .manifest_by_digest(ctx, name, &child.digest, Some(&child.media_type))
                    .await?;
                match &c.kind {
                    ManifestKind::Image(_) => c,
                    _ => return self.serve_manifest(&c, head),
                }
            }
        };
        self.serve_converted(ctx, name, tag, &image, head).await
    }

    /// `schema1 = "reject"`: 404 UNSUPPORTED naming the Schema 2 digest to use.
    fn schema1_refused(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        tag: &Tag,
        stored: &Manifest,
        source: &Manifest,
        policy: crate::policy::Policy,
    ) -> ServeError {
        let name = ctx.client_name(name);
        let mut message = format!(
            "Schema 1 manifests are not served for {name}:{tag} (policy rule #{}): the client did not accept Schema 2. Pull {name}@{} (Schema 2) with a client that accepts it",
            policy.rule.map_or(0, |r| r + 1),
            source.digest,
        );
        if stored.digest != source.digest {
            message.push_str(&format!(
                " (the linux/amd64 entry of the list {})",
                stored.digest
            ));
        }
        message.push('.');
        ServeError::Relay {
            status: 404,
            envelope: regcache_formats::ErrorEnvelope::single(
                RegistryError::with_message(ErrorCode::Unsupported, message).detail(
                    serde_json::json!({
                        "repository": name,
                        "tag": tag.as_str(),
                        "schema2_digest": source.digest.as_str(),
                    }),
                ),
            ),
            retry_after: None,
        }
    }

    /// `schema1_digests = "reject"`: Red Hat's 404 UNSUPPORTED for Schema 1 digests.
    fn schema1_digest_refused(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        digest: &Digest,
    ) -> ServeError {
        let mut message = String::from(
            "V2 schema 1 manifest digests are no longer supported for image pulls. Use the equivalent V2 schema 2 manifest digest instead.",
        );
        let mapped =
            self.store
                .mappings()
                .find_schema1(&ctx.up.name, &ctx.client_name(name), digest);
        let mut detail =
            serde_json::json!({ "repository": name.as_str(), "schema1_digest": digest.as_str() });
        if let Some(m) = &mapped {
            message.push_str(&format!(
                " The equivalent V2 schema 2 manifest digest is {} ({name}:{}).",
                m.source_digest, m.tag
            ));
            detail["schema2_digest"] = serde_json::Value::String(m.source_digest.to_string());
        }
        ServeError::Relay {
            status: 404,
            envelope: regcache_formats::ErrorEnvelope::single(
                RegistryError::with_message(ErrorCode::Unsupported, message).detail(detail),
            ),
            retry_after: None,
        }
    }

    /// `schema1 = "passthrough"`: the client's own Accept goes upstream and the
    /// upstream's answer comes back unchanged (not cached: it may be a
    /// tag-specific signed rewrite).
    async fn passthrough_manifest(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        tag: &Tag,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response<Body>, ServeError> {
        let accept: Vec<String> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        let accept: Vec<&str> = accept.iter().map(String::as_str).collect();
        let body = ctx
            .up
            .client
            .get_manifest(name.as_str(), tag.as_str(), &accept)
            .await
            .map_err(upstream_error)?;
        let len = body.bytes.len();
        let mut r = Response::new(if head {
            Body::empty()
        } else {
            Body::full(body.bytes.clone())
        });
        let h = r.headers_mut();
        if let Some(ct) = body
            .content_type
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            h.insert(header::CONTENT_TYPE, ct);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let digest = match body.digest_header {
            Some(d) => Some(d),
            None => Some(Digest::sha256_of(&body.bytes)),
        };
        if let Some(d) = &digest {
            digest_headers(h, d);
        }
        Ok(r)
    }

    /// Serve a stored manifest unchanged; a stored Schema 1 payload is served
    /// signed with regcache's key (distribution also re-signs stored Schema 1).
    fn serve_manifest(&self, m: &Manifest, head: bool) -> Result<Response<Body>, ServeError> {
        if m.media_type.is_schema1() {
            let signed = match self.signed.get(&m.digest) {
                Some(s) => s,
                None => {
                    let s = Bytes::from(
                        jws::sign(&m.raw, &self.key, unix_now() as i64)
                            .map_err(ServeError::internal)?,
                    );
                    self.signed.insert(m.digest.clone(), s.clone());
                    s
                }
            };
            return Ok(manifest_response(
                media_type::SCHEMA1_SIGNED,
                &m.digest,
                signed,
                head,
            ));
        }
        let body = Bytes::copy_from_slice(&m.raw);
        Ok(manifest_response(
            m.media_type.as_str(),
            &m.digest,
            body,
            head,
        ))
    }

    async fn serve_converted(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        tag: &Tag,
        source: &Arc<Manifest>,
        head: bool,
    ) -> Result<Response<Body>, ServeError> {
        let r = self.convert(ctx, name, tag, source).await?;
        Ok(manifest_response(
            media_type::SCHEMA1_SIGNED,
            &r.digest,
            r.signed,
            head,
        ))
    }

    /// The Schema 1 rendering of `source` under (name, tag): converted once,
    /// signed once, remembered by digest (so a later pull by that digest works)
    /// and in the mapping log.
    async fn convert(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        tag: &Tag,
        source: &Arc<Manifest>,
    ) -> Result<Rendered, ServeError> {
        let client = ctx.client_name(name);
        let key = (
            client.clone(),
            tag.as_str().to_owned(),
            source.digest.clone(),
        );
        if let Some(r) = self.converted.get(&key) {
            self.metrics.hit("schema1");
            return Ok(r);
        }
        self.metrics.miss("schema1");
        let image = source
            .as_image()
            .ok_or_else(|| ServeError::internal("conversion of a non-image manifest"))?;
        let config = self.blob_bytes(ctx, name, &image.config.digest).await?;
        let payload =
            schema1::convert_image(image, &config, &client, tag.as_str()).map_err(|e| {
                ServeError::Client(RegistryError::with_message(e.error_code(), e.to_string()))
            })?;
        let digest = schema1::canonical_digest(&payload);
        let signed = Bytes::from(
            jws::sign(&payload, &self.key, unix_now() as i64).map_err(ServeError::internal)?,
        );
        if let Err(e) = self.store.put_bytes(&digest, Bytes::from(payload)).await {
            tracing::warn!(%digest, error = %e, "could not keep the Schema 1 payload");
        }
        let record = MappingRecord {
            upstream: ctx.up.name.clone(),
            repository: client.clone(),
            tag: tag.as_str().to_owned(),
            schema1_digest: digest.clone(),
            source_digest: source.digest.clone(),
            source_media_type: source.media_type.as_str().to_owned(),
            first_seen_unix: unix_now(),
        };
        if let Err(e) = self.store.mappings().append(record) {
            tracing::warn!(%digest, error = %e, "could not record the Schema 1 mapping");
        }
        self.signed.insert(digest.clone(), signed.clone());
        let r = Rendered { digest, signed };
        self.converted.insert(key, r.clone());
        tracing::info!(repo = %client, %tag, source = %source.digest, schema1 = %r.digest, "converted to schema 1");
        Ok(r)
    }

    /// Tag → manifest, trusting the tag index for `tag_ttl`, then asking the
    /// upstream with a HEAD; coalesced per (upstream, repository, tag).
    ///
    /// Stale-while-revalidate: for `stale_while_revalidate` past the TTL the
    /// cached answer is served at once and the HEAD runs in the background
    /// (the same coalesced flight a waiting request would join); the next
    /// request after it sees the new answer. Past that window, or when the
    /// stale answer's manifest cannot be had, the request waits as before.
    async fn resolve_tag(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        tag: &Tag,
    ) -> Result<Arc<Manifest>, ServeError> {
        let up = &ctx.up.name;
        let now = unix_now();
        let known = self.store.tags().get(up, name.as_str(), tag.as_str());
        if let Some(rec) = &known {
            let age = now.saturating_sub(rec.fetched_at_unix);
            let ttl = ctx.up.tag_ttl.as_secs();
            if age < ttl {
                self.metrics.hit("tag");
                return self
                    .manifest_by_digest(ctx, name, &rec.digest, Some(&rec.media_type))
                    .await;
            }
            if age < ttl.saturating_add(ctx.up.stale_while_revalidate.as_secs()) {
                self.revalidate_in_background(ctx, name, tag, rec.clone());
                match self
                    .manifest_by_digest(ctx, name, &rec.digest, Some(&rec.media_type))
                    .await
                {
                    Ok(m) => {
                        self.metrics.stale_while_revalidate("tag");
                        return Ok(m);
                    }
                    // Evicted here and gone upstream (the tag moved and the old
                    // manifest was deleted): wait for the revalidation instead.
                    Err(e) => tracing::debug!(
                        repo = %name, %tag, digest = %rec.digest, error = ?e,
                        "stale tag's manifest unavailable; waiting for the revalidation"
                    ),
                }
            }
        }
        self.metrics.miss("tag");
        let (digest, hint) = self.revalidate(ctx, name, tag, known).await?;
        self.manifest_by_digest(ctx, name, &digest, hint.as_deref())
            .await
    }

    /// Start the tag's revalidation, or join the one running, without waiting
    /// for it (stale-while-revalidate). Its answer lands in the tag index for
    /// the next request; a failure is only logged: the stale answer has been
    /// served, and stale-if-error covers the requests after it.
    fn revalidate_in_background(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        tag: &Tag,
        known: TagRecord,
    ) {
        let key = (
            ctx.up.name.clone(),
            name.as_str().to_owned(),
            tag.as_str().to_owned(),
        );
        if !self.tag_refreshes.lock().insert(key.clone()) {
            return;
        }
        let refreshing = Refreshing {
            set: self.tag_refreshes.clone(),
            key: key.clone(),
        };
        let (up_name, repo, tag_s) = key.clone();
        let flights = self.tag_flights.clone();
        let upstream = ctx.up.client.clone();
        let store = self.store.clone();
        let parsed = self.parsed.clone();
        let stale_limit = ctx.up.tag_ttl.saturating_add(ctx.up.stale_if_error);
        tokio::spawn(async move {
            let _refreshing = refreshing;
            let (log_repo, log_tag) = (repo.clone(), tag_s.clone());
            let res = flights
                .run(key, move || async move {
                    // A revalidation that ended after this request read the
                    // record has answered already: no second HEAD.
                    if let Some(cur) = store.tags().get(&up_name, &repo, &tag_s)
                        && cur.fetched_at_unix > known.fetched_at_unix
                    {
                        return Ok(Resolved {
                            digest: cur.digest,
                            media_type: Some(cur.media_type),
                            stale: false,
                        });
                    }
                    revalidate_tag(
                        upstream,
                        store,
                        parsed,
                        up_name,
                        repo,
                        tag_s,
                        Some(known),
                        stale_limit,
                    )
                    .await
                })
                .await;
            match res {
                // revalidate_tag logged the upstream failure.
                Ok(r) if r.stale => {}
                Ok(r) => tracing::debug!(
                    repo = log_repo, tag = log_tag, digest = %r.digest,
                    "tag revalidated in the background"
                ),
                Err(e) => tracing::info!(
                    repo = log_repo, tag = log_tag, error = ?e,
                    "background tag revalidation failed"
                ),
            }
        });
    }

    async fn revalidate(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        tag: &Tag,
        known: Option<TagRecord>,
    ) -> Result<(Digest, Option<String>), ServeError> {
        let key = (
            ctx.up.name.clone(),
            name.as_str().to_owned(),
            tag.as_str().to_owned(),
        );
        let (_, repo, tag_s) = key.clone();
        let upstream = ctx.up.client.clone();
        let store = self.store.clone();
        let parsed = self.parsed.clone();
        let up_name = ctx.up.name.clone();
        let stale_limit = ctx.up.tag_ttl + ctx.up.stale_if_error;
        let res = self
            .tag_flights
            .run(key, move || {
                revalidate_tag(
                    upstream,
                    store,
                    parsed,
                    up_name,
                    repo,
                    tag_s,
                    known,
                    stale_limit,
                )
            })
            .await;
        let r = res?;
        if r.stale {
            self.metrics.stale("tag");
        }
        Ok((r.digest, r.media_type))
    }

    /// A manifest by digest: parsed cache, then store, then one verified
    /// upstream GET by digest (coalesced).
    async fn manifest_by_digest(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        digest: &Digest,
        hint: Option<&str>,
    ) -> Result<Arc<Manifest>, ServeError> {
        if let Some(m) = self.parsed.get(digest) {
            self.metrics.hit("manifest");
            return Ok(m);
        }
        if let Some(src) = self.store.get(digest).await.map_err(ServeError::internal)? {
            let bytes = src.into_bytes().await.map_err(ServeError::internal)?;
            let m = Arc::new(parse_manifest(bytes, hint, digest)?);
            self.metrics.hit("manifest");
            self.parsed.insert(digest.clone(), m.clone());
            return Ok(m);
        }
        self.metrics.miss("manifest");
        if let Some(m) = self.regenerate_schema1(ctx, name, digest).await? {
            return Ok(m);
        }
        let upstream = ctx.up.client.clone();
        let store = self.store.clone();
        let parsed = self.parsed.clone();
        let repo = name.as_str().to_owned();
        let d = digest.clone();
        let hint = hint.map(str::to_owned);
        self.manifest_flights
            .run(
                (ctx.up.name.clone(), repo.clone(), digest.clone()),
                move || async move {
                    fetch_manifest(&*upstream, &store, &parsed, &repo, &d, hint.as_deref()).await
                },
            )
            .await
    }

    /// A Schema 1 payload regcache generated but no longer holds (evicted):
    /// rebuild it from the mapping log's source manifest, which gives the same
    /// bytes (the conversion is deterministic).
    async fn regenerate_schema1(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<Arc<Manifest>>, ServeError> {
        let Some(rec) =
            self.store
                .mappings()
                .find_schema1(&ctx.up.name, &ctx.client_name(name), digest)
        else {
            return Ok(None);
        };
        let Ok(tag) = Tag::parse(&rec.tag) else {
            return Ok(None);
        };
        let source = Box::pin(self.manifest_by_digest(
            ctx,
            name,
            &rec.source_digest,
            Some(&rec.source_media_type),
        ))
        .await?;
        self.converted.invalidate(&(
            ctx.client_name(name),
            rec.tag.clone(),
            rec.source_digest.clone(),
        ));
        let r = Box::pin(self.convert(ctx, name, &tag, &source)).await?;
        if r.digest != *digest {
            return Ok(None);
        }
        let Some(src) = self.store.get(digest).await.map_err(ServeError::internal)? else {
            return Ok(None);
        };
        let bytes = src.into_bytes().await.map_err(ServeError::internal)?;
        let m = Arc::new(parse_manifest(bytes, Some(media_type::SCHEMA1), digest)?);
        self.parsed.insert(digest.clone(), m.clone());
        Ok(Some(m))
    }

    // ----- blobs -------------------------------------------------------------

    async fn get_blob(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        digest: &Digest,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response<Body>, ServeError> {
        if if_none_match_hits(headers.get_all(header::IF_NONE_MATCH).iter(), digest) {
            return Ok(not_modified(digest));
        }
        let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        if digest.as_str() == EMPTY_LAYER_DIGEST {
            let src = Source::Bytes(Bytes::from_static(&EMPTY_LAYER_BYTES));
            return serve_source(src, digest, range, head);
        }
        if head {
            return self.head_blob(ctx, name, digest, range).await;
        }
        if let Some(src) = self.store.get(digest).await.map_err(ServeError::internal)? {
            self.metrics.hit("blob");
            self.metrics.served("cache", src.len());
            return serve_source(src, digest, range, head);
        }
        match self.cold_blob(ctx, name, digest, range).await? {
            ColdBlob::Slice(slice, reader) => {
                let body = fill_body(reader, &slice);
                Ok(blob_headers(
                    slice.status,
                    digest,
                    slice.n,
                    slice.content_range,
                    body,
                ))
            }
            ColdBlob::Unsatisfiable(len) => Ok(range_not_satisfiable(len)),
        }
    }

    /// A blob the cache lacks: join or start its fill, wait for its length
    /// and decide the part to send. Counted as a miss (and as bytes from the
    /// upstream when the whole blob goes out).
    async fn cold_blob(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        digest: &Digest,
        range: Option<&str>,
    ) -> Result<ColdBlob, ServeError> {
        self.metrics.miss("blob");
        let mut reader = self.fill(ctx, name, digest).await?;
        let len = match reader.wait_len().await {
            Ok(len) => len,
            Err(e) => return Err(self.fill_failure(ctx, digest, &e)),
        };
        let Some(slice) = BlobSlice::of(range, len) else {
            return Ok(ColdBlob::Unsatisfiable(len));
        };
        if slice.status == StatusCode::OK {
            self.metrics.served("upstream", len);
        }
        Ok(ColdBlob::Slice(slice, reader))
    }

    /// `HEAD` of a blob asks the upstream (a HEAD, never a download: distribution's
    /// proxy downloads the blob twice for it). Push clients HEAD a blob in the
    /// *target* repository to decide whether to upload it, so answering from a
    /// cache filled through another repository would make them skip uploads the
    /// upstream then misses. Only when the upstream is unavailable does regcache
    /// answer from its cache.
    async fn head_blob(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        digest: &Digest,
        range: Option<&str>,
    ) -> Result<Response<Body>, ServeError> {
        let size = match ctx.up.client.head_blob(name.as_str(), digest).await {
            Ok(h) => h.size,
            Err(e) => {
                if e.is_unavailable()
                    && let Some(src) = self.store.get(digest).await.map_err(ServeError::internal)?
                {
                    self.metrics.stale("blob");
                    return serve_source(src, digest, range, true);
                }
                return Err(match upstream_error(e) {
                    ServeError::Relay { status: 404, .. } => {
                        ServeError::code(ErrorCode::BlobUnknown)
                    }
                    other => other,
                });
            }
        };
        match parse_range(range, size) {
            RangeSpec::Full => Ok(blob_headers(
                StatusCode::OK,
                digest,
                size,
                None,
                Body::empty(),
            )),
            RangeSpec::Partial(s, e) => Ok(blob_headers(
                StatusCode::PARTIAL_CONTENT,
                digest,
                e + 1 - s,
                Some(format!("bytes {s}-{e}/{size}")),
                Body::empty(),
            )),
            RangeSpec::Unsatisfiable => Ok(range_not_satisfiable(size)),
        }
    }

    /// Join or start the one upstream download of `digest`.
    async fn fill(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<FillReader, ServeError> {
        let begin = self
            .store
            .begin_fill(digest, None)
            .await
            .map_err(ServeError::internal)?;
        match begin {
            Begin::Follower(r) => {
                if let Some(n) = self.fill_clients.lock().get_mut(digest) {
                    *n += 1;
                }
                Ok(r)
            }
            Begin::Leader(mut writer) => {
                let reader = writer.subscribe();
                self.fill_clients.lock().insert(digest.clone(), 1);
                let clients = self.fill_clients.clone();
                let upstream = ctx.up.client.clone();
                let repo = name.as_str().to_owned();
                let d = digest.clone();
                let errors = self.fill_errors.clone();
                let failed = self.metrics.fills_failed.clone();
                let waiters = self.metrics.fill_waiters.clone();
                tokio::spawn(async move {
                    let _observe = FillObserver {
                        clients,
                        digest: d.clone(),
                        waiters,
                    };
                    let body = match upstream.get_blob(&repo, &d, None).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::info!(digest = %d, error = %e, "blob fill could not start");
                            errors.insert(d.clone(), e.clone());
                            failed.inc();
                            writer.abort(e.to_string());
                            return;
                        }
                    };
                    if let Some(len) = body.len
                        && writer.set_len(len).is_err()
                    {
                        failed.inc();
                        return;
                    }
                    // Chunks already received go to the file together: one trip to
                    // the blocking pool per batch, not per (often 16 KiB) chunk.
                    let mut stream = body.stream;
                    let mut ended = false;
                    while !ended {
                        let mut batch = Vec::new();
                        let mut size = 0;
                        let mut error = None;
                        match stream.next().await {
                            None => break,
                            Some(Ok(b)) => {
                                size += b.len();
                                batch.push(b);
                            }
                            Some(Err(e)) => error = Some(e),
                        }
                        while error.is_none() && size < FILL_BATCH_BYTES {
                            match stream.next().now_or_never() {
                                Some(Some(Ok(b))) => {
                                    size += b.len();
                                    batch.push(b);
                                }
                                Some(Some(Err(e))) => error = Some(e),
                                Some(None) => {
                                    ended = true;
                                    break;
                                }
                                None => break,
                            }
                        }
                        if let Err(e) = writer.write_chunks(batch).await {
                            tracing::warn!(digest = %d, error = %e, "blob fill failed");
                            failed.inc();
                            return;
                        }
                        if let Some(e) = error {
                            tracing::warn!(digest = %d, error = %e, "upstream blob body failed");
                            errors.insert(d.clone(), e.clone());
                            failed.inc();
                            writer.abort(e.to_string());
                            return;
                        }
                    }
                    match writer.commit().await {
                        Ok(c) => {
                            tracing::info!(digest = %d, bytes = c.len, "blob cached");
                        }
                        Err(e) => {
                            failed.inc();
                            tracing::warn!(digest = %d, error = %e, "blob fill rejected");
                        }
                    }
                });
                Ok(reader)
            }
        }
    }

    fn fill_failure(&self, ctx: &Ctx, digest: &Digest, e: &FillError) -> ServeError {
        if let Some(up) = self.fill_errors.get(digest) {
            return upstream_error(up);
        }
        ServeError::Unavailable {
            status: 502,
            message: format!(
                "fetching {digest} from upstream {} failed: {e}",
                ctx.up.name
            ),
        }
    }

    /// A small blob's bytes (a config), from the cache or through a fill.
    async fn blob_bytes(
        &self,
        ctx: &Ctx,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Bytes, ServeError> {
        if let Some(src) = self.store.get(digest).await.map_err(ServeError::internal)? {
            if src.len() > MAX_CONFIG_BYTES {
                return Err(ServeError::msg(
                    ErrorCode::ManifestInvalid,
                    "config blob too large",
                ));
            }
            return src.into_bytes().await.map_err(ServeError::internal);
        }
        let mut reader = self.fill(ctx, name, digest).await?;
        let len = reader
            .wait_len()
            .await
            .map_err(|e| self.fill_failure(ctx, digest, &e))?;
        if len > MAX_CONFIG_BYTES {
            return Err(ServeError::msg(
                ErrorCode::ManifestInvalid,
                "config blob too large",
            ));
        }
        let mut out = Vec::with_capacity(len as usize);
        while let Some(chunk) = reader.next().await {
            let chunk = chunk.map_err(|e| self.fill_failure(ctx, digest, &e))?;
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }

    // ----- pass-through ------------------------------------------------------

    /// `tags/list`, `_catalog` and referrers, relayed from the upstream (what
    /// regcache knows when it cannot answer). A tag list's `name` is the
    /// repository as the client named it (`quay.io/team/app` under a registry
    /// path prefix, where the upstream says `team/app`): distribution clients
    /// compare it with the name they asked for.
    ///
    /// Catalog entries under a prefix stay the upstream's names, unprefixed:
    /// they list the registry the prefix chose, as its own `/v2/_catalog`
    /// would, and the `last=` pagination parameter a client takes from them
    /// (and the upstream's `Link`) must be an upstream name.
    async fn listing(
        &self,
        ctx: &Ctx,
        req: Request<ReqBody>,
        kind: ListingKind,
    ) -> Result<Response<Body>, ServeError> {
        let pq = ctx.pq.clone();
        let mut headers = HeaderMap::new();
        if let Some(a) = req.headers().get(header::ACCEPT) {
            headers.insert(header::ACCEPT, a.clone());
        }
        let resp = ctx
            .up
            .client
            .send(
                RawRequest::new(Method::GET, pq)
                    .headers(headers)
                    .idempotent(true),
            )
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_unavailable() => return self.local_listing(ctx, &kind, e),
            Err(e) => return Err(upstream_error(e)),
        };
        if resp.status.is_server_error() || resp.status == StatusCode::TOO_MANY_REQUESTS {
            let status = resp.status.as_u16();
            let e = UpstreamError::Registry {
                upstream: ctx.up.name.clone(),
                status,
                envelope: None,
                retry_after: None,
            };
            if let Ok(local) = self.local_listing(ctx, &kind, e) {
                return Ok(local);
            }
        }
        let status = resp.status;
        let mut out_headers = HeaderMap::new();
        copy_headers(&resp.headers, &mut out_headers, &[header::CONTENT_TYPE]);
        if let Some(link) = resp.headers.get(header::LINK).and_then(|v| v.to_str().ok())
            && let Ok(v) = HeaderValue::from_str(&rewrite_link(link, ctx))
        {
            out_headers.insert(header::LINK, v);
        }
        for name in ["oci-filters-applied"] {
            if let Some(v) = resp.headers.get(name) {
                out_headers.insert(name, v.clone());
            }
        }
        let mut body = resp
            .bytes(MAX_LISTING_BYTES)
            .await
            .map_err(upstream_error)?;
        if let ListingKind::Tags(name) = &kind
            && status.is_success()
        {
            let client = ctx.client_name(name);
            if client != name.as_str()
                && let Some(renamed) = rename_tag_list(&body, &client)
            {
                body = renamed;
            }
        }
        let mut r = Response::new(Body::full(body.clone()));
        *r.status_mut() = status;
        *r.headers_mut() = out_headers;
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Ok(r)
    }

    /// What regcache itself knows, when the upstream cannot answer a listing.
    /// A tag list names the repository as the client did (see
    /// [`rename_tag_list`]); catalog entries stay upstream names, as in
    /// [`App::listing`].
    fn local_listing(
        &self,
        ctx: &Ctx,
        kind: &ListingKind,
        e: UpstreamError,
    ) -> Result<Response<Body>, ServeError> {
        let up = &ctx.up.name;
        let body = match kind {
            ListingKind::Tags(name) => {
                let mut tags: Vec<String> = self
                    .store
                    .tags()
                    .list(up, name.as_str())
                    .into_iter()
                    .map(|(t, _)| t)
                    .collect();
                if tags.is_empty() {
                    return Err(upstream_error(e));
                }
                tags.sort();
                serde_json::json!({ "name": ctx.client_name(name), "tags": tags })
            }
            ListingKind::Catalog => {
                let mut repos = self.store.tags().repositories(up);
                repos.sort();
                serde_json::json!({ "repositories": repos })
            }
            ListingKind::Referrers => return Err(upstream_error(e)),
        };
        self.metrics.stale("listing");
        let mut bytes = serde_json::to_vec(&body).map_err(ServeError::internal)?;
        bytes.push(b'\n');
        Ok(json_response(StatusCode::OK, Bytes::from(bytes)))
    }

    /// Push endpoints: forwarded to the upstream with the body streamed and
    /// `Location` rewritten to regcache.
    async fn pass_through(
        &self,
        ctx: &Ctx,
        req: Request<ReqBody>,
    ) -> Result<Response<Body>, ServeError> {
        let (resp, _) = self.forward(ctx, req).await?;
        Ok(resp)
    }

    async fn push_manifest(
        &self,
        ctx: &Ctx,
        req: Request<ReqBody>,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<Response<Body>, ServeError> {
        let (parts, body) = req.into_parts();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let bytes = read_limited(body, MAX_MANIFEST_PUT).await?;
        // What is being pushed: the declared type, else what the bytes say.
        let kind = content_type
            .as_deref()
            .and_then(MediaType::from_manifest_type)
            .or_else(|| regcache_formats::manifest::classify(&bytes, content_type.as_deref()).ok());
        let policy = self.cfg.policies.resolve(&ctx.up.name, name.as_str());
        let is_schema1 = kind.is_some_and(MediaType::is_schema1)
            || content_type.as_deref() == Some(media_type::APPLICATION_JSON);
        if policy.schema2_push == Schema2Push::Reject && !is_schema1 {
            return Err(ServeError::Relay {
                status: 400,
                envelope: regcache_formats::ErrorEnvelope::single(
                    RegistryError::with_message(
                        ErrorCode::ManifestInvalid,
                        format!(
                            "regcache accepts only Schema 1 manifests for {name} (policy rule #{}, schema2_push = \"reject\"). Docker 1.10-19.03 fall back to Schema 1 by themselves; Docker 20.10 does so only when its daemon runs with DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE=1; other clients can push with skopeo copy --format v2s1.",
                            policy.rule.map_or(0, |r| r + 1)
                        ),
                    )
                    .detail(serde_json::json!({
                        "repository": name.as_str(),
                        "media_type": kind.map_or("unknown", MediaType::as_str),
                    })),
                ),
                retry_after: None,
            });
        }
        if is_schema1 && references_empty_layer(&bytes) {
            self.ensure_empty_layer(ctx, name).await?;
        }
        let (resp, digest) = self
            .forward_parts(ctx, &parts, RequestBody::bytes(bytes.clone()))
            .await?;
        if resp.status() == StatusCode::CREATED {
            // The pushed manifest is what the tag means now: keep it and update the
            // tag index at once, so the next pull through regcache sees it
            // without waiting for the tag TTL.
            match verified_manifest(bytes, content_type.as_deref(), digest.as_ref()) {
                Ok(m) => {
                    if let Err(e) = self
                        .store
                        .put_bytes(&m.digest, Bytes::copy_from_slice(&m.raw))
                        .await
                    {
                        tracing::warn!(error = %e, "could not keep the pushed manifest");
                    }
                    if let Reference::Tag(tag) = reference {
                        let rec = TagRecord {
                            digest: m.digest.clone(),
                            media_type: m.media_type.as_str().to_owned(),
                            size: m.raw.len() as u64,
                            fetched_at_unix: unix_now(),
                        };
                        if let Err(e) =
                            self.store
                                .tags()
                                .put(&ctx.up.name, name.as_str(), tag.as_str(), rec)
                        {
                            tracing::warn!(error = %e, "could not record the pushed tag");
                        }
                    }
                    self.parsed.insert(m.digest.clone(), Arc::new(m));
                }
                Err(e) => tracing::debug!(?e, "pushed manifest not cached"),
            }
        }
        Ok(resp)
    }

    /// distribution makes sure the empty-layer blob exists before it serves a
    /// Schema 1 document that names it; regcache serves that blob itself, so a
    /// client pushing Schema 1 through it is told the blob exists and never
    /// uploads it. Upload it (32 bytes) upstream when the repository lacks it.
    async fn ensure_empty_layer(&self, ctx: &Ctx, name: &RepositoryName) -> Result<(), ServeError> {
        let Ok(empty) = Digest::parse(EMPTY_LAYER_DIGEST) else {
            return Err(ServeError::internal("empty layer digest"));
        };
        match ctx.up.client.head_blob(name.as_str(), &empty).await {
            Ok(_) => return Ok(()),
            Err(e) if e.registry_status() == Some(404) => {}
            Err(e) => return Err(upstream_error(e)),
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(media_type::OCTET_STREAM),
        );
        let resp = ctx
            .up
            .client
            .send(
                RawRequest::new(Method::POST, format!("/v2/{name}/blobs/uploads/"))
                    .headers(headers.clone()),
            )
            .await
            .map_err(upstream_error)?;
        let location = resp
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(strip_origin);
        let Some(location) = location.filter(|_| resp.status == StatusCode::ACCEPTED) else {
            return Err(ServeError::Unavailable {
                status: 502,
                message: format!(
                    "upstream {} refused an upload of the empty-layer blob ({})",
                    ctx.up.name, resp.status
                ),
            });
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = ctx
            .up
            .client
            .send(
                RawRequest::new(
                    Method::PUT,
                    format!("{location}{sep}digest={EMPTY_LAYER_DIGEST}"),
                )
                .headers(headers)
                .body(RequestBody::bytes(Bytes::from_static(&EMPTY_LAYER_BYTES))),
            )
            .await
            .map_err(upstream_error)?;
        if resp.status != StatusCode::CREATED {
            return Err(ServeError::Unavailable {
                status: 502,
                message: format!(
                    "upstream {} did not accept the empty-layer blob ({})",
                    ctx.up.name, resp.status
                ),
            });
        }
        tracing::info!(repo = %name, "uploaded the empty-layer blob upstream for a schema 1 push");
        Ok(())
    }

    async fn forward(
        &self,
        ctx: &Ctx,
        req: Request<ReqBody>,
    ) -> Result<(Response<Body>, Option<Digest>), ServeError> {
        let (parts, body) = req.into_parts();
        let stream = http_body_util::BodyStream::new(body)
            .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) });
        self.forward_parts(ctx, &parts, RequestBody::stream(stream))
            .await
    }

    /// Forward a push request upstream; `Location` comes back relative, so the
    /// client continues through regcache.
    async fn forward_parts(
        &self,
        ctx: &Ctx,
        parts: &http::request::Parts,
        body: RequestBody,
    ) -> Result<(Response<Body>, Option<Digest>), ServeError> {
        let pq = ctx.pq.clone();
        let mut headers = HeaderMap::new();
        copy_headers(
            &parts.headers,
            &mut headers,
            &[
                header::CONTENT_TYPE,
                header::CONTENT_LENGTH,
                header::CONTENT_RANGE,
                header::ACCEPT,
            ],
        );
        let resp = ctx
            .up
            .client
            .send(
                RawRequest::new(parts.method.clone(), pq)
                    .headers(headers)
                    .body(body)
                    .idempotent(false),
            )
            .await
            .map_err(upstream_error)?;
        let mut out = HeaderMap::new();
        copy_headers(
            &resp.headers,
            &mut out,
            &[header::CONTENT_TYPE, header::CONTENT_LENGTH, header::RANGE],
        );
        for name in [
            "docker-upload-uuid",
            "docker-content-digest",
            "oci-subject",
            "oci-chunk-min-length",
        ] {
            if let Some(v) = resp.headers.get(name) {
                out.insert(name, v.clone());
            }
        }
        if let Some(loc) = resp
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            && let Ok(v) = HeaderValue::from_str(&ctx.client_path(&strip_origin(loc)))
        {
            out.insert(header::LOCATION, v);
        }
        let digest = resp
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| Digest::parse(s).ok());
        let status = resp.status;
        let len = resp.content_length;
        let body = resp.body.map_err(std::io::Error::other).boxed();
        let mut r = Response::new(Body::stream(body, len));
        *r.status_mut() = status;
        *r.headers_mut() = out;
        Ok((r, digest))
    }
}

/// Records how many clients a fill served when its task ends, however it ends.
struct FillObserver {
    clients: Arc<parking_lot::Mutex<std::collections::HashMap<Digest, u64>>>,
    digest: Digest,
    waiters: prometheus_client::metrics::histogram::Histogram,
}

impl Drop for FillObserver {
    fn drop(&mut self) {
        if let Some(n) = self.clients.lock().remove(&self.digest) {
            self.waiters.observe(n as f64);
        }
    }
}

impl crate::fastpath::FastPath for App {
    fn respond(
        &self,
        req: Request<ReqBody>,
    ) -> futures_util::future::BoxFuture<'_, crate::fastpath::Reply> {
        Box::pin(async move {
            if let Some(reply) = self.fast_blob(&req).await {
                self.metrics.responded(match reply.body {
                    crate::fastpath::ReplyBody::File { .. } => ResponseVia::Sendfile,
                    crate::fastpath::ReplyBody::Fill { .. } => ResponseVia::SendfileFill,
                    _ => ResponseVia::Fast,
                });
                return reply;
            }
            self.metrics.responded(ResponseVia::Fast);
            let head = req.method() == Method::HEAD;
            crate::fastpath::Reply::from_response(self.respond_to(req).await, head)
        })
    }
}

impl App {
    /// A `GET` of a blob, answered as `get_blob` would (same headers, same
    /// range rules, same errors) but with the bytes handed to the kernel: a
    /// cached file, or the file of the fill that brings it from the upstream.
    /// `None` leaves the request to the full handlers (conditional requests,
    /// the empty layer, content in memory).
    async fn fast_blob(&self, req: &Request<ReqBody>) -> Option<crate::fastpath::Reply> {
        use crate::fastpath::{Reply, ReplyBody};
        if req.method() != Method::GET
            || req.headers().contains_key(header::IF_NONE_MATCH)
            || req.headers().contains_key(header::IF_RANGE)
        {
            return None;
        }
        let ctx = self.route(req.uri()).ok()?;
        let path = ctx.pq.split('?').next()?;
        let Ok(Some(Route::Blob { name, digest })) = Route::parse(path) else {
            return None;
        };
        if digest.as_str() == EMPTY_LAYER_DIGEST {
            return None;
        }
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok());
        let reply =
            |resp: Response<Body>| Some(Reply::from_response(with_api_version(resp), false));
        match self.store.get(&digest).await {
            Ok(Some(src)) => {
                let len = src.len();
                let Some(slice) = BlobSlice::of(range, len) else {
                    return reply(range_not_satisfiable(len));
                };
                let (start, n) = (slice.start, slice.n);
                let body = match src {
                    Source::Bytes(b) => {
                        ReplyBody::Bytes(b.slice(start as usize..(start + n) as usize))
                    }
                    Source::File { file, .. } => ReplyBody::File {
                        file,
                        offset: start,
                        len: n,
                    },
                    _ => return None,
                };
                self.metrics.hit("blob");
                self.metrics.served("cache", slice.n);
                Some(blob_reply(slice, &digest, body))
            }
            Ok(None) => {
                let mut ctx = ctx;
                let name = ctx.upstream_name(name);
                let (slice, reader) = match self.cold_blob(&ctx, &name, &digest, range).await {
                    Ok(ColdBlob::Slice(slice, reader)) => (slice, reader),
                    Ok(ColdBlob::Unsatisfiable(len)) => return reply(range_not_satisfiable(len)),
                    Err(e) => return reply(rescue(e, false)),
                };
                let body = match reader.into_file() {
                    Ok(fill) => ReplyBody::Fill {
                        fill,
                        offset: slice.start,
                        len: slice.n,
                    },
                    Err(reader) => ReplyBody::Body(fill_body(*reader, &slice)),
                };
                Some(blob_reply(slice, &digest, body))
            }
            Err(_) => None,
        }
    }
}

enum ListingKind {
    Tags(RepositoryName),
    Catalog,
    Referrers,
}

/// A `tags/list` body with `name` set to `client_name`, every other field
/// (the `tags` array above all) kept as it was, and a trailing newline kept
/// if there was one. `None` when the body is not a JSON object with a string
/// `name`: such a body is relayed as it came.
fn rename_tag_list(body: &[u8], client_name: &str) -> Option<Bytes> {
    let mut doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let name = doc.get_mut("name")?;
    if !name.is_string() {
        return None;
    }
    *name = serde_json::Value::String(client_name.to_owned());
    let mut out = serde_json::to_vec(&doc).ok()?;
    if body.ends_with(b"\n") {
        out.push(b'\n');
    }
    Some(Bytes::from(out))
}

/// Most bytes of a blob download written to its fill in one batch.
const FILL_BATCH_BYTES: usize = 1 << 20;

/// Largest manifest PUT accepted (distribution reads at most 4 MiB; OCI asks for 413 above).
const MAX_MANIFEST_PUT: usize = 4 << 20;

async fn read_limited(body: ReqBody, limit: usize) -> Result<Bytes, ServeError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ServeError::Relay {
            status: 413,
            envelope: regcache_formats::ErrorEnvelope::single(RegistryError::with_message(
                ErrorCode::ManifestInvalid,
                format!("manifest larger than {limit} bytes"),
            )),
            retry_after: None,
        }),
        Err(e) => Err(ServeError::msg(
            ErrorCode::ManifestInvalid,
            format!("reading the manifest failed: {e}"),
        )),
    }
}

/// Does a Schema 1 document list the empty-layer blob among its fsLayers?
fn references_empty_layer(bytes: &[u8]) -> bool {
    let needle = EMPTY_LAYER_DIGEST.as_bytes();
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// Marks a tag as having a background revalidation until dropped (when the
/// task ends, however it ends).
struct Refreshing {
    set: Arc<parking_lot::Mutex<std::collections::HashSet<(String, String, String)>>>,
    key: (String, String, String),
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

/// What a tag resolved to upstream (or, when the upstream is unavailable, the
/// cached answer, `stale`).
#[derive(Clone, Debug)]
struct Resolved {
    digest: Digest,
    media_type: Option<String>,
    stale: bool,
}

#[allow(clippy::too_many_arguments)]
async fn revalidate_tag(
    upstream: Arc<dyn UpstreamApi>,
    store: Store,
    parsed: moka::sync::Cache<Digest, Arc<Manifest>>,
    up_name: String,
    repo: String,
    tag: String,
    known: Option<TagRecord>,
    stale_limit: Duration,
) -> Result<Resolved, ServeError> {
    let now = unix_now();
    match upstream
        .head_manifest(&repo, &tag, &ALL_MANIFEST_TYPES)
        .await
    {
        Ok(h) => {
            let (digest, media) = match h.digest {
                Some(d) => (d, h.media_type),
                None => {
                    // No Docker-Content-Digest on HEAD: fetch by tag and hash it.
                    let body = upstream
                        .get_manifest(&repo, &tag, &ALL_MANIFEST_TYPES)
                        .await
                        .map_err(upstream_error)?;
                    let m = verified_manifest(
                        body.bytes,
                        body.content_type.as_deref(),
                        body.digest_header.as_ref(),
                    )?;
                    store
                        .put_bytes(&m.digest, Bytes::copy_from_slice(&m.raw))
                        .await
                        .map_err(ServeError::internal)?;
                    let d = m.digest.clone();
                    let media = Some(m.media_type.as_str().to_owned());
                    parsed.insert(d.clone(), Arc::new(m));
                    (d, media)
                }
            };
            let rec = TagRecord {
                digest: digest.clone(),
                media_type: media.clone().unwrap_or_default(),
                size: h.size.unwrap_or(0),
                fetched_at_unix: now,
            };
            if let Err(e) = store.tags().put(&up_name, &repo, &tag, rec) {
                tracing::warn!(error = %e, "could not record tag");
            }
            Ok(Resolved {
                digest,
                media_type: media,
                stale: false,
            })
        }
        Err(e) if e.is_unavailable() => match known {
            Some(rec) if now.saturating_sub(rec.fetched_at_unix) < stale_limit.as_secs() => {
                tracing::info!(repo, tag, error = %e, "upstream unavailable; serving the cached tag");
                Ok(Resolved {
                    digest: rec.digest,
                    media_type: None,
                    stale: true,
                })
            }
            _ => Err(upstream_error(e)),
        },
        Err(e) if e.registry_status() == Some(404) && e.envelope().is_none() => {
            // A HEAD carries no body: answer as distribution does for an unknown tag.
            Err(ServeError::Client(
                RegistryError::new(ErrorCode::ManifestUnknown)
                    .detail(serde_json::json!({ "Tag": tag })),
            ))
        }
        Err(e) => Err(upstream_error(e)),
    }
}

/// Fetch a manifest by digest, verify it, keep it.
async fn fetch_manifest(
    upstream: &dyn UpstreamApi,
    store: &Store,
    parsed: &moka::sync::Cache<Digest, Arc<Manifest>>,
    repo: &str,
    digest: &Digest,
    hint: Option<&str>,
) -> Result<Arc<Manifest>, ServeError> {
    let body = upstream
        .get_manifest(repo, digest.as_str(), &ALL_MANIFEST_TYPES)
        .await
        .map_err(upstream_error)?;
    let hint = body.content_type.as_deref().or(hint);
    let m = verified_manifest(body.bytes, hint, Some(digest))?;
    if m.digest != *digest {
        return Err(ServeError::Unavailable {
            status: 502,
            message: format!(
                "upstream {} sent a manifest for {digest} that hashes to {}",
                upstream.name(),
                m.digest
            ),
        });
    }
    store
        .put_bytes(&m.digest, Bytes::copy_from_slice(&m.raw))
        .await
        .map_err(ServeError::internal)?;
    let m = Arc::new(m);
    parsed.insert(digest.clone(), m.clone());
    Ok(m)
}

/// Parse upstream manifest bytes into what regcache stores: the exact bytes,
/// or for a signed Schema 1 manifest its canonical payload (whose sha256 is the
/// manifest's digest; regcache re-signs it when serving, as distribution does).
fn verified_manifest(
    bytes: Bytes,
    hint: Option<&str>,
    expected: Option<&Digest>,
) -> Result<Manifest, ServeError> {
    let invalid = |e: String| ServeError::Unavailable {
        status: 502,
        message: format!("upstream sent a manifest regcache cannot read: {e}"),
    };
    let m = Manifest::parse(bytes.to_vec(), hint).map_err(|e| invalid(e.to_string()))?;
    if m.media_type == MediaType::Schema1Signed {
        let (payload, d) = jws::payload_of(&m.raw).map_err(|e| invalid(e.to_string()))?;
        if let Some(exp) = expected
            && d != *exp
        {
            return Err(invalid(format!("signed payload hashes to {d}, not {exp}")));
        }
        return Manifest::parse(payload, Some(media_type::SCHEMA1))
            .map_err(|e| invalid(e.to_string()));
    }
    Ok(m)
}

fn parse_manifest(
    bytes: Bytes,
    hint: Option<&str>,
    digest: &Digest,
) -> Result<Manifest, ServeError> {
    Manifest::parse(bytes.to_vec(), hint)
        .map_err(|e| ServeError::internal(format!("cached manifest {digest} does not parse: {e}")))
}

/// Relay an upstream failure: its registry error as is, or 502/504 naming the upstream.
pub fn upstream_error(e: UpstreamError) -> ServeError {
    match &e {
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
                regcache_formats::ErrorEnvelope::single(RegistryError::with_message(
                    code,
                    e.to_string(),
                ))
            });
            ServeError::Relay {
                status: *status,
                envelope,
                retry_after: retry_after.clone(),
            }
        }
        UpstreamError::Unauthorized { .. } => ServeError::Relay {
            status: 401,
            envelope: regcache_formats::ErrorEnvelope::single(RegistryError::with_message(
                ErrorCode::Unauthorized,
                e.to_string(),
            )),
            retry_after: None,
        },
        _ => ServeError::Unavailable {
            status: e.status_hint(),
            message: e.to_string(),
        },
    }
}

// ----- responses ---------------------------------------------------------------

fn ping(head: bool) -> Response<Body> {
    json_response(StatusCode::OK, Bytes::from_static(b"{}"))
        .map(|b| if head { Body::empty() } else { b })
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type::ERROR_JSON),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

fn not_modified(digest: &Digest) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn digest_headers(h: &mut HeaderMap, digest: &Digest) {
    if let Ok(v) = HeaderValue::from_str(digest.as_str()) {
        h.insert("docker-content-digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert(header::ETAG, v);
    }
}

/// Content-Type, Content-Length, Docker-Content-Digest and Etag, identical for
/// GET and HEAD (HEAD sends no body but the same length).
fn manifest_response(
    content_type: &'static str,
    digest: &Digest,
    body: Bytes,
    head: bool,
) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(if head {
        Body::empty()
    } else {
        Body::full(body)
    });
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    digest_headers(h, digest);
    r
}

fn blob_headers(
    status: StatusCode,
    digest: &Digest,
    len: u64,
    content_range: Option<String>,
    body: Body,
) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type::OCTET_STREAM),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    digest_headers(h, digest);
    if let Some(cr) = content_range.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::CONTENT_RANGE, cr);
    }
    r
}

fn range_not_satisfiable(len: u64) -> Response<Body> {
    let envelope = regcache_formats::ErrorEnvelope::single(RegistryError::with_message(
        ErrorCode::Unknown,
        format!("requested range not satisfiable: the blob has {len} bytes"),
    ));
    let mut r = error_response(416, &envelope, None, false);
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

/// Serve cached content, whole or a single range.
fn serve_source(
    src: Source,
    digest: &Digest,
    range: Option<&str>,
    head: bool,
) -> Result<Response<Body>, ServeError> {
    let len = src.len();
    let Some(BlobSlice {
        status,
        start,
        n,
        content_range,
    }) = BlobSlice::of(range, len)
    else {
        return Ok(range_not_satisfiable(len));
    };
    if head {
        return Ok(blob_headers(
            status,
            digest,
            n,
            content_range,
            Body::empty(),
        ));
    }
    let body = match src {
        Source::Bytes(b) => {
            let (s, e) = (start as usize, (start + n) as usize);
            Body::full(b.slice(s..e))
        }
        Source::File { file, .. } => Body::stream(file_stream(file, start, n), Some(n)),
        _ => return Err(ServeError::internal("unknown cache source")),
    };
    Ok(blob_headers(status, digest, n, content_range, body))
}

/// Stream `n` bytes of `file` from `start`: one blocking reader `pread`s
/// large chunks into a channel that holds at most two (bounded memory per
/// client; a slow client holds back only its own reader).
fn file_stream(file: std::fs::File, start: u64, n: u64) -> crate::body::ChunkStream {
    use std::os::unix::fs::FileExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::task::spawn_blocking(move || {
        let mut pos = start;
        let end = start + n;
        while pos < end {
            let want = (end - pos).min(FILE_CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            let result = match file.read_at(&mut buf, pos) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "cached file shorter than its index entry",
                )),
                Ok(got) => {
                    buf.truncate(got);
                    pos += got as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = result.is_err();
            if tx.blocking_send(result).is_err() || failed {
                return;
            }
        }
    });
    let mut rx = rx;
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// `host[:port]`: dot-separated labels of letters, digits and inner hyphens,
/// an optional numeric port. Anything else (`a..b`) is a repository name,
/// which then fails name validation with NAME_INVALID.
fn is_registry_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn with_api_version(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

/// Forward a fill's chunks one step behind: a chunk goes out only once the
/// next one (or the clean end) has arrived. A response with a Content-Length is
/// complete for hyper and for the client the moment its last byte is written;
/// if that happened before the fill's digest check, a corrupt blob would reach
/// the client as a clean 200. Holding the final chunk back until the reader
/// ends cleanly (which it does only after verification) means a failed fill
/// always leaves the client short of bytes, so its transfer fails.
fn hold_last<S>(
    inner: S,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin + 'static,
{
    futures_util::stream::unfold(
        (inner, None::<Bytes>, false),
        |(mut inner, mut held, done)| async move {
            if done {
                return None;
            }
            loop {
                match inner.next().await {
                    Some(Ok(chunk)) => {
                        if chunk.is_empty() {
                            continue;
                        }
                        if let Some(prev) = held.replace(chunk) {
                            return Some((Ok(prev), (inner, held, false)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (inner, None, true))),
                    None => return held.take().map(|last| (Ok(last), (inner, None, true))),
                }
            }
        },
    )
}

/// A cold blob's fill, or the length a `Range` could not be satisfied in.
enum ColdBlob {
    Slice(BlobSlice, FillReader),
    Unsatisfiable(u64),
}

/// The part `slice` of a fill as a response body: streamed one chunk behind
/// (see [`hold_last`]) so it can only complete once the fill is verified.
fn fill_body(reader: FillReader, slice: &BlobSlice) -> Body {
    let reader = reader.range(slice.start, Some(slice.start + slice.n));
    Body::stream(
        hold_last(reader.map_err(std::io::Error::other)).boxed(),
        Some(slice.n),
    )
}

/// A fast-path blob reply: the headers `get_blob` would send, and `body`.
fn blob_reply(
    slice: BlobSlice,
    digest: &Digest,
    body: crate::fastpath::ReplyBody,
) -> crate::fastpath::Reply {
    let (parts, _) = blob_headers(
        slice.status,
        digest,
        slice.n,
        slice.content_range,
        Body::empty(),
    )
    .into_parts();
    crate::fastpath::Reply {
        status: slice.status,
        headers: parts.headers,
        body,
    }
}

/// The part of a blob a `GET` sends: the whole (200) or one `Range` (206).
struct BlobSlice {
    status: StatusCode,
    start: u64,
    n: u64,
    content_range: Option<String>,
}

impl BlobSlice {
    /// `None` when the range can't be satisfied (416).
    fn of(range: Option<&str>, len: u64) -> Option<BlobSlice> {
        Some(match parse_range(range, len) {
            RangeSpec::Full => BlobSlice {
                status: StatusCode::OK,
                start: 0,
                n: len,
                content_range: None,
            },
            RangeSpec::Partial(s, e) => BlobSlice {
                status: StatusCode::PARTIAL_CONTENT,
                start: s,
                n: e + 1 - s,
                content_range: Some(format!("bytes {s}-{e}/{len}")),
            },
            RangeSpec::Unsatisfiable => return None,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    Full,
    /// Inclusive first and last byte.
    Partial(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range; anything else (several ranges, other units,
/// garbage) is ignored and the whole blob is served, as RFC 9110 allows.
fn parse_range(h: Option<&str>, len: u64) -> RangeSpec {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last `b` bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::Full;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Partial(len.saturating_sub(n), len - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Full;
    };
    let end = if b.is_empty() {
        None
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => Some(e),
            _ => return RangeSpec::Full,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    let last = end.map_or(len - 1, |e| e.min(len - 1));
    RangeSpec::Partial(start, last)
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, names: &[header::HeaderName]) {
    for n in names {
        if let Some(v) = from.get(n) {
            to.insert(n.clone(), v.clone());
        }
    }
}

/// `http://upstream:5000/v2/x?_state=…` → `/v2/x?_state=…`: clients resolve a
/// relative `Location` against regcache, so the upload continues through it.
fn strip_origin(loc: &str) -> String {
    match url::Url::parse(loc) {
        Ok(u) => {
            let mut s = u.path().to_owned();
            if let Some(q) = u.query() {
                s.push('?');
                s.push_str(q);
            }
            s
        }
        Err(_) => loc.to_owned(),
    }
}

/// Rewrite every `<URL>` in a `Link` header to a path on regcache.
fn rewrite_link(link: &str, ctx: &Ctx) -> String {
    let mut out = String::with_capacity(link.len());
    let mut rest = link;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else {
            break;
        };
        out.push_str(&rest[..=open]);
        out.push_str(&ctx.client_path(&strip_origin(&rest[open + 1..open + close])));
        out.push('>');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_ctx(prefix: Option<&str>) -> Ctx {
        let client = regcache_upstream::Upstream::new(regcache_upstream::UpstreamConfig::new(
            "quay.io",
            url::Url::parse("http://127.0.0.1:9").unwrap(),
        ))
        .unwrap();
        Ctx {
            up: Arc::new(Up {
                name: "quay.io".into(),
                aliases: vec![],
                host: "127.0.0.1:9".into(),
                docker_hub: false,
                client: Arc::new(client),
                tag_ttl: Duration::from_secs(1),
                stale_if_error: Duration::from_secs(1),
                stale_while_revalidate: Duration::ZERO,
            }),
            prefix: prefix.map(str::to_owned),
            short: false,
            pq: String::new(),
        }
    }

    async fn two_upstream_app(dir: &std::path::Path) -> Arc<App> {
        let store = Store::open(regcache_store::StoreConfig::new(dir))
            .await
            .unwrap();
        let mk = |name: &str, host: &str, hub: bool, aliases: Vec<String>| {
            let client = regcache_upstream::Upstream::new(regcache_upstream::UpstreamConfig::new(
                name,
                url::Url::parse(&format!("http://{host}")).unwrap(),
            ))
            .unwrap();
            Arc::new(Up {
                name: name.into(),
                aliases,
                host: host.into(),
                docker_hub: hub,
                client: Arc::new(client),
                tag_ttl: Duration::from_secs(1),
                stale_if_error: Duration::from_secs(1),
                stale_while_revalidate: Duration::ZERO,
            })
        };
        App::new(
            AppConfig {
                policies: crate::policy::Policies::default(),
            },
            store,
            vec![
                mk(
                    "docker.io",
                    "127.0.0.1:9",
                    true,
                    vec!["index.docker.io".into()],
                ),
                mk("quay.io", "127.0.0.1:10", false, vec![]),
            ],
            0,
            SigningKey::generate(),
        )
    }

    #[tokio::test]
    async fn routing_by_ns_then_prefix_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let app = two_upstream_app(dir.path()).await;
        let route = |u: &str| app.route(&u.parse::<http::Uri>().unwrap());
        let c = route("/v2/team/app/manifests/1?ns=quay.io").unwrap();
        assert_eq!(
            (c.up.name.as_str(), c.pq.as_str()),
            ("quay.io", "/v2/team/app/manifests/1")
        );
        // ns wins over a path prefix; other query parameters survive, ns is dropped.
        let c = route("/v2/library/alpine/tags/list?n=2&ns=docker.io&last=a").unwrap();
        assert_eq!(c.up.name, "docker.io");
        assert_eq!(c.pq, "/v2/library/alpine/tags/list?n=2&last=a");
        let c = route("/v2/x/manifests/1?ns=index.docker.io").unwrap();
        assert_eq!(c.up.name, "docker.io");
        let c = route("/v2/x/manifests/1?ns=127.0.0.1%3A10").unwrap();
        assert_eq!(c.up.name, "quay.io", "the URL's host:port routes too");
        let c = route("/v2/quay.io/team/app/manifests/1").unwrap();
        assert_eq!(
            (c.up.name.as_str(), c.prefix.as_deref()),
            ("quay.io", Some("quay.io"))
        );
        assert_eq!(c.pq, "/v2/team/app/manifests/1");
        let c = route("/v2/team/app/manifests/1").unwrap();
        assert_eq!(
            (c.up.name.as_str(), c.prefix.as_deref()),
            ("docker.io", None)
        );
        let c = route("/v2/").unwrap();
        assert_eq!(c.up.name, "docker.io");
        for refused in [
            "/v2/ghcr.io/x/manifests/1",
            "/v2/x/manifests/1?ns=ghcr.io",
            "/v2/localhost:5000/x/manifests/1",
        ] {
            match route(refused) {
                Err(ServeError::Relay {
                    status: 403,
                    envelope,
                    ..
                }) => {
                    let e = &envelope.errors[0];
                    assert_eq!(e.code, ErrorCode::Denied);
                    assert!(
                        e.message.contains("no upstream for registry"),
                        "{}",
                        e.message
                    );
                    assert!(e.message.contains("docker.io, quay.io"), "{}", e.message);
                }
                other => panic!("{refused}: {other:?}"),
            }
        }
    }

    #[test]
    fn registry_hosts() {
        for ok in [
            "quay.io",
            "localhost:5000",
            "127.0.0.1:5000",
            "my-registry.example.com",
            "a.b",
        ] {
            assert!(is_registry_host(ok), "{ok}");
        }
        for bad in [
            "a..b",
            ".a",
            "a.",
            "-a.b",
            "a.b:",
            "a.b:x",
            "a.b:123456",
            "a_b.c",
            "",
        ] {
            assert!(!is_registry_host(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_failing_fill_never_completes_its_last_chunk() {
        let chunks = vec![
            Ok(Bytes::from_static(b"aaaa")),
            Ok(Bytes::from_static(b"bbbb")),
            Err(std::io::Error::other("digest mismatch")),
        ];
        let out: Vec<_> = hold_last(futures_util::stream::iter(chunks))
            .collect()
            .await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].as_ref().unwrap(), &Bytes::from_static(b"aaaa"));
        assert!(
            out[1].is_err(),
            "the last good chunk is withheld when the fill fails"
        );
        let chunks = vec![
            Ok(Bytes::from_static(b"aaaa")),
            Ok(Bytes::from_static(b"bb")),
        ];
        let out: Vec<_> = hold_last(futures_util::stream::iter(chunks))
            .collect()
            .await;
        let bytes: Vec<u8> = out.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(bytes, b"aaaabb");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=6-"), 16), RangeSpec::Partial(6, 15));
        assert_eq!(parse_range(Some("bytes=0-0"), 16), RangeSpec::Partial(0, 0));
        assert_eq!(
            parse_range(Some("bytes=2-100"), 16),
            RangeSpec::Partial(2, 15)
        );
        assert_eq!(
            parse_range(Some("bytes=-4"), 16),
            RangeSpec::Partial(12, 15)
        );
        assert_eq!(
            parse_range(Some("bytes=-40"), 16),
            RangeSpec::Partial(0, 15)
        );
        assert_eq!(parse_range(Some("bytes=16-"), 16), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 16), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 16), RangeSpec::Full);
        assert_eq!(parse_range(Some("items=0-1"), 16), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=5-2"), 16), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=x-"), 16), RangeSpec::Full);
    }

    #[test]
    fn location_and_link_rewrites() {
        assert_eq!(
            strip_origin("http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=xy%3D&b=1"),
            "/v2/a/blobs/uploads/u1?_state=xy%3D&b=1"
        );
        assert_eq!(
            strip_origin("/v2/a/blobs/uploads/u1"),
            "/v2/a/blobs/uploads/u1"
        );
        let plain = test_ctx(None);
        assert_eq!(
            rewrite_link(
                "<https://r.example/v2/a/tags/list?last=b&n=2>; rel=\"next\"",
                &plain
            ),
            "</v2/a/tags/list?last=b&n=2>; rel=\"next\""
        );
        assert_eq!(
            rewrite_link("</v2/_catalog?last=x&n=1>; rel=\"next\"", &plain),
            "</v2/_catalog?last=x&n=1>; rel=\"next\""
        );
        let prefixed = test_ctx(Some("quay.io"));
        assert_eq!(
            rewrite_link(
                "<https://quay.io/v2/a/tags/list?n=2>; rel=\"next\"",
                &prefixed
            ),
            "</v2/quay.io/a/tags/list?n=2>; rel=\"next\""
        );
        assert_eq!(
            prefixed.client_path("/v2/a/blobs/uploads/u?_state=x"),
            "/v2/quay.io/a/blobs/uploads/u?_state=x"
        );
        let repo = RepositoryName::parse("library/alpine").unwrap();
        let mut short = test_ctx(None);
        short.short = true;
        assert_eq!(short.client_name(&repo), "alpine");
        assert_eq!(prefixed.client_name(&repo), "quay.io/library/alpine");
    }

    #[test]
    fn tag_lists_are_renamed_keeping_everything_else() {
        let upstream = b"{\"name\":\"team/app\",\"tags\":[\"1\",\"latest\"]}\n";
        let renamed = rename_tag_list(upstream, "quay.io/team/app").unwrap();
        assert_eq!(
            &renamed[..],
            b"{\"name\":\"quay.io/team/app\",\"tags\":[\"1\",\"latest\"]}\n"
        );
        // Other fields and null tags survive; no trailing newline is added.
        let renamed = rename_tag_list(
            br#"{"tags":null,"name":"a","x-extra":{"k":[1,2]}}"#,
            "r.io/a",
        )
        .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&renamed).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"name": "r.io/a", "tags": null, "x-extra": {"k": [1, 2]}})
        );
        assert!(!renamed.ends_with(b"\n"));
        // Anything else is relayed unchanged.
        for body in [
            &b"not json"[..],
            b"[\"team/app\"]",
            b"{\"tags\":[\"1\"]}",
            b"{\"name\":7,\"tags\":[]}",
            b"",
        ] {
            assert_eq!(rename_tag_list(body, "quay.io/team/app"), None, "{body:?}");
        }
    }

    /// One repository whose tag points at `current`; every HEAD is counted
    /// and waits for `gate` (so a test can tell whether a request waited
    /// for it).
    struct MovingTag {
        heads: std::sync::atomic::AtomicU64,
        gate: tokio::sync::Semaphore,
        current: parking_lot::Mutex<Digest>,
        manifests: std::collections::HashMap<Digest, Bytes>,
    }

    fn schema2_manifest(seed: u8) -> (Digest, Bytes) {
        let config = Digest::sha256_of(&[seed]);
        let body = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"config\":{{\"mediaType\":\"{}\",\"size\":1,\"digest\":\"{config}\"}},\"layers\":[]}}",
            media_type::SCHEMA2,
            media_type::DOCKER_CONFIG,
        );
        (Digest::sha256_of(body.as_bytes()), Bytes::from(body))
    }

    fn not_here() -> UpstreamError {
        UpstreamError::Protocol {
            upstream: "fake".into(),
            detail: "not used by this test".into(),
        }
    }

    impl UpstreamApi for MovingTag {
        fn name(&self) -> &str {
            "fake"
        }
        fn ping(&self) -> futures_util::future::BoxFuture<'_, Result<(), UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
        fn head_manifest<'a>(
            &'a self,
            _repo: &'a str,
            _reference: &'a str,
            _accept: &'a [&'a str],
        ) -> futures_util::future::BoxFuture<
            'a,
            Result<regcache_upstream::ManifestHead, UpstreamError>,
        > {
            Box::pin(async move {
                self.heads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _open = self.gate.acquire().await;
                let digest = self.current.lock().clone();
                Ok(regcache_upstream::ManifestHead {
                    size: self.manifests.get(&digest).map(|b| b.len() as u64),
                    digest: Some(digest),
                    media_type: Some(media_type::SCHEMA2.to_owned()),
                })
            })
        }
        fn get_manifest<'a>(
            &'a self,
            _repo: &'a str,
            reference: &'a str,
            _accept: &'a [&'a str],
        ) -> futures_util::future::BoxFuture<
            'a,
            Result<regcache_upstream::ManifestBody, UpstreamError>,
        > {
            Box::pin(async move {
                let digest = Digest::parse(reference).map_err(|_| not_here())?;
                let bytes = self.manifests.get(&digest).cloned().ok_or_else(not_here)?;
                Ok(regcache_upstream::ManifestBody {
                    bytes,
                    content_type: Some(media_type::SCHEMA2.to_owned()),
                    digest_header: Some(digest),
                })
            })
        }
        fn head_blob<'a>(
            &'a self,
            _repo: &'a str,
            _digest: &'a Digest,
        ) -> futures_util::future::BoxFuture<'a, Result<regcache_upstream::BlobHead, UpstreamError>>
        {
            Box::pin(async { Err(not_here()) })
        }
        fn get_blob<'a>(
            &'a self,
            _repo: &'a str,
            _digest: &'a Digest,
            _range: Option<(u64, Option<u64>)>,
        ) -> futures_util::future::BoxFuture<'a, Result<regcache_upstream::BlobBody, UpstreamError>>
        {
            Box::pin(async { Err(not_here()) })
        }
        fn send(
            &self,
            _req: RawRequest,
        ) -> futures_util::future::BoxFuture<
            '_,
            Result<regcache_upstream::RawResponse, UpstreamError>,
        > {
            Box::pin(async { Err(not_here()) })
        }
        fn stats(&self) -> regcache_upstream::UpstreamStats {
            regcache_upstream::UpstreamStats::default()
        }
    }

    /// An app whose one upstream is a [`MovingTag`] that moved `team/app:v1`
    /// from manifest 1 (what the tag index says, `age_secs` old) to manifest 2.
    async fn moved_tag_app(
        dir: &std::path::Path,
        age_secs: u64,
        swr_secs: u64,
    ) -> (Arc<App>, Arc<MovingTag>, Ctx, Digest, Digest) {
        let store = Store::open(regcache_store::StoreConfig::new(dir))
            .await
            .unwrap();
        let (old, old_bytes) = schema2_manifest(1);
        let (new, new_bytes) = schema2_manifest(2);
        let fake = Arc::new(MovingTag {
            heads: Default::default(),
            gate: tokio::sync::Semaphore::new(0),
            current: parking_lot::Mutex::new(new.clone()),
            manifests: [(old.clone(), old_bytes), (new.clone(), new_bytes)].into(),
        });
        store
            .tags()
            .put(
                "quay.io",
                "team/app",
                "v1",
                TagRecord {
                    digest: old.clone(),
                    media_type: media_type::SCHEMA2.into(),
                    size: 0,
                    fetched_at_unix: unix_now() - age_secs,
                },
            )
            .unwrap();
        let up = Arc::new(Up {
            name: "quay.io".into(),
            aliases: vec![],
            host: "127.0.0.1:9".into(),
            docker_hub: false,
            client: fake.clone(),
            tag_ttl: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(3600),
            stale_while_revalidate: Duration::from_secs(swr_secs),
        });
        let app = App::new(
            AppConfig {
                policies: crate::policy::Policies::default(),
            },
            store,
            vec![up.clone()],
            0,
            SigningKey::generate(),
        );
        let ctx = Ctx {
            up,
            prefix: None,
            short: false,
            pq: String::new(),
        };
        (app, fake, ctx, old, new)
    }

    #[tokio::test]
    async fn stale_while_revalidate_answers_at_once_and_heads_once() {
        let dir = tempfile::tempdir().unwrap();
        // TTL 10 s, window 60 s, record 15 s old: inside the window.
        let (app, fake, ctx, old, new) = moved_tag_app(dir.path(), 15, 60).await;
        let name = RepositoryName::parse("team/app").unwrap();
        let tag = Tag::parse("v1").unwrap();
        let heads = || fake.heads.load(std::sync::atomic::Ordering::SeqCst);

        // The HEAD is held at the gate: these answer without it, all stale.
        let answers = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all((0..16).map(|_| app.resolve_tag(&ctx, &name, &tag))),
        )
        .await
        .expect("stale-while-revalidate requests waited for the upstream HEAD");
        for m in answers {
            assert_eq!(m.unwrap().digest, old);
        }
        assert!(heads() <= 1, "{} HEADs for one stale tag", heads());

        fake.gate.add_permits(1000);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while app
            .store
            .tags()
            .get("quay.io", "team/app", "v1")
            .is_none_or(|r| r.digest != new)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the background revalidation never recorded the new digest"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            app.resolve_tag(&ctx, &name, &tag).await.unwrap().digest,
            new
        );
        assert_eq!(heads(), 1, "16 stale requests, then a fresh one: one HEAD");

        // The task has ended and unmarked the tag. A request that read the old
        // record before the revalidation ended starts no second HEAD.
        while !app.tag_refreshes.lock().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the background task never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stale = TagRecord {
            digest: old.clone(),
            media_type: media_type::SCHEMA2.into(),
            size: 0,
            fetched_at_unix: unix_now() - 15,
        };
        app.revalidate_in_background(&ctx, &name, &tag, stale);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(heads(), 1);

        let text = app.metrics.encode();
        assert!(
            text.contains(
                "regcache_cache_lookups_total{kind=\"tag\",result=\"stale_while_revalidate\"} 16"
            ),
            "{text}"
        );
        assert!(!text.contains("result=\"stale\"}"), "{text}");
    }

    #[tokio::test]
    async fn past_the_window_or_with_it_off_requests_wait_for_the_head() {
        // (record age, window): past TTL + window, and the window off.
        for (age, swr) in [(75, 60), (15, 0)] {
            let dir = tempfile::tempdir().unwrap();
            let (app, fake, ctx, _old, new) = moved_tag_app(dir.path(), age, swr).await;
            let name = RepositoryName::parse("team/app").unwrap();
            let tag = Tag::parse("v1").unwrap();
            let waiting = app.resolve_tag(&ctx, &name, &tag);
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(300), &mut waiting)
                    .await
                    .is_err(),
                "age {age}, window {swr}: answered without waiting for the HEAD"
            );
            fake.gate.add_permits(1000);
            assert_eq!(
                waiting.await.unwrap().digest,
                new,
                "age {age}, window {swr}"
            );
            assert_eq!(fake.heads.load(std::sync::atomic::Ordering::SeqCst), 1);
        }
    }
}

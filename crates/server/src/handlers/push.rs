//! Pushes: uploads, deletes and manifest `PUT`s are forwarded to the
//! upstream with the body streamed and `Location` rewritten to regcache, so
//! the client continues through it. A pushed manifest the upstream accepts
//! is kept and its tag updated at once.
//!
//! Every request here goes with the [`Identity`] the upstream's `writes` key
//! chose ([`crate::writes`]), the helper requests of a Schema 1 push too;
//! with the client's own credentials, the upstream's `WWW-Authenticate` is
//! relayed so the client can authenticate. A client body that breaks off is
//! the client's error ([`regcache_upstream::UpstreamError::RequestBody`]).

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use regcache_formats::reference::{Reference, RepositoryName};
use regcache_formats::schema1::{EMPTY_LAYER_BYTES, EMPTY_LAYER_DIGEST};
use regcache_formats::{Digest, ErrorCode, MediaType, RegistryError, media_type};
use regcache_upstream::{Identity, RawRequest, RequestBody, UpstreamError};

use super::App;
use crate::error::Error;
use crate::policy::Schema2Push;
use crate::request::Target;
use crate::web::body::{Body, ReqBody};
use crate::web::headers::{copy_headers, strip_origin};
use crate::web::response::DOCKER_CONTENT_DIGEST;

/// Largest manifest PUT accepted (distribution reads at most 4 MiB; OCI asks for 413 above).
const MAX_MANIFEST_PUT: usize = 4 << 20;

impl App {
    pub(super) async fn push_manifest(
        &self,
        target: &Target,
        req: Request<ReqBody>,
        name: &RepositoryName,
        reference: &Reference,
        identity: Identity,
    ) -> Result<Response<Body>, Error> {
        refuse_declared_oversize(req.headers())?;
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
        let policy = self
            .policies
            .load()
            .resolve(&target.upstream.name, name.as_str());
        let is_schema1 = kind.is_some_and(MediaType::is_schema1)
            || content_type.as_deref() == Some(media_type::APPLICATION_JSON);
        if policy.schema2_push == Schema2Push::Reject && !is_schema1 {
            return Err(Error::policy(
                400,
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
            ));
        }
        if is_schema1 && references_empty_layer(&bytes) {
            self.ensure_empty_layer(target, name, &identity).await?;
        }
        let (resp, digest) = self
            .forward_parts(target, &parts, RequestBody::bytes(bytes.clone()), identity)
            .await?;
        if resp.status() == StatusCode::CREATED {
            self.services
                .manifests
                .keep_pushed(
                    target,
                    name,
                    reference,
                    bytes,
                    content_type.as_deref(),
                    digest.as_ref(),
                )
                .await;
        }
        Ok(resp)
    }

    /// distribution makes sure the empty-layer blob exists before it serves a
    /// Schema 1 document that names it; regcache serves that blob itself, so a
    /// client pushing Schema 1 through it is told the blob exists and never
    /// uploads it. Upload it (32 bytes) upstream when the repository lacks
    /// it, as `identity` (the push's own).
    async fn ensure_empty_layer(
        &self,
        target: &Target,
        name: &RepositoryName,
        identity: &Identity,
    ) -> Result<(), Error> {
        let up = &target.upstream;
        let blob = format!("/v2/{name}/blobs/{EMPTY_LAYER_DIGEST}");
        let head = target
            .client()
            .send(RawRequest::new(Method::HEAD, blob).identity(identity.clone()))
            .await?;
        match head.status {
            StatusCode::OK => return Ok(()),
            StatusCode::NOT_FOUND => {}
            status => return Err(refused_helper(up.name.as_str(), "HEAD", status)),
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(media_type::OCTET_STREAM),
        );
        let resp = target
            .client()
            .send(
                RawRequest::new(Method::POST, format!("/v2/{name}/blobs/uploads/"))
                    .headers(headers.clone())
                    .identity(identity.clone()),
            )
            .await?;
        let location = resp
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(strip_origin);
        let Some(location) = location.filter(|_| resp.status == StatusCode::ACCEPTED) else {
            return Err(refused_helper(&up.name, "upload start", resp.status));
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = target
            .client()
            .send(
                RawRequest::new(
                    Method::PUT,
                    format!("{location}{sep}digest={EMPTY_LAYER_DIGEST}"),
                )
                .headers(headers)
                .body(RequestBody::bytes(Bytes::from_static(&EMPTY_LAYER_BYTES)))
                .identity(identity.clone()),
            )
            .await?;
        if resp.status != StatusCode::CREATED {
            return Err(refused_helper(&up.name, "upload", resp.status));
        }
        tracing::info!(repo = %name, "uploaded the empty-layer blob upstream for a schema 1 push");
        Ok(())
    }

    /// Forward a push request (upload, delete) with its body streamed.
    pub(super) async fn forward(
        &self,
        target: &Target,
        req: Request<ReqBody>,
        identity: Identity,
    ) -> Result<Response<Body>, Error> {
        let (parts, body) = req.into_parts();
        let stream = http_body_util::BodyStream::new(body)
            .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) });
        let (resp, _) = self
            .forward_parts(target, &parts, RequestBody::stream(stream), identity)
            .await?;
        Ok(resp)
    }

    /// Forward a push request upstream; `Location` comes back relative, so the
    /// client continues through regcache. Also returns the upstream's
    /// `Docker-Content-Digest`.
    async fn forward_parts(
        &self,
        target: &Target,
        parts: &http::request::Parts,
        body: RequestBody,
        identity: Identity,
    ) -> Result<(Response<Body>, Option<Digest>), Error> {
        let relay_challenge = matches!(identity, Identity::Client(_));
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
        let resp = target
            .client()
            .send(
                RawRequest::new(parts.method.clone(), target.upstream_path.clone())
                    .headers(headers)
                    .body(body)
                    .idempotent(false)
                    .identity(identity),
            )
            .await?;
        let mut out = HeaderMap::new();
        if relay_challenge {
            copy_headers(&resp.headers, &mut out, &[header::WWW_AUTHENTICATE]);
        }
        copy_headers(
            &resp.headers,
            &mut out,
            &[
                header::CONTENT_TYPE,
                header::CONTENT_LENGTH,
                header::RANGE,
                HeaderName::from_static("docker-upload-uuid"),
                DOCKER_CONTENT_DIGEST,
                HeaderName::from_static("oci-subject"),
                HeaderName::from_static("oci-chunk-min-length"),
            ],
        );
        if let Some(loc) = resp
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            && let Ok(v) = HeaderValue::from_str(&target.client_path(&strip_origin(loc)))
        {
            out.insert(header::LOCATION, v);
        }
        let digest = resp
            .headers
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| Digest::parse(s).ok());
        let status = resp.status;
        let len = resp.content_length;
        let body = Box::pin(resp.body.map_err(std::io::Error::other));
        let mut r = Response::new(Body::stream(body, len));
        *r.status_mut() = status;
        *r.headers_mut() = out;
        Ok((r, digest))
    }
}

/// A helper request of a push (the empty-layer blob) that the upstream
/// refused: its own `401`/`403` (the push's identity may not do it), else
/// unusable.
fn refused_helper(upstream: &str, what: &str, status: StatusCode) -> Error {
    if matches!(status.as_u16(), 401 | 403) {
        return Error::Upstream(UpstreamError::Registry {
            upstream: upstream.to_owned(),
            status: status.as_u16(),
            envelope: None,
            retry_after: None,
        });
    }
    Error::BadUpstream {
        upstream: upstream.to_owned(),
        message: format!("it refused the empty-layer blob's {what} ({status})"),
    }
}

/// 413 for a manifest whose declared length is over the limit, before a
/// byte of it is read: hyper sends `100 Continue` only when the body is
/// first read, so a client that asked for it never gets it.
fn refuse_declared_oversize(headers: &HeaderMap) -> Result<(), Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_MANIFEST_PUT as u64 => Err(Error::client_status(
            413,
            RegistryError::with_message(
                ErrorCode::ManifestInvalid,
                format!("manifest of {len} bytes declared; the limit is {MAX_MANIFEST_PUT} bytes"),
            )
            .detail(serde_json::json!({ "limit": MAX_MANIFEST_PUT, "declared": len })),
        )),
        _ => Ok(()),
    }
}

async fn read_limited(body: ReqBody, limit: usize) -> Result<Bytes, Error> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::client_status(
            413,
            RegistryError::with_message(
                ErrorCode::ManifestInvalid,
                format!("manifest larger than {limit} bytes"),
            ),
        )),
        Err(e) => Err(Error::client(
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

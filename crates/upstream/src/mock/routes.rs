//! [`MemoryRegistry::send`]: the raw registry API, as much of it as push
//! and listing tests need.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET`/`HEAD /v2/` | `200 {}` |
//! | `GET /v2/_catalog` | `{"repositories":[…]}`, sorted; `n`/`last` pages with a `Link` |
//! | `GET /v2/<name>/tags/list` | `{"name":…,"tags":[…]}`, sorted, paged alike; `404 NAME_UNKNOWN` |
//! | `GET`/`HEAD /v2/<name>/manifests/<ref>` | the manifest; `404 MANIFEST_UNKNOWN` |
//! | `PUT /v2/<name>/manifests/<ref>` | `201`, `Docker-Content-Digest`; a digest reference must match the body |
//! | `DELETE /v2/<name>/manifests/<ref>` | `202`: a digest removes the manifest and its tags, a tag only the tag |
//! | `GET`/`HEAD /v2/<name>/blobs/<digest>` | the blob, whole; `404 BLOB_UNKNOWN` |
//! | `DELETE /v2/<name>/blobs/<digest>` | `202` |
//! | `POST /v2/<name>/blobs/uploads/` | `202`, `Location: /v2/<name>/blobs/uploads/<id>`; with `?digest=` a monolithic upload (`201`); with `?mount=&from=` a mount (`201`) when `from` has the blob |
//! | `GET`/`PATCH`/`PUT`/`DELETE` on the upload | status `204`, append `202`, complete with `?digest=` `201` (`400 DIGEST_INVALID` on a mismatch), cancel `204` |
//!
//! Any other method on these paths is `405 UNSUPPORTED`, any other path
//! `404 UNSUPPORTED`; all errors carry a registry error envelope. Nothing
//! checks that a manifest's blobs exist.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, LINK, LOCATION, RANGE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use regcache_formats::media_type::{APPLICATION_JSON, OCTET_STREAM};
use regcache_formats::reference::{Reference, RepositoryName};
use regcache_formats::{Digest, ErrorCode, ErrorEnvelope, RegistryError};
use serde_json::json;
use url::Url;

use crate::api::{BodyInner, RawRequest, RawResponse, RequestBody};
use crate::error::UpstreamError;

use super::Op;
use super::memory::{MemoryRegistry, Repo, State, StoredManifest};

const DIGEST_HEADER: &str = "docker-content-digest";
const UUID_HEADER: &str = "docker-upload-uuid";

impl MemoryRegistry {
    /// A request of the raw registry API (see the table in `routes.rs`):
    /// the body is read whole, the answer built from the stored content.
    /// Like the real client, a path outside `/v2/` is refused locally.
    pub async fn send(&self, req: RawRequest) -> Result<RawResponse, UpstreamError> {
        let pq = req.path_and_query;
        if !(pq == "/v2" || pq.starts_with("/v2/") || pq.starts_with("/v2?")) {
            return Err(UpstreamError::InvalidRequest {
                upstream: self.name().to_owned(),
                detail: "path must start with /v2/".into(),
            });
        }
        self.control().enter(Op::Send).await;
        let body = collect(req.body).await.map_err(|source| {
            let upstream = self.name().to_owned();
            if crate::error::BodyFailed::in_chain(&*source) {
                UpstreamError::RequestBody { upstream, source }
            } else {
                UpstreamError::Transport { upstream, source }
            }
        })?;
        let (path, query) = pq.split_once('?').unwrap_or((&pq, ""));
        let reply = {
            let mut state = self.state.lock();
            route(&mut state, &req.method, path, query, &req.headers, body)
        };
        self.stats.record(&req.method, reply.status);
        let head = req.method == Method::HEAD;
        Ok(reply.into_response(self.name(), &pq, head))
    }
}

async fn collect(body: RequestBody) -> Result<Bytes, crate::BoxError> {
    match body.0 {
        BodyInner::Empty => Ok(Bytes::new()),
        BodyInner::Bytes(b) => Ok(b),
        BodyInner::Stream(s) => match s.collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) => Err(std::sync::Arc::new(e)),
        },
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn new(status: u16) -> Self {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    fn header(mut self, name: impl Into<HeaderName>, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.insert(name.into(), v);
        }
        self
    }

    fn body(self, content_type: &str, body: impl Into<Bytes>) -> Self {
        Reply {
            body: body.into(),
            ..self.header(CONTENT_TYPE, content_type)
        }
    }

    fn json(status: u16, value: serde_json::Value) -> Self {
        Reply::new(status).body(APPLICATION_JSON, value.to_string())
    }

    fn error(status: u16, code: ErrorCode) -> Self {
        let envelope = ErrorEnvelope::single(RegistryError::new(code));
        Reply::new(status).body(APPLICATION_JSON, envelope.to_body())
    }

    /// The registry's answer to a finished blob upload or mount.
    fn blob_created(name: &str, digest: &Digest) -> Self {
        Reply::new(201)
            .header(LOCATION, format!("/v2/{name}/blobs/{digest}"))
            .header(HeaderName::from_static(DIGEST_HEADER), digest.as_str())
    }

    fn into_response(mut self, upstream: &str, pq: &str, head: bool) -> RawResponse {
        let len = self.body.len() as u64;
        self.headers
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
        let content_length = self
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let body = if head { Bytes::new() } else { self.body };
        let base = Url::parse("http://mock.invalid/").expect("a valid URL");
        RawResponse {
            upstream: upstream.to_owned(),
            status: StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: self.headers,
            url: base.join(pq).unwrap_or(base),
            content_length,
            body: Box::pin(futures_util::stream::iter([Ok(body)])),
        }
    }
}

/// A route of the table in the module docs: (repository name, rest).
enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    /// An upload: `None` to start one, else its id.
    Upload(&'a str, Option<&'a str>),
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads/") {
        return Some(Route::Upload(name, None));
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        return Some(Route::Upload(name, Some(id)));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Some(Route::Manifest(name, reference));
    }
    let (name, digest) = rest.rsplit_once("/blobs/")?;
    Some(Route::Blob(name, digest))
}

fn route(
    state: &mut State,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Reply {
    let Some(route) = parse_route(path) else {
        return Reply::error(404, ErrorCode::Unsupported);
    };
    let name = match route {
        Route::Base | Route::Catalog => "",
        Route::Tags(n) | Route::Manifest(n, _) | Route::Blob(n, _) | Route::Upload(n, _) => n,
    };
    if !name.is_empty() && RepositoryName::parse(name).is_err() {
        return Reply::error(400, ErrorCode::NameInvalid);
    }
    match (route, method.as_str()) {
        (Route::Base, "GET" | "HEAD") => Reply::json(200, json!({})),
        (Route::Catalog, "GET") => {
            let names = state.repos.keys().cloned().collect();
            paged(
                names,
                query,
                "/v2/_catalog",
                |page| json!({ "repositories": page }),
            )
        }
        (Route::Tags(name), "GET") => match state.repos.get(name) {
            None => Reply::error(404, ErrorCode::NameUnknown),
            Some(repo) => {
                let tags = repo.tags.keys().cloned().collect();
                let path = format!("/v2/{name}/tags/list");
                paged(
                    tags,
                    query,
                    &path,
                    |page| json!({ "name": name, "tags": page }),
                )
            }
        },
        (Route::Manifest(name, reference), _) => {
            manifest(state, method, name, reference, headers, body)
        }
        (Route::Blob(name, digest), _) => blob(state, method, name, digest),
        (Route::Upload(name, None), "POST") => start_upload(state, name, query, body),
        (Route::Upload(name, Some(id)), _) => upload(state, method, name, id, query, body),
        _ => Reply::error(405, ErrorCode::Unsupported),
    }
}

fn blob(state: &mut State, method: &Method, name: &str, digest: &str) -> Reply {
    let Ok(digest) = Digest::parse(digest) else {
        return Reply::error(400, ErrorCode::DigestInvalid);
    };
    let Some(repo) = state.repos.get_mut(name) else {
        return Reply::error(404, ErrorCode::BlobUnknown);
    };
    match (method.as_str(), repo.blobs.get(&digest)) {
        ("GET" | "HEAD" | "DELETE", None) => Reply::error(404, ErrorCode::BlobUnknown),
        ("GET" | "HEAD", Some(bytes)) => Reply::new(200)
            .header(HeaderName::from_static(DIGEST_HEADER), digest.as_str())
            .body(OCTET_STREAM, bytes.clone()),
        ("DELETE", Some(_)) => {
            repo.blobs.remove(&digest);
            Reply::new(202)
        }
        _ => Reply::error(405, ErrorCode::Unsupported),
    }
}

/// Page sorted `items` by `n` and `last`, as distribution does, with a
/// `Link` to the next page when there is more.
fn paged(
    items: Vec<String>,
    query: &str,
    path: &str,
    doc: impl FnOnce(&[String]) -> serde_json::Value,
) -> Reply {
    let last = param(query, "last");
    let mut items: Vec<String> = items
        .into_iter()
        .filter(|i| last.as_ref().is_none_or(|l| i > l))
        .collect();
    let n = match param(query, "n").map(|n| n.parse::<usize>()) {
        None => items.len(),
        Some(Ok(n)) => n,
        Some(Err(_)) => return Reply::error(400, ErrorCode::PaginationNumberInvalid),
    };
    let more = items.len() > n;
    items.truncate(n);
    let reply = Reply::json(200, doc(&items));
    match items.last() {
        Some(last) if more => {
            reply.header(LINK, format!("<{path}?last={last}&n={n}>; rel=\"next\""))
        }
        _ => reply,
    }
}

fn param(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn manifest(
    state: &mut State,
    method: &Method,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Reply {
    let reference = match Reference::parse(reference) {
        Ok(r) => r,
        Err(e) => return Reply::error(400, e.error_code()),
    };
    let unknown = || Reply::error(404, ErrorCode::ManifestUnknown);
    match method.as_str() {
        "GET" | "HEAD" => match state.repos.get(name).and_then(|r| r.manifest(&reference)) {
            None => unknown(),
            Some((digest, m)) => Reply::new(200)
                .header(HeaderName::from_static(DIGEST_HEADER), digest.as_str())
                .body(&m.media_type, m.bytes),
        },
        "PUT" => {
            let Some(media_type) = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(|v| v.trim().to_owned())
            else {
                return Reply::error(400, ErrorCode::ManifestInvalid);
            };
            let digest = match &reference {
                Reference::Digest(d) if !d.verifies(&body) => {
                    return Reply::error(400, ErrorCode::DigestInvalid);
                }
                Reference::Digest(d) => d.clone(),
                Reference::Tag(_) => Digest::sha256_of(&body),
            };
            let repo = state.repos.entry(name.to_owned()).or_default();
            let m = StoredManifest {
                media_type,
                bytes: body,
            };
            repo.manifests.insert(digest.clone(), m);
            if let Reference::Tag(tag) = &reference {
                repo.tags.insert(tag.as_str().to_owned(), digest.clone());
            }
            Reply::new(201)
                .header(LOCATION, format!("/v2/{name}/manifests/{digest}"))
                .header(HeaderName::from_static(DIGEST_HEADER), digest.as_str())
        }
        "DELETE" => {
            let repo = state.repos.get_mut(name);
            let deleted = repo.is_some_and(|r: &mut Repo| match &reference {
                Reference::Digest(d) => r.delete_manifest(d),
                Reference::Tag(t) => r.tags.remove(t.as_str()).is_some(),
            });
            if deleted { Reply::new(202) } else { unknown() }
        }
        _ => Reply::error(405, ErrorCode::Unsupported),
    }
}

/// `POST …/blobs/uploads/`: a mount, a monolithic upload or a new session.
fn start_upload(state: &mut State, name: &str, query: &str, body: Bytes) -> Reply {
    if let (Some(mount), Some(from)) = (param(query, "mount"), param(query, "from"))
        && let Ok(digest) = Digest::parse(&mount)
        && let Some(bytes) = state
            .repos
            .get(&from)
            .and_then(|r| r.blobs.get(&digest).cloned())
    {
        let repo = state.repos.entry(name.to_owned()).or_default();
        repo.blobs.insert(digest.clone(), bytes);
        return Reply::blob_created(name, &digest);
    }
    if let Some(digest) = param(query, "digest") {
        return finish(state, name, &digest, body);
    }
    state.next_upload += 1;
    let id = format!("00000000-0000-4000-8000-{:012x}", state.next_upload);
    state.repos.entry(name.to_owned()).or_default();
    state
        .uploads
        .insert(id.clone(), (name.to_owned(), body.to_vec()));
    upload_progress(202, name, &id, body.len())
}

fn upload(
    state: &mut State,
    method: &Method,
    name: &str,
    id: &str,
    query: &str,
    body: Bytes,
) -> Reply {
    let Some((_, data)) = state.uploads.get_mut(id).filter(|(repo, _)| repo == name) else {
        return Reply::error(404, ErrorCode::BlobUploadUnknown);
    };
    match method.as_str() {
        "GET" => upload_progress(204, name, id, data.len()),
        "PATCH" => {
            data.extend_from_slice(&body);
            upload_progress(202, name, id, data.len())
        }
        "PUT" => {
            // A PUT that fails leaves the session as it was.
            let mut all = data.clone();
            all.extend_from_slice(&body);
            let digest = param(query, "digest").unwrap_or_default();
            let reply = finish(state, name, &digest, Bytes::from(all));
            if reply.status == 201 {
                state.uploads.remove(id);
            }
            reply
        }
        "DELETE" => {
            state.uploads.remove(id);
            Reply::new(204)
        }
        _ => Reply::error(405, ErrorCode::Unsupported),
    }
}

/// Store an uploaded blob if `digest` verifies it.
fn finish(state: &mut State, name: &str, digest: &str, bytes: Bytes) -> Reply {
    match Digest::parse(digest) {
        Ok(digest) if digest.verifies(&bytes) => {
            let repo = state.repos.entry(name.to_owned()).or_default();
            repo.blobs.insert(digest.clone(), bytes);
            Reply::blob_created(name, &digest)
        }
        _ => Reply::error(400, ErrorCode::DigestInvalid),
    }
}

fn upload_progress(status: u16, name: &str, id: &str, len: usize) -> Reply {
    Reply::new(status)
        .header(LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
        .header(RANGE, format!("0-{}", len.saturating_sub(1)))
        .header(HeaderName::from_static(UUID_HEADER), id)
}

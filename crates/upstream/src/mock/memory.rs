//! [`MemoryRegistry`]: an upstream registry held in memory.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bytes::Bytes;
use http::Method;
use parking_lot::Mutex;
use regcache_formats::media_type::OCTET_STREAM;
use regcache_formats::reference::{Reference, RepositoryName};
use regcache_formats::{Digest, ErrorCode, ErrorEnvelope, RegistryError};

use crate::api::{
    BlobBody, BlobHead, ByteStream, ManifestBody, ManifestHead, UpstreamApi, forward_upstream_api,
};
use crate::error::UpstreamError;
use crate::stats::{Stats, UpstreamStats};

use super::Op;
use super::control::{Control, Gate};

/// The largest chunk a blob body is cut into unless
/// [`MemoryRegistry::with_chunk_size`] says otherwise.
pub const DEFAULT_MAX_CHUNK: usize = 64 * 1024;

/// A registry in memory, implementing [`UpstreamApi`] for the server's
/// tests without a network.
///
/// * **Content** is set up directly ([`put_blob`](Self::put_blob),
///   [`put_manifest`](Self::put_manifest), [`tag`](Self::tag), …) or
///   through the raw API a client uses to push ([`send`](Self::send):
///   uploads, manifest `PUT`, `DELETE`, `tags/list`, `_catalog`; see
///   `routes.rs` for the list).
/// * **Answers** are the ones distribution gives: a missing manifest is a
///   `404` [`UpstreamError::Registry`] with `MANIFEST_UNKNOWN`, a missing
///   blob `BLOB_UNKNOWN`, the tags of a missing repository `NAME_UNKNOWN`.
///   As with the real client, the error of a `HEAD` carries no envelope
///   (a `HEAD` answer has no body), only the status.
/// * **Manifests** are served with the media type they were stored with,
///   whatever the `Accept` list says: unlike a real registry it converts
///   nothing and refuses nothing (it is a test double).
/// * **Blob bodies** arrive in several chunks so the reader sees a real
///   stream: by default a third of the blob each (at most
///   [`DEFAULT_MAX_CHUNK`] bytes), or a fixed size
///   ([`with_chunk_size`](Self::with_chunk_size)). Ranges are honoured
///   with `206` unless [`ignoring_ranges`](Self::ignoring_ranges).
/// * **Observation**: [`calls`](Self::calls) counts calls per [`Op`];
///   [`hold`](Self::hold) makes calls of an op wait at a [`Gate`];
///   [`stats`](Self::stats) counts requests by method and status, as the
///   real client does.
///
/// Wrap it in a [`FailureUpstream`](super::FailureUpstream) to inject
/// faults.
pub struct MemoryRegistry {
    name: String,
    pub(super) state: Mutex<State>,
    control: Control,
    pub(super) stats: Stats,
    chunk_size: Option<usize>,
    ranges: bool,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub repos: BTreeMap<String, Repo>,
    /// Uploads in progress by id: (repository, bytes so far).
    pub uploads: HashMap<String, (String, Vec<u8>)>,
    pub next_upload: u64,
}

#[derive(Debug, Default)]
pub(super) struct Repo {
    pub blobs: HashMap<Digest, Bytes>,
    pub manifests: HashMap<Digest, StoredManifest>,
    pub tags: BTreeMap<String, Digest>,
}

#[derive(Clone, Debug)]
pub(super) struct StoredManifest {
    pub media_type: String,
    pub bytes: Bytes,
}

impl Repo {
    /// The digest and manifest a tag or digest names.
    pub fn manifest(&self, reference: &Reference) -> Option<(Digest, StoredManifest)> {
        let digest = match reference {
            Reference::Digest(d) => d,
            Reference::Tag(t) => self.tags.get(t.as_str())?,
        };
        let m = self.manifests.get(digest)?;
        Some((digest.clone(), m.clone()))
    }

    /// Remove a manifest and the tags that point at it, as distribution does.
    pub fn delete_manifest(&mut self, digest: &Digest) -> bool {
        self.tags.retain(|_, d| d != digest);
        self.manifests.remove(digest).is_some()
    }
}

impl fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("MemoryRegistry")
            .field("name", &self.name)
            .field("repos", &state.repos.keys().collect::<Vec<_>>())
            .field("uploads", &state.uploads.len())
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

/// Setting up and inspecting content.
impl MemoryRegistry {
    /// An empty registry; `name` is its [`UpstreamApi::name`] and appears in
    /// its errors.
    pub fn new(name: impl Into<String>) -> Self {
        MemoryRegistry {
            name: name.into(),
            state: Mutex::new(State::default()),
            control: Control::default(),
            stats: Stats::default(),
            chunk_size: None,
            ranges: true,
        }
    }

    /// Cut blob bodies into chunks of `bytes` (at least 1).
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = Some(bytes.max(1));
        self
    }

    /// Answer range requests with `200` and the whole blob, as registries
    /// (and CDNs) that ignore `Range` do.
    pub fn ignoring_ranges(mut self) -> Self {
        self.ranges = false;
        self
    }

    /// Store a blob in `repo`; returns its sha256 digest.
    pub fn put_blob(&self, repo: &str, bytes: impl Into<Bytes>) -> Digest {
        let bytes = bytes.into();
        let digest = Digest::sha256_of(&bytes);
        self.with_repo(repo, |r| r.blobs.insert(digest.clone(), bytes));
        digest
    }

    /// Store a manifest in `repo` under the sha256 of its bytes; returns
    /// that digest. Tag it with [`tag`](Self::tag).
    pub fn put_manifest(&self, repo: &str, media_type: &str, bytes: impl Into<Bytes>) -> Digest {
        let bytes = bytes.into();
        let digest = Digest::sha256_of(&bytes);
        self.put_manifest_with_digest(repo, media_type, bytes, digest.clone());
        digest
    }

    /// Store a manifest under a digest of the caller's choosing: a signed
    /// schema-1 manifest's digest covers its canonical payload, not its
    /// bytes; or a test wants a digest that does not verify.
    pub fn put_manifest_with_digest(
        &self,
        repo: &str,
        media_type: &str,
        bytes: impl Into<Bytes>,
        digest: Digest,
    ) {
        let m = StoredManifest {
            media_type: media_type.to_owned(),
            bytes: bytes.into(),
        };
        self.with_repo(repo, |r| r.manifests.insert(digest, m));
    }

    /// Point `tag` at `digest` (create or move it); returns the digest it
    /// pointed at before. A tag whose manifest is missing answers `404
    /// MANIFEST_UNKNOWN`.
    pub fn tag(&self, repo: &str, tag: &str, digest: &Digest) -> Option<Digest> {
        self.with_repo(repo, |r| r.tags.insert(tag.to_owned(), digest.clone()))
    }

    /// Remove a tag; returns the digest it pointed at.
    pub fn untag(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.state.lock().repos.get_mut(repo)?.tags.remove(tag)
    }

    /// Remove a blob; false if it was not there.
    pub fn delete_blob(&self, repo: &str, digest: &Digest) -> bool {
        let mut state = self.state.lock();
        state
            .repos
            .get_mut(repo)
            .is_some_and(|r| r.blobs.remove(digest).is_some())
    }

    /// Remove a manifest and every tag pointing at it; false if it was not
    /// there.
    pub fn delete_manifest(&self, repo: &str, digest: &Digest) -> bool {
        let mut state = self.state.lock();
        state
            .repos
            .get_mut(repo)
            .is_some_and(|r| r.delete_manifest(digest))
    }

    /// A stored blob (say, one a test pushed through the server).
    pub fn blob(&self, repo: &str, digest: &Digest) -> Option<Bytes> {
        self.state
            .lock()
            .repos
            .get(repo)?
            .blobs
            .get(digest)
            .cloned()
    }

    /// The manifest a tag or digest names, as [`get_manifest`](Self::get_manifest)
    /// would answer it, without counting a call.
    pub fn manifest(&self, repo: &str, reference: &str) -> Option<ManifestBody> {
        let reference = Reference::parse(reference).ok()?;
        let (digest, m) = self.state.lock().repos.get(repo)?.manifest(&reference)?;
        Some(ManifestBody {
            bytes: m.bytes,
            content_type: Some(m.media_type),
            digest_header: Some(digest),
        })
    }

    /// The tags of `repo`, sorted.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let state = self.state.lock();
        state
            .repos
            .get(repo)
            .map(|r| r.tags.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Calls of `op` so far (a held call counts as soon as it starts).
    pub fn calls(&self, op: Op) -> u64 {
        self.control.calls(op)
    }

    /// Hold every call of `op` at a gate until the test lets it through;
    /// see [`Gate`].
    pub fn hold(&self, op: Op) -> Gate {
        self.control.hold(op)
    }

    fn with_repo<T>(&self, repo: &str, f: impl FnOnce(&mut Repo) -> T) -> T {
        f(self.state.lock().repos.entry(repo.to_owned()).or_default())
    }
}

/// The calls of [`UpstreamApi`], usable without importing the trait.
impl MemoryRegistry {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Always `Ok`.
    pub async fn ping(&self) -> Result<(), UpstreamError> {
        self.control.enter(Op::Ping).await;
        self.stats.record(&Method::GET, 200);
        Ok(())
    }

    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
        _accept: &[&str],
    ) -> Result<ManifestHead, UpstreamError> {
        self.control.enter(Op::HeadManifest).await;
        let (digest, m) = self.find_manifest(&Method::HEAD, repo, reference)?;
        self.stats.record(&Method::HEAD, 200);
        Ok(ManifestHead {
            digest: Some(digest),
            media_type: Some(m.media_type),
            size: Some(m.bytes.len() as u64),
        })
    }

    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        _accept: &[&str],
    ) -> Result<ManifestBody, UpstreamError> {
        self.control.enter(Op::GetManifest).await;
        let (digest, m) = self.find_manifest(&Method::GET, repo, reference)?;
        self.stats.record(&Method::GET, 200);
        Ok(ManifestBody {
            bytes: m.bytes,
            content_type: Some(m.media_type),
            digest_header: Some(digest),
        })
    }

    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<BlobHead, UpstreamError> {
        self.control.enter(Op::HeadBlob).await;
        let bytes = self.find_blob(&Method::HEAD, repo, digest)?;
        self.stats.record(&Method::HEAD, 200);
        Ok(BlobHead {
            size: bytes.len() as u64,
            content_type: Some(OCTET_STREAM.to_owned()),
            digest_header: Some(digest.clone()),
        })
    }

    /// The blob, or the range `first..=last` of it (`last` past the end is
    /// cut to the end) with status `206`; a range starting past the end is
    /// a `416`.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<BlobBody, UpstreamError> {
        self.control.enter(Op::GetBlob).await;
        if let Some((first, Some(last))) = range
            && last < first
        {
            return Err(UpstreamError::InvalidRequest {
                upstream: self.name.clone(),
                detail: format!("empty range {first}-{last}"),
            });
        }
        let bytes = self.find_blob(&Method::GET, repo, digest)?;
        let len = bytes.len() as u64;
        let (status, body, content_range) = match range.filter(|_| self.ranges) {
            None => (200, bytes, None),
            Some((first, _)) if first >= len => {
                self.stats.record(&Method::GET, 416);
                return Err(self.error(416, None));
            }
            Some((first, last)) => {
                let last = last.map_or(len - 1, |l| l.min(len - 1));
                let part = bytes.slice(first as usize..=last as usize);
                (206, part, Some(format!("bytes {first}-{last}/{len}")))
            }
        };
        self.stats.record(&Method::GET, status);
        Ok(BlobBody {
            status,
            len: Some(body.len() as u64),
            content_range,
            content_type: Some(OCTET_STREAM.to_owned()),
            stream: self.chunked(body),
        })
    }

    /// Requests by method and status, as the real client counts them.
    pub fn stats(&self) -> UpstreamStats {
        self.stats.snapshot(&self.name)
    }
}

impl UpstreamApi for MemoryRegistry {
    forward_upstream_api!(|this| this, Box::pin);
}

/// Helpers shared with `routes.rs`.
impl MemoryRegistry {
    pub(super) fn control(&self) -> &Control {
        &self.control
    }

    /// A registry error from this upstream; `code` gives the envelope.
    pub(super) fn error(&self, status: u16, code: Option<ErrorCode>) -> UpstreamError {
        UpstreamError::Registry {
            upstream: self.name.clone(),
            status,
            envelope: code.map(|c| ErrorEnvelope::single(RegistryError::new(c))),
            retry_after: None,
        }
    }

    /// Validate the name and reference as the real client does, then look
    /// the manifest up. A miss is the registry's `404` (no envelope for
    /// `HEAD`) and is recorded in the stats; the caller records a hit.
    pub(super) fn find_manifest(
        &self,
        method: &Method,
        repo: &str,
        reference: &str,
    ) -> Result<(Digest, StoredManifest), UpstreamError> {
        let reference = self.valid(repo, Reference::parse(reference))?;
        let found = self
            .state
            .lock()
            .repos
            .get(repo)
            .and_then(|r| r.manifest(&reference));
        self.recorded(method, found, ErrorCode::ManifestUnknown)
    }

    pub(super) fn find_blob(
        &self,
        method: &Method,
        repo: &str,
        digest: &Digest,
    ) -> Result<Bytes, UpstreamError> {
        self.valid(repo, Ok(()))?;
        let found = self.blob(repo, digest);
        self.recorded(method, found, ErrorCode::BlobUnknown)
    }

    fn valid<T>(
        &self,
        repo: &str,
        parsed: Result<T, regcache_formats::reference::ReferenceError>,
    ) -> Result<T, UpstreamError> {
        RepositoryName::parse(repo)
            .and(parsed)
            .map_err(|e| UpstreamError::InvalidRequest {
                upstream: self.name.clone(),
                detail: e.to_string(),
            })
    }

    fn recorded<T>(
        &self,
        method: &Method,
        found: Option<T>,
        missing: ErrorCode,
    ) -> Result<T, UpstreamError> {
        found.ok_or_else(|| {
            self.stats.record(method, 404);
            self.error(404, (method != Method::HEAD).then_some(missing))
        })
    }

    /// `bytes` as a stream of chunks; see [`MemoryRegistry`].
    pub(super) fn chunked(&self, bytes: Bytes) -> ByteStream {
        let size = self
            .chunk_size
            .unwrap_or_else(|| bytes.len().div_ceil(3).clamp(1, DEFAULT_MAX_CHUNK));
        let chunks: Vec<_> = (0..bytes.len())
            .step_by(size)
            .map(|at| Ok(bytes.slice(at..bytes.len().min(at + size))))
            .collect();
        Box::pin(futures_util::stream::iter(chunks))
    }
}

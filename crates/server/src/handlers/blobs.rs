//! `GET`/`HEAD /v2/<name>/blobs/<digest>`: a hit is served from memory or
//! from an open file; a miss streams from the blob's one upstream fill as
//! bytes arrive.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use regcache_formats::Digest;
use regcache_formats::accept::if_none_match_hits;
use regcache_formats::reference::RepositoryName;
use regcache_formats::schema1::{EMPTY_LAYER_BYTES, EMPTY_LAYER_DIGEST};
use regcache_store::{FillReader, Source};

use super::App;
use crate::error::Error;
use crate::metrics::ServedFrom;
use crate::request::Target;
use crate::services::blobs::{BlobHeadAnswer, ColdBlob};
use crate::web::body::Body;
use crate::web::range::{BlobSlice, RangeSpec, parse_range};
use crate::web::response::{blob_headers, not_modified, range_not_satisfiable, serve_source};
use crate::web::stream::fill_body;

/// A cold blob's fill and the part of it to send, or the length a `Range`
/// could not be satisfied in.
pub(super) enum ColdSlice {
    Send(BlobSlice, FillReader),
    Unsatisfiable(u64),
}

impl App {
    pub(super) async fn get_blob(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response<Body>, Error> {
        if if_none_match_hits(headers.get_all(header::IF_NONE_MATCH).iter(), digest) {
            return Ok(not_modified(digest));
        }
        let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        if digest.as_str() == EMPTY_LAYER_DIGEST {
            let src = Source::Bytes(Bytes::from_static(&EMPTY_LAYER_BYTES));
            return serve_source(src, digest, range, head);
        }
        // A config regcache generated (Schema 1 upgrade) is not the
        // upstream's: served from the cache, or rebuilt from its source.
        if let Some(src) = self
            .services
            .upgrade
            .generated_blob(target, name, digest)
            .await?
        {
            return serve_source(src, digest, range, head);
        }
        if head {
            return self.head_blob(target, name, digest, range).await;
        }
        if let Some(src) = self.services.blobs.cached(digest).await? {
            let meter = self.metrics.meter(ServedFrom::Cache);
            return Ok(serve_source(src, digest, range, head)?.map(|b| b.metered(meter)));
        }
        match self.cold_slice(target, name, digest, range).await? {
            ColdSlice::Send(slice, reader) => {
                let body =
                    fill_body(reader, &slice).metered(self.metrics.meter(ServedFrom::Upstream));
                Ok(blob_headers(
                    slice.status,
                    digest,
                    slice.n,
                    slice.content_range,
                    body,
                ))
            }
            ColdSlice::Unsatisfiable(len) => Ok(range_not_satisfiable(len)),
        }
    }

    /// A blob the cache lacks: its fill and the part of it to send. Its
    /// bytes are counted as they are written (a meter on the response).
    pub(super) async fn cold_slice(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
        range: Option<&str>,
    ) -> Result<ColdSlice, Error> {
        let ColdBlob { len, reader } = self.services.blobs.cold(target, name, digest).await?;
        let Some(slice) = BlobSlice::of(range, len) else {
            return Ok(ColdSlice::Unsatisfiable(len));
        };
        Ok(ColdSlice::Send(slice, reader))
    }

    /// `HEAD` asks the upstream (see [`crate::services::BlobService::head`]).
    async fn head_blob(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
        range: Option<&str>,
    ) -> Result<Response<Body>, Error> {
        let size = match self.services.blobs.head(target, name, digest).await? {
            BlobHeadAnswer::Upstream(size) => size,
            BlobHeadAnswer::Cached(src) => return serve_source(src, digest, range, true),
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
}

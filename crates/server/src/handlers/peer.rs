//! Blobs for the other replicas: what the cluster's internal endpoint
//! ([`crate::cluster`]) serves when this replica owns a digest.
//!
//! The asker already checked its client's access; here the question is only
//! "which upstream and repository to fill it through". A cached blob is
//! streamed from the asked offset; otherwise the one fill of the digest is
//! joined or started ([`crate::services::BlobService::cold_for_peer`], which
//! never asks a peer in turn) and streamed as it arrives.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use regcache_formats::reference::RepositoryName;
use regcache_formats::{Digest, ErrorCode, RegistryError};
use regcache_store::Source;

use super::App;
use crate::cluster::{InternalBlob, InternalBlobs};
use crate::error::Error;
use crate::request::Target;
use crate::services::blobs::ColdBlob;

/// Bytes per read when streaming a cached file to a peer.
const CHUNK: usize = 256 * 1024;

/// [`InternalBlobs`] over the app's upstreams and blob service.
#[derive(Debug, Clone)]
pub struct PeerBlobs {
    app: Arc<App>,
}

impl PeerBlobs {
    pub fn new(app: Arc<App>) -> PeerBlobs {
        PeerBlobs { app }
    }

    async fn serve(
        &self,
        upstream: &str,
        repository: &RepositoryName,
        digest: &Digest,
        offset: u64,
    ) -> Result<InternalBlob, Error> {
        let up = (self.app.upstreams().iter())
            .find(|u| u.name == upstream)
            .cloned()
            .ok_or_else(|| {
                Error::client_status(
                    404,
                    RegistryError::with_message(
                        ErrorCode::NameUnknown,
                        format!("this replica has no upstream named {upstream:?}"),
                    ),
                )
            })?;
        let blobs = &self.app.services().blobs;
        if let Some(src) = blobs.cached(digest).await? {
            let len = src.len();
            check_offset(offset, len)?;
            return Ok(InternalBlob {
                len,
                body: source_stream(src, offset),
            });
        }
        let target = Target::for_peer(up);
        let ColdBlob { len, reader } = blobs.cold_for_peer(&target, repository, digest).await?;
        check_offset(offset, len)?;
        let body = reader
            .range(offset, None)
            .map(|r| r.map_err(std::io::Error::other))
            .boxed();
        Ok(InternalBlob { len, body })
    }
}

impl InternalBlobs for PeerBlobs {
    fn blob<'a>(
        &'a self,
        upstream: &'a str,
        repository: &'a RepositoryName,
        digest: &'a Digest,
        offset: u64,
    ) -> BoxFuture<'a, Result<InternalBlob, Error>> {
        Box::pin(self.serve(upstream, repository, digest, offset))
    }
}

fn check_offset(offset: u64, len: u64) -> Result<(), Error> {
    if offset > len {
        return Err(Error::client_status(
            416,
            RegistryError::with_message(
                ErrorCode::BlobUnknown,
                format!("offset {offset} is past the blob's {len} bytes"),
            ),
        ));
    }
    Ok(())
}

/// A cached blob from `offset`: a slice of memory, or the open file read in
/// chunks on the blocking pool (positioned reads: the descriptor is ours).
fn source_stream(src: Source, offset: u64) -> BoxStream<'static, std::io::Result<Bytes>> {
    match src {
        Source::File { file, len } => {
            let file = Arc::new(file);
            stream::try_unfold(offset, move |pos| {
                let file = file.clone();
                async move {
                    if pos >= len {
                        return Ok(None);
                    }
                    let want = (len - pos).min(CHUNK as u64) as usize;
                    let chunk = tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        let mut buf = vec![0u8; want];
                        file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
                    })
                    .await
                    .map_err(std::io::Error::other)??;
                    Ok(Some((chunk, pos + want as u64)))
                }
            })
            .boxed()
        }
        Source::Bytes(bytes) => {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            stream::once(async move { Ok(bytes.slice(from..)) }).boxed()
        }
        _ => stream::once(async { Err(std::io::Error::other("a cache hit of an unknown form")) })
            .boxed(),
    }
}

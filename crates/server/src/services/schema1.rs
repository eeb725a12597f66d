//! Schema 1 for old clients: renderings of Schema 2 / OCI images, converted
//! and signed once per (repository as the client named it, tag, source
//! digest), kept by their own digest (so a later pull by that digest works)
//! and recorded in the mapping log; and signatures for stored Schema 1
//! payloads.
//!
//! A rendering regcache no longer holds (evicted) is rebuilt from the mapping
//! log's source manifest: the conversion is deterministic, so the bytes and
//! the digest are the same.

use std::sync::Arc;

use bytes::Bytes;
use regcache_formats::jws::{self, SigningKey};
use regcache_formats::manifest::Manifest;
use regcache_formats::media_type;
use regcache_formats::reference::{RepositoryName, Tag};
use regcache_formats::{Digest, RegistryError, schema1};
use regcache_store::{Direction, MappingRecord, Store};

use super::blobs::BlobService;
use super::manifests::ManifestService;
use super::unix_now;
use crate::error::Error;
use crate::metrics::{Kind, Metrics};
use crate::request::Target;

/// Largest config blob read into memory for a conversion.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A Schema 1 rendering ready to serve.
#[derive(Clone, Debug)]
pub struct Rendering {
    pub digest: Digest,
    pub signed: Bytes,
}

/// The rendering of one source under one name and tag (the name and tag are
/// embedded in the document).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RenderingKey {
    repository: String,
    tag: String,
    source: Digest,
}

/// Schema 1 rendering and signing. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Schema1Service {
    key: SigningKey,
    store: Store,
    metrics: Arc<Metrics>,
    manifests: ManifestService,
    blobs: BlobService,
    renderings: moka::sync::Cache<RenderingKey, Rendering>,
    /// Signed bodies of Schema 1 payloads served by digest (stable bytes per key).
    signed: moka::sync::Cache<Digest, Bytes>,
}

impl Schema1Service {
    pub fn new(
        key: SigningKey,
        store: Store,
        metrics: Arc<Metrics>,
        manifests: ManifestService,
        blobs: BlobService,
    ) -> Schema1Service {
        Schema1Service {
            key,
            store,
            metrics,
            manifests,
            blobs,
            renderings: moka::sync::Cache::builder()
                .max_capacity(32 << 20)
                .weigher(|_, r: &Rendering| u32::try_from(r.signed.len()).unwrap_or(u32::MAX))
                .build(),
            signed: moka::sync::Cache::builder()
                .max_capacity(16 << 20)
                .weigher(|_, b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
                .build(),
        }
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// A stored Schema 1 payload, signed with regcache's key (distribution
    /// also re-signs stored Schema 1 when it serves it).
    pub fn signed(&self, m: &Manifest) -> Result<Bytes, Error> {
        if let Some(s) = self.signed.get(&m.digest) {
            return Ok(s);
        }
        let s = Bytes::from(
            jws::sign(&m.raw, &self.key, unix_now() as i64)
                .map_err(|e| Error::internal("signing a schema 1 manifest", e))?,
        );
        self.signed.insert(m.digest.clone(), s.clone());
        Ok(s)
    }

    /// The Schema 1 rendering of the image manifest `source` under
    /// (name, tag): converted once, signed once, remembered by digest and in
    /// the mapping log.
    pub async fn render(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &Tag,
        source: &Manifest,
    ) -> Result<Rendering, Error> {
        let client = target.client_name(name);
        let key = RenderingKey {
            repository: client.clone(),
            tag: tag.as_str().to_owned(),
            source: source.digest.clone(),
        };
        if let Some(r) = self.renderings.get(&key) {
            self.metrics.hit(Kind::Schema1);
            return Ok(r);
        }
        target
            .in_span(self.render_now(target, name, tag, source, key))
            .await
    }

    async fn render_now(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &Tag,
        source: &Manifest,
        key: RenderingKey,
    ) -> Result<Rendering, Error> {
        let client = key.repository.clone();
        self.metrics.miss(Kind::Schema1);
        let image = source
            .as_image()
            .ok_or_else(|| Error::bug("a schema 1 conversion of a non-image manifest"))?;
        let config = self
            .blobs
            .bytes(target, name, &image.config.digest, MAX_CONFIG_BYTES)
            .await?;
        let payload = schema1::convert_image(image, &config, &client, tag.as_str())
            .map_err(|e| Error::from(RegistryError::with_message(e.error_code(), e.to_string())))?;
        let digest = schema1::canonical_digest(&payload);
        let signed = Bytes::from(
            jws::sign(&payload, &self.key, unix_now() as i64)
                .map_err(|e| Error::internal("signing a schema 1 rendering", e))?,
        );
        if let Err(e) = self.store.put_bytes(&digest, Bytes::from(payload)).await {
            tracing::warn!(%digest, error = %e, "could not keep the Schema 1 payload");
        }
        let record = MappingRecord {
            upstream: target.upstream.name.clone(),
            repository: client.clone(),
            tag: tag.as_str().to_owned(),
            direction: Direction::ToSchema1,
            digest: digest.clone(),
            media_type: media_type::SCHEMA1_SIGNED.to_owned(),
            source_digest: source.digest.clone(),
            source_media_type: source.media_type.as_str().to_owned(),
            first_seen_unix: unix_now(),
        };
        if let Err(e) = self.store.mappings().append(record) {
            tracing::warn!(%digest, error = %e, "could not record the Schema 1 mapping");
        }
        self.signed.insert(digest.clone(), signed.clone());
        let r = Rendering { digest, signed };
        self.renderings.insert(key, r.clone());
        tracing::info!(repo = %client, %tag, source = %source.digest, schema1 = %r.digest, "converted to schema 1");
        Ok(r)
    }

    /// What the mapping log says `digest` (a rendering regcache made for
    /// this repository) was made from.
    pub fn mapping(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Option<MappingRecord> {
        self.store.mappings().find_made(
            &target.upstream.name,
            &target.client_name(name),
            digest,
            Direction::ToSchema1,
        )
    }

    /// A rendering regcache made but no longer holds, rebuilt from its
    /// source; `None` when `digest` is not one of regcache's renderings.
    pub async fn regenerated(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<Arc<Manifest>>, Error> {
        let Some(rec) = self.mapping(target, name, digest) else {
            return Ok(None);
        };
        let Ok(tag) = Tag::parse(&rec.tag) else {
            return Ok(None);
        };
        let source = self.manifests.source_of(target, name, &rec).await?;
        self.renderings.invalidate(&RenderingKey {
            repository: target.client_name(name),
            tag: rec.tag.clone(),
            source: rec.source_digest.clone(),
        });
        let r = self.render(target, name, &tag, &source).await?;
        if r.digest != *digest {
            return Ok(None);
        }
        self.manifests
            .cached(digest, Some(media_type::SCHEMA1))
            .await
    }
}

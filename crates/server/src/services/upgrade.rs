//! Schema 1 images upgraded to Docker Schema 2 for engines that refuse
//! Schema 1 (containerd 2.x), byte for byte what `skopeo copy --format v2s2`
//! writes ([`regcache_formats::upgrade`]).
//!
//! The config needs each layer's diff ID, the sha256 of the uncompressed
//! layer: the layer blob streams through the cache (a fill when it is not
//! cached) into a decompressor and a hash ([`super::diffid`]), once per
//! blob digest: the result is kept in memory and in the store's diff ID log,
//! so a restart does not hash again.
//!
//! An upgrade is built once per Schema 1 digest (the result does not depend
//! on the name or tag). The config and the manifest go into the store under
//! their digests, and both are recorded in the mapping log
//! ([`Direction::Schema1ToSchema2`]: one row for the manifest, one for the
//! config), which is how a config evicted from the cache is rebuilt from its
//! Schema 1 source instead of being asked of the upstream (which never had
//! it), and how, with client authentication on, generated content is known
//! to belong to the repository it was made for ([`super::links`]).
//!
//! An image whose config containers/image would first re-encode (built by
//! Docker before 1.8.3) is not upgraded: its Schema 1 is served as it is,
//! as under `schema1_upgrade = "off"`, rather than bytes skopeo would not
//! produce.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use regcache_formats::Digest;
use regcache_formats::manifest::Manifest;
use regcache_formats::media_type::{DOCKER_CONFIG, SCHEMA2};
use regcache_formats::reference::{RepositoryName, Tag};
use regcache_formats::upgrade::{self, LayerFacts, Plan};
use regcache_store::{DiffIdRecord, Direction, MappingRecord, Source, Store};

use super::blobs::{BlobService, ColdBlob};
use super::coalesce::Coalesce;
use super::diffid::DiffHasher;
use super::links::Links;
use super::manifests::ManifestService;
use super::unix_now;
use crate::error::Error;
use crate::metrics::{Kind, Metrics};
use crate::request::Target;

/// Blob bytes in flight between the download and the hashing thread.
const HASH_QUEUE_CHUNKS: usize = 4;
/// Read size when hashing a cached file.
const FILE_READ_BYTES: usize = 1 << 20;

/// One upgrade: the manifest (kept by the manifest service) and its config.
#[derive(Clone, Debug)]
pub struct Built {
    pub manifest: Arc<Manifest>,
    pub config: Bytes,
    pub config_digest: Digest,
}

/// Schema 1 → Schema 2 upgrades. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UpgradeService {
    store: Store,
    metrics: Arc<Metrics>,
    manifests: ManifestService,
    blobs: BlobService,
    links: Links,
    /// Layer facts by blob digest (in front of the store's diff ID log).
    facts: moka::sync::Cache<Digest, LayerFacts>,
    /// Upgrades by Schema 1 digest.
    built: moka::sync::Cache<Digest, Built>,
    hashing: Arc<Coalesce<Digest, LayerFacts>>,
    building: Arc<Coalesce<Digest, Built>>,
}

impl UpgradeService {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        manifests: ManifestService,
        blobs: BlobService,
        links: Links,
    ) -> UpgradeService {
        UpgradeService {
            store,
            metrics,
            manifests,
            blobs,
            links,
            facts: moka::sync::Cache::builder().max_capacity(100_000).build(),
            built: moka::sync::Cache::builder()
                .max_capacity(32 << 20)
                .weigher(|_, b: &Built| {
                    u32::try_from(b.manifest.raw.len() + b.config.len()).unwrap_or(u32::MAX)
                })
                .build(),
            hashing: Arc::new(Coalesce::new()),
            building: Arc::new(Coalesce::new()),
        }
    }

    /// The Docker Schema 2 form of the Schema 1 manifest `schema1`, which
    /// the client pulled as `name:tag`: built once, kept, recorded, and
    /// linked to `name`.
    pub async fn upgrade(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &Tag,
        schema1: &Manifest,
    ) -> Result<Arc<Manifest>, Error> {
        let Some(built) = self.built(target, name, schema1).await? else {
            // Not reproducible: served as it is, as with `schema1_upgrade = "off"`.
            return Ok(Arc::new(schema1.clone()));
        };
        self.record(target, name, tag.as_str(), schema1, &built);
        Ok(built.manifest)
    }

    /// The upgrade of `schema1`; `None` when containerd/image's result
    /// cannot be reproduced (a config it re-encodes, Docker < 1.8.3).
    async fn built(
        &self,
        target: &Target,
        name: &RepositoryName,
        schema1: &Manifest,
    ) -> Result<Option<Built>, Error> {
        if let Some(b) = self.built.get(&schema1.digest) {
            self.metrics.hit(Kind::Upgrade);
            return Ok(Some(b));
        }
        let s1 = schema1
            .as_schema1()
            .ok_or_else(|| Error::bug("a schema 1 upgrade of a manifest that is not schema 1"))?;
        let plan = match upgrade::plan(s1) {
            Ok(plan) => plan,
            Err(e @ upgrade::UpgradeError::LegacyDockerVersion(_)) => {
                tracing::info!(source = %schema1.digest, error = %e, "not upgraded; serving the schema 1 as it is");
                return Ok(None);
            }
            Err(e) => return Err(invalid(e)),
        };
        let this = self.clone();
        let (target, name, source) = (target.clone(), name.clone(), schema1.digest.clone());
        self.building
            .run(schema1.digest.clone(), move || async move {
                this.metrics.miss(Kind::Upgrade);
                let b = this.build(&target, &name, &source, &plan).await?;
                this.built.insert(source, b.clone());
                Ok(b)
            })
            .await
            .map(Some)
    }

    async fn build(
        &self,
        target: &Target,
        name: &RepositoryName,
        source: &Digest,
        plan: &Plan,
    ) -> Result<Built, Error> {
        let mut facts = Vec::new();
        for layer in plan.layers() {
            facts.push(self.layer_facts(target, name, &layer).await?);
        }
        let u = plan.build(&facts).map_err(invalid)?;
        let config = Bytes::from(u.config);
        if let Err(e) = self.store.put_bytes(&u.config_digest, config.clone()).await {
            tracing::warn!(digest = %u.config_digest, error = %e, "could not keep the upgraded config");
        }
        let m = Manifest::parse(u.manifest, Some(SCHEMA2))
            .map_err(|e| Error::internal("parsing an upgraded manifest", e))?;
        let manifest = self.manifests.keep(m).await?;
        tracing::info!(%source, schema2 = %manifest.digest, config = %u.config_digest, "upgraded schema 1 to schema 2");
        Ok(Built {
            manifest,
            config,
            config_digest: u.config_digest,
        })
    }

    /// Mapping rows (manifest and config) and links for `name`.
    fn record(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &str,
        source: &Manifest,
        b: &Built,
    ) {
        let repository = target.client_name(name);
        for (digest, media_type) in [
            (&b.manifest.digest, SCHEMA2),
            (&b.config_digest, DOCKER_CONFIG),
        ] {
            let record = MappingRecord {
                upstream: target.upstream.name.clone(),
                repository: repository.clone(),
                tag: tag.to_owned(),
                direction: Direction::Schema1ToSchema2,
                digest: digest.clone(),
                media_type: media_type.to_owned(),
                source_digest: source.digest.clone(),
                source_media_type: source.media_type.as_str().to_owned(),
                first_seen_unix: unix_now(),
            };
            if let Err(e) = self.store.mappings().append(record) {
                tracing::warn!(%digest, error = %e, "could not record the upgrade mapping");
            }
        }
        self.links.link_manifest(target, name, &b.manifest);
    }

    /// A blob regcache generated for `name` (an upgraded config): the
    /// cached copy, or rebuilt from its Schema 1 source. `None` for any
    /// other digest.
    pub async fn generated_blob(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<Source>, Error> {
        let Some(rec) = self.mapping(target, name, digest) else {
            return Ok(None);
        };
        if rec.media_type != DOCKER_CONFIG {
            return Ok(None);
        }
        if let Some(src) = self.blobs.cached(digest).await? {
            return Ok(Some(src));
        }
        let source = self.manifests.source_of(target, name, &rec).await?;
        self.built.invalidate(&rec.source_digest);
        let Some(b) = self.built(target, name, &source).await? else {
            return Ok(None);
        };
        if b.config_digest != *digest {
            tracing::warn!(%digest, rebuilt = %b.config_digest, "an upgraded config rebuilt to other bytes");
            return Ok(None);
        }
        Ok(Some(Source::Bytes(b.config)))
    }

    /// The upgraded manifest `digest` made for `name`, rebuilt from its
    /// Schema 1 source when the cache no longer holds it; `None` when
    /// `digest` is not one regcache made there.
    pub async fn regenerated(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<Arc<Manifest>>, Error> {
        let Some(rec) = self.mapping(target, name, digest) else {
            return Ok(None);
        };
        if rec.media_type != SCHEMA2 {
            return Ok(None);
        }
        let source = self.manifests.source_of(target, name, &rec).await?;
        self.built.invalidate(&rec.source_digest);
        let b = self.built(target, name, &source).await?;
        Ok(b.map(|b| b.manifest).filter(|m| m.digest == *digest))
    }

    /// The upgrade mapping row of `digest` in `name`, if regcache made it there.
    pub fn mapping(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Option<MappingRecord> {
        generated_here(&self.store, target, name, digest)
    }

    /// The diff ID and size of a layer blob: remembered, logged, or hashed now.
    async fn layer_facts(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<LayerFacts, Error> {
        if let Some(f) = self.facts.get(digest) {
            return Ok(f);
        }
        if let Some(r) = self.store.diff_ids().get(digest) {
            let f = LayerFacts {
                diff_id: r.diff_id,
                size: r.size,
            };
            self.facts.insert(digest.clone(), f.clone());
            return Ok(f);
        }
        let this = self.clone();
        let (target, name, d) = (target.clone(), name.clone(), digest.clone());
        self.hashing
            .run(digest.clone(), move || async move {
                let f = this.hash(&target, &name, &d).await?;
                let record = DiffIdRecord {
                    digest: d.clone(),
                    diff_id: f.diff_id.clone(),
                    size: f.size,
                };
                if let Err(e) = this.store.diff_ids().append(record) {
                    tracing::warn!(digest = %d, error = %e, "could not log a diff ID");
                }
                this.facts.insert(d, f.clone());
                Ok(f)
            })
            .await
    }

    /// Stream the blob (cached, or through its fill) into a [`DiffHasher`]
    /// on the blocking pool.
    async fn hash(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<LayerFacts, Error> {
        let failed = |e: std::io::Error| {
            Error::internal(format!("computing the diff ID of layer {digest}"), e)
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE_CHUNKS);
        let (file, bytes, cold) = match self.blobs.cached(digest).await? {
            Some(Source::File { file, .. }) => (Some(file), None, false),
            Some(Source::Bytes(b)) => (None, Some(b), false),
            Some(_) => return Err(Error::bug("an unknown kind of cached blob")),
            None => (None, None, true),
        };
        let worker = tokio::task::spawn_blocking(move || -> std::io::Result<(Digest, u64)> {
            let mut h = DiffHasher::default();
            if let Some(mut file) = file {
                use std::io::Read;
                let mut buf = vec![0u8; FILE_READ_BYTES];
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n])?;
                }
            }
            while let Some(chunk) = rx.blocking_recv() {
                h.update(&chunk)?;
            }
            h.finish()
        });
        if let Some(b) = bytes {
            let _ = tx.send(b).await;
        } else if cold {
            // Not cached: stream it through its fill.
            let ColdBlob { mut reader, .. } = self.blobs.cold(target, name, digest).await?;
            while let Some(chunk) = reader.next().await {
                let chunk = chunk.map_err(|e| Error::fill(e, &target.upstream.name))?;
                if tx.send(chunk).await.is_err() {
                    break; // the hasher failed; its error follows
                }
            }
        }
        drop(tx);
        let (diff_id, size) = worker
            .await
            .map_err(|e| Error::internal("a diff ID task failed", e))?
            .map_err(failed)?;
        tracing::debug!(%digest, %diff_id, size, "layer diff ID computed");
        Ok(LayerFacts { diff_id, size })
    }
}

/// The Schema 1 → Schema 2 mapping row of `digest` in `name`, if regcache
/// generated it there.
pub fn generated_here(
    store: &Store,
    target: &Target,
    name: &RepositoryName,
    digest: &Digest,
) -> Option<MappingRecord> {
    store.mappings().find_made(
        &target.upstream.name,
        &target.client_name(name),
        digest,
        Direction::Schema1ToSchema2,
    )
}

fn invalid(e: upgrade::UpgradeError) -> Error {
    Error::from(regcache_formats::RegistryError::with_message(
        e.error_code(),
        e.to_string(),
    ))
}

#[cfg(test)]
#[path = "upgrade_tests.rs"]
mod tests;

//! Manifests by digest: a parsed-manifest cache over the store, and one
//! verified upstream `GET` by digest per (upstream, repository, digest).
//!
//! A manifest is kept as the exact bytes its digest covers (for a signed
//! Schema 1 manifest, its canonical payload; regcache re-signs it when
//! serving, as distribution does), and cached for good: content addressing
//! means it never changes.
//!
//! Last use: a hit on the parsed cache never reaches the store, so it tells
//! the disk tier's index about the access itself, at most once a second
//! per manifest (one relaxed atomic load per hit otherwise): `regcache ls`
//! and `purge --older-than` read last use from that index.

use std::sync::Arc;

use bytes::Bytes;
use regcache_formats::jws;
use regcache_formats::manifest::Manifest;
use regcache_formats::media_type::{self, ALL_MANIFEST_TYPES};
use regcache_formats::reference::{Reference, RepositoryName};
use regcache_formats::{Digest, MediaType};
use regcache_store::{MappingRecord, Store, TagRecord};
use regcache_upstream::UpstreamApi;

use super::coalesce::Coalesce;
use super::unix_now;
use crate::error::Error;
use crate::metrics::{Kind, Metrics};
use crate::request::Target;

/// A manifest fetch asks one upstream for one repository, and another
/// upstream (or repository) may not have it: flights are keyed by all three.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ManifestKey {
    upstream: String,
    repository: String,
    digest: Digest,
}

/// Manifests by digest. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ManifestService {
    store: Store,
    metrics: Arc<Metrics>,
    /// Parsed manifests by digest (the store keeps the bytes; parsing on
    /// every hit would cost more than the hit itself).
    parsed: moka::sync::Cache<Digest, Arc<Parsed>>,
    flights: Arc<Coalesce<ManifestKey, Arc<Manifest>>>,
}

/// A parsed manifest and the second its last use was passed to the store.
#[derive(Debug)]
struct Parsed {
    manifest: Arc<Manifest>,
    touched_unix: std::sync::atomic::AtomicU64,
}

impl Parsed {
    fn new(manifest: Arc<Manifest>) -> Arc<Parsed> {
        Arc::new(Parsed {
            manifest,
            touched_unix: std::sync::atomic::AtomicU64::new(unix_now()),
        })
    }
}

impl ManifestService {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> ManifestService {
        ManifestService {
            store,
            metrics,
            parsed: moka::sync::Cache::builder()
                .max_capacity(64 << 20)
                .weigher(|_, p: &Arc<Parsed>| {
                    u32::try_from(p.manifest.raw.len()).unwrap_or(u32::MAX)
                })
                .build(),
            flights: Arc::new(Coalesce::new()),
        }
    }

    /// A manifest regcache holds: parsed cache, then store. Counted as a hit.
    pub async fn cached(
        &self,
        digest: &Digest,
        hint: Option<&str>,
    ) -> Result<Option<Arc<Manifest>>, Error> {
        if let Some(p) = self.parsed.get(digest) {
            self.metrics.hit(Kind::Manifest);
            let now = unix_now();
            let touched = &p.touched_unix;
            if touched.load(std::sync::atomic::Ordering::Relaxed) != now {
                touched.store(now, std::sync::atomic::Ordering::Relaxed);
                self.store.disk().touch(digest);
            }
            return Ok(Some(p.manifest.clone()));
        }
        let Some(src) = self
            .store
            .get(digest)
            .await
            .map_err(|e| Error::cache("reading the manifest cache", e))?
        else {
            return Ok(None);
        };
        // A cached copy that can't be read or doesn't parse (a failing or
        // tampered disk) is dropped and treated as a miss: the caller fetches
        // it again from the upstream.
        let parsed = match src.into_bytes().await {
            Ok(bytes) => Manifest::parse(bytes.to_vec(), hint).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let m = match parsed {
            Ok(m) => Arc::new(m),
            Err(error) => {
                self.drop_bad(digest, &error).await;
                return Ok(None);
            }
        };
        self.metrics.hit(Kind::Manifest);
        self.parsed.insert(digest.clone(), Parsed::new(m.clone()));
        Ok(Some(m))
    }

    /// Drops a manifest from the parsed cache (a purge removed it from the
    /// store): the next request reads the store, then the upstream.
    pub fn forget(&self, digest: &Digest) {
        self.parsed.invalidate(digest);
    }

    async fn drop_bad(&self, digest: &Digest, why: &str) {
        tracing::warn!(%digest, why, "cached manifest unusable; dropping it and fetching it again");
        if let Err(error) = self.store.remove(digest).await {
            tracing::warn!(%digest, %error, "could not drop the unusable cached manifest");
        }
    }

    /// A manifest by digest: from the cache, else fetched.
    pub async fn get(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
        hint: Option<&str>,
    ) -> Result<Arc<Manifest>, Error> {
        match self.cached(digest, hint).await? {
            Some(m) => Ok(m),
            None => self.fetch(target, name, digest, hint).await,
        }
    }

    /// The manifest a generated one was made from (its mapping record's
    /// source): cached, else fetched.
    pub async fn source_of(
        &self,
        target: &Target,
        name: &RepositoryName,
        record: &MappingRecord,
    ) -> Result<Arc<Manifest>, Error> {
        self.get(
            target,
            name,
            &record.source_digest,
            Some(&record.source_media_type),
        )
        .await
    }

    /// One verified upstream `GET` by digest (coalesced), kept for good.
    /// Counted as a miss.
    pub async fn fetch(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
        hint: Option<&str>,
    ) -> Result<Arc<Manifest>, Error> {
        self.metrics.miss(Kind::Manifest);
        let upstream = target.client().clone();
        let this = self.clone();
        let repo = name.as_str().to_owned();
        let d = digest.clone();
        let hint = hint.map(str::to_owned);
        let key = ManifestKey {
            upstream: target.upstream.name.clone(),
            repository: repo.clone(),
            digest: digest.clone(),
        };
        target
            .in_span(self.flights.run(key, move || async move {
                this.fetch_now(&*upstream, &repo, &d, hint.as_deref()).await
            }))
            .await
    }

    async fn fetch_now(
        &self,
        upstream: &dyn UpstreamApi,
        repo: &str,
        digest: &Digest,
        hint: Option<&str>,
    ) -> Result<Arc<Manifest>, Error> {
        let body = upstream
            .get_manifest(repo, digest.as_str(), &ALL_MANIFEST_TYPES)
            .await?;
        let hint = body.content_type.as_deref().or(hint);
        let m = verified(upstream.name(), body.bytes, hint, Some(digest))?;
        if m.digest != *digest {
            return Err(Error::BadUpstream {
                upstream: upstream.name().to_owned(),
                message: format!("the manifest for {digest} hashes to {}", m.digest),
            });
        }
        self.keep(m).await
    }

    /// Keep a verified manifest: in the store and parsed. A store that can't
    /// write (full or read-only disk) only costs the disk copy: the manifest
    /// is still served, and kept in memory.
    pub async fn keep(&self, m: Manifest) -> Result<Arc<Manifest>, Error> {
        if let Err(error) = self
            .store
            .put_bytes(&m.digest, Bytes::from_owner(m.raw.clone()))
            .await
        {
            // The disk tier counts and reports it (once per change of state).
            tracing::debug!(digest = %m.digest, %error, "manifest not cached on disk");
        }
        let m = Arc::new(m);
        self.parsed.insert(m.digest.clone(), Parsed::new(m.clone()));
        Ok(m)
    }

    /// A manifest the upstream accepted from a push: it is what the tag
    /// means now, so it is kept and the tag index updated at once (the next
    /// pull through regcache sees it without waiting for the tag TTL).
    /// Failures are logged: the push itself succeeded.
    pub async fn keep_pushed(
        &self,
        target: &Target,
        name: &RepositoryName,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
        digest: Option<&Digest>,
    ) {
        let m = match verified(&target.upstream.name, bytes, content_type, digest) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "pushed manifest not cached");
                return;
            }
        };
        let record = TagRecord {
            digest: m.digest.clone(),
            media_type: m.media_type.as_str().to_owned(),
            size: m.raw.len() as u64,
            fetched_at_unix: unix_now(),
        };
        if let Err(e) = self.keep(m).await {
            tracing::warn!(error = %e, "could not keep the pushed manifest");
        }
        if let Reference::Tag(tag) = reference
            && let Err(e) =
                self.store
                    .tags()
                    .put(&target.upstream.name, name.as_str(), tag.as_str(), record)
        {
            tracing::warn!(error = %e, "could not record the pushed tag");
        }
    }
}

/// Parse upstream manifest bytes into what regcache stores: the exact bytes,
/// or for a signed Schema 1 manifest its canonical payload (whose sha256 is
/// the manifest's digest).
pub fn verified(
    upstream: &str,
    bytes: Bytes,
    hint: Option<&str>,
    expected: Option<&Digest>,
) -> Result<Manifest, Error> {
    let invalid = |message: String| Error::BadUpstream {
        upstream: upstream.to_owned(),
        message: format!("a manifest regcache cannot read: {message}"),
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

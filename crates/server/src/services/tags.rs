//! Tags: tag → manifest through a persisted tag index trusted for `tag_ttl`,
//! then revalidated with an upstream `HEAD` (which Docker Hub does not count
//! as a pull), coalesced per (upstream, repository, tag).
//!
//! Stale-while-revalidate: for `stale_while_revalidate` past the TTL the
//! cached answer is served at once and the HEAD runs in the background (the
//! same coalesced flight a waiting request would join); the next request
//! after it sees the new answer. Past that window, or when the stale answer's
//! manifest cannot be had, the request waits. Stale-if-error: when the
//! upstream is unavailable, the cached answer serves for `stale_if_error`
//! past the TTL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use regcache_formats::manifest::Manifest;
use regcache_formats::media_type::ALL_MANIFEST_TYPES;
use regcache_formats::reference::{RepositoryName, Tag};
use regcache_formats::{Digest, ErrorCode, RegistryError};
use regcache_store::{Store, TagRecord};
use regcache_upstream::{UpstreamApi, UpstreamError};
use tracing::Instrument;

use super::coalesce::Coalesce;
use super::manifests::{ManifestService, verified};
use super::unix_now;
use crate::error::Error;
use crate::metrics::{Kind, Metrics};
use crate::request::Target;

/// The same tag name on two upstreams (or repositories) is two things.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TagKey {
    upstream: String,
    repository: String,
    tag: String,
}

/// What a tag resolved to upstream (or, when the upstream is unavailable,
/// the cached answer, `stale`).
#[derive(Clone, Debug)]
struct Resolved {
    digest: Digest,
    media_type: Option<String>,
    stale: bool,
}

/// Tag resolution and revalidation. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TagService {
    store: Store,
    metrics: Arc<Metrics>,
    manifests: ManifestService,
    /// Revalidations in flight; shared (`Arc`) so a stale-while-revalidate
    /// task can join one after its request has been answered.
    flights: Arc<Coalesce<TagKey, Resolved>>,
    /// Tags a stale-while-revalidate task is running for: later stale
    /// requests start none (the flight would coalesce them anyway; this keeps
    /// a burst during a slow HEAD from piling up one waiting task per request).
    refreshing: Arc<Mutex<HashSet<TagKey>>>,
}

impl TagService {
    pub fn new(store: Store, metrics: Arc<Metrics>, manifests: ManifestService) -> TagService {
        TagService {
            store,
            metrics,
            manifests,
            flights: Arc::new(Coalesce::new()),
            refreshing: Arc::default(),
        }
    }

    /// The manifest `name:tag` means now (see the module documentation).
    pub async fn resolve(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &Tag,
    ) -> Result<Arc<Manifest>, Error> {
        let up = &target.upstream;
        let now = unix_now();
        let known = self.store.tags().get(&up.name, name.as_str(), tag.as_str());
        if let Some(rec) = &known {
            let age = now.saturating_sub(rec.fetched_at_unix);
            let ttls = up.ttls();
            let ttl = ttls.tag_ttl.as_secs();
            if age < ttl {
                self.metrics.hit(Kind::Tag);
                return self
                    .manifests
                    .get(target, name, &rec.digest, Some(&rec.media_type))
                    .await;
            }
            if age < ttl.saturating_add(ttls.stale_while_revalidate.as_secs()) {
                self.revalidate_in_background(target, name, tag, rec.clone());
                match self
                    .manifests
                    .get(target, name, &rec.digest, Some(&rec.media_type))
                    .await
                {
                    Ok(m) => {
                        self.metrics.stale_while_revalidate(Kind::Tag);
                        return Ok(m);
                    }
                    // Evicted here and gone upstream (the tag moved and the old
                    // manifest was deleted): wait for the revalidation instead.
                    Err(e) => tracing::debug!(
                        repo = %name, %tag, digest = %rec.digest, error = %e,
                        "stale tag's manifest unavailable; waiting for the revalidation"
                    ),
                }
            }
        }
        self.metrics.miss(Kind::Tag);
        let revalidation = self.revalidation(target, name, tag, known);
        let r = target
            .in_span(
                self.flights
                    .run(revalidation.key.clone(), move || revalidation.run()),
            )
            .await?;
        if r.stale {
            self.metrics.stale(Kind::Tag);
        }
        self.manifests
            .get(target, name, &r.digest, r.media_type.as_deref())
            .await
    }

    fn revalidation(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &Tag,
        known: Option<TagRecord>,
    ) -> Revalidation {
        let up = &target.upstream;
        let ttls = up.ttls();
        Revalidation {
            key: TagKey {
                upstream: up.name.clone(),
                repository: name.as_str().to_owned(),
                tag: tag.as_str().to_owned(),
            },
            upstream: target.client().clone(),
            store: self.store.clone(),
            manifests: self.manifests.clone(),
            known,
            tag_ttl: ttls.tag_ttl,
            stale_limit: ttls.tag_ttl.saturating_add(ttls.stale_if_error),
        }
    }

    /// Start the tag's revalidation, or join the one running, without
    /// waiting for it (stale-while-revalidate). Its answer lands in the tag
    /// index for the next request; a failure is only logged: the stale
    /// answer has been served, and stale-if-error covers the requests after it.
    fn revalidate_in_background(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &Tag,
        known: TagRecord,
    ) {
        let revalidation = self.revalidation(target, name, tag, Some(known.clone()));
        let key = revalidation.key.clone();
        if !self.refreshing.lock().insert(key.clone()) {
            return;
        }
        let refreshing = Refreshing {
            set: self.refreshing.clone(),
            key: key.clone(),
        };
        let flights = self.flights.clone();
        let store = self.store.clone();
        tokio::spawn(
            async move {
                let _refreshing = refreshing;
                let res = flights
                    .run(key.clone(), move || async move {
                        // A revalidation that ended after this request read the
                        // record has answered already: no second HEAD.
                        let k = &revalidation.key;
                        if let Some(cur) = store.tags().get(&k.upstream, &k.repository, &k.tag)
                            && cur.fetched_at_unix > known.fetched_at_unix
                        {
                            return Ok(Resolved {
                                digest: cur.digest,
                                media_type: Some(cur.media_type),
                                stale: false,
                            });
                        }
                        revalidation.run().await
                    })
                    .await;
                match res {
                    // The revalidation logged the upstream failure.
                    Ok(r) if r.stale => {}
                    Ok(r) => tracing::debug!(
                        repo = key.repository, tag = key.tag, digest = %r.digest,
                        "tag revalidated in the background"
                    ),
                    Err(e) => tracing::info!(
                        repo = key.repository, tag = key.tag, error = %e,
                        "background tag revalidation failed"
                    ),
                }
            }
            .instrument(target.span().clone()),
        );
    }
}

/// Marks a tag as having a background revalidation until dropped (when the
/// task ends, however it ends).
struct Refreshing {
    set: Arc<Mutex<HashSet<TagKey>>>,
    key: TagKey,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

/// One revalidating `HEAD` of a tag, and what it did to the tag index.
struct Revalidation {
    key: TagKey,
    upstream: Arc<dyn UpstreamApi>,
    store: Store,
    manifests: ManifestService,
    known: Option<TagRecord>,
    /// How long an answer is trusted, here and from the shared tier.
    tag_ttl: Duration,
    /// How long past its fetch the known answer may serve when the
    /// upstream is unavailable (`tag_ttl + stale_if_error`).
    stale_limit: Duration,
}

impl Revalidation {
    async fn run(self) -> Result<Resolved, Error> {
        let TagKey {
            upstream: up_name,
            repository: repo,
            tag,
        } = &self.key;
        let now = unix_now();
        if let Some(r) = self.shared_answer(now).await {
            return Ok(r);
        }
        match self
            .upstream
            .head_manifest(repo, tag, &ALL_MANIFEST_TYPES)
            .await
        {
            Ok(h) => {
                let (digest, media) = match h.digest {
                    Some(d) => (d, h.media_type),
                    None => {
                        // No Docker-Content-Digest on HEAD: fetch by tag and hash it.
                        let body = self
                            .upstream
                            .get_manifest(repo, tag, &ALL_MANIFEST_TYPES)
                            .await?;
                        let m = verified(
                            up_name,
                            body.bytes,
                            body.content_type.as_deref(),
                            body.digest_header.as_ref(),
                        )?;
                        let m = self.manifests.keep(m).await?;
                        (m.digest.clone(), Some(m.media_type.as_str().to_owned()))
                    }
                };
                let rec = TagRecord {
                    digest: digest.clone(),
                    media_type: media.clone().unwrap_or_default(),
                    size: h.size.unwrap_or(0),
                    fetched_at_unix: now,
                };
                self.share(&rec).await;
                if let Err(e) = self.store.tags().put(up_name, repo, tag, rec) {
                    tracing::warn!(error = %e, "could not record tag");
                }
                Ok(Resolved {
                    digest,
                    media_type: media,
                    stale: false,
                })
            }
            Err(e) if e.is_unavailable() => match self.known {
                Some(rec)
                    if now.saturating_sub(rec.fetched_at_unix) < self.stale_limit.as_secs() =>
                {
                    if matches!(e, UpstreamError::Down { .. }) {
                        // Known down: the breaker logged it once.
                        tracing::debug!(repo, tag, "upstream down; serving the cached tag");
                    } else {
                        tracing::info!(repo, tag, error = %e, "upstream unavailable; serving the cached tag");
                    }
                    Ok(Resolved {
                        digest: rec.digest,
                        media_type: None,
                        stale: true,
                    })
                }
                _ => Err(Error::Upstream(e)),
            },
            // A HEAD carries no body: answer as distribution does for an unknown tag.
            Err(e) => Err(Error::upstream_or_absent(
                e,
                RegistryError::new(ErrorCode::ManifestUnknown)
                    .detail(serde_json::json!({ "Tag": tag })),
            )),
        }
    }
}

impl Revalidation {
    /// Another replica's answer, when the shared tier has one younger than
    /// the TTL (and newer than this replica's): recorded here with its own
    /// fetch time, so every replica's copy expires together and N replicas
    /// make about one upstream `HEAD` per tag per TTL.
    async fn shared_answer(&self, now: u64) -> Option<Resolved> {
        let shared = self.store.shared()?;
        let TagKey {
            upstream,
            repository,
            tag,
        } = &self.key;
        let rec = match tokio::time::timeout(
            SHARED_TAG_WAIT,
            shared.get_tag(upstream, repository, tag),
        )
        .await
        {
            Ok(Ok(Some(rec))) => rec,
            Ok(Ok(None)) => return None,
            Ok(Err(error)) => {
                tracing::warn!(repo = repository, tag, %error, "shared tier unavailable for the tag; asking the upstream");
                return None;
            }
            Err(_) => {
                tracing::warn!(
                    repo = repository,
                    tag,
                    "shared tier slow for the tag; asking the upstream"
                );
                return None;
            }
        };
        let fresh = now.saturating_sub(rec.fetched_at_unix) < self.tag_ttl.as_secs();
        let newer = self
            .known
            .as_ref()
            .is_none_or(|k| rec.fetched_at_unix > k.fetched_at_unix);
        if !fresh || !newer {
            return None;
        }
        let resolved = Resolved {
            digest: rec.digest.clone(),
            media_type: Some(rec.media_type.clone()).filter(|m| !m.is_empty()),
            stale: false,
        };
        tracing::debug!(repo = repository, tag, digest = %rec.digest, "tag answered by the shared tier");
        if let Err(e) = self.store.tags().put(upstream, repository, tag, rec) {
            tracing::warn!(error = %e, "could not record tag");
        }
        Some(resolved)
    }

    /// Publish a fresh answer for the other replicas (best effort).
    async fn share(&self, rec: &TagRecord) {
        let Some(shared) = self.store.shared() else {
            return;
        };
        let TagKey {
            upstream,
            repository,
            tag,
        } = &self.key;
        match tokio::time::timeout(
            SHARED_TAG_WAIT,
            shared.put_tag(upstream, repository, tag, rec),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(repo = repository, tag, %error, "could not share the tag")
            }
            Err(_) => tracing::warn!(repo = repository, tag, "sharing the tag timed out"),
        }
    }
}

/// How long a tag lookup or publication in the shared tier may take.
const SHARED_TAG_WAIT: Duration = Duration::from_secs(2);

#[cfg(test)]
#[path = "tags_tests.rs"]
mod tests;

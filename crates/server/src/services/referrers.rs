//! Referrers (OCI 1.1): which manifests in a repository name a subject
//! digest as their `subject`, through the upstream's referrers API or, when
//! it has none, the referrers tag schema.
//!
//! * The *whole* list is kept per (upstream, repository, subject) in memory
//!   for the upstream's `tag_ttl` (a list changes when a signature or an SBOM
//!   is pushed, as a tag moves), with `stale_if_error` past it when the
//!   upstream is unavailable; `artifactType` filtering is done here on the
//!   kept list, so one upstream request serves every filter. Misses are
//!   coalesced per key. A paginated list (`Link: <…>; rel="next"`) is read
//!   to its end (at most [`MAX_PAGES`] pages) and kept, and answered, whole.
//! * An upstream without the API (`404`, `405`) is remembered for
//!   [`NO_API_RECHECK`]; meanwhile its subjects go straight to the fallback
//!   tag `<alg>-<hex>`, read through the tag and manifest services (so it is
//!   cached and verified like any manifest). No such tag: the empty index,
//!   as a registry with the API answers for a subject nothing refers to.
//! * Acting as the client (`auth = "upstream"`) nothing cached answers: the
//!   upstream is asked with the client's identity every time (as for the
//!   other listings), and the fallback tag is checked with a `HEAD` first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use regcache_formats::media_type::ALL_MANIFEST_TYPES;
use regcache_formats::reference::{RepositoryName, Tag};
use regcache_formats::referrers::{self as index, EMPTY_INDEX};
use regcache_formats::{Digest, ErrorCode};
use regcache_upstream::{ReferrersAnswer, UpstreamApi, referrers};
use serde_json::Value;

use super::coalesce::Coalesce;
use super::tags::TagService;
use super::unix_now;
use crate::error::Error;
use crate::metrics::{Kind, Metrics};
use crate::request::Target;

/// How long an upstream that has no referrers API is believed to have none.
pub const NO_API_RECHECK: Duration = Duration::from_secs(10 * 60);

/// Most pages of a paginated referrers list read (`Link: <…>; rel="next"`).
pub const MAX_PAGES: usize = 16;

/// Most bytes of referrers lists kept in memory.
const CACHE_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    upstream: String,
    repository: String,
    subject: Digest,
}

/// Where a list came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The upstream's referrers API.
    Api,
    /// The fallback tag (referrers tag schema).
    FallbackTag,
    /// Neither had any: the empty index.
    Empty,
}

/// A subject's referrers as regcache knows them.
#[derive(Debug)]
struct Listed {
    /// The list as the upstream (or the fallback tag) had it: served as is
    /// when no filter is asked for.
    raw: Bytes,
    descriptors: Vec<Value>,
    /// `OCI-Filters-Applied` of the upstream's answer: then it is not the
    /// whole list, and is not kept.
    upstream_filters: Option<String>,
    origin: Origin,
    fetched_at_unix: u64,
}

/// The answer to one referrers request.
#[derive(Clone, Debug, PartialEq)]
pub struct Referrers {
    /// An OCI image index.
    pub body: Bytes,
    /// `OCI-Filters-Applied`, when filters were applied.
    pub filters_applied: Option<String>,
    pub origin: Origin,
}

/// Referrers lists. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReferrersService {
    metrics: Arc<Metrics>,
    tags: TagService,
    lists: moka::sync::Cache<Key, Arc<Listed>>,
    flights: Arc<Coalesce<Key, Arc<Listed>>>,
    /// Upstreams found without the API, and when that was learnt.
    no_api: Arc<Mutex<HashMap<String, Instant>>>,
}

impl ReferrersService {
    pub fn new(metrics: Arc<Metrics>, tags: TagService) -> ReferrersService {
        ReferrersService {
            metrics,
            tags,
            lists: moka::sync::Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|_, l: &Arc<Listed>| u32::try_from(l.raw.len()).unwrap_or(u32::MAX))
                .build(),
            flights: Arc::new(Coalesce::new()),
            no_api: Arc::default(),
        }
    }

    /// The referrers of `subject` in `name`, only those of `artifact_type`
    /// when one is given (see the module documentation).
    pub async fn list(
        &self,
        target: &Target,
        name: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, Error> {
        let up = &target.upstream;
        let key = Key {
            upstream: up.name.clone(),
            repository: name.as_str().to_owned(),
            subject: subject.clone(),
        };
        if target.acting_as.is_some() {
            let listed = self.clone().fetch(target.clone(), key).await?;
            return Ok(answer(&listed, artifact_type));
        }
        let known = self.lists.get(&key);
        let ttls = up.ttls();
        if let Some(l) = &known
            && unix_now().saturating_sub(l.fetched_at_unix) < ttls.tag_ttl.as_secs()
        {
            self.metrics.hit(Kind::Referrers);
            return Ok(answer(l, artifact_type));
        }
        self.metrics.miss(Kind::Referrers);
        let (this, t) = (self.clone(), target.clone());
        let fetched = target
            .in_span(
                self.flights
                    .run(key.clone(), move || async move { this.fetch(t, key).await }),
            )
            .await;
        match fetched {
            Ok(l) => Ok(answer(&l, artifact_type)),
            Err(Error::Upstream(e)) if e.is_unavailable() => {
                let limit = ttls.tag_ttl.saturating_add(ttls.stale_if_error).as_secs();
                match known {
                    Some(l) if unix_now().saturating_sub(l.fetched_at_unix) < limit => {
                        tracing::info!(repo = %name, %subject, error = %e, "upstream unavailable; serving the cached referrers");
                        self.metrics.stale(Kind::Referrers);
                        Ok(answer(&l, artifact_type))
                    }
                    _ => Err(Error::Upstream(e)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Ask the upstream (or the fallback tag), and keep the whole list.
    async fn fetch(self, target: Target, key: Key) -> Result<Arc<Listed>, Error> {
        let acting = target.acting_as.is_some();
        let upstream = target.client().clone();
        let name = match RepositoryName::parse(&key.repository) {
            Ok(n) => n,
            Err(e) => return Err(Error::internal("a routed repository name", e)),
        };
        let mut complete = true;
        let listed = if !acting && self.known_without_api(&key.upstream) {
            self.fallback(&target, &name, &key.subject).await?
        } else {
            match upstream.get_referrers(name.as_str(), &key.subject).await? {
                ReferrersAnswer::Index {
                    bytes,
                    filters_applied,
                    next,
                    ..
                } => {
                    let (raw, descriptors, whole) =
                        all_pages(&*upstream, &key, bytes, next).await?;
                    complete = whole;
                    Listed {
                        raw,
                        descriptors,
                        upstream_filters: filters_applied,
                        origin: Origin::Api,
                        fetched_at_unix: unix_now(),
                    }
                }
                no_api @ ReferrersAnswer::NoApi { .. } => {
                    if !acting && no_api.registry_lacks_api() {
                        tracing::debug!(
                            upstream = key.upstream,
                            "no referrers API upstream; using the referrers tag schema"
                        );
                        self.no_api
                            .lock()
                            .insert(key.upstream.clone(), Instant::now());
                    }
                    self.fallback(&target, &name, &key.subject).await?
                }
            }
        };
        let listed = Arc::new(listed);
        if !acting && complete && listed.upstream_filters.is_none() {
            self.lists.insert(key, listed.clone());
        }
        Ok(listed)
    }

    fn known_without_api(&self, upstream: &str) -> bool {
        let mut map = self.no_api.lock();
        match map.get(upstream) {
            Some(since) if since.elapsed() < NO_API_RECHECK => true,
            Some(_) => {
                map.remove(upstream);
                false
            }
            None => false,
        }
    }

    /// The referrers tag schema: the list is the fallback tag's OCI index.
    async fn fallback(
        &self,
        target: &Target,
        name: &RepositoryName,
        subject: &Digest,
    ) -> Result<Listed, Error> {
        let tag = Tag::parse(&index::fallback_tag(subject))
            .map_err(|e| Error::internal("a fallback tag name", e))?;
        let empty = || Listed {
            raw: Bytes::from_static(EMPTY_INDEX),
            descriptors: Vec::new(),
            upstream_filters: None,
            origin: Origin::Empty,
            fetched_at_unix: unix_now(),
        };
        if target.acting_as.is_some() {
            // The client's own credentials decide whether it may see the tag.
            match target
                .client()
                .head_manifest(name.as_str(), tag.as_str(), &ALL_MANIFEST_TYPES)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(empty()),
                Err(e) => return Err(Error::Upstream(e)),
            }
        }
        let m = match self.tags.resolve(target, name, &tag).await {
            Ok(m) => m,
            Err(e) if absent(&e) => return Ok(empty()),
            Err(e) => return Err(e),
        };
        match index::descriptors_of(&m) {
            Ok(descriptors) => Ok(Listed {
                raw: Bytes::copy_from_slice(&m.raw),
                descriptors,
                upstream_filters: None,
                origin: Origin::FallbackTag,
                fetched_at_unix: unix_now(),
            }),
            Err(e) => {
                tracing::info!(repo = %name, %tag, error = %e, "the fallback tag is no referrers list; answering the empty list");
                Ok(empty())
            }
        }
    }
}

/// A referrers list from its first page (`bytes`, linking to `next`) and
/// the pages after it, at most [`MAX_PAGES`]: the list as served (the first
/// page's bytes when it is the only one), its descriptors, and whether that
/// is the whole list.
async fn all_pages(
    upstream: &dyn UpstreamApi,
    key: &Key,
    bytes: Bytes,
    next: Option<String>,
) -> Result<(Bytes, Vec<Value>, bool), Error> {
    let read = |bytes: &[u8]| {
        index::descriptors(bytes).map_err(|e| Error::BadUpstream {
            upstream: key.upstream.clone(),
            message: format!("a referrers list regcache cannot read: {e}"),
        })
    };
    let mut descriptors = read(&bytes)?;
    let (mut next, mut pages) = (next, 1);
    while let Some(page) = next.take() {
        if pages == MAX_PAGES {
            tracing::warn!(repo = key.repository, subject = %key.subject, pages, "referrers list has more pages than regcache reads; answering the first ones, not kept");
            return Ok((
                Bytes::from(index::build_index(descriptors.clone())),
                descriptors,
                false,
            ));
        }
        match referrers::get_referrers_page(upstream, &page).await? {
            ReferrersAnswer::Index { bytes, next: n, .. } => {
                descriptors.extend(read(&bytes)?);
                (next, pages) = (n, pages + 1);
            }
            ReferrersAnswer::NoApi { status, .. } => {
                return Err(Error::BadUpstream {
                    upstream: key.upstream.clone(),
                    message: format!(
                        "page {} of a referrers list answered HTTP {status}",
                        pages + 1
                    ),
                });
            }
        }
    }
    if pages == 1 {
        return Ok((bytes, descriptors, true));
    }
    Ok((
        Bytes::from(index::build_index(descriptors.clone())),
        descriptors,
        true,
    ))
}

/// A fallback tag that is not there: no referrers.
fn absent(e: &Error) -> bool {
    match e {
        Error::Client { error, .. } => {
            matches!(
                error.code,
                ErrorCode::ManifestUnknown | ErrorCode::NameUnknown
            )
        }
        Error::Upstream(e) => e.is_not_found(),
        _ => false,
    }
}

/// What a request gets from a kept list.
fn answer(l: &Listed, artifact_type: Option<&str>) -> Referrers {
    let body = match artifact_type {
        Some(t) => Bytes::from(index::build_index(index::filter(&l.descriptors, t))),
        None => l.raw.clone(),
    };
    Referrers {
        body,
        filters_applied: index::filters_applied(
            l.upstream_filters.as_deref(),
            artifact_type.is_some(),
        ),
        origin: l.origin,
    }
}

#[cfg(test)]
#[path = "referrers_tests.rs"]
mod tests;

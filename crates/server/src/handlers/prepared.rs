//! Prepared manifest answers: a warm `GET /v2/<name>/manifests/<tag>` or
//! `.../manifests/<digest>` is one lookup and one write.
//!
//! The full path for such a request parses the `Accept` headers, locks and
//! clones the tag record (by tag), finds the parsed manifest, negotiates,
//! copies the body and builds a header map, every time, for an answer that
//! changes only when the tag does (and by digest never). So the first
//! answer is kept ready: the response head's lines (type, length, digest,
//! ETag, API version) serialized once and the body, per (upstream,
//! repository, tag or digest, `Accept` values as sent). A later request
//! with the same key, admitted like any other (authentication, access rules
//! and rate limits run first), gets those bytes; only `Date`,
//! `X-Request-Id` and framing are added per request.
//!
//! An answer is used only while everything it was derived from still holds:
//! - by tag, the tag index is unchanged since the answer was made, when the
//!   tag still named the manifest served (its generation: any put or
//!   removal, a revalidation that moved or merely refreshed a tag, a purge,
//!   drops every by-tag answer on its next use);
//! - by tag, the tag is fresh: `fetched_at + tag_ttl` has not passed (a
//!   stale tag goes the full path, which revalidates it), with the
//!   `tag_ttl` in force (a reload that changes it, or the policies, drops
//!   them too);
//! - nothing was removed from the store since (a purge, a damaged entry
//!   dropped: [`regcache_store::Store::removals`]), so a purged manifest is
//!   never answered from memory; a digest names the same bytes forever, so
//!   this and the policies are all a by-digest answer depends on.
//!
//! Answers served as stored are prepared (a manifest, list or index as the
//! upstream has it, or the child a single-image client is given), and so
//! are regcache's own renderings, which are kept and served as the same
//! bytes every time (a signed Schema 1 rendering, the Docker twin of an OCI
//! image, a Schema 1 image upgraded): a prepared hit counts the rendering's
//! hit too. A stored Schema 1 manifest (re-signed per answer) and the
//! upstream's own answer under `schema1 = "passthrough"` go the full path.
//! A request acting as its client (credential pass-through) is never
//! answered from, nor used to prepare, a shared answer.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use regcache_formats::Digest;
use regcache_formats::manifest::Manifest;

use crate::metrics::Kind;

/// Most bytes (heads and bodies) kept ready; the least used go first.
const MAX_BYTES: u64 = 32 << 20;

/// What an answer is for.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    pub upstream: &'a str,
    pub repository: &'a str,
    /// The tag or the digest asked for (a digest has a `:`, a tag can't).
    pub reference: &'a str,
    pub accept: &'a HeaderMap,
}

impl Key<'_> {
    fn accepts(&self) -> impl Iterator<Item = &[u8]> {
        self.accept
            .get_all(header::ACCEPT)
            .iter()
            .map(HeaderValue::as_bytes)
    }
}

/// What was true when an answer was made, checked on every use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basis {
    /// The tag index's generation when the answer was made (0 by digest:
    /// no tag is involved).
    pub generation: u64,
    /// The store's completed removals when the answer was made.
    pub removals: u64,
    /// The policies in force: how many reloads replaced them before.
    pub policies: u64,
    /// The tag TTL in force (zero by digest).
    pub tag_ttl: Duration,
}

/// An answer as the full path made it: what a prepared one is built from.
#[derive(Debug, Clone)]
pub struct Made {
    pub content_type: &'static str,
    pub digest: Digest,
    pub body: Bytes,
    /// The rendering it is (its hit is counted with each use), if any.
    pub kind: Option<Kind>,
}

impl Made {
    /// `m` served as it is kept; `None` for a Schema 1 manifest (signed
    /// anew for each answer).
    pub fn as_stored(m: &Manifest, kind: Option<Kind>) -> Option<Made> {
        (!m.media_type.is_schema1()).then(|| Made {
            content_type: m.media_type.as_str(),
            digest: m.digest.clone(),
            body: Bytes::from_owner(m.raw.clone()),
            kind,
        })
    }
}

/// One prepared answer.
#[derive(Debug)]
pub struct Answer {
    upstream: String,
    repository: String,
    reference: String,
    accept: Vec<Bytes>,
    basis: Basis,
    /// Unix second from which the tag is no longer fresh (`u64::MAX` by
    /// digest).
    fresh_until: u64,
    /// Header lines, each `name: value\r\n`, without `Date`.
    pub head: Bytes,
    pub body: Bytes,
    pub digest: Digest,
    /// The rendering it is, if any (counted as a hit of its kind).
    pub kind: Option<Kind>,
    /// The second its last use was passed to the disk index.
    pub touched_unix: AtomicU64,
}

impl Answer {
    fn answers(&self, key: &Key<'_>) -> bool {
        self.upstream == key.upstream
            && self.repository == key.repository
            && self.reference == key.reference
            && key.accepts().eq(self.accept.iter().map(|a| &a[..]))
    }
}

/// The prepared answers of one app.
pub struct Prepared {
    answers: moka::sync::Cache<u64, Arc<Answer>>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("answers", &self.answers.entry_count())
            .finish()
    }
}

impl Default for Prepared {
    fn default() -> Prepared {
        Prepared {
            answers: moka::sync::Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|_, a: &Arc<Answer>| {
                    u32::try_from(a.head.len() + a.body.len() + 256).unwrap_or(u32::MAX)
                })
                .build(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Prepared {
    fn hash(&self, key: &Key<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        key.upstream.hash(&mut h);
        key.repository.hash(&mut h);
        key.reference.hash(&mut h);
        for a in key.accepts() {
            a.hash(&mut h);
        }
        h.finish()
    }

    /// The answer for `key` if it is still what the full path would send
    /// (see the module documentation); one that no longer is, is dropped.
    pub fn get(&self, key: &Key<'_>, basis: Basis, now_unix: u64) -> Option<Arc<Answer>> {
        let h = self.hash(key);
        let answer = self.answers.get(&h)?;
        if !answer.answers(key) {
            // Another key with the same hash: not this one's answer.
            return None;
        }
        if answer.basis != basis || now_unix >= answer.fresh_until {
            self.answers.invalidate(&h);
            return None;
        }
        Some(answer)
    }

    /// Keep `headers` and `made`'s body ready for `key`, made on `basis`,
    /// while the tag is fresh (until `fresh_until`).
    pub fn put(
        &self,
        key: &Key<'_>,
        basis: Basis,
        fresh_until: u64,
        now_unix: u64,
        headers: &HeaderMap,
        made: Made,
    ) {
        if now_unix >= fresh_until {
            return;
        }
        let answer = Answer {
            upstream: key.upstream.to_owned(),
            repository: key.repository.to_owned(),
            reference: key.reference.to_owned(),
            accept: key.accepts().map(Bytes::copy_from_slice).collect(),
            basis,
            fresh_until,
            head: crate::fastpath::head_lines(headers),
            body: made.body,
            digest: made.digest,
            kind: made.kind,
            touched_unix: AtomicU64::new(now_unix),
        };
        self.answers.insert(self.hash(key), Arc::new(answer));
    }

    /// Whether the disk index should hear of a use now (once a second).
    pub fn touch_due(answer: &Answer, now_unix: u64) -> bool {
        answer.touched_unix.swap(now_unix, Ordering::Relaxed) != now_unix
    }

    /// Drop every answer (a purge; tests).
    pub fn clear(&self) {
        self.answers.invalidate_all();
    }

    #[cfg(test)]
    fn len(&self) -> u64 {
        self.answers.run_pending_tasks();
        self.answers.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, HeaderValue::from_static(v));
        }
        h
    }

    fn basis(generation: u64) -> Basis {
        Basis {
            generation,
            removals: 0,
            policies: 1,
            tag_ttl: Duration::from_secs(60),
        }
    }

    fn made(body: &'static [u8]) -> Made {
        Made {
            content_type: "a/b",
            digest: Digest::sha256_of(body),
            body: Bytes::from_static(body),
            kind: None,
        }
    }

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(2));
        h
    }

    #[test]
    fn an_answer_serves_only_its_own_key_on_its_own_basis_while_fresh() {
        let p = Prepared::default();
        let docker = accept(&["a/b", "c/d"]);
        let key = Key {
            upstream: "hub",
            repository: "library/alpine",
            reference: "3",
            accept: &docker,
        };
        p.put(&key, basis(7), 1_000, 900, &headers(), made(b"{}"));
        let got = p.get(&key, basis(7), 999).expect("prepared");
        assert_eq!(&got.body[..], b"{}");
        assert_eq!(
            &got.head[..],
            &b"content-type: a/b\r\ncontent-length: 2\r\ndocker-distribution-api-version: registry/2.0\r\n"[..]
        );

        // Other Accept values (or the same in another order), another tag,
        // repository or upstream: not this answer.
        for other in [accept(&["c/d", "a/b"]), accept(&["a/b"]), accept(&[])] {
            assert!(
                p.get(
                    &Key {
                        accept: &other,
                        ..key
                    },
                    basis(7),
                    999
                )
                .is_none()
            );
        }
        let digest = Digest::sha256_of(b"{}");
        for other in ["4", digest.as_str()] {
            assert!(
                p.get(
                    &Key {
                        reference: other,
                        ..key
                    },
                    basis(7),
                    999
                )
                .is_none()
            );
        }
        assert!(
            p.get(
                &Key {
                    repository: "x",
                    ..key
                },
                basis(7),
                999
            )
            .is_none()
        );
        assert!(
            p.get(
                &Key {
                    upstream: "quay",
                    ..key
                },
                basis(7),
                999
            )
            .is_none()
        );
        assert!(
            p.get(&key, basis(7), 999).is_some(),
            "misses leave it alone"
        );

        // The tag's freshness ends: dropped.
        assert!(p.get(&key, basis(7), 1_000).is_none());
        assert_eq!(p.len(), 0);

        // A tag index change, a reload of the policies or of the TTL: dropped.
        p.put(&key, basis(7), 1_000, 900, &headers(), made(b"{}"));
        assert!(p.get(&key, basis(8), 901).is_none());
        assert!(p.get(&key, basis(7), 901).is_none(), "gone once seen stale");
        for changed in [
            Basis {
                policies: 2,
                ..basis(7)
            },
            Basis {
                tag_ttl: Duration::from_secs(5),
                ..basis(7)
            },
            Basis {
                removals: 1,
                ..basis(7)
            },
        ] {
            p.put(&key, basis(7), 1_000, 900, &headers(), made(b"{}"));
            assert!(p.get(&key, changed, 901).is_none());
        }
        // An answer that is stale when made is not kept.
        p.put(&key, basis(7), 1_000, 1_000, &headers(), made(b"{}"));
        assert!(p.get(&key, basis(7), 999).is_none());
    }

    #[test]
    fn touches_are_due_once_a_second() {
        let p = Prepared::default();
        let none = HeaderMap::new();
        let key = Key {
            upstream: "hub",
            repository: "r",
            reference: "t",
            accept: &none,
        };
        p.put(&key, basis(1), 100, 10, &headers(), made(b"x"));
        let a = p.get(&key, basis(1), 10).unwrap();
        assert!(!Prepared::touch_due(&a, 10));
        assert!(Prepared::touch_due(&a, 11));
        assert!(!Prepared::touch_due(&a, 11));
    }
}

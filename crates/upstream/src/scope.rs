//! Token scopes (spec §5.9): `repository:<name>:pull`, `registry:catalog:*`…
//!
//! A [`Scope`] is a normalised set of resource scopes: one entry per
//! resource, actions merged, sorted and deduplicated, so that the same
//! access always yields the same string and therefore the same token-cache
//! key, whatever order a registry lists actions in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use http::Method;

/// A set of resource scopes; empty means "no scope" (as for `GET /v2/`).
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// No scope: a token that only authenticates (used for `/v2/`).
    pub fn none() -> Self {
        Scope(String::new())
    }

    /// `repository:<repo>:pull` (GET/HEAD).
    pub fn pull(repo: &str) -> Self {
        Scope(format!("repository:{repo}:pull"))
    }

    /// `repository:<repo>:pull,push` (POST/PUT/PATCH).
    pub fn push(repo: &str) -> Self {
        Scope(format!("repository:{repo}:pull,push"))
    }

    /// `repository:<repo>:delete` (DELETE, as distribution requires).
    pub fn delete(repo: &str) -> Self {
        Scope(format!("repository:{repo}:delete"))
    }

    /// `registry:catalog:*`.
    pub fn catalog() -> Self {
        Scope("registry:catalog:*".to_owned())
    }

    /// Parse a space-separated scope string (a challenge's `scope`).
    pub fn parse(s: &str) -> Self {
        Scope::normalise(s.split_ascii_whitespace())
    }

    /// The union of two scopes, actions merged per resource.
    pub fn and(&self, other: &Scope) -> Self {
        Scope::normalise(self.iter().chain(other.iter()))
    }

    /// The scope a request needs, from its method and path (spec §5.9):
    /// `GET`/`HEAD` → `pull`; `POST`/`PUT`/`PATCH` → `pull,push`; `DELETE`
    /// → `delete`; a cross-repository mount (`?mount=…&from=<repo>`) adds
    /// `pull` on `<repo>`; `/v2/_catalog` → `registry:catalog:*`; `/v2/`
    /// and unrecognised paths → no scope.
    pub fn infer(method: &Method, path_and_query: &str) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Scope::none();
        };
        if rest == "_catalog" {
            return Scope::catalog();
        }
        let Some(name) = repository_of(rest) else {
            return Scope::none();
        };
        let mut scope = match *method {
            Method::GET | Method::HEAD => Scope::pull(name),
            Method::DELETE => Scope::delete(name),
            _ => Scope::push(name),
        };
        if let Some(from) = query.and_then(mount_source) {
            scope = scope.and(&Scope::pull(&from));
        }
        scope
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The individual resource scopes, each sent as one `scope=` parameter.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split(' ').filter(|s| !s.is_empty())
    }

    fn normalise<'a>(parts: impl Iterator<Item = &'a str>) -> Self {
        let mut by_resource: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut opaque: BTreeSet<&str> = BTreeSet::new();
        for part in parts {
            // Type ends at the first ':', actions start after the last one
            // (the name itself may contain one ':' for host:port).
            match part.rsplit_once(':') {
                Some((resource, actions)) if resource.contains(':') => {
                    let set = by_resource.entry(resource).or_default();
                    set.extend(actions.split(',').filter(|a| !a.is_empty()));
                }
                _ => {
                    opaque.insert(part);
                }
            }
        }
        let mut out: Vec<String> = by_resource
            .into_iter()
            .map(|(resource, actions)| {
                let actions: Vec<&str> = actions.into_iter().collect();
                format!("{resource}:{}", actions.join(","))
            })
            .collect();
        out.extend(opaque.into_iter().map(str::to_owned));
        Scope(out.join(" "))
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({:?})", self.0)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The repository name in a `/v2/<name>/…` path (without `/v2/`), matched
/// from the right because names may contain `blobs` or `manifests`.
fn repository_of(rest: &str) -> Option<&str> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return non_empty(name);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    // …/blobs/uploads/ and …/blobs/uploads/<uuid>
    if n >= 4 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
        return non_empty(prefix(rest, n - 3));
    }
    if n >= 3 && matches!(segments[n - 2], "manifests" | "blobs" | "referrers") {
        return non_empty(prefix(rest, n - 2));
    }
    None
}

/// The first `count` segments of `rest` (joined by '/').
fn prefix(rest: &str, count: usize) -> &str {
    let mut end = 0;
    for (i, seg) in rest.split('/').enumerate().take(count) {
        end += seg.len() + usize::from(i > 0);
    }
    &rest[..end]
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn mount_source(query: &str) -> Option<String> {
    let mut mount = false;
    let mut from = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "mount" => mount = true,
            "from" => {
                from = Some(
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned(),
                )
            }
            _ => {}
        }
    }
    from.filter(|f| mount && !f.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infer_from_paths() {
        let get = Method::GET;
        let cases = [
            (Method::GET, "/v2/", ""),
            (Method::GET, "/v2/_catalog?n=10", "registry:catalog:*"),
            (
                Method::HEAD,
                "/v2/library/alpine/manifests/latest",
                "repository:library/alpine:pull",
            ),
            (
                get.clone(),
                "/v2/a/blobs/blobs/sha256:abc",
                "repository:a/blobs:pull",
            ),
            (get.clone(), "/v2/a/b/tags/list?n=1", "repository:a/b:pull"),
            (get.clone(), "/v2/a/referrers/sha256:1", "repository:a:pull"),
            (
                Method::POST,
                "/v2/team/app/blobs/uploads/",
                "repository:team/app:pull,push",
            ),
            (
                Method::PATCH,
                "/v2/team/app/blobs/uploads/uuid-1?_state=x",
                "repository:team/app:pull,push",
            ),
            (
                Method::POST,
                "/v2/team/app/blobs/uploads/?mount=sha256:1&from=lib%2Fbase",
                "repository:lib/base:pull repository:team/app:pull,push",
            ),
            (
                Method::DELETE,
                "/v2/x/manifests/sha256:1",
                "repository:x:delete",
            ),
            (get, "/v2/weird", ""),
        ];
        for (method, path, want) in cases {
            assert_eq!(
                Scope::infer(&method, path).as_str(),
                want,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn union_merges_actions() {
        let a = Scope::parse("repository:a:push,pull");
        assert_eq!(a.as_str(), "repository:a:pull,push");
        let b = Scope::pull("a").and(&Scope::parse("repository:a:push registry:catalog:*"));
        assert_eq!(b.as_str(), "registry:catalog:* repository:a:pull,push");
        let port = Scope::pull("localhost:5000/x");
        assert_eq!(port.and(&port).as_str(), "repository:localhost:5000/x:pull");
        assert_eq!(b.iter().count(), 2);
        assert!(Scope::none().and(&Scope::none()).is_empty());
    }
}

//! Routing, in one pure function: a request URI and the configured upstreams
//! give the [`Target`] (which upstream, how the client named things, the path
//! to send upstream) and the typed [`Route`].
//!
//! The upstream is chosen by containerd's `ns=` parameter, else a registry
//! path prefix (`/v2/<host>/<name>/…`: a first component with a dot or a
//! colon, or `localhost`), else the default upstream. A registry no upstream
//! names is refused, without any outgoing connection: regcache is not an
//! open proxy. Docker Hub's official images live under `library/`, so a
//! one-component name routed to Docker Hub gets that prefix here, in the
//! route and in the path sent upstream. hyper's handlers and the fast path
//! both call [`route`], once per request.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use regcache_formats::reference::RepositoryName;
use regcache_formats::{ErrorCode, RegistryError};
use regcache_upstream::UpstreamApi;

use crate::breaker::{Breaker, Guarded};
use crate::config::UpstreamSettings;
use crate::error::Error;
use crate::routes::Route;
use crate::writes::Forwarding;

/// One upstream registry as the server uses it: its names and its client.
pub struct Upstream {
    /// The registry name clients use for it (`docker.io`, `quay.io`): matched
    /// against `ns=` and path prefixes, and the key of its tags and policies.
    pub name: String,
    /// Other names that route here.
    pub aliases: Vec<String>,
    /// `host[:port]` of its URL (also routes here).
    pub host: String,
    /// One-component names get `library/` (Docker Hub only).
    pub docker_hub: bool,
    pub client: Arc<dyn UpstreamApi>,
    /// How long tags are trusted; a configuration reload swaps them whole
    /// (read them once per request with [`Upstream::ttls`]).
    pub ttls: ArcSwap<Ttls>,
    /// Uploads, mounts, manifest PUTs and deletes ([`crate::writes`]).
    pub writes: Forwarding,
    /// `/v2/_catalog` ([`crate::writes`]).
    pub catalog: Forwarding,
    /// The upstream's circuit breaker; `client` (and every identity made
    /// from it) goes through it ([`crate::breaker`]).
    pub breaker: Arc<Breaker>,
}

/// An upstream's tag lifetimes, replaced together by a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttls {
    pub tag_ttl: Duration,
    pub stale_if_error: Duration,
    /// Past `tag_ttl` and within this, a by-tag request is answered from the
    /// cached tag at once and the revalidating HEAD runs in the background
    /// (zero: off, the request waits for the HEAD).
    pub stale_while_revalidate: Duration,
}

impl Ttls {
    /// The lifetimes `settings` gives.
    pub fn of(settings: &UpstreamSettings) -> Ttls {
        Ttls {
            tag_ttl: settings.tag_ttl,
            stale_if_error: settings.stale_if_error,
            stale_while_revalidate: settings.stale_while_revalidate,
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The upstream its validated settings describe, talking through `client`
    /// behind `breaker`.
    pub fn new(
        settings: &UpstreamSettings,
        client: Arc<dyn UpstreamApi>,
        breaker: Arc<Breaker>,
    ) -> Upstream {
        let url = &settings.url;
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        Upstream {
            name: settings.name.clone(),
            aliases: settings.aliases.clone(),
            host,
            docker_hub: settings.docker_hub,
            client: Arc::new(Guarded::new(client, breaker.clone())),
            breaker,
            ttls: ArcSwap::from_pointee(Ttls::of(settings)),
            writes: settings.writes,
            catalog: settings.catalog,
        }
    }

    /// The tag lifetimes now (one consistent set).
    pub fn ttls(&self) -> Ttls {
        **self.ttls.load()
    }

    /// Replace the tag lifetimes (a configuration reload).
    pub fn set_ttls(&self, ttls: Ttls) {
        self.ttls.store(Arc::new(ttls));
    }

    fn answers_to(&self, registry: &str) -> bool {
        self.name.eq_ignore_ascii_case(registry)
            || self.host.eq_ignore_ascii_case(registry)
            || self
                .aliases
                .iter()
                .any(|a| a.eq_ignore_ascii_case(registry))
    }
}

/// The configured upstreams and which one takes requests that name none.
#[derive(Debug)]
pub struct Upstreams {
    all: Vec<Arc<Upstream>>,
    default: usize,
}

impl Upstreams {
    /// `default` indexes `all`; an out-of-range index means the first.
    pub fn new(all: Vec<Arc<Upstream>>, default: usize) -> Upstreams {
        assert!(!all.is_empty(), "regcache needs at least one upstream");
        let default = if default < all.len() { default } else { 0 };
        Upstreams { all, default }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.all.iter()
    }

    /// The upstream a registry name (`ns=`, a path prefix) means.
    pub fn find(&self, registry: &str) -> Result<Arc<Upstream>, Error> {
        if let Some(up) = self.all.iter().find(|u| u.answers_to(registry)) {
            return Ok(up.clone());
        }
        let names: Vec<&str> = self.all.iter().map(|u| u.name.as_str()).collect();
        let shown: String = registry.chars().take(200).collect();
        Err(Error::policy(
            403,
            RegistryError::with_message(
                ErrorCode::Denied,
                format!(
                    "regcache has no upstream for registry {shown:?} (configured: {}); it only proxies the registries its configuration names",
                    names.join(", ")
                ),
            )
            .detail(serde_json::json!({ "registry": shown })),
        ))
    }

    /// Index in [`Upstreams::iter`] of the upstream for names without a registry.
    pub fn default_index(&self) -> usize {
        self.default
    }

    fn default_upstream(&self) -> Arc<Upstream> {
        self.all[self.default].clone()
    }
}

/// Where one request goes: which upstream, and how the client named things.
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<Upstream>,
    /// The request's span, made on first use ([`Target::span`]).
    pub span: RequestSpan,
    /// The registry path prefix the client used (`/v2/quay.io/team/app/…`).
    pub prefix: Option<String>,
    /// `library/` was added to a Docker Hub one-component name.
    pub library_added: bool,
    /// Path and query to send upstream: prefix and `ns=` removed, `library/` added.
    pub upstream_path: String,
    /// The upstream acting as this request's client (`auth = "upstream"`):
    /// when set, every upstream call of the request goes through it instead
    /// of `upstream.client` (regcache's own identity).
    pub acting_as: Option<Arc<dyn UpstreamApi>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("upstream", &self.upstream)
            .field("prefix", &self.prefix)
            .field("library_added", &self.library_added)
            .field("upstream_path", &self.upstream_path)
            .field("acting_as_client", &self.acting_as.is_some())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// The target of another replica's internal request for a blob
    /// ([`crate::handlers::peer`]): the named upstream with regcache's own
    /// identity, no client path or prefix.
    pub fn for_peer(upstream: Arc<Upstream>) -> Target {
        Target {
            upstream,
            span: RequestSpan::default(),
            prefix: None,
            library_added: false,
            upstream_path: String::new(),
            acting_as: None,
        }
    }

    /// The request's span (`id`, `method`, `route`, `repository`,
    /// `upstream`): every log line of the request's slow work runs in it.
    /// Made on first use: a cache hit logs nothing, and formatting a span's
    /// fields costs more than the rest of a warm manifest answer.
    pub fn span(&self) -> &tracing::Span {
        self.span.get(&self.upstream.name)
    }

    /// The client for this request's upstream calls: the client's own
    /// identity when one was set, else regcache's.
    pub fn client(&self) -> &Arc<dyn UpstreamApi> {
        self.acting_as.as_ref().unwrap_or(&self.upstream.client)
    }

    /// `work`, run in the request's span.
    pub fn in_span<F: std::future::Future>(&self, work: F) -> tracing::instrument::Instrumented<F> {
        tracing::Instrument::instrument(work, self.span().clone())
    }

    /// The repository as the client named it (what Schema 1 documents embed,
    /// spec 03 §3.8: the path the client used).
    pub fn client_name(&self, repo: &RepositoryName) -> String {
        let base = if self.library_added {
            repo.as_str()
                .strip_prefix("library/")
                .unwrap_or(repo.as_str())
        } else {
            repo.as_str()
        };
        match &self.prefix {
            Some(p) => format!("{p}/{base}"),
            None => base.to_owned(),
        }
    }

    /// An upstream `/v2/…` path as the client must see it (prefix put back).
    pub fn client_path(&self, path: &str) -> String {
        match (&self.prefix, path.strip_prefix("/v2/")) {
            (Some(p), Some(rest)) => format!("/v2/{p}/{rest}"),
            _ => path.to_owned(),
        }
    }

    /// Docker Hub's `library/` for a one-component name, in the name and in
    /// the path sent upstream.
    fn add_library(&mut self, name: RepositoryName) -> RepositoryName {
        if !self.upstream.docker_hub || name.components().count() != 1 {
            return name;
        }
        match RepositoryName::parse(&format!("library/{name}")) {
            Ok(full) => {
                self.library_added = true;
                self.upstream_path = self.upstream_path.replacen("/v2/", "/v2/library/", 1);
                full
            }
            Err(_) => name,
        }
    }
}

/// What a request's span says about it, and the span once made.
#[derive(Debug, Clone, Default)]
pub struct RequestSpan {
    /// The request id ([`crate::access_log::request_id`]).
    id: Option<http::HeaderValue>,
    method: http::Method,
    route: &'static str,
    repository: Option<RepositoryName>,
    span: std::sync::OnceLock<tracing::Span>,
}

impl RequestSpan {
    pub fn new(id: Option<http::HeaderValue>, method: &http::Method, route: &Route) -> RequestSpan {
        RequestSpan {
            id,
            method: method.clone(),
            route: route.kind(),
            repository: route.name().cloned(),
            span: std::sync::OnceLock::new(),
        }
    }

    /// The route kind and repository, for [`crate::rescue::rescue_at`].
    pub fn at(&self) -> crate::rescue::At<'_> {
        crate::rescue::At {
            route: self.route,
            repository: self.repository.as_ref().map(|r| r.as_str()),
        }
    }

    fn get(&self, upstream: &str) -> &tracing::Span {
        self.span.get_or_init(|| {
            tracing::info_span!(
                "request",
                id = self.id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
                method = %self.method,
                route = self.route,
                repository = self.repository.as_ref().map(|r| r.as_str()),
                upstream = %upstream,
            )
        })
    }
}

/// A request, routed.
#[derive(Debug)]
pub struct Routed {
    pub target: Target,
    pub route: Route,
}

/// Route a request URI (see the module documentation).
pub fn route(uri: &http::Uri, upstreams: &Upstreams) -> Result<Routed, Error> {
    let target = target(uri, upstreams)?;
    let path = target
        .upstream_path
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let route = match Route::parse(&path) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(Error::client_status(
                404,
                RegistryError::with_message(
                    ErrorCode::Unsupported,
                    "no such registry API endpoint",
                ),
            ));
        }
        Err(e) => return Err(Error::from(e.0)),
    };
    let mut target = target;
    let route = route.map_name(|n| target.add_library(n));
    Ok(Routed { target, route })
}

/// The upstream and the path to send it, before the path is parsed.
fn target(uri: &http::Uri, upstreams: &Upstreams) -> Result<Target, Error> {
    let path = uri.path();
    let mut ns = None;
    let mut kept: Vec<&str> = Vec::new();
    for piece in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match piece.split_once('=') {
            Some(("ns", v)) => {
                ns = Some(
                    percent_encoding::percent_decode_str(&v.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned(),
                )
            }
            _ => kept.push(piece),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let plain = |upstream| Target {
        upstream,
        span: RequestSpan::default(),
        prefix: None,
        library_added: false,
        upstream_path: format!("{path}{query}"),
        acting_as: None,
    };
    if let Some(ns) = ns {
        let upstream = upstreams.find(&ns)?;
        tracing::debug!(ns, upstream = %upstream.name, "routed by ns");
        return Ok(plain(upstream));
    }
    if let Some(rest) = path.strip_prefix("/v2/")
        && let Some((first, tail)) = rest.split_once('/')
        && !tail.is_empty()
        && (first.contains('.') || first.contains(':') || first == "localhost")
        && is_registry_host(first)
    {
        let upstream = upstreams.find(first)?;
        tracing::debug!(prefix = first, upstream = %upstream.name, "routed by path prefix");
        return Ok(Target {
            upstream,
            span: RequestSpan::default(),
            prefix: Some(first.to_owned()),
            library_added: false,
            upstream_path: format!("/v2/{tail}{query}"),
            acting_as: None,
        });
    }
    Ok(plain(upstreams.default_upstream()))
}

/// `host[:port]`: dot-separated labels of letters, digits and inner hyphens,
/// an optional numeric port. Anything else (`a..b`) is a repository name,
/// which then fails name validation with NAME_INVALID.
fn is_registry_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
#[path = "request_tests.rs"]
pub(crate) mod tests;

//! The cache endpoints of the admin listener:
//!
//! * `GET /api/cache` — the [`Inventory`](super::Inventory) as JSON;
//! * `POST /api/purge` — `{"images":[…],"older_than_secs":N,"upstream":…,"dry_run":bool}`
//!   → the [`PurgePlan`] carried out (or not, with `dry_run`);
//! * `POST /api/prefetch` — `{"images":[…],"platforms":["linux/amd64"],"upstream":…}`
//!   → NDJSON progress ([`super::prefetch`]).
//!
//! The POSTs change state, so [`crate::admin`] has already checked the
//! admin token. Every bad input is a registry-style JSON error: a bad body
//! or image reference 400 (`UNSUPPORTED`, `NAME_INVALID`), a purge target
//! with nothing cached 404 `NAME_UNKNOWN`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use regcache_formats::{ErrorCode, RegistryError};
use serde::Deserialize;

use super::imageref::{Resolved, UpstreamNames, parse_and_resolve};
use super::inventory::PlanError;
use super::prefetch::{Job, PlatformFilter};
use super::{local, now_unix_nanos, purge};
use crate::error::Error;
use crate::handlers::App;
use crate::rescue::rescue;
use crate::web::body::Body;

/// Largest request body the cache endpoints read.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Purges run one at a time (each plans on what the previous one left).
static PURGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether `path` is one of the cache endpoints.
pub fn owns(path: &str) -> bool {
    matches!(path, "/api/cache" | "/api/purge" | "/api/prefetch")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    #[serde(default)]
    images: Vec<String>,
    #[serde(default)]
    older_than_secs: Option<u64>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefetchRequest {
    images: Vec<String>,
    #[serde(default)]
    platforms: Vec<String>,
    #[serde(default)]
    upstream: Option<String>,
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn bad(code: ErrorCode, message: impl Into<String>) -> Response<Body> {
    rescue(Error::client(code, message), false)
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = rescue(
        Error::client_status(
            405,
            RegistryError::with_message(
                ErrorCode::Unsupported,
                format!("this endpoint takes {allow}"),
            ),
        ),
        false,
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The upstreams as image references name them, and the default's index.
pub fn upstream_names(app: &App) -> (Vec<UpstreamNames>, usize) {
    let names = app
        .upstreams()
        .iter()
        .map(|u| UpstreamNames {
            name: u.name.clone(),
            host: u.host.clone(),
            aliases: u.aliases.clone(),
            docker_hub: u.docker_hub,
        })
        .collect();
    (names, app.upstreams().default_index())
}

fn resolve_all(
    app: &App,
    images: &[String],
    upstream: Option<&str>,
) -> Result<Vec<(String, Resolved)>, Box<Response<Body>>> {
    let (names, default) = upstream_names(app);
    images
        .iter()
        .map(|typed| {
            parse_and_resolve(typed, &names, default, upstream)
                .map(|r| (typed.clone(), r))
                .map_err(|e| Box::new(bad(ErrorCode::NameInvalid, e)))
        })
        .collect()
}

/// Answers a cache endpoint; `body` is the request body already read.
pub async fn handle(app: &Arc<App>, method: &Method, path: &str, body: Bytes) -> Response<Body> {
    match (path, method) {
        ("/api/cache", &Method::GET | &Method::HEAD) => ls(app).await,
        ("/api/cache", _) => method_not_allowed("GET"),
        ("/api/purge", &Method::POST) => purge_endpoint(app, &body).await,
        ("/api/prefetch", &Method::POST) => prefetch_endpoint(app, &body),
        _ => method_not_allowed("POST"),
    }
}

async fn ls(app: &Arc<App>) -> Response<Body> {
    let store = app.store().clone();
    match tokio::task::spawn_blocking(move || local::graph_of(&store).inventory()).await {
        Ok(inv) => match serde_json::to_string(&inv) {
            Ok(text) => json(StatusCode::OK, text),
            Err(e) => rescue(Error::internal("encoding the cache listing", e), false),
        },
        Err(e) => rescue(Error::internal("listing the cache", e), false),
    }
}

async fn purge_endpoint(app: &Arc<App>, body: &[u8]) -> Response<Body> {
    let req: PurgeRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return bad(
                ErrorCode::Unsupported,
                format!(
                    "bad purge request: {e}; expected {{\"images\":[\"repo[:tag|@digest]\"],\"older_than_secs\":N,\"upstream\":\"name\",\"dry_run\":false}}"
                ),
            );
        }
    };
    if req.images.is_empty() && req.older_than_secs.is_none() {
        return bad(
            ErrorCode::Unsupported,
            "nothing to purge: name images or repositories, or give older_than_secs",
        );
    }
    let targets = match resolve_all(app, &req.images, req.upstream.as_deref()) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let _one_at_a_time = PURGES.lock().await;
    let store = app.store().clone();
    let root = store.config().root.clone();
    let older_than = req.older_than_secs.map(Duration::from_secs);
    let planned = tokio::task::spawn_blocking(move || {
        let mut graph = local::graph_of(&store);
        graph.plan(
            &targets,
            older_than,
            now_unix_nanos(),
            &mut local::reader(&root),
        )
    })
    .await;
    let mut plan = match planned {
        Ok(Ok(plan)) => plan,
        Ok(Err(e @ PlanError::Unknown { .. })) => {
            return rescue(
                Error::client_status(
                    404,
                    RegistryError::with_message(ErrorCode::NameUnknown, e.to_string()),
                ),
                false,
            );
        }
        Err(e) => return rescue(Error::internal("planning the purge", e), false),
    };
    plan.dry_run = req.dry_run;
    if !req.dry_run {
        let manifests = app.services().manifests.clone();
        purge::execute(app.store(), &mut plan, &|d| manifests.forget(d)).await;
    }
    match serde_json::to_string(&plan) {
        Ok(text) => json(StatusCode::OK, text),
        Err(e) => rescue(Error::internal("encoding the purge result", e), false),
    }
}

fn prefetch_endpoint(app: &Arc<App>, body: &[u8]) -> Response<Body> {
    let req: PrefetchRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return bad(
                ErrorCode::Unsupported,
                format!(
                    "bad prefetch request: {e}; expected {{\"images\":[\"repo:tag\"],\"platforms\":[\"linux/amd64\"],\"upstream\":\"name\"}}"
                ),
            );
        }
    };
    if req.images.is_empty() {
        return bad(ErrorCode::Unsupported, "nothing to prefetch: no images");
    }
    let platforms: Result<Vec<PlatformFilter>, String> = req
        .platforms
        .iter()
        .map(|p| PlatformFilter::parse(p))
        .collect();
    let platforms = match platforms {
        Ok(p) => p,
        Err(e) => return bad(ErrorCode::Unsupported, e),
    };
    let jobs = match resolve_all(app, &req.images, req.upstream.as_deref()) {
        Ok(t) => t
            .into_iter()
            .map(|(typed, image)| Job { typed, image })
            .collect(),
        Err(resp) => return *resp,
    };
    let stream = super::prefetch::start(app.clone(), jobs, platforms);
    let mut r = Response::new(Body::stream(stream, None));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

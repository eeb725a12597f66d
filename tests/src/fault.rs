//! A fault-injecting HTTP proxy in front of the real registry (STYLE habit 9):
//! requests are forwarded unchanged (method, path, headers including `Host`,
//! streamed bodies both ways), so the registry's real protocol behaviour is
//! kept, and chosen responses are damaged on the way back.
//!
//! ```no_run
//! use regcache_tests::fault::{Fault, FaultProxy, Target};
//! # let registry_url = "http://127.0.0.1:5000";
//! let proxy = FaultProxy::start(registry_url);
//! proxy.inject(Target::AllBlobs, Fault::Corrupt);   // flip one byte of every blob GET body
//! // … point regcache at proxy.url() …
//! proxy.clear();
//! assert_eq!(proxy.count("GET", "/blobs/"), 1);
//! ```
//!
//! Faults:
//! * [`Fault::Corrupt`]: the body keeps its length, the byte in the middle is
//!   flipped (so the digest no longer matches).
//! * [`Fault::Truncate`]: the headers (with the real `Content-Length`) and the
//!   first half of the body go out, then the connection is aborted.
//! * [`Fault::Status`]: answered by the proxy with that status and a registry
//!   error envelope (`UNAVAILABLE`, `TOOMANYREQUESTS` + `Retry-After: 1`, …);
//!   the registry never sees the request.
//! * [`Fault::Stall`]: the request waits that long before it is forwarded.
//! * [`Fault::Throttle`]: the response body is forwarded slowly.
//! * [`Fault::ResetAt`]: like `Truncate`, cut after that percentage of the
//!   body (as a mid-body connection reset looks to the client).
//! * [`Fault::StallAt`]: that percentage of the body goes out, then nothing
//!   for that long, then the rest.
//! * [`Fault::IgnoreRange`]: the request's `Range` header is dropped before it
//!   is forwarded (an upstream that ignores `Range`: `200`, the whole body).
//!
//! With [`FaultProxy::inject_times`]`(…, 1)` a fault hits one request only
//! (a once-only reset), and the requests after it pass or meet the next rule.
//!
//! Every request is recorded (method, path with query, its `Range` header,
//! the status sent back) before any fault applies, so injected answers are
//! counted too; [`FaultProxy::blob_gets`] and [`FaultProxy::ranged_blob_gets`]
//! count a blob's GETs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::http_server::{Body, BoxError, ServerThread, full};

mod bodies;
use bodies::{Damage, damaged, stalled, throttled};

/// What to do to a matching exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Flip the middle byte of the response body (GET only).
    Corrupt,
    /// Send half the body, then abort the connection (GET only).
    Truncate,
    /// Answer this status with a registry error envelope, without forwarding.
    Status(u16),
    /// Wait this long, then forward.
    Stall(Duration),
    /// Forward the response body at about this many bytes per second (GET
    /// only): a slow upstream, so a fill is still running when a test acts.
    Throttle(u64),
    /// Send this percentage (0–100) of the body, then abort the connection
    /// (GET only).
    ResetAt(u8),
    /// Send this percentage (0–100) of the body, then pause this long before
    /// the rest (GET only).
    StallAt(u8, Duration),
    /// Forward without the `Range` header (GET only).
    IgnoreRange,
}

impl Fault {
    /// Faults that damage a response body: they apply to GETs only.
    fn body_only(&self) -> bool {
        matches!(
            self,
            Fault::Corrupt
                | Fault::Truncate
                | Fault::Throttle(_)
                | Fault::ResetAt(_)
                | Fault::StallAt(..)
                | Fault::IgnoreRange
        )
    }
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Requests for `/v2/<name>/blobs/<digest>` with this digest.
    Blob(String),
    /// Every `/v2/<name>/blobs/<digest>` request (not uploads).
    AllBlobs,
    /// Every request whose path (with query) contains this string.
    Path(String),
}

impl Target {
    fn matches(&self, path: &str) -> bool {
        match self {
            Target::Blob(digest) => blob_digest(path) == Some(digest.as_str()),
            Target::AllBlobs => blob_digest(path).is_some(),
            Target::Path(part) => path.contains(part.as_str()),
        }
    }
}

/// The digest in `/v2/<name>/blobs/<digest>`, if that is the path.
fn blob_digest(path: &str) -> Option<&str> {
    let path = path.split('?').next().unwrap_or_default();
    let (_, digest) = path.strip_prefix("/v2/")?.rsplit_once("/blobs/")?;
    (digest.contains(':') && !digest.contains('/')).then_some(digest)
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The request's `Range` header, if it had one.
    pub range: Option<String>,
    /// The status sent back (0 when forwarding failed before a response).
    pub status: u16,
    /// The fault that applied, if any.
    pub fault: Option<Fault>,
}

#[derive(Debug)]
struct Rule {
    target: Target,
    fault: Fault,
    /// How many more requests it applies to (`None`: all).
    remaining: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
}

impl State {
    /// The first live rule for `(method, path)`; consumes one use.
    fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        let rule = self.rules.iter_mut().find(|rule| {
            rule.remaining != Some(0)
                && rule.target.matches(path)
                && (method == "GET" || !rule.fault.body_only())
        })?;
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
        }
        Some(rule.fault.clone())
    }
}

/// The proxy; stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    state: Arc<Mutex<State>>,
    upstream: String,
    server: ServerThread,
}

impl FaultProxy {
    /// Starts forwarding to `upstream` (`http://127.0.0.1:PORT`).
    ///
    /// # Panics
    /// When `upstream` is not an `http://host:port` URL.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream.trim_end_matches('/').to_owned();
        let authority = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the fault proxy forwards to http:// only, not {upstream}"))
            .to_owned();
        let state = Arc::new(Mutex::new(State::default()));
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let handler_state = Arc::clone(&state);
        let server = ServerThread::spawn("fault-proxy", move |request| {
            handle(
                request,
                client.clone(),
                authority.clone(),
                Arc::clone(&handler_state),
            )
        });
        FaultProxy {
            state,
            upstream,
            server,
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// The upstream it forwards to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Applies `fault` to every matching request until [`FaultProxy::clear`].
    /// Earlier rules win when several match.
    pub fn inject(&self, target: Target, fault: Fault) {
        self.push_rule(target, fault, None);
    }

    /// Applies `fault` to the next `times` matching requests only.
    pub fn inject_times(&self, target: Target, fault: Fault, times: usize) {
        self.push_rule(target, fault, Some(times));
    }

    fn push_rule(&self, target: Target, fault: Fault, remaining: Option<usize>) {
        self.lock().rules.push(Rule {
            target,
            fault,
            remaining,
        });
    }

    /// Removes every rule: requests pass unchanged again.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.method == method && s.path.contains(path_contains))
            .count()
    }

    /// `GET /v2/<any name>/blobs/<digest>` requests seen.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.method == "GET" && blob_digest(&s.path) == Some(digest))
            .count()
    }

    /// `GET /v2/<any name>/blobs/<digest>` requests with a `Range` header.
    pub fn ranged_blob_gets(&self, digest: &str) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| {
                s.method == "GET" && s.range.is_some() && blob_digest(&s.path) == Some(digest)
            })
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn handle(
    mut request: Request<Incoming>,
    client: Client<HttpConnector, Incoming>,
    authority: String,
    state: Arc<Mutex<State>>,
) -> Response<Body> {
    let method = request.method().as_str().to_owned();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let range = request
        .headers()
        .get(hyper::header::RANGE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let (index, fault) = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let fault = state.take_fault(&method, &path);
        state.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            range,
            status: 0,
            fault: fault.clone(),
        });
        (state.seen.len() - 1, fault)
    };
    let record = |status: u16| {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = state.seen.get_mut(index) {
            seen.status = status;
        }
    };
    match &fault {
        Some(Fault::Status(status)) => {
            record(*status);
            return error_response(*status);
        }
        Some(Fault::Stall(duration)) => tokio::time::sleep(*duration).await,
        Some(Fault::IgnoreRange) => {
            request.headers_mut().remove(hyper::header::RANGE);
        }
        _ => {}
    }
    let uri: Uri = format!("http://{authority}{path}")
        .parse()
        .unwrap_or_else(|e| panic!("bad forward URI for {path}: {e}"));
    *request.uri_mut() = uri;
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => {
            record(502);
            let mut response = Response::new(full(format!("fault proxy: upstream failed: {e}")));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            return response;
        }
    };
    record(response.status().as_u16());
    let success = response.status().is_success();
    let (parts, body) = response.into_parts();
    let length = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(2);
    let percent = |p: u8| length * u64::from(p.min(100)) / 100;
    let body = match fault {
        Some(Fault::Throttle(rate)) => throttled(body, rate),
        Some(Fault::Corrupt) if success => damaged(body, Damage::Corrupt, length / 2),
        Some(Fault::Truncate) if success => damaged(body, Damage::Truncate, length / 2),
        Some(Fault::ResetAt(p)) if success => damaged(body, Damage::Truncate, percent(p)),
        Some(Fault::StallAt(p, pause)) if success => stalled(body, percent(p), pause),
        _ => body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync(),
    };
    Response::from_parts(parts, body)
}

fn error_response(status: u16) -> Response<Body> {
    let code = match status {
        429 => "TOOMANYREQUESTS",
        503 => "UNAVAILABLE",
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NOT_FOUND",
        _ => "UNKNOWN",
    };
    let body = serde_json::json!({
        "errors": [{"code": code, "message": format!("injected by the fault proxy ({status})")}]
    })
    .to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        "docker-distribution-api-version",
        hyper::header::HeaderValue::from_static("registry/2.0"),
    );
    if status == 429 {
        headers.insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(blob_digest(&format!("/v2/x/y/blobs/{d}")), Some(d.as_str()));
        assert_eq!(
            blob_digest(&format!("/v2/x/blobs/{d}?ns=a")),
            Some(d.as_str())
        );
        assert_eq!(blob_digest("/v2/x/blobs/uploads/"), None);
        assert_eq!(blob_digest("/v2/x/manifests/latest"), None);
        assert!(Target::AllBlobs.matches(&format!("/v2/a/blobs/{d}")));
        assert!(!Target::Blob("sha256:b".into()).matches(&format!("/v2/a/blobs/{d}")));
    }

    #[test]
    fn rules_are_consumed() {
        let mut state = State::default();
        state.rules.push(Rule {
            target: Target::Path("/manifests/".into()),
            fault: Fault::Status(503),
            remaining: Some(1),
        });
        assert_eq!(
            state.take_fault("GET", "/v2/a/manifests/x"),
            Some(Fault::Status(503))
        );
        assert_eq!(state.take_fault("GET", "/v2/a/manifests/x"), None);
    }
}

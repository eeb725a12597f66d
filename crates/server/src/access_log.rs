//! The access log: one line per request on the API listener, under target
//! `regcache::access`, written when the response is done (its last byte
//! written, or the client gone), on both serving paths.
//!
//! A line has `method`, `route` ([`crate::routes::Route::kind`], never the
//! raw path), `repository`, `status`, `bytes` (body bytes written, as
//! `regcache_served_bytes_total` counts them), `duration_ms` (to the last
//! byte), `cache` ([`Outcome`]), `upstream`, `request_id` and `peer`.
//!
//! The cache outcome is noted by whoever learns it, deep in the services,
//! through a task-local cell ([`note`]); the metrics' hit/miss calls note
//! it too, so a lookup counted is a lookup logged. With `[log] access =
//! "off"` (or the target filtered out) no line is built and no cell is set:
//! the request pays for one relaxed load and the `enabled!` check.
//!
//! The request id is the client's `X-Request-Id` when it is sane (1 to 128
//! visible ASCII characters of a conservative set), else one made here; it
//! is every log line's span `id` and goes back in the response's
//! `X-Request-Id`.

use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::Stream;
use http::HeaderValue;
use http_body::Body as _;

use crate::web::body::Body;

/// `X-Request-Id`.
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// `[log] access`: the level access lines are written at, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLevel {
    #[default]
    Info,
    Debug,
    Off,
}

impl AccessLevel {
    pub fn parse(s: &str) -> Option<AccessLevel> {
        match s {
            "info" => Some(AccessLevel::Info),
            "debug" => Some(AccessLevel::Debug),
            "off" => Some(AccessLevel::Off),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(v: u8) -> AccessLevel {
        match v {
            0 => AccessLevel::Info,
            1 => AccessLevel::Debug,
            _ => AccessLevel::Off,
        }
    }

    /// Whether a line at this level would be written now.
    pub fn enabled(self) -> bool {
        match self {
            AccessLevel::Info => {
                tracing::enabled!(target: "regcache::access", tracing::Level::INFO)
            }
            AccessLevel::Debug => {
                tracing::enabled!(target: "regcache::access", tracing::Level::DEBUG)
            }
            AccessLevel::Off => false,
        }
    }
}

/// What the cache did for a request. When several things happened (a tag
/// hit, then a manifest miss) the later in this order wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Not a cached read (a push, a listing, an error before lookup).
    None,
    Hit,
    /// Served past its TTL (stale-if-error, stale-while-revalidate).
    Stale,
    Miss,
    /// Joined the fill another request started.
    FillJoined,
    /// A Docker twin of an OCI manifest, or a Schema 1 image upgraded.
    Bridged,
    /// A Schema 1 manifest generated from Schema 2.
    Converted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "-",
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::FillJoined => "fill-joined",
            Outcome::Bridged => "bridged",
            Outcome::Converted => "converted",
        }
    }
}

tokio::task_local! {
    static OUTCOME: Cell<Outcome>;
}

/// Note what the cache did for the current request (nothing outside one
/// whose line is being kept).
pub fn note(outcome: Outcome) {
    let _ = OUTCOME.try_with(|c| {
        if outcome > c.get() {
            c.set(outcome);
        }
    });
}

/// Run `work` with an outcome cell; its output and what was noted.
pub async fn scoped<F: std::future::Future>(work: F) -> (F::Output, Outcome) {
    OUTCOME
        .scope(Cell::new(Outcome::None), async move {
            let out = work.await;
            (out, OUTCOME.try_with(Cell::get).unwrap_or(Outcome::None))
        })
        .await
}

/// A request's id, in its extensions (for its span).
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// The client's request id if it is sane, else `make()`.
pub fn request_id(headers: &http::HeaderMap, make: impl FnOnce() -> HeaderValue) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if sane(v.as_bytes()) => v.clone(),
        _ => make(),
    }
}

fn sane(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+=/@".contains(b))
}

/// A generated id: this process's random prefix and a sequence number.
pub fn generated_id(prefix: u32, n: u64) -> HeaderValue {
    let text = format!("{prefix:08x}-{n}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A random prefix for this process's generated ids.
pub fn id_prefix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// One request's access line, written when dropped.
#[derive(Debug)]
pub struct Line(Box<Fields>);

#[derive(Debug)]
struct Fields {
    level: AccessLevel,
    started: Instant,
    method: http::Method,
    route: &'static str,
    repository: Option<String>,
    upstream: Option<String>,
    id: HeaderValue,
    peer: Option<std::net::SocketAddr>,
    status: u16,
    outcome: Outcome,
    bytes: u64,
}

/// What a line says about the request, known before it is answered.
#[derive(Debug)]
pub struct Request<'a> {
    pub level: AccessLevel,
    pub started: Instant,
    pub method: &'a http::Method,
    pub route: &'static str,
    pub repository: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub id: &'a HeaderValue,
    pub peer: Option<std::net::SocketAddr>,
}

impl Line {
    pub fn new(r: Request<'_>) -> Line {
        Line(Box::new(Fields {
            level: r.level,
            started: r.started,
            method: r.method.clone(),
            route: r.route,
            repository: r.repository.map(str::to_owned),
            upstream: r.upstream.map(str::to_owned),
            id: r.id.clone(),
            peer: r.peer,
            status: 0,
            outcome: Outcome::None,
            bytes: 0,
        }))
    }

    /// The response's status and the cache's outcome.
    pub fn answered(&mut self, status: u16, outcome: Outcome) {
        self.0.status = status;
        self.0.outcome = outcome;
    }

    /// Body bytes written.
    pub fn add_bytes(&mut self, n: u64) {
        self.0.bytes += n;
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let f = &*self.0;
        let ms = f.started.elapsed().as_secs_f64() * 1000.0;
        let duration_ms = (ms * 1000.0).round() / 1000.0;
        macro_rules! line {
            ($lvl:expr) => {
                tracing::event!(
                    target: "regcache::access",
                    $lvl,
                    method = %f.method,
                    route = f.route,
                    repository = f.repository.as_deref().unwrap_or("-"),
                    status = f.status,
                    bytes = f.bytes,
                    duration_ms,
                    cache = f.outcome.as_str(),
                    upstream = f.upstream.as_deref().unwrap_or("-"),
                    request_id = f.id.to_str().unwrap_or("-"),
                    peer = %f.peer.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    "request"
                )
            };
        }
        match f.level {
            AccessLevel::Info => line!(tracing::Level::INFO),
            AccessLevel::Debug => line!(tracing::Level::DEBUG),
            AccessLevel::Off => {}
        }
    }
}

/// `body`, its bytes counted into `line` as hyper takes them; the line is
/// written when hyper drops the body (done, or the client gone).
pub fn logged(body: Body, line: Line) -> Body {
    if let Body::Full(None) = body {
        return body;
    }
    let len = body.size_hint().exact();
    Body::stream(Box::pin(Logged { body, line }), len)
}

struct Logged {
    body: Body,
    line: Line,
}

impl Stream for Logged {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            return match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(b) => {
                        this.line.add_bytes(b.len() as u64);
                        Poll::Ready(Some(Ok(b)))
                    }
                    // No trailers in regcache's bodies.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_request_ids_are_echoed() {
        let mut h = http::HeaderMap::new();
        let made = || HeaderValue::from_static("made");
        assert_eq!(request_id(&h, made), "made");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123_x.y:z"));
        assert_eq!(request_id(&h, made), "abc-123_x.y:z");
        for bad in ["", "a b", "a\"b", "{json}"] {
            h.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            assert_eq!(request_id(&h, made), "made", "{bad:?}");
        }
        h.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(&"a".repeat(129)).unwrap(),
        );
        assert_eq!(request_id(&h, made), "made");
        assert_eq!(generated_id(0xab, 7), "000000ab-7");
    }

    #[tokio::test]
    async fn the_strongest_outcome_noted_wins_and_nothing_leaks_outside() {
        note(Outcome::Miss);
        let ((), got) = scoped(async {
            note(Outcome::Hit);
            note(Outcome::FillJoined);
            note(Outcome::Miss);
        })
        .await;
        assert_eq!(got, Outcome::FillJoined);
        let ((), got) = scoped(async {}).await;
        assert_eq!(got, Outcome::None);
        assert_eq!(got.as_str(), "-");
    }
}

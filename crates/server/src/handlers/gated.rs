//! `GET /v2/` for an upstream whose writes go with the client's own
//! credentials ([`crate::writes`]): answered by the upstream, with the
//! client's `Authorization`, so the client learns the upstream's challenge.
//! Docker, skopeo and podman ping first and send credentials only after a
//! challenge; a `200` from regcache itself would make them push anonymously.

use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use regcache_upstream::RawRequest;

use super::App;
use crate::error::Error;
use crate::request::Target;
use crate::web::body::{Body, ReqBody};
use crate::web::headers::copy_headers;
use crate::writes::{Gated, decide};

/// Largest ping answer relayed.
const MAX_PING_BYTES: usize = 64 << 10;

impl App {
    pub(super) async fn relay_ping(
        &self,
        target: &Target,
        req: Request<ReqBody>,
    ) -> Result<Response<Body>, Error> {
        let up = &target.upstream;
        let identity = decide(up.writes, Gated::Write, &up.name, req.headers())?;
        let head = req.method() == Method::HEAD;
        let resp = target
            .client()
            .send(RawRequest::new(Method::GET, "/v2/").identity(identity))
            .await?;
        let status = resp.status;
        let mut headers = HeaderMap::new();
        copy_headers(
            &resp.headers,
            &mut headers,
            &[header::CONTENT_TYPE, header::WWW_AUTHENTICATE],
        );
        let body = resp.bytes(MAX_PING_BYTES).await?;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut r = Response::new(if head {
            Body::empty()
        } else {
            Body::full(body)
        });
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        Ok(r)
    }
}

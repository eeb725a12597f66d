//! The adapter between the HTTP/1 fast path ([`crate::fastpath`]) and the
//! handlers: a blob `GET` is answered with its bytes handed to the kernel
//! (`sendfile` of a cached file, or of the file a fill is writing); every
//! other request goes through the same handlers hyper uses, routed once.

use futures_util::future::BoxFuture;
use http::{Method, Request, Response, header};
use regcache_formats::Digest;
use regcache_formats::reference::Reference;
use regcache_formats::schema1::EMPTY_LAYER_DIGEST;
use regcache_store::Source;

use super::App;
use super::blobs::ColdSlice;
use crate::config::AuthMode;
use crate::fastpath::{FastPath, Reply, ReplyBody};
use crate::metrics::{Kind, ResponseVia, ServedFrom};
use crate::request::{Routed, route};
use crate::rescue::rescue_at;
use crate::routes::Route;
use crate::web::body::{Body, ReqBody};
use crate::web::range::BlobSlice;
use crate::web::response::{blob_headers, range_not_satisfiable, with_api_version};
use crate::web::stream::fill_body;

impl FastPath for App {
    fn respond(&self, mut req: Request<ReqBody>) -> BoxFuture<'_, Reply> {
        let routed = route(req.uri(), &self.upstreams);
        let observed = self.observe(&mut req, &routed);
        // A prepared answer needs no await when nobody is authenticated
        // and no access line waits for the outcome: answered here, it
        // spares the request boxing the full path's future (kilobytes of
        // state copied per request).
        let prepared = match &routed {
            Ok(r) if !observed.logging() && self.auth.mode() == AuthMode::None => {
                self.prepared_reply(r, &req)
            }
            _ => None,
        };
        if let Some(mut reply) = prepared {
            self.metrics.responded(ResponseVia::Prepared);
            let outcome = crate::access_log::Outcome::None;
            let (id, line) = self.observed(observed, reply.status.as_u16(), outcome);
            reply
                .headers
                .insert(crate::access_log::X_REQUEST_ID.clone(), id);
            reply.access = line;
            return Box::pin(std::future::ready(reply));
        }
        Box::pin(async move {
            let (mut reply, outcome) = if observed.logging() {
                crate::access_log::scoped(self.fast_reply(routed, req)).await
            } else {
                (
                    self.fast_reply(routed, req).await,
                    crate::access_log::Outcome::None,
                )
            };
            let (id, line) = self.observed(observed, reply.status.as_u16(), outcome);
            reply
                .headers
                .insert(crate::access_log::X_REQUEST_ID.clone(), id);
            reply.access = line;
            reply
        })
    }
}

impl App {
    /// [`FastPath::respond`] once the request is observed.
    async fn fast_reply(
        &self,
        routed: Result<Routed, crate::error::Error>,
        req: Request<ReqBody>,
    ) -> Reply {
        {
            let head = req.method() == Method::HEAD;
            let routed = match self.admit(&req, routed).await {
                Ok(routed) => routed,
                Err(refused) => {
                    self.metrics.responded(ResponseVia::Fast);
                    return Reply::from_response(refused, head);
                }
            };
            if let Ok(r) = &routed
                && let Some(reply) = self.prepared_reply(r, &req)
            {
                self.metrics.responded(ResponseVia::Prepared);
                return reply;
            }
            if let Ok(r) = &routed
                && let Some(reply) = self.fast_blob(r, &req).await
            {
                self.metrics.responded(match reply.body {
                    ReplyBody::File { .. } => ResponseVia::Sendfile,
                    ReplyBody::Fill { .. } => ResponseVia::SendfileFill,
                    _ => ResponseVia::Fast,
                });
                return reply;
            }
            self.metrics.responded(ResponseVia::Fast);
            Reply::from_response(self.respond_authorized(routed, req).await, head)
        }
    }

    /// A `GET` of a blob, answered as `get_blob` would (same headers, same
    /// range rules, same errors) but with the bytes handed to the kernel: a
    /// cached file, or the file of the fill that brings it from the upstream.
    /// `None` leaves the request to the full handlers (conditional requests,
    /// the empty layer, content in memory).
    async fn fast_blob(&self, routed: &Routed, req: &Request<ReqBody>) -> Option<Reply> {
        let Route::Blob { name, digest } = &routed.route else {
            return None;
        };
        if req.method() != Method::GET
            || req.headers().contains_key(header::IF_NONE_MATCH)
            || req.headers().contains_key(header::IF_RANGE)
            || digest.as_str() == EMPTY_LAYER_DIGEST
        {
            return None;
        }
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok());
        let reply =
            |resp: Response<Body>| Some(Reply::from_response(with_api_version(resp), false));
        match self.services.blobs.cached(digest).await {
            Ok(Some(src)) => {
                let len = src.len();
                let Some(slice) = BlobSlice::of(range, len) else {
                    return reply(range_not_satisfiable(len));
                };
                let (start, n) = (slice.start, slice.n);
                let body = match src {
                    Source::Bytes(b) => {
                        ReplyBody::Bytes(b.slice(start as usize..(start + n) as usize))
                    }
                    Source::File { file, .. } => ReplyBody::File {
                        file,
                        offset: start,
                        len: n,
                    },
                    _ => return None,
                };
                self.cockpit.tally(&routed.route).bytes(n);
                let mut reply = blob_reply(slice, digest, body);
                reply.meter = Some(self.metrics.meter(ServedFrom::Cache));
                Some(reply)
            }
            // A blob regcache generated (a Schema 1 upgrade's config) is
            // not the upstream's: the full handler rebuilds it.
            Ok(None)
                if self
                    .services
                    .upgrade
                    .mapping(&routed.target, name, digest)
                    .is_some() =>
            {
                None
            }
            Ok(None) => {
                let mut target = routed.target.clone();
                target.span = self.request_span(req, &routed.route);
                let cold = target
                    .in_span(self.cold_slice(&target, name, digest, range))
                    .await;
                let (slice, reader) = match cold {
                    Ok(ColdSlice::Send(slice, reader)) => (slice, reader),
                    Ok(ColdSlice::Unsatisfiable(len)) => return reply(range_not_satisfiable(len)),
                    Err(e) => {
                        let at = target.span.at();
                        self.cockpit.tally(&routed.route);
                        return reply(target.span().in_scope(|| rescue_at(e, false, at)));
                    }
                };
                let body = match reader.into_file() {
                    Ok(fill) => ReplyBody::Fill {
                        fill,
                        offset: slice.start,
                        len: slice.n,
                    },
                    Err(reader) => ReplyBody::Body(fill_body(*reader, &slice)),
                };
                self.cockpit.tally(&routed.route).bytes(slice.n);
                let mut reply = blob_reply(slice, digest, body);
                reply.meter = Some(self.metrics.meter(ServedFrom::Upstream));
                Some(reply)
            }
            Err(_) => None,
        }
    }
}

impl App {
    /// A manifest answer kept ready ([`super::prepared`]), counted as the
    /// full path would count it (a tag hit if by tag, a manifest hit, and
    /// the rendering's hit if it is one).
    fn prepared_reply(&self, routed: &Routed, req: &Request<ReqBody>) -> Option<Reply> {
        let Route::Manifest { name, reference } = &routed.route else {
            return None;
        };
        if routed.target.acting_as.is_some() || req.headers().contains_key(header::IF_NONE_MATCH) {
            return None;
        }
        let (reference, by_digest) = match reference {
            Reference::Tag(tag) => (tag.as_str(), false),
            Reference::Digest(digest) => (digest.as_str(), true),
        };
        let key = super::prepared::Key {
            upstream: &routed.target.upstream.name,
            repository: name.as_str(),
            reference,
            accept: req.headers(),
        };
        let now = crate::services::unix_now();
        let basis = self.prepared_basis(&routed.target, by_digest);
        let answer = self.prepared.get(&key, basis, now)?;
        if !by_digest {
            self.metrics.hit(Kind::Tag);
        }
        self.metrics.hit(Kind::Manifest);
        if let Some(kind) = answer.kind {
            self.metrics.hit(kind);
        }
        if super::prepared::Prepared::touch_due(&answer, now) {
            self.store().disk().touch(&answer.digest);
        }
        let head = req.method() == Method::HEAD;
        let tally = self.cockpit.tally(&routed.route);
        if !head {
            tally.bytes(answer.body.len() as u64);
        }
        Some(Reply {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: ReplyBody::Prepared {
                head: answer.head.clone(),
                body: answer.body.clone(),
            },
            meter: None,
            access: None,
        })
    }
}

/// A fast-path blob reply: the headers `get_blob` would send, and `body`.
fn blob_reply(slice: BlobSlice, digest: &Digest, body: ReplyBody) -> Reply {
    let (parts, _) = blob_headers(
        slice.status,
        digest,
        slice.n,
        slice.content_range,
        Body::empty(),
    )
    .into_parts();
    Reply {
        status: slice.status,
        headers: parts.headers,
        body,
        meter: None,
        access: None,
    }
}

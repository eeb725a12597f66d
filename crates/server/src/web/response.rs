//! Response builders: the headers every registry answer carries, identical
//! for GET and HEAD (HEAD sends no body but the same length).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use regcache_formats::{Digest, ErrorCode, ErrorEnvelope, RegistryError, media_type};
use regcache_store::Source;

use crate::error::Error;
use crate::web::body::Body;
use crate::web::range::BlobSlice;
use crate::web::stream::file_stream;

/// Header names set on every answer: constants, not parsed each time.
pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

pub fn ping(head: bool) -> Response<Body> {
    json_response(StatusCode::OK, Bytes::from_static(b"{}"))
        .map(|b| if head { Body::empty() } else { b })
}

pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type::ERROR_JSON),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

pub fn not_modified(digest: &Digest) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

pub fn digest_headers(h: &mut HeaderMap, digest: &Digest) {
    if let Ok(v) = HeaderValue::from_str(digest.as_str()) {
        h.insert(DOCKER_CONTENT_DIGEST, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert(header::ETAG, v);
    }
}

/// Content-Type, Content-Length, Docker-Content-Digest and Etag, identical for
/// GET and HEAD (HEAD sends no body but the same length).
pub fn manifest_response(
    content_type: &'static str,
    digest: &Digest,
    body: Bytes,
    head: bool,
) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(if head {
        Body::empty()
    } else {
        Body::full(body)
    });
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    digest_headers(h, digest);
    r
}

/// A blob answer's headers: type, length, `Accept-Ranges`, immutable caching,
/// the digest, and the `Content-Range` of a 206.
pub fn blob_headers(
    status: StatusCode,
    digest: &Digest,
    len: u64,
    content_range: Option<String>,
    body: Body,
) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type::OCTET_STREAM),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    digest_headers(h, digest);
    if let Some(cr) = content_range.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::CONTENT_RANGE, cr);
    }
    r
}

pub fn range_not_satisfiable(len: u64) -> Response<Body> {
    let envelope = ErrorEnvelope::single(RegistryError::with_message(
        ErrorCode::Unknown,
        format!("requested range not satisfiable: the blob has {len} bytes"),
    ));
    let mut r = error_response(416, &envelope, None, false);
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

/// Serve cached content, whole or a single range.
pub fn serve_source(
    src: Source,
    digest: &Digest,
    range: Option<&str>,
    head: bool,
) -> Result<Response<Body>, Error> {
    let len = src.len();
    let Some(BlobSlice {
        status,
        start,
        n,
        content_range,
    }) = BlobSlice::of(range, len)
    else {
        return Ok(range_not_satisfiable(len));
    };
    if head {
        return Ok(blob_headers(
            status,
            digest,
            n,
            content_range,
            Body::empty(),
        ));
    }
    let body = match src {
        Source::Bytes(b) => {
            let (s, e) = (start as usize, (start + n) as usize);
            Body::full(b.slice(s..e))
        }
        Source::File { file, .. } => Body::stream(file_stream(file, start, n), Some(n)),
        _ => return Err(Error::bug("unknown cache source")),
    };
    Ok(blob_headers(status, digest, n, content_range, body))
}

/// Every answer of the registry API says which API it speaks.
pub fn with_api_version(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

/// Serialise an envelope with the given status.
pub fn error_response(
    status: u16,
    envelope: &ErrorEnvelope,
    retry_after: Option<&str>,
    head: bool,
) -> Response<Body> {
    let body = Bytes::from(envelope.to_body());
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(if head {
        Body::empty()
    } else {
        Body::full(body.clone())
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type::ERROR_JSON),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(ra) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert(header::RETRY_AFTER, ra);
    }
    resp
}

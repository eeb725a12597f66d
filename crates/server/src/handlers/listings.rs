//! `tags/list` and `_catalog`, relayed from the upstream; what
//! regcache knows itself when the upstream cannot answer.
//!
//! A tag list's `name` is the repository as the client named it
//! (`quay.io/team/app` under a registry path prefix, where the upstream says
//! `team/app`): distribution clients compare it with the name they asked
//! for. Catalog entries under a prefix stay the upstream's names, unprefixed:
//! they list the registry the prefix chose, as its own `/v2/_catalog` would,
//! and the `last=` pagination parameter a client takes from them (and the
//! upstream's `Link`) must be an upstream name.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use regcache_formats::reference::RepositoryName;
use regcache_upstream::{Identity, RawRequest, UpstreamError};

use super::App;
use crate::error::Error;
use crate::metrics::Kind;
use crate::request::Target;
use crate::web::body::{Body, ReqBody};
use crate::web::headers::{copy_headers, rewrite_link};
use crate::web::response::json_response;

/// Largest upstream listing relayed.
const MAX_LISTING_BYTES: usize = 32 << 20;

/// Which listing a request asks for.
#[derive(Debug)]
pub enum Listing {
    Tags(RepositoryName),
    Catalog,
}

impl App {
    pub(super) async fn listing(
        &self,
        target: &Target,
        req: &Request<ReqBody>,
        kind: Listing,
        identity: Identity,
    ) -> Result<Response<Body>, Error> {
        let mut headers = HeaderMap::new();
        copy_headers(req.headers(), &mut headers, &[header::ACCEPT]);
        // With the client's own credentials, or acting as the client
        // (`auth = "upstream"`), the upstream decides what it may see: no
        // answer from regcache's index in its place, and its challenge goes
        // back to the client.
        let clients_own = matches!(identity, Identity::Client(_)) || target.acting_as.is_some();
        let resp = target
            .client()
            .send(
                RawRequest::new(Method::GET, target.upstream_path.clone())
                    .headers(headers)
                    .idempotent(true)
                    .identity(identity),
            )
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_unavailable() && !clients_own => {
                return self.local_listing(target, &kind, e);
            }
            Err(e) => return Err(Error::Upstream(e)),
        };
        if !clients_own
            && (resp.status.is_server_error() || resp.status == StatusCode::TOO_MANY_REQUESTS)
        {
            let e = UpstreamError::Registry {
                upstream: target.upstream.name.clone(),
                status: resp.status.as_u16(),
                envelope: None,
                retry_after: None,
            };
            if let Ok(local) = self.local_listing(target, &kind, e) {
                return Ok(local);
            }
        }
        let status = resp.status;
        let mut out_headers = HeaderMap::new();
        copy_headers(&resp.headers, &mut out_headers, &[header::CONTENT_TYPE]);
        if clients_own {
            copy_headers(&resp.headers, &mut out_headers, &[header::WWW_AUTHENTICATE]);
        }
        if let Some(link) = resp.headers.get(header::LINK).and_then(|v| v.to_str().ok())
            && let Ok(v) = HeaderValue::from_str(&rewrite_link(link, |p| target.client_path(p)))
        {
            out_headers.insert(header::LINK, v);
        }
        let mut body = resp.bytes(MAX_LISTING_BYTES).await?;
        if let Listing::Tags(name) = &kind
            && status.is_success()
        {
            let client = target.client_name(name);
            if client != name.as_str()
                && let Some(renamed) = rename_tag_list(&body, &client)
            {
                body = renamed;
            }
        }
        let len = body.len();
        let mut r = Response::new(Body::full(body));
        *r.status_mut() = status;
        *r.headers_mut() = out_headers;
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        Ok(r)
    }

    /// What regcache itself knows, when the upstream cannot answer a listing.
    /// A tag list names the repository as the client did (see
    /// [`rename_tag_list`]); catalog entries stay upstream names.
    fn local_listing(
        &self,
        target: &Target,
        kind: &Listing,
        e: UpstreamError,
    ) -> Result<Response<Body>, Error> {
        let up = &target.upstream.name;
        let tags = self.store().tags();
        let body = match kind {
            Listing::Tags(name) => {
                let mut list: Vec<String> = tags
                    .list(up, name.as_str())
                    .into_iter()
                    .map(|(t, _)| t)
                    .collect();
                if list.is_empty() {
                    return Err(Error::Upstream(e));
                }
                list.sort();
                serde_json::json!({ "name": target.client_name(name), "tags": list })
            }
            Listing::Catalog => {
                let mut repos = tags.repositories(up);
                repos.sort();
                serde_json::json!({ "repositories": repos })
            }
        };
        self.metrics.stale(Kind::Listing);
        let mut bytes =
            serde_json::to_vec(&body).map_err(|e| Error::internal("writing a listing", e))?;
        bytes.push(b'\n');
        Ok(json_response(StatusCode::OK, Bytes::from(bytes)))
    }
}

/// A `tags/list` body with `name` set to `client_name`, every other field
/// (the `tags` array above all) kept as it was, and a trailing newline kept
/// if there was one. `None` when the body is not a JSON object with a string
/// `name`: such a body is relayed as it came.
fn rename_tag_list(body: &[u8], client_name: &str) -> Option<Bytes> {
    let mut doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let name = doc.get_mut("name")?;
    if !name.is_string() {
        return None;
    }
    *name = serde_json::Value::String(client_name.to_owned());
    let mut out = serde_json::to_vec(&doc).ok()?;
    if body.ends_with(b"\n") {
        out.push(b'\n');
    }
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_are_renamed_keeping_everything_else() {
        let upstream = b"{\"name\":\"team/app\",\"tags\":[\"1\",\"latest\"]}\n";
        let renamed = rename_tag_list(upstream, "quay.io/team/app").unwrap();
        assert_eq!(
            &renamed[..],
            b"{\"name\":\"quay.io/team/app\",\"tags\":[\"1\",\"latest\"]}\n"
        );
        // Other fields and null tags survive; no trailing newline is added.
        let renamed = rename_tag_list(
            br#"{"tags":null,"name":"a","x-extra":{"k":[1,2]}}"#,
            "r.io/a",
        )
        .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&renamed).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"name": "r.io/a", "tags": null, "x-extra": {"k": [1, 2]}})
        );
        assert!(!renamed.ends_with(b"\n"));
        // Anything else is relayed unchanged.
        for body in [
            &b"not json"[..],
            b"[\"team/app\"]",
            b"{\"tags\":[\"1\"]}",
            b"{\"name\":7,\"tags\":[]}",
            b"",
        ] {
            assert_eq!(rename_tag_list(body, "quay.io/team/app"), None, "{body:?}");
        }
    }
}

//! `GET /v2/<repo>/referrers/<digest>` (OCI distribution-spec 1.1,
//! "Listing Referrers"), and what its answer means for a proxy.
//!
//! The request is a pass-through ([`UpstreamApi::send`]) with regcache's
//! stored identity, so credentials are handled as for manifests: the token
//! scope is `repository:<repo>:pull` ([`crate::Scope::infer`] knows the
//! path), and a `401` runs the token dance. The filter is never sent:
//! regcache caches the whole list and filters locally.
//!
//! A registry without the API answers `404` (distribution 2.8: a plain
//! `404 page not found`, no route) or `405`; the spec tells clients to fall
//! back to the referrers tag schema then, which [`ReferrersAnswer::NoApi`]
//! says. Every other error status is an [`UpstreamError::Registry`].

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use regcache_formats::{Digest, ErrorCode, ErrorEnvelope};

use crate::api::{RawRequest, UpstreamApi};
use crate::client::MAX_MANIFEST_SIZE;
use crate::error::UpstreamError;

/// The header a registry sets when it applied the request's filters.
pub const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";

/// The OCI image index media type referrers lists are.
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What an upstream said to a referrers request.
#[derive(Clone, Debug, PartialEq)]
pub enum ReferrersAnswer {
    /// `200`: the upstream's list, byte-exact and not yet validated (the
    /// caller checks it is an OCI image index).
    Index {
        bytes: Bytes,
        /// `Content-Type` without parameters.
        content_type: Option<String>,
        /// `OCI-Filters-Applied`, when sent: the list is *not* the whole
        /// list (regcache sent no filter, so this is the upstream's doing).
        filters_applied: Option<String>,
        /// The next page's path and query on the upstream (`Link: <…>;
        /// rel="next"`), for [`get_referrers_page`].
        next: Option<String>,
    },
    /// `404` or `405`: no referrers API here; use the tag schema.
    NoApi {
        status: u16,
        envelope: Option<ErrorEnvelope>,
    },
}

impl ReferrersAnswer {
    /// For a [`ReferrersAnswer::NoApi`]: whether the answer says the
    /// *registry* lacks the API, rather than only that the repository is not
    /// there (`NAME_UNKNOWN`, which a registry with the API may also answer).
    /// Worth remembering per upstream only when true.
    pub fn registry_lacks_api(&self) -> bool {
        match self {
            ReferrersAnswer::Index { .. } => false,
            ReferrersAnswer::NoApi { envelope, .. } => !envelope
                .as_ref()
                .and_then(|e| e.errors.first())
                .is_some_and(|e| e.code == ErrorCode::NameUnknown),
        }
    }
}

/// `GET /v2/<repo>/referrers/<subject>` on `upstream`; see the module
/// documentation. Implemented over [`UpstreamApi::send`], so every
/// implementation (the real client, the breaker's guard, the mocks) has it.
pub async fn get_referrers<U: UpstreamApi + ?Sized>(
    upstream: &U,
    repo: &str,
    subject: &Digest,
) -> Result<ReferrersAnswer, UpstreamError> {
    get_referrers_page(upstream, &format!("/v2/{repo}/referrers/{subject}")).await
}

/// One page of a referrers list: `path_and_query` is the first page's path
/// or a `next` an earlier page named.
pub async fn get_referrers_page<U: UpstreamApi + ?Sized>(
    upstream: &U,
    path_and_query: &str,
) -> Result<ReferrersAnswer, UpstreamError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(OCI_INDEX));
    let resp = upstream
        .send(RawRequest::new(Method::GET, path_and_query).headers(headers))
        .await?;
    match resp.status {
        StatusCode::OK => {
            let content_type = resp
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
            let filters_applied = resp
                .headers
                .get(OCI_FILTERS_APPLIED)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty());
            let next = resp
                .headers
                .get_all(header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link);
            let bytes = resp.bytes(MAX_MANIFEST_SIZE).await?;
            Ok(ReferrersAnswer::Index {
                bytes,
                content_type,
                filters_applied,
                next,
            })
        }
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
            let status = resp.status.as_u16();
            let envelope = match resp.error_for_status().await {
                Err(e) => e.envelope().cloned(),
                Ok(_) => None,
            };
            Ok(ReferrersAnswer::NoApi { status, envelope })
        }
        s if s.as_u16() >= 400 => {
            Err(resp
                .error_for_status()
                .await
                .err()
                .unwrap_or_else(|| UpstreamError::Protocol {
                    upstream: upstream.name().to_owned(),
                    detail: format!("referrers answered HTTP {s}"),
                }))
        }
        s => Err(UpstreamError::Protocol {
            upstream: upstream.name().to_owned(),
            detail: format!("referrers answered HTTP {s}, not 200"),
        }),
    }
}

/// The path and query of the `rel="next"` target in a `Link` header value
/// (`<URL>; rel="next"`, several comma-separated links allowed); an
/// absolute URL is cut to its path and query (the client refuses a path
/// that leaves the upstream's origin anyway).
pub fn next_link(link: &str) -> Option<String> {
    let mut rest = link;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let params_end = rest[close..].find('<').map_or(rest.len(), |i| close + i);
        let params = &rest[close + 1..params_end];
        let is_next = params.split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            p.strip_prefix("rel=")
                .is_some_and(|v| v.trim_matches('"').split(' ').any(|r| r == "next"))
        });
        if is_next {
            let path = match target.find("://") {
                Some(i) => {
                    let after = &target[i + 3..];
                    &after[after.find('/')?..]
                }
                None => target,
            };
            return path.starts_with("/v2/").then(|| path.to_owned());
        }
        rest = &rest[params_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use regcache_formats::RegistryError;

    #[test]
    fn next_links_are_found_and_cut_to_paths() {
        let d = "sha256:aa";
        assert_eq!(
            next_link(&format!("</v2/a/referrers/{d}?last=x>; rel=\"next\"")).as_deref(),
            Some(format!("/v2/a/referrers/{d}?last=x").as_str())
        );
        assert_eq!(
            next_link("<https://r.example:5000/v2/a/referrers/x?n=2&last=y>; rel=next").as_deref(),
            Some("/v2/a/referrers/x?n=2&last=y")
        );
        assert_eq!(
            next_link(
                "</v2/a/referrers/x?p=0>; rel=\"prev\", </v2/a/referrers/x?p=2>; rel=\"next\""
            )
            .as_deref(),
            Some("/v2/a/referrers/x?p=2")
        );
        assert_eq!(next_link("</v2/a/referrers/x?p=0>; rel=\"prev\""), None);
        assert_eq!(next_link("<https://elsewhere.example>; rel=\"next\""), None);
        assert_eq!(next_link("garbage"), None);
        assert_eq!(next_link("</v2/a; rel=next"), None);
    }

    #[test]
    fn only_name_unknown_is_not_a_missing_api() {
        let no_api = |envelope| ReferrersAnswer::NoApi {
            status: 404,
            envelope,
        };
        assert!(no_api(None).registry_lacks_api());
        assert!(
            no_api(Some(ErrorEnvelope::single(RegistryError::new(
                ErrorCode::Unsupported
            ))))
            .registry_lacks_api()
        );
        assert!(
            !no_api(Some(ErrorEnvelope::single(RegistryError::new(
                ErrorCode::NameUnknown
            ))))
            .registry_lacks_api()
        );
        assert!(
            !ReferrersAnswer::Index {
                bytes: Bytes::new(),
                content_type: None,
                filters_applied: None,
                next: None,
            }
            .registry_lacks_api()
        );
    }
}

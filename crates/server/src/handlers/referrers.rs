//! `GET`/`HEAD /v2/<name>/referrers/<digest>[?artifactType=<type>]` (OCI
//! 1.1): the list comes from [`crate::services::referrers`]; this adds the
//! HTTP: the filter from the query, and an OCI image index answer with
//! `OCI-Filters-Applied` when a filter was applied. HEAD has the same
//! headers (length included) and no body.

use http::{HeaderName, HeaderValue, Request, Response, header};
use regcache_formats::Digest;
use regcache_formats::media_type::OCI_INDEX;
use regcache_formats::reference::RepositoryName;

use super::App;
use crate::error::Error;
use crate::request::Target;
use crate::services::referrers::Referrers;
use crate::web::body::{Body, ReqBody};

const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

impl App {
    pub(super) async fn get_referrers(
        &self,
        target: &Target,
        name: &RepositoryName,
        subject: &Digest,
        req: &Request<ReqBody>,
        head: bool,
    ) -> Result<Response<Body>, Error> {
        let artifact_type = artifact_type_of(req.uri().query());
        let r = self
            .services
            .referrers
            .list(target, name, subject, artifact_type.as_deref())
            .await?;
        Ok(referrers_response(r, head))
    }
}

/// The `artifactType` query parameter, decoded; `None` when absent or
/// empty. The first one counts. A `+` stays a `+` (form decoding would make
/// it a space, which no media type contains, while `+json` types are common
/// and clients do not always escape them).
pub fn artifact_type_of(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "artifactType")
        .map(|(_, v)| v.replace(' ', "+"))
        .filter(|v| !v.is_empty())
}

fn referrers_response(r: Referrers, head: bool) -> Response<Body> {
    let len = r.body.len();
    let mut resp = Response::new(if head {
        Body::empty()
    } else {
        Body::full(r.body)
    });
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(v) = r
        .filters_applied
        .and_then(|f| HeaderValue::from_str(&f).ok())
    {
        h.insert(OCI_FILTERS_APPLIED, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_type_comes_from_the_query() {
        let sig = "application/vnd.dev.cosign.artifact.sig.v1+json";
        assert_eq!(artifact_type_of(None), None);
        assert_eq!(artifact_type_of(Some("")), None);
        assert_eq!(artifact_type_of(Some("artifactType=")), None);
        assert_eq!(artifact_type_of(Some("n=10")), None);
        assert_eq!(
            artifact_type_of(Some(
                "ns=docker.io&artifactType=application%2Fvnd.dev.cosign.artifact.sig.v1%2Bjson"
            ))
            .as_deref(),
            Some(sig)
        );
        // An unescaped '+' is kept, not read as a space.
        assert_eq!(
            artifact_type_of(Some(&format!("artifactType={sig}&artifactType=x"))).as_deref(),
            Some(sig)
        );
        // The parameter name is case-sensitive, as in the spec.
        assert_eq!(artifact_type_of(Some("artifacttype=x")), None);
    }
}

//! Turn a request's method and path into a typed [`Route`] before acting on it.
//!
//! All name, reference and digest validation happens here, in one pure function,
//! so malformed input becomes `NAME_INVALID` / `DIGEST_INVALID` (and a tag that
//! cannot exist `MANIFEST_UNKNOWN`)
//! in exactly one place (and the parser can be fuzzed).
//!
//! Paths are matched from the right: a repository name may itself contain
//! components called `manifests` or `blobs`, but a tag, a digest and an upload id
//! never contain `/`, so the last segments decide the endpoint.

use regcache_formats::reference::{Reference, RepositoryName};
use regcache_formats::{Digest, ErrorCode, RegistryError};

/// The API endpoint a request addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/` (and `/v2`).
    Ping,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        name: RepositoryName,
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        name: RepositoryName,
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/` (start an upload, or mount).
    UploadStart { name: RepositoryName },
    /// `/v2/<name>/blobs/uploads/<id>` (status, chunk, finish, cancel).
    Upload { name: RepositoryName, id: String },
    /// `/v2/<name>/tags/list`.
    Tags { name: RepositoryName },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers {
        name: RepositoryName,
        digest: Digest,
    },
}

/// Why a path is not a route: the registry error to answer with.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteError(pub RegistryError);

impl Route {
    /// Parse a request path (without query). `Ok(None)` means "not an API path"
    /// (answered with 404 by the caller).
    pub fn parse(path: &str) -> Result<Option<Route>, RouteError> {
        let Some(rest) = path.strip_prefix("/v2") else {
            return Ok(None);
        };
        if rest.is_empty() || rest == "/" {
            return Ok(Some(Route::Ping));
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Ok(None);
        };
        if rest == "_catalog" {
            return Ok(Some(Route::Catalog));
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name_of = |end: usize| -> Result<RepositoryName, RouteError> {
            let joined = segs[..end].join("/");
            RepositoryName::parse(&joined).map_err(|e| {
                RouteError(RegistryError::new(ErrorCode::NameInvalid).detail(
                    serde_json::json!({ "name": truncate(&joined), "reason": e.to_string() }),
                ))
            })
        };
        let digest_of = |s: &str| -> Result<Digest, RouteError> {
            Digest::parse(s).map_err(|e| {
                RouteError(RegistryError::with_message(
                    ErrorCode::DigestInvalid,
                    e.to_string(),
                ))
            })
        };
        if n >= 3 && segs[n - 2] == "manifests" {
            let name = name_of(n - 2)?;
            let reference = Reference::parse(segs[n - 1]).map_err(|e| match e.error_code() {
                // A tag that can't exist names a manifest that isn't there:
                // 404, as distribution and the OCI conformance suite expect.
                // A malformed digest stays 400 DIGEST_INVALID.
                ErrorCode::TagInvalid => RouteError(
                    RegistryError::with_message(
                        ErrorCode::ManifestUnknown,
                        format!(
                            "no manifest can be named {:?}: {e} (a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'; a digest is algorithm:hex)",
                            truncate(segs[n - 1])
                        ),
                    )
                    .detail(serde_json::json!({ "Tag": truncate(segs[n - 1]) })),
                ),
                code => RouteError(RegistryError::with_message(code, e.to_string())),
            })?;
            return Ok(Some(Route::Manifest { name, reference }));
        }
        if n >= 3 && segs[n - 2] == "referrers" {
            let name = name_of(n - 2)?;
            let digest = digest_of(segs[n - 1])?;
            return Ok(Some(Route::Referrers { name, digest }));
        }
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            return Ok(Some(Route::Tags {
                name: name_of(n - 2)?,
            }));
        }
        if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
            let name = name_of(n - 3)?;
            let id = segs[n - 1];
            if id.is_empty() {
                return Ok(Some(Route::UploadStart { name }));
            }
            if !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b))
            {
                return Err(RouteError(RegistryError::new(ErrorCode::BlobUploadInvalid)));
            }
            return Ok(Some(Route::Upload {
                name,
                id: id.to_owned(),
            }));
        }
        if n >= 3 && segs[n - 2] == "blobs" {
            let name = name_of(n - 2)?;
            let digest = digest_of(segs[n - 1])?;
            return Ok(Some(Route::Blob { name, digest }));
        }
        Ok(None)
    }

    /// The same route with its repository name replaced (Docker Hub's
    /// `library/` prefix for one-component names).
    pub fn map_name(self, f: impl FnOnce(RepositoryName) -> RepositoryName) -> Route {
        match self {
            Route::Ping | Route::Catalog => self,
            Route::Manifest { name, reference } => Route::Manifest {
                name: f(name),
                reference,
            },
            Route::Blob { name, digest } => Route::Blob {
                name: f(name),
                digest,
            },
            Route::UploadStart { name } => Route::UploadStart { name: f(name) },
            Route::Upload { name, id } => Route::Upload { name: f(name), id },
            Route::Tags { name } => Route::Tags { name: f(name) },
            Route::Referrers { name, digest } => Route::Referrers {
                name: f(name),
                digest,
            },
        }
    }

    /// The endpoint's name, for logs and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Ping => "ping",
            Route::Catalog => "catalog",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::UploadStart { .. } | Route::Upload { .. } => "upload",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
        }
    }

    /// The repository the route addresses, if any.
    pub fn name(&self) -> Option<&RepositoryName> {
        match self {
            Route::Ping | Route::Catalog => None,
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. }
            | Route::Tags { name }
            | Route::Referrers { name, .. } => Some(name),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

    fn code(path: &str) -> ErrorCode {
        Route::parse(path).unwrap_err().0.code
    }

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(Route::parse("/v2/").unwrap(), Some(Route::Ping));
        assert_eq!(Route::parse("/v2").unwrap(), Some(Route::Ping));
        assert_eq!(Route::parse("/v2/_catalog").unwrap(), Some(Route::Catalog));
        let r = Route::parse("/v2/library/alpine/manifests/3.19")
            .unwrap()
            .unwrap();
        assert!(
            matches!(r, Route::Manifest { ref name, reference: Reference::Tag(_) } if name.as_str() == "library/alpine")
        );
        let r = Route::parse(&format!("/v2/a/manifests/{D}"))
            .unwrap()
            .unwrap();
        assert!(matches!(
            r,
            Route::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        let r = Route::parse(&format!("/v2/a/b/c/blobs/{D}"))
            .unwrap()
            .unwrap();
        assert!(matches!(r, Route::Blob { ref name, .. } if name.as_str() == "a/b/c"));
        assert!(matches!(
            Route::parse("/v2/a/blobs/uploads/").unwrap().unwrap(),
            Route::UploadStart { .. }
        ));
        assert!(matches!(
            Route::parse("/v2/a/blobs/uploads/0b1c-x_y.z=").unwrap().unwrap(),
            Route::Upload { ref id, .. } if id == "0b1c-x_y.z="
        ));
        assert!(matches!(
            Route::parse("/v2/a/tags/list").unwrap().unwrap(),
            Route::Tags { .. }
        ));
        assert!(matches!(
            Route::parse(&format!("/v2/a/referrers/{D}"))
                .unwrap()
                .unwrap(),
            Route::Referrers { .. }
        ));
        // Components named like endpoints are fine inside a name.
        let r = Route::parse("/v2/manifests/blobs/manifests/latest")
            .unwrap()
            .unwrap();
        assert!(
            matches!(r, Route::Manifest { ref name, .. } if name.as_str() == "manifests/blobs")
        );
    }

    #[test]
    fn malformed_input_maps_to_registry_codes() {
        assert_eq!(code("/v2/UPPER/manifests/latest"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a//b/manifests/latest"), ErrorCode::NameInvalid);
        assert_eq!(
            code("/v2/a/manifests/sha256:AAAA"),
            ErrorCode::DigestInvalid
        );
        assert_eq!(code("/v2/a/blobs/sha256:1234"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/notadigest"), ErrorCode::DigestInvalid);
        // An invalid tag is a manifest that is not there (404), as the OCI
        // conformance suite expects; a malformed digest stays 400.
        assert_eq!(code("/v2/a/manifests/-bad"), ErrorCode::ManifestUnknown);
        assert_eq!(
            code("/v2/a/manifests/.INVALID_MANIFEST_NAME"),
            ErrorCode::ManifestUnknown
        );
        assert_eq!(
            code(&format!("/v2/a/manifests/{}", "t".repeat(129))),
            ErrorCode::ManifestUnknown
        );
        assert_eq!(code("/v2/a/manifests/sha256:abc"), ErrorCode::DigestInvalid);
        assert_eq!(
            code("/v2/a/blobs/uploads/bad%20id"),
            ErrorCode::BlobUploadInvalid
        );
        assert_eq!(Route::parse("/v3/x").unwrap(), None);
        assert_eq!(Route::parse("/v2/a/unknown/x").unwrap(), None);
        assert_eq!(Route::parse("/v2x").unwrap(), None);
    }
}

use std::sync::Arc;

use http::{Method, header};
use regcache_formats::media_type;
use regcache_upstream::TimeoutPhase;

use super::*;

fn registry(status: u16, envelope: Option<ErrorEnvelope>) -> Error {
    Error::Upstream(UpstreamError::Registry {
        upstream: "up".into(),
        status,
        envelope,
        retry_after: (status == 429).then(|| "7".to_owned()),
    })
}

/// Every kind of error: its status, code, log level and whose it is.
#[test]
fn every_error_kind_has_one_status_code_and_level() {
    let io = std::io::Error::other("disk on fire");
    let table: Vec<(&str, Error, u16, ErrorCode, Level, &str)> = vec![
        (
            "malformed name",
            Error::from(RegistryError::new(ErrorCode::NameInvalid)),
            400,
            ErrorCode::NameInvalid,
            Level::DEBUG,
            "client",
        ),
        (
            "absent blob",
            Error::from(RegistryError::new(ErrorCode::BlobUnknown)),
            404,
            ErrorCode::BlobUnknown,
            Level::DEBUG,
            "client",
        ),
        (
            "method",
            Error::client_status(405, RegistryError::new(ErrorCode::Unsupported)),
            405,
            ErrorCode::Unsupported,
            Level::DEBUG,
            "client",
        ),
        (
            "too large",
            Error::client_status(413, RegistryError::new(ErrorCode::ManifestInvalid)),
            413,
            ErrorCode::ManifestInvalid,
            Level::DEBUG,
            "client",
        ),
        (
            "over the per-client rate",
            Error::Throttled {
                retry_after_secs: 2,
            },
            429,
            ErrorCode::TooManyRequests,
            Level::DEBUG,
            "client",
        ),
        (
            "no such upstream",
            Error::policy(403, RegistryError::new(ErrorCode::Denied)),
            403,
            ErrorCode::Denied,
            Level::INFO,
            "policy",
        ),
        (
            "not authenticated",
            Error::Unauthenticated {
                challenge: "Bearer realm=\"x\"".into(),
                error: RegistryError::new(ErrorCode::Unauthorized),
            },
            401,
            ErrorCode::Unauthorized,
            Level::DEBUG,
            "client",
        ),
        (
            "outside the access rules",
            Error::policy(403, RegistryError::new(ErrorCode::Denied)),
            403,
            ErrorCode::Denied,
            Level::INFO,
            "policy",
        ),
        (
            "schema 1 refused",
            Error::policy(404, RegistryError::new(ErrorCode::Unsupported)),
            404,
            ErrorCode::Unsupported,
            Level::INFO,
            "policy",
        ),
        (
            "upstream 404 with its envelope",
            registry(
                404,
                Some(ErrorEnvelope::single(RegistryError::new(
                    ErrorCode::NameUnknown,
                ))),
            ),
            404,
            ErrorCode::NameUnknown,
            Level::DEBUG,
            "upstream",
        ),
        (
            "upstream 404 without a body",
            registry(404, None),
            404,
            ErrorCode::ManifestUnknown,
            Level::DEBUG,
            "upstream",
        ),
        (
            "upstream 403",
            registry(403, None),
            403,
            ErrorCode::Denied,
            Level::INFO,
            "upstream",
        ),
        (
            "upstream 429",
            registry(429, None),
            429,
            ErrorCode::TooManyRequests,
            Level::WARN,
            "upstream",
        ),
        (
            "upstream 503",
            registry(503, None),
            503,
            ErrorCode::Unknown,
            Level::WARN,
            "upstream",
        ),
        (
            "token service refused",
            Error::Upstream(UpstreamError::Unauthorized {
                upstream: "up".into(),
                detail: "no".into(),
            }),
            401,
            ErrorCode::Unauthorized,
            Level::INFO,
            "upstream",
        ),
        (
            "upstream unreachable",
            Error::Upstream(UpstreamError::Transport {
                upstream: "up".into(),
                source: Arc::new(std::io::Error::other("connection refused")),
            }),
            502,
            ErrorCode::Unavailable,
            Level::WARN,
            "upstream",
        ),
        (
            "upstream known down (breaker open): nothing sent",
            Error::Upstream(UpstreamError::Down {
                upstream: "up".into(),
                reason: "unreachable for 5s".into(),
                retry_after_secs: 2,
            }),
            503,
            ErrorCode::Unavailable,
            Level::DEBUG,
            "upstream",
        ),
        (
            "upstream too slow",
            Error::Upstream(UpstreamError::Timeout {
                upstream: "up".into(),
                phase: TimeoutPhase::FirstByte,
            }),
            504,
            ErrorCode::Unavailable,
            Level::WARN,
            "upstream",
        ),
        (
            "the client's body broke off while forwarded",
            Error::Upstream(UpstreamError::RequestBody {
                upstream: "up".into(),
                source: Arc::new(std::io::Error::other("invalid chunk size line")),
            }),
            400,
            ErrorCode::BlobUploadInvalid,
            Level::DEBUG,
            "client",
        ),
        (
            "writes off for this upstream",
            crate::writes::decide(
                crate::writes::Forwarding::Off,
                crate::writes::Gated::Write,
                "up",
                &http::HeaderMap::new(),
            )
            .unwrap_err(),
            405,
            ErrorCode::Unsupported,
            Level::INFO,
            "policy",
        ),
        (
            "declared manifest over the limit",
            Error::client_status(413, RegistryError::new(ErrorCode::ManifestInvalid)),
            413,
            ErrorCode::ManifestInvalid,
            Level::DEBUG,
            "client",
        ),
        (
            "upstream sent garbage",
            Error::BadUpstream {
                upstream: "up".into(),
                message: "a manifest regcache cannot read".into(),
            },
            502,
            ErrorCode::Unavailable,
            Level::WARN,
            "upstream",
        ),
        (
            "local failure",
            Error::internal("caching a manifest", io),
            500,
            ErrorCode::Unknown,
            Level::ERROR,
            "regcache",
        ),
        (
            "local cache failure",
            Error::cache(
                "reading the blob cache",
                std::io::Error::other("/data/v1/blobs/x: Input/output error"),
            ),
            500,
            ErrorCode::Unknown,
            Level::ERROR,
            "regcache",
        ),
        (
            "bug",
            Error::bug("an invariant"),
            500,
            ErrorCode::Unknown,
            Level::ERROR,
            "regcache",
        ),
    ];
    for (what, err, status, code, level, whose) in table {
        let r = classify(&err);
        assert_eq!(
            (r.status, r.envelope.errors[0].code, r.level, r.whose),
            (status, code, level, whose),
            "{what}: {err}"
        );
        let resp = rescue(err, false);
        assert_eq!(resp.status().as_u16(), status, "{what}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            media_type::ERROR_JSON,
            "{what}"
        );
    }
}

#[test]
fn a_known_down_upstream_is_503_with_retry_after() {
    let err = Error::Upstream(UpstreamError::Down {
        upstream: "hub".into(),
        reason: "unreachable for 5s; last failure: connection refused".into(),
        retry_after_secs: 2,
    });
    let r = classify(&err);
    assert_eq!(r.retry_after.as_deref(), Some("2"));
    assert!(
        r.envelope.errors[0]
            .message
            .contains("upstream hub is down")
    );
    let resp = rescue(err, false);
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
}

#[test]
fn a_throttled_client_is_told_when_to_retry() {
    let r = classify(&Error::Throttled {
        retry_after_secs: 3,
    });
    assert_eq!(r.retry_after.as_deref(), Some("3"));
    let resp = rescue(
        Error::Throttled {
            retry_after_secs: 3,
        },
        false,
    );
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
}

#[test]
fn upstream_details_are_relayed_and_local_ones_are_not() {
    let r = classify(&registry(429, None));
    assert_eq!(r.retry_after.as_deref(), Some("7"));
    let r = classify(&Error::Upstream(UpstreamError::Transport {
        upstream: "quay.io".into(),
        source: Arc::new(std::io::Error::other("connection refused")),
    }));
    let msg = &r.envelope.errors[0].message;
    assert!(
        msg.contains("quay.io") && msg.contains("connection refused"),
        "an unreachable upstream is named with the cause: {msg}"
    );
    let r = classify(&Error::internal(
        "caching a manifest",
        std::io::Error::other("/secret/path: No space left on device"),
    ));
    let msg = &r.envelope.errors[0].message;
    assert!(!msg.contains("/secret/path"), "{msg}");
    // A failing cache says it is the cache, not the upstream, and no path.
    let r = classify(&Error::cache(
        "a blob fill failed on local storage",
        std::io::Error::other("/secret/path: Input/output error"),
    ));
    let msg = &r.envelope.errors[0].message;
    assert!(
        msg.contains("cache") && !msg.contains("/secret/path"),
        "{msg}"
    );
    assert_eq!((r.status, r.whose), (500, "regcache"));
    // The log gets the whole chain.
    let e = Error::internal(
        "caching a manifest",
        std::io::Error::other("No space left on device"),
    );
    assert_eq!(chain(&e), "caching a manifest: No space left on device");
}

#[test]
fn a_bodiless_upstream_404_is_the_resource_the_client_asked_for() {
    let absent = RegistryError::new(ErrorCode::BlobUnknown);
    let e = Error::upstream_or_absent(
        UpstreamError::Registry {
            upstream: "up".into(),
            status: 404,
            envelope: None,
            retry_after: None,
        },
        absent.clone(),
    );
    assert_eq!(classify(&e).envelope.errors[0].code, ErrorCode::BlobUnknown);
    assert_eq!(classify(&e).level, Level::DEBUG);
    // With the upstream's own envelope, that is relayed.
    let e = Error::upstream_or_absent(
        UpstreamError::Registry {
            upstream: "up".into(),
            status: 404,
            envelope: Some(ErrorEnvelope::single(RegistryError::new(
                ErrorCode::NameUnknown,
            ))),
            retry_after: None,
        },
        absent,
    );
    assert_eq!(classify(&e).envelope.errors[0].code, ErrorCode::NameUnknown);
}

/// The conformance suite's pair: an invalid tag on manifest GET/HEAD is 404
/// MANIFEST_UNKNOWN; a malformed digest stays 400 DIGEST_INVALID.
#[test]
fn invalid_tags_are_unknown_manifests_and_bad_digests_invalid() {
    let ups = crate::request::tests::two_upstreams();
    for method in [Method::GET, Method::HEAD] {
        for (path, status, code) in [
            (
                "/v2/team/app/manifests/.INVALID_MANIFEST_NAME",
                404,
                ErrorCode::ManifestUnknown,
            ),
            ("/v2/team/app/manifests/-x", 404, ErrorCode::ManifestUnknown),
            (
                "/v2/team/app/manifests/sha256:abc",
                400,
                ErrorCode::DigestInvalid,
            ),
        ] {
            let err = crate::request::route(&path.parse().unwrap(), &ups).unwrap_err();
            let r = classify(&err);
            assert_eq!(
                (r.status, r.envelope.errors[0].code),
                (status, code),
                "{method} {path}"
            );
            let resp = rescue(err, method == Method::HEAD);
            assert_eq!(resp.status().as_u16(), status);
        }
    }
}

#[test]
fn a_401_of_regcache_carries_its_challenge() {
    let e = Error::Unauthenticated {
        challenge: "Bearer realm=\"http://h/auth/token\",service=\"regcache\"".into(),
        error: RegistryError::with_message(ErrorCode::Unauthorized, "authentication required"),
    };
    let resp = rescue(e, false);
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"http://h/auth/token\",service=\"regcache\""
    );
    let resp = rescue(
        Error::policy(403, RegistryError::new(ErrorCode::Denied)),
        false,
    );
    assert!(!resp.headers().contains_key(header::WWW_AUTHENTICATE));
}

#[test]
fn errors_are_remembered_with_their_route_but_rate_limits_are_not() {
    let e = Error::client(ErrorCode::NameUnknown, "repository name not known");
    rescue_at(
        e,
        false,
        At {
            route: "manifest",
            repository: Some("rescue-test/remembered"),
        },
    );
    rescue_at(
        Error::Throttled {
            retry_after_secs: 1,
        },
        false,
        At {
            route: "blob",
            repository: Some("rescue-test/throttled"),
        },
    );
    let recent = crate::cockpit::errors::recent().recent();
    let r = recent
        .iter()
        .find(|r| r.repository.as_deref() == Some("rescue-test/remembered"))
        .expect("remembered");
    assert_eq!(
        (r.status, r.route.as_str(), r.whose.as_str()),
        (404, "manifest", "client")
    );
    assert_eq!(r.code, "NAME_UNKNOWN");
    assert!(
        !recent
            .iter()
            .any(|r| r.repository.as_deref() == Some("rescue-test/throttled"))
    );
}

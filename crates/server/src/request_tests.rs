use std::time::Duration;

use regcache_formats::ErrorCode;

use super::*;
use crate::web::headers::{rewrite_link, strip_origin};

fn upstream(name: &str, host: &str, hub: bool, aliases: Vec<String>) -> Arc<Upstream> {
    let client = regcache_upstream::UpstreamClient::new(regcache_upstream::ClientConfig::new(
        name,
        url::Url::parse(&format!("http://{host}")).unwrap(),
    ))
    .unwrap();
    let client: Arc<dyn UpstreamApi> = Arc::new(client);
    Arc::new(Upstream {
        breaker: crate::breaker::Breaker::new(name, 0, Duration::from_secs(2), client.clone()),
        name: name.into(),
        aliases,
        host: host.into(),
        docker_hub: hub,
        client,
        ttls: arc_swap::ArcSwap::from_pointee(crate::request::Ttls {
            tag_ttl: Duration::from_secs(1),
            stale_if_error: Duration::from_secs(1),
            stale_while_revalidate: Duration::ZERO,
        }),
        writes: Forwarding::Off,
        catalog: Forwarding::Off,
    })
}

/// Docker Hub (the default, with an alias) and quay.io.
pub(crate) fn two_upstreams() -> Upstreams {
    Upstreams::new(
        vec![
            upstream(
                "docker.io",
                "127.0.0.1:9",
                true,
                vec!["index.docker.io".into()],
            ),
            upstream("quay.io", "127.0.0.1:10", false, vec![]),
        ],
        0,
    )
}

fn target(prefix: Option<&str>) -> Target {
    Target {
        upstream: upstream("quay.io", "127.0.0.1:9", false, vec![]),
        span: RequestSpan::default(),
        prefix: prefix.map(str::to_owned),
        library_added: false,
        upstream_path: String::new(),
        acting_as: None,
    }
}

#[test]
fn routing_by_ns_then_prefix_then_default() {
    let ups = two_upstreams();
    let route = |u: &str| route(&u.parse::<http::Uri>().unwrap(), &ups);
    let r = route("/v2/team/app/manifests/1?ns=quay.io").unwrap();
    assert_eq!(
        (
            r.target.upstream.name.as_str(),
            r.target.upstream_path.as_str()
        ),
        ("quay.io", "/v2/team/app/manifests/1")
    );
    // ns wins over a path prefix; other query parameters survive, ns is dropped.
    let r = route("/v2/library/alpine/tags/list?n=2&ns=docker.io&last=a").unwrap();
    assert_eq!(r.target.upstream.name, "docker.io");
    assert_eq!(
        r.target.upstream_path,
        "/v2/library/alpine/tags/list?n=2&last=a"
    );
    let r = route("/v2/x/manifests/1?ns=index.docker.io").unwrap();
    assert_eq!(r.target.upstream.name, "docker.io");
    let r = route("/v2/x/manifests/1?ns=127.0.0.1%3A10").unwrap();
    assert_eq!(
        r.target.upstream.name, "quay.io",
        "the URL's host:port routes too"
    );
    let r = route("/v2/quay.io/team/app/manifests/1").unwrap();
    assert_eq!(
        (r.target.upstream.name.as_str(), r.target.prefix.as_deref()),
        ("quay.io", Some("quay.io"))
    );
    assert_eq!(r.target.upstream_path, "/v2/team/app/manifests/1");
    let r = route("/v2/team/app/manifests/1").unwrap();
    assert_eq!(
        (r.target.upstream.name.as_str(), r.target.prefix.as_deref()),
        ("docker.io", None)
    );
    let r = route("/v2/").unwrap();
    assert_eq!(r.target.upstream.name, "docker.io");
    assert_eq!(r.route, Route::Ping);
    for refused in [
        "/v2/ghcr.io/x/manifests/1",
        "/v2/x/manifests/1?ns=ghcr.io",
        "/v2/localhost:5000/x/manifests/1",
    ] {
        match route(refused) {
            Err(Error::Policy { status: 403, error }) => {
                assert_eq!(error.code, ErrorCode::Denied);
                assert!(
                    error.message.contains("no upstream for registry"),
                    "{}",
                    error.message
                );
                assert!(
                    error.message.contains("docker.io, quay.io"),
                    "{}",
                    error.message
                );
            }
            other => panic!("{refused}: {other:?}"),
        }
    }
}

#[test]
fn docker_hub_short_names_get_library_once_in_name_and_path() {
    let ups = two_upstreams();
    let r = route(
        &"/v2/alpine/manifests/3.19?n=1"
            .parse::<http::Uri>()
            .unwrap(),
        &ups,
    )
    .unwrap();
    assert_eq!(r.route.name().unwrap().as_str(), "library/alpine");
    assert_eq!(
        r.target.upstream_path,
        "/v2/library/alpine/manifests/3.19?n=1"
    );
    assert!(r.target.library_added);
    let name = r.route.name().unwrap().clone();
    assert_eq!(r.target.client_name(&name), "alpine");
    // Two components, or another upstream: unchanged.
    for uri in ["/v2/team/app/manifests/1", "/v2/app/manifests/1?ns=quay.io"] {
        let r = route(&uri.parse::<http::Uri>().unwrap(), &ups).unwrap();
        assert!(!r.target.library_added, "{uri}");
        assert!(!r.target.upstream_path.contains("library/"), "{uri}");
    }
    // Malformed paths are the client's errors; unknown endpoints are 404.
    match route(&"/v2/UPPER/manifests/1".parse::<http::Uri>().unwrap(), &ups) {
        Err(Error::Client { status: 400, error }) => assert_eq!(error.code, ErrorCode::NameInvalid),
        other => panic!("{other:?}"),
    }
    match route(&"/v2/a/unknown/x".parse::<http::Uri>().unwrap(), &ups) {
        Err(Error::Client { status: 404, error }) => assert_eq!(error.code, ErrorCode::Unsupported),
        other => panic!("{other:?}"),
    }
}

#[test]
fn registry_hosts() {
    for ok in [
        "quay.io",
        "localhost:5000",
        "127.0.0.1:5000",
        "my-registry.example.com",
        "a.b",
    ] {
        assert!(is_registry_host(ok), "{ok}");
    }
    for bad in [
        "a..b",
        ".a",
        "a.",
        "-a.b",
        "a.b:",
        "a.b:x",
        "a.b:123456",
        "a_b.c",
        "",
    ] {
        assert!(!is_registry_host(bad), "{bad}");
    }
}

#[test]
fn location_and_link_rewrites() {
    assert_eq!(
        strip_origin("http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=xy%3D&b=1"),
        "/v2/a/blobs/uploads/u1?_state=xy%3D&b=1"
    );
    assert_eq!(
        strip_origin("/v2/a/blobs/uploads/u1"),
        "/v2/a/blobs/uploads/u1"
    );
    let plain = target(None);
    assert_eq!(
        rewrite_link(
            "<https://r.example/v2/a/tags/list?last=b&n=2>; rel=\"next\"",
            |p| plain.client_path(p)
        ),
        "</v2/a/tags/list?last=b&n=2>; rel=\"next\""
    );
    assert_eq!(
        rewrite_link("</v2/_catalog?last=x&n=1>; rel=\"next\"", |p| plain
            .client_path(p)),
        "</v2/_catalog?last=x&n=1>; rel=\"next\""
    );
    let prefixed = target(Some("quay.io"));
    assert_eq!(
        rewrite_link("<https://quay.io/v2/a/tags/list?n=2>; rel=\"next\"", |p| {
            prefixed.client_path(p)
        }),
        "</v2/quay.io/a/tags/list?n=2>; rel=\"next\""
    );
    assert_eq!(
        prefixed.client_path("/v2/a/blobs/uploads/u?_state=x"),
        "/v2/quay.io/a/blobs/uploads/u?_state=x"
    );
    let repo = RepositoryName::parse("library/alpine").unwrap();
    let mut short = target(None);
    short.library_added = true;
    assert_eq!(short.client_name(&repo), "alpine");
    assert_eq!(prefixed.client_name(&repo), "quay.io/library/alpine");
}

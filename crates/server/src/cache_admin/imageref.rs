//! Image references as users type them (`docker.io/library/alpine:3.19`,
//! `alpine`, `quay.io/team/app@sha256:…`), parsed and resolved against the
//! configured upstreams: which upstream, which repository (with Docker Hub's
//! `library/` for one-component names), which tag or digest.
//!
//! The first path component is a registry when there is more than one and
//! it looks like a host (has a `.` or a `:`, or is `localhost`), as the
//! Docker CLI decides it. A reference with both a tag and a digest means the
//! digest.

use std::fmt;

use regcache_formats::Digest;
use regcache_formats::reference::{RepositoryName, Tag};

/// A reference as typed, checked for syntax only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host as typed, if any.
    pub registry: Option<String>,
    /// The repository as typed (without the registry).
    pub repository: String,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

/// What an upstream answers to (its name, URL host and aliases).
#[derive(Debug, Clone)]
pub struct UpstreamNames {
    pub name: String,
    pub host: String,
    pub aliases: Vec<String>,
    pub docker_hub: bool,
}

impl UpstreamNames {
    fn answers_to(&self, registry: &str) -> bool {
        let hub = self.docker_hub
            && ["docker.io", "index.docker.io", "registry-1.docker.io"]
                .iter()
                .any(|h| h.eq_ignore_ascii_case(registry));
        hub || self.name.eq_ignore_ascii_case(registry)
            || self.host.eq_ignore_ascii_case(registry)
            || self
                .aliases
                .iter()
                .any(|a| a.eq_ignore_ascii_case(registry))
    }
}

/// A reference resolved to an upstream and a full repository name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub upstream: String,
    pub repository: RepositoryName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.upstream, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Parses `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`. The error says what is
/// wrong with which part.
pub fn parse(input: &str) -> Result<ImageRef, String> {
    let shown: String = input.chars().take(200).collect();
    let bad = |why: String| format!("bad image reference {shown:?}: {why}");
    if input.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains white space".into()));
    }
    let (name_tag, digest) = match input.split_once('@') {
        Some((left, d)) => {
            let digest = Digest::parse(d).map_err(|e| bad(format!("digest {d:?}: {e}")))?;
            (left, Some(digest))
        }
        None => (input, None),
    };
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            let t = &name_tag[at + 1..];
            let tag = Tag::parse(t).map_err(|e| bad(format!("tag {t:?}: {e}")))?;
            (&name_tag[..at], Some(tag))
        }
        None => (name_tag, None),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first.to_owned()), rest)
        }
        _ => (None, name),
    };
    if repository.is_empty() {
        return Err(bad("no repository name".into()));
    }
    RepositoryName::parse(repository)
        .map_err(|e| bad(format!("repository {repository:?}: {e}")))?;
    Ok(ImageRef {
        registry,
        repository: repository.to_owned(),
        tag,
        digest,
    })
}

/// Resolves a parsed reference: the upstream its registry names (or
/// `upstream`, a configured upstream's name, or the default one), and the
/// repository as that upstream stores it.
pub fn resolve(
    r: &ImageRef,
    upstreams: &[UpstreamNames],
    default: usize,
    upstream: Option<&str>,
) -> Result<Resolved, String> {
    let configured = || {
        upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let named = match upstream {
        Some(n) => Some(
            upstreams
                .iter()
                .find(|u| u.name.eq_ignore_ascii_case(n))
                .ok_or_else(|| format!("no upstream named {n:?} (configured: {})", configured()))?,
        ),
        None => None,
    };
    let up = match (&r.registry, named) {
        (Some(reg), named) => {
            let found = upstreams.iter().find(|u| u.answers_to(reg)).ok_or_else(|| {
                format!(
                    "no upstream for registry {reg:?} (configured: {}); name one of them, or leave the registry out",
                    configured()
                )
            })?;
            if let Some(n) = named
                && n.name != found.name
            {
                return Err(format!(
                    "registry {reg:?} is upstream {:?}, not --upstream {:?}",
                    found.name, n.name
                ));
            }
            found
        }
        (None, Some(n)) => n,
        (None, None) => upstreams
            .get(default)
            .or_else(|| upstreams.first())
            .ok_or_else(|| "no upstream is configured".to_owned())?,
    };
    let one_component = !r.repository.contains('/');
    let full = if up.docker_hub && one_component {
        format!("library/{}", r.repository)
    } else {
        r.repository.clone()
    };
    let repository =
        RepositoryName::parse(&full).map_err(|e| format!("repository {full:?}: {e}"))?;
    Ok(Resolved {
        upstream: up.name.clone(),
        repository,
        tag: r.tag.clone(),
        digest: r.digest.clone(),
    })
}

/// [`parse`] then [`resolve`].
pub fn parse_and_resolve(
    input: &str,
    upstreams: &[UpstreamNames],
    default: usize,
    upstream: Option<&str>,
) -> Result<Resolved, String> {
    let r = parse(input)?;
    resolve(&r, upstreams, default, upstream).map_err(|e| format!("image {input:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7";

    fn ups() -> Vec<UpstreamNames> {
        vec![
            UpstreamNames {
                name: "docker.io".into(),
                host: "registry-1.docker.io".into(),
                aliases: vec![],
                docker_hub: true,
            },
            UpstreamNames {
                name: "quay.io".into(),
                host: "quay.io".into(),
                aliases: vec!["q.example".into()],
                docker_hub: false,
            },
            UpstreamNames {
                name: "127.0.0.1:5999".into(),
                host: "127.0.0.1:5999".into(),
                aliases: vec![],
                docker_hub: false,
            },
        ]
    }

    fn show(input: &str) -> String {
        parse_and_resolve(input, &ups(), 0, None)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        assert_eq!(show("alpine"), "docker.io/library/alpine");
        assert_eq!(show("alpine:3.19"), "docker.io/library/alpine:3.19");
        assert_eq!(show("library/alpine"), "docker.io/library/alpine");
        assert_eq!(
            show("docker.io/library/alpine:3.19"),
            "docker.io/library/alpine:3.19"
        );
        assert_eq!(show("docker.io/alpine"), "docker.io/library/alpine");
        assert_eq!(show("index.docker.io/team/app:1"), "docker.io/team/app:1");
        assert_eq!(show("team/app"), "docker.io/team/app");
    }

    #[test]
    fn registries_ports_aliases_and_digests() {
        assert_eq!(show("quay.io/team/app:v1"), "quay.io/team/app:v1");
        assert_eq!(show("q.example/app"), "quay.io/app");
        assert_eq!(
            show("127.0.0.1:5999/cache/a:v1"),
            "127.0.0.1:5999/cache/a:v1"
        );
        assert_eq!(
            show(&format!("alpine@{D}")),
            format!("docker.io/library/alpine@{D}")
        );
        assert_eq!(
            show(&format!("127.0.0.1:5999/a/b:t@{D}")),
            format!("127.0.0.1:5999/a/b:t@{D}")
        );
        let r = parse_and_resolve("team/app", &ups(), 0, Some("quay.io")).unwrap();
        assert_eq!(r.to_string(), "quay.io/team/app");
        assert!(r.tag.is_none() && r.digest.is_none());
        let e = parse_and_resolve("docker.io/app", &ups(), 0, Some("quay.io")).unwrap_err();
        assert!(e.contains("not --upstream"), "{e}");
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (input, says) in [
            ("", "empty"),
            ("Alpine", "repository \"Alpine\""),
            ("alpine:", "tag \"\""),
            ("alpine:bad tag", "white space"),
            ("alpine@sha256:abc", "digest \"sha256:abc\""),
            ("alpine:-x", "tag \"-x\""),
            ("ghcr.io/", "no repository"),
            ("ghcr.io/app", "no upstream for registry \"ghcr.io\""),
        ] {
            let e = show(input);
            assert!(e.starts_with("ERR "), "{input:?} parsed: {e}");
            assert!(e.contains(says), "{input:?}: {e}");
        }
        let e = parse_and_resolve("app", &ups(), 0, Some("nope")).unwrap_err();
        assert!(e.contains("no upstream named \"nope\""), "{e}");
    }
}

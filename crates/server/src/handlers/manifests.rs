//! `GET`/`HEAD /v2/<name>/manifests/<reference>`: negotiation (spec 02) runs
//! locally on the native object, so one cached manifest serves every client;
//! the repository's policy decides what an old client that does not accept
//! Schema 2 gets (a Schema 1 rendering, a refusal, or the upstream's own
//! answer).

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, header};
use regcache_formats::MediaType;
use regcache_formats::accept::{Accepts, RequestKind, if_none_match_hits};
use regcache_formats::bridge;
use regcache_formats::manifest::{Manifest, NoLinuxAmd64Entry};
use regcache_formats::media_type;
use regcache_formats::negotiate::{self, ChildDecision, Decision, ToSchema1};
use regcache_formats::reference::{Reference, RepositoryName, Tag};
use regcache_formats::{Digest, ErrorCode, RegistryError};

use super::App;
use super::prepared::{Basis, Made};
use crate::error::Error;
use crate::metrics::Kind;
use crate::policy::{Policy, Schema1Digests, Schema1Mode};
use crate::request::Target;
use crate::services::bridge::refusal;
use crate::services::links::Object;
use crate::web::body::Body;
use crate::web::response::{digest_headers, manifest_response, not_modified};

impl App {
    pub(super) async fn get_manifest(
        &self,
        target: &Target,
        name: &RepositoryName,
        reference: &Reference,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response<Body>, Error> {
        // What a prepared answer depends on, read before anything it covers.
        let basis = self.prepared_basis(target, matches!(reference, Reference::Digest(_)));
        let policy = self
            .policies
            .load()
            .resolve(&target.upstream.name, name.as_str());
        let accepts = Accepts::from_headers(headers.get_all(header::ACCEPT).iter());
        let (stored, tag) = match reference {
            Reference::Tag(t) => (self.services.tags.resolve(target, name, t).await?, Some(t)),
            Reference::Digest(d) => (self.by_digest(target, name, d).await?, None),
        };
        if self.access_controlled() {
            // Served through this repository: it and what it names belong here.
            self.services.links.link_manifest(target, name, &stored);
        }
        if tag.is_none()
            && stored.media_type.is_schema1()
            && policy.schema1_digests == Schema1Digests::Reject
        {
            return Err(self.schema1_digest_refused(target, name, &stored.digest));
        }
        // distribution 2.8 compares If-None-Match with the stored object's digest,
        // before any conversion (spec 02 §2.3 quirk 7); we keep its behaviour.
        if if_none_match_hits(
            headers.get_all(header::IF_NONE_MATCH).iter(),
            &stored.digest,
        ) {
            return Ok(not_modified(&stored.digest));
        }
        let request = if tag.is_some() {
            RequestKind::Tag
        } else {
            RequestKind::Digest
        };
        let rules = policy.rules();
        // Digest requests are only ever served as stored or refused, so the
        // tag is only read on the paths that generate.
        let prepare = |made: Option<Made>| {
            let Some(made) = made else { return };
            let held = match reference {
                Reference::Tag(tag) => self.tag_still_names(target, name, tag, basis, &stored),
                // Only the bytes the digest names are the same forever.
                Reference::Digest(digest) => (made.digest == *digest).then_some((basis, u64::MAX)),
            };
            if let Some((basis, fresh_until)) = held {
                self.prepare(target, name, reference, headers, basis, fresh_until, made);
            }
        };
        let tag = tag.map_or("", Tag::as_str);
        match negotiate::decide(request, accepts, &stored, rules) {
            Decision::ServeAsIs => {
                let resp = self.serve_manifest(&stored, head)?;
                prepare(Made::as_stored(&stored, None));
                Ok(resp)
            }
            Decision::RefuseOci(msg) => Err(Error::client(ErrorCode::ManifestUnknown, msg)),
            Decision::NoAmd64Entry => Err(self.no_amd64_entry(name, tag, &stored, policy)),
            Decision::Schema1(action) => {
                let images = (&stored, &stored);
                let (resp, made) = self
                    .to_schema1(target, name, tag, images, action, policy, headers, head)
                    .await?;
                prepare(made);
                Ok(resp)
            }
            Decision::DockerTwin => {
                let (resp, made) = self
                    .serve_docker_form(target, name, tag, &stored, head)
                    .await?;
                prepare(made);
                Ok(resp)
            }
            Decision::Upgrade => {
                let tag = Tag::parse(tag)
                    .map_err(|e| Error::bug(format!("a by-tag path without a tag: {e}")))?;
                let m = self
                    .services
                    .upgrade
                    .upgrade(target, name, &tag, &stored)
                    .await?;
                let resp = self.serve_manifest(&m, head)?;
                prepare(Made::as_stored(&m, Some(Kind::Upgrade)));
                Ok(resp)
            }
            Decision::SelectChild(child) => {
                let c = self
                    .services
                    .manifests
                    .get(target, name, &child.digest, Some(&child.media_type))
                    .await?;
                match negotiate::decide_child(c.handler_kind(), accepts, rules) {
                    ChildDecision::ServeAsIs => {
                        let resp = self.serve_manifest(&c, head)?;
                        prepare(Made::as_stored(&c, None));
                        Ok(resp)
                    }
                    ChildDecision::Schema1(action) => {
                        let images = (&stored, &c);
                        let (resp, made) = self
                            .to_schema1(target, name, tag, images, action, policy, headers, head)
                            .await?;
                        prepare(made);
                        Ok(resp)
                    }
                    ChildDecision::DockerTwin => {
                        let (resp, made) =
                            self.serve_docker_form(target, name, tag, &c, head).await?;
                        prepare(made);
                        Ok(resp)
                    }
                }
            }
        }
    }

    /// What a prepared answer for `target` is made on and checked against
    /// ([`super::prepared`]); a by-digest answer depends on no tag.
    pub(super) fn prepared_basis(&self, target: &Target, by_digest: bool) -> Basis {
        Basis {
            generation: if by_digest {
                0
            } else {
                self.store().tags().generation()
            },
            removals: self.store().removals(),
            policies: self
                .policies_reloads
                .load(std::sync::atomic::Ordering::Acquire),
            tag_ttl: if by_digest {
                std::time::Duration::ZERO
            } else {
                target.upstream.ttls().tag_ttl
            },
        }
    }

    /// Whether the tag still names `tagged` (the manifest whose answer, as
    /// stored or rendered, is to be kept), and if so the basis a by-tag
    /// answer holds on and until when: the tag index as read now
    /// (resolving the tag may have changed it, a miss records the tag,
    /// which must not void its own answer) and the tag's freshness.
    fn tag_still_names(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &Tag,
        basis: Basis,
        tagged: &Manifest,
    ) -> Option<(Basis, u64)> {
        let tags = self.store().tags();
        let basis = Basis {
            generation: tags.generation(),
            ..basis
        };
        let record = tags.get(&target.upstream.name, name.as_str(), tag.as_str())?;
        if record.digest != tagged.digest {
            return None;
        }
        let fresh_until = record
            .fetched_at_unix
            .saturating_add(basis.tag_ttl.as_secs());
        Some((basis, fresh_until))
    }

    /// Keep `made` ready for the next request like this one, on `basis`
    /// (read before anything the answer covers) until `fresh_until`. Not
    /// for a request acting as its client or a conditional one.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        target: &Target,
        name: &RepositoryName,
        reference: &Reference,
        headers: &HeaderMap,
        basis: Basis,
        fresh_until: u64,
        made: Made,
    ) {
        if target.acting_as.is_some() || headers.contains_key(header::IF_NONE_MATCH) {
            return;
        }
        let resp = manifest_response(made.content_type, &made.digest, made.body.clone(), true);
        let key = super::prepared::Key {
            upstream: &target.upstream.name,
            repository: name.as_str(),
            reference: reference.as_str(),
            accept: headers,
        };
        let now = crate::services::unix_now();
        self.prepared
            .put(&key, basis, fresh_until, now, resp.headers(), made);
    }

    /// A list or index without a linux/amd64 entry, for a client that can
    /// only take one image: distribution's plain 404 for a Docker list as it
    /// would answer; for an OCI index or under `force`, the reason too.
    fn no_amd64_entry(
        &self,
        name: &RepositoryName,
        tag: &str,
        stored: &Manifest,
        policy: Policy,
    ) -> Error {
        if stored.media_type == MediaType::ManifestList && policy.schema1 != Schema1Mode::Force {
            return Error::from(RegistryError::new(ErrorCode::ManifestUnknown));
        }
        let e = NoLinuxAmd64Entry {
            media_type: stored.media_type,
            digest: stored.digest.clone(),
        };
        Error::client(
            e.error_code(),
            format!("{name}:{tag}: {e}; this client takes a single image"),
        )
    }

    /// An image for a client that can only read Schema 1, per the policy's
    /// `schema1` mode. `stored` is what the tag names; `image` is the image
    /// (it, or its linux/amd64 entry). An OCI image goes through its Docker
    /// twin, so what the twin can't carry is refused.
    #[allow(clippy::too_many_arguments)]
    async fn to_schema1(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &str,
        (stored, image): (&Arc<Manifest>, &Arc<Manifest>),
        action: ToSchema1,
        policy: Policy,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<(Response<Body>, Option<Made>), Error> {
        let tag =
            Tag::parse(tag).map_err(|e| Error::bug(format!("a by-tag path without a tag: {e}")))?;
        match action {
            ToSchema1::Convert => {
                if let Some(oci) = image
                    .as_image()
                    .filter(|_| image.media_type == MediaType::OciManifest)
                    && let Err(e) =
                        bridge::docker_twin(oci).and_then(|_| bridge::check_schema1_layers(oci))
                {
                    return Err(refusal(
                        &target.client_name(name),
                        tag.as_str(),
                        stored,
                        &image.digest,
                        &e,
                        "a Schema 1 client",
                    ));
                }
                self.serve_rendering(target, name, &tag, image, head).await
            }
            ToSchema1::Reject => Err(schema1_refused(target, name, &tag, stored, image, policy)),
            // The upstream's own answer: nothing regcache holds to prepare.
            ToSchema1::Passthrough => Ok((
                self.passthrough_manifest(target, name, &tag, headers, head)
                    .await?,
                None,
            )),
        }
    }

    /// The Docker form of an OCI manifest or index, linked to the repository.
    async fn serve_docker_form(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &str,
        source: &Arc<Manifest>,
        head: bool,
    ) -> Result<(Response<Body>, Option<Made>), Error> {
        let m = self
            .services
            .bridge
            .docker_form(target, name, tag, source)
            .await?;
        if self.access_controlled() {
            self.services.links.link_manifest(target, name, &m);
        }
        let made = Made::as_stored(&m, Some(Kind::Bridge));
        Ok((self.serve_manifest(&m, head)?, made))
    }

    /// A manifest by digest: cached, else a Schema 1 rendering regcache made
    /// (rebuilt), else fetched from the upstream.
    async fn by_digest(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Arc<Manifest>, Error> {
        let manifests = &self.services.manifests;
        if let Some(m) = manifests.cached(digest, None).await? {
            // Cached through some repository; with client auth on, served
            // here only if it belongs here. If not (or the upstream can't
            // say), this repository's own Schema 1 renderings and then the
            // upstream answer for it.
            if !self.access_controlled()
                || self
                    .services
                    .links
                    .check(target, name, digest, Object::Manifest)
                    .await
                    .is_ok()
            {
                return Ok(m);
            }
        }
        if let Some(m) = self
            .services
            .schema1
            .regenerated(target, name, digest)
            .await?
        {
            return Ok(m);
        }
        if let Some(m) = self
            .services
            .bridge
            .regenerated(target, name, digest)
            .await?
        {
            return Ok(m);
        }
        if let Some(m) = self
            .services
            .upgrade
            .regenerated(target, name, digest)
            .await?
        {
            return Ok(m);
        }
        manifests.fetch(target, name, digest, None).await
    }

    /// `schema1_digests = "reject"`: Red Hat's 404 UNSUPPORTED for Schema 1 digests.
    fn schema1_digest_refused(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Error {
        let mut message = String::from(
            "V2 schema 1 manifest digests are no longer supported for image pulls. Use the equivalent V2 schema 2 manifest digest instead.",
        );
        let mut detail =
            serde_json::json!({ "repository": name.as_str(), "schema1_digest": digest.as_str() });
        if let Some(m) = self.services.schema1.mapping(target, name, digest) {
            message.push_str(&format!(
                " The equivalent V2 schema 2 manifest digest is {} ({name}:{}).",
                m.source_digest, m.tag
            ));
            detail["schema2_digest"] = serde_json::Value::String(m.source_digest.to_string());
        }
        Error::policy(
            404,
            RegistryError::with_message(ErrorCode::Unsupported, message).detail(detail),
        )
    }

    /// `schema1 = "passthrough"`: the client's own Accept goes upstream and the
    /// upstream's answer comes back unchanged (not cached: it may be a
    /// tag-specific signed rewrite).
    async fn passthrough_manifest(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &Tag,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response<Body>, Error> {
        let accept: Vec<String> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        let accept: Vec<&str> = accept.iter().map(String::as_str).collect();
        let body = target
            .in_span(
                target
                    .client()
                    .get_manifest(name.as_str(), tag.as_str(), &accept),
            )
            .await?;
        let len = body.bytes.len();
        let digest = body
            .digest_header
            .unwrap_or_else(|| Digest::sha256_of(&body.bytes));
        let mut r = Response::new(if head {
            Body::empty()
        } else {
            Body::full(body.bytes)
        });
        let h = r.headers_mut();
        if let Some(ct) = body
            .content_type
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            h.insert(header::CONTENT_TYPE, ct);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        digest_headers(h, &digest);
        Ok(r)
    }

    /// Serve a stored manifest unchanged; a stored Schema 1 payload is served
    /// signed with regcache's key.
    fn serve_manifest(&self, m: &Manifest, head: bool) -> Result<Response<Body>, Error> {
        if m.media_type.is_schema1() {
            let signed = self.services.schema1.signed(m)?;
            return Ok(manifest_response(
                media_type::SCHEMA1_SIGNED,
                &m.digest,
                signed,
                head,
            ));
        }
        Ok(manifest_response(
            m.media_type.as_str(),
            &m.digest,
            bytes::Bytes::from_owner(m.raw.clone()),
            head,
        ))
    }

    async fn serve_rendering(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &Tag,
        source: &Manifest,
        head: bool,
    ) -> Result<(Response<Body>, Option<Made>), Error> {
        let r = self
            .services
            .schema1
            .render(target, name, tag, source)
            .await?;
        // The rendering is kept signed (the same bytes every time it is
        // served), so its answer can be prepared.
        let made = Made {
            content_type: media_type::SCHEMA1_SIGNED,
            digest: r.digest.clone(),
            body: r.signed.clone(),
            kind: Some(Kind::Schema1),
        };
        let resp = manifest_response(media_type::SCHEMA1_SIGNED, &r.digest, r.signed, head);
        Ok((resp, Some(made)))
    }
}

/// `schema1 = "reject"`: 404 UNSUPPORTED naming the Schema 2 digest to use.
fn schema1_refused(
    target: &Target,
    name: &RepositoryName,
    tag: &Tag,
    stored: &Manifest,
    source: &Manifest,
    policy: Policy,
) -> Error {
    let name = target.client_name(name);
    let mut message = format!(
        "Schema 1 manifests are not served for {name}:{tag} (policy rule #{}): the client did not accept Schema 2. Pull {name}@{} ({}) with a client that accepts it",
        policy.rule.map_or(0, |r| r + 1),
        source.digest,
        if source.media_type == MediaType::OciManifest {
            "OCI"
        } else {
            "Schema 2"
        },
    );
    if stored.digest != source.digest {
        message.push_str(&format!(
            " (the linux/amd64 entry of the list {})",
            stored.digest
        ));
    }
    message.push('.');
    Error::policy(
        404,
        RegistryError::with_message(ErrorCode::Unsupported, message).detail(serde_json::json!({
            "repository": name,
            "tag": tag.as_str(),
            "schema2_digest": source.digest.as_str(),
        })),
    )
}

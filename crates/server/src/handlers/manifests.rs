//! `GET`/`HEAD /v2/<name>/manifests/<reference>`: negotiation (spec 02) runs
//! locally on the native object, so one cached manifest serves every client;
//! the repository's policy decides what an old client that does not accept
//! Schema 2 gets (a Schema 1 rendering, a refusal, or the upstream's own
//! answer).

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, header};
use regcache_formats::accept::{
    self, Accepts, ChildDecision, Decision, RequestKind, if_none_match_hits,
};
use regcache_formats::manifest::{Manifest, ManifestKind, Schema1Source};
use regcache_formats::media_type;
use regcache_formats::reference::{Reference, RepositoryName, Tag};
use regcache_formats::{Digest, ErrorCode, RegistryError};

use super::App;
use crate::error::Error;
use crate::policy::{Policy, Schema1Digests, Schema1Mode};
use crate::request::Target;
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
        let policy = self.policies.resolve(&target.upstream.name, name.as_str());
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
        // --- Schema 1 upgrade (branch `upgrade`), minimal hook; to be folded
        // into the negotiate-based rewrite of this handler. ---
        if let Some(t) = tag {
            let rules = regcache_formats::negotiate::Rules {
                schema1: policy.schema1,
                oci: policy.oci,
                upgrade: policy.schema1_upgrade,
            };
            if regcache_formats::negotiate::decide(RequestKind::Tag, accepts, &stored, rules)
                == regcache_formats::negotiate::Decision::Upgrade
            {
                let m = self
                    .services
                    .upgrade
                    .upgrade(target, name, t, &stored)
                    .await?;
                return self.serve_manifest(&m, head);
            }
        }
        // --- end of the Schema 1 upgrade hook ---
        let Some(tag) = tag else {
            // By digest: never rewritten (content addressing), only refused for OCI.
            return match accept::decide(RequestKind::Digest, accepts, &stored) {
                Decision::RefuseOci(msg) => Err(Error::client(ErrorCode::ManifestUnknown, msg)),
                _ => self.serve_manifest(&stored, head),
            };
        };
        if policy.schema1 == Schema1Mode::Force {
            return self.force_schema1(target, name, tag, &stored, head).await;
        }
        // What distribution 2.8 would serve: the object itself, a refusal, or a
        // Schema 1 rewrite of it (or of its linux/amd64 entry).
        let convert_source = match accept::decide(RequestKind::Tag, accepts, &stored) {
            Decision::ServeAsIs => return self.serve_manifest(&stored, head),
            d @ (Decision::RefuseOci(_) | Decision::NoAmd64Entry) => {
                return Err(Error::from(
                    d.error()
                        .unwrap_or_else(|| RegistryError::new(ErrorCode::ManifestUnknown)),
                ));
            }
            Decision::ConvertToSchema1 => stored.clone(),
            Decision::SelectChild(child) => {
                let c = self
                    .services
                    .manifests
                    .get(target, name, &child.digest, Some(&child.media_type))
                    .await?;
                match accept::decide_child(c.handler_kind(), accepts) {
                    ChildDecision::ServeChildAsIs => return self.serve_manifest(&c, head),
                    ChildDecision::ConvertChild => c,
                }
            }
        };
        match policy.schema1 {
            Schema1Mode::Convert | Schema1Mode::Force => {
                self.serve_rendering(target, name, tag, &convert_source, head)
                    .await
            }
            Schema1Mode::Reject => Err(schema1_refused(
                target,
                name,
                tag,
                &stored,
                &convert_source,
                policy,
            )),
            Schema1Mode::Passthrough => {
                self.passthrough_manifest(target, name, tag, headers, head)
                    .await
            }
        }
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
        manifests.fetch(target, name, digest, None).await
    }

    /// `force`: every by-tag pull gets Schema 1: an image manifest (Docker or
    /// OCI) is converted; a list or index contributes its linux/amd64 entry;
    /// a stored Schema 1 manifest is served as it is.
    async fn force_schema1(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &Tag,
        stored: &Arc<Manifest>,
        head: bool,
    ) -> Result<Response<Body>, Error> {
        let image = match stored.schema1_source() {
            Ok(Schema1Source::Itself) => stored.clone(),
            Ok(Schema1Source::AlreadySchema1) => return self.serve_manifest(stored, head),
            Ok(Schema1Source::Entry(child)) => {
                let c = self
                    .services
                    .manifests
                    .get(target, name, &child.digest, Some(&child.media_type))
                    .await?;
                match &c.kind {
                    ManifestKind::Image(_) => c,
                    _ => return self.serve_manifest(&c, head),
                }
            }
            Err(e) => return Err(Error::client(e.error_code(), format!("{name}:{tag}: {e}"))),
        };
        self.serve_rendering(target, name, tag, &image, head).await
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
            bytes::Bytes::copy_from_slice(&m.raw),
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
    ) -> Result<Response<Body>, Error> {
        let r = self
            .services
            .schema1
            .render(target, name, tag, source)
            .await?;
        Ok(manifest_response(
            media_type::SCHEMA1_SIGNED,
            &r.digest,
            r.signed,
            head,
        ))
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
        "Schema 1 manifests are not served for {name}:{tag} (policy rule #{}): the client did not accept Schema 2. Pull {name}@{} (Schema 2) with a client that accepts it",
        policy.rule.map_or(0, |r| r + 1),
        source.digest,
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

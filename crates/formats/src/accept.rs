//! Manifest content negotiation exactly as distribution 2.8 does it (spec 02).
//!
//! Registries do not do HTTP content negotiation. The stored manifest is the
//! answer; the `Accept` headers only decide whether it may be served as-is,
//! must be rewritten to Schema 1, narrowed to its linux/amd64 child, or
//! refused. This module holds the pure parts: [`Accepts::from_headers`]
//! (§2.2), [`decide`] and [`decide_child`] (§2.3) and the `If-None-Match`
//! comparison ([`if_none_match_hits`]). The server does the fetching and the
//! conversion; this module only says which to do.
//!
//! Quirks of §2.3 that are reproduced here (each has a unit test below):
//!
//! 1. Schema 2 → Schema 1 rewriting happens only for **tag** requests. A digest
//!    names exact bytes, so a digest request is always answered with the
//!    stored bytes, even to a client that does not accept Schema 2. The same
//!    holds for a manifest list requested by digest.
//! 2. The list path picks the first entry with exactly
//!    `architecture == "amd64"` and `os == "linux"` ([`Manifest::schema1_source`], which uses
//!    [`Index::linux_amd64`](crate::manifest::Index::linux_amd64)).
//! 3. Only Docker manifest lists are narrowed. An OCI index the client does
//!    not accept is refused with 404, never narrowed, even for Docker ≤ 1.9
//!    which sends no `Accept` at all.
//! 4. The child picked from a list is not checked against OCI support: an OCI
//!    manifest child is served to a client that does not accept OCI, and a
//!    Schema 1 child is served as-is ([`decide_child`]).
//! 5. A client that accepts Schema 2 but not lists gets the linux/amd64 child
//!    unchanged, with the child's digest.
//! 6. `q` values are ignored: `…list.v2+json;q=0` still counts as support.
//! 7. `If-None-Match` is compared literally with the digest of the STORED
//!    object, before any conversion ([`if_none_match_hits`]).
//!
//! Also from §2.3, but not decided here: the two OCI refusals apply to tag and
//! digest requests alike (implemented by [`decide`]); an OCI index without
//! `mediaType` escapes all checks (see [`HandlerKind`]); the digest header of
//! a Schema 1 answer is that of the canonical payload, not of the body (item
//! 8, jws.rs); HEAD runs the whole algorithm including conversion (item 9, the
//! server); and a converted document embeds the request's name and tag (item
//! 10, schema1.rs), so the same image under two tags has two Schema 1 digests.

use crate::digest::Digest;
use crate::error::{ErrorCode, RegistryError};
use crate::manifest::{Descriptor, HandlerKind, Manifest, Schema1Source};
use crate::media_type;
use crate::reference::Reference;

/// distribution 2.8's exact message when an OCI manifest is not accepted.
pub const OCI_MANIFEST_REFUSED: &str =
    "OCI manifest found, but accept header does not support OCI manifests";
/// distribution 2.8's exact message when an OCI index is not accepted.
pub const OCI_INDEX_REFUSED: &str =
    "OCI index found, but accept header does not support OCI indexes";

/// Which of the four "modern" manifest types the client declared (spec 02 §2.2).
///
/// Schema 1 is what a distribution client gets when it declares nothing
/// better, so distribution ignores the Schema 1 types in `Accept`; regcache
/// reads them for one decision only, whether a stored Schema 1 image may be
/// upgraded to Schema 2 ([`schema1`](Self::schema1), see
/// [`negotiate`](crate::negotiate)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Accepts {
    /// `application/vnd.docker.distribution.manifest.v2+json`
    pub schema2: bool,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`
    pub list: bool,
    /// `application/vnd.oci.image.manifest.v1+json`
    pub oci_manifest: bool,
    /// `application/vnd.oci.image.index.v1+json`
    pub oci_index: bool,
    /// `application/vnd.docker.distribution.manifest.v1+prettyjws` or
    /// `…v1+json` named exactly (`*/*` does not count).
    pub schema1: bool,
}

impl Accepts {
    /// Parse every `Accept` header value of a request, as distribution 2.8 does.
    ///
    /// Each value is split on `,`; each piece is cut at its first `;` (dropping
    /// `q=` and any other parameter), trimmed of ASCII whitespace, and compared
    /// exactly and case-sensitively with the four types. Consequences: several
    /// header lines equal one comma-separated line; `q=0` still counts;
    /// `APPLICATION/…` does not count; wildcards and `application/json` are
    /// ignored; no header at all means all four flags are false.
    ///
    /// Works on bytes because header values need not be UTF-8; a non-UTF-8
    /// piece simply matches nothing, and the other pieces still count.
    pub fn from_headers<I>(values: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut accepts = Accepts::default();
        for value in values {
            accepts.add_header(value.as_ref());
        }
        accepts
    }

    /// Add one `Accept` header value (see [`from_headers`](Self::from_headers)).
    pub fn add_header(&mut self, value: &[u8]) {
        for piece in value.split(|&b| b == b',') {
            let piece = match piece.iter().position(|&b| b == b';') {
                Some(i) => &piece[..i],
                None => piece,
            };
            match trim_go_space(piece) {
                p if p == media_type::SCHEMA2.as_bytes() => self.schema2 = true,
                p if p == media_type::MANIFEST_LIST.as_bytes() => self.list = true,
                p if p == media_type::OCI_MANIFEST.as_bytes() => self.oci_manifest = true,
                p if p == media_type::OCI_INDEX.as_bytes() => self.oci_index = true,
                p if p == media_type::SCHEMA1_SIGNED.as_bytes()
                    || p == media_type::SCHEMA1.as_bytes() =>
                {
                    self.schema1 = true
                }
                _ => {}
            }
        }
    }

    pub fn lacks_schema2(&self) -> bool {
        !self.schema2
    }

    pub fn lacks_list(&self) -> bool {
        !self.list
    }

    pub fn lacks_oci_manifest(&self) -> bool {
        !self.oci_manifest
    }

    pub fn lacks_oci_index(&self) -> bool {
        !self.oci_index
    }
}

/// Trim the ASCII white space Go's `strings.TrimSpace` trims (which, unlike
/// `u8::is_ascii_whitespace`, includes vertical tab).
fn trim_go_space(mut s: &[u8]) -> &[u8] {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r');
    while let [first, rest @ ..] = s {
        if !is_space(first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_space(last) {
            break;
        }
        s = rest;
    }
    s
}

/// Whether the request named a tag or a digest; only tag requests may be rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Tag,
    Digest,
}

impl From<&Reference> for RequestKind {
    fn from(r: &Reference) -> Self {
        match r {
            Reference::Tag(_) => RequestKind::Tag,
            Reference::Digest(_) => RequestKind::Digest,
        }
    }
}

/// What to answer a manifest GET/HEAD with, given the stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve the stored bytes with the stored type and digest.
    ServeAsIs,
    /// 404 `MANIFEST_UNKNOWN` with this exact message ([`OCI_MANIFEST_REFUSED`]
    /// or [`OCI_INDEX_REFUSED`]), no detail.
    RefuseOci(&'static str),
    /// Rewrite the stored Schema 2 manifest to signed Schema 1 under the
    /// request's repository name and tag (chapter 03).
    ConvertToSchema1,
    /// The stored object is a Docker list and the client does not accept
    /// lists: fetch this linux/amd64 child (404 `MANIFEST_UNKNOWN` if it is
    /// missing), then ask [`decide_child`] what to do with it.
    SelectChild(Descriptor),
    /// A Docker list without a linux/amd64 entry, for a client that does not
    /// accept lists: 404 `MANIFEST_UNKNOWN` with the plain default message and
    /// no detail.
    NoAmd64Entry,
}

impl Decision {
    /// The error to answer with, for the two refusing decisions.
    pub fn error(&self) -> Option<RegistryError> {
        match self {
            Decision::RefuseOci(msg) => Some(RegistryError::with_message(
                ErrorCode::ManifestUnknown,
                *msg,
            )),
            Decision::NoAmd64Entry => Some(RegistryError::new(ErrorCode::ManifestUnknown)),
            _ => None,
        }
    }
}

/// The negotiation of spec 02 §2.3 for a stored manifest (after the tag was
/// resolved and `If-None-Match` was checked).
///
/// In order: an OCI manifest or index (by [`Manifest::handler_kind`], so an
/// index without `mediaType` is exempt) that the client does not accept is
/// refused, for tag and digest requests alike; a Schema 2 manifest requested
/// by tag by a client without Schema 2 support is converted; a Docker list
/// requested by tag by a client without list support is narrowed to its first
/// linux/amd64 entry; everything else is served unchanged. See the module
/// docs for the quirks this reproduces.
pub fn decide(request: RequestKind, accepts: Accepts, stored: &Manifest) -> Decision {
    let kind = stored.handler_kind();
    if kind == HandlerKind::OciManifest && accepts.lacks_oci_manifest() {
        return Decision::RefuseOci(OCI_MANIFEST_REFUSED);
    }
    if kind == HandlerKind::OciIndex && accepts.lacks_oci_index() {
        return Decision::RefuseOci(OCI_INDEX_REFUSED);
    }
    if request == RequestKind::Digest {
        return Decision::ServeAsIs;
    }
    match kind {
        HandlerKind::Schema2 if accepts.lacks_schema2() => Decision::ConvertToSchema1,
        HandlerKind::List if accepts.lacks_list() => match stored.schema1_source() {
            Ok(Schema1Source::Entry(child)) => Decision::SelectChild(child.clone()),
            // A `List` is always an index, so this is its missing entry.
            _ => Decision::NoAmd64Entry,
        },
        _ => Decision::ServeAsIs,
    }
}

/// What to do with the child chosen by [`Decision::SelectChild`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChildDecision {
    /// Serve the child's stored bytes, type and digest, whatever its type.
    ServeChildAsIs,
    /// Convert the Schema 2 child to Schema 1 under the LIST's repository
    /// name and requested tag.
    ConvertChild,
}

/// The second half of the list path: convert a Schema 2 child for a client
/// without Schema 2 support, serve anything else unchanged.
///
/// Deliberately no OCI check here (quirk 4): distribution returns an OCI
/// manifest child even to a client that does not accept OCI manifests.
pub fn decide_child(child: HandlerKind, accepts: Accepts) -> ChildDecision {
    if child == HandlerKind::Schema2 && accepts.lacks_schema2() {
        ChildDecision::ConvertChild
    } else {
        ChildDecision::ServeChildAsIs
    }
}

/// Does any `If-None-Match` value equal `digest` or `"digest"` literally?
/// Then the answer is 304 with no body and no `Content-*` headers.
///
/// distribution 2.8 passes the digest of the STORED object (before any
/// Schema 1 conversion), so a legacy client sending back the Schema 1 digest
/// it received never gets 304, while one sending the Schema 2 digest does
/// (quirk 7). Spec 02 §2.7.2 lets the proxy pass the digest it is about to
/// return instead; that choice is the caller's, by which digest it passes.
/// Lists of values, weak `W/` tags and `*` are not understood, as in
/// distribution.
pub fn if_none_match_hits<I>(values: I, digest: &Digest) -> bool
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let plain = digest.as_str().as_bytes();
    values.into_iter().any(|v| {
        let v = v.as_ref();
        v == plain
            || (v.len() == plain.len() + 2
                && v.first() == Some(&b'"')
                && v.last() == Some(&b'"')
                && &v[1..v.len() - 1] == plain)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media_type::{MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, SCHEMA2};
    use serde_json::json;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn desc(mt: &str, n: u8) -> serde_json::Value {
        json!({"mediaType": mt, "digest": d(n), "size": 10})
    }

    fn manifest(v: serde_json::Value) -> Manifest {
        Manifest::parse(serde_json::to_vec(&v).unwrap(), None).unwrap()
    }

    /// Spec 02 §2.5 `latest`.
    fn schema2() -> Manifest {
        manifest(json!({"schemaVersion": 2, "mediaType": SCHEMA2,
            "config": desc(media_type::DOCKER_CONFIG, 1),
            "layers": [desc(media_type::DOCKER_LAYER_GZIP, 2)]}))
    }

    /// Spec 02 §2.5 `multi`: the SECOND entry is linux/amd64, the first linux/arm64.
    fn multi() -> Manifest {
        manifest(
            json!({"schemaVersion": 2, "mediaType": MANIFEST_LIST, "manifests": [
                {"mediaType": SCHEMA2, "digest": d(3), "size": 10,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                {"mediaType": SCHEMA2, "digest": d(4), "size": 10,
                 "platform": {"architecture": "amd64", "os": "linux"}},
            ]}),
        )
    }

    /// Spec 02 §2.5 `oci`.
    fn oci() -> Manifest {
        manifest(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc(media_type::OCI_CONFIG, 1), "layers": []}))
    }

    fn oci_index(with_media_type: bool) -> Manifest {
        let mut v = json!({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d(5), "size": 10,
             "platform": {"architecture": "amd64", "os": "linux"}}]});
        if with_media_type {
            v["mediaType"] = json!(OCI_INDEX);
        }
        manifest(v)
    }

    fn schema1() -> Manifest {
        manifest(
            json!({"schemaVersion": 1, "name": "library/example", "tag": "latest",
            "architecture": "amd64", "fsLayers": [], "history": [], "signatures": []}),
        )
    }

    fn t_upper(t: &str) -> String {
        t.to_ascii_uppercase()
    }

    fn acc(lines: &[&str]) -> Accepts {
        Accepts::from_headers(lines)
    }

    const NONE: Accepts = Accepts {
        schema2: false,
        list: false,
        oci_manifest: false,
        oci_index: false,
        schema1: false,
    };

    // ---- §2.2 parsing ----

    #[test]
    fn no_accept_header_means_nothing_supported() {
        assert_eq!(Accepts::from_headers(Vec::<&[u8]>::new()), NONE);
        assert_eq!(acc(&[""]), NONE);
        assert!(NONE.lacks_schema2() && NONE.lacks_list());
        assert!(NONE.lacks_oci_manifest() && NONE.lacks_oci_index());
    }

    #[test]
    fn several_lines_equal_one_comma_list() {
        let all = format!("{SCHEMA2},{MANIFEST_LIST}, {OCI_MANIFEST} ,\t{OCI_INDEX}");
        let one = acc(&[&all]);
        let many = acc(&[SCHEMA2, MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX]);
        let mixed = acc(&[
            &format!("{SCHEMA2}, {MANIFEST_LIST}"),
            OCI_MANIFEST,
            OCI_INDEX,
        ]);
        let expected = Accepts {
            schema2: true,
            list: true,
            oci_manifest: true,
            oci_index: true,
            schema1: false,
        };
        assert_eq!(one, expected);
        assert_eq!(many, expected);
        assert_eq!(mixed, expected);
        assert!(!one.lacks_oci_index());
    }

    #[test]
    fn q_and_parameters_are_ignored() {
        // Quirk 6: q=0 still counts.
        let a = acc(&[&format!("{MANIFEST_LIST};q=0")]);
        assert!(a.list && !a.schema2);
        let a = acc(&[
            &format!("text/html, {SCHEMA2} ; q=0.9"),
            &format!("{OCI_INDEX}; charset=utf-8"),
        ]);
        assert!(a.schema2 && a.oci_index && !a.list && !a.oci_manifest);
        // Whitespace inside the type is not trimmed.
        assert_eq!(
            acc(&["application/vnd.docker.distribution.manifest.v2 +json"]),
            NONE
        );
        // Go trims vertical tab too.
        assert!(acc(&[&format!("\x0b{SCHEMA2}\x0b")]).schema2);
    }

    #[test]
    fn comparison_is_exact_and_case_sensitive() {
        let upper = "APPLICATION/vnd.docker.distribution.manifest.list.v2+json";
        assert_eq!(acc(&[upper]), NONE);
        assert_eq!(acc(&["*/*", "application/*", "application/json"]), NONE);
        // The Schema 1 types set only their own flag, which distribution's
        // decisions never read.
        for t in [media_type::SCHEMA1, media_type::SCHEMA1_SIGNED] {
            assert_eq!(
                acc(&[t]),
                Accepts {
                    schema1: true,
                    ..NONE
                }
            );
        }
        assert!(!acc(&["*/*", &t_upper(media_type::SCHEMA1_SIGNED)]).schema1);
    }

    #[test]
    fn non_utf8_values_do_not_panic() {
        let mut v = b"\xff\xfe;\x80, ".to_vec();
        v.extend_from_slice(SCHEMA2.as_bytes());
        v.extend_from_slice(b",\xc3");
        let a = Accepts::from_headers([v.as_slice(), b"\xff".as_slice(), b";;,,".as_slice()]);
        assert_eq!(
            a,
            Accepts {
                schema2: true,
                ..NONE
            }
        );
    }

    // ---- §2.3 / §2.5 decisions ----

    #[test]
    fn tag_schema2_without_accept_is_converted() {
        // GET latest, no Accept -> schema-1 rewrite (HEAD is the same decision).
        assert_eq!(
            decide(RequestKind::Tag, NONE, &schema2()),
            Decision::ConvertToSchema1
        );
        // Accepting only OCI types does not help a Schema 2 manifest.
        let a = acc(&[OCI_MANIFEST, OCI_INDEX, MANIFEST_LIST]);
        assert_eq!(
            decide(RequestKind::Tag, a, &schema2()),
            Decision::ConvertToSchema1
        );
    }

    #[test]
    fn tag_schema2_with_accept_is_served() {
        assert_eq!(
            decide(RequestKind::Tag, acc(&[SCHEMA2]), &schema2()),
            Decision::ServeAsIs
        );
        let a = acc(&[&format!("text/html, {SCHEMA2};q=0.9")]);
        assert_eq!(decide(RequestKind::Tag, a, &schema2()), Decision::ServeAsIs);
    }

    #[test]
    fn digest_requests_never_convert() {
        // Quirk 1: GET sha256:… with no Accept -> schema 2 bytes.
        assert_eq!(
            decide(RequestKind::Digest, NONE, &schema2()),
            Decision::ServeAsIs
        );
        // A list by digest is not narrowed either.
        assert_eq!(
            decide(RequestKind::Digest, NONE, &multi()),
            Decision::ServeAsIs
        );
        let r = Reference::parse(&d(1)).unwrap();
        assert_eq!(RequestKind::from(&r), RequestKind::Digest);
        let r = Reference::parse("latest").unwrap();
        assert_eq!(RequestKind::from(&r), RequestKind::Tag);
    }

    #[test]
    fn list_without_list_support_selects_first_linux_amd64() {
        // Quirk 5: GET multi with Accept v2 -> the amd64 child (second entry), unchanged.
        let a = acc(&[SCHEMA2]);
        let Decision::SelectChild(child) = decide(RequestKind::Tag, a, &multi()) else {
            panic!("expected SelectChild");
        };
        assert_eq!(child.digest.as_str(), d(4));
        assert_eq!(
            decide_child(HandlerKind::Schema2, a),
            ChildDecision::ServeChildAsIs
        );

        // GET multi, no Accept -> the child is converted to Schema 1.
        let Decision::SelectChild(child) = decide(RequestKind::Tag, NONE, &multi()) else {
            panic!("expected SelectChild");
        };
        assert_eq!(child.digest.as_str(), d(4));
        assert_eq!(
            decide_child(HandlerKind::Schema2, NONE),
            ChildDecision::ConvertChild
        );

        // Upper-case list type is not recognised -> same as no Accept.
        let a = acc(&["APPLICATION/vnd.docker.distribution.manifest.list.v2+json"]);
        assert!(matches!(
            decide(RequestKind::Tag, a, &multi()),
            Decision::SelectChild(_)
        ));
    }

    #[test]
    fn list_with_list_support_is_served() {
        // Two Accept lines, v2 and list -> the list itself.
        let a = acc(&[SCHEMA2, MANIFEST_LIST]);
        assert_eq!(decide(RequestKind::Tag, a, &multi()), Decision::ServeAsIs);
        // Quirk 6: list;q=0 still gets the list.
        let a = acc(&[&format!("{MANIFEST_LIST};q=0")]);
        assert_eq!(decide(RequestKind::Tag, a, &multi()), Decision::ServeAsIs);
    }

    #[test]
    fn list_without_linux_amd64_is_manifest_unknown() {
        // Quirk 2: exact, case-sensitive, platform required; variant irrelevant.
        let m = manifest(
            json!({"schemaVersion": 2, "mediaType": MANIFEST_LIST, "manifests": [
                desc(SCHEMA2, 1),
                {"mediaType": SCHEMA2, "digest": d(2), "size": 1,
                 "platform": {"architecture": "AMD64", "os": "linux"}},
                {"mediaType": SCHEMA2, "digest": d(3), "size": 1,
                 "platform": {"architecture": "amd64", "os": "Linux"}},
                {"mediaType": SCHEMA2, "digest": d(4), "size": 1,
                 "platform": {"architecture": "arm64", "os": "linux"}},
            ]}),
        );
        let dec = decide(RequestKind::Tag, acc(&[SCHEMA2]), &m);
        assert_eq!(dec, Decision::NoAmd64Entry);
        let err = dec.error().unwrap();
        assert_eq!(
            (err.code, err.message.as_str(), err.detail),
            (ErrorCode::ManifestUnknown, "manifest unknown", None)
        );

        let m = manifest(
            json!({"schemaVersion": 2, "mediaType": MANIFEST_LIST, "manifests": [
            {"mediaType": SCHEMA2, "digest": d(5), "size": 1,
             "platform": {"architecture": "amd64", "os": "linux", "variant": "v3"}}]}),
        );
        let Decision::SelectChild(c) = decide(RequestKind::Tag, NONE, &m) else {
            panic!("expected SelectChild");
        };
        assert_eq!(c.digest.as_str(), d(5));
    }

    #[test]
    fn child_is_not_checked_against_oci_support() {
        // Quirk 4.
        assert_eq!(
            decide_child(HandlerKind::OciManifest, NONE),
            ChildDecision::ServeChildAsIs
        );
        assert_eq!(
            decide_child(HandlerKind::Schema1, NONE),
            ChildDecision::ServeChildAsIs
        );
        assert_eq!(
            decide_child(HandlerKind::List, NONE),
            ChildDecision::ServeChildAsIs
        );
    }

    #[test]
    fn oci_refusals_apply_to_tags_and_digests() {
        // GET oci with Accept v2 -> 404 with distribution's exact message.
        for req in [RequestKind::Tag, RequestKind::Digest] {
            let dec = decide(req, acc(&[SCHEMA2]), &oci());
            assert_eq!(dec, Decision::RefuseOci(OCI_MANIFEST_REFUSED));
            let e = dec.error().unwrap();
            assert_eq!(e.code, ErrorCode::ManifestUnknown);
            assert_eq!(
                e.message,
                "OCI manifest found, but accept header does not support OCI manifests"
            );
            assert_eq!(
                decide(req, NONE, &oci_index(true)),
                Decision::RefuseOci(
                    "OCI index found, but accept header does not support OCI indexes"
                )
            );
            assert_eq!(
                decide(req, acc(&[OCI_MANIFEST]), &oci()),
                Decision::ServeAsIs
            );
            assert_eq!(
                decide(req, acc(&[OCI_INDEX]), &oci_index(true)),
                Decision::ServeAsIs
            );
        }
        // An OCI manifest with no mediaType field is still refused.
        let m = manifest(json!({"schemaVersion": 2, "config": desc(media_type::OCI_CONFIG, 1)}));
        assert_eq!(
            decide(RequestKind::Tag, NONE, &m),
            Decision::RefuseOci(OCI_MANIFEST_REFUSED)
        );
    }

    #[test]
    fn oci_index_is_never_narrowed() {
        // Quirk 3: even with list support and a linux/amd64 entry, and even for
        // Docker <= 1.9 (no Accept).
        let a = acc(&[SCHEMA2, MANIFEST_LIST, OCI_MANIFEST]);
        assert_eq!(
            decide(RequestKind::Tag, a, &oci_index(true)),
            Decision::RefuseOci(OCI_INDEX_REFUSED)
        );
        assert_eq!(
            decide(RequestKind::Tag, NONE, &oci_index(true)),
            Decision::RefuseOci(OCI_INDEX_REFUSED)
        );
    }

    #[test]
    fn oci_index_without_media_type_escapes_every_check() {
        // The handler classifies it as Schema 1; served as-is to everyone.
        let m = oci_index(false);
        assert_eq!(m.media_type, media_type::MediaType::OciIndex);
        for req in [RequestKind::Tag, RequestKind::Digest] {
            assert_eq!(decide(req, NONE, &m), Decision::ServeAsIs);
            assert_eq!(decide(req, acc(&[SCHEMA2]), &m), Decision::ServeAsIs);
        }
    }

    #[test]
    fn schema1_is_always_served_as_is() {
        for a in [
            NONE,
            acc(&[SCHEMA2, MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX]),
        ] {
            assert_eq!(decide(RequestKind::Tag, a, &schema1()), Decision::ServeAsIs);
            assert_eq!(
                decide(RequestKind::Digest, a, &schema1()),
                Decision::ServeAsIs
            );
        }
        assert!(Decision::ServeAsIs.error().is_none());
    }

    #[test]
    fn if_none_match_is_literal() {
        // Quirk 7: compared with the STORED digest, quoted or not.
        let stored = schema2();
        let digest = &stored.digest;
        assert!(if_none_match_hits([digest.as_str()], digest));
        assert!(if_none_match_hits([format!("\"{digest}\"")], digest));
        assert!(if_none_match_hits(["other", digest.as_str()], digest));
        // A Schema 1 digest the client received earlier does not match the stored one.
        assert!(!if_none_match_hits([d(9)], digest));
        // Lists, weak tags, '*', stray spaces and half quotes are not understood.
        for v in [
            format!("\"{digest}\", \"x\""),
            format!("W/\"{digest}\""),
            "*".to_owned(),
            format!(" {digest}"),
            format!("\"{digest}"),
            "\"".to_owned(),
        ] {
            assert!(!if_none_match_hits([v.as_bytes()], digest), "{v}");
        }
        assert!(!if_none_match_hits(Vec::<&[u8]>::new(), digest));
    }
}

//! What a manifest request gets, given what is stored, what the client
//! accepts and the repository's policy: one pure function ([`decide`], with
//! [`decide_child`] for the entry a list is narrowed to).
//!
//! distribution 2.8's own negotiation ([`accept::decide`]) is the base: with
//! `oci = "refuse"`, `schema1_upgrade = "off"` and `schema1 = "convert"` the
//! answers are exactly distribution's. regcache's bridges go further, and
//! only for **tag** requests (a digest names exact bytes; a by-digest request
//! gets the stored bytes or distribution's refusal):
//!
//! - `oci = "bridge"` (default): an OCI image manifest for a client without
//!   the OCI manifest type becomes its Docker twin when the client takes
//!   Schema 2, else Schema 1 through the twin (under the `schema1` policy);
//!   an OCI index for a client without the OCI index type becomes a Docker
//!   manifest list of twins when the client takes lists, else its
//!   linux/amd64 entry goes the same way.
//! - `schema1_upgrade = "upgrade"` (default): a stored Schema 1 image for a
//!   client that takes Schema 2 and names neither Schema 1 type becomes
//!   Docker Schema 2 (containerd sends `*/*`, which does not count: 2.x then
//!   refuses the Schema 1 it gets). A client that names no type at all
//!   (Docker ≤ 1.9) keeps its Schema 1.
//! - `schema1 = "force"`: every by-tag pull gets Schema 1, whatever the
//!   client accepts.
//!
//! The table test at the bottom covers every (stored type × client × policy)
//! cell.

use serde::Deserialize;

use crate::accept::{Accepts, OCI_INDEX_REFUSED, OCI_MANIFEST_REFUSED, RequestKind};
use crate::error::{ErrorCode, RegistryError};
use crate::manifest::{Descriptor, HandlerKind, Manifest, Schema1Source};

/// What a by-tag pull of an image gets when the client takes none of the
/// image's formats but Schema 1 (`schema1` policy key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schema1Mode {
    /// Rewrite to signed Schema 1 as docker/distribution 2.8 did (lists: the linux/amd64 entry).
    #[default]
    Convert,
    /// 404 `UNSUPPORTED`, naming the Schema 2 digest to use instead.
    Reject,
    /// Forward the client's `Accept` upstream and return what the upstream returns.
    Passthrough,
    /// Serve Schema 1 to every by-tag pull, whatever the client accepts.
    Force,
}

impl Schema1Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Schema1Mode::Convert => "convert",
            Schema1Mode::Reject => "reject",
            Schema1Mode::Passthrough => "passthrough",
            Schema1Mode::Force => "force",
        }
    }
}

/// What a by-tag pull of an OCI manifest or index gets when the client lacks
/// its OCI type (`oci` policy key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OciMode {
    /// The Docker twin (or Schema 1 through it) the client can read.
    #[default]
    Bridge,
    /// distribution 2.8's 404 `MANIFEST_UNKNOWN`.
    Refuse,
}

impl OciMode {
    pub fn as_str(self) -> &'static str {
        match self {
            OciMode::Bridge => "bridge",
            OciMode::Refuse => "refuse",
        }
    }
}

/// Whether a stored Schema 1 image is upgraded to Schema 2 for a client that
/// does not name Schema 1 (`schema1_upgrade` policy key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpgradeMode {
    #[default]
    Upgrade,
    /// Serve the Schema 1 as stored (distribution's behaviour).
    Off,
}

impl UpgradeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeMode::Upgrade => "upgrade",
            UpgradeMode::Off => "off",
        }
    }
}

/// The policy keys the negotiation reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rules {
    pub schema1: Schema1Mode,
    pub oci: OciMode,
    pub upgrade: UpgradeMode,
}

/// What to do about an image the client can only read as Schema 1 (the
/// `schema1` policy, `force` being `Convert` here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ToSchema1 {
    /// Render signed Schema 1 (through the Docker twin for an OCI image).
    Convert,
    /// 404 `UNSUPPORTED` naming the digest to pull instead.
    Reject,
    /// The client's own `Accept` upstream, the upstream's answer back.
    Passthrough,
}

impl From<Schema1Mode> for ToSchema1 {
    fn from(m: Schema1Mode) -> Self {
        match m {
            Schema1Mode::Convert | Schema1Mode::Force => ToSchema1::Convert,
            Schema1Mode::Reject => ToSchema1::Reject,
            Schema1Mode::Passthrough => ToSchema1::Passthrough,
        }
    }
}

/// What to answer a manifest GET/HEAD with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The stored bytes, type and digest.
    ServeAsIs,
    /// 404 `MANIFEST_UNKNOWN` with distribution's exact message.
    RefuseOci(&'static str),
    /// A list or index without a linux/amd64 entry for a client that takes
    /// neither lists nor the index: 404 `MANIFEST_UNKNOWN` (plain message).
    NoAmd64Entry,
    /// The stored image (Docker Schema 2 or OCI) as Schema 1, per policy.
    Schema1(ToSchema1),
    /// The stored OCI manifest's Docker twin, or the stored OCI index's
    /// Docker manifest list of twins.
    DockerTwin,
    /// The stored Schema 1 image upgraded to Docker Schema 2.
    Upgrade,
    /// Narrow the stored list or index to this linux/amd64 entry, then ask
    /// [`decide_child`].
    SelectChild(Descriptor),
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

/// The decision for a stored manifest, after the tag was resolved and
/// `If-None-Match` was checked. See the module docs.
pub fn decide(request: RequestKind, accepts: Accepts, stored: &Manifest, rules: Rules) -> Decision {
    let kind = stored.handler_kind();
    let tag = request == RequestKind::Tag;
    if tag && rules.schema1 == Schema1Mode::Force {
        return match stored.schema1_source() {
            Ok(Schema1Source::Itself) => Decision::Schema1(ToSchema1::Convert),
            Ok(Schema1Source::AlreadySchema1) => Decision::ServeAsIs,
            Ok(Schema1Source::Entry(child)) => Decision::SelectChild(child.clone()),
            Err(_) => Decision::NoAmd64Entry,
        };
    }
    let bridge = tag && rules.oci == OciMode::Bridge;
    if kind == HandlerKind::OciManifest && accepts.lacks_oci_manifest() {
        return match (bridge, accepts.schema2) {
            (false, _) => Decision::RefuseOci(OCI_MANIFEST_REFUSED),
            (true, true) => Decision::DockerTwin,
            (true, false) => Decision::Schema1(rules.schema1.into()),
        };
    }
    // distribution lets an index without `mediaType` escape its checks
    // (served as is to everyone); bridging goes by what the document is.
    let oci_index = kind == HandlerKind::OciIndex
        || (bridge && stored.media_type == crate::MediaType::OciIndex);
    if oci_index && accepts.lacks_oci_index() {
        if !bridge {
            return Decision::RefuseOci(OCI_INDEX_REFUSED);
        }
        if accepts.list {
            return Decision::DockerTwin;
        }
        return narrow(stored);
    }
    if !tag {
        return Decision::ServeAsIs;
    }
    match kind {
        HandlerKind::Schema2 if accepts.lacks_schema2() => Decision::Schema1(rules.schema1.into()),
        HandlerKind::List if accepts.lacks_list() => narrow(stored),
        // `Schema1` is also the kind of an index without `mediaType`: only a
        // real Schema 1 document upgrades.
        HandlerKind::Schema1
            if stored.media_type.is_schema1()
                && rules.upgrade == UpgradeMode::Upgrade
                && accepts.schema2
                && !accepts.schema1 =>
        {
            Decision::Upgrade
        }
        _ => Decision::ServeAsIs,
    }
}

fn narrow(stored: &Manifest) -> Decision {
    match stored.schema1_source() {
        Ok(Schema1Source::Entry(child)) => Decision::SelectChild(child.clone()),
        _ => Decision::NoAmd64Entry,
    }
}

/// What to do with the entry [`Decision::SelectChild`] picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChildDecision {
    /// The child's stored bytes, type and digest, whatever its type.
    ServeAsIs,
    /// The child (an image manifest) as Schema 1 under the list's name and
    /// requested tag, per policy.
    Schema1(ToSchema1),
    /// The OCI child's Docker twin.
    DockerTwin,
}

/// The second half of the list path. Under `force` an image child is always
/// converted. Otherwise a Schema 2 child converts for a client without
/// Schema 2; an OCI child for a client without the OCI manifest type is
/// bridged under `oci = "bridge"` (its twin, or Schema 1 through it) and
/// served as it is under `refuse` (distribution does no OCI check on the
/// child: spec 02 §2.3 quirk 4). Anything else is served as it is.
pub fn decide_child(child: HandlerKind, accepts: Accepts, rules: Rules) -> ChildDecision {
    let image = matches!(child, HandlerKind::Schema2 | HandlerKind::OciManifest);
    if rules.schema1 == Schema1Mode::Force {
        return if image {
            ChildDecision::Schema1(ToSchema1::Convert)
        } else {
            ChildDecision::ServeAsIs
        };
    }
    match child {
        HandlerKind::Schema2 if accepts.lacks_schema2() => {
            ChildDecision::Schema1(rules.schema1.into())
        }
        HandlerKind::OciManifest
            if accepts.lacks_oci_manifest() && rules.oci == OciMode::Bridge =>
        {
            if accepts.schema2 {
                ChildDecision::DockerTwin
            } else {
                ChildDecision::Schema1(rules.schema1.into())
            }
        }
        _ => ChildDecision::ServeAsIs,
    }
}

/// What each kind of client gets by tag under `rules`, for each kind of
/// stored image: the table `regcache policy explain` prints, computed by
/// [`decide`] and [`decide_child`] on sample documents.
pub fn explain(rules: Rules) -> String {
    use crate::media_type as mt;
    let image = |media_type: &str, config: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"{config}","digest":"sha256:{z}","size":1}},"layers":[]}}"#,
            z = "0".repeat(64)
        )
    };
    let index = |media_type: &str, child: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","manifests":[{{"mediaType":"{child}","digest":"sha256:{z}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            z = "0".repeat(64)
        )
    };
    let schema1 = r#"{"schemaVersion":1,"name":"r","tag":"t","architecture":"amd64","fsLayers":[],"history":[]}"#;
    let stored = [
        ("Schema 1", schema1.to_owned(), HandlerKind::Schema1),
        (
            "Docker Schema 2",
            image(mt::SCHEMA2, mt::DOCKER_CONFIG),
            HandlerKind::Schema2,
        ),
        (
            "Docker list",
            index(mt::MANIFEST_LIST, mt::SCHEMA2),
            HandlerKind::Schema2,
        ),
        (
            "OCI image",
            image(mt::OCI_MANIFEST, mt::OCI_CONFIG),
            HandlerKind::OciManifest,
        ),
        (
            "OCI index",
            index(mt::OCI_INDEX, mt::OCI_MANIFEST),
            HandlerKind::OciManifest,
        ),
    ];
    let clients: [(&str, &[&str]); 4] = [
        ("Docker <= 1.9 (no Accept)", &[]),
        (
            "Docker 1.10-17 (Schema 2, lists)",
            &[mt::SCHEMA2, mt::MANIFEST_LIST, mt::SCHEMA1_SIGNED],
        ),
        (
            "containerd (all four, */*)",
            &[
                mt::SCHEMA2,
                mt::MANIFEST_LIST,
                mt::OCI_MANIFEST,
                mt::OCI_INDEX,
                "*/*",
            ],
        ),
        (
            "Docker 20.10, podman, skopeo",
            &[
                mt::SCHEMA2,
                mt::MANIFEST_LIST,
                mt::OCI_MANIFEST,
                mt::OCI_INDEX,
                mt::SCHEMA1_SIGNED,
            ],
        ),
    ];
    let schema1_words = |a: ToSchema1| match a {
        ToSchema1::Convert => "Schema 1 (converted)",
        ToSchema1::Reject => "404 UNSUPPORTED",
        ToSchema1::Passthrough => "the upstream's answer",
    };
    let mut out = String::from(
        "  what a pull by tag gets (by digest: the stored bytes, or distribution's OCI refusal):\n",
    );
    for (label, doc, child) in &stored {
        let Ok(m) = Manifest::parse(doc.as_bytes().to_vec(), None) else {
            continue;
        };
        out.push_str(&format!("    stored {label}:\n"));
        for (client, accept) in clients {
            let accepts = Accepts::from_headers(accept.iter());
            let words = match decide(RequestKind::Tag, accepts, &m, rules) {
                Decision::ServeAsIs => "as stored".to_owned(),
                Decision::RefuseOci(_) => "404 MANIFEST_UNKNOWN (OCI refused)".to_owned(),
                Decision::NoAmd64Entry => "404 MANIFEST_UNKNOWN (no linux/amd64 entry)".to_owned(),
                Decision::Schema1(a) => schema1_words(a).to_owned(),
                Decision::DockerTwin if m.media_type.is_index() => {
                    "Docker list of twins".to_owned()
                }
                Decision::DockerTwin => "Docker twin".to_owned(),
                Decision::Upgrade => "Docker Schema 2 (upgraded)".to_owned(),
                Decision::SelectChild(_) => {
                    let child = match decide_child(*child, accepts, rules) {
                        ChildDecision::ServeAsIs => "as stored",
                        ChildDecision::Schema1(a) => schema1_words(a),
                        ChildDecision::DockerTwin => "Docker twin",
                    };
                    format!("its linux/amd64 entry, {child}")
                }
            };
            out.push_str(&format!("      {client:<34} {words}\n"));
        }
    }
    out
}

#[cfg(test)]
#[path = "negotiate_tests.rs"]
mod tests;

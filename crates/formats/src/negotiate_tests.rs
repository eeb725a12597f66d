//! The whole table: every stored type × client `Accept` × policy, by tag and
//! by digest. Each row is one (stored, client) pair; each column one policy,
//! `tag/digest`. Codes: `=` served as stored, `R` distribution's OCI
//! refusal, `N` no linux/amd64 entry, `1c`/`1r`/`1p` Schema 1 converted /
//! rejected / passed through, `T` Docker twin (list of twins for an index),
//! `U` Schema 1 upgraded to Schema 2, `C:x` narrowed to the linux/amd64
//! child, which (for an OCI child: the next rows' `child` lines) then gets `x`.

#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::media_type::{self as mt};

fn d(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn parse(v: serde_json::Value) -> Manifest {
    Manifest::parse(serde_json::to_vec(&v).unwrap(), None).unwrap()
}

fn image(media_type: &str, config: &str) -> Manifest {
    parse(json!({"schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": config, "digest": d(1), "size": 1},
        "layers": [{"mediaType": mt::OCI_LAYER_GZIP, "digest": d(2), "size": 1}]}))
}

fn index(media_type: Option<&str>, child: &str, arch: &str) -> Manifest {
    let mut v = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": child, "digest": d(3), "size": 1,
         "platform": {"architecture": "arm64", "os": "linux"}},
        {"mediaType": child, "digest": d(4), "size": 1,
         "platform": {"architecture": arch, "os": "linux"}}]});
    if let Some(t) = media_type {
        v["mediaType"] = json!(t);
    }
    parse(v)
}

fn stored() -> Vec<(&'static str, Manifest, HandlerKind)> {
    let schema1 = parse(json!({"schemaVersion": 1, "name": "r", "tag": "t",
        "architecture": "amd64", "fsLayers": [], "history": []}));
    vec![
        ("schema1", schema1, HandlerKind::Schema1),
        (
            "schema2",
            image(mt::SCHEMA2, mt::DOCKER_CONFIG),
            HandlerKind::Schema2,
        ),
        (
            "oci",
            image(mt::OCI_MANIFEST, mt::OCI_CONFIG),
            HandlerKind::OciManifest,
        ),
        (
            "list",
            index(Some(mt::MANIFEST_LIST), mt::SCHEMA2, "amd64"),
            HandlerKind::Schema2,
        ),
        (
            "list-noamd64",
            index(Some(mt::MANIFEST_LIST), mt::SCHEMA2, "s390x"),
            HandlerKind::Schema2,
        ),
        (
            "index",
            index(Some(mt::OCI_INDEX), mt::OCI_MANIFEST, "amd64"),
            HandlerKind::OciManifest,
        ),
        (
            "index-noamd64",
            index(Some(mt::OCI_INDEX), mt::OCI_MANIFEST, "s390x"),
            HandlerKind::OciManifest,
        ),
        (
            "index-untyped",
            index(None, mt::OCI_MANIFEST, "amd64"),
            HandlerKind::OciManifest,
        ),
    ]
}

const PODMAN: [&str; 6] = [
    mt::OCI_MANIFEST,
    mt::SCHEMA2,
    mt::SCHEMA1_SIGNED,
    mt::SCHEMA1,
    mt::MANIFEST_LIST,
    mt::OCI_INDEX,
];

fn clients() -> Vec<(&'static str, Accepts)> {
    let a = |lines: &[&str]| Accepts::from_headers(lines);
    vec![
        ("docker-1.9", a(&[])),
        ("schema1-only", a(&[mt::SCHEMA1_SIGNED])),
        (
            "docker-17",
            a(&[
                mt::SCHEMA2,
                mt::MANIFEST_LIST,
                mt::SCHEMA1_SIGNED,
                mt::APPLICATION_JSON,
            ]),
        ),
        ("schema2-only", a(&[mt::SCHEMA2])),
        ("podman", a(&PODMAN)),
        (
            "containerd",
            a(&[&format!(
                "{}, {}, {}, {}, */*",
                mt::SCHEMA2,
                mt::MANIFEST_LIST,
                mt::OCI_MANIFEST,
                mt::OCI_INDEX
            )]),
        ),
        ("oci-only", a(&[mt::OCI_MANIFEST, mt::OCI_INDEX])),
    ]
}

fn policies() -> Vec<(&'static str, Rules)> {
    let r = |schema1, oci, upgrade| Rules {
        schema1,
        oci,
        upgrade,
    };
    use OciMode::*;
    use Schema1Mode::*;
    use UpgradeMode::*;
    vec![
        ("default", r(Convert, Bridge, Upgrade)),
        ("distribution", r(Convert, Refuse, Off)),
        ("reject", r(Reject, Bridge, Upgrade)),
        ("passthrough", r(Passthrough, Bridge, Upgrade)),
        ("force", r(Force, Bridge, Upgrade)),
    ]
}

fn code1(a: ToSchema1) -> &'static str {
    match a {
        ToSchema1::Convert => "1c",
        ToSchema1::Reject => "1r",
        ToSchema1::Passthrough => "1p",
    }
}

fn child_code(c: ChildDecision) -> String {
    match c {
        ChildDecision::ServeAsIs => "=".into(),
        ChildDecision::Schema1(a) => code1(a).into(),
        ChildDecision::DockerTwin => "T".into(),
    }
}

fn code(decision: Decision, child: HandlerKind, accepts: Accepts, rules: Rules) -> String {
    match decision {
        Decision::ServeAsIs => "=".into(),
        Decision::RefuseOci(_) => "R".into(),
        Decision::NoAmd64Entry => "N".into(),
        Decision::Schema1(a) => code1(a).into(),
        Decision::DockerTwin => "T".into(),
        Decision::Upgrade => "U".into(),
        Decision::SelectChild(c) => {
            assert_eq!(c.digest.as_str(), d(4), "the linux/amd64 entry");
            format!("C:{}", child_code(decide_child(child, accepts, rules)))
        }
    }
}

fn render() -> String {
    let mut out = String::new();
    out.push_str(&format!("{:<28}", "stored / client"));
    for (p, _) in policies() {
        out.push_str(&format!(" {p:>14}"));
    }
    out.push('\n');
    for (s, m, child) in stored() {
        for (c, accepts) in clients() {
            out.push_str(&format!("{:<28}", format!("{s} / {c}")));
            for (_, rules) in policies() {
                let tag = code(
                    decide(RequestKind::Tag, accepts, &m, rules),
                    child,
                    accepts,
                    rules,
                );
                let digest = code(
                    decide(RequestKind::Digest, accepts, &m, rules),
                    child,
                    accepts,
                    rules,
                );
                out.push_str(&format!(" {:>14}", format!("{tag}/{digest}")));
            }
            out.push('\n');
        }
    }
    out
}

const TABLE: &str = "\
stored / client                     default   distribution         reject    passthrough          force
schema1 / docker-1.9                    =/=            =/=            =/=            =/=            =/=
schema1 / schema1-only                  =/=            =/=            =/=            =/=            =/=
schema1 / docker-17                     =/=            =/=            =/=            =/=            =/=
schema1 / schema2-only                  U/=            =/=            U/=            U/=            =/=
schema1 / podman                        =/=            =/=            =/=            =/=            =/=
schema1 / containerd                    U/=            =/=            U/=            U/=            =/=
schema1 / oci-only                      =/=            =/=            =/=            =/=            =/=
schema2 / docker-1.9                   1c/=           1c/=           1r/=           1p/=           1c/=
schema2 / schema1-only                 1c/=           1c/=           1r/=           1p/=           1c/=
schema2 / docker-17                     =/=            =/=            =/=            =/=           1c/=
schema2 / schema2-only                  =/=            =/=            =/=            =/=           1c/=
schema2 / podman                        =/=            =/=            =/=            =/=           1c/=
schema2 / containerd                    =/=            =/=            =/=            =/=           1c/=
schema2 / oci-only                     1c/=           1c/=           1r/=           1p/=           1c/=
oci / docker-1.9                       1c/R            R/R           1r/R           1p/R           1c/R
oci / schema1-only                     1c/R            R/R           1r/R           1p/R           1c/R
oci / docker-17                         T/R            R/R            T/R            T/R           1c/R
oci / schema2-only                      T/R            R/R            T/R            T/R           1c/R
oci / podman                            =/=            =/=            =/=            =/=           1c/=
oci / containerd                        =/=            =/=            =/=            =/=           1c/=
oci / oci-only                          =/=            =/=            =/=            =/=           1c/=
list / docker-1.9                    C:1c/=         C:1c/=         C:1r/=         C:1p/=         C:1c/=
list / schema1-only                  C:1c/=         C:1c/=         C:1r/=         C:1p/=         C:1c/=
list / docker-17                        =/=            =/=            =/=            =/=         C:1c/=
list / schema2-only                   C:=/=          C:=/=          C:=/=          C:=/=         C:1c/=
list / podman                           =/=            =/=            =/=            =/=         C:1c/=
list / containerd                       =/=            =/=            =/=            =/=         C:1c/=
list / oci-only                      C:1c/=         C:1c/=         C:1r/=         C:1p/=         C:1c/=
list-noamd64 / docker-1.9               N/=            N/=            N/=            N/=            N/=
list-noamd64 / schema1-only             N/=            N/=            N/=            N/=            N/=
list-noamd64 / docker-17                =/=            =/=            =/=            =/=            N/=
list-noamd64 / schema2-only             N/=            N/=            N/=            N/=            N/=
list-noamd64 / podman                   =/=            =/=            =/=            =/=            N/=
list-noamd64 / containerd               =/=            =/=            =/=            =/=            N/=
list-noamd64 / oci-only                 N/=            N/=            N/=            N/=            N/=
index / docker-1.9                   C:1c/R            R/R         C:1r/R         C:1p/R         C:1c/R
index / schema1-only                 C:1c/R            R/R         C:1r/R         C:1p/R         C:1c/R
index / docker-17                       T/R            R/R            T/R            T/R         C:1c/R
index / schema2-only                  C:T/R            R/R          C:T/R          C:T/R         C:1c/R
index / podman                          =/=            =/=            =/=            =/=         C:1c/=
index / containerd                      =/=            =/=            =/=            =/=         C:1c/=
index / oci-only                        =/=            =/=            =/=            =/=         C:1c/=
index-noamd64 / docker-1.9              N/R            R/R            N/R            N/R            N/R
index-noamd64 / schema1-only            N/R            R/R            N/R            N/R            N/R
index-noamd64 / docker-17               T/R            R/R            T/R            T/R            N/R
index-noamd64 / schema2-only            N/R            R/R            N/R            N/R            N/R
index-noamd64 / podman                  =/=            =/=            =/=            =/=            N/=
index-noamd64 / containerd              =/=            =/=            =/=            =/=            N/=
index-noamd64 / oci-only                =/=            =/=            =/=            =/=            N/=
index-untyped / docker-1.9           C:1c/=            =/=         C:1r/=         C:1p/=         C:1c/=
index-untyped / schema1-only         C:1c/=            =/=         C:1r/=         C:1p/=         C:1c/=
index-untyped / docker-17               T/=            =/=            T/=            T/=         C:1c/=
index-untyped / schema2-only          C:T/=            =/=          C:T/=          C:T/=         C:1c/=
index-untyped / podman                  =/=            =/=            =/=            =/=         C:1c/=
index-untyped / containerd              =/=            =/=            =/=            =/=         C:1c/=
index-untyped / oci-only                =/=            =/=            =/=            =/=         C:1c/=
";

#[test]
fn every_cell_of_the_negotiation_table() {
    let got = render();
    if got != TABLE {
        panic!("negotiation table changed; got:\n{got}");
    }
}

/// With `oci = "refuse"`, `schema1_upgrade = "off"` and `schema1 =
/// "convert"`, regcache answers what distribution 2.8 answers
/// ([`crate::accept::decide`], which carries the quirk-by-quirk tests).
#[test]
fn the_distribution_column_is_distributions_negotiation() {
    use crate::accept::{self, ChildDecision as DChild, Decision as D};
    let rules = Rules {
        schema1: Schema1Mode::Convert,
        oci: OciMode::Refuse,
        upgrade: UpgradeMode::Off,
    };
    for (s, m, child) in stored() {
        for (c, accepts) in clients() {
            for request in [RequestKind::Tag, RequestKind::Digest] {
                let ours = decide(request, accepts, &m, rules);
                let theirs = accept::decide(request, accepts, &m);
                let same = match (&ours, &theirs) {
                    (Decision::ServeAsIs, D::ServeAsIs) => true,
                    (Decision::RefuseOci(a), D::RefuseOci(b)) => a == b,
                    (Decision::NoAmd64Entry, D::NoAmd64Entry) => true,
                    (Decision::Schema1(ToSchema1::Convert), D::ConvertToSchema1) => true,
                    (Decision::SelectChild(a), D::SelectChild(b)) => {
                        a == b
                            && matches!(
                                (
                                    decide_child(child, accepts, rules),
                                    accept::decide_child(child, accepts)
                                ),
                                (ChildDecision::ServeAsIs, DChild::ServeChildAsIs)
                                    | (
                                        ChildDecision::Schema1(ToSchema1::Convert),
                                        DChild::ConvertChild
                                    )
                            )
                    }
                    _ => false,
                };
                assert!(same, "{s} / {c} / {request:?}: {ours:?} vs {theirs:?}");
            }
        }
    }
}

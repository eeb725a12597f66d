//! The operator subcommands: `regcache policy explain` and `regcache mappings export`.

use std::fmt::Write as _;
use std::path::Path;

use regcache_store::{Direction, MappingLog, MappingRecord};

use crate::config::Settings;

/// Where the store lives under the data directory.
pub fn store_root(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("cache")
}

/// `regcache policy explain REPO [--upstream NAME] [--user NAME] [--action A]`:
/// the policy rule that applies and, with `--user` (or `--action`), the
/// access decision for that user (`anonymous`: a client without
/// credentials) and the access rule that made it. `REPO` `_catalog` means
/// the catalog.
pub fn explain(
    settings: &Settings,
    repository: &str,
    upstream: Option<&str>,
    user: Option<&str>,
    action: Option<&str>,
) -> Result<String, String> {
    use crate::auth::access::{Action, Principal, Resource};
    let up = upstream.unwrap_or(&settings.default_upstream().name);
    let mut out = settings.policies.explain(up, repository);
    if user.is_none() && action.is_none() {
        return Ok(out);
    }
    let action = match action {
        None => Action::Pull,
        Some(a) => Action::parse(a)
            .ok_or_else(|| format!("--action {a:?}: expected pull, push or delete"))?,
    };
    let principal = match user {
        None | Some(crate::auth::access::ANONYMOUS) => Principal::Anonymous,
        Some(u) => Principal::User(u.to_owned()),
    };
    let resource = if repository == "_catalog" {
        Resource::Catalog
    } else {
        Resource::Repository(repository)
    };
    if settings.auth.mode == crate::config::AuthMode::None {
        out.push_str(&format!(
            "access: client authentication is off ([auth] mode = \"none\"): every client may {} it\n",
            action.as_str()
        ));
        return Ok(out);
    }
    if settings.auth.mode == crate::config::AuthMode::Upstream {
        out.push_str(&format!(
            "access: the upstream decides ([auth] mode = \"upstream\"): regcache asks it with the client's own credentials before serving anything cached, and remembers a yes for {} s\n",
            settings.auth.upstream_decision_ttl.as_secs()
        ));
        return Ok(out);
    }
    out.push_str(
        &settings
            .auth
            .rules
            .explain(&principal, up, resource, action),
    );
    Ok(out)
}

/// The mapping records, read without disturbing a running server.
pub fn mappings(settings: &Settings) -> Result<Vec<MappingRecord>, String> {
    MappingLog::read(MappingLog::path_in(store_root(&settings.data_dir))).map_err(|e| e.to_string())
}

/// CSV, one row per generated manifest: `repository,tag,direction,source_digest,digest`
/// (`direction` is `to-schema1`, `oci-to-docker` or `schema1-to-schema2`).
pub fn to_csv(records: &[MappingRecord]) -> String {
    let mut out = String::from("repository,tag,direction,source_digest,digest\n");
    let mut seen = std::collections::HashSet::new();
    for r in records.iter().filter(|r| is_manifest(r)) {
        // The same row reached through two upstream names is one row here.
        if !seen.insert((&r.repository, &r.tag, &r.digest, &r.source_digest)) {
            continue;
        }
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            csv_field(&r.repository),
            csv_field(&r.tag),
            r.direction,
            r.source_digest,
            r.digest
        );
    }
    out
}

/// CSV with the columns of Red Hat's Schema 1 → Schema 2 mapping file,
/// `repository,tag,schema1_digest,schema2_digest`: the rows with a Schema 1
/// side (renderings for old clients, and Schema 1 images upgraded), whichever
/// way they were generated.
pub fn to_redhat_csv(records: &[MappingRecord]) -> String {
    let mut out = String::from("repository,tag,schema1_digest,schema2_digest\n");
    let mut seen = std::collections::HashSet::new();
    for r in records.iter().filter(|r| is_manifest(r)) {
        let (schema1, schema2) = match r.direction {
            Direction::ToSchema1 => (&r.digest, &r.source_digest),
            Direction::Schema1ToSchema2 => (&r.source_digest, &r.digest),
            Direction::OciToDocker => continue,
        };
        if !seen.insert((&r.repository, &r.tag, schema1, schema2)) {
            continue;
        }
        let _ = writeln!(
            out,
            "{},{},{},{}",
            csv_field(&r.repository),
            csv_field(&r.tag),
            schema1,
            schema2
        );
    }
    out
}

/// The log also records the config blobs a Schema 1 upgrade generates (so
/// they can be rebuilt); the CSV exports list manifests only.
fn is_manifest(r: &MappingRecord) -> bool {
    r.media_type != regcache_formats::media_type::DOCKER_CONFIG
}

/// Names and tags cannot hold commas or quotes (their grammars forbid them),
/// but quote defensively anyway.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Every field, for the admin endpoint and `--format json`.
pub fn to_json(records: &[MappingRecord]) -> String {
    let mut s = serde_json::to_string_pretty(&serde_json::json!({ "mappings": records }))
        .unwrap_or_else(|_| "{\"mappings\":[]}".into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use regcache_formats::Digest;

    #[test]
    fn explain_shows_the_access_decision_for_a_user() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("htpasswd");
        std::fs::write(&pw, format!("alice:{}\n", bcrypt::hash("x", 4).unwrap())).unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!(
                "[upstream]\nname = \"hub\"\nurl = \"http://127.0.0.1:9\"\n\
                 [auth]\nmode = \"htpasswd\"\nhtpasswd_file = {:?}\n\
                 [auth.groups]\ndevs = [\"alice\"]\n\
                 [[access]]\ngroups = [\"devs\"]\nrepositories = [\"team/**\"]\nactions = [\"pull\"]\n",
                pw.display().to_string()
            ),
        )
        .unwrap();
        let env = std::collections::BTreeMap::new();
        let s = crate::config::Config::load(Some(&file), &env, &Default::default()).unwrap();
        let text = explain(&s, "team/a/b", None, Some("alice"), None).unwrap();
        assert!(
            text.contains(
                "access: user \"alice\" pull repository \"team/a/b\" via upstream \"hub\""
            ) && text.contains("allowed by access rule #1"),
            "{text}"
        );
        let text = explain(&s, "team/a", None, Some("alice"), Some("push")).unwrap();
        assert!(
            text.contains("denied") && text.contains("rule #1: does not list this action"),
            "{text}"
        );
        let text = explain(&s, "team/a", None, Some("anonymous"), None).unwrap();
        assert!(
            text.contains("access: anonymous pull") && text.contains("denied"),
            "{text}"
        );
        let text = explain(&s, "_catalog", None, Some("alice"), None).unwrap();
        assert!(
            text.contains("the catalog needs the pattern \"**\""),
            "{text}"
        );
        assert!(explain(&s, "team/a", None, Some("alice"), Some("write")).is_err());
        let upstream_mode = dir.path().join("u.toml");
        std::fs::write(
            &upstream_mode,
            "[upstream]\nname = \"hub\"\nurl = \"http://127.0.0.1:9\"\n[auth]\nmode = \"upstream\"\nupstream_decision_ttl_secs = 30\n",
        )
        .unwrap();
        let s =
            crate::config::Config::load(Some(&upstream_mode), &env, &Default::default()).unwrap();
        let text = explain(&s, "team/a", None, Some("alice"), None).unwrap();
        assert!(
            text.contains("the upstream decides") && text.contains("for 30 s"),
            "{text}"
        );
        // Without --user/--action: the policy explanation only.
        assert!(
            !explain(&s, "team/a", None, None, None)
                .unwrap()
                .contains("access:")
        );
    }

    fn record(direction: Direction) -> MappingRecord {
        MappingRecord {
            upstream: "docker.io".into(),
            repository: "library/app".into(),
            tag: "1.0".into(),
            direction,
            digest: Digest::sha256_of(b"1"),
            media_type: String::new(),
            source_digest: Digest::sha256_of(b"2"),
            source_media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
            first_seen_unix: 1,
        }
    }

    #[test]
    fn csv_lists_every_direction_once_per_row() {
        let r = record(Direction::OciToDocker);
        let csv = to_csv(&[
            r.clone(),
            MappingRecord {
                upstream: "other".into(),
                ..r.clone()
            },
        ]);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("repository,tag,direction,source_digest,digest")
        );
        assert_eq!(
            lines.next().unwrap(),
            format!(
                "library/app,1.0,oci-to-docker,{},{}",
                r.source_digest, r.digest
            )
        );
        assert_eq!(lines.next(), None, "{csv}");
        assert!(to_json(&[r]).contains("\"direction\": \"oci-to-docker\""));
    }

    #[test]
    fn redhat_csv_has_red_hat_columns_for_rows_with_a_schema1_side() {
        let down = record(Direction::ToSchema1);
        let up = MappingRecord {
            tag: "old".into(),
            ..record(Direction::Schema1ToSchema2)
        };
        let csv = to_redhat_csv(&[
            down.clone(),
            MappingRecord {
                upstream: "other".into(),
                ..down.clone()
            },
            record(Direction::OciToDocker),
            up.clone(),
        ]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines,
            vec![
                "repository,tag,schema1_digest,schema2_digest".to_owned(),
                format!("library/app,1.0,{},{}", down.digest, down.source_digest),
                format!("library/app,old,{},{}", up.source_digest, up.digest),
            ]
        );
        assert!(to_json(&[down]).contains("\"first_seen_unix\": 1"));
    }

    #[test]
    fn upgraded_config_rows_stay_out_of_the_csv_exports() {
        let manifest = record(Direction::Schema1ToSchema2);
        let config = MappingRecord {
            digest: Digest::sha256_of(b"config"),
            media_type: regcache_formats::media_type::DOCKER_CONFIG.into(),
            ..manifest.clone()
        };
        let both = [manifest.clone(), config.clone()];
        let csv = to_csv(&both);
        assert_eq!(csv.lines().count(), 2, "{csv}");
        assert!(csv.contains(&format!(
            "schema1-to-schema2,{},{}",
            manifest.source_digest, manifest.digest
        )));
        assert!(!csv.contains(config.digest.as_str()));
        let redhat = to_redhat_csv(&both);
        assert_eq!(redhat.lines().count(), 2, "{redhat}");
        assert!(!redhat.contains(config.digest.as_str()));
        // The JSON export keeps every field of every row.
        assert!(to_json(&both).contains(config.digest.as_str()));
    }
}

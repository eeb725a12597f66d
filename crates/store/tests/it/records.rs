//! Tag index and Schema 1 mapping log.

use std::io::Write;

use regcache_store::{MappingLog, MappingRecord, TagIndex, TagRecord};

use crate::common::*;

fn record(seed: u64) -> TagRecord {
    TagRecord {
        digest: digest(&blob(seed, 10)),
        media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
        size: 500 + seed,
        fetched_at_unix: 1_700_000_000 + seed,
    }
}

#[test]
fn tag_index_get_put_remove_list_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tags.jsonl");
    {
        let tags = TagIndex::open(&path).unwrap();
        assert!(tags.get("hub", "library/alpine", "latest").is_none());
        tags.put("hub", "library/alpine", "latest", record(1))
            .unwrap();
        tags.put("hub", "library/alpine", "3.20", record(2))
            .unwrap();
        tags.put("hub", "library/alpine", "latest", record(3))
            .unwrap(); // moved tag
        tags.put("hub", "library/busybox", "1", record(4)).unwrap();
        tags.put("quay", "library/alpine", "latest", record(5))
            .unwrap();
        tags.put("hub", "library/alpine", "gone", record(6))
            .unwrap();
        assert_eq!(
            tags.remove("hub", "library/alpine", "gone").unwrap(),
            Some(record(6))
        );
        assert_eq!(tags.remove("hub", "library/alpine", "gone").unwrap(), None);
        assert_eq!(tags.get("hub", "library/alpine", "latest"), Some(record(3)));
        assert_eq!(tags.len(), 4);
    }
    // A torn last line from a crash mid-append is ignored.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(br#"{"op":"put","upstream":"hub","repos"#)
        .unwrap();
    drop(f);

    let tags = TagIndex::open(&path).unwrap();
    assert_eq!(tags.len(), 4);
    assert_eq!(tags.get("hub", "library/alpine", "latest"), Some(record(3)));
    assert_eq!(
        tags.get("quay", "library/alpine", "latest"),
        Some(record(5))
    );
    let listed: Vec<String> = tags
        .list("hub", "library/alpine")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(listed, vec!["3.20", "latest"]);
    assert_eq!(
        tags.repositories("hub"),
        vec!["library/alpine", "library/busybox"]
    );
    assert!(tags.list("hub", "nope").is_empty());
    // Compacted at open: one line per live tag, and appends land on a fresh line.
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);
    tags.put("hub", "library/alpine", "edge", record(7))
        .unwrap();
    drop(tags);
    let tags = TagIndex::open(&path).unwrap();
    assert_eq!(tags.get("hub", "library/alpine", "edge"), Some(record(7)));
}

#[test]
fn tag_index_compacts_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tags.jsonl");
    let tags = TagIndex::open(&path).unwrap();
    for i in 0..3000u64 {
        tags.put("hub", "r", "t", record(i)).unwrap();
    }
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert!(lines <= 1024 + 3, "log kept growing: {lines} lines");
    drop(tags);
    assert_eq!(
        TagIndex::open(&path).unwrap().get("hub", "r", "t"),
        Some(record(2999))
    );
}

fn mapping(tag: &str, seed: u64) -> MappingRecord {
    MappingRecord {
        upstream: "hub".into(),
        repository: "library/alpine".into(),
        tag: tag.into(),
        direction: regcache_store::Direction::ToSchema1,
        digest: digest(&blob(seed, 8)),
        media_type: "application/vnd.docker.distribution.manifest.v1+json".into(),
        source_digest: digest(&blob(seed + 100, 8)),
        source_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        first_seen_unix: 1_700_000_000 + seed,
    }
}

#[test]
fn mapping_log_dedups_survives_restart_and_ignores_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema1-map.jsonl");
    {
        let log = MappingLog::open(&path).unwrap();
        assert!(log.append(mapping("latest", 1)).unwrap());
        assert!(log.append(mapping("3.20", 2)).unwrap());
        let mut again = mapping("latest", 1);
        again.first_seen_unix += 999;
        assert!(
            !log.append(again).unwrap(),
            "same key is not recorded twice"
        );
        assert_eq!(log.len(), 2);
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(br#"{"upstream":"hub","repo"#).unwrap();
    drop(f);
    let log = MappingLog::open(&path).unwrap();
    assert_eq!(log.list(), vec![mapping("latest", 1), mapping("3.20", 2)]);
    let m = mapping("3.20", 2);
    assert_eq!(
        log.find("hub", "library/alpine", &m.digest),
        Some(m.clone())
    );
    assert_eq!(log.find("hub", "other", &m.digest), None);
    assert!(log.append(mapping("edge", 3)).unwrap());
    drop(log);
    assert_eq!(MappingLog::open(&path).unwrap().len(), 3);
}

/// Lines written before generated manifests had a direction (Schema 1
/// renderings only, `schema1_digest`) still load, as Schema 1 renderings.
#[test]
fn mapping_log_reads_lines_from_before_directions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema1-map.jsonl");
    let (s1, s2) = (digest(&blob(1, 8)), digest(&blob(2, 8)));
    std::fs::write(
        &path,
        format!(
            "{{\"upstream\":\"hub\",\"repository\":\"r\",\"tag\":\"t\",\"schema1_digest\":\"{s1}\",\"source_digest\":\"{s2}\",\"source_media_type\":\"application/vnd.docker.distribution.manifest.v2+json\",\"first_seen_unix\":1}}\n"
        ),
    )
    .unwrap();
    let log = MappingLog::open(&path).unwrap();
    let found = log.find("hub", "r", &s1).unwrap();
    assert_eq!(found.direction, regcache_store::Direction::ToSchema1);
    assert_eq!(found.source_digest, s2);
    let line = serde_json::to_string(&found).unwrap();
    assert!(line.contains("\"direction\":\"to-schema1\""), "{line}");
}

#[test]
fn the_tag_generation_changes_with_every_change_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let tags = TagIndex::open(dir.path().join("tags.jsonl")).unwrap();
    let g0 = tags.generation();
    tags.put("hub", "a", "v1", record(1)).unwrap();
    let g1 = tags.generation();
    assert_ne!(g1, g0, "a put changes it");
    // The same record again is not a change.
    tags.put("hub", "a", "v1", record(1)).unwrap();
    assert_eq!(tags.generation(), g1);
    tags.get("hub", "a", "v1");
    assert_eq!(tags.generation(), g1, "reads leave it alone");
    tags.put("hub", "a", "v1", record(2)).unwrap();
    let g2 = tags.generation();
    assert_ne!(g2, g1, "a moved tag changes it");
    // Removing what is not there is not a change; removing a tag is.
    tags.remove("hub", "a", "nope").unwrap();
    assert_eq!(tags.generation(), g2);
    tags.remove("hub", "a", "v1").unwrap();
    assert_ne!(tags.generation(), g2);
}

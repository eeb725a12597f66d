//! Tests of the admin page's HTML.

use super::*;
use crate::cockpit::errors::ErrorRecord;
use crate::cockpit::stats::FillRow;
use crate::cockpit::top::Row;

fn hostile_stats() -> Stats {
    let evil = "<script>alert(1)</script>";
    let row = |name: &str| Row {
        name: name.to_owned(),
        repository: Some(format!("repo\"{evil}")),
        requests: 3,
        bytes: 2048,
    };
    let mut s = Stats::default();
    s.top_repositories.by_requests = vec![row(evil)];
    s.top_repositories.by_bytes = vec![row(evil)];
    s.top_blobs.by_requests = vec![row(&format!("sha256:{evil}"))];
    s.top_blobs.by_bytes = vec![row(&format!("sha256:{evil}"))];
    s.fills = vec![FillRow {
        digest: format!("sha256:{evil}"),
        repository: Some(evil.into()),
        bytes: 5,
        len: Some(10),
        ..FillRow::default()
    }];
    s.recent_errors = vec![ErrorRecord {
        t: 0,
        route: evil.into(),
        repository: Some("a'b\"c".into()),
        status: 404,
        code: "MANIFEST_UNKNOWN".into(),
        whose: "client".into(),
        message: format!("manifest unknown: tag {evil}"),
    }];
    s.upstreams = vec![super::super::stats::UpstreamRow {
        name: evil.into(),
        state: "open".into(),
        last_failure: evil.into(),
        ..Default::default()
    }];
    s.setup.policies = vec![super::super::setup::PolicySetup {
        repositories: vec![evil.into()],
        upstreams: None,
        sets: vec![("schema1".into(), evil.into())],
    }];
    s
}

#[test]
fn client_supplied_strings_are_escaped_everywhere() {
    let page = render(&hostile_stats());
    // The page's own script is the only one.
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(!page.contains("alert(1)</"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("a'b\"c"), "quotes escaped in attributes too");
}

#[test]
fn figures_carry_their_exact_values() {
    let mut s = Stats::default();
    s.lookups.hits = 1234567;
    s.lookups.misses = 3;
    s.served_bytes.cache = 5 << 20;
    let page = render(&s);
    assert!(page.contains("id=\"hits\" data-metric=\"hits\" data-value=\"1234567\">1,234,567<"));
    assert!(page.contains(
        "id=\"served_cache\" data-metric=\"served_cache\" data-value=\"5242880\">5.0 MiB<"
    ));
    assert!(page.contains("name=\"viewport\""));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing external"
    );
}

#[test]
fn sparkline_breaks_at_intervals_without_lookups() {
    let p = |r: Option<f64>| Point {
        t: 0,
        hits: 0,
        misses: 0,
        ratio: r,
    };
    let mut o = String::new();
    sparkline(
        &mut o,
        &[p(Some(1.0)), p(Some(0.5)), p(None), p(Some(0.0))],
        10,
    );
    assert_eq!(o.matches("<polyline").count(), 2, "{o}");
    assert!(o.contains("data-points=\"3\""));
    let mut o = String::new();
    sparkline(&mut o, &[], 10);
    assert!(o.contains("no lookups yet") && !o.contains("<polyline"));
}

#[test]
fn formats() {
    assert_eq!(count(0), "0");
    assert_eq!(count(1000), "1,000");
    assert_eq!(count(1234567), "1,234,567");
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(300 << 20), "300 MiB");
    assert_eq!(bytes(10 << 30), "10.0 GiB");
    assert_eq!(duration(3725), "1h 2m");
    assert_eq!(clock(86400 + 3661), "01:01:01");
    assert_eq!(
        short_digest("sha256:0123456789abcdef0123"),
        "sha256:0123456789ab…"
    );
}

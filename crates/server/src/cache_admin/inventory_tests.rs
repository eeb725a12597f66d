//! Inventory and purge planning over a small fixture.

use regcache_store::TagRecord;

use super::*;
use crate::cache_admin::imageref::{UpstreamNames, parse_and_resolve};

fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let d = |b: &[u8]| Digest::sha256_of(b).to_string();
    let layers: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":{},"digest":"{}"}}"#,
                l.len(),
                d(l)
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":{},"digest":"{}"}},"layers":[{}]}}"#,
        config.len(),
        d(config),
        layers.join(",")
    )
    .into_bytes()
}

struct Fixture {
    files: HashMap<Digest, Vec<u8>>,
    tags: Vec<TagEntry>,
}

impl Fixture {
    fn add(&mut self, bytes: &[u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        self.files.insert(d.clone(), bytes.to_vec());
        d
    }
    fn tag(&mut self, repo: &str, tag: &str, m: &[u8]) {
        let digest = self.add(m);
        self.tags.push(TagEntry {
            upstream: "reg".into(),
            repository: repo.into(),
            tag: tag.into(),
            record: TagRecord {
                digest,
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: m.len() as u64,
                fetched_at_unix: 0,
            },
        });
    }
    fn graph(&self, used: u64) -> Graph {
        let entries = self
            .files
            .iter()
            .map(|(d, b)| EntryInfo {
                digest: d.clone(),
                size: b.len() as u64,
                last_access_unix_nanos: used,
            })
            .collect();
        let files = self.files.clone();
        Graph::build(self.tags.clone(), entries, &mut |d| files.get(d).cloned())
    }
}

fn target(s: &str) -> (String, Resolved) {
    let ups = [UpstreamNames {
        name: "reg".into(),
        host: "reg".into(),
        aliases: vec![],
        docker_hub: false,
    }];
    (s.to_owned(), parse_and_resolve(s, &ups, 0, None).unwrap())
}

#[test]
fn a_purge_keeps_what_other_tags_share() {
    let mut f = Fixture {
        files: HashMap::new(),
        tags: Vec::new(),
    };
    let (base, a_own, b_own, ca, cb) = (
        b"base".as_slice(),
        b"a-layer".as_slice(),
        b"b-layer".as_slice(),
        b"{\"a\":1}".as_slice(),
        b"{\"b\":1}".as_slice(),
    );
    for blob in [base, a_own, b_own, ca, cb] {
        f.add(blob);
    }
    f.tag("a", "v1", &manifest(ca, &[base, a_own]));
    f.tag("b", "v1", &manifest(cb, &[base, b_own]));
    let mut g = f.graph(5);
    let inv = g.inventory();
    assert_eq!(inv.images.len(), 2);
    assert_eq!(inv.entries, 7);
    assert_eq!(inv.images[0].cached, 4);
    let shared = inv
        .blobs
        .iter()
        .find(|b| b.digest == Digest::sha256_of(base))
        .unwrap();
    assert_eq!(shared.used_by, ["reg/a:v1", "reg/b:v1"]);

    let plan = g.plan(&[target("a")], None, 0, &mut |_| None).unwrap();
    assert_eq!(plan.tags.len(), 1);
    let removed: BTreeSet<Digest> = plan.remove.iter().map(|e| e.digest.clone()).collect();
    assert_eq!(removed.len(), 3, "{plan:?}");
    assert!(removed.contains(&Digest::sha256_of(a_own)));
    assert!(removed.contains(&Digest::sha256_of(ca)));
    assert_eq!(plan.remove[0].kind, "manifest");
    assert_eq!(plan.kept_shared.len(), 1);
    assert_eq!(plan.kept_shared[0].digest, Digest::sha256_of(base));

    let e = g.plan(&[target("c")], None, 0, &mut |_| None).unwrap_err();
    assert!(
        e.to_string()
            .contains("nothing of that repository is cached"),
        "{e}"
    );
    let e = g
        .plan(&[target("a:v2")], None, 0, &mut |_| None)
        .unwrap_err();
    assert!(e.to_string().contains("no such tag"), "{e}");

    // Everything was used at 5 ns: older than 1 ns before 10 ns is all.
    let plan = g
        .plan(&[], Some(Duration::from_nanos(1)), 10, &mut |_| None)
        .unwrap();
    assert_eq!((plan.tags.len(), plan.remove.len()), (2, 7));
    let plan = g
        .plan(&[], Some(Duration::from_nanos(1)), 6, &mut |_| None)
        .unwrap();
    assert!(plan.tags.is_empty() && plan.remove.is_empty());
}

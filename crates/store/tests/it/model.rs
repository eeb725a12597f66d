//! Reference-model test (STYLE habit 12): random operation sequences against
//! the store and against a plain model (set of digests in LRU order), with
//! "crash" steps that drop a write handle half-way and reopen steps that
//! restart the store over the same directory with a stale temp file.
//!
//! The memory tier is off and every access is persisted, which makes disk
//! eviction fully deterministic, so the model predicts the exact LRU order
//! (including after a restart) and the exact bytes used.

use bytes::Bytes;
use futures_util::StreamExt;
use proptest::prelude::*;
use regcache_formats::Digest;
use regcache_store::Begin;

use crate::common::*;

const BUDGET: u64 = 1000;
/// Sizes of the content pool; 0 (the empty blob) and some that force eviction.
const SIZES: [usize; 7] = [0, 1, 50, 200, 333, 600, 1001];

#[derive(Debug, Clone)]
enum Op {
    Put(usize),
    Fill(usize),
    /// Lead a fill and drop the writer after this many percent.
    Crash(usize, u8),
    Get(usize),
    Remove(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0..SIZES.len();
    prop_oneof![
        3 => i.clone().prop_map(Op::Put),
        3 => i.clone().prop_map(Op::Fill),
        2 => (i.clone(), 0u8..100).prop_map(|(i, p)| Op::Crash(i, p)),
        4 => i.clone().prop_map(Op::Get),
        1 => i.prop_map(Op::Remove),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default, Debug)]
struct Model {
    /// Cached items, least recently accessed first.
    order: Vec<usize>,
}

impl Model {
    fn present(&self, i: usize) -> bool {
        self.order.contains(&i)
    }
    fn used(&self) -> u64 {
        self.order.iter().map(|&i| SIZES[i] as u64).sum()
    }
    fn access(&mut self, i: usize) {
        if let Some(pos) = self.order.iter().position(|&x| x == i) {
            self.order.remove(pos);
            self.order.push(i);
        }
    }
    fn insert(&mut self, i: usize) {
        if self.present(i) {
            return self.access(i);
        }
        let size = SIZES[i] as u64;
        if size > BUDGET {
            return;
        }
        while self.used() + size > BUDGET {
            self.order.remove(0);
        }
        self.order.push(i);
    }
    fn reserve(&mut self, size: u64) {
        if size == 0 || size > BUDGET {
            return;
        }
        while self.used() + size > BUDGET {
            self.order.remove(0);
        }
    }
    fn remove(&mut self, i: usize) -> bool {
        let had = self.present(i);
        self.order.retain(|&x| x != i);
        had
    }
}

struct Pool {
    content: Vec<Bytes>,
    digests: Vec<Digest>,
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let config = disk_only(dir.path(), BUDGET).read_chunk_bytes(64);
    let content: Vec<Bytes> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| blob(7000 + i as u64, n))
        .collect();
    let pool = Pool {
        digests: content.iter().map(|b| digest(b)).collect(),
        content,
    };
    let mut model = Model::default();
    let mut store = Some(open(config.clone()).await);

    for op in ops {
        let s = store.as_ref().unwrap();
        match op {
            Op::Put(i) => {
                s.put_bytes(&pool.digests[i], pool.content[i].clone())
                    .await
                    .unwrap();
                model.insert(i);
            }
            Op::Fill(i) => match s
                .begin_fill(&pool.digests[i], Some(SIZES[i] as u64))
                .await
                .unwrap()
            {
                Begin::Leader(mut w) => {
                    assert!(!model.present(i), "led a fill for cached {i}");
                    for chunk in pool.content[i].chunks(97) {
                        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
                    }
                    w.commit().await.unwrap();
                    model.insert(i);
                }
                Begin::Follower(r) => {
                    assert!(model.present(i), "followed a fill for absent {i}");
                    assert_eq!(collect(r).await.unwrap(), pool.content[i]);
                    model.access(i);
                }
            },
            Op::Crash(i, percent) => match s.begin_fill(&pool.digests[i], None).await.unwrap() {
                Begin::Leader(mut w) => {
                    assert!(!model.present(i));
                    let cut = SIZES[i] * percent as usize / 100;
                    // A fill reserves its bytes as they arrive: the budget
                    // counts fills in flight, so older entries make room
                    // even if the fill then fails.
                    model.reserve(cut as u64);
                    let reader = w.subscribe();
                    if cut > 0 {
                        w.write(pool.content[i].slice(..cut)).await.unwrap();
                    }
                    drop(w);
                    assert!(collect(reader).await.is_err());
                }
                Begin::Follower(mut r) => {
                    assert!(model.present(i));
                    // A client that reads a little and hangs up.
                    let _ = r.next().await;
                    drop(r);
                    model.access(i);
                }
            },
            Op::Get(i) => {
                let got = get_bytes(s, &pool.digests[i]).await;
                if model.present(i) {
                    assert_eq!(got.as_deref(), Some(&pool.content[i][..]));
                    model.access(i);
                } else {
                    assert_eq!(got, None);
                }
            }
            Op::Remove(i) => {
                assert_eq!(s.remove(&pool.digests[i]).await.unwrap(), model.remove(i));
            }
            Op::Reopen => {
                drop(store.take());
                std::fs::write(dir.path().join("v1/tmp/crashed.part"), b"half a layer").unwrap();
                store = Some(open(config.clone()).await);
                assert_eq!(temp_files(dir.path()), 0);
            }
        }
        let s = store.as_ref().unwrap();
        let expected: Vec<Digest> = model
            .order
            .iter()
            .map(|&i| pool.digests[i].clone())
            .collect();
        let actual: Vec<Digest> = s.disk().lru_order().into_iter().map(|(d, _)| d).collect();
        assert_eq!(actual, expected, "LRU order after {op:?}");
        let stats = s.stats().disk;
        assert_eq!(stats.bytes_used, model.used(), "after {op:?}");
        assert!(stats.bytes_used <= BUDGET);
        assert_eq!(temp_files(dir.path()), 0, "temp file left after {op:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(ops));
    }
}

//! A blob fill is shared by digest, but its outcome belongs to the route it
//! was started through (issue 10): an upstream or a repository that lacks the
//! blob must not fail a GET through one that has it.
//!
//! Two docker-registry 2.8 instances, each behind a pass-through
//! [`FaultProxy`], are the upstreams `a.example` and `b.example` of one
//! regcache (routed by path prefix). Only `b.example`'s `fill/data` holds the
//! test blobs; `a.example`'s `fill/data` and `b.example`'s `fill/other` exist
//! (each with an unrelated blob) but lack them, so distribution answers 404
//! `BLOB_UNKNOWN` there. The proxy in front of the route without the blob
//! stalls its blob GETs, so that a fill started through it is still running
//! when GETs through the other route arrive and join it.
//!
//! * 20 rounds, each on a fresh (cold) digest, of concurrent GETs through
//!   both routes: every GET through the route with the blob gets 200 and
//!   exactly the pushed bytes; every GET through the other gets 404
//!   `BLOB_UNKNOWN` (or, once the blob is cached, the right bytes: the cache
//!   is content-addressed).
//! * 20 sequential pairs (the stall lifted): a GET through the route without
//!   the blob (404), then at once a GET through the route with it (200, right
//!   bytes), well inside the 30 s a failure used to be remembered.
//! * Both, across two upstreams and across two repositories of one upstream.
//!
//! Every round runs; the failures are reported together, with how many
//! rounds failed.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use regcache_tests::image::random_bytes;
use regcache_tests::{
    Fault, FaultProxy, Fetched, Regcache, RegcacheOptions, RegistryClient, Target,
};

use crate::support::{ProxiedRegistry, assert_error};

const ROUNDS: usize = 20;
/// Size of the smallest and (at least) the largest test blob.
const MIN_BLOB: usize = 512 << 10;
const MAX_BLOB: usize = MIN_BLOB + 2 * ROUNDS * ((8 << 10) + 1);
/// Concurrent GETs through each route in a round.
const PER_ROUTE: usize = 4;
/// How long the route without the blob takes to answer a blob GET: the
/// window in which GETs through the other route join its fill.
const STALL: Duration = Duration::from_millis(250);
/// In "lacking route first" rounds, how long after the GETs through the route
/// without the blob those through the route with it start (well inside
/// [`STALL`]).
const HEAD_START: Duration = Duration::from_millis(60);

/// A blob as pushed.
struct Blob {
    digest: String,
    bytes: Bytes,
}

/// Upstreams `a.example` (without the blobs) and `b.example` (with them in
/// `fill/data`), and one regcache in front of both.
struct Fixture {
    a: ProxiedRegistry,
    b: ProxiedRegistry,
    regcache: Regcache,
    /// `2 * ROUNDS` blobs in `b.example`'s `fill/data` only: the first
    /// `ROUNDS` for the concurrent rounds, the rest for the sequential pairs.
    blobs: Vec<Blob>,
}

impl Fixture {
    async fn start(seed: u64) -> Fixture {
        let a = ProxiedRegistry::start();
        let b = ProxiedRegistry::start();
        // The repositories without the blobs exist, so that their 404 is
        // about the blob, not the name.
        a.direct()
            .push_blob("fill/data", Bytes::from(random_bytes(seed, 1000)))
            .await;
        b.direct()
            .push_blob("fill/other", Bytes::from(random_bytes(seed + 1, 1000)))
            .await;
        // Distinct blobs of 512 KiB to 820 KiB (a fill takes a moment, the
        // rounds stay quick): one random buffer, each blob a prefix of it
        // that starts with its own number. Pushed a few at a time.
        let base = random_bytes(seed + 2, MAX_BLOB);
        let blobs: Vec<Bytes> = (0..2 * ROUNDS)
            .map(|i| {
                let mut bytes = base[..MIN_BLOB + i * (8 << 10) + i].to_vec();
                bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
                Bytes::from(bytes)
            })
            .collect();
        let b_client = b.direct();
        let mut pushed = Vec::new();
        for chunk in blobs.chunks(4) {
            let pushes = chunk
                .iter()
                .map(|bytes| b_client.push_blob("fill/data", bytes.clone()));
            pushed.extend(futures_util::future::join_all(pushes).await);
        }
        let blobs = pushed
            .into_iter()
            .zip(blobs)
            .map(|(digest, bytes)| Blob { digest, bytes })
            .collect();
        let upstreams = format!(
            "[[upstream]]\nname = \"a.example\"\nurl = \"{a}\"\n\n\
             [[upstream]]\nname = \"b.example\"\nurl = \"{b}\"\n",
            a = a.proxy.url(),
            b = b.proxy.url(),
        );
        let regcache = Regcache::start(RegcacheOptions::with_upstreams_toml(upstreams));
        Fixture {
            a,
            b,
            regcache,
            blobs,
        }
    }

    fn client(&self) -> RegistryClient {
        RegistryClient::new(self.regcache.url())
    }
}

/// Two spellings of a blob request: through a route that lacks the blob and
/// through one that has it (`/v2/<prefix>/<repo>` each).
#[derive(Clone, Copy)]
struct Routes {
    lacking: &'static str,
    having: &'static str,
}

const ACROSS_UPSTREAMS: Routes = Routes {
    lacking: "/v2/a.example/fill/data",
    having: "/v2/b.example/fill/data",
};

const ACROSS_REPOSITORIES: Routes = Routes {
    lacking: "/v2/b.example/fill/other",
    having: "/v2/b.example/fill/data",
};

/// What is wrong with a GET through the route that has `blob`, if anything.
fn wrong_having(path: &str, blob: &Blob, got: &Fetched) -> Option<String> {
    if got.status == 200
        && got.body == blob.bytes
        && got.header("docker-content-digest") == Some(blob.digest.as_str())
    {
        return None;
    }
    Some(format!(
        "GET {path}: want 200 with the {} pushed bytes, got {} with {} bytes{} \
         (Docker-Content-Digest {:?}){}",
        blob.bytes.len(),
        got.status,
        got.body.len(),
        if got.status == 200 && got.body != blob.bytes {
            ", wrong ones"
        } else {
            ""
        },
        got.header("docker-content-digest"),
        short_body(got)
    ))
}

/// What is wrong with a GET through the route that lacks `blob`: 404
/// `BLOB_UNKNOWN` is right, and so is the blob itself when
/// `cached_allowed` (a content-addressed cache may serve it once filled
/// through the other route).
fn wrong_lacking(path: &str, blob: &Blob, got: &Fetched, cached_allowed: bool) -> Option<String> {
    if cached_allowed && got.status == 200 && got.body == blob.bytes {
        return None;
    }
    let checked = std::panic::catch_unwind(|| {
        assert_error(&format!("GET {path}"), got, 404, "BLOB_UNKNOWN");
    });
    checked.err().map(|_| {
        format!(
            "GET {path}: want 404 BLOB_UNKNOWN{}, got {} with {} bytes{}",
            if cached_allowed { " or the blob" } else { "" },
            got.status,
            got.body.len(),
            short_body(got)
        )
    })
}

/// `: <body>` for a short (error) body, else nothing.
fn short_body(got: &Fetched) -> String {
    if got.body.len() <= 512 {
        format!(": {}", got.text().trim())
    } else {
        String::new()
    }
}

async fn get(client: &RegistryClient, path: &str) -> Fetched {
    client
        .request(reqwest::Method::GET, path, &[], None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// What the GETs of a test got wrong, and how often the lacking route
/// answered 404 in the concurrent rounds (the fills they lead are the ones
/// GETs through the other route must not be failed by).
#[derive(Default)]
struct Tally {
    /// One line per distinct wrong answer in a round or pair.
    lines: Vec<String>,
    wrong_gets: usize,
    lacking_404s: usize,
}

impl Tally {
    /// Records `problems` (one per wrong GET) under `label`; the same wrong
    /// answer to several GETs is one line, with a count. True when there
    /// were any.
    fn record(&mut self, label: &str, problems: Vec<String>, of: usize) -> bool {
        self.wrong_gets += problems.len();
        let mut distinct: Vec<(String, usize)> = Vec::new();
        for problem in problems {
            match distinct.iter_mut().find(|(p, _)| *p == problem) {
                Some((_, n)) => *n += 1,
                None => distinct.push((problem, 1)),
            }
        }
        let any = !distinct.is_empty();
        self.lines.extend(
            distinct
                .into_iter()
                .map(|(p, n)| format!("{label}: {n} of {of} GETs: {p}")),
        );
        any
    }
}

/// One round on a cold `blob`: [`PER_ROUTE`] GETs through each route at
/// once. When `lacking_first`, the GETs through the lacking route start
/// [`HEAD_START`] earlier (so one of them leads the fill and the others join
/// it); otherwise the two kinds are interleaved and start together. A GET
/// through the lacking route may get the blob (once it is cached through the
/// other route) or 404 `BLOB_UNKNOWN`; one through the other route must get
/// the blob. Returns the wrong answers and the lacking route's 404s.
async fn concurrent_round(
    client: &RegistryClient,
    routes: Routes,
    blob: &Blob,
    lacking_first: bool,
) -> (Vec<String>, usize) {
    let lacking = format!("{}/blobs/{}", routes.lacking, blob.digest);
    let having = format!("{}/blobs/{}", routes.having, blob.digest);
    let gets = (0..2 * PER_ROUTE).map(|i| {
        let through_having = i % 2 == 1;
        let path = if through_having { &having } else { &lacking };
        let delay = if through_having && lacking_first {
            HEAD_START
        } else {
            Duration::ZERO
        };
        async move {
            tokio::time::sleep(delay).await;
            (through_having, get(client, path).await)
        }
    });
    let mut wrong = Vec::new();
    let mut lacking_404s = 0;
    for (through_having, got) in futures_util::future::join_all(gets).await {
        if through_having {
            wrong.extend(wrong_having(&having, blob, &got));
        } else {
            lacking_404s += usize::from(got.status == 404);
            wrong.extend(wrong_lacking(&lacking, blob, &got, true));
        }
    }
    (wrong, lacking_404s)
}

/// One sequential pair on a cold `blob`: a GET through the lacking route
/// (404), then at once one through the route that has it (200).
async fn sequential_pair(client: &RegistryClient, routes: Routes, blob: &Blob) -> Vec<String> {
    let lacking = format!("{}/blobs/{}", routes.lacking, blob.digest);
    let having = format!("{}/blobs/{}", routes.having, blob.digest);
    let first = get(client, &lacking).await;
    let second = get(client, &having).await;
    wrong_lacking(&lacking, blob, &first, false)
        .into_iter()
        .chain(wrong_having(&having, blob, &second))
        .collect()
}

/// Runs the [`ROUNDS`] concurrent rounds (alternately lacking route first and
/// interleaved) with `stalling` stalling the lacking route's blob GETs, then
/// the [`ROUNDS`] sequential pairs without the stall, and fails with every
/// problem at once.
async fn run_rounds(fx: &Fixture, routes: Routes, stalling: &FaultProxy) {
    let client = fx.client();
    let mut tally = Tally::default();
    let mut failed_rounds = BTreeSet::new();
    let mut failed_pairs = BTreeSet::new();
    for (round, blob) in fx.blobs[..ROUNDS].iter().enumerate() {
        let lacking_first = round % 2 == 0;
        let (problems, lacking_404s) = concurrent_round(&client, routes, blob, lacking_first).await;
        tally.lacking_404s += lacking_404s;
        let how = if lacking_first {
            "lacking route first"
        } else {
            "interleaved"
        };
        if tally.record(&format!("round {round} ({how})"), problems, PER_ROUTE) {
            failed_rounds.insert(round);
        }
    }
    stalling.clear();
    for (pair, blob) in fx.blobs[ROUNDS..].iter().enumerate() {
        let problems = sequential_pair(&client, routes, blob).await;
        if tally.record(&format!("pair {pair}"), problems, 1) {
            failed_pairs.insert(pair);
        }
    }
    assert!(
        tally.lines.is_empty(),
        "{} of {ROUNDS} concurrent rounds ({failed_rounds:?}) and {} of {ROUNDS} sequential \
         pairs ({failed_pairs:?}) answered wrongly ({} wrong answers):\n{}\nregcache's \
         first failed fills:\n{}",
        failed_rounds.len(),
        failed_pairs.len(),
        tally.wrong_gets,
        tally.lines.join("\n"),
        fx.regcache
            .log()
            .lines()
            .filter(|l| l.contains("blob fill could not start"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The race was run: in the rounds where they started first, GETs through
    // the lacking route led fills that failed.
    assert!(
        tally.lacking_404s >= ROUNDS / 2,
        "only {} 404s through the lacking route in {ROUNDS} concurrent rounds: the GETs \
         through the other route never met a failing fill",
        tally.lacking_404s
    );
}

#[tokio::test]
async fn cold_gets_through_an_upstream_with_the_blob_succeed_beside_one_without_it() {
    let fx = Fixture::start(0xf111).await;
    fx.a.proxy.inject(Target::AllBlobs, Fault::Stall(STALL));
    run_rounds(&fx, ACROSS_UPSTREAMS, &fx.a.proxy).await;
    // The lacking upstream really was asked (and the other not for
    // everything: the fills were shared).
    assert!(
        fx.a.proxy.count("GET", "/blobs/") >= ROUNDS,
        "{:#?}",
        fx.a.proxy.requests()
    );
    assert!(fx.b.proxy.count("GET", "/blobs/") >= ROUNDS);
}

#[tokio::test]
async fn cold_gets_through_a_repository_with_the_blob_succeed_beside_one_without_it() {
    let fx = Fixture::start(0xf112).await;
    fx.b.proxy.inject(
        Target::Path("/fill/other/blobs/".into()),
        Fault::Stall(STALL),
    );
    run_rounds(&fx, ACROSS_REPOSITORIES, &fx.b.proxy).await;
    assert!(
        fx.b.proxy.count("GET", "/fill/other/blobs/") >= ROUNDS,
        "{:#?}",
        fx.b.proxy.requests()
    );
}

//! The breaker around a fault-injecting in-memory upstream, in paused tokio
//! time: failures open it, calls are then refused without reaching the
//! upstream, the probe half-opens it once the upstream answers, and a trial
//! closes it.

use std::sync::Arc;
use std::time::Duration;

use regcache_upstream::mock::MemoryRegistry;
use regcache_upstream::{FailureUpstream, Fault, Op, UpstreamApi, UpstreamError};

use super::{Breaker, Guarded, State};

const PROBE: Duration = Duration::from_secs(2);

fn setup(threshold: u32) -> (Arc<FailureUpstream<MemoryRegistry>>, Arc<Breaker>, Guarded) {
    let up = Arc::new(FailureUpstream::new(MemoryRegistry::new("hub")));
    let probe: Arc<dyn UpstreamApi> = up.clone();
    let breaker = Breaker::new("hub", threshold, PROBE, probe);
    let guarded = Guarded::new(up.clone(), breaker.clone());
    (up, breaker, guarded)
}

async fn head(g: &Guarded) -> Result<(), UpstreamError> {
    g.head_manifest("lib/app", "v1", &[]).await.map(|_| ())
}

#[tokio::test(start_paused = true)]
async fn failures_open_probe_half_opens_trial_closes() {
    let (up, breaker, g) = setup(3);
    up.inject(Op::HeadManifest, Fault::connect_refused());
    up.inject(Op::Ping, Fault::connect_refused());
    for _ in 0..2 {
        assert!(matches!(
            head(&g).await,
            Err(UpstreamError::Transport { .. })
        ));
        assert_eq!(breaker.state(), State::Closed);
    }
    // A 404 is an answer: the count starts over.
    up.clear();
    assert!(head(&g).await.unwrap_err().is_not_found());
    up.inject(Op::HeadManifest, Fault::connect_refused());
    up.inject(Op::Ping, Fault::connect_refused());
    for _ in 0..3 {
        assert!(matches!(
            head(&g).await,
            Err(UpstreamError::Transport { .. })
        ));
    }
    assert_eq!(breaker.state(), State::Open);
    let calls = up.calls(Op::HeadManifest);
    let e = head(&g).await.unwrap_err();
    let UpstreamError::Down {
        retry_after_secs,
        ref reason,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(retry_after_secs, 2);
    assert!(reason.contains("connection refused"), "{reason}");
    assert!(e.is_unavailable(), "stale-if-error applies");
    assert_eq!(e.status_hint(), 503);
    assert_eq!(up.calls(Op::HeadManifest), calls, "not sent upstream");
    assert_eq!(breaker.short_circuits(), 1);

    // The probe fails while the upstream is down.
    tokio::time::sleep(PROBE * 3 + Duration::from_millis(100)).await;
    assert_eq!(up.calls(Op::Ping), 3, "one ping per probe interval");
    assert_eq!(breaker.state(), State::Open);

    // Back up: the next probe half-opens; one trial goes through.
    up.clear();
    tokio::time::sleep(PROBE).await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let gate = up.hold(Op::HeadManifest);
    let trial = tokio::spawn({
        let g = Guarded::new(up.clone(), breaker.clone());
        async move { head(&g).await }
    });
    gate.until_waiting(1).await;
    assert!(
        matches!(head(&g).await, Err(UpstreamError::Down { .. })),
        "a second request while the trial runs is refused"
    );
    gate.release();
    assert!(trial.await.unwrap().unwrap_err().is_not_found());
    assert_eq!(breaker.state(), State::Closed);
    assert!(head(&g).await.unwrap_err().is_not_found());
    // The probe stopped.
    let pings = up.calls(Op::Ping);
    tokio::time::sleep(PROBE * 5).await;
    assert_eq!(up.calls(Op::Ping), pings);
}

#[tokio::test(start_paused = true)]
async fn five_hundreds_count_429_does_not_and_two_probes_close_without_traffic() {
    let (up, breaker, g) = setup(2);
    up.inject(Op::HeadManifest, Fault::unavailable());
    up.inject(Op::Ping, Fault::unavailable());
    head(&g).await.unwrap_err();
    head(&g).await.unwrap_err();
    assert_eq!(breaker.state(), State::Open);
    assert!(
        breaker.report().contains("open for"),
        "{}",
        breaker.report()
    );
    up.clear();
    tokio::time::sleep(PROBE + Duration::from_millis(10)).await;
    assert_eq!(breaker.state(), State::HalfOpen);
    tokio::time::sleep(PROBE).await;
    assert_eq!(breaker.state(), State::Closed, "a second answered probe");

    up.inject(
        Op::HeadManifest,
        Fault::status(429, regcache_formats::ErrorCode::TooManyRequests),
    );
    for _ in 0..10 {
        head(&g).await.unwrap_err();
    }
    assert_eq!(breaker.state(), State::Closed, "429 is an answer");
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_trial_frees_the_slot() {
    let (up, breaker, g) = setup(1);
    up.inject_times(Op::HeadManifest, Fault::timeout(), 1);
    head(&g).await.unwrap_err();
    assert_eq!(breaker.state(), State::Open);
    tokio::time::sleep(PROBE + Duration::from_millis(10)).await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let gate = up.hold(Op::HeadManifest);
    // The trial is dropped before it finishes (its client went away).
    let abandoned = tokio::time::timeout(Duration::from_millis(50), head(&g)).await;
    assert!(abandoned.is_err());
    assert_eq!(breaker.state(), State::HalfOpen);
    gate.release();
    up.clear();
    assert!(head(&g).await.unwrap_err().is_not_found());
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn threshold_zero_is_off() {
    let (up, breaker, g) = setup(0);
    up.inject(Op::HeadManifest, Fault::connect_refused());
    for _ in 0..50 {
        assert!(matches!(
            head(&g).await,
            Err(UpstreamError::Transport { .. })
        ));
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(up.calls(Op::Ping), 0);
}

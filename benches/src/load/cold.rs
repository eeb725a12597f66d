//! S3's client: `clients` threads, each on its own fresh connection, send
//! one GET of the same (uncached) blob at the same instant and read the
//! whole body; the time to the response head (first byte) and to the last
//! body byte of each. Also the single direct GET that is S3's reference.
//! The same fan-in, run again once the blob is cached, is S3's warm
//! yardstick ([`super::fanin`]).

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::http::Conn;

/// What one fan-in measured.
#[derive(Debug, Clone, Default)]
pub struct FanIn {
    /// Time to the response head per client that got one, sorted.
    pub ttfb: Vec<Duration>,
    /// Time to the last body byte per client that got the whole body, sorted.
    pub ttlb: Vec<Duration>,
    pub errors: Vec<String>,
}

impl FanIn {
    pub fn ttfb_median(&self) -> Duration {
        self.ttfb
            .get(self.ttfb.len() / 2)
            .copied()
            .unwrap_or_default()
    }

    pub fn ttfb_max(&self) -> Duration {
        self.ttfb.last().copied().unwrap_or_default()
    }

    pub fn ttlb_max(&self) -> Duration {
        self.ttlb.last().copied().unwrap_or_default()
    }

    pub fn ttlb_median(&self) -> Duration {
        self.ttlb
            .get(self.ttlb.len() / 2)
            .copied()
            .unwrap_or_default()
    }
}

/// One client's GET: (time to head, time to last byte) from `start`.
fn one_get(
    conn: &mut Conn,
    request: &[u8],
    expected_len: u64,
    start: Instant,
) -> Result<(Duration, Duration), String> {
    conn.send(request).map_err(|e| format!("send: {e}"))?;
    let head = conn.read_head().map_err(|e| format!("head: {e}"))?;
    let ttfb = start.elapsed();
    if head.status != 200 || head.content_length != Some(expected_len) {
        return Err(format!(
            "status {} with Content-Length {:?}, expected 200 with {expected_len}",
            head.status, head.content_length
        ));
    }
    let got = conn
        .read_body(expected_len, |_| true)
        .map_err(|e| format!("body: {e}"))?;
    if got != expected_len {
        return Err(format!("{got} of {expected_len} body bytes"));
    }
    Ok((ttfb, start.elapsed()))
}

/// `clients` concurrent GETs of `request` (each connected before the clock
/// starts); every answer must be `200` with `Content-Length: expected_len`.
pub fn fan_in(addr: SocketAddr, request: &[u8], expected_len: u64, clients: usize) -> FanIn {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let request = Arc::new(request.to_vec());
    let started = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut handles = Vec::with_capacity(clients);
    for _ in 0..clients {
        let barrier = barrier.clone();
        let request = request.clone();
        let started = started.clone();
        handles.push(std::thread::spawn(move || {
            let conn = Conn::connect(addr);
            barrier.wait();
            let start = *started.get().unwrap_or(&Instant::now());
            let mut conn = conn.map_err(|e| format!("connect: {e}"))?;
            one_get(&mut conn, &request, expected_len, start)
        }));
    }
    let _ = started.set(Instant::now());
    barrier.wait();
    let mut out = FanIn::default();
    for h in handles {
        match h.join() {
            Ok(Ok((ttfb, ttlb))) => {
                out.ttfb.push(ttfb);
                out.ttlb.push(ttlb);
            }
            Ok(Err(e)) => out.errors.push(e),
            Err(_) => out.errors.push("a client thread panicked".into()),
        }
    }
    out.ttfb.sort_unstable();
    out.ttlb.sort_unstable();
    out
}

/// One GET on a fresh connection: the time to the last byte.
pub fn single(addr: SocketAddr, request: &[u8], expected_len: u64) -> Result<Duration, String> {
    let mut conn = Conn::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let start = Instant::now();
    one_get(&mut conn, request, expected_len, start).map(|(_, ttlb)| ttlb)
}

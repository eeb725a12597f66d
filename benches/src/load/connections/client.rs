//! S9's load generator: `connections` keep-alive HTTP/1.1 connections on
//! one tokio thread, each sending one GET about once a second on its own
//! schedule: an open loop of `connections` requests/s in all.
//!
//! Why open loop: at a closed loop's full speed, latency is just
//! connections / throughput and says nothing about the server. Here
//! connection `i` connects and sends its first GET at `i / connections`
//! periods (a staggered ramp); then, once every connection is up (two
//! periods after the start), it sends one GET every `period` at the same
//! offset for `duration`: the measured phase. Latency runs from the
//! intended send time to the last body byte, so a late generator or a
//! stalled server counts against the figure rather than being hidden (no
//! coordinated omission); how late the generator itself sent is kept apart
//! (`send_lag`) to show its headroom. The ramp's first GETs (which also
//! wait for the TCP handshake and the server's accept, while the other
//! connections are still being made) are kept apart too (`ramp`): they
//! are connection set-up, not the kept-alive GETs the phase measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct ConnLoad {
    /// Connections that were established.
    pub established: usize,
    /// Requests of the measured phase answered `200` with the whole
    /// expected body (the ramp's are counted in `ramp`).
    pub ok: u64,
    /// Latency of each answered request of the measured phase, every
    /// connection established (intended send → last byte), sorted.
    pub latencies: Vec<Duration>,
    /// Each connection's first GET during the ramp (intended connect →
    /// last byte: connection set-up included), sorted.
    pub ramp: Vec<Duration>,
    /// Actual send → last byte of each answered request of the measured
    /// phase, sorted: what the server took, without the generator's own
    /// lateness.
    pub service: Vec<Duration>,
    /// How late each request of the measured phase was written after its
    /// intended time, sorted.
    pub send_lag: Vec<Duration>,
    /// Every failure (connect, I/O, status, length), in no order.
    pub errors: Vec<String>,
    /// From the measured phase's start to the last answer.
    pub elapsed: Duration,
    /// CPU used by this thread's process during the run, in ticks.
    pub client_cpu_ticks: u64,
}

/// A sorted sample's quantile `q` (0..=1).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The length of a complete response head in `buf` and its
/// `Content-Length`, once the head has arrived; `Err` for a status other
/// than 200 or a head without `Content-Length`.
pub fn parse_head(buf: &[u8]) -> Result<Option<(usize, u64)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "head is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("status line {status:?}"));
    }
    let len = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or("no Content-Length")?;
    Ok(Some((end + 4, len)))
}

struct Outcome {
    established: bool,
    ramp: Option<Duration>,
    latencies: Vec<Duration>,
    service: Vec<Duration>,
    lags: Vec<Duration>,
    error: Option<String>,
}

/// One connection's life: connect and send a first GET at `first`, then a
/// GET at `measured + k × period` until `until`; stops at its first error.
async fn one_connection(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    expected_len: u64,
    first: Instant,
    measured: Instant,
    period: Duration,
    until: Instant,
) -> Outcome {
    let mut out = Outcome {
        established: false,
        ramp: None,
        latencies: Vec::new(),
        service: Vec::new(),
        lags: Vec::new(),
        error: None,
    };
    tokio::time::sleep_until(first).await;
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
    };
    let _ = stream.set_nodelay(true);
    out.established = true;
    let mut buf = vec![0u8; 4096];
    if let Err(e) = exchange(&mut stream, &request, &mut buf, expected_len).await {
        out.error = Some(e);
        return out;
    }
    out.ramp = Some(first.elapsed());
    let mut intended = measured;
    while intended < until {
        tokio::time::sleep_until(intended).await;
        let sent = Instant::now();
        out.lags.push(sent.saturating_duration_since(intended));
        if let Err(e) = exchange(&mut stream, &request, &mut buf, expected_len).await {
            out.error = Some(e);
            return out;
        }
        out.latencies.push(intended.elapsed());
        out.service.push(sent.elapsed());
        intended += period;
    }
    out
}

/// Writes `request` and reads one whole `200` answer of `expected_len`
/// body bytes.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
    expected_len: u64,
) -> Result<(), String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match stream.read(&mut buf[filled..]).await {
            Ok(0) => return Err("connection closed by the server".to_owned()),
            Ok(n) => filled += n,
            Err(e) => return Err(format!("read: {e}")),
        }
        let Some((head_len, body_len)) = parse_head(&buf[..filled])? else {
            continue;
        };
        if body_len != expected_len {
            return Err(format!(
                "Content-Length {body_len}, expected {expected_len}"
            ));
        }
        let total = head_len + body_len as usize;
        if filled > total {
            return Err("bytes after the response (none was asked)".to_owned());
        }
        if filled == total {
            return Ok(());
        }
    }
}

/// Runs the load: `connections` connections to `addr`, made over one
/// `period` (each sends one GET as it is made), then each sending `request`
/// every `period` for `duration` from two periods after the start; every
/// answer must be `200` with a body of `expected_len` bytes.
pub fn run(
    addr: SocketAddr,
    request: &[u8],
    expected_len: u64,
    connections: usize,
    period: Duration,
    duration: Duration,
) -> Result<ConnLoad, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let cpu_before = super::super::procstat::process_cpu(std::process::id()).unwrap_or(0);
    let request = Arc::new(request.to_vec());
    let mut load = rt.block_on(async move {
        let start = Instant::now() + Duration::from_millis(200);
        // The ramp takes one period; one more lets the last connections
        // settle before the measured phase.
        let measured_from = start + 2 * period;
        let until = measured_from + duration;
        let stagger = period.as_secs_f64() / connections.max(1) as f64;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..connections {
            let offset = Duration::from_secs_f64(stagger * i as f64);
            tasks.spawn(one_connection(
                addr,
                request.clone(),
                expected_len,
                start + offset,
                measured_from + offset,
                period,
                until,
            ));
        }
        let mut load = ConnLoad::default();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(o) => {
                    load.established += usize::from(o.established);
                    load.ok += o.latencies.len() as u64;
                    load.ramp.extend(o.ramp);
                    load.latencies.extend(o.latencies);
                    load.service.extend(o.service);
                    load.send_lag.extend(o.lags);
                    load.errors.extend(o.error);
                }
                Err(e) => load.errors.push(format!("a connection task failed: {e}")),
            }
        }
        load.elapsed = measured_from.elapsed();
        load
    });
    load.client_cpu_ticks = super::super::procstat::process_cpu(std::process::id())
        .unwrap_or(0)
        .saturating_sub(cpu_before);
    load.latencies.sort_unstable();
    load.ramp.sort_unstable();
    load.service.sort_unstable();
    load.send_lag.sort_unstable();
    Ok(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: x\r\ncontent-length: 12\r\n\r\nabc";
        assert_eq!(parse_head(ok), Ok(Some((ok.len() - 3, 12))));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        let e = parse_head(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").unwrap_err();
        assert!(e.contains("503"), "{e}");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn quantiles_of_a_sorted_sample() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.99), Duration::ZERO);
    }

    /// Against a tiny server on loopback: every request answered, none lost.
    #[test]
    fn load_against_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    use std::io::{Read as _, Write as _};
                    let mut s = stream;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
                    }
                });
            }
        });
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let load = run(
            addr,
            req,
            5,
            20,
            Duration::from_millis(100),
            Duration::from_millis(500),
        )
        .expect("runs");
        assert_eq!(load.errors, Vec::<String>::new());
        assert_eq!(load.established, 20);
        assert_eq!(load.ramp.len(), 20, "one ramp GET per connection");
        assert_eq!(load.service.len() as u64, load.ok);
        assert_eq!(load.send_lag.len() as u64, load.ok);
        // 5 measured sends per connection (at 0, 100, ..., 400 ms after
        // the measured phase's start, at the connection's offset).
        assert_eq!(load.ok, 20 * 5);
        let wrong = run(
            addr,
            req,
            6,
            2,
            Duration::from_millis(100),
            Duration::from_millis(200),
        )
        .expect("runs");
        assert_eq!(wrong.errors.len(), 2, "{:?}", wrong.errors);
        assert!(wrong.errors[0].contains("expected 6"));
    }
}

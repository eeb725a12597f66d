//! S1's load generator: `clients` threads, each with one keep-alive
//! connection, GET the same blob back to back for a fixed time and discard
//! the bytes in the kernel (`recv(MSG_TRUNC)`: no copy to user space, so the
//! client needs a fraction of the CPU a reading client would and the server
//! is what limits the figure; the bytes were hashed during the warm-up).
//!
//! Throughput is every body byte received (partial bodies at the deadline
//! included) over the wall time. The client's own CPU is measured per thread
//! (`/proc/thread-self/stat`), so the report can show how much of the
//! machine the generator took.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::http::Conn;
use super::procstat;

/// What one S1 run measured.
#[derive(Debug, Clone, Default)]
pub struct BlobLoad {
    pub clients: usize,
    /// Body bytes received.
    pub bytes: u64,
    /// Whole blobs received.
    pub completed: u64,
    pub elapsed: Duration,
    /// CPU ticks the client threads used.
    pub client_cpu_ticks: u64,
    /// Transport or protocol errors (each also ended or restarted a connection).
    pub errors: Vec<String>,
    /// Time per whole blob, sorted.
    pub blob_times: Vec<Duration>,
    /// Body bytes received from each target, in the order given to
    /// [`run_spread`] (one entry for [`run`]).
    pub bytes_per_target: Vec<u64>,
}

impl BlobLoad {
    /// MiB/s.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1u64 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Give up on a client thread after this many errors.
const MAX_ERRORS_PER_CLIENT: usize = 5;

struct ClientOutcome {
    bytes: u64,
    completed: u64,
    cpu: u64,
    errors: Vec<String>,
    times: Vec<Duration>,
    finished: Instant,
}

/// Runs the load. `request` is the exact request (see
/// [`super::http::get_request`]); every answer must be `200` with
/// `Content-Length: expected_len`.
pub fn run(
    addr: SocketAddr,
    request: &[u8],
    expected_len: u64,
    clients: usize,
    duration: Duration,
) -> BlobLoad {
    run_spread(&[(addr, request.to_vec())], expected_len, clients, duration)
}

/// Runs the load against several servers of the same blob: client `i`
/// keeps its connection to `targets[i % targets.len()]` (each with its own
/// request, whose `Host` names it), so `clients` connections are spread
/// evenly. `targets` must not be empty.
pub fn run_spread(
    targets: &[(SocketAddr, Vec<u8>)],
    expected_len: u64,
    clients: usize,
    duration: Duration,
) -> BlobLoad {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let targets: Vec<(SocketAddr, Arc<Vec<u8>>)> = targets
        .iter()
        .map(|(addr, request)| (*addr, Arc::new(request.clone())))
        .collect();
    let mut handles = Vec::with_capacity(clients);
    let started = Arc::new(std::sync::OnceLock::<Instant>::new());
    for i in 0..clients {
        let barrier = barrier.clone();
        let (addr, request) = targets[i % targets.len()].clone();
        let started = started.clone();
        handles.push(std::thread::spawn(move || {
            // Connect before the clock starts.
            let mut conn = Conn::connect(addr).ok();
            barrier.wait();
            let start = *started.get().unwrap_or(&Instant::now());
            client(addr, &request, expected_len, start + duration, &mut conn)
        }));
    }
    // The common start, published before the barrier releases the clients.
    let start = Instant::now();
    let _ = started.set(start);
    barrier.wait();
    let mut out = BlobLoad {
        clients,
        bytes_per_target: vec![0; targets.len()],
        ..BlobLoad::default()
    };
    let mut last = start;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(c) => {
                out.bytes += c.bytes;
                out.bytes_per_target[i % targets.len()] += c.bytes;
                out.completed += c.completed;
                out.client_cpu_ticks += c.cpu;
                out.errors.extend(c.errors);
                out.blob_times.extend(c.times);
                last = last.max(c.finished);
            }
            Err(_) => out.errors.push("a client thread panicked".into()),
        }
    }
    out.elapsed = last - start;
    out.blob_times.sort_unstable();
    out
}

fn client(
    addr: SocketAddr,
    request: &[u8],
    expected_len: u64,
    deadline: Instant,
    conn: &mut Option<Conn>,
) -> ClientOutcome {
    let cpu0 = procstat::thread_cpu();
    let mut bytes = 0u64;
    let mut completed = 0u64;
    let mut errors = Vec::new();
    let mut times = Vec::new();
    while Instant::now() < deadline && errors.len() < MAX_ERRORS_PER_CLIENT {
        let c = match conn {
            Some(c) => c,
            None => match Conn::connect(addr) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    errors.push(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        let result = (|| -> std::io::Result<bool> {
            c.send(request)?;
            let head = c.read_head()?;
            if head.status != 200 || head.content_length != Some(expected_len) {
                return Err(std::io::Error::other(format!(
                    "status {} with Content-Length {:?}, expected 200 with {expected_len}",
                    head.status, head.content_length
                )));
            }
            let mut cut = false;
            let got = c.discard_body(expected_len, |n| {
                bytes += n as u64;
                // One clock read per `read` (≥ 64 KiB on loopback): cheap.
                if Instant::now() >= deadline {
                    cut = true;
                    return false;
                }
                true
            })?;
            Ok(!cut && got == expected_len)
        })();
        match result {
            Ok(true) => {
                completed += 1;
                times.push(t0.elapsed());
            }
            // Cut at the deadline: the connection has unread body bytes.
            Ok(false) => *conn = None,
            Err(e) => {
                errors.push(e.to_string());
                *conn = None;
            }
        }
    }
    ClientOutcome {
        bytes,
        completed,
        cpu: procstat::thread_cpu().saturating_sub(cpu0),
        errors,
        times,
        finished: Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;
    use crate::load::http::get_request;

    /// A keep-alive server answering every request with `len` bytes;
    /// returns its address.
    fn blob_server(len: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let body = vec![7u8; len];
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                            if stream.write_all(head.as_bytes()).is_err()
                                || stream.write_all(&body).is_err()
                            {
                                return;
                            }
                        }
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn spread_load_uses_every_target_and_counts_each() {
        let len = 256 << 10;
        let addrs = [blob_server(len), blob_server(len), blob_server(len)];
        let targets: Vec<(SocketAddr, Vec<u8>)> = addrs
            .iter()
            .map(|a| (*a, get_request(*a, "/blob", &[])))
            .collect();
        let load = run_spread(&targets, len as u64, 5, Duration::from_millis(300));
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        assert_eq!(load.clients, 5);
        assert_eq!(load.bytes_per_target.len(), 3);
        assert!(
            load.bytes_per_target.iter().all(|b| *b > 0),
            "a target got no load: {:?}",
            load.bytes_per_target
        );
        assert_eq!(load.bytes_per_target.iter().sum::<u64>(), load.bytes);
        assert!(load.completed > 0);

        let single = run(
            addrs[0],
            &targets[0].1,
            len as u64,
            2,
            Duration::from_millis(200),
        );
        assert_eq!(single.bytes_per_target, vec![single.bytes]);
    }
}

//! S1 over TLS: as [`crate::load::blobload`] (`clients` threads, one
//! keep-alive connection each, the same blob back to back for a fixed
//! time), but every connection is a TLS session of [`super::client`] and
//! the body is decrypted into the connection's reused buffer and dropped.
//! Handshakes happen before the clock starts.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::super::blobload::BlobLoad;
use super::super::procstat;
use super::client::{self, Tls, TlsConn};

/// Give up on a client thread after this many errors.
const MAX_ERRORS_PER_CLIENT: usize = 5;

/// What one run measured, and what its connections negotiated.
#[derive(Debug, Clone, Default)]
pub struct TlsBlobLoad {
    pub load: BlobLoad,
    /// [`client::negotiated`] of the first connection (every connection is
    /// checked against [`Tls::expected`]; a mismatch is an error).
    pub negotiated: String,
}

/// Runs the load; every answer must be `200` with `Content-Length:
/// expected_len`.
pub fn run(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    tls: Tls,
    request: &[u8],
    expected_len: u64,
    clients: usize,
    duration: Duration,
) -> TlsBlobLoad {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let request = Arc::new(request.to_vec());
    let started = Arc::new(OnceLock::<Instant>::new());
    let negotiated = Arc::new(OnceLock::<String>::new());
    let mut handles = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (barrier, request, started) = (barrier.clone(), request.clone(), started.clone());
        let (config, negotiated) = (config.clone(), negotiated.clone());
        handles.push(std::thread::spawn(move || {
            // Connect and shake hands before the clock starts.
            let mut first_error = None;
            let mut conn = match client::connect(addr, &config, tls) {
                Ok(c) => {
                    let _ = negotiated.set(client::negotiated(&c.stream().conn));
                    Some(c)
                }
                Err(e) => {
                    first_error = Some(format!("connect: {e}"));
                    None
                }
            };
            barrier.wait();
            let start = *started.get().unwrap_or(&Instant::now());
            let mut outcome = Client {
                addr,
                config: &config,
                tls,
                request: &request,
                expected_len,
                deadline: start + duration,
            }
            .run(&mut conn);
            outcome.errors.splice(0..0, first_error);
            outcome
        }));
    }
    let start = Instant::now();
    let _ = started.set(start);
    barrier.wait();
    let mut out = BlobLoad {
        clients,
        bytes_per_target: vec![0],
        ..BlobLoad::default()
    };
    let mut last = start;
    for h in handles {
        match h.join() {
            Ok(c) => {
                out.bytes += c.bytes;
                out.completed += c.completed;
                out.client_cpu_ticks += c.cpu;
                out.errors.extend(c.errors);
                out.blob_times.extend(c.times);
                last = last.max(c.finished);
            }
            Err(_) => out.errors.push("a client thread panicked".into()),
        }
    }
    out.bytes_per_target = vec![out.bytes];
    out.elapsed = last - start;
    out.blob_times.sort_unstable();
    TlsBlobLoad {
        load: out,
        negotiated: negotiated.get().cloned().unwrap_or_else(|| "none".into()),
    }
}

struct Outcome {
    bytes: u64,
    completed: u64,
    cpu: u64,
    errors: Vec<String>,
    times: Vec<Duration>,
    finished: Instant,
}

struct Client<'a> {
    addr: SocketAddr,
    config: &'a Arc<ClientConfig>,
    tls: Tls,
    request: &'a [u8],
    expected_len: u64,
    deadline: Instant,
}

impl Client<'_> {
    fn run(&self, conn: &mut Option<TlsConn>) -> Outcome {
        let cpu0 = procstat::thread_cpu();
        let mut out = Outcome {
            bytes: 0,
            completed: 0,
            cpu: 0,
            errors: Vec::new(),
            times: Vec::new(),
            finished: Instant::now(),
        };
        while Instant::now() < self.deadline && out.errors.len() < MAX_ERRORS_PER_CLIENT {
            let c = match conn {
                Some(c) => c,
                None => match client::connect(self.addr, self.config, self.tls) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        out.errors.push(format!("connect: {e}"));
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            let t0 = Instant::now();
            match self.one_blob(c, &mut out.bytes) {
                Ok(true) => {
                    out.completed += 1;
                    out.times.push(t0.elapsed());
                }
                // Cut at the deadline: the connection has unread body bytes.
                Ok(false) => *conn = None,
                Err(e) => {
                    out.errors.push(e.to_string());
                    *conn = None;
                }
            }
        }
        out.cpu = procstat::thread_cpu().saturating_sub(cpu0);
        out.finished = Instant::now();
        out
    }

    /// One GET; `Ok(false)` when cut at the deadline.
    fn one_blob(&self, c: &mut TlsConn, bytes: &mut u64) -> std::io::Result<bool> {
        c.send(self.request)?;
        let head = c.read_head()?;
        if head.status != 200 || head.content_length != Some(self.expected_len) {
            return Err(std::io::Error::other(format!(
                "status {} with Content-Length {:?}, expected 200 with {}",
                head.status, head.content_length, self.expected_len
            )));
        }
        let mut cut = false;
        let got = c.read_body(self.expected_len, |chunk| {
            *bytes += chunk.len() as u64;
            if Instant::now() >= self.deadline {
                cut = true;
                return false;
            }
            true
        })?;
        Ok(!cut && got == self.expected_len)
    }
}

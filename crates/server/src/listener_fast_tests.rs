//! The fast path over TLS: file and fill bodies byte-exact over TLS 1.3 and
//! 1.2, keep-alive, the handoff to hyper, h2 on hyper, the write timeout,
//! and the path taken (kernel TLS iff the kernel has it).

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use regcache_formats::Digest;
use regcache_store::{Begin, Store, StoreConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::*;
use crate::fastpath::{Reply, ReplyBody};
use crate::web::body::ReqBody;

/// Not a multiple of 16 KiB (a TLS record) nor of the 256 KiB read chunk.
const FILE_LEN: usize = (3 << 20) + 12_345;
const FILL_LEN: usize = (2 << 20) + 777;

fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A fast path serving `/file` (a cached file), `/fill` (a fill written in
/// 100 KiB steps while it is sent) and `/info` (whether it came over TLS).
struct Files {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    file_len: usize,
    fill: Vec<u8>,
    store: Store,
    calls: AtomicUsize,
}

impl Files {
    async fn new(file_len: usize) -> Arc<Files> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blob");
        std::fs::write(&file, content(file_len, 1)).unwrap();
        let store = Store::open(StoreConfig::new(dir.path().join("store")))
            .await
            .unwrap();
        Arc::new(Files {
            _dir: dir,
            file,
            file_len,
            fill: content(FILL_LEN, 2),
            store,
            calls: AtomicUsize::new(0),
        })
    }

    async fn begin_fill(&self) -> ReplyBody {
        let digest = Digest::sha256_of(&self.fill);
        let Begin::Leader(mut w) = self
            .store
            .begin_fill(&digest, Some(self.fill.len() as u64))
            .await
            .unwrap()
        else {
            panic!("one /fill per test server");
        };
        let fill = w.subscribe().into_file().unwrap();
        let bytes = Bytes::from(self.fill.clone());
        tokio::spawn(async move {
            for chunk in bytes.chunks(100_000) {
                w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
                tokio::task::yield_now().await;
            }
            w.commit().await.unwrap();
        });
        ReplyBody::Fill {
            fill,
            offset: 0,
            len: self.fill.len() as u64,
        }
    }
}

impl crate::fastpath::FastPath for Files {
    fn respond(&self, req: Request<ReqBody>) -> BoxFuture<'_, Reply> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let tls = req.extensions().get::<ConnInfo>().map(|c| c.tls);
        let path = req.uri().path().to_owned();
        Box::pin(async move {
            let mut headers = HeaderMap::new();
            let body = match path.as_str() {
                "/file" => {
                    // As the blob handlers do, for `HEAD` too.
                    headers.insert(http::header::CONTENT_LENGTH, self.file_len.into());
                    ReplyBody::File {
                        file: std::fs::File::open(&self.file).unwrap(),
                        offset: 0,
                        len: self.file_len as u64,
                    }
                }
                "/fill" => self.begin_fill().await,
                _ => ReplyBody::Bytes(Bytes::from(format!("tls={tls:?}"))),
            };
            Reply {
                status: StatusCode::OK,
                headers,
                body,
                meter: None,
                access: None,
            }
        })
    }
}

struct Server {
    addr: SocketAddr,
    files: Arc<Files>,
    paths: TlsPaths,
    metrics: crate::metrics::Metrics,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// `serve` with TLS and [`Files`] as the fast path; hyper answers
/// "hyper {method} {path} {body bytes}".
async fn start_fast(
    server: Arc<rustls::ServerConfig>,
    kernel: KernelTls,
    limits: crate::config::ConnLimits,
    file_len: usize,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Files::new(file_len).await;
    let metrics = crate::metrics::Metrics::new();
    let paths = metrics.tls_connections.clone();
    let guard = Arc::new(Guard::new("api", limits, &metrics, true));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let fast: Arc<dyn FastPath> = files.clone();
    let task = tokio::spawn(serve(
        listener,
        |req: Request<TrackedBody>| async move {
            use http_body_util::BodyExt;
            let (parts, body) = req.into_parts();
            let n = body.collect().await.map_or(0, |b| b.to_bytes().len());
            let text = format!("hyper {} {} {n}", parts.method, parts.uri.path());
            Response::new(Body::full(text))
        },
        Some(fast),
        Some(Tls::new(server, Counter::default(), paths.clone(), kernel)),
        guard,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    Server {
        addr,
        files,
        paths,
        metrics,
        stop,
        task,
    }
}

type Client = BufReader<tokio_rustls::client::TlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, client: Arc<rustls::ClientConfig>) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    BufReader::new(tls)
}

/// One response: (head, body of its Content-Length, none for `HEAD`).
async fn response(c: &mut Client, head_only: bool) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = c.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed in a response head: {head}");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap_or_else(|| panic!("no content-length in {head}"))
        .parse()
        .unwrap();
    let mut body = vec![0u8; if head_only { 0 } else { len }];
    c.read_exact(&mut body).await.unwrap();
    (head, body)
}

async fn send(c: &mut Client, raw: &str) {
    c.get_mut().write_all(raw.as_bytes()).await.unwrap();
    c.get_mut().flush().await.unwrap();
}

/// Files, a fill, a `HEAD`, then a `PUT` (hyper's) on one connection.
async fn pull_then_push(version: &'static rustls::SupportedProtocolVersion) {
    let (server, client, _) = configs_for(&[b"http/1.1"], &[version]);
    let s = start_fast(
        server,
        KernelTls::Auto,
        crate::config::ConnLimits::default(),
        FILE_LEN,
    )
    .await;
    let mut c = connect(s.addr, client).await;
    assert_eq!(
        c.get_ref().get_ref().1.protocol_version(),
        Some(version.version)
    );
    let want_file = content(FILE_LEN, 1);
    for _ in 0..2 {
        send(&mut c, "GET /file HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = response(&mut c, false).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            body == want_file,
            "file body differs ({} bytes)",
            body.len()
        );
    }
    send(&mut c, "GET /fill HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (_, body) = response(&mut c, false).await;
    assert!(
        body == s.files.fill,
        "fill body differs ({} bytes)",
        body.len()
    );
    send(&mut c, "HEAD /file HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, _) = response(&mut c, true).await;
    assert!(
        head.contains(&format!("content-length: {FILE_LEN}\r\n")),
        "{head}"
    );
    send(&mut c, "GET /info HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (_, body) = response(&mut c, false).await;
    assert_eq!(body, b"tls=Some(true)");
    assert_eq!(
        s.files.calls.load(Ordering::SeqCst),
        5,
        "all on the fast path"
    );
    // A push: handed to hyper on the same connection, body and all.
    send(
        &mut c,
        "PUT /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let (head, body) = response(&mut c, false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"hyper PUT /v2/a/blobs/uploads/x 5");
    // hyper keeps the connection.
    send(&mut c, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (_, body) = response(&mut c, false).await;
    assert_eq!(body, b"hyper GET /after 0");
    assert_eq!(s.files.calls.load(Ordering::SeqCst), 5);
    assert_eq!(s.paths.kernel.get() + s.paths.user.get(), 1);
    let _ = s.stop.send(());
    drop(c);
    s.task.await.unwrap();
}

#[tokio::test]
async fn tls13_files_and_fills_arrive_whole_on_the_fast_path_then_a_push_goes_to_hyper() {
    pull_then_push(&rustls::version::TLS13).await;
}

#[tokio::test]
async fn tls12_files_and_fills_arrive_whole_on_the_fast_path_then_a_push_goes_to_hyper() {
    pull_then_push(&rustls::version::TLS12).await;
}

/// `kernel` iff the kernel has TLS (`/proc/net/tls_stat`), `user` otherwise;
/// `kernel_tls = "off"` always `user`.
#[tokio::test]
async fn the_path_is_kernel_tls_iff_the_kernel_has_it() {
    let (server, client, _) = configs_for(&[b"http/1.1"], rustls::DEFAULT_VERSIONS);
    let s = start_fast(
        server.clone(),
        KernelTls::Auto,
        crate::config::ConnLimits::default(),
        FILE_LEN,
    )
    .await;
    let mut c = connect(s.addr, client.clone()).await;
    send(&mut c, "GET /file HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (_, body) = response(&mut c, false).await;
    assert!(body == content(FILE_LEN, 1), "file body differs");
    // After the probe: setting TCP_ULP "tls" loads the module where there is one.
    let has = std::path::Path::new("/proc/net/tls_stat").exists();
    assert_eq!(crate::kernel_tls::kernel_has_tls(), has);
    assert_eq!(
        (s.paths.kernel.get(), s.paths.user.get()),
        if has { (1, 0) } else { (0, 1) },
        "kernel TLS: {has}"
    );
    let text = s.metrics.encode();
    for (path, n) in [("kernel", has), ("user", !has)] {
        let series = format!(
            "regcache_tls_connections_total{{path=\"{path}\"}} {}",
            u8::from(n)
        );
        assert!(text.contains(&series), "{series} in {text}");
    }
    let _ = s.stop.send(());
    drop(c);
    s.task.await.unwrap();

    let s = start_fast(
        server,
        KernelTls::Off,
        crate::config::ConnLimits::default(),
        FILE_LEN,
    )
    .await;
    let mut c = connect(s.addr, client).await;
    send(
        &mut c,
        "GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (_, body) = response(&mut c, false).await;
    assert!(body == content(FILE_LEN, 1), "file body differs");
    assert_eq!((s.paths.kernel.get(), s.paths.user.get()), (0, 1));
    // `Connection: close` ends with close_notify: a clean end, not a cut.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let _ = s.stop.send(());
    s.task.await.unwrap();
}

#[tokio::test]
async fn h2_over_tls_is_served_by_hyper() {
    let (server, _, cert) = configs_for(&[b"h2"], rustls::DEFAULT_VERSIONS);
    let s = start_fast(
        server,
        KernelTls::Auto,
        crate::config::ConnLimits::default(),
        FILE_LEN,
    )
    .await;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_der(&cert).unwrap())
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://127.0.0.1:{}/file", s.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "hyper GET /file 0");
    assert_eq!(s.files.calls.load(Ordering::SeqCst), 0);
    let _ = s.stop.send(());
    drop(client);
    s.task.await.unwrap();
}

#[tokio::test]
async fn a_tls_client_that_stops_reading_is_cut_at_the_write_timeout() {
    let (server, client, _) = configs_for(&[b"http/1.1"], rustls::DEFAULT_VERSIONS);
    let limits = crate::config::ConnLimits {
        write_timeout: Duration::from_secs(1),
        ..crate::config::ConnLimits::default()
    };
    let len = 64 << 20;
    let s = start_fast(server, KernelTls::Auto, limits, len).await;
    let mut c = connect(s.addr, client).await;
    send(&mut c, "GET /file HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let series = "regcache_connections_cut_total{listener=\"api\",reason=\"write\"} 1";
    let started = std::time::Instant::now();
    while !s.metrics.encode().contains(series) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not cut: {}",
            s.metrics.encode()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection is gone: what the client gets is short of the body.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    assert!(got.len() < len, "{} bytes", got.len());
    let _ = s.stop.send(());
    s.task.await.unwrap();
}

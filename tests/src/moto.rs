//! An S3 endpoint on loopback: moto's standalone server (`moto_server` from
//! the `moto[server]` PyPI package, in the test virtualenv), so the cluster
//! tests exercise a real S3 wire protocol (signed requests, path-style
//! buckets, ListObjectsV2) without any network or cloud account.
//!
//! ```no_run
//! # async fn demo() {
//! use regcache_tests::moto::MotoServer;
//! let moto = MotoServer::start();
//! moto.create_bucket("regcache-test").await;
//! let keys = moto.list_keys("regcache-test", "blobs/").await;
//! # }
//! // ... killed when `moto` is dropped.
//! ```
//!
//! moto accepts any credentials and does not check signatures, so the test
//! side sends unsigned requests (`PUT /<bucket>` creates a bucket,
//! `GET /<bucket>?list-type=2&prefix=…` lists keys) with a placeholder SigV4
//! `Authorization` header: without one, moto treats a request as anonymous
//! and refuses `GetObject` on a private object (403). Object bodies go with
//! `Content-Type: application/octet-stream`: moto's Flask front end would
//! read a form-encoded body as a form and store nothing. Objects live in the
//! server's memory: keep them small (the one 100 MiB blob of the cluster
//! tests is fine).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools::require_venv_program;

/// How long `moto_server` may take to answer after spawning (Python imports
/// take a second or two on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What moto needs to see to treat a request as authenticated (it checks
/// neither the key nor the signature).
const PLACEHOLDER_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
    Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";

/// A running `moto_server`. Killed (and reaped) on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    http: reqwest::Client,
    /// Keeps the log alive until the server is dropped.
    _dir: tempfile::TempDir,
}

impl MotoServer {
    /// Spawns `<venv>/bin/moto_server -H 127.0.0.1 -p <free port>` and waits
    /// until it answers HTTP. Blocks the calling thread for the start-up.
    ///
    /// # Panics
    /// When `moto_server` is not in the test virtualenv (saying how to
    /// install it), or when it does not answer within 30 s (with its log).
    pub fn start() -> MotoServer {
        let program = require_venv_program("moto_server");
        let mut last_log = String::new();
        for _attempt in 0..3 {
            match Self::try_start(&program) {
                Ok(moto) => return moto,
                Err(log) if log.contains("in use") => last_log = log,
                Err(log) => panic!("moto_server did not come up: {log}"),
            }
        }
        panic!("moto_server could not bind a free port three times; last log:\n{last_log}")
    }

    fn try_start(program: &Path) -> Result<MotoServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("regcache-moto-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let log_path = dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let addr = crate::ports::free_addr();
        let child = Command::new(program)
            .arg("-H")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(addr.port().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", program.display()));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_static(PLACEHOLDER_AUTHORIZATION),
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut moto = MotoServer {
            child,
            addr,
            log_path,
            http,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                return Err(format!("(exited with {status}) on {addr}\n{}", moto.log()));
            }
            if crate::ports::answers_http(addr, "/") {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "(no answer within {START_TIMEOUT:?}) on {addr}\n{}",
                    moto.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`: the S3 endpoint (path-style).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote (its request log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Creates `bucket` (unsigned `PUT /<bucket>`).
    ///
    /// # Panics
    /// When moto does not answer 200.
    pub async fn create_bucket(&self, bucket: &str) {
        let url = format!("{}/{bucket}", self.url());
        let response = self
            .http
            .put(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "creating bucket {bucket}: PUT {url}: {body}");
    }

    /// Stores `body` as `bucket/key` (unsigned `PUT`, octet-stream).
    ///
    /// # Panics
    /// When moto does not answer 200.
    pub async fn put_object(&self, bucket: &str, key: &str, body: bytes::Bytes) {
        let url = format!("{}/{bucket}/{key}", self.url());
        let response = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "PUT {url}: {text}");
    }

    /// Every key in `bucket` that starts with `prefix`, in S3's order
    /// (ListObjectsV2, following continuation tokens).
    ///
    /// # Panics
    /// When moto does not answer 200 (e.g. no such bucket).
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2".to_owned()), ("prefix", prefix.to_owned())];
            if let Some(token) = &token {
                query.push(("continuation-token", token.clone()));
            }
            let url = format!("{}/{bucket}", self.url());
            let response = self
                .http
                .get(&url)
                .query(&query)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}?list-type=2: {e}"));
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert_eq!(status, 200, "listing {bucket}/{prefix}: {body}");
            keys.extend(xml_elements(&body, "Key"));
            token = xml_elements(&body, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() || !body.contains("<IsTruncated>true</IsTruncated>") {
                return keys;
            }
        }
    }

    /// The bytes of object `bucket/key`, or `None` when it does not exist.
    ///
    /// # Panics
    /// On a transport failure or a status other than 200 / 404.
    pub async fn get_object(&self, bucket: &str, key: &str) -> Option<bytes::Bytes> {
        let url = format!("{}/{bucket}/{key}", self.url());
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        match response.status().as_u16() {
            200 => Some(response.bytes().await.unwrap()),
            404 => None,
            other => panic!("GET {url}: status {other}"),
        }
    }

    /// Kills the server now (also done on drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The text of every `<name>…</name>` element, XML entities decoded (S3
/// keys are plain paths here; a small scan does, no XML parser needed).
fn xml_elements(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else {
            break;
        };
        out.push(unescape(&after[..end]));
        rest = &after[end + close.len()..];
    }
    out
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_a_list_objects_answer() {
        let xml = "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>false</IsTruncated>\
                   <Contents><Key>blobs/sha256/ab</Key><Size>1</Size></Contents>\
                   <Contents><Key>tags/a&amp;b</Key></Contents><KeyCount>2</KeyCount>\
                   </ListBucketResult>";
        assert_eq!(
            xml_elements(xml, "Key"),
            vec!["blobs/sha256/ab".to_owned(), "tags/a&b".to_owned()]
        );
        assert!(xml_elements(xml, "NextContinuationToken").is_empty());
    }
}

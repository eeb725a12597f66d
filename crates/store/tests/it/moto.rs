//! A moto S3 server for the shared-tier tests: started on a free loopback
//! port, one bucket created, killed on drop.
//!
//! moto (`moto[server]` from tests/requirements.txt) is installed by
//! `scripts/test` into the virtualenv `$REGCACHE_TEST_VENV`
//! (`target/test-venv` when unset, as the e2e harness does). It keeps
//! objects in memory, so keep test data small.
//!
//! Why not `moto_server` itself: it serves each request on its own thread,
//! and its conditional writes are check-then-act without a lock (PutObject
//! and CompleteMultipartUpload look for an existing key, then build and
//! insert the new one). Two overlapping creates of one key then both succeed
//! (seen here: 2 of 4 concurrent 12 MiB uploads "created" the object, by
//! single PUT and by multipart alike), which real S3 never does: its
//! conditional writes are atomic per request. So the same moto application
//! is run by [`SERIAL_MOTO`] with werkzeug's `threaded=False`: requests are
//! handled one at a time, each atomic as on S3, while the clients still race
//! at request granularity.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regcache_store::SharedConfig;

pub const BUCKET: &str = "regcache-test";
pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-do-not-print";

/// A running moto server; killed (and reaped) on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

/// `moto_server` with one request at a time (see the module docs). Run as
/// `python -c SERIAL_MOTO <host> <port>`.
const SERIAL_MOTO: &str = r#"
import os, sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
run_simple(host, port, DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)
"#;

/// The virtualenv's python, once `moto_server` is known to be installed there.
fn moto_python() -> PathBuf {
    let venv = std::env::var_os("REGCACHE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/test-venv")
                .to_path_buf()
        });
    let program = venv.join("bin").join("moto_server");
    assert!(
        program.is_file(),
        "moto_server not found: run scripts/test (it installs tests/requirements.txt into \
         target/test-venv), or set REGCACHE_TEST_VENV (looked for {})",
        program.display()
    );
    venv.join("bin").join("python")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

impl Moto {
    /// Starts moto and creates [`BUCKET`]. Retries on another port when the
    /// chosen one was taken between probing and moto's bind.
    pub async fn start() -> Moto {
        let python = moto_python();
        let mut last_failure = String::new();
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&python)
                .args(["-c", SERIAL_MOTO, "127.0.0.1", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start moto");
            let mut moto = Moto {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
            };
            match moto.wait_ready().await {
                Ok(()) => {
                    moto.create_bucket(BUCKET).await;
                    return moto;
                }
                Err(why) => last_failure = why,
            }
        }
        panic!("moto did not start: {last_failure}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("moto exited with {status} (port taken?)"));
            }
            if let Ok(response) = client.get(&self.endpoint).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("{} did not answer within 60 s", self.endpoint))
    }

    /// Unsigned `PUT /<bucket>` (moto doesn't check signatures).
    pub async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("create bucket");
        assert!(
            response.status().is_success(),
            "create bucket: {}",
            response.status()
        );
    }

    /// Settings for the test bucket under `prefix`, with static keys.
    pub fn config(&self, prefix: &str) -> SharedConfig {
        let mut config = SharedConfig::new(BUCKET);
        config.prefix = prefix.to_owned();
        config.endpoint = Some(self.endpoint.clone());
        config.path_style = true;
        config.access_key_id = Some(ACCESS_KEY.to_owned());
        config.secret_access_key = Some(SECRET_KEY.to_owned());
        config
    }

    /// A raw object_store client on the same bucket, to look behind the tier.
    pub fn raw(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_copy_if_not_exists(object_store::aws::S3CopyIfNotExists::Multipart)
            .build()
            .expect("raw client")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Kernel TLS (kTLS) for the API listener: after rustls's handshake, its
//! traffic secrets go to the kernel (`TCP_ULP` "tls", `TLS_TX`/`TLS_RX`) and
//! the connection is served as a plain socket, blobs with `sendfile(2)`: the
//! kernel encrypts page-cache pages on their way out, as nginx's
//! `ssl_conf_command Options KTLS` does.
//!
//! Handing the secrets over consumes rustls's connection: a failure after
//! that loses the client. So whether the kernel can do it is asked once per
//! process, on throwaway loopback sockets ([`probe`]): first `TCP_ULP`
//! "tls" (absent without the `tls` module, e.g. when `/proc/net/tls_stat`
//! is missing), then each cipher suite ([`ktls::CompatibleCiphers`]). Only a
//! connection whose negotiated suite passed, and whose ALPN is not `h2`
//! (HTTP/2 stays on hyper over rustls), is switched; every other one stays
//! in userspace. The `ktls` crate reads the kernel's record-type control
//! messages: a `close_notify` alert ends the stream, other non-data records
//! (a TLS 1.3 KeyUpdate) end the connection with an error.
//!
//! `kernel_tls = "off"` in the configuration never probes.
//! `regcache_tls_connections_total{path="kernel"|"user"}` counts connections
//! by the path their application data took.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;

/// `kernel_tls` in the configuration.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KernelTls {
    /// Kernel TLS where the kernel has it, userspace elsewhere.
    #[default]
    Auto,
    /// Always userspace (rustls).
    Off,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsPath {
    /// `kernel` or `user`.
    pub path: &'static str,
}

/// `regcache_tls_connections_total`, both series resolved once.
#[derive(Clone, Debug, Default)]
pub struct TlsPaths {
    pub kernel: Counter,
    pub user: Counter,
}

impl TlsPaths {
    pub fn register(registry: &mut Registry) -> TlsPaths {
        let family = Family::<TlsPath, Counter>::default();
        registry.register(
            "tls_connections",
            "TLS connections on the API listener by the path their data took (kernel: kernel TLS, sendfile; user: rustls)",
            family.clone(),
        );
        let kernel = family.get_or_create(&TlsPath { path: "kernel" }).clone();
        let user = family.get_or_create(&TlsPath { path: "user" }).clone();
        TlsPaths { kernel, user }
    }
}

/// Whether the kernel takes `TCP_ULP` "tls" on a connected loopback socket:
/// asked once per process.
pub fn kernel_has_tls() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| match ulp_probe() {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "no kernel TLS (setsockopt TCP_ULP \"tls\" failed); TLS is served by rustls in userspace");
            false
        }
    })
}

fn ulp_probe() -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let _server = listener.accept()?;
    set_ulp_tls(&client)
}

fn set_ulp_tls(socket: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::TcpUlp};
    setsockopt(socket, TcpUlp::default(), b"tls").map_err(std::io::Error::from)
}

/// The cipher suites the kernel can take over, or `None` without kernel TLS
/// (asked once per process; the suites on loopback sockets of the `ktls`
/// crate's own).
pub async fn probe() -> Option<&'static ktls::CompatibleCiphers> {
    static CIPHERS: tokio::sync::OnceCell<Option<ktls::CompatibleCiphers>> =
        tokio::sync::OnceCell::const_new();
    CIPHERS
        .get_or_init(|| async {
            if !kernel_has_tls() {
                return None;
            }
            match ktls::CompatibleCiphers::new().await {
                Ok(c) => {
                    tracing::info!(ciphers = ?c, "kernel TLS available");
                    Some(c)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kernel TLS probe failed; TLS is served by rustls in userspace");
                    None
                }
            }
        })
        .await
        .as_ref()
}

//! Every upstream failure names its cause ([`Cause`]), read from the error's
//! source chain: a real refused connection, a DNS name that does not
//! resolve, a TLS handshake with something that does not speak TLS, a body
//! cut short, a connection reset mid-body, a stalled body.

use std::time::Duration;

use futures_util::StreamExt;
use regcache_upstream::{Cause, TimeoutPhase, UpstreamClient, UpstreamError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{closed_port, config, sha256};

fn one_attempt(url: url::Url) -> UpstreamClient {
    let mut c = config(url);
    c.retry.max_attempts = 1;
    c.connect_timeout = Duration::from_secs(5);
    c.body_stall_timeout = Duration::from_millis(300);
    UpstreamClient::new(c).unwrap()
}

/// The error a blob GET's body ends with, after its headers came.
async fn body_error(up: &UpstreamClient) -> UpstreamError {
    let body = up.get_blob("a", &sha256(b"x"), None).await.unwrap();
    let items: Vec<_> = body.stream.collect().await;
    items
        .into_iter()
        .find_map(Result::err)
        .expect("the body fails")
}

/// A TCP server answering each connection with `head` + 10 body bytes of a
/// 100-byte body, then `end`ing the connection.
async fn half_body(end: End) -> url::Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                match end {
                    End::Close => drop(stream),
                    End::Reset => {
                        // SO_LINGER 0: closing sends a RST.
                        #[allow(deprecated)]
                        stream.set_linger(Some(Duration::ZERO)).unwrap();
                        drop(stream);
                    }
                    End::Hold => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    url
}

#[derive(Clone, Copy)]
enum End {
    Close,
    Reset,
    Hold,
}

#[tokio::test]
async fn refused() {
    let addr = closed_port().await;
    let up = one_attempt(url::Url::parse(&format!("http://{addr}")).unwrap());
    let err = up.head_blob("a", &sha256(b"x")).await.unwrap_err();
    assert_eq!(err.cause(), Cause::Refused, "{err:?}");
    assert!(err.to_string().ends_with(": connection refused"), "{err}");
    assert_eq!(err.cause().label(), "refused");
    assert_eq!(up.stats().failures.get("refused"), Some(&1), "counted");
}

#[tokio::test]
async fn dns() {
    let up = one_attempt(url::Url::parse("http://regcache-test.invalid:5000").unwrap());
    let err = up.head_blob("a", &sha256(b"x")).await.unwrap_err();
    assert_eq!(err.cause(), Cause::Dns, "{err:?}");
    assert!(err.to_string().ends_with(": DNS lookup failed"), "{err}");
}

#[tokio::test]
async fn tls_with_a_server_that_does_not_speak_it() {
    let plain = half_body(End::Close).await;
    let url = url::Url::parse(&plain.as_str().replacen("http:", "https:", 1)).unwrap();
    let up = one_attempt(url);
    let err = up.head_blob("a", &sha256(b"x")).await.unwrap_err();
    assert_eq!(err.cause(), Cause::Tls, "{err:?}");
    assert!(err.to_string().ends_with(": TLS failure"), "{err}");
}

#[tokio::test]
async fn body_closed_early() {
    let up = one_attempt(half_body(End::Close).await);
    let err = body_error(&up).await;
    assert_eq!(err.cause(), Cause::Closed, "{err:?}");
    assert!(
        err.to_string()
            .ends_with(": connection closed before the response was complete"),
        "{err}"
    );
}

#[tokio::test]
async fn body_reset() {
    let up = one_attempt(half_body(End::Reset).await);
    let err = body_error(&up).await;
    assert_eq!(err.cause(), Cause::Reset, "{err:?}");
    assert!(err.to_string().ends_with(": connection reset"), "{err}");
    let failures = up.stats().failures;
    assert_eq!(failures.get("reset"), Some(&1), "{failures:?}");
    assert_eq!(failures.len(), 1, "{failures:?}");
}

#[tokio::test]
async fn body_stalled() {
    let up = one_attempt(half_body(End::Hold).await);
    let err = body_error(&up).await;
    assert_eq!(err.cause(), Cause::Timeout(TimeoutPhase::Body), "{err:?}");
    assert_eq!(err.cause().label(), "timeout_body");
    assert!(
        err.to_string()
            .ends_with(": timed out reading the response body"),
        "{err}"
    );
}

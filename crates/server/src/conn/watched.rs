//! The IO hyper is given: cut when the client stops reading a response
//! (`write_timeout`), or stops sending a request body it started
//! (`body_timeout`).
//!
//! hyper has a header timeout but no write or body timeout. A write (or
//! flush) that stays `Pending` for the timeout fails with `TimedOut`; the
//! timer is polled with the same waker as the socket, so it fires even when
//! the socket never becomes writable again. Reads are timed only while a
//! request body is still to come ([`TrackedBody`] holds a
//! [`ConnState::body_started`] guard until its end): an idle kept-alive
//! connection is hyper's header timeout's business, and hyper's reads that
//! watch for a hang-up while a handler works after the body are not timed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Why a connection was cut, as seen by its IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCut {
    Write = 1,
    Body = 2,
}

/// Shared by a connection's IO and the requests served on it.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests with a body whose handler is running.
    bodies: AtomicUsize,
    cut: AtomicU8,
}

impl ConnState {
    /// A request with a body starts; its body is timed until the guard drops.
    pub fn body_started(self: &Arc<Self>) -> BodyGuard {
        self.bodies.fetch_add(1, Ordering::SeqCst);
        BodyGuard(self.clone())
    }

    fn reading_body(&self) -> bool {
        self.bodies.load(Ordering::SeqCst) > 0
    }

    fn set_cut(&self, why: IoCut) {
        let _ = self
            .cut
            .compare_exchange(0, why as u8, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Why the IO gave up, if it did.
    pub fn cut(&self) -> Option<IoCut> {
        match self.cut.load(Ordering::SeqCst) {
            1 => Some(IoCut::Write),
            2 => Some(IoCut::Body),
            _ => None,
        }
    }
}

/// Ends a request's body timing when dropped.
#[derive(Debug)]
pub struct BodyGuard(Arc<ConnState>);

impl Drop for BodyGuard {
    fn drop(&mut self) {
        self.0.bodies.fetch_sub(1, Ordering::SeqCst);
    }
}

/// hyper's request body, which keeps its connection's reads timed until it
/// has been read to its end (or dropped).
#[derive(Debug)]
pub struct TrackedBody {
    inner: hyper::body::Incoming,
    guard: Option<BodyGuard>,
}

impl TrackedBody {
    pub fn new(inner: hyper::body::Incoming, state: &Arc<ConnState>) -> TrackedBody {
        use hyper::body::Body as _;
        let guard = (!inner.is_end_stream()).then(|| state.body_started());
        TrackedBody { inner, guard }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `inner` with write and body-read timeouts.
#[derive(Debug)]
pub struct Watched<I> {
    inner: I,
    state: Arc<ConnState>,
    write_timeout: Duration,
    body_timeout: Duration,
    write_stall: Option<Pin<Box<Sleep>>>,
    read_stall: Option<Pin<Box<Sleep>>>,
}

impl<I> Watched<I> {
    pub fn new(
        inner: I,
        state: Arc<ConnState>,
        write_timeout: Duration,
        body_timeout: Duration,
    ) -> Watched<I> {
        Watched {
            inner,
            state,
            write_timeout,
            body_timeout,
            write_stall: None,
            read_stall: None,
        }
    }
}

/// `Pending` while `stall` (started now if not yet) runs; `TimedOut` after.
fn stalled<T>(
    stall: &mut Option<Pin<Box<Sleep>>>,
    after: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    let sleep = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
    match sleep.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no progress from the client",
        ))),
        Poll::Pending => Poll::Pending,
    }
}

impl<I: AsyncWrite + Unpin> Watched<I> {
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match res {
            Poll::Pending => {
                let r = stalled(&mut self.write_stall, self.write_timeout, cx);
                if matches!(r, Poll::Ready(Err(_))) {
                    self.state.set_cut(IoCut::Write);
                }
                r
            }
            ready => {
                self.write_stall = None;
                ready
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending if this.state.reading_body() => {
                let r = stalled(&mut this.read_stall, this.body_timeout, cx);
                if matches!(r, Poll::Ready(Err(_))) {
                    this.state.set_cut(IoCut::Body);
                }
                r
            }
            other => {
                this.read_stall = None;
                other
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_write(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch_write(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch_write(cx, res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_reading_is_cut_after_the_write_timeout() {
        let (server, _client) = tokio::io::duplex(1024);
        let state = Arc::new(ConnState::default());
        let mut io = Watched::new(
            server,
            state.clone(),
            Duration::from_secs(5),
            Duration::from_secs(7),
        );
        let started = tokio::time::Instant::now();
        let err = io.write_all(&vec![0u8; 64 << 10]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(state.cut(), Some(IoCut::Write));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_is_not_cut() {
        let (server, mut client) = tokio::io::duplex(1024);
        let state = Arc::new(ConnState::default());
        let mut io = Watched::new(
            server,
            state.clone(),
            Duration::from_secs(5),
            Duration::from_secs(7),
        );
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(4)).await;
                match client.read(&mut buf).await.unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        io.write_all(&[1u8; 8 << 10]).await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(reader.await.unwrap(), 8 << 10);
        assert_eq!(state.cut(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_timed_only_while_a_body_is_expected() {
        let (server, mut client) = tokio::io::duplex(1024);
        let state = Arc::new(ConnState::default());
        let mut io = Watched::new(
            server,
            state.clone(),
            Duration::from_secs(5),
            Duration::from_secs(7),
        );
        let mut buf = [0u8; 16];
        // Idle: no body expected, so no timeout here.
        let idle = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle read must wait");
        let body = state.body_started();
        client.write_all(b"abc").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        let started = tokio::time::Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        assert_eq!(state.cut(), Some(IoCut::Body));
        drop(body);
    }
}

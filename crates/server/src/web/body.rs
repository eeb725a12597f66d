//! The response body type: a fixed buffer (manifests, errors, memory-tier blobs)
//! or a stream of chunks (disk files, fills in progress, upstream pass-through).
//!
//! An enum rather than a boxed body so the common fixed case costs no allocation
//! and reports its exact size to hyper. A stream that ends with an error makes
//! hyper abort the connection instead of finishing the response: a client must
//! never mistake a truncated blob for a complete one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Frame, SizeHint};

use crate::metrics::Meter;

/// A boxed stream of body chunks; an `Err` aborts the response.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static>>;

/// Chunks a metered full body is cut into ([`Body::metered`]), so that what
/// hyper took is close to what it wrote when the client leaves early.
const METERED_SLICE: usize = 256 << 10;

pub enum Body {
    Full(Option<Bytes>),
    Stream {
        stream: ChunkStream,
        len: Option<u64>,
        /// Counts the chunks handed out (`regcache_served_bytes_total`).
        /// hyper writes what it takes before it takes more, so for a client
        /// that leaves early this is what was written plus at most a chunk
        /// and hyper's write buffer. The fast path takes the meter out and
        /// counts what its writes wrote ([`Body::take_meter`]).
        meter: Option<Meter>,
    },
}

impl Body {
    pub fn empty() -> Body {
        Body::Full(None)
    }

    pub fn full(b: impl Into<Bytes>) -> Body {
        let b = b.into();
        if b.is_empty() {
            Body::Full(None)
        } else {
            Body::Full(Some(b))
        }
    }

    pub fn stream(stream: ChunkStream, len: Option<u64>) -> Body {
        Body::Stream {
            stream,
            len,
            meter: None,
        }
    }

    /// This body, its bytes counted by `meter` as they go out. A full body
    /// becomes a stream of slices of it (no copy).
    pub fn metered(self, meter: Meter) -> Body {
        match self {
            Body::Full(None) => Body::Full(None),
            Body::Full(Some(b)) => {
                let len = b.len() as u64;
                let mut rest = b;
                let slices = std::iter::from_fn(move || {
                    (!rest.is_empty()).then(|| Ok(rest.split_to(rest.len().min(METERED_SLICE))))
                });
                Body::Stream {
                    stream: Box::pin(futures_util::stream::iter(slices)),
                    len: Some(len),
                    meter: Some(meter),
                }
            }
            Body::Stream { stream, len, .. } => Body::Stream {
                stream,
                len,
                meter: Some(meter),
            },
        }
    }

    /// The meter, for a writer that counts what it wrote itself.
    pub fn take_meter(&mut self) -> Option<Meter> {
        match self {
            Body::Stream { meter, .. } => meter.take(),
            Body::Full(_) => None,
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.as_ref().map_or(0, |b| b.len())),
            Body::Stream { len, .. } => write!(f, "Body::Stream({len:?})"),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream { stream, meter, .. } => match stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    if let Some(m) = meter {
                        m.add(b.len() as u64);
                    }
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    if let Some(m) = meter {
                        m.flush();
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream { len: Some(n), .. } => SizeHint::with_exact(*n),
            Body::Stream { len: None, .. } => SizeHint::default(),
        }
    }
}

/// A request body: hyper's, or none at all for requests the fast path
/// (`crate::fastpath`) parsed itself (which only takes requests without one).
#[derive(Debug)]
pub enum ReqBody {
    /// hyper's body, tracked for the connection's body timeout.
    Hyper(crate::conn::TrackedBody),
    Empty,
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ReqBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Hyper(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Hyper(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;
    use crate::metrics::{Metrics, ServedFrom};

    fn cache_served(m: &Metrics) -> String {
        m.encode()
            .lines()
            .find(|l| l.starts_with("regcache_served_bytes_total{source=\"cache\"}"))
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test]
    async fn a_metered_body_counts_what_was_taken_once() {
        let m = Metrics::new();
        let full = Body::full(vec![7u8; 600 << 10]).metered(m.meter(ServedFrom::Cache));
        assert_eq!(full.size_hint().exact(), Some(600 << 10));
        let mut body = full;
        // hyper takes one slice, then the client goes away.
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), METERED_SLICE);
        assert!(cache_served(&m).ends_with(" 0"), "{}", cache_served(&m));
        drop(body);
        assert!(
            cache_served(&m).ends_with(&format!(" {METERED_SLICE}")),
            "{}",
            cache_served(&m)
        );

        // Read to the end: counted when the stream ends, before the body goes.
        let body = Body::full(vec![1u8; 1000]).metered(m.meter(ServedFrom::Cache));
        let mut body = std::pin::pin!(body);
        let all = body.as_mut().collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 1000);
        let want = METERED_SLICE + 1000;
        assert!(
            cache_served(&m).ends_with(&format!(" {want}")),
            "{}",
            cache_served(&m)
        );
        // An empty body stays empty.
        assert!(
            Body::empty()
                .metered(m.meter(ServedFrom::Cache))
                .is_end_stream()
        );
    }
}

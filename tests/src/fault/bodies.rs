//! The fault proxy's damaged response bodies: a flipped byte, a cut (the
//! connection aborted after some bytes), a pause, a slow trickle.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::http_server::{Body, BoxError};

#[derive(Debug, Clone, Copy)]
pub(super) enum Damage {
    Corrupt,
    Truncate,
}

/// `body` with the byte at `at` flipped, or cut off (with an error, which
/// makes hyper abort the connection) once `at` bytes went out.
pub(super) fn damaged(body: Incoming, damage: Damage, at: u64) -> Body {
    let mut offset = 0u64;
    let mut done = false;
    let stream = body.into_data_stream().map(move |chunk| {
        if done {
            return Err::<Frame<Bytes>, BoxError>("fault proxy: body already cut".into());
        }
        let chunk = chunk.map_err(|e| -> BoxError { Box::new(e) })?;
        let start = offset;
        let end = start + chunk.len() as u64;
        offset = end;
        match damage {
            Damage::Corrupt if (start..end).contains(&at) => {
                let mut bytes = chunk.to_vec();
                bytes[(at - start) as usize] ^= 0xff;
                Ok(Frame::data(Bytes::from(bytes)))
            }
            Damage::Truncate if end > at => {
                done = true;
                let keep = (at - start) as usize;
                if keep == 0 {
                    Err("fault proxy: truncated on purpose".into())
                } else {
                    Ok(Frame::data(chunk.slice(..keep)))
                }
            }
            _ => Ok(Frame::data(chunk)),
        }
    });
    // After a truncation, one more poll yields the error that aborts the
    // connection (the stream above errors on the next chunk; if the upstream
    // body had no next chunk, `Truncated` adds the error).
    let stream = Truncated {
        inner: futures_util::StreamExt::boxed(stream),
        cut: matches!(damage, Damage::Truncate),
        finished: false,
    };
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

/// `body` with a pause of `pause` once `at` bytes went out.
pub(super) fn stalled(body: Incoming, at: u64, pause: Duration) -> Body {
    let mut offset = 0u64;
    let mut paused = false;
    let stream = body
        .into_data_stream()
        .map(move |chunk| -> Vec<Result<(Bytes, bool), BoxError>> {
            match chunk {
                Err(e) => vec![Err(Box::new(e))],
                Ok(chunk) => {
                    let start = offset;
                    offset += chunk.len() as u64;
                    if paused || offset <= at {
                        return vec![Ok((chunk, false))];
                    }
                    paused = true;
                    let keep = at.saturating_sub(start) as usize;
                    vec![
                        Ok((chunk.slice(..keep), false)),
                        Ok((chunk.slice(keep..), true)),
                    ]
                }
            }
        })
        .flat_map(futures_util::stream::iter)
        .then(move |piece| async move {
            let (bytes, pause_first) = piece?;
            if pause_first {
                tokio::time::sleep(pause).await;
            }
            Ok::<_, BoxError>(Frame::data(bytes))
        });
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

/// `body` forwarded at about `rate` bytes per second, in pieces of at most
/// 64 KiB.
pub(super) fn throttled(body: Incoming, rate: u64) -> Body {
    let rate = rate.max(1);
    let started = tokio::time::Instant::now();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stream = body
        .into_data_stream()
        .map(|chunk| match chunk {
            Ok(chunk) => {
                let pieces: Vec<Bytes> = (0..chunk.len())
                    .step_by(64 << 10)
                    .map(|at| chunk.slice(at..(at + (64 << 10)).min(chunk.len())))
                    .collect();
                futures_util::stream::iter(pieces.into_iter().map(Ok)).left_stream()
            }
            Err(e) => futures_util::stream::iter(vec![Err(e)]).right_stream(),
        })
        .flatten()
        .then(move |piece| {
            let sent = Arc::clone(&sent);
            async move {
                let piece = piece.map_err(|e| -> BoxError { Box::new(e) })?;
                let total = sent
                    .fetch_add(piece.len() as u64, std::sync::atomic::Ordering::Relaxed)
                    + piece.len() as u64;
                let due = started + Duration::from_secs_f64(total as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
                Ok::<_, BoxError>(Frame::data(piece))
            }
        });
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

/// Ends a truncated body with an error even when the inner stream ends
/// cleanly right after the cut.
struct Truncated {
    inner: futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, BoxError>>,
    cut: bool,
    finished: bool,
}

impl futures_util::Stream for Truncated {
    type Item = Result<Frame<Bytes>, BoxError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.finished {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(None) if self.cut => {
                self.finished = true;
                Poll::Ready(Some(Err("fault proxy: truncated on purpose".into())))
            }
            Poll::Ready(Some(Err(e))) => {
                self.finished = true;
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }
}

//! Resuming a blob fill whose upstream body broke off mid-way (a reset, a
//! connection closed early, a body that stalled past `body_stall_timeout`).
//!
//! The fill's writer keeps what it has; the pump asks the upstream again for
//! `Range: bytes=N-` from the byte it reached and appends the rest, so the
//! clients reading the fill see one uninterrupted body. The answer must be a
//! `206` whose `Content-Range` starts at `N` and runs to the end of the blob;
//! an upstream that ignores `Range` (`200`, the whole blob) is read from the
//! start with its first `N` bytes dropped. Nothing here trusts the bytes: the
//! writer hashes everything it appends and the commit's digest check decides,
//! so a resumed body that differs fails every client and caches nothing.
//!
//! Resumes are bounded ([`MAX_RESUMES`] per fill, with backoff); each
//! re-request has the upstream client's own retries for connection failures
//! and `5xx` besides.

use std::time::Duration;

use futures_util::StreamExt;
use regcache_store::FillWriter;
use regcache_upstream::{BlobBody, ByteStream, UpstreamError};

use super::blobs::Pump;

/// Most re-requests for one fill.
pub(super) const MAX_RESUMES: u32 = 5;
/// Wait before the first re-request; doubled each time, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Whether a fill whose body (or whose last re-request) failed with `error`,
/// after `resumes` re-requests, asks again: only for failures of the way to
/// the upstream (reset, closed, stalled, refused, timeouts, `5xx`, `429`),
/// never for an answer (`404`, `401`, a protocol error).
pub(super) fn should_resume(error: &UpstreamError, resumes: u32) -> bool {
    resumes < MAX_RESUMES && error.is_unavailable()
}

/// The wait before re-request number `n` (1-based).
pub(super) fn backoff(n: u32) -> Duration {
    BASE_BACKOFF
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// How to use the answer to a re-request from `offset`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// A `206` from `offset` to the end: append it all.
    Append,
    /// A `200` with the whole blob: drop its first `offset` bytes.
    SkipPrefix(u64),
}

/// Check the answer to `Range: bytes=offset-` against the blob's length
/// (`total`, when the first answer gave it); `Err` says what is wrong.
pub(super) fn plan(
    status: u16,
    content_range: Option<&str>,
    len: Option<u64>,
    offset: u64,
    total: Option<u64>,
) -> Result<Plan, String> {
    match status {
        206 => {
            let cr = content_range.unwrap_or_default();
            let (first, last, size) =
                parse_content_range(cr).ok_or_else(|| format!("unusable Content-Range {cr:?}"))?;
            if first != offset {
                return Err(format!(
                    "asked for bytes from {offset}, got Content-Range {cr:?}"
                ));
            }
            let size = size.or(total);
            if let (Some(size), Some(total)) = (size, total)
                && size != total
            {
                return Err(format!(
                    "the blob was {total} bytes, Content-Range {cr:?} says {size}"
                ));
            }
            if size.is_some_and(|s| last + 1 != s) {
                return Err(format!("Content-Range {cr:?} stops before the end"));
            }
            if len.is_some_and(|l| l != last + 1 - first) {
                return Err(format!(
                    "Content-Length {len:?} does not match Content-Range {cr:?}"
                ));
            }
            Ok(Plan::Append)
        }
        200 => {
            if let (Some(len), Some(total)) = (len, total)
                && len != total
            {
                return Err(format!(
                    "the blob was {total} bytes, the full re-fetch is {len}"
                ));
            }
            Ok(Plan::SkipPrefix(offset))
        }
        s => Err(format!("answered HTTP {s} to a range request")),
    }
}

/// `bytes first-last/size` (`size` may be `*`).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let size = match size.trim() {
        "*" => None,
        s => Some(s.parse::<u64>().ok()?),
    };
    (first <= last && size.is_none_or(|s| last < s)).then_some((first, last, size))
}

/// `stream` without its first `n` bytes.
fn skip_prefix(stream: ByteStream, n: u64) -> ByteStream {
    Box::pin(
        stream
            .scan(n, |left, item| {
                let item = match item {
                    Ok(bytes) if *left > 0 => {
                        let k = (*left).min(bytes.len() as u64);
                        *left -= k;
                        Ok(bytes.slice(k as usize..))
                    }
                    other => other,
                };
                std::future::ready(Some(item))
            })
            .filter(|item| std::future::ready(!matches!(item, Ok(b) if b.is_empty()))),
    )
}

impl Pump {
    /// Copy `body` into the writer; when the body breaks off, ask again from
    /// the byte reached (see the module docs). `total` is the blob's length
    /// from the first answer, when it gave one. Errors as [`Pump::copy`]'s:
    /// `Some` the last upstream failure, `None` the writer's.
    pub(super) async fn copy_resuming(
        &self,
        body: BlobBody,
        total: Option<u64>,
        writer: &mut FillWriter,
    ) -> Result<(), Option<UpstreamError>> {
        let mut next = Ok(body);
        let mut resumes = 0;
        loop {
            let error = match next {
                Ok(body) => match self.copy(body, writer).await {
                    Ok(()) => return Ok(()),
                    Err(None) => return Err(None),
                    Err(Some(e)) => e,
                },
                Err(e) => e,
            };
            let offset = writer.written();
            if !should_resume(&error, resumes) {
                return Err(Some(error));
            }
            resumes += 1;
            let delay = backoff(resumes);
            tracing::warn!(
                digest = %self.digest,
                upstream = %self.upstream_name,
                cause = %error.cause(),
                error = %error,
                offset,
                total,
                attempt = resumes,
                delay_ms = delay.as_millis() as u64,
                "upstream blob body broke off; asking again from where it stopped"
            );
            tokio::time::sleep(delay).await;
            next = self.reopen(offset, total).await;
        }
    }

    /// The rest of the blob from `offset`.
    pub(super) async fn reopen(
        &self,
        offset: u64,
        total: Option<u64>,
    ) -> Result<BlobBody, UpstreamError> {
        let range = (offset > 0).then_some((offset, None));
        let body = self
            .upstream
            .get_blob(&self.repository, &self.digest, range)
            .await?;
        let want = if offset > 0 {
            plan(
                body.status,
                body.content_range.as_deref(),
                body.len,
                offset,
                total,
            )
        } else {
            plan(body.status, None, body.len, 0, total)
        };
        match want {
            Ok(Plan::Append) => Ok(body),
            Ok(Plan::SkipPrefix(0)) => Ok(body),
            Ok(Plan::SkipPrefix(n)) => {
                tracing::info!(digest = %self.digest, upstream = %self.upstream_name, offset, "the upstream ignored Range; reading the whole blob again");
                Ok(BlobBody {
                    stream: skip_prefix(body.stream, n),
                    ..body
                })
            }
            Err(detail) => Err(UpstreamError::Protocol {
                upstream: self.upstream_name.clone(),
                detail: format!("resuming blob {} from byte {offset}: {detail}", self.digest),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use regcache_upstream::TimeoutPhase;

    fn up(status: u16) -> UpstreamError {
        UpstreamError::Registry {
            upstream: "u".into(),
            status,
            envelope: None,
            retry_after: None,
        }
    }

    #[test]
    fn resumes_failures_of_the_way_not_answers() {
        let reset = UpstreamError::Transport {
            upstream: "u".into(),
            source: std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        };
        let stalled = UpstreamError::Timeout {
            upstream: "u".into(),
            phase: TimeoutPhase::Body,
        };
        assert!(should_resume(&reset, 0));
        assert!(should_resume(&stalled, 4));
        assert!(!should_resume(&stalled, MAX_RESUMES), "bounded");
        assert!(should_resume(&up(503), 1));
        assert!(!should_resume(&up(404), 0));
        assert!(!should_resume(&up(401), 0));
        let protocol = UpstreamError::Protocol {
            upstream: "u".into(),
            detail: "bad".into(),
        };
        assert!(!should_resume(&protocol, 0));
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_206_must_continue_exactly_where_the_fill_stopped() {
        let ok = plan(206, Some("bytes 50-99/100"), Some(50), 50, Some(100));
        assert_eq!(ok, Ok(Plan::Append));
        assert_eq!(
            plan(206, Some("bytes 50-99/*"), Some(50), 50, Some(100)),
            Ok(Plan::Append)
        );
        assert_eq!(
            plan(206, Some("bytes 50-99/100"), None, 50, None),
            Ok(Plan::Append)
        );
        for (cr, len) in [
            ("bytes 0-99/100", Some(100)), // from the start
            ("bytes 40-99/100", Some(60)), // before the offset
            ("bytes 50-89/100", Some(40)), // stops short of the end
            ("bytes 50-99/120", Some(50)), // another length
            ("bytes 50-99/100", Some(10)), // Content-Length disagrees
            ("bytes */100", None),
            ("items 50-99/100", Some(50)),
            ("bytes 99-50/100", Some(50)),
        ] {
            assert!(
                plan(206, Some(cr), len, 50, Some(100)).is_err(),
                "{cr} accepted"
            );
        }
        assert!(plan(206, None, Some(50), 50, Some(100)).is_err());
    }

    #[test]
    fn a_200_is_a_full_refetch_and_anything_else_fails() {
        assert_eq!(
            plan(200, None, Some(100), 50, Some(100)),
            Ok(Plan::SkipPrefix(50))
        );
        assert_eq!(plan(200, None, None, 50, None), Ok(Plan::SkipPrefix(50)));
        assert!(plan(200, None, Some(90), 50, Some(100)).is_err());
        assert!(plan(416, None, None, 50, Some(100)).is_err());
        assert!(plan(204, None, None, 50, Some(100)).is_err());
    }

    #[tokio::test]
    async fn skip_prefix_drops_exactly_n_bytes_across_chunks() {
        let chunks: Vec<Result<Bytes, UpstreamError>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"defg")),
            Ok(Bytes::from_static(b"hij")),
        ];
        for n in 0..=10u64 {
            let s: ByteStream = Box::pin(futures_util::stream::iter(chunks.clone()));
            let got: Vec<u8> = skip_prefix(s, n)
                .map(|c| c.unwrap().to_vec())
                .concat()
                .await;
            assert_eq!(got, b"abcdefghij"[n as usize..].to_vec(), "skip {n}");
        }
    }
}

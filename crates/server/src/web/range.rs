//! The part of a blob a `GET` asks for: pure parsing of a single `Range`
//! (fuzzed: `fuzz/fuzz_targets/range.rs`).

use http::StatusCode;

/// The part of a blob a `GET` sends: the whole (200) or one `Range` (206).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobSlice {
    pub status: StatusCode,
    pub start: u64,
    pub n: u64,
    pub content_range: Option<String>,
}

impl BlobSlice {
    /// `None` when the range can't be satisfied (416).
    pub fn of(range: Option<&str>, len: u64) -> Option<BlobSlice> {
        Some(match parse_range(range, len) {
            RangeSpec::Full => BlobSlice {
                status: StatusCode::OK,
                start: 0,
                n: len,
                content_range: None,
            },
            RangeSpec::Partial(s, e) => BlobSlice {
                status: StatusCode::PARTIAL_CONTENT,
                start: s,
                n: e + 1 - s,
                content_range: Some(format!("bytes {s}-{e}/{len}")),
            },
            RangeSpec::Unsatisfiable => return None,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    Full,
    /// Inclusive first and last byte.
    Partial(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range; anything else (several ranges, other units,
/// garbage) is ignored and the whole blob is served, as RFC 9110 allows.
pub fn parse_range(h: Option<&str>, len: u64) -> RangeSpec {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last `b` bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::Full;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Partial(len.saturating_sub(n), len - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Full;
    };
    let end = if b.is_empty() {
        None
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => Some(e),
            _ => return RangeSpec::Full,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    let last = end.map_or(len - 1, |e| e.min(len - 1));
    RangeSpec::Partial(start, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=6-"), 16), RangeSpec::Partial(6, 15));
        assert_eq!(parse_range(Some("bytes=0-0"), 16), RangeSpec::Partial(0, 0));
        assert_eq!(
            parse_range(Some("bytes=2-100"), 16),
            RangeSpec::Partial(2, 15)
        );
        assert_eq!(
            parse_range(Some("bytes=-4"), 16),
            RangeSpec::Partial(12, 15)
        );
        assert_eq!(
            parse_range(Some("bytes=-40"), 16),
            RangeSpec::Partial(0, 15)
        );
        assert_eq!(parse_range(Some("bytes=16-"), 16), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 16), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 16), RangeSpec::Full);
        assert_eq!(parse_range(Some("items=0-1"), 16), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=5-2"), 16), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=x-"), 16), RangeSpec::Full);
    }

    #[test]
    fn slices_stay_inside_the_blob() {
        for len in [0u64, 1, 16] {
            for h in [
                "bytes=0-",
                "bytes=3-7",
                "bytes=-5",
                "bytes=15-40",
                "junk",
                "",
            ] {
                if let Some(s) = BlobSlice::of(Some(h), len) {
                    assert!(s.start + s.n <= len, "{h} of {len}: {s:?}");
                }
            }
        }
        let s = BlobSlice::of(Some("bytes=3-7"), 16).unwrap();
        assert_eq!(
            (s.status, s.start, s.n, s.content_range.as_deref()),
            (StatusCode::PARTIAL_CONTENT, 3, 5, Some("bytes 3-7/16"))
        );
    }
}

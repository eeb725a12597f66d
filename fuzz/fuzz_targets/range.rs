//! `Range` header parsing for blob GETs (`regcache_server::web::range`), on
//! fuzzed headers and blob lengths.
//!
//! Input layout: 8 bytes of blob length (little endian, reduced mod 2^40 so
//! lengths stay realistic), then the header value as UTF-8 (lossy).
//!
//! Invariants (a failure is a finding):
//! 1. parsing never panics, whatever the header and length;
//! 2. a satisfiable range lies inside the blob: `start + n <= len`, `n > 0`
//!    for a 206, and the whole blob (`start == 0`, `n == len`) for a 200;
//! 3. a 206's `Content-Range` is `bytes <first>-<last>/<len>` with exactly
//!    the slice's first and last byte;
//! 4. `None` (416) only when the blob is empty or the header names a start
//!    at or past its end, or a zero-length suffix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regcache_server::web::range::BlobSlice;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (len_bytes, header) = data.split_at(8);
    let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or([0; 8])) % (1 << 40);
    let header = String::from_utf8_lossy(header);
    match BlobSlice::of(Some(&header), len) {
        Some(s) if s.status.as_u16() == 200 => {
            assert_eq!((s.start, s.n), (0, len), "{header:?} of {len}");
            assert!(s.content_range.is_none());
        }
        Some(s) => {
            assert_eq!(s.status.as_u16(), 206);
            assert!(s.n > 0 && s.start + s.n <= len, "{header:?} of {len}: {s:?}");
            assert_eq!(
                s.content_range.as_deref(),
                Some(format!("bytes {}-{}/{len}", s.start, s.start + s.n - 1).as_str())
            );
        }
        None => assert!(
            len == 0 || header.contains("bytes="),
            "416 for {header:?} of {len}"
        ),
    }
});

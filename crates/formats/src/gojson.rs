//! The pieces of Go 1.20 `encoding/json` (and `time`) behaviour that the
//! Schema 2 → Schema 1 conversion must reproduce byte for byte (spec 03 §3.4).
//!
//! Why a hand-written scanner instead of `serde_json`: the conversion has to
//! accept exactly what Go's decoder accepts and decode it the way Go does.
//! `serde_json` differs on inputs that matter for a proxy that must never
//! refuse what distribution converts and must never crash on what it gets:
//!
//! * it stops at 128 levels of nesting (Go allows 10 000), and recursing
//!   deeper would risk the stack on hostile input; the scanner here is
//!   iterative, so depth costs heap, not stack;
//! * it rejects invalid UTF-8 and lone UTF-16 surrogates in strings, which Go
//!   accepts and replaces by U+FFFD (byte by byte, not by maximal subpart);
//! * raw values must be kept as the exact original bytes, invalid UTF-8
//!   included, because Go copies them verbatim into the top `v1Compatibility`.
//!
//! Everything here works on byte slices, never panics, and allocates only
//! when a decoded string differs from its raw text.

use std::borrow::Cow;
use std::collections::HashMap;

/// Go's `encoding/json` nesting limit (`maxNestingDepth`, Go 1.15+): 10 000
/// open arrays/objects are fine, one more is a syntax error.
pub const MAX_NESTING_DEPTH: usize = 10_000;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A document that Go's `json.Unmarshal` would refuse before decoding anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {reason}")]
pub struct SyntaxError {
    /// Byte offset of the offending input.
    pub offset: usize,
    /// What was wrong, in the spirit of Go's scanner messages.
    pub reason: &'static str,
}

fn syntax(offset: usize, reason: &'static str) -> SyntaxError {
    SyntaxError { offset, reason }
}

// ---------------------------------------------------------------------------
// Word-at-a-time scanning
// ---------------------------------------------------------------------------

// The hot loops (string bodies, skipped values, E1, E3) look for a few
// special bytes in long runs of ordinary ones. Testing eight bytes per step
// with the classic SWAR tricks keeps them fast without `unsafe` or SIMD
// crates. For each mask, a false positive can only appear in a byte above a
// true match (borrows travel upwards), so the lowest set bit is exact.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `x` equal to `c` (lowest one exact).
#[inline(always)]
fn eq_mask(x: u64, c: u8) -> u64 {
    let v = x ^ (LO * u64::from(c));
    v.wrapping_sub(LO) & !v & HI
}

/// High bit set in each byte of `x` below 0x20 (lowest one exact).
#[inline(always)]
fn ctl_mask(x: u64) -> u64 {
    x.wrapping_sub(LO * 0x20) & !x & HI
}

/// Index of the first byte at or after `from` for which `mask` (eight bytes at
/// a time) or `hit` (the tail) fires; `s.len()` if none.
#[inline(always)]
fn find(s: &[u8], from: usize, mask: impl Fn(u64) -> u64, hit: impl Fn(u8) -> bool) -> usize {
    let mut i = from;
    while let Some(chunk) = s.get(i..i + 8) {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let m = mask(u64::from_le_bytes(word));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = s.get(i) {
        if hit(b) {
            return i;
        }
        i += 1;
    }
    s.len().max(from)
}

/// Bytes E1 must look at in valid UTF-8: controls, `"`, `\`, `<`, `>`, `&`
/// and 0xE2 (the lead byte of U+2028/U+2029).
#[inline(always)]
fn e1_mask(x: u64) -> u64 {
    ctl_mask(x)
        | eq_mask(x, b'"')
        | eq_mask(x, b'\\')
        | eq_mask(x, b'<')
        | eq_mask(x, b'>')
        | eq_mask(x, b'&')
        | eq_mask(x, 0xE2)
}

#[inline(always)]
fn e1_hit(b: u8) -> bool {
    b < 0x20 || matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&' | 0xE2)
}

// ---------------------------------------------------------------------------
// E1: string encoding
// ---------------------------------------------------------------------------

/// E1: append `s` as a JSON string exactly as Go 1.20's `json.Marshal` does
/// (HTML-safe: `<`, `>`, `&` become `\u003c` …, U+2028/U+2029 are escaped,
/// other controls are `\u00XX` in lowercase hex except `\n`, `\r`, `\t`;
/// Go 1.20 writes U+0008/U+000C as `\u0008`/`\u000c`, not `\b`/`\f`).
pub fn append_string(out: &mut Vec<u8>, s: &str) {
    append_quoted(out, s.as_bytes(), true);
}

/// E1 for a Go `string` holding arbitrary bytes: like [`append_string`], and
/// each byte that does not start a valid UTF-8 sequence becomes the six
/// characters `\ufffd` (Go's `encodeState.string`). This is what happens to a
/// `v1Compatibility` text that carries invalid UTF-8 copied from the config.
pub fn append_string_bytes(out: &mut Vec<u8>, s: &[u8]) {
    let valid = std::str::from_utf8(s).is_ok();
    append_quoted(out, s, valid);
}

/// E1 into a new `String` (convenience for tests and small values).
pub fn encode_string(s: &str) -> String {
    let mut v = Vec::with_capacity(s.len() + 2);
    append_string(&mut v, s);
    String::from_utf8(v).unwrap_or_default()
}

fn append_quoted(out: &mut Vec<u8>, s: &[u8], valid_utf8: bool) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    loop {
        // Skip ordinary bytes: in valid UTF-8 only 0xE2 among non-ASCII bytes
        // matters; otherwise every non-ASCII byte is checked for validity.
        i = if valid_utf8 {
            find(s, i, e1_mask, e1_hit)
        } else {
            find(s, i, |x| e1_mask(x) | (x & HI), |b| e1_hit(b) || b >= 0x80)
        };
        let Some(&b) = s.get(i) else { break };
        if b < 0x80 {
            out.extend_from_slice(s.get(start..i).unwrap_or_default());
            match b {
                b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                _ => push_u00(out, b),
            }
            i += 1;
            start = i;
            continue;
        }
        if let (0xE2, Some(0x80), Some(&last @ (0xA8 | 0xA9))) = (b, s.get(i + 1), s.get(i + 2)) {
            out.extend_from_slice(s.get(start..i).unwrap_or_default());
            out.extend_from_slice(b"\\u202");
            out.push(HEX[usize::from(last & 0xF)]);
            i += 3;
            start = i;
            continue;
        }
        if valid_utf8 {
            i += 1;
            continue;
        }
        match go_rune_width(s.get(i..).unwrap_or_default()) {
            Some(w) => i += w,
            None => {
                out.extend_from_slice(s.get(start..i).unwrap_or_default());
                out.extend_from_slice(b"\\ufffd");
                i += 1;
                start = i;
            }
        }
    }
    out.extend_from_slice(s.get(start..).unwrap_or_default());
    out.push(b'"');
}

fn push_u00(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(b"\\u00");
    out.push(HEX[usize::from(b >> 4)]);
    out.push(HEX[usize::from(b & 0xF)]);
}

/// Width of the valid UTF-8 sequence starting `s`, or `None` where Go's
/// `utf8.DecodeRune` would return `(RuneError, 1)`. Rust's and Go's notions
/// of valid UTF-8 coincide (no overlongs, no surrogates, ≤ U+10FFFF).
fn go_rune_width(s: &[u8]) -> Option<usize> {
    let lead = *s.first()?;
    let w = match lead {
        0x00..=0x7F => return Some(1),
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return None,
    };
    let seq = s.get(..w)?;
    std::str::from_utf8(seq).ok().map(|_| w)
}

// ---------------------------------------------------------------------------
// E3: compaction of raw values
// ---------------------------------------------------------------------------

/// E3: append a raw JSON value the way Go's `compact(dst, src, escapeHTML=true)`
/// does when it marshals a `json.RawMessage`: whitespace outside strings is
/// dropped, `<` `>` `&` become `\u003c` `\u003e` `\u0026` and the UTF-8
/// sequences of U+2028/U+2029 become `\u2028`/`\u2029` wherever they occur;
/// every other byte (existing escapes, number spellings, invalid UTF-8, key
/// order) is copied unchanged. `raw` must be one valid JSON value.
pub fn append_compact(out: &mut Vec<u8>, raw: &[u8]) {
    out.reserve(raw.len());
    let mut start = 0;
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        match c {
            b'"' => {
                // A string body: only `"`, `\`, `<`, `>`, `&` and U+2028/9 matter.
                i += 1;
                loop {
                    i = find(
                        raw,
                        i,
                        |x| {
                            eq_mask(x, b'"')
                                | eq_mask(x, b'\\')
                                | eq_mask(x, b'<')
                                | eq_mask(x, b'>')
                                | eq_mask(x, b'&')
                                | eq_mask(x, 0xE2)
                        },
                        |b| matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&' | 0xE2),
                    );
                    match raw.get(i) {
                        None => break,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        // The escaped character is never special: `\"`, `\\`, `\uXXXX`…
                        Some(b'\\') => i += 2,
                        Some(&b) => {
                            if let Some(n) = html_escape(out, raw, start, i, b) {
                                i += n;
                                start = i;
                            } else {
                                i += 1;
                            }
                        }
                    }
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.extend_from_slice(raw.get(start..i).unwrap_or_default());
                i += 1;
                start = i;
            }
            _ => {
                // Cannot occur outside strings in valid JSON; kept for Go parity.
                if let Some(n) = html_escape(out, raw, start, i, c) {
                    i += n;
                    start = i;
                } else {
                    i += 1;
                }
            }
        }
    }
    out.extend_from_slice(raw.get(start..).unwrap_or_default());
}

/// If `raw[i]` (= `b`) starts `<`, `>`, `&` or U+2028/U+2029, flush
/// `raw[start..i]`, write the escape and return how many bytes it replaced.
#[inline]
fn html_escape(out: &mut Vec<u8>, raw: &[u8], start: usize, i: usize, b: u8) -> Option<usize> {
    if matches!(b, b'<' | b'>' | b'&') {
        out.extend_from_slice(raw.get(start..i).unwrap_or_default());
        push_u00(out, b);
        return Some(1);
    }
    if let (0xE2, Some(0x80), Some(&last @ (0xA8 | 0xA9))) = (b, raw.get(i + 1), raw.get(i + 2)) {
        out.extend_from_slice(raw.get(start..i).unwrap_or_default());
        out.extend_from_slice(b"\\u202");
        out.push(HEX[usize::from(last & 0xF)]);
        return Some(3);
    }
    None
}

// ---------------------------------------------------------------------------
// E2: timestamps
// ---------------------------------------------------------------------------

/// Why a `created` value is refused (Go would fail `Unmarshal` or `Marshal`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not in the grammar `time.Parse(time.RFC3339, …)` accepts.
    #[error("parsing time {0:?} as \"2006-01-02T15:04:05Z07:00\": cannot parse")]
    Syntax(String),
    /// A field outside its range (month, day, hour, minute, second).
    #[error("parsing time {input:?}: {field} out of range")]
    OutOfRange { input: String, field: &'static str },
    /// The JSON value is neither a string nor `null`.
    #[error("Time.UnmarshalJSON: input is not a JSON string")]
    NotAString,
    /// Parsed fine, but Go 1.20's `Time.MarshalJSON` refuses to write it back.
    #[error(
        "json: error calling MarshalJSON for type time.Time: Time.MarshalJSON: timezone hour outside of range [0,23]"
    )]
    TimezoneHourOutOfRange,
}

/// A wall-clock time with a UTC offset, as Go's `time.Time` keeps it after
/// parsing RFC 3339: only what `Time.MarshalJSON` prints is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    nanos: u32,
    /// Signed offset in minutes; 0 prints as `Z`.
    offset_minutes: i32,
}

impl Default for Timestamp {
    fn default() -> Self {
        Timestamp::ZERO
    }
}

impl Timestamp {
    /// Go's zero `time.Time`, printed `0001-01-01T00:00:00Z`: what a missing or
    /// `null` `created` marshals to.
    pub const ZERO: Timestamp = Timestamp {
        year: 1,
        month: 1,
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
        nanos: 0,
        offset_minutes: 0,
    };

    /// Parse the text between the quotes of a JSON string, exactly as Go 1.20's
    /// `Time.UnmarshalJSON` does.
    ///
    /// That method does not unescape JSON (go.dev/issue/47353), so any `\`
    /// makes the value invalid. Its strict RFC 3339 checks are disabled
    /// (`parseStrictRFC3339` falls back to `time.Parse(time.RFC3339, …)` and
    /// returns early, go.dev/issue/54580), so the accepted grammar is Go's
    /// layout parser for `2006-01-02T15:04:05Z07:00`:
    ///
    /// * a 4-digit year, 2-digit month (1–12) and day (1–days in month,
    ///   proleptic Gregorian leap years), separators `-`, `-`, `T` (uppercase
    ///   only: Go matches layout literals byte for byte, so `t` is refused);
    /// * an hour of **one or two** digits (0–23; the layout's `15` is not
    ///   fixed-width), then `:MM:SS` with exactly two digits each (0–59; no
    ///   leap second);
    /// * an optional fraction introduced by `.` **or `,`** with at least one
    ///   digit, any number of digits, truncated to nanoseconds;
    /// * `Z` (uppercase only) or `±hh:mm` with two digits each and no range
    ///   check in Go 1.20 (`+05:75` is read as +06:15);
    /// * nothing after that.
    pub fn parse_rfc3339(s: &[u8]) -> Result<Timestamp, TimeError> {
        let bad = || TimeError::Syntax(lossy_prefix(s));
        let range = |field| TimeError::OutOfRange {
            input: lossy_prefix(s),
            field,
        };
        let year = digits(s, 0, 4).ok_or_else(bad)?;
        expect(s, 4, b'-').ok_or_else(bad)?;
        let month = digits(s, 5, 2).ok_or_else(bad)?;
        if !(1..=12).contains(&month) {
            return Err(range("month"));
        }
        expect(s, 7, b'-').ok_or_else(bad)?;
        let day = digits(s, 8, 2).ok_or_else(bad)?;
        expect(s, 10, b'T').ok_or_else(bad)?;
        let (hour, mut p) = match digits(s, 11, 2) {
            Some(h) => (h, 13),
            None => (digits(s, 11, 1).ok_or_else(bad)?, 12),
        };
        if hour > 23 {
            return Err(range("hour"));
        }
        expect(s, p, b':').ok_or_else(bad)?;
        let minute = digits(s, p + 1, 2).ok_or_else(bad)?;
        if minute > 59 {
            return Err(range("minute"));
        }
        expect(s, p + 3, b':').ok_or_else(bad)?;
        let second = digits(s, p + 4, 2).ok_or_else(bad)?;
        if second > 59 {
            return Err(range("second"));
        }
        p += 6;

        let mut nanos = 0u32;
        if matches!(s.get(p), Some(b'.' | b',')) && s.get(p + 1).is_some_and(u8::is_ascii_digit) {
            p += 1;
            let mut n = 0;
            while let Some(&d) = s.get(p).filter(|d| d.is_ascii_digit()) {
                if n < 9 {
                    nanos = nanos * 10 + u32::from(d - b'0');
                    n += 1;
                }
                p += 1;
            }
            for _ in n..9 {
                nanos *= 10;
            }
        }

        let offset_minutes = match s.get(p) {
            Some(b'Z') => {
                p += 1;
                0
            }
            Some(&sign @ (b'+' | b'-')) => {
                expect(s, p + 3, b':').ok_or_else(bad)?;
                let hh = digits(s, p + 1, 2).ok_or_else(bad)?;
                let mm = digits(s, p + 4, 2).ok_or_else(bad)?;
                p += 6;
                let total = i32::from(hh) * 60 + i32::from(mm);
                if sign == b'-' { -total } else { total }
            }
            _ => return Err(bad()),
        };
        if p != s.len() {
            return Err(bad());
        }
        // Go checks the day of the month after the whole layout.
        if day < 1 || day > days_in(month, year) {
            return Err(range("day"));
        }
        Ok(Timestamp {
            year,
            month: month as u8,
            day: day as u8,
            hour: hour as u8,
            minute: minute as u8,
            second: second as u8,
            nanos,
            offset_minutes,
        })
    }

    /// E2: append the text Go 1.20's `Time.MarshalJSON` writes (without the
    /// quotes): RFC 3339 with the fraction's trailing zeros removed (none if
    /// zero), `Z` for a zero offset (so `+00:00`/`-00:00` become `Z`), else the
    /// offset normalised to `±hh:mm`. Fails like Go when the offset is 24 h or
    /// more, which `time.Parse` accepted but `MarshalJSON` refuses.
    pub fn append_rfc3339_nano(&self, out: &mut Vec<u8>) -> Result<(), TimeError> {
        let zone = self.offset_minutes.unsigned_abs();
        if zone / 60 >= 24 {
            return Err(TimeError::TimezoneHourOutOfRange);
        }
        push_digits(out, u32::from(self.year), 4);
        out.push(b'-');
        push_digits(out, u32::from(self.month), 2);
        out.push(b'-');
        push_digits(out, u32::from(self.day), 2);
        out.push(b'T');
        push_digits(out, u32::from(self.hour), 2);
        out.push(b':');
        push_digits(out, u32::from(self.minute), 2);
        out.push(b':');
        push_digits(out, u32::from(self.second), 2);
        if self.nanos != 0 {
            let mut frac = [0u8; 9];
            let mut n = self.nanos;
            for slot in frac.iter_mut().rev() {
                *slot = b'0' + (n % 10) as u8;
                n /= 10;
            }
            let len = frac.iter().rposition(|&d| d != b'0').map_or(0, |p| p + 1);
            out.push(b'.');
            out.extend_from_slice(frac.get(..len).unwrap_or_default());
        }
        if self.offset_minutes == 0 {
            out.push(b'Z');
        } else {
            out.push(if self.offset_minutes < 0 { b'-' } else { b'+' });
            push_digits(out, zone / 60, 2);
            out.push(b':');
            push_digits(out, zone % 60, 2);
        }
        Ok(())
    }

    /// [`append_rfc3339_nano`](Self::append_rfc3339_nano) into a new `String`.
    pub fn to_rfc3339_nano(&self) -> Result<String, TimeError> {
        let mut v = Vec::with_capacity(40);
        self.append_rfc3339_nano(&mut v)?;
        Ok(String::from_utf8(v).unwrap_or_default())
    }

    /// E2 as a function of the raw string contents: parse then re-format.
    pub fn reformat(raw: &[u8]) -> Result<String, TimeError> {
        Timestamp::parse_rfc3339(raw)?.to_rfc3339_nano()
    }

    /// The UTC time `unix_secs` seconds after the Unix epoch, whole seconds
    /// (what libtrust puts in a signature's `time`: Go's `time.RFC3339` of a
    /// UTC time, `YYYY-MM-DDTHH:MM:SSZ`, is what
    /// [`append_rfc3339_nano`](Self::append_rfc3339_nano) writes for it).
    /// `None` outside the years 0000–9999, which RFC 3339 cannot write.
    pub fn from_unix_utc(unix_secs: i64) -> Option<Timestamp> {
        let t = time::OffsetDateTime::from_unix_timestamp(unix_secs).ok()?;
        let year = u16::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
        Some(Timestamp {
            year,
            month: u8::from(t.month()),
            day: t.day(),
            hour: t.hour(),
            minute: t.minute(),
            second: t.second(),
            nanos: 0,
            offset_minutes: 0,
        })
    }
}

fn digits(s: &[u8], at: usize, n: usize) -> Option<u16> {
    let d = s.get(at..at + n)?;
    d.iter().try_fold(0u16, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u16::from(c - b'0'))
    })
}

fn expect(s: &[u8], at: usize, want: u8) -> Option<()> {
    (s.get(at) == Some(&want)).then_some(())
}

fn days_in(month: u16, year: u16) -> u16 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn push_digits(out: &mut Vec<u8>, mut v: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut i = buf.len();
    while v > 0 && i > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = i.min(buf.len().saturating_sub(width));
    out.extend_from_slice(buf.get(start..).unwrap_or_default());
}

/// Error messages quote the input; keep hostile inputs from growing them.
fn lossy_prefix(s: &[u8]) -> String {
    let cut = s.get(..64).unwrap_or(s);
    String::from_utf8_lossy(cut).into_owned()
}

// ---------------------------------------------------------------------------
// Validation (Go's checkValid)
// ---------------------------------------------------------------------------

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Index of the first non-whitespace byte at or after `i`.
pub fn skip_ws(doc: &[u8], mut i: usize) -> usize {
    while doc.get(i).is_some_and(|&c| is_ws(c)) {
        i += 1;
    }
    i
}

/// Check that `doc` is one JSON value surrounded by optional whitespace, with
/// Go's rules: strict RFC 8259 grammar, any bytes ≥ 0x20 inside strings
/// (invalid UTF-8 included), escapes `\" \\ \/ \b \f \n \r \t \uXXXX`
/// (any surrogate), at most [`MAX_NESTING_DEPTH`] nested containers.
/// Iterative: the depth costs a byte of heap per level, never stack.
pub fn validate(doc: &[u8]) -> Result<(), SyntaxError> {
    // true = object, false = array
    let mut stack: Vec<bool> = Vec::new();
    let mut i = skip_ws(doc, 0);
    'value: loop {
        // Parse one value starting at i.
        match doc.get(i) {
            None => return Err(syntax(i, "unexpected end of JSON input")),
            Some(b'{') | Some(b'[') => {
                let is_obj = doc.get(i) == Some(&b'{');
                stack.push(is_obj);
                if stack.len() > MAX_NESTING_DEPTH {
                    return Err(syntax(i, "exceeded max depth"));
                }
                i = skip_ws(doc, i + 1);
                let close = if is_obj { b'}' } else { b']' };
                if doc.get(i) == Some(&close) {
                    stack.pop();
                    i += 1;
                } else if is_obj {
                    i = object_key(doc, i)?;
                    continue 'value;
                } else {
                    continue 'value;
                }
            }
            Some(b'"') => i = scan_string(doc, i)?,
            Some(b'-' | b'0'..=b'9') => i = scan_number(doc, i)?,
            Some(b't') => i = scan_literal(doc, i, b"true")?,
            Some(b'f') => i = scan_literal(doc, i, b"false")?,
            Some(b'n') => i = scan_literal(doc, i, b"null")?,
            Some(_) => {
                return Err(syntax(
                    i,
                    "invalid character looking for beginning of value",
                ));
            }
        }
        // After a complete value: close containers or move to the next member.
        loop {
            i = skip_ws(doc, i);
            let Some(&is_obj) = stack.last() else {
                return if i == doc.len() {
                    Ok(())
                } else {
                    Err(syntax(i, "invalid character after top-level value"))
                };
            };
            match doc.get(i) {
                Some(b',') => {
                    i = skip_ws(doc, i + 1);
                    if is_obj {
                        i = object_key(doc, i)?;
                    }
                    continue 'value;
                }
                Some(b'}') if is_obj => {
                    stack.pop();
                    i += 1;
                }
                Some(b']') if !is_obj => {
                    stack.pop();
                    i += 1;
                }
                None => return Err(syntax(i, "unexpected end of JSON input")),
                Some(_) => {
                    return Err(syntax(
                        i,
                        if is_obj {
                            "invalid character after object key:value pair"
                        } else {
                            "invalid character after array element"
                        },
                    ));
                }
            }
        }
    }
}

/// `"key" ws : ws` starting at `i`; returns the index of the value.
fn object_key(doc: &[u8], i: usize) -> Result<usize, SyntaxError> {
    if doc.get(i) != Some(&b'"') {
        return Err(syntax(
            i,
            "invalid character looking for beginning of object key string",
        ));
    }
    let j = skip_ws(doc, scan_string(doc, i)?);
    if doc.get(j) != Some(&b':') {
        return Err(syntax(j, "invalid character after object key"));
    }
    Ok(skip_ws(doc, j + 1))
}

/// Validate a string starting at the opening quote; returns the index after
/// the closing quote.
fn scan_string(doc: &[u8], start: usize) -> Result<usize, SyntaxError> {
    let mut i = start + 1;
    loop {
        i = find(
            doc,
            i,
            |x| eq_mask(x, b'"') | eq_mask(x, b'\\') | ctl_mask(x),
            |b| b == b'"' || b == b'\\' || b < 0x20,
        );
        match doc.get(i) {
            None => return Err(syntax(i, "unexpected end of JSON input")),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => match doc.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let hex = doc.get(i + 2..i + 6);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        return Err(syntax(
                            i,
                            "invalid character in \\u hexadecimal character escape",
                        ));
                    }
                    i += 6;
                }
                None => return Err(syntax(i + 1, "unexpected end of JSON input")),
                Some(_) => return Err(syntax(i + 1, "invalid character in string escape code")),
            },
            Some(_) => return Err(syntax(i, "invalid character in string literal")),
        }
    }
}

fn scan_number(doc: &[u8], start: usize) -> Result<usize, SyntaxError> {
    // One or more digits from `i`, else `reason`; returns the index after them.
    let digits = |mut i: usize, reason: &'static str| {
        if !doc.get(i).is_some_and(u8::is_ascii_digit) {
            return Err(syntax(i, reason));
        }
        while doc.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        Ok(i)
    };
    let mut i = start;
    if doc.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match doc.get(i) {
        Some(b'0') => i + 1,
        _ => digits(i, "invalid character in numeric literal")?,
    };
    if doc.get(i) == Some(&b'.') {
        i = digits(
            i + 1,
            "invalid character after decimal point in numeric literal",
        )?;
    }
    if matches!(doc.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(doc.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i, "invalid character in exponent of numeric literal")?;
    }
    Ok(i)
}

fn scan_literal(doc: &[u8], start: usize, lit: &[u8]) -> Result<usize, SyntaxError> {
    if doc.get(start..start + lit.len()) == Some(lit) {
        Ok(start + lit.len())
    } else {
        Err(syntax(start, "invalid character in literal"))
    }
}

// ---------------------------------------------------------------------------
// Walking a validated document
// ---------------------------------------------------------------------------

/// The JSON type of a raw value, named as Go's `UnmarshalTypeError` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl Kind {
    /// The word Go uses in "json: cannot unmarshal <kind> into …".
    pub fn go_name(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Array => "array",
            Kind::String => "string",
            Kind::Number => "number",
            Kind::Bool => "bool",
            Kind::Null => "null",
        }
    }
}

/// The kind of a raw value (first byte decides; `raw` comes from a validated document).
pub fn kind(raw: &[u8]) -> Kind {
    match raw.first() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(b'"') => Kind::String,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') => Kind::Null,
        _ => Kind::Number,
    }
}

/// Index just past the value starting at `i` of a validated document.
/// Containers are skipped by counting brackets outside strings: no recursion.
fn skip_value(doc: &[u8], i: usize) -> Result<usize, SyntaxError> {
    match doc.get(i) {
        Some(b'"') => skip_string(doc, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                j = find(
                    doc,
                    j,
                    |x| {
                        eq_mask(x, b'"')
                            | eq_mask(x, b'{')
                            | eq_mask(x, b'}')
                            | eq_mask(x, b'[')
                            | eq_mask(x, b']')
                    },
                    |b| matches!(b, b'"' | b'{' | b'}' | b'[' | b']'),
                );
                match doc.get(j) {
                    Some(b'{' | b'[') => depth += 1,
                    Some(b'}' | b']') => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    Some(_) => {
                        j = skip_string(doc, j)?;
                        continue;
                    }
                    None => return Err(syntax(j, "unexpected end of JSON input")),
                }
                j += 1;
            }
        }
        Some(_) => {
            let mut j = i;
            while doc
                .get(j)
                .is_some_and(|&c| !is_ws(c) && !matches!(c, b',' | b'}' | b']' | b':'))
            {
                j += 1;
            }
            if j == i {
                Err(syntax(
                    i,
                    "invalid character looking for beginning of value",
                ))
            } else {
                Ok(j)
            }
        }
        None => Err(syntax(i, "unexpected end of JSON input")),
    }
}

/// Index after the closing quote of the (validated) string starting at `i`.
fn skip_string(doc: &[u8], i: usize) -> Result<usize, SyntaxError> {
    let mut j = i + 1;
    loop {
        j = find(
            doc,
            j,
            |x| eq_mask(x, b'"') | eq_mask(x, b'\\'),
            |b| b == b'"' || b == b'\\',
        );
        match doc.get(j) {
            Some(b'"') => return Ok(j + 1),
            Some(_) => j += 2,
            None => return Err(syntax(j, "unexpected end of JSON input")),
        }
    }
}

/// The top-level value of a validated document, without surrounding whitespace.
pub fn top_value(doc: &[u8]) -> Result<&[u8], SyntaxError> {
    // A validated document is one value between optional whitespace.
    let start = skip_ws(doc, 0);
    let end = doc
        .iter()
        .rposition(|&c| !is_ws(c))
        .map_or(start, |p| p + 1);
    match doc.get(start..end) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(syntax(start, "unexpected end of JSON input")),
    }
}

/// An object member as found: (raw key string token with its quotes, raw value).
pub type RawMember<'a> = (&'a [u8], &'a [u8]);

/// An object member with its key decoded: (key, raw value).
pub type Member<'a> = (Cow<'a, str>, &'a [u8]);

/// Members of an object, in document order, as `(raw key string token with
/// quotes, raw value)`. Built from a raw object value of a validated document
/// (see [`validate`]); on anything else it yields one error and stops.
#[derive(Debug, Clone)]
pub struct ObjectMembers<'a> {
    raw: &'a [u8],
    pos: usize,
    first: bool,
    done: bool,
}

/// Iterate the members of the raw object `raw` (starting with `{`).
pub fn object_members(raw: &[u8]) -> ObjectMembers<'_> {
    let ok = raw.first() == Some(&b'{');
    ObjectMembers {
        raw,
        pos: 1,
        first: true,
        done: !ok,
    }
}

impl<'a> ObjectMembers<'a> {
    fn step(&mut self) -> Result<Option<RawMember<'a>>, SyntaxError> {
        let raw = self.raw;
        let mut p = skip_ws(raw, self.pos);
        match raw.get(p) {
            Some(b'}') => return Ok(None),
            Some(b',') if !self.first => p = skip_ws(raw, p + 1),
            Some(b'"') if self.first => {}
            _ => return Err(syntax(p, "malformed object")),
        }
        self.first = false;
        if raw.get(p) != Some(&b'"') {
            return Err(syntax(p, "malformed object key"));
        }
        let key_end = skip_string(raw, p)?;
        let key = raw.get(p..key_end).unwrap_or_default();
        let colon = skip_ws(raw, key_end);
        if raw.get(colon) != Some(&b':') {
            return Err(syntax(colon, "malformed object"));
        }
        let v = skip_ws(raw, colon + 1);
        let v_end = skip_value(raw, v)?;
        self.pos = v_end;
        Ok(Some((key, raw.get(v..v_end).unwrap_or_default())))
    }
}

impl<'a> Iterator for ObjectMembers<'a> {
    type Item = Result<RawMember<'a>, SyntaxError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step().transpose();
        // Stop after the closing bracket or the first error.
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

/// Elements of an array of a validated document, as raw values.
#[derive(Debug, Clone)]
pub struct ArrayElements<'a> {
    raw: &'a [u8],
    pos: usize,
    first: bool,
    done: bool,
}

/// Iterate the elements of the raw array `raw` (starting with `[`).
pub fn array_elements(raw: &[u8]) -> ArrayElements<'_> {
    let ok = raw.first() == Some(&b'[');
    ArrayElements {
        raw,
        pos: 1,
        first: true,
        done: !ok,
    }
}

impl<'a> ArrayElements<'a> {
    fn step(&mut self) -> Result<Option<&'a [u8]>, SyntaxError> {
        let raw = self.raw;
        let mut p = skip_ws(raw, self.pos);
        match raw.get(p) {
            Some(b']') => return Ok(None),
            Some(b',') if !self.first => p = skip_ws(raw, p + 1),
            Some(_) if self.first => {}
            _ => return Err(syntax(p, "malformed array")),
        }
        self.first = false;
        let end = skip_value(raw, p)?;
        self.pos = end;
        Ok(Some(raw.get(p..end).unwrap_or_default()))
    }
}

impl<'a> Iterator for ArrayElements<'a> {
    type Item = Result<&'a [u8], SyntaxError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step().transpose();
        // Stop after the closing bracket or the first error.
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

// ---------------------------------------------------------------------------
// Decoding strings and keys
// ---------------------------------------------------------------------------

/// Decode a raw JSON string token (with its quotes) the way Go's `unquote`
/// does: escapes are resolved, a valid `\uD8xx\uDCxx` pair becomes one
/// character, any other surrogate escape becomes U+FFFD (without consuming
/// the following escape), and every byte that does not start valid UTF-8
/// becomes one U+FFFD. Borrows when nothing needs changing.
pub fn unquote(token: &[u8]) -> Cow<'_, str> {
    let inner = token
        .get(1..token.len().saturating_sub(1))
        .unwrap_or_default();
    if !inner.contains(&b'\\')
        && let Ok(s) = std::str::from_utf8(inner)
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while !rest.is_empty() {
        let run = rest.iter().position(|&b| b == b'\\').unwrap_or(rest.len());
        let (plain, tail) = rest.split_at(run);
        push_lossy_go(&mut out, plain);
        rest = tail;
        if rest.is_empty() {
            break;
        }
        // rest starts with a backslash.
        let consumed = match rest.get(1) {
            Some(b'"') => push_char(&mut out, '"', 2),
            Some(b'\\') => push_char(&mut out, '\\', 2),
            Some(b'/') => push_char(&mut out, '/', 2),
            Some(b'b') => push_char(&mut out, '\u{8}', 2),
            Some(b'f') => push_char(&mut out, '\u{c}', 2),
            Some(b'n') => push_char(&mut out, '\n', 2),
            Some(b'r') => push_char(&mut out, '\r', 2),
            Some(b't') => push_char(&mut out, '\t', 2),
            Some(b'u') => match getu4(rest) {
                Some(r) if (0xD800..0xE000).contains(&r) => {
                    let low = rest.get(6..).and_then(getu4);
                    match low {
                        Some(r2) if r < 0xDC00 && (0xDC00..0xE000).contains(&r2) => {
                            let c = 0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00);
                            push_char(&mut out, char::from_u32(c).unwrap_or('\u{FFFD}'), 12)
                        }
                        _ => push_char(&mut out, '\u{FFFD}', 6),
                    }
                }
                Some(r) => push_char(&mut out, char::from_u32(r).unwrap_or('\u{FFFD}'), 6),
                None => push_char(&mut out, '\u{FFFD}', rest.len().min(2)),
            },
            // Not reachable on validated input; never loop forever.
            _ => push_char(&mut out, '\u{FFFD}', rest.len().min(2)),
        };
        rest = rest.get(consumed..).unwrap_or_default();
    }
    Cow::Owned(out)
}

fn push_char(out: &mut String, c: char, consumed: usize) -> usize {
    out.push(c);
    consumed
}

/// `\uXXXX` at the start of `s`, as Go's `getu4`.
fn getu4(s: &[u8]) -> Option<u32> {
    if s.get(..2) != Some(b"\\u") {
        return None;
    }
    let h = s.get(2..6)?;
    let text = std::str::from_utf8(h).ok()?;
    u32::from_str_radix(text, 16).ok()
}

/// Append bytes, replacing each byte that does not start a valid UTF-8
/// sequence by U+FFFD, as Go's `utf8.DecodeRune` loop does (one replacement
/// per bad byte, unlike `String::from_utf8_lossy`).
fn push_lossy_go(out: &mut String, mut bytes: &[u8]) {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                if let Ok(s) = std::str::from_utf8(valid) {
                    out.push_str(s);
                }
                out.push('\u{FFFD}');
                bytes = rest.get(1..).unwrap_or_default();
            }
        }
    }
}

/// Does the object key `key` (decoded) select the struct field whose JSON
/// name is `field`, under Go 1.20's `encoding/json` matching? An exact match
/// or a case-insensitive one: ASCII letters match either case, other ASCII
/// bytes only themselves, and — because Go folds with Unicode simple case
/// folding — `ſ` (U+017F) matches `s` and `K` (U+212A, Kelvin) matches `k`.
/// `field` must be ASCII (all names used here are).
pub fn field_name_matches(field: &str, key: &str) -> bool {
    if field == key {
        return true;
    }
    let mut chars = key.chars();
    for f in field.bytes() {
        let Some(c) = chars.next() else {
            return false;
        };
        let ok = match c {
            '\u{17F}' => f.eq_ignore_ascii_case(&b's'),
            '\u{212A}' => f.eq_ignore_ascii_case(&b'k'),
            c if c.is_ascii() => (c as u8).eq_ignore_ascii_case(&f),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    chars.next().is_none()
}

/// The top-level members of a JSON object document, as Go's
/// `json.Unmarshal(doc, &map[string]*json.RawMessage{})` sees them: decoded
/// keys (so `"\u0061rch"` is `arch`) with the raw text of their values; a
/// repeated key keeps its last value. Pairs come in document order of the
/// surviving occurrences. Fails if `doc` is not valid JSON or not an object.
pub fn top_level_members(doc: &[u8]) -> Result<Vec<Member<'_>>, SyntaxError> {
    validate(doc)?;
    let top = top_value(doc)?;
    if kind(top) != Kind::Object {
        return Err(syntax(skip_ws(doc, 0), "top-level value is not an object"));
    }
    let mut all = Vec::new();
    for m in object_members(top) {
        let (k, v) = m?;
        all.push((unquote(k), v));
    }
    // Keep the last occurrence of each key.
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(all.len());
    for (i, (k, _)) in all.iter().enumerate() {
        last.insert(k.as_ref(), i);
    }
    let keep: Vec<bool> = all
        .iter()
        .enumerate()
        .map(|(i, (k, _))| last.get(k.as_ref()) == Some(&i))
        .collect();
    drop(last);
    Ok(all
        .into_iter()
        .zip(keep)
        .filter_map(|(m, k)| k.then_some(m))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e1(s: &str) -> String {
        encode_string(s)
    }

    fn e3(raw: &str) -> String {
        let mut v = Vec::new();
        append_compact(&mut v, raw.as_bytes());
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn e1_matches_go_1_20() {
        assert_eq!(e1(""), r#""""#);
        assert_eq!(e1("a\"b\\c/d"), r#""a\"b\\c/d""#);
        assert_eq!(e1("\n\r\t"), r#""\n\r\t""#);
        assert_eq!(e1("\u{8}\u{c}\u{0}\u{1f}"), r#""\u0008\u000c\u0000\u001f""#);
        assert_eq!(e1("<a>&&"), r#""\u003ca\u003e\u0026\u0026""#);
        assert_eq!(e1("x\u{2028}y\u{2029}z"), r#""x\u2028y\u2029z""#);
        assert_eq!(e1("é ü 日本 😀 \u{7f}"), "\"é ü 日本 😀 \u{7f}\"");
        // U+2027 and U+202A share the E2 80 prefix but are not escaped.
        assert_eq!(e1("\u{2027}\u{202a}"), "\"\u{2027}\u{202a}\"");
    }

    #[test]
    fn e1_invalid_utf8_becomes_escaped_replacement() {
        let mut v = Vec::new();
        append_string_bytes(&mut v, b"a\xffb\xe2\x80c\xe2\x80\xa8");
        assert_eq!(v, br#""a\ufffdb\ufffd\ufffdc\u2028""#);
    }

    #[test]
    fn e3_compacts_and_escapes() {
        assert_eq!(
            e3(" { \"a\" : [ 1 , 2.0 , 1e3 ] ,\n\t\"b\":\"x y\" } "),
            r#"{"a":[1,2.0,1e3],"b":"x y"}"#
        );
        assert_eq!(e3(r#""<a&b>""#), r#""\u003ca\u0026b\u003e""#);
        assert_eq!(e3(r#""\u00e9\/\"  \\""#), r#""\u00e9\/\"  \\""#);
        assert_eq!(e3("\"\u{2028}\u{2029}\""), r#""\u2028\u2029""#);
        assert_eq!(e3(r#""\\" , "a""#), r#""\\","a""#);
        assert_eq!(e3("null"), "null");
        let mut v = Vec::new();
        append_compact(&mut v, b"\"\xff \xfe\"");
        assert_eq!(v, b"\"\xff \xfe\"");
    }

    #[test]
    fn e2_examples_from_spec() {
        let r = |s: &str| Timestamp::reformat(s.as_bytes());
        assert_eq!(
            r("2024-03-01T10:20:30.100Z").unwrap(),
            "2024-03-01T10:20:30.1Z"
        );
        assert_eq!(
            r("2020-01-01T00:00:00.000000000+00:00").unwrap(),
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(
            r("2024-03-01T10:20:29.5+01:00").unwrap(),
            "2024-03-01T10:20:29.5+01:00"
        );
        assert_eq!(
            r("2024-03-01T10:20:29-00:00").unwrap(),
            "2024-03-01T10:20:29Z"
        );
        assert_eq!(
            r("2015-01-01T00:00:00.000000001Z").unwrap(),
            "2015-01-01T00:00:00.000000001Z"
        );
        assert_eq!(
            r("2015-01-01T00:00:00.1234567899Z").unwrap(),
            "2015-01-01T00:00:00.123456789Z"
        );
        assert_eq!(
            r("2021-06-07T08:09:10.1200-07:30").unwrap(),
            "2021-06-07T08:09:10.12-07:30"
        );
        let mut v = Vec::new();
        Timestamp::ZERO.append_rfc3339_nano(&mut v).unwrap();
        assert_eq!(v, b"0001-01-01T00:00:00Z");
    }

    #[test]
    fn from_unix_utc_is_whole_seconds_utc() {
        let t = |secs| Timestamp::from_unix_utc(secs).map(|t| t.to_rfc3339_nano().unwrap());
        assert_eq!(t(1795374044).as_deref(), Some("2026-11-22T19:00:44Z"));
        assert_eq!(t(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(t(951_782_400).as_deref(), Some("2000-02-29T00:00:00Z"));
        assert_eq!(t(-62_167_219_200).as_deref(), Some("0000-01-01T00:00:00Z"));
        assert_eq!(t(253_402_300_799).as_deref(), Some("9999-12-31T23:59:59Z"));
        assert_eq!(t(-62_167_219_201), None);
        assert_eq!(t(253_402_300_800), None);
        assert_eq!(t(i64::MAX), None);
        assert_eq!(t(i64::MIN), None);
    }

    #[test]
    fn e2_go_leniencies() {
        let r = |s: &str| Timestamp::reformat(s.as_bytes());
        // One-digit hour and a comma fraction: accepted by time.Parse's layout path.
        assert_eq!(r("2024-01-02T3:04:05Z").unwrap(), "2024-01-02T03:04:05Z");
        assert_eq!(
            r("2024-01-02T03:04:05,5Z").unwrap(),
            "2024-01-02T03:04:05.5Z"
        );
        // Offsets are not range-checked by Go 1.20's Parse, then normalised by Marshal.
        assert_eq!(
            r("2024-01-02T03:04:05+05:75").unwrap(),
            "2024-01-02T03:04:05+06:15"
        );
        assert_eq!(
            r("2024-01-02T03:04:05-00:30").unwrap(),
            "2024-01-02T03:04:05-00:30"
        );
        // Parsed but refused by MarshalJSON.
        assert!(Timestamp::parse_rfc3339(b"2024-01-02T03:04:05+24:00").is_ok());
        assert_eq!(
            r("2024-01-02T03:04:05+24:00"),
            Err(TimeError::TimezoneHourOutOfRange)
        );
        assert_eq!(
            r("2024-01-02T03:04:05-23:60"),
            Err(TimeError::TimezoneHourOutOfRange)
        );
        assert_eq!(r("2024-02-29T00:00:00Z").unwrap(), "2024-02-29T00:00:00Z");
        assert_eq!(r("2000-02-29T00:00:00Z").unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(r("0000-02-29T00:00:00Z").unwrap(), "0000-02-29T00:00:00Z");
    }

    #[test]
    fn e2_rejects_what_go_rejects() {
        for bad in [
            "",
            "2024-03-01",
            "2024-03-01t10:20:30Z",
            "2024-03-01T10:20:30z",
            "2024-03-01T10:20:30",
            "2024-03-01T10:20:30.Z",
            "2024-03-01T10:20:30.5",
            "2024-03-01 10:20:30Z",
            "2024-3-01T10:20:30Z",
            "2024-03-1T10:20:30Z",
            "2024-03-01T10:2:30Z",
            "2024-03-01T10:20:3Z",
            "2024-03-01T123:20:30Z",
            "24-03-01T10:20:30Z",
            "+2024-03-01T10:20:30Z",
            "2024-03-01T10:20:30+0100",
            "2024-03-01T10:20:30+01",
            "2024-03-01T10:20:30+01:00:00",
            "2024-03-01T10:20:30Z ",
            " 2024-03-01T10:20:30Z",
            "2024-03-01T10:20:30\\u005a",
            "2024-03-01T10:20:30ZZ",
            "2024-03-01T10:20:30*01:00",
            "2024-03-01T10:20:30+a1:00",
        ] {
            assert!(
                matches!(
                    Timestamp::parse_rfc3339(bad.as_bytes()),
                    Err(TimeError::Syntax(_))
                ),
                "{bad:?}"
            );
        }
        for (bad, field) in [
            ("2024-13-01T00:00:00Z", "month"),
            ("2024-00-01T00:00:00Z", "month"),
            ("2024-02-30T00:00:00Z", "day"),
            ("2023-02-29T00:00:00Z", "day"),
            ("1900-02-29T00:00:00Z", "day"),
            ("2024-04-31T00:00:00Z", "day"),
            ("2024-04-00T00:00:00Z", "day"),
            ("2024-04-01T24:00:00Z", "hour"),
            ("2024-04-01T23:60:00Z", "minute"),
            ("2016-12-31T23:59:60Z", "second"),
        ] {
            match Timestamp::parse_rfc3339(bad.as_bytes()) {
                Err(TimeError::OutOfRange { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn validate_like_go() {
        for ok in [
            "{}",
            " [ ] ",
            "null",
            "0",
            "-0",
            "1.5e+3",
            "-12E-1",
            r#""\ud800""#,
            r#"{"a":[1,{"b":null}],"c":"\/"}"#,
            "\"\u{e9}\"",
            "[true,false,null]",
            "\t{\r\n}\n",
        ] {
            assert_eq!(validate(ok.as_bytes()), Ok(()), "{ok}");
        }
        assert_eq!(validate(b"\"\xff\xfe\""), Ok(()));
        for bad in [
            "",
            " ",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "1e",
            "-",
            "+1",
            "tru",
            "nul",
            "[1 2]",
            "{\"a\" 1}",
            "{1:2}",
            "\"\\x\"",
            "\"\\u12\"",
            "\"a",
            "{} {}",
            "\"\u{1}\"",
            "[\"\t\"]",
            "\u{feff}{}",
            "NaN",
            "{\"a\":1]",
            "[1}",
        ] {
            assert!(validate(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nesting_limit_is_gos() {
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_NESTING_DEPTH),
            "]".repeat(MAX_NESTING_DEPTH)
        );
        assert_eq!(validate(ok.as_bytes()), Ok(()));
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_NESTING_DEPTH + 1),
            "]".repeat(MAX_NESTING_DEPTH + 1)
        );
        assert_eq!(
            validate(deep.as_bytes()).unwrap_err().reason,
            "exceeded max depth"
        );
        // Far deeper than any stack could recurse: still just an error.
        let huge = "[".repeat(1_000_000);
        assert!(validate(huge.as_bytes()).is_err());
    }

    #[test]
    fn unquote_like_go() {
        assert_eq!(unquote(br#""plain""#), "plain");
        assert!(matches!(unquote(br#""plain""#), Cow::Borrowed(_)));
        assert_eq!(unquote(br#""\u0061rch""#), "arch");
        assert_eq!(unquote(br#""a\"\\\/\b\f\n\r\t""#), "a\"\\/\u{8}\u{c}\n\r\t");
        assert_eq!(unquote(br#""\ud83d\ude00""#), "😀");
        assert_eq!(unquote(br#""\ud83d""#), "\u{FFFD}");
        assert_eq!(unquote(br#""\ude00\ud83d\ude00""#), "\u{FFFD}😀");
        assert_eq!(unquote(br#""\ud83dA\u0041""#), "\u{FFFD}AA");
        assert_eq!(unquote(br#""\ud83d\u0041""#), "\u{FFFD}A");
        assert_eq!(unquote(b"\"a\xe2\x80b\""), "a\u{FFFD}\u{FFFD}b");
        assert_eq!(unquote(b"\"\xed\xa0\x80\""), "\u{FFFD}\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn field_matching_is_gos() {
        assert!(field_name_matches("history", "history"));
        assert!(field_name_matches("history", "HISTORY"));
        assert!(field_name_matches("history", "hiſtory"));
        assert!(field_name_matches("created_by", "Created_By"));
        assert!(!field_name_matches("created_by", "createdby"));
        assert!(!field_name_matches("created_by", "created-by"));
        assert!(!field_name_matches("history", "histor"));
        assert!(!field_name_matches("history", "historyy"));
        assert!(!field_name_matches("architecture", "archıtecture"));
        assert!(field_name_matches("kind", "\u{212A}IND"));
        assert!(!field_name_matches("author", "\u{212A}"));
    }

    #[test]
    fn top_level_members_last_wins() {
        let doc = br#" {"os":"a", "\u0061rch" : [1, 2], "os" : "b", "x":{"y":1}} "#;
        let m = top_level_members(doc).unwrap();
        let got: Vec<(&str, &[u8])> = m.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
        assert_eq!(
            got,
            vec![
                ("arch", &b"[1, 2]"[..]),
                ("os", &b"\"b\""[..]),
                ("x", &br#"{"y":1}"#[..])
            ]
        );
        assert!(top_level_members(b"[1]").is_err());
        assert!(top_level_members(b"{").is_err());
        assert!(top_level_members(b"{}").unwrap().is_empty());
    }
}

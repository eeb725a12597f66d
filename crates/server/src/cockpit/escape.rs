//! HTML escaping for everything the admin page renders that came from a
//! client or a configuration file (repository names, digests, error
//! messages, globs, upstream names). One function for text and quoted
//! attribute values alike: `&`, `<`, `>`, `"` and `'` become entities, and
//! control characters (other than tab and newline) become U+FFFD so they
//! can't garble the page.

use std::fmt::Write as _;

/// `s`, safe inside an HTML element or a quoted attribute value.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_html(&mut out, s);
    out
}

/// Appends `s` escaped to `out`.
pub fn push_html(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => {
                let _ = write!(out, "{c}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_cannot_open_markup() {
        for hostile in [
            "<script>alert(1)</script>",
            "repo\"><img src=x onerror=alert(1)>",
            "a'onmouseover='alert(1)",
            "</td></tr></table><script>",
            "&lt;already&gt;",
            "x\u{0}y\u{1b}[31m",
        ] {
            let e = html(hostile);
            for bad in ['<', '>', '"', '\''] {
                assert!(!e.contains(bad), "{hostile:?} -> {e:?}");
            }
            assert!(!e.contains('\u{0}') && !e.contains('\u{1b}'), "{e:?}");
        }
        assert_eq!(
            html("<script>alert('x')</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
        );
        assert_eq!(html("&lt;"), "&amp;lt;", "entities are escaped again");
        assert_eq!(
            html("library/alpine:3.19 — ok ✓"),
            "library/alpine:3.19 — ok ✓"
        );
    }
}

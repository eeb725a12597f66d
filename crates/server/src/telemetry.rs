//! Logging set-up: tracing with text or JSON output, filter from the config.
//!
//! `RUST_LOG`, when set (and valid), wins over the configured level
//! (`[log] level`, `REGCACHE_LOG`), as in every tracing program.
//!
//! JSON lines are one object each with unique keys: the event's fields are
//! flattened next to `timestamp`, `level`, `target` and the event's text
//! under `message` (so no event has a field called `message`; `detail` is
//! the name for more text), and span fields go under `span` and `spans`,
//! never among the event's own.

use tracing_subscriber::EnvFilter;

/// The filter: `RUST_LOG` if set and valid, else `level`, else `info`.
pub fn filter(level: &str) -> EnvFilter {
    if let Ok(env) = std::env::var("RUST_LOG")
        && !env.trim().is_empty()
        && let Ok(f) = EnvFilter::try_new(&env)
    {
        return f;
    }
    EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Install the global subscriber. Safe to call once per process.
pub fn init(json: bool, level: &str) {
    let filter = filter(level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let res = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if res.is_err() {
        // Already installed (tests); keep the existing one.
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_keep_span_fields_apart_from_the_event_s() {
        let out = Captured::default();
        let writer = out.clone();
        // The same builder as `init`'s JSON branch.
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(super::filter("info"))
            .with_writer(move || writer.clone())
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", id = "r-1", status = 1, upstream = "hub");
            span.in_scope(|| {
                tracing::warn!(id = 7, status = 502, upstream = "other", "request failed")
            });
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line = text.lines().next().unwrap();
        // Keys in order of appearance at the top level.
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["message"], "request failed", "{line}");
        assert_eq!(v["status"], 502, "{line}");
        assert_eq!(v["span"]["status"], 1, "{line}");
        assert_eq!(v["spans"][0]["id"], "r-1", "{line}");
        // serde_json keeps the last of duplicate keys: count them in the text.
        for key in [
            "\"message\":",
            "\"status\":502",
            "\"id\":7",
            "\"upstream\":\"other\"",
        ] {
            assert_eq!(line.matches(key).count(), 1, "{key} in {line}");
        }
    }
}

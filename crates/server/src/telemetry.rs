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

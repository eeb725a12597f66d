//! `regcache stats`: a running instance's figures from its admin listener
//! (`GET /api/stats`, the admin page's JSON), printed as a summary or, with
//! `--json`, as the server sent them.
//!
//! The admin token (`--token-file`, `REGCACHE_ADMIN_TOKEN`) is sent as a
//! bearer token when given; reads don't need it today, but an admin
//! listener behind a proxy that checks it may. It is never printed.
//! Exit status: 0, or 1 with one line on stderr when the instance can't be
//! reached or answers something else than the stats.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::cockpit::format::{bytes, clock, count, duration};
use crate::cockpit::stats::Stats;
use crate::cockpit::top::Row;

/// Arguments of `regcache stats`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// The admin listener's URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5001")]
    pub admin: String,
    /// A file holding the admin token (sent as `Authorization: Bearer`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the JSON of `/api/stats` instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// Fetch and format; `Ok` is what goes to stdout.
pub fn run(args: &StatsArgs, env_token: Option<String>) -> Result<String, String> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => env_token.map(|t| t.trim().to_owned()),
    }
    .filter(|t| !t.is_empty());
    let url = format!("{}/api/stats", args.admin.trim_end_matches('/'));
    let body = fetch(&url, token.as_deref())?;
    if args.json {
        let mut text = String::from_utf8_lossy(&body).into_owned();
        text.push('\n');
        return Ok(text);
    }
    let stats: Stats = serde_json::from_slice(&body)
        .map_err(|e| format!("{url} did not answer with regcache stats: {e}"))?;
    Ok(summary(&stats))
}

fn fetch(url: &str, token: Option<&str>) -> Result<Vec<u8>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {}", crate::error::chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| format!("reading {url}: {e}"))
    })
}

/// The human-readable summary.
pub fn summary(s: &Stats) -> String {
    let mut o = String::new();
    let l = &s.lookups;
    let _ = writeln!(
        o,
        "regcache, up {} (at {} UTC)",
        duration(s.uptime_secs),
        clock(s.generated_at)
    );
    let _ = writeln!(
        o,
        "\nLookups   {} hits, {} misses, {} stale; hit ratio {}",
        count(l.hits),
        count(l.misses),
        count(l.stale),
        l.hit_ratio
            .map_or("–".to_owned(), |r| format!("{:.1}%", r * 100.0))
    );
    let recent: Vec<String> = s
        .hit_ratio_history
        .iter()
        .rev()
        .take(6)
        .rev()
        .map(|p| {
            p.ratio
                .map_or("–".to_owned(), |r| format!("{:.0}%", r * 100.0))
        })
        .collect();
    if !recent.is_empty() {
        let _ = writeln!(
            o,
            "          last intervals ({} s each): {}",
            s.hit_ratio_interval_secs,
            recent.join(" ")
        );
    }
    let _ = writeln!(
        o,
        "Served    {} from the cache (saved upstream), {} from upstreams",
        bytes(s.served_bytes.cache),
        bytes(s.served_bytes.upstream)
    );
    let d = &s.cache.disk;
    let _ = writeln!(
        o,
        "Disk      {} of {} ({} entries, {}), {} evictions",
        bytes(d.bytes),
        bytes(d.max_bytes),
        count(d.entries),
        s.cache.state,
        count(s.cache.evictions)
    );
    match &s.cache.memory {
        Some(m) => {
            let _ = writeln!(
                o,
                "Memory    {} of {} ({} entries)",
                bytes(m.bytes),
                bytes(m.max_bytes),
                count(m.entries)
            );
        }
        None => o.push_str("Memory    off\n"),
    }
    top(&mut o, "Top repositories", &s.top_repositories.by_requests);
    top(&mut o, "Top blobs", &s.top_blobs.by_requests);
    let _ = writeln!(o, "\nFills in progress: {}", s.fills.len());
    for f in &s.fills {
        let _ = writeln!(
            o,
            "  {}  {}  {} / {}  {} waiting  {:.0}s",
            f.digest,
            f.repository.as_deref().unwrap_or("-"),
            bytes(f.bytes),
            f.len.map_or("?".to_owned(), bytes),
            f.waiters,
            f.age_secs
        );
    }
    o.push_str("\nUpstreams\n");
    for u in &s.upstreams {
        let _ = write!(o, "  {}: {}", u.name, u.state);
        if u.state != "closed" {
            let _ = write!(o, " for {}", duration(u.state_secs));
        }
        if !u.last_failure.is_empty() {
            let _ = write!(o, " (last failure: {})", u.last_failure);
        }
        let _ = writeln!(o, ", {} short-circuited", count(u.short_circuits));
    }
    let _ = writeln!(
        o,
        "Refused   {} by rate limit, {} per-client connections, {} bad Host",
        count(s.limits.rate_limited),
        count(s.limits.per_client_refused),
        count(s.limits.bad_host)
    );
    let _ = writeln!(o, "\nRecent errors: {}", s.recent_errors.len());
    for e in s.recent_errors.iter().take(10) {
        let _ = writeln!(
            o,
            "  {} {} {} {} {} ({}): {}",
            clock(e.t),
            e.status,
            e.code,
            e.route,
            e.repository.as_deref().unwrap_or("-"),
            e.whose,
            e.message
        );
    }
    o
}

fn top(o: &mut String, title: &str, rows: &[Row]) {
    let _ = writeln!(o, "\n{title} (by requests)");
    if rows.is_empty() {
        o.push_str("  none yet\n");
    }
    for r in rows {
        let _ = writeln!(
            o,
            "  {:>8} req  {:>10}  {}",
            count(r.requests),
            bytes(r.bytes),
            r.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_the_figures() {
        let mut s = Stats::default();
        s.lookups.hits = 3;
        s.lookups.misses = 1;
        s.lookups.hit_ratio = Some(0.75);
        s.served_bytes.cache = 2048;
        s.top_repositories.by_requests = vec![Row {
            name: "team/app".into(),
            repository: None,
            requests: 4,
            bytes: 4096,
        }];
        let text = summary(&s);
        assert!(text.contains("3 hits, 1 misses"), "{text}");
        assert!(text.contains("hit ratio 75.0%"), "{text}");
        assert!(text.contains("2.0 KiB from the cache"), "{text}");
        assert!(text.contains("team/app"), "{text}");
        // The JSON round-trips through the CLI's reader.
        let back: Stats = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn an_unreachable_instance_is_one_line() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let args = StatsArgs {
            admin: format!("http://127.0.0.1:{port}"),
            token_file: None,
            json: false,
        };
        let e = run(&args, None).unwrap_err();
        assert!(e.contains("cannot reach"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

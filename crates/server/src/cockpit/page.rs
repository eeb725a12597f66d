//! The admin page's HTML: `page.html` and `page.css` embedded in the
//! binary, the figures rendered here from a [`Stats`]. Every string that
//! came from a client or the configuration goes through [`html`]; numbers
//! are formatted here. Figures carry `id`s and `data-metric` /
//! `data-value` attributes (the exact number) for scripts and tests.

use std::fmt::Write as _;

use super::escape::html;
use super::format::short_digest;
pub use super::format::{bytes, clock, count, duration};
use super::history::{Point, SAMPLES};
use super::stats::{Stats, TopLists};

const TEMPLATE: &str = include_str!("page.html");
const CSS: &str = include_str!("page.css");

/// The whole page.
pub fn render(s: &Stats) -> String {
    let meta = format!(
        "up {} · {} UTC",
        duration(s.uptime_secs),
        clock(s.generated_at)
    );
    TEMPLATE
        .replace("{{css}}", CSS)
        .replace("{{meta}}", &html(&meta))
        .replace("{{main}}", &main(s))
}

fn main(s: &Stats) -> String {
    let mut o = String::with_capacity(16 * 1024);
    cards(&mut o, s);
    sparkline(&mut o, &s.hit_ratio_history, s.hit_ratio_interval_secs);
    o.push_str("<div class=\"grid2\">");
    top(
        &mut o,
        "Top repositories",
        "repositories",
        "Repository",
        &s.top_repositories,
    );
    top(&mut o, "Top blobs", "blobs", "Blob", &s.top_blobs);
    o.push_str("</div>");
    fills(&mut o, s);
    o.push_str("<div class=\"grid2\">");
    upstreams(&mut o, s);
    limits(&mut o, s);
    o.push_str("</div>");
    o.push_str("<div class=\"grid2\">");
    policies(&mut o, s);
    access(&mut o, s);
    o.push_str("</div>");
    errors(&mut o, s);
    o
}

fn card(
    o: &mut String,
    id: &str,
    label: &str,
    value: u64,
    shown: &str,
    sub: &str,
    bar: Option<f64>,
) {
    let _ = write!(
        o,
        "<div class=\"card\"><span class=\"label\">{}</span><span class=\"value\" id=\"{id}\" data-metric=\"{id}\" data-value=\"{value}\">{}</span><span class=\"sub\">{}</span>",
        html(label),
        html(shown),
        html(sub)
    );
    if let Some(f) = bar {
        let _ = write!(
            o,
            "<div class=\"bar\"><i style=\"width:{:.1}%\"></i></div>",
            (f * 100.0).clamp(0.0, 100.0)
        );
    }
    o.push_str("</div>");
}

fn cards(o: &mut String, s: &Stats) {
    let l = &s.lookups;
    o.push_str("<div class=\"cards\">");
    let ratio = l
        .hit_ratio
        .map_or("–".to_owned(), |r| format!("{:.1}%", r * 100.0));
    let _ = write!(
        o,
        "<div class=\"card\"><span class=\"label\">Hit ratio</span><span class=\"value\" id=\"hit_ratio\" data-metric=\"hit_ratio\" data-value=\"{}\">{}</span><span class=\"sub\">{} stale served</span></div>",
        l.hit_ratio.map_or(String::new(), |r| format!("{r:.6}")),
        html(&ratio),
        count(l.stale)
    );
    card(
        o,
        "hits",
        "Cache hits",
        l.hits,
        &count(l.hits),
        "lookups answered from the cache",
        None,
    );
    card(
        o,
        "misses",
        "Cache misses",
        l.misses,
        &count(l.misses),
        "lookups that went upstream",
        None,
    );
    card(
        o,
        "served_cache",
        "Saved upstream",
        s.served_bytes.cache,
        &bytes(s.served_bytes.cache),
        "bytes served from the cache",
        None,
    );
    card(
        o,
        "served_upstream",
        "From upstream",
        s.served_bytes.upstream,
        &bytes(s.served_bytes.upstream),
        "bytes relayed while filling",
        None,
    );
    let d = &s.cache.disk;
    card(
        o,
        "disk_bytes",
        "Disk cache",
        d.bytes,
        &bytes(d.bytes),
        &format!(
            "of {} · {} entries · {}",
            bytes(d.max_bytes),
            count(d.entries),
            s.cache.state
        ),
        Some(frac(d.bytes, d.max_bytes)),
    );
    match &s.cache.memory {
        Some(m) => card(
            o,
            "memory_bytes",
            "Memory cache",
            m.bytes,
            &bytes(m.bytes),
            &format!("of {} · {} entries", bytes(m.max_bytes), count(m.entries)),
            Some(frac(m.bytes, m.max_bytes)),
        ),
        None => card(
            o,
            "memory_bytes",
            "Memory cache",
            0,
            "off",
            "memory tier disabled",
            None,
        ),
    }
    card(
        o,
        "fills",
        "Fills in progress",
        s.fills.len() as u64,
        &count(s.fills.len() as u64),
        "blob downloads from upstreams",
        None,
    );
    o.push_str("</div>");
}

/// The hit ratio of each interval as an inline SVG: a line over an area,
/// broken where an interval had no lookups; right-aligned on a window of
/// [`SAMPLES`] intervals.
fn sparkline(o: &mut String, points: &[Point], interval: u64) {
    let _ = write!(
        o,
        "<section id=\"hit-ratio-history\"><h2>Hit ratio, last {} min</h2>",
        SAMPLES as u64 * interval / 60
    );
    let known = points.iter().filter(|p| p.ratio.is_some()).count();
    let (w, h) = (SAMPLES as f64, 100.0);
    let _ = write!(
        o,
        "<svg class=\"spark\" viewBox=\"0 0 {w} {h}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"hit ratio per {interval} s\" data-points=\"{known}\">"
    );
    for y in [0.0, 50.0, 100.0] {
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"0\" x2=\"{w}\" y1=\"{y}\" y2=\"{y}\"/>"
        );
    }
    let start = SAMPLES.saturating_sub(points.len());
    let xy = |i: usize, r: f64| ((start + i) as f64 + 0.5, h - r * (h - 4.0) - 2.0);
    // Runs of consecutive known ratios.
    let mut run: Vec<(f64, f64)> = Vec::new();
    let mut runs = Vec::new();
    for (i, p) in points.iter().enumerate() {
        match p.ratio {
            Some(r) => run.push(xy(i, r)),
            None if !run.is_empty() => runs.push(std::mem::take(&mut run)),
            None => {}
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    for mut run in runs {
        if run.len() == 1 {
            // One interval: a flat segment across it so it shows.
            let (x, y) = run[0];
            run = vec![(x - 1.5, y), (x + 0.5, y)];
        }
        let line: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let (first, last) = (run[0].0, run[run.len() - 1].0);
        let _ = write!(
            o,
            "<polygon class=\"area\" points=\"{first:.1},{h} {} {last:.1},{h}\"/><polyline class=\"line\" points=\"{}\"/>",
            line.join(" "),
            line.join(" ")
        );
    }
    o.push_str("</svg>");
    let last = points.iter().rev().find_map(|p| p.ratio);
    let _ = write!(
        o,
        "<div class=\"legend\"><span>−{} min</span><span>{}</span><span>now</span></div></section>",
        SAMPLES as u64 * interval / 60,
        match last {
            Some(r) => format!("last {interval} s: {:.1}% hits", r * 100.0),
            None if known == 0 => "no lookups yet".to_owned(),
            None => "no lookups in the last interval".to_owned(),
        }
    );
}

fn top(o: &mut String, title: &str, id: &str, what: &str, t: &TopLists) {
    let _ = write!(o, "<section id=\"top-{id}\"><h2>{}</h2>", html(title));
    if t.by_requests.is_empty() {
        o.push_str("<p class=\"empty\">No requests yet.</p></section>");
        return;
    }
    let blobs = id == "blobs";
    for (caption, rows, key) in [
        ("by requests", &t.by_requests, "requests"),
        ("by bytes", &t.by_bytes, "bytes"),
    ] {
        let _ = write!(
            o,
            "<div class=\"scroll\"><table data-top=\"{id}-by-{key}\"><thead><tr><th>{} <span class=\"sub\">{caption}</span></th><th class=\"num\">Requests</th><th class=\"num\">Bytes</th></tr></thead><tbody>",
            html(what)
        );
        for r in rows.iter() {
            let name = if blobs {
                format!(
                    "<code title=\"{}\">{}</code>{}",
                    html(&r.name),
                    html(&short_digest(&r.name)),
                    r.repository
                        .as_deref()
                        .map(|repo| format!(" <span class=\"sub\">{}</span>", html(repo)))
                        .unwrap_or_default()
                )
            } else {
                html(&r.name)
            };
            let _ = write!(
                o,
                "<tr data-name=\"{}\" data-requests=\"{}\" data-bytes=\"{}\"><td class=\"name\">{name}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                html(&r.name),
                r.requests,
                r.bytes,
                count(r.requests),
                bytes(r.bytes)
            );
        }
        o.push_str("</tbody></table></div>");
    }
    if t.untracked_requests > 0 {
        let _ = write!(
            o,
            "<p class=\"sub\">{} requests for names past the table's {} tracked are not listed.</p>",
            count(t.untracked_requests),
            count(t.tracked)
        );
    }
    o.push_str("</section>");
}

fn fills(o: &mut String, s: &Stats) {
    o.push_str("<section id=\"fills\"><h2>Fills in progress</h2>");
    if s.fills.is_empty() {
        o.push_str(
            "<p class=\"empty\">No blob is being fetched from an upstream right now.</p></section>",
        );
        return;
    }
    o.push_str("<div class=\"scroll\"><table><thead><tr><th>Blob</th><th>Repository</th><th>Progress</th><th class=\"num\">Waiters</th><th class=\"num\">Age</th></tr></thead><tbody>");
    for f in &s.fills {
        let progress = match f.len {
            Some(len) => format!(
                "{} / {}<div class=\"bar\"><i style=\"width:{:.1}%\"></i></div>",
                html(&bytes(f.bytes)),
                html(&bytes(len)),
                frac(f.bytes, len) * 100.0
            ),
            None => format!("{} / ?", html(&bytes(f.bytes))),
        };
        let _ = write!(
            o,
            "<tr data-digest=\"{}\"><td class=\"name\"><code title=\"{}\">{}</code>{}</td><td class=\"name\">{}</td><td>{progress}</td><td class=\"num\">{}</td><td class=\"num\">{:.1} s</td></tr>",
            html(&f.digest),
            html(&f.digest),
            html(&short_digest(&f.digest)),
            if f.passing_through {
                " <span class=\"badge b-warn\">not cached</span>"
            } else {
                ""
            },
            html(f.repository.as_deref().unwrap_or("–")),
            f.waiters,
            f.age_secs
        );
    }
    o.push_str("</tbody></table></div></section>");
}

fn upstreams(o: &mut String, s: &Stats) {
    o.push_str("<section id=\"upstreams\"><h2>Upstreams</h2><div class=\"scroll\"><table><thead><tr><th>Upstream</th><th>Breaker</th><th>Last failure</th><th class=\"num\">Short-circuited</th></tr></thead><tbody>");
    for u in &s.upstreams {
        let setup = s.setup.upstreams.iter().find(|x| x.name == u.name);
        let badge = match u.state.as_str() {
            "closed" => "b-ok",
            "half_open" => "b-warn",
            _ => "b-bad",
        };
        let since = if u.state == "closed" {
            String::new()
        } else {
            format!(
                " <span class=\"sub\">for {}</span>",
                html(&duration(u.state_secs))
            )
        };
        let detail = setup.map_or(String::new(), |x| {
            format!(
                "<br><span class=\"sub\">{} · credentials {} · writes {} · catalog {}</span>",
                html(&x.url),
                if x.credentials_configured {
                    "configured"
                } else {
                    "none"
                },
                html(&x.writes),
                html(&x.catalog)
            )
        });
        let _ = write!(
            o,
            "<tr data-upstream=\"{}\"><td class=\"name\"><b>{}</b>{detail}</td><td><span class=\"badge {badge}\">{}</span>{since}</td><td class=\"name\">{}</td><td class=\"num\">{}</td></tr>",
            html(&u.name),
            html(&u.name),
            html(&u.state.replace('_', "-")),
            if u.last_failure.is_empty() {
                "–".to_owned()
            } else {
                html(&u.last_failure)
            },
            count(u.short_circuits)
        );
    }
    o.push_str("</tbody></table></div></section>");
}

fn limits(o: &mut String, s: &Stats) {
    let l = &s.setup.limits;
    let opt = |v: Option<u64>| v.map_or("no limit".to_owned(), count);
    let _ = write!(
        o,
        "<section id=\"limits\"><h2>Limits</h2><dl class=\"kv\"><dt>Connections open</dt><dd>{} of {}</dd><dt>Per client</dt><dd>{}</dd><dt>Rate per client</dt><dd>{}</dd><dt>Refused by rate limit</dt><dd id=\"rate_limited\" data-value=\"{}\">{}</dd><dt>Refused: per-client connections</dt><dd>{}</dd><dt>Refused: bad Host</dt><dd>{}</dd><dt>Admin token</dt><dd>{}</dd></dl></section>",
        s.limits.open_connections,
        count(l.max_connections),
        opt(l.max_connections_per_client),
        match (l.requests_per_second_per_client, l.request_burst_per_client) {
            (Some(r), Some(b)) => format!("{r}/s, burst {b}"),
            _ => "no limit".to_owned(),
        },
        s.limits.rate_limited,
        count(s.limits.rate_limited),
        count(s.limits.per_client_refused),
        count(s.limits.bad_host),
        if s.setup.admin_token_configured {
            "configured"
        } else {
            "not set (loopback only)"
        }
    );
}

fn globs(list: &[String]) -> String {
    list.iter()
        .map(|g| format!("<code>{}</code>", html(g)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn policies(o: &mut String, s: &Stats) {
    o.push_str("<section id=\"policies\"><h2>Policies</h2>");
    if s.setup.policies.is_empty() {
        o.push_str("<p class=\"empty\">No [[policy]] rules: the defaults apply (schema1 convert, oci bridge, schema1_upgrade upgrade).</p></section>");
        return;
    }
    o.push_str("<div class=\"scroll\"><table><thead><tr><th>#</th><th>Repositories</th><th>Upstreams</th><th>Sets</th></tr></thead><tbody>");
    for (i, p) in s.setup.policies.iter().enumerate() {
        let sets = p
            .sets
            .iter()
            .map(|(k, v)| format!("{} = <code>{}</code>", html(k), html(v)))
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = write!(
            o,
            "<tr><td class=\"num\">{}</td><td class=\"name\">{}</td><td class=\"name\">{}</td><td>{}</td></tr>",
            i + 1,
            globs(&p.repositories),
            p.upstreams.as_deref().map_or("all".to_owned(), globs),
            if sets.is_empty() {
                "–".to_owned()
            } else {
                sets
            }
        );
    }
    o.push_str(
        "</tbody></table></div><p class=\"sub\">The first matching rule wins.</p></section>",
    );
}

fn access(o: &mut String, s: &Stats) {
    let a = &s.setup.access;
    let _ = write!(
        o,
        "<section id=\"access\"><h2>Access</h2><p>Client authentication: <b>{}</b>{}</p>",
        html(&a.mode),
        if a.htpasswd_configured {
            " · htpasswd file configured"
        } else {
            ""
        }
    );
    if a.rules.is_empty() {
        let none = if a.mode == "none" {
            "Anyone who reaches the port may pull."
        } else {
            "No [[access]] rules."
        };
        let _ = write!(o, "<p class=\"empty\">{none}</p></section>");
        return;
    }
    o.push_str("<div class=\"scroll\"><table><thead><tr><th>#</th><th>Who</th><th>Repositories</th><th>Actions</th></tr></thead><tbody>");
    for (i, r) in a.rules.iter().enumerate() {
        let mut who: Vec<String> = r.users.iter().map(|u| html(u)).collect();
        who.extend(r.groups.iter().map(|g| format!("group {}", html(g))));
        let _ = write!(
            o,
            "<tr><td class=\"num\">{}</td><td class=\"name\">{}</td><td class=\"name\">{}{}</td><td>{}</td></tr>",
            i + 1,
            who.join(", "),
            globs(&r.repositories),
            r.upstreams
                .as_deref()
                .map(|u| format!("<br><span class=\"sub\">upstreams {}</span>", globs(u)))
                .unwrap_or_default(),
            html(&r.actions.join(", "))
        );
    }
    o.push_str("</tbody></table></div></section>");
}

fn errors(o: &mut String, s: &Stats) {
    o.push_str("<section id=\"errors\"><h2>Recent errors</h2>");
    if s.recent_errors.is_empty() {
        o.push_str("<p class=\"empty\">No error responses since start.</p></section>");
        return;
    }
    o.push_str("<div class=\"scroll\"><table><thead><tr><th>Time (UTC)</th><th>Route</th><th>Repository</th><th class=\"num\">Status</th><th>Code</th><th>Whose</th><th>Message</th></tr></thead><tbody>");
    for e in &s.recent_errors {
        let badge = match e.status {
            500.. => "b-bad",
            _ => "b-warn",
        };
        let _ = write!(
            o,
            "<tr><td class=\"num\">{}</td><td>{}</td><td class=\"name\">{}</td><td class=\"num\"><span class=\"badge {badge}\">{}</span></td><td><code>{}</code></td><td>{}</td><td class=\"name\">{}</td></tr>",
            clock(e.t),
            html(&e.route),
            html(e.repository.as_deref().unwrap_or("–")),
            e.status,
            html(&e.code),
            html(&e.whose),
            html(&e.message)
        );
    }
    o.push_str("</tbody></table></div></section>");
}

fn frac(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[cfg(test)]
#[path = "page_tests.rs"]
mod tests;

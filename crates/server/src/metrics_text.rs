//! The Prometheus text format 0.0.4 from prometheus-client's OpenMetrics
//! text: what `/metrics` serves to clients that don't ask for OpenMetrics
//! (`curl`, `promtool check metrics`, whose parser reads only this format
//! and would see every counter's `_total` series as an undocumented,
//! untyped family).

/// OpenMetrics text as Prometheus text 0.0.4 (the subset prometheus-client
/// writes: counters, gauges, histograms, info).
pub fn to_prometheus_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<&str> = None;
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            // Written once its TYPE says whether the name changes.
            if let Some(h) = help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            if let Some(h) = help.take() {
                let text = h
                    .strip_prefix("# HELP ")
                    .and_then(|t| t.split_once(' '))
                    .map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_series_and_openmetrics_only_lines_go() {
        let open = "# HELP regcache_x Things.\n# TYPE regcache_x counter\nregcache_x_total{a=\"b\"} 1\n\
                    # HELP process_start_time_seconds Start.\n# TYPE process_start_time_seconds gauge\n\
                    # UNIT process_start_time_seconds seconds\nprocess_start_time_seconds 5.0\n\
                    # HELP regcache_h Lat.\n# TYPE regcache_h histogram\nregcache_h_count 0\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP regcache_x_total Things.\n# TYPE regcache_x_total counter\nregcache_x_total{a=\"b\"} 1\n\
             # HELP process_start_time_seconds Start.\n# TYPE process_start_time_seconds gauge\n\
             process_start_time_seconds 5.0\n\
             # HELP regcache_h Lat.\n# TYPE regcache_h histogram\nregcache_h_count 0\n"
        );
    }
}

//! Parsed Prometheus text exposition (what `GET /metrics` on regcache's admin
//! listener returns), for assertions like
//! `metrics.sum("regcache_upstream_requests_total", &[("method", "GET")])`.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape, plus the raw text for messages.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// Parses the text format; comment lines and unparsable lines are skipped.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Metrics {
            samples,
            text: text.to_owned(),
        }
    }

    /// Samples named `name` (exactly) whose labels include every `(k, v)`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum over [`Metrics::matching`] samples (0 when there are none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The value of the single matching sample, if exactly one matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.matching(name, labels);
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }

    /// Whether the family `name` has a sample: `name` itself, or a counter's
    /// `name_total`, or a histogram's / summary's `name_sum`, `name_count`,
    /// `name_bucket`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| {
            s.name == name
                || s.name
                    .strip_prefix(name)
                    .is_some_and(|suffix| ["_total", "_sum", "_count", "_bucket"].contains(&suffix))
        })
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let (labels, rest) = parse_labels(&line[i + 1..])?;
            (&line[..i], labels, rest)
        }
        Some(i) => (&line[..i], BTreeMap::new(), &line[i..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows `}`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once('=')?;
        let mut chars = rest.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        s = &rest[1 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let text = "# HELP regcache_fill_waiters Waiters.\n\
                    # TYPE regcache_fill_waiters gauge\n\
                    regcache_fill_waiters 0\n\
                    regcache_cache_lookups_total{kind=\"blob\",result=\"hit\"} 3\n\
                    regcache_cache_lookups_total{kind=\"blob\",result=\"miss\"} 2\n\
                    regcache_upstream_requests_total{upstream=\"a\\\"b\",method=\"GET\",status=\"200\"} 7 1700000000\n";
        let m = Metrics::parse(text);
        assert_eq!(m.get("regcache_fill_waiters", &[]), Some(0.0));
        assert_eq!(
            m.sum("regcache_cache_lookups_total", &[("kind", "blob")]),
            5.0
        );
        assert_eq!(
            m.get("regcache_cache_lookups_total", &[("result", "miss")]),
            Some(2.0)
        );
        assert_eq!(
            m.get("regcache_upstream_requests_total", &[("upstream", "a\"b")]),
            Some(7.0)
        );
        assert_eq!(m.sum("nothing", &[]), 0.0);
        assert!(m.has("regcache_cache_lookups") && m.has("regcache_fill_waiters"));
        assert!(!m.has("regcache_cache"));
    }
}

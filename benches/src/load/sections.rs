//! Sections of RESULTS.md that a scenario run alone writes (between its own
//! begin and end markers) and a full run carries over unchanged.

/// A section's markers: whole lines of the file.
#[derive(Debug, Clone, Copy)]
pub struct Markers {
    pub begin: &'static str,
    pub end: &'static str,
}

impl Markers {
    /// The section in `results` (markers included), if it has one.
    pub fn find<'a>(&self, results: &'a str) -> Option<&'a str> {
        let start = results.find(self.begin)?;
        let end = results[start..].find(self.end)? + start + self.end.len();
        Some(&results[start..end])
    }

    /// `results` with this section replaced by `new_section`, or with
    /// `new_section` appended when it has none.
    pub fn splice(&self, results: &str, new_section: &str) -> String {
        let new_section = new_section.trim_end();
        match self.find(results) {
            Some(old) => results.replacen(old, new_section, 1),
            None => format!("{}\n\n{new_section}\n", results.trim_end()),
        }
    }

    /// A freshly rendered `new` file with this section of the `old` one
    /// carried over.
    pub fn carry_over(&self, old: &str, new: &str) -> String {
        match self.find(old) {
            Some(s) => self.splice(new, s),
            None => new.to_owned(),
        }
    }
}

/// The scale bench's section (`cargo bench -p regcache-benches --bench
/// scale` prints its table; the section is written from it by hand): no
/// load run writes it, every full run keeps it.
pub const SCALE: Markers = Markers {
    begin: "<!-- Scale: begin (figures of `cargo bench -p regcache-benches --bench scale`; a full load run keeps it) -->",
    end: "<!-- Scale: end -->",
};

#[cfg(test)]
mod tests {
    use super::*;

    const M: Markers = Markers {
        begin: "<!-- X: begin -->",
        end: "<!-- X: end -->",
    };

    fn sample(body: &str) -> String {
        format!("{}\n\n## X\n\n{body}\n{}\n", M.begin, M.end)
    }

    #[test]
    fn splice_appends_then_replaces_and_carries_over() {
        let once = M.splice("# results\n\nS1\n", &sample("first"));
        assert!(once.starts_with("# results\n\nS1\n\n<!-- X: begin -->"));
        let twice = M.splice(&once, &sample("second"));
        assert!(twice.contains("second") && !twice.contains("first"));
        assert_eq!(twice.matches(M.begin).count(), 1);
        let full = M.carry_over(&twice, "# new\n");
        assert!(full.starts_with("# new\n") && full.contains("second"));
        assert_eq!(M.carry_over("# old\n", "# new\n"), "# new\n");
    }
}

//! `regcache fsck`: verify the disk cache offline (see `regcache_store::fsck_blocking`).
//!
//! Exit status (documented in the README):
//! * 0 — every entry verified, nothing else found;
//! * 1 — problems were found and all were removed;
//! * 2 — problems are left (`--dry-run`, or a removal failed);
//! * 64 — bad flags or configuration (as every subcommand);
//! * 66 — no cache under the data dir (a mistyped `--data-dir`);
//! * 74 — a cache directory could not be listed;
//! * 75 — a running regcache holds the data dir: stop it and run again.

use std::io::Write;
use std::path::Path;

use regcache_store::{FsckError, FsckReport, fsck_blocking};

/// Problems found and all repaired.
pub const EXIT_REPAIRED: u8 = 1;
/// Problems left on disk.
pub const EXIT_PROBLEMS_LEFT: u8 = 2;
/// sysexits `EX_NOINPUT`: no cache there.
pub const EX_NOINPUT: u8 = 66;
/// sysexits `EX_IOERR`.
pub const EX_IOERR: u8 = 74;
/// sysexits `EX_TEMPFAIL`: in use; try again once regcache is stopped.
pub const EX_TEMPFAIL: u8 = 75;

/// Runs the check on `<data_dir>/cache`, printing one line per problem and a
/// summary to `out`. Returns the exit status and, when the check could not
/// run, the message for stderr.
pub fn run(data_dir: &Path, repair: bool, out: &mut dyn Write) -> (u8, Option<String>) {
    let root = crate::admin_cli::store_root(data_dir);
    let result = fsck_blocking(&root, repair, |problem| {
        let _ = writeln!(out, "{problem}");
    });
    match result {
        Ok(report) => {
            let _ = writeln!(out, "{}", summary(&report, &root));
            (status(&report), None)
        }
        Err(e) => {
            let code = match &e {
                FsckError::NoCache { .. } => EX_NOINPUT,
                FsckError::Locked { .. } => EX_TEMPFAIL,
                _ => EX_IOERR,
            };
            (code, Some(e.to_string()))
        }
    }
}

fn status(report: &FsckReport) -> u8 {
    if report.is_clean() {
        0
    } else if report.left() == 0 {
        EXIT_REPAIRED
    } else {
        EXIT_PROBLEMS_LEFT
    }
}

fn summary(report: &FsckReport, root: &Path) -> String {
    let found = report.problems.len();
    let left = report.left();
    let verdict = if found == 0 {
        "clean".to_owned()
    } else if left == 0 {
        format!("{found} bad, all removed")
    } else {
        format!("{found} bad, {left} left on disk")
    };
    format!(
        "regcache fsck {}: {} entries ({} bytes) hashed, {} verified; {verdict}",
        root.display(),
        report.entries,
        report.bytes,
        report.good
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_summary_say_what_was_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let (code, err) = run(dir.path(), true, &mut out);
        assert_eq!(code, EX_NOINPUT);
        assert!(err.unwrap().contains("no regcache cache at"));

        let root = crate::admin_cli::store_root(dir.path());
        let disk =
            regcache_store::DiskTier::open(&regcache_store::StoreConfig::new(&root)).unwrap();
        let (code, err) = run(dir.path(), true, &mut out);
        assert_eq!(code, EX_TEMPFAIL);
        assert!(err.unwrap().contains("running regcache"));
        drop(disk);

        std::fs::write(root.join("v1/tmp/3.part"), b"x").unwrap();
        let mut out = Vec::new();
        assert_eq!(run(dir.path(), false, &mut out), (EXIT_PROBLEMS_LEFT, None));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("found orphan-temp "), "{text}");
        assert!(text.contains("1 bad, 1 left on disk"), "{text}");
        let mut out = Vec::new();
        assert_eq!(run(dir.path(), true, &mut out), (EXIT_REPAIRED, None));
        assert!(String::from_utf8(out).unwrap().contains("all removed"));
        let mut out = Vec::new();
        assert_eq!(run(dir.path(), true, &mut out), (0, None));
        assert!(String::from_utf8(out).unwrap().contains("; clean"));
    }
}

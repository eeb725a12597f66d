//! What the machine and the tools were, for the report.

use std::path::Path;
use std::process::{Command, Stdio};

/// The facts RESULTS.md opens with.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
    pub loadavg: String,
}

impl Machine {
    /// The Date, Machine and Load average lines a section of RESULTS.md
    /// opens with (each ending in a newline).
    pub fn facts(&self, date: &str, loadavg_end: &str) -> String {
        format!(
            "- **Date**: {date}\n- **Machine**: {} cores (`nproc`), {}, {:.1} GiB RAM, Linux {}\n- **Load average** (1, 5, 15 min): {} at the start, {loadavg_end} at the end\n",
            self.cores, self.cpu_model, self.mem_total_gib, self.kernel, self.loadavg
        )
    }

    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_total_gib: mem_kb as f64 / (1u64 << 20) as f64,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            loadavg: loadavg(),
        }
    }
}

/// The first three fields of `/proc/loadavg` (1, 5, 15 minutes).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    loadavg()
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// First line of `program ARGS` (stdout, else stderr), e.g. a version.
pub fn first_line(program: &Path, args: &[&str]) -> String {
    let Ok(out) = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    else {
        return "unknown".into();
    };
    let text = if out.stdout.is_empty() {
        String::from_utf8_lossy(&out.stderr).into_owned()
    } else {
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    text.lines().next().unwrap_or("unknown").trim().to_owned()
}

/// The commit checked out in `dir` (read-only `git rev-parse`), if any,
/// and whether the server's sources differ from it.
pub fn git_commit(dir: &Path) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--short=12", "HEAD"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Plumbing that only reads (it does not refresh the index): exit 1 when
    // the server's sources differ from the commit.
    let dirty = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "diff-index",
            "--quiet",
            "HEAD",
            "--",
            "crates",
            "Cargo.toml",
            "Cargo.lock",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.code() == Some(1));
    Some(if dirty {
        format!("{commit} plus uncommitted changes under crates/")
    } else {
        commit
    })
}

/// Now, UTC, as `YYYY-MM-DD HH:MM:SSZ` (from `date`, to keep this crate's
/// dependencies small).
pub fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

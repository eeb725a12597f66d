//! What `/proc` says about CPU time and memory: the load harness uses it to
//! show where the CPU went during a run (client, server, everything else on
//! the machine) and to record each server's peak RSS.
//!
//! CPU times are in clock ticks (`USER_HZ`, 100 on Linux); [`TICKS_PER_SEC`]
//! converts them.

/// `sysconf(_SC_CLK_TCK)`: the unit of the times in `/proc/*/stat`. It is
/// 100 on every Linux architecture the harness runs on (the kernel ABI fixes
/// `USER_HZ`), so it is a constant rather than a libc call.
pub const TICKS_PER_SEC: f64 = 100.0;

/// The fields of a `/proc/PID/stat` (or `/proc/thread-self/stat`) line after
/// the `(comm)` field, which may itself contain spaces and parentheses.
fn stat_fields(text: &str) -> Option<Vec<&str>> {
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// `utime + stime` of a `stat` line, in ticks. Fields 14 and 15 of the line
/// are the 12th and 13th after `(comm)`.
fn cpu_of_stat(text: &str) -> Option<u64> {
    let f = stat_fields(text)?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks (user + system, all threads) used so far by process `pid`;
/// `None` once it has exited.
pub fn process_cpu(pid: u32) -> Option<u64> {
    cpu_of_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU ticks used so far by the calling thread.
pub fn thread_cpu() -> u64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .as_deref()
        .and_then(cpu_of_stat)
        .unwrap_or(0)
}

/// `cutime + cstime` of this process: the CPU of every child it has *reaped*
/// so far. The delta around `wait()` of one child is that child's CPU (as
/// long as no other child is reaped in between), which is how the harness
/// measures `wrk` without an unsafe `getrusage`.
pub fn reaped_children_cpu() -> u64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat_fields(&text)
        .and_then(|f| Some(f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?))
        .unwrap_or(0)
}

/// Busy and total ticks of the whole machine (first line of `/proc/stat`):
/// busy is everything but `idle` and `iowait`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub busy: u64,
    pub total: u64,
    /// Time the hypervisor ran something else while this machine's CPUs
    /// had work (counted in `busy` too).
    pub steal: u64,
}

pub fn machine_cpu() -> MachineCpu {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineCpu::default();
    };
    // user nice system idle iowait irq softirq steal guest guest_nice; guest
    // time is already counted in user, so only the first eight are summed.
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    MachineCpu {
        busy: total.saturating_sub(idle),
        total,
        steal: v.get(7).copied().unwrap_or(0),
    }
}

/// Pids whose parent is `parent` (e.g. nginx's workers).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat_fields(&text).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`), in bytes.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&text, field)
}

fn parse_status_kb(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size (`VmHWM`) of `pid`, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM")
}

/// Resets `pid`'s peak RSS to its current RSS (`echo 5 > clear_refs`, Linux
/// ≥ 4.0), so a later [`peak_rss`] is the peak since now. Returns whether
/// the kernel accepted it.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok()
}

/// The effective uid of this process (from `/proc/self/status`).
pub fn effective_uid() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(cpu_of_stat(line), Some(300));
        let f = stat_fields(line).expect("fields");
        assert_eq!(f[1], "1");
        assert_eq!(f[13], "7");
    }

    #[test]
    fn parses_status_kb() {
        let text = "Name:\tx\nVmPeak:\t  2000 kB\nVmHWM:\t    1500 kB\nVmRSS:\t 1200 kB\n";
        assert_eq!(parse_status_kb(text, "VmHWM"), Some(1500 * 1024));
        assert_eq!(parse_status_kb(text, "VmRSS"), Some(1200 * 1024));
        assert_eq!(parse_status_kb(text, "VmSwap"), None);
    }

    #[test]
    fn own_process_is_visible() {
        let me = std::process::id();
        assert!(process_cpu(me).is_some());
        assert!(peak_rss(me).unwrap_or(0) > 0);
        assert!(machine_cpu().total > 0);
        assert!(effective_uid().is_some());
    }
}

//! S2's load generator: Debian's `wrk` (C, epoll, one event loop per
//! thread), with a Lua `done` hook that prints the summary as one JSON line
//! so nothing is scraped from its human-readable output.
//!
//! wrk suits small responses (manifests): it keeps `-c` connections busy
//! back to back and records every latency in an HdrHistogram. It does not
//! suit 100 MiB bodies: it reads 8 KiB per `read` (`RECVBUF` in wrk.h), so
//! S1 uses [`super::blobload`] instead.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::procstat;

const DONE_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"bytes\":%d,\"duration_us\":%d," ..
    "\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d," ..
    "\"mean_us\":%.1f,\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"max_us\":%d}\n",
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"#;

/// One wrk run's figures.
#[derive(Debug, Clone, Default)]
pub struct WrkRun {
    pub requests: u64,
    pub bytes: u64,
    pub duration: Duration,
    /// Socket errors (connect, read, write, timeout) and non-2xx/3xx answers.
    pub socket_errors: u64,
    pub status_errors: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// CPU ticks wrk used.
    pub client_cpu_ticks: u64,
    /// The command line, for the report.
    pub command: String,
}

impl WrkRun {
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// The `wrk` program and its Lua hook (kept in a temporary directory).
#[derive(Debug)]
pub struct Wrk {
    program: PathBuf,
    script: PathBuf,
    _dir: tempfile::TempDir,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct WrkArgs<'a> {
    pub url: &'a str,
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
    pub headers: &'a [(String, String)],
}

impl Wrk {
    pub fn new(program: PathBuf) -> Wrk {
        let dir = tempfile::Builder::new()
            .prefix("regcache-wrk-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let script = dir.path().join("done.lua");
        std::fs::write(&script, DONE_LUA)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", script.display()));
        Wrk {
            program,
            script,
            _dir: dir,
        }
    }

    /// `wrk -t T -c C -d Ds --timeout 10s -H … URL` (plus the JSON hook).
    pub fn run(&self, args: &WrkArgs<'_>) -> Result<WrkRun, String> {
        let secs = args.duration.as_secs().max(1);
        let mut argv: Vec<String> = vec![
            "-t".into(),
            args.threads.to_string(),
            "-c".into(),
            args.connections.to_string(),
            "-d".into(),
            format!("{secs}s"),
            "--timeout".into(),
            "10s".into(),
        ];
        for (name, value) in args.headers {
            argv.push("-H".into());
            argv.push(format!("{name}: {value}"));
        }
        let shown = format!(
            "wrk {} {}",
            argv.iter()
                .map(|a| if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.clone()
                })
                .collect::<Vec<_>>()
                .join(" "),
            args.url
        );
        argv.push("-s".into());
        argv.push(self.script.display().to_string());
        argv.push(args.url.into());
        let cpu0 = procstat::reaped_children_cpu();
        let output = Command::new(&self.program)
            .args(&argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        let cpu = procstat::reaped_children_cpu().saturating_sub(cpu0);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "{shown} failed ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let mut run = parse(&stdout)
            .ok_or_else(|| format!("{shown}: no WRKJSON line in its output:\n{stdout}"))?;
        run.client_cpu_ticks = cpu;
        run.command = shown;
        Ok(run)
    }
}

/// Parses the `WRKJSON {…}` line.
fn parse(stdout: &str) -> Option<WrkRun> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("WRKJSON "))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let n = |k: &str| v[k].as_u64().or_else(|| v[k].as_f64().map(|f| f as u64));
    Some(WrkRun {
        requests: n("requests")?,
        bytes: n("bytes")?,
        duration: Duration::from_micros(n("duration_us")?),
        socket_errors: n("connect")? + n("read")? + n("write")? + n("timeout")?,
        status_errors: n("status")?,
        mean_us: v["mean_us"].as_f64()?,
        p50_us: n("p50_us")?,
        p90_us: n("p90_us")?,
        p99_us: n("p99_us")?,
        max_us: n("max_us")?,
        client_cpu_ticks: 0,
        command: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_json_line() {
        let out = "Running 1s test @ http://x\nWRKJSON {\"requests\":10,\"bytes\":2000,\"duration_us\":1000000,\"connect\":0,\"read\":1,\"write\":0,\"status\":2,\"timeout\":0,\"mean_us\":150.5,\"p50_us\":100,\"p90_us\":200,\"p99_us\":300,\"max_us\":400}\n";
        let run = parse(out).expect("parsed");
        assert_eq!(run.requests, 10);
        assert_eq!(run.socket_errors, 1);
        assert_eq!(run.status_errors, 2);
        assert_eq!(run.p99_us, 300);
        assert!((run.requests_per_sec() - 10.0).abs() < 1e-9);
        assert!(parse("nothing").is_none());
    }
}

//! How `regcache prefetch` shows the server's NDJSON progress: bars in a
//! terminal (indicatif: one bar per blob in flight above an overall bar),
//! one plain line per finished blob otherwise (logs, CI, pipes).

use std::collections::HashMap;
use std::io::Write;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// One progress line from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub image: String,
    pub digest: String,
    pub size: u64,
    pub done: u64,
    pub cached: bool,
    pub blobs: u64,
    pub bytes: u64,
    pub error: String,
    pub images: u64,
    pub failed: u64,
}

impl Event {
    pub fn parse(line: &str) -> Option<Event> {
        let v: Value = serde_json::from_str(line).ok()?;
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or_default();
        Some(Event {
            event: s("event"),
            image: s("image"),
            digest: s("digest"),
            size: n("size"),
            done: n("done"),
            cached: v.get("cached").and_then(Value::as_bool).unwrap_or(false),
            blobs: n("blobs"),
            bytes: n("bytes"),
            error: s("error"),
            images: n("images"),
            failed: n("failed"),
        })
    }
}

/// A progress display.
pub trait Progress {
    fn show(&mut self, e: &Event);
    fn finish(&mut self);
}

/// `sha256:0123456789ab`.
pub fn short(digest: &str) -> &str {
    let end = digest
        .find(':')
        .map_or(digest.len(), |i| (i + 13).min(digest.len()));
    &digest[..end]
}

fn blob_line(e: &Event) -> String {
    let state = if e.cached { "already cached" } else { "done" };
    format!(
        "prefetch {} {} {} {state}",
        e.image,
        short(&e.digest),
        HumanBytes(e.size)
    )
}

fn image_line(e: &Event) -> String {
    format!(
        "prefetched {} {}: {} blobs, {}",
        e.image,
        short(&e.digest),
        e.blobs,
        HumanBytes(e.bytes)
    )
}

fn summary_line(e: &Event) -> String {
    format!(
        "prefetch: {} images, {} blobs, {}; {} failed",
        e.images,
        e.blobs,
        HumanBytes(e.bytes),
        e.failed
    )
}

/// Plain lines, one per finished blob and image, and the summary.
#[derive(Debug)]
pub struct Plain<W: Write> {
    pub out: W,
}

impl<W: Write> Progress for Plain<W> {
    fn show(&mut self, e: &Event) {
        let line = match e.event.as_str() {
            "blob" if e.done == e.size => blob_line(e),
            "image" => image_line(e),
            "summary" => summary_line(e),
            _ => return,
        };
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn finish(&mut self) {}
}

/// Bars in a terminal.
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    blobs: HashMap<(String, String), (ProgressBar, u64)>,
}

impl Bars {
    pub fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template(
                "total  [{bar:40.green/white}] {bytes}/{total_bytes} {percent}% {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Bars {
            multi,
            overall,
            blobs: HashMap::new(),
        }
    }

    fn blob(&mut self, e: &Event) {
        let key = (e.image.clone(), e.digest.clone());
        if !self.blobs.contains_key(&key) {
            if e.done == e.size {
                // Cached already, or too fast for a bar.
                self.overall.inc_length(e.size);
                self.overall.inc(e.size);
                let _ = self.multi.println(blob_line(e));
                return;
            }
            let bar = self
                .multi
                .insert_before(&self.overall, ProgressBar::new(e.size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {percent}%",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("{} {}", e.image, short(&e.digest)));
            self.overall.inc_length(e.size);
            self.blobs.insert(key.clone(), (bar, 0));
        }
        if let Some((bar, seen)) = self.blobs.get_mut(&key) {
            bar.set_position(e.done);
            self.overall.inc(e.done.saturating_sub(*seen));
            *seen = e.done;
            if e.done == e.size {
                bar.finish_and_clear();
                self.multi.remove(bar);
                self.blobs.remove(&key);
                let _ = self.multi.println(blob_line(e));
            }
        }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}

impl Progress for Bars {
    fn show(&mut self, e: &Event) {
        match e.event.as_str() {
            "blob" => self.blob(e),
            "image" => {
                let _ = self.multi.println(image_line(e));
            }
            "summary" => self.overall.set_message(format!("{} failed", e.failed)),
            _ => {}
        }
    }

    fn finish(&mut self) {
        for (_, (bar, _)) in self.blobs.drain() {
            bar.abandon();
        }
        self.overall.finish();
    }
}

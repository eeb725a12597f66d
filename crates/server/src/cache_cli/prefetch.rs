//! `regcache prefetch FILE|IMAGE… [--platform os/arch]…`: asks a running
//! regcache to warm images (`POST /api/prefetch`) and shows its progress
//! ([`super::progress`]). A FILE lists images one a line (`#` comments).

use std::io::{IsTerminal, Write};
use std::path::Path;

use futures_util::StreamExt;

use super::progress::{Bars, Event, Plain, Progress};
use super::{AdminClient, EX_NOINPUT, EX_UNAVAILABLE, EX_USAGE, Failure, Where, runtime, settings};
use crate::cache_admin::imageref;
use crate::cache_admin::prefetch::PlatformFilter;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PrefetchArgs {
    /// Images (`repo:tag`, `repo@digest`; no tag means `latest`), or files
    /// listing them one a line.
    #[arg(value_name = "FILE|IMAGE", required = true)]
    pub items: Vec<String>,
    /// Only this platform of a manifest list or index (repeatable; default:
    /// every platform), e.g. linux/amd64 or linux/arm64/v8.
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Vec<String>,
    /// The upstream for names without a registry.
    #[arg(long, value_name = "NAME")]
    pub upstream: Option<String>,
    #[command(flatten)]
    pub at: Where,
}

/// The images named by `items`: each is a file listing images, or an image.
pub fn images(items: &[String]) -> Result<Vec<String>, Failure> {
    let mut out = Vec::new();
    for item in items {
        let path = Path::new(item);
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::new(EX_NOINPUT, format!("cannot read {}: {e}", path.display()))
            })?;
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or_default().trim();
                if !line.is_empty() {
                    imageref::parse(line)
                        .map_err(|e| Failure::new(EX_USAGE, format!("{}: {e}", path.display())))?;
                    out.push(line.to_owned());
                }
            }
        } else {
            imageref::parse(item).map_err(|e| Failure::new(EX_USAGE, e))?;
            out.push(item.clone());
        }
    }
    if out.is_empty() {
        return Err(Failure::new(EX_USAGE, "no images to prefetch"));
    }
    Ok(out)
}

pub fn run(args: &PrefetchArgs) -> Result<(), Failure> {
    let images = images(&args.items)?;
    for p in &args.platform {
        PlatformFilter::parse(p).map_err(|e| Failure::new(EX_USAGE, e))?;
    }
    let settings = settings(&args.at, None)?;
    let client = AdminClient::new(&args.at, &settings)?;
    let body = serde_json::json!({
        "images": images,
        "platforms": args.platform,
        "upstream": args.upstream,
    });
    let mut progress: Box<dyn Progress> = if std::io::stdout().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(Plain {
            out: std::io::stdout(),
        })
    };
    let result = runtime()?.block_on(async {
        let resp = client.send(client.post("/api/prefetch", &body)).await?;
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut errors = Vec::new();
        let mut summary = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Failure::new(
                    EX_UNAVAILABLE,
                    format!(
                        "the connection to regcache broke during the prefetch: {}",
                        crate::error::chain(&e)
                    ),
                )
            })?;
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Some(e) = Event::parse(&String::from_utf8_lossy(&line)) else {
                    continue;
                };
                progress.show(&e);
                match e.event.as_str() {
                    "error" => errors.push(format!("{}: {}", e.image, e.error)),
                    "summary" => summary = Some(e),
                    _ => {}
                }
            }
        }
        Ok::<_, Failure>((errors, summary))
    });
    progress.finish();
    let _ = std::io::stdout().flush();
    let (errors, summary) = result?;
    if summary.is_none() {
        return Err(Failure::new(
            EX_UNAVAILABLE,
            "regcache ended the prefetch without its summary (did it stop?)",
        ));
    }
    if !errors.is_empty() {
        return Err(Failure::new(
            1,
            format!(
                "{} of {} images failed:\n  {}",
                errors.len(),
                images.len(),
                errors.join("\n  ")
            ),
        ));
    }
    Ok(())
}

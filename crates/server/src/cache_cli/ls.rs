//! `regcache ls [--json] [--blobs]`: what the cache holds, from a running
//! instance (`GET /api/cache`) or a data dir (read-only).

use std::io::Write;

use indicatif::HumanBytes;

use super::{AdminClient, EX_IOERR, EX_NOINPUT, Failure, Offline, Where, runtime, settings, when};
use crate::cache_admin::Inventory;
use crate::cache_admin::inventory::by_repository;
use crate::cache_admin::local::{self, LocalError};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct LsArgs {
    #[command(flatten)]
    pub at: Where,
    #[command(flatten)]
    pub offline: Offline,
    /// Print the whole listing as JSON.
    #[arg(long)]
    pub json: bool,
    /// One row per cached manifest and blob, with the tags that use it.
    #[arg(long)]
    pub blobs: bool,
}

/// Exit status of a local failure.
pub fn local_code(e: &LocalError) -> u8 {
    match e {
        LocalError::NoCache(_) => EX_NOINPUT,
        LocalError::Locked(_) => super::EX_TEMPFAIL,
        LocalError::Io(_) => EX_IOERR,
    }
}

pub fn run(args: &LsArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let settings = settings(&args.at, args.offline.data_dir.clone())?;
    let inventory = if args.offline.is_offline() {
        let root = crate::admin_cli::store_root(&settings.data_dir);
        local::graph(&root)
            .map_err(|e| Failure::new(local_code(&e), e.to_string()))?
            .inventory()
    } else {
        let client = AdminClient::new(&args.at, &settings)?;
        runtime()?.block_on(async {
            let resp = client.send(client.get("/api/cache")).await?;
            let text = resp.text().await.unwrap_or_default();
            serde_json::from_str::<Inventory>(&text).map_err(|e| {
                Failure::new(
                    super::EX_UNAVAILABLE,
                    format!("the admin API's listing is unreadable: {e}"),
                )
            })
        })?
    };
    let text = if args.json {
        serde_json::to_string_pretty(&inventory)
            .map_err(|e| Failure::new(EX_IOERR, e.to_string()))?
            + "\n"
    } else if args.blobs {
        blobs_table(&inventory, crate::services::unix_now())
    } else {
        table(&inventory, crate::services::unix_now())
    };
    out.write_all(text.as_bytes())
        .map_err(|e| Failure::new(EX_IOERR, format!("cannot write the listing: {e}")))
}

fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => digest.to_owned(),
    }
}

fn short_type(media_type: &str) -> &str {
    match media_type {
        "application/vnd.docker.distribution.manifest.v2+json" => "docker v2",
        "application/vnd.docker.distribution.manifest.list.v2+json" => "docker list",
        "application/vnd.oci.image.manifest.v1+json" => "oci manifest",
        "application/vnd.oci.image.index.v1+json" => "oci index",
        "application/vnd.docker.distribution.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v1+prettyjws" => "schema1",
        other => other,
    }
}

/// Rows padded to their columns' widths.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One row per tag, grouped by repository.
pub fn table(inv: &Inventory, now: u64) -> String {
    let mut rows = vec![vec![
        "REPOSITORY".to_owned(),
        "TAG".into(),
        "DIGEST".into(),
        "MEDIA TYPE".into(),
        "SIZE".into(),
        "CACHED".into(),
        "LAST USE".into(),
    ]];
    for ((upstream, repository), tags) in by_repository(&inv.images) {
        for row in tags {
            rows.push(vec![
                format!("{upstream}/{repository}"),
                row.tag.clone(),
                short(row.digest.as_str()),
                short_type(&row.media_type).to_owned(),
                HumanBytes(row.size).to_string(),
                if row.missing == 0 {
                    "all".into()
                } else {
                    format!("{}/{}", row.cached, row.cached + row.missing)
                },
                when(row.last_use_unix, now),
            ]);
        }
    }
    let repos = by_repository(&inv.images).len();
    let mut out = columns(&rows);
    out.push_str(&format!(
        "{} repositories, {} tags; {} entries, {} ({} bytes) on disk\n",
        repos,
        inv.images.len(),
        inv.entries,
        HumanBytes(inv.bytes),
        inv.bytes
    ));
    out
}

/// One row per disk entry.
pub fn blobs_table(inv: &Inventory, now: u64) -> String {
    let mut rows = vec![vec![
        "DIGEST".to_owned(),
        "KIND".into(),
        "SIZE".into(),
        "LAST USE".into(),
        "USED BY".into(),
    ]];
    for b in &inv.blobs {
        rows.push(vec![
            b.digest.to_string(),
            b.kind.clone(),
            HumanBytes(b.size).to_string(),
            when(Some(b.last_use_unix), now),
            if b.used_by.is_empty() {
                "-".into()
            } else {
                b.used_by.join(", ")
            },
        ]);
    }
    let mut out = columns(&rows);
    out.push_str(&format!(
        "{} entries, {} ({} bytes) on disk\n",
        inv.entries,
        HumanBytes(inv.bytes),
        inv.bytes
    ));
    out
}

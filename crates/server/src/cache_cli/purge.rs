//! `regcache purge IMAGE|REPO… [--older-than DURATION] [--dry-run]`:
//! through a running instance (`POST /api/purge`), or on a data dir no
//! regcache is running on.

use std::io::Write;

use indicatif::HumanBytes;

use super::{
    AdminClient, EX_IOERR, EX_NOINPUT, EX_USAGE, Failure, Offline, Where, parse_duration, runtime,
    settings, upstream_names,
};
use crate::cache_admin::imageref::{self, parse_and_resolve};
use crate::cache_admin::inventory::PurgePlan;
use crate::cache_admin::{local, now_unix_nanos, purge};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PurgeArgs {
    /// Images (`repo:tag`, `repo@digest`) or repositories (`repo`: every
    /// tag), with or without the registry (`docker.io/library/alpine:3.19`).
    #[arg(value_name = "IMAGE|REPO")]
    pub targets: Vec<String>,
    /// Also purge everything not used for this long (`30d`, `12h`, `90s`).
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
    /// The upstream for names without a registry (default: the default upstream).
    #[arg(long, value_name = "NAME")]
    pub upstream: Option<String>,
    /// List what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub at: Where,
    #[command(flatten)]
    pub offline: Offline,
}

pub fn run(args: &PurgeArgs, out: &mut dyn Write) -> Result<(), Failure> {
    if args.targets.is_empty() && args.older_than.is_none() {
        return Err(Failure::new(
            EX_USAGE,
            "name images or repositories to purge, or give --older-than DURATION",
        ));
    }
    let older_than = args
        .older_than
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| Failure::new(EX_USAGE, e))?;
    for t in &args.targets {
        imageref::parse(t).map_err(|e| Failure::new(EX_USAGE, e))?;
    }
    let settings = settings(&args.at, args.offline.data_dir.clone())?;
    let plan = if args.offline.is_offline() {
        let (names, default) = upstream_names(&settings);
        let targets = args
            .targets
            .iter()
            .map(|t| {
                parse_and_resolve(t, &names, default, args.upstream.as_deref())
                    .map(|r| (t.clone(), r))
                    .map_err(|e| Failure::new(EX_USAGE, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let root = crate::admin_cli::store_root(&settings.data_dir);
        let store = local::open_for_purge(&root, settings.disk_size)
            .map_err(|e| Failure::new(super::ls::local_code(&e), e.to_string()))?;
        let mut graph = local::graph_of(&store);
        let mut plan = graph
            .plan(
                &targets,
                older_than,
                now_unix_nanos(),
                &mut local::reader(&root),
            )
            .map_err(|e| Failure::new(EX_NOINPUT, e.to_string()))?;
        plan.dry_run = args.dry_run;
        if !args.dry_run {
            runtime()?.block_on(purge::execute(&store, &mut plan, &|_| {}));
        }
        // Opening took the index snapshot a clean shutdown left; leave one
        // again so the next start stays fast.
        if let Err(error) = store.disk().save_index() {
            tracing::warn!(%error, "cannot save the cache index; the next start scans the cache");
        }
        plan
    } else {
        let client = AdminClient::new(&args.at, &settings)?;
        let body = serde_json::json!({
            "images": args.targets,
            "older_than_secs": older_than.map(|d| d.as_secs()),
            "upstream": args.upstream,
            "dry_run": args.dry_run,
        });
        runtime()?.block_on(async {
            let resp = client.send(client.post("/api/purge", &body)).await?;
            let text = resp.text().await.unwrap_or_default();
            serde_json::from_str::<PurgePlan>(&text).map_err(|e| {
                Failure::new(
                    super::EX_UNAVAILABLE,
                    format!("the admin API's purge answer is unreadable: {e}"),
                )
            })
        })?
    };
    out.write_all(report(&plan).as_bytes())
        .map_err(|e| Failure::new(EX_IOERR, format!("cannot write the report: {e}")))?;
    if !plan.errors.is_empty() {
        return Err(Failure::new(
            EX_IOERR,
            format!("some removals failed: {}", plan.errors.join("; ")),
        ));
    }
    Ok(())
}

/// One line per tag and entry, then a summary.
pub fn report(plan: &PurgePlan) -> String {
    let (untag, remove, summary) = if plan.dry_run {
        ("would untag", "would remove", "would purge")
    } else {
        ("untagged", "removed", "purged")
    };
    let mut out = String::new();
    for t in &plan.tags {
        out.push_str(&format!(
            "{untag} {}/{}:{} {}\n",
            t.upstream, t.repository, t.tag, t.digest
        ));
    }
    for e in &plan.remove {
        out.push_str(&format!(
            "{remove} {} {} {}\n",
            e.kind,
            e.digest,
            HumanBytes(e.size)
        ));
    }
    for e in &plan.kept_shared {
        out.push_str(&format!(
            "kept {} {} {} (used by other tags)\n",
            e.kind,
            e.digest,
            HumanBytes(e.size)
        ));
    }
    out.push_str(&format!(
        "{summary} {} tags, {} entries, {} ({} bytes); kept {} shared\n",
        plan.tags.len(),
        plan.remove.len(),
        HumanBytes(plan.bytes),
        plan.bytes,
        plan.kept_shared.len()
    ));
    out
}

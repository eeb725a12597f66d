//! The `regcache` binary: parse flags, load configuration, run a subcommand.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use regcache_server::config::{Overrides, ProcessEnv, ServeEnv, Settings};
use regcache_server::exit::{self, EX_NOINPUT, EX_UNAVAILABLE, EX_USAGE};
use regcache_server::{cache_cli, check_cli, convert_cli, server, stats_cli, telemetry};

#[derive(Parser, Debug)]
#[command(
    name = "regcache",
    version,
    about = "A caching reverse proxy for container registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Print which policy rule applies to a repository, and why.
    Explain {
        /// Repository name as clients request it, e.g. legacy/app.
        repository: String,
        /// Upstream name (defaults to the configured upstream).
        #[arg(long)]
        upstream: Option<String>,
        /// Also show the access decision for this user ("anonymous": a
        /// client without credentials) and the [[access]] rule that made it.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// The action for the access decision: pull (default), push or delete.
        #[arg(long, value_name = "ACTION")]
        action: Option<String>,
        /// TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum MappingsCommand {
    /// Write every manifest digest regcache generated with the digest it came
    /// from and the direction (CSV: repository,tag,direction,source_digest,digest;
    /// --format redhat: the columns of Red Hat's Schema 1 mapping file;
    /// --format json: every field).
    Export {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// csv (default), redhat or json.
        #[arg(long, default_value = "csv")]
        format: String,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Per-repository policy rules.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Digest mappings of the manifests regcache generated (Schema 1 for old
    /// clients, Docker twins of OCI images, Schema 1 images upgraded).
    Mappings {
        #[command(subcommand)]
        command: MappingsCommand,
    },
    /// Run the caching proxy (no config file needed: the defaults serve Docker Hub
    /// on 0.0.0.0:5000 with the cache in ./regcache-data).
    #[command(after_help = SECRET_ENV_HELP)]
    Serve {
        /// TOML configuration file (optional; see deploy/regcache.toml).
        #[arg(long, value_name = "FILE", env = "REGCACHE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Load and validate the configuration as `serve` would (files it names
    /// included) without binding or writing anything; print every problem
    /// (exit 78) or a one-line summary (exit 0).
    #[command(after_help = SECRET_ENV_HELP)]
    Check {
        /// TOML configuration file.
        #[arg(long, value_name = "FILE", env = "REGCACHE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Verify every cached blob and manifest against its digest and remove the
    /// bad ones (and leftover temp files). Refuses while a regcache runs on the
    /// data dir. Exit status: 0 clean, 1 problems found and removed, 2 problems
    /// left, 78 bad configuration, 66 no cache there, 74 I/O error, 75 in use.
    Fsck {
        /// TOML configuration file (for its data_dir).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Report only: remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Convert a Schema 2 (or OCI) manifest and its config blob into a signed
    /// Schema 1 manifest, as docker/distribution 2.8 served it to old clients.
    Convert(convert_cli::ConvertArgs),
    /// Print a running regcache's figures (cache, hit ratio, top
    /// repositories, fills, upstreams, recent errors) from its admin
    /// listener's /api/stats.
    Stats(stats_cli::StatsArgs),
    /// List what the cache holds: repositories, tags, sizes, last use (a
    /// running instance's admin API, or --data-dir read-only).
    Ls(cache_cli::ls::LsArgs),
    /// Remove images or repositories (and their blobs no other cached image
    /// uses) from the cache, or everything unused for --older-than.
    Purge(cache_cli::purge::PurgeArgs),
    /// Warm images (every platform, or --platform) through a running
    /// instance, with progress.
    Prefetch(cache_cli::prefetch::PrefetchArgs),
}

/// The variables with no flag (a flag would show secrets in `ps`).
const SECRET_ENV_HELP: &str = "Environment variables without a flag (secrets):
  REGCACHE_UPSTREAM_PASSWORD  password of the default upstream (with --upstream-username)
  REGCACHE_ADMIN_TOKEN        bearer token of the admin listener's state-changing endpoints
Exit status: 0 ok, 2 bad command line, 69 a listen address cannot be bound, 78 bad configuration.";

/// mimalloc instead of glibc malloc: the request path allocates small, short-lived
/// objects (headers, routes, futures), where glibc's malloc/free took ~8% of
/// the CPU under manifest load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = match cli.command {
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    repository,
                    upstream,
                    user,
                    action,
                    config,
                },
        } => policy_explain(
            config.as_deref(),
            &repository,
            upstream.as_deref(),
            user.as_deref(),
            action.as_deref(),
        ),
        Command::Mappings {
            command:
                MappingsCommand::Export {
                    config,
                    data_dir,
                    format,
                },
        } => {
            let overrides = Overrides {
                data_dir,
                ..Overrides::default()
            };
            mappings_export(config.as_deref(), &overrides, &format)
        }
        Command::Serve { config, overrides } => serve(config.as_deref(), &overrides),
        Command::Check { config, overrides } => check(config.as_deref(), &overrides),
        Command::Convert(args) => convert(&args),
        Command::Stats(args) => stats(&args),
        Command::Fsck {
            config,
            data_dir,
            dry_run,
        } => {
            let overrides = Overrides {
                data_dir,
                ..Overrides::default()
            };
            fsck(config.as_deref(), &overrides, !dry_run)
        }
        Command::Ls(args) => cache_command("ls", cache_cli::ls::run(&args, &mut std::io::stdout())),
        Command::Purge(args) => cache_command(
            "purge",
            cache_cli::purge::run(&args, &mut std::io::stdout()),
        ),
        Command::Prefetch(args) => cache_command("prefetch", cache_cli::prefetch::run(&args)),
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn stats(args: &stats_cli::StatsArgs) -> Result<(), ExitCode> {
    match stats_cli::run(args, std::env::var("REGCACHE_ADMIN_TOKEN").ok()) {
        Ok(text) => {
            print!("{text}");
            Ok(())
        }
        Err(e) => {
            eprintln!("regcache stats: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// Defaults, then `file`, the environment and `overrides`, validated; on a
/// bad configuration every problem is printed and the exit status is `EX_CONFIG`.
fn load_settings(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ExitCode> {
    exit::load_settings(file, &ProcessEnv, overrides)
}

fn usage_error() -> ExitCode {
    exit::code(EX_USAGE)
}

fn policy_explain(
    file: Option<&Path>,
    repository: &str,
    upstream: Option<&str>,
    user: Option<&str>,
    action: Option<&str>,
) -> Result<(), ExitCode> {
    let settings = load_settings(file, &Overrides::default())?;
    let text = regcache_server::admin_cli::explain(&settings, repository, upstream, user, action)
        .map_err(|e| {
        eprintln!("regcache policy explain: {e}");
        usage_error()
    })?;
    print!("{text}");
    Ok(())
}

fn mappings_export(
    file: Option<&Path>,
    overrides: &Overrides,
    format: &str,
) -> Result<(), ExitCode> {
    let settings = load_settings(file, overrides)?;
    let root = regcache_server::admin_cli::store_root(&settings.data_dir);
    if !root.is_dir() {
        eprintln!(
            "regcache mappings export: no cache at {} (is --data-dir right?)",
            root.display()
        );
        return Err(exit::code(EX_NOINPUT));
    }
    let records = regcache_server::admin_cli::mappings(&settings).map_err(|e| {
        eprintln!("regcache mappings export: {e}");
        ExitCode::from(1)
    })?;
    match format {
        "csv" => print!("{}", regcache_server::admin_cli::to_csv(&records)),
        "redhat" => print!("{}", regcache_server::admin_cli::to_redhat_csv(&records)),
        "json" => print!("{}", regcache_server::admin_cli::to_json(&records)),
        other => {
            eprintln!("regcache mappings export: --format {other:?}: expected csv, redhat or json");
            return Err(usage_error());
        }
    }
    Ok(())
}

fn check(file: Option<&Path>, overrides: &Overrides) -> Result<(), ExitCode> {
    let settings = exit::load_settings(file, &ServeEnv, overrides)?;
    println!("{}", check_cli::summary(&settings));
    Ok(())
}

fn serve(file: Option<&Path>, overrides: &Overrides) -> Result<(), ExitCode> {
    // Configuration is loaded and validated before anything is bound.
    let settings = exit::load_settings(file, &ServeEnv, overrides)?;
    telemetry::init(settings.log_json, &settings.log_level);
    server::raise_open_files(&settings.limits);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("regcache: cannot start the runtime: {e}");
            ExitCode::from(1)
        })?;
    rt.block_on(async move {
        // Bound first: an address in use fails before anything is written
        // to the data dir (the cache, the signing key).
        let bound = match server::bind(&settings).await {
            Ok((api, admin)) => server::bind_internal(&settings)
                .await
                .map(|internal| (api, admin, internal)),
            Err(e) => Err(e),
        };
        let (api, admin, internal) = bound.map_err(|e| {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("regcache: {e}");
            exit::code(EX_UNAVAILABLE)
        })?;
        let internal_addr = internal
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string());
        let running = server::build(&settings).await.map_err(|e| {
            tracing::error!(error = %e, "start-up failed");
            ExitCode::from(1)
        })?;
        let running = running
            .with_reload(regcache_server::reload::ReloadSource {
                file: file.map(Path::to_path_buf),
                overrides: overrides.clone(),
            })
            .with_internal_listener(internal);
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            listen = %api.local_addr().map_or_else(|_| settings.listen.to_string(), |a| a.to_string()),
            admin = %admin.local_addr().map_or_else(|_| settings.admin_listen.to_string(), |a| a.to_string()),
            internal = internal_addr.as_deref(),
            scheme = if settings.tls.is_some() { "https" } else { "http" },
            upstream = %settings.default_upstream().url,
            upstream_name = %settings.default_upstream().name,
            data_dir = %settings.data_dir.display(),
            "regcache serving"
        );
        server::serve(running, api, admin, server::shutdown_signal()).await;
        Ok(())
    })
}

fn fsck(file: Option<&Path>, overrides: &Overrides, repair: bool) -> Result<(), ExitCode> {
    let settings = load_settings(file, overrides)?;
    let mut stdout = std::io::stdout().lock();
    let (code, error) = regcache_server::fsck_cli::run(&settings.data_dir, repair, &mut stdout);
    let _ = stdout.flush();
    if let Some(error) = error {
        eprintln!("regcache fsck: {error}");
    }
    match code {
        0 => Ok(()),
        code => Err(ExitCode::from(code)),
    }
}

fn cache_command(name: &str, result: Result<(), cache_cli::Failure>) -> Result<(), ExitCode> {
    result.map_err(|f| {
        eprintln!("regcache {name}: {}", f.message);
        ExitCode::from(f.code)
    })
}

fn convert(args: &convert_cli::ConvertArgs) -> Result<(), ExitCode> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let out = convert_cli::run(args, now).map_err(|msg| {
        eprintln!("regcache convert: {}", msg.replace('\n', " "));
        ExitCode::from(1)
    })?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .map_err(|e| {
            eprintln!("regcache convert: cannot write output: {e}");
            ExitCode::from(1)
        })
}

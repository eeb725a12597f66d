//! The `regcache` binary: parse flags, load configuration, run a subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use regcache_server::convert;

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
enum Command {
    /// Convert a Schema 2 (or OCI) manifest and its config blob into a signed
    /// Schema 1 manifest, as docker/distribution 2.8 served it to old clients.
    Convert {
        /// Repository name embedded in the manifest (as in the request path, e.g. library/alpine).
        #[arg(long)]
        name: String,
        /// Tag embedded in the manifest.
        #[arg(long)]
        tag: String,
        /// The image configuration blob, byte for byte as stored.
        #[arg(long, value_name = "CONFIG_FILE")]
        config: PathBuf,
        /// P-256 signing key (PEM, or JWK when named .json/.jwk); a fresh key when absent.
        #[arg(long, value_name = "KEY_FILE")]
        key: Option<PathBuf>,
        /// Print exactly the canonical (unsigned) payload; its sha256 is the Schema 1 digest.
        #[arg(long)]
        payload: bool,
        /// For a manifest list: the linux/amd64 child manifest file.
        #[arg(long, value_name = "FILE")]
        child: Option<PathBuf>,
        /// The Schema 2 / OCI manifest (or Docker manifest list).
        #[arg(value_name = "MANIFEST_FILE")]
        manifest: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Convert {
            name,
            tag,
            config,
            key,
            payload,
            child,
            manifest,
        } => {
            let args = convert::ConvertArgs {
                name,
                tag,
                config,
                key,
                payload,
                child,
                manifest,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            match convert::run(&args, now) {
                Ok(out) => {
                    use std::io::Write;
                    let mut stdout = std::io::stdout().lock();
                    if let Err(e) = stdout.write_all(&out).and_then(|()| stdout.flush()) {
                        eprintln!("regcache convert: cannot write output: {e}");
                        return ExitCode::from(1);
                    }
                    ExitCode::SUCCESS
                }
                Err(msg) => {
                    eprintln!("regcache convert: {}", msg.replace('\n', " "));
                    ExitCode::from(1)
                }
            }
        }
    }
}

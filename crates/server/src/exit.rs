//! The `regcache` binary's exit statuses (sysexits.h) and the helpers its
//! subcommands share to load configuration with them.
//!
//! | status | when |
//! |---|---|
//! | 0 | done |
//! | 1 | a runtime failure (start-up other than binding, an I/O error) |
//! | 2 | clap's own: an unknown flag or subcommand, a missing argument |
//! | 64 `EX_USAGE` | a flag's value regcache refuses (e.g. `--format xml`) |
//! | 66 `EX_NOINPUT` | no cache under the data dir (`mappings export`, `fsck`) |
//! | 69 `EX_UNAVAILABLE` | a listen address cannot be bound (in use, not local) |
//! | 78 `EX_CONFIG` | a bad configuration (file, environment, flags) |
//!
//! clap's own errors keep clap's status 2: they come before regcache reads
//! anything, and scripts written against clap-based tools expect it.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, EnvSource, Overrides, Settings};

/// sysexits `EX_USAGE`: a flag's value is refused.
pub const EX_USAGE: u8 = 64;
/// sysexits `EX_NOINPUT`: the input (a cache) is not there.
pub const EX_NOINPUT: u8 = 66;
/// sysexits `EX_UNAVAILABLE`: a service (a listen address) is unavailable.
pub const EX_UNAVAILABLE: u8 = 69;
/// sysexits `EX_IOERR`: reading or writing the cache failed.
pub const EX_IOERR: u8 = 74;
/// sysexits `EX_TEMPFAIL`: the cache is in use (a running regcache holds it).
pub const EX_TEMPFAIL: u8 = 75;
/// sysexits `EX_NOPERM`: the admin API refused the token.
pub const EX_NOPERM: u8 = 77;
/// sysexits `EX_CONFIG`: a bad configuration.
pub const EX_CONFIG: u8 = 78;

/// `code` as the process's exit status.
pub fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}

/// Defaults, then `file`, the environment and `overrides`, validated; on a
/// bad configuration every problem is printed and the status is `EX_CONFIG`.
pub fn load_settings(
    file: Option<&Path>,
    env: &dyn EnvSource,
    overrides: &Overrides,
) -> Result<Settings, ExitCode> {
    Config::load(file, env, overrides).map_err(|e| {
        eprint!("regcache: {e}");
        code(EX_CONFIG)
    })
}

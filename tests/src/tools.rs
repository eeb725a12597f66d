//! Finding the external programs the end-to-end tests drive.
//!
//! A missing tool is never a reason to skip a test: the tests exist to run
//! against the real thing, and a skipped test reads as a passed one in CI.
//! So lookups panic with the command that installs the tool.

use std::path::{Path, PathBuf};

/// Looks `program` up in `PATH` (and in `/usr/bin`, `/usr/sbin`, where Debian
/// installs the packages the tests use, in case `PATH` is minimal).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// Like [`find_program`], but panics with an install hint when it is missing.
///
/// # Panics
/// When `program` is not installed.
pub fn require_program(program: &str, debian_package: &str) -> PathBuf {
    find_program(program).unwrap_or_else(|| {
        panic!(
            "`{program}` is not installed; the end-to-end tests need the real one. \
             Install it with `sudo apt-get install -y {debian_package}` \
             (or run `scripts/test`, which installs everything the tests need)"
        )
    })
}

/// The workspace's root folder (the parent of this crate's manifest dir).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map_or_else(|| here.to_path_buf(), Path::to_path_buf)
}

/// The test tools that come from PyPI (`tests/requirements.txt`), installed
/// by `scripts/test` in a virtualenv: `$REGCACHE_TEST_VENV`, or
/// `target/test-venv` in the workspace.
pub fn test_venv() -> PathBuf {
    std::env::var_os("REGCACHE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("test-venv"))
}

/// `program` from the test virtualenv ([`test_venv`]).
///
/// # Panics
/// When it is not installed there, with the commands that install it.
pub fn require_venv_program(program: &str) -> PathBuf {
    let venv = test_venv();
    let path = venv.join("bin").join(program);
    assert!(
        is_executable(&path),
        "`{program}` is not installed in the test virtualenv {}: run `scripts/test` \
         (it creates the virtualenv), or `python3 -m venv {} && {}/bin/pip install -r tests/requirements.txt`",
        venv.display(),
        venv.display(),
        venv.display(),
    );
    path
}

/// Runs `program args…` with `input` on its standard input and waits for
/// it: its exit status and both outputs.
///
/// # Panics
/// When the program can't be started or fed.
pub fn run_with_stdin(program: &Path, args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    // Written from a thread: a program that answers while it reads would
    // otherwise fill its output pipe and wait on us while we wait on it.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {}: {e}", program.display()));
    writer
        .join()
        .expect("stdin writer")
        .unwrap_or_else(|e| panic!("feeding {}: {e}", program.display()));
    out
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-regcache-xyz").is_none());
    }

    #[test]
    #[should_panic(expected = "apt-get install -y some-package")]
    fn missing_program_panics_with_install_hint() {
        require_program("no-such-program-regcache-xyz", "some-package");
    }
}

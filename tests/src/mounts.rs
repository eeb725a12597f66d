//! Mounts for the disk fault tests: a small tmpfs, and a bind mount that
//! can be switched to read-only under a running process. They need root;
//! without it they panic saying so (the tests must fail, never skip).

use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;

/// Panics unless running as root (mounting needs it).
pub fn require_root() {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        uid, "0",
        "the disk fault tests mount a tmpfs and must run as root (uid is {uid}); run them as root, as CI does"
    );
}

/// A tmpfs mounted for one test, unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("regcache-tmpfs-")
            .tempdir()
            .unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path_str(dir.path()),
            ],
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file taking all but `leave` bytes of free space.
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        let free = free_bytes(self.path());
        let path = self.path().join(name);
        let n = free.saturating_sub(leave) as usize;
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5a_u8; MIB];
        let mut left = n;
        while left > 0 {
            let k = left.min(MIB);
            if std::io::Write::write_all(&mut f, &chunk[..k]).is_err() {
                break;
            }
            left -= k;
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A bind mount of a folder, switched between read-write and read-only.
///
/// The kernel refuses `mount -o remount,ro` while a process has files open
/// for writing (regcache's lock and logs), so "remounted read-only after
/// start" is made by replacing the bind with a read-only one: every path
/// regcache opens from then on is on a read-only file system (`EROFS`).
#[derive(Debug)]
pub struct Bind {
    dir: tempfile::TempDir,
    src: PathBuf,
}

impl Bind {
    pub fn new(src: PathBuf) -> Bind {
        std::fs::create_dir_all(&src).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("regcache-data-")
            .tempdir()
            .unwrap();
        run("mount", &["--bind", path_str(&src), path_str(dir.path())]);
        Bind { dir, src }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn set_read_only(&self, ro: bool) {
        run("umount", &["-l", path_str(self.path())]);
        run(
            "mount",
            &["--bind", path_str(&self.src), path_str(self.path())],
        );
        if ro {
            run("mount", &["-o", "remount,bind,ro", path_str(self.path())]);
        }
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_bytes(p: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1", path_str(p)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

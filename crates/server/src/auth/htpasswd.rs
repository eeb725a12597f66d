//! An htpasswd file of bcrypt hashes (`htpasswd -B`), as distribution reads
//! it: `user:hash` lines, blank lines and `#` comments skipped; only bcrypt
//! (`$2y$`, `$2b$`, `$2a$`) is accepted, and any other hash type is refused
//! at load with its line number (never the line, which holds the hash).
//!
//! The file is re-read when it changes: its modification time and size are
//! looked at, at most once per [`RECHECK`], when a verification needs it. A
//! file that no longer loads keeps the previous users (logged and counted).
//!
//! bcrypt is slow on purpose, so verifications run on the blocking pool, at
//! most one per core at a time, and a success is remembered for
//! [`CACHE_TTL`] by (user, SHA-256 of the password): a client sending the
//! same credentials with every request costs one bcrypt per TTL, and an
//! attacker's wrong guesses cost the same as a legitimate client's first
//! one. An unknown user is checked against a dummy hash, so the answer takes
//! as long as for a wrong password (no user enumeration by timing).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest as _, Sha256};

/// How often the file's metadata is looked at, at most.
pub const RECHECK: Duration = Duration::from_secs(1);
/// How long a successful verification is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// Users and their bcrypt hashes.
#[derive(Clone, Default)]
pub struct Entries {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for Entries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Entries {
    /// Parse a file's text; every problem names its 1-based line number.
    pub fn parse(text: &str) -> Result<Entries, Vec<String>> {
        let mut users = HashMap::new();
        let mut problems = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                problems.push(format!("line {n}: not `user:hash`"));
                continue;
            };
            if user.is_empty() {
                problems.push(format!("line {n}: empty user name"));
                continue;
            }
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) || hash.len() != 60 {
                problems.push(format!(
                    "line {n}: not a bcrypt hash ($2y$, $2b$ or $2a$, as `htpasswd -B` writes); other hash types are refused"
                ));
                continue;
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        if problems.is_empty() {
            Ok(Entries { users })
        } else {
            Err(problems)
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s (bcrypt; slow). An unknown user costs
    /// the same as a wrong password.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, dummy_hash());
                false
            }
        }
    }
}

/// A bcrypt hash of nothing anyone can send, at the usual cost.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        bcrypt::hash("regcache: no such user", bcrypt::DEFAULT_COST).unwrap_or_default()
    })
}

/// Read and parse the file at `path`; problems name the file and line numbers.
pub fn load(path: &Path) -> Result<Entries, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![format!(
            "htpasswd file {}: cannot read: {e}",
            path.display()
        )]
    })?;
    Entries::parse(&text).map_err(|ps| {
        ps.into_iter()
            .map(|p| format!("htpasswd file {}: {p}", path.display()))
            .collect()
    })
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct State {
    entries: Arc<Entries>,
    stamp: Stamp,
    checked: Instant,
}

/// The htpasswd file as the server uses it: reloaded on change, verified on
/// the blocking pool, successes cached.
pub struct Htpasswd {
    path: PathBuf,
    state: Mutex<State>,
    ok: moka::sync::Cache<(String, [u8; 32]), ()>,
    permits: tokio::sync::Semaphore,
    /// Failed reloads (the previous users stay).
    reload_errors: Counter,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Htpasswd {
    /// Load `path` now (start-up fails on a bad file); failed reloads are
    /// counted in `reload_errors`.
    pub fn open(path: &Path, reload_errors: Counter) -> Result<Htpasswd, Vec<String>> {
        let entries = load(path)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Htpasswd {
            path: path.to_owned(),
            state: Mutex::new(State {
                entries: Arc::new(entries),
                stamp: stamp(path),
                checked: Instant::now(),
            }),
            ok: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CACHE_TTL)
                .build(),
            permits: tokio::sync::Semaphore::new(cores),
            reload_errors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current users, reloading the file first if it changed (looked at
    /// no more than once per [`RECHECK`]).
    pub fn entries(&self) -> Arc<Entries> {
        let mut st = self.state.lock();
        if st.checked.elapsed() < RECHECK {
            return st.entries.clone();
        }
        st.checked = Instant::now();
        let now = stamp(&self.path);
        if now == st.stamp {
            return st.entries.clone();
        }
        st.stamp = now;
        match load(&self.path) {
            Ok(e) => {
                tracing::info!(path = %self.path.display(), users = e.len(), "htpasswd file reloaded");
                st.entries = Arc::new(e);
                self.ok.invalidate_all();
            }
            Err(problems) => {
                self.reload_errors.inc();
                tracing::warn!(
                    path = %self.path.display(),
                    problems = %problems.join("; "),
                    "htpasswd file changed but does not load; keeping the previous users"
                );
            }
        }
        st.entries.clone()
    }

    /// Whether `password` is `user`'s.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let key = (user.to_owned(), Sha256::digest(password.as_bytes()).into());
        // Reload first: a changed file drops the cache.
        let entries = self.entries();
        if self.ok.contains_key(&key) {
            return true;
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let (u, p) = (user.to_owned(), password.to_owned());
        let ok = tokio::task::spawn_blocking(move || entries.verify(&u, &p))
            .await
            .unwrap_or(false);
        if ok {
            self.ok.insert(key, ());
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pw: &str) -> String {
        bcrypt::hash(pw, 4).unwrap()
    }

    #[test]
    fn parses_bcrypt_and_refuses_other_hashes_by_line() {
        let h = hash("pw");
        let text = format!(
            "# comment\n\nalice:{h}\n  bob:{}  \ncarol:$apr1$abc$def\ndave:{{SHA}}secretvalue=\nerin\n",
            h.replacen("$2b$", "$2y$", 1)
        );
        let errs = Entries::parse(&text).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("line 5: not a bcrypt hash"), "{errs:?}");
        assert!(errs[1].starts_with("line 6:"), "{errs:?}");
        assert!(errs[2].starts_with("line 7: not `user:hash`"), "{errs:?}");
        for e in &errs {
            assert!(!e.contains("secretvalue") && !e.contains("apr1"), "{e}");
        }
        let ok = Entries::parse(&format!(
            "alice:{h}\nbob:{}\n",
            h.replacen("$2b$", "$2y$", 1)
        ))
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert!(ok.verify("alice", "pw"));
        assert!(ok.verify("bob", "pw"), "$2y$ is read as $2b$");
        assert!(!ok.verify("alice", "wrong"));
        assert!(!ok.verify("nobody", "pw"));
        assert!(!format!("{ok:?}").contains("$2"), "Debug shows no hash");
    }

    #[tokio::test]
    async fn reloads_when_the_file_changes_and_keeps_users_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("alice:{}\n", hash("one"))).unwrap();
        let errors = Counter::default();
        let h = Htpasswd::open(&path, errors.clone()).unwrap();
        assert!(h.verify("alice", "one").await);
        assert!(!h.verify("bob", "two").await);

        // A new file (different size) is picked up after RECHECK.
        std::fs::write(
            &path,
            format!("alice:{}\nbob:{}\n", hash("new"), hash("two")),
        )
        .unwrap();
        tokio::time::sleep(RECHECK + Duration::from_millis(50)).await;
        assert!(h.verify("bob", "two").await);
        assert!(
            !h.verify("alice", "one").await,
            "the cached success of the old password is dropped on reload"
        );
        assert!(h.verify("alice", "new").await);

        // A broken file keeps the previous users.
        std::fs::write(&path, "alice:$1$md5$whatever\n").unwrap();
        tokio::time::sleep(RECHECK + Duration::from_millis(50)).await;
        assert!(h.verify("bob", "two").await);
        assert_eq!(errors.get(), 1);
        assert!(Htpasswd::open(&dir.path().join("missing"), Counter::default()).is_err());
    }
}

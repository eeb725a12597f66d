//! Object keys of the shared tier.
//!
//! * blobs: `{prefix}blobs/<algorithm>/<hex>` (`blobs/sha256/<hex>` for
//!   almost everything); content-addressed, so written once and never changed;
//! * tags: `{prefix}tags/<upstream>/<repository>/<tag>`, a small JSON
//!   `TagRecord`, overwritten on refresh;
//! * uploads in progress: `{prefix}tmp/<32 random hex digits>`, deleted when
//!   the upload ends. A crash can leave one behind: a bucket lifecycle rule
//!   expiring `{prefix}tmp/` after a day (and aborting incomplete multipart
//!   uploads) cleans them.
//!
//! Keys are built segment by segment with `Path::from_iter`, which
//! percent-encodes anything object_store considers unsafe in a segment, so a
//! repository name can't climb out of its folder.

use object_store::path::Path;
use rand::RngCore;
use regcache_formats::Digest;

/// Maps names to keys under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// The prefix split into segments (empty segments dropped).
    prefix: Vec<String>,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    fn path<'a>(&'a self, rest: impl IntoIterator<Item = &'a str>) -> Path {
        Path::from_iter(self.prefix.iter().map(String::as_str).chain(rest))
    }

    /// The prefix itself (what `check` lists).
    pub(crate) fn root(&self) -> Path {
        self.path([])
    }

    pub(crate) fn blob(&self, digest: &Digest) -> Path {
        self.path(["blobs", digest.algorithm().name(), digest.hex()])
    }

    pub(crate) fn tag(&self, upstream: &str, repository: &str, tag: &str) -> Path {
        self.path(
            ["tags", upstream]
                .into_iter()
                .chain(repository.split('/'))
                .chain([tag]),
        )
    }

    /// A fresh temporary key; 128 random bits, so two replicas never collide.
    pub(crate) fn tmp(&self) -> Path {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let id = hex::encode(id);
        self.path(["tmp", id.as_str()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::sha256_of(b"hello")
    }

    #[test]
    fn blob_keys_follow_the_layout() {
        let d = digest();
        assert_eq!(
            Keys::new("").blob(&d).as_ref(),
            format!("blobs/sha256/{}", d.hex())
        );
        assert_eq!(
            Keys::new("regcache/").blob(&d).as_ref(),
            format!("regcache/blobs/sha256/{}", d.hex())
        );
        assert_eq!(
            Keys::new("a/b").blob(&d).as_ref(),
            format!("a/b/blobs/sha256/{}", d.hex())
        );
    }

    #[test]
    fn tag_keys_keep_repository_segments() {
        let keys = Keys::new("regcache/");
        assert_eq!(
            keys.tag("docker.io", "library/alpine", "3.20").as_ref(),
            "regcache/tags/docker.io/library/alpine/3.20"
        );
    }

    #[test]
    fn hostile_segments_stay_inside_their_folder() {
        let keys = Keys::new("p/");
        let key = keys.tag("up", "../../blobs", "..");
        assert!(key.as_ref().starts_with("p/tags/up/"), "{key}");
        assert!(!key.parts().any(|p| p.as_ref() == ".."), "{key}");
    }

    #[test]
    fn tmp_keys_are_fresh() {
        let keys = Keys::new("");
        let (a, b) = (keys.tmp(), keys.tmp());
        assert_ne!(a, b);
        assert!(a.as_ref().starts_with("tmp/"));
        assert_eq!(a.as_ref().len(), "tmp/".len() + 32);
    }
}

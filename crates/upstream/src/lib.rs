//! regcache-upstream.

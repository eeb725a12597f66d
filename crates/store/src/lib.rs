//! regcache-store.

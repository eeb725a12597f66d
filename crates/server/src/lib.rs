//! regcache-server.

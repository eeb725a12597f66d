//! regcache-server: the HTTP server, its configuration and the `regcache` CLI.
//!
//! `main.rs` only parses flags, loads configuration, initialises tracing, binds,
//! and calls into this library, so tests can run the same code on ephemeral ports.

pub mod config;
pub mod convert;
pub mod routes;

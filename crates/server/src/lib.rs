//! regcache-server: the HTTP server, its configuration and the `regcache` CLI.
//!
//! `main.rs` only parses flags, loads configuration, initialises tracing, binds,
//! and calls into this library, so tests can run the same code on ephemeral ports.

pub mod admin_cli;
pub mod app;
pub mod body;
pub mod coalesce;
pub mod config;
pub mod convert;
pub mod fastpath;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod rescue;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod tls;

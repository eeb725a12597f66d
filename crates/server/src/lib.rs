//! regcache-server: the HTTP server, its configuration and the `regcache` CLI.
//!
//! `main.rs` only parses flags, loads configuration, initialises tracing, binds,
//! and calls into this library, so tests can run the same code on ephemeral ports.
//!
//! A request's way through: [`listener`] accepts it (plain or TLS; bodiless
//! HTTP/1 GETs and HEADs on [`fastpath`], the rest on hyper); [`request`]
//! routes it to an upstream and a typed [`routes::Route`]; [`auth`] checks
//! who the client is and whether the access rules let it (when client
//! authentication is on); a handler in
//! [`handlers`] answers it on top of [`services`], which know no HTTP; any
//! [`error::Error`] becomes a registry error response in [`rescue`].

pub mod access_log;
pub mod admin;
pub mod admin_cli;
pub mod auth;
pub mod breaker;
pub mod cache_admin;
pub mod cache_cli;
pub mod check_cli;
pub mod cluster;
pub mod cockpit;
pub mod config;
pub mod conn;
pub mod convert_cli;
pub mod error;
pub mod exit;
pub mod fastpath;
pub mod fsck_cli;
pub mod handlers;
pub mod kernel_tls;
pub mod listener;
pub mod metrics;
pub mod metrics_cache;
pub mod metrics_cluster;
pub mod metrics_http;
pub mod metrics_text;
pub mod policy;
pub mod reload;
pub mod request;
pub mod rescue;
pub mod routes;
pub mod server;
pub mod services;
pub mod stats_cli;
pub mod telemetry;
pub mod tls;
pub mod web;
pub mod writes;

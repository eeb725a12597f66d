//! All end-to-end tests, in one test binary (one link on a 2-core machine).
//!
//! They drive the real `docker-registry`, `skopeo` and the `regcache` binary;
//! see the `regcache_tests` harness crate. The project's test script builds
//! the binaries (`cargo build --workspace --bins`) before `cargo test`.

#![allow(clippy::unwrap_used)]

mod admin_page;
mod cache_commands;
mod cache_purge;
mod client_auth;
mod client_auth_clients;
mod client_auth_tls;
mod client_bodies;
mod cluster;
mod cluster_harness;
mod cluster_internal;
mod config_cli;
mod config_reload;
mod connections;
mod crash;
mod deploy_files;
mod disk_faults;
mod fill_routes;
mod fsck;
mod harness;
mod multi_registry;
mod observability;
mod oci_bridge;
mod referrers;
mod request_rules;
mod resume;
mod schema1_differential;
mod schema1_policy;
mod schema1_signature;
mod schema1_upgrade;
mod serve_blobs;
mod serve_errors;
mod serve_pull;
mod serve_tls;
mod support;
mod tag_revalidation;
mod upstream_auth;
mod upstream_down;
mod writes;

//! Integration tests for regcache-store, in one binary to keep link time down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod disk;
mod fill;
mod model;
mod moto;
mod pass_through;
mod records;
mod shared;
mod snapshot;
mod startup;

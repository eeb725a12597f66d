//! Integration tests of the upstream client against loopback servers, in
//! one test binary (one link step on a 2-core machine).

// Helpers outside #[test] fns unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

mod auth;
mod causes;
mod errors;
mod memory;
mod mock;
mod passthrough;
mod redirect;
mod registry_smoke;
mod retry;
mod support;

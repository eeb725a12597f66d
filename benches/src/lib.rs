//! Bench support: the side-by-side load harness ([`load`]) behind
//! `cargo bench -p regcache-benches --bench load`.

pub mod load;

//! The referrers service against the in-memory registry, which has no
//! referrers API (its raw routes answer 404 for them).

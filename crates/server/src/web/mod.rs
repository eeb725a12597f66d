//! HTTP helpers, apart from what regcache does: body types, response
//! builders, range parsing, header rewriting, streamed bodies.

pub mod body;
pub mod headers;
pub mod range;
pub mod response;
pub mod stream;

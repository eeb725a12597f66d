//! Pure registry formats for regcache: digests, repository names and references,
//! media types, the registry error envelope, manifests (keeping their raw bytes),
//! `Accept` negotiation, the Schema 2 → Schema 1 conversion and libtrust JWS signing.
//!
//! Nothing here does I/O, spawns, or knows about HTTP crates: every function is a
//! function of its inputs (the caller passes bytes, keys and timestamps), which is
//! what makes the golden tests against docker/distribution 2.8 deterministic.

pub mod accept;
pub mod bridge;
pub mod digest;
pub mod error;
pub mod gojson;
pub mod jws;
pub mod manifest;
pub mod media_type;
pub mod negotiate;
pub mod reference;
pub mod referrers;
pub mod schema1;
pub mod upgrade;

pub use digest::{Algorithm, Digest, DigestError, Sha256Hasher};
pub use error::{ErrorCode, ErrorEnvelope, RegistryError};
pub use media_type::MediaType;

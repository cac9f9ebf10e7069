//! cadent: a thread-per-core, shared-nothing metrics data plane.
//!
//! See `ARCHITECTURE.md` for the map of the rooms below.

pub mod aggregate;
pub mod api;
pub mod config;
pub mod fingerprint;
pub mod ingest;
pub mod output;
pub mod point;
pub mod protocol;
pub mod pyre;
pub mod route;
pub mod shard;
pub mod store;
pub mod telemetry;
pub mod tools;

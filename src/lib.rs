//! cadent: a thread-per-core, shared-nothing metrics data plane.
//!
//! See `ARCHITECTURE.md` for the map of the rooms below.

pub mod config;
pub mod protocol;
pub mod route;
pub mod tools;

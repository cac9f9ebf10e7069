//! Operator tools built into the binary: load generator and counting sink.

pub mod blast;
pub mod echo;

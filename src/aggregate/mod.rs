//! Aggregation engines: shard-owned state with no I/O. Each shard owns one instance of
//! each engine; `ingest` takes a sample, `flush(now, out)` emits what is due.

pub mod carbon;
pub mod rollup;
mod slots;
pub mod statsd;

/// Numbers as JavaScript reads and prints them (moved to `protocol`, where the statsd
/// grammar reads them; kept here for the engine's users).
pub use crate::protocol::jsnum;

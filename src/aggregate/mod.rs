//! Aggregation engines: shard-owned state with no I/O. Each shard owns one instance of
//! each engine; `ingest` takes a sample, `flush(now, out)` emits what is due.

pub mod carbon;
pub mod jsnum;
pub mod rollup;
mod slots;
pub mod statsd;

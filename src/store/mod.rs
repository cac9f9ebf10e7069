//! Stores: where metrics are kept. Today: whisper files (the format engine, its io_uring
//! driver, carbon's rules and layout, find and render for the read API), the cache that
//! holds points until they are written, the process-wide write throttle, the spill that
//! keeps an unwritten cache across a restart, and graphite's glob.

pub mod cache;
pub mod glob;
pub mod spill;
pub mod throttle;
pub mod whisper;

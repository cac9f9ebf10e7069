//! Stores: where metrics are kept. Today: the whisper format engine, and graphite's glob
//! for the read API.

pub mod glob;
pub mod whisper;

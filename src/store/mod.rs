//! Stores: where metrics are kept. Today: the whisper format engine.

pub mod whisper;

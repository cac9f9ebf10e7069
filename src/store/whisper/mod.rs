//! Whisper, graphite's fixed-size round-robin file format, byte-identical to python
//! whisper 1.1.x. The format logic (`format`) does its reads and writes through a small
//! I/O interface (`io`), which `staged` implements over what `uring` fetched so the
//! io_uring writer drives it (`batch` for the updates that can start without blocking,
//! `uring` for the rest and for creates); `rules` chooses the
//! retention and aggregation of new files as carbon does, and `path` maps names to files.
//! For the read API, `find` walks a root for a glob and `render` reads a series, merges the
//! cache over it and reads or sets a file's aggregation method.

pub mod batch;
pub mod find;
pub mod format;
pub mod io;
pub mod path;
pub mod render;
pub mod rules;
pub mod staged;
pub mod uring;

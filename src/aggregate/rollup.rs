//! Multi-resolution rollups.

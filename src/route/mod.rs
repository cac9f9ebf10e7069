//! Routing: rules on metric names and the hash rings of clusters. Pure: no I/O.

pub mod ring;

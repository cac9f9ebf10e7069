//! fnv1a_ch and jump_fnv1a_ch rings, as carbon-c-relay 3.7.3 computes them.

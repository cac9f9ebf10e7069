//! carbon_ch_python: python carbon 1.1.x's ConsistentHashRing.

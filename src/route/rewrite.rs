//! carbon-c-relay's rewrite rules.

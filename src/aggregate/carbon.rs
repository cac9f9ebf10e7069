//! carbon-aggregator rules and buckets.

//! carbon_aggregator

//! Etsy statsd 0.9 aggregation.

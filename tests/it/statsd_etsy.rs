//! statsd_etsy

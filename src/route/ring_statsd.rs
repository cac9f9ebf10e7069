//! statsd_hashring: the ring of statsd's proxy (node hashring 3.x).

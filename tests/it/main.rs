//! The one integration-test binary: real sockets on 127.0.0.1, real peers.

mod bad_config;
mod bad_input;
mod carbon_aggregator;
mod clustering;
mod coco;
mod collectd_graphite;
mod collectd_live;
mod collectd_replay;
mod crelay;
mod delivery;
mod e2e;
mod pickle;
mod rewrite;
mod rings;
mod spool;
mod spool_tools;
mod statsd_console;
mod statsd_etsy;
mod statsd_mgmt;
mod statsd_serve;
mod support;
mod whisper_cli;
mod whisper_diff;
mod whisper_golden;

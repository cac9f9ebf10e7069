//! The config reader: any text as a config file. Never panics; a config it accepts
//! builds its destination table and routers, and each cluster passes the check a
//! membership change runs.
#![no_main]
use cadent::config::Config;
use cadent::route::{DestinationTable, Router};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse(text) else {
        return;
    };
    for i in 0..cfg.clusters.len() {
        if cfg.clusters[i].file.is_none() {
            cfg.check_cluster(i).unwrap();
        }
    }
    let table = DestinationTable::from_config(&cfg);
    let _ = Router::new(&cfg, &table, &[]);
});

//! The statsd path of a shard without its sockets, for measuring what the data plane
//! spends per line in user space: datagrams of 20 statsd lines go through
//! `Core::process` (decode, route, aggregate: owner by name hash, the mesh for names
//! another shard owns) on SHARDS cores simulated in one thread (datagrams dealt round
//! robin, meshes drained every 32 datagrams), until the CPU time (getrusage) reaches the
//! target. Prints lines per CPU-second. The same generator as `cadent blast --format
//! statsd` (counters, timers, gauges and sets over KEYS names).
//!
//! Usage: statsd_pipeline_bench [KEYS] [SHARDS] [CPU_SECONDS] [PASSES]   (100000 2 2.0)
//!
//! With PASSES, runs exactly that many passes over the datagrams instead (for
//! `valgrind --tool=callgrind`: the instructions of N+2 passes less those of N are two
//! passes' worth, 400,000 lines at the default KEYS).

use cadent::config::Config;
use cadent::output::Outputs;
use cadent::protocol::decode::{Decoder, End};
use cadent::route::{DestinationTable, Router};
use cadent::shard::aggregate::AggStage;
use cadent::shard::mesh;
use cadent::shard::pipeline::{Core, Input};
use cadent::shard::store::StoreStage;
use cadent::telemetry::ShardCounters;
use cadent::tools::SplitMix64;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let shards: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let cpu_target: f64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let fixed_passes: Option<u64> = args.get(4).and_then(|a| a.parse().ok());
    let cfg = Config::parse(
        r#"
        [[listen]]
        name = "statsd"
        url = "udp://127.0.0.1:0"
        format = "statsd"
        [[cluster]]
        name = "out"
        kind = "file"
        path = "/dev/null"
        [[aggregate]]
        name = "statsd"
        kind = "statsd"
        flush_interval_ms = 600000
        send_to = ["out"]
        [[route]]
        from = ["statsd"]
        match = { all = true }
        aggregate = "statsd"
    "#,
    )
    .expect("config");
    let table = DestinationTable::from_config(&cfg);
    let meshes = mesh::links(shards, 64 << 10, 64 << 20);
    let mut cores: Vec<Core> = meshes
        .into_iter()
        .enumerate()
        .map(|(me, m)| {
            let router = Router::new(&cfg, &table, &[0]);
            let outputs = Outputs::new(&table, &cfg.output, 0);
            let counters = ShardCounters::new(1, router.rule_count(), 1, 1);
            let mut aggs = AggStage::new(me, shards);
            let a = aggs.build(1, &cfg.aggregates[0], 0).expect("aggregator");
            aggs.aggs.push(a);
            let mut c = Core::new(
                router,
                outputs,
                aggs,
                StoreStage::new(me, shards),
                m,
                counters,
            );
            c.set_input(
                0,
                Input {
                    decoder: Decoder::Statsd,
                    line_bytes_max: 16 << 10,
                },
            );
            c
        })
        .collect();

    // Datagrams of 20 lines: blast's statsd mix (5 counters, 3 timers, 1 gauge, 1 set in
    // 10), names in a shuffled order.
    let mut rng = SplitMix64(42);
    let mut order: Vec<u64> = (0..keys as u64).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    let mut d = Vec::new();
    let mut lines_in_d = 0;
    for &n in order.iter().cycle().take(keys.max(200_000)) {
        use std::io::Write;
        let r = rng.next_u64();
        let name = |kind: &str| format!("blast.grp{:02}.m{:07}.{kind}", n % 100, n);
        match n % 10 {
            0..=4 => writeln!(d, "{}:{}|c", name("count"), 1 + (r >> 8) % 10),
            5..=7 => writeln!(
                d,
                "{}:{}.{}|ms",
                name("time"),
                (r >> 8) % 1000,
                (r >> 20) % 10
            ),
            8 => writeln!(d, "{}:{}|g", name("gauge"), (r >> 8) % 10_000),
            _ => writeln!(d, "{}:u{}|s", name("set"), (r >> 8) % 1000),
        }
        .expect("write");
        lines_in_d += 1;
        if lines_in_d == 20 {
            datagrams.push(std::mem::take(&mut d));
            lines_in_d = 0;
        }
    }
    let drain = |cores: &mut Vec<Core>| {
        for c in cores.iter_mut() {
            c.mesh.send_all();
            for from in 0..shards {
                while let Some(b) = c.mesh.receive(from) {
                    let Core { aggs, stores, .. } = c;
                    aggs.apply_batch(from, &b, &mut |p| stores.apply_record(p));
                }
                c.stores.finish_batch();
            }
        }
    };
    // Warm-up: every key once.
    for (i, d) in datagrams.iter().enumerate() {
        let mut skipping = false;
        cores[i % shards].process(0, d, &mut skipping, End::Datagram);
        if i % 32 == 31 {
            drain(&mut cores);
        }
    }
    drain(&mut cores);
    let start = cpu_seconds();
    let mut lines = 0u64;
    let mut passes = 0;
    while match fixed_passes {
        Some(n) => passes < n,
        None => cpu_seconds() - start < cpu_target,
    } {
        for (i, d) in datagrams.iter().enumerate() {
            let mut skipping = false;
            cores[i % shards].process(0, d, &mut skipping, End::Datagram);
            if i % 32 == 31 {
                drain(&mut cores);
            }
        }
        drain(&mut cores);
        lines += datagrams.len() as u64 * 20;
        passes += 1;
    }
    let cpu = cpu_seconds() - start;
    let applied: u64 = cores
        .iter()
        .map(|c| c.aggs.aggs[0].counters.samples_applied)
        .sum();
    println!(
        "{{\"keys\":{keys},\"shards\":{shards},\"passes\":{passes},\"lines\":{lines},\"cpu_s\":{cpu:.3},\"lines_per_cpu_s\":{:.0},\"samples_applied\":{applied}}}",
        lines as f64 / cpu
    );
}

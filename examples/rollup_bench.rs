//! Throughput and memory of the aggregation engines: `CarbonAggregator` (one rule, one
//! output name per input name, `sum` every 60 s) and `Rollup` (10s:7d, 1m:30d, 10m:5y).
//! Prints one JSON line per engine and key count.
//!
//! Usage: rollup_bench [KEYS...]   (default: 100000 1000000)
//!
//! Each case feeds every key one sample per simulated 10 s for 30 simulated minutes,
//! calling `flush` every simulated second before that second's samples (so the shard's
//! idle flush calls are in the cost too). Reported:
//! - `samples_per_cpu_s`: samples ingested and flushed per CPU-second (getrusage, whole
//!   run: ingest and every flush);
//! - `flush_all_ms`: the single flush that emits every key (carbon: the computes due
//!   60 s after the first round; rollup: a 10-minute boundary, all three levels), in
//!   wall and CPU milliseconds;
//! - `bytes_per_key`: heap held per key by the engine's own accounting
//!   (`heap_bytes() / keys`) and RSS growth per key (`rss_bytes_per_key`), in steady
//!   state (carbon: the last second, each name holding its current bucket and the
//!   `max_intervals` = 5 before it; rollup: before the first 10-minute flush, all
//!   five buckets open). Carbon also reports its first minute (one bucket a name).
//!   Names are `svc.appNN.hostNNNNNNN.requests` (31 bytes).

use std::time::Instant;

use cadent::aggregate::carbon::{CarbonAggregator, CarbonConfig, Rules};
use cadent::aggregate::rollup::{parse_resolutions, Rollup, RollupBatch, RollupConfig};

fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers, for which all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Names back to back, with their ends.
fn names(keys: usize) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::with_capacity(keys * 32);
    let mut ends = Vec::with_capacity(keys);
    for i in 0..keys {
        use std::io::Write;
        write!(buf, "svc.app{:02}.host{:07}.requests", i % 100, i).unwrap();
        ends.push(buf.len());
    }
    (buf, ends)
}

const START: i64 = 1_700_000_400; // a 10-minute boundary
const MINUTES: i64 = 30;

fn carbon_case(keys: usize) {
    let (buf, ends) = names(keys);
    let rules = Rules::parse("agg.<a>.<h>.sum (60) = sum svc.<a>.<h>.requests\n").unwrap();
    let cfg = CarbonConfig {
        keys_max: keys,
        ..CarbonConfig::default()
    };
    let mut agg = CarbonAggregator::new(cfg, rules);
    let mut out = Vec::with_capacity(64 << 20);
    let rss0 = rss_bytes();
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let (mut samples, mut lines, mut peak_heap, mut peak_rss) = (0u64, 0usize, 0usize, 0usize);
    let mut first_heap = 0;
    let mut flush_all = (0.0, 0.0);
    for second in 0..MINUTES * 60 {
        let now = START + second;
        out.clear();
        if second == 59 {
            first_heap = agg.heap_bytes();
        }
        if second == MINUTES * 60 - 1 {
            // Steady state: carbon keeps max_intervals (5) old buckets per name.
            peak_heap = agg.heap_bytes();
            peak_rss = rss_bytes();
        }
        let (c, w) = (cpu_seconds(), Instant::now());
        let n = agg.flush(now, &mut out);
        if second == 60 {
            flush_all = (w.elapsed().as_secs_f64() * 1e3, (cpu_seconds() - c) * 1e3);
            assert_eq!(n, keys, "every key computes 60 s after the first round");
        }
        lines += n;
        if second % 10 == 0 {
            let mut from = 0;
            for (i, &end) in ends.iter().enumerate() {
                agg.ingest(&buf[from..end], (i % 17) as f64, now, now);
                from = end;
            }
            samples += keys as u64;
        }
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    println!(
        "{{\"engine\":\"carbon\",\"keys\":{keys},\"samples\":{samples},\"lines_out\":{lines},\
         \"cpu_s\":{cpu:.3},\"wall_s\":{wall:.3},\"samples_per_cpu_s\":{:.0},\
         \"flush_all_ms\":{:.1},\"flush_all_cpu_ms\":{:.1},\"bytes_per_key_first_minute\":{:.0},\
         \"bytes_per_key\":{:.0},\"rss_bytes_per_key\":{:.0},\"counters\":\"{:?}\"}}",
        samples as f64 / cpu,
        flush_all.0,
        flush_all.1,
        first_heap as f64 / keys as f64,
        peak_heap as f64 / keys as f64,
        peak_rss.saturating_sub(rss0) as f64 / keys as f64,
        agg.counters()
    );
}

fn rollup_case(keys: usize) {
    let (buf, ends) = names(keys);
    let mut r = Rollup::new(RollupConfig {
        resolutions: parse_resolutions(&["10s:7d", "1m:30d", "10m:5y"]).unwrap(),
        keys_max: keys,
    });
    let mut batch = RollupBatch::default();
    let rss0 = rss_bytes();
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let (mut samples, mut points, mut peak_heap, mut peak_rss) = (0u64, 0usize, 0usize, 0usize);
    let mut flush_all = (0.0, 0.0);
    for second in 0..MINUTES * 60 {
        let now = START + second;
        batch.clear();
        if second == 599 {
            peak_heap = r.heap_bytes();
            peak_rss = rss_bytes();
        }
        let (c, w) = (cpu_seconds(), Instant::now());
        let n = r.flush(now, &mut batch);
        if second == 600 {
            flush_all = (w.elapsed().as_secs_f64() * 1e3, (cpu_seconds() - c) * 1e3);
            assert_eq!(
                n,
                3 * keys,
                "10 s, 1 m and 10 m buckets close at a 10 m boundary"
            );
        }
        points += n;
        if second % 10 == 0 {
            let mut from = 0;
            for (i, &end) in ends.iter().enumerate() {
                r.ingest(&buf[from..end], (i % 17) as f64, now, now);
                from = end;
            }
            samples += keys as u64;
        }
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    println!(
        "{{\"engine\":\"rollup\",\"keys\":{keys},\"samples\":{samples},\"points_out\":{points},\
         \"cpu_s\":{cpu:.3},\"wall_s\":{wall:.3},\"samples_per_cpu_s\":{:.0},\
         \"flush_all_ms\":{:.1},\"flush_all_cpu_ms\":{:.1},\"bytes_per_key\":{:.0},\
         \"rss_bytes_per_key\":{:.0},\"counters\":\"{:?}\"}}",
        samples as f64 / cpu,
        flush_all.0,
        flush_all.1,
        peak_heap as f64 / keys as f64,
        peak_rss.saturating_sub(rss0) as f64 / keys as f64,
        r.counters()
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("KEYS must be numbers"))
        .collect();
    let cases = if args.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        args
    };
    for &keys in &cases {
        carbon_case(keys);
        rollup_case(keys);
    }
}

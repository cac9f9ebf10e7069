//! The statsd engine's cost, for bench/aggregate.py: samples ingested per CPU-second per
//! type (pre-parsed `ingest` and raw `ingest_datagram`), flush CPU time, and bytes per
//! key, at a given number of keys. Prints one JSON line per type.
//!
//! Usage: aggregate_bench KEYS [CPU_SECONDS_PER_CASE]   (defaults 100000 and 1.0)
//!
//! For each type (counter, timer, gauge, set) one engine is filled with KEYS keys
//! (`bench.<type>.k<i>`, one sample each), and live heap bytes are measured before and
//! after with a counting allocator (requested bytes; malloc's own per-allocation
//! overhead, 8-16 bytes per allocation on glibc, is not included). Then timed passes
//! send one sample to every key, in a shuffled order so lookups miss the cache as real
//! traffic does, until the CPU time (getrusage) reaches the target: first through
//! `ingest` (pre-parsed samples), then through `ingest_datagram` (the same samples as
//! text, 20 lines per datagram, parsed with Etsy's grammar). Finally one `flush` of all
//! keys is timed (each timer then holds one value per pass; each set one member).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use cadent::aggregate::statsd::{StatsdConfig, StatsdEngine};
use cadent::protocol::statsd::{Sample, Value};
use cadent::tools::SplitMix64;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout the caller gave us.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: p was allocated by System with layout l.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: p was allocated by System with layout l.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Timer,
    Gauge,
    Set,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Timer => "timer",
            Kind::Gauge => "gauge",
            Kind::Set => "set",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Kind::Counter => "c",
            Kind::Timer => "ms",
            Kind::Gauge => "g",
            Kind::Set => "s",
        }
    }
    fn value(self, i: usize) -> Value<'static> {
        match self {
            Kind::Counter => Value::Counter(1.0),
            Kind::Timer => Value::Timer((i % 1000) as f64 * 0.5),
            Kind::Gauge => Value::Gauge {
                value: (i % 100) as f64,
                delta: false,
            },
            Kind::Set => Value::Set(b"member"),
        }
    }
}

fn shuffled(n: usize) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut rng = SplitMix64(0x2545_f491_4f6c_dd1d);
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

fn run(kind: Kind, keys: usize, cpu_target: f64) -> String {
    let names: Vec<Vec<u8>> = (0..keys)
        .map(|i| format!("bench.{}.k{i}", kind.name()).into_bytes())
        .collect();
    let order = shuffled(keys);
    let datagrams: Vec<Vec<u8>> = order
        .chunks(20)
        .map(|c| {
            let mut d = Vec::new();
            for &i in c {
                let i = i as usize;
                d.extend_from_slice(&names[i]);
                match kind.value(i) {
                    Value::Set(m) => {
                        d.push(b':');
                        d.extend_from_slice(m);
                    }
                    Value::Counter(v) | Value::Timer(v) | Value::Gauge { value: v, .. } => {
                        d.extend_from_slice(format!(":{v}").as_bytes());
                    }
                }
                d.extend_from_slice(format!("|{}\n", kind.suffix()).as_bytes());
            }
            d
        })
        .collect();
    let cfg = StatsdConfig {
        keys_max: keys + 16,
        flush_interval_ms: 10_000,
        ..StatsdConfig::default()
    };
    let before = LIVE.load(Ordering::Relaxed);
    let mut e = StatsdEngine::new(cfg, 0).unwrap();
    for (i, n) in names.iter().enumerate() {
        e.ingest(
            n,
            Sample {
                value: kind.value(i),
                sample_rate: 1.0,
            },
        );
    }
    let bytes_per_key = (LIVE.load(Ordering::Relaxed) - before) as f64 / keys as f64;

    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    let mut samples = 0u64;
    let c0 = cpu_seconds();
    let w0 = Instant::now();
    while cpu_seconds() - c0 < cpu_target {
        for &i in &order {
            let i = i as usize;
            e.ingest(
                &names[i],
                Sample {
                    value: kind.value(i),
                    sample_rate: 1.0,
                },
            );
        }
        samples += keys as u64;
    }
    let sample_cpu = cpu_seconds() - c0;
    let sample_wall = w0.elapsed().as_secs_f64();

    let mut dg_samples = 0u64;
    let c1 = cpu_seconds();
    while cpu_seconds() - c1 < cpu_target {
        for d in &datagrams {
            e.ingest_datagram(d);
        }
        dg_samples += keys as u64;
    }
    let dg_cpu = cpu_seconds() - c1;

    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    let held = LIVE.load(Ordering::Relaxed) - before;
    let mut out = Vec::with_capacity(keys * 200);
    let c2 = cpu_seconds();
    let w2 = Instant::now();
    let summary = e.flush(10_000_000, &mut out);
    let flush_wall = w2.elapsed().as_secs_f64();
    let flush_cpu = cpu_seconds() - c2;
    let per_key_values = (samples + dg_samples) / keys as u64 + 1;
    format!(
        concat!(
            "{{\"type\":\"{}\",\"keys\":{},\"bytes_per_key\":{:.1},",
            "\"bytes_per_key_at_flush\":{:.1},\"samples_per_key_at_flush\":{},",
            "\"ingest_samples\":{},\"ingest_cpu_s\":{:.3},\"ingest_wall_s\":{:.3},",
            "\"ingest_per_cpu_s\":{:.0},",
            "\"datagram_samples\":{},\"datagram_cpu_s\":{:.3},\"datagram_per_cpu_s\":{:.0},",
            "\"flush_cpu_s\":{:.3},\"flush_wall_s\":{:.3},\"flush_lines\":{},\"flush_bytes\":{},",
            "\"ingest_and_flush_per_cpu_s\":{:.0},\"allocations_per_million_samples\":{:.1}}}"
        ),
        kind.name(),
        keys,
        bytes_per_key,
        held as f64 / keys as f64,
        per_key_values,
        samples,
        sample_cpu,
        sample_wall,
        samples as f64 / sample_cpu,
        dg_samples,
        dg_cpu,
        dg_samples as f64 / dg_cpu,
        flush_cpu,
        flush_wall,
        summary.lines,
        out.len(),
        (samples + dg_samples) as f64 / (sample_cpu + dg_cpu + flush_cpu),
        allocs as f64 / ((samples + dg_samples) as f64 / 1e6),
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: usize = args.next().map(|a| a.parse().unwrap()).unwrap_or(100_000);
    let cpu: f64 = args.next().map(|a| a.parse().unwrap()).unwrap_or(1.0);
    for kind in [Kind::Counter, Kind::Timer, Kind::Gauge, Kind::Set] {
        println!("{}", run(kind, keys, cpu));
    }
}

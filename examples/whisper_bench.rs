//! `update_many` throughput of cadent's whisper engine, for bench/whisper.py (which runs
//! python whisper through the same operations). Prints one JSON line.
//!
//! Usage: whisper_bench DIR FILES BATCH ROUNDS
//! Creates FILES files of 10s:6h,1m:7d,10m:5y (sum), then ROUNDS times writes BATCH
//! consecutive 10 s points into each file, with `now` just after the newest point.

use std::time::Instant;

use cadent::store::whisper::format::{self, AggregationMethod, CreateMode, Scratch};
use cadent::store::whisper::io::{CountingIo, FileIo};

fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, files, batch, rounds] = args.as_slice() else {
        eprintln!("usage: whisper_bench DIR FILES BATCH ROUNDS");
        std::process::exit(2);
    };
    let (files, batch, rounds): (usize, i64, usize) = (
        files.parse().unwrap(),
        batch.parse().unwrap(),
        rounds.parse().unwrap(),
    );
    let archives = [(10u64, 2160u64), (60, 10080), (600, 262800)];
    let start: i64 = 1_700_000_000;
    let paths: Vec<_> = (0..files)
        .map(|i| std::path::Path::new(dir).join(format!("m{i}.wsp")))
        .collect();
    for p in &paths {
        let _ = std::fs::remove_file(p);
        let mut io = FileIo::create_new(p).unwrap();
        format::create(
            &mut io,
            &archives,
            0.5,
            AggregationMethod::Sum,
            CreateMode::Sparse,
        )
        .unwrap();
    }
    let mut ios: Vec<(CountingIo<FileIo>, format::Header)> = paths
        .iter()
        .map(|p| {
            let mut io = CountingIo::new(FileIo::open(p).unwrap());
            let h = format::read_header(&mut io).unwrap();
            (CountingIo::new(io.inner), h)
        })
        .collect();
    let mut scratch = Scratch::new();
    let mut points = Vec::with_capacity(batch as usize);
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let mut t = start;
    for _ in 0..rounds {
        points.clear();
        for k in 0..batch {
            points.push((t + k * 10, (k % 7) as f64));
        }
        let now = t + batch * 10;
        for (io, h) in ios.iter_mut() {
            format::update_many(io, h, &points, now, &mut scratch).unwrap();
        }
        t += batch * 10;
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    let updates = (rounds * files) as f64;
    let (reads, writes) = ios
        .iter()
        .fold((0, 0), |(r, w), (io, _)| (r + io.reads, w + io.writes));
    println!(
        "{{\"impl\":\"cadent\",\"batch\":{batch},\"updates\":{updates},\"points\":{},\"cpu_s\":{cpu:.4},\"wall_s\":{wall:.4},\"reads_per_update\":{:.2},\"writes_per_update\":{:.2}}}",
        updates as i64 * batch,
        reads as f64 / updates,
        writes as f64 / updates
    );
}

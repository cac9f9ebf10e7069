//! Throughput of the disk spool on the real file system: append with a group commit every
//! 200 ms of wall time (as a shard's spool task would), recovery of what was written, and
//! replay (read + ack, committing every 200 ms); write amplification is every byte the
//! spool writes (segment headers, frames, ledger slots) over the payload bytes spooled
//! (the file system's own journal and metadata are not counted). `commit_ms_max` and
//! `append_ms_max` are the longest single calls: an append that seals a segment syncs it.
//! Prints one JSON line.
//!
//! Usage: spool_bench DIR [MIB] [BATCH_BYTES] [SEGMENT_BYTES]
//! Defaults: 1024 MiB of 64 KiB batches (`flush_bytes`) of ~60-byte graphite lines, into
//! 16 MiB segments. DIR is emptied first. Replay reads from the page cache unless the
//! caches are dropped between the phases (`echo 3 > /proc/sys/vm/drop_caches`, done here
//! when the bench runs as root; "replay_cold" says whether it was).

use std::time::{Duration, Instant};

use cadent::output::spool::{io::FsIo, Limits, Spool};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

const COMMIT_EVERY: Duration = Duration::from_millis(200);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1) else {
        eprintln!("usage: spool_bench DIR [MIB] [BATCH_BYTES] [SEGMENT_BYTES]");
        std::process::exit(2);
    };
    let arg = |i: usize, d: u64| args.get(i).map_or(d, |s| s.parse().unwrap());
    let mib = arg(2, 1024);
    let batch_bytes = arg(3, 64 << 10) as usize;
    let segment_bytes = arg(4, Limits::SEGMENT_BYTES_DEFAULT);
    let dir = std::path::Path::new(dir);
    let _ = std::fs::remove_dir_all(dir);
    let total = mib << 20;
    let limits = Limits::new(total * 2, segment_bytes);

    // One batch of lines, varied per batch by its first line.
    let mut batch = Vec::with_capacity(batch_bytes + 128);
    let mut lines = 0u32;
    let mut i = 0u64;
    while batch.len() < batch_bytes {
        batch.extend_from_slice(
            format!(
                "servers.host{:04}.cpu.total.user {} 1700000000\n",
                i % 5000,
                i % 997
            )
            .as_bytes(),
        );
        lines += 1;
        i += 1;
    }

    // Append.
    let (mut sp, _) = Spool::open(FsIo, dir, limits).unwrap();
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let mut last_commit = Instant::now();
    let mut appended = 0u64;
    let mut commit_ms_max = 0f64;
    let mut append_ms_max = 0f64;
    while appended < total {
        let t = Instant::now();
        sp.append(&batch, lines, now_ms()).unwrap();
        append_ms_max = append_ms_max.max(t.elapsed().as_secs_f64() * 1e3);
        appended += batch.len() as u64;
        if last_commit.elapsed() >= COMMIT_EVERY {
            let t = Instant::now();
            sp.commit().unwrap();
            commit_ms_max = commit_ms_max.max(t.elapsed().as_secs_f64() * 1e3);
            last_commit = Instant::now();
        }
    }
    sp.commit().unwrap();
    let append_s = t0.elapsed().as_secs_f64();
    let append_cpu = cpu_seconds() - c0;
    let c = sp.counters().clone();
    let wa_append = c.bytes_written as f64 / c.spooled_bytes as f64;
    let commits = c.commits;
    drop(sp);

    // Recovery of everything just written, then replay.
    // SAFETY: geteuid has no preconditions.
    let cold =
        unsafe { libc::geteuid() } == 0 && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    let t1 = Instant::now();
    let (mut sp, report) = Spool::open(FsIo, dir, limits).unwrap();
    let open_s = t1.elapsed().as_secs_f64();
    assert!(report.is_clean(), "{report}");
    if cold {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
    let (t2, c2) = (Instant::now(), cpu_seconds());
    let mut last_commit = Instant::now();
    let mut out = Vec::with_capacity(batch_bytes * 2);
    let mut replayed = 0u64;
    loop {
        out.clear();
        let r = sp.read(batch_bytes, &mut out).unwrap();
        if r.records == 0 {
            break;
        }
        replayed += r.bytes as u64;
        sp.ack(r.records);
        if last_commit.elapsed() >= COMMIT_EVERY {
            sp.commit().unwrap();
            last_commit = Instant::now();
        }
    }
    sp.commit().unwrap();
    let replay_s = t2.elapsed().as_secs_f64();
    let replay_cpu = cpu_seconds() - c2;
    assert_eq!(replayed, appended);
    let c2 = sp.counters().clone();
    let total_written = c.bytes_written + c2.bytes_written;
    println!(
        "{{\"mib\":{mib},\"batch_bytes\":{},\"segment_bytes\":{},\"append_mb_s\":{:.1},\"append_lines_s\":{:.0},\"append_cpu_s_per_gb\":{:.2},\"commits\":{commits},\"commit_ms_max\":{:.1},\"append_ms_max\":{:.1},\"open_s\":{:.3},\"replay_cold\":{cold},\"replay_mb_s\":{:.1},\"replay_cpu_s_per_gb\":{:.2},\"write_amplification_append\":{:.5},\"write_amplification_total\":{:.5}}}",
        batch.len(),
        limits.segment_bytes,
        appended as f64 / append_s / 1e6,
        (appended / batch.len() as u64 * u64::from(lines)) as f64 / append_s,
        append_cpu / (appended as f64 / 1e9),
        commit_ms_max,
        append_ms_max,
        open_s,
        replayed as f64 / replay_s / 1e6,
        replay_cpu / (replayed as f64 / 1e9),
        wa_append,
        total_written as f64 / c.spooled_bytes as f64,
    );
    let _ = std::fs::remove_dir_all(dir);
}

//! The disk spool end to end: a sink down under 3-way fan-out gets everything once it is
//! back, in order, while the live sinks go on; the cap keeps the newest; kill -9 loses
//! nothing committed; damage, an unwritable directory and a full disk are counted and
//! survived; sinks that reset or never read are not counted as delivered to.
//!
//! Where duplicates can arise (and are counted, per destination, as `resent_lines`): a
//! connection that dies with bytes its peer has not acknowledged sends them again on the
//! next one; the peer may have had them already (the ack was in flight, or a late copy
//! from the old connection's close). Lines acknowledged by the peer's kernel but never
//! read by its process are lost to any TCP sender: the tests stop sinks gracefully
//! (`Sink::stop_gracefully`) where they count exactly.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{free_port, http_get, temp_dir, wait_until, Cadent, Sink};

/// One sender connection, lines `PREFIX.<id> <id> 1700000000`, ids in order.
struct Sender {
    s: TcpStream,
    prefix: &'static str,
    next: u64,
}

impl Sender {
    fn connect(addr: &str, prefix: &'static str) -> Sender {
        Sender {
            s: TcpStream::connect(addr).unwrap(),
            prefix,
            next: 0,
        }
    }

    /// Sends `n` more lines in chunks of 500, pausing 2 ms between chunks (a bounded
    /// rate: at most 250k lines/s).
    fn send(&mut self, n: u64) {
        let end = self.next + n;
        while self.next < end {
            let mut chunk = String::with_capacity(500 * 32);
            for _ in 0..500.min(end - self.next) {
                chunk.push_str(&format!(
                    "{}.{} {} 1700000000\n",
                    self.prefix, self.next, self.next
                ));
                self.next += 1;
            }
            self.s.write_all(chunk.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The id of a line `PREFIX.<id> ...`, if it is one of `prefix`'s.
fn id_of(line: &str, prefix: &str) -> Option<u64> {
    let rest = line.strip_prefix(prefix)?.strip_prefix('.')?;
    rest.split(' ').next()?.parse().ok()
}

/// How many of ids `0..n` `sink` has, and the duplicates (arrivals beyond the first).
fn coverage(sink: &Sink, prefix: &str, n: u64) -> (u64, u64) {
    coverage_all(&[sink], prefix, n)
}

/// As [`coverage`], over what several incarnations of one sink received.
fn coverage_all(sinks: &[&Sink], prefix: &str, n: u64) -> (u64, u64) {
    let mut all: std::collections::HashMap<String, u32> = Default::default();
    for s in sinks {
        for (line, count) in s.lines() {
            *all.entry(line).or_insert(0) += count;
        }
    }
    let mut have = 0;
    let mut dups = 0;
    for (line, count) in all {
        if id_of(&line, prefix).is_some_and(|id| id < n) {
            have += 1;
            dups += u64::from(count - 1);
        }
    }
    (have, dups)
}

/// Every connection of `sink` carried `prefix`'s lines in increasing id order.
fn assert_ordered_per_connection(sink: &Sink, prefix: &str) {
    for (k, conn) in sink.connections().iter().enumerate() {
        let ids: Vec<u64> = conn.iter().filter_map(|l| id_of(l, prefix)).collect();
        if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
            panic!(
                "{}: connection {k} out of order: {} then {}",
                sink.addr, w[0], w[1]
            );
        }
    }
}

/// A destination's counters from `/stats`.
fn dest(c: &Cadent, addr: &str) -> serde_json::Value {
    c.stats()["destinations"][format!("tcp://{addr}")].clone()
}

fn counter(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {field} in {v}"))
}

/// Bytes of every file under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            total += du(&p);
        } else if let Ok(m) = e.metadata() {
            total += m.len();
        }
    }
    total
}

fn fan_out_config(listen: u16, sinks: &[&str]) -> String {
    format!(
        r#"
[server]
admin_listen = "ADMIN"
shards = 2
stats_interval_ms = 100
[output]
flush_interval_ms = 20
reconnect_backoff_min_ms = 20
reconnect_backoff_max_ms = 200
spool_dir = "spool"
spool_fsync_interval_ms = 50
[health]
probe_interval_ms = 300
down_after_failures = 3
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{listen}"
format = "graphite"
[[cluster]]
name = "fan"
kind = "forward"
members = ["{}", "{}", "{}"]
[[route]]
match = {{ prefix = "fan." }}
send_to = ["fan"]
"#,
        sinks[0], sinks[1], sinks[2]
    )
}

#[test]
fn a_sink_down_under_fan_out_gets_everything_back_in_order() {
    let s0 = Sink::start();
    let s1 = Sink::start();
    let mut s2_before = Sink::start();
    let a2 = s2_before.addr.clone();
    let listen = free_port();
    let c = Cadent::start(
        "spool-fan",
        &fan_out_config(listen, &[&s0.addr, &s1.addr, &a2]),
    );
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), "fan");
    tx.send(30_000);
    assert!(wait_until(Duration::from_secs(20), || coverage(
        &s2_before, "fan", 30_000
    )
    .0 == 30_000));

    // s2 goes away (gracefully: what its kernel acknowledged, it reads) and its port
    // refuses connections. The others keep receiving everything, without waiting.
    s2_before.stop_gracefully();
    tx.send(30_000);
    for s in [&s0, &s1] {
        assert!(
            wait_until(Duration::from_secs(20), || coverage(s, "fan", 60_000).0
                == 60_000),
            "a live sink fell behind while another was down: {} of 60000",
            coverage(s, "fan", 60_000).0
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || counter(
            &dest(&c, &a2),
            "spooled_lines"
        ) > 0),
        "the dead sink's lines were spooled: {}",
        dest(&c, &a2)
    );
    tx.send(20_000);
    // Long enough to be marked down (3 failed probe intervals) while data keeps coming.
    std::thread::sleep(Duration::from_millis(1500));

    // Back where it was: the spool drains in order, new lines behind it.
    let s2 = Sink::start_at(&a2);
    tx.send(20_000);
    let n = tx.next;
    let both = [&s2_before, &s2];
    for (name, s) in [("s0", &[&s0][..]), ("s1", &[&s1][..]), ("s2", &both[..])] {
        assert!(
            wait_until(Duration::from_secs(60), || coverage_all(s, "fan", n).0 == n),
            "{name}: {} of {n} lines:\n{}",
            coverage_all(s, "fan", n).0,
            c.log()
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let d = dest(&c, &a2);
            counter(&d, "spool_lines") == 0 && counter(&d, "spooling") == 0
        }),
        "{}",
        dest(&c, &a2)
    );
    let stats = c.stats();
    for (name, s) in [("s0", &[&s0][..]), ("s1", &[&s1][..]), ("s2", &both[..])] {
        let d = &stats["destinations"][format!("tcp://{}", s[0].addr)];
        let (_, dups) = coverage_all(s, "fan", n);
        // The only duplicates: lines resent after a connection died unacknowledged.
        assert!(
            dups <= counter(d, "resent_lines"),
            "{name}: {dups} duplicates, {} counted resent",
            counter(d, "resent_lines")
        );
        for f in [
            "dropped_lines_queue_full",
            "dropped_lines_spool_full",
            "dropped_lines_spool_error",
            "dropped_lines_shutdown",
        ] {
            assert_eq!(counter(d, f), 0, "{name}: {f}");
        }
        for sink in s {
            assert_ordered_per_connection(sink, "fan");
        }
    }
    let d2 = &stats["destinations"][format!("tcp://{a2}")];
    assert!(counter(d2, "replayed_lines") > 0, "{d2}");
    assert_eq!(counter(d2, "queued_lines"), n);
    for s in [&s0, &s1] {
        let d = &stats["destinations"][format!("tcp://{}", s.addr)];
        assert_eq!(
            counter(d, "spooled_lines"),
            0,
            "a live sink never spools: {d}"
        );
    }
    let servers = http_get(&c.admin, "/servers").unwrap();
    assert!(servers.contains("\"spooled_lines\""), "{servers}");
    assert_eq!(c.stop(), 0);
}

#[test]
fn past_the_cap_the_oldest_is_dropped_and_the_newest_kept() {
    // Nobody listens on the sink's port until the end.
    let sink_port = free_port();
    let addr = format!("127.0.0.1:{sink_port}");
    let listen = free_port();
    const CAP: u64 = 256 << 10;
    const SEGMENT: u64 = 16 << 10;
    let config = format!(
        r#"
[server]
admin_listen = "ADMIN"
shards = 1
stats_interval_ms = 100
[output]
flush_interval_ms = 20
flush_bytes = 4096
queue_bytes_max = 262144
reconnect_backoff_min_ms = 20
reconnect_backoff_max_ms = 100
spool_dir = "spool"
spool_fsync_interval_ms = 50
spool_segment_bytes = {SEGMENT}
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{listen}"
format = "graphite"
[[cluster]]
name = "small"
kind = "forward"
members = ["{addr}"]
spool_bytes_max = {CAP}
[[route]]
match = {{ all = true }}
send_to = ["small"]
"#
    );
    let c = Cadent::start("spool-cap", &config);
    let spool_dir = c.dir.join("spool");
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), "cap");
    // 100k lines of about 30 bytes: 3 MB through a 256 KiB spool.
    let mut peak = 0;
    for _ in 0..20 {
        tx.send(5_000);
        peak = peak.max(du(&spool_dir));
    }
    let n = tx.next;
    assert!(wait_until(Duration::from_secs(20), || {
        peak = peak.max(du(&spool_dir));
        let d = dest(&c, &addr);
        counter(&d, "spooled_lines") + counter(&d, "dropped_lines_queue_full") == n
    }));
    peak = peak.max(du(&spool_dir));
    // The files (ledger included) stay within the cap plus one segment.
    assert!(
        peak <= CAP + SEGMENT + 128,
        "spool peaked at {peak} bytes, cap {CAP}"
    );
    let d = dest(&c, &addr);
    assert!(counter(&d, "spool_bytes") <= CAP, "{d}");
    let dropped = counter(&d, "dropped_lines_spool_full");
    assert!(dropped > 0, "the cap was passed: {d}");

    let sink = Sink::start_at(&addr);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let d = dest(&c, &addr);
            counter(&d, "spool_lines") == 0 && sink.total() + dropped_all(&d) >= n
        }),
        "{} received, {} dropped of {n}: {}",
        sink.total(),
        dropped_all(&dest(&c, &addr)),
        dest(&c, &addr)
    );
    let d = dest(&c, &addr);
    let (have, dups) = coverage(&sink, "cap", n);
    assert_eq!(dups, 0);
    assert_eq!(have + dropped_all(&d), n, "received + dropped = sent: {d}");
    // What is kept is the newest: the lost ids are a prefix.
    let lines = sink.lines();
    let first = (0..n)
        .find(|id| lines.contains_key(&format!("cap.{id} {id} 1700000000")))
        .unwrap();
    assert_eq!(first, n - have, "the received ids are the newest {have}");
    assert_eq!(c.stop(), 0);
}

fn dropped_all(d: &serde_json::Value) -> u64 {
    counter(d, "dropped_lines_spool_full") + counter(d, "dropped_lines_queue_full")
}

/// `config` listening on a fresh port instead of `listen` (a restart: the old port may
/// have been taken by some outgoing connection meanwhile; only the spool must stay).
fn relisten(config: &str, listen: u16) -> String {
    config.replace(
        &format!("127.0.0.1:{listen}\""),
        &format!("127.0.0.1:{}\"", free_port()),
    )
}

fn one_sink_config(listen: u16, addr: &str, extra_output: &str) -> String {
    format!(
        r#"
[server]
admin_listen = "ADMIN"
shards = 1
stats_interval_ms = 100
[output]
flush_interval_ms = 20
flush_bytes = 4096
reconnect_backoff_min_ms = 20
reconnect_backoff_max_ms = 100
spool_dir = "spool"
spool_fsync_interval_ms = 100
{extra_output}
[health]
probe_interval_ms = 100
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{listen}"
format = "graphite"
[[cluster]]
name = "one"
kind = "carbon_ch"
members = ["{addr}"]
[[route]]
match = {{ all = true }}
send_to = ["one"]
"#
    )
}

#[test]
fn kill_9_while_spooling_loses_nothing_committed() {
    let sink_port = free_port();
    let addr = format!("127.0.0.1:{sink_port}");
    let listen = free_port();
    let config = one_sink_config(listen, &addr, "");
    let c = Cadent::start("spool-kill9", &config);
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), "k9");
    tx.send(20_000);
    let n = tx.next;
    assert!(wait_until(Duration::from_secs(20), || counter(
        &dest(&c, &addr),
        "spooled_lines"
    ) == n));
    // Longer than the fsync interval: all of it is committed.
    std::thread::sleep(Duration::from_millis(400));
    drop(tx);
    let dir = c.kill9();

    let c = Cadent::start_in(dir, &relisten(&config, listen));
    let sink = Sink::start_at(&addr);
    assert!(
        wait_until(Duration::from_secs(30), || coverage(&sink, "k9", n).0 == n),
        "{} of {n} after kill -9:\n{}",
        coverage(&sink, "k9", n).0,
        c.log()
    );
    // Nothing had been delivered before the crash, so nothing comes twice.
    assert_eq!(coverage(&sink, "k9", n).1, 0);
    assert_ordered_per_connection(&sink, "k9");
    assert!(c.log().contains("spool recovered"), "{}", c.log());
    assert_eq!(c.stop(), 0);
}

#[test]
fn sigterm_leaves_the_queue_in_the_spool_for_the_next_start() {
    let sink_port = free_port();
    let addr = format!("127.0.0.1:{sink_port}");
    let listen = free_port();
    // A long fsync interval: only the shutdown's last commit makes it durable.
    let config = one_sink_config(listen, &addr, "").replace(
        "spool_fsync_interval_ms = 100",
        "spool_fsync_interval_ms = 60000",
    );
    let c = Cadent::start("spool-term", &config);
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), "term");
    tx.send(10_000);
    let n = tx.next;
    drop(tx);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &dest(&c, &addr),
        "queued_lines"
    ) == n));
    let dir = c.dir.clone();
    let started = Instant::now();
    assert_eq!(c.stop(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a dead sink with a spool does not hold shutdown for the deadline"
    );
    let c = Cadent::start_in(dir, &relisten(&config, listen));
    let sink = Sink::start_at(&addr);
    assert!(
        wait_until(Duration::from_secs(30), || coverage(&sink, "term", n).0
            == n),
        "{} of {n}:\n{}",
        coverage(&sink, "term", n).0,
        c.log()
    );
    assert!(!c.log().contains("dropped_lines_shutdown=1"));
    assert_eq!(c.stop(), 0);
}

/// The records of a segment file: (offset, frame length, ids of `prefix` lines in it).
fn records(seg: &[u8], prefix: &str) -> Vec<(usize, usize, Vec<u64>)> {
    let mut out = Vec::new();
    let mut off = 32;
    while off + 24 <= seg.len() {
        let len = u32::from_le_bytes(seg[off..off + 4].try_into().unwrap()) as usize;
        let end = off + 8 + len;
        if len < 16 || end > seg.len() {
            break;
        }
        let payload = String::from_utf8_lossy(&seg[off + 24..end]).into_owned();
        let ids = payload.lines().filter_map(|l| id_of(l, prefix)).collect();
        out.push((off, end - off, ids));
        off = end;
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn damage_is_skipped_and_counted_and_the_rest_delivered() {
    let sink_port = free_port();
    let addr = format!("127.0.0.1:{sink_port}");
    let listen = free_port();
    let config = one_sink_config(listen, &addr, "spool_segment_bytes = 16384");
    let c = Cadent::start("spool-damage", &config);
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), "dmg");
    tx.send(30_000);
    let n = tx.next;
    drop(tx);
    assert!(wait_until(Duration::from_secs(20), || counter(
        &dest(&c, &addr),
        "spooled_lines"
    ) == n));
    let dir = c.dir.clone();
    assert_eq!(c.stop(), 0);

    let spool = dir
        .join("spool")
        .join(cadent::output::spool::escape_name(&format!("tcp://{addr}")))
        .join("shard-0");
    let segs = segments(&spool);
    assert!(segs.len() >= 12, "{} segments", segs.len());
    let mut lost: Vec<u64> = Vec::new();
    // A flipped byte in a record's payload: that record is skipped.
    let mut bytes = std::fs::read(&segs[3]).unwrap();
    let recs = records(&bytes, "dmg");
    let (off, _, ids) = &recs[2];
    bytes[off + 30] ^= 0x55;
    lost.extend(ids);
    std::fs::write(&segs[3], &bytes).unwrap();
    // A segment gone from the middle.
    let gone = std::fs::read(&segs[7]).unwrap();
    for (_, _, ids) in records(&gone, "dmg") {
        lost.extend(ids);
    }
    std::fs::remove_file(&segs[7]).unwrap();
    // A torn tail: the last record of the last segment cut short.
    let last = segs.last().unwrap();
    let bytes = std::fs::read(last).unwrap();
    let recs = records(&bytes, "dmg");
    let (off, len, ids) = recs.last().unwrap();
    assert_eq!(off + len, bytes.len());
    std::fs::write(last, &bytes[..off + len - 10]).unwrap();
    lost.extend(ids);

    let c = Cadent::start_in(dir, &relisten(&config, listen));
    let sink = Sink::start_at(&addr);
    let want = n - lost.len() as u64;
    assert!(
        wait_until(Duration::from_secs(30), || coverage(&sink, "dmg", n).0
            == want),
        "{} of {want}:\n{}",
        coverage(&sink, "dmg", n).0,
        c.log()
    );
    let lines = sink.lines();
    for id in &lost {
        assert!(!lines.contains_key(&format!("dmg.{id} {id} 1700000000")));
    }
    // (The counters are published every stats_interval_ms: the replay may be quicker.)
    assert!(
        wait_until(Duration::from_secs(5), || counter(
            &dest(&c, &addr),
            "spool_records_corrupt"
        ) >= 1),
        "{}",
        dest(&c, &addr)
    );
    assert!(c.log().contains("missing segments"), "{}", c.log());
    assert_eq!(c.stop(), 0);
}

/// Waits (bounded) until the destination's spool has failed, and checks `/ops/status` says
/// the process is degraded, naming it.
fn assert_spool_failed(c: &Cadent, addr: &str, within: Duration) {
    assert!(
        wait_until(within, || counter(&dest(c, addr), "spool_failed") == 1),
        "{}",
        dest(c, addr)
    );
    let status: serde_json::Value =
        serde_json::from_str(&http_get(&c.admin, "/ops/status").unwrap()).unwrap();
    assert_eq!(status["status"], "degraded", "{status}");
    assert_eq!(
        status["spool_failed"][0],
        format!("tcp://{addr}"),
        "{status}"
    );
}

#[test]
fn an_unwritable_spool_directory_falls_back_to_memory() {
    let sink_port = free_port();
    let addr = format!("127.0.0.1:{sink_port}");
    let listen = free_port();
    let base = temp_dir("spool-unwritable");
    // The spool directory would be below a regular file: it can never be created.
    std::fs::write(base.join("not-a-dir"), b"x").unwrap();
    let config = one_sink_config(listen, &addr, "")
        .replace("spool_dir = \"spool\"", "spool_dir = \"not-a-dir/spool\"");
    let c = Cadent::start_in(base, &config);
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), "ro");
    tx.send(2_000);
    let n = tx.next;
    assert_spool_failed(&c, &addr, Duration::from_secs(10));
    // The process is up, and what memory held is delivered once the sink is back.
    let sink = Sink::start_at(&addr);
    assert!(wait_until(Duration::from_secs(20), || coverage(
        &sink, "ro", n
    )
    .0 == n));
    assert!(counter(&dest(&c, &addr), "spool_io_errors") >= 1);
    assert_eq!(c.stop(), 0);
}

#[test]
fn a_full_disk_is_counted_and_survived() {
    let base = temp_dir("spool-enospc");
    let mnt = base.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "mounting a tmpfs needs root, as in CI: this test does not skip"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let sink_port = free_port();
    let addr = format!("127.0.0.1:{sink_port}");
    let listen = free_port();
    // A cap far above what the disk holds: the disk fills first.
    let config = one_sink_config(listen, &addr, "spool_segment_bytes = 65536")
        .replace("spool_dir = \"spool\"", "spool_dir = \"small/spool\"");
    let c = Cadent::start_in(base, &config);
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), "full");
    tx.send(40_000);
    let n = tx.next;
    assert_spool_failed(&c, &addr, Duration::from_secs(20));
    let sink = Sink::start_at(&addr);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let d = dest(&c, &addr);
            counter(&d, "spool_lines") == 0
                && counter(&d, "queue_bytes") == 0
                && sink.total() + lost(&d) == n
        }),
        "{} received, {} counted lost of {n}: {}",
        sink.total(),
        lost(&dest(&c, &addr)),
        dest(&c, &addr)
    );
    assert_eq!(coverage(&sink, "full", n).1, 0);
    assert_ordered_per_connection(&sink, "full");
    assert_eq!(c.stop(), 0);
}

fn lost(d: &serde_json::Value) -> u64 {
    counter(d, "dropped_lines_spool_full")
        + counter(d, "dropped_lines_queue_full")
        + counter(d, "dropped_lines_spool_error")
}

/// A listener that accepts and holds every connection without reading (a small receive
/// buffer, so its kernel soon stops acknowledging), or resets each one at once.
struct HostileSink {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileSink {
    fn start(reset: bool) -> HostileSink {
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        l.set_recv_buffer_size(4096).unwrap();
        l.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        l.listen(16).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap().to_string();
        let l: std::net::TcpListener = l.into();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((s, _)) = l.accept() {
                    if reset {
                        socket2::SockRef::from(&s)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap();
                        drop(s);
                    } else {
                        held.push(s);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        HostileSink {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HostileSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn any_of_config(listen: u16, hostile: &str, good: &str) -> String {
    format!(
        r#"
[server]
admin_listen = "ADMIN"
shards = 1
stats_interval_ms = 100
[output]
flush_interval_ms = 20
write_timeout_ms = 500
reconnect_backoff_min_ms = 20
reconnect_backoff_max_ms = 100
spool_dir = "spool"
[health]
probe_interval_ms = 100
down_after_failures = 3
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{listen}"
format = "graphite"
[[cluster]]
name = "any"
kind = "any_of"
members = ["{hostile}", "{good}"]
[[route]]
match = {{ all = true }}
send_to = ["any"]
"#
    )
}

/// Every line reached the good sink: those the hostile one's kernel acknowledged (counted
/// sent to it) and its process never read too, moved with its queue once it was down.
fn check_routed_around(kind: &'static str, reset: bool) {
    let hostile = HostileSink::start(reset);
    let good = Sink::start();
    let listen = free_port();
    let c = Cadent::start(kind, &any_of_config(listen, &hostile.addr, &good.addr));
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), kind);
    for _ in 0..10 {
        tx.send(2_000);
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = tx.next;
    let ok = wait_until(Duration::from_secs(30), || coverage(&good, kind, n).0 == n);
    let h = dest(&c, &hostile.addr);
    assert!(
        ok,
        "{kind}: {} at the good sink of {n} ({} counted sent to the hostile one): {h}\n{}",
        coverage(&good, kind, n).0,
        counter(&h, "sent_lines"),
        c.log()
    );
    assert!(counter(&h, "write_errors") > 0, "{h}");
    // Its kernel can acknowledge at most a receive buffer per connection.
    assert!(
        counter(&h, "sent_bytes") <= counter(&h, "connects").max(1) * (256 << 10),
        "{h}"
    );
    let servers = http_get(&c.admin, "/servers").unwrap();
    let v: serde_json::Value = serde_json::from_str(&servers).unwrap();
    let changes = v["clusters"][0]["members"][0]["state_changes"]
        .as_u64()
        .unwrap();
    assert!(
        changes > 0,
        "{kind}: the hostile member was marked down: {servers}"
    );
    assert_eq!(c.stop(), 0);
}

#[test]
fn a_sink_that_resets_every_connection_is_routed_around() {
    check_routed_around("reset", true);
}

#[test]
fn a_sink_that_never_reads_is_routed_around() {
    check_routed_around("zerowin", false);
}

#[test]
fn what_a_sink_never_acknowledged_is_delivered_when_a_working_one_is_back() {
    let stuck = HostileSink::start(false);
    let addr = stuck.addr.clone();
    let listen = free_port();
    let config = one_sink_config(listen, &addr, "write_timeout_ms = 500");
    let c = Cadent::start("spool-unacked", &config);
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), "ua");
    tx.send(20_000);
    let n = tx.next;
    assert!(wait_until(Duration::from_secs(10), || counter(
        &dest(&c, &addr),
        "queued_lines"
    ) == n));
    std::thread::sleep(Duration::from_millis(1500));
    let before = counter(&dest(&c, &addr), "sent_lines");
    assert!(
        before < n / 2,
        "lines the stuck sink never acknowledged are not sent: {before}"
    );
    // The stuck sink goes, resetting its connections with what its kernel acknowledged
    // unread; a working one takes its port. Its advertised window said it had not read
    // those lines, so they are written again: all of them arrive.
    let acked_by_stuck = counter(&dest(&c, &addr), "sent_lines");
    assert!(acked_by_stuck > 0, "{}", dest(&c, &addr));
    drop(stuck);
    std::thread::sleep(Duration::from_millis(300));
    let sink = Sink::start_at(&addr);
    let ok = wait_until(Duration::from_secs(30), || coverage(&sink, "ua", n).0 == n);
    let d = dest(&c, &addr);
    assert!(
        ok,
        "{} delivered of {n} ({acked_by_stuck} acknowledged by the stuck sink): {d}\n{}",
        coverage(&sink, "ua", n).0,
        c.log()
    );
    assert!(counter(&d, "resent_lines") > 0, "{d}");
    // Each line counts as sent once, however often it was written.
    assert!(wait_until(Duration::from_secs(10), || counter(
        &dest(&c, &addr),
        "sent_lines"
    ) == n));
    let (_, dups) = coverage(&sink, "ua", n);
    assert!(dups <= counter(&dest(&c, &addr), "resent_lines"));
    assert_eq!(c.stop(), 0);
}

#[test]
fn a_sink_down_before_any_traffic_gets_what_comes_after_it_is_back() {
    // Marked down before its writers had anything to send: the queues spool from then on,
    // and each shard's writer must connect once there is something to deliver (it waited
    // for a memory batch that never came, and what followed stayed in the spool).
    let addr = format!("127.0.0.1:{}", free_port());
    let listen = free_port();
    // The health probes and reconnect backoffs at their defaults (the writers' first
    // connects fail before the member is marked down).
    let config = one_sink_config(listen, &addr, "")
        .replace("shards = 1", "shards = 2")
        .replace("[health]\nprobe_interval_ms = 100\n", "")
        .replace(
            "reconnect_backoff_min_ms = 20\nreconnect_backoff_max_ms = 100\n",
            "",
        );
    assert!(!config.contains("probe_interval_ms") && !config.contains("backoff"));
    let c = Cadent::start("spool-down-first", &config);
    let state = || -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&http_get(&c.admin, "/servers")?).ok()?;
        v["clusters"][0]["members"][0]["state"]
            .as_str()
            .map(str::to_string)
    };
    assert!(
        wait_until(Duration::from_secs(15), || state().as_deref()
            == Some("down")),
        "marked down: {:?}",
        state()
    );
    let sink = Sink::start_at(&addr);
    // Marked up again by the health probes, and then some, before anything is sent.
    assert!(wait_until(Duration::from_secs(15), || state().as_deref() == Some("up")));
    std::thread::sleep(Duration::from_millis(500));
    let mut txs: Vec<Sender> = ["d0", "d1", "d2", "d3"]
        .iter()
        .map(|p| Sender::connect(&format!("127.0.0.1:{listen}"), p))
        .collect();
    for tx in &mut txs {
        tx.send(500);
    }
    for p in ["d0", "d1", "d2", "d3"] {
        assert!(
            wait_until(Duration::from_secs(20), || coverage(&sink, p, 500).0 == 500),
            "{p}: {} of 500 after the sink came back: {}\n{}",
            coverage(&sink, p, 500).0,
            dest(&c, &addr),
            c.log()
        );
        assert_ordered_per_connection(&sink, p);
    }
    assert!(wait_until(Duration::from_secs(10), || counter(
        &dest(&c, &addr),
        "spooling"
    ) == 0));
    drop(txs);
    assert_eq!(c.stop(), 0);
}

#[test]
fn a_member_removed_while_spooling_keeps_its_spool_until_listed_again_and_a_left_spool_is_reported()
{
    let live = Sink::start();
    let gone_port = free_port();
    let gone = format!("127.0.0.1:{gone_port}");
    let listen = free_port();
    let config = fan_out_config(
        listen,
        &[&live.addr, &gone, &format!("127.0.0.1:{}", free_port())],
    )
    .replace("shards = 2", "shards = 1");
    let c = Cadent::start("spool-retire", &config);
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), "fan");
    tx.send(5_000);
    let n = tx.next;
    assert!(wait_until(Duration::from_secs(20), || counter(
        &dest(&c, &gone),
        "spooled_lines"
    ) == n));
    // Removed at run time while unreachable: its writer gives up, its spool stays on
    // disk, and the destination is reclaimed (nothing of it stays in memory).
    let (st, body) = crate::support::http_request(
        &c.admin,
        "DELETE",
        &format!("/cluster/fan/members/{gone}"),
        "",
    );
    assert_eq!(st, 200, "{body}");
    tx.send(5_000);
    let m = tx.next;
    assert!(wait_until(Duration::from_secs(20), || coverage(
        &live, "fan", m
    )
    .0 == m));
    let gone_name = format!("tcp://{gone}");
    assert!(
        wait_until(Duration::from_secs(20), || c.stats()["destinations"]
            .get(&gone_name)
            .is_none()),
        "never reclaimed: {}",
        c.stats()["destinations"]
    );
    let reclaimed = &c.stats()["destinations"]["reclaimed"];
    assert_eq!(counter(reclaimed, "spool_lines"), n, "{reclaimed}");
    // Back, and listed again: what it spooled before its removal is delivered, and
    // nothing of what was sent while it was out of the cluster.
    let sink = Sink::start_at(&gone);
    let (st, body) = crate::support::http_request(
        &c.admin,
        "POST",
        "/cluster/fan/members",
        &format!("server={gone}"),
    );
    assert_eq!(st, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(20), || coverage(&sink, "fan", m).0 == n),
        "{} of {n}:\n{}",
        coverage(&sink, "fan", m).0,
        c.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        coverage(&sink, "fan", m).0,
        n,
        "nothing sent while it was removed"
    );
    drop(sink);
    drop(tx);
    let dir = c.dir.clone();
    assert_eq!(c.stop(), 0);

    // Spools the config no longer owns (the removed member's, and the never-reached third
    // member's, with its lines still in it) are reported at startup, and left alone.
    let third = fan_third(&config);
    let only_live = config.replace(
        &format!("\"{}\", \"{gone}\", \"{third}\"", live.addr),
        &format!("\"{}\"", live.addr),
    );
    assert_ne!(only_live, config);
    let left = dir
        .join("spool")
        .join(cadent::output::spool::escape_name(&format!(
            "tcp://{third}"
        )))
        .join("shard-0");
    assert!(left.join("ledger").exists(), "{}", left.display());
    let c = Cadent::start_in(dir, &relisten(&only_live, listen));
    let status = http_get(&c.admin, "/ops/status").unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let orphans: Vec<String> = v["orphan_spools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_string())
        .collect();
    assert_eq!(orphans.len(), 2, "{status}");
    assert!(orphans.iter().any(|o| o.ends_with(&format!(
        "{}/shard-0",
        cadent::output::spool::escape_name(&format!("tcp://{third}"))
    ))));
    assert!(left.join("ledger").exists(), "not deleted");
    assert!(c.log().contains("spool left by a config"), "{}", c.log());
    assert_eq!(c.stop(), 0);
}

/// The third member of a `fan_out_config`.
fn fan_third(config: &str) -> String {
    let members = config.split("members = [").nth(1).unwrap();
    members.split('"').nth(5).unwrap().to_string()
}

#[test]
fn a_half_closed_sink_that_reads_on_gets_everything_on_one_connection() {
    // The sink ends its sending side at once (a FIN) and reads on, as `socat -u` does: a
    // half-close, not a dead peer. It was taken for dead at every batch: tens of
    // reconnects a second and nearly everything spooled.
    let sink = Sink::start_half_closing();
    let listen = free_port();
    let config = one_sink_config(listen, &sink.addr, "");
    let c = Cadent::start("spool-halfclose", &config);
    let mut tx = Sender::connect(&format!("127.0.0.1:{listen}"), "hc");
    for _ in 0..5 {
        tx.send(4_000);
        std::thread::sleep(Duration::from_millis(200));
    }
    let n = tx.next;
    assert!(
        wait_until(Duration::from_secs(20), || coverage(&sink, "hc", n).0 == n),
        "{} of {n}: {}\n{}",
        coverage(&sink, "hc", n).0,
        dest(&c, &sink.addr),
        c.log()
    );
    let d = dest(&c, &sink.addr);
    assert_eq!(counter(&d, "connects"), 1, "{d}");
    assert_eq!(counter(&d, "write_errors"), 0, "{d}");
    assert_eq!(counter(&d, "spooled_lines"), 0, "{d}");
    assert_eq!(coverage(&sink, "hc", n).1, 0, "no duplicates");
    // The health probes connect too, and send nothing.
    let carrying = sink.connections().iter().filter(|c| !c.is_empty()).count();
    assert_eq!(carrying, 1);
    assert_eq!(c.stop(), 0);
}

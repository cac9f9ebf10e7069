//! `cadent echo`: a counting sink for line protocols, on TCP and UDP.
//!
//! Per address it counts lines, bytes, accepted connections and datagrams. Counting is a
//! SIMD newline count over large reads (256 KiB on TCP), so the sink stays cheap next to
//! the relay under test. A line is counted when its `\n` arrives, so a line split across
//! reads counts once; bytes after the last `\n` of a TCP connection at EOF, or of a UDP
//! datagram, count as one more line. With `--format collectd` a UDP datagram is a
//! collectd packet and its value lists are counted as lines (signed packets counted
//! unverified, as a collectd receiver without an auth file takes them).
//!
//! Output contract (stable, parsed by `bench/relay.py`):
//! - every `--interval-ms`, one status line on stderr (unless `--quiet`);
//! - `--stats-file PATH` is rewritten (tmp + rename) every interval and at exit with
//!   `{"addresses":{"tcp://IP:PORT":{"lines":N,"bytes":M,"connections":C,"datagrams":D},…},
//!   "total_lines":N,"total_bytes":M,"elapsed_s":X}`;
//! - at exit (SIGTERM, SIGINT or `--duration-s`), on stdout, one line per address then the
//!   total: `echo: addr=URL lines=N bytes=M connections=C datagrams=D` and
//!   `echo: total_lines=N total_bytes=M elapsed_s=X`; exit status 0.
//!
//! `--sequence-dir DIR` (TCP): each line's second field is read as a sequence number
//! (`cadent blast --sequence`); per address the sink keeps a bitmap of those seen, adds
//! `unique` and `duplicates` to the stats, and at exit writes the bitmap to
//! `DIR/<port>.bits` (little-endian u64 words, bit N = number N arrived), so runs of a
//! sink that was stopped and started again can be merged. `--graceful-ms N`: at SIGTERM,
//! stop accepting, half-close every connection and read each until the sender closes it
//! (at most N ms), so everything the sink's kernel acknowledged is counted (a killed sink
//! loses it).

use std::collections::BTreeMap;
use std::io::{self, Read as _, Write as _};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Endpoint;
use crate::config::Transport;

/// Bytes asked of one TCP `read`.
const TCP_READ_BYTES: usize = 256 * 1024;
/// Largest UDP payload.
const UDP_READ_BYTES: usize = 65_536;
/// Receive buffer asked for UDP sockets (the kernel caps it at `net.core.rmem_max`).
const UDP_RCVBUF_BYTES: usize = 16 << 20;
/// How often the main loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Arguments of `cadent echo`.
#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Addresses to listen on, tcp://IP:PORT or udp://IP:PORT; comma-separated and/or
    /// repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub listen: Vec<Endpoint>,
    /// Period of the stderr status line and of the stats file.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Echo each received line to stdout, prefixed by the address and a space.
    #[arg(long)]
    pub print: bool,
    /// Rewrite this JSON snapshot every interval and at exit.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
    /// Exit after this many seconds.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// No periodic status line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// What a UDP datagram holds: `lines`, or `collectd` (one packet; its value lists
    /// are counted as lines).
    #[arg(long, default_value = "lines")]
    pub format: EchoFormat,
    /// TCP: count sequence numbers (each line's second field), losses and duplicates;
    /// write each address's bitmap here at exit.
    #[arg(long)]
    pub sequence_dir: Option<PathBuf>,
    /// At SIGTERM, stop accepting, half-close every connection and read each for up to
    /// this long (to its end if the sender closes sooner) before exiting; 0 = exit at once.
    #[arg(long, default_value_t = 0)]
    pub graceful_ms: u64,
}

/// What `cadent echo` counts in a UDP datagram.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoFormat {
    /// Newline-terminated lines.
    Lines,
    /// A collectd packet: its value lists.
    Collectd,
}

/// Counts of one address, shared by its accept and connection threads.
#[derive(Default, Debug)]
struct Counts {
    lines: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicU64,
    datagrams: AtomicU64,
    /// `--sequence-dir`: sequence numbers seen.
    seen: Option<Mutex<Bitmap>>,
    /// Open connections (`--graceful` half-closes them) and their reader threads.
    conns: Mutex<Vec<(TcpStream, std::thread::JoinHandle<()>)>>,
}

/// Sequence numbers seen, one bit each, with the counts of first and repeated arrivals.
#[derive(Default, Debug)]
struct Bitmap {
    words: Vec<u64>,
    unique: u64,
    duplicates: u64,
}

/// Largest sequence number tracked (a bitmap of 64 MiB); larger ones count as unique.
const SEQUENCE_MAX: u64 = 1 << 29;

impl Bitmap {
    fn add(&mut self, n: u64) {
        if n >= SEQUENCE_MAX {
            self.unique += 1;
            return;
        }
        let (w, b) = ((n / 64) as usize, n % 64);
        if w >= self.words.len() {
            self.words.resize((w + 1).next_power_of_two(), 0);
        }
        if self.words[w] & (1 << b) != 0 {
            self.duplicates += 1;
        } else {
            self.words[w] |= 1 << b;
            self.unique += 1;
        }
    }
}

/// A copy of `Counts` at one instant.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, serde::Serialize)]
struct Snapshot {
    lines: u64,
    bytes: u64,
    connections: u64,
    datagrams: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    unique: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicates: Option<u64>,
}

impl Counts {
    fn snapshot(&self) -> Snapshot {
        let (unique, duplicates) = match &self.seen {
            Some(m) => {
                let b = m.lock().unwrap_or_else(|e| e.into_inner());
                (Some(b.unique), Some(b.duplicates))
            }
            None => (None, None),
        };
        Snapshot {
            lines: self.lines.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            datagrams: self.datagrams.load(Ordering::Relaxed),
            unique,
            duplicates,
        }
    }
}

/// The sequence number of a `name N ...` line: its second field.
fn sequence_of(line: &[u8]) -> Option<u64> {
    let mut fields = line.split(|&b| b == b' ');
    fields.next()?;
    std::str::from_utf8(fields.next()?).ok()?.parse().ok()
}

/// Set at a graceful stop: accept loops stop accepting (their listeners close).
static CLOSING: AtomicBool = AtomicBool::new(false);

/// Set by SIGTERM/SIGINT; the main loop polls it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); `sa` is fully
        // initialised (zeroed, then handler, empty mask, SA_RESTART so blocked reads in
        // other threads resume instead of failing with EINTR).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Lines in `buf`, one per `\n`. Returns the count and whether `buf` ends inside a line.
fn count_lines(buf: &[u8]) -> (u64, bool) {
    let lines = memchr::memchr_iter(b'\n', buf).count() as u64;
    (lines, buf.last().is_some_and(|&b| b != b'\n'))
}

/// Lines in one datagram: each `\n` ends one, and a tail without `\n` is one more.
fn datagram_lines(datagram: &[u8]) -> u64 {
    let (lines, open) = count_lines(datagram);
    lines + u64::from(open)
}

/// Splits `buf` into whole lines after `carry` (the open line of earlier reads); calls
/// `emit` with each line without its `\n` and leaves the new open line in `carry`.
fn split_lines(carry: &mut Vec<u8>, buf: &[u8], mut emit: impl FnMut(&[u8])) {
    let mut rest = buf;
    while let Some(i) = memchr::memchr(b'\n', rest) {
        if carry.is_empty() {
            emit(&rest[..i]);
        } else {
            carry.extend_from_slice(&rest[..i]);
            emit(carry);
            carry.clear();
        }
        rest = &rest[i + 1..];
    }
    carry.extend_from_slice(rest);
}

/// Runs the counting sink.
pub fn run(args: EchoArgs) -> io::Result<()> {
    if args.interval_ms == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "echo: --interval-ms must be at least 1",
        ));
    }
    install_signal_handlers()?;
    let mut addresses = Vec::with_capacity(args.listen.len());
    for &endpoint in &args.listen {
        let counts = Arc::new(Counts {
            seen: args.sequence_dir.as_ref().map(|_| Mutex::default()),
            ..Default::default()
        });
        let name = endpoint.to_string();
        let bound = bind(endpoint)
            .map_err(|e| io::Error::new(e.kind(), format!("echo: listen {name}: {e}")))?;
        let (c, label) = (Arc::clone(&counts), name.clone());
        let (print, format) = (args.print, args.format);
        let graceful = args.graceful_ms > 0;
        std::thread::Builder::new()
            .name(format!("echo-{name}"))
            .spawn(move || match bound {
                Bound::Tcp(l) => accept_loop(l, c, label, print, graceful),
                Bound::Udp(s) => udp_loop(s, &c, &label, print, format),
            })?;
        addresses.push((name, counts));
    }

    let start = Instant::now();
    let deadline = args
        .duration_s
        .map(|s| start + Duration::from_secs_f64(s.max(0.0)));
    let interval = Duration::from_millis(args.interval_ms);
    let mut next_report = start + interval;
    let mut last: Vec<Snapshot> = vec![Snapshot::default(); addresses.len()];
    let mut last_at = start;
    // Bounded by the signal flag or --duration-s.
    while !STOP.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(POLL);
        let now = Instant::now();
        if now < next_report {
            continue;
        }
        next_report += interval;
        let snaps: Vec<Snapshot> = addresses.iter().map(|(_, c)| c.snapshot()).collect();
        if !args.quiet {
            let secs = now.duration_since(last_at).as_secs_f64().max(1e-9);
            let mut line = String::from("echo:");
            for ((name, _), (s, l)) in addresses.iter().zip(snaps.iter().zip(&last)) {
                line += &format!(
                    " {name} lines={} ({:.0}/s) conns={} |",
                    s.lines,
                    (s.lines - l.lines) as f64 / secs,
                    s.connections
                );
            }
            let total: u64 = snaps.iter().map(|s| s.lines).sum();
            let total_last: u64 = last.iter().map(|s| s.lines).sum();
            line += &format!(
                " total lines={total} ({:.0}/s)",
                (total - total_last) as f64 / secs
            );
            eprintln!("{line}");
        }
        if let Some(path) = &args.stats_file {
            let elapsed = now.duration_since(start).as_secs_f64();
            if let Err(e) = write_stats(path, &addresses, &snaps, elapsed) {
                eprintln!("echo: stats file {}: {e}", path.display());
            }
        }
        last = snaps;
        last_at = now;
    }

    if args.graceful_ms > 0 {
        CLOSING.store(true, Ordering::Relaxed);
        let closing_at = Instant::now();
        let bound = Duration::from_millis(args.graceful_ms);
        for (_, c) in &addresses {
            let conns = std::mem::take(&mut *c.conns.lock().unwrap_or_else(|e| e.into_inner()));
            for (stream, reader) in conns {
                let _ = stream.shutdown(std::net::Shutdown::Write);
                // Bounded: the reader ends at EOF, or `bound` after the half-close.
                while !reader.is_finished() && closing_at.elapsed() < bound {
                    std::thread::sleep(POLL);
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let snaps: Vec<Snapshot> = addresses.iter().map(|(_, c)| c.snapshot()).collect();
    if let Some(path) = &args.stats_file {
        write_stats(path, &addresses, &snaps, elapsed)?;
    }
    if let Some(dir) = &args.sequence_dir {
        std::fs::create_dir_all(dir)?;
        for ((name, c), endpoint) in addresses.iter().zip(&args.listen) {
            let Some(seen) = &c.seen else { continue };
            let b = seen.lock().unwrap_or_else(|e| e.into_inner());
            let bytes: Vec<u8> = b.words.iter().flat_map(|w| w.to_le_bytes()).collect();
            std::fs::write(dir.join(format!("{}.bits", endpoint.addr.port())), bytes)
                .map_err(|e| io::Error::new(e.kind(), format!("echo: {name}: bitmap: {e}")))?;
        }
    }
    let mut out = io::stdout().lock();
    for ((name, _), s) in addresses.iter().zip(&snaps) {
        writeln!(
            out,
            "echo: addr={name} lines={} bytes={} connections={} datagrams={}",
            s.lines, s.bytes, s.connections, s.datagrams
        )?;
    }
    writeln!(
        out,
        "echo: total_lines={} total_bytes={} elapsed_s={elapsed:.3}",
        snaps.iter().map(|s| s.lines).sum::<u64>(),
        snaps.iter().map(|s| s.bytes).sum::<u64>()
    )?;
    out.flush()
}

enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

fn bind(endpoint: Endpoint) -> io::Result<Bound> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = Domain::for_address(endpoint.addr);
    match endpoint.transport {
        Transport::Tcp => {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.bind(&endpoint.addr.into())?;
            s.listen(1024)?;
            Ok(Bound::Tcp(s.into()))
        }
        Transport::Udp => {
            let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
            // Best effort: a smaller buffer only means earlier kernel drops (and past
            // net.core.rmem_max only with CAP_NET_ADMIN).
            let _ = s.set_recv_buffer_size(UDP_RCVBUF_BYTES);
            if s.recv_buffer_size().unwrap_or(0) < UDP_RCVBUF_BYTES {
                crate::ingest::bind::force_recv_buffer(&s, UDP_RCVBUF_BYTES);
            }
            s.bind(&endpoint.addr.into())?;
            Ok(Bound::Udp(s.into()))
        }
    }
}

/// Accepts until a graceful stop (or for the life of the process); one thread per
/// connection.
fn accept_loop(
    listener: TcpListener,
    counts: Arc<Counts>,
    name: String,
    print: bool,
    graceful: bool,
) {
    let name: Arc<str> = name.into();
    // With a graceful stop, non-blocking (polled every 2 ms), so the stop can close the
    // listener (the port then refuses); otherwise blocking, costing nothing while idle.
    let _ = listener.set_nonblocking(graceful);
    while !CLOSING.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                counts.connections.fetch_add(1, Ordering::Relaxed);
                let (c, n) = (Arc::clone(&counts), Arc::clone(&name));
                let handle = stream.try_clone();
                let spawned = std::thread::Builder::new()
                    .name("echo-conn".into())
                    .spawn(move || read_connection(stream, &c, &n, print));
                match (spawned, handle) {
                    (Ok(reader), Ok(handle)) => {
                        let mut conns = counts.conns.lock().unwrap_or_else(|e| e.into_inner());
                        conns.retain(|(_, r)| !r.is_finished());
                        conns.push((handle, reader));
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("echo: {name}: cannot start a connection thread: {e}")
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => {
                eprintln!("echo: {name}: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads one connection to EOF or error.
fn read_connection(mut stream: TcpStream, counts: &Counts, name: &str, print: bool) {
    let mut buf = vec![0u8; TCP_READ_BYTES];
    let mut open = false;
    let mut carry = Vec::new();
    let mut seq_carry = Vec::new();
    // Bounded by the peer: ends at EOF or on error.
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (lines, ends_open) = count_lines(&buf[..n]);
        open = ends_open;
        counts.lines.fetch_add(lines, Ordering::Relaxed);
        counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(seen) = &counts.seen {
            let mut b = seen.lock().unwrap_or_else(|e| e.into_inner());
            split_lines(&mut seq_carry, &buf[..n], |line| {
                if let Some(s) = sequence_of(line) {
                    b.add(s);
                }
            });
        }
        if print {
            print_lines(name, &mut carry, &buf[..n]);
        }
    }
    if open {
        counts.lines.fetch_add(1, Ordering::Relaxed);
    }
    if print {
        print_open_line(name, &mut carry);
    }
}

fn print_lines(name: &str, carry: &mut Vec<u8>, buf: &[u8]) {
    let mut out = io::stdout().lock();
    split_lines(carry, buf, |line| {
        let _ = out.write_all(name.as_bytes());
        let _ = out.write_all(b" ");
        let _ = out.write_all(line);
        let _ = out.write_all(b"\n");
    });
}

/// Prints the line left open in `carry` (a TCP stream's end, a datagram's tail), if any.
fn print_open_line(name: &str, carry: &mut Vec<u8>) {
    if !carry.is_empty() {
        carry.push(b'\n');
        print_lines(name, &mut Vec::new(), carry);
    }
}

/// Value lists in one collectd packet.
fn collectd_value_lists(dec: &mut crate::protocol::collectd::Decoder, datagram: &mut [u8]) -> u64 {
    let mut n = 0;
    dec.decode(datagram, &mut |r| {
        if let crate::protocol::collectd::Record::Values(_) = r {
            n += 1;
        }
    });
    n
}

/// Receives for the life of the process.
fn udp_loop(socket: UdpSocket, counts: &Counts, name: &str, print: bool, format: EchoFormat) {
    let mut buf = vec![0u8; UDP_READ_BYTES];
    let mut dec = crate::protocol::collectd::Decoder::default();
    loop {
        match socket.recv(&mut buf) {
            Ok(n) if format == EchoFormat::Collectd => {
                counts.datagrams.fetch_add(1, Ordering::Relaxed);
                counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
                let vls = collectd_value_lists(&mut dec, &mut buf[..n]);
                counts.lines.fetch_add(vls, Ordering::Relaxed);
            }
            Ok(n) => {
                let datagram = &buf[..n];
                counts.datagrams.fetch_add(1, Ordering::Relaxed);
                counts
                    .lines
                    .fetch_add(datagram_lines(datagram), Ordering::Relaxed);
                counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
                if print && n > 0 {
                    let mut carry = Vec::new();
                    print_lines(name, &mut carry, datagram);
                    print_open_line(name, &mut carry);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("echo: {name}: recv: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[derive(serde::Serialize)]
struct StatsFile<'a> {
    addresses: BTreeMap<&'a str, Snapshot>,
    total_lines: u64,
    total_bytes: u64,
    elapsed_s: f64,
}

fn stats_json(names: &[(String, Arc<Counts>)], snaps: &[Snapshot], elapsed_s: f64) -> String {
    let file = StatsFile {
        addresses: names
            .iter()
            .zip(snaps)
            .map(|((n, _), s)| (n.as_str(), *s))
            .collect(),
        total_lines: snaps.iter().map(|s| s.lines).sum(),
        total_bytes: snaps.iter().map(|s| s.bytes).sum(),
        elapsed_s: (elapsed_s * 1000.0).round() / 1000.0,
    };
    serde_json::to_string(&file).expect("stats serialise")
}

/// Writes the snapshot to `PATH.tmp`, then renames it over `PATH`, so readers never see a
/// half-written file.
fn write_stats(
    path: &Path,
    names: &[(String, Arc<Counts>)],
    snaps: &[Snapshot],
    elapsed_s: f64,
) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut json = stats_json(names, snaps, elapsed_s);
    json.push('\n');
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` as successive reads of one connection; returns the line count.
    fn check_stream(chunks: &[&[u8]], expected: u64) {
        let mut lines = 0;
        let mut open = false;
        for chunk in chunks {
            let (n, o) = count_lines(chunk);
            lines += n;
            open = o;
        }
        lines += u64::from(open);
        assert_eq!(lines, expected, "{chunks:?}");
    }

    #[test]
    fn lines_split_across_reads_count_once() {
        check_stream(&[b"a 1 2\nb 1 2\n"], 2);
        check_stream(&[b"a 1 ", b"2\nb 1", b" 2\n"], 2);
        check_stream(&[b"a 1 2", b"\n", b"b"], 2);
        check_stream(&[b"\n\n"], 2);
        check_stream(&[], 0);
    }

    #[test]
    fn collectd_packets_count_their_value_lists() {
        use crate::protocol::collectd::{self as cd, CdTime, ValueList, Values};
        let v = [cd::Value::Gauge(1.0)];
        let mut enc = cd::Encoder::new(cd::EncoderConfig::default());
        let mut packets = Vec::new();
        for i in 0..100u64 {
            let host = format!("h{}", i % 7);
            let vl = ValueList {
                host: host.as_bytes(),
                plugin: b"p",
                plugin_instance: b"",
                type_: b"gauge",
                type_instance: b"",
                time: CdTime::from_secs(1 + i),
                interval: CdTime::from_secs(10),
                values: Values::from_slice(&v),
            };
            enc.push(&vl, &mut |p: &[u8]| packets.push(p.to_vec()))
                .unwrap();
        }
        enc.flush(&mut |p: &[u8]| packets.push(p.to_vec()));
        assert!(packets.len() > 1);
        let mut dec = cd::Decoder::default();
        let n: u64 = packets
            .iter_mut()
            .map(|p| collectd_value_lists(&mut dec, p))
            .sum();
        assert_eq!(n, 100);
    }

    #[test]
    fn datagram_tail_is_a_line() {
        assert_eq!(datagram_lines(b"a:1|c\nb:2|c\n"), 2);
        assert_eq!(datagram_lines(b"a:1|c\nb:2|c"), 2);
        assert_eq!(datagram_lines(b""), 0);
    }

    #[test]
    fn sequences_count_unique_and_duplicate_arrivals() {
        let mut b = Bitmap::default();
        for n in [5, 0, 70, 5, 1 << 20, 70] {
            b.add(n);
        }
        assert_eq!((b.unique, b.duplicates), (4, 2));
        assert_eq!(b.words[0], (1 << 5) | 1);
        assert_eq!(b.words[1], 1 << 6);
        assert_eq!(sequence_of(b"seq.m3 12345 1700000000"), Some(12345));
        assert_eq!(sequence_of(b"garbage"), None);
    }

    #[test]
    fn split_lines_joins_reads() {
        let mut carry = Vec::new();
        let mut got: Vec<String> = Vec::new();
        for chunk in [&b"ab"[..], b"c\nd", b"e\n\nf"] {
            split_lines(&mut carry, chunk, |l| {
                got.push(String::from_utf8(l.to_vec()).unwrap())
            });
        }
        assert_eq!(got, ["abc", "de", ""]);
        assert_eq!(carry, b"f");
    }

    #[test]
    fn listen_list_parses() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            echo: EchoArgs,
        }
        let cli = Cli::try_parse_from([
            "echo",
            "--listen",
            "tcp://127.0.0.1:2101,udp://127.0.0.1:2102",
            "--listen",
            "tcp://127.0.0.1:2103",
        ])
        .unwrap();
        let got: Vec<String> = cli.echo.listen.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            [
                "tcp://127.0.0.1:2101",
                "udp://127.0.0.1:2102",
                "tcp://127.0.0.1:2103"
            ]
        );
        assert!(Cli::try_parse_from(["echo", "--listen", "127.0.0.1:1"]).is_err());
        assert!(Cli::try_parse_from(["echo"]).is_err());
    }

    #[test]
    fn stats_json_shape() {
        let names = vec![
            (
                "tcp://127.0.0.1:2101".to_string(),
                Arc::new(Counts::default()),
            ),
            (
                "udp://127.0.0.1:2102".to_string(),
                Arc::new(Counts::default()),
            ),
        ];
        let snaps = [
            Snapshot {
                lines: 3,
                bytes: 30,
                connections: 1,
                datagrams: 0,
                ..Default::default()
            },
            Snapshot {
                lines: 4,
                bytes: 40,
                connections: 0,
                datagrams: 2,
                ..Default::default()
            },
        ];
        let v: serde_json::Value = serde_json::from_str(&stats_json(&names, &snaps, 1.5)).unwrap();
        assert_eq!(v["total_lines"], 7);
        assert_eq!(v["total_bytes"], 70);
        assert_eq!(v["addresses"]["tcp://127.0.0.1:2101"]["lines"], 3);
        assert_eq!(v["addresses"]["tcp://127.0.0.1:2101"]["connections"], 1);
        assert_eq!(v["addresses"]["udp://127.0.0.1:2102"]["datagrams"], 2);
    }
}

//! `cadent blast`: a seeded load generator for graphite, statsd, collectd and pickle
//! receivers.
//!
//! The generator must cost far less CPU than the relay it measures, since both share the
//! same cores in `bench/`. So every line is generated once, before the clock starts, into a
//! pool of whole lines (`LinePool`); the send loop only slices that pool and hands large
//! chunks (up to 256 KiB on TCP, `--datagram-bytes` on UDP) to the kernel. Rate control is a
//! token bucket refilled on 10 ms ticks.
//!
//! Output contract (stable, parsed by `bench/relay.py`): one line on stdout at the end,
//!
//! ```text
//! blast: sent_lines=N sent_bytes=M elapsed_s=X rate=Y errors=E
//! ```
//!
//! `sent_lines`/`sent_bytes` count whole lines the kernel accepted, `elapsed_s` runs from
//! the first send to the last, `rate` is `sent_lines / elapsed_s` rounded down, `errors`
//! counts send errors and stalls. Progress goes to stderr (one `\r`-updated line).
//!
//! The binary formats count their own units as "lines": `collectd` counts value lists
//! (packed by the collectd `Encoder`, optionally signed or encrypted, one datagram per
//! packet), `pickle` counts points (carbon frames of at most 500 points). Their packets
//! and frames are built while sending, from tables made before the clock starts: an
//! encrypted packet needs a fresh IV, and an exact `--count` needs a short last packet.

use std::io::{self, IsTerminal as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Endpoint, SplitMix64};
use crate::config::Transport;
use crate::protocol::collectd::{
    CdTime, Credentials, Encoder, EncoderConfig, SecurityLevel, SendSecurity, Value, ValueList,
    Values,
};
use crate::protocol::pickle::{self, Point};

/// Bytes handed to one TCP `write` when neither the rate nor the count limits it.
const TCP_CHUNK_BYTES: usize = 256 * 1024;
/// The pool holds at least this many lines, so chunks stay large with few names.
const POOL_LINES_MIN: u64 = 4096;
/// Names beyond this would make the pool (about 45 bytes per name) unreasonably large.
const NAMES_MAX: u64 = 20_000_000;
/// Token-bucket refill tick.
const TICK: Duration = Duration::from_millis(10);
/// The bucket holds at most this much of the rate, so a stall is not followed by a flood.
const BUCKET_DEPTH_S: f64 = 0.1;
/// Blocking sends wake up this often to look at the deadline.
const SEND_TIMEOUT: Duration = Duration::from_millis(500);
/// Progress line period.
const PROGRESS_PERIOD: Duration = Duration::from_millis(500);
/// Consecutive UDP send errors after which a sender gives up.
const UDP_ERRORS_MAX: u64 = 100;
/// Points per pickle frame, as carbon's senders batch them.
const PICKLE_FRAME_POINTS_MAX: usize = 500;
/// Units one binary-format sender pass builds before it looks at the clock again.
const PASS_UNITS_MAX: u64 = 8192;
/// The `interval` of generated collectd value lists; repeats of a name step their time by it.
const COLLECTD_INTERVAL_S: u64 = 10;

/// Line format of the generated traffic.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `name value timestamp\n`
    Graphite,
    /// `name:value|c\n`, `|ms`, `|g` and `|s` mixed (5:3:1:1), each name with one
    /// fixed type.
    Statsd,
    /// collectd binary value lists over UDP, of real `types.db` types (cpu, load,
    /// if_octets, memory, counter, absolute); a "line" is a value list.
    Collectd,
    /// carbon pickle frames over TCP, the graphite names and values; a "line" is a point.
    Pickle,
}

/// Arguments of `cadent blast`.
#[derive(clap::Args, Debug)]
pub struct BlastArgs {
    /// Target: tcp://IP:PORT or udp://IP:PORT.
    #[arg(long)]
    pub to: Endpoint,
    /// Line format.
    #[arg(long, value_enum, default_value_t = Format::Graphite)]
    pub format: Format,
    /// Total lines per second over all connections; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Total lines to send, split exactly over the connections; 0 means no count bound
    /// (then --duration-s is required).
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Distinct metric names.
    #[arg(long, default_value_t = 10_000)]
    pub names: u64,
    /// Parallel connections (UDP: sockets), one thread each.
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// Stop after this many seconds even if --count is not reached.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Seed of names order and values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Graphite timestamp written in every line (default: now, taken once at start).
    #[arg(long)]
    pub timestamp: Option<u64>,
    /// UDP only: whole lines are packed into datagrams of at most this many bytes.
    #[arg(long, default_value_t = 1400)]
    pub datagram_bytes: usize,
    /// UDP only: and of at most this many lines (0: no line bound).
    #[arg(long, default_value_t = 0)]
    pub datagram_lines: u64,
    /// Give up when a connection accepts no byte for this long.
    #[arg(long, default_value_t = 30.0)]
    pub stall_timeout_s: f64,
    /// Show the progress line on stderr even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Graphite over TCP only: every line unique, `seq.m<N % names> <N> <timestamp>`,
    /// its value a sequence number N (connection k sends a contiguous range), so a sink
    /// (`cadent echo --sequence-dir`) can count losses and duplicates. Lines are formatted
    /// while sending (about 50 ns each) instead of sliced from the pool.
    #[arg(long)]
    pub sequence: bool,
    /// collectd: distinct hosts the names are spread over.
    #[arg(long, default_value_t = 10)]
    pub hosts: u64,
    /// collectd: distinct plugins (with instances) per host.
    #[arg(long, default_value_t = 6)]
    pub plugins: u64,
    /// collectd: none, sign or encrypt (sign and encrypt need --user and --password).
    #[arg(long, default_value = "none")]
    pub security_level: SecurityLevel,
    /// collectd: user name for signing or encryption.
    #[arg(long)]
    pub user: Option<String>,
    /// collectd: password for signing or encryption.
    #[arg(long)]
    pub password: Option<String>,
}

/// Whole lines, generated once: `bytes` holds them back to back, line `i` ends (exclusive)
/// at `ends[i]`.
#[derive(Debug, PartialEq, Eq)]
pub struct LinePool {
    /// The lines, back to back, each ending with `\n`.
    pub bytes: Vec<u8>,
    /// End offset (exclusive) of each line in `bytes`.
    pub ends: Vec<usize>,
}

impl LinePool {
    /// Generates `max(names, 4096)` rounded up to whole cycles of `names`: every name once
    /// per cycle, in a seeded order, with seeded values. Same inputs, same bytes.
    pub fn generate(format: Format, names: u64, seed: u64, timestamp: u64) -> LinePool {
        assert!((1..=NAMES_MAX).contains(&names));
        let cycles = POOL_LINES_MIN.div_ceil(names);
        let lines = names * cycles;
        let mut rng = SplitMix64(seed);
        // Seeded order of names (Fisher-Yates), so consecutive lines hash all over a ring.
        let mut order: Vec<u32> = (0..names as u32).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut bytes = Vec::with_capacity(lines as usize * 48);
        let mut ends = Vec::with_capacity(lines as usize);
        for line in 0..lines {
            let n = u64::from(order[(line % names) as usize]);
            write_line(&mut bytes, format, n, rng.next_u64(), timestamp);
            ends.push(bytes.len());
        }
        LinePool { bytes, ends }
    }

    /// Number of lines in the pool.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the pool has no line (never, for a generated pool).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn start(&self, line: usize) -> usize {
        if line == 0 {
            0
        } else {
            self.ends[line - 1]
        }
    }

    /// The bytes of lines `first..first + n`.
    pub fn slice(&self, first: usize, n: usize) -> &[u8] {
        debug_assert!(n >= 1 && first + n <= self.len());
        &self.bytes[self.start(first)..self.ends[first + n - 1]]
    }

    /// How many lines from `first` (at most `limit`, not past the pool end) fit in
    /// `max_bytes`; at least one, so a line longer than `max_bytes` still goes out alone.
    pub fn fit(&self, first: usize, limit: u64, max_bytes: usize) -> usize {
        debug_assert!(first < self.len() && limit >= 1);
        let base = self.start(first);
        let tail = &self.ends[first..];
        let tail = &tail[..tail.len().min(usize::try_from(limit).unwrap_or(usize::MAX))];
        tail.partition_point(|&end| end - base <= max_bytes).max(1)
    }
}

/// The name of metric `n`: `blast.grpGG.mNNNNNNN.<kind>`, about 27 bytes.
fn write_name(out: &mut Vec<u8>, n: u64, kind: &str) {
    write!(out, "blast.grp{:02}.m{:07}.{kind}", n % 100, n).expect("write to Vec");
}

fn write_line(out: &mut Vec<u8>, format: Format, n: u64, random: u64, timestamp: u64) {
    match format {
        // The binary formats are not lines; pickle takes its points from graphite lines.
        Format::Graphite | Format::Pickle | Format::Collectd => {
            const KINDS: [&str; 5] = ["count", "mean", "max", "p99", "rate"];
            write_name(out, n, KINDS[(n % 5) as usize]);
            if random % 4 == 0 {
                write!(out, " {}.{:02}", (random >> 8) % 1000, (random >> 20) % 100)
            } else {
                write!(out, " {}", (random >> 8) % 10_000)
            }
            .expect("write to Vec");
            writeln!(out, " {timestamp}").expect("write to Vec");
        }
        Format::Statsd => match n % 10 {
            0..=4 => {
                write_name(out, n, "count");
                writeln!(out, ":{}|c", 1 + (random >> 8) % 10)
            }
            5..=7 => {
                write_name(out, n, "time");
                writeln!(out, ":{}.{}|ms", (random >> 8) % 1000, (random >> 20) % 10)
            }
            8 => {
                write_name(out, n, "gauge");
                writeln!(out, ":{}|g", (random >> 8) % 10_000)
            }
            _ => {
                write_name(out, n, "set");
                writeln!(out, ":u{}|s", (random >> 8) % 1000)
            }
        }
        .expect("write to Vec"),
    }
}

/// One kind of collectd value list blast sends: a real `types.db` type, its data sources'
/// wire codes, and the plugin that would report it.
struct Kind {
    plugin: &'static str,
    plugin_instance: &'static str,
    type_: &'static str,
    type_instance: &'static str,
    /// Value type codes: 0 counter, 1 gauge, 2 derive, 3 absolute.
    codes: &'static [u8],
}

const KINDS: [Kind; 6] = [
    Kind {
        plugin: "cpu",
        plugin_instance: "",
        type_: "cpu",
        type_instance: "user",
        codes: &[2],
    },
    Kind {
        plugin: "load",
        plugin_instance: "",
        type_: "load",
        type_instance: "",
        codes: &[1, 1, 1],
    },
    Kind {
        plugin: "interface",
        plugin_instance: "eth",
        type_: "if_octets",
        type_instance: "",
        codes: &[2, 2],
    },
    Kind {
        plugin: "memory",
        plugin_instance: "",
        type_: "memory",
        type_instance: "used",
        codes: &[1],
    },
    Kind {
        plugin: "blast",
        plugin_instance: "",
        type_: "counter",
        type_instance: "requests",
        codes: &[0],
    },
    Kind {
        plugin: "blast",
        plugin_instance: "abs",
        type_: "absolute",
        type_instance: "events",
        codes: &[3],
    },
];

/// Seeded collectd traffic: value list `i` of the stream is name `i % names` at cycle
/// `i / names`. Names run through type instances, then plugins, then hosts, so neighbours
/// share host and plugin as a real daemon's packets do. A name's time steps by the
/// interval each cycle and its derives and counters grow, so a receiver sees every repeat
/// as a new reading. Same inputs, same value lists.
#[derive(Debug, Clone)]
pub struct CollectdTraffic {
    hosts: Vec<String>,
    plugins: u64,
    /// Type instances per (host, plugin).
    instances: u64,
    names: u64,
    seed: u64,
    timestamp: u64,
}

/// Buffers one value list borrows from while it is pushed.
#[derive(Debug, Default)]
pub struct Scratch {
    plugin_instance: Vec<u8>,
    type_instance: Vec<u8>,
    values: Vec<Value>,
}

impl CollectdTraffic {
    /// `names` value list identities over `hosts` hosts and `plugins` plugins per host.
    pub fn new(names: u64, hosts: u64, plugins: u64, seed: u64, timestamp: u64) -> Self {
        assert!(names >= 1 && hosts >= 1 && plugins >= 1);
        let instances = names.div_ceil(hosts.saturating_mul(plugins)).max(1);
        let used_hosts = names.div_ceil(instances.saturating_mul(plugins)).min(hosts);
        CollectdTraffic {
            hosts: (0..used_hosts).map(|h| format!("host{h:04}")).collect(),
            plugins,
            instances,
            names,
            seed,
            timestamp,
        }
    }

    /// Value list `i` of the stream, borrowing from `self` and `scratch`.
    pub fn value_list<'a>(&'a self, i: u64, scratch: &'a mut Scratch) -> ValueList<'a> {
        let n = i % self.names;
        let cycle = i / self.names;
        let t = n % self.instances;
        let p = (n / self.instances) % self.plugins;
        let h = (n / self.instances / self.plugins) as usize % self.hosts.len();
        let kind = &KINDS[(p % KINDS.len() as u64) as usize];
        instance(
            &mut scratch.plugin_instance,
            kind.plugin_instance,
            p / KINDS.len() as u64,
        );
        instance(&mut scratch.type_instance, kind.type_instance, t);
        // Per name: a start and a step for the growing kinds; per reading: fresh gauges.
        let mut per_name = SplitMix64(self.seed ^ n.wrapping_mul(0xa076_1d64_78bd_642f));
        let mut per_reading = SplitMix64(per_name.next_u64() ^ cycle);
        scratch.values.clear();
        for &code in kind.codes {
            let start = per_name.next_u64() % 1_000_000_000;
            let step = 1 + per_name.next_u64() % 100_000;
            let random = per_reading.next_u64();
            let grown = start + cycle.wrapping_mul(step);
            scratch.values.push(match (code, kind.type_) {
                (1, "load") => Value::Gauge((random % 50_000) as f64 / 100.0),
                (1, _) => Value::Gauge((random % (1 << 40)) as f64),
                (0, _) => Value::Counter(grown),
                (2, _) => Value::Derive(grown as i64),
                _ => Value::Absolute(random % 1000),
            });
        }
        ValueList {
            host: self.hosts[h].as_bytes(),
            plugin: kind.plugin.as_bytes(),
            plugin_instance: &scratch.plugin_instance,
            type_: kind.type_.as_bytes(),
            type_instance: &scratch.type_instance,
            time: CdTime::from_secs(self.timestamp + cycle * COLLECTD_INTERVAL_S),
            interval: CdTime::from_secs(COLLECTD_INTERVAL_S),
            values: Values::from_slice(&scratch.values),
        }
    }
}

/// `base` for index 0, then `base` with the index appended.
fn instance(out: &mut Vec<u8>, base: &str, idx: u64) {
    out.clear();
    out.extend_from_slice(base.as_bytes());
    if idx > 0 {
        write!(out, "{idx}").expect("write to Vec");
    }
}

/// Graphite names and values as pickle points: the graphite pool, parsed once.
#[derive(Debug)]
pub struct PointPool {
    lines: LinePool,
    /// Per point: end of the name in its line, and the value.
    points: Vec<(usize, f64)>,
    timestamp: f64,
}

impl PointPool {
    /// The points of `LinePool::generate(Format::Graphite, ..)`.
    pub fn generate(names: u64, seed: u64, timestamp: u64) -> PointPool {
        let lines = LinePool::generate(Format::Graphite, names, seed, timestamp);
        let points = (0..lines.len())
            .map(|i| {
                let line = lines.slice(i, 1);
                let space = memchr::memchr(b' ', line).expect("graphite line has a value");
                let value = &line[space + 1..];
                let value_end = memchr::memchr(b' ', value).expect("and a timestamp");
                let value = std::str::from_utf8(&value[..value_end])
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .expect("generated value parses");
                (space, value)
            })
            .collect();
        PointPool {
            lines,
            points,
            timestamp: timestamp as f64,
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the pool has no point (never, for a generated pool).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Point `i`.
    pub fn point(&self, i: usize) -> Point<'_> {
        let (name_end, value) = self.points[i];
        Point {
            name: &self.lines.slice(i, 1)[..name_end],
            timestamp: self.timestamp,
            value,
        }
    }
}

/// Splits `count` lines over `connections`: the first `count % connections` get one more.
pub fn split_count(count: u64, connections: u32) -> Vec<u64> {
    assert!(connections >= 1);
    let c = u64::from(connections);
    (0..c)
        .map(|i| count / c + u64::from(i < count % c))
        .collect()
}

/// What one sender may do: its share of lines (`u64::MAX` when unbounded), its rate
/// (lines/s, 0 = unlimited) and the shared bounds.
struct Plan {
    lines: u64,
    rate: f64,
    first_line: usize,
    deadline: Option<Instant>,
    stall_timeout: Duration,
    datagram_bytes: usize,
    datagram_lines: u64,
}

/// Per-sender counters, read by the progress loop.
#[derive(Default)]
struct Counters {
    lines: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    done: AtomicU64,
}

/// Token bucket refilled from the clock. It lets lines go one tick's worth at a time, so
/// a limited rate still makes full datagrams and few, larger writes.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        Bucket {
            rate,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Lines allowed now, at most `left` (`left` without a rate). When fewer than a tick's
    /// worth (or `left`) have accumulated, sleeps until they should have and returns 0.
    fn allowance(&mut self, left: u64) -> u64 {
        if self.rate <= 0.0 {
            return left;
        }
        let now = Instant::now();
        let batch = (self.rate * TICK.as_secs_f64()).max(1.0).min(left as f64);
        let depth = (self.rate * BUCKET_DEPTH_S).max(batch);
        self.tokens =
            (self.tokens + self.rate * now.duration_since(self.last).as_secs_f64()).min(depth);
        self.last = now;
        if self.tokens < batch {
            let wait = ((batch - self.tokens) / self.rate).clamp(0.000_1, 0.1);
            std::thread::sleep(Duration::from_secs_f64(wait));
            return 0;
        }
        (self.tokens as u64).min(left)
    }

    fn spend(&mut self, lines: usize) {
        if self.rate > 0.0 {
            self.tokens -= lines as f64;
        }
    }
}

/// Runs the load generator.
pub fn run(args: BlastArgs) -> io::Result<()> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    if args.connections == 0 {
        return Err(invalid("blast: --connections must be at least 1".into()));
    }
    if args.names == 0 || args.names > NAMES_MAX {
        return Err(invalid(format!(
            "blast: --names must be in 1..={NAMES_MAX}"
        )));
    }
    if args.count == 0 && args.duration_s.is_none() {
        return Err(invalid("blast: --count 0 needs --duration-s".into()));
    }
    if args.datagram_bytes == 0 || args.datagram_bytes > 65_507 {
        return Err(invalid(
            "blast: --datagram-bytes must be in 1..=65507".into(),
        ));
    }
    let wanted = match args.format {
        Format::Collectd => Some(Transport::Udp),
        Format::Pickle => Some(Transport::Tcp),
        Format::Graphite | Format::Statsd => None,
    };
    if wanted.is_some_and(|t| t != args.to.transport) {
        return Err(invalid(format!(
            "blast: --format {:?} goes over {}://, not {}",
            args.format,
            wanted.map_or("", |t| t.scheme()),
            args.to
        )));
    }
    if args.sequence && (args.format != Format::Graphite || args.to.transport != Transport::Tcp) {
        return Err(invalid(
            "blast: --sequence needs --format graphite over tcp://".into(),
        ));
    }
    if args.sequence && args.count == 0 {
        return Err(invalid("blast: --sequence needs a --count".into()));
    }
    let security = send_security(&args).map_err(invalid)?;
    if args.format == Format::Collectd && (args.hosts == 0 || args.plugins == 0) {
        return Err(invalid(
            "blast: --hosts and --plugins must be at least 1".into(),
        ));
    }
    let timestamp = args.timestamp.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let traffic = Arc::new(match args.format {
        Format::Graphite | Format::Statsd => Traffic::Lines(LinePool::generate(
            args.format,
            args.names,
            args.seed,
            timestamp,
        )),
        Format::Collectd => Traffic::Collectd(
            CollectdTraffic::new(args.names, args.hosts, args.plugins, args.seed, timestamp),
            Box::new(security),
        ),
        Format::Pickle => Traffic::Pickle(PointPool::generate(args.names, args.seed, timestamp)),
    });

    // Connect everything before the clock starts; any failure ends the run here.
    let mut sockets = Vec::with_capacity(args.connections as usize);
    for _ in 0..args.connections {
        sockets.push(
            connect(args.to).map_err(|e| {
                io::Error::new(e.kind(), format!("blast: connect {}: {e}", args.to))
            })?,
        );
    }

    let shares = if args.count == 0 {
        vec![u64::MAX; args.connections as usize]
    } else {
        split_count(args.count, args.connections)
    };
    let start = Instant::now();
    let deadline = args
        .duration_s
        .map(|s| start + Duration::from_secs_f64(s.max(0.0)));
    let counters: Arc<Vec<Counters>> =
        Arc::new((0..args.connections).map(|_| Counters::default()).collect());
    let mut handles = Vec::with_capacity(sockets.len());
    let mut first_seq = 0u64;
    for (i, (socket, lines)) in sockets.into_iter().zip(shares).enumerate() {
        let seq = args.sequence.then_some(Sequence {
            first: first_seq,
            names: args.names,
            timestamp,
        });
        first_seq += lines;
        let plan = Plan {
            lines,
            rate: args.rate as f64 / f64::from(args.connections),
            first_line: i * traffic.len() / args.connections as usize,
            deadline,
            stall_timeout: Duration::from_secs_f64(args.stall_timeout_s.max(0.001)),
            datagram_bytes: args.datagram_bytes,
            datagram_lines: if args.datagram_lines == 0 {
                u64::MAX
            } else {
                args.datagram_lines
            },
        };
        let traffic = Arc::clone(&traffic);
        let counters = Arc::clone(&counters);
        handles.push(
            std::thread::Builder::new()
                .name(format!("blast-{i}"))
                .spawn(move || {
                    let c = &counters[i];
                    match (socket, &*traffic) {
                        (Socket::Tcp(s), Traffic::Lines(_)) if seq.is_some() => {
                            send_tcp_sequence(s, seq.expect("checked"), &plan, c)
                        }
                        (Socket::Tcp(s), Traffic::Lines(pool)) => send_tcp(s, pool, &plan, c),
                        (Socket::Udp(s), Traffic::Lines(pool)) => send_udp(s, pool, &plan, c),
                        (Socket::Udp(s), Traffic::Collectd(t, security)) => {
                            send_collectd(s, t, (**security).clone(), &plan, c)
                        }
                        (Socket::Tcp(s), Traffic::Pickle(pool)) => send_pickle(s, pool, &plan, c),
                        _ => unreachable!("transport checked against the format"),
                    }
                    c.done.store(1, Ordering::Release);
                })?,
        );
    }

    let show_progress = args.progress || io::stderr().is_terminal();
    let totals = |counters: &[Counters]| {
        counters.iter().fold((0u64, 0u64, 0u64, 0u64), |acc, c| {
            (
                acc.0 + c.lines.load(Ordering::Relaxed),
                acc.1 + c.bytes.load(Ordering::Relaxed),
                acc.2 + c.errors.load(Ordering::Relaxed),
                acc.3 + c.done.load(Ordering::Acquire),
            )
        })
    };
    // Bounded: every sender ends by count, deadline or stall timeout.
    let mut next_progress = start + PROGRESS_PERIOD;
    loop {
        let (lines, _, errors, done) = totals(&counters);
        if done == u64::from(args.connections) {
            break;
        }
        let now = Instant::now();
        if show_progress && now >= next_progress {
            let secs = now.duration_since(start).as_secs_f64();
            eprint!(
                "\rblast: {lines} lines, {:.0} lines/s, errors={errors}   ",
                lines as f64 / secs
            );
            next_progress += PROGRESS_PERIOD;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("blast: sender panicked"))?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (lines, bytes, errors, _) = totals(&counters);
    if show_progress {
        eprintln!();
    }
    println!(
        "blast: sent_lines={lines} sent_bytes={bytes} elapsed_s={elapsed:.3} rate={} errors={errors}",
        (lines as f64 / elapsed.max(1e-9)) as u64
    );
    io::stdout().flush()?;
    if errors > 0 {
        return Err(io::Error::other(format!("blast: {errors} send errors")));
    }
    Ok(())
}

enum Socket {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// What the senders send, made before the clock starts.
enum Traffic {
    Lines(LinePool),
    Collectd(CollectdTraffic, Box<SendSecurity>),
    Pickle(PointPool),
}

impl Traffic {
    /// Units before the stream repeats (senders start spread over it).
    fn len(&self) -> usize {
        match self {
            Traffic::Lines(pool) => pool.len(),
            Traffic::Collectd(t, _) => usize::try_from(t.names).unwrap_or(usize::MAX),
            Traffic::Pickle(pool) => pool.len(),
        }
    }
}

/// The collectd security asked for; an error message when the flags do not fit together.
fn send_security(args: &BlastArgs) -> Result<SendSecurity, String> {
    let creds = || match (&args.user, &args.password) {
        (Some(u), Some(p)) => {
            Credentials::new(u.as_bytes(), p.as_bytes()).map_err(|e| format!("blast: --user: {e}"))
        }
        _ => Err("blast: --security-level sign|encrypt needs --user and --password".into()),
    };
    let given = args.user.is_some() || args.password.is_some();
    if (given || args.security_level != SecurityLevel::None) && args.format != Format::Collectd {
        return Err("blast: --user, --password, --security-level are for --format collectd".into());
    }
    match args.security_level {
        SecurityLevel::None if given => {
            Err("blast: --user/--password need --security-level sign|encrypt".into())
        }
        SecurityLevel::None => Ok(SendSecurity::None),
        SecurityLevel::Sign => Ok(SendSecurity::Sign(creds()?)),
        SecurityLevel::Encrypt => Ok(SendSecurity::Encrypt(creds()?)),
    }
}

fn connect(to: Endpoint) -> io::Result<Socket> {
    match to.transport {
        Transport::Tcp => {
            let s = TcpStream::connect_timeout(&to.addr, Duration::from_secs(5))?;
            s.set_write_timeout(Some(SEND_TIMEOUT))?;
            Ok(Socket::Tcp(s))
        }
        Transport::Udp => {
            let local: SocketAddr = if to.addr.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            let s = UdpSocket::bind(local)?;
            s.connect(to.addr)?;
            s.set_write_timeout(Some(SEND_TIMEOUT))?;
            Ok(Socket::Udp(s))
        }
    }
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

fn send_tcp(mut stream: TcpStream, pool: &LinePool, plan: &Plan, c: &Counters) {
    let mut bucket = Bucket::new(plan.rate);
    let mut line = plan.first_line;
    let mut left = plan.lines;
    // Bounded: each pass sends at least one line or sleeps a tick; ends by count/deadline.
    while left > 0 && !past(plan.deadline) {
        let allowed = bucket.allowance(left);
        if allowed == 0 {
            continue;
        }
        let n = pool.fit(line, allowed, TCP_CHUNK_BYTES);
        let chunk = pool.slice(line, n);
        let (written, err) = write_chunk(&mut stream, chunk, plan);
        let lines = if written == chunk.len() {
            n
        } else {
            memchr::memchr_iter(b'\n', &chunk[..written]).count()
        };
        if lines > 0 {
            // Bytes of a line cut by an error are not counted: only whole lines were sent.
            let whole_bytes = pool.slice(line, lines).len();
            c.lines.fetch_add(lines as u64, Ordering::Relaxed);
            c.bytes.fetch_add(whole_bytes as u64, Ordering::Relaxed);
        }
        bucket.spend(lines);
        left -= lines as u64;
        line = (line + lines) % pool.len();
        if let Some(e) = err {
            c.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("blast: send: {e}");
            return;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// `--sequence`: a sender's first sequence number and how lines are named.
#[derive(Debug, Clone, Copy)]
struct Sequence {
    first: u64,
    names: u64,
    timestamp: u64,
}

/// Sends `plan.lines` unique lines numbered from `seq.first`, formatted chunk by chunk.
fn send_tcp_sequence(mut stream: TcpStream, seq: Sequence, plan: &Plan, c: &Counters) {
    use std::io::Write as _;
    let mut bucket = Bucket::new(plan.rate);
    let mut next = seq.first;
    let end = seq.first + plan.lines;
    let mut chunk: Vec<u8> = Vec::with_capacity(TCP_CHUNK_BYTES + 64);
    let mut ends: Vec<usize> = Vec::new();
    // Bounded: each pass sends at least one line or sleeps a tick; ends by count/deadline.
    while next < end && !past(plan.deadline) {
        let allowed = bucket.allowance(end - next);
        if allowed == 0 {
            continue;
        }
        chunk.clear();
        ends.clear();
        let mut n = next;
        while n < next + allowed && chunk.len() < TCP_CHUNK_BYTES {
            let _ = writeln!(chunk, "seq.m{} {n} {}", n % seq.names, seq.timestamp);
            ends.push(chunk.len());
            n += 1;
        }
        let (written, err) = write_chunk(&mut stream, &chunk, plan);
        let lines = ends.partition_point(|&e| e <= written);
        if lines > 0 {
            c.lines.fetch_add(lines as u64, Ordering::Relaxed);
            c.bytes.fetch_add(ends[lines - 1] as u64, Ordering::Relaxed);
        }
        bucket.spend(lines);
        next += lines as u64;
        if let Some(e) = err {
            c.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("blast: send: {e}");
            return;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Writes all of `buf` unless an error, a stall or the deadline stops it; returns the bytes
/// written and the error if one stopped it (the deadline is not an error).
fn write_chunk(stream: &mut TcpStream, buf: &[u8], plan: &Plan) -> (usize, Option<io::Error>) {
    let mut written = 0;
    let mut progress_at = Instant::now();
    // Bounded: each pass writes bytes, or waits SEND_TIMEOUT toward the stall/deadline.
    while written < buf.len() {
        match io::Write::write(stream, &buf[written..]) {
            Ok(0) => return (written, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                written += n;
                progress_at = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if past(plan.deadline) {
                    return (written, None);
                }
                if progress_at.elapsed() >= plan.stall_timeout {
                    let stall = io::Error::new(io::ErrorKind::TimedOut, "peer stalled");
                    return (written, Some(stall));
                }
            }
            Err(e) => return (written, Some(e)),
        }
    }
    (written, None)
}

fn send_udp(socket: UdpSocket, pool: &LinePool, plan: &Plan, c: &Counters) {
    let mut bucket = Bucket::new(plan.rate);
    let mut line = plan.first_line;
    let mut left = plan.lines;
    let mut errors_in_row = 0;
    // Bounded: each pass sends a datagram, sleeps a tick, or counts an error (capped).
    while left > 0 && !past(plan.deadline) {
        let allowed = bucket.allowance(left);
        if allowed == 0 {
            continue;
        }
        let n = pool.fit(line, allowed.min(plan.datagram_lines), plan.datagram_bytes);
        let datagram = pool.slice(line, n);
        match socket.send(datagram) {
            Ok(_) => {
                errors_in_row = 0;
                c.lines.fetch_add(n as u64, Ordering::Relaxed);
                c.bytes.fetch_add(datagram.len() as u64, Ordering::Relaxed);
                bucket.spend(n);
                left -= n as u64;
                line = (line + n) % pool.len();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // ECONNREFUSED reports an earlier datagram that found no listener.
                c.errors.fetch_add(1, Ordering::Relaxed);
                errors_in_row += 1;
                if errors_in_row >= UDP_ERRORS_MAX {
                    eprintln!("blast: send: {e} ({errors_in_row} in a row, giving up)");
                    return;
                }
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Sends `bytes` as one datagram, retrying only an interrupted call.
fn send_datagram(socket: &UdpSocket, bytes: &[u8]) -> io::Result<usize> {
    // Bounded: EINTR needs a signal per pass.
    loop {
        match socket.send(bytes) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Value lists through the collectd encoder, one datagram per packet. Each pass pushes
/// what the bucket allows (at most `PASS_UNITS_MAX`) and flushes, so counts are exact and
/// a limited rate still sends promptly; without a rate, packets go out full.
fn send_collectd(
    socket: UdpSocket,
    traffic: &CollectdTraffic,
    security: SendSecurity,
    plan: &Plan,
    c: &Counters,
) {
    let mut encoder = Encoder::new(EncoderConfig {
        max_packet_bytes: plan.datagram_bytes,
        security,
    });
    let mut scratch = Scratch::default();
    let mut bucket = Bucket::new(plan.rate);
    let mut next = plan.first_line as u64;
    let mut left = plan.lines;
    let mut errors_in_row = 0;
    // Value lists in the packet being filled, and the outcome of the packet just sent.
    let mut in_packet = 0u64;
    let mut account = |sent: io::Result<usize>, value_lists: u64| match sent {
        Ok(bytes) => {
            errors_in_row = 0;
            c.lines.fetch_add(value_lists, Ordering::Relaxed);
            c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            true
        }
        Err(e) => {
            // The packet's value lists are lost, not retried: UDP, as collectd.
            c.errors.fetch_add(1, Ordering::Relaxed);
            errors_in_row += 1;
            if errors_in_row >= UDP_ERRORS_MAX {
                eprintln!("blast: send: {e} ({errors_in_row} in a row, giving up)");
                return false;
            }
            std::thread::sleep(TICK);
            true
        }
    };
    // Bounded: each pass pushes at least one value list or sleeps a tick; ends by count,
    // deadline or the error cap.
    while left > 0 && !past(plan.deadline) {
        let allowed = bucket.allowance(left).min(PASS_UNITS_MAX);
        if allowed == 0 {
            continue;
        }
        for _ in 0..allowed {
            let vl = traffic.value_list(next, &mut scratch);
            next = next.wrapping_add(1);
            let mut sent = None;
            let pushed = encoder.push(&vl, &mut |p: &[u8]| sent = Some(send_datagram(&socket, p)));
            assert!(
                pushed.is_ok(),
                "blast makes only valid value lists: {pushed:?}"
            );
            if let Some(sent) = sent {
                if !account(sent, in_packet) {
                    return;
                }
                in_packet = 0;
            }
            in_packet += 1;
        }
        let mut sent = None;
        encoder.flush(&mut |p: &[u8]| sent = Some(send_datagram(&socket, p)));
        if let Some(sent) = sent {
            if !account(sent, in_packet) {
                return;
            }
        }
        in_packet = 0;
        bucket.spend(allowed as usize);
        left -= allowed;
    }
}

/// Points as carbon pickle frames of at most 500 points; a point counts as sent when its
/// whole frame was written.
fn send_pickle(mut stream: TcpStream, pool: &PointPool, plan: &Plan, c: &Counters) {
    let mut bucket = Bucket::new(plan.rate);
    let mut next = plan.first_line;
    let mut left = plan.lines;
    let mut chunk = Vec::with_capacity(TCP_CHUNK_BYTES);
    let mut frames: Vec<(usize, usize)> = Vec::new(); // (end in chunk, points)
    let mut points: Vec<Point<'_>> = Vec::with_capacity(PICKLE_FRAME_POINTS_MAX);
    // Bounded: each pass sends at least one point or sleeps a tick; ends by count/deadline.
    while left > 0 && !past(plan.deadline) {
        let allowed = bucket.allowance(left).min(PASS_UNITS_MAX);
        if allowed == 0 {
            continue;
        }
        chunk.clear();
        frames.clear();
        let mut todo = allowed as usize;
        while todo > 0 {
            let n = todo.min(PICKLE_FRAME_POINTS_MAX);
            points.clear();
            points.extend((0..n).map(|k| pool.point((next + k) % pool.len())));
            pickle::encode_frame(&points, &mut chunk);
            frames.push((chunk.len(), n));
            next = (next + n) % pool.len();
            todo -= n;
        }
        let (written, err) = write_chunk(&mut stream, &chunk, plan);
        let (mut sent_points, mut sent_bytes) = (0, 0);
        for &(end, n) in frames.iter().take_while(|&&(end, _)| end <= written) {
            sent_points += n;
            sent_bytes = end;
        }
        c.lines.fetch_add(sent_points as u64, Ordering::Relaxed);
        c.bytes.fetch_add(sent_bytes as u64, Ordering::Relaxed);
        bucket.spend(allowed as usize);
        left -= allowed;
        if let Some(e) = err {
            c.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("blast: send: {e}");
            return;
        }
        if written < chunk.len() {
            // The deadline cut a frame: the stream is no longer framed, so stop.
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parses_tcp_and_udp() {
        let e: Endpoint = "tcp://127.0.0.1:2003".parse().unwrap();
        assert_eq!(e.transport, Transport::Tcp);
        assert_eq!(e.addr, "127.0.0.1:2003".parse().unwrap());
        assert_eq!(e.to_string(), "tcp://127.0.0.1:2003");
        let e: Endpoint = " udp://[::1]:8125".parse().unwrap();
        assert_eq!(e.transport, Transport::Udp);
        assert_eq!(e.to_string(), "udp://[::1]:8125");
    }

    #[test]
    fn endpoint_rejects_bad_input() {
        for bad in [
            "127.0.0.1:2003",
            "http://127.0.0.1:1",
            "unix:///tmp/x",
            "tcp://127.0.0.1",
            "udp://127.0.0.1:99999",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn split_count_is_exact() {
        assert_eq!(split_count(10, 3), vec![4, 3, 3]);
        assert_eq!(split_count(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split_count(0, 2), vec![0, 0]);
        for (count, conns) in [(2_000_000, 4), (1_999_999, 7), (1, 1), (u64::MAX, 3)] {
            let parts = split_count(count, conns);
            assert_eq!(parts.len(), conns as usize);
            assert_eq!(
                parts.iter().map(|&p| u128::from(p)).sum::<u128>(),
                count as u128
            );
            assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn pool_is_deterministic() {
        for format in [Format::Graphite, Format::Statsd] {
            let a = LinePool::generate(format, 1000, 7, 1_700_000_000);
            let b = LinePool::generate(format, 1000, 7, 1_700_000_000);
            assert_eq!(a, b);
            let c = LinePool::generate(format, 1000, 8, 1_700_000_000);
            assert_ne!(a.bytes, c.bytes);
        }
    }

    #[test]
    fn pool_holds_every_name_once_per_cycle() {
        let pool = LinePool::generate(Format::Graphite, 1000, 1, 1_700_000_000);
        assert_eq!(pool.len(), 5000); // 4096 rounded up to whole cycles of 1000
        let text = std::str::from_utf8(&pool.bytes).unwrap();
        let names: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
        let mut cycle: Vec<&str> = names[..1000].to_vec();
        cycle.sort_unstable();
        cycle.dedup();
        assert_eq!(cycle.len(), 1000);
        assert_eq!(names[..1000], names[1000..2000]);

        let big = LinePool::generate(Format::Statsd, 10_000, 1, 0);
        assert_eq!(big.len(), 10_000);
    }

    #[test]
    fn graphite_lines_are_well_formed() {
        let pool = LinePool::generate(Format::Graphite, 5000, 3, 1_700_000_000);
        let text = std::str::from_utf8(&pool.bytes).unwrap();
        let mut total = 0;
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 3, "{line:?}");
            assert!(f[0].starts_with("blast.grp"), "{line:?}");
            assert!(f[1].parse::<f64>().is_ok(), "{line:?}");
            assert_eq!(f[2], "1700000000");
            assert_eq!(pool.ends[i] - pool.start(i), line.len() + 1);
            total += line.len() + 1;
        }
        let mean = total / pool.len();
        assert!((40..=50).contains(&mean), "mean line {mean} bytes");
    }

    #[test]
    fn statsd_lines_mix_types_with_one_type_per_name() {
        let pool = LinePool::generate(Format::Statsd, 1000, 3, 0);
        let text = std::str::from_utf8(&pool.bytes).unwrap();
        let mut types = std::collections::HashMap::new();
        for line in text.lines() {
            let (name, rest) = line.split_once(':').unwrap();
            let (value, ty) = rest.split_once('|').unwrap();
            assert!(ty == "s" || value.parse::<f64>().is_ok(), "{line:?}");
            assert!(["c", "ms", "g", "s"].contains(&ty), "{line:?}");
            assert_eq!(*types.entry(name).or_insert(ty), ty, "{name}");
        }
        let count = |t: &str| types.values().filter(|&&v| v == t).count();
        assert_eq!(
            (count("c"), count("ms"), count("g"), count("s")),
            (500, 300, 100, 100)
        );
    }

    #[test]
    fn fit_packs_whole_lines_and_stops_at_pool_end() {
        let pool = LinePool::generate(Format::Graphite, 4096, 1, 1_700_000_000);
        let n = pool.fit(0, u64::MAX, 1400);
        assert!(pool.slice(0, n).len() <= 1400);
        assert!(pool.slice(0, n + 1).len() > 1400);
        assert_eq!(pool.fit(0, 3, 1400), 3);
        assert_eq!(pool.fit(0, u64::MAX, 1), 1);
        let last = pool.len() - 1;
        assert_eq!(pool.fit(last, u64::MAX, 1 << 20), 1);
        assert!(pool.slice(last, 1).ends_with(b"\n"));
        assert_eq!(pool.fit(0, u64::MAX, usize::MAX), pool.len());
    }
    #[test]
    fn collectd_traffic_varies_real_types() {
        let t = CollectdTraffic::new(120, 4, 6, 9, 1_700_000_000);
        let mut scratch = Scratch::default();
        let mut ids = std::collections::HashSet::new();
        let mut hosts = std::collections::HashSet::new();
        for i in 0..120 {
            let vl = t.value_list(i, &mut scratch);
            let want = match vl.type_ {
                b"load" => vec![1, 1, 1],
                b"if_octets" => vec![2, 2],
                b"cpu" => vec![2],
                b"memory" => vec![1],
                b"counter" => vec![0],
                b"absolute" => vec![3],
                other => panic!("type {other:?}"),
            };
            assert_eq!(vl.values.iter().map(|v| v.code()).collect::<Vec<_>>(), want);
            assert_eq!(vl.time, CdTime::from_secs(1_700_000_000));
            hosts.insert(vl.host.to_vec());
            let id = vl.identity().map(<[u8]>::to_vec);
            assert!(ids.insert(id), "name {i} repeats within a cycle");
        }
        assert_eq!(hosts.len(), 4);
        // Cycle 1: same names, later time, derives grown.
        let first: Vec<Value> = t.value_list(5, &mut scratch).values.iter().collect();
        let again = t.value_list(120 + 5, &mut scratch);
        assert_eq!(again.type_, b"load");
        assert_eq!(again.time, CdTime::from_secs(1_700_000_010));
        assert_ne!(again.values.iter().collect::<Vec<_>>(), first);
        let cpu0 = t.value_list(0, &mut scratch).values.get(0);
        let cpu1 = t.value_list(120, &mut scratch).values.get(0);
        match (cpu0, cpu1) {
            (Value::Derive(a), Value::Derive(b)) => assert!(b > a),
            other => panic!("{other:?}"),
        }
        let u = CollectdTraffic::new(120, 4, 6, 9, 1_700_000_000);
        let mut s2 = Scratch::default();
        assert_eq!(t.value_list(77, &mut scratch), u.value_list(77, &mut s2));
    }

    #[test]
    fn collectd_traffic_survives_encode_and_decode() {
        use crate::protocol::collectd::{AuthFile, Decoder, Record, Security};
        let t = CollectdTraffic::new(500, 7, 9, 1, 1_700_000_000);
        let creds = Credentials::new(b"u", b"p").unwrap();
        let mut enc = Encoder::new(EncoderConfig {
            max_packet_bytes: 1452,
            security: SendSecurity::Encrypt(creds),
        });
        let mut packets: Vec<Vec<u8>> = Vec::new();
        let mut scratch = Scratch::default();
        for i in 0..1000 {
            let vl = t.value_list(i, &mut scratch);
            enc.push(&vl, &mut |p: &[u8]| packets.push(p.to_vec()))
                .unwrap();
        }
        enc.flush(&mut |p: &[u8]| packets.push(p.to_vec()));
        assert!(
            packets.len() > 10 && packets.len() < 200,
            "{}",
            packets.len()
        );
        let security =
            Security::new(SecurityLevel::Encrypt, Some(AuthFile::parse(b"u: p"))).unwrap();
        let mut dec = Decoder::new(security);
        let mut i = 0;
        for p in &mut packets {
            dec.decode(p, &mut |r| {
                let Record::Values(vl) = r else {
                    panic!("{r:?}")
                };
                let mut s = Scratch::default();
                assert_eq!(vl, t.value_list(i, &mut s));
                i += 1;
            });
        }
        assert_eq!(i, 1000);
    }

    #[test]
    fn point_pool_frames_decode_to_graphite_points() {
        let pool = PointPool::generate(1000, 3, 1_700_000_000);
        let lines = LinePool::generate(Format::Graphite, 1000, 3, 1_700_000_000);
        assert_eq!(pool.len(), lines.len());
        let points: Vec<Point<'_>> = (0..PICKLE_FRAME_POINTS_MAX)
            .map(|i| pool.point(i))
            .collect();
        let mut frame = Vec::new();
        let len = pickle::encode_frame(&points, &mut frame);
        assert_eq!(len, frame.len());
        let mut got = Vec::new();
        pickle::decode(&frame[4..], |p| {
            got.push(format!(
                "{} {} {}",
                String::from_utf8_lossy(p.name),
                p.value,
                p.timestamp
            ))
        })
        .unwrap();
        let want: Vec<String> = (0..PICKLE_FRAME_POINTS_MAX)
            .map(|i| {
                let l = std::str::from_utf8(lines.slice(i, 1)).unwrap().trim_end();
                let f: Vec<&str> = l.split(' ').collect();
                format!("{} {} {}", f[0], f[1].parse::<f64>().unwrap(), f[2])
            })
            .collect();
        assert_eq!(got, want);
    }

    fn args(line: &str) -> BlastArgs {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            blast: BlastArgs,
        }
        Cli::try_parse_from(std::iter::once("blast").chain(line.split_whitespace()))
            .unwrap()
            .blast
    }

    #[test]
    fn collectd_security_flags_must_fit() {
        let ok = |l: &str| send_security(&args(l));
        assert!(matches!(
            ok("--to udp://127.0.0.1:1 --format collectd"),
            Ok(SendSecurity::None)
        ));
        assert!(matches!(
            ok("--to udp://127.0.0.1:1 --format collectd --security-level encrypt --user u --password p"),
            Ok(SendSecurity::Encrypt(_))
        ));
        for bad in [
            "--to udp://127.0.0.1:1 --format collectd --security-level sign --user u",
            "--to udp://127.0.0.1:1 --format collectd --user u --password p",
            "--to udp://127.0.0.1:1 --security-level sign --user u --password p",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }

    /// Exact totals over real sockets: collectd value lists to a UDP socket, pickle points
    /// to a TCP listener.
    #[test]
    fn binary_formats_send_exact_counts() {
        use crate::protocol::collectd::{Decoder, Security};
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let to = format!("udp://{}", rx.local_addr().unwrap());
        let a = args(&format!(
            "--to {to} --format collectd --count 777 --names 300"
        ));
        run(a).unwrap();
        let mut dec = Decoder::new(Security::default());
        let mut buf = vec![0u8; 65536];
        while dec.stats().value_lists < 777 {
            let n = rx.recv(&mut buf).unwrap();
            dec.decode(&mut buf[..n], &mut |_| {});
        }
        assert_eq!(dec.stats().value_lists, 777);
        assert_eq!(dec.stats().rejected_total(), 0);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = format!("tcp://{}", listener.local_addr().unwrap());
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut all = Vec::new();
            io::Read::read_to_end(&mut s, &mut all).unwrap();
            let (mut at, mut points) = (0, 0);
            while at < all.len() {
                let pickle::Framed::Frame { pickle, consumed } =
                    pickle::split_frame(&all[at..], pickle::FRAME_BYTES_MAX_DEFAULT)
                else {
                    panic!("a whole frame at {at}")
                };
                let d = pickle::decode(pickle, |_| {}).unwrap();
                assert!(d.points <= PICKLE_FRAME_POINTS_MAX);
                points += d.points;
                at += consumed;
            }
            points
        });
        run(args(&format!(
            "--to {to} --format pickle --count 1234 --names 100"
        )))
        .unwrap();
        assert_eq!(reader.join().unwrap(), 1234);
    }
}

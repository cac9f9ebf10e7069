//! The configuration: TOML in, a validated typed [`Config`] out, or every error at once.
//!
//! Each bound is a key with its unit in the name; `configs/cadent.toml` documents them all
//! and `tuning.md` says how to size them.

mod aggregate;
mod collectd;
mod endpoint;
mod reader;
pub mod reread;
mod store;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Table;

pub use aggregate::{Aggregate, AggregateKind, CarbonAggregate, StatsdAggregate};
pub use collectd::{ClusterKey, CollectdListen, CollectdSend, GraphiteOut, OutputFormat};
pub use endpoint::{parse_socket_addr, ListenUrl, Member, Transport, MEMBER_INSTANCE_BYTES_MAX};
use reader::TableReader;
pub use store::{RulesFile, Store, StoreKind, WhisperStore};

/// The configuration `cadent serve` runs when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/default.toml");

/// One configuration mistake, named by its key path (`cluster[0].members[1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `route[2].match.regex`.
    pub path: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every error found in one configuration, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Number of shards (executors pinned one per core); resolved from 0 = all available cores.
    pub shards: usize,
    /// Admin HTTP address (control thread).
    pub admin_listen: SocketAddr,
    /// On SIGTERM/SIGINT, how long writers may spend flushing queued data.
    pub shutdown_timeout_ms: u64,
    /// How often each shard publishes its counters for `/stats`.
    pub stats_interval_ms: u64,
    /// io_uring buffer memory registered per shard (locked memory; see tuning.md).
    pub io_memory_bytes: usize,
    /// Routing decisions remembered per shard, by name (0 = none); 24-byte slots, at most
    /// half full.
    pub route_cache_names_max: usize,
    /// Token that lets a non-loopback client change membership (`Authorization: Bearer`);
    /// without it only loopback clients may.
    pub admin_token: Option<String>,
    /// Cross-shard mesh: a batch of points for another shard is sent at this size.
    pub mesh_batch_bytes: usize,
    /// Cross-shard mesh: bytes one shard may have in flight to another; past it a batch
    /// is dropped and counted (a reader never waits).
    pub mesh_queue_bytes_max: usize,
    /// Cross-shard mesh: partly filled batches are sent, and arrived ones applied, at
    /// least this often.
    pub mesh_interval_ms: u64,
    /// `/tiers`: collectd hosts kept per destination per shard (more are counted).
    pub tiers_hosts_max: usize,
    /// Longest cluster member instance (`host:port=instance`), in bytes; in the config
    /// and in membership requests alike.
    pub member_instance_bytes_max: usize,
    /// File descriptors kept out of the listeners' reach for the admin API, health
    /// probes, writers' reconnects and files: connections past the rest are refused.
    pub reserved_fds: usize,
    /// HTTP connections (admin and read API; Noodle has as many again) open at once;
    /// one past it is closed at once and counted.
    pub admin_connections_max: usize,
    /// An HTTP connection that moves no byte either way for this long is closed (also
    /// the longest a request may take to answer).
    pub admin_idle_timeout_ms: u64,
}

/// `[telemetry]`: cadent's own counters as graphite lines, routed like any input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    /// How often the lines are emitted.
    pub interval_ms: u64,
    /// Name prefix (`cadent.<hostname>` by default; empty: off).
    pub prefix: String,
}

/// `[health]`: how destinations are judged up or down.
#[derive(Debug, Clone)]
pub struct Health {
    /// How often the control thread probes each TCP destination with a connect.
    pub probe_interval_ms: u64,
    /// A probe connect that takes longer fails.
    pub probe_timeout_ms: u64,
    /// Consecutive failures (probes, or intervals in which a writer failed) that mark an
    /// up destination down.
    pub down_after_failures: u32,
}

/// Wire format of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `name value timestamp` lines.
    Graphite,
    /// `name:value|type[|@rate][|#tags]` lines.
    Statsd,
    /// Any line; the key to route by is cut out by the listener's `regex`.
    Regex,
    /// collectd's binary network protocol (UDP datagrams).
    Collectd,
    /// carbon's pickle protocol: length-prefixed pickled lists of datapoints.
    Pickle,
}

impl Format {
    /// The word used in configs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Graphite => "graphite",
            Format::Statsd => "statsd",
            Format::Regex => "regex",
            Format::Collectd => "collectd",
            Format::Pickle => "pickle",
        }
    }
}

/// `[[listen]]`: one ingest endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Name used in stats.
    pub name: String,
    /// Where to bind.
    pub url: ListenUrl,
    /// Line format.
    pub format: Format,
    /// Longest accepted line; longer lines are dropped and counted.
    pub line_bytes_max: usize,
    /// Per-connection (or per-datagram) receive buffer.
    pub read_buffer_bytes: usize,
    /// Open TCP/unix connections per shard on this listener; more are refused and counted.
    pub connections_max: usize,
    /// A stream connection that sends nothing this long is closed (0: never).
    pub idle_timeout_ms: u64,
    /// `SO_RCVBUF` asked of the kernel (0 leaves the kernel default).
    pub socket_receive_buffer_bytes: usize,
    /// UDP: the longest a busy reader that found its socket empty waits before reading
    /// again, so one wakeup takes many datagrams (0: it waits for the next datagram).
    pub datagram_coalesce_us_max: u64,
    /// Graphite: rewrite names as carbon-c-relay does before routing them.
    pub cleanse_names: bool,
    /// Regex format: the regex with a `(?P<Key>...)` group (and `(?P<Timestamp>...)`).
    pub regex: Option<String>,
    /// Regex format: Go reference-time layout (or `unix`) of the Timestamp group.
    pub time_layout: Option<String>,
    /// collectd format (and only it): security level, auth file, types table.
    pub collectd: Option<CollectdListen>,
    /// Pickle format: the largest frame (carbon's MAX_LENGTH); a larger one ends the
    /// connection's use.
    pub frame_bytes_max: usize,
    /// HTTP listeners: the largest request body; a larger one is refused with 413.
    pub body_bytes_max: usize,
    /// unix:// and unixgram:// listeners: the socket file's permission bits (clients
    /// need write permission to connect or send), set after bind; `None` leaves what
    /// the process's umask gave.
    pub socket_mode: Option<u32>,
}

/// Ring or fan-out kind of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// carbon-c-relay's md5 ring.
    CarbonCh,
    /// carbon-c-relay's FNV-1a ring.
    Fnv1aCh,
    /// carbon-c-relay's jump consistent hash over FNV-1a 64.
    JumpFnv1aCh,
    /// python carbon's md5 ring (collisions bumped, so member order matters).
    CarbonChPython,
    /// The ring of statsd's proxy (node hashring 3.x).
    StatsdHashring,
    /// Coco 1.0.1's ring (collectd hosts; placement by member count and order only).
    Coco,
    /// FNV-1a modulo the member count; a dead member's share spreads over the live ones.
    AnyOf,
    /// The first live member in list order.
    Failover,
    /// Every member gets every metric.
    Forward,
    /// A rotating file per shard (no members).
    File,
}

impl ClusterKind {
    /// Every kind, for error messages.
    pub const ALL: [ClusterKind; 10] = [
        ClusterKind::CarbonCh,
        ClusterKind::Fnv1aCh,
        ClusterKind::JumpFnv1aCh,
        ClusterKind::CarbonChPython,
        ClusterKind::StatsdHashring,
        ClusterKind::Coco,
        ClusterKind::AnyOf,
        ClusterKind::Failover,
        ClusterKind::Forward,
        ClusterKind::File,
    ];

    /// The word used in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterKind::CarbonCh => "carbon_ch",
            ClusterKind::Fnv1aCh => "fnv1a_ch",
            ClusterKind::JumpFnv1aCh => "jump_fnv1a_ch",
            ClusterKind::CarbonChPython => "carbon_ch_python",
            ClusterKind::StatsdHashring => "statsd_hashring",
            ClusterKind::Coco => "coco",
            ClusterKind::AnyOf => "any_of",
            ClusterKind::Failover => "failover",
            ClusterKind::Forward => "forward",
            ClusterKind::File => "file",
        }
    }

    /// A hash ring (`replication` and `on_down` apply).
    pub fn is_ring(self) -> bool {
        matches!(
            self,
            ClusterKind::CarbonCh
                | ClusterKind::Fnv1aCh
                | ClusterKind::JumpFnv1aCh
                | ClusterKind::CarbonChPython
                | ClusterKind::StatsdHashring
                | ClusterKind::Coco
        )
    }
}

/// What a ring cluster does with the keys of a member that is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDown {
    /// Keep them on their owner: its queue holds them until it returns (bounded).
    Queue,
    /// Send them to the next live distinct member of the ring walk, and back to the owner
    /// when it returns (carbon-c-relay's `dynamic`).
    Reroute,
}

/// Settings of a `kind = "file"` cluster.
#[derive(Debug, Clone)]
pub struct FileSink {
    /// Base path; each shard writes `<stem>-<shard>.<ext>` beside it.
    pub path: PathBuf,
    /// Rotate a shard's file when it reaches this size.
    pub rotate_bytes: u64,
    /// Rotated files kept per shard (`.1` .. `.N`).
    pub keep_files: usize,
}

/// `[[cluster]]`: a named set of destinations and how names map onto them.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Name used by routes and stats.
    pub name: String,
    /// How names are spread over members.
    pub kind: ClusterKind,
    /// Members that get each name (`*_ch` kinds).
    pub replication: usize,
    /// Members, in config order.
    pub members: Vec<Member>,
    /// File settings (file kind only).
    pub file: Option<FileSink>,
    /// Ring kinds: what happens to the keys of a member that is down.
    pub on_down: OnDown,
    /// `carbon_ch_python`: replicas skip hosts already chosen (carbon's DIVERSE_REPLICAS).
    pub diverse_replicas: bool,
    /// Hashing kinds (rings, any_of): what they hash of a collectd value list (`key`);
    /// `None` when not written (then the host).
    pub key: Option<ClusterKey>,
    /// What the members receive (`format`), with that format's settings.
    pub format: OutputFormat,
    /// Disk spool per member (over all shards), overriding `output.spool_bytes_max`;
    /// `Some(0)`: its members never spool.
    pub spool_bytes_max: Option<u64>,
}

impl Cluster {
    /// What the cluster hashes of a collectd value list.
    pub fn collectd_key(&self) -> ClusterKey {
        self.key.unwrap_or(ClusterKey::Host)
    }

    /// Whether the cluster places collectd hosts (Coco's tiers): a ring that hashes the
    /// host, written as `key = "host"` or implied by `kind = "coco"`. `/lookup` and
    /// `/tiers` list these.
    pub fn host_keyed(&self) -> bool {
        self.kind.is_ring()
            && match self.key {
                Some(k) => k == ClusterKey::Host,
                None => self.kind == ClusterKind::Coco,
            }
    }
}

/// What a route matches on the metric name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Name starts with the string.
    Prefix(String),
    /// Name contains the string.
    Substring(String),
    /// Unanchored regex search on the name.
    Regex(String),
    /// Every name.
    All,
}

/// What `send_to` names: a cluster or a store (they share one namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sink {
    /// Index into [`Config::clusters`].
    Cluster(usize),
    /// Index into [`Config::stores`].
    Store(usize),
}

/// What a matching route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Drop the metric (counted per rule).
    Drop,
    /// Send to these clusters and stores.
    SendTo(Vec<Sink>),
    /// Hand to this aggregator (index into [`Config::aggregates`]).
    Aggregate(usize),
}

/// `[[route]]`: one rule; rules are tried in order.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name used in stats (`route[i]` unless given).
    pub name: String,
    /// What it matches.
    pub matcher: Match,
    /// What it does.
    pub action: Action,
    /// Keep trying later rules after this one matched.
    pub continue_matching: bool,
    /// carbon-c-relay rewrite applied to matching names before hashing.
    pub rewrite: Option<RewriteSpec>,
    /// Where the points this route takes come from: listener names, and
    /// `aggregate:NAME` for what aggregator NAME flushes; empty: every listener (an
    /// aggregator's output is taken only by routes that name it).
    pub from: Vec<String>,
}

/// `rewrite = { regex = "...", into = "..." }` of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteSpec {
    /// Regex searched in the name.
    pub regex: String,
    /// Template: `\1`, `\_1` (lowercase), `\^1` (uppercase), `\.1` (dots to `_`).
    pub into: String,
}

/// `[output]`: how writers batch, queue and reconnect (per shard and destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// A batch is sealed and queued for writing once it holds this many bytes.
    pub flush_bytes: usize,
    /// Partly filled batches are sealed at least this often.
    pub flush_interval_ms: u64,
    /// Queued bytes per destination per shard; past it the oldest batch is dropped and counted.
    pub queue_bytes_max: usize,
    /// How long a TCP reader waits for a full queue of a live destination before reading on.
    pub stall_ms_max: u64,
    /// TCP connect timeout.
    pub connect_timeout_ms: u64,
    /// A TCP write that makes no progress this long fails; the writer reconnects.
    pub write_timeout_ms: u64,
    /// Most bytes a TCP connection keeps of what the peer's kernel acknowledged and its
    /// process may not have read, to write again if the connection is reset (0: none).
    pub resend_unread_bytes_max: usize,
    /// First reconnect delay; doubles per failure.
    pub reconnect_backoff_min_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_backoff_max_ms: u64,
    /// Largest UDP datagram a writer sends (lines are packed up to it).
    pub udp_datagram_bytes_max: usize,
    /// Destinations live or still draining after their removal, at most; a change that
    /// would pass it is refused (each costs a queue and a writer on every shard).
    pub destinations_max: usize,
    /// Where TCP destinations spool what they cannot take (one directory per destination
    /// and shard below it); `None` (`spool_dir = ""`): no spool.
    pub spool_dir: Option<PathBuf>,
    /// Disk per destination (over all shards), framing included; clusters may override.
    pub spool_bytes_max: u64,
    /// Group commit: a spool syncs what was appended at least this often.
    pub spool_fsync_interval_ms: u64,
    /// A spool segment file is sealed at this size.
    pub spool_segment_bytes: u64,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: Server,
    /// `[[listen]]`, in order.
    pub listeners: Vec<Listener>,
    /// `[[cluster]]`, in order.
    pub clusters: Vec<Cluster>,
    /// `[[route]]`, in order.
    pub routes: Vec<Route>,
    /// `[output]`.
    pub output: Output,
    /// `[health]`.
    pub health: Health,
    /// `[[aggregate]]`, in order.
    pub aggregates: Vec<Aggregate>,
    /// `[[store]]`, in order.
    pub stores: Vec<Store>,
    /// `[telemetry]`.
    pub telemetry: Telemetry,
    /// `[noodle]`: the Visage proxy, when configured.
    pub noodle: Option<Noodle>,
}

/// `[noodle]`: Noodle's Visage proxy. `GET /data/<host>/...` is proxied to the member
/// that owns `<host>` in a host-keyed cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noodle {
    /// Where the proxy listens (HTTP).
    pub listen: SocketAddr,
    /// The host-keyed cluster whose members answer (index into `Config::clusters`).
    pub cluster: usize,
    /// The port Visage answers on at a member's host; `None`: port 80 (Noodle's default).
    pub remote_port: Option<u16>,
    /// An upstream request that takes longer is answered 504.
    pub timeout_ms: u64,
    /// Largest upstream answer read; a larger one is answered 502.
    pub response_bytes_max: usize,
}

/// The aggregator a route's `from` entry names (`aggregate:NAME`), if it names one.
pub fn aggregate_origin(from: &str) -> Option<&str> {
    from.strip_prefix("aggregate:")
}

/// Largest config file read (a config is text a person wrote; this stops `/dev/zero`).
pub const CONFIG_FILE_BYTES_MAX: u64 = 16 << 20;
/// Largest carbon aggregation-rules file read.
pub const RULES_FILE_BYTES_MAX: u64 = 16 << 20;

/// `line_bytes_max` of a statsd listener by default: the largest UDP payload (65,535
/// less the IPv4 and UDP headers), so a line that fits a datagram fits a stream too.
pub const STATSD_LINE_BYTES_DEFAULT: u64 = 65_507;

/// Reads a text file of at most `max` bytes, refusing a larger (or endless) one.
pub fn read_text_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes; not a config file"),
        ));
    }
    String::from_utf8(buf)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

impl Config {
    /// Parses and validates a configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError::new("(syntax)", e.to_string().trim_end())])
        })?;
        let mut errs = Vec::new();
        let cfg = read_config(&table, &mut errs);
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// A config with no listeners, clusters, routes or aggregators and every setting at
    /// its default (what a shard holds before its first topology).
    pub fn empty() -> Config {
        read_config(&Table::new(), &mut Vec::new())
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = read_text_bounded(path, CONFIG_FILE_BYTES_MAX)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Config::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid config:\n{e}", path.display()))
    }

    /// Checks cluster `index` after its members changed at run time, as loading would.
    pub fn check_cluster(&self, index: usize) -> Result<(), ConfigErrors> {
        let c = &self.clusters[index];
        let mut errs = Vec::new();
        if c.kind == ClusterKind::File {
            errs.push(ConfigError::new(
                format!("cluster[{index}]"),
                "a file cluster has no members",
            ));
        } else if c.members.is_empty() {
            errs.push(ConfigError::new(
                format!("cluster[{index}].members"),
                "needs at least one member",
            ));
        } else {
            let path = format!("cluster[{index}].");
            check_members(c.kind, c.replication, &c.members, &path, &mut errs);
            collectd::check_members(&c.format, &c.members, &path, &mut errs);
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Index of the cluster named `name`.
    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| c.name == name)
    }

    /// Index of the aggregator named `name`.
    pub fn aggregate_index(&self, name: &str) -> Option<usize> {
        self.aggregates.iter().position(|a| a.name == name)
    }

    /// Index of the store named `name`.
    pub fn store_index(&self, name: &str) -> Option<usize> {
        self.stores.iter().position(|s| s.name == name)
    }
}

/// Resolves a `send_to` list against the clusters and stores; `path` is its key path.
pub(crate) fn resolve_send_to(
    names: &[String],
    clusters: &[Cluster],
    stores: &[Store],
    path: &str,
    errs: &mut Vec<ConfigError>,
) -> Vec<Sink> {
    let mut out = Vec::with_capacity(names.len());
    for (j, c) in names.iter().enumerate() {
        let sink = clusters
            .iter()
            .position(|cl| &cl.name == c)
            .map(Sink::Cluster)
            .or_else(|| stores.iter().position(|s| &s.name == c).map(Sink::Store));
        match sink {
            Some(s) if out.contains(&s) => errs.push(ConfigError::new(
                format!("{path}[{j}]"),
                format!("{c:?} is listed twice"),
            )),
            Some(s) => out.push(s),
            None => errs.push(ConfigError::new(
                format!("{path}[{j}]"),
                format!("no [[cluster]] or [[store]] is named {c:?}"),
            )),
        }
    }
    out
}

fn read_config(root: &Table, errs: &mut Vec<ConfigError>) -> Config {
    let mut top = TableReader::new(root, "");
    let server_t = top.table("server", errs);
    let output_t = top.table("output", errs);
    let health_t = top.table("health", errs);
    let telemetry_t = top.table("telemetry", errs);
    let listen_ts = top.tables("listen", errs);
    let cluster_ts = top.tables("cluster", errs);
    let aggregate_ts = top.tables("aggregate", errs);
    let store_ts = top.tables("store", errs);
    let route_ts = top.tables("route", errs);
    let noodle_t = top.table("noodle", errs);
    top.finish(errs);

    let empty = Table::new();
    let server = read_server(server_t.unwrap_or(&empty), errs);
    let output = read_output(output_t.unwrap_or(&empty), errs);
    let health = read_health(health_t.unwrap_or(&empty), errs);
    let telemetry = read_telemetry(telemetry_t.unwrap_or(&empty), errs);
    let listeners: Vec<Listener> = listen_ts
        .iter()
        .enumerate()
        .map(|(i, t)| read_listener(t, i, errs))
        .collect();
    check_unique(listeners.iter().map(|l| l.name.as_str()), "listen", errs);
    check_listen_addresses(&listeners, errs);
    let clusters: Vec<Cluster> = cluster_ts
        .iter()
        .enumerate()
        .map(|(i, t)| read_cluster(t, i, server.member_instance_bytes_max, errs))
        .collect();
    check_unique(clusters.iter().map(|c| c.name.as_str()), "cluster", errs);
    check_shared_members(&clusters, errs);
    let noodle = noodle_t.map(|t| read_noodle(t, &clusters, errs));
    let stores: Vec<Store> = store_ts
        .iter()
        .enumerate()
        .map(|(i, t)| store::read_store(t, i, errs))
        .collect();
    check_unique(stores.iter().map(|s| s.name.as_str()), "store", errs);
    for (i, s) in stores.iter().enumerate() {
        if clusters.iter().any(|c| c.name == s.name) {
            errs.push(ConfigError::new(
                format!("store[{i}].name"),
                format!(
                    "{:?} is also a [[cluster]]; send_to names either, so they must differ",
                    s.name
                ),
            ));
        }
        let StoreKind::Whisper(w) = &s.kind;
        if let Some(k) = stores[..i].iter().position(|o| {
            let StoreKind::Whisper(ow) = &o.kind;
            ow.path == w.path
        }) {
            errs.push(ConfigError::new(
                format!("store[{i}].path"),
                format!("is store[{k}]'s path too; a whisper file has exactly one writer"),
            ));
        }
        if let Some(a) = w.carbonlink_listen {
            if a == server.admin_listen {
                errs.push(ConfigError::new(
                    format!("store[{i}].carbonlink_listen"),
                    "is server.admin_listen",
                ));
            }
        }
    }
    let aggregates: Vec<aggregate::Aggregate> = aggregate_ts
        .iter()
        .enumerate()
        .map(|(i, t)| aggregate::read_aggregate(t, i, &clusters, &stores, errs))
        .collect();
    check_unique(
        aggregates.iter().map(|a| a.name.as_str()),
        "aggregate",
        errs,
    );
    let routes: Vec<Route> = route_ts
        .iter()
        .enumerate()
        .map(|(i, t)| read_route(t, i, &clusters, &stores, &aggregates, &listeners, errs))
        .collect();
    for (i, a) in aggregates.iter().enumerate() {
        let claimed = routes.iter().any(|r| {
            r.from
                .iter()
                .any(|f| aggregate_origin(f) == Some(a.name.as_str()))
        });
        // A send_to whose names are wrong has its own errors already.
        let written = aggregate_ts
            .get(i)
            .and_then(|t| t.get("send_to"))
            .and_then(|v| v.as_array())
            .is_some_and(|names| !names.is_empty());
        if a.send_to.is_empty() && !claimed && !written {
            errs.push(ConfigError::new(
                format!("aggregate[{i}].send_to"),
                "is required unless a route has this aggregator in its `from`: its output would go nowhere",
            ));
        }
        if !routes.iter().any(|r| r.action == Action::Aggregate(i)) {
            errs.push(ConfigError::new(
                format!("aggregate[{i}]"),
                format!(
                    "no route hands points to {:?} (aggregate = {:?})",
                    a.name, a.name
                ),
            ));
        }
    }
    // A metric's name goes through at most one rewrite per route; the stage is a u8.
    if routes.iter().filter(|r| r.rewrite.is_some()).count() > u8::MAX as usize {
        errs.push(ConfigError::new(
            "route",
            format!("more than {} routes with a rewrite", u8::MAX),
        ));
    }
    // Readers wait while a queue cannot take another read's worth plus an open batch; a
    // bound below twice that would make them wait on nearly every read.
    let read_max = listeners
        .iter()
        .map(|l| l.read_buffer_bytes)
        .max()
        .unwrap_or(0);
    let needed = 2 * (read_max + output.flush_bytes);
    if output.queue_bytes_max < needed {
        errs.push(ConfigError::new(
            "output.queue_bytes_max",
            format!(
                "{} is below 2 x (largest read_buffer_bytes {read_max} + flush_bytes {}) = {needed}",
                output.queue_bytes_max, output.flush_bytes
            ),
        ));
    }
    let distinct: std::collections::HashSet<String> = clusters
        .iter()
        .flat_map(|c| {
            c.members
                .iter()
                .map(|m| m.address_key())
                .chain(c.file.iter().map(|f| format!("file:{}", f.path.display())))
        })
        .collect();
    if distinct.len() > output.destinations_max {
        errs.push(ConfigError::new(
            "output.destinations_max",
            format!(
                "{} is below the {} distinct destinations the clusters list",
                output.destinations_max,
                distinct.len()
            ),
        ));
    }
    if listeners.is_empty() && errs.is_empty() {
        errs.push(ConfigError::new(
            "listen",
            "no [[listen]]: cadent would receive nothing",
        ));
    }
    Config {
        server,
        listeners,
        clusters,
        routes,
        output,
        health,
        aggregates,
        stores,
        telemetry,
        noodle,
    }
}

fn read_noodle(t: &Table, clusters: &[Cluster], errs: &mut Vec<ConfigError>) -> Noodle {
    let mut r = TableReader::new(t, "noodle");
    let listen_s = r.req_str("listen", errs);
    let listen = parse_socket_addr(&listen_s).unwrap_or_else(|e| {
        if !listen_s.is_empty() {
            errs.push(ConfigError::new(r.key_path("listen"), e));
        }
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let name = r.req_str("cluster", errs);
    let cluster = match clusters.iter().position(|c| c.name == name) {
        Some(i) if clusters[i].host_keyed() => i,
        Some(_) => {
            errs.push(ConfigError::new(
                r.key_path("cluster"),
                format!("cluster {name:?} does not place collectd hosts (a ring with key = \"host\", or kind = \"coco\")"),
            ));
            0
        }
        None => {
            if !name.is_empty() {
                errs.push(ConfigError::new(
                    r.key_path("cluster"),
                    format!("no [[cluster]] is named {name:?}"),
                ));
            }
            0
        }
    };
    let remote_port = t
        .contains_key("remote_port")
        .then(|| r.uint("remote_port", 80, 1, 65535, errs) as u16);
    let timeout_ms = r.uint("timeout_ms", 3_000, 1, 600_000, errs);
    let response_bytes_max = r.uint("response_bytes_max", 64 << 20, 1024, 1 << 32, errs) as usize;
    r.finish(errs);
    Noodle {
        listen,
        cluster,
        remote_port,
        timeout_ms,
        response_bytes_max,
    }
}

fn read_telemetry(t: &Table, errs: &mut Vec<ConfigError>) -> Telemetry {
    let mut r = TableReader::new(t, "telemetry");
    let interval_ms = r.uint("interval_ms", 60_000, 100, 86_400_000, errs);
    let prefix = match r.opt_str("prefix", errs) {
        Some(p) => p,
        None => default_telemetry_prefix(),
    };
    if prefix.starts_with('.')
        || prefix.ends_with('.')
        || prefix.contains("..")
        || prefix.contains(char::is_whitespace)
    {
        errs.push(ConfigError::new(
            r.key_path("prefix"),
            format!("{prefix:?} is not a graphite name prefix (dots between segments, no spaces)"),
        ));
    }
    r.finish(errs);
    Telemetry {
        interval_ms,
        prefix,
    }
}

/// `cadent.<hostname>`, with the host name's dots made `_` (as carbon does for
/// `carbon.agents.<host>`).
pub fn default_telemetry_prefix() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our stack buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if host.is_empty() {
        "cadent.localhost".into()
    } else {
        format!("cadent.{host}")
    }
}

fn read_health(t: &Table, errs: &mut Vec<ConfigError>) -> Health {
    let mut r = TableReader::new(t, "health");
    let h = Health {
        probe_interval_ms: r.uint("probe_interval_ms", 1_000, 10, 600_000, errs),
        probe_timeout_ms: r.uint("probe_timeout_ms", 1_000, 1, 60_000, errs),
        down_after_failures: r.uint("down_after_failures", 3, 1, 1_000, errs) as u32,
    };
    r.finish(errs);
    h
}

fn read_server(t: &Table, errs: &mut Vec<ConfigError>) -> Server {
    let mut r = TableReader::new(t, "server");
    let shards = r.uint("shards", 0, 0, 1024, errs) as usize;
    let admin = r.str_or("admin_listen", "127.0.0.1:8080", errs);
    let admin_listen = match parse_socket_addr(&admin) {
        Ok(a) => a,
        Err(e) => {
            errs.push(ConfigError::new(r.key_path("admin_listen"), e));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        }
    };
    let shutdown_timeout_ms = r.uint("shutdown_timeout_ms", 5_000, 0, 600_000, errs);
    let stats_interval_ms = r.uint("stats_interval_ms", 500, 10, 60_000, errs);
    let io_memory_bytes = r.uint("io_memory_bytes", 2 << 20, 64 << 10, 1 << 30, errs) as usize;
    let route_cache_names_max = r.uint("route_cache_names_max", 500_000, 0, 1 << 30, errs) as usize;
    let admin_token = r.opt_str("admin_token", errs);
    let mesh_batch_bytes = r.uint("mesh_batch_bytes", 64 << 10, 1 << 10, 16 << 20, errs) as usize;
    let mesh_queue_bytes_max =
        r.uint("mesh_queue_bytes_max", 8 << 20, 64 << 10, 4 << 30, errs) as usize;
    let mesh_interval_ms = r.uint("mesh_interval_ms", 50, 1, 1_000, errs);
    let tiers_hosts_max = r.uint("tiers_hosts_max", 1_000, 0, 1 << 24, errs) as usize;
    let reserved_fds = r.uint("reserved_fds", 256, 16, 1 << 20, errs) as usize;
    // 64, or half of a smaller reserved_fds when it is not set.
    let admin_connections_set = t.contains_key("admin_connections_max");
    let admin_connections_max = r.uint("admin_connections_max", 64, 1, 1 << 20, errs) as usize;
    let admin_connections_max = if admin_connections_set {
        admin_connections_max
    } else {
        admin_connections_max.min(reserved_fds / 2)
    };
    let admin_idle_timeout_ms = r.uint("admin_idle_timeout_ms", 60_000, 100, 3_600_000, errs);
    if admin_connections_max > reserved_fds / 2 {
        errs.push(ConfigError::new(
            r.key_path("admin_connections_max"),
            format!(
                "is more than half of reserved_fds ({reserved_fds}), which HTTP connections \
                 share with health probes, reconnects and files: raise reserved_fds too"
            ),
        ));
    }
    let member_instance_bytes_max = r.uint(
        "member_instance_bytes_max",
        256,
        1,
        endpoint::MEMBER_INSTANCE_BYTES_MAX as u64,
        errs,
    ) as usize;
    if mesh_queue_bytes_max < 2 * mesh_batch_bytes {
        errs.push(ConfigError::new(
            r.key_path("mesh_queue_bytes_max"),
            format!("must hold at least two batches of mesh_batch_bytes ({mesh_batch_bytes})"),
        ));
    }
    if admin_token.as_deref() == Some("") {
        errs.push(ConfigError::new(
            r.key_path("admin_token"),
            "must not be empty (leave it out to allow loopback clients only)",
        ));
    }
    r.finish(errs);
    Server {
        shards,
        admin_listen,
        shutdown_timeout_ms,
        stats_interval_ms,
        io_memory_bytes,
        route_cache_names_max,
        admin_token,
        mesh_batch_bytes,
        mesh_queue_bytes_max,
        mesh_interval_ms,
        tiers_hosts_max,
        member_instance_bytes_max,
        reserved_fds,
        admin_connections_max,
        admin_idle_timeout_ms,
    }
}

fn read_output(t: &Table, errs: &mut Vec<ConfigError>) -> Output {
    let mut r = TableReader::new(t, "output");
    let out = Output {
        flush_bytes: r.uint("flush_bytes", 64 * 1024, 512, 16 << 20, errs) as usize,
        flush_interval_ms: r.uint("flush_interval_ms", 100, 1, 60_000, errs),
        queue_bytes_max: r.uint("queue_bytes_max", 32 << 20, 64 * 1024, 64 << 30, errs) as usize,
        stall_ms_max: r.uint("stall_ms_max", 2_000, 0, 60_000, errs),
        connect_timeout_ms: r.uint("connect_timeout_ms", 1_000, 1, 60_000, errs),
        write_timeout_ms: r.uint("write_timeout_ms", 10_000, 1, 600_000, errs),
        resend_unread_bytes_max: r.uint("resend_unread_bytes_max", 4 << 20, 0, 1 << 30, errs)
            as usize,
        reconnect_backoff_min_ms: r.uint("reconnect_backoff_min_ms", 100, 1, 60_000, errs),
        reconnect_backoff_max_ms: r.uint("reconnect_backoff_max_ms", 5_000, 1, 600_000, errs),
        udp_datagram_bytes_max: r.uint("udp_datagram_bytes_max", 1_400, 64, 65_507, errs) as usize,
        destinations_max: r.uint(
            "destinations_max",
            16_384,
            1,
            crate::route::DESTINATION_IDS_MAX as u64,
            errs,
        ) as usize,
        spool_dir: match r.str_or("spool_dir", "./data/spool", errs) {
            d if d.is_empty() => None,
            d => Some(PathBuf::from(d)),
        },
        spool_bytes_max: r.uint("spool_bytes_max", 1 << 30, 0, 1 << 50, errs),
        spool_fsync_interval_ms: r.uint("spool_fsync_interval_ms", 200, 1, 60_000, errs),
        spool_segment_bytes: r.uint(
            "spool_segment_bytes",
            crate::output::spool::Limits::SEGMENT_BYTES_DEFAULT,
            crate::output::spool::Limits::SEGMENT_BYTES_MIN,
            crate::output::spool::Limits::SEGMENT_BYTES_MAX,
            errs,
        ),
    };
    if out.reconnect_backoff_min_ms > out.reconnect_backoff_max_ms {
        errs.push(ConfigError::new(
            "output.reconnect_backoff_min_ms",
            "is larger than output.reconnect_backoff_max_ms",
        ));
    }
    let record_bytes = out.flush_bytes as u64
        + crate::output::spool::format::RECORD_OVERHEAD_BYTES as u64
        + crate::output::spool::format::SEGMENT_HEADER_BYTES as u64;
    if out.spool_dir.is_some() && out.spool_segment_bytes < record_bytes {
        errs.push(ConfigError::new(
            "output.spool_segment_bytes",
            format!("cannot hold a batch: at least flush_bytes + 56 = {record_bytes}"),
        ));
    }
    if out.flush_bytes > out.queue_bytes_max {
        errs.push(ConfigError::new(
            "output.flush_bytes",
            "is larger than output.queue_bytes_max: no batch would ever fit the queue",
        ));
    }
    r.finish(errs);
    out
}

fn read_listener(t: &Table, i: usize, errs: &mut Vec<ConfigError>) -> Listener {
    let mut r = TableReader::new(t, format!("listen[{i}]"));
    let name = r.req_str("name", errs);
    if name.is_empty() && t.contains_key("name") {
        errs.push(ConfigError::new(r.key_path("name"), "must not be empty"));
    }
    let url_s = r.req_str("url", errs);
    let url = if url_s.is_empty() {
        ListenUrl::Inet(Transport::Tcp, SocketAddr::from(([127, 0, 0, 1], 0)))
    } else {
        ListenUrl::parse(&url_s).unwrap_or_else(|e| {
            errs.push(ConfigError::new(r.key_path("url"), e));
            ListenUrl::Inet(Transport::Tcp, SocketAddr::from(([127, 0, 0, 1], 0)))
        })
    };
    let format_s = r.req_str("format", errs);
    let format = match format_s.as_str() {
        "graphite" => Format::Graphite,
        "statsd" => Format::Statsd,
        "regex" => Format::Regex,
        "collectd" => Format::Collectd,
        "pickle" => Format::Pickle,
        "" => Format::Graphite,
        other => {
            errs.push(ConfigError::new(
                r.key_path("format"),
                format!(
                    "unknown format {other:?} (expected graphite, statsd, regex, collectd or pickle)"
                ),
            ));
            Format::Graphite
        }
    };
    let read_buffer_bytes =
        r.uint("read_buffer_bytes", 64 * 1024, 4 * 1024, 16 << 20, errs) as usize;
    // statsd over a stream: a line as long as the longest datagram (Etsy's TCP server
    // caps none; packed timer lines run long), within the connection's buffer.
    let line_default = if format == Format::Statsd {
        STATSD_LINE_BYTES_DEFAULT.min(read_buffer_bytes as u64 - 1)
    } else {
        16 * 1024
    };
    let line_bytes_max = r.uint("line_bytes_max", line_default, 64, 1 << 20, errs) as usize;
    let connections_max = r.uint("connections_max", 1024, 1, 1 << 20, errs) as usize;
    let idle_timeout_ms = r.uint("idle_timeout_ms", 120_000, 0, 86_400_000, errs);
    // collectd senders burst a whole interval at once, and the protocol is UDP only.
    let receive_default = if format == Format::Collectd {
        16 << 20
    } else {
        4 << 20
    };
    let socket_receive_buffer_bytes = r.uint(
        "socket_receive_buffer_bytes",
        receive_default,
        0,
        1 << 30,
        errs,
    ) as usize;
    let datagram_coalesce_us_max = r.uint("datagram_coalesce_us_max", 2_000, 0, 100_000, errs);
    if t.contains_key("datagram_coalesce_us_max")
        && !matches!(url, ListenUrl::Inet(Transport::Udp, _))
    {
        errs.push(ConfigError::new(
            r.key_path("datagram_coalesce_us_max"),
            "applies to udp:// listeners only",
        ));
    }
    let cleanse_present = t.contains_key("cleanse_names");
    let cleanse_names = r.boolean("cleanse_names", format == Format::Graphite, errs);
    if cleanse_present && cleanse_names && format != Format::Graphite {
        errs.push(ConfigError::new(
            r.key_path("cleanse_names"),
            "applies to graphite listeners only",
        ));
    }
    let regex = r.opt_str("regex", errs);
    let time_layout = r.opt_str("time_layout", errs);
    match (&regex, format) {
        (Some(re), Format::Regex) => {
            if let Err(e) = crate::protocol::regex_line::RegexLine::new(re, time_layout.as_deref())
            {
                errs.push(ConfigError::new(r.key_path("regex"), e));
            }
        }
        (None, Format::Regex) => errs.push(ConfigError::new(
            r.key_path("regex"),
            "is required for format = \"regex\" (with a (?P<Key>...) group)",
        )),
        (Some(_), _) => errs.push(ConfigError::new(
            r.key_path("regex"),
            "applies to format = \"regex\" only",
        )),
        (None, _) => {}
    }
    if time_layout.is_some() && format != Format::Regex {
        errs.push(ConfigError::new(
            r.key_path("time_layout"),
            "applies to format = \"regex\" only",
        ));
    }
    let frame_present = t.contains_key("frame_bytes_max");
    let frame_bytes_max = r.uint(
        "frame_bytes_max",
        crate::protocol::pickle::FRAME_BYTES_MAX_DEFAULT as u64,
        64,
        1 << 30,
        errs,
    ) as usize;
    if frame_present && format != Format::Pickle {
        errs.push(ConfigError::new(
            r.key_path("frame_bytes_max"),
            "applies to format = \"pickle\" only",
        ));
    }
    let socket_mode = r.opt_str("socket_mode", errs).and_then(|m| {
        let octal = (3..=4).contains(&m.len()) && m.bytes().all(|b| (b'0'..=b'7').contains(&b));
        let problem = if !matches!(url, ListenUrl::Unix(_) | ListenUrl::UnixDatagram(_)) {
            "applies to unix:// and unixgram:// listeners only".to_string()
        } else if !octal {
            format!(
                "{m:?}: expected octal permission bits as a string, such as \"0666\" or \"0660\""
            )
        } else {
            return u32::from_str_radix(&m, 8).ok();
        };
        errs.push(ConfigError::new(r.key_path("socket_mode"), problem));
        None
    });
    let body_present = t.contains_key("body_bytes_max");
    let body_bytes_max = r.uint("body_bytes_max", 8 << 20, 1 << 10, 1 << 30, errs) as usize;
    let http = matches!(url, ListenUrl::Http(..));
    if body_present && !http {
        errs.push(ConfigError::new(
            r.key_path("body_bytes_max"),
            "applies to http:// listeners only",
        ));
    }
    if http && format == Format::Pickle {
        errs.push(ConfigError::new(
            r.key_path("format"),
            "an http:// listener takes lines (graphite, statsd or regex), not pickle",
        ));
    }
    if format == Format::Pickle
        && matches!(
            url,
            ListenUrl::Inet(Transport::Udp, _) | ListenUrl::UnixDatagram(_)
        )
    {
        errs.push(ConfigError::new(
            r.key_path("url"),
            "pickle frames come over a stream (tcp:// or unix://)",
        ));
    }
    if line_bytes_max >= read_buffer_bytes {
        errs.push(ConfigError::new(
            r.key_path("line_bytes_max"),
            format!("must be smaller than read_buffer_bytes ({read_buffer_bytes})"),
        ));
    }
    let collectd = collectd::read_listen(&mut r, t, format, errs);
    if format == Format::Collectd && !matches!(url, ListenUrl::Inet(Transport::Udp, _)) {
        errs.push(ConfigError::new(
            r.key_path("url"),
            "a collectd listener is udp://host:port (collectd's network protocol is UDP)",
        ));
    }
    r.finish(errs);
    Listener {
        name,
        url,
        format,
        line_bytes_max,
        read_buffer_bytes,
        connections_max,
        idle_timeout_ms,
        socket_receive_buffer_bytes,
        datagram_coalesce_us_max,
        cleanse_names,
        regex,
        time_layout,
        collectd,
        frame_bytes_max,
        body_bytes_max,
        socket_mode,
    }
}

fn read_cluster(
    t: &Table,
    i: usize,
    instance_bytes_max: usize,
    errs: &mut Vec<ConfigError>,
) -> Cluster {
    let mut r = TableReader::new(t, format!("cluster[{i}]"));
    let name = r.req_str("name", errs);
    if name.is_empty() && t.contains_key("name") {
        errs.push(ConfigError::new(r.key_path("name"), "must not be empty"));
    }
    let kind_s = r.req_str("kind", errs);
    let kind = match ClusterKind::ALL.iter().find(|k| k.as_str() == kind_s) {
        Some(k) => Some(*k),
        None if kind_s.is_empty() => None,
        None => {
            let known: Vec<&str> = ClusterKind::ALL.iter().map(|k| k.as_str()).collect();
            errs.push(ConfigError::new(
                r.key_path("kind"),
                format!(
                    "unknown kind {kind_s:?} (expected one of {})",
                    known.join(", ")
                ),
            ));
            None
        }
    };
    let replication_present = t.contains_key("replication");
    let replication = r.uint("replication", 1, 1, 64, errs) as usize;
    let member_strs = r.strings("members", errs);
    let path = r.opt_str("path", errs);
    let rotate_bytes = r.uint("file_rotate_bytes", 256 << 20, 4096, 1 << 40, errs);
    let keep_files = r.uint("file_keep_files", 4, 0, 1000, errs) as usize;
    let on_down_present = t.contains_key("on_down");
    let on_down = match r.str_or("on_down", "queue", errs).as_str() {
        "queue" => OnDown::Queue,
        "reroute" => OnDown::Reroute,
        other => {
            errs.push(ConfigError::new(
                r.key_path("on_down"),
                format!("unknown value {other:?} (expected queue or reroute)"),
            ));
            OnDown::Queue
        }
    };
    let diverse_present = t.contains_key("diverse_replicas");
    // carbon's own default (conf.py DIVERSE_REPLICAS = True).
    let diverse_replicas = r.boolean("diverse_replicas", true, errs);
    let key = match r.opt_str("key", errs).as_deref() {
        None => None,
        Some("host") => Some(ClusterKey::Host),
        Some("identifier") => Some(ClusterKey::Identifier),
        Some(other) => {
            errs.push(ConfigError::new(
                r.key_path("key"),
                format!("unknown key {other:?} (expected host or identifier)"),
            ));
            None
        }
    };
    let format = collectd::read_output_format(&mut r, t, errs);
    let spool_bytes_max = t
        .contains_key("spool_bytes_max")
        .then(|| r.uint("spool_bytes_max", 0, 0, 1 << 50, errs));
    let mut members = Vec::with_capacity(member_strs.len());
    for (j, m) in member_strs.iter().enumerate() {
        match Member::parse_bounded(m, instance_bytes_max) {
            Ok(m) => members.push(m),
            Err(e) => errs.push(ConfigError::new(
                format!("{}[{j}]", r.key_path("members")),
                e,
            )),
        }
    }
    let mut file = None;
    match kind {
        Some(ClusterKind::File) => {
            if !member_strs.is_empty() {
                errs.push(ConfigError::new(
                    r.key_path("members"),
                    "a file cluster has no members (it writes to `path`)",
                ));
            }
            match path {
                Some(p) if !p.is_empty() => {
                    file = Some(FileSink {
                        path: PathBuf::from(p),
                        rotate_bytes,
                        keep_files,
                    })
                }
                _ => errs.push(ConfigError::new(
                    r.key_path("path"),
                    "is required for kind = \"file\"",
                )),
            }
            if spool_bytes_max.is_some() {
                errs.push(ConfigError::new(
                    r.key_path("spool_bytes_max"),
                    "applies to tcp members only (a file cluster does not spool)",
                ));
            }
        }
        Some(k) => {
            if path.is_some() {
                errs.push(ConfigError::new(
                    r.key_path("path"),
                    "only a file cluster has a path",
                ));
            }
            if member_strs.is_empty() {
                errs.push(ConfigError::new(
                    r.key_path("members"),
                    "needs at least one member",
                ));
            }
            if !k.is_ring() && replication_present && replication != 1 {
                errs.push(ConfigError::new(
                    r.key_path("replication"),
                    format!("applies to ring kinds only, not {}", k.as_str()),
                ));
            }
            if !k.is_ring() && on_down_present {
                errs.push(ConfigError::new(
                    r.key_path("on_down"),
                    format!(
                        "applies to ring kinds only; {} handles a dead member itself",
                        k.as_str()
                    ),
                ));
            }
            if k != ClusterKind::CarbonChPython && diverse_present {
                errs.push(ConfigError::new(
                    r.key_path("diverse_replicas"),
                    "applies to carbon_ch_python only",
                ));
            }
            if key.is_some() && !k.is_ring() && k != ClusterKind::AnyOf {
                errs.push(ConfigError::new(
                    r.key_path("key"),
                    format!(
                        "applies to kinds that hash (rings, any_of), not {}",
                        k.as_str()
                    ),
                ));
            }
            if member_strs.len() == members.len() {
                check_members(k, replication, &members, &r.key_path(""), errs);
                collectd::check_members(&format, &members, &r.key_path(""), errs);
            }
        }
        None => {}
    }
    if kind == Some(ClusterKind::File) && matches!(format, OutputFormat::Collectd(_)) {
        errs.push(ConfigError::new(
            r.key_path("format"),
            "a file cluster writes lines; format = \"collectd\" is for udp members",
        ));
    }
    r.finish(errs);
    Cluster {
        name,
        kind: kind.unwrap_or(ClusterKind::Forward),
        replication,
        members,
        file,
        on_down,
        diverse_replicas,
        key,
        format,
        spool_bytes_max,
    }
}

/// The checks on a cluster's members, at load and when membership changes at run time.
/// `path` is the cluster's key path with a trailing dot (`cluster[2].`).
fn check_members(
    kind: ClusterKind,
    replication: usize,
    members: &[Member],
    path: &str,
    errs: &mut Vec<ConfigError>,
) {
    let members_path = format!("{path}members");
    for (j, m) in members.iter().enumerate() {
        let earlier = &members[..j];
        // Every member once: two entries with one address would share a queue and a
        // connection.
        if let Some(k) = earlier
            .iter()
            .position(|o| o.host == m.host && o.port == m.port && o.transport == m.transport)
        {
            errs.push(ConfigError::new(
                format!("{members_path}[{j}]"),
                format!("same address as {members_path}[{k}]; a member is listed once"),
            ));
            continue;
        }
        // What a ring hashes must tell members apart, or one of them shares every
        // position with another and never receives anything.
        let clash = match kind {
            ClusterKind::CarbonCh | ClusterKind::CarbonChPython => earlier
                .iter()
                .position(|o| o.host == m.host && o.instance == m.instance)
                .map(|k| {
                    format!(
                        "same host and instance as {members_path}[{k}]; carbon_ch does not hash \
                         the port, so give each member on one host its own instance (host:port=a)"
                    )
                }),
            ClusterKind::Fnv1aCh if m.instance.is_some() => earlier
                .iter()
                .position(|o| o.instance == m.instance)
                .map(|k| {
                    format!(
                        "same instance as {members_path}[{k}]; fnv1a_ch hashes the instance alone"
                    )
                }),
            _ => None,
        };
        if let Some(message) = clash {
            errs.push(ConfigError::new(format!("{members_path}[{j}]"), message));
        }
    }
    // Coco's replica table stops at 100 members; Coco itself panics past it.
    let coco_max = crate::route::ring_coco::COCO_MEMBERS_MAX;
    if kind == ClusterKind::Coco && members.len() > coco_max {
        errs.push(ConfigError::new(
            &members_path,
            format!(
                "{} members; a coco cluster has at most {coco_max}, where Coco's table of \
                 replica counts stops",
                members.len()
            ),
        ));
    }
    if kind.is_ring() && replication > members.len() {
        errs.push(ConfigError::new(
            format!("{path}replication"),
            format!("{replication} is more than the {} members", members.len()),
        ));
    }
}

fn read_route(
    t: &Table,
    i: usize,
    clusters: &[Cluster],
    stores: &[Store],
    aggregates: &[Aggregate],
    listeners: &[Listener],
    errs: &mut Vec<ConfigError>,
) -> Route {
    let mut r = TableReader::new(t, format!("route[{i}]"));
    let name = r
        .opt_str("name", errs)
        .unwrap_or_else(|| format!("route[{i}]"));
    let matcher = match r.table("match", errs) {
        Some(mt) => read_match(mt, &r.key_path("match"), errs),
        None => {
            if !t.contains_key("match") {
                errs.push(ConfigError::new(
                    r.key_path("match"),
                    "is required (prefix, substring, regex or all = true)",
                ));
            }
            Match::All
        }
    };
    let action_s = r.opt_str("action", errs);
    let send_to = r.strings("send_to", errs);
    let aggregate_name = r.opt_str("aggregate", errs);
    let from = r.strings("from", errs);
    for (j, f) in from.iter().enumerate() {
        let known = match aggregate_origin(f) {
            Some(a) => aggregates.iter().any(|x| x.name == a),
            None => listeners.iter().any(|l| &l.name == f),
        };
        if !known {
            errs.push(ConfigError::new(
                format!("{}[{j}]", r.key_path("from")),
                match aggregate_origin(f) {
                    Some(a) => format!("no [[aggregate]] is named {a:?}"),
                    None => format!(
                        "no [[listen]] is named {f:?} (an aggregator's output is \"aggregate:NAME\")"
                    ),
                },
            ));
        }
    }
    let continue_present = t.contains_key("continue");
    let mut continue_matching = r.boolean("continue", false, errs);
    let rewrite = r
        .table("rewrite", errs)
        .map(|rt| read_rewrite(rt, &r.key_path("rewrite"), errs));
    let targets = resolve_send_to(&send_to, clusters, stores, &r.key_path("send_to"), errs);
    if let Some(a) = &aggregate_name {
        let at = r.key_path("aggregate");
        if t.contains_key("send_to") {
            errs.push(ConfigError::new(
                at.clone(),
                "a route either aggregates or sends (send_to); give one of them",
            ));
        }
        if action_s.is_some() {
            errs.push(ConfigError::new(
                at.clone(),
                "a route with aggregate takes no action key",
            ));
        }
        let idx = match aggregates.iter().position(|x| &x.name == a) {
            Some(idx) => idx,
            None => {
                errs.push(ConfigError::new(
                    at,
                    format!("no [[aggregate]] is named {a:?}"),
                ));
                0
            }
        };
        if from.iter().any(|f| aggregate_origin(f).is_some()) {
            errs.push(ConfigError::new(
                r.key_path("from"),
                "an aggregator's output is never handed to an aggregator again (no loops)",
            ));
        }
        r.finish(errs);
        return Route {
            name,
            matcher,
            action: Action::Aggregate(idx),
            continue_matching,
            rewrite,
            from,
        };
    }
    let action = match action_s.as_deref() {
        Some("drop") => {
            if !send_to.is_empty() {
                errs.push(ConfigError::new(
                    r.key_path("send_to"),
                    "a route with action = \"drop\" sends nowhere; remove one of them",
                ));
            }
            if continue_matching {
                errs.push(ConfigError::new(
                    r.key_path("continue"),
                    "a dropped metric cannot continue to later routes",
                ));
            }
            if rewrite.is_some() {
                errs.push(ConfigError::new(
                    r.key_path("rewrite"),
                    "a dropped metric is not rewritten; remove one of them",
                ));
            }
            Action::Drop
        }
        // A rewrite with nowhere to send is carbon-c-relay's `rewrite` statement: the name
        // changes and later routes see it.
        None if rewrite.is_some() && t.get("send_to").is_none() => {
            if continue_present && !continue_matching {
                errs.push(ConfigError::new(
                    r.key_path("continue"),
                    "a rewrite-only route always continues to later routes",
                ));
            }
            continue_matching = true;
            Action::SendTo(Vec::new())
        }
        Some("send") | None => {
            if send_to.is_empty() && t.get("send_to").is_none() {
                errs.push(ConfigError::new(
                    r.key_path("send_to"),
                    "is required unless action = \"drop\"",
                ));
            } else if send_to.is_empty() {
                errs.push(ConfigError::new(
                    r.key_path("send_to"),
                    "must name at least one cluster or store",
                ));
            }
            Action::SendTo(targets)
        }
        Some(other) => {
            errs.push(ConfigError::new(
                r.key_path("action"),
                format!("unknown action {other:?} (expected drop or send)"),
            ));
            Action::Drop
        }
    };
    r.finish(errs);
    Route {
        name,
        matcher,
        action,
        continue_matching,
        rewrite,
        from,
    }
}

fn read_rewrite(t: &Table, path: &str, errs: &mut Vec<ConfigError>) -> RewriteSpec {
    let mut r = TableReader::new(t, path);
    let regex = r.req_str("regex", errs);
    let into = r.req_str("into", errs);
    r.finish(errs);
    if !regex.is_empty() {
        if let Err(e) = crate::route::rewrite::Rewrite::compile(&regex, &into) {
            errs.push(ConfigError::new(path, e));
        }
    }
    RewriteSpec { regex, into }
}

fn read_match(t: &Table, path: &str, errs: &mut Vec<ConfigError>) -> Match {
    let mut r = TableReader::new(t, path);
    let prefix = r.opt_str("prefix", errs);
    let substring = r.opt_str("substring", errs);
    let regex = r.opt_str("regex", errs);
    let all = r.opt_bool("all", errs);
    r.finish(errs);
    let given = [
        prefix.is_some(),
        substring.is_some(),
        regex.is_some(),
        all.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        errs.push(ConfigError::new(
            path,
            "needs exactly one of prefix, substring, regex, all = true",
        ));
        return Match::All;
    }
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push(ConfigError::new(
                format!("{path}.prefix"),
                "must not be empty (use all = true)",
            ));
        }
        return Match::Prefix(p);
    }
    if let Some(s) = substring {
        if s.is_empty() {
            errs.push(ConfigError::new(
                format!("{path}.substring"),
                "must not be empty (use all = true)",
            ));
        }
        return Match::Substring(s);
    }
    if let Some(re) = regex {
        if let Err(e) = regex::bytes::Regex::new(&re) {
            errs.push(ConfigError::new(
                format!("{path}.regex"),
                format!("invalid regex: {e}"),
            ));
        }
        return Match::Regex(re);
    }
    if all == Some(false) {
        errs.push(ConfigError::new(
            format!("{path}.all"),
            "must be true when given",
        ));
    }
    Match::All
}

fn check_unique<'a>(
    names: impl Iterator<Item = &'a str>,
    table: &str,
    errs: &mut Vec<ConfigError>,
) {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if !n.is_empty() && !seen.insert(n) {
            errs.push(ConfigError::new(
                format!("{table}[{i}].name"),
                format!("{n:?} is used by an earlier [[{table}]]"),
            ));
        }
    }
}

/// A member listed in two clusters is one destination (one queue, one encoder): the
/// clusters must agree on what it receives.
fn check_shared_members(clusters: &[Cluster], errs: &mut Vec<ConfigError>) {
    for (i, c) in clusters.iter().enumerate() {
        for (j, m) in c.members.iter().enumerate() {
            let key = m.address_key();
            let earlier = clusters[..i].iter().enumerate().find(|(_, o)| {
                o.format != c.format && o.members.iter().any(|om| om.address_key() == key)
            });
            if let Some((k, o)) = earlier {
                errs.push(ConfigError::new(
                    format!("cluster[{i}].members[{j}]"),
                    format!(
                        "{key} is also a member of cluster {:?} (cluster[{k}]) with other \
                         format settings; a destination has one format",
                        o.name
                    ),
                ));
            }
        }
    }
}

fn check_listen_addresses(listeners: &[Listener], errs: &mut Vec<ConfigError>) {
    for (i, l) in listeners.iter().enumerate() {
        if let Some(a) = l.url.socket_addr() {
            if a.port() == 0 {
                continue;
            }
        }
        if let Some(k) = listeners[..i].iter().position(|o| o.url == l.url) {
            errs.push(ConfigError::new(
                format!("listen[{i}].url"),
                format!("{} is already used by listen[{k}]", l.url),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let c = Config::parse(DEFAULT_CONFIG).unwrap();
        assert!(c.listeners.len() >= 3);
        let documented = include_str!("../../configs/cadent.toml");
        Config::parse(documented).unwrap();
    }

    #[test]
    fn the_spool_keys_read_as_the_issue_wrote_them() {
        let c = Config::parse(
            r#"
            [output]
            spool_dir = "./data/spool"
            spool_bytes_max = 1073741824
            spool_fsync_interval_ms = 200
            [[listen]]
            name = "g"
            url = "tcp://127.0.0.1:0"
            format = "graphite"
            [[cluster]]
            name = "caches"
            kind = "carbon_ch"
            members = ["tcp://10.0.0.1:2003", "tcp://10.0.0.2:2003"]
            spool_bytes_max = 4294967296
            [[cluster]]
            name = "never"
            kind = "any_of"
            members = ["tcp://10.0.0.3:2003", "udp://10.0.0.4:2003"]
            spool_bytes_max = 0
            [[cluster]]
            name = "default"
            kind = "forward"
            members = ["tcp://10.0.0.5:2003", "tcp://10.0.0.3:2003"]
            [[route]]
            match = { all = true }
            send_to = ["caches"]
        "#,
        )
        .unwrap();
        assert_eq!(c.output.spool_dir, Some(PathBuf::from("./data/spool")));
        assert_eq!(c.output.spool_bytes_max, 1 << 30);
        assert_eq!(c.output.spool_fsync_interval_ms, 200);
        assert_eq!(c.clusters[0].spool_bytes_max, Some(4 << 30));
        assert_eq!(c.clusters[1].spool_bytes_max, Some(0));
        let t = crate::route::DestinationTable::from_config(&c);
        let cap = |addr: &str| {
            let d = t.destinations.iter().position(|d| d.name == addr).unwrap();
            crate::output::spool_bytes_max(&c, &t, crate::route::DestId(d as u16))
        };
        assert_eq!(cap("tcp://10.0.0.1:2003"), 4 << 30);
        assert_eq!(cap("tcp://10.0.0.5:2003"), 1 << 30);
        // In a cluster that never spools and one with the default: the largest wins.
        assert_eq!(cap("tcp://10.0.0.3:2003"), 1 << 30);
        assert_eq!(cap("udp://10.0.0.4:2003"), 0, "udp never spools");
        let mut off = c.clone();
        off.output.spool_dir = None;
        assert_eq!(
            crate::output::spool_bytes_max(&off, &t, crate::route::DestId(0)),
            0
        );
    }

    #[test]
    fn every_error_at_once() {
        let text = r#"
            bogus = 1
            [server]
            shards = "two"
            colour = "red"
            [[listen]]
            name = "a"
            url = "tcp://127.0.0.1:2003"
            format = "json"
            [[cluster]]
            name = "c"
            kind = "carbon_ch"
            replication = 3
            members = ["127.0.0.1:1", "127.0.0.1:2"]
            [[route]]
            match = { prefix = "x", regex = "(" }
            send_to = ["nope"]
        "#;
        let errs = Config::parse(text).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "bogus",
            "server.shards",
            "server.colour",
            "listen[0].format",
            "cluster[0].replication",
            "cluster[0].members[1]",
            "route[0].match",
            "route[0].send_to[0]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:#?}");
        }
    }

    /// An aggregator's send_to: a wrong name is its own error (not also "send_to is
    /// required"); an empty list is the "required" one.
    #[test]
    fn aggregate_send_to_errors_once() {
        let base = r#"
            [[listen]]
            name = "s"
            url = "udp://127.0.0.1:8125"
            format = "statsd"
            [[aggregate]]
            name = "statsd"
            kind = "statsd"
            SEND_TO
            [[route]]
            match = { all = true }
            aggregate = "statsd"
        "#;
        for (send_to, want) in [
            (r#"send_to = ["nope"]"#, "aggregate[0].send_to[0]"),
            ("send_to = []", "aggregate[0].send_to"),
            ("", "aggregate[0].send_to"),
        ] {
            let errs = Config::parse(&base.replace("SEND_TO", send_to))
                .unwrap_err()
                .0;
            let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths, [want], "{send_to}: {errs:#?}");
        }
    }

    /// The issue's shape parses as written (with a readable auth file).
    #[test]
    fn collectd_tiers_config() {
        let dir = std::env::temp_dir().join(format!("cadent-cfg-collectd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let auth = dir.join("passwd");
        std::fs::write(&auth, "alice: s3cret\n").unwrap();
        let text = format!(
            r#"
            [[listen]]
            name = "collectd"
            url = "udp://0.0.0.0:25826"
            format = "collectd"
            security_level = "none"
            auth_file = "{}"
            [[cluster]]
            name = "shortterm"
            kind = "coco"
            key = "host"
            format = "collectd"
            members = ["udp://10.1.1.111:25826", "udp://10.1.1.112:25826"]
            [[cluster]]
            name = "midterm"
            kind = "fnv1a_ch"
            key = "identifier"
            format = "collectd"
            security_level = "encrypt"
            username = "alice"
            password = "s3cret"
            members = ["udp://10.1.1.113:25826", "udp://10.1.1.114:25826"]
            [[route]]
            match = {{ regex = "/(vmem|irq|entropy|users)/" }}
            action = "drop"
            [[route]]
            match = {{ all = true }}
            send_to = ["shortterm", "midterm"]
        "#,
            auth.display()
        );
        let c = Config::parse(&text).unwrap();
        let l = c.listeners[0].collectd.as_ref().unwrap();
        assert_eq!(l.auth.as_ref().unwrap().len(), 1);
        assert!(!l.types_complete());
        assert_eq!(c.listeners[0].socket_receive_buffer_bytes, 16 << 20);
        assert!(c.clusters[0].host_keyed() && !c.clusters[1].host_keyed());
        assert!(matches!(&c.clusters[1].format, OutputFormat::Collectd(s)
            if s.security_level == crate::protocol::collectd::SecurityLevel::Encrypt));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn collectd_config_errors() {
        let text = r#"
            [[listen]]
            name = "c"
            url = "tcp://127.0.0.1:25826"
            format = "collectd"
            security_level = "sign"
            types_db = ["/nonexistent/types.db"]
            [[listen]]
            name = "g"
            url = "tcp://127.0.0.1:2003"
            format = "graphite"
            auth_file = "/x"
            [[cluster]]
            name = "a"
            kind = "coco"
            format = "collectd"
            prefix = "x."
            members = ["127.0.0.1:1"]
            [[cluster]]
            name = "b"
            kind = "forward"
            key = "host"
            packet_bytes_max = 2000
            members = ["udp://127.0.0.1:2"]
            [[cluster]]
            name = "d"
            kind = "carbon_ch"
            format = "collectd"
            security_level = "sign"
            members = ["udp://127.0.0.1:2"]
            [[route]]
            match = { all = true }
            send_to = ["a"]
        "#;
        let errs = Config::parse(text).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "listen[0].url",
            "listen[0].auth_file",
            "listen[0].types_db[0]",
            "listen[1].auth_file",
            "cluster[0].prefix",
            "cluster[0].members[0]",
            "cluster[1].key",
            "cluster[1].packet_bytes_max",
            "cluster[2].username",
            "cluster[2].password",
            "cluster[2].members[0]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:#?}");
        }
    }

    #[test]
    fn socket_mode_is_octal_and_for_unix_sockets_only() {
        let listener = |url: &str, mode: &str| {
            format!(
                "[[listen]]\nname = \"s\"\nurl = \"{url}\"\nformat = \"statsd\"\n\
                 socket_mode = {mode}\n[[cluster]]\nname = \"o\"\nkind = \"forward\"\n\
                 members = [\"127.0.0.1:1\"]\n[[route]]\nmatch = {{ all = true }}\n\
                 send_to = [\"o\"]\n"
            )
        };
        for (url, mode, want) in [
            ("unix:///tmp/s.sock", "\"0666\"", Some(0o666)),
            ("unixgram:///tmp/s.sock", "\"722\"", Some(0o722)),
            ("unixgram:///tmp/s.sock", "\"1777\"", Some(0o1777)),
        ] {
            let c = Config::parse(&listener(url, mode)).unwrap();
            assert_eq!(c.listeners[0].socket_mode, want, "{url} {mode}");
        }
        for (url, mode) in [
            ("unix:///tmp/s.sock", "\"0o666\""),
            ("unix:///tmp/s.sock", "\"0888\""),
            ("unix:///tmp/s.sock", "\"66\""),
            ("unix:///tmp/s.sock", "666"),
            ("udp://127.0.0.1:8125", "\"0666\""),
        ] {
            let errs = Config::parse(&listener(url, mode)).unwrap_err().0;
            assert!(
                errs.iter().any(|e| e.path == "listen[0].socket_mode"),
                "{url} {mode}: {errs:#?}"
            );
        }
    }

    #[test]
    fn datagram_coalescing_is_a_udp_setting() {
        let listener = |url: &str, extra: &str| {
            format!(
                r#"
                [[listen]]
                name = "s"
                url = "{url}"
                format = "statsd"
                {extra}
                [[cluster]]
                name = "a"
                kind = "forward"
                members = ["127.0.0.1:1"]
                [[route]]
                match = {{ all = true }}
                send_to = ["a"]
                "#
            )
        };
        let c = Config::parse(&listener("udp://127.0.0.1:8125", "")).unwrap();
        assert_eq!(c.listeners[0].datagram_coalesce_us_max, 2_000);
        let c = Config::parse(&listener(
            "udp://127.0.0.1:8125",
            "datagram_coalesce_us_max = 0",
        ))
        .unwrap();
        assert_eq!(c.listeners[0].datagram_coalesce_us_max, 0);
        // A statsd stream's lines are as long as a datagram's by default, within the
        // connection's buffer; a graphite listener keeps 16 KiB.
        let c = Config::parse(&listener("tcp://127.0.0.1:8125", "")).unwrap();
        assert_eq!(c.listeners[0].line_bytes_max, 65_507);
        let c = Config::parse(&listener(
            "tcp://127.0.0.1:8125",
            "read_buffer_bytes = 8192",
        ))
        .unwrap();
        assert_eq!(c.listeners[0].line_bytes_max, 8191);
        let graphite = listener("tcp://127.0.0.1:2003", "").replace("statsd", "graphite");
        let c = Config::parse(&graphite).unwrap();
        assert_eq!(c.listeners[0].line_bytes_max, 16_384);
        for (url, extra) in [
            ("tcp://127.0.0.1:8125", "datagram_coalesce_us_max = 500"),
            ("udp://127.0.0.1:8125", "datagram_coalesce_us_max = 100001"),
        ] {
            let errs = Config::parse(&listener(url, extra)).unwrap_err().0;
            assert_eq!(errs.len(), 1, "{errs:#?}");
            assert_eq!(errs[0].path, "listen[0].datagram_coalesce_us_max");
        }
    }
}

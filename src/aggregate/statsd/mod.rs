//! Etsy statsd 0.9.0 aggregation, as shard-owned state with no I/O: one [`StatsdEngine`]
//! per shard takes samples ([`StatsdEngine::ingest`], or raw datagrams with Etsy's exact
//! grammar through [`StatsdEngine::ingest_datagram`]) and, every `flush_interval_ms`,
//! writes the graphite plaintext lines Etsy's graphite backend would send
//! ([`StatsdEngine::flush`]), in the same order and with numbers printed as JavaScript
//! prints them, so the output is byte-identical (timing-dependent self-metrics aside).
//!
//! Semantics copied from `stats.js`, `lib/process_metrics.js` and `backends/graphite.js`
//! (reference/statsd.md §2). Where memory is bounded and Etsy is not, the difference is
//! counted: keys beyond `keys_max` ([`StatsdCounters::keys_overflow`]), set members
//! beyond `set_values_max`, and timers beyond `timer_values_max` values in one interval
//! switch to a [`sketch::Sketch`] (relative error `timer_sketch_relative_error`).

pub mod inspect;
pub mod key;
pub mod members;
pub mod mgmt;
pub mod sketch;
pub mod table;

use std::time::Instant;

use crate::protocol::jsnum::{js_number_string, write_js_number};
use crate::protocol::statsd::{self as grammar, Sample, Value};
use crate::protocol::Reject;
use key::KeyScratch;
pub use key::TagMode;
use members::{Insert, Members};
use sketch::Sketch;
use table::{fingerprint, Table};

/// One histogram bin bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bin {
    /// Counts values below this bound (and at or above the previous one).
    Below(f64),
    /// `"inf"`: counts every value left.
    Inf,
}

/// Etsy's `histogram` entry: the first rule whose `metric` is a substring of the key
/// (tags included) gives that timer's bins.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramRule {
    /// Substring matched against the key.
    pub metric: String,
    /// Bins in order; not cumulative.
    pub bins: Vec<Bin>,
}

/// The statsd engine's settings: Etsy's option names in our words, with Etsy's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsdConfig {
    /// `flushInterval`: the interval rates are computed over (10000).
    pub flush_interval_ms: u64,
    /// `percentThreshold` (`[90]`); negative ones are top-P, fractional ones allowed.
    pub percent_thresholds: Vec<f64>,
    /// `histogram` ([]).
    pub histograms: Vec<HistogramRule>,
    /// `calculatedTimerMetrics` ([] = all); `_percent` stands for every threshold.
    pub calculated_timer_metrics: Vec<String>,
    /// `graphite.legacyNamespace` (true).
    pub legacy_namespace: bool,
    /// `graphite.globalPrefix` ("stats"); not used in the legacy namespace.
    pub global_prefix: String,
    /// `graphite.prefixCounter` ("counters").
    pub prefix_counter: String,
    /// `graphite.prefixTimer` ("timers").
    pub prefix_timer: String,
    /// `graphite.prefixGauge` ("gauges").
    pub prefix_gauge: String,
    /// `graphite.prefixSet` ("sets").
    pub prefix_set: String,
    /// `graphite.globalSuffix` (none); applies in both namespaces.
    pub global_suffix: Option<String>,
    /// `prefixStats` ("statsd"): statsd's own metric names.
    pub prefix_stats: String,
    /// `flush_counts` (true): also send counters' counts.
    pub flush_counts: bool,
    /// `deleteIdleStats` (false): the default of the four below.
    pub delete_idle_stats: bool,
    /// `deleteCounters` (unset: `delete_idle_stats`).
    pub delete_counters: Option<bool>,
    /// `deleteTimers` (unset: `delete_idle_stats`).
    pub delete_timers: Option<bool>,
    /// `deleteSets` (unset: `delete_idle_stats`).
    pub delete_sets: Option<bool>,
    /// `deleteGauges` (unset: `delete_idle_stats`).
    pub delete_gauges: Option<bool>,
    /// `gaugesMaxTTL` (1): flushes without an update before a gauge is deleted, when
    /// gauges are deleted. 0 is read as 1, as Etsy does.
    pub gauges_max_ttl_flushes: u32,
    /// How tags join the key (Etsy order, or sorted for DogStatsD identity).
    pub tag_mode: TagMode,
    /// `keyNameSanitize` (true): names and tags are sanitised as Etsy does; false keeps
    /// them as they come.
    pub key_name_sanitize: bool,
    /// Live keys per engine (all types); a sample for a new key beyond it is dropped and
    /// counted in `keys_overflow`.
    pub keys_max: usize,
    /// Raw values one timer keeps per interval; past it the timer uses a sketch.
    pub timer_values_max: usize,
    /// The sketch's relative error bound on rank statistics.
    pub timer_sketch_relative_error: f64,
    /// Buckets one timer sketch may use (8 bytes each).
    pub timer_sketch_buckets_max: usize,
    /// Distinct members one set counts per interval; more are counted in
    /// `set_values_overflow` and not added.
    pub set_values_max: usize,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        StatsdConfig {
            flush_interval_ms: 10_000,
            percent_thresholds: vec![90.0],
            histograms: Vec::new(),
            calculated_timer_metrics: Vec::new(),
            legacy_namespace: true,
            global_prefix: "stats".into(),
            prefix_counter: "counters".into(),
            prefix_timer: "timers".into(),
            prefix_gauge: "gauges".into(),
            prefix_set: "sets".into(),
            global_suffix: None,
            prefix_stats: "statsd".into(),
            flush_counts: true,
            delete_idle_stats: false,
            delete_counters: None,
            delete_timers: None,
            delete_sets: None,
            delete_gauges: None,
            gauges_max_ttl_flushes: 1,
            tag_mode: TagMode::Etsy,
            key_name_sanitize: true,
            keys_max: 1_000_000,
            timer_values_max: 100_000,
            timer_sketch_relative_error: 0.01,
            timer_sketch_buckets_max: 2048,
            set_values_max: 100_000,
        }
    }
}

/// A setting the engine cannot run with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// `flush_interval_ms` is 0.
    #[error("flush_interval_ms must be above 0")]
    FlushInterval,
    /// A bound is 0.
    #[error("{0} must be above 0")]
    ZeroBound(&'static str),
    /// The sketch error is outside (0, 0.5].
    #[error("timer_sketch_relative_error must be in (0, 0.5], got {0}")]
    SketchError(f64),
    /// A threshold is not a finite number.
    #[error("percent threshold {0} is not finite")]
    Threshold(f64),
    /// A histogram rule has more bins than [`HISTOGRAM_BINS_MAX`].
    #[error("histogram rule {0:?} has more than 64 bins")]
    TooManyBins(String),
}

/// Most bins one histogram rule may have.
pub const HISTOGRAM_BINS_MAX: usize = 64;

impl StatsdConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.flush_interval_ms == 0 {
            return Err(ConfigError::FlushInterval);
        }
        for (v, name) in [
            (self.keys_max, "keys_max"),
            (self.timer_values_max, "timer_values_max"),
            (self.set_values_max, "set_values_max"),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroBound(name));
            }
        }
        if self.timer_sketch_buckets_max < 2 {
            return Err(ConfigError::ZeroBound("timer_sketch_buckets_max"));
        }
        let a = self.timer_sketch_relative_error;
        if !(a > 0.0 && a <= 0.5) {
            return Err(ConfigError::SketchError(a));
        }
        if let Some(&p) = self.percent_thresholds.iter().find(|p| !p.is_finite()) {
            return Err(ConfigError::Threshold(p));
        }
        if let Some(h) = self
            .histograms
            .iter()
            .find(|h| h.bins.len() > HISTOGRAM_BINS_MAX)
        {
            return Err(ConfigError::TooManyBins(h.metric.clone()));
        }
        Ok(())
    }
}

/// The engine's own counters (plain; the shard publishes them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsdCounters {
    /// Samples applied.
    pub samples: u64,
    /// Samples dropped because their key was new and `keys_max` keys were live.
    pub keys_overflow: u64,
    /// Set members not added because the set held `set_values_max`.
    pub set_values_overflow: u64,
    /// Timers that switched to a sketch in an interval.
    pub timer_sketches: u64,
    /// Samples rejected by the grammar, by reason (only [`StatsdEngine::ingest_datagram`]
    /// parses; the shards count rejects at their listeners).
    pub rejected: [u64; Reject::COUNT],
    /// Samples for the key `__proto__`, dropped (see [`key::PROTO_KEY`]); not part of
    /// `bad_lines_seen`.
    pub rejected_proto_key: u64,
}

/// The length of UTF-8 `text` as a JavaScript string counts it: one unit per character,
/// two for one outside the BMP (a 4-byte sequence). Etsy's `graphiteStats.flush_length`
/// is that of the text it wrote.
pub fn utf16_len(text: &[u8]) -> u64 {
    text.iter()
        .map(|&b| u64::from((b & 0xc0) != 0x80) + u64::from(b >= 0xf0))
        .sum()
}

/// What the graphite writer reports about its last write; Etsy sends these as
/// `graphiteStats.*` in the next flush.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphiteWriteStats {
    /// `last_exception`: unix seconds of the last failed write (0: none).
    pub last_exception_s: i64,
    /// `last_flush`: unix seconds of the last write (the engine start before any).
    pub last_flush_s: i64,
    /// `flush_time`: milliseconds the last write took.
    pub flush_time_ms: u64,
    /// `flush_length`: the length of the last write's text as node counts it (UTF-16
    /// units: a byte for ASCII), see [`utf16_len`].
    pub flush_length_units: u64,
}

/// One key's value as the management console prints it.
#[derive(Clone, Debug, PartialEq)]
pub enum DumpValue {
    /// A counter's or gauge's value, a set's member count.
    Number(f64),
    /// A timer's values this interval.
    Numbers(Vec<f64>),
}

/// What one flush wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushSummary {
    /// The timestamp on the lines (`Math.round(now / 1000)`).
    pub ts: i64,
    /// Lines written.
    pub lines: u64,
    /// `numStats`: keys flushed over all types.
    pub num_stats: u64,
    /// Milliseconds from `flush_begin` to `flush_end` (Etsy's `calculationtime`).
    pub calculation_ms: u64,
    /// Milliseconds spent on timers (Etsy's `processing_time`).
    pub processing_ms: u64,
}

impl FlushSummary {
    /// This flush alone as the totals statsd's own lines report.
    pub fn totals(&self) -> FlushTotals {
        FlushTotals {
            ts: self.ts,
            num_stats: self.num_stats,
            calculation_ms: self.calculation_ms,
            processing_ms: self.processing_ms,
        }
    }
}

/// What statsd's own lines report about one flush over every shard: keys flushed
/// summed, times the longest any shard took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushTotals {
    /// The flush's timestamp.
    pub ts: i64,
    /// `numStats`.
    pub num_stats: u64,
    /// `graphiteStats.calculationtime`.
    pub calculation_ms: u64,
    /// `processing_time`.
    pub processing_ms: u64,
}

impl FlushTotals {
    /// Adds another shard's flush.
    pub fn add(&mut self, s: &FlushTotals) {
        self.num_stats += s.num_stats;
        self.calculation_ms = self.calculation_ms.max(s.calculation_ms);
        self.processing_ms = self.processing_ms.max(s.processing_ms);
    }
}

/// Where a running flush is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Counters,
    Timers,
    Gauges,
    Sets,
    Done,
}

/// A flush between `flush_begin` and `flush_end`.
struct Cursor {
    ts: i64,
    ts_tail: Vec<u8>,
    phase: Phase,
    /// Position in `order` within the phase.
    pos: usize,
    lines: u64,
    num_stats: u64,
    started: Instant,
    processing: std::time::Duration,
}

#[derive(Default)]
struct Timer {
    values: Vec<f64>,
    /// `timer_counters`: sum of 1 / rate.
    count: f64,
    sketch: Option<Box<TimerSketch>>,
}

impl Timer {
    /// Heap bytes: the values' capacity, or the sketch.
    fn heap_bytes(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<f64>()
            + self
                .sketch
                .as_ref()
                .map_or(0, |s| std::mem::size_of::<TimerSketch>() + s.sketch.bytes())
    }
}

struct TimerSketch {
    sketch: Sketch,
    sum: f64,
    sum_squares: f64,
    min: f64,
    max: f64,
}

impl TimerSketch {
    /// Counts one value: into the sketch, and into the exact sums and bounds.
    #[inline]
    fn add(&mut self, v: f64) {
        self.sketch.insert(v);
        self.sum += v;
        self.sum_squares += v * v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

#[derive(Default)]
struct Gauge {
    value: f64,
    /// Flushes left (only when gauges are deleted and the gauge was sent).
    ttl: Option<u32>,
}

#[derive(Default)]
struct Set {
    members: Members,
}

/// One timer statistic's name and whether `calculated_timer_metrics` keeps it.
struct Stat {
    name: Box<[u8]>,
    emit: bool,
}

impl Stat {
    fn new(name: &str, filter: &[String]) -> Stat {
        let emit = filter.is_empty() || filter.iter().any(|f| f == &filter_key(name));
        Stat {
            name: name.as_bytes().into(),
            emit,
        }
    }
}

/// Etsy's `calculatedTimerMetrics` key: `_<digits>` or `_top<digits>` at the end read
/// as `_percent`.
fn filter_key(name: &str) -> String {
    if let Some(at) = name.rfind('_') {
        let tail = &name[at + 1..];
        let digits = tail.strip_prefix("top").unwrap_or(tail);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return format!("{}_percent", &name[..at]);
        }
    }
    name.to_string()
}

struct Threshold {
    pct: f64,
    /// count_P, mean_P, upper_P or lower_P, sum_P, sum_squares_P.
    stats: [Stat; 5],
}

struct HistogramPlan {
    metric: Box<[u8]>,
    bins: Vec<Bin>,
    /// Distinct bin names in first-seen order, each with the index of the last bin of
    /// that name (a JavaScript object keeps the first place and the last value).
    names: Vec<(Box<[u8]>, usize)>,
}

/// Everything derived from the config once: names, namespaces, flags.
struct Plan {
    interval_s: f64,
    counter_rate_ns: Box<[u8]>,
    counter_rate_extra: Option<&'static [u8]>,
    counter_count_ns: Box<[u8]>,
    counter_count_extra: Option<&'static [u8]>,
    timer_ns: Box<[u8]>,
    gauge_ns: Box<[u8]>,
    set_ns: Box<[u8]>,
    suffix: Box<[u8]>,
    num_stats: Box<[u8]>,
    calculation_time: Box<[u8]>,
    processing_time: Box<[u8]>,
    graphite_stats: [Box<[u8]>; 4],
    thresholds: Vec<Threshold>,
    /// std, upper, lower, count, count_ps, sum, sum_squares, mean, median.
    fixed: [Stat; 9],
    histogram_emit: bool,
    histograms: Vec<HistogramPlan>,
    delete_counters: bool,
    delete_timers: bool,
    delete_sets: bool,
    delete_gauges: bool,
    gauges_max_ttl: u32,
}

/// `ns.join('.')` followed by the `.` before the key, or nothing for an empty namespace.
fn namespace(parts: &[&str]) -> Box<[u8]> {
    let mut s = String::new();
    for p in parts {
        s.push_str(p);
        s.push('.');
    }
    s.into_bytes().into()
}

impl Plan {
    fn new(c: &StatsdConfig) -> Plan {
        let suffix = c
            .global_suffix
            .as_ref()
            .map(|s| format!(".{s}"))
            .unwrap_or_default();
        let ps = &c.prefix_stats;
        fn nonempty(v: Vec<&str>) -> Vec<&str> {
            v.into_iter().filter(|p| !p.is_empty()).collect()
        }
        let (counter_rate_ns, counter_rate_extra, counter_count_ns, counter_count_extra);
        let (timer_ns, gauge_ns, set_ns, global_ns);
        if c.legacy_namespace {
            counter_rate_ns = namespace(&["stats"]);
            counter_rate_extra = None;
            counter_count_ns = namespace(&["stats_counts"]);
            counter_count_extra = None;
            timer_ns = namespace(&["stats", "timers"]);
            gauge_ns = namespace(&["stats", "gauges"]);
            set_ns = namespace(&["stats", "sets"]);
            global_ns = vec!["stats"];
        } else {
            let g = c.global_prefix.as_str();
            counter_rate_ns = namespace(&nonempty(vec![g, &c.prefix_counter]));
            counter_rate_extra = Some(&b"rate"[..]);
            counter_count_ns = counter_rate_ns.clone();
            counter_count_extra = Some(&b"count"[..]);
            timer_ns = namespace(&nonempty(vec![g, &c.prefix_timer]));
            gauge_ns = namespace(&nonempty(vec![g, &c.prefix_gauge]));
            set_ns = namespace(&nonempty(vec![g, &c.prefix_set]));
            global_ns = nonempty(vec![g]);
        }
        let global = global_ns
            .iter()
            .map(|p| format!("{p}."))
            .collect::<String>();
        let (num_stats, calculation_time, processing_time) = if c.legacy_namespace {
            (
                format!("{ps}.numStats{suffix}"),
                format!("stats.{ps}.graphiteStats.calculationtime{suffix}"),
                format!("stats.{ps}.processing_time{suffix}"),
            )
        } else {
            // Etsy's graphite backend builds these three with `format`, as a key: the
            // part from the first `;` on goes after the suffix (as tags), and the name
            // part is sanitised when keys are not.
            let (name, tags) = ps.split_at(ps.find(';').unwrap_or(ps.len()));
            let name = if c.key_name_sanitize {
                name.to_string()
            } else {
                let mut out = Vec::new();
                key::sanitize_into(name.as_bytes(), &mut out);
                String::from_utf8(out).expect("sanitised names are ASCII")
            };
            (
                format!("{global}{name}.numStats{suffix}{tags}"),
                format!("{global}{name}.graphiteStats.calculationtime{suffix}{tags}"),
                format!("{global}{name}.processing_time{suffix}{tags}"),
            )
        };
        let gs = |n: &str| -> Box<[u8]> {
            let suffix = &suffix;
            format!("{global}{ps}.graphiteStats.{n}{suffix}")
                .into_bytes()
                .into()
        };
        let filter = &c.calculated_timer_metrics;
        let mut thresholds: Vec<Threshold> = Vec::new();
        for &pct in &c.percent_thresholds {
            let clean = js_number_string(pct)
                .replacen('.', "_", 1)
                .replacen('-', "top", 1);
            if thresholds
                .iter()
                .any(|t| js_number_string(t.pct) == js_number_string(pct))
            {
                continue;
            }
            let bound = if pct > 0.0 { "upper" } else { "lower" };
            thresholds.push(Threshold {
                pct,
                stats: [
                    Stat::new(&format!("count_{clean}"), filter),
                    Stat::new(&format!("mean_{clean}"), filter),
                    Stat::new(&format!("{bound}_{clean}"), filter),
                    Stat::new(&format!("sum_{clean}"), filter),
                    Stat::new(&format!("sum_squares_{clean}"), filter),
                ],
            });
        }
        let fixed = [
            "std",
            "upper",
            "lower",
            "count",
            "count_ps",
            "sum",
            "sum_squares",
            "mean",
            "median",
        ]
        .map(|n| Stat::new(n, filter));
        let histograms = c
            .histograms
            .iter()
            .map(|h| {
                let mut names: Vec<(Box<[u8]>, usize)> = Vec::new();
                for (i, b) in h.bins.iter().enumerate() {
                    let text = match b {
                        Bin::Inf => "inf".to_string(),
                        Bin::Below(v) => js_number_string(*v),
                    };
                    let name: Box<[u8]> = format!("bin_{}", text.replacen('.', "_", 1))
                        .into_bytes()
                        .into();
                    match names.iter_mut().find(|(n, _)| *n == name) {
                        Some(slot) => slot.1 = i,
                        None => names.push((name, i)),
                    }
                }
                HistogramPlan {
                    metric: h.metric.as_bytes().into(),
                    bins: h.bins.clone(),
                    names,
                }
            })
            .collect();
        let idle = c.delete_idle_stats;
        Plan {
            interval_s: c.flush_interval_ms as f64 / 1000.0,
            counter_rate_ns,
            counter_rate_extra,
            counter_count_ns,
            counter_count_extra,
            timer_ns,
            gauge_ns,
            set_ns,
            suffix: suffix.clone().into_bytes().into(),
            num_stats: num_stats.into_bytes().into(),
            calculation_time: calculation_time.into_bytes().into(),
            processing_time: processing_time.into_bytes().into(),
            graphite_stats: [
                gs("last_exception"),
                gs("last_flush"),
                gs("flush_time"),
                gs("flush_length"),
            ],
            thresholds,
            fixed,
            histogram_emit: Stat::new("histogram", filter).emit,
            histograms,
            delete_counters: c.delete_counters.unwrap_or(idle),
            delete_timers: c.delete_timers.unwrap_or(idle),
            delete_sets: c.delete_sets.unwrap_or(idle),
            delete_gauges: c.delete_gauges.unwrap_or(idle),
            gauges_max_ttl: c.gauges_max_ttl_flushes.max(1),
        }
    }
}

/// Etsy statsd's aggregation state for one shard. No I/O, no locks; buffers for output
/// are the caller's.
pub struct StatsdEngine {
    cfg: StatsdConfig,
    plan: Plan,
    counters: Table<f64>,
    timers: Table<Timer>,
    gauges: Table<Gauge>,
    sets: Table<Set>,
    bad_lines_seen: u32,
    packets_received: u32,
    metrics_received: u32,
    timestamp_lag: Box<[u8]>,
    old_timestamp: i64,
    write_stats: GraphiteWriteStats,
    stats: StatsdCounters,
    key_buf: Vec<u8>,
    key_scratch: KeyScratch,
    order: Vec<u32>,
    cum: Vec<f64>,
    cum_squares: Vec<f64>,
    /// This engine keeps statsd's own keys (`packets_received`, `metrics_received`,
    /// `bad_lines_seen`, `timestamp_lag`): the only engine of one shard, or shard 0's.
    owns_internal: bool,
    cursor: Option<Cursor>,
    /// Heap bytes of the timers' values and sketches and the sets' members, kept as
    /// they grow and recounted at each flush (the tables count the rest).
    value_bytes: usize,
    /// Seeds set members' hashes ([`member_hash`]).
    member_seed: u64,
}

/// JavaScript's `Math.round` for the non-negative values it is used on here.
fn js_round(x: f64) -> f64 {
    let f = x.floor();
    if x - f >= 0.5 {
        f + 1.0
    } else {
        f
    }
}

/// A set member's identity: a 64-bit hash, seeded with `seed` (the engine's, from
/// [`crate::fingerprint::process_seed`]: members never leave their engine), of the
/// text node would see (bytes that are not UTF-8 become U+FFFD, so they are hashed
/// that way).
fn member_hash(v: &[u8], seed: u64) -> u64 {
    // Borrowed (no copy) when `v` is UTF-8 already.
    xxhash_rust::xxh3::xxh3_64_with_seed(String::from_utf8_lossy(v).as_bytes(), seed)
}

impl StatsdEngine {
    /// An engine for `cfg`, started at `start_unix_s` (Etsy's `startup_time`, the first
    /// `graphiteStats.last_flush`).
    pub fn new(cfg: StatsdConfig, start_unix_s: i64) -> Result<StatsdEngine, ConfigError> {
        StatsdEngine::new_shard(cfg, start_unix_s, true)
    }

    /// An engine for one shard of several: only the one that `owns_internal` keeps
    /// statsd's own keys (the others' samples for them go to it).
    pub fn new_shard(
        cfg: StatsdConfig,
        start_unix_s: i64,
        owns_internal: bool,
    ) -> Result<StatsdEngine, ConfigError> {
        cfg.validate()?;
        let plan = Plan::new(&cfg);
        let mut counters = Table::default();
        let ps = &cfg.prefix_stats;
        // Etsy creates these three counters at startup, in this order.
        let mut internal = |n: &str| {
            let name = format!("{ps}.{n}");
            if owns_internal {
                counters.insert(fingerprint(name.as_bytes()), name.as_bytes(), 0.0)
            } else {
                u32::MAX
            }
        };
        let bad_lines_seen = internal("bad_lines_seen");
        let packets_received = internal("packets_received");
        let metrics_received = internal("metrics_received");
        let timestamp_lag = format!("{ps}.timestamp_lag").into_bytes().into();
        Ok(StatsdEngine {
            plan,
            counters,
            timers: Table::default(),
            gauges: Table::default(),
            sets: Table::default(),
            bad_lines_seen,
            packets_received,
            metrics_received,
            timestamp_lag,
            old_timestamp: 0,
            write_stats: GraphiteWriteStats {
                last_exception_s: 0,
                last_flush_s: start_unix_s,
                flush_time_ms: 0,
                flush_length_units: 0,
            },
            stats: StatsdCounters::default(),
            key_buf: Vec::with_capacity(256),
            key_scratch: KeyScratch::default(),
            order: Vec::new(),
            cum: Vec::new(),
            cum_squares: Vec::new(),
            owns_internal,
            cursor: None,
            value_bytes: 0,
            member_seed: crate::fingerprint::process_seed(),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &StatsdConfig {
        &self.cfg
    }

    /// The engine's counters.
    pub fn counters(&self) -> &StatsdCounters {
        &self.stats
    }

    /// Live keys over all types (statsd's own included).
    pub fn keys(&self) -> usize {
        self.counters.len() + self.timers.len() + self.gauges.len() + self.sets.len()
    }

    /// Records the graphite writer's last write, sent as `graphiteStats.*` next flush.
    pub fn record_write(&mut self, stats: GraphiteWriteStats) {
        self.write_stats = stats;
    }

    /// Takes one UDP datagram exactly as Etsy's `handlePacket` does: counts it in
    /// `packets_received`, each non-empty line in `metrics_received`, each rejected
    /// sample in `bad_lines_seen`, and applies the rest.
    pub fn ingest_datagram(&mut self, datagram: &[u8]) {
        self.bump_internal(self.packets_received, 1.0);
        let mut key = std::mem::take(&mut self.key_buf);
        for line in grammar::lines(datagram) {
            self.bump_internal(self.metrics_received, 1.0);
            let parts = grammar::split_line(line);
            key::build_key(
                parts.name,
                parts.tags,
                self.cfg.tag_mode,
                self.cfg.key_name_sanitize,
                &mut key,
                &mut self.key_scratch,
            );
            for chunk in parts.chunks() {
                match grammar::parse_sample(chunk) {
                    Ok(sample) => self.ingest(&key, sample),
                    Err(reason) => {
                        self.bump_internal(self.bad_lines_seen, 1.0);
                        self.stats.rejected[reason as usize] += 1;
                    }
                }
            }
        }
        self.key_buf = key;
    }

    /// Counts what a listener saw for Etsy's own counters: `packets` datagrams (or
    /// stream reads), `lines` non-empty lines and `bad` rejected samples.
    /// Only the engine that owns statsd's own keys counts; the others' callers send
    /// their counts to it.
    pub fn count_intake(&mut self, packets: u64, lines: u64, bad: u64) {
        self.bump_internal(self.packets_received, packets as f64);
        self.bump_internal(self.metrics_received, lines as f64);
        self.bump_internal(self.bad_lines_seen, bad as f64);
    }

    /// Whether this engine keeps statsd's own keys.
    pub fn owns_internal(&self) -> bool {
        self.owns_internal
    }

    fn bump_internal(&mut self, id: u32, n: f64) {
        debug_assert!(
            self.owns_internal,
            "statsd's own counters live on one engine"
        );
        if self.owns_internal {
            *self.counters.value_mut(id) += n;
        }
    }

    /// Applies one sample to `key` (the stored key: sanitised, tags included, as
    /// [`key::build_key`] makes it).
    pub fn ingest(&mut self, key: &[u8], sample: Sample<'_>) {
        self.ingest_fp(key, fingerprint(key), sample);
    }

    /// Starts loading the index entry a sample of this type for key `fp` will look up,
    /// so that a batch of samples overlaps its cache misses.
    #[inline]
    pub fn prefetch(&self, fp: u128, value: &Value<'_>) {
        match value {
            Value::Counter(_) => self.counters.prefetch(fp),
            Value::Timer(_) => self.timers.prefetch(fp),
            Value::Gauge { .. } => self.gauges.prefetch(fp),
            Value::Set(_) => self.sets.prefetch(fp),
        }
    }

    /// [`ingest`](Self::ingest) with the key's [`table::fingerprint`] already computed.
    #[inline]
    pub fn ingest_fp(&mut self, key: &[u8], fp: u128, sample: Sample<'_>) {
        debug_assert_eq!(fp, fingerprint(key));
        if key == key::PROTO_KEY {
            self.stats.rejected_proto_key += 1;
            return;
        }
        let inv_rate = 1.0 / sample.sample_rate;
        match sample.value {
            Value::Counter(v) => {
                let Some(id) = self.slot(Kind::Counter, fp, key) else {
                    return;
                };
                // `if (!counters[key]) counters[key] = 0`: a NaN counter starts over.
                let c = self.counters.value_mut(id);
                if c.is_nan() {
                    *c = 0.0;
                }
                *c += v * inv_rate;
            }
            Value::Timer(v) => {
                let Some(id) = self.slot(Kind::Timer, fp, key) else {
                    return;
                };
                let max = self.cfg.timer_values_max;
                let (err, buckets) = (
                    self.cfg.timer_sketch_relative_error,
                    self.cfg.timer_sketch_buckets_max,
                );
                let t = self.timers.value_mut(id);
                t.count += inv_rate;
                match &mut t.sketch {
                    Some(s) => {
                        let before = s.sketch.bytes();
                        s.add(v);
                        self.value_bytes += s.sketch.bytes() - before;
                    }
                    None if t.values.len() < max => {
                        let before = t.values.capacity();
                        t.values.push(v);
                        if t.values.capacity() != before {
                            self.value_bytes += (t.values.capacity() - before) * 8;
                        }
                    }
                    None => {
                        let before = t.heap_bytes();
                        let mut s = Box::new(TimerSketch {
                            sketch: Sketch::new(err, buckets),
                            sum: 0.0,
                            sum_squares: 0.0,
                            min: f64::INFINITY,
                            max: f64::NEG_INFINITY,
                        });
                        for &x in t.values.iter().chain(std::iter::once(&v)) {
                            s.add(x);
                        }
                        t.values = Vec::new();
                        t.sketch = Some(s);
                        self.value_bytes = self.value_bytes + t.heap_bytes() - before;
                        self.stats.timer_sketches += 1;
                    }
                }
            }
            Value::Gauge { value, delta } => {
                let ttl = self.plan.delete_gauges.then_some(self.plan.gauges_max_ttl);
                match self.gauges.get(fp) {
                    Some(id) => {
                        let g = self.gauges.value_mut(id);
                        if ttl.is_some() {
                            g.ttl = ttl;
                        }
                        // `gauges[key] && /^[-+]/`: a delta needs a truthy (non-zero,
                        // non-NaN) gauge.
                        let truthy = g.value != 0.0 && !g.value.is_nan();
                        if truthy && delta {
                            g.value += value;
                        } else {
                            g.value = value;
                        }
                    }
                    None => {
                        if !self.room_for_key() {
                            return;
                        }
                        self.gauges.insert(fp, key, Gauge { value, ttl });
                    }
                }
            }
            Value::Set(member) => {
                let Some(id) = self.slot(Kind::Set, fp, key) else {
                    return;
                };
                // `store["__proto__"] = true` sets no own property in JavaScript.
                if member == b"__proto__" {
                    self.stats.samples += 1;
                    return;
                }
                let h = member_hash(member, self.member_seed);
                let max = self.cfg.set_values_max;
                let members = &mut self.sets.value_mut(id).members;
                let before = members.bytes();
                match members.insert(h, max) {
                    Insert::Full => {
                        self.stats.set_values_overflow += 1;
                        return;
                    }
                    Insert::Added => self.value_bytes += members.bytes() - before,
                    Insert::Present => {}
                }
            }
        }
        self.stats.samples += 1;
    }

    fn room_for_key(&mut self) -> bool {
        if self.keys() >= self.cfg.keys_max {
            self.stats.keys_overflow += 1;
            return false;
        }
        true
    }

    /// The slot of `fp` in `kind`'s table, inserting an empty value for a new key when
    /// there is room.
    #[inline]
    fn slot(&mut self, kind: Kind, fp: u128, key: &[u8]) -> Option<u32> {
        let found = match kind {
            Kind::Counter => self.counters.get(fp),
            Kind::Timer => self.timers.get(fp),
            Kind::Set => self.sets.get(fp),
        };
        if found.is_some() {
            return found;
        }
        if !self.room_for_key() {
            return None;
        }
        Some(match kind {
            Kind::Counter => self.counters.insert(fp, key, 0.0),
            Kind::Timer => self.timers.insert(
                fp,
                key,
                Timer {
                    values: Vec::new(),
                    count: 0.0,
                    sketch: None,
                },
            ),
            Kind::Set => self.sets.insert(
                fp,
                key,
                Set {
                    members: Members::default(),
                },
            ),
        })
    }

    /// Flushes at `now_unix_ms`: appends to `out` the graphite plaintext lines Etsy's
    /// graphite backend sends (`name value ts\n`, its order), then clears or deletes
    /// what Etsy clears or deletes. One call: [`flush_begin`](Self::flush_begin), every
    /// [`flush_step`](Self::flush_step), [`flush_end`](Self::flush_end) and
    /// [`write_own_lines`](Self::write_own_lines) with this engine's own totals.
    pub fn flush(&mut self, now_unix_ms: i64, out: &mut Vec<u8>) -> FlushSummary {
        self.flush_begin(now_unix_ms);
        while !self.flush_step(out, usize::MAX) {}
        let mut summary = self.flush_end();
        if self.owns_internal {
            summary.lines += self.write_own_lines(&summary.totals(), out);
        }
        summary
    }

    /// Starts a flush at `now_unix_ms` (Etsy's `flushMetrics`): sets `timestamp_lag` on
    /// the engine that owns statsd's own keys. Samples must not be ingested until
    /// [`flush_end`](Self::flush_end): they belong to the next interval.
    pub fn flush_begin(&mut self, now_unix_ms: i64) {
        debug_assert!(self.cursor.is_none(), "a flush is already running");
        let ts = (now_unix_ms + 500).div_euclid(1000);
        if self.owns_internal {
            if self.old_timestamp > 0 {
                let lag = (ts - self.old_timestamp) as f64 - self.plan.interval_s;
                let fp = fingerprint(&self.timestamp_lag);
                match self.gauges.get(fp) {
                    Some(id) => self.gauges.value_mut(id).value = lag,
                    None => {
                        let name = self.timestamp_lag.clone();
                        self.gauges.insert(
                            fp,
                            &name,
                            Gauge {
                                value: lag,
                                ttl: None,
                            },
                        );
                    }
                }
            }
            self.old_timestamp = ts;
        }
        // Every line ends with the same ` ts\n`: printed once here.
        let mut ts_tail = Vec::with_capacity(24);
        ts_tail.push(b' ');
        write_js_number(&mut ts_tail, ts as f64);
        ts_tail.push(b'\n');
        self.counters.iteration_order(&mut self.order);
        self.cursor = Some(Cursor {
            ts,
            ts_tail,
            phase: Phase::Counters,
            pos: 0,
            lines: 0,
            num_stats: 0,
            started: Instant::now(),
            processing: std::time::Duration::ZERO,
        });
    }

    /// Writes the lines of up to `keys_max` more keys to `out`, in Etsy's order
    /// (counters, timers, gauges, sets); true once every key is written.
    pub fn flush_step(&mut self, out: &mut Vec<u8>, keys_max: usize) -> bool {
        let Some(mut c) = self.cursor.take() else {
            return true;
        };
        let mut budget = keys_max;
        let plan = &self.plan;
        let mut w = LineWriter {
            out,
            ts_tail: &c.ts_tail,
            lines: 0,
            suffix: &plan.suffix,
            sanitize_names: !self.cfg.key_name_sanitize,
        };
        while budget > 0 && c.phase != Phase::Done {
            let end = (c.pos + budget).min(self.order.len());
            let ids = &self.order[c.pos..end];
            match c.phase {
                Phase::Counters => {
                    for &id in ids {
                        let key = self.counters.name(id);
                        let v = *self.counters.value(id);
                        let rate = v / plan.interval_s;
                        w.metric(
                            &plan.counter_rate_ns,
                            key,
                            plan.counter_rate_extra,
                            None,
                            rate,
                        );
                        if self.cfg.flush_counts {
                            w.metric(
                                &plan.counter_count_ns,
                                key,
                                plan.counter_count_extra,
                                None,
                                v,
                            );
                        }
                    }
                }
                Phase::Timers => {
                    let t0 = Instant::now();
                    for &id in ids {
                        let t = self.timers.value_mut(id);
                        if t.sketch.is_none() {
                            t.values.sort_by(|a, b| {
                                a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal)
                            });
                        }
                        let t = self.timers.value(id);
                        let key = self.timers.name(id);
                        match &t.sketch {
                            Some(s) => timer_stats_sketch(plan, &mut w, key, t.count, s),
                            None if t.values.is_empty() => {
                                // `count = count_ps = 0`: count_ps is assigned first.
                                for (stat, v) in [(&plan.fixed[4], 0.0), (&plan.fixed[3], 0.0)] {
                                    if stat.emit {
                                        w.metric(&plan.timer_ns, key, Some(&stat.name), None, v);
                                    }
                                }
                            }
                            None => timer_stats_raw(
                                plan,
                                &mut w,
                                key,
                                t.count,
                                &t.values,
                                &mut self.cum,
                                &mut self.cum_squares,
                            ),
                        }
                    }
                    c.processing += t0.elapsed();
                }
                Phase::Gauges => {
                    for &id in ids {
                        let v = self.gauges.value(id).value;
                        w.metric(&plan.gauge_ns, self.gauges.name(id), None, None, v);
                    }
                }
                Phase::Sets => {
                    for &id in ids {
                        let n = self.sets.value(id).members.len() as f64;
                        w.metric(&plan.set_ns, self.sets.name(id), Some(b"count"), None, n);
                    }
                }
                Phase::Done => {}
            }
            let n = ids.len();
            c.num_stats += n as u64;
            c.pos = end;
            budget -= n;
            if c.pos == self.order.len() {
                c.pos = 0;
                c.phase = match c.phase {
                    Phase::Counters => {
                        self.timers.iteration_order(&mut self.order);
                        Phase::Timers
                    }
                    Phase::Timers => {
                        self.gauges.iteration_order(&mut self.order);
                        Phase::Gauges
                    }
                    Phase::Gauges => {
                        self.sets.iteration_order(&mut self.order);
                        Phase::Sets
                    }
                    _ => Phase::Done,
                };
            }
        }
        c.lines += w.lines;
        let done = c.phase == Phase::Done;
        self.cursor = Some(c);
        done
    }

    /// Ends a flush whose steps are done: clears or deletes what Etsy does and returns
    /// what was written (statsd's own lines not included).
    pub fn flush_end(&mut self) -> FlushSummary {
        let c = self.cursor.take().expect("flush_begin was called");
        debug_assert!(c.phase == Phase::Done, "every step was taken");
        self.clear();
        FlushSummary {
            ts: c.ts,
            lines: c.lines,
            num_stats: c.num_stats,
            calculation_ms: c.started.elapsed().as_millis() as u64,
            processing_ms: c.processing.as_millis() as u64,
        }
    }

    /// Whether a flush is between [`flush_begin`](Self::flush_begin) and
    /// [`flush_end`](Self::flush_end).
    pub fn flushing(&self) -> bool {
        self.cursor.is_some()
    }

    /// Writes statsd's own lines (`numStats`, `calculationtime`, `processing_time`, then
    /// the graphite backend's `graphiteStats.*` about its last write) for `totals` (the
    /// sum over every shard's engine); returns the lines written. Only the engine that
    /// owns statsd's own keys writes them.
    pub fn write_own_lines(&self, totals: &FlushTotals, out: &mut Vec<u8>) -> u64 {
        let plan = &self.plan;
        let mut ts_tail = Vec::with_capacity(24);
        ts_tail.push(b' ');
        write_js_number(&mut ts_tail, totals.ts as f64);
        ts_tail.push(b'\n');
        let mut w = LineWriter {
            out,
            ts_tail: &ts_tail,
            lines: 0,
            suffix: &plan.suffix,
            sanitize_names: false,
        };
        w.raw(&plan.num_stats, totals.num_stats as f64);
        w.raw(&plan.calculation_time, totals.calculation_ms as f64);
        w.raw(&plan.processing_time, totals.processing_ms as f64);
        let ws = self.write_stats;
        w.raw(&plan.graphite_stats[0], ws.last_exception_s as f64);
        w.raw(&plan.graphite_stats[1], ws.last_flush_s as f64);
        w.raw(&plan.graphite_stats[2], ws.flush_time_ms as f64);
        w.raw(&plan.graphite_stats[3], ws.flush_length_units as f64);
        w.lines
    }

    /// Etsy's `clear_metrics`, run after the backends have the flush.
    fn clear(&mut self) {
        let plan = &self.plan;
        self.counters.iteration_order(&mut self.order);
        for &id in &self.order {
            let keep = !plan.delete_counters || {
                let n = self.counters.name(id);
                [
                    &b"packets_received"[..],
                    b"metrics_received",
                    b"bad_lines_seen",
                ]
                .iter()
                .any(|s| memchr::memmem::find(n, s).is_some())
            };
            if keep {
                *self.counters.value_mut(id) = 0.0;
            } else {
                self.counters.delete(id);
            }
        }
        self.counters.compact();

        let mut value_bytes = 0;
        self.timers.iteration_order(&mut self.order);
        for &id in &self.order {
            if plan.delete_timers {
                self.timers.delete(id);
            } else {
                let t = self.timers.value_mut(id);
                let used = t.values.len();
                t.values.clear();
                if t.values.capacity() > 64 && t.values.capacity() > 4 * used {
                    t.values.shrink_to(used);
                }
                t.count = 0.0;
                t.sketch = None;
                value_bytes += t.heap_bytes();
            }
        }
        self.timers.compact();

        self.sets.iteration_order(&mut self.order);
        for &id in &self.order {
            if plan.delete_sets {
                self.sets.delete(id);
            } else {
                let members = &mut self.sets.value_mut(id).members;
                members.clear();
                value_bytes += members.bytes();
            }
        }
        self.sets.compact();
        self.value_bytes = value_bytes;

        if plan.delete_gauges {
            self.gauges.iteration_order(&mut self.order);
            for &id in &self.order {
                let g = self.gauges.value_mut(id);
                if let Some(ttl) = &mut g.ttl {
                    *ttl -= 1;
                    if *ttl < 1 {
                        self.gauges.delete(id);
                    }
                }
            }
            self.gauges.compact();
        }
    }

    /// The graphite writer's last write as recorded (Etsy's `graphiteStats`).
    pub fn last_write(&self) -> GraphiteWriteStats {
        self.write_stats
    }

    /// One table as the management console shows it, in Etsy's `for..in` order.
    pub fn dump(&self, kind: mgmt::Kind) -> Vec<(Vec<u8>, DumpValue)> {
        let mut order = Vec::new();
        let mut out = Vec::new();
        match kind {
            mgmt::Kind::Counters => {
                self.counters.iteration_order(&mut order);
                for &id in &order {
                    out.push((
                        self.counters.name(id).to_vec(),
                        DumpValue::Number(*self.counters.value(id)),
                    ));
                }
            }
            mgmt::Kind::Timers => {
                self.timers.iteration_order(&mut order);
                for &id in &order {
                    // A timer past timer_values_max holds a sketch, not its values.
                    out.push((
                        self.timers.name(id).to_vec(),
                        DumpValue::Numbers(self.timers.value(id).values.clone()),
                    ));
                }
            }
            mgmt::Kind::Gauges => {
                self.gauges.iteration_order(&mut order);
                for &id in &order {
                    out.push((
                        self.gauges.name(id).to_vec(),
                        DumpValue::Number(self.gauges.value(id).value),
                    ));
                }
            }
            mgmt::Kind::Sets => {
                self.sets.iteration_order(&mut order);
                for &id in &order {
                    out.push((
                        self.sets.name(id).to_vec(),
                        DumpValue::Number(self.sets.value(id).members.len() as f64),
                    ));
                }
            }
        }
        out
    }

    /// Deletes the named keys of one table (the console's `delcounters` and the rest);
    /// returns how many were there. statsd's own counters are kept (zeroed), as a
    /// deleted one would be recreated by the next packet in Etsy.
    pub fn delete_keys(&mut self, kind: mgmt::Kind, names: &[Vec<u8>]) -> usize {
        let mut n = 0;
        for name in names {
            let fp = fingerprint(name);
            let found = match kind {
                mgmt::Kind::Counters => self.counters.get(fp),
                mgmt::Kind::Timers => self.timers.get(fp),
                mgmt::Kind::Gauges => self.gauges.get(fp),
                mgmt::Kind::Sets => self.sets.get(fp),
            };
            let Some(id) = found else { continue };
            n += 1;
            match kind {
                mgmt::Kind::Counters => {
                    let internal = [
                        self.bad_lines_seen,
                        self.packets_received,
                        self.metrics_received,
                    ];
                    if self.owns_internal && internal.contains(&id) {
                        *self.counters.value_mut(id) = 0.0;
                    } else {
                        self.counters.delete(id);
                    }
                }
                mgmt::Kind::Timers => {
                    self.value_bytes = self
                        .value_bytes
                        .saturating_sub(self.timers.value(id).heap_bytes());
                    self.timers.delete(id);
                }
                mgmt::Kind::Gauges => self.gauges.delete(id),
                mgmt::Kind::Sets => {
                    self.value_bytes = self
                        .value_bytes
                        .saturating_sub(self.sets.value(id).members.bytes());
                    self.sets.delete(id);
                }
            }
        }
        self.counters.compact();
        self.timers.compact();
        self.gauges.compact();
        self.sets.compact();
        n
    }

    /// Bytes held by the key tables and the values' heap parts (an estimate from
    /// capacities; the benchmark measures the allocator instead).
    pub fn bytes_estimate(&self) -> usize {
        self.counters.bytes_estimate()
            + self.timers.bytes_estimate()
            + self.gauges.bytes_estimate()
            + self.sets.bytes_estimate()
            + self.value_bytes
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Timer,
    Set,
}

/// Writes `ns + name [+ . extra [+ . extra2]] + suffix + tags value ts\n`, Etsy's
/// `format(namespace, key, ...)`: the key's text up to its first `;` is the name, the
/// rest (`;k=v...`) goes after the suffix.
struct LineWriter<'a> {
    out: &'a mut Vec<u8>,
    /// ` ts\n`, the end of every line.
    ts_tail: &'a [u8],
    lines: u64,
    suffix: &'a [u8],
    /// Keys are kept unsanitised (`keyNameSanitize: false`): the graphite backend then
    /// sanitises each line's name part (not its tags) as it writes it.
    sanitize_names: bool,
}

impl LineWriter<'_> {
    #[inline]
    fn metric(
        &mut self,
        ns: &[u8],
        key: &[u8],
        extra: Option<&[u8]>,
        extra2: Option<&[u8]>,
        v: f64,
    ) {
        let (name, tags) = match memchr::memchr(b';', key) {
            Some(at) => key.split_at(at),
            None => (key, &key[..0]),
        };
        self.out.extend_from_slice(ns);
        if self.sanitize_names {
            key::sanitize_into(name, self.out);
        } else {
            self.out.extend_from_slice(name);
        }
        for e in [extra, extra2].into_iter().flatten() {
            self.out.push(b'.');
            self.out.extend_from_slice(e);
        }
        self.out.extend_from_slice(self.suffix);
        self.out.extend_from_slice(tags);
        self.value_ts(v);
    }

    fn raw(&mut self, name: &[u8], v: f64) {
        self.out.extend_from_slice(name);
        self.value_ts(v);
    }

    #[inline]
    fn value_ts(&mut self, v: f64) {
        self.out.push(b' ');
        write_js_number(self.out, v);
        self.out.extend_from_slice(self.ts_tail);
        self.lines += 1;
    }
}

/// One threshold's values; `None` is JavaScript's `undefined`, which the graphite
/// backend skips (it sends only numbers).
struct ThresholdValues {
    k: f64,
    mean: f64,
    bound: Option<f64>,
    sum: Option<f64>,
    sum_squares: Option<f64>,
}

fn write_threshold(
    plan: &Plan,
    w: &mut LineWriter<'_>,
    key: &[u8],
    t: &Threshold,
    v: ThresholdValues,
) {
    let vals = [Some(v.k), Some(v.mean), v.bound, v.sum, v.sum_squares];
    for (stat, val) in t.stats.iter().zip(vals) {
        if let (true, Some(x)) = (stat.emit, val) {
            w.metric(&plan.timer_ns, key, Some(&stat.name), None, x);
        }
    }
}

/// `process_metrics` for a timer with raw values (sorted ascending), exactly.
fn timer_stats_raw(
    plan: &Plan,
    w: &mut LineWriter<'_>,
    key: &[u8],
    timer_count: f64,
    values: &[f64],
    cum: &mut Vec<f64>,
    cum_squares: &mut Vec<f64>,
) {
    let count = values.len();
    let n = count as f64;
    let min = values[0];
    let max = values[count - 1];
    cum.clear();
    cum_squares.clear();
    cum.push(min);
    cum_squares.push(min * min);
    for i in 1..count {
        cum.push(values[i] + cum[i - 1]);
        cum_squares.push(values[i] * values[i] + cum_squares[i - 1]);
    }
    // JavaScript array reads past either end are `undefined`.
    let at = |a: &[f64], i: f64| -> Option<f64> {
        if i >= 0.0 && i < a.len() as f64 {
            Some(a[i as usize])
        } else {
            None
        }
    };
    for t in &plan.thresholds {
        let mut v = ThresholdValues {
            k: n,
            mean: min,
            bound: Some(max),
            sum: Some(min),
            sum_squares: Some(min * min),
        };
        if count > 1 {
            let k = js_round(t.pct.abs() / 100.0 * n);
            if k == 0.0 {
                continue;
            }
            v.k = k;
            if t.pct > 0.0 {
                v.bound = at(values, k - 1.0);
                v.sum = at(cum, k - 1.0);
                v.sum_squares = at(cum_squares, k - 1.0);
            } else {
                v.bound = at(values, n - k);
                let last = cum[count - 1];
                let last_sq = cum_squares[count - 1];
                // `undefined` in a subtraction gives NaN, which is sent.
                v.sum = Some(last - at(cum, n - k - 1.0).unwrap_or(f64::NAN));
                v.sum_squares = Some(last_sq - at(cum_squares, n - k - 1.0).unwrap_or(f64::NAN));
            }
            v.mean = v.sum.unwrap_or(f64::NAN) / k;
        }
        write_threshold(plan, w, key, t, v);
    }
    let sum = cum[count - 1];
    let sum_squares = cum_squares[count - 1];
    let mean = sum / n;
    let mut diffs = 0.0;
    for &x in values {
        diffs += (x - mean) * (x - mean);
    }
    let mid = count / 2;
    let median = if count % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    };
    let std = (diffs / n).sqrt();
    write_fixed(
        plan,
        w,
        key,
        [
            std,
            max,
            min,
            timer_count,
            timer_count / plan.interval_s,
            sum,
            sum_squares,
            mean,
            median,
        ],
    );
    if let Some(h) = histogram_for(plan, key) {
        let mut freqs = [0u64; HISTOGRAM_BINS_MAX];
        let mut i = 0;
        for (b, bin) in h.bins.iter().enumerate().take(freqs.len()) {
            let mut freq = 0;
            while i < count
                && match bin {
                    Bin::Inf => true,
                    Bin::Below(x) => values[i] < *x,
                }
            {
                freq += 1;
                i += 1;
            }
            freqs[b] = freq;
        }
        write_histogram(plan, w, key, h, &freqs);
    }
}

/// Timer statistics from a sketch: counts, sum, sum of squares, min and max exact (sums
/// in arrival order), rank statistics within the sketch's relative error.
fn timer_stats_sketch(
    plan: &Plan,
    w: &mut LineWriter<'_>,
    key: &[u8],
    timer_count: f64,
    s: &TimerSketch,
) {
    let sk = &s.sketch;
    let count = sk.len();
    let n = count as f64;
    let clamp = |v: f64| v.max(s.min).min(s.max);
    let (all_sum, all_sq) = sk.sums_lowest(count);
    for t in &plan.thresholds {
        let k = js_round(t.pct.abs() / 100.0 * n);
        if k == 0.0 {
            continue;
        }
        let ku = k as u64;
        let mut v = ThresholdValues {
            k,
            mean: f64::NAN,
            bound: None,
            sum: Some(f64::NAN),
            sum_squares: Some(f64::NAN),
        };
        if ku <= count {
            if t.pct > 0.0 {
                v.bound = Some(clamp(sk.value_at_rank(ku - 1)));
                let (a, b) = sk.sums_lowest(ku);
                v.sum = Some(a);
                v.sum_squares = Some(b);
            } else {
                v.bound = Some(clamp(sk.value_at_rank(count - ku)));
                let (a, b) = sk.sums_lowest(count - ku);
                v.sum = Some(all_sum - a);
                v.sum_squares = Some(all_sq - b);
            }
            v.mean = v.sum.unwrap_or(f64::NAN) / k;
        }
        write_threshold(plan, w, key, t, v);
    }
    let mean = s.sum / n;
    let std = (s.sum_squares / n - mean * mean).max(0.0).sqrt();
    let mid = count / 2;
    let median = if count % 2 == 1 {
        clamp(sk.value_at_rank(mid))
    } else {
        (clamp(sk.value_at_rank(mid - 1)) + clamp(sk.value_at_rank(mid))) / 2.0
    };
    write_fixed(
        plan,
        w,
        key,
        [
            std,
            s.max,
            s.min,
            timer_count,
            timer_count / plan.interval_s,
            s.sum,
            s.sum_squares,
            mean,
            median,
        ],
    );
    if let Some(h) = histogram_for(plan, key) {
        let mut freqs = [0u64; HISTOGRAM_BINS_MAX];
        let mut buckets = sk.buckets().peekable();
        for (b, bin) in h.bins.iter().enumerate().take(freqs.len()) {
            let mut freq = 0;
            while let Some(&(v, c)) = buckets.peek() {
                let inside = match bin {
                    Bin::Inf => true,
                    Bin::Below(x) => v < *x,
                };
                if !inside {
                    break;
                }
                freq += c;
                buckets.next();
            }
            freqs[b] = freq;
        }
        write_histogram(plan, w, key, h, &freqs);
    }
}

fn write_fixed(plan: &Plan, w: &mut LineWriter<'_>, key: &[u8], vals: [f64; 9]) {
    for (stat, v) in plan.fixed.iter().zip(vals) {
        if stat.emit {
            w.metric(&plan.timer_ns, key, Some(&stat.name), None, v);
        }
    }
}

fn histogram_for<'p>(plan: &'p Plan, key: &[u8]) -> Option<&'p HistogramPlan> {
    if !plan.histogram_emit {
        return None;
    }
    let h = plan
        .histograms
        .iter()
        .find(|h| memchr::memmem::find(key, &h.metric).is_some())?;
    (!h.bins.is_empty()).then_some(h)
}

fn write_histogram(
    plan: &Plan,
    w: &mut LineWriter<'_>,
    key: &[u8],
    h: &HistogramPlan,
    freqs: &[u64; HISTOGRAM_BINS_MAX],
) {
    for (name, last) in &h.names {
        w.metric(
            &plan.timer_ns,
            key,
            Some(b"histogram"),
            Some(name),
            freqs[*last] as f64,
        );
    }
}

#[cfg(test)]
mod tests;

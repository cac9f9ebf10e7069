//! The typed point: the boundary between decoding and everything after it.
//!
//! A decoder (`protocol::decode`) turns a receive buffer into points; the router picks
//! their targets; encoders, aggregators and stores take them. A point borrows its name,
//! routing key and received line from the receive buffer and carries its value as
//! its protocol gave it: graphite's value and timestamp (validated at decode, converted
//! to numbers only where a stage needs them: the relay writes the text as received), a
//! statsd sample (type, number or set member, rate, tags), a collectd value list (its
//! identity strings and values borrowed from the datagram, its identifier written by the
//! decoder into a scratch the point borrows) or nothing (a regex line is routed by its
//! key and written out whole). Nothing here allocates.

use crate::protocol::collectd::types_db::DataSource;
use crate::protocol::collectd::ValueList;
use crate::protocol::statsd;

/// One metric sample on its way through a shard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point<'a> {
    /// The name routes match: graphite's full name (tags included), statsd's text
    /// before `:`, a regex line's `Key` group, a collectd value list's identifier
    /// (`host/plugin[-plugin_instance]/type[-type_instance]`).
    pub name: &'a [u8],
    /// The prefix of `name` rings hash: graphite's name up to its first `;`, a collectd
    /// value list's host (clusters with `key = "identifier"` hash `name` instead), the
    /// whole name otherwise.
    pub key: &'a [u8],
    /// The received line, when it goes out as is under its own name (graphite in normal
    /// form, statsd, regex); empty when an encoder must rebuild it from the fields (and,
    /// for statsd, on every sample of a line but the first: the line goes out once).
    pub line: &'a [u8],
    /// What the point carries.
    pub value: Value<'a>,
}

/// A point's value, by protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// Graphite plaintext (and aggregated output, which is written as graphite).
    Graphite(Graphite<'a>),
    /// One sample of a statsd line.
    Statsd(Statsd<'a>),
    /// Numbers a binary protocol carried (carbon's pickle): timestamp and value.
    Numeric(Numeric),
    /// A line routed by a key cut out of it; no value of its own.
    Line,
    /// A collectd value list.
    Collectd(Collectd<'a>),
}

/// A collectd value list as decoded, with its type's data sources when the listener's
/// types.db knows the type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Collectd<'a> {
    /// The value list, its strings and values borrowed from the datagram.
    pub vl: &'a ValueList<'a>,
    /// The data sources of its type (names for graphite output); `None` when the
    /// listener's table does not have the type (passed on as received; a graphite
    /// destination cannot name it and counts it).
    pub sources: Option<&'a [DataSource]>,
}

/// A datapoint as numbers, as carbon's pickle receiver makes them (`float()` of each).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Numeric {
    /// Seconds since the epoch (`-1`: now, as in plaintext).
    pub timestamp: f64,
    /// The value (never NaN: the decoder skips it, as carbon; infinities are kept).
    pub value: f64,
}

impl Value<'_> {
    /// carbon's datapoint for a graphite or pickle point: `(float(timestamp),
    /// float(value))`, a timestamp whose `int()` is -1 replaced by `now_s()` (carbon's
    /// `MetricReceiver.metricReceived`, which reads `time.time()` for each such point).
    /// The value may be infinite, or NaN from plaintext (carbon drops those: callers do
    /// too). `None` for statsd samples, lines and collectd value lists.
    #[inline]
    pub fn datapoint(&self, now_s: impl FnOnce() -> f64) -> Option<(f64, f64)> {
        let (ts, v) = match self {
            Value::Graphite(g) => (
                crate::protocol::parse_f64(g.timestamp)?,
                crate::protocol::python_float(g.value)?,
            ),
            Value::Numeric(n) => (n.timestamp, n.value),
            // A value list has data sources, named only by write_graphite's rules.
            Value::Statsd(_) | Value::Line | Value::Collectd(_) => return None,
        };
        Some(if ts.trunc() == -1.0 {
            (now_s(), v)
        } else {
            (ts, v)
        })
    }
}

/// Graphite's value and timestamp, validated as numbers at decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Graphite<'a> {
    /// The value field as received (anything python's `float()` reads, `nan` and `inf`
    /// included: a relay forwards it as it came, a store drops NaN).
    pub value: &'a [u8],
    /// The timestamp field as received (seconds, integer or decimal; `-1` is "now").
    pub timestamp: &'a [u8],
}

/// One statsd sample with the tag list of its line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Statsd<'a> {
    /// What the sample adds, and its rate.
    pub sample: statsd::Sample<'a>,
    /// The line's DogStatsD tag list as sent (text after `|#`), empty when none.
    pub tags: &'a [u8],
}

impl Point<'_> {
    /// A point with nothing in it (batch filler).
    pub const EMPTY: Point<'static> = Point {
        name: &[],
        key: &[],
        line: &[],
        value: Value::Line,
    };
}

/// Where points enter routing from: the listener that read them, the aggregator that
/// flushed them (or passed its inputs on), or cadent's own counters. Routes with
/// `from` take points of the origins they name; decisions are cached per origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Listener id (its counters' index; ids are never reused).
    Listener(u16),
    /// Aggregator index in the topology's config.
    Aggregator(u16),
    /// cadent's self-metrics (`[telemetry]`).
    Telemetry,
}

impl Origin {
    /// One number per origin, for the route cache's fingerprint.
    pub fn code(self) -> u32 {
        match self {
            Origin::Listener(l) => u32::from(l),
            Origin::Aggregator(a) => 0x1_0000 | u32::from(a),
            Origin::Telemetry => 0x2_0000,
        }
    }
}

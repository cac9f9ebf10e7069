//! Encoders: how a destination writes the points it is given. A closed set: a new sink
//! format (pickle, store records) is a new variant.
//!
//! Each destination slot owns one encoder and appends points to its open batch through
//! it; a batch holds whole records, so it can be written, spooled or replayed as is.
//! Text encoders write records (lines) straight into the batch; the collectd encoder
//! packs value lists into a packet of its own and hands over each packet when it is
//! full (or flushed), so a batch is whole packets.

use super::collectd::graphite_names::{GraphiteNamer, GraphiteOptions, GraphiteReject};
use super::collectd::{self, EncoderConfig};
use crate::point::{Point, Value};

/// A destination's wire format, with the state it keeps.
#[derive(Debug)]
pub enum Encoder {
    /// Text lines: graphite in normal form (`name value timestamp\n`), statsd and regex
    /// lines as received (a statsd line under a rewritten name keeps everything after its
    /// name), and collectd value lists as collectd's write_graphite writes them (a line
    /// per data source, ended by CRLF as collectd ends them).
    Plaintext(Box<Plaintext>),
    /// collectd's binary protocol: value lists packed into full packets.
    Collectd(Box<CollectdPackets>),
}

/// Why a point was not written. A closed set, so counters are an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Unencodable {
    /// A line (graphite, statsd, regex) to a collectd destination: it has no value list.
    NotCollectd = 0,
    /// A collectd value list whose type the listener's table lacks, to a text
    /// destination: its data sources cannot be named.
    UnknownType,
    /// A collectd value list no collectd receiver would take, or too big for one packet.
    BadValueList,
}

impl Unencodable {
    /// Number of reasons.
    pub const COUNT: usize = 3;
    /// Every reason, in counter order.
    pub const ALL: [Unencodable; Unencodable::COUNT] = [
        Unencodable::NotCollectd,
        Unencodable::UnknownType,
        Unencodable::BadValueList,
    ];

    /// The reason as it appears in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Unencodable::NotCollectd => "not_collectd",
            Unencodable::UnknownType => "unknown_type",
            Unencodable::BadValueList => "bad_value_list",
        }
    }
}

const _: () = assert!(Unencodable::BadValueList as usize + 1 == Unencodable::COUNT);

impl Encoder {
    /// Text lines, collectd value lists named with write_graphite's default options.
    pub fn plaintext() -> Encoder {
        Encoder::lines(GraphiteOptions::default(), usize::MAX)
    }

    /// Text lines, collectd value lists named with `options` (rate state for at most
    /// `series_max` series).
    pub fn lines(options: GraphiteOptions, series_max: usize) -> Encoder {
        let mut namer = GraphiteNamer::new(options).expect("options validated by config");
        namer.set_series_max(series_max);
        Encoder::Plaintext(Box::new(Plaintext { namer }))
    }

    /// collectd packets made as `config` says.
    pub fn collectd(config: EncoderConfig) -> Encoder {
        Encoder::Collectd(Box::new(CollectdPackets {
            encoder: collectd::Encoder::new(config),
        }))
    }
}

/// The text encoder's state: write_graphite's naming and per-series rates.
#[derive(Debug)]
pub struct Plaintext {
    namer: GraphiteNamer,
}

impl Plaintext {
    /// Appends `p` under `name` to `out` (`as_received`: `name` is the point's own, not
    /// cleansed or rewritten); returns the records (lines) written: 0 for the second and
    /// later samples of a statsd line (the line goes out once).
    #[inline(always)]
    pub fn encode(
        &mut self,
        p: &Point<'_>,
        name: &[u8],
        as_received: bool,
        out: &mut Vec<u8>,
    ) -> Result<u32, Unencodable> {
        if let Value::Collectd(c) = p.value {
            return self.encode_collectd(c, out);
        }
        if let Value::Numeric(n) = p.value {
            out.extend_from_slice(name);
            out.push(b' ');
            out.extend_from_slice(NumberText::value(n.value).as_bytes());
            out.push(b' ');
            out.extend_from_slice(NumberText::timestamp(n.timestamp).as_bytes());
            out.push(b'\n');
            return Ok(1);
        }
        let pieces = plaintext_pieces(p, name, as_received);
        if pieces[0].is_empty() {
            return Ok(0);
        }
        for piece in pieces.iter().filter(|x| !x.is_empty()) {
            out.extend_from_slice(piece);
        }
        out.push(b'\n');
        Ok(1)
    }

    /// A collectd value list as write_graphite's lines (out of line: the graphite path
    /// stays small).
    #[inline(never)]
    fn encode_collectd(
        &mut self,
        c: crate::point::Collectd<'_>,
        out: &mut Vec<u8>,
    ) -> Result<u32, Unencodable> {
        let Some(ds) = c.sources else {
            return Err(Unencodable::UnknownType);
        };
        match self.namer.write_sources(ds, c.vl, out) {
            Ok(n) => Ok(n as u32),
            Err(GraphiteReject::UnknownType) => Err(Unencodable::UnknownType),
            Err(GraphiteReject::ValueCount) => Err(Unencodable::BadValueList),
        }
    }

    /// collectd series written with an unknown rate because `store_rates_series_max`
    /// series have rate state (a count since start).
    pub fn series_full(&self) -> u64 {
        self.namer.stats().series_full
    }
}

/// The collectd encoder's state: the packet being filled.
pub struct CollectdPackets {
    encoder: collectd::Encoder,
}

impl std::fmt::Debug for CollectdPackets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectdPackets")
            .field("pending", &self.encoder.pending())
            .finish_non_exhaustive()
    }
}

impl CollectdPackets {
    /// Packs `p`'s value list; when the packet so far is full, it goes to `sink` first
    /// with the number of value lists it holds.
    #[inline]
    pub fn push(
        &mut self,
        p: &Point<'_>,
        sink: &mut impl FnMut(&[u8], u32),
    ) -> Result<(), Unencodable> {
        let Value::Collectd(c) = p.value else {
            return Err(Unencodable::NotCollectd);
        };
        let held = self.encoder.pending() as u32;
        // Decoded value lists only reach here: their strings need no check.
        self.encoder
            .push_decoded(c.vl, &mut |packet: &[u8]| sink(packet, held))
            .map_err(|_| Unencodable::BadValueList)
    }

    /// Hands the packet being filled to `sink`, if it holds anything.
    pub fn flush(&mut self, sink: &mut impl FnMut(&[u8], u32)) {
        let held = self.encoder.pending() as u32;
        self.encoder.flush(&mut |packet: &[u8]| sink(packet, held));
    }

    /// Value lists in the packet being filled.
    pub fn pending(&self) -> usize {
        self.encoder.pending()
    }
}

/// The pieces of a plaintext line, joined without separators; all empty when nothing
/// is written.
#[inline]
fn plaintext_pieces<'a>(p: &Point<'a>, name: &'a [u8], as_received: bool) -> [&'a [u8]; 5] {
    match p.value {
        // A regex line's key is somewhere inside it: a rewrite changes where the line
        // goes, and the line goes out as received.
        Value::Line => [p.line, &[], &[], &[], &[]],
        // Only the first sample of a statsd line carries it.
        Value::Statsd(_) if p.line.is_empty() => [&[], &[], &[], &[], &[]],
        // A line in normal form (statsd always is) goes out as one copy.
        _ if as_received && !p.line.is_empty() => [p.line, &[], &[], &[], &[]],
        // statsd: the new name, then the line after it as received.
        Value::Statsd(_) => [name, &p.line[p.name.len()..], &[], &[], &[]],
        Value::Graphite(g) => [name, b" ", g.value, b" ", g.timestamp],
        // Named by write_graphite's rules before it gets here.
        Value::Collectd(_) => [&[], &[], &[], &[], &[]],
        // Written by `encode` itself (numbers need formatting).
        Value::Numeric(_) => [&[], &[], &[], &[], &[]],
    }
}

/// A number as plaintext writes it, on the stack: a value as Rust's shortest round-trip
/// form (`1.5`, `1e300`), a timestamp as an integer when it is one.
struct NumberText {
    buf: [u8; 32],
    len: usize,
}

impl NumberText {
    fn value(v: f64) -> NumberText {
        let mut t = NumberText {
            buf: [0; 32],
            len: 0,
        };
        let mut w = &mut t.buf[..];
        let _ = std::io::Write::write_fmt(&mut w, format_args!("{v:?}"));
        t.len = 32 - w.len();
        t
    }

    fn timestamp(ts: f64) -> NumberText {
        if ts.fract() == 0.0 && ts.abs() < 9.0e15 {
            let mut t = NumberText {
                buf: [0; 32],
                len: 0,
            };
            let mut w = &mut t.buf[..];
            let _ = std::io::Write::write_fmt(&mut w, format_args!("{}", ts as i64));
            t.len = 32 - w.len();
            t
        } else {
            NumberText::value(ts)
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point;
    use crate::protocol::statsd;

    #[test]
    fn plaintext() {
        let g = Point {
            name: b"a.b",
            key: b"a.b",
            line: &[],
            value: Value::Graphite(point::Graphite {
                value: b"1.5",
                timestamp: b"17",
            }),
        };
        let mut out = Vec::new();
        let Encoder::Plaintext(mut e) = Encoder::plaintext() else {
            unreachable!()
        };
        assert_eq!(e.encode(&g, b"x.y", false, &mut out), Ok(1));
        let s = Point {
            name: b"s",
            key: b"s",
            line: b"s:1|c|#t",
            value: Value::Statsd(point::Statsd {
                sample: statsd::Sample {
                    value: statsd::Value::Counter(1.0),
                    sample_rate: 1.0,
                },
                tags: b"t",
            }),
        };
        assert_eq!(e.encode(&s, b"s", true, &mut out), Ok(1));
        assert_eq!(e.encode(&s, b"renamed", false, &mut out), Ok(1));
        let second = Point { line: &[], ..s };
        assert_eq!(e.encode(&second, b"s", true, &mut out), Ok(0));
        assert_eq!(out, b"x.y 1.5 17\ns:1|c|#t\nrenamed:1|c|#t\n");
    }
}

//! Decoders: one per listener format, each doing its framing and its parsing, from a
//! receive buffer to [`Point`]s. A closed set: a new wire format is a new variant with
//! its own framing, not a branch in the shard loop.
//!
//! A decoder is pure: bytes in, points handed to the caller's `emit`, and what it read
//! counted in [`DecodeCounts`]. Points borrow from the buffer.
//!
//! collectd is the one binary format: a datagram is decoded (and decrypted in place) by
//! [`CollectdDecoder::decode`], which hands points over in batches of up to
//! [`COLLECTD_BATCH`]: a value list's identifier, the name routes match, is not in the
//! datagram, so the decoder writes it into a scratch of its own, and the points of a
//! batch borrow that scratch until the caller has routed them.

use std::sync::Arc;

use super::collectd::types_db::{DataSource, TypesDb};
use super::collectd::{self, CdTime, Record, ValueList, Values, NAME_BYTES_MAX};
use super::lines::{self, Piece};
use super::pickle::{self, Framed};
use super::regex_line::{self, RegexLine};
use super::{graphite, statsd, Reject};
use crate::point::{self, Point, Value};

/// Where a buffer handed to a decoder stands in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// More bytes may follow: keep a trailing partial line for the next call.
    More,
    /// The stream ended: a trailing partial line is refused as unterminated.
    Stream,
    /// The buffer is one whole datagram: its last line needs no newline.
    Datagram,
}

/// What one decode call read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeCounts {
    /// Lines seen, good and bad (`received_lines = parsed_lines + rejected lines`).
    pub received_lines: u64,
    /// Lines that gave at least one point.
    pub parsed_lines: u64,
    /// Lines that gave none, by the reason of their first refusal.
    pub rejected_lines: [u64; Reject::COUNT],
    /// statsd samples refused (in bad lines and in good lines with a bad sample among
    /// good ones): Etsy's `bad_lines_seen`.
    pub rejected_samples: u64,
    /// collectd: what the packet decoder read and refused.
    pub collectd: collectd::DecodeStats,
    /// collectd: value lists refused by the types table, by [`TypesReject`].
    pub collectd_types_rejects: [u64; TypesReject::COUNT],
    /// Pickle frames dropped whole (a pickle that does not load as carbon's data, a
    /// frame over the bound, a stream cut mid-frame), by [`pickle::Reject`] reason.
    pub rejected_frames: [u64; pickle::Reject::COUNT],
}

impl DecodeCounts {
    /// Zeroes the counts.
    pub fn clear(&mut self) {
        *self = DecodeCounts::default();
    }
}

/// A listener's framing and grammar.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// Graphite plaintext: `name value timestamp` lines.
    Graphite {
        /// The listener's `cleanse_names`: names are cleansed as carbon-c-relay does
        /// before routing, so control bytes, DEL and invalid UTF-8 in a name are taken
        /// (the cleansing makes them `_` in the path) instead of refused (see
        /// [`graphite::parse_with`]).
        cleanse_names: bool,
    },
    /// statsd lines by Etsy's grammar; one point per sample.
    Statsd,
    /// Any line, routed by the key a regex cuts out of it.
    Regex(RegexLine),
    /// collectd's binary protocol, one datagram at a time
    /// ([`CollectdDecoder::decode`]); never framed as lines.
    Collectd(Box<CollectdDecoder>),
    /// carbon's pickle receiver: length-prefixed frames of `[(name, (ts, value)), ...]`
    /// ([`decode_pickle`](Self::decode_pickle)).
    Pickle {
        /// Largest frame; a larger one ends the stream's use (carbon drops the
        /// connection).
        frame_bytes_max: usize,
    },
}

impl Decoder {
    /// Whether names are cleansed before routing (graphite with `cleanse_names`).
    pub fn cleanses_names(&self) -> bool {
        matches!(
            self,
            Decoder::Graphite {
                cleanse_names: true
            }
        )
    }

    /// Decodes the complete lines of `buf` (and, at the end of a datagram or stream, its
    /// last unterminated one), handing each point to `emit`; returns the bytes consumed.
    /// `skipping` carries an over-long line across calls.
    pub fn decode<'b>(
        &self,
        buf: &'b [u8],
        end: End,
        line_bytes_max: usize,
        skipping: &mut bool,
        counts: &mut DecodeCounts,
        emit: &mut impl FnMut(Point<'b>),
    ) -> usize {
        match self {
            Decoder::Statsd => decode_statsd(buf, end, line_bytes_max, skipping, counts, emit),
            Decoder::Collectd(_) => {
                debug_assert!(
                    false,
                    "collectd datagrams go through CollectdDecoder::decode"
                );
                buf.len()
            }
            Decoder::Pickle { .. } => unreachable!("pickle frames go through decode_pickle"),
            _ => {
                let mut on_line =
                    |line: &'b [u8], counts: &mut DecodeCounts| self.line(line, counts, emit);
                frame_lines(buf, end, line_bytes_max, skipping, counts, &mut on_line)
            }
        }
    }

    /// One graphite or regex line.
    #[inline]
    fn line<'b>(
        &self,
        line: &'b [u8],
        counts: &mut DecodeCounts,
        emit: &mut impl FnMut(Point<'b>),
    ) {
        counts.received_lines += 1;
        let parsed = match self {
            Decoder::Graphite { cleanse_names } => {
                graphite::parse_with(line, *cleanse_names).map(|l| Point {
                    name: l.name,
                    key: l.key(),
                    // A line already in normal form goes out as one copy.
                    line: if graphite::is_normal(line, &l) {
                        line
                    } else {
                        &[]
                    },
                    value: Value::Graphite(point::Graphite {
                        value: l.value,
                        timestamp: l.timestamp,
                    }),
                })
            }
            Decoder::Regex(re) => match re.parse(line) {
                Ok(p) => Ok(Point {
                    name: p.key,
                    key: p.key,
                    line,
                    value: Value::Line,
                }),
                Err(regex_line::EMPTY_KEY) => Err(Reject::BadName),
                Err(regex_line::BAD_TIMESTAMP) => Err(Reject::BadTimestamp),
                Err(_) => Err(Reject::NoMatch),
            },
            Decoder::Statsd | Decoder::Pickle { .. } => {
                unreachable!("statsd and pickle frame their own input")
            }
            Decoder::Collectd(_) => unreachable!("collectd datagrams are not lines"),
        };
        match parsed {
            Ok(p) => {
                counts.parsed_lines += 1;
                emit(p);
            }
            Err(r) => counts.rejected_lines[r as usize] += 1,
        }
    }
}

impl Decoder {
    /// carbon's pickle frames: each whole frame of `buf` is unpickled by `vm` (a data-only
    /// pickle machine, kept between calls so it allocates only while frames grow) and
    /// its points handed to `emit` as [`Value::Numeric`], each with carbon's checks (see
    /// `protocol::pickle`). Returns the bytes consumed; a partial frame waits for more.
    /// A frame over the bound sets `skipping`: the rest of the stream is discarded, as
    /// carbon drops such a connection. A stream that ends mid-frame refuses the frame.
    /// Points count as lines (received = parsed + skipped), frames that do not load as
    /// `rejected_frames`.
    pub fn decode_pickle(
        &self,
        vm: &mut pickle::Decoder,
        buf: &[u8],
        end: End,
        skipping: &mut bool,
        counts: &mut DecodeCounts,
        emit: &mut dyn for<'p> FnMut(Point<'p>),
    ) -> usize {
        let Decoder::Pickle { frame_bytes_max } = *self else {
            unreachable!("a pickle listener's decoder")
        };
        if *skipping {
            return buf.len();
        }
        let mut at = 0;
        loop {
            match pickle::split_frame(&buf[at..], frame_bytes_max) {
                Framed::Frame { pickle, consumed } => {
                    at += consumed;
                    let decoded = vm.decode(pickle, |p| {
                        emit(Point {
                            name: p.name,
                            key: graphite::hash_key(p.name),
                            line: &[],
                            value: Value::Numeric(point::Numeric {
                                timestamp: p.timestamp,
                                value: p.value,
                            }),
                        })
                    });
                    match decoded {
                        Ok(d) => {
                            counts.received_lines += (d.points + d.skipped) as u64;
                            counts.parsed_lines += d.points as u64;
                            counts.rejected_lines[Reject::BadValue as usize] += d.skipped as u64;
                        }
                        Err(r) => counts.rejected_frames[r as usize] += 1,
                    }
                }
                Framed::Need(_) => {
                    if end != End::More && at < buf.len() {
                        counts.rejected_frames[pickle::Reject::Truncated as usize] += 1;
                        return buf.len();
                    }
                    return at;
                }
                Framed::TooLarge(_) => {
                    counts.rejected_frames[pickle::Reject::TooLarge as usize] += 1;
                    *skipping = true;
                    return buf.len();
                }
            }
        }
    }
}

/// Newline framing for graphite and regex lines: lines end at `\n` (a `\r` before it is
/// dropped); a stream's unterminated tail is refused, a datagram's is a line.
fn frame_lines<'b>(
    buf: &'b [u8],
    end: End,
    line_bytes_max: usize,
    skipping: &mut bool,
    counts: &mut DecodeCounts,
    on_line: &mut impl FnMut(&'b [u8], &mut DecodeCounts),
) -> usize {
    let mut too_long = 0u64;
    let mut consumed = lines::split(buf, line_bytes_max, skipping, |p| match p {
        Piece::TooLong => too_long += 1,
        Piece::Line(line) => on_line(line, counts),
    });
    if end != End::More {
        let rest = &buf[consumed..];
        let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
        if !*skipping && !rest.is_empty() {
            match end {
                // A datagram is whole: its last line needs no newline.
                End::Datagram if rest.len() <= line_bytes_max => on_line(rest, counts),
                End::Datagram => too_long += 1,
                // A stream that stops mid-line may have been cut short by a crashed
                // sender; such a line could parse to a wrong value, so it is refused.
                _ => {
                    counts.received_lines += 1;
                    counts.rejected_lines[Reject::Unterminated as usize] += 1;
                }
            }
        }
        *skipping = false;
        consumed = buf.len();
    }
    counts.received_lines += too_long;
    counts.rejected_lines[Reject::LineTooLong as usize] += too_long;
    consumed
}

/// statsd framing as Etsy's: lines end at `\n` only (a `\r` stays part of the line, as
/// node's `split("\n")` leaves it) and empty lines are skipped. A stream's unterminated
/// tail is refused as for graphite; a datagram's last line needs no newline. A
/// datagram's lines are not held to `line_bytes_max`: the datagram bounds them (64 KiB),
/// and Etsy reads a line of any length.
fn decode_statsd<'b>(
    buf: &'b [u8],
    end: End,
    line_bytes_max: usize,
    skipping: &mut bool,
    counts: &mut DecodeCounts,
    emit: &mut impl FnMut(Point<'b>),
) -> usize {
    let line_bytes_max = match end {
        End::Datagram => usize::MAX,
        End::More | End::Stream => line_bytes_max,
    };
    let mut start = 0;
    let mut one = |line: &'b [u8], counts: &mut DecodeCounts| {
        counts.received_lines += 1;
        if line.len() > line_bytes_max {
            counts.rejected_lines[Reject::LineTooLong as usize] += 1;
            return;
        }
        statsd_line(line, counts, emit);
    };
    for nl in lines::newlines(buf) {
        let line = &buf[start..nl];
        start = nl + 1;
        if *skipping {
            *skipping = false;
            continue;
        }
        if !line.is_empty() {
            one(line, counts);
        }
    }
    let rest = &buf[start..];
    match end {
        End::More if rest.len() > line_bytes_max => {
            if !*skipping {
                counts.received_lines += 1;
                counts.rejected_lines[Reject::LineTooLong as usize] += 1;
                *skipping = true;
            }
            buf.len()
        }
        End::More => start,
        End::Datagram => {
            if !*skipping && !rest.is_empty() {
                one(rest, counts);
            }
            *skipping = false;
            buf.len()
        }
        End::Stream => {
            if !*skipping && !rest.is_empty() {
                counts.received_lines += 1;
                // Too long before unterminated, as when the stream is read in pieces (a
                // piece holding more than the bound is refused as too long at once): the
                // reason must not depend on where reads split (fuzz target decode_statsd).
                let reason = if rest.len() > line_bytes_max {
                    Reject::LineTooLong
                } else {
                    Reject::Unterminated
                };
                counts.rejected_lines[reason as usize] += 1;
            }
            *skipping = false;
            buf.len()
        }
    }
}

/// One statsd line: a point per good sample (the first carries the line, so a relay
/// writes it once), every bad sample counted. A line with no good sample is rejected
/// with its first sample's reason.
#[inline]
fn statsd_line<'b>(line: &'b [u8], counts: &mut DecodeCounts, emit: &mut impl FnMut(Point<'b>)) {
    // Most lines: one sample, no tags; found in one pass.
    if let Some((name, chunk)) = statsd::one_sample(line) {
        match statsd::parse_sample(chunk) {
            Ok(sample) => {
                counts.parsed_lines += 1;
                emit(Point {
                    name,
                    key: name,
                    line,
                    value: Value::Statsd(point::Statsd { sample, tags: &[] }),
                });
            }
            Err(r) => {
                counts.rejected_samples += 1;
                counts.rejected_lines[r as usize] += 1;
            }
        }
        return;
    }
    let parts = statsd::split_line(line);
    let mut first_reject = None;
    let mut good = false;
    for chunk in parts.chunks() {
        match statsd::parse_sample(chunk) {
            Ok(sample) => {
                emit(Point {
                    name: parts.name,
                    key: parts.name,
                    line: if good { &[] } else { line },
                    value: Value::Statsd(point::Statsd {
                        sample,
                        tags: parts.tags,
                    }),
                });
                good = true;
            }
            Err(r) => {
                counts.rejected_samples += 1;
                first_reject.get_or_insert(r);
            }
        }
    }
    if good {
        counts.parsed_lines += 1;
    } else {
        let r = first_reject.unwrap_or(Reject::MissingFields);
        counts.rejected_lines[r as usize] += 1;
    }
}

/// Points a collectd decode hands over at once: as many as the pipeline routes together.
pub const COLLECTD_BATCH: usize = 16;

/// Longest identifier: five strings of at most 127 bytes and their four separators.
const IDENTIFIER_BYTES_MAX: usize = 5 * (NAME_BYTES_MAX - 1) + 4;

/// Why a decoded value list was refused by the listener's types table (collectd refuses
/// the same ones at dispatch). A closed set, so counters are an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TypesReject {
    /// The type is not in the listener's `types_db` files.
    UnknownType = 0,
    /// The number of values is not the type's number of data sources.
    ValueCount,
}

impl TypesReject {
    /// Number of reasons.
    pub const COUNT: usize = 2;
    /// Every reason, in counter order.
    pub const ALL: [TypesReject; TypesReject::COUNT] =
        [TypesReject::UnknownType, TypesReject::ValueCount];

    /// The reason as it appears in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            TypesReject::UnknownType => "unknown_type",
            TypesReject::ValueCount => "value_count",
        }
    }
}

const _: () = assert!(TypesReject::ValueCount as usize + 1 == TypesReject::COUNT);

/// A collectd listener's decoder: collectd's acceptance rules (security level, auth
/// file) and the types table value lists are checked against.
#[derive(Debug, Clone)]
pub struct CollectdDecoder {
    packets: collectd::Decoder,
    types: Arc<TypesDb>,
    /// Where the identifiers of a batch are written (reused from datagram to datagram).
    idents: Box<[[u8; IDENTIFIER_BYTES_MAX]; COLLECTD_BATCH]>,
    /// The table came from `types_db` files, so a type not in it is refused, as collectd
    /// refuses it. With the built-in table an unknown type is passed on as received (its
    /// receivers judge it) and only a wrong number of values is refused.
    types_complete: bool,
}

impl CollectdDecoder {
    /// A decoder with collectd's `Listen` semantics for `security`, checking value lists
    /// against `types` (`types_complete`: it came from `types_db` files).
    pub fn new(
        security: collectd::Security,
        types: Arc<TypesDb>,
        types_complete: bool,
    ) -> CollectdDecoder {
        CollectdDecoder {
            packets: collectd::Decoder::new(security),
            types,
            idents: Box::new([[0; IDENTIFIER_BYTES_MAX]; COLLECTD_BATCH]),
            types_complete,
        }
    }

    /// Decodes one datagram (decrypting it in place), handing its value lists to
    /// `emit_batch` as points, up to [`COLLECTD_BATCH`] at a time, in order. A point's
    /// name is the value list's identifier and its key the host. Notifications are
    /// counted, not relayed. Returns the value lists handed over.
    pub fn decode<'d>(
        &mut self,
        datagram: &'d mut [u8],
        counts: &mut DecodeCounts,
        emit_batch: &mut impl FnMut(&[Point<'_>]),
    ) -> usize {
        let CollectdDecoder {
            packets,
            types,
            idents,
            types_complete,
        } = self;
        let mut batch = IdentBatch::new(idents);
        let mut handed = 0;
        let types = &**types;
        let complete = *types_complete;
        let rejects = &mut counts.collectd_types_rejects;
        let mut sink = |r: Record<'d>| {
            let Record::Values(vl) = r else {
                return;
            };
            let sources = match types.get(vl.type_) {
                Some(ds) if ds.len() != vl.values.len() => {
                    rejects[TypesReject::ValueCount as usize] += 1;
                    return;
                }
                Some(ds) => Some(ds),
                None if complete => {
                    rejects[TypesReject::UnknownType as usize] += 1;
                    return;
                }
                None => None,
            };
            batch.push(vl, sources);
            handed += 1;
            if batch.len == COLLECTD_BATCH {
                batch.emit(emit_batch);
            }
        };
        packets.decode(datagram, &mut sink);
        batch.emit(emit_batch);
        let stats = packets.take_stats();
        add_decode_stats(&mut counts.collectd, &stats);
        handed
    }
}

fn add_decode_stats(a: &mut collectd::DecodeStats, b: &collectd::DecodeStats) {
    a.packets += b.packets;
    a.value_lists += b.value_lists;
    a.notifications += b.notifications;
    a.signatures_unverified += b.signatures_unverified;
    for (x, y) in a.rejects.iter_mut().zip(&b.rejects) {
        *x += y;
    }
}

/// Value lists waiting to be handed over, each with its identifier written out.
struct IdentBatch<'b, 's> {
    vls: [ValueList<'b>; COLLECTD_BATCH],
    sources: [Option<&'b [DataSource]>; COLLECTD_BATCH],
    idents: &'s mut [[u8; IDENTIFIER_BYTES_MAX]; COLLECTD_BATCH],
    /// Identifier length and host length of each.
    lens: [(u16, u16); COLLECTD_BATCH],
    len: usize,
}

const EMPTY_VL: ValueList<'static> = ValueList {
    host: &[],
    plugin: &[],
    plugin_instance: &[],
    type_: &[],
    type_instance: &[],
    time: CdTime(0),
    interval: CdTime(0),
    values: Values::EMPTY,
};

impl<'b, 's> IdentBatch<'b, 's> {
    fn new(idents: &'s mut [[u8; IDENTIFIER_BYTES_MAX]; COLLECTD_BATCH]) -> IdentBatch<'b, 's> {
        IdentBatch {
            vls: [EMPTY_VL; COLLECTD_BATCH],
            sources: [None; COLLECTD_BATCH],
            idents,
            lens: [(0, 0); COLLECTD_BATCH],
            len: 0,
        }
    }

    fn push(&mut self, vl: ValueList<'b>, sources: Option<&'b [DataSource]>) {
        debug_assert!(self.len < COLLECTD_BATCH);
        let i = self.len;
        let n = write_identifier_into(&mut self.idents[i], vl.identity());
        self.lens[i] = (n as u16, vl.host.len() as u16);
        self.vls[i] = vl;
        self.sources[i] = sources;
        self.len += 1;
    }

    /// Hands the batch over as points borrowing it, and empties it.
    fn emit(&mut self, emit_batch: &mut impl FnMut(&[Point<'_>])) {
        if self.len == 0 {
            return;
        }
        let mut points = [Point::EMPTY; COLLECTD_BATCH];
        for (i, p) in points.iter_mut().enumerate().take(self.len) {
            let (n, host) = self.lens[i];
            let name = &self.idents[i][..n as usize];
            *p = Point {
                name,
                key: &name[..host as usize],
                line: &[],
                value: Value::Collectd(point::Collectd {
                    vl: &self.vls[i],
                    sources: self.sources[i],
                }),
            };
        }
        emit_batch(&points[..self.len]);
        self.len = 0;
    }
}

/// Writes collectd's identifier (`host/plugin[-pi]/type[-ti]`) into `out`; returns its
/// length. The decoder bounds each string to 127 bytes, so it always fits.
fn write_identifier_into(out: &mut [u8; IDENTIFIER_BYTES_MAX], id: [&[u8]; 5]) -> usize {
    let mut at = 0;
    let mut put = |s: &[u8]| {
        out[at..at + s.len()].copy_from_slice(s);
        at += s.len();
    };
    let [host, plugin, pinst, type_, tinst] = id;
    put(host);
    put(b"/");
    put(plugin);
    if !pinst.is_empty() {
        put(b"-");
        put(pinst);
    }
    put(b"/");
    put(type_);
    if !tinst.is_empty() {
        put(b"-");
        put(tinst);
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(d: &Decoder, chunks: &[(&[u8], End)]) -> (Vec<String>, DecodeCounts) {
        let mut out = Vec::new();
        let mut counts = DecodeCounts::default();
        let mut skipping = false;
        let mut pending: Vec<u8> = Vec::new();
        for (chunk, end) in chunks {
            pending.extend_from_slice(chunk);
            let mut emit = |p: Point<'_>| {
                let v = match p.value {
                    Value::Graphite(g) => format!(
                        "g {} {} {}",
                        String::from_utf8_lossy(p.name),
                        String::from_utf8_lossy(g.value),
                        String::from_utf8_lossy(g.timestamp)
                    ),
                    Value::Statsd(s) => format!(
                        "s {} {:?} {} tags={} line={}",
                        String::from_utf8_lossy(p.name),
                        s.sample.value,
                        s.sample.sample_rate,
                        String::from_utf8_lossy(s.tags),
                        String::from_utf8_lossy(p.line)
                    ),
                    Value::Line => format!("r {}", String::from_utf8_lossy(p.key)),
                    Value::Collectd(_) => unreachable!("not a line format"),
                    Value::Numeric(n) => format!(
                        "n {} {} {}",
                        String::from_utf8_lossy(p.name),
                        n.value,
                        n.timestamp
                    ),
                };
                out.push(v);
            };
            let used = d.decode(&pending, *end, 64, &mut skipping, &mut counts, &mut emit);
            pending.drain(..used);
        }
        (out, counts)
    }

    #[test]
    fn graphite_lines_and_framing() {
        let (out, c) = run(
            &Decoder::Graphite {
                cleanse_names: false,
            },
            &[
                (b"a.b 1 17\r\nbad\nc", End::More),
                (b" 2 18\n", End::More),
                (b"tail 3 19", End::Stream),
            ],
        );
        assert_eq!(out, ["g a.b 1 17", "g c 2 18"]);
        assert_eq!((c.received_lines, c.parsed_lines), (4, 2));
        assert_eq!(c.rejected_lines[Reject::MissingFields as usize], 1);
        assert_eq!(c.rejected_lines[Reject::Unterminated as usize], 1);
        let (out, _) = run(
            &Decoder::Graphite {
                cleanse_names: false,
            },
            &[(b"x 1 2\ny 3 4", End::Datagram)],
        );
        assert_eq!(out, ["g x 1 2", "g y 3 4"]);
    }

    #[test]
    fn statsd_samples_lines_and_bad_samples() {
        let (out, c) = run(
            &Decoder::Statsd,
            &[(b"a:1|c:2|ms|#t:1\n\nb:x|c\nc:1|c:\nd:5|g\r", End::Datagram)],
        );
        assert_eq!(
            out,
            [
                "s a Counter(1.0) 1 tags=t:1 line=a:1|c:2|ms|#t:1",
                "s a Timer(2.0) 1 tags=t:1 line=",
                "s c Counter(1.0) 1 tags= line=c:1|c:",
                // `g\r`: validated as an unknown (numeric) type, dispatched trimmed.
                "s d Gauge { value: 5.0, delta: false } 1 tags= line=d:5|g\r",
            ]
        );
        assert_eq!((c.received_lines, c.parsed_lines), (4, 3));
        assert_eq!(c.rejected_lines[Reject::BadValue as usize], 1);
        // b's bad value and c's empty sample.
        assert_eq!(c.rejected_samples, 2);
    }

    #[test]
    fn a_statsd_datagram_line_is_not_held_to_the_stream_bound() {
        // The bound in `run` is 64 bytes; Etsy reads a datagram's line of any length.
        let name = "n".repeat(100);
        let timer = vec!["1|ms"; 40].join(":");
        let body = format!("{name}:1|c\nt:{timer}\nx:2|c");
        let (out, c) = run(&Decoder::Statsd, &[(body.as_bytes(), End::Datagram)]);
        assert_eq!(out.len(), 42, "{out:?}");
        assert_eq!(c.rejected_lines[Reject::LineTooLong as usize], 0);
        assert_eq!((c.received_lines, c.parsed_lines), (3, 3));
    }

    #[test]
    fn statsd_over_a_stream_keeps_partial_lines_and_bounds_them() {
        let long = vec![b'x'; 100];
        let mut chunks: Vec<(&[u8], End)> = vec![(b"a:1|c\nb:", End::More), (b"2|c\n", End::More)];
        chunks.push((&long, End::More));
        chunks.push((b"\nc:3|c\nd:4|c", End::Stream));
        let (out, c) = run(&Decoder::Statsd, &chunks);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(c.rejected_lines[Reject::LineTooLong as usize], 1);
        assert_eq!(c.rejected_lines[Reject::Unterminated as usize], 1);
        assert_eq!(c.received_lines, 5);
    }

    #[test]
    fn regex_lines() {
        let re = RegexLine::new(r"^(?P<Key>\S+) ", None).unwrap();
        let (out, c) = run(&Decoder::Regex(re), &[(b"k1 rest\nnomatch\n", End::More)]);
        assert_eq!(out, ["r k1"]);
        assert_eq!(c.rejected_lines[Reject::NoMatch as usize], 1);
    }

    /// Vector C of shared/reference/collectd.md: 7 value lists, accepted by collectd 5.12.
    const VECTOR_C: &str = "00000016746573742e686f73742e6578616d706c65000008000c1ac04a70400000000009000c0000000280000000000200086370750000030006300000040008637075000005000969646c65000006000f00010200000000000030390005000975736572000006000f000102000000000000002a000200096c6f6164000003000500000400096c6f6164000005000500000600210003010101000000000000d03f000000000000e03f000000000000f83f0002000e696e74657266616365000003000965746830000004000e69665f6f637465747300000600180002020200000000000003e800000000000007d00002000b6d656d6f72790000030005000004000b6d656d6f7279000005000975736564000006000f00010100000000004a93400001000c000000006b0129c10000000c6f6c6474696d65000002000b7467706c7567000004000c636f756e7465720000050005000006000f00010000000000000000070004000d6162736f6c757465000006000f0001030000000000000009";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Points as `name|key|sources|batch`, and the counts.
    fn collectd(types: TypesDb, complete: bool, packet: &[u8]) -> (Vec<String>, DecodeCounts) {
        let mut d = CollectdDecoder::new(collectd::Security::default(), Arc::new(types), complete);
        let mut counts = DecodeCounts::default();
        let mut out = Vec::new();
        let mut batches = 0;
        let mut buf = packet.to_vec();
        let n = d.decode(&mut buf, &mut counts, &mut |ps: &[Point<'_>]| {
            batches += 1;
            for p in ps {
                let Value::Collectd(c) = p.value else {
                    panic!("not collectd")
                };
                assert!(p.line.is_empty());
                assert_eq!(c.vl.host, p.key);
                let ds: Vec<&str> = c
                    .sources
                    .map(|d| d.iter().map(|s| s.name.as_str()).collect())
                    .unwrap_or_default();
                out.push(format!(
                    "{}|{}|{}|{batches}",
                    String::from_utf8_lossy(p.name),
                    String::from_utf8_lossy(p.key),
                    ds.join(",")
                ));
            }
        });
        assert_eq!(n, out.len());
        (out, counts)
    }

    #[test]
    fn collectd_value_lists_become_points_named_by_identifier_keyed_by_host() {
        let (out, c) = collectd(TypesDb::builtin(), false, &hex(VECTOR_C));
        assert_eq!(
            out,
            [
                "test.host.example/cpu-0/cpu-idle|test.host.example|value|1",
                "test.host.example/cpu-0/cpu-user|test.host.example|value|1",
                "test.host.example/load/load|test.host.example|shortterm,midterm,longterm|1",
                "test.host.example/interface-eth0/if_octets|test.host.example|rx,tx|1",
                "test.host.example/memory/memory-used|test.host.example|value|1",
                "oldtime/tgplug/counter|oldtime|value|1",
                "oldtime/tgplug/absolute|oldtime|value|1",
            ]
        );
        assert_eq!((c.collectd.packets, c.collectd.value_lists), (1, 7));
    }

    #[test]
    fn collectd_types_table_refuses_as_collectd_does() {
        // A complete table without `cpu`: refused; `load` with one data source: refused.
        let db = TypesDb::parse("load shortterm:GAUGE:0:U\nif_octets rx:DERIVE:0:U, tx:DERIVE:0:U\nmemory value:GAUGE:0:U\ncounter value:COUNTER:U:U\nabsolute value:ABSOLUTE:0:U\n").unwrap();
        let (out, c) = collectd(db.clone(), true, &hex(VECTOR_C));
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(c.collectd_types_rejects, [2, 1]);
        // The same table as a built-in one: unknown types pass, without sources.
        let (out, c) = collectd(db, false, &hex(VECTOR_C));
        assert_eq!(out.len(), 6, "{out:?}");
        assert!(out[0].ends_with("|test.host.example||1"), "{out:?}");
        assert_eq!(c.collectd_types_rejects, [0, 1]);
    }

    #[test]
    fn collectd_batches_hold_at_most_sixteen() {
        // 40 value lists of 120-byte host names: 3 batches, identifiers intact.
        let host = "h".repeat(120);
        let values = [collectd::Value::Gauge(1.0)];
        let mut enc = collectd::Encoder::new(collectd::EncoderConfig {
            max_packet_bytes: 65535,
            ..Default::default()
        });
        let mut packet = Vec::new();
        let tis: Vec<String> = (0..40).map(|i| format!("{i:0>100}")).collect();
        for ti in &tis {
            let vl = ValueList {
                host: host.as_bytes(),
                plugin: b"p",
                plugin_instance: b"",
                type_: b"gauge",
                type_instance: ti.as_bytes(),
                time: CdTime::from_secs(1),
                interval: CdTime::from_secs(10),
                values: Values::from_slice(&values),
            };
            enc.push(&vl, &mut |p: &[u8]| packet = p.to_vec()).unwrap();
        }
        enc.flush(&mut |p: &[u8]| packet = p.to_vec());
        let (out, _) = collectd(TypesDb::builtin(), false, &packet);
        assert_eq!(out.len(), 40);
        for (i, line) in out.iter().enumerate() {
            let want = format!("{host}/p/gauge-{}|{host}|value|{}", tis[i], i / 16 + 1);
            assert_eq!(line, &want);
        }
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    /// Found by the fuzz target decode_statsd: a stream ending in a line longer than the
    /// bound was "unterminated" read whole and "too long" read in two pieces.
    #[test]
    fn an_overlong_unterminated_tail_is_too_long_wherever_the_stream_splits() {
        let body: &[u8] = b"\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc@w:\x00\xc5\xcf\x00\x83c";
        for d in [
            Decoder::Statsd,
            Decoder::Graphite {
                cleanse_names: false,
            },
        ] {
            let mut reasons = Vec::new();
            for cut in [0, 10, body.len()] {
                let mut counts = DecodeCounts::default();
                let mut skipping = false;
                let mut pending = body[..cut].to_vec();
                let used = d.decode(
                    &pending,
                    End::More,
                    20,
                    &mut skipping,
                    &mut counts,
                    &mut |_| {},
                );
                pending.drain(..used);
                pending.extend_from_slice(&body[cut..]);
                d.decode(
                    &pending,
                    End::Stream,
                    20,
                    &mut skipping,
                    &mut counts,
                    &mut |_| {},
                );
                assert_eq!(counts.received_lines, 1, "{d:?} cut {cut}");
                reasons.push(counts.rejected_lines);
            }
            assert!(
                reasons.iter().all(|r| *r == reasons[0]),
                "{d:?}: {reasons:?}"
            );
            assert_eq!(reasons[0][Reject::LineTooLong as usize], 1, "{d:?}");
        }
    }
}

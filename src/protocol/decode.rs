//! Decoders: one per listener format, each doing its framing and its parsing, from a
//! receive buffer to [`Point`]s. A closed set: a new wire format is a new variant with
//! its own framing, not a branch in the shard loop.
//!
//! A decoder is pure: bytes in, points handed to the caller's `emit`, and what it read
//! counted in [`DecodeCounts`]. Points borrow from the buffer.

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
    Graphite,
    /// statsd lines by Etsy's grammar; one point per sample.
    Statsd,
    /// Any line, routed by the key a regex cuts out of it.
    Regex(RegexLine),
    /// carbon's pickle receiver: length-prefixed frames of `[(name, (ts, value)), ...]`
    /// ([`decode_pickle`](Self::decode_pickle)).
    Pickle {
        /// Largest frame; a larger one ends the stream's use (carbon drops the
        /// connection).
        frame_bytes_max: usize,
    },
}

impl Decoder {
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
            Decoder::Graphite => graphite::parse(line).map(|l| Point {
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
            }),
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
/// tail is refused as for graphite; a datagram's last line needs no newline.
fn decode_statsd<'b>(
    buf: &'b [u8],
    end: End,
    line_bytes_max: usize,
    skipping: &mut bool,
    counts: &mut DecodeCounts,
    emit: &mut impl FnMut(Point<'b>),
) -> usize {
    let mut start = 0;
    let mut one = |line: &'b [u8], counts: &mut DecodeCounts| {
        counts.received_lines += 1;
        if line.len() > line_bytes_max {
            counts.rejected_lines[Reject::LineTooLong as usize] += 1;
            return;
        }
        statsd_line(line, counts, emit);
    };
    for nl in memchr::memchr_iter(b'\n', buf) {
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
                counts.rejected_lines[Reject::Unterminated as usize] += 1;
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
            &Decoder::Graphite,
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
        let (out, _) = run(&Decoder::Graphite, &[(b"x 1 2\ny 3 4", End::Datagram)]);
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
}

//! Encoders: how a destination writes the points it is given. A closed set: a new sink
//! format (pickle, collectd binary, store records) is a new variant.
//!
//! Each destination slot owns one encoder and appends points to its open batch through
//! it; a batch holds whole records, so it can be written, spooled or replayed as is.

use crate::point::{Point, Value};

/// A destination's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    /// Newline-terminated text lines: graphite in normal form (`name value timestamp`),
    /// statsd and regex lines as received (a statsd line under a rewritten name keeps
    /// everything after its name).
    Plaintext,
}

impl Encoder {
    /// The bytes [`encode`](Self::encode) will append for `p` under `name` (0 when it
    /// writes nothing).
    #[inline]
    pub fn encoded_len(&self, p: &Point<'_>, name: &[u8], as_received: bool) -> usize {
        match self {
            Encoder::Plaintext if matches!(p.value, Value::Numeric(_)) => {
                let Value::Numeric(n) = p.value else {
                    unreachable!()
                };
                let (v, t) = (
                    NumberText::value(n.value),
                    NumberText::timestamp(n.timestamp),
                );
                name.len() + 1 + v.len + 1 + t.len + 1
            }
            Encoder::Plaintext => {
                let pieces = plaintext_pieces(p, name, as_received);
                let len: usize = pieces.iter().map(|x| x.len()).sum();
                if len == 0 {
                    0
                } else {
                    len + 1
                }
            }
        }
    }

    /// Appends `p` under `name` to `out` (`as_received`: `name` is the point's own, not
    /// cleansed or rewritten); returns the records written (0 for the second and later
    /// samples of a statsd line: the line goes out once).
    #[inline]
    pub fn encode(&self, p: &Point<'_>, name: &[u8], as_received: bool, out: &mut Vec<u8>) -> u32 {
        match self {
            Encoder::Plaintext if matches!(p.value, Value::Numeric(_)) => {
                let Value::Numeric(n) = p.value else {
                    unreachable!()
                };
                out.extend_from_slice(name);
                out.push(b' ');
                out.extend_from_slice(NumberText::value(n.value).as_bytes());
                out.push(b' ');
                out.extend_from_slice(NumberText::timestamp(n.timestamp).as_bytes());
                out.push(b'\n');
                1
            }
            Encoder::Plaintext => {
                let pieces = plaintext_pieces(p, name, as_received);
                if pieces[0].is_empty() {
                    return 0;
                }
                for piece in pieces.iter().filter(|x| !x.is_empty()) {
                    out.extend_from_slice(piece);
                }
                out.push(b'\n');
                1
            }
        }
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
        let e = Encoder::Plaintext;
        assert_eq!(e.encoded_len(&g, b"x.y", false), 11);
        assert_eq!(e.encode(&g, b"x.y", false, &mut out), 1);
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
        assert_eq!(e.encode(&s, b"s", true, &mut out), 1);
        assert_eq!(e.encode(&s, b"renamed", false, &mut out), 1);
        let second = Point { line: &[], ..s };
        assert_eq!(e.encoded_len(&second, b"s", true), 0);
        assert_eq!(e.encode(&second, b"s", true, &mut out), 0);
        assert_eq!(out, b"x.y 1.5 17\ns:1|c|#t\nrenamed:1|c|#t\n");
    }
}

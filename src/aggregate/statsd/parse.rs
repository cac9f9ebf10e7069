//! Etsy statsd 0.9.0's line grammar, validation and key sanitising (`stats.js`
//! `handlePacket`, `helpers.is_valid_packet`), as pure functions over bytes.
//!
//! Order of operations, as Etsy does it: the line is split at `|#` (the text up to a
//! second `|#` is the tag list, split at `,`), the rest at `:` (the first chunk is the
//! key, every further chunk one sample), each sample at `|` into value, type and rate.
//! Validation looks at the type as sent; the dispatch looks at it trimmed, so `1|ms\r`
//! is validated as an unknown type (numeric value) and then counted as a timer.

use crate::aggregate::jsnum::{is_js_space, js_is_number, js_to_number, js_trim};

/// What one sample adds to its key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// `c` and every unknown type: adds `value * (1 / rate)`.
    Counter(f64),
    /// `ms`: appends `value`, adds `1 / rate` to the count.
    Timer(f64),
    /// `g`: `delta` when the value as sent starts with `+` or `-`; a delta applies only
    /// to a gauge that exists and is non-zero (otherwise the value is assigned).
    Gauge {
        /// The number.
        value: f64,
        /// Whether the text started with a sign.
        delta: bool,
    },
    /// `s`: the member, as sent (`"0"` when empty).
    Set(&'a [u8]),
}

/// One pre-parsed sample: a sanitised key (tags included, `name;k=v;...`), what it adds,
/// and its sample rate (1 when none was sent; Etsy ignores it for gauges and sets).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// The key as it is stored and printed (before namespaces).
    pub key: &'a [u8],
    /// What the sample adds.
    pub value: Value<'a>,
    /// `@rate`; 1 when absent.
    pub sample_rate: f64,
}

/// Why a sample was rejected; Etsy counts every one of these in `bad_lines_seen`
/// except [`REJECT_PROTO_KEY`].
pub type Reject = &'static str;

/// No `|type` field (also a line with no `:`).
pub const REJECT_NO_TYPE: Reject = "no_type";
/// `|@rate` that is not `@` and a non-negative number.
pub const REJECT_BAD_RATE: Reject = "bad_sample_rate";
/// A value that is not a number for its type (or a negative timing).
pub const REJECT_BAD_VALUE: Reject = "bad_value";
/// A rate Etsy validates but then cannot read (`@ 1`, `@+1`, `@Infinity`): Etsy 0.9.0
/// throws a TypeError and exits; we count it instead.
pub const REJECT_RATE_CRASHES_ETSY: Reject = "sample_rate_crashes_etsy";
/// The key `__proto__`: in Etsy a counter or gauge with this key is silently lost and a
/// timer or set crashes it (JavaScript object semantics); we drop it and count it here.
/// Not part of `bad_lines_seen`.
pub const REJECT_PROTO_KEY: Reject = "proto_key";

/// How tags become part of the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TagMode {
    /// Etsy 0.9.0: `;tag` in the order sent, so `#b:2,a:1` and `#a:1,b:2` are two keys.
    #[default]
    Etsy,
    /// DogStatsD identity: the same `;k=v` form with tags sorted bytewise (after
    /// sanitising), as gostatsd does, so tag order does not split a series.
    Sorted,
}

/// Splits a datagram into non-empty lines (Etsy splits at `\n` only; `\r` stays).
pub fn lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    datagram.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// The parts of one line: the key text (before sanitising), the tag list text and the
/// sample chunks text.
pub struct LineParts<'a> {
    /// Text before the first `:` (or the whole pre-tag text).
    pub name: &'a [u8],
    /// Text between the first `|#` and the next `|#` (empty when none).
    pub tags: &'a [u8],
    /// Text after the first `:`, to split at `:` into samples; `None` when the line has
    /// no `:` (Etsy then reads one sample `"1"`, which has no type).
    pub samples: Option<&'a [u8]>,
}

/// Splits a line the way Etsy does.
pub fn split_line(line: &[u8]) -> LineParts<'_> {
    let (pre, tags) = match find_tags(line) {
        Some(at) => {
            let rest = &line[at + 2..];
            let end = find_tags(rest).unwrap_or(rest.len());
            (&line[..at], &rest[..end])
        }
        None => (line, &line[..0]),
    };
    match memchr::memchr(b':', pre) {
        Some(at) => LineParts {
            name: &pre[..at],
            tags,
            samples: Some(&pre[at + 1..]),
        },
        None => LineParts {
            name: pre,
            tags,
            samples: None,
        },
    }
}

/// Scratch space for [`build_key`], reused across lines.
#[derive(Default)]
pub struct KeyScratch {
    tags: Vec<u8>,
    ranges: Vec<(u32, u32)>,
}

/// The position of the first `|#`.
#[inline]
fn find_tags(s: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'|', s).find(|&i| s.get(i + 1) == Some(&b'#'))
}

/// Builds the stored key into `out` (cleared first): the sanitised name, then each tag
/// as `;tag` with its first `;` made `_` and its first `:` made `=`, sanitised.
/// Sanitising works per character except for whitespace runs, and `;` is not
/// whitespace, so sanitising each part equals sanitising the joined key as Etsy does.
pub fn build_key(
    name: &[u8],
    tags: &[u8],
    mode: TagMode,
    out: &mut Vec<u8>,
    scratch: &mut KeyScratch,
) {
    out.clear();
    sanitize_mapped(name, None, None, out);
    if tags.is_empty() {
        return;
    }
    match mode {
        TagMode::Etsy => {
            for tag in tags.split(|&b| b == b',') {
                out.push(b';');
                push_tag(tag, out);
            }
        }
        TagMode::Sorted => {
            let KeyScratch { tags: buf, ranges } = scratch;
            buf.clear();
            ranges.clear();
            for tag in tags.split(|&b| b == b',') {
                let start = buf.len();
                push_tag(tag, buf);
                ranges.push((start as u32, buf.len() as u32));
            }
            let text = &buf[..];
            ranges.sort_by(|a, b| {
                text[a.0 as usize..a.1 as usize].cmp(&text[b.0 as usize..b.1 as usize])
            });
            for &(s, e) in ranges.iter() {
                out.push(b';');
                out.extend_from_slice(&text[s as usize..e as usize]);
            }
        }
    }
}

/// One tag: its first `;` read as `_` and its first `:` as `=`, then sanitised.
fn push_tag(tag: &[u8], out: &mut Vec<u8>) {
    let semi = memchr::memchr(b';', tag);
    let colon = memchr::memchr(b':', tag);
    sanitize_mapped(tag, semi, colon, out);
}

/// [`sanitize_into`] reading the byte at `semi` as `_` and the one at `colon` as `=`.
fn sanitize_mapped(s: &[u8], semi: Option<usize>, colon: Option<usize>, out: &mut Vec<u8>) {
    let mut i = 0;
    let mut in_space = false;
    while i < s.len() {
        let mut b = s[i];
        if Some(i) == semi {
            b = b'_';
        } else if Some(i) == colon {
            b = b'=';
        }
        if b < 0x80 {
            i += 1;
            let space = matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
            if space {
                if !in_space {
                    out.push(b'_');
                }
                in_space = true;
                continue;
            }
            in_space = false;
            match b {
                b'/' => out.push(b'-'),
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b';' | b'=' => {
                    out.push(b)
                }
                _ => {}
            }
            continue;
        }
        // Multi-byte: whitespace or removed.
        let (c, len) = decode(&s[i..]);
        i += len;
        if c.is_some_and(is_js_space) {
            if !in_space {
                out.push(b'_');
            }
            in_space = true;
        } else {
            in_space = false;
        }
    }
}

/// Etsy's `keyNameSanitize`: runs of JavaScript whitespace become one `_`, `/` becomes
/// `-`, and every character outside `[A-Za-z0-9_.;=-]` is removed (bytes that are not
/// UTF-8 decode to U+FFFD in node, which is removed too, and which ends a whitespace run).
pub fn sanitize_into(s: &[u8], out: &mut Vec<u8>) {
    sanitize_mapped(s, None, None, out);
}

/// The char at the start of `s` (non-ASCII lead byte) and the bytes it spans; `None`
/// with the length of one maximal invalid subpart (node's U+FFFD) otherwise.
fn decode(s: &[u8]) -> (Option<char>, usize) {
    let valid = match std::str::from_utf8(&s[..s.len().min(4)]) {
        Ok(v) => v,
        Err(e) => std::str::from_utf8(&s[..e.valid_up_to()]).expect("valid prefix"),
    };
    match valid.chars().next() {
        Some(c) => (Some(c), c.len_utf8()),
        None => {
            let e = std::str::from_utf8(&s[..s.len().min(4)])
                .err()
                .and_then(|e| e.error_len())
                .unwrap_or(1);
            (None, e)
        }
    }
}

/// Parses one sample chunk (`value|type[|@rate]...`) for `key`.
pub fn parse_sample<'a>(key: &'a [u8], chunk: &'a [u8]) -> Result<Sample<'a>, Reject> {
    let mut fields = chunk.split(|&b| b == b'|');
    let value = fields.next().unwrap_or_default();
    let Some(kind) = fields.next() else {
        return Err(REJECT_NO_TYPE);
    };
    let rate = fields.next();
    if let Some(r) = rate {
        let ok = r.len() > 1 && r[0] == b'@' && js_is_number(&r[1..]) && r[1] != b'-';
        if !ok {
            return Err(REJECT_BAD_RATE);
        }
    }
    // `Number(value)` once: for validation (`isNumber`) and for the value itself.
    let num = if kind == b"s" {
        f64::NAN
    } else {
        js_to_number(value)
    };
    let numeric = !value.is_empty() && !num.is_nan();
    let valid = match kind {
        b"s" => true,
        b"ms" => numeric && num >= 0.0,
        _ => numeric,
    };
    if !valid {
        return Err(REJECT_BAD_VALUE);
    }
    let sample_rate = match rate {
        None => 1.0,
        Some(r) => {
            // Etsy reads `Number(r.match(/^@([\d\.]+)/)[1])`.
            let run = r[1..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b'.')
                .count();
            if run == 0 {
                return Err(REJECT_RATE_CRASHES_ETSY);
            }
            js_to_number(&r[1..1 + run])
        }
    };
    let value = match js_trim(kind) {
        b"ms" => Value::Timer(num),
        b"g" => Value::Gauge {
            value: num,
            delta: matches!(value.first(), Some(b'+' | b'-')),
        },
        b"s" => Value::Set(if value.is_empty() { b"0" } else { value }),
        _ => Value::Counter(num),
    };
    Ok(Sample {
        key,
        value,
        sample_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(line: &str, mode: TagMode) -> String {
        let p = split_line(line.as_bytes());
        let mut out = Vec::new();
        build_key(p.name, p.tags, mode, &mut out, &mut KeyScratch::default());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keys_as_etsy_builds_them() {
        assert_eq!(
            key("test.weird name/with*chars:1|c", TagMode::Etsy),
            "test.weird_name-withchars"
        );
        assert_eq!(
            key("a:1|c|#url:http://x/y", TagMode::Etsy),
            "a;url=http--x-y"
        );
        assert_eq!(key("a:1|c|#b:2,a:1", TagMode::Etsy), "a;b=2;a=1");
        assert_eq!(key("a:1|c|#b:2,a:1", TagMode::Sorted), "a;a=1;b=2");
        assert_eq!(key("a:1|c|#x;y:z:w", TagMode::Etsy), "a;x_y=zw");
        assert_eq!(key("a:1|c|#t1|#t2", TagMode::Etsy), "a;t1");
        assert_eq!(key("a \t b\u{a0}\u{3000}c:1|c", TagMode::Etsy), "a_b_c");
        assert_eq!(key("a \u{fffd} b:1|c", TagMode::Etsy), "a__b");
        assert_eq!(key("nocolon", TagMode::Etsy), "nocolon");
        assert_eq!(key("a:1|c|#", TagMode::Etsy), "a");
        assert_eq!(key("a:1|c|#,", TagMode::Etsy), "a;;");
    }

    #[test]
    fn samples_as_etsy_validates_them() {
        fn ok(c: &'static str) -> Result<(Value<'static>, f64), Reject> {
            parse_sample(b"k", c.as_bytes()).map(|s| (s.value, s.sample_rate))
        }
        assert_eq!(ok("1|c"), Ok((Value::Counter(1.0), 1.0)));
        assert_eq!(ok("0x10|c|@0.5"), Ok((Value::Counter(16.0), 0.5)));
        assert_eq!(ok("1|c|@1e-1"), Ok((Value::Counter(1.0), 1.0)));
        assert_eq!(ok("1|c|@.5|x"), Ok((Value::Counter(1.0), 0.5)));
        assert_eq!(ok("-4|zz"), Ok((Value::Counter(-4.0), 1.0)));
        assert_eq!(ok("1|"), Ok((Value::Counter(1.0), 1.0)));
        assert_eq!(ok("-5|ms\r"), Ok((Value::Timer(-5.0), 1.0)));
        assert_eq!(ok("-5|ms"), Err(REJECT_BAD_VALUE));
        assert_eq!(ok("x|c"), Err(REJECT_BAD_VALUE));
        assert_eq!(ok("|c"), Err(REJECT_BAD_VALUE));
        assert_eq!(ok("1"), Err(REJECT_NO_TYPE));
        assert_eq!(ok("1|c|"), Err(REJECT_BAD_RATE));
        assert_eq!(ok("1|c|@-1"), Err(REJECT_BAD_RATE));
        assert_eq!(ok("1|c|0.5"), Err(REJECT_BAD_RATE));
        assert_eq!(ok("1|c|@+1"), Err(REJECT_RATE_CRASHES_ETSY));
        assert_eq!(
            ok("+3|g"),
            Ok((
                Value::Gauge {
                    value: 3.0,
                    delta: true
                },
                1.0
            ))
        );
        assert_eq!(ok("|s"), Ok((Value::Set(b"0"), 1.0)));
        assert_eq!(ok("abc|s"), Ok((Value::Set(b"abc"), 1.0)));
    }
}

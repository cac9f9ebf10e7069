//! statsd lines, read by Etsy statsd 0.9.0's grammar (`stats.js` `handlePacket`,
//! `helpers.is_valid_packet`): the one statsd grammar of cadent. The relay validates
//! what it forwards with it and the aggregation engine takes the samples it yields, so
//! a line is good or bad for both alike, as it is for Etsy.
//!
//! ```text
//! line   = key ":" sample *(":" sample) ["|#" tags]
//! sample = value "|" type ["|@" rate] *("|" ignored)
//! ```
//!
//! Order of operations, as Etsy does it: the line is split at `|#` (the text up to a
//! second `|#` is the tag list), the rest at `:` (the first chunk is the key, every
//! further chunk one sample), each sample at `|` into value, type and rate. Validation
//! looks at the type as sent; the dispatch looks at it trimmed, so `1|ms\r` is validated
//! as an unknown type (numeric value) and then counted as a timer. Every type but `ms`,
//! `g` and `s` is a counter (DogStatsD's `h` and `d` too). DogStatsD's `|c:<container>`
//! and `|T<ts>` fields fail the rate check, as they do in Etsy: such a sample is bad.
//! Numbers are read as JavaScript's `Number(s)` reads them (`0x10` is 16).

use super::jsnum::{self, js_is_number, js_to_number, js_trim};
#[cfg(target_arch = "x86_64")]
use super::lines::eq_bits16_each;
use super::Reject;

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

/// One sample of a line: what it adds, and its sample rate (1 when none was sent; Etsy
/// ignores it for gauges and sets).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// What the sample adds.
    pub value: Value<'a>,
    /// `@rate`; 1 when absent.
    pub sample_rate: f64,
}

/// The parts of one line: the key text (before sanitising), the tag list text and the
/// sample chunks text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineParts<'a> {
    /// Text before the first `:` (or the whole pre-tag text): the statsd name, the part
    /// statsd's proxy hashes.
    pub name: &'a [u8],
    /// Text between the first `|#` and the next `|#` (empty when none).
    pub tags: &'a [u8],
    /// Text after the first `:`, to split at `:` into samples; `None` when the line has
    /// no `:` (Etsy then reads one sample `"1"`, which has no type).
    pub samples: Option<&'a [u8]>,
}

impl<'a> LineParts<'a> {
    /// The sample chunks, each to [`parse_sample`].
    pub fn chunks(&self) -> impl Iterator<Item = &'a [u8]> {
        self.samples.unwrap_or(b"1").split(|&b| b == b':')
    }
}

/// Splits a datagram into non-empty lines (Etsy splits at `\n` only; `\r` stays).
pub fn lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    datagram.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// The position of the first `|#`.
#[inline]
fn find_tags(s: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'|', s).find(|&i| s.get(i + 1) == Some(&b'#'))
}

/// Splits a line the way Etsy does.
#[inline]
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

/// The common line, `name:sample` with no tags and one sample, found in one pass over
/// the bytes: its name and its one sample chunk. `None` for anything else (tags, several
/// samples, no `:`), which [`split_line`] reads; both read such a line alike. The pass
/// takes sixteen bytes at a time with SSE2 (every x86-64) for lines of 16 bytes or
/// more, else eight at a time, and looks at single bytes only around a `#`.
#[inline]
pub fn one_sample(line: &[u8]) -> Option<(&[u8], &[u8])> {
    #[cfg(target_arch = "x86_64")]
    if line.len() >= 16 {
        return one_sample_sse2(line);
    }
    one_sample_words(line)
}

/// [`one_sample`] for lines of 16 bytes or more: a bit per byte for `:` and for `#`,
/// sixteen bytes at a time, both from one load ([`eq_bits16_each`]).
#[cfg(target_arch = "x86_64")]
#[inline]
fn one_sample_sse2(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut colon = usize::MAX;
    let mut at = 0;
    while at < line.len() {
        let [mut hashes, colons] = eq_bits16_each(line, at, [b'#', b':']);
        while hashes != 0 {
            let i = at + hashes.trailing_zeros() as usize;
            if i > 0 && line[i - 1] == b'|' {
                return None;
            }
            hashes &= hashes - 1;
        }
        if colons != 0 {
            if colon != usize::MAX || colons.count_ones() > 1 {
                return None;
            }
            colon = at + colons.trailing_zeros() as usize;
        }
        at += 16;
    }
    (colon != usize::MAX).then(|| (&line[..colon], &line[colon + 1..]))
}

/// [`one_sample`] eight bytes at a time, looking at single bytes only in a word holding
/// a `:` or a `#` (most words of a name hold neither).
#[inline]
fn one_sample_words(line: &[u8]) -> Option<(&[u8], &[u8])> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Non-zero when some byte of `w` is `b` (it may also flag a byte above a match,
    // never miss one: the bytes are then looked at one by one).
    let holds = |w: u64, b: u8| {
        let x = w ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let mut colon = usize::MAX;
    let look = |i: usize, colon: &mut usize| -> bool {
        match line[i] {
            b':' if *colon == usize::MAX => *colon = i,
            b':' => return false,
            b'#' if i > 0 && line[i - 1] == b'|' => return false,
            _ => {}
        }
        true
    };
    let mut words = line.chunks_exact(8);
    for (k, word) in words.by_ref().enumerate() {
        let w = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
        if holds(w, b':') | holds(w, b'#') != 0 {
            for i in k * 8..k * 8 + 8 {
                if !look(i, &mut colon) {
                    return None;
                }
            }
        }
    }
    for i in line.len() - words.remainder().len()..line.len() {
        if !look(i, &mut colon) {
            return None;
        }
    }
    (colon != usize::MAX).then(|| (&line[..colon], &line[colon + 1..]))
}

/// Parses one sample chunk (`value|type[|@rate]...`).
#[inline]
pub fn parse_sample(chunk: &[u8]) -> Result<Sample<'_>, Reject> {
    if let Some(s) = plain_sample(chunk) {
        return Ok(s);
    }
    parse_sample_general(chunk)
}

/// The common chunk, `value|c`, `value|ms`, `value|g` or `member|s` with no rate, the
/// value a plain decimal ([`jsnum::plain_decimal`], which `js_to_number` tries first):
/// what [`parse_sample_general`] makes of it, in one short pass. `None` for anything
/// else (including what that path refuses), which goes the general way.
#[inline]
fn plain_sample(chunk: &[u8]) -> Option<Sample<'_>> {
    let bar = chunk.iter().position(|&b| b == b'|')?;
    let (value, kind) = (&chunk[..bar], &chunk[bar + 1..]);
    let value = match kind {
        b"s" => Value::Set(if value.is_empty() { b"0" } else { value }),
        b"c" => Value::Counter(jsnum::plain_decimal(value)?),
        b"ms" => {
            let v = jsnum::plain_decimal(value)?;
            if v.is_nan() || v < 0.0 {
                return None;
            }
            Value::Timer(v)
        }
        b"g" => Value::Gauge {
            value: jsnum::plain_decimal(value)?,
            delta: value.first() == Some(&b'-'),
        },
        _ => return None,
    };
    Some(Sample {
        value,
        sample_rate: 1.0,
    })
}

/// [`parse_sample`] for any chunk: Etsy's splitting, validation and `Number()`.
fn parse_sample_general(chunk: &[u8]) -> Result<Sample<'_>, Reject> {
    let mut fields = chunk.split(|&b| b == b'|');
    let value = fields.next().unwrap_or_default();
    let Some(kind) = fields.next() else {
        return Err(Reject::MissingFields);
    };
    let rate = fields.next();
    if let Some(r) = rate {
        let ok = r.len() > 1 && r[0] == b'@' && js_is_number(&r[1..]) && r[1] != b'-';
        if !ok {
            return Err(Reject::BadSampleRate);
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
        return Err(Reject::BadValue);
    }
    let sample_rate = match rate {
        None => 1.0,
        Some(r) => {
            // Etsy reads `Number(r.match(/^@([\d\.]+)/)[1])`; a rate it validated but
            // cannot read that way (`@ 1`, `@+1`, `@Infinity`) makes Etsy 0.9.0 throw and
            // exit. It is a bad sample here.
            let run = r[1..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b'.')
                .count();
            if run == 0 {
                return Err(Reject::BadSampleRate);
            }
            js_to_number(&r[1..1 + run])
        }
    };
    // Etsy trims the type before it compares it; a bare type (every real one) has
    // nothing to trim.
    let kind = if kind.len() <= 2 && kind.iter().all(u8::is_ascii_lowercase) {
        kind
    } else {
        js_trim(kind)
    };
    let value = match kind {
        b"ms" => Value::Timer(num),
        b"g" => Value::Gauge {
            value: num,
            delta: matches!(value.first(), Some(b'+' | b'-')),
        },
        b"s" => Value::Set(if value.is_empty() { b"0" } else { value }),
        _ => Value::Counter(num),
    };
    Ok(Sample { value, sample_rate })
}

/// Validates one line: its name and the first reason a sample was refused when none
/// was good. For the relay, which forwards the line whole.
pub fn parse(line: &[u8]) -> Result<&[u8], Reject> {
    let parts = split_line(line);
    let mut first_reject = None;
    for chunk in parts.chunks() {
        match parse_sample(chunk) {
            Ok(_) => return Ok(parts.name),
            Err(r) => {
                first_reject.get_or_insert(r);
            }
        }
    }
    Err(first_reject.unwrap_or(Reject::MissingFields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_as_etsy_validates_them() {
        fn ok(c: &'static str) -> Result<(Value<'static>, f64), Reject> {
            parse_sample(c.as_bytes()).map(|s| (s.value, s.sample_rate))
        }
        assert_eq!(ok("1|c"), Ok((Value::Counter(1.0), 1.0)));
        assert_eq!(ok("0x10|c|@0.5"), Ok((Value::Counter(16.0), 0.5)));
        assert_eq!(ok("1|c|@1e-1"), Ok((Value::Counter(1.0), 1.0)));
        assert_eq!(ok("1|c|@.5|x"), Ok((Value::Counter(1.0), 0.5)));
        assert_eq!(ok("1|c|@0.5|@0.5"), Ok((Value::Counter(1.0), 0.5)));
        assert_eq!(ok("-4|zz"), Ok((Value::Counter(-4.0), 1.0)));
        assert_eq!(ok("1|"), Ok((Value::Counter(1.0), 1.0)));
        assert_eq!(ok("-5|ms\r"), Ok((Value::Timer(-5.0), 1.0)));
        assert_eq!(ok("-5|ms"), Err(Reject::BadValue));
        assert_eq!(ok("x|c"), Err(Reject::BadValue));
        assert_eq!(ok("|c"), Err(Reject::BadValue));
        assert_eq!(ok("++1|g"), Err(Reject::BadValue));
        assert_eq!(ok(""), Err(Reject::MissingFields));
        assert_eq!(ok("1"), Err(Reject::MissingFields));
        assert_eq!(ok("1|c|"), Err(Reject::BadSampleRate));
        assert_eq!(ok("1|c|@-1"), Err(Reject::BadSampleRate));
        assert_eq!(ok("1|c|0.5"), Err(Reject::BadSampleRate));
        assert_eq!(ok("1|c|@+1"), Err(Reject::BadSampleRate));
        assert_eq!(ok("1|c|T1700000000"), Err(Reject::BadSampleRate));
        assert_eq!(ok("1|c|c"), Err(Reject::BadSampleRate));
        // The shapes issue 14's hostile test sent, as Etsy's grammar reads them.
        assert_eq!(ok("++1|g"), Err(Reject::BadValue));
        assert_eq!(ok("1|c|@0.5|@0.5"), Ok((Value::Counter(1.0), 0.5)));
        assert!(ok("1|c|T").is_err() && ok("1|c|Tanything").is_err());
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

    fn check(input: &str, want: Result<&str, Reject>) {
        let got = parse(input.as_bytes()).map(|n| std::str::from_utf8(n).unwrap());
        assert_eq!(got, want, "{input:?}");
    }

    #[test]
    fn lines() {
        check("gorets:1|c", Ok("gorets"));
        check("gorets:1|c|@0.1", Ok("gorets"));
        check("glork:320|ms|@0.5", Ok("glork"));
        check("gaugor:-10|g", Ok("gaugor"));
        check("gaugor:+4|g", Ok("gaugor"));
        check("uniques:765|s", Ok("uniques"));
        check("a.b:1|c|#env:prod,role:db", Ok("a.b"));
        check("a.b:1|c:2|ms", Ok("a.b"));
        check("a.b:1|h", Ok("a.b"));
        // Etsy sanitises odd names when it aggregates; the line itself is good.
        check("a b:1|c", Ok("a b"));
        check(":1|c", Ok(""));
        // At least one good sample: the line is good (Etsy applies that sample).
        check("a.b:1|c:", Ok("a.b"));
        check("a.b:1|c|x", Err(Reject::BadSampleRate));
        check("a.b:1|c|", Err(Reject::BadSampleRate));
        check("a.b:1|c|c:abc123", Err(Reject::BadSampleRate));
        check("a.b", Err(Reject::MissingFields));
        check("a.b:1", Err(Reject::MissingFields));
        check("a.b:x|c", Err(Reject::BadValue));
        check("a.b:++1|g", Err(Reject::BadValue));
        check("a.b:|c:", Err(Reject::BadValue));
    }

    #[test]
    fn one_sample_lines_read_as_split_line_reads_them() {
        for line in [
            "a:1|c",
            "a.b:2|ms|@0.5",
            "a:1|c:2|c",
            "a:1|c|#t:1",
            "a|#t:1",
            "nocolon",
            ":1|c",
            "a:",
            "a:1|#",
            "x:1|c|@0.1|#a",
            "a#b:1|c",
        ] {
            let l = line.as_bytes();
            let p = split_line(l);
            match one_sample(l) {
                Some((name, chunk)) => {
                    assert!(p.tags.is_empty(), "{line}");
                    assert_eq!(name, p.name, "{line}");
                    assert_eq!(vec![chunk], p.chunks().collect::<Vec<_>>(), "{line}");
                }
                None => assert!(
                    !p.tags.is_empty()
                        || p.samples.is_none()
                        || p.chunks().count() > 1
                        || line.contains("|#"),
                    "{line}"
                ),
            }
        }
    }

    #[test]
    fn line_parts() {
        let p = split_line(b"a:1|c:2|ms|#t:1,u|#v");
        assert_eq!(p.name, b"a");
        assert_eq!(p.tags, b"t:1,u");
        assert_eq!(p.chunks().collect::<Vec<_>>(), [&b"1|c"[..], b"2|ms"]);
        let p = split_line(b"nocolon");
        assert_eq!((p.name, p.samples), (&b"nocolon"[..], None));
        assert_eq!(p.chunks().collect::<Vec<_>>(), [&b"1"[..]]);
    }

    /// [`one_sample`] as first written, one byte at a time: the definition the word-wise
    /// pass must agree with.
    fn one_sample_bytewise(line: &[u8]) -> Option<(&[u8], &[u8])> {
        let mut colon = usize::MAX;
        let mut prev = 0u8;
        for (i, &b) in line.iter().enumerate() {
            match b {
                b':' if colon == usize::MAX => colon = i,
                b':' => return None,
                b'#' if prev == b'|' => return None,
                _ => {}
            }
            prev = b;
        }
        (colon != usize::MAX).then(|| (&line[..colon], &line[colon + 1..]))
    }

    #[test]
    fn plain_samples_read_as_the_general_path_reads_them() {
        // Chunks over an alphabet of what the two paths look at, every length to 12:
        // whatever the short path takes, the general one makes the same of.
        let alphabet = b"0123456789.-+|cmsgh@e x";
        let mut rng = crate::tools::SplitMix64(7);
        let mut taken = 0;
        let kinds = ["c", "ms", "g", "s", "h", "m", "", " c", "c|@0.5", "ms|"];
        for i in 0..300_000 {
            let chunk: Vec<u8> = if i % 2 == 0 {
                let len = rng.below(13);
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect()
            } else {
                // value|kind, the value over digits and what a decimal may hold.
                let len = rng.below(18);
                let mut c: Vec<u8> = (0..len).map(|_| b"0123456789.-+e"[rng.below(14)]).collect();
                c.push(b'|');
                c.extend_from_slice(kinds[rng.below(kinds.len())].as_bytes());
                c
            };
            if let Some(s) = plain_sample(&chunk) {
                taken += 1;
                let g = parse_sample_general(&chunk);
                let same = match (&g, s.value) {
                    // -0 and 0 compare equal as f64: compare the bits.
                    (
                        Ok(Sample {
                            value: Value::Counter(a),
                            ..
                        }),
                        Value::Counter(b),
                    )
                    | (
                        Ok(Sample {
                            value: Value::Timer(a),
                            ..
                        }),
                        Value::Timer(b),
                    ) => a.to_bits() == b.to_bits(),
                    _ => g == Ok(s),
                };
                assert!(
                    same,
                    "{:?}: {g:?} vs {s:?}",
                    String::from_utf8_lossy(&chunk)
                );
            }
        }
        assert!(taken > 10_000, "{taken}");
        for c in [
            "1|c",
            "-0|ms",
            "0.25|g",
            "-3|g",
            "|s",
            "u1|s",
            "12345678901234.5|c",
        ] {
            assert!(plain_sample(c.as_bytes()).is_some(), "{c}");
        }
        for c in [
            "-1|ms", "+1|g", "1|c|@0.5", "1|h", "1e3|c", "1| c", "0x1|c", "|c",
        ] {
            assert!(plain_sample(c.as_bytes()).is_none(), "{c}");
        }
    }

    #[test]
    fn one_sample_reads_every_line_as_the_bytewise_pass_does() {
        // Lines of every length up to 70 over an alphabet heavy in the bytes that matter
        // (and bytes whose neighbours trip the word test), at every alignment.
        let alphabet = b"a:|#.9\x00\x7f\x80\xff;";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut buf = [0u8; 80];
        for _ in 0..300_000 {
            let len = (next() % 71) as usize;
            let at = (next() % 8) as usize;
            for b in &mut buf[at..at + len] {
                *b = alphabet[(next() % alphabet.len() as u64) as usize];
            }
            let line = &buf[at..at + len];
            assert_eq!(one_sample(line), one_sample_bytewise(line), "{line:?}");
            // The word-wise pass too, which x86-64 uses only for short lines.
            assert_eq!(
                one_sample_words(line),
                one_sample_bytewise(line),
                "{line:?}"
            );
        }
        for line in [
            &b"a.b:1|c"[..],
            b"a.b.c.d.e.f.g.h:1|c",
            b"a.b.c.d.e.f.g.h:1|c|#t:1",
            b"abcdefg:1|c:2|c",
            b"abcdefgh#:1|c",
            b"|#abcdefg:1",
            b"",
            b":",
        ] {
            assert_eq!(one_sample(line), one_sample_bytewise(line), "{line:?}");
        }
    }
}

//! Graphite plaintext: `name value timestamp`.

use super::{parse_f64, python_float, valid_name, Reject};

/// A parsed graphite line, borrowing from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line<'a> {
    /// The full name, tags included (`a.b;k=v`).
    pub name: &'a [u8],
    /// The value field as written.
    pub value: &'a [u8],
    /// The timestamp field as written (integer or float seconds).
    pub timestamp: &'a [u8],
}

impl<'a> Line<'a> {
    /// The part of the name the rings hash: everything before the first `;`.
    pub fn key(&self) -> &'a [u8] {
        hash_key(self.name)
    }
}

/// The untagged part of a graphite name, the part carbon-c-relay hashes.
pub fn hash_key(name: &[u8]) -> &[u8] {
    match memchr::memchr(b';', name) {
        Some(i) => &name[..i],
        None => name,
    }
}

/// Parses one line (no `\n`; a trailing `\r` is already gone). Fields are separated by
/// runs of spaces or tabs; leading and trailing blanks are ignored. A name must be
/// printable ASCII or valid UTF-8 above it (control bytes, DEL and invalid UTF-8 are
/// what binary garbage looks like).
pub fn parse(line: &[u8]) -> Result<Line<'_>, Reject> {
    parse_with(line, false)
}

/// [`parse`]; with `any_name_bytes`, a name may hold any byte but a blank or `\r` (for a
/// listener that cleanses names, which makes the path's odd bytes `_` and a NUL in the
/// tags `_`, as carbon-c-relay does; the rest of the tags it keeps as they came).
pub fn parse_with(line: &[u8], any_name_bytes: bool) -> Result<Line<'_>, Reject> {
    match parse_normal(line) {
        Some(l) => Ok(l),
        None => parse_general(line, any_name_bytes),
    }
}

/// The common shape, `name value timestamp` with single spaces, read from the right: the
/// two short fields by byte loops, the name by one vectorised check (which also proves it
/// holds no blank). Anything else, good or bad, is left to [`parse_general`], so reject
/// reasons come from one place.
#[inline]
fn parse_normal(line: &[u8]) -> Option<Line<'_>> {
    let sp2 = line.iter().rposition(|&b| b == b' ')?;
    let sp1 = line[..sp2].iter().rposition(|&b| b == b' ')?;
    let (name, value, timestamp) = (&line[..sp1], &line[sp1 + 1..sp2], &line[sp2 + 1..]);
    let ok = !name.is_empty()
        && ascii_name(name)
        && !no_path(name)
        && is_plain_number(value)
        && is_plain_number(timestamp)
        && timestamp[0] != b'-';
    ok.then_some(Line {
        name,
        value,
        timestamp,
    })
}

/// No path at all: nothing but dots (`...`), or dots and then the tags (`;a=b`,
/// `.;a=b`). carbon-c-relay's cleansing drops leading dots, so `.;a=b` would go out as
/// `;a=b`, which is itself refused: such a name is refused whether or not the listener
/// cleanses, one reason for one shape.
#[inline]
fn no_path(name: &[u8]) -> bool {
    match name.iter().position(|&b| b != b'.') {
        None => true,
        Some(i) => name[i] == b';',
    }
}

/// Every byte printable ASCII and not a blank. Branch-free so it vectorises.
#[inline]
fn ascii_name(name: &[u8]) -> bool {
    name.iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
}

/// `[+-]?digits[.digits]` or `[+-]?digits.`/`.digits`, at most 300 characters (so it
/// cannot overflow to infinity): finite by construction.
#[inline]
fn is_plain_number(s: &[u8]) -> bool {
    let digits = match s.first() {
        Some(b'-') | Some(b'+') => &s[1..],
        _ => s,
    };
    if digits.is_empty() || digits.len() > 300 {
        return false;
    }
    let mut dots = 0u32;
    let mut others = 0u32;
    for &b in digits {
        dots += u32::from(b == b'.');
        others += u32::from(!b.is_ascii_digit() && b != b'.');
    }
    others == 0 && dots <= 1 && digits.len() > dots as usize
}

fn parse_general(line: &[u8], any_name_bytes: bool) -> Result<Line<'_>, Reject> {
    let mut at = 0;
    let name = next_field(line, &mut at).ok_or(Reject::MissingFields)?;
    let value = next_field(line, &mut at).ok_or(Reject::MissingFields)?;
    let timestamp = next_field(line, &mut at).ok_or(Reject::MissingFields)?;
    if next_field(line, &mut at).is_some() {
        return Err(Reject::TooManyFields);
    }
    // A `\r` inside a name ends carbon-c-relay's line there: such a name never reaches
    // its router whole, so it is refused rather than cleansed into a new name.
    let any_ok = any_name_bytes && memchr::memchr(b'\r', name).is_none();
    if !(any_ok || valid_name(name)) || no_path(name) {
        return Err(Reject::BadName);
    }
    // Any value python's float() reads, `nan` and `inf` included: carbon-c-relay
    // forwards them, carbon-cache stores infinities (and drops NaN, as cadent's store).
    if !is_plain_number(value) && python_float(value).is_none() {
        return Err(Reject::BadValue);
    }
    // Seconds since the epoch; carbon reads -1 as "now", and takes other negative ones
    // (its whisper file is made; the point, older than every archive, is dropped). A
    // timestamp must be finite: carbon's `int()` of it fails otherwise.
    if !is_plain_number(timestamp) && parse_f64(timestamp).is_none() {
        return Err(Reject::BadTimestamp);
    }
    Ok(Line {
        name,
        value,
        timestamp,
    })
}

/// The line in normal form (`name value timestamp`, single spaces) is the input itself
/// when it had no extra blanks; then it can be copied out in one piece.
pub fn is_normal(line: &[u8], l: &Line<'_>) -> bool {
    line.len() == l.name.len() + l.value.len() + l.timestamp.len() + 2
        && line[l.name.len()] == b' '
        && line[line.len() - l.timestamp.len() - 1] == b' '
}

#[inline]
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

#[inline]
fn next_field<'a>(line: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let mut i = *at;
    while i < line.len() && is_blank(line[i]) {
        i += 1;
    }
    let start = i;
    while i < line.len() && !is_blank(line[i]) {
        i += 1;
    }
    *at = i;
    (i > start).then(|| &line[start..i])
}

/// Whether carbon-c-relay's cleansing would leave `name` as it is: every byte before the
/// first `;` in `[A-Za-z0-9._:#-]`, no empty path element (`..`, a leading `.`, a `.`
/// right after `;`), and no trailing `.` on an untagged name. The common case, checked
/// branch-free so it costs one pass.
#[inline]
pub fn is_clean(name: &[u8]) -> bool {
    // Two branch-free folds (they vectorise): allowed bytes in the path, and no '.' right
    // after a '.' or a ';' anywhere.
    let path_end = memchr::memchr(b';', name).unwrap_or(name.len());
    let path = &name[..path_end];
    let allowed = path.iter().fold(true, |ok, &b| ok & allowed_byte(b));
    let no_empty_element = name
        .iter()
        .zip(name.iter().skip(1))
        .fold(true, |ok, (&a, &b)| {
            ok & !(((a == b'.') | (a == b';')) & (b == b'.'))
        });
    // A NUL anywhere (c-relay writes it as `_`, in the tags too).
    let no_nul = name.iter().fold(true, |ok, &b| ok & (b != 0));
    allowed
        && no_empty_element
        && no_nul
        && name.first() != Some(&b'.')
        && (path_end < name.len() || path.last() != Some(&b'.'))
}

/// `[A-Za-z0-9._:#-]`, as comparisons rather than a table so the check vectorises.
#[inline]
fn allowed_byte(b: u8) -> bool {
    let lower = b | 0x20;
    (lower.wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'0') < 10)
        | (b == b'.')
        | (b == b'_')
        | (b == b':')
        | (b == b'#')
        | (b == b'-')
}

/// Rewrites `name` into `out` as carbon-c-relay 3.7.3 does before it matches or hashes
/// anything (observed on the real relay; `tests/it/crelay.rs` compares the two):
/// - in the path (before the first `;`), a byte outside `[A-Za-z0-9._:#-]` becomes `_`
///   (byte by byte, so a two-byte UTF-8 character becomes `__`);
/// - a `.` at the start, after another `.`, or right after a `;` is dropped, in the tags
///   too, which are otherwise left alone;
/// - a trailing `.` is dropped when the name has no tags;
/// - a NUL becomes `_` in the tags too.
///
/// The result may be empty (`...`); the caller rejects that.
pub fn cleanse(name: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut in_tags = false;
    for &b in name {
        match b {
            b';' => {
                in_tags = true;
                out.push(b);
            }
            b'.' => {
                if !matches!(out.last(), None | Some(b'.') | Some(b';')) {
                    out.push(b);
                }
            }
            0 => out.push(b'_'),
            _ if in_tags || allowed_byte(b) => out.push(b),
            _ => out.push(b'_'),
        }
    }
    if !in_tags && out.last() == Some(&b'.') {
        out.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, want: Result<(&str, &str, &str), Reject>) {
        let got = parse(input.as_bytes()).map(|l| {
            (
                std::str::from_utf8(l.name).unwrap(),
                std::str::from_utf8(l.value).unwrap(),
                std::str::from_utf8(l.timestamp).unwrap(),
            )
        });
        assert_eq!(got, want, "{input:?}");
    }

    #[test]
    fn lines() {
        check("a.b.c 1 1700000000", Ok(("a.b.c", "1", "1700000000")));
        check(
            "a.b 1.5e3 1700000000.25",
            Ok(("a.b", "1.5e3", "1700000000.25")),
        );
        check("  a.b\t-2   17 ", Ok(("a.b", "-2", "17")));
        check("a.b;dc=x;role=db 1 17", Ok(("a.b;dc=x;role=db", "1", "17")));
        check("a.b 1 -1", Ok(("a.b", "1", "-1")));
        check("a.b 1", Err(Reject::MissingFields));
        check("a.b 1 2 3", Err(Reject::TooManyFields));
        // Values as python's float() reads them (carbon-c-relay forwards them, carbon
        // stores infinities); timestamps must be finite.
        check("a.b nan 2", Ok(("a.b", "nan", "2")));
        check("a.b -Infinity 2", Ok(("a.b", "-Infinity", "2")));
        check("a.b 1_000 2", Ok(("a.b", "1_000", "2")));
        check("a.b 1__0 2", Err(Reject::BadValue));
        check("a.b 0x10 2", Err(Reject::BadValue));
        check("a.b 1 inf", Err(Reject::BadTimestamp));
        check("a.b 1 nan", Err(Reject::BadTimestamp));
        check("a.b 1 1e999", Err(Reject::BadTimestamp));
        check("a.b 1 1_700_000_000", Ok(("a.b", "1", "1_700_000_000")));
        check("a.b x 2", Err(Reject::BadValue));
        check("a.b 1 now", Err(Reject::BadTimestamp));
        check("a.b 1 -5", Ok(("a.b", "1", "-5")));
        check("a.b 1 -", Err(Reject::BadTimestamp));
        check("a\u{1}b 1 2", Err(Reject::BadName));
        check(";x=1 1 2", Err(Reject::BadName));
        check("... 1 2", Err(Reject::BadName));
        // Cleansing would leave no path: refused as `;x=1` is.
        check(".;a=b 1 2", Err(Reject::BadName));
        check("..;a=b 1 2", Err(Reject::BadName));
        check(" .;a=b  1 2", Err(Reject::BadName));
        check(".a;b=c 1 2", Ok((".a;b=c", "1", "2")));
        assert_eq!(parse(b"\xff\xfe 1 2"), Err(Reject::BadName));
        // A cleansing listener takes them (cleansing makes the path's bytes `_`).
        for name in [
            &b"\xff\xfe"[..],
            b"a\x01b",
            b"a\x7f",
            b"a\x00b",
            b"a;t=\x01",
        ] {
            let mut line = name.to_vec();
            line.extend_from_slice(b" 1 2");
            assert_eq!(
                parse_with(&line, true).map(|l| l.name),
                Ok(name),
                "{line:?}"
            );
        }
        assert_eq!(parse_with(b".;a=b 1 2", true), Err(Reject::BadName));
        assert_eq!(parse_with(b"a\rz 1 2", true), Err(Reject::BadName));
        check("a.b 1e3 1.7e9", Ok(("a.b", "1e3", "1.7e9")));
        check("a.b .5 5.", Ok(("a.b", ".5", "5.")));
        check("a.b +1 17", Ok(("a.b", "+1", "17")));
        check("a.b inf 17", Ok(("a.b", "inf", "17")));
        check("a.b 1e999 17", Ok(("a.b", "1e999", "17")));
        check("a.b . 17", Err(Reject::BadValue));
        check("a.b - 17", Err(Reject::BadValue));
        check("a.b 1.2.3 17", Err(Reject::BadValue));
        assert_eq!(hash_key(b"a.b;x=1"), b"a.b");
        let line = b"a.b 1 17";
        assert!(is_normal(line, &parse(line).unwrap()));
        let line = b"a.b  1 17";
        assert!(!is_normal(line, &parse(line).unwrap()));
    }

    /// The fast path must never accept a line differently from the general parser.
    #[test]
    fn fast_path_agrees_with_general_parser() {
        let alphabet = b"ab.;=1209-+e \t\x01\xc3";
        let mut state = 0x2545f4914f6cdd1du64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 14) as usize;
            let mut x = state;
            let line: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.rotate_left(5) ^ 0x9e37;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            assert_eq!(parse(&line), parse_general(&line, false), "{line:?}");
        }
    }

    fn cleansed(name: &str) -> String {
        let mut out = Vec::new();
        cleanse(name.as_bytes(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Each pair was produced by carbon-c-relay 3.7.3 relaying the left name (forward
    /// cluster to a sink): `printf '%s 1 1700000000\n' NAME | nc 127.0.0.1 PORT`.
    #[test]
    fn cleansing_matches_carbon_c_relay() {
        for (name, want) in [
            ("a..b", "a.b"),
            ("a.b.", "a.b"),
            (".a.b", "a.b"),
            ("a(b)", "a_b_"),
            ("a*b?c", "a_b_c"),
            ("a/b\\c", "a_b_c"),
            ("a:b#c-d_e", "a:b#c-d_e"),
            ("a;t=(x)..y", "a;t=(x).y"),
            ("a..b;t=1", "a.b;t=1"),
            ("caf\u{e9}.x", "caf__.x"),
            ("a...b", "a.b"),
            ("a=b,c", "a_b_c"),
            ("..a..b..", "a.b"),
            ("a[b]{c}", "a_b__c_"),
            ("a;t=x.", "a;t=x."),
            ("a;t=..x", "a;t=.x"),
            ("a.;t=1", "a.;t=1"),
            ("a;.t=1", "a;t=1"),
            ("a;t=1;u=(2)", "a;t=1;u=(2)"),
            (".;t=1", ";t=1"),
            ("...", ""),
            ("a.b;t=x;;u=y", "a.b;t=x;;u=y"),
            ("a\u{1}z", "a_z"),
            ("a\u{0}b\u{7f}", "a_b_"),
            ("a;t=\u{1}x", "a;t=\u{1}x"),
            ("a;t=\u{0}x", "a;t=_x"),
        ] {
            assert_eq!(cleansed(name), want, "{name}");
            assert_eq!(is_clean(name.as_bytes()), name == want, "is_clean({name})");
        }
    }

    #[test]
    fn allowed_bytes_are_exactly_the_set() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b"._:#-".contains(&b);
            assert_eq!(allowed_byte(b), want, "{b:#x}");
        }
    }
}

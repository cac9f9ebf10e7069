//! Numbers as JavaScript reads and prints them, so statsd output is byte-identical to
//! Etsy statsd (node). Reading is ECMAScript `ToNumber(string)` (what `Number(s)` and
//! `isNaN(s)` do); printing is `Number.prototype.toString()`: the shortest digits that
//! round-trip, integers without `.0`, exponent form below 1e-6 and from 1e21 up.
//!
//! Rust's `{:e}` already yields the shortest round-trip digits (the same digit string
//! as JavaScript's algorithm: the fewest digits, closest to the value); only the layout
//! differs, so we re-lay the digits out the way ECMA-262 §6.1.6.1.20 says.

use std::fmt::Write as _;

/// Appends `v` as JavaScript's `String(v)` prints it. No allocation.
pub fn write_js_number(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"Infinity" } else { b"-Infinity" });
        return;
    }
    // Integers below 2^53 are the common case (counts, sums of integer timings).
    if v == v.trunc() && v.abs() < 9_007_199_254_740_992.0 {
        write_int(out, v as i64);
        return;
    }
    let mut buf = StackBuf::default();
    // Shortest round-trip digits in the form `d[.ddd]e[-]x`.
    let _ = write!(buf, "{:e}", v);
    let s = &buf.bytes[..buf.len];
    let (neg, s) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let e_at = s.iter().position(|&b| b == b'e').unwrap_or(s.len());
    let (mant, exp) = (&s[..e_at], &s[e_at + 1..]);
    let mut digits = [0u8; 24];
    let mut k = 0;
    for &b in mant {
        if b != b'.' {
            digits[k] = b;
            k += 1;
        }
    }
    let e: i32 = parse_small_int(exp);
    if k >= 16 {
        even_on_tie(v.abs(), &mut digits[..k], e);
    }
    let digits = &digits[..k];
    // JavaScript's n: the value is 0.d1d2...dk × 10^n.
    let n = e + 1;
    let k = k as i32;
    if neg {
        out.push(b'-');
    }
    if k <= n && n <= 21 {
        out.extend_from_slice(digits);
        out.extend(std::iter::repeat_n(b'0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.extend_from_slice(&digits[..n as usize]);
        out.push(b'.');
        out.extend_from_slice(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-n) as usize));
        out.extend_from_slice(digits);
    } else {
        out.push(digits[0]);
        if k > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if n - 1 < 0 { b'-' } else { b'+' });
        write_int(out, i64::from((n - 1).abs()));
    }
}

/// JavaScript breaks a tie between two shortest digit strings (the value exactly
/// halfway between them, both reading back as it) towards the even one; Rust's shortest
/// form rounds the tie up. Ties need 16 or more digits, so shorter strings skip this.
fn even_on_tie(v: f64, digits: &mut [u8], e: i32) {
    let k = digits.len();
    let mut exact = StackBuf::default();
    // k + 4 significant digits: exact when v has k + 1 (a tie).
    if write!(exact, "{:.*e}", k + 3, v).is_err() {
        return;
    }
    let s = &exact.bytes[..exact.len];
    let e_at = s.iter().position(|&b| b == b'e').unwrap_or(s.len());
    if parse_small_int(&s[e_at + 1..]) != e {
        return;
    }
    let mut m = [0u8; 40];
    let mut n = 0;
    for &b in &s[..e_at] {
        if b != b'.' {
            m[n] = b;
            n += 1;
        }
    }
    if n != k + 4 || m[k] != b'5' || m[k + 1..n].iter().any(|&b| b != b'0') {
        return;
    }
    // Four more digits only suggest a tie; a double's exact decimal has at most 767
    // significant digits, so print them all to be sure (rare: only here).
    let full = format!("{v:.800e}");
    let mant = full.split('e').next().unwrap_or("");
    if mant
        .bytes()
        .filter(u8::is_ascii_digit)
        .skip(k + 1)
        .any(|b| b != b'0')
    {
        return;
    }
    // The two candidates: m[..k] (lower) and m[..k] + 1 unit (upper).
    let lower = &m[..k];
    let lower_even = (lower[k - 1] - b'0') % 2 == 0;
    if digits == lower {
        if lower_even {
            return;
        }
    } else if !lower_even {
        return;
    }
    let mut cand = [0u8; 24];
    cand[..k].copy_from_slice(lower);
    if digits == lower {
        // Upper: add one unit in the last place.
        let mut i = k;
        loop {
            if i == 0 {
                return;
            }
            i -= 1;
            if cand[i] == b'9' {
                cand[i] = b'0';
            } else {
                cand[i] += 1;
                break;
            }
        }
    }
    let mut text = StackBuf::default();
    let _ = text.write_str(std::str::from_utf8(&cand[..1]).expect("ascii"));
    let _ = text.write_str(".");
    let _ = text.write_str(std::str::from_utf8(&cand[1..k]).expect("ascii"));
    let _ = write!(text, "e{e}");
    let back: Option<f64> = std::str::from_utf8(&text.bytes[..text.len])
        .ok()
        .and_then(|t| t.parse().ok());
    if back == Some(v) {
        digits.copy_from_slice(&cand[..k]);
    }
}

/// `v` as JavaScript prints it, as a `String` (config and tests; not for hot paths).
pub fn js_number_string(v: f64) -> String {
    let mut out = Vec::with_capacity(24);
    write_js_number(&mut out, v);
    String::from_utf8(out).expect("ascii")
}

fn write_int(out: &mut Vec<u8>, v: i64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut u = v.unsigned_abs();
    loop {
        i -= 1;
        tmp[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&tmp[i..]);
}

fn parse_small_int(s: &[u8]) -> i32 {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let mut v = 0i32;
    for &d in digits {
        v = v * 10 + i32::from(d - b'0');
    }
    if neg {
        -v
    } else {
        v
    }
}

struct StackBuf {
    bytes: [u8; 40],
    len: usize,
}

impl Default for StackBuf {
    fn default() -> Self {
        StackBuf {
            bytes: [0; 40],
            len: 0,
        }
    }
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let b = s.as_bytes();
        let end = self.len + b.len();
        if end > self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}

/// Whether `c` is JavaScript whitespace (`WhiteSpace` or `LineTerminator`, what `\s`,
/// `trim()` and `Number()` skip). Differs from `char::is_whitespace` at U+0085 (not JS
/// whitespace) and U+FEFF (JS whitespace).
pub fn is_js_space(c: char) -> bool {
    c != '\u{85}' && (c.is_whitespace() || c == '\u{feff}')
}

/// `s` without JavaScript whitespace at either end (`String.prototype.trim`). Bytes that
/// are not UTF-8 are not whitespace, so they stop the trim as their U+FFFD would.
pub fn js_trim(s: &[u8]) -> &[u8] {
    let mut start = 0;
    while start < s.len() {
        match char_at(s, start) {
            Some((c, len)) if is_js_space(c) => start += len,
            _ => break,
        }
    }
    let mut end = s.len();
    while end > start {
        match char_before(s, end) {
            Some((c, len)) if is_js_space(c) => end -= len,
            _ => break,
        }
    }
    &s[start..end]
}

/// The char encoded at `s[i..]` and its length, if valid UTF-8.
fn char_at(s: &[u8], i: usize) -> Option<(char, usize)> {
    let b = s[i];
    if b < 0x80 {
        return Some((b as char, 1));
    }
    let len = match b {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return None,
    };
    let chunk = s.get(i..i + len)?;
    let c = std::str::from_utf8(chunk).ok()?.chars().next()?;
    Some((c, len))
}

/// The char that ends at `s[..end]` and its length, if valid UTF-8.
fn char_before(s: &[u8], end: usize) -> Option<(char, usize)> {
    for len in 1..=4.min(end) {
        if let Some((c, l)) = char_at(s, end - len) {
            if l == len {
                return Some((c, len));
            }
        }
    }
    None
}

/// ECMAScript `ToNumber` applied to a string: `Number(s)`. NaN when `s` is not a
/// numeric literal. Accepts what JavaScript accepts and nothing more: surrounding JS
/// whitespace, the empty string (0), `[+-]Infinity`, decimal literals with an optional
/// sign, fraction and exponent (`.5`, `5.`, `1e3`), and unsigned `0x`/`0o`/`0b` integers.
pub fn js_to_number(s: &[u8]) -> f64 {
    if let Some(v) = plain_decimal(s) {
        return v;
    }
    let s = js_trim(s);
    if s.is_empty() {
        return 0.0;
    }
    if s.len() > 2 && s[0] == b'0' {
        let radix = match s[1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            b'b' | b'B' => 2,
            _ => 0,
        };
        if radix != 0 {
            return parse_radix(&s[2..], radix);
        }
    }
    let (sign, body) = match s[0] {
        b'+' => (1.0, &s[1..]),
        b'-' => (-1.0, &s[1..]),
        _ => (1.0, s),
    };
    if body == b"Infinity" {
        return sign * f64::INFINITY;
    }
    if !is_decimal_literal(body) {
        return f64::NAN;
    }
    // Validated above to be plain ASCII decimal; Rust's parser rounds correctly, as
    // JavaScript does.
    let text = std::str::from_utf8(body).expect("ascii");
    match text.parse::<f64>() {
        Ok(v) => sign * v,
        Err(_) => f64::NAN,
    }
}

/// The common case, exactly: `[-]digits[.digits]` with at most 15 significant digits in
/// all and at most 22 after the point. The digits make an integer below 2^53 and the
/// divisor a power of ten below 2^75 that a double holds exactly, so one correctly rounded
/// division gives the correctly rounded value (Clinger's fast path), as `Number()` does.
#[inline]
pub fn plain_decimal(s: &[u8]) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let (neg, body) = match s.first()? {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() || body.len() > 16 {
        return None;
    }
    let mut m: u64 = 0;
    let mut digits = 0;
    let mut frac: Option<usize> = None;
    for (i, &b) in body.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                m = m * 10 + u64::from(b - b'0');
                digits += 1;
            }
            b'.' if frac.is_none() => frac = Some(body.len() - i - 1),
            _ => return None,
        }
    }
    if digits == 0 || digits > 15 {
        return None;
    }
    let v = m as f64 / POW10[frac.unwrap_or(0)];
    Some(if neg { -v } else { v })
}

/// `isNumber` of Etsy's helpers: a non-empty string that `Number()` does not make NaN.
pub fn js_is_number(s: &[u8]) -> bool {
    !s.is_empty() && !js_to_number(s).is_nan()
}

/// `digits [. digits?] [e [+-] digits]` or `. digits [e ...]`.
fn is_decimal_literal(s: &[u8]) -> bool {
    let mut i = 0;
    let int_digits = count_digits(&s[i..]);
    i += int_digits;
    let mut frac_digits = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = count_digits(&s[i..]);
        i += frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return false;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_digits = count_digits(&s[i..]);
        if exp_digits == 0 {
            return false;
        }
        i += exp_digits;
    }
    i == s.len()
}

fn count_digits(s: &[u8]) -> usize {
    s.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// An unsigned integer in `radix`; NaN on any other character. Exact up to 128 bits,
/// then accumulated in floating point (rounding may differ from JavaScript beyond 2^128).
fn parse_radix(s: &[u8], radix: u32) -> f64 {
    let mut exact: u128 = 0;
    let mut approx = 0.0f64;
    let mut overflowed = false;
    for &b in s {
        let Some(d) = (b as char).to_digit(radix) else {
            return f64::NAN;
        };
        if !overflowed {
            match exact
                .checked_mul(u128::from(radix))
                .and_then(|v| v.checked_add(u128::from(d)))
            {
                Some(v) => exact = v,
                None => {
                    overflowed = true;
                    approx = exact as f64;
                }
            }
        }
        if overflowed {
            approx = approx * f64::from(radix) + f64::from(d);
        }
    }
    if overflowed {
        approx
    } else {
        exact as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: f64) -> String {
        js_number_string(v)
    }

    #[test]
    fn prints_like_javascript() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-4.0, "-4"),
            (0.1, "0.1"),
            (0.3, "0.3"),
            (0.1 + 0.2, "0.30000000000000004"),
            (10.0 / 3.0, "3.3333333333333335"),
            (28.722813232690143, "28.722813232690143"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1.5e300, "1.5e+300"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.25e-7, "1.25e-7"),
            (0.000123, "0.000123"),
            (-1.5e-9, "-1.5e-9"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (9007199254740993.0, "9007199254740992"),
            (2f64.powi(60), "1152921504606847000"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (123.456, "123.456"),
            (1_146_866_475_223_300.0 + 0.25, "1146866475223300.2"),
            (121_761_424_273_625.0 + 0.625, "121761424273625.62"),
            (0.5, "0.5"),
        ];
        for &(v, want) in cases {
            assert_eq!(p(v), want, "{v:e}");
        }
    }

    #[test]
    fn reads_like_javascript() {
        let nan: &[&str] = &[
            "abc", "1_000", ".", "1e", "e5", "-0x10", "+0x1", "0x", "inf", "nan", "NaN",
            "infinity", "1.2.3", "1,5", "--1", "1 2", "0xg", "\u{85}1",
        ];
        for s in nan {
            assert!(js_to_number(s.as_bytes()).is_nan(), "{s:?}");
        }
        let ok: &[(&str, f64)] = &[
            ("", 0.0),
            ("  ", 0.0),
            (" 5 ", 5.0),
            ("\u{a0}5\u{feff}", 5.0),
            ("\u{3000}7\n", 7.0),
            ("0x10", 16.0),
            ("0X1f", 31.0),
            ("0o17", 15.0),
            ("0b101", 5.0),
            ("1e3", 1000.0),
            ("1E3", 1000.0),
            (".5", 0.5),
            ("5.", 5.0),
            ("+.5e-1", 0.05),
            ("-Infinity", f64::NEG_INFINITY),
            ("+Infinity", f64::INFINITY),
            ("-4", -4.0),
            ("007", 7.0),
        ];
        for &(s, want) in ok {
            assert_eq!(js_to_number(s.as_bytes()), want, "{s:?}");
        }
        assert!(!js_is_number(b""));
        assert!(js_is_number(b" "));
    }

    #[test]
    fn trims_js_whitespace_only() {
        assert_eq!(js_trim(b" \tms\r\n"), b"ms");
        assert_eq!(js_trim("\u{2028}c\u{a0}".as_bytes()), b"c");
        assert_eq!(js_trim(b"\xffc"), b"\xffc");
        assert_eq!(js_trim(b""), b"");
    }
}

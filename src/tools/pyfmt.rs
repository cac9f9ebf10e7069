//! Number formatting as python whisper's scripts print it, so `cadent whisper` output is
//! byte-identical: Python's `repr(float)` (shortest round-trip, its own switch to
//! exponent form) and C's `%.Ng` (used through Python's `%` operator).

/// Python's `repr(x)` / `str(x)` for a float: `1.0`, `0.1`, `1e+16`, `1.5e-05`,
/// `inf`, `nan`.
pub fn py_repr(x: f64) -> String {
    if let Some(s) = non_finite(x) {
        return s.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as Python's repr does.
    let (sign, digits, exp) = split_sci(&format!("{x:e}"));
    if (-4..16).contains(&exp) {
        fixed(sign, &digits, exp, true)
    } else {
        exponent_form(sign, &digits, exp)
    }
}

/// [`py_repr`] appended to `out`, without allocating for the values most series hold:
/// in `[1e-4, 1e16)` (and zero) Python's repr and Rust's `{:?}` are the same text (the
/// shortest round-trip digits, in positional form, `.0` on whole numbers); elsewhere
/// the general path.
pub fn py_repr_into(out: &mut Vec<u8>, x: f64) {
    let a = x.abs();
    if x.is_finite() && x != 0.0 && (1e-4..1e16).contains(&a) {
        use std::io::Write as _;
        let _ = write!(out, "{x:?}");
    } else {
        out.extend_from_slice(py_repr(x).as_bytes());
    }
}

/// Python's spelling of NaN (never signed, also through `%`) and the infinities, or
/// `None` for a finite `x`.
fn non_finite(x: f64) -> Option<&'static str> {
    if x.is_nan() {
        Some("nan")
    } else if x.is_infinite() {
        Some(if x > 0.0 { "inf" } else { "-inf" })
    } else {
        None
    }
}

/// Rust's `{:e}` text as its sign (`""` or `"-"`), its digits without the point, and its
/// exponent.
fn split_sci(sci: &str) -> (&'static str, String, i32) {
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    (sign, mantissa.chars().filter(|c| *c != '.').collect(), exp)
}

/// Digits `d1d2...` as `d1.d2...e±XX` (at least two exponent digits, as C and Python).
fn exponent_form(sign: &str, digits: &str, exp: i32) -> String {
    let rest = &digits[1..];
    let m = if rest.is_empty() {
        digits[..1].to_string()
    } else {
        format!("{}.{rest}", &digits[..1])
    };
    let exp_sign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{m}e{exp_sign}{:02}", exp.abs())
}

/// Digits `d1d2...` with the decimal point after position `exp + 1`.
fn fixed(sign: &str, digits: &str, exp: i32, force_fraction: bool) -> String {
    let n = digits.len() as i32;
    let s = if exp < 0 {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    } else if exp + 1 >= n {
        let int = format!("{digits}{}", "0".repeat((exp + 1 - n) as usize));
        if force_fraction {
            format!("{int}.0")
        } else {
            int
        }
    } else {
        let (i, f) = digits.split_at((exp + 1) as usize);
        format!("{i}.{f}")
    };
    format!("{sign}{s}")
}

/// C's `%.{precision}g`: `precision` significant digits, exponent form when the exponent
/// is below -4 or at least the precision, trailing zeros removed.
pub fn c_g(x: f64, precision: usize) -> String {
    if let Some(s) = non_finite(x) {
        return s.into();
    }
    let p = precision.max(1);
    // Exact decimal digits, rounded to p significant digits (Rust rounds like glibc).
    let (sign, digits, exp) = split_sci(&format!("{:.*e}", p - 1, x));
    if x == 0.0 {
        return format!("{sign}0");
    }
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    if exp < -4 || exp >= p as i32 {
        exponent_form(sign, digits, exp)
    } else {
        fixed(sign, digits, exp, false)
    }
}

/// C's `%{width}.{precision}g`: right-aligned in `width` columns.
pub fn c_g_width(x: f64, width: usize, precision: usize) -> String {
    format!("{:>width$}", c_g(x, precision))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_repr_is_the_general_one() {
        let mut rng = crate::tools::SplitMix64(7);
        let mut buf = Vec::new();
        for i in 0..200_000u64 {
            let bits = rng.next_u64();
            let x = match i % 4 {
                0 => f64::from_bits(bits),
                1 => (bits % 10_000_000) as f64 / 1000.0,
                2 => (bits >> 11) as f64 * 1e-12,
                _ => ((bits % 2_000_000) as f64 - 1e6) * 10f64.powi((i % 40) as i32 - 20),
            };
            buf.clear();
            py_repr_into(&mut buf, x);
            assert_eq!(std::str::from_utf8(&buf).unwrap(), py_repr(x), "{x:e}");
        }
        for x in [1e-4, 9.999e15, 1e16, -1e-4, 0.0, -0.0, 0.1, 123.0, -5.5] {
            buf.clear();
            py_repr_into(&mut buf, x);
            assert_eq!(std::str::from_utf8(&buf).unwrap(), py_repr(x), "{x:e}");
        }
    }

    /// Expected strings printed by CPython 3.11 (`repr(x)`, `'%g' % x`, `'%10.35g' % x`).
    #[test]
    fn matches_python() {
        for (x, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345.6, "123456789012345.6"),
            (1234567890123456.0, "1234567890123456.0"),
            (-2.5, "-2.5"),
            (0.30000000000000004, "0.30000000000000004"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(py_repr(x), want, "repr {x}");
        }
        for (x, want) in [
            (0.5, "0.5"),
            (0.0, "0"),
            (1.0, "1"),
            (0.30000001192092896, "0.3"),
            (1e-5, "1e-05"),
            (123456789.0, "1.23457e+08"),
            (100000.0, "100000"),
        ] {
            assert_eq!(c_g(x, 6), want, "%g {x}");
        }
        for (x, want) in [
            (0.0, "         0"),
            (1.0, "         1"),
            (0.1, "0.1000000000000000055511151231257827"),
            (12.5, "      12.5"),
            (-3.0, "        -3"),
            (1700000000.0, "1700000000"),
        ] {
            assert_eq!(c_g_width(x, 10, 35), want, "%10.35g {x}");
        }
    }
}

//! Pure parsers for the line protocols: bytes in, borrowed fields or a counted reject out.
//! Nothing here does I/O or allocates.

pub mod collectd;
pub mod decode;
pub mod encode;
pub mod graphite;
pub mod jsnum;
pub mod lines;
pub mod pickle;
pub mod regex_line;
pub mod statsd;

/// Why a line was dropped at ingest. A closed set, so counters are an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reject {
    /// Longer than the listener's `line_bytes_max`.
    LineTooLong = 0,
    /// Graphite: fewer than 3 fields; statsd: no `:` or no `|type`.
    MissingFields,
    /// Graphite: more than 3 fields.
    TooManyFields,
    /// Name empty or with bytes that are not printable ASCII/UTF-8.
    BadName,
    /// Value is not a finite number.
    BadValue,
    /// Graphite timestamp is not a number (or negative).
    BadTimestamp,
    /// statsd type is not one we know.
    BadType,
    /// statsd sample rate is not in (0, 1].
    BadSampleRate,
    /// A stream ended in the middle of a line (no `\n`): it may have been cut short.
    Unterminated,
    /// Regex listener: the line does not match the listener's regex.
    NoMatch,
}

impl Reject {
    /// Number of reasons (size of per-reason counter arrays).
    pub const COUNT: usize = 10;
    /// Every reason, in counter order.
    pub const ALL: [Reject; Reject::COUNT] = [
        Reject::LineTooLong,
        Reject::MissingFields,
        Reject::TooManyFields,
        Reject::BadName,
        Reject::BadValue,
        Reject::BadTimestamp,
        Reject::BadType,
        Reject::BadSampleRate,
        Reject::Unterminated,
        Reject::NoMatch,
    ];

    /// The reason as it appears in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::LineTooLong => "line_too_long",
            Reject::MissingFields => "missing_fields",
            Reject::TooManyFields => "too_many_fields",
            Reject::BadName => "bad_name",
            Reject::BadValue => "bad_value",
            Reject::BadTimestamp => "bad_timestamp",
            Reject::BadType => "bad_type",
            Reject::BadSampleRate => "bad_sample_rate",
            Reject::Unterminated => "unterminated",
            Reject::NoMatch => "no_match",
        }
    }
}

const _: () = assert!(Reject::NoMatch as usize + 1 == Reject::COUNT);

/// A metric name is printable ASCII without spaces, or UTF-8 above ASCII; control bytes,
/// DEL and invalid UTF-8 are what binary garbage looks like.
pub(crate) fn valid_name(name: &[u8]) -> bool {
    if name.is_empty() {
        return false;
    }
    // Branch-free so it vectorises: every byte in 0x21..=0x7e.
    if name
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
    {
        return true;
    }
    name.iter().all(|&b| b > b' ' && b != 0x7f) && std::str::from_utf8(name).is_ok()
}

/// Python's `float()` of a field, as carbon reads values and timestamps: decimals with
/// an optional exponent, `inf`/`infinity`/`nan` in any case with an optional sign, and
/// `_` between two digits (PEP 515: `1_000` is 1000). The result may be infinite or NaN:
/// callers decide (carbon stores infinities, drops NaN values and cannot take either as
/// a timestamp).
pub fn python_float(s: &[u8]) -> Option<f64> {
    // The float parser wants &str; fields are short, and non-UTF-8 is not a number anyway.
    let text = std::str::from_utf8(s).ok()?;
    if memchr::memchr(b'_', s).is_none() {
        return text.parse().ok();
    }
    // Each `_` between two digits (so never first or last).
    let grouped = s
        .windows(3)
        .all(|w| w[1] != b'_' || (w[0].is_ascii_digit() && w[2].is_ascii_digit()))
        && s.first() != Some(&b'_')
        && s.last() != Some(&b'_');
    if !grouped {
        return None;
    }
    text.replace('_', "").parse().ok()
}

/// [`python_float`] when it is finite (what a timestamp must be).
pub(crate) fn parse_f64(s: &[u8]) -> Option<f64> {
    python_float(s).filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What python 3.11's `float()` gives for each field (`None`: ValueError), checked
    /// with the interpreter.
    #[test]
    fn python_float_reads_what_pythons_float_reads() {
        let inf = f64::INFINITY;
        let cases: &[(&str, Option<f64>)] = &[
            ("inf", Some(inf)),
            ("-inf", Some(-inf)),
            ("Infinity", Some(inf)),
            ("-INFINITY", Some(-inf)),
            ("infinit", None),
            ("1e999", Some(inf)),
            ("-1e999", Some(-inf)),
            ("1_000", Some(1000.0)),
            ("1_000.5_5", Some(1000.55)),
            ("1_0e1_0", Some(1e11)),
            ("1__0", None),
            ("_1", None),
            ("1_", None),
            ("1_.5", None),
            ("1._5", None),
            ("0x10", None),
            ("nan(1)", None),
            ("1e", None),
            ("e5", None),
            (".", None),
            ("+", None),
            ("1,5", None),
            (".5", Some(0.5)),
            ("5.", Some(5.0)),
            ("1E+3", Some(1000.0)),
            ("1e-400", Some(0.0)),
            ("--1", None),
            ("+-1", None),
        ];
        for &(s, want) in cases {
            assert_eq!(python_float(s.as_bytes()), want, "{s}");
        }
        for s in ["nan", "NaN", "-nan", "+NAN"] {
            assert!(python_float(s.as_bytes()).is_some_and(f64::is_nan), "{s}");
            assert_eq!(parse_f64(s.as_bytes()), None, "{s}");
        }
        assert_eq!(parse_f64(b"inf"), None);
        assert_eq!(parse_f64(b"1_7"), Some(17.0));
    }
}

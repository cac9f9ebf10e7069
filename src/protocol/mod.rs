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

/// Parses a finite decimal number the way carbon's float() would accept it.
pub(crate) fn parse_f64(s: &[u8]) -> Option<f64> {
    // The float parser wants &str; fields are short, and non-UTF-8 is not a number anyway.
    let s = std::str::from_utf8(s).ok()?;
    let v: f64 = s.parse().ok()?;
    v.is_finite().then_some(v)
}

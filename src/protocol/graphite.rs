//! Graphite plaintext: `name value timestamp`.

use super::{parse_f64, valid_name, Reject};

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
/// runs of spaces or tabs; leading and trailing blanks are ignored.
pub fn parse(line: &[u8]) -> Result<Line<'_>, Reject> {
    let mut fields = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|f| !f.is_empty());
    let name = fields.next().ok_or(Reject::MissingFields)?;
    let value = fields.next().ok_or(Reject::MissingFields)?;
    let timestamp = fields.next().ok_or(Reject::MissingFields)?;
    if fields.next().is_some() {
        return Err(Reject::TooManyFields);
    }
    if !valid_name(name) || name[0] == b';' {
        return Err(Reject::BadName);
    }
    parse_f64(value).ok_or(Reject::BadValue)?;
    match parse_f64(timestamp) {
        Some(t) if t >= 0.0 || timestamp == b"-1" => {}
        _ => return Err(Reject::BadTimestamp),
    }
    Ok(Line {
        name,
        value,
        timestamp,
    })
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
        check("a.b 1.5e3 1700000000.25", Ok(("a.b", "1.5e3", "1700000000.25")));
        check("  a.b\t-2   17 ", Ok(("a.b", "-2", "17")));
        check("a.b;dc=x;role=db 1 17", Ok(("a.b;dc=x;role=db", "1", "17")));
        check("a.b 1 -1", Ok(("a.b", "1", "-1")));
        check("a.b 1", Err(Reject::MissingFields));
        check("a.b 1 2 3", Err(Reject::TooManyFields));
        check("a.b nan 2", Err(Reject::BadValue));
        check("a.b x 2", Err(Reject::BadValue));
        check("a.b 1 now", Err(Reject::BadTimestamp));
        check("a.b 1 -5", Err(Reject::BadTimestamp));
        check("a\u{1}b 1 2", Err(Reject::BadName));
        check(";x=1 1 2", Err(Reject::BadName));
        assert_eq!(parse(b"\xff\xfe 1 2"), Err(Reject::BadName));
        assert_eq!(hash_key(b"a.b;x=1"), b"a.b");
    }
}

//! statsd lines: `name:value|type[|@rate][|#tags]`, with Etsy's `name:v1|c:v2|ms` form.

use super::{parse_f64, valid_name, Reject};

/// Parses (validates) one statsd line and returns its name, the part the statsd proxy
/// hashes. The line itself is what gets forwarded.
pub fn parse(line: &[u8]) -> Result<&[u8], Reject> {
    let colon = memchr::memchr(b':', line).ok_or(Reject::MissingFields)?;
    let name = &line[..colon];
    if !valid_name(name) {
        return Err(Reject::BadName);
    }
    // Samples (`value|type`, Etsy allows several, separated by ':'), each followed by
    // fields: `|@rate`, and DogStatsD's `|#tags`, `|c:container`, `|Ttimestamp`. Tags and
    // container ids may contain ':', so they run to the next '|' only.
    let mut rest = &line[colon + 1..];
    loop {
        let bar = memchr::memchr(b'|', rest).ok_or(Reject::MissingFields)?;
        let value = &rest[..bar];
        rest = &rest[bar + 1..];
        let end = memchr::memchr2(b'|', b':', rest).unwrap_or(rest.len());
        check_sample(value, &rest[..end])?;
        rest = &rest[end..];
        loop {
            match rest.first() {
                None => return Ok(name),
                Some(b':') => {
                    rest = &rest[1..];
                    break;
                }
                _ => rest = &rest[1..], // '|'
            }
            let to_bar = memchr::memchr(b'|', rest).unwrap_or(rest.len());
            let to_bar_or_colon = memchr::memchr2(b'|', b':', rest).unwrap_or(rest.len());
            let (field_end, check): (usize, FieldCheck) = match (rest.first(), rest.get(1)) {
                (Some(b'#'), _) | (Some(b'c'), Some(b':')) => (to_bar, check_text),
                (Some(b'@'), _) => (to_bar_or_colon, check_rate),
                (Some(b'T'), _) => (to_bar_or_colon, check_text),
                _ => return Err(Reject::MissingFields),
            };
            check(&rest[..field_end])?;
            rest = &rest[field_end..];
        }
    }
}

/// Validates one field of a sample.
type FieldCheck = fn(&[u8]) -> Result<(), Reject>;

fn check_sample(value: &[u8], kind: &[u8]) -> Result<(), Reject> {
    match kind {
        b"c" | b"ms" | b"h" | b"g" | b"s" | b"d" => {}
        _ => return Err(Reject::BadType),
    }
    // Sets take any string member; gauges may carry a +/- delta sign.
    if kind != b"s" {
        let v = value.strip_prefix(b"+").unwrap_or(value);
        parse_f64(v).ok_or(Reject::BadValue)?;
    } else if value.is_empty() {
        return Err(Reject::BadValue);
    }
    Ok(())
}

/// `@rate`: a sample rate in (0, 1].
fn check_rate(field: &[u8]) -> Result<(), Reject> {
    match parse_f64(&field[1..]) {
        Some(r) if r > 0.0 && r <= 1.0 => Ok(()),
        _ => Err(Reject::BadSampleRate),
    }
}

/// Tags, container ids, timestamps: forwarded untouched, but no control bytes.
fn check_text(field: &[u8]) -> Result<(), Reject> {
    if field.iter().any(|&b| b < b' ' || b == 0x7f) {
        return Err(Reject::BadName);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        check("uniques:abc|s", Ok("uniques"));
        check("a.b:1|c|#env:prod,role:db", Ok("a.b"));
        check("a.b:1|c:2|ms", Ok("a.b"));
        check("a.b:1|h", Ok("a.b"));
        check("a.b:1|c|c:abc123", Ok("a.b"));
        check("a.b:1|c|#k:v,x|c:abc:1|T1700000000", Ok("a.b"));
        check("a.b:1|c|@0.5:2|ms", Ok("a.b"));
        check("a.b:1|c|x", Err(Reject::MissingFields));
        check("a.b:1|c|", Err(Reject::MissingFields));
        check("a.b:1|c:", Err(Reject::MissingFields));
        check("a.b", Err(Reject::MissingFields));
        check("a.b:1", Err(Reject::MissingFields));
        check("a.b:1|x", Err(Reject::BadType));
        check("a.b:x|c", Err(Reject::BadValue));
        check("a.b:1|c|@2", Err(Reject::BadSampleRate));
        check("a.b:1|c|@0", Err(Reject::BadSampleRate));
        check(":1|c", Err(Reject::BadName));
        check("a b:1|c", Err(Reject::BadName));
    }
}

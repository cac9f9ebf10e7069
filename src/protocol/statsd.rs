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
    // Etsy statsd accepts several `value|type...` samples per name, split on ':'; a tag
    // section (`|#k:v`) may itself contain ':', so split samples only before it.
    let body = &line[colon + 1..];
    let (samples, tags) = match memchr::memmem::find(body, b"|#") {
        Some(i) => (&body[..i], Some(&body[i + 2..])),
        None => (body, None),
    };
    if let Some(tags) = tags {
        if tags.iter().any(|&b| b < b' ' || b == 0x7f) {
            return Err(Reject::BadName);
        }
    }
    for sample in samples.split(|&b| b == b':') {
        check_sample(sample)?;
    }
    Ok(name)
}

fn check_sample(sample: &[u8]) -> Result<(), Reject> {
    let mut parts = sample.split(|&b| b == b'|');
    let value = parts.next().unwrap_or_default();
    let kind = parts.next().ok_or(Reject::MissingFields)?;
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
    for extra in parts {
        match extra.first() {
            Some(b'@') => match parse_f64(&extra[1..]) {
                Some(r) if r > 0.0 && r <= 1.0 => {}
                _ => return Err(Reject::BadSampleRate),
            },
            // DogStatsD container id or timestamp fields: forwarded untouched.
            Some(b'c') | Some(b'T') => {}
            _ => return Err(Reject::MissingFields),
        }
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

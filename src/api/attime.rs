//! graphite's at-time (`from`, `until`, `now` of `/render`), as graphite-web 1.1.10's
//! `parseATTime` reads it, in UTC (graphite-web's default `TIME_ZONE`): epoch seconds; a
//! reference (`now`, `today`, `yesterday`, `tomorrow`, a time of day `HH:MM`, `Xam`,
//! `Xpm`, `noon`, `midnight`, `teatime`, a date `YYYYMMDD`, `MM/DD/YY[YY]`, a month name
//! and day `jan5`, a weekday `monday`) followed by an offset (`-1h`, `+2d`, `-1h30min`:
//! units by their first letters, `mon` 30 days, `y` 365). Case, `_`, `,` and spaces are
//! ignored. cadent also takes fractional epoch seconds (graphite-web does not).

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Seconds since the epoch for `s`, with `now` the reference time.
pub fn parse_at_time(s: &str, now: i64) -> Result<i64, String> {
    let t: String = s
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| !matches!(c, '_' | ',' | ' '))
        .collect();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && !is_yyyymmdd(&t) {
        return t
            .parse::<i64>()
            .map_err(|_| format!("{s:?}: epoch seconds out of range"));
    }
    // Fractional epoch seconds (digits and one dot).
    if t.contains('.') && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        if let Ok(v) = t.parse::<f64>() {
            return Ok(v as i64);
        }
    }
    // graphite splits at the first `+` if there is one, else at the first `-`.
    let at = t.find('+').or_else(|| t.find('-')).unwrap_or(t.len());
    let (reference, offset) = t.split_at(at);
    let base = reference_time(reference, now).map_err(|e| format!("{s:?}: {e}"))?;
    let delta = offset_seconds(offset).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(base.saturating_add(delta))
}

/// graphite's test for a date among digits: 8 digits, a year past 1900, a month below
/// 13 and a day below 32.
fn is_yyyymmdd(t: &str) -> bool {
    t.len() == 8
        && t[..4].parse::<u32>().is_ok_and(|y| y > 1900)
        && t[4..6].parse::<u32>().is_ok_and(|m| m < 13)
        && t[6..].parse::<u32>().is_ok_and(|d| d < 32)
}

/// `-1h30min`, `+2d`, `5min` (no sign: forward); empty: zero.
fn offset_seconds(offset: &str) -> Result<i64, String> {
    if offset.is_empty() {
        return Ok(0);
    }
    let (sign, mut rest) = match offset.as_bytes()[0] {
        b'0'..=b'9' => (1, offset),
        b'+' => (1, &offset[1..]),
        b'-' => (-1, &offset[1..]),
        _ => return Err(format!("invalid offset {offset:?}")),
    };
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: i64 = rest[..digits]
            .parse()
            .map_err(|_| format!("no number in the offset {offset:?}"))?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let seconds = unit_seconds(unit).ok_or_else(|| format!("invalid offset unit {unit:?}"))?;
        total = total.saturating_add(n.saturating_mul(seconds));
    }
    Ok(sign * total)
}

/// graphite's `getUnitString`: a unit by its first letters, in this order.
fn unit_seconds(unit: &str) -> Option<i64> {
    const DAY: i64 = 86_400;
    [
        ("s", 1),
        ("min", 60),
        ("h", 3_600),
        ("d", DAY),
        ("w", 7 * DAY),
        ("mon", 30 * DAY),
        ("y", 365 * DAY),
    ]
    .iter()
    .find(|(p, _)| unit.starts_with(p))
    .map(|&(_, s)| s)
}

/// graphite's `parseTimeReference`, in UTC.
fn reference_time(reference: &str, now: i64) -> Result<i64, String> {
    if reference.is_empty() || reference == "now" {
        return Ok(now);
    }
    let mut r = reference;
    let (mut hour, mut minute) = (0i64, 0i64);
    let number = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("unknown time reference {reference:?}"))
    };
    // HH:MM, then am/pm.
    if let Some(i) = r.find(':').filter(|&i| 0 < i && i < 3) {
        hour = number(&r[..i])?;
        let end = (i + 3).min(r.len());
        minute = number(r.get(i + 1..end).unwrap_or(""))?;
        r = &r[end..];
        if let Some(rest) = r.strip_prefix("am") {
            r = rest;
        } else if let Some(rest) = r.strip_prefix("pm") {
            hour = (hour + 12) % 24;
            r = rest;
        }
    }
    if let Some(i) = r.find("am").filter(|&i| 0 < i && i < 3) {
        hour = number(&r[..i])?;
        r = &r[i + 2..];
    }
    if let Some(i) = r.find("pm").filter(|&i| 0 < i && i < 3) {
        hour = (number(&r[..i])? + 12) % 24;
        r = &r[i + 2..];
    }
    if let Some(rest) = r.strip_prefix("noon") {
        (hour, minute, r) = (12, 0, rest);
    } else if let Some(rest) = r.strip_prefix("midnight") {
        (hour, minute, r) = (0, 0, rest);
    } else if let Some(rest) = r.strip_prefix("teatime") {
        (hour, minute, r) = (16, 0, rest);
    }
    if !(0..24).contains(&hour) || !(0..60).contains(&minute) {
        return Err(format!("no such time of day in {reference:?}"));
    }
    let today = now.div_euclid(86_400);
    let (year, _, _) = crate::protocol::regex_line::civil_from_days(today);
    let at = |days: i64| days * 86_400 + hour * 3_600 + minute * 60;
    let date = |y: i64, m: i64, d: i64| {
        if !(1..=12).contains(&m) || d < 1 || d > crate::protocol::regex_line::days_in(m, y) {
            return Err(format!("no such date in {reference:?}"));
        }
        Ok(at(crate::protocol::regex_line::days_from_civil(y, m, d)))
    };
    match r {
        "" | "today" => Ok(at(today)),
        "yesterday" => Ok(at(today - 1)),
        "tomorrow" => Ok(at(today + 1)),
        _ if r.matches('/').count() == 2 => {
            let mut it = r.split('/').map(number);
            let (m, d, mut y) = (
                it.next().expect("three")?,
                it.next().expect("three")?,
                it.next().expect("three")?,
            );
            if y < 1900 {
                y += 1900;
            }
            if y < 1970 {
                y += 100;
            }
            date(y, m, d)
        }
        _ if r.len() == 8 && r.bytes().all(|b| b.is_ascii_digit()) => {
            date(number(&r[..4])?, number(&r[4..6])?, number(&r[6..])?)
        }
        _ if r.get(..3).is_some_and(|p| MONTHS.contains(&p)) => {
            let tail = r.as_bytes();
            let d = if r.len() >= 2 && tail[tail.len() - 2..].iter().all(u8::is_ascii_digit) {
                number(&r[r.len() - 2..])?
            } else if tail[tail.len() - 1].is_ascii_digit() {
                number(&r[r.len() - 1..])?
            } else {
                return Err(format!(
                    "a day of month is required after the month in {reference:?}"
                ));
            };
            let m = MONTHS.iter().position(|&x| x == &r[..3]).expect("a month") as i64 + 1;
            date(year, m, d)
        }
        _ if r.get(..3).is_some_and(|p| WEEKDAYS.contains(&p)) => {
            // 1970-01-01 was a Thursday.
            let weekday = (today + 4).rem_euclid(7);
            let wanted = WEEKDAYS.iter().position(|&x| x == &r[..3]).expect("a day") as i64;
            Ok(at(today - (weekday - wanted).rem_euclid(7)))
        }
        _ => Err(format!("unknown day reference {reference:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_times() {
        // 2023-11-14 22:13:20 UTC, a Tuesday.
        let now = 1_700_000_000;
        let midnight = 1_699_920_000;
        for (s, want) in [
            ("1699990000", 1_699_990_000),
            ("now", now),
            ("-1h", now - 3600),
            ("-1H", now - 3600),
            ("now-30min", now - 1800),
            ("now - 30 min", now - 1800),
            ("-2d", now - 172_800),
            ("+5s", now + 5),
            ("-1h30min", now - 5400),
            ("-3hrs", now - 3 * 3600),
            ("-1mon", now - 30 * 86_400),
            ("-1months", now - 30 * 86_400),
            ("-1y", now - 365 * 86_400),
            ("1699990000.7", 1_699_990_000),
            ("today", midnight),
            ("yesterday", midnight - 86_400),
            ("tomorrow", midnight + 86_400),
            ("midnight", midnight),
            ("noon", midnight + 12 * 3600),
            ("noonyesterday", midnight - 12 * 3600),
            ("teatime", midnight + 16 * 3600),
            ("9am", midnight + 9 * 3600),
            ("9pm", midnight + 21 * 3600),
            ("09:40_20231201", 1_701_423_600),
            ("09:40pm20231201", 1_701_423_600 + 12 * 3600),
            ("20231201", 1_701_388_800),
            ("12/01/23", 1_701_388_800),
            ("12/01/2023", 1_701_388_800),
            ("dec1", 1_701_388_800),
            ("december 1", 1_701_388_800),
            ("tuesday", midnight),
            ("monday", midnight - 86_400),
            ("wednesday", midnight - 6 * 86_400),
            ("yesterday-1h", midnight - 86_400 - 3600),
            ("20231201+1d", 1_701_388_800 + 86_400),
            ("12345678", 12_345_678),
        ] {
            assert_eq!(parse_at_time(s, now), Ok(want), "{s}");
        }
        for bad in [
            "-1fortnight",
            "-h",
            "-1",
            "bogus",
            "jan",
            "now-1h+5min",
            "13/01/23",
            "ja\u{e9}",
            "1\u{e9}:5",
            "inf",
        ] {
            assert!(parse_at_time(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_round_trips() {
        for z in [-800_000, -1, 0, 1, 59, 10_957, 19_675, 2_932_896] {
            let (y, m, d) = crate::protocol::regex_line::civil_from_days(z);
            assert_eq!(crate::protocol::regex_line::days_from_civil(y, m, d), z);
        }
    }
}

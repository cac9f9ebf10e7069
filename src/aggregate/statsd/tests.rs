//! Engine unit tests; the byte-for-byte comparison with Etsy statsd itself is
//! `tests/it/statsd_etsy.rs`.

use super::*;

/// Feeds `datagrams`, flushes at `ts` seconds, and returns the lines without statsd's
/// own (`statsd.`) and timestamps.
fn flush_lines(e: &mut StatsdEngine, datagrams: &[&str], ts: i64) -> Vec<String> {
    for d in datagrams {
        e.ingest_datagram(d.as_bytes());
    }
    let mut out = Vec::new();
    e.flush(ts * 1000, &mut out);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("statsd.") && !l.starts_with("statsd"))
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect()
}

fn check(cfg: StatsdConfig, datagrams: &[&str], expected: &[&str]) {
    let mut e = StatsdEngine::new(cfg, 1000).unwrap();
    assert_eq!(flush_lines(&mut e, datagrams, 1010), expected);
}

#[test]
fn sets_count_distinct_members() {
    check(
        StatsdConfig::default(),
        &["s1:a|s", "s1:b|s\ns1:a|s", "s2:__proto__|s"],
        &["stats.sets.s1.count 2", "stats.sets.s2.count 0"],
    );
}

#[test]
fn counters_rates_and_unknown_types() {
    check(
        StatsdConfig::default(),
        &["a:1|c\na:2|c|@0.5", "b:-4|zz", "c:1|c|@0.1"],
        &[
            "stats.a 0.5",
            "stats_counts.a 5",
            "stats.b -0.4",
            "stats_counts.b -4",
            "stats.c 1",
            "stats_counts.c 10",
        ],
    );
}

#[test]
fn gauge_deltas_need_a_nonzero_gauge() {
    check(
        StatsdConfig::default(),
        &["g:+4|g", "g:-1|g", "z:0|g\nz:-2|g", "n:-3|g\nn:-3|g"],
        &["stats.gauges.g 3", "stats.gauges.z -2", "stats.gauges.n -6"],
    );
}

#[test]
fn sorted_tags_make_one_series() {
    let cfg = StatsdConfig {
        tag_mode: TagMode::Sorted,
        flush_counts: false,
        ..StatsdConfig::default()
    };
    check(
        cfg,
        &["t:1|c|#b:2,a:1", "t:1|c|#a:1,b:2"],
        &["stats.t;a=1;b=2 0.2"],
    );
    check(
        StatsdConfig {
            flush_counts: false,
            ..StatsdConfig::default()
        },
        &["t:1|c|#b:2,a:1", "t:1|c|#a:1,b:2"],
        &["stats.t;b=2;a=1 0.1", "stats.t;a=1;b=2 0.1"],
    );
}

#[test]
fn keys_beyond_the_bound_are_counted_not_kept() {
    // Three internal counters are keys too.
    let cfg = StatsdConfig {
        keys_max: 5,
        flush_counts: false,
        ..StatsdConfig::default()
    };
    let mut e = StatsdEngine::new(cfg, 1000).unwrap();
    let lines = flush_lines(&mut e, &["a:1|c\nb:1|c\nc:1|c\na:1|c\nd:1|g"], 1010);
    assert_eq!(lines, ["stats.a 0.2", "stats.b 0.1"]);
    assert_eq!(e.counters().keys_overflow, 2);
    assert_eq!(e.keys(), 5);
}

#[test]
fn set_members_beyond_the_bound_are_counted() {
    let cfg = StatsdConfig {
        set_values_max: 2,
        ..StatsdConfig::default()
    };
    let mut e = StatsdEngine::new(cfg, 1000).unwrap();
    let lines = flush_lines(&mut e, &["s:a|s\ns:b|s\ns:c|s\ns:a|s"], 1010);
    assert_eq!(lines, ["stats.sets.s.count 2"]);
    assert_eq!(e.counters().set_values_overflow, 1);
}

#[test]
fn rejects_are_counted_by_reason() {
    let mut e = StatsdEngine::new(StatsdConfig::default(), 1000).unwrap();
    e.ingest_datagram(b"a\nb:x|c\nc:1|c|@-1\nd:1|c|@+1\n__proto__:1|c");
    let c = e.counters();
    use crate::protocol::Reject;
    assert_eq!(
        (
            c.rejected[Reject::MissingFields as usize],
            c.rejected[Reject::BadValue as usize],
            c.rejected[Reject::BadSampleRate as usize],
            c.rejected_proto_key
        ),
        (1, 1, 2, 1)
    );
    let mut out = Vec::new();
    e.flush(1_010_000, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("stats_counts.statsd.bad_lines_seen 4 1010\n"));
    assert!(text.contains("stats_counts.statsd.metrics_received 5 1010\n"));
}

/// Parses `name value` lines into a map, for the sketch test.
fn values(lines: &[String]) -> std::collections::HashMap<String, f64> {
    lines
        .iter()
        .map(|l| {
            let (n, v) = l.split_once(' ').unwrap();
            (n.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn timers_past_the_raw_bound_use_the_sketch_within_its_error() {
    let exact_cfg = StatsdConfig {
        percent_thresholds: vec![50.0, 90.0, 99.0, -10.0],
        ..StatsdConfig::default()
    };
    let sketch_cfg = StatsdConfig {
        timer_values_max: 100,
        ..exact_cfg.clone()
    };
    let mut x: u64 = 7;
    let mut datagrams = Vec::new();
    for _ in 0..5000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A long-tailed spread over 0.01 .. 10^4 ms.
        let v = 10f64.powf((x % 6000) as f64 / 1000.0 - 2.0);
        datagrams.push(format!("t:{v}|ms"));
    }
    let refs: Vec<&str> = datagrams.iter().map(String::as_str).collect();
    let mut exact = StatsdEngine::new(exact_cfg, 1000).unwrap();
    let mut approx = StatsdEngine::new(sketch_cfg.clone(), 1000).unwrap();
    let want = values(&flush_lines(&mut exact, &refs, 1010));
    let got = values(&flush_lines(&mut approx, &refs, 1010));
    assert_eq!(approx.counters().timer_sketches, 1);
    let a = sketch_cfg.timer_sketch_relative_error;
    assert_eq!(want.len(), got.len());
    for (name, w) in &want {
        let g = got[name];
        let tol = match name.rsplit('.').next().unwrap() {
            // Exact in both.
            "count" | "count_ps" | "upper" | "lower" => 0.0,
            // Summed in another order.
            "sum" | "sum_squares" | "mean" | "std" => 1e-9 * w.abs(),
            n if n.starts_with("count_") => 0.0,
            _ => a * w.abs() + 1e-12,
        };
        assert!((g - w).abs() <= tol, "{name}: sketch {g}, exact {w}");
    }
    // The next interval starts raw again.
    let lines = flush_lines(&mut approx, &["t:3|ms"], 1020);
    assert!(lines.contains(&"stats.timers.t.median 3".to_string()));
}

#[test]
fn config_is_validated() {
    let bad = |f: fn(&mut StatsdConfig)| {
        let mut c = StatsdConfig::default();
        f(&mut c);
        StatsdEngine::new(c, 0).err()
    };
    assert_eq!(
        bad(|c| c.flush_interval_ms = 0),
        Some(ConfigError::FlushInterval)
    );
    assert_eq!(
        bad(|c| c.keys_max = 0),
        Some(ConfigError::ZeroBound("keys_max"))
    );
    assert!(bad(|c| c.timer_sketch_relative_error = 0.0).is_some());
    assert!(bad(|c| c.percent_thresholds = vec![f64::NAN]).is_some());
}

#[test]
fn bytes_estimate_counts_timer_values_and_set_members() {
    let cfg = StatsdConfig {
        delete_timers: Some(true),
        delete_sets: Some(true),
        ..StatsdConfig::default()
    };
    let mut e = StatsdEngine::new(cfg, 1000).unwrap();
    let empty = e.bytes_estimate();
    let mut d = String::new();
    for i in 0..5000 {
        d.push_str(&format!("t:{i}|ms\ns:m{i}|s\n"));
    }
    e.ingest_datagram(d.as_bytes());
    let full = e.bytes_estimate();
    // 5,000 values and 5,000 members of 8 bytes each, at least.
    assert!(full >= empty + 80_000, "{empty} -> {full}");
    let mut out = Vec::new();
    e.flush(1_010_000, &mut out);
    // Both keys were deleted: their values and members are gone with them.
    assert!(
        e.bytes_estimate() < empty + 80_000 / 4,
        "{}",
        e.bytes_estimate()
    );
}

/// `graphiteStats.flush_length` as node counts a string (checked with node:
/// `"a.b 1\n".length` is 6, `"é€𝄞".length` is 4).
#[test]
fn flush_length_counts_utf16_units() {
    assert_eq!(utf16_len(b"a.b 1\n"), 6);
    assert_eq!(utf16_len("é€𝄞".as_bytes()), 4);
    assert_eq!(utf16_len(b""), 0);
}

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

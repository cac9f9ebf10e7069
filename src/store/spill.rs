//! The spill: what a store's cache still held when the process stopped (the shutdown
//! deadline passed before the writers got to it), kept on disk for the next start.
//!
//! One file per shard and stop, under the store's root in a hidden directory (finds
//! never list hidden entries): `<root>/.cadent-spill/<unix_ms>-<pid>-<shard>.points`,
//! written under a `.tmp` name and renamed when whole, so a file that is there is
//! complete. Each line is `name timestamp value`, numbers in Rust's shortest round-trip
//! form, a name's points together and in arrival order. At start every shard reads every
//! file, keeps the points of the names it owns (in front of anything received since),
//! and the last shard to finish removes the files it read. A crash between reading and
//! removing makes the next start restore them again: rewriting a point is harmless.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::cache::CachedPoint;

/// The directory under a store's root.
pub const SPILL_DIR: &str = ".cadent-spill";

/// The suffix of a complete spill file.
pub const SUFFIX: &str = ".points";

/// Where a spill of `shard` goes, stopped at `unix_ms`.
pub fn file_name(root: &Path, unix_ms: i64, shard: usize) -> PathBuf {
    root.join(SPILL_DIR)
        .join(format!("{unix_ms}-{}-{shard}{SUFFIX}", std::process::id()))
}

/// The complete spill files under `root`, oldest first (std fs: the control thread
/// lists them once at start).
pub fn list(root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root.join(SPILL_DIR)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(SUFFIX)))
        .collect();
    files.sort();
    files
}

/// Appends one name's points.
pub fn write_points(name: &[u8], points: &[CachedPoint], out: &mut String) {
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    for &(ts, v) in points {
        let _ = writeln!(out, "{name} {ts:?} {v:?}");
    }
}

/// Reads spill text: calls `each(name, points)` once per run of lines with one name,
/// in file order; returns the lines that did not parse (a torn or edited file).
pub fn read_points(text: &[u8], mut each: impl FnMut(&[u8], &[CachedPoint])) -> usize {
    let mut bad = 0;
    let mut run: Vec<CachedPoint> = Vec::new();
    let mut run_name: &[u8] = &[];
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let parsed = (|| {
            let s = std::str::from_utf8(line).ok()?;
            let mut f = s.rsplitn(3, ' ');
            let v: f64 = f.next()?.parse().ok()?;
            let ts: f64 = f.next()?.parse().ok()?;
            let name = f.next()?;
            // Values may be infinite (carbon stores them), never NaN (never cached).
            (!v.is_nan() && ts.is_finite() && !name.is_empty()).then_some((name, ts, v))
        })();
        let Some((name, ts, v)) = parsed else {
            bad += 1;
            continue;
        };
        if name.as_bytes() != run_name {
            if !run.is_empty() {
                each(run_name, &run);
                run.clear();
            }
            run_name = &line[..name.len()];
        }
        run.push((ts, v));
    }
    if !run.is_empty() {
        each(run_name, &run);
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_runs() {
        let mut s = String::new();
        write_points(
            b"a.b",
            &[(1.0, 0.1), (2.5, -3e300), (4.0, f64::INFINITY)],
            &mut s,
        );
        write_points(b"c;t=1", &[(1_700_000_000.0, 1e-7)], &mut s);
        s.push_str("torn line\n");
        write_points(b"a.b", &[(3.0, 3.0)], &mut s);
        let mut got = Vec::new();
        let bad = read_points(s.as_bytes(), |n, p| {
            got.push((String::from_utf8(n.to_vec()).unwrap(), p.to_vec()))
        });
        assert_eq!(bad, 1);
        assert_eq!(
            got,
            vec![
                (
                    "a.b".to_string(),
                    vec![(1.0, 0.1), (2.5, -3e300), (4.0, f64::INFINITY)]
                ),
                ("c;t=1".to_string(), vec![(1_700_000_000.0, 1e-7)]),
                ("a.b".to_string(), vec![(3.0, 3.0)]),
            ]
        );
    }
}

//! Multi-resolution rollups: per key and resolution, sum, count, min, max, first and
//! last, emitted when each bucket closes. Shard-owned state with no I/O and no clock:
//! the caller passes `now` to [`Rollup::ingest`] and [`Rollup::flush`].
//!
//! Resolutions come from strings like `["10s:7d", "1m:30d", "10m:5y"]` (step:retention),
//! each step a multiple of the previous one ([`parse_resolutions`]).
//!
//! How buckets close, and why they never drift:
//! - a bucket of step `s` covers `[start, start + s)` with `start % s == 0`;
//! - samples update only the finest level. When a finest bucket closes it is merged
//!   into the bucket of the next level that contains it, and so on up: a coarse bucket
//!   is exactly the combination of the finer buckets inside it;
//! - `flush(now)` closes, at each level, every bucket whose end is at or before
//!   `now - now % s`. So a bucket is emitted by the first flush at or after its end,
//!   whenever flush is called; its end is always a multiple of its step. The shard
//!   should call flush at [`Rollup::next_flush_s`], also a multiple;
//! - the finest level keeps [`FINE_SLOTS`] open buckets per key (the one a late flush
//!   has not closed yet, the current one, the next one), so samples a little ahead of
//!   the clock and a flush a little behind it lose nothing. A sample for a closed
//!   bucket is dropped as `late`; one beyond the bucket after `now`'s as `too_new`.
//!   With flush called at least once per finest step no two open buckets of a key
//!   want the same slot; if flush lags more, a sample that finds its slot held by
//!   another open bucket is dropped as `too_new` (or `late`, if it is the older).
//!
//! `first` and `last` are by timestamp: `first` is the value with the smallest
//! timestamp, `last` the one with the largest. On equal timestamps, `first` keeps the
//! earliest arrival and `last` takes the latest arrival.

use std::fmt;

use super::carbon::name_hash;
use super::slots::{Named, Slots};

/// Open finest-level buckets per key: the previous (until a flush closes it), the
/// current and the next.
pub const FINE_SLOTS: usize = 3;

/// Most resolutions one rollup may have.
pub const RESOLUTIONS_MAX: usize = 8;

/// One resolution: bucket step and how long the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// Bucket width in seconds.
    pub step_s: u32,
    /// Retention in seconds (for the store; rollups emit and forget).
    pub retention_s: u64,
}

/// A bad `resolutions` list; the message names the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resolutions: {0}")]
pub struct ResolutionError(pub String);

fn unit_seconds(unit: &str) -> Option<u64> {
    Some(match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => return None,
    })
}

/// `10s`, `1m`, `7d`, ...; a bare number is seconds.
fn parse_duration(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let unit = if digits == s.len() {
        1
    } else {
        unit_seconds(&s[digits..])?
    };
    n.checked_mul(unit)
}

/// Parses `["10s:7d", "1m:30d", "10m:5y"]`: finest first, each step a whole multiple
/// (at least twice) of the previous one, retentions growing. Units: `s`, `m`/`min`,
/// `h`, `d`, `w`, `y` (365 days), as carbon's retention definitions.
pub fn parse_resolutions<S: AsRef<str>>(specs: &[S]) -> Result<Vec<Resolution>, ResolutionError> {
    if specs.is_empty() {
        return Err(ResolutionError("the list is empty".into()));
    }
    if specs.len() > RESOLUTIONS_MAX {
        return Err(ResolutionError(format!(
            "{} entries, at most {RESOLUTIONS_MAX}",
            specs.len()
        )));
    }
    let mut out: Vec<Resolution> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let spec = spec.as_ref();
        let bad = |why: String| ResolutionError(format!("entry {} {spec:?}: {why}", i + 1));
        let (step, retention) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected step:retention, like \"10s:7d\"".into()))?;
        let step_s = parse_duration(step)
            .filter(|&s| s > 0 && s <= u64::from(u32::MAX))
            .ok_or_else(|| bad(format!("step {step:?} is not a positive duration")))?;
        let retention_s = parse_duration(retention)
            .ok_or_else(|| bad(format!("retention {retention:?} is not a duration")))?;
        if retention_s < step_s {
            return Err(bad("retention is shorter than the step".into()));
        }
        if let Some(prev) = out.last() {
            let p = u64::from(prev.step_s);
            if step_s <= p || step_s % p != 0 {
                return Err(bad(format!(
                    "step {step_s}s is not a multiple of the previous step {p}s (and larger)"
                )));
            }
            if retention_s <= prev.retention_s {
                return Err(bad(format!(
                    "retention {retention_s}s does not exceed the previous {}s",
                    prev.retention_s
                )));
            }
        }
        out.push(Resolution {
            step_s: step_s as u32,
            retention_s,
        });
    }
    Ok(out)
}

/// Validated settings of one rollup.
#[derive(Debug, Clone)]
pub struct RollupConfig {
    /// Finest first (see [`parse_resolutions`]).
    pub resolutions: Vec<Resolution>,
    /// Keys held at once per shard; a sample for a new key beyond this is dropped and
    /// counted.
    pub keys_max: usize,
}

/// The statistics of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Sum in merge order.
    pub sum: f64,
    /// Number of samples.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Value with the smallest timestamp (earliest arrival on ties).
    pub first: f64,
    /// Timestamp of `first`.
    pub first_ts: i64,
    /// Value with the largest timestamp (latest arrival on ties).
    pub last: f64,
    /// Timestamp of `last`.
    pub last_ts: i64,
}

impl Stats {
    /// The stats of one sample.
    pub fn one(v: f64, ts: i64) -> Stats {
        Stats {
            sum: v,
            count: 1,
            min: v,
            max: v,
            first: v,
            first_ts: ts,
            last: v,
            last_ts: ts,
        }
    }

    /// Adds `later`, whose samples arrived after this one's.
    #[inline]
    pub fn merge(&mut self, later: &Stats) {
        self.sum += later.sum;
        self.count += later.count;
        if later.min < self.min {
            self.min = later.min;
        }
        if later.max > self.max {
            self.max = later.max;
        }
        if later.first_ts < self.first_ts {
            self.first = later.first;
            self.first_ts = later.first_ts;
        }
        if later.last_ts >= self.last_ts {
            self.last = later.last;
            self.last_ts = later.last_ts;
        }
    }
}

/// One bucket that closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollupPoint {
    /// Where the key's name lies in [`RollupBatch::names`].
    pub name_at: (u32, u32),
    /// Index into the configured resolutions.
    pub resolution: u8,
    /// First second of the bucket (a multiple of its step).
    pub start_s: i64,
    /// What the bucket holds.
    pub stats: Stats,
}

/// Caller-owned output of [`Rollup::flush`]; names are stored once per key and flush.
#[derive(Debug, Default)]
pub struct RollupBatch {
    /// Names, back to back.
    pub names: Vec<u8>,
    /// Closed buckets, grouped by key.
    pub points: Vec<RollupPoint>,
}

impl RollupBatch {
    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.names.clear();
        self.points.clear();
    }

    /// The key a point belongs to.
    pub fn name(&self, p: &RollupPoint) -> &[u8] {
        &self.names[p.name_at.0 as usize..(p.name_at.0 + p.name_at.1) as usize]
    }
}

/// Plain counters; the shard publishes copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupCounters {
    /// Samples passed to `ingest`.
    pub samples_in: u64,
    /// Closed buckets emitted (all levels).
    pub points_out: u64,
    /// Keys created.
    pub keys_created: u64,
    /// Keys removed: empty, and nothing emitted at that flush.
    pub keys_expired: u64,
    /// Sample dropped: a new key while `keys_max` keys are held.
    pub dropped_keys_full: u64,
    /// Sample dropped: its finest bucket already closed.
    pub dropped_late: u64,
    /// Sample dropped: its finest bucket's slot is held by an older open bucket.
    pub dropped_too_new: u64,
    /// Sample dropped: NaN.
    pub dropped_nan: u64,
    /// Sample dropped: two keys with the same 64-bit hash.
    pub dropped_hash_collision: u64,
}

/// A bucket at some level; `stats.count == 0` means empty.
#[derive(Debug, Clone, Copy)]
struct Level {
    start_s: i64,
    stats: Stats,
}

const EMPTY: Level = Level {
    start_s: 0,
    stats: Stats {
        sum: 0.0,
        count: 0,
        min: 0.0,
        max: 0.0,
        first: 0.0,
        first_ts: 0,
        last: 0.0,
        last_ts: 0,
    },
};

struct Key {
    name: Box<[u8]>,
    hash: u64,
    /// `FINE_SLOTS` finest buckets (slot = bucket number % FINE_SLOTS), then one
    /// pending bucket per coarser level.
    levels: Box<[Level]>,
}

impl Named for Key {
    fn name(&self) -> &[u8] {
        &self.name
    }
    fn hash(&self) -> u64 {
        self.hash
    }
}

/// Rollups for one shard.
pub struct Rollup {
    steps: Vec<i64>,
    keys_max: usize,
    keys: Slots<Key>,
    /// Finest-level boundary the last flush closed up to (`now - now % step0`).
    closed_until_s: i64,
    counters: RollupCounters,
}

fn floor_to(t: i64, step: i64) -> i64 {
    t - t.rem_euclid(step)
}

impl Rollup {
    /// An empty rollup.
    pub fn new(cfg: RollupConfig) -> Rollup {
        assert!(!cfg.resolutions.is_empty() && cfg.resolutions.len() <= RESOLUTIONS_MAX);
        assert!(cfg.keys_max > 0 && cfg.keys_max < u32::MAX as usize);
        let steps: Vec<i64> = cfg
            .resolutions
            .iter()
            .map(|r| i64::from(r.step_s))
            .collect();
        debug_assert!(steps.windows(2).all(|w| w[1] > w[0] && w[1] % w[0] == 0));
        Rollup {
            steps,
            keys_max: cfg.keys_max,
            keys: Slots::default(),
            closed_until_s: i64::MIN,
            counters: RollupCounters::default(),
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> &RollupCounters {
        &self.counters
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// The next finest-step boundary after `now_s`: when the shard should flush next.
    pub fn next_flush_s(&self, now_s: i64) -> i64 {
        floor_to(now_s, self.steps[0]) + self.steps[0]
    }

    /// Adds one sample, received at `now_s`; false when it was dropped (counted by
    /// reason).
    pub fn ingest(&mut self, name: &[u8], value: f64, timestamp_s: i64, now_s: i64) -> bool {
        self.counters.samples_in += 1;
        if value.is_nan() {
            self.counters.dropped_nan += 1;
            return false;
        }
        let step0 = self.steps[0];
        let start = floor_to(timestamp_s, step0);
        if start + step0 <= self.closed_until_s {
            self.counters.dropped_late += 1;
            return false;
        }
        if start > floor_to(now_s, step0) + step0 {
            self.counters.dropped_too_new += 1;
            return false;
        }
        let hash = name_hash(name);
        let slot = match self.keys.find(hash, name) {
            Err(_) => {
                self.counters.dropped_hash_collision += 1;
                return false;
            }
            Ok(Some(s)) => s,
            Ok(None) => {
                if self.keys.len() >= self.keys_max {
                    self.counters.dropped_keys_full += 1;
                    return false;
                }
                self.counters.keys_created += 1;
                self.keys.insert(Key {
                    name: name.into(),
                    hash,
                    levels: vec![EMPTY; FINE_SLOTS + self.steps.len() - 1].into_boxed_slice(),
                })
            }
        };
        let key = self.keys.get_mut(slot);
        let l = &mut key.levels[(start / step0).rem_euclid(FINE_SLOTS as i64) as usize];
        if l.stats.count == 0 {
            *l = Level {
                start_s: start,
                stats: Stats::one(value, timestamp_s),
            };
        } else if l.start_s == start {
            l.stats.merge(&Stats::one(value, timestamp_s));
        } else {
            // A key created just now has only empty slots, so it is never left empty.
            if start > l.start_s {
                self.counters.dropped_too_new += 1;
            } else {
                self.counters.dropped_late += 1;
            }
            return false;
        }
        true
    }

    /// Emits every bucket that closed at or before `now_s` (per level, ends at or before
    /// `now - now % step`) into `out`, which is not cleared. Returns the points added.
    pub fn flush(&mut self, now_s: i64, out: &mut RollupBatch) -> usize {
        let b0 = floor_to(now_s, self.steps[0]);
        if b0 <= self.closed_until_s {
            return 0;
        }
        self.closed_until_s = b0;
        let mut bounds = [0i64; RESOLUTIONS_MAX];
        for (b, &s) in bounds.iter_mut().zip(&self.steps) {
            *b = floor_to(now_s, s);
        }
        let bounds = &bounds[..self.steps.len()];
        let before = out.points.len();
        for slot in 0..self.keys.capacity() {
            let Some(key) = self.keys.slot_mut(slot) else {
                continue;
            };
            let first_point = out.points.len();
            let name_at = (out.names.len() as u32, key.name.len() as u32);
            close_key(&self.steps, bounds, key, name_at, out);
            let emitted = out.points.len() > first_point;
            if emitted {
                out.names.extend_from_slice(&key.name);
            }
            // A key is removed at the first flush that finds it empty and emits
            // nothing, so a steady key is not freed and re-made at every coarse
            // boundary (where all its levels close at once).
            if !emitted && key.levels.iter().all(|l| l.stats.count == 0) {
                self.keys.remove(slot);
                self.counters.keys_expired += 1;
            }
        }
        let n = out.points.len() - before;
        self.counters.points_out += n as u64;
        n
    }

    /// Heap bytes held for keys now (names, levels, map, slot table), for the
    /// bytes-per-key figure in tuning.md.
    pub fn heap_bytes(&self) -> usize {
        let keys: usize = self
            .keys
            .iter()
            .map(|k| k.name.len() + k.levels.len() * std::mem::size_of::<Level>())
            .sum();
        keys + self.keys.heap_bytes()
    }
}

/// Closes one key's buckets: finest slots oldest first, each merged upward.
fn close_key(
    steps: &[i64],
    bounds: &[i64],
    key: &mut Key,
    name_at: (u32, u32),
    out: &mut RollupBatch,
) {
    let step0 = steps[0];
    let mut order = [0usize; FINE_SLOTS];
    for (i, o) in order.iter_mut().enumerate() {
        *o = i;
    }
    order.sort_by_key(|&i| key.levels[i].start_s);
    for i in order {
        let l = key.levels[i];
        if l.stats.count == 0 || l.start_s + step0 > bounds[0] {
            continue;
        }
        key.levels[i] = EMPTY;
        emit(out, name_at, 0, l);
        merge_up(steps, key, name_at, 1, l, out);
    }
    for level in 1..steps.len() {
        let at = FINE_SLOTS + level - 1;
        let l = key.levels[at];
        if l.stats.count > 0 && l.start_s + steps[level] <= bounds[level] {
            key.levels[at] = EMPTY;
            emit(out, name_at, level, l);
            merge_up(steps, key, name_at, level + 1, l, out);
        }
    }
}

/// Merges a closed bucket of level `level - 1` into `level`; a pending bucket of an
/// earlier period there is closed first (it is due in this same flush).
fn merge_up(
    steps: &[i64],
    key: &mut Key,
    name_at: (u32, u32),
    level: usize,
    closed: Level,
    out: &mut RollupBatch,
) {
    if level >= steps.len() {
        return;
    }
    let at = FINE_SLOTS + level - 1;
    let target = floor_to(closed.start_s, steps[level]);
    let pending = key.levels[at];
    if pending.stats.count > 0 && pending.start_s != target {
        debug_assert!(pending.start_s < target, "buckets close in time order");
        key.levels[at] = EMPTY;
        emit(out, name_at, level, pending);
        merge_up(steps, key, name_at, level + 1, pending, out);
    }
    let l = &mut key.levels[at];
    if l.stats.count == 0 {
        *l = Level {
            start_s: target,
            stats: closed.stats,
        };
    } else {
        l.stats.merge(&closed.stats);
    }
}

fn emit(out: &mut RollupBatch, name_at: (u32, u32), level: usize, l: Level) {
    out.points.push(RollupPoint {
        name_at,
        resolution: level as u8,
        start_s: l.start_s,
        stats: l.stats,
    });
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s:{}s", self.step_s, self.retention_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rollup(keys_max: usize) -> Rollup {
        Rollup::new(RollupConfig {
            resolutions: parse_resolutions(&["10s:7d", "1m:30d", "10m:5y"]).unwrap(),
            keys_max,
        })
    }

    #[test]
    fn resolutions_parse_and_validate() {
        let r = parse_resolutions(&["10s:7d", "1m:30d", "10m:5y"]).unwrap();
        assert_eq!(
            r,
            vec![
                Resolution {
                    step_s: 10,
                    retention_s: 7 * 86_400
                },
                Resolution {
                    step_s: 60,
                    retention_s: 30 * 86_400
                },
                Resolution {
                    step_s: 600,
                    retention_s: 5 * 365 * 86_400
                },
            ]
        );
        for (bad, want) in [
            (
                vec!["10s:7d", "15s:30d"],
                "entry 2 \"15s:30d\": step 15s is not a multiple",
            ),
            (
                vec!["1m:7d", "10s:30d"],
                "entry 2 \"10s:30d\": step 10s is not a multiple",
            ),
            (
                vec!["10s:7d", "1m:1d"],
                "entry 2 \"1m:1d\": retention 86400s does not exceed",
            ),
            (vec!["10s"], "entry 1 \"10s\": expected step:retention"),
            (vec!["0s:1d"], "step \"0s\" is not a positive duration"),
            (vec!["10x:1d"], "step \"10x\" is not a positive duration"),
            (vec!["1h:10m"], "retention is shorter than the step"),
        ] {
            let e = parse_resolutions(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        assert!(parse_resolutions::<&str>(&[]).is_err());
    }

    struct Emitted {
        flushed_at: i64,
        prev_flush: i64,
        name: Vec<u8>,
        point: RollupPoint,
    }

    /// Random samples (ahead of and behind the clock), flushes at random moments and
    /// gaps; returns what was emitted and the accepted samples, in arrival order.
    /// (name, value, timestamp) of an accepted sample.
    type Sample = (Vec<u8>, f64, i64);

    fn run(seed: u64) -> (Vec<Emitted>, Vec<Sample>, Rollup) {
        // Seeded: the property tests' only source of randomness.
        let mut rng = crate::tools::SplitMix64(seed);
        let mut r = rollup(6);
        let mut now = 1_700_000_000 + rng.below(600) as i64;
        let mut prev_flush = i64::MIN;
        let mut emitted = Vec::new();
        let mut accepted = Vec::new();
        let mut batch = RollupBatch::default();
        for _ in 0..4000 {
            now += match rng.below(20) {
                0 => 40 + rng.below(200) as i64, // a pause: flushes lag, keys expire
                1..=9 => 0,
                _ => rng.below(4) as i64,
            };
            for _ in 0..rng.below(5) {
                let name = format!("k{}", rng.below(7)).into_bytes(); // > keys_max
                let ts = now - 25 + rng.below(40) as i64;
                // Quarters: every sum is exact, so any order of addition agrees.
                let v = (rng.below(800) as f64 - 400.0) / 4.0;
                if r.ingest(&name, v, ts, now) {
                    accepted.push((name, v, ts));
                }
            }
            if rng.below(3) == 0 {
                batch.clear();
                r.flush(now, &mut batch);
                for p in &batch.points {
                    emitted.push(Emitted {
                        flushed_at: now,
                        prev_flush,
                        name: batch.name(p).to_vec(),
                        point: *p,
                    });
                }
                prev_flush = now;
            }
        }
        batch.clear();
        let end = now + 3600;
        r.flush(end, &mut batch);
        for p in &batch.points {
            emitted.push(Emitted {
                flushed_at: end,
                prev_flush,
                name: batch.name(p).to_vec(),
                point: *p,
            });
        }
        // Keys go at the first flush that finds them empty with nothing to emit.
        assert!(r.keys() > 0);
        batch.clear();
        assert_eq!(r.flush(end + 10, &mut batch), 0);
        (emitted, accepted, r)
    }

    #[test]
    fn property_flushes_are_exact_multiples_at_first_chance() {
        let steps = [10i64, 60, 600];
        for seed in 0..20 {
            let (emitted, _, r) = run(seed);
            assert!(!emitted.is_empty());
            for e in &emitted {
                let step = steps[e.point.resolution as usize];
                let end = e.point.start_s + step;
                assert_eq!(e.point.start_s.rem_euclid(step), 0, "seed {seed}");
                assert_eq!(end % step, 0);
                // Emitted by the first flush at or after the end, never before it.
                assert!(e.flushed_at >= end, "seed {seed}: emitted before closing");
                assert!(
                    e.prev_flush < end,
                    "seed {seed}: a flush missed a closed bucket"
                );
                assert!(r.next_flush_s(e.flushed_at) % 10 == 0);
            }
            assert_eq!(
                r.keys(),
                0,
                "seed {seed}: every key expires after its last bucket"
            );
        }
    }

    #[test]
    fn property_coarse_bucket_is_the_combination_of_its_fine_buckets() {
        let steps = [10i64, 60, 600];
        let (mut minutes, mut checked) = (0, 0);
        for seed in 0..20 {
            let (emitted, accepted, r) = run(seed);
            let c = r.counters();
            assert!(
                c.dropped_late > 0 && c.dropped_keys_full > 0,
                "seed {seed}: no drops"
            );
            assert_eq!(
                c.samples_in,
                accepted.len() as u64 + c.dropped_late + c.dropped_too_new + c.dropped_keys_full
            );
            // level -> (name, start) -> stats
            let mut by: Vec<BTreeMap<(Vec<u8>, i64), Stats>> = vec![BTreeMap::new(); 3];
            for e in &emitted {
                let prev = by[e.point.resolution as usize]
                    .insert((e.name.clone(), e.point.start_s), e.point.stats);
                assert!(prev.is_none(), "seed {seed}: a bucket emitted twice");
            }
            // The finest buckets are exactly the accepted samples, by arrival order.
            let mut direct: BTreeMap<(Vec<u8>, i64), Stats> = BTreeMap::new();
            for (name, v, ts) in &accepted {
                let start = floor_to(*ts, 10);
                let one = Stats::one(*v, *ts);
                direct
                    .entry((name.clone(), start))
                    .and_modify(|s| s.merge(&one))
                    .or_insert(one);
            }
            assert_eq!(by[0], direct, "seed {seed}: finest buckets vs samples");
            // Each coarse bucket equals the fold of the finer ones inside it, for
            // every statistic, bit for bit.
            for level in 1..3 {
                let mut folded: BTreeMap<(Vec<u8>, i64), Stats> = BTreeMap::new();
                for ((name, start), s) in &by[level - 1] {
                    folded
                        .entry((name.clone(), floor_to(*start, steps[level])))
                        .and_modify(|f| f.merge(s))
                        .or_insert(*s);
                }
                assert_eq!(by[level], folded, "seed {seed}: level {level}");
                checked += by[level].len();
            }
            minutes += by[1].len();
            let fine_per_minute =
                by[0]
                    .keys()
                    .fold(BTreeMap::<(Vec<u8>, i64), u32>::new(), |mut m, (n, s)| {
                        *m.entry((n.clone(), floor_to(*s, 60))).or_default() += 1;
                        m
                    });
            assert!(fine_per_minute.values().all(|&n| n <= 6));
            assert!(fine_per_minute.values().any(|&n| n == 6));
        }
        assert!(minutes > 1000 && checked > minutes, "{minutes} {checked}");
    }

    #[test]
    fn first_last_ties_and_late_samples() {
        let mut r = rollup(10);
        let mut b = RollupBatch::default();
        assert!(r.ingest(b"a", 1.0, 100, 100));
        assert!(r.ingest(b"a", 2.0, 100, 100)); // same ts: first stays 1, last becomes 2
        assert!(r.ingest(b"a", 3.0, 99, 99)); // earlier ts: becomes first (bucket 90)
        assert!(r.ingest(b"a", 5.0, 105, 105));
        assert_eq!(r.flush(110, &mut b), 2);
        let s = b.points.iter().find(|p| p.start_s == 100).unwrap().stats;
        assert_eq!(
            (s.first, s.last, s.count, s.sum, s.min, s.max),
            (1.0, 5.0, 3, 8.0, 1.0, 5.0)
        );
        assert!(!r.ingest(b"a", 1.0, 109, 109)); // its bucket closed at 110
        assert_eq!(r.counters().dropped_late, 1);
        assert!(!r.ingest(b"a", f64::NAN, 115, 115));
        assert!(r.ingest(b"a", 1.0, 115, 115));
        assert!(r.ingest(b"a", 1.0, 125, 125));
        assert!(!r.ingest(b"a", 1.0, 145, 125)); // beyond the bucket after now's
        assert_eq!(r.counters().dropped_too_new, 1);
        assert!(!r.ingest(b"a", 1.0, 145, 135)); // next bucket, but its slot holds 110
        assert_eq!(r.counters().dropped_too_new, 2);
        b.clear();
        r.flush(1200, &mut b);
        let minute = b
            .points
            .iter()
            .find(|p| p.resolution == 1 && p.start_s == 60)
            .unwrap()
            .stats;
        // Minute 60 holds buckets 90, 100 and 110.
        assert_eq!(
            (minute.first, minute.first_ts, minute.last, minute.count),
            (3.0, 99, 1.0, 5)
        );
        assert_eq!(b.name(&b.points[0]), b"a");
    }
}

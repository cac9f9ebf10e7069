//! carbon-aggregator as shard-owned state: rules in carbon's `aggregation-rules.conf`
//! syntax ([`rules`]), buckets per output name, graphite lines out. No I/O, no clock:
//! the caller passes `now` to [`CarbonAggregator::ingest`] and
//! [`CarbonAggregator::flush`], which writes lines into a buffer the caller owns.
//!
//! One instance per shard. The owner shard of an output name is meant to be
//! `hash(name) % shards` ([`name_hash`] is that hash, fixed across processes); until
//! the cross-shard hand-off exists each instance sees only its own shard's points.
//!
//! Semantics follow carbon 1.1.10 (`lib/carbon/aggregator/buffers.py`,
//! `processor.py`), checked against its code in `tests/it/carbon_aggregator.rs`:
//! - a point goes to every rule that matches, in file order; each match adds the value
//!   to the buffer of the rule's output name (two rules that produce the same name add
//!   it twice, as carbon does). The buffer is keyed by the output name alone and takes
//!   its frequency and method from the first rule that created it;
//! - the bucket of a point is `ts - ts % frequency` (floor, in seconds);
//! - an output name gets a compute schedule when it is created: every `frequency`
//!   seconds from that moment (twisted's `LoopingCall(now=False)`; a late call skips
//!   the missed ones). At each compute every bucket that got values since the last
//!   compute is emitted with *all* its values, even the still-open current bucket, so
//!   a bucket may be emitted again, with an updated value, when points keep arriving.
//!   Then buckets older than `current_interval - max_intervals * frequency` are
//!   discarded, and a name left with no buckets is removed (its schedule ends; a later
//!   point starts a new one);
//! - `forward_all`: the input point is also passed on unless one of its output names
//!   is its own name ([`Ingest::forward`]).
//!
//! Differences from carbon, each counted:
//! - a point whose bucket is gone and older than `current_interval - max_intervals *
//!   frequency` is dropped (`dropped_too_old`). carbon makes a new bucket for it and
//!   emits it once, alone, which overwrites the real aggregate downstream. A point for
//!   a bucket that still exists is added even when old, as carbon does;
//! - a point more than `max_intervals` buckets in the future is dropped
//!   (`dropped_too_new`); carbon keeps it until it ages out;
//! - at most `keys_max` output names (`dropped_keys_full`) and, for methods that keep
//!   every value, `bucket_values_max` values per bucket (`dropped_bucket_full`);
//! - NaN values are dropped (`dropped_nan`); carbon's receivers drop them before the
//!   aggregator;
//! - `timestamp_at = end` writes `bucket + frequency` (carbon-c-relay's `timestamp at
//!   end of bucket`); carbon always writes the start, the default here.

pub mod method;
pub mod rules;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub use method::{Method, Value};
pub use rules::{Rule, RuleError, Rules, RulesError};

use method::Acc;

use super::slots::{Named, Slots};

/// Which end of a bucket its emitted timestamp names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampAt {
    /// The bucket's first second (carbon-aggregator, the default).
    #[default]
    Start,
    /// The first second after the bucket (carbon-c-relay's default).
    End,
}

/// Validated settings of one aggregator.
#[derive(Debug, Clone)]
pub struct CarbonConfig {
    /// Output names held at once per shard; a point for a new name beyond this is
    /// dropped and counted.
    pub keys_max: usize,
    /// carbon's `MAX_AGGREGATION_INTERVALS`: buckets are kept this many intervals
    /// behind the current one.
    pub max_intervals: u32,
    /// Emitted timestamp: bucket start (carbon) or end.
    pub timestamp_at: TimestampAt,
    /// carbon's `FORWARD_ALL`: pass input points on as well.
    pub forward_all: bool,
    /// Values kept per bucket by methods that need every value (percentiles, median,
    /// stddev, variance).
    pub bucket_values_max: usize,
}

impl Default for CarbonConfig {
    fn default() -> Self {
        CarbonConfig {
            keys_max: 1_000_000,
            max_intervals: 5,
            timestamp_at: TimestampAt::Start,
            forward_all: true,
            bucket_values_max: 10_000,
        }
    }
}

/// Plain counters; the shard publishes copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CarbonCounters {
    /// Points passed to `ingest`.
    pub points_in: u64,
    /// (point, rule) matches.
    pub rule_matches: u64,
    /// Lines written by `flush`.
    pub points_out: u64,
    /// Output names created.
    pub keys_created: u64,
    /// Output names removed after their last bucket aged out.
    pub keys_expired: u64,
    /// Point dropped: a new name while `keys_max` names are held.
    pub dropped_keys_full: u64,
    /// Point dropped: its bucket is gone and older than `max_intervals`.
    pub dropped_too_old: u64,
    /// Point dropped: more than `max_intervals` buckets ahead.
    pub dropped_too_new: u64,
    /// Point dropped: its bucket already holds `bucket_values_max` values.
    pub dropped_bucket_full: u64,
    /// Point dropped: NaN value.
    pub dropped_nan: u64,
    /// Point dropped: two output names with the same 64-bit hash (odds in [`name_hash`]).
    pub dropped_hash_collision: u64,
}

/// What `ingest` tells the caller about the input point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingest {
    /// Pass the input point on unchanged (`forward_all`, and no output name equals it).
    pub forward: bool,
    /// Rules that matched.
    pub matched: u32,
}

/// The fixed hash that keys output names (and will pick their owner shard).
///
/// 64 bits: with n names held, the chance that any two collide is about
/// n² / 2^65, 2.7e-8 at a million names. A collision is detected (the name is stored
/// and compared) and the later name's points are dropped and counted.
pub fn name_hash(name: &[u8]) -> u64 {
    // Fixed seeds: every shard, process and restart hashes alike.
    ahash::RandomState::with_seeds(
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    )
    .hash_one(name)
}

#[derive(Debug)]
struct Bucket {
    interval_s: i64,
    /// Got values since the last compute (carbon's `IntervalBuffer.active`).
    active: bool,
    acc: Acc,
}

#[derive(Debug)]
struct Key {
    name: Box<[u8]>,
    hash: u64,
    frequency_s: u32,
    method: Method,
    /// When the compute schedule started (the first point's `now`).
    started_s: i64,
    /// Insertion order, as carbon's dict.
    buckets: Vec<Bucket>,
    /// `values[i]` are the values of `buckets[i]`, in arrival order; empty for
    /// methods that do not keep values, so those pay nothing for it.
    values: Vec<Vec<f64>>,
}

impl Named for Key {
    fn name(&self) -> &[u8] {
        &self.name
    }
    fn hash(&self) -> u64 {
        self.hash
    }
}

/// The matching half of carbon-aggregator: the rules, run on the shard that read a
/// point, giving the output names its value goes to (each then handed to the shard that
/// owns that name).
#[derive(Default)]
pub struct RuleMatcher {
    rules: Vec<Rule>,
    locs: Vec<regex::bytes::CaptureLocations>,
    name_buf: Vec<u8>,
}

impl RuleMatcher {
    /// A matcher over `rules`, in file order.
    pub fn new(rules: &Rules) -> RuleMatcher {
        RuleMatcher {
            locs: rules.rules.iter().map(|r| r.capture_locations()).collect(),
            rules: rules.rules.clone(),
            name_buf: Vec::with_capacity(256),
        }
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Calls `f(rule index, rule, output name)` for every rule that matches `name`, in
    /// file order; returns how many matched and whether one of the outputs is `name`
    /// itself (carbon then does not forward the input).
    pub fn outputs(&mut self, name: &[u8], mut f: impl FnMut(usize, &Rule, &[u8])) -> (u32, bool) {
        let mut matched = 0;
        let mut is_own_output = false;
        for i in 0..self.rules.len() {
            if !self.rules[i].output_name(name, &mut self.locs[i], &mut self.name_buf) {
                continue;
            }
            matched += 1;
            is_own_output |= self.name_buf == name;
            f(i, &self.rules[i], &self.name_buf);
        }
        (matched, is_own_output)
    }
}

/// carbon-aggregator's engine for one shard.
pub struct CarbonAggregator {
    cfg: CarbonConfig,
    matcher: RuleMatcher,
    keys: Slots<Key>,
    /// (due second, slot): one entry per live key.
    schedule: BinaryHeap<Reverse<(i64, u32)>>,
    sort_buf: Vec<f64>,
    counters: CarbonCounters,
}

fn interval_of(ts: i64, freq: i64) -> i64 {
    // Python's `%` is a floor modulo.
    ts - ts.rem_euclid(freq)
}

impl CarbonAggregator {
    /// An empty aggregator with these rules.
    pub fn new(cfg: CarbonConfig, rules: Rules) -> CarbonAggregator {
        assert!(cfg.keys_max > 0 && cfg.keys_max < u32::MAX as usize);
        CarbonAggregator {
            cfg,
            matcher: RuleMatcher::new(&rules),
            keys: Slots::default(),
            schedule: BinaryHeap::new(),
            sort_buf: Vec::new(),
            counters: CarbonCounters::default(),
        }
    }

    /// Counts a NaN point dropped before its rules were matched (as carbon's receiver
    /// drops it).
    pub fn count_nan(&mut self) {
        self.counters.dropped_nan += 1;
    }

    /// The counters so far.
    pub fn counters(&self) -> &CarbonCounters {
        &self.counters
    }

    /// Output names held now.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// The earliest second at which `flush` has work, if any: the shard may sleep
    /// until then.
    pub fn next_flush_s(&self) -> Option<i64> {
        self.schedule.peek().map(|Reverse((due, _))| *due)
    }

    /// Feeds one point, received at `now_s`, to every matching rule.
    pub fn ingest(&mut self, name: &[u8], value: f64, timestamp_s: i64, now_s: i64) -> Ingest {
        self.counters.points_in += 1;
        if value.is_nan() {
            self.counters.dropped_nan += 1;
            return Ingest {
                forward: false,
                matched: 0,
            };
        }
        let mut matcher = std::mem::take(&mut self.matcher);
        let (matched, is_own_output) = matcher.outputs(name, |_, rule, out| {
            self.ingest_output(
                out,
                rule.frequency_s,
                rule.method,
                value,
                timestamp_s,
                now_s,
            );
        });
        self.matcher = matcher;
        self.counters.rule_matches += u64::from(matched);
        Ingest {
            forward: self.cfg.forward_all && !is_own_output,
            matched,
        }
    }

    /// The rules, in file order (rule indexes in mesh records refer to these).
    pub fn rules(&self) -> &[Rule] {
        self.matcher.rules()
    }

    /// Adds a value to output name `out_name` (a rule gave it, on whatever shard read
    /// the point), as carbon's buffer for that name does: the name's first rule decides
    /// its frequency and method.
    pub fn ingest_output(
        &mut self,
        out_name: &[u8],
        freq: u32,
        method: Method,
        v: f64,
        ts: i64,
        now: i64,
    ) {
        if v.is_nan() {
            self.counters.dropped_nan += 1;
            return;
        }
        let hash = name_hash(out_name);
        let Ok(slot) = self.keys.find(hash, out_name) else {
            self.counters.dropped_hash_collision += 1;
            return;
        };
        let key = slot.map(|s| self.keys.get_mut(s));
        // The name's existing schedule decides, as carbon's configured buffer does.
        let (freq, method) = key
            .as_ref()
            .map_or((freq, method), |k| (k.frequency_s, k.method));
        let f = i64::from(freq);
        let interval = interval_of(ts, f);
        let reach = i64::from(self.cfg.max_intervals) * f;
        let current = interval_of(now, f);
        let values_max = self.cfg.bucket_values_max;
        if let Some(k) = key {
            if let Some(i) = k.buckets.iter().position(|b| b.interval_s == interval) {
                if method.keeps_values() {
                    if k.values[i].len() >= values_max {
                        self.counters.dropped_bucket_full += 1;
                        return;
                    }
                    k.values[i].push(v);
                }
                let b = &mut k.buckets[i];
                b.acc.add(method, v);
                b.active = true;
                return;
            }
        }
        if interval < current - reach {
            self.counters.dropped_too_old += 1;
            return;
        }
        if interval > current + reach {
            self.counters.dropped_too_new += 1;
            return;
        }
        let slot = match slot {
            Some(s) => s,
            None => {
                if self.keys.len() >= self.cfg.keys_max {
                    self.counters.dropped_keys_full += 1;
                    return;
                }
                let key = Key {
                    name: out_name.into(),
                    hash,
                    frequency_s: freq,
                    method,
                    started_s: now,
                    buckets: Vec::with_capacity(2),
                    values: Vec::new(),
                };
                let s = self.keys.insert(key);
                self.schedule.push(Reverse((now + f, s)));
                self.counters.keys_created += 1;
                s
            }
        };
        let k = self.keys.get_mut(slot);
        let mut b = Bucket {
            interval_s: interval,
            active: true,
            acc: Acc::default(),
        };
        b.acc.add(method, v);
        k.buckets.push(b);
        if method.keeps_values() {
            k.values.push(vec![v]);
        }
    }

    /// Runs every compute due at or before `now_s`, appending graphite lines
    /// (`name value timestamp\n`, carbon's line-client format) to `out`. Returns the
    /// number of lines written.
    pub fn flush(&mut self, now_s: i64, out: &mut Vec<u8>) -> usize {
        let mut lines = 0;
        while let Some(&Reverse((due, slot))) = self.schedule.peek() {
            if due > now_s {
                break;
            }
            self.schedule.pop();
            let k = self.keys.get_mut(slot);
            let f = i64::from(k.frequency_s);
            let threshold = interval_of(now_s, f) - i64::from(self.cfg.max_intervals) * f;
            let shift = match self.cfg.timestamp_at {
                TimestampAt::Start => 0,
                TimestampAt::End => f,
            };
            for (i, b) in k.buckets.iter_mut().enumerate().filter(|(_, b)| b.active) {
                let values = k.values.get(i).map_or(&[][..], Vec::as_slice);
                let v = method::compute(k.method, &b.acc, values, &mut self.sort_buf);
                out.extend_from_slice(&k.name);
                out.push(b' ');
                method::write_value(out, v);
                out.push(b' ');
                write_i64(out, b.interval_s + shift);
                out.push(b'\n');
                b.active = false;
                lines += 1;
            }
            // Order kept (carbon's dict order decides the next emission order).
            let mut i = 0;
            while i < k.buckets.len() {
                if k.buckets[i].interval_s < threshold {
                    k.buckets.remove(i);
                    if i < k.values.len() {
                        k.values.remove(i);
                    }
                } else {
                    i += 1;
                }
            }
            if k.buckets.is_empty() {
                self.keys.remove(slot);
                self.counters.keys_expired += 1;
            } else {
                // twisted's LoopingCall: the next multiple of the period after now.
                let next = k.started_s + f * ((now_s - k.started_s).div_euclid(f) + 1);
                self.schedule.push(Reverse((next, slot)));
            }
        }
        self.counters.points_out += lines as u64;
        lines
    }

    /// Heap bytes held for keys and their buckets now (names, buckets, kept values,
    /// map and schedule), for the bytes-per-key figure in tuning.md.
    pub fn heap_bytes(&self) -> usize {
        let keys: usize = self
            .keys
            .iter()
            .map(|k| {
                k.name.len()
                    + k.buckets.capacity() * std::mem::size_of::<Bucket>()
                    + k.values.capacity() * std::mem::size_of::<Vec<f64>>()
                    + k.values.iter().map(|v| v.capacity() * 8).sum::<usize>()
            })
            .sum();
        keys + self.keys.heap_bytes()
            + self.schedule.capacity() * std::mem::size_of::<Reverse<(i64, u32)>>()
    }
}

/// Writes a decimal integer without allocating.
fn write_i64(out: &mut Vec<u8>, v: i64) {
    use std::io::Write;
    let _ = write!(out, "{v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(rules: &str, cfg: CarbonConfig) -> CarbonAggregator {
        CarbonAggregator::new(cfg, Rules::parse(rules).unwrap())
    }

    fn flush(a: &mut CarbonAggregator, now: i64) -> Vec<String> {
        let mut out = Vec::new();
        a.flush(now, &mut out);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// 20 s into the minute starting at 1699999980.
    const T0: i64 = 1_700_000_000;

    #[test]
    fn emits_on_its_own_schedule_and_again_when_updated() {
        let mut a = agg(
            "out.<app>.all.requests (60) = sum out.<app>.*.requests\n",
            CarbonConfig::default(),
        );
        let r = a.ingest(b"out.web.h1.requests", 1.0, T0, T0);
        assert_eq!(
            r,
            Ingest {
                forward: true,
                matched: 1
            }
        );
        a.ingest(b"out.web.h2.requests", 2.0, T0 + 1, T0 + 5);
        assert_eq!(a.next_flush_s(), Some(T0 + 60));
        assert!(flush(&mut a, T0 + 59).is_empty());
        assert_eq!(
            flush(&mut a, T0 + 60),
            ["out.web.all.requests 3 1699999980"]
        );
        // Nothing new: nothing emitted.
        assert!(flush(&mut a, T0 + 120).is_empty());
        // A late point re-emits its bucket with every value.
        a.ingest(b"out.web.h3.requests", 4.5, T0, T0 + 130);
        assert_eq!(
            flush(&mut a, T0 + 180),
            ["out.web.all.requests 7.5 1699999980"]
        );
        // The bucket ages out after max_intervals; then the name is gone.
        assert!(flush(&mut a, T0 + 400).is_empty());
        assert_eq!(a.keys(), 0);
        assert_eq!(a.counters().keys_expired, 1);
        assert_eq!(a.next_flush_s(), None);
    }

    #[test]
    fn too_old_too_new_and_bounds() {
        let cfg = CarbonConfig {
            keys_max: 1,
            timestamp_at: TimestampAt::End,
            ..CarbonConfig::default()
        };
        let mut a = agg("o.<x> (10) = count i.<x>\n", cfg);
        let now = 1_000_000;
        a.ingest(b"i.a", 1.0, now - 60, now); // interval now-60 = current - 6*10
        assert_eq!(a.counters().dropped_too_old, 1);
        a.ingest(b"i.a", 1.0, now - 50, now); // exactly max_intervals back: kept
        a.ingest(b"i.a", 1.0, now + 60, now);
        assert_eq!(a.counters().dropped_too_new, 1);
        a.ingest(b"i.b", 1.0, now, now);
        assert_eq!(a.counters().dropped_keys_full, 1);
        assert_eq!(flush(&mut a, now + 10), ["o.a 1 999960"]);
        assert!(
            a.ingest(b"x", f64::NAN, now, now)
                == Ingest {
                    forward: false,
                    matched: 0
                }
        );
        assert_eq!(a.counters().dropped_nan, 1);
    }

    #[test]
    fn own_output_is_not_forwarded_and_rules_add_twice() {
        let mut a = agg(
            "a.b (60) = sum a.<x>\na.b (60) = sum a.*\n",
            CarbonConfig::default(),
        );
        let r = a.ingest(b"a.b", 2.0, T0, T0);
        assert_eq!(
            r,
            Ingest {
                forward: false,
                matched: 2
            }
        );
        let r = a.ingest(b"a.c", 3.0, T0, T0);
        assert_eq!(
            r,
            Ingest {
                forward: true,
                matched: 2
            }
        );
        assert_eq!(flush(&mut a, T0 + 60), ["a.b 10 1699999980"]);
        let mut a = CarbonAggregator::new(
            CarbonConfig {
                forward_all: false,
                ..CarbonConfig::default()
            },
            Rules::parse("x (60) = sum y").unwrap(),
        );
        assert!(!a.ingest(b"z", 1.0, T0, T0).forward);
    }
}

//! The aggregation stage of a shard: the aggregate engines (`crate::aggregate`) wired to
//! points, owners and the clock.
//!
//! Every aggregated name is owned by one shard, `owner(name) = name_hash(name) % shards`
//! (a fixed hash, the same in every process). A point read on another shard is handed to
//! its owner over the mesh. For statsd the name is the stored key (sanitised, tags
//! joined), so two spellings Etsy would merge meet on one shard; statsd's own keys
//! (`packets_received`, `metrics_received`, `bad_lines_seen`, `timestamp_lag`) live on
//! shard 0, which also writes statsd's own lines (`numStats` and the rest) once per
//! flush for all shards. For carbon the rules run where the point was read and each
//! output name goes to its owner.
//!
//! **Exact intervals across shards (statsd).** At each flush time T every shard sends
//! every other shard a marker for T on the same channel as its samples, and flushes T
//! only once it holds every other shard's marker (or `MARKER_WAIT` passed: counted in
//! `late_flushes`). Channels are FIFO, so every sample read before T anywhere is in T,
//! and a sample that arrives after its sender's marker, or is read here while the flush
//! runs, is held back (`deferred`) and applied after it, in the next interval: as in
//! Etsy, where a sample belongs to the flush after which it arrived. Flushes are written
//! a step at a time, so a large one never stalls the shard's readers.
//!
//! Aggregators have stable ids (`Topology::aggregator_ids`): mesh records name the id,
//! so a reload that reorders `[[aggregate]]` sections cannot misdeliver a record.

use crate::aggregate::carbon::{name_hash, CarbonAggregator, RuleMatcher};
use crate::aggregate::statsd::key::{self as statsd_key, KeyScratch};
use crate::aggregate::statsd::mgmt::Kind as StatsdKind;
use crate::aggregate::statsd::table::fingerprint;
use crate::aggregate::statsd::{
    utf16_len, DumpValue, FlushTotals, GraphiteWriteStats, StatsdEngine, TagMode,
};
use crate::config::{Aggregate, AggregateKind};
use crate::point::{Point, Value};
use crate::protocol::statsd::{Sample, Value as SampleValue};
use crate::shard::mesh::{put_str16, Reader, ShardMesh};

crate::counter_set! {
    /// Counters of one aggregator on one shard.
    pub struct AggregatorCounters {
        /// Samples routed to this aggregator on this shard (statsd samples, graphite
        /// points for carbon).
        samples: counter,
        /// Of those, handed to another shard that owns their name.
        samples_to_other_shards: counter,
        /// Samples (from any shard) applied to this shard's share of the keys.
        samples_applied: counter,
        /// Samples held back while a flush ran, applied in the next interval.
        samples_deferred: counter,
        /// Points of a protocol this kind does not take (a graphite point routed to a
        /// statsd aggregator, a statsd sample to carbon), dropped.
        dropped_wrong_protocol: counter,
        /// Samples dropped because this shard held keys_max keys (statsd) or output names
        /// (carbon) and the key was new.
        dropped_keys_full: counter,
        /// carbon: points dropped for a bucket older than max_intervals, too far ahead, a
        /// full bucket (bucket_values_max), NaN, or an output-name hash collision.
        dropped_other: counter,
        /// Mesh records for an aggregator this shard does not run (a reload removed it).
        dropped_unknown_aggregator: counter,
        /// Keys this shard holds.
        keys: gauge,
        /// Bytes those keys hold (an estimate from capacities).
        key_bytes: gauge,
        /// key_bytes / keys.
        bytes_per_key: gauge,
        /// Flushes run.
        flushes: counter,
        /// Lines flushed into routing.
        flushed_lines: counter,
        /// statsd flushes that ran without every shard's marker (a shard was late or its
        /// mesh channel overflowed): samples from it land in the next interval.
        late_flushes: counter,
    }
}

/// Mesh record tags of this stage.
const TAG_STATSD: u8 = 1;
const TAG_CARBON: u8 = 2;
const TAG_MARKER: u8 = 3;
const TAG_REPORT: u8 = 4;
const TAG_INTAKE: u8 = 5;

/// Keys written per flush step before the shard lets its readers run.
pub const FLUSH_STEP_KEYS: usize = 10_000;

/// The shard a statsd key is owned by, from its [`fingerprint`] (the half the key
/// table does not index by, so owners and table slots do not correlate).
#[inline]
pub fn owner_of_fingerprint(fp: u128, shards: usize) -> usize {
    if shards == 1 {
        0
    } else {
        ((fp >> 64) as u64 % shards as u64) as usize
    }
}

/// The shard every name is owned by.
#[inline]
pub fn owner(name: &[u8], shards: usize) -> usize {
    if shards == 1 {
        0
    } else {
        (name_hash(name) % shards as u64) as usize
    }
}

/// What Etsy's own counters count, from statsd listeners: datagrams (or stream reads),
/// non-empty lines, rejected samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Intake {
    /// `packets_received`.
    pub packets: u64,
    /// `metrics_received`.
    pub lines: u64,
    /// `bad_lines_seen`.
    pub bad: u64,
}

/// One aggregator on this shard.
pub struct AggState {
    /// Stable id (mesh records name it).
    pub id: u16,
    /// Its config.
    pub config: Aggregate,
    /// Its counters on this shard.
    pub counters: AggregatorCounters,
    kind: Kind,
    /// Encoded records held back while a flush runs.
    deferred: Vec<u8>,
}

enum Kind {
    Statsd(Box<StatsdState>),
    Carbon(Box<CarbonState>),
}

struct StatsdState {
    engine: StatsdEngine,
    tag_mode: TagMode,
    key_name_sanitize: bool,
    /// Fingerprints of statsd's own keys (they live on shard 0).
    internal: [u128; 4],
    /// The flush running now, if any.
    flush: Option<FlushState>,
    /// By shard: the latest flush time it sent a marker for. Its records after that
    /// marker belong to later intervals.
    last_marker: Vec<i64>,
    /// The latest flush time this shard completed.
    completed_ms: i64,
    /// Intake counted since the last hand-over to shard 0.
    intake_seen: Intake,
}

struct FlushState {
    t_ms: i64,
    /// Shard 0: reports from the others (count, totals, bytes).
    reports: usize,
    totals: FlushTotals,
    bytes: u64,
    /// The engine's flush has begun (markers all in, or given up on).
    begun: bool,
}

struct CarbonState {
    matcher: RuleMatcher,
    engine: CarbonAggregator,
}

/// How a flush of one statsd aggregator stands after a step (for the shard's task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushProgress {
    /// Waiting for other shards' markers.
    WaitingForMarkers,
    /// More keys to write.
    Writing,
    /// Shard 0: waiting for the others' reports before statsd's own lines.
    WaitingForReports,
    /// Done.
    Done,
}

/// The aggregators of one shard.
pub struct AggStage {
    me: usize,
    shards: usize,
    /// By config index of the running topology.
    pub aggs: Vec<AggState>,
    key: Vec<u8>,
    key_scratch: KeyScratch,
    /// What statsd listeners counted on this shard so far (Etsy's own counters).
    pub intake: Intake,
    /// When a statsd listener last read something here (unix seconds; Etsy's
    /// `messages.last_msg_seen`).
    pub last_msg_seen_s: i64,
    /// statsd samples this shard owns, taken during a batch and applied at its end
    /// ([`finish_batch`](Self::finish_batch)): their index entries were prefetched when
    /// they were taken, so a batch overlaps its cache misses.
    staged: Vec<Staged>,
    /// Keys and set members of `staged`.
    staged_bytes: Vec<u8>,
}

/// A statsd sample waiting for the end of its batch.
struct Staged {
    agg: usize,
    fp: u128,
    key: (u32, u32),
    kind: u8,
    value: f64,
    rate: f64,
    member: (u32, u32),
}

/// A question from the management console to one shard's statsd aggregator.
#[derive(Debug, Clone)]
pub enum StatsdQuery {
    /// `counters`, `timers`, `gauges`, `sets`: this shard's keys of the table.
    Dump(StatsdKind),
    /// `delcounters` and the rest: delete these keys where this shard holds them.
    Delete(StatsdKind, Vec<Vec<u8>>),
    /// `stats`: this shard's share.
    Stats,
}

/// A shard's answer to a [`StatsdQuery`].
#[derive(Debug, Clone)]
pub enum StatsdAnswer {
    /// The table's keys on this shard, in insertion order, and what this shard's
    /// statsd listeners counted since its last hand-over to statsd's own counters
    /// (they are added at each flush; Etsy's console shows them as they grow).
    Dump(Vec<(Vec<u8>, DumpValue)>, Intake),
    /// Keys deleted.
    Deleted(usize),
    /// What `stats` reports.
    Stats {
        /// Latest statsd read on this shard (unix seconds, 0: none).
        last_msg_seen_s: i64,
        /// Rejected samples since start.
        bad_lines_seen: u64,
        /// The graphite writer's last write (shard 0, which writes statsd's own lines).
        last_write: Option<GraphiteWriteStats>,
    },
    /// No statsd aggregator of that name runs here.
    Unknown,
}

impl AggStage {
    /// An empty stage for shard `me` of `shards`.
    pub fn new(me: usize, shards: usize) -> AggStage {
        AggStage {
            me,
            shards,
            aggs: Vec::new(),
            key: Vec::with_capacity(256),
            key_scratch: KeyScratch::default(),
            intake: Intake::default(),
            last_msg_seen_s: 0,
            staged: Vec::with_capacity(32),
            staged_bytes: Vec::with_capacity(4096),
        }
    }

    /// Applies the samples staged during a batch, in order (the pipeline calls it at the
    /// end of every batch it routes).
    #[inline]
    pub fn finish_batch(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        for s in &self.staged {
            let agg = &mut self.aggs[s.agg];
            let Kind::Statsd(st) = &mut agg.kind else {
                continue;
            };
            let bytes =
                |(at, len): (u32, u32)| &self.staged_bytes[at as usize..(at + len) as usize];
            let sample = Sample {
                value: decode_value(s.kind, s.value, bytes(s.member)),
                sample_rate: s.rate,
            };
            apply_statsd(st, &mut agg.counters, bytes(s.key), s.fp, sample);
        }
        self.staged.clear();
        self.staged_bytes.clear();
    }

    /// Answers the management console for statsd aggregator `name`.
    pub fn answer(&mut self, name: &str, q: &StatsdQuery) -> StatsdAnswer {
        let me = self.me;
        let (intake, last_seen) = (self.intake, self.last_msg_seen_s);
        let Some(agg) = self.aggs.iter_mut().find(|a| a.config.name == name) else {
            return StatsdAnswer::Unknown;
        };
        let Kind::Statsd(st) = &mut agg.kind else {
            return StatsdAnswer::Unknown;
        };
        match q {
            StatsdQuery::Dump(kind) => {
                let pending = Intake {
                    packets: intake.packets - st.intake_seen.packets,
                    lines: intake.lines - st.intake_seen.lines,
                    bad: intake.bad - st.intake_seen.bad,
                };
                StatsdAnswer::Dump(st.engine.dump(*kind), pending)
            }
            StatsdQuery::Delete(kind, names) => {
                StatsdAnswer::Deleted(st.engine.delete_keys(*kind, names))
            }
            StatsdQuery::Stats => StatsdAnswer::Stats {
                last_msg_seen_s: last_seen,
                bad_lines_seen: intake.bad,
                last_write: (me == 0).then(|| st.engine.last_write()),
            },
        }
    }

    /// A fresh aggregator for `config` with stable id `id`, started at `now_ms`.
    pub fn build(&self, id: u16, config: &Aggregate, now_ms: i64) -> Result<AggState, String> {
        let kind = match &config.kind {
            AggregateKind::Statsd(s) => {
                let ps = &s.engine.prefix_stats;
                let engine = StatsdEngine::new_shard(s.engine.clone(), now_ms / 1000, self.me == 0)
                    .map_err(|e| e.to_string())?;
                Kind::Statsd(Box::new(StatsdState {
                    engine,
                    tag_mode: s.engine.tag_mode,
                    key_name_sanitize: s.engine.key_name_sanitize,
                    internal: [
                        "bad_lines_seen",
                        "packets_received",
                        "metrics_received",
                        "timestamp_lag",
                    ]
                    .map(|n| fingerprint(format!("{ps}.{n}").as_bytes())),
                    flush: None,
                    last_marker: vec![0; self.shards],
                    completed_ms: 0,
                    intake_seen: self.intake,
                }))
            }
            AggregateKind::Carbon(c) => Kind::Carbon(Box::new(CarbonState {
                matcher: RuleMatcher::new(&c.rules),
                engine: CarbonAggregator::new(c.engine.clone(), c.rules.clone()),
            })),
        };
        Ok(AggState {
            id,
            config: config.clone(),
            counters: AggregatorCounters::default(),
            kind,
            deferred: Vec::new(),
        })
    }

    /// The config index of the aggregator with stable id `id`.
    fn by_id(&self, id: u16) -> Option<usize> {
        self.aggs.iter().position(|a| a.id == id)
    }

    /// Takes a point routed to aggregator `a` under `name` (its name after any rewrite),
    /// at `now_s`. Applies it here when this shard owns its key, else hands it to the
    /// owner. Returns whether the input point is also passed on (carbon's
    /// `forward_inputs`).
    #[inline]
    pub fn take(
        &mut self,
        a: usize,
        p: &Point<'_>,
        name: &[u8],
        now_s: i64,
        mesh: &mut ShardMesh,
    ) -> bool {
        let (me, shards) = (self.me, self.shards);
        let Some(agg) = self.aggs.get_mut(a) else {
            return false;
        };
        agg.counters.samples += 1;
        let id = agg.id;
        match (&mut agg.kind, p.value) {
            (Kind::Statsd(st), Value::Statsd(s)) => {
                // Most names are their own key: no copy then.
                let key: &[u8] = if statsd_key::is_own_key(name, s.tags, st.key_name_sanitize) {
                    name
                } else {
                    statsd_key::build_key(
                        name,
                        s.tags,
                        st.tag_mode,
                        st.key_name_sanitize,
                        &mut self.key,
                        &mut self.key_scratch,
                    );
                    &self.key
                };
                // One hash of the key picks the owner and finds the key there.
                let fp = fingerprint(key);
                let to = if st.internal.contains(&fp) {
                    0
                } else {
                    owner_of_fingerprint(fp, shards)
                };
                if to != me {
                    agg.counters.samples_to_other_shards += 1;
                    mesh.record(to, TAG_STATSD, |b| encode_statsd(b, id, key, fp, &s.sample));
                } else if st.flush.is_some() {
                    agg.counters.samples_deferred += 1;
                    push_deferred(&mut agg.deferred, me, TAG_STATSD, |b| {
                        encode_statsd(b, id, key, fp, &s.sample)
                    });
                } else {
                    st.engine.prefetch(fp, &s.sample.value);
                    let bytes = &mut self.staged_bytes;
                    let mut put = |b: &[u8]| {
                        let at = bytes.len() as u32;
                        bytes.extend_from_slice(b);
                        (at, b.len() as u32)
                    };
                    let (kind, value, member) = encode_value(&s.sample.value);
                    self.staged.push(Staged {
                        agg: a,
                        fp,
                        key: put(key),
                        kind,
                        value,
                        rate: s.sample.sample_rate,
                        member: put(member),
                    });
                }
                false
            }
            (Kind::Carbon(c), Value::Graphite(_) | Value::Numeric(_)) => {
                // Plaintext and pickle alike: carbon's datapoint (`-1` is now), its
                // timestamp as `int()` makes it.
                let Some((t, v)) = p.value.datapoint(|| now_s as f64) else {
                    agg.counters.dropped_wrong_protocol += 1;
                    return false;
                };
                // carbon's receiver drops NaN values before its rules see them.
                if v.is_nan() {
                    c.engine.count_nan();
                    return false;
                }
                let ts = t as i64;
                let counters = &mut agg.counters;
                let engine = &mut c.engine;
                let (_, own) = c.matcher.outputs(name, |i, rule, out| {
                    let to = owner(out, shards);
                    if to == me {
                        counters.samples_applied += 1;
                        engine.ingest_output(out, rule.frequency_s, rule.method, v, ts, now_s);
                    } else {
                        counters.samples_to_other_shards += 1;
                        mesh.record(to, TAG_CARBON, |b| {
                            b.extend_from_slice(&id.to_le_bytes());
                            b.extend_from_slice(&(i as u16).to_le_bytes());
                            b.extend_from_slice(&v.to_bits().to_le_bytes());
                            b.extend_from_slice(&ts.to_le_bytes());
                            b.extend_from_slice(&now_s.to_le_bytes());
                            put_str16(b, out);
                        });
                    }
                });
                let AggregateKind::Carbon(cfg) = &agg.config.kind else {
                    unreachable!("kind and config agree")
                };
                cfg.engine.forward_all && !own
            }
            _ => {
                agg.counters.dropped_wrong_protocol += 1;
                false
            }
        }
    }

    /// Applies the records of a batch that arrived from shard `from`, in order, starting
    /// to load each statsd key's index entry a few records ahead.
    /// Store records (`store::TAG_STORE`) go to `store`.
    pub fn apply_batch(
        &mut self,
        from: usize,
        batch: &crate::shard::mesh::MeshBatch,
        store: &mut impl FnMut(&[u8]),
    ) {
        const AHEAD: usize = 8;
        let mut ahead = batch.records_from(0);
        for _ in 0..AHEAD {
            match ahead.next() {
                Some((_, tag, payload)) => self.prefetch_record(tag, payload),
                None => break,
            }
        }
        for (_, tag, payload) in batch.records_from(0) {
            if let Some((_, t, p)) = ahead.next() {
                self.prefetch_record(t, p);
            }
            if tag == crate::shard::store::TAG_STORE {
                store(payload);
                continue;
            }
            self.apply_record(from, tag, payload);
        }
    }

    /// Starts loading the index entry a statsd record will look up.
    #[inline]
    fn prefetch_record(&self, tag: u8, payload: &[u8]) {
        if tag != TAG_STATSD || payload.len() < 19 {
            return;
        }
        let id = u16::from_le_bytes([payload[0], payload[1]]);
        let fp = u128::from_le_bytes(payload[2..18].try_into().expect("16 bytes"));
        let kind = payload[18];
        if let Some(agg) = self.aggs.iter().find(|a| a.id == id) {
            if let Kind::Statsd(st) = &agg.kind {
                st.engine.prefetch(fp, &decode_value(kind, 0.0, &[]));
            }
        }
    }

    /// Applies one record that arrived from shard `from`; one that came after `from`'s
    /// marker for a flush this shard has not completed waits until it has.
    pub fn apply_record(&mut self, from: usize, tag: u8, payload: &[u8]) {
        let mut r = Reader(payload);
        let id = r.u16();
        let Some(a) = self.by_id(id) else {
            if let Some(agg) = self.aggs.first_mut() {
                agg.counters.dropped_unknown_aggregator += 1;
            }
            return;
        };
        receive(&mut self.aggs[a], from, tag, payload);
    }

    /// Starts the flush of statsd aggregator `a` at `t_ms`: hands this shard's intake
    /// to shard 0 and sends every other shard the marker for `t_ms`.
    pub fn flush_start(&mut self, a: usize, t_ms: i64, mesh: &mut ShardMesh) {
        let (me, shards, intake) = (self.me, self.shards, self.intake);
        let agg = &mut self.aggs[a];
        let id = agg.id;
        let Kind::Statsd(st) = &mut agg.kind else {
            return;
        };
        let delta = Intake {
            packets: intake.packets - st.intake_seen.packets,
            lines: intake.lines - st.intake_seen.lines,
            bad: intake.bad - st.intake_seen.bad,
        };
        st.intake_seen = intake;
        if me == 0 {
            st.engine
                .count_intake(delta.packets, delta.lines, delta.bad);
        } else if delta != Intake::default() {
            mesh.record(0, TAG_INTAKE, |b| {
                b.extend_from_slice(&id.to_le_bytes());
                for v in [delta.packets, delta.lines, delta.bad] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
            });
        }
        st.last_marker[me] = t_ms;
        st.flush = Some(FlushState {
            t_ms,
            reports: 0,
            totals: FlushTotals::default(),
            bytes: 0,
            begun: false,
        });
        for to in (0..shards).filter(|&s| s != me) {
            mesh.record(to, TAG_MARKER, |b| {
                b.extend_from_slice(&id.to_le_bytes());
                b.extend_from_slice(&t_ms.to_le_bytes());
            });
        }
        mesh.send_all();
    }

    /// Advances the flush of statsd aggregator `a`: once every marker is in (or
    /// `give_up` says stop waiting) writes up to [`FLUSH_STEP_KEYS`] keys' lines to
    /// `out`; at the end reports to shard 0, and shard 0 writes statsd's own lines once
    /// every report is in (or `give_up`). The lines in `out` go into routing.
    /// `output_down`: every destination of the aggregator's `send_to` is down, so this
    /// flush is not recorded as a write in `graphiteStats` (Etsy's writer records one
    /// only when its connection opens): `last_flush` ages on the console, as Etsy's does
    /// while its graphite refuses connections, though cadent keeps the lines queued.
    pub fn flush_step(
        &mut self,
        a: usize,
        give_up: bool,
        output_down: bool,
        out: &mut Vec<u8>,
        mesh: &mut ShardMesh,
    ) -> FlushProgress {
        let (me, shards) = (self.me, self.shards);
        let agg = &mut self.aggs[a];
        let id = agg.id;
        let Kind::Statsd(st) = &mut agg.kind else {
            return FlushProgress::Done;
        };
        let Some(f) = st.flush.as_mut() else {
            return FlushProgress::Done;
        };
        if !f.begun {
            if st.last_marker.iter().any(|&m| m < f.t_ms) {
                if !give_up {
                    return FlushProgress::WaitingForMarkers;
                }
                agg.counters.late_flushes += 1;
            }
            f.begun = true;
            st.engine.flush_begin(f.t_ms);
        }
        if st.engine.flushing() {
            let before = out.len();
            let done = st.engine.flush_step(out, FLUSH_STEP_KEYS);
            f.bytes += utf16_len(&out[before..]);
            if !done {
                return FlushProgress::Writing;
            }
            let summary = st.engine.flush_end();
            agg.counters.flushes += 1;
            agg.counters.flushed_lines += summary.lines;
            let totals = summary.totals();
            if me == 0 {
                f.totals.add(&totals);
                f.totals.ts = totals.ts;
            } else {
                let bytes = f.bytes;
                mesh.record(0, TAG_REPORT, |b| {
                    b.extend_from_slice(&id.to_le_bytes());
                    b.extend_from_slice(&totals.ts.to_le_bytes());
                    for v in [
                        totals.num_stats,
                        totals.calculation_ms,
                        totals.processing_ms,
                        bytes,
                    ] {
                        b.extend_from_slice(&v.to_le_bytes());
                    }
                });
                mesh.send_all();
            }
        }
        if me == 0 {
            if f.reports + 1 < shards && !give_up {
                return FlushProgress::WaitingForReports;
            }
            if f.reports + 1 < shards {
                agg.counters.late_flushes += 1;
            }
            let before = out.len();
            let n = st.engine.write_own_lines(&f.totals, out);
            agg.counters.flushed_lines += n;
            let bytes = f.bytes + utf16_len(&out[before..]);
            // Etsy's graphiteStats describe the previous write: this one, next flush.
            if !output_down {
                st.engine.record_write(GraphiteWriteStats {
                    last_exception_s: 0,
                    last_flush_s: (f.t_ms + 500).div_euclid(1000),
                    flush_time_ms: f.totals.calculation_ms,
                    flush_length_units: bytes,
                });
            }
        }
        st.completed_ms = f.t_ms;
        st.flush = None;
        FlushProgress::Done
    }

    /// Applies what was held back while aggregator `a`'s flush ran (after it ended), in
    /// arrival order; what is still ahead of this shard's flushes waits again.
    pub fn replay_deferred(&mut self, a: usize) {
        let agg = &mut self.aggs[a];
        let held = std::mem::take(&mut agg.deferred);
        let mut at = 0;
        while at < held.len() {
            let tag = held[at];
            let len = u32::from_le_bytes(held[at + 1..at + 5].try_into().expect("4 bytes"));
            let from = u16::from_le_bytes(held[at + 5..at + 7].try_into().expect("2 bytes"));
            let payload = &held[at + 7..at + 5 + len as usize];
            at += 5 + len as usize;
            receive(agg, from as usize, tag, payload);
        }
    }

    /// Carbon: runs every compute due at `now_s`, lines into `out`; returns the lines.
    pub fn flush_carbon(&mut self, a: usize, now_s: i64, out: &mut Vec<u8>) -> u64 {
        let agg = &mut self.aggs[a];
        let Kind::Carbon(c) = &mut agg.kind else {
            return 0;
        };
        let n = c.engine.flush(now_s, out) as u64;
        if n > 0 {
            agg.counters.flushes += 1;
            agg.counters.flushed_lines += n;
        }
        n
    }

    /// Refreshes the gauges (keys, bytes) before the counters are published.
    pub fn refresh_gauges(&mut self) {
        for agg in &mut self.aggs {
            let (keys, bytes, full, other) = match &agg.kind {
                Kind::Statsd(st) => {
                    let c = st.engine.counters();
                    (
                        st.engine.keys() as u64,
                        st.engine.bytes_estimate() as u64,
                        c.keys_overflow,
                        c.set_values_overflow,
                    )
                }
                Kind::Carbon(c) => {
                    let k = c.engine.counters();
                    (
                        c.engine.keys() as u64,
                        c.engine.heap_bytes() as u64,
                        k.dropped_keys_full,
                        k.dropped_too_old
                            + k.dropped_too_new
                            + k.dropped_bucket_full
                            + k.dropped_nan
                            + k.dropped_hash_collision,
                    )
                }
            };
            let c = &mut agg.counters;
            c.keys = keys;
            c.key_bytes = bytes;
            c.bytes_per_key = bytes.checked_div(keys).unwrap_or(0);
            c.dropped_keys_full = full;
            c.dropped_other = other;
        }
    }

    /// Whether aggregator `a` is statsd with a flush running.
    pub fn flushing(&self, a: usize) -> bool {
        matches!(&self.aggs[a].kind, Kind::Statsd(st) if st.flush.is_some())
    }

    /// The statsd engine of aggregator `a`, if it is one (the management console).
    pub fn statsd_engine(&mut self, a: usize) -> Option<&mut StatsdEngine> {
        match &mut self.aggs.get_mut(a)?.kind {
            Kind::Statsd(st) => Some(&mut st.engine),
            Kind::Carbon(_) => None,
        }
    }

    /// Flushes aggregator `a` at once, whatever other shards hold (a reload that
    /// changes or removes it, or shutdown): its open interval's lines into `out`.
    pub fn flush_now(&mut self, a: usize, now_ms: i64, out: &mut Vec<u8>) {
        let agg = &mut self.aggs[a];
        match &mut agg.kind {
            Kind::Statsd(st) => {
                if st.engine.flushing() {
                    while !st.engine.flush_step(out, usize::MAX) {}
                    let _ = st.engine.flush_end();
                } else {
                    let s = st.engine.flush(now_ms, out);
                    agg.counters.flushes += 1;
                    agg.counters.flushed_lines += s.lines;
                }
                st.flush = None;
            }
            Kind::Carbon(c) => {
                // Every bucket, due or not.
                let n = c.engine.flush(i64::MAX / 2, out) as u64;
                agg.counters.flushed_lines += n;
            }
        }
    }
}

/// A record for aggregator `agg` from shard `from` (`payload` still starting with the
/// aggregator id): held back when it is behind `from`'s marker for a flush this shard
/// has not completed (or is a local sample during a flush), applied otherwise.
fn receive(agg: &mut AggState, from: usize, tag: u8, payload: &[u8]) {
    if let Kind::Statsd(st) = &mut agg.kind {
        let behind_marker = st.last_marker[from] > st.completed_ms;
        if tag != TAG_REPORT && behind_marker {
            agg.counters.samples_deferred += u64::from(tag == TAG_STATSD);
            push_deferred(&mut agg.deferred, from, tag, |b| {
                b.extend_from_slice(payload)
            });
            return;
        }
        if tag == TAG_MARKER {
            let t = i64::from_le_bytes(payload[2..10].try_into().expect("8 bytes"));
            st.last_marker[from] = st.last_marker[from].max(t);
            return;
        }
    }
    let mut r = Reader(payload);
    let _id = r.u16();
    apply(agg, tag, r);
}

/// Appends a held-back record: `[tag][len u32][from u16][payload]`.
fn push_deferred(buf: &mut Vec<u8>, from: usize, tag: u8, write: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.push(tag);
    buf.extend_from_slice(&[0, 0, 0, 0]);
    buf.extend_from_slice(&(from as u16).to_le_bytes());
    write(buf);
    let len = (buf.len() - at - 5) as u32;
    buf[at + 1..at + 5].copy_from_slice(&len.to_le_bytes());
}

/// A sample's value as (kind code, number, set member), for mesh records and staging.
#[inline]
fn encode_value<'a>(v: &SampleValue<'a>) -> (u8, f64, &'a [u8]) {
    match *v {
        SampleValue::Counter(v) => (0, v, &[]),
        SampleValue::Timer(v) => (1, v, &[]),
        SampleValue::Gauge { value, delta } => (2 + u8::from(delta), value, &[]),
        SampleValue::Set(m) => (4, 0.0, m),
    }
}

/// The inverse of [`encode_value`].
#[inline]
fn decode_value(kind: u8, v: f64, member: &[u8]) -> SampleValue<'_> {
    match kind {
        0 => SampleValue::Counter(v),
        1 => SampleValue::Timer(v),
        2 | 3 => SampleValue::Gauge {
            value: v,
            delta: kind == 3,
        },
        _ => SampleValue::Set(member),
    }
}

fn encode_statsd(b: &mut Vec<u8>, id: u16, key: &[u8], fp: u128, s: &Sample<'_>) {
    // The fixed fields in one array and one reservation: a record per sample that another
    // shard owns, half of them with two shards.
    let (kind, v, member) = encode_value(&s.value);
    let key = &key[..key.len().min(u16::MAX as usize)];
    let mut head = [0u8; 37];
    head[0..2].copy_from_slice(&id.to_le_bytes());
    head[2..18].copy_from_slice(&fp.to_le_bytes());
    head[18] = kind;
    head[19..27].copy_from_slice(&v.to_bits().to_le_bytes());
    head[27..35].copy_from_slice(&s.sample_rate.to_bits().to_le_bytes());
    head[35..37].copy_from_slice(&(key.len() as u16).to_le_bytes());
    b.reserve(head.len() + key.len() + 2 + member.len());
    b.extend_from_slice(&head);
    b.extend_from_slice(key);
    put_str16(b, member);
}

#[inline]
fn apply_statsd(
    st: &mut StatsdState,
    c: &mut AggregatorCounters,
    key: &[u8],
    fp: u128,
    s: Sample<'_>,
) {
    c.samples_applied += 1;
    st.engine.ingest_fp(key, fp, s);
}

/// Applies a record (its aggregator id already read from `r`).
fn apply(agg: &mut AggState, tag: u8, mut r: Reader<'_>) {
    let counters = &mut agg.counters;
    match (&mut agg.kind, tag) {
        (Kind::Statsd(st), TAG_STATSD) => {
            let fp = u128::from_le_bytes(r.bytes(16).try_into().expect("16 bytes"));
            let kind = r.u8();
            let v = r.f64();
            let sample_rate = r.f64();
            let key = r.str16();
            let member = r.str16();
            let value = decode_value(kind, v, member);
            apply_statsd(st, counters, key, fp, Sample { value, sample_rate });
        }
        (Kind::Statsd(st), TAG_INTAKE) => {
            let (p, l, b) = (r.i64() as u64, r.i64() as u64, r.i64() as u64);
            st.engine.count_intake(p, l, b);
        }
        (Kind::Statsd(st), TAG_REPORT) => {
            let ts = r.i64();
            let totals = FlushTotals {
                ts,
                num_stats: r.i64() as u64,
                calculation_ms: r.i64() as u64,
                processing_ms: r.i64() as u64,
            };
            let bytes = r.i64() as u64;
            if let Some(f) = &mut st.flush {
                f.totals.add(&totals);
                f.bytes += bytes;
                f.reports += 1;
            }
        }
        (Kind::Carbon(c), TAG_CARBON) => {
            let rule = r.u16() as usize;
            let v = r.f64();
            let ts = r.i64();
            let now = r.i64();
            let out = r.str16();
            if let Some(rule) = c.engine.rules().get(rule) {
                let (f, m) = (rule.frequency_s, rule.method);
                counters.samples_applied += 1;
                c.engine.ingest_output(out, f, m, v, ts, now);
            }
        }
        _ => counters.dropped_wrong_protocol += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::statsd::mgmt;
    use crate::config::Config;
    use crate::point::{self, Point};
    use crate::protocol::statsd;
    use crate::shard::mesh;
    use crate::tools::SplitMix64;

    #[test]
    fn owners_spread_and_are_stable() {
        let mut seen = [0usize; 4];
        for i in 0..4000 {
            let name = format!("a.b.c{i}");
            let o = owner(name.as_bytes(), 4);
            assert_eq!(o, owner(name.as_bytes(), 4));
            seen[o] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
        assert_eq!(owner(b"x", 1), 0);
    }

    fn stages(shards: usize, queue_bytes: usize) -> (Vec<AggStage>, Vec<ShardMesh>) {
        let cfg = Config::parse(
            r#"
            [[listen]]
            name = "s"
            url = "udp://127.0.0.1:0"
            format = "statsd"
            [[cluster]]
            name = "c"
            kind = "forward"
            members = ["127.0.0.1:1"]
            [[aggregate]]
            name = "statsd"
            kind = "statsd"
            send_to = ["c"]
            [[route]]
            match = { all = true }
            aggregate = "statsd"
        "#,
        )
        .unwrap();
        let meshes = mesh::links(shards, 1024, queue_bytes);
        let stages = (0..shards)
            .map(|me| {
                let mut st = AggStage::new(me, shards);
                let agg = st.build(7, &cfg.aggregates[0], 1_700_000_000_000).unwrap();
                st.aggs.push(agg);
                st
            })
            .collect();
        (stages, meshes)
    }

    fn counter(name: &[u8]) -> Point<'_> {
        Point {
            name,
            key: name,
            line: name,
            value: point::Value::Statsd(point::Statsd {
                sample: statsd::Sample {
                    value: statsd::Value::Counter(1.0),
                    sample_rate: 1.0,
                },
                tags: &[],
            }),
        }
    }

    fn drain(stages: &mut [AggStage], meshes: &mut [ShardMesh]) {
        for s in stages.iter_mut() {
            s.finish_batch();
        }
        for m in meshes.iter_mut() {
            m.send_all();
        }
        for (me, st) in stages.iter_mut().enumerate() {
            for from in 0..meshes.len() {
                while let Some(b) = meshes[me].receive(from) {
                    for (_, tag, payload) in b.records_from(0) {
                        st.apply_record(from, tag, payload);
                    }
                }
            }
        }
    }

    /// Every name is aggregated on exactly one shard, its owner, whatever shard read
    /// each of its samples, and no sample is lost or counted twice.
    #[test]
    fn every_name_is_aggregated_on_its_owner_alone() {
        for (seed, shards) in [(1u64, 2usize), (2, 3), (3, 4), (4, 7)] {
            let (mut st, mut meshes) = stages(shards, 1 << 20);
            let mut rng = SplitMix64(seed);
            let names: Vec<String> = (0..500).map(|i| format!("app.n{i}.x")).collect();
            let mut want = std::collections::HashMap::new();
            for _ in 0..20_000 {
                let n = &names[rng.below(names.len())];
                let reader = rng.below(shards);
                st[reader].take(
                    0,
                    &counter(n.as_bytes()),
                    n.as_bytes(),
                    0,
                    &mut meshes[reader],
                );
                // The pipeline ends each batch of points so.
                if rng.below(8) == 0 {
                    st[reader].finish_batch();
                }
                *want.entry(n.clone()).or_insert(0.0) += 1.0;
                if rng.below(50) == 0 {
                    drain(&mut st, &mut meshes);
                }
            }
            drain(&mut st, &mut meshes);
            let mut seen = std::collections::HashMap::new();
            for (me, s) in st.iter_mut().enumerate() {
                let e = s.statsd_engine(0).unwrap();
                for (k, v) in e.dump(mgmt::Kind::Counters) {
                    if k.starts_with(b"statsd.") {
                        continue;
                    }
                    let name = String::from_utf8(k).unwrap();
                    let o = owner_of_fingerprint(fingerprint(name.as_bytes()), shards);
                    assert_eq!(o, me, "{name} on shard {me}");
                    assert!(seen.insert(name, v).is_none(), "a name on two shards");
                }
            }
            assert_eq!(seen.len(), want.len(), "seed {seed}");
            for (n, w) in &want {
                assert_eq!(seen[n], DumpValue::Number(*w), "{n}");
            }
        }
    }

    /// A peer that does not drain: its channel fills, the reader goes on (never waits)
    /// and the dropped samples are counted.
    #[test]
    fn a_full_channel_drops_and_counts_instead_of_blocking() {
        let (mut st, mut meshes) = stages(2, 2048);
        let names: Vec<String> = (0..2000).map(|i| format!("n{i}")).collect();
        let remote = names
            .iter()
            .filter(|n| owner_of_fingerprint(fingerprint(n.as_bytes()), 2) == 1)
            .count() as u64;
        for n in &names {
            st[0].take(0, &counter(n.as_bytes()), n.as_bytes(), 0, &mut meshes[0]);
        }
        meshes[0].send_all();
        let c = &meshes[0].counters;
        assert_eq!(st[0].aggs[0].counters.samples_to_other_shards, remote);
        assert!(c.dropped_records_full > 0, "the channel holds 2 KiB");
        assert_eq!(c.records_sent + c.dropped_records_full, remote);
    }
}

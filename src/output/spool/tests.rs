//! The spool against a simulated disk: a property test over random operations with
//! crashes at any I/O call, a property test of the cap, and one test per kind of damage.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};

use super::sim::SimFs;
use super::*;
use crate::tools::SplitMix64;

const T0: u64 = 1_760_000_000_000;

fn dir() -> PathBuf {
    PathBuf::from("/spool/dest/shard-0")
}

/// A record's payload: `lines` lines, each starting `r<id> ` so a reader can tell records
/// apart, padded to random lengths.
fn payload(id: u64, lines: u32, rng: &mut SplitMix64) -> Vec<u8> {
    let mut p = Vec::new();
    for _ in 0..lines {
        p.extend_from_slice(format!("r{id} ").as_bytes());
        for _ in 0..rng.below(120) {
            p.push(b'a' + rng.below(26) as u8);
        }
        p.push(b'\n');
    }
    p
}

/// The (id, lines) of each record in a read buffer.
fn records_in(buf: &[u8]) -> Vec<(u64, u32)> {
    let mut v: Vec<(u64, u32)> = Vec::new();
    for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let word = line.split(|&b| b == b' ').next().unwrap();
        let id: u64 = std::str::from_utf8(&word[1..]).unwrap().parse().unwrap();
        match v.last_mut() {
            Some((last, n)) if *last == id => *n += 1,
            _ => v.push((id, 1)),
        }
    }
    v
}

fn open(fs: &SimFs, limits: Limits) -> Result<(Spool<SimFs>, RecoveryReport), SpoolError> {
    Spool::open(fs.clone(), &dir(), limits)
}

/// Reads and acks everything; returns the ids.
fn drain(sp: &mut Spool<SimFs>) -> Vec<u64> {
    let mut ids = Vec::new();
    loop {
        let mut buf = Vec::new();
        let b = sp.read(5000, &mut buf).unwrap();
        if b.records == 0 {
            break;
        }
        let recs = records_in(&buf);
        assert_eq!(recs.len(), b.records as usize);
        assert_eq!(recs.iter().map(|r| r.1).sum::<u32>(), b.lines);
        ids.extend(recs.iter().map(|r| r.0));
        sp.ack(b.records);
    }
    sp.commit().unwrap();
    ids
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Appended since the last successful commit.
    Uncommitted,
    /// Must be delivered.
    Required,
    /// Was uncommitted at crash number .0: may be gone, but if one is gone, so are all
    /// later ones of that crash (the survivors are a prefix).
    Optional(u32),
    /// Acked, but the ack was not committed before a crash: may come again (a duplicate),
    /// or not.
    Redeliverable,
}

#[derive(Debug, Clone, Copy)]
struct Exp {
    id: u64,
    lines: u32,
    kind: Kind,
}

/// What the spool must hand out, kept beside it.
#[derive(Debug, Default)]
struct Oracle {
    expected: VecDeque<Exp>,
    in_flight: VecDeque<Exp>,
    acked_unpersisted: Vec<Exp>,
    dead_groups: HashSet<u32>,
    /// A record was read since the last crash: no more skipping redeliverable ones.
    resumed: bool,
    crashes: u32,
    duplicates: u64,
    delivered: u64,
}

impl Oracle {
    fn appended(&mut self, id: u64, lines: u32) {
        self.expected.push_back(Exp {
            id,
            lines,
            kind: Kind::Uncommitted,
        });
    }

    fn committed(&mut self) {
        for e in &mut self.expected {
            if e.kind == Kind::Uncommitted {
                e.kind = Kind::Required;
            }
        }
        self.acked_unpersisted.clear();
    }

    fn read(&mut self, recs: &[(u64, u32)], why: &str) {
        for &(id, lines) in recs {
            loop {
                let f = self
                    .expected
                    .pop_front()
                    .unwrap_or_else(|| panic!("{why}: read r{id}, expected nothing"));
                if f.id == id {
                    assert_eq!(f.lines, lines, "{why}: r{id} lines");
                    match f.kind {
                        Kind::Uncommitted => panic!("{why}: r{id} read before it was committed"),
                        Kind::Optional(g) if self.dead_groups.contains(&g) => {
                            panic!("{why}: r{id} came back after an earlier record of its crash was lost")
                        }
                        Kind::Redeliverable => self.duplicates += 1,
                        _ => {}
                    }
                    self.resumed = true;
                    self.in_flight.push_back(Exp {
                        kind: Kind::Required,
                        ..f
                    });
                    break;
                }
                match f.kind {
                    Kind::Redeliverable if !self.resumed => {}
                    Kind::Optional(g) => {
                        self.dead_groups.insert(g);
                    }
                    k => panic!("{why}: r{} ({k:?}) skipped: read r{id}", f.id),
                }
            }
        }
    }

    fn acked(&mut self, n: usize) {
        for e in self.in_flight.drain(..n) {
            self.acked_unpersisted.push(e);
            self.delivered += 1;
        }
    }

    fn rewound(&mut self) {
        while let Some(e) = self.in_flight.pop_back() {
            self.expected.push_front(e);
        }
    }

    /// The process stopped (crash or a plain close without commit).
    fn crashed(&mut self) {
        self.crashes += 1;
        let g = self.crashes;
        let mut front: VecDeque<Exp> = self
            .acked_unpersisted
            .drain(..)
            .map(|e| Exp {
                kind: Kind::Redeliverable,
                ..e
            })
            .collect();
        front.extend(self.in_flight.drain(..));
        for mut e in self.expected.drain(..) {
            if e.kind == Kind::Uncommitted {
                e.kind = Kind::Optional(g);
            }
            front.push_back(e);
        }
        self.expected = front;
        self.resumed = false;
    }

    fn check_end(&self, why: &str) {
        for e in &self.expected {
            assert!(
                matches!(e.kind, Kind::Optional(_) | Kind::Redeliverable),
                "{why}: r{} ({:?}) never delivered",
                e.id,
                e.kind
            );
        }
    }
}

/// Opens, crashing and retrying while the simulated process dies during recovery.
fn reopen(fs: &SimFs, limits: Limits, rng: &mut SplitMix64) -> Spool<SimFs> {
    loop {
        if rng.below(4) == 0 {
            fs.die_after_calls(rng.below(12) as u64);
        }
        match open(fs, limits) {
            Ok((sp, report)) => {
                assert_eq!(report.corrupt_records, 0, "{report}");
                assert_eq!(report.committed_bytes_lost, 0, "{report}");
                assert!(report.missing_segments.is_empty(), "{report}");
                assert_ne!(report.ledger, LedgerFound::Lost, "{report}");
                fs.die_after_calls(u64::MAX);
                return sp;
            }
            Err(_) => fs.crash(),
        }
    }
}

/// One run of the crash property: random appends, commits, reads, acks, rewinds, plain
/// restarts, and deaths at a random later I/O call (in appends, commits, reads, rotation
/// or recovery itself) followed by a power loss.
fn crash_run(seed: u64, steps: usize) -> (u64, u64, u32) {
    let mut rng = SplitMix64(seed);
    let fs = SimFs::new(seed ^ 0x5eed);
    let limits = Limits::new(1 << 40, 4096);
    let mut sp = reopen(&fs, limits, &mut rng);
    let mut o = Oracle::default();
    let mut next_id = 0u64;
    let why = |step: usize| format!("seed {seed} step {step}");
    let trace = std::env::var("SPOOL_TRACE").is_ok_and(|v| v == seed.to_string());
    for step in 0..steps {
        let r = rng.below(100);
        if trace {
            eprintln!(
                "step {step} r {r} next_id {next_id} stats {:?} ack {} cursor {} committed {}",
                sp.stats(),
                sp.ack,
                sp.cursor,
                sp.committed
            );
        }
        let ok = if r < 40 {
            let mut ok = true;
            for _ in 0..1 + rng.below(4) {
                let lines = 1 + rng.below(5) as u32;
                let p = payload(next_id, lines, &mut rng);
                match sp.append(&p, lines, T0 + step as u64) {
                    Ok(()) => {
                        o.appended(next_id, lines);
                        next_id += 1;
                    }
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            ok
        } else if r < 55 {
            let res = sp.commit();
            if res.is_ok() {
                o.committed();
            }
            res.is_ok()
        } else if r < 75 {
            let mut buf = Vec::new();
            match sp.read(1 + rng.below(3000), &mut buf) {
                Ok(b) => {
                    let recs = records_in(&buf);
                    assert_eq!(recs.len(), b.records as usize, "{}", why(step));
                    o.read(&recs, &why(step));
                    true
                }
                Err(_) => {
                    assert!(buf.is_empty());
                    false
                }
            }
        } else if r < 90 {
            let n = rng.below(o.in_flight.len() + 1);
            sp.ack(n as u32);
            o.acked(n);
            true
        } else if r < 93 {
            sp.rewind();
            o.rewound();
            true
        } else if r < 95 {
            // A plain stop: no commit, nothing lost by the disk.
            drop(sp);
            o.crashed();
            sp = reopen(&fs, limits, &mut rng);
            true
        } else {
            // The process will die at some later call.
            fs.die_after_calls(rng.below(25) as u64);
            true
        };
        if !ok {
            if trace {
                eprintln!(
                    "  failed: crash; expected {:?}",
                    o.expected
                        .iter()
                        .map(|e| (e.id, e.kind))
                        .collect::<Vec<_>>()
                );
            }
            drop(sp);
            fs.crash();
            o.crashed();
            sp = reopen(&fs, limits, &mut rng);
        }
        let st = sp.stats();
        assert_eq!(
            st.in_flight_records,
            o.in_flight.len() as u64,
            "{}",
            why(step)
        );
    }
    // The end: a clean restart, then everything out.
    if rng.below(2) == 0 {
        drop(sp);
        fs.crash();
        o.crashed();
        sp = reopen(&fs, limits, &mut rng);
    }
    fs.die_after_calls(u64::MAX);
    sp.commit().unwrap();
    o.committed();
    sp.rewind();
    o.rewound();
    loop {
        let mut buf = Vec::new();
        let b = sp.read(1 << 20, &mut buf).unwrap();
        if b.records == 0 {
            break;
        }
        o.read(&records_in(&buf), &why(steps));
        let n = o.in_flight.len();
        sp.ack(n as u32);
        o.acked(n);
    }
    sp.commit().unwrap();
    o.committed();
    o.check_end(&why(steps));
    let st = sp.stats();
    assert_eq!(
        (st.records, st.lines, st.in_flight_records),
        (0, 0, 0),
        "{}: {:?}",
        why(steps),
        sp.segments
    );
    assert!(st.segments <= 1, "{st:?}");
    assert_eq!(sp.counters().records_corrupt, 0);
    (o.delivered, o.duplicates, o.crashes)
}

#[test]
fn every_committed_record_is_delivered_once_in_order_across_crashes() {
    let (mut delivered, mut dups, mut crashes) = (0, 0, 0);
    // SPOOL_SEEDS=N runs more (a soak); SPOOL_TRACE=SEED prints one run's steps.
    let seeds = std::env::var("SPOOL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    for seed in 0..seeds {
        let (d, u, c) = crash_run(seed, 250);
        delivered += d;
        dups += u;
        crashes += c;
    }
    // The run exercised what it claims to.
    assert!(delivered > 10_000, "{delivered}");
    assert!(crashes > 1_000, "{crashes}");
    assert!(dups > 0, "no redelivery was ever exercised");
}

/// The cap: random appends, reads, acks, rewinds and commits under a small cap. Every
/// record is delivered or counted dropped, the dropped ones are always the oldest, the
/// newest is kept, and the segments never pass the cap.
#[test]
fn the_cap_drops_the_oldest_and_counts_every_line() {
    for seed in 0..60 {
        let mut rng = SplitMix64(seed);
        let fs = SimFs::new(seed);
        let limits = Limits::new(64 << 10, 4096);
        let (mut sp, _) = open(&fs, limits).unwrap();
        let mut expected: VecDeque<(u64, u32)> = VecDeque::new();
        let mut in_flight: VecDeque<(u64, u32)> = VecDeque::new();
        let (mut skipped_lines, mut appended_lines, mut delivered_lines) = (0u64, 0u64, 0u64);
        let mut next_id = 0;
        let mut last_delivered = None;
        for step in 0..800 {
            let r = rng.below(100);
            if r < 60 {
                let lines = 1 + rng.below(8) as u32;
                sp.append(&payload(next_id, lines, &mut rng), lines, T0 + step)
                    .unwrap();
                expected.push_back((next_id, lines));
                appended_lines += u64::from(lines);
                next_id += 1;
            } else if r < 72 {
                sp.commit().unwrap();
            } else if r < 82 {
                let mut buf = Vec::new();
                sp.read(rng.below(600), &mut buf).unwrap();
                for (id, lines) in records_in(&buf) {
                    loop {
                        let (e, l) = expected.pop_front().expect("read an unknown record");
                        if e == id {
                            in_flight.push_back((id, lines));
                            break;
                        }
                        skipped_lines += u64::from(l);
                    }
                }
            } else if r < 97 {
                let n = rng.below(in_flight.len() + 1);
                sp.ack(n as u32);
                for (id, l) in in_flight.drain(..n) {
                    delivered_lines += u64::from(l);
                    last_delivered = Some(id);
                }
            } else {
                sp.rewind();
                while let Some(x) = in_flight.pop_back() {
                    expected.push_front(x);
                }
            }
            assert!(sp.stats().bytes <= limits.bytes_max, "seed {seed}");
        }
        sp.commit().unwrap();
        sp.rewind();
        while let Some(x) = in_flight.pop_back() {
            expected.push_front(x);
        }
        loop {
            let mut buf = Vec::new();
            let b = sp.read(1 << 20, &mut buf).unwrap();
            if b.records == 0 {
                break;
            }
            for (id, lines) in records_in(&buf) {
                loop {
                    let (e, l) = expected.pop_front().unwrap();
                    if e == id {
                        delivered_lines += u64::from(lines);
                        last_delivered = Some(id);
                        break;
                    }
                    skipped_lines += u64::from(l);
                }
            }
            sp.ack(b.records);
            sp.commit().unwrap();
        }
        assert!(expected.is_empty(), "seed {seed}: {expected:?}");
        let c = sp.counters();
        assert!(
            c.dropped_lines_spool_full > 0,
            "seed {seed}: the cap was never hit"
        );
        assert_eq!(c.dropped_lines_spool_full, skipped_lines, "seed {seed}");
        assert_eq!(
            appended_lines,
            delivered_lines + skipped_lines,
            "seed {seed}"
        );
        assert_eq!(
            last_delivered,
            Some(next_id - 1),
            "seed {seed}: newest lost"
        );
    }
}

/// Appends `n` records (ids from `first`), committing at the end.
fn fill(sp: &mut Spool<SimFs>, first: u64, n: u64, rng: &mut SplitMix64) {
    for id in first..first + n {
        sp.append(&payload(id, 2, rng), 2, T0 + id).unwrap();
    }
    sp.commit().unwrap();
}

fn segment_files(fs: &SimFs) -> Vec<PathBuf> {
    fs.names(&dir())
        .into_iter()
        .filter(|n| n.ends_with(".seg"))
        .map(|n| dir().join(n))
        .collect()
}

/// Offsets of the records in a segment's bytes.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut off = format::SEGMENT_HEADER_BYTES;
    while off < bytes.len() {
        v.push(off);
        match format::decode_record(&bytes[off..]) {
            format::Decoded::Record { frame_bytes, .. } => off += frame_bytes,
            d => panic!("{d:?}"),
        }
    }
    v
}

fn limits() -> Limits {
    Limits::new(1 << 30, 4096)
}

#[test]
fn a_flipped_byte_skips_one_record_and_delivers_the_rest() {
    for (what, field) in [("payload", 30), ("length", 1), ("checksum", 5)] {
        let fs = SimFs::new(1);
        let mut rng = SplitMix64(1);
        let (mut sp, _) = open(&fs, limits()).unwrap();
        fill(&mut sp, 0, 60, &mut rng);
        drop(sp);
        let segs = segment_files(&fs);
        assert!(segs.len() >= 3, "{segs:?}");
        let mut b = fs.read(&segs[1]).unwrap();
        let offs = record_offsets(&b);
        let victim = offs[2];
        b[victim + field] ^= 0x40;
        fs.write(&segs[1], b);
        let (mut sp, report) = open(&fs, limits()).unwrap();
        assert_eq!(report.corrupt_records, 1, "{what}: {report}");
        assert!(!report.is_clean());
        let ids = drain(&mut sp);
        assert_eq!(ids.len(), 59, "{what}");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{what}: order");
        assert_eq!(sp.counters().records_corrupt, 1, "{what}");
        // The damaged record is the only one missing.
        let lost: Vec<u64> = (0..60).filter(|i| !ids.contains(i)).collect();
        assert_eq!(lost.len(), 1, "{what}");
    }
}

#[test]
fn a_torn_tail_past_the_committed_end_is_truncated_silently() {
    let fs = SimFs::new(2);
    let mut rng = SplitMix64(2);
    let (mut sp, _) = open(&fs, limits()).unwrap();
    fill(&mut sp, 0, 10, &mut rng);
    drop(sp);
    let last = segment_files(&fs).pop().unwrap();
    let mut b = fs.read(&last).unwrap();
    // Half a record, as a crash mid-write leaves it.
    let mut rec = Vec::new();
    format::encode_record(
        format::RecordMeta {
            lines: 1,
            spooled_ms: T0,
        },
        b"r99 x\n",
        &mut rec,
    );
    b.extend_from_slice(&rec[..rec.len() / 2]);
    let torn = rec.len() / 2;
    fs.write(&last, b);
    let (mut sp, report) = open(&fs, limits()).unwrap();
    assert_eq!(report.torn_tail_bytes, torn as u64, "{report}");
    assert!(report.is_clean(), "{report}");
    assert_eq!(drain(&mut sp), (0..10).collect::<Vec<_>>());
    // And the spool goes on.
    fill(&mut sp, 10, 3, &mut rng);
    assert_eq!(drain(&mut sp), vec![10, 11, 12]);
}

#[test]
fn committed_bytes_cut_off_are_reported_and_the_rest_delivered() {
    let fs = SimFs::new(3);
    let mut rng = SplitMix64(3);
    let (mut sp, _) = open(&fs, limits()).unwrap();
    fill(&mut sp, 0, 8, &mut rng);
    drop(sp);
    let last = segment_files(&fs).pop().unwrap();
    let mut b = fs.read(&last).unwrap();
    let offs = record_offsets(&b);
    let cut = offs[offs.len() - 1] + 5;
    b.truncate(cut);
    fs.write(&last, b);
    let (mut sp, report) = open(&fs, limits()).unwrap();
    assert!(report.committed_bytes_lost > 0, "{report}");
    assert_eq!(report.torn_tail_bytes, 5);
    let ids = drain(&mut sp);
    assert_eq!(ids, (0..7).collect::<Vec<_>>());
}

#[test]
fn a_missing_segment_is_reported_and_skipped() {
    let fs = SimFs::new(4);
    let mut rng = SplitMix64(4);
    let (mut sp, _) = open(&fs, limits()).unwrap();
    fill(&mut sp, 0, 60, &mut rng);
    drop(sp);
    let segs = segment_files(&fs);
    let gone = &segs[1];
    let lost = record_offsets(&fs.read(gone).unwrap()).len();
    fs.unlink(gone);
    let seq = format::parse_segment_name(gone.file_name().unwrap().to_str().unwrap()).unwrap();
    let (mut sp, report) = open(&fs, limits()).unwrap();
    assert_eq!(report.missing_segments, vec![seq..seq + 1], "{report}");
    let ids = drain(&mut sp);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert!(lost > 0);
    assert_eq!(ids.len() + lost, 60);
}

#[test]
fn a_missing_segment_holding_the_read_position_does_not_stall_replay() {
    let fs = SimFs::new(16);
    let mut rng = SplitMix64(16);
    let (mut sp, _) = open(&fs, limits()).unwrap();
    fill(&mut sp, 0, 80, &mut rng);
    let segs = segment_files(&fs);
    assert!(segs.len() >= 4, "{segs:?}");
    let in_second = record_offsets(&fs.read(&segs[0]).unwrap()).len() as u64;
    // Deliver into the middle of the second segment.
    let mut acked = 0;
    while acked < in_second + 2 {
        let mut buf = Vec::new();
        let b = sp.read(1, &mut buf).unwrap();
        sp.ack(b.records);
        acked += u64::from(b.records);
    }
    sp.commit().unwrap();
    drop(sp);
    let second = record_offsets(&fs.read(&segs[1]).unwrap()).len() as u64;
    fs.unlink(&segs[1]);
    let (mut sp, report) = open(&fs, limits()).unwrap();
    assert!(!report.is_clean(), "{report}");
    let ids = drain(&mut sp);
    assert_eq!(ids.first(), Some(&(in_second + second)), "{report}");
    assert_eq!(ids.last(), Some(&79));
}

#[test]
fn a_lost_ledger_replays_everything_and_a_torn_slot_falls_back() {
    let fs = SimFs::new(5);
    let mut rng = SplitMix64(5);
    let (mut sp, _) = open(&fs, limits()).unwrap();
    fill(&mut sp, 0, 20, &mut rng);
    let mut buf = Vec::new();
    let b = sp.read(300, &mut buf).unwrap();
    sp.ack(b.records);
    sp.commit().unwrap();
    let acked = b.records as u64;
    // One more ack, committed to the other slot; then tear that slot.
    let b2 = sp.read(1, &mut buf).unwrap();
    sp.ack(b2.records);
    sp.commit().unwrap();
    drop(sp);
    let ledger = dir().join(format::LEDGER_NAME);
    let mut l = fs.read(&ledger).unwrap();
    let gen_slot = {
        let a = format::decode_ledger(&l[..64]).unwrap().generation;
        let b = format::decode_ledger(&l[64..]).unwrap().generation;
        if a > b {
            0
        } else {
            64
        }
    };
    l[gen_slot + 20] ^= 1;
    fs.write(&ledger, l);
    let (mut sp, report) = open(&fs, limits()).unwrap();
    assert_eq!(report.ledger, LedgerFound::Valid);
    assert_eq!(drain(&mut sp)[0], acked, "the older slot's position");
}

#[test]
fn a_lost_ledger_with_segments_replays_from_the_first() {
    let fs = SimFs::new(6);
    let mut rng = SplitMix64(6);
    let (mut sp, _) = open(&fs, limits()).unwrap();
    fill(&mut sp, 0, 30, &mut rng);
    let mut buf = Vec::new();
    let b = sp.read(100, &mut buf).unwrap();
    sp.ack(b.records);
    sp.commit().unwrap();
    drop(sp);
    fs.unlink(&dir().join(format::LEDGER_NAME));
    let (mut sp, report) = open(&fs, limits()).unwrap();
    assert_eq!(report.ledger, LedgerFound::Lost, "{report}");
    assert!(!report.is_clean());
    let ids = drain(&mut sp);
    // The first segment (with the acked records) may have been deleted already; what
    // exists is replayed from its start, in order.
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*ids.last().unwrap(), 29);
    assert!(ids[0] <= b.records as u64);
}

#[test]
fn unknown_files_are_reported_and_left_alone() {
    let fs = SimFs::new(7);
    let (sp, _) = open(&fs, limits()).unwrap();
    drop(sp);
    let stray = dir().join("notes.txt");
    let mut f = fs.open(&stray, true).unwrap();
    f.write_all_at(b"hello", 0).unwrap();
    let (_, report) = open(&fs, limits()).unwrap();
    assert_eq!(report.unknown_files, vec!["notes.txt".to_string()]);
    assert_eq!(fs.read(&stray).unwrap(), b"hello");
}

#[test]
fn an_unwritable_directory_is_an_error_not_a_panic() {
    let fs = SimFs::new(8);
    fs.set_deny_create(true);
    let e = open(&fs, limits()).unwrap_err();
    assert!(
        matches!(&e, SpoolError::Io { op: IoOp::CreateDir, source, .. }
            if source.raw_os_error() == Some(libc::EACCES)),
        "{e}"
    );
    // Writable at open, then not: the rotation fails, appends stop, committed data is
    // still delivered.
    fs.set_deny_create(false);
    let mut rng = SplitMix64(8);
    let (mut sp, _) = open(&fs, limits()).unwrap();
    fill(&mut sp, 0, 5, &mut rng);
    fs.set_deny_create(true);
    let mut res = Ok(());
    for id in 5..100 {
        res = sp.append(&payload(id, 2, &mut rng), 2, T0);
        if res.is_err() {
            break;
        }
    }
    let e = res.unwrap_err();
    assert!(matches!(e, SpoolError::Io { op: IoOp::Open, .. }), "{e}");
    assert!(sp.is_failed());
    assert!(matches!(
        sp.append(b"r1 x\n", 1, T0),
        Err(SpoolError::Failed { .. })
    ));
    let c = sp.counters().clone();
    assert!(c.dropped_lines_io_error > 0);
    fs.set_deny_create(false);
    let ids = drain(&mut sp);
    assert_eq!(&ids[..5], &[0, 1, 2, 3, 4]);
}

#[test]
fn a_full_disk_stops_appends_counts_the_loss_and_recovers_after_reopen() {
    let fs = SimFs::new(9);
    let mut rng = SplitMix64(9);
    let (mut sp, _) = open(&fs, Limits::new(1 << 30, 1 << 20)).unwrap();
    fill(&mut sp, 0, 50, &mut rng);
    fs.set_space_left(Some(10_000));
    let mut appended = 50;
    let err = loop {
        match sp.append(&payload(appended, 2, &mut rng), 2, T0) {
            Ok(()) => appended += 1,
            Err(e) => break e,
        }
        if appended % 7 == 0 {
            if let Err(e) = sp.commit() {
                break e;
            }
        }
    };
    assert!(err.is_no_space(), "{err}");
    assert!(sp.is_failed());
    assert!(sp.stats().failed);
    let c = sp.counters().clone();
    assert!(c.io_errors >= 1);
    // Everything committed is still delivered, and acks still commit.
    let ids = drain(&mut sp);
    assert!(ids.len() >= 50, "{}", ids.len());
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        ids.len() as u64 + c.dropped_records_io_error,
        appended,
        "every record delivered or counted"
    );
    drop(sp);
    // Space again: reopen trims the partial write and takes appends.
    fs.set_space_left(None);
    let (mut sp, report) = open(&fs, Limits::new(1 << 30, 1 << 20)).unwrap();
    assert_eq!(report.corrupt_records, 0, "{report}");
    fill(&mut sp, 1000, 3, &mut rng);
    let ids = drain(&mut sp);
    assert_eq!(&ids[ids.len() - 3..], &[1000, 1001, 1002]);
}

#[test]
fn a_failed_fsync_stops_appends() {
    let fs = SimFs::new(10);
    let mut rng = SplitMix64(10);
    let (mut sp, _) = open(&fs, limits()).unwrap();
    fill(&mut sp, 0, 3, &mut rng);
    sp.append(b"r3 x\n", 1, T0).unwrap();
    fs.set_fail_sync(true);
    let e = sp.commit().unwrap_err();
    assert!(matches!(e, SpoolError::Io { op: IoOp::Sync, .. }), "{e}");
    assert_eq!(sp.counters().dropped_lines_io_error, 1);
    fs.set_fail_sync(false);
    assert_eq!(drain(&mut sp), vec![0, 1, 2]);
}

#[test]
fn writes_are_group_committed_not_per_record() {
    let fs = SimFs::new(11);
    let mut rng = SplitMix64(11);
    let (mut sp, _) = open(&fs, Limits::new(1 << 30, 1 << 20)).unwrap();
    let (_, syncs0) = fs.written();
    for id in 0..1000 {
        sp.append(&payload(id, 3, &mut rng), 3, T0).unwrap();
    }
    sp.commit().unwrap();
    let (_, syncs) = fs.written();
    // The segment, the directory (new segment) and the ledger.
    assert!(
        syncs - syncs0 <= 3,
        "{} syncs for one commit",
        syncs - syncs0
    );
    let before = fs.written().1;
    sp.commit().unwrap();
    assert_eq!(fs.written().1, before, "an idle commit syncs nothing");
}

#[test]
fn stats_track_bytes_age_and_replay() {
    let fs = SimFs::new(12);
    let (mut sp, _) = open(&fs, limits()).unwrap();
    assert_eq!(sp.stats().oldest_ms, None);
    sp.append(b"r0 a\nr0 b\n", 2, T0 + 1).unwrap();
    sp.append(b"r1 c\n", 1, T0 + 2).unwrap();
    let st = sp.stats();
    assert_eq!((st.records, st.lines), (2, 3));
    assert_eq!((st.oldest_ms, st.newest_ms), (Some(T0 + 1), Some(T0 + 2)));
    let mut buf = Vec::new();
    assert_eq!(
        sp.read(100, &mut buf).unwrap().records,
        0,
        "not committed yet"
    );
    sp.commit().unwrap();
    let b = sp.read(1, &mut buf).unwrap();
    assert_eq!((b.records, b.lines), (1, 2));
    assert_eq!(sp.stats().oldest_ms, Some(T0 + 1));
    sp.ack(1);
    assert_eq!(sp.stats().oldest_ms, Some(T0 + 2));
    assert_eq!(sp.stats().records, 1);
    let c = sp.counters();
    assert_eq!((c.spooled_lines, c.replayed_lines), (3, 2));
    // Recovery sees the same.
    sp.commit().unwrap();
    drop(sp);
    let (sp, report) = open(&fs, limits()).unwrap();
    assert_eq!((report.records, report.lines), (1, 1));
    assert_eq!(sp.stats().oldest_ms, Some(T0 + 2));
}

#[test]
fn a_record_too_large_is_refused() {
    let fs = SimFs::new(13);
    let (mut sp, _) = open(&fs, limits()).unwrap();
    let max = sp.limits().payload_bytes_max();
    assert!(matches!(
        sp.append(&vec![b'\n'; max + 1], 1, T0),
        Err(SpoolError::RecordTooLarge { .. })
    ));
    sp.append(&vec![b'\n'; max], 1, T0).unwrap();
    assert!(!sp.is_failed());
}

#[test]
fn destination_names_escape_to_one_directory_each() {
    for name in [
        "10.0.0.1:2003",
        "a:b=c",
        "a_b",
        "../etc",
        ".hidden",
        "x/y",
        "ü",
    ] {
        let e = escape_name(name);
        assert!(!e.contains('/') && !e.starts_with('.'), "{e}");
        assert_eq!(unescape_name(&e).as_deref(), Some(name));
    }
    assert_ne!(escape_name("a:b"), escape_name("a_b"));
    let d = destination_dir(Path::new("/s"), "h:1=a", 3);
    assert_eq!(
        spool_owner(Path::new("/s"), &d),
        Some(("h:1=a".to_string(), 3))
    );
    assert_eq!(spool_owner(Path::new("/s"), Path::new("/s/x")), None);
    assert_eq!(
        destination_dir(Path::new("/s"), "h:1", 2),
        Path::new("/s/h%3A1/shard-2")
    );
}

/// The real file system: a round trip, and `inspect` agreeing with what was written.
#[test]
fn real_files_round_trip_and_inspect() {
    let root = std::env::temp_dir().join(format!("cadent-spool-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let d = destination_dir(&root, "127.0.0.1:2003", 0);
    let mut rng = SplitMix64(14);
    let (mut sp, report) = Spool::open(io::FsIo, &d, limits()).unwrap();
    assert_eq!(report.ledger, LedgerFound::New);
    for id in 0..40 {
        sp.append(&payload(id, 2, &mut rng), 2, T0 + id).unwrap();
    }
    sp.commit().unwrap();
    drop(sp);
    let found = find_spools(&io::FsIo, &root).unwrap();
    assert_eq!(found, vec![d.clone()]);
    let ins = inspect(&io::FsIo, &d).unwrap();
    assert!(ins.problems().is_empty(), "{:?}", ins.problems());
    assert_eq!(ins.segments.iter().map(|s| s.scan.records).sum::<u64>(), 40);
    let (mut sp, report) = Spool::open(io::FsIo, &d, limits()).unwrap();
    assert!(report.is_clean(), "{report}");
    let mut ids = Vec::new();
    loop {
        let mut buf = Vec::new();
        let b = sp.read(4000, &mut buf).unwrap();
        if b.records == 0 {
            break;
        }
        ids.extend(records_in(&buf).iter().map(|r| r.0));
        sp.ack(b.records);
    }
    sp.commit().unwrap();
    assert_eq!(ids, (0..40).collect::<Vec<_>>());
    std::fs::remove_dir_all(&root).unwrap();
}

/// A real full disk needs a small tmpfs, which only a privileged process can mount; the
/// test runs where it can (root with CAP_SYS_ADMIN) and says so where it cannot.
#[test]
fn a_real_full_tmpfs() {
    let mnt = std::env::temp_dir().join(format!("cadent-spool-tmpfs-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("a_real_full_tmpfs: cannot mount a tmpfs here; skipped (the simulated ENOSPC test covers the logic)");
        let _ = std::fs::remove_dir(&mnt);
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let d = mnt.join("d").join("shard-0");
        let mut rng = SplitMix64(15);
        let lim = Limits::new(1 << 30, 64 << 10);
        let (mut sp, _) = Spool::open(io::FsIo, &d, lim).unwrap();
        let mut appended = 0u64;
        let err = loop {
            if let Err(e) = sp.append(&payload(appended, 4, &mut rng), 4, T0) {
                break e;
            }
            appended += 1;
            if appended % 10 == 0 {
                if let Err(e) = sp.commit() {
                    break e;
                }
            }
        };
        assert!(err.is_no_space(), "{err}");
        let mut n = 0;
        loop {
            let mut buf = Vec::new();
            let b = sp.read(1 << 16, &mut buf).unwrap();
            if b.records == 0 {
                break;
            }
            n += u64::from(b.records);
            sp.ack(b.records);
            sp.commit().unwrap();
        }
        assert_eq!(n + sp.counters().dropped_records_io_error, appended);
    });
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let _ = std::fs::remove_dir(&mnt);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

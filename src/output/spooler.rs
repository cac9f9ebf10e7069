//! The spool task of one destination on one shard: it appends what the queue hands it
//! (see the mode switch in [`queue`](super::queue)), commits every
//! `spool_fsync_interval_ms`, and reads the spool back for the writer while the
//! destination is connected.
//!
//! Every spool call may block on the disk, so none runs on the shard's executor: each
//! round runs on the shard's blocking helper thread (`glommio::executor().spawn_blocking`,
//! one thread per shard), the [`Spool`] moving there and back. Readers never wait for it:
//! they push into the queue, whose tail is bounded in memory. One destination's round may
//! wait behind another destination's round of the same shard on the helper thread; it
//! never holds up a reader or a writer.
//!
//! A spool that fails (ENOSPC, EIO, EACCES) takes no more appends: the queue falls back to
//! memory with drops counted, what the spool had committed is still replayed, and once it
//! is empty the task reopens it every [`REOPEN_INTERVAL`] (recovery trims any partial
//! write) until it takes appends again.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;

use super::queue::{Batch, DestQueue, SpoolJob, SpoolOutcome, SpoolState};
use super::spool::io::{FsIo, SpoolIo};
use super::spool::{Limits, RecoveryReport, Spool, SpoolCounters, SpoolError};

/// Where and how a destination spools on one shard.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// The destination's name (for logs).
    pub name: String,
    /// Its spool directory on this shard (`spool::destination_dir`).
    pub dir: PathBuf,
    /// This shard's share of the cap, and the segment size.
    pub limits: Limits,
    /// Group commit interval.
    pub fsync_interval: Duration,
    /// Lines found in the spool at start are counted as recovered (a new destination);
    /// false when a task takes over from an earlier one of the same destination, whose
    /// lines they are.
    pub inherit: bool,
}

/// How often a failed spool, once empty, is reopened.
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(10);

/// How long replay waits after a failed read before it tries again.
const READ_RETRY: Duration = Duration::from_secs(1);

/// What one round did, besides what goes back to the queue.
#[derive(Debug, Default)]
pub struct Round {
    /// For the queue.
    pub outcome: SpoolOutcome,
    /// Buffers of appended batches, for reuse.
    pub recycled: Vec<Vec<u8>>,
    /// The error that failed the spool, or a failed read.
    pub error: Option<SpoolError>,
    /// A read failed (the spool did not fail; replay retries later).
    pub read_failed: bool,
    /// Whether the round committed.
    pub committed: bool,
    /// Records appended.
    pub appended: u64,
    /// Records acked.
    pub acked: u32,
    /// Lines of batches too large for a segment, dropped (counted as spool-full drops).
    pub too_large_lines: u64,
}

/// One round of spool I/O, synchronous (the blocking helper runs it; tests run it
/// directly over a simulated disk): ack what was delivered, append the job's batches in
/// order (stopping at the first failure), commit when `commit` (or when replay has read
/// everything committed and more was appended), and read back up to `job.read_bytes`.
pub fn run_round<Io: SpoolIo>(
    spool: &mut Spool<Io>,
    job: SpoolJob,
    now_ms: u64,
    commit: bool,
) -> Round {
    let mut r = Round::default();
    let in_flight = spool.stats().in_flight_records;
    debug_assert!(
        u64::from(job.acks) <= in_flight,
        "acks beyond what was read"
    );
    r.acked = job.acks.min(in_flight as u32);
    spool.ack(r.acked);
    let mut appends = job.appends.into_iter();
    while let Some(b) = appends.next() {
        match spool.append(&b.data, b.lines, now_ms) {
            Ok(()) => {
                r.appended += 1;
                r.recycled.push(b.data);
            }
            Err(SpoolError::RecordTooLarge { bytes, max }) => {
                // Only a spool cap far below flush_bytes gets here (config says so).
                tracing::warn!(bytes, max, "batch larger than a spool segment; dropped");
                r.too_large_lines += u64::from(b.lines);
                r.recycled.push(b.data);
            }
            Err(e) => {
                r.outcome.unappended.push(b);
                r.outcome.unappended.extend(appends.by_ref());
                r.error = Some(e);
                break;
            }
        }
    }
    if commit {
        r.committed = true;
        if let Err(e) = spool.commit() {
            r.error.get_or_insert(e);
        }
    }
    if job.read_bytes > 0 {
        let mut buf = Vec::with_capacity(job.read_bytes.min(super::queue::REPLAY_READ_BYTES));
        let mut read = spool.read(job.read_bytes, &mut buf);
        if matches!(read, Ok(b) if b.records == 0) && unread(spool) && !r.committed {
            // Replay caught up with the committed end: commit what was appended since,
            // so the writer gets it now rather than an interval later.
            r.committed = true;
            match spool.commit() {
                Ok(()) => read = spool.read(job.read_bytes, &mut buf),
                Err(e) => {
                    r.error.get_or_insert(e);
                }
            }
        }
        match read {
            Ok(b) if b.records > 0 => {
                r.outcome.replay = Some(Batch {
                    data: buf,
                    lines: b.lines,
                    records: b.records,
                    resend: false,
                })
            }
            Ok(_) => {}
            Err(e) => {
                r.read_failed = true;
                r.error.get_or_insert(e);
            }
        }
    }
    r.outcome.unread = unread(spool);
    r.outcome.failed = spool.is_failed();
    r
}

/// Whether the spool holds records the writer has not been handed.
fn unread<Io: SpoolIo>(spool: &Spool<Io>) -> bool {
    let st = spool.stats();
    st.records > st.in_flight_records
}

/// Publishes a spool's counters and gauges into the destination's counters; `base` holds
/// the totals of earlier instances of this spool (reopened after a failure).
pub fn publish<Io: SpoolIo>(q: &DestQueue, spool: Option<&Spool<Io>>, base: &SpoolCounters) {
    let (c, st) = match spool {
        Some(s) => (s.counters().clone(), s.stats()),
        None => Default::default(),
    };
    q.count(|d| {
        d.spooled_lines = base.spooled_lines + c.spooled_lines;
        d.spooled_bytes = base.spooled_bytes + c.spooled_bytes;
        d.dropped_lines_spool_full = base.dropped_lines_spool_full + c.dropped_lines_spool_full;
        d.dropped_lines_spool_error = base.dropped_lines_io_error + c.dropped_lines_io_error;
        d.spool_records_corrupt = base.records_corrupt + c.records_corrupt;
        d.spool_bytes_written = base.bytes_written + c.bytes_written;
        d.spool_io_errors = base.io_errors + c.io_errors;
        d.spool_bytes = st.bytes;
        d.spool_lines = st.lines;
    });
    q.set_spool_oldest_ms(st.oldest_ms);
}

fn add_counters(base: &mut SpoolCounters, c: &SpoolCounters) {
    base.spooled_lines += c.spooled_lines;
    base.spooled_bytes += c.spooled_bytes;
    base.dropped_lines_spool_full += c.dropped_lines_spool_full;
    base.dropped_lines_io_error += c.dropped_lines_io_error;
    base.records_corrupt += c.records_corrupt;
    base.bytes_written += c.bytes_written;
    base.io_errors += c.io_errors;
}

/// Runs `f` on the shard's blocking helper thread.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(f).await
}

fn open(s: &SpoolSettings) -> Result<(Spool<FsIo>, RecoveryReport), SpoolError> {
    Spool::open(FsIo, &s.dir, s.limits)
}

fn log_recovery(s: &SpoolSettings, report: &RecoveryReport) {
    if report.is_clean() {
        if report.records > 0 {
            tracing::info!(destination = %s.name, dir = %s.dir.display(), %report, "spool recovered");
        }
    } else {
        tracing::warn!(destination = %s.name, dir = %s.dir.display(), %report, "spool recovered with damage");
    }
}

/// The spool directories a shard's spool tasks have open: a member removed and added
/// again gets a new destination (and task) for the same directory, which waits for the
/// old task to finish delivering it.
pub type OpenSpools = Rc<RefCell<HashSet<PathBuf>>>;

/// Holds a directory in [`OpenSpools`] while a task uses it.
struct DirHold(OpenSpools, PathBuf);

impl Drop for DirHold {
    fn drop(&mut self) {
        self.0.borrow_mut().remove(&self.1);
    }
}

/// How often a spool task looks whether the directory it needs is free yet.
const DIR_WAIT: Duration = Duration::from_millis(100);

/// Drives the spool of `q` until the queue is closed and everything delivered, or the
/// shard's final round ([`DestQueue::finish_spool`]) has spooled what memory held.
pub async fn run(q: Rc<DestQueue>, settings: SpoolSettings, open_spools: OpenSpools) {
    let s = settings;
    if open_spools.borrow().contains(&s.dir) {
        // A retired destination of the same name is still delivering its spool. This one
        // runs from memory meanwhile (what it must spool waits in its bounded tail).
        q.spool_returned(SpoolOutcome::default());
        while open_spools.borrow().contains(&s.dir) {
            if q.finishing_spool() {
                return;
            }
            glommio::timer::sleep(DIR_WAIT).await;
        }
    }
    open_spools.borrow_mut().insert(s.dir.clone());
    let _hold = DirHold(open_spools, s.dir.clone());
    let mut spool: Option<Spool<FsIo>> = None;
    let mut base = SpoolCounters::default();
    let mut failed_at: Option<Instant> = None;
    // What a previous run left goes first: open it now if there is one; otherwise the
    // spool is created when something first needs it.
    let s2 = s.clone();
    let found =
        blocking(move || super::spool::is_spool_dir(&FsIo, &s2.dir).then(|| open(&s2))).await;
    match found {
        Some(Ok((sp, report))) => {
            log_recovery(&s, &report);
            if s.inherit {
                q.count(|d| d.recovered_lines += report.lines);
            }
            q.spool_returned(SpoolOutcome {
                unread: report.records > 0,
                ..Default::default()
            });
            spool = Some(sp);
        }
        Some(Err(e)) => {
            tracing::error!(destination = %s.name, error = %e, "cannot open the spool; memory only until it can be reopened");
            failed_at = Some(Instant::now());
            base.io_errors += 1;
            q.spool_returned(SpoolOutcome {
                failed: true,
                ..Default::default()
            });
        }
        None => q.spool_returned(SpoolOutcome::default()),
    }
    publish(&q, spool.as_ref(), &base);

    let mut last_commit = Instant::now();
    let mut dirty = false;
    let mut replay_paused_until: Option<Instant> = None;
    let mut logged = Instant::now() - Duration::from_secs(60);
    loop {
        // Sleep until there is work, a commit falls due, or a retry is due.
        if !q.finishing_spool() && !q.spool_idle_done() && !q.spool_job_ready() {
            // Acks arrive without waking the task: they wait for the next commit tick. A
            // closed (retired) queue is looked at every tick too, to see it is done.
            let commit_at =
                (spool.is_some() || q.is_closed()).then(|| last_commit + s.fsync_interval);
            let reopen_at = failed_at.map(|t| t + REOPEN_INTERVAL);
            let wake_at = [commit_at, reopen_at, replay_paused_until]
                .into_iter()
                .flatten()
                .min();
            let now = Instant::now();
            match wake_at {
                Some(t) if t <= now => {}
                Some(t) => future::or(q.spool_wanted(), glommio::timer::sleep(t - now)).await,
                None => q.spool_wanted().await,
            }
        }
        let now = Instant::now();
        if replay_paused_until.is_some_and(|t| now >= t) {
            replay_paused_until = None;
            q.pause_replay(false);
        }
        let finishing = q.finishing_spool();
        let last = finishing || q.spool_idle_done();

        // A failed spool, emptied: reopen it (recovery trims what the failure left).
        if let Some(t) = failed_at {
            let empty = spool.as_ref().is_none_or(|sp| sp.is_empty()) && !q.has_acks();
            if empty && now >= t + REOPEN_INTERVAL && !last {
                if let Some(old) = spool.take() {
                    add_counters(&mut base, old.counters());
                }
                let s2 = s.clone();
                match blocking(move || open(&s2)).await {
                    Ok((sp, report)) => {
                        log_recovery(&s, &report);
                        tracing::info!(destination = %s.name, "spool reopened: it takes data again");
                        spool = Some(sp);
                        failed_at = None;
                        q.spool_reopened();
                    }
                    Err(e) => {
                        base.io_errors += 1;
                        if logged.elapsed() >= Duration::from_secs(10) {
                            logged = Instant::now();
                            tracing::warn!(destination = %s.name, error = %e, "spool still cannot be reopened");
                        }
                        failed_at = Some(now);
                    }
                }
                publish(&q, spool.as_ref(), &base);
                continue;
            }
        }

        let job = q.take_spool_job(finishing);
        let commit_due = now >= last_commit + s.fsync_interval;
        if !(dirty || job.acks > 0) && commit_due {
            // Nothing to commit: the next tick is an interval from now.
            last_commit = now;
        }
        let commit_due = commit_due && (dirty || job.acks > 0);
        if job.is_empty() && !commit_due && !last {
            continue;
        }
        if spool.is_none() && job.appends.is_empty() {
            // Nothing was ever spooled here (or the spool could not be opened): nothing
            // to ack, commit or read.
            if last {
                break;
            }
            q.spool_returned(SpoolOutcome::default());
            continue;
        }
        let commit = commit_due || last;
        let s2 = s.clone();
        let sp = spool.take();
        let now_ms = crate::shard::pipeline::unix_ms() as u64;
        let (sp, round) = blocking(move || {
            let sp = match sp {
                Some(sp) => Ok(sp),
                None => open(&s2).map(|(sp, report)| {
                    log_recovery(&s2, &report);
                    sp
                }),
            };
            match sp {
                Ok(mut sp) => {
                    let r = run_round(&mut sp, job, now_ms, commit);
                    (Some(sp), r)
                }
                Err(e) => {
                    let mut r = Round::default();
                    r.outcome.unappended = job.appends;
                    r.outcome.failed = true;
                    r.error = Some(e);
                    (None, r)
                }
            }
        })
        .await;
        spool = sp;
        if round.committed {
            last_commit = Instant::now();
            dirty = false;
        } else if round.appended > 0 || round.acked > 0 {
            dirty = true;
        }
        base.dropped_lines_spool_full += round.too_large_lines;
        for b in round.recycled {
            q.recycle(b);
        }
        if round.read_failed {
            replay_paused_until = Some(Instant::now() + READ_RETRY);
            q.pause_replay(true);
        }
        let failed_now = round.outcome.failed && q.spool_state() == SpoolState::Usable;
        if let Some(e) = &round.error {
            if spool.is_none() {
                base.io_errors += 1;
            }
            if failed_now || logged.elapsed() >= Duration::from_secs(10) {
                logged = Instant::now();
                if failed_now {
                    tracing::error!(destination = %s.name, error = %e, no_space = e.is_no_space(), "spool failed: memory only (drops counted) until it can be reopened");
                } else {
                    tracing::warn!(destination = %s.name, error = %e, "spool error");
                }
            }
        }
        if failed_now {
            failed_at = Some(Instant::now());
        }
        q.spool_returned(round.outcome);
        publish(&q, spool.as_ref(), &base);
        if last {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The queue's mode switches and the spool together, over the simulated disk: random
    //! pushes, writer progress, lost connections (the unacknowledged window goes back),
    //! destinations marked down, spool rounds, and power losses (memory gone, the spool
    //! recovered). What the writer delivers, first occurrences only, is in push order;
    //! every line is delivered unless it was only in memory (or appended but not yet
    //! committed) at a power loss.

    use std::collections::{HashSet, VecDeque};
    use std::path::Path;

    use super::*;
    use crate::output::queue::Mode;
    use crate::output::spool::sim::SimFs;
    use crate::tools::SplitMix64;

    const T0: u64 = 1_760_000_000_000;

    fn ids(data: &[u8]) -> Vec<u64> {
        data.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| std::str::from_utf8(&l[1..]).unwrap().parse().unwrap())
            .collect()
    }

    fn open_sim(fs: &SimFs) -> Spool<SimFs> {
        Spool::open(
            fs.clone(),
            Path::new("/spool/d/shard-0"),
            Limits::new(1 << 40, 4096),
        )
        .unwrap()
        .0
    }

    fn fresh_queue(spool: &Spool<SimFs>) -> DestQueue {
        let q = DestQueue::with_spool(2048);
        q.spool_returned(SpoolOutcome {
            unread: spool.stats().records > 0,
            ..Default::default()
        });
        q
    }

    fn run(seed: u64, steps: usize) -> (usize, usize) {
        let mut rng = SplitMix64(seed);
        let fs = SimFs::new(seed ^ 0xfeed);
        let mut spool = open_sim(&fs);
        let mut q = fresh_queue(&spool);
        let mut window: VecDeque<Batch> = VecDeque::new();
        let mut next_id = 0u64;
        let mut delivered: Vec<u64> = Vec::new();
        // Appended since the last commit, and durable.
        let mut appended: Vec<u64> = Vec::new();
        let mut durable: HashSet<u64> = HashSet::new();
        let mut may_lose: HashSet<u64> = HashSet::new();
        let mut crashes = 0;
        for step in 0..steps {
            let draining = step >= steps - steps / 4;
            match rng.below(if draining { 3 } else { 10 }) {
                0 if !draining => {
                    let n = 1 + rng.below(20) as u64;
                    let mut data = Vec::new();
                    for id in next_id..next_id + n {
                        data.extend_from_slice(format!("i{id}\n").as_bytes());
                    }
                    next_id += n;
                    q.push(Batch::new(data, n as u32));
                }
                0 | 1 => {
                    if q.is_live() {
                        for _ in 0..1 + rng.below(3) {
                            match q.pop() {
                                Some(b) => window.push_back(b),
                                None => break,
                            }
                        }
                    } else {
                        q.set_live(true);
                    }
                }
                2 => {
                    // The peer acknowledged the oldest batches.
                    for _ in 0..rng.below(window.len() + 1) {
                        let b = window.pop_front().unwrap();
                        delivered.extend(ids(&b.data));
                        q.complete(b.lines, b.data.len(), b.records);
                    }
                    // A spool round.
                    let job = q.take_spool_job(false);
                    for b in &job.appends {
                        appended.extend(ids(&b.data));
                    }
                    let commit = rng.below(3) == 0 || draining;
                    let r = run_round(&mut spool, job, T0 + step as u64, commit);
                    assert!(r.error.is_none(), "{:?}", r.error);
                    if r.committed {
                        durable.extend(appended.drain(..));
                    }
                    q.spool_returned(r.outcome);
                }
                3 => {
                    // The connection died: the window goes back, unacknowledged.
                    q.requeue(window.drain(..).collect());
                    q.writer_failed();
                }
                4 => q.spill(),
                5 if rng.below(8) == 0 => {
                    // Power loss: memory is gone; the spool recovers what was committed.
                    let gone: HashSet<u64> =
                        (0..next_id).filter(|id| !durable.contains(id)).collect();
                    may_lose.extend(gone);
                    fs.crash();
                    spool = open_sim(&fs);
                    q = fresh_queue(&spool);
                    window.clear();
                    appended.clear();
                    crashes += 1;
                }
                _ => {}
            }
        }
        // Drain: connected, rounds until nothing is left.
        q.set_live(true);
        for _ in 0..10_000 {
            while let Some(b) = q.pop() {
                window.push_back(b);
            }
            for b in window.drain(..) {
                delivered.extend(ids(&b.data));
                q.complete(b.lines, b.data.len(), b.records);
            }
            let job = q.take_spool_job(false);
            let r = run_round(&mut spool, job, T0 + steps as u64, true);
            q.spool_returned(r.outcome);
            if q.mode() == Mode::Memory && q.bytes() == 0 && spool.is_empty() {
                break;
            }
        }
        assert_eq!(q.mode(), Mode::Memory, "seed {seed}: drained");
        assert_eq!(q.counters().dropped_lines_queue_full, 0, "seed {seed}");
        let mut seen = HashSet::new();
        let mut last = None;
        for &id in &delivered {
            if seen.insert(id) {
                assert!(
                    last.is_none_or(|l| id > l),
                    "seed {seed}: {id} delivered after {last:?}"
                );
                last = Some(id);
            }
        }
        for id in 0..next_id {
            assert!(
                seen.contains(&id) || may_lose.contains(&id),
                "seed {seed}: {id} never delivered"
            );
        }
        (delivered.len() - seen.len(), crashes)
    }

    #[test]
    fn queue_and_spool_deliver_in_order_across_outages_and_crashes() {
        let mut dups = 0;
        let mut crashes = 0;
        for seed in 0..200 {
            let (d, c) = run(seed, 400);
            dups += d;
            crashes += c;
        }
        // The runs exercised what they claim to.
        assert!(crashes > 50, "{crashes} crashes");
        assert!(
            dups > 0,
            "resends after lost connections produce duplicates"
        );
    }
}

//! The per-destination queue of sealed batches, shared by the shard's producers, the
//! destination's writer task and its spool task (same thread: `RefCell`, no lock).
//!
//! This is the spool seam. Producers only [`push`](DestQueue::push), which never touches
//! the disk and never waits; the writer only [`pop`](DestQueue::pop)s, without knowing
//! where a batch came from. A destination with a spool is in one of two modes:
//!
//! - **memory**: pushes go to `ready`, the writer's FIFO. Nothing touches the disk.
//! - **spool**: the destination could not take its data (its memory queue overflowed, its
//!   writer lost the connection, or it was marked down). Every memory batch in `ready`
//!   moved to `tail`, and pushes go there too; the spool task appends `tail` to disk in
//!   order, and, while the destination is connected, reads the spool back into `ready`.
//!   Once the spool holds nothing the writer has not been handed, `tail` moves to `ready`
//!   and the queue is back in memory mode.
//!
//! So the stream a destination receives is always: `ready` (replayed batches first), then
//! what the spool holds unread, then `tail`; arrival order is kept across every switch.
//! Replayed batches carry their spool `records`; the writer reports them delivered through
//! [`complete`](DestQueue::complete), and the spool task acks them (in order) on disk.
//!
//! Memory is bounded: `ready` by `bytes_max` in memory mode (then it spools, or drops the
//! oldest batch when it has no usable spool) and by the replay read-ahead (at most half
//! of `bytes_max`) in spool mode; `tail` by twice `bytes_max` (what memory held when
//! spooling began, plus as much again; when the disk cannot keep up, its oldest batch is
//! dropped and counted). Every drop path is counted.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Instant;

use super::DestinationCounters;

/// Sealed records for one destination: whole `\n`-terminated lines, or whole collectd
/// packets (one per batch: a batch to a UDP member is one datagram).
#[derive(Debug)]
pub struct Batch {
    /// The bytes to write.
    pub data: Vec<u8>,
    /// Number of records (lines, or collectd value lists) in `data`.
    pub lines: u32,
    /// Spool records this batch was read from (0: it never was on disk). Acked in the
    /// spool once the batch is delivered.
    pub records: u32,
    /// Written again: a connection's peer acknowledged these lines (they counted as
    /// queued and sent then) and the connection broke while the peer's window said its
    /// process had not read them. Wherever they are written now (the same member, or a
    /// live member of its cluster after an offload) they count in `resent_lines` only.
    pub resend: bool,
}

impl Batch {
    /// A batch of `lines` lines that is not in any spool.
    pub fn new(data: Vec<u8>, lines: u32) -> Batch {
        Batch {
            data,
            lines,
            records: 0,
            resend: false,
        }
    }

    /// This batch to be written again: its peer acknowledged it (counted sent then, and
    /// its spool records acked) and may not have read it.
    pub fn into_resend(self) -> Batch {
        Batch {
            records: 0,
            resend: true,
            ..self
        }
    }
}

/// Whether pushes stay in memory or go behind the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pushes go to the writer's queue.
    Memory,
    /// Pushes go behind the spool.
    Spool,
}

/// The state of a destination's spool as the queue sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolState {
    /// No spool (none configured, or not a TCP destination): overflow drops the oldest.
    Off,
    /// Takes appends.
    Usable,
    /// Stopped taking appends after an I/O error: memory only, drops counted, until the
    /// spool task reopens it.
    Failed,
}

/// What the spool task is to do in its next round (taken from the queue).
#[derive(Debug, Default)]
pub struct SpoolJob {
    /// Replayed records delivered since the last round, oldest first.
    pub acks: u32,
    /// Batches to append, in order.
    pub appends: Vec<Batch>,
    /// Read back up to this many bytes (0: do not read).
    pub read_bytes: usize,
}

impl SpoolJob {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.acks == 0 && self.appends.is_empty() && self.read_bytes == 0
    }
}

/// What a spool round did, handed back to the queue.
#[derive(Debug, Default)]
pub struct SpoolOutcome {
    /// Batches not appended (the spool failed first), in order: they go back to the
    /// front of the tail.
    pub unappended: Vec<Batch>,
    /// A batch read back, if any.
    pub replay: Option<Batch>,
    /// The spool still holds records the writer has not been handed (appended but not
    /// yet committed ones included).
    pub unread: bool,
    /// The spool stopped taking appends.
    pub failed: bool,
}

#[derive(Debug)]
struct State {
    /// What the writer pops, in order.
    ready: VecDeque<Batch>,
    ready_bytes: usize,
    /// Spool mode: batches behind the spool, for the spool task to append.
    tail: VecDeque<Batch>,
    tail_bytes: usize,
    mode: Mode,
    spool: SpoolState,
    /// The spool holds records not yet in `ready` (set by the spool task; true until it
    /// has opened the spool).
    spool_unread: bool,
    /// Replayed records delivered and not yet acked in the spool.
    acks: u32,
    writer_waker: Option<Waker>,
    spool_waker: Option<Waker>,
    stop_waker: Option<Waker>,
    counters: DestinationCounters,
    /// Emptied buffers, reused for the next open batch.
    pool: Vec<Vec<u8>>,
    /// Lines of the batch a UDP or file writer has popped and not yet completed: counted
    /// as lost if the shutdown deadline cancels the writer mid-write.
    in_flight_lines: u32,
    /// Since when the writer has had data outstanding with no acknowledgement progress.
    stalled_since: Option<Instant>,
    /// Spool time (unix ms) of the oldest undelivered spooled record.
    spool_oldest_ms: Option<u64>,
    /// `replayed_lines` when the replay rate was last measured, and when.
    rate_mark: (Instant, u64),
}

/// A byte-bounded FIFO of batches with one writer, and optionally a spool behind it.
#[derive(Debug)]
pub struct DestQueue {
    state: RefCell<State>,
    bytes_max: usize,
    closed: Cell<bool>,
    live: Cell<bool>,
    /// Readers waited the whole `stall_ms_max` for this queue and it is still full: it
    /// stalls nobody again until it drains below half (a stuck sink must not throttle
    /// every reader of the shard, read after read).
    stall_spent: Cell<bool>,
    /// Health says the destination is down: a writer that cannot tell by itself (UDP)
    /// holds its batches instead of sending them into the void.
    held: Cell<bool>,
    /// Its clusters route around it when it is down (any_of, failover): a lost connection
    /// keeps its queue in memory for the offload instead of spooling it.
    routed_around: Cell<bool>,
    /// The writer must hand back what it holds and stop (shutdown).
    stop: Cell<bool>,
    /// Closed for shutdown (not retired): with a spool, the writer stops once its memory
    /// queue is empty and nothing more is read back; the spool keeps the rest.
    at_shutdown: Cell<bool>,
    /// Shutdown, writers stopped: the spool task's last round spools what memory holds.
    finishing: Cell<bool>,
    /// Replay waits (a read failed; the spool task retries later).
    replay_paused: Cell<bool>,
}

/// Buffers kept for reuse per destination; enough to keep a writer and a producer busy.
const POOL_BUFFERS_MAX: usize = 32;

/// Spool mode reads back at most this much ahead of the writer (and at most half of
/// `queue_bytes_max`), one read of at most [`REPLAY_READ_BYTES`] per spool round.
pub const REPLAY_AHEAD_BYTES_MAX: usize = 8 << 20;

/// Largest batch one spool read hands the writer.
pub const REPLAY_READ_BYTES: usize = 1 << 20;

impl DestQueue {
    /// A queue holding at most `bytes_max` bytes, with no spool.
    pub fn new(bytes_max: usize) -> DestQueue {
        DestQueue::build(bytes_max, SpoolState::Off)
    }

    /// A queue with a spool behind it. It starts in spool mode (what a previous run
    /// spooled goes first) until the spool task has opened the spool and found it empty.
    pub fn with_spool(bytes_max: usize) -> DestQueue {
        DestQueue::build(bytes_max, SpoolState::Usable)
    }

    fn build(bytes_max: usize, spool: SpoolState) -> DestQueue {
        let spooled = spool != SpoolState::Off;
        DestQueue {
            state: RefCell::new(State {
                ready: VecDeque::new(),
                ready_bytes: 0,
                tail: VecDeque::new(),
                tail_bytes: 0,
                mode: if spooled { Mode::Spool } else { Mode::Memory },
                spool,
                spool_unread: spooled,
                acks: 0,
                writer_waker: None,
                spool_waker: None,
                stop_waker: None,
                counters: DestinationCounters {
                    spooling: u64::from(spooled),
                    ..Default::default()
                },
                pool: Vec::new(),
                in_flight_lines: 0,
                stalled_since: None,
                spool_oldest_ms: None,
                rate_mark: (Instant::now(), 0),
            }),
            bytes_max,
            closed: Cell::new(false),
            live: Cell::new(false),
            stall_spent: Cell::new(false),
            held: Cell::new(false),
            routed_around: Cell::new(false),
            stop: Cell::new(false),
            at_shutdown: Cell::new(false),
            finishing: Cell::new(false),
            replay_paused: Cell::new(false),
        }
    }

    /// Health marked the destination down (true) or up again (false).
    pub fn set_held(&self, held: bool) {
        self.held.set(held);
        let mut s = self.state.borrow_mut();
        s.counters.held = u64::from(held);
        if !held {
            wake(&mut s.writer_waker);
        }
    }

    /// Whether health has the destination down.
    pub fn is_held(&self) -> bool {
        self.held.get()
    }

    /// Queues a batch. Memory mode: over the bound, the queue switches to spool mode
    /// (everything in memory goes behind the spool), or without a usable spool drops the
    /// oldest batches (counted). Spool mode: the batch waits for the spool task; past
    /// twice the bound the oldest waiting batch is dropped (counted). Never blocks, never
    /// does I/O.
    pub fn push(&self, batch: Batch) {
        // Lines end in a newline; a collectd batch is a packet (never spooled: UDP).
        debug_assert!(batch.lines > 0 && !batch.data.is_empty() && batch.records == 0);
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        if !batch.resend {
            s.counters.queued_lines += u64::from(batch.lines);
        }
        match s.mode {
            Mode::Memory => {
                s.ready_bytes += batch.data.len();
                s.ready.push_back(batch);
                if s.ready_bytes > self.bytes_max {
                    if s.spool == SpoolState::Usable {
                        enter_spool(s);
                    } else {
                        while s.ready_bytes > self.bytes_max && s.ready.len() > 1 {
                            let old = s.ready.pop_front().expect("len > 1");
                            s.ready_bytes -= old.data.len();
                            drop_batch(s, old);
                        }
                    }
                }
                wake(&mut s.writer_waker);
            }
            Mode::Spool => {
                s.tail_bytes += batch.data.len();
                s.tail.push_back(batch);
                while s.tail_bytes > 2 * self.bytes_max && s.tail.len() > 1 {
                    let old = s.tail.pop_front().expect("len > 1");
                    s.tail_bytes -= old.data.len();
                    drop_batch(s, old);
                }
                wake(&mut s.spool_waker);
                if !self.live.get() {
                    // A writer that never connected (the destination was down before it
                    // had anything to send) waits for something to deliver: this is.
                    wake(&mut s.writer_waker);
                }
            }
        }
        publish_bytes(s);
    }

    /// The next batch to write, if any.
    pub fn pop(&self) -> Option<Batch> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let b = s.ready.pop_front()?;
        s.in_flight_lines = b.lines;
        s.ready_bytes -= b.data.len();
        publish_bytes(s);
        if s.ready_bytes < self.bytes_max / 2 {
            self.stall_spent.set(false);
        }
        if s.mode == Mode::Spool {
            wake(&mut s.spool_waker);
        }
        Some(b)
    }

    /// Puts back batches the writer could not deliver (a connection died before the
    /// peer acknowledged them, or after it acknowledged them unread: those are marked
    /// [`resend`](Batch::resend)), at the front, in their order.
    pub fn requeue(&self, batches: Vec<Batch>) {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.in_flight_lines = 0;
        for b in batches.into_iter().rev() {
            s.ready_bytes += b.data.len();
            s.ready.push_front(b);
        }
        publish_bytes(s);
    }

    /// Takes the queued memory batches (not those a writer holds), counting their lines as
    /// offloaded: the destination is down and its cluster delivers them elsewhere. What is
    /// in its spool (and replayed batches, and a memory batch queued between them) stays
    /// for the destination's return. Batches to be written again go too, uncounted: they
    /// were counted sent here, and count as resent where they are written.
    pub fn take_all(&self) -> Vec<Batch> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let keep = s
            .ready
            .iter()
            .rposition(|b| b.records > 0)
            .map_or(0, |i| i + 1);
        let mut taken: Vec<Batch> = s.ready.drain(keep..).collect();
        taken.extend(s.tail.drain(..));
        for b in taken.iter().filter(|b| !b.resend) {
            debug_assert_eq!(b.records, 0);
            s.counters.offloaded_lines += u64::from(b.lines);
        }
        s.ready_bytes = s.ready.iter().map(|b| b.data.len()).sum();
        s.tail_bytes = 0;
        publish_bytes(s);
        self.stall_spent.set(false);
        taken
    }

    /// The destination cannot take data (marked down, or its writer lost the
    /// connection): with a usable spool, everything in memory goes behind it and new
    /// batches follow. Does nothing without a usable spool or in spool mode already.
    pub fn spill(&self) {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        if s.mode == Mode::Memory && s.spool == SpoolState::Usable {
            enter_spool(s);
            publish_bytes(s);
        }
    }

    /// The writer delivered `lines` lines (`bytes` bytes) that held `records` spool
    /// records: count them as sent, and have the spool ack the records.
    pub fn complete(&self, lines: u32, bytes: usize, records: u32) {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.in_flight_lines = 0;
        s.counters.sent_lines += u64::from(lines);
        s.counters.sent_bytes += bytes as u64;
        if records > 0 {
            s.acks += records;
            s.counters.replayed_lines += u64::from(lines);
            wake(&mut s.spool_waker);
        }
    }

    /// The writer gave up on a popped batch (a failed UDP or file write): count it lost.
    pub fn fail(&self, lines: u32) {
        let mut s = self.state.borrow_mut();
        s.in_flight_lines = 0;
        s.counters.write_errors += 1;
        s.counters.dropped_lines_write_failed += u64::from(lines);
    }

    /// The writer could not connect or its connection failed: not live, and unless its
    /// clusters route around it (then its memory queue waits for the offload), what is
    /// queued goes behind the spool.
    pub fn writer_failed(&self) {
        self.set_live(false);
        if !self.routed_around.get() {
            self.spill();
        }
    }

    /// Waits until there is something to deliver: a batch ready for the writer, or, in
    /// spool mode, what the spool task will read back once the writer is connected.
    /// False once the writer should stop: asked to ([`request_stop`](Self::request_stop)),
    /// or closed with nothing left in memory or in the spool.
    pub async fn ready(&self) -> bool {
        poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            let spooled = s.mode == Mode::Spool && (s.spool_unread || !s.tail.is_empty());
            if self.stop.get() {
                Poll::Ready(false)
            } else if !s.ready.is_empty() || (spooled && !self.at_shutdown.get()) {
                Poll::Ready(true)
            } else if self.closed.get()
                && ((s.mode == Mode::Memory && s.tail.is_empty() && !s.spool_unread)
                    || (self.at_shutdown.get() && s.spool != SpoolState::Off))
            {
                Poll::Ready(false)
            } else {
                s.writer_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves once a batch is ready for the writer, or it is told to stop.
    pub async fn batch_ready(&self) {
        poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            if self.stop.get() || !s.ready.is_empty() {
                Poll::Ready(())
            } else {
                s.writer_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves once [`request_stop`](Self::request_stop) was called.
    pub async fn stopped(&self) {
        poll_fn(|cx| {
            if self.stop.get() {
                Poll::Ready(())
            } else {
                self.state.borrow_mut().stop_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Asks the writer to hand back what it holds and stop (shutdown).
    pub fn request_stop(&self) {
        self.stop.set(true);
        let mut s = self.state.borrow_mut();
        wake(&mut s.writer_waker);
        wake(&mut s.stop_waker);
        wake(&mut s.spool_waker);
    }

    /// Whether [`request_stop`](Self::request_stop) was called.
    pub fn stop_requested(&self) -> bool {
        self.stop.get()
    }

    /// No more batches will come; the writer drains what is queued (spool included) and
    /// stops.
    pub fn close(&self) {
        self.closed.set(true);
        let mut s = self.state.borrow_mut();
        wake(&mut s.writer_waker);
        wake(&mut s.spool_waker);
    }

    /// Closes the queue for shutdown: as [`close`](Self::close), but with a spool the
    /// writer stops once its memory queue is delivered, and what the spool holds stays
    /// there for the next start.
    pub fn close_for_shutdown(&self) {
        self.at_shutdown.set(true);
        self.close();
    }

    /// Whether the writer may give up on a destination it cannot reach: closed, for
    /// shutdown or because it was removed. With a spool, the spool keeps what is queued
    /// (see [`abandon`](Self::abandon)); without one, it is lost (counted).
    pub fn abandon_unreachable(&self) -> bool {
        self.closed.get()
    }

    /// The writer gave up on a closed destination it cannot reach. Without a spool, what
    /// is queued is dropped and counted. With one, a removed destination's spool task
    /// spools what memory holds and stops (at shutdown the shard does that itself): the
    /// spool stays on disk under the destination's name, replayed when a destination of
    /// that name is listed again (or reported as an orphan at the next start).
    pub fn abandon(&self) {
        if self.state.borrow().spool == SpoolState::Off {
            self.discard_at_shutdown();
        } else if !self.at_shutdown.get() {
            self.finish_spool();
        }
    }

    /// Takes batches again after [`close`](Self::close) (a retired destination listed
    /// again before it was reclaimed).
    pub fn reopen(&self) {
        self.closed.set(false);
    }

    /// A new spool task is about to take over after the last one stopped (a removed
    /// destination that gave up, listed again): the queue waits for it as a new
    /// queue with a spool does, behind what the spool holds.
    pub fn restart_spool(&self) {
        self.finishing.set(false);
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        if s.spool != SpoolState::Off {
            s.spool = SpoolState::Usable;
            s.spool_unread = true;
            if s.mode == Mode::Memory {
                enter_spool(s);
            }
            publish_bytes(s);
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Drops everything still queued in memory (and a batch cut off mid-write), counting
    /// it as lost at shutdown.
    pub fn discard_at_shutdown(&self) {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let in_flight = u64::from(std::mem::take(&mut s.in_flight_lines));
        let lines: u64 = in_flight
            + s.ready
                .iter()
                .chain(&s.tail)
                .map(|b| u64::from(b.lines))
                .sum::<u64>();
        s.counters.dropped_lines_shutdown += lines;
        s.ready.clear();
        s.tail.clear();
        s.ready_bytes = 0;
        s.tail_bytes = 0;
        publish_bytes(s);
    }

    /// Marks the destination connected (a reader may wait for it, its spool replays) or
    /// not.
    pub fn set_live(&self, live: bool) {
        self.live.set(live);
        let mut s = self.state.borrow_mut();
        s.counters.connected = u64::from(live);
        if live {
            wake(&mut s.spool_waker);
        }
    }

    /// Whether the writer is connected.
    pub fn is_live(&self) -> bool {
        self.live.get()
    }

    /// Whether its clusters route around it when it is down.
    pub fn routed_around(&self) -> bool {
        self.routed_around.get()
    }

    /// Its clusters route around it when down (any_of, failover only).
    pub fn set_routed_around(&self, yes: bool) {
        self.routed_around.set(yes);
    }

    /// True when the destination is live and in memory mode, its queue cannot take
    /// another `headroom` bytes, and its stall budget is not spent: readers should wait
    /// for the writer rather than make the queue spool or drop. A spooling destination
    /// never stalls a reader.
    pub fn congested(&self, headroom: usize) -> bool {
        if !self.live.get() || self.stall_spent.get() {
            return false;
        }
        let s = self.state.borrow();
        s.mode == Mode::Memory && s.ready_bytes + headroom > self.bytes_max
    }

    /// Readers waited their longest for this queue in vain: stop stalling them for it
    /// until it drains below half.
    pub fn spend_stall(&self) {
        self.stall_spent.set(true);
    }

    /// Bytes queued in memory now (the writer's queue and the tail behind the spool).
    pub fn bytes(&self) -> usize {
        let s = self.state.borrow();
        s.ready_bytes + s.tail_bytes
    }

    /// Memory or spool mode.
    pub fn mode(&self) -> Mode {
        self.state.borrow().mode
    }

    /// The spool's state.
    pub fn spool_state(&self) -> SpoolState {
        self.state.borrow().spool
    }

    /// A cleared buffer with at least `capacity` bytes, reused when possible.
    pub fn buffer(&self, capacity: usize) -> Vec<u8> {
        self.state
            .borrow_mut()
            .pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Returns a written buffer for reuse.
    pub fn recycle(&self, data: Vec<u8>) {
        recycle(&mut self.state.borrow_mut(), data);
    }

    /// Updates the destination's counters.
    pub fn count(&self, f: impl FnOnce(&mut DestinationCounters)) {
        f(&mut self.state.borrow_mut().counters);
    }

    /// The writer has data outstanding since `since` with no acknowledgement progress
    /// (`None`: it has nothing outstanding, or just made progress).
    pub fn set_stalled_since(&self, since: Option<Instant>) {
        self.state.borrow_mut().stalled_since = since;
    }

    /// A copy of the destination's counters, with the gauges that depend on time
    /// (`stalled_ms`, `spool_oldest_age_ms`, `replay_lines_per_s`) as of now.
    pub fn counters(&self) -> DestinationCounters {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let (at, mark) = s.rate_mark;
        let elapsed = at.elapsed();
        if elapsed >= std::time::Duration::from_secs(1) {
            let lines = s.counters.replayed_lines - mark;
            s.counters.replay_lines_per_s = (lines as f64 / elapsed.as_secs_f64()) as u64;
            s.rate_mark = (Instant::now(), s.counters.replayed_lines);
        }
        let mut c = s.counters.clone();
        c.stalled_ms = s
            .stalled_since
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        c.spool_oldest_age_ms = s.spool_oldest_ms.map_or(0, |t| {
            (crate::shard::pipeline::unix_ms() as u64).saturating_sub(t)
        });
        c
    }

    // The spool task's side.

    /// Waits until the spool task has something to do: batches to append, a read-ahead
    /// to refill, its final round, or a closed queue with everything delivered.
    pub async fn spool_wanted(&self) {
        poll_fn(|cx| {
            if self.finishing.get() || self.spool_idle_done() || self.spool_job_ready() {
                Poll::Ready(())
            } else {
                self.state.borrow_mut().spool_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Whether there are batches to append or a read-ahead to refill.
    pub fn spool_job_ready(&self) -> bool {
        let s = self.state.borrow();
        (s.spool == SpoolState::Usable && !s.tail.is_empty()) || self.read_ahead(&s) > 0
    }

    /// Closed (retired), and everything delivered but the last acks: the spool task's
    /// last round acks and commits.
    pub fn spool_idle_done(&self) -> bool {
        let s = self.state.borrow();
        self.closed.get()
            && s.mode == Mode::Memory
            && s.tail.is_empty()
            && s.ready.is_empty()
            && s.counters.unacked_bytes == 0
    }

    /// Delivered records not yet acked in the spool.
    pub fn has_acks(&self) -> bool {
        self.state.borrow().acks > 0
    }

    /// Shutdown, after the writer stopped: the spool task's last round spools every
    /// memory batch and commits.
    pub fn finish_spool(&self) {
        self.finishing.set(true);
        wake(&mut self.state.borrow_mut().spool_waker);
    }

    /// Whether [`finish_spool`](Self::finish_spool) was called.
    pub fn finishing_spool(&self) -> bool {
        self.finishing.get()
    }

    /// Replay waits (`true`) after a failed read, or goes on.
    pub fn pause_replay(&self, paused: bool) {
        self.replay_paused.set(paused);
    }

    /// Spool time (unix ms) of the oldest undelivered spooled record.
    pub fn set_spool_oldest_ms(&self, ms: Option<u64>) {
        self.state.borrow_mut().spool_oldest_ms = ms;
    }

    /// How much to read back now: spool mode, connected, the spool holds unread records,
    /// and the writer's queue is below half the read-ahead.
    fn read_ahead(&self, s: &State) -> usize {
        let ahead = (self.bytes_max / 2).clamp(1, REPLAY_AHEAD_BYTES_MAX);
        if s.mode == Mode::Spool
            && s.spool_unread
            && self.live.get()
            && !self.stop.get()
            && !self.at_shutdown.get()
            && !self.replay_paused.get()
            && s.ready_bytes < ahead / 2
        {
            (ahead - s.ready_bytes).min(REPLAY_READ_BYTES)
        } else {
            0
        }
    }

    /// Takes the next round's work: the acks so far, the tail to append (while the spool
    /// is usable), and how much to read back. `final_round`: shutdown; every memory
    /// batch (the writer's queue too; replayed ones are still in the spool) is appended,
    /// nothing is read.
    pub fn take_spool_job(&self, final_round: bool) -> SpoolJob {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let mut job = SpoolJob {
            acks: std::mem::take(&mut s.acks),
            ..Default::default()
        };
        if final_round {
            // Replayed batches are dropped from memory, not acked: the spool replays them
            // at the next start. Memory batches are spooled behind what the spool holds
            // (a batch a lost connection put back between replayed ones comes back after
            // them: the one case where shutdown reorders).
            for b in s.ready.drain(..) {
                if b.records == 0 {
                    job.appends.push(b);
                }
            }
            s.ready_bytes = 0;
            s.mode = Mode::Spool;
            job.appends.extend(s.tail.drain(..));
            s.tail_bytes = 0;
        }
        if s.spool == SpoolState::Usable {
            job.appends.extend(s.tail.drain(..));
            s.tail_bytes = 0;
        }
        if !final_round {
            job.read_bytes = self.read_ahead(s);
        }
        publish_bytes(s);
        job
    }

    /// Applies what a spool round did: a batch read back joins the writer's queue; a
    /// failed spool takes no more appends (what it did not take waits in memory behind
    /// it); and once the spool holds nothing unread, the tail moves to the writer's queue
    /// and the queue is back in memory mode.
    pub fn spool_returned(&self, out: SpoolOutcome) {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        for b in out.unappended.into_iter().rev() {
            s.tail_bytes += b.data.len();
            s.tail.push_front(b);
        }
        if out.failed {
            s.spool = SpoolState::Failed;
        }
        if let Some(b) = out.replay {
            s.ready_bytes += b.data.len();
            s.ready.push_back(b);
            wake(&mut s.writer_waker);
        }
        s.spool_unread = out.unread;
        if s.mode == Mode::Spool && !s.spool_unread && !self.stop.get() {
            s.ready_bytes += s.tail_bytes;
            s.tail_bytes = 0;
            let tail = std::mem::take(&mut s.tail);
            s.ready.extend(tail);
            s.mode = Mode::Memory;
            wake(&mut s.writer_waker);
        }
        s.counters.spooling = u64::from(s.mode == Mode::Spool);
        s.counters.spool_failed = u64::from(s.spool == SpoolState::Failed);
        publish_bytes(s);
    }

    /// The spool task reopened a failed spool: it takes appends again.
    pub fn spool_reopened(&self) {
        let mut s = self.state.borrow_mut();
        s.spool = SpoolState::Usable;
        s.counters.spool_failed = 0;
    }
}

/// Memory mode to spool mode: the memory batches at the end of `ready` (after its last
/// replayed batch or batch to be written again) move to the tail, in order. Replayed
/// batches stay (they are in the spool, in flight, and acked in order), batches to be
/// written again stay (they counted as sent once already; they are bounded by
/// `resend_unread_bytes_max` per connection), and so does a memory batch between two of
/// them (one a lost connection put back ahead of spooled data): it is older than what follows
/// it, so it cannot go behind the spool.
fn enter_spool(s: &mut State) {
    let keep = s
        .ready
        .iter()
        .rposition(|b| b.records > 0 || b.resend)
        .map_or(0, |i| i + 1);
    let moved: Vec<Batch> = s.ready.drain(keep..).collect();
    for b in moved.into_iter().rev() {
        debug_assert_eq!(b.records, 0);
        s.ready_bytes -= b.data.len();
        s.tail_bytes += b.data.len();
        s.tail.push_front(b);
    }
    s.mode = Mode::Spool;
    s.spool_unread = true;
    s.counters.spooling = 1;
    wake(&mut s.spool_waker);
    // The writer connects to have the spool read back (and spool mode left): one
    // waiting for a batch must not wait for the memory batches that no longer come.
    wake(&mut s.writer_waker);
}

fn drop_batch(s: &mut State, old: Batch) {
    s.counters.dropped_lines_queue_full += u64::from(old.lines);
    // A replayed batch dropped is done with, as far as the spool is concerned.
    s.acks += old.records;
    recycle(s, old.data);
}

fn recycle(s: &mut State, mut data: Vec<u8>) {
    if s.pool.len() < POOL_BUFFERS_MAX {
        data.clear();
        s.pool.push(data);
    }
}

fn publish_bytes(s: &mut State) {
    s.counters.queue_bytes = (s.ready_bytes + s.tail_bytes) as u64;
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        Batch::new(vec![b'\n'; n], n as u32)
    }

    #[test]
    fn bounded_drops_oldest_and_counts() {
        let q = DestQueue::new(100);
        q.push(batch(60));
        q.push(batch(30));
        q.push(batch(20));
        // 110 > 100: the oldest (60) went.
        assert_eq!(q.bytes(), 50);
        let c = q.counters();
        assert_eq!((c.queued_lines, c.dropped_lines_queue_full), (110, 60));
        assert_eq!(q.pop().unwrap().lines, 30);
        let b = q.pop().unwrap();
        q.requeue(vec![b]);
        assert_eq!(q.pop().unwrap().lines, 20);
        assert!(q.pop().is_none());
    }

    #[test]
    fn a_single_batch_larger_than_the_bound_is_kept() {
        let q = DestQueue::new(10);
        q.push(batch(20));
        assert_eq!(q.bytes(), 20);
    }

    /// The queue alone, with the spool modelled as a FIFO of batches: every mode switch
    /// keeps arrival order.
    #[test]
    fn overflow_spools_and_replay_keeps_order() {
        // 400 bytes: 10 batches in memory; at most 4 arrive per spool round, so the
        // hand-off never overflows.
        let q = DestQueue::with_spool(400);
        // Opened, empty: memory mode.
        q.spool_returned(SpoolOutcome::default());
        assert_eq!(q.mode(), Mode::Memory);
        q.set_live(true);
        let mut disk: VecDeque<Batch> = VecDeque::new();
        let mut next = 1u32;
        let mut got = Vec::new();
        let mk = |id: u32| Batch::new(format!("{id:039}\n").into_bytes(), 1);
        for round in 0..200 {
            for _ in 0..(round % 5) {
                q.push(mk(next));
                next += 1;
            }
            // A spool round.
            let job = q.take_spool_job(false);
            disk.extend(job.appends);
            let replay = if job.read_bytes > 0 {
                disk.pop_front().map(|mut b| {
                    b.records = 1;
                    b
                })
            } else {
                None
            };
            q.spool_returned(SpoolOutcome {
                replay,
                unread: !disk.is_empty(),
                ..Default::default()
            });
            // The writer takes one batch every other round.
            if round % 2 == 0 {
                if let Some(b) = q.pop() {
                    got.push(String::from_utf8(b.data.clone()).unwrap());
                    q.complete(b.lines, b.data.len(), b.records);
                }
            }
        }
        assert_eq!(q.mode(), Mode::Spool, "the writer fell behind: it spools");
        // Drain: the writer keeps up now.
        for _ in 0..1000 {
            let job = q.take_spool_job(false);
            disk.extend(job.appends);
            let replay = (job.read_bytes > 0)
                .then(|| disk.pop_front())
                .flatten()
                .map(|mut b| {
                    b.records = 1;
                    b
                });
            q.spool_returned(SpoolOutcome {
                replay,
                unread: !disk.is_empty(),
                ..Default::default()
            });
            while let Some(b) = q.pop() {
                got.push(String::from_utf8(b.data.clone()).unwrap());
                q.complete(b.lines, b.data.len(), b.records);
            }
        }
        assert_eq!(q.mode(), Mode::Memory);
        let want: Vec<String> = (1..next).map(|id| format!("{id:039}\n")).collect();
        assert!(
            got == want,
            "every batch once, in order: {} of {}",
            got.len(),
            want.len()
        );
        let c = q.counters();
        assert_eq!(c.dropped_lines_queue_full, 0);
        assert!(c.replayed_lines > 0);
    }

    #[test]
    fn a_lost_connection_spills_memory_behind_the_spool_unless_routed_around() {
        let q = DestQueue::with_spool(1000);
        q.spool_returned(SpoolOutcome::default());
        q.push(batch(10));
        q.push(batch(20));
        q.writer_failed();
        assert_eq!(q.mode(), Mode::Spool);
        assert!(q.pop().is_none(), "the writer waits for the spool now");
        let job = q.take_spool_job(false);
        assert_eq!(job.appends.len(), 2);
        assert_eq!(job.read_bytes, 0, "not connected: nothing is read back");

        let q = DestQueue::with_spool(1000);
        q.spool_returned(SpoolOutcome::default());
        q.set_routed_around(true);
        q.push(batch(10));
        q.writer_failed();
        assert_eq!(q.mode(), Mode::Memory, "kept for the offload");
        q.spill();
        assert_eq!(
            q.mode(),
            Mode::Spool,
            "marked down with nowhere to go: spooled"
        );
    }

    #[test]
    fn lines_to_write_again_stay_in_memory_and_move_uncounted() {
        // A broken connection gave back 5 lines its peer acknowledged unread (counted
        // sent already) ahead of 10 it never acknowledged.
        let q = DestQueue::with_spool(1000);
        q.spool_returned(SpoolOutcome::default());
        q.push(batch(10));
        q.push(batch(20));
        let first = q.pop().unwrap();
        let mut again = batch(5);
        again.resend = true;
        q.requeue(vec![again, first]);
        // Spooling keeps them (and what precedes them) in memory: a spooled copy would
        // count as sent a second time when replayed.
        q.writer_failed();
        assert_eq!(q.mode(), Mode::Spool);
        let job = q.take_spool_job(false);
        assert_eq!(job.appends.iter().map(|b| b.lines).sum::<u32>(), 30);
        assert_eq!(q.pop().map(|b| (b.lines, b.resend)), Some((5, true)));

        // Offloaded, they go with the queue but count in neither queue's lines.
        let q = DestQueue::new(1000);
        q.set_routed_around(true);
        q.push(batch(10));
        let mut again = batch(5);
        again.resend = true;
        q.requeue(vec![again]);
        let moved = q.take_all();
        assert_eq!(moved.iter().map(|b| b.lines).sum::<u32>(), 15);
        assert_eq!(q.counters().offloaded_lines, 10);
        let to = DestQueue::new(1000);
        for b in moved {
            to.push(b);
        }
        assert_eq!(to.counters().queued_lines, 10);
    }

    #[test]
    fn a_failed_spool_falls_back_to_memory_after_its_committed_part() {
        let q = DestQueue::with_spool(100);
        q.spool_returned(SpoolOutcome::default());
        q.set_live(true);
        q.writer_failed();
        q.set_live(true);
        q.push(batch(30));
        q.push(batch(30));
        let mut job = q.take_spool_job(false);
        // The disk is full: the first went in, the second did not.
        let second = job.appends.pop().unwrap();
        q.spool_returned(SpoolOutcome {
            unappended: vec![second],
            unread: true,
            failed: true,
            ..Default::default()
        });
        assert_eq!(q.spool_state(), SpoolState::Failed);
        for _ in 0..6 {
            q.push(batch(30));
        }
        // Memory only now: the tail is bounded (twice the queue's bound), oldest dropped.
        assert_eq!(q.bytes(), 180);
        assert_eq!(q.counters().dropped_lines_queue_full, 30);
        assert_eq!(q.counters().spool_failed, 1);
        assert!(q.take_spool_job(false).appends.is_empty());
        // The committed record is replayed, then the memory part follows.
        q.spool_returned(SpoolOutcome {
            replay: Some(Batch {
                data: vec![b'\n'; 30],
                lines: 30,
                records: 1,
                resend: false,
            }),
            unread: false,
            ..Default::default()
        });
        assert_eq!(q.mode(), Mode::Memory);
        assert_eq!(q.pop().unwrap().records, 1);
        assert_eq!(q.pop().unwrap().records, 0);
    }

    #[test]
    fn the_final_round_spools_memory_but_not_what_the_spool_holds() {
        let q = DestQueue::with_spool(1000);
        q.spool_returned(SpoolOutcome::default());
        q.set_live(true);
        q.push(batch(10));
        q.requeue(vec![Batch {
            data: vec![b'\n'; 5],
            lines: 5,
            records: 2,
            resend: false,
        }]);
        q.request_stop();
        let job = q.take_spool_job(true);
        assert_eq!(job.appends.len(), 1);
        assert_eq!(job.appends[0].lines, 10);
        assert_eq!(job.read_bytes, 0);
    }
}

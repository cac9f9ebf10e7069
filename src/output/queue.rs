//! The per-destination queue of sealed batches, shared by the shard's producers and the
//! destination's writer task (same thread: `RefCell`, no lock).
//!
//! This is where the disk spool slots in: `push` decides what happens to a batch the
//! memory queue cannot hold (today: the oldest batch is dropped and counted; with a spool:
//! it goes to disk), and the writer asks `pop` for the next batch without knowing where it
//! came from. Batches are whole lines, so a spool record is a batch.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use super::DestinationCounters;

/// Sealed records for one destination: whole `\n`-terminated lines, or whole collectd
/// packets (one per batch: a batch to a UDP member is one datagram).
#[derive(Debug)]
pub struct Batch {
    /// The bytes to write.
    pub data: Vec<u8>,
    /// Number of records (lines, or collectd value lists) in `data`.
    pub lines: u32,
}

#[derive(Debug, Default)]
struct State {
    batches: VecDeque<Batch>,
    bytes: usize,
    waker: Option<Waker>,
    counters: DestinationCounters,
    /// Emptied buffers, reused for the next open batch.
    pool: Vec<Vec<u8>>,
    /// Lines of the batch a writer has popped and not yet completed or put back: counted
    /// as lost if the shutdown deadline cancels the writer mid-write.
    in_flight_lines: u32,
}

/// A byte-bounded FIFO of batches with one waiting writer.
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
}

/// Buffers kept for reuse per destination; enough to keep a writer and a producer busy.
const POOL_BUFFERS_MAX: usize = 32;

impl DestQueue {
    /// A queue holding at most `bytes_max` bytes.
    pub fn new(bytes_max: usize) -> DestQueue {
        DestQueue {
            state: RefCell::new(State::default()),
            bytes_max,
            closed: Cell::new(false),
            live: Cell::new(false),
            stall_spent: Cell::new(false),
            held: Cell::new(false),
        }
    }

    /// Health marked the destination down (true) or up again (false).
    pub fn set_held(&self, held: bool) {
        self.held.set(held);
        let mut s = self.state.borrow_mut();
        s.counters.held = u64::from(held);
        if !held {
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }

    /// Whether health has the destination down.
    pub fn is_held(&self) -> bool {
        self.held.get()
    }

    /// Queues a batch, dropping (and counting) the oldest batches while over the bound.
    pub fn push(&self, batch: Batch) {
        debug_assert!(batch.lines > 0 && !batch.data.is_empty());
        let mut s = self.state.borrow_mut();
        s.counters.queued_lines += u64::from(batch.lines);
        s.bytes += batch.data.len();
        s.batches.push_back(batch);
        while s.bytes > self.bytes_max && s.batches.len() > 1 {
            let old = s.batches.pop_front().expect("len > 1");
            s.bytes -= old.data.len();
            s.counters.dropped_lines_queue_full += u64::from(old.lines);
            if s.pool.len() < POOL_BUFFERS_MAX {
                let mut v = old.data;
                v.clear();
                s.pool.push(v);
            }
        }
        s.counters.queue_bytes = s.bytes as u64;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// The next batch to write, if any.
    pub fn pop(&self) -> Option<Batch> {
        let mut s = self.state.borrow_mut();
        let b = s.batches.pop_front()?;
        s.in_flight_lines = b.lines;
        s.bytes -= b.data.len();
        s.counters.queue_bytes = s.bytes as u64;
        if s.bytes < self.bytes_max / 2 {
            self.stall_spent.set(false);
        }
        Some(b)
    }

    /// Takes every queued batch (not the one a writer holds), counting their lines as
    /// offloaded: the destination is down and its cluster delivers them elsewhere.
    pub fn take_all(&self) -> Vec<Batch> {
        let mut s = self.state.borrow_mut();
        let taken: Vec<Batch> = s.batches.drain(..).collect();
        s.counters.offloaded_lines += taken.iter().map(|b| u64::from(b.lines)).sum::<u64>();
        s.bytes = 0;
        s.counters.queue_bytes = 0;
        self.stall_spent.set(false);
        taken
    }

    /// Puts back a batch the writer could not finish, at the front, so order is kept.
    pub fn unpop(&self, batch: Batch) {
        let mut s = self.state.borrow_mut();
        s.in_flight_lines = 0;
        s.bytes += batch.data.len();
        s.counters.queue_bytes = s.bytes as u64;
        s.batches.push_front(batch);
    }

    /// The writer delivered a popped batch: count it as sent.
    pub fn complete(&self, lines: u32, bytes: usize) {
        let mut s = self.state.borrow_mut();
        s.in_flight_lines = 0;
        s.counters.sent_lines += u64::from(lines);
        s.counters.sent_bytes += bytes as u64;
        s.counters.writes += 1;
    }

    /// The writer gave up on a popped batch (a failed UDP or file write): count it lost.
    pub fn fail(&self, lines: u32) {
        let mut s = self.state.borrow_mut();
        s.in_flight_lines = 0;
        s.counters.write_errors += 1;
        s.counters.dropped_lines_write_failed += u64::from(lines);
    }

    /// Waits until a batch is queued; returns false once closed and empty.
    pub async fn ready(&self) -> bool {
        poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            if !s.batches.is_empty() {
                Poll::Ready(true)
            } else if self.closed.get() {
                Poll::Ready(false)
            } else {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// No more batches will come; the writer drains what is queued and stops.
    pub fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.state.borrow_mut().waker.take() {
            w.wake();
        }
    }

    /// Takes batches again after [`close`](Self::close) (a retired destination listed
    /// again before it was reclaimed).
    pub fn reopen(&self) {
        self.closed.set(false);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Drops everything still queued (and a batch cut off mid-write), counting it as lost
    /// at shutdown.
    pub fn discard_at_shutdown(&self) {
        let mut s = self.state.borrow_mut();
        let in_flight = u64::from(std::mem::take(&mut s.in_flight_lines));
        let lines: u64 = in_flight + s.batches.iter().map(|b| u64::from(b.lines)).sum::<u64>();
        s.counters.dropped_lines_shutdown += lines;
        s.batches.clear();
        s.bytes = 0;
        s.counters.queue_bytes = 0;
    }

    /// Marks the destination connected (a reader may wait for it) or not (it may not).
    pub fn set_live(&self, live: bool) {
        self.live.set(live);
        self.state.borrow_mut().counters.connected = u64::from(live);
    }

    /// True when the destination is live, its queue cannot take another `headroom` bytes,
    /// and its stall budget is not spent: readers should wait for the writer rather than
    /// make the queue drop.
    pub fn congested(&self, headroom: usize) -> bool {
        self.live.get()
            && !self.stall_spent.get()
            && self.state.borrow().bytes + headroom > self.bytes_max
    }

    /// Readers waited their longest for this queue in vain: stop stalling them for it
    /// until it drains below half.
    pub fn spend_stall(&self) {
        self.stall_spent.set(true);
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.state.borrow().bytes
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
    pub fn recycle(&self, mut data: Vec<u8>) {
        let mut s = self.state.borrow_mut();
        if s.pool.len() < POOL_BUFFERS_MAX {
            data.clear();
            s.pool.push(data);
        }
    }

    /// Updates the destination's counters.
    pub fn count(&self, f: impl FnOnce(&mut DestinationCounters)) {
        f(&mut self.state.borrow_mut().counters);
    }

    /// A copy of the destination's counters.
    pub fn counters(&self) -> DestinationCounters {
        self.state.borrow().counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        Batch {
            data: vec![b'\n'; n],
            lines: n as u32,
        }
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
        q.unpop(b);
        assert_eq!(q.pop().unwrap().lines, 20);
        assert!(q.pop().is_none());
    }

    #[test]
    fn a_single_batch_larger_than_the_bound_is_kept() {
        let q = DestQueue::new(10);
        q.push(batch(20));
        assert_eq!(q.bytes(), 20);
    }
}

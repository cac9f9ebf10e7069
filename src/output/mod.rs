//! Delivery: per shard and destination, an open batch that lines are appended to, a
//! bounded queue of sealed batches, and a writer task that drains it.

pub mod file;
pub mod health;
pub mod queue;
pub mod spool;
pub mod spooler;
pub mod writer;

use std::rc::Rc;

use crate::config::{Config, Output, Transport};
use crate::point::Point;
use crate::protocol::encode::Encoder;
use crate::route::{DestId, DestinationKind, DestinationTable};
pub use queue::{Batch, DestQueue};

crate::counter_set! {
    /// Counters of one destination on one shard.
    pub struct DestinationCounters {
        /// Lines (records) put into this destination's batches.
        queued_lines: counter,
        /// Lines delivered: for TCP, the peer's kernel acknowledged every byte of them;
        /// for UDP and files, the kernel took them.
        sent_lines: counter,
        /// Bytes delivered (as `sent_lines`).
        sent_bytes: counter,
        /// Writes (syscalls or datagrams) that carried them.
        writes: counter,
        /// Lines written to a TCP connection that died before the peer acknowledged them,
        /// and so written again after reconnecting: the sink may have them twice.
        resent_lines: counter,
        /// Lines dropped: memory over queue_bytes_max with no usable spool, or the
        /// hand-off to a spool that cannot keep up (oldest first).
        dropped_lines_queue_full: counter,
        /// Lines dropped: still queued when the shutdown deadline passed (with a spool,
        /// only what the spool could not take).
        dropped_lines_shutdown: counter,
        /// Lines dropped: a UDP datagram or file write failed (a TCP batch's unwritten
        /// part is retried instead).
        dropped_lines_write_failed: counter,
        /// Lines moved to live members of the cluster when the destination went down
        /// (any_of, failover): delivered elsewhere, not lost.
        offloaded_lines: counter,
        /// Failed writes, resets and writes the peer did not acknowledge within
        /// write_timeout_ms (TCP: what was not acknowledged is sent again after
        /// reconnecting).
        write_errors: counter,
        /// Successful connects.
        connects: counter,
        /// Failed connects.
        connect_failures: counter,
        /// Lines appended to the disk spool.
        spooled_lines: counter,
        /// Payload bytes appended to the disk spool.
        spooled_bytes: counter,
        /// Spooled lines read back and delivered.
        replayed_lines: counter,
        /// Lines dropped: the spool was over its cap, so its oldest segment went.
        dropped_lines_spool_full: counter,
        /// Lines lost to a spool I/O error: appended, not yet committed, when a write or
        /// sync failed (an over-count if some of it reached the disk).
        dropped_lines_spool_error: counter,
        /// Damaged spool records skipped at replay (bad checksum, impossible header).
        spool_records_corrupt: counter,
        /// Every byte written to the spool's files: headers, frames, payloads, ledger.
        spool_bytes_written: counter,
        /// Failed spool file operations.
        spool_io_errors: counter,
        /// Bytes queued in memory now.
        queue_bytes: gauge,
        /// Bytes written to the connection that the peer has not acknowledged yet.
        unacked_bytes: gauge,
        /// 1 while connected.
        connected: gauge,
        /// How long the writer has had data outstanding with no acknowledgement from the
        /// peer, in milliseconds (0 while it makes progress or has nothing to send).
        stalled_ms: max,
        /// 1 while new batches go to the spool (the destination cannot take them).
        spooling: gauge,
        /// 1 while the spool takes nothing after an I/O error (memory only, drops counted).
        spool_failed: gauge,
        /// Bytes in the spool's files now, framing included (what spool_bytes_max bounds).
        spool_bytes: gauge,
        /// Lines in the spool not yet delivered.
        spool_lines: gauge,
        /// Age of the oldest undelivered spooled line, in milliseconds (0: none).
        spool_oldest_age_ms: max,
        /// Spooled lines delivered per second, over the last stats interval.
        replay_lines_per_s: gauge,
    }
}

/// One destination as a shard sees it: the batch being filled, its encoder and the
/// queue behind it.
#[derive(Debug)]
struct Slot {
    encoder: Encoder,
    open: Vec<u8>,
    open_lines: u32,
    /// Seal at this many bytes (`flush_bytes`, or the datagram size for UDP).
    seal_bytes: usize,
    queue: Rc<DestQueue>,
    /// Its spool's cap over all shards (0: no spool).
    spool_bytes_max: u64,
}

/// The shard's side of every destination: append lines, seal batches, hand them to writers.
#[derive(Debug)]
pub struct Outputs {
    slots: Vec<Slot>,
    /// Headroom a reader needs before it reads again: one read's worth of lines.
    headroom_bytes: usize,
    /// Batch and queue bounds, for destinations added at run time.
    cfg: Output,
}

impl Outputs {
    /// Queues for every destination of the table, bounded by `cfg.queue_bytes_max` each
    /// (no spools: see [`extend`](Self::extend)).
    pub fn new(table: &DestinationTable, cfg: &Output, headroom_bytes: usize) -> Outputs {
        let mut out = Outputs {
            slots: Vec::with_capacity(table.destinations.len()),
            headroom_bytes,
            cfg: cfg.clone(),
        };
        out.extend(table, None);
        out
    }

    /// Adds a slot (batch and queue) for each destination `table` has beyond ours: the
    /// table only ever grows, so existing queues are untouched. With `config`, TCP
    /// destinations get a spool when [`spool_bytes_max`] says so.
    pub fn extend(&mut self, table: &DestinationTable, config: Option<&Config>) {
        for i in self.slots.len().min(table.destinations.len())..table.destinations.len() {
            let d = &table.destinations[i];
            let seal_bytes = match &d.kind {
                DestinationKind::Net(m) if m.transport == Transport::Udp => {
                    self.cfg.udp_datagram_bytes_max
                }
                _ => self.cfg.flush_bytes,
            };
            let spool = config.map_or(0, |c| spool_bytes_max(c, table, DestId(i as u16)));
            let queue = if spool > 0 {
                DestQueue::with_spool(self.cfg.queue_bytes_max)
            } else {
                DestQueue::new(self.cfg.queue_bytes_max)
            };
            self.slots.push(Slot {
                encoder: Encoder::Plaintext,
                open: Vec::with_capacity(seal_bytes),
                open_lines: 0,
                seal_bytes,
                queue: Rc::new(queue),
                spool_bytes_max: spool,
            });
        }
    }

    /// The spool cap of destination `d` over all shards (0: it has no spool).
    pub fn spool_bytes_max(&self, d: DestId) -> u64 {
        self.slots[d.index()].spool_bytes_max
    }

    /// Destination `d` is down and nothing else can take its lines: its open batch is
    /// sealed and everything it holds in memory goes behind its spool (if it has one).
    pub fn spill(&mut self, d: DestId) {
        let slot = &mut self.slots[d.index()];
        if slot.open_lines > 0 {
            seal(slot);
        }
        slot.queue.spill();
    }

    /// A destination went down and its cluster routes around it: its open batch is
    /// sealed and every queued batch moves to `targets` in turn (live members of the
    /// cluster). Returns the lines moved.
    pub fn offload(&mut self, d: DestId, targets: &[DestId]) -> u64 {
        if targets.is_empty() {
            return 0;
        }
        let slot = &mut self.slots[d.index()];
        if slot.open_lines > 0 {
            seal(slot);
        }
        let batches = slot.queue.take_all();
        let mut moved = 0;
        for (i, b) in batches.into_iter().enumerate() {
            moved += u64::from(b.lines);
            self.slots[targets[i % targets.len()].index()].queue.push(b);
        }
        moved
    }

    /// Sets the headroom a reader needs before it reads again (the largest read buffer
    /// of the running listeners).
    pub fn set_headroom(&mut self, headroom_bytes: usize) {
        self.headroom_bytes = headroom_bytes;
    }

    /// Number of destinations (retired ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True with no destinations.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A destination left the config: its open batch is queued and the queue closed, so
    /// its writer delivers what is queued and stops. The router no longer sends to it.
    /// Retiring a retired destination does nothing.
    pub fn retire(&mut self, d: DestId) {
        let slot = &mut self.slots[d.index()];
        if slot.queue.is_closed() {
            return;
        }
        if slot.open_lines > 0 {
            seal(slot);
        }
        slot.queue.close();
    }

    /// The queue of a destination (for its writer).
    pub fn queue(&self, d: DestId) -> Rc<DestQueue> {
        self.slots[d.index()].queue.clone()
    }

    /// Encodes a point under `name` into destination `d`'s open batch (`as_received`:
    /// `name` is the point's own, not cleansed or rewritten), sealing the batch first if
    /// the record would not fit and after if it is full.
    #[inline]
    pub fn append(&mut self, d: DestId, p: &Point<'_>, name: &[u8], as_received: bool) {
        let slot = &mut self.slots[d.index()];
        let len = slot.encoder.encoded_len(p, name, as_received);
        if len == 0 {
            return;
        }
        if slot.open_lines > 0 && slot.open.len() + len > slot.seal_bytes {
            seal(slot);
        }
        slot.open_lines += slot.encoder.encode(p, name, as_received, &mut slot.open);
        if slot.open.len() >= slot.seal_bytes {
            seal(slot);
        }
    }

    /// Seals every partly filled batch (the `flush_interval_ms` tick and shutdown).
    pub fn seal_all(&mut self) {
        for slot in &mut self.slots {
            if slot.open_lines > 0 {
                seal(slot);
            }
        }
    }

    /// True when a live destination's queue is too full to take another read's worth.
    pub fn congested(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.queue.congested(self.headroom_bytes + s.open.len()))
    }

    /// A reader waited `stall_ms_max` and the queues are still full: the congested ones
    /// stop stalling readers until they drain (their overflow is dropped and counted).
    pub fn spend_stalls(&self) {
        for s in &self.slots {
            if s.queue.congested(self.headroom_bytes + s.open.len()) {
                s.queue.spend_stall();
            }
        }
    }

    /// Every queue, in destination order.
    pub fn queues(&self) -> impl Iterator<Item = &Rc<DestQueue>> {
        self.slots.iter().map(|s| &s.queue)
    }
}

/// The spool cap of destination `d` over all shards: `output.spool_bytes_max`, or the
/// largest override of the clusters listing it (so `0` only when every one says 0); 0
/// without `output.spool_dir` and for UDP and file destinations, which never spool.
pub fn spool_bytes_max(cfg: &Config, table: &DestinationTable, d: DestId) -> u64 {
    let tcp = matches!(&table.destinations[d.index()].kind,
        DestinationKind::Net(m) if m.transport == Transport::Tcp);
    if !tcp || cfg.output.spool_dir.is_none() {
        return 0;
    }
    table
        .cluster_members
        .iter()
        .zip(&cfg.clusters)
        .filter(|(members, _)| members.contains(&d))
        .map(|(_, c)| c.spool_bytes_max.unwrap_or(cfg.output.spool_bytes_max))
        .max()
        .unwrap_or(0)
}

fn seal(slot: &mut Slot) {
    let fresh = slot.queue.buffer(slot.seal_bytes);
    let data = std::mem::replace(&mut slot.open, fresh);
    let lines = std::mem::take(&mut slot.open_lines);
    slot.queue.push(Batch::new(data, lines));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn batches_seal_at_size_and_on_demand() {
        let cfg = Config::parse(
            r#"
            [output]
            flush_bytes = 512
            [[listen]]
            name = "g"
            url = "tcp://127.0.0.1:0"
            format = "graphite"
            [[cluster]]
            name = "c"
            kind = "forward"
            members = ["127.0.0.1:1", "udp://127.0.0.1:2"]
            [[route]]
            match = { all = true }
            send_to = ["c"]
        "#,
        )
        .unwrap();
        let table = DestinationTable::from_config(&cfg);
        let mut out = Outputs::new(&table, &cfg.output, 0);
        let p = Point {
            name: b"a.b.c",
            key: b"a.b.c",
            line: b"a.b.c 1 1700000000",
            value: crate::point::Value::Graphite(crate::point::Graphite {
                value: b"1",
                timestamp: b"1700000000",
            }),
        };
        for _ in 0..40 {
            out.append(DestId(0), &p, p.name, true);
        }
        // 40 lines of 19 bytes = 760 > 512: one batch sealed at the line that would overflow.
        let q = out.queue(DestId(0));
        let b = q.pop().unwrap();
        assert!(b.data.len() <= 512 && b.data.ends_with(b"\n"));
        assert_eq!(b.data.len(), b.lines as usize * 19);
        assert!(q.pop().is_none());
        out.seal_all();
        let rest = q.pop().unwrap();
        assert_eq!(b.lines + rest.lines, 40);
    }
}

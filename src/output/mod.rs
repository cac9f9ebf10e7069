//! Delivery: per shard and destination, an open batch that lines are appended to, a
//! bounded queue of sealed batches, and a writer task that drains it.

pub mod file;
pub mod health;
pub mod queue;
pub mod spool;
pub mod spooler;
pub mod writer;

use std::rc::Rc;

use crate::config::{Config, Output, OutputFormat, Transport};
use crate::point::Point;
use crate::protocol::collectd::EncoderConfig;
use crate::protocol::encode::Encoder;
use crate::route::{DestId, DestState, Destination, DestinationKind, DestinationTable};
use crate::telemetry::set::CounterSet;
pub use queue::{Batch, DestQueue};

crate::counter_set! {
    /// Counters of one destination on one shard.
    pub struct DestinationCounters {
        /// Lines (records: collectd value lists for a collectd destination) put into this
        /// destination's batches.
        queued_lines: counter,
        /// Lines delivered: for TCP, the peer's kernel acknowledged every byte of them;
        /// for UDP and files, the kernel took them.
        sent_lines: counter,
        /// Bytes delivered (as `sent_lines`).
        sent_bytes: counter,
        /// Writes (syscalls or datagrams) that carried them.
        writes: counter,
        /// Lines written again after a TCP connection broke: those the peer had not
        /// acknowledged, and those its kernel acknowledged while its window said its
        /// process had not read them (counted sent once). The sink may have them twice.
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
        /// Points dropped because the destination's format cannot carry them: a line to a
        /// collectd member (not_collectd), a collectd value list of a type the listener's
        /// types table lacks to a graphite member (unknown_type), a value list too big for
        /// one packet (bad_value_list).
        dropped_unencodable: counter,
        /// collectd series written to graphite with an unknown rate (`nan`) because the
        /// destination keeps rate state for store_rates_series_max series already.
        store_rates_series_full: counter,
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
        /// Lines found in the spool when this destination's spool task opened it: left by
        /// an earlier run, or by an earlier destination of the same name that was removed
        /// while unreachable. They are delivered (or dropped) like the others, so
        /// queued + recovered = sent + dropped + offloaded + what the queue and the spool
        /// hold.
        recovered_lines: counter,
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
        /// 1 while health has the destination down and its writer holds its batches
        /// (UDP members, and members of any_of and failover clusters, whose queue moves
        /// to the live members).
        held: gauge,
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
    /// The occupant of the id this slot serves (see [`DestinationTable`]).
    serial: u64,
    encoder: Encoder,
    open: Open,
    queue: Rc<DestQueue>,
    /// A UDP member: its writer cannot tell it is down, so health holds its batches.
    udp: bool,
    /// Its spool's cap over all shards (0: no spool).
    spool_bytes_max: u64,
}

/// The batch being filled. Empty with no capacity until its first record: an idle
/// destination holds no batch buffer.
#[derive(Debug)]
struct Open {
    data: Vec<u8>,
    records: u32,
    /// Seal at this many bytes (`flush_bytes`, or the datagram size for UDP).
    seal_bytes: usize,
}

impl Open {
    /// Queues the batch (it holds records); the next buffer is taken at the next record.
    fn seal(&mut self, queue: &DestQueue) {
        let data = std::mem::take(&mut self.data);
        let lines = std::mem::take(&mut self.records);
        queue.push(Batch::new(data, lines));
    }

    /// A buffer to append to (taken from the queue's pool at the first record).
    fn reserve(&mut self, queue: &DestQueue) {
        if self.data.capacity() == 0 {
            self.data = queue.buffer(self.seal_bytes);
        }
    }

    /// Records were appended from byte `before` on: seal the batch before them when they
    /// overflow it (so a batch never cuts a record, and a UDP batch stays one datagram),
    /// and after them when the batch is full.
    fn appended(&mut self, before: usize, records: u32, queue: &DestQueue) {
        if self.records > 0 && self.data.len() > self.seal_bytes {
            let mut fresh = queue.buffer(self.seal_bytes);
            fresh.extend_from_slice(&self.data[before..]);
            self.data.truncate(before);
            let data = std::mem::replace(&mut self.data, fresh);
            let lines = std::mem::replace(&mut self.records, records);
            queue.push(Batch::new(data, lines));
        } else {
            self.records += records;
        }
        if self.data.len() >= self.seal_bytes {
            self.seal(queue);
        }
    }

    /// A whole packet from a packet encoder: a batch of its own.
    fn packet(&mut self, packet: &[u8], records: u32, queue: &DestQueue) {
        debug_assert_eq!(self.records, 0, "packets are sealed as they come");
        self.reserve(queue);
        self.data.extend_from_slice(packet);
        self.records = records;
        self.seal(queue);
    }
}

impl Slot {
    /// Seals the open batch, after the packet a packet encoder is filling.
    fn seal_all(&mut self) {
        let Slot {
            encoder,
            open,
            queue,
            ..
        } = self;
        if let Encoder::Collectd(c) = encoder {
            c.flush(&mut |packet: &[u8], n| open.packet(packet, n, queue));
        }
        if open.records > 0 {
            open.seal(queue);
        }
    }
}

/// The encoder a destination's format asks for.
fn encoder_for(d: &Destination) -> Encoder {
    match &d.format {
        OutputFormat::Graphite(g) => Encoder::lines(g.options.clone(), g.store_rates_series_max),
        OutputFormat::Collectd(c) => Encoder::collectd(EncoderConfig {
            max_packet_bytes: c.packet_bytes_max,
            security: c.send_security(),
        }),
    }
}

/// What [`Outputs::apply`] did to a destination id, for the shard to follow with its
/// writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotChange {
    /// A new occupant: it needs a writer.
    Added(DestId),
    /// Retired: its queue was closed; its writer drains it and stops.
    Retired(DestId),
    /// Listed again while draining: its queue is open again; it needs a writer if the
    /// old one has stopped.
    Revived(DestId),
    /// Freed: its counters went into the reclaimed totals and its slot is gone.
    Reclaimed(DestId),
}

/// The shard's side of every destination: append lines, seal batches, hand them to writers.
#[derive(Debug)]
pub struct Outputs {
    /// By [`DestId`]; `None` for a free id.
    slots: Vec<Option<Slot>>,
    /// The counters of every reclaimed destination, summed: what they did stays counted
    /// after their slots are gone.
    reclaimed: DestinationCounters,
    /// Headroom a reader needs before it reads again: one read's worth of lines.
    headroom_bytes: usize,
    /// Batch and queue bounds, for destinations added at run time.
    cfg: Output,
}

impl Outputs {
    /// Queues for every destination of the table, bounded by `cfg.queue_bytes_max` each
    /// (no spools: see [`apply`](Self::apply)).
    pub fn new(table: &DestinationTable, cfg: &Output, headroom_bytes: usize) -> Outputs {
        let mut out = Outputs {
            slots: Vec::with_capacity(table.len()),
            reclaimed: DestinationCounters::default(),
            headroom_bytes,
            cfg: cfg.clone(),
        };
        out.apply(table, None);
        out
    }

    fn slot(&self, d: &Destination, spool_bytes_max: u64) -> Slot {
        let udp = matches!(&d.kind, DestinationKind::Net(m) if m.transport == Transport::Udp);
        let seal_bytes = if udp {
            self.cfg.udp_datagram_bytes_max
        } else {
            self.cfg.flush_bytes
        };
        Slot {
            serial: d.serial,
            encoder: encoder_for(d),
            open: Open {
                data: Vec::new(),
                records: 0,
                seal_bytes,
            },
            queue: Rc::new(if spool_bytes_max > 0 {
                DestQueue::with_spool(self.cfg.queue_bytes_max)
            } else {
                DestQueue::new(self.cfg.queue_bytes_max)
            }),
            udp,
            spool_bytes_max,
        }
    }

    /// Health says destination `d` is down (or up again): a UDP member's writer holds
    /// its batches while it is down (a TCP writer finds out by itself), and so does the
    /// writer of a member its clusters route around (its queue moves to the live
    /// members, what its writer gives back after that too).
    pub fn set_down(&mut self, d: DestId, down: bool) {
        if let Some(Some(s)) = self.slots.get(d.index()) {
            s.queue.set_held(down && (s.udp || s.queue.routed_around()));
        }
    }

    /// Whether the clusters listing `d` route around it when it is down (set at every
    /// topology commit). A TCP member no longer routed around is not held: its writer
    /// delivers its queue when it can, health or not.
    pub fn set_routed_around(&mut self, d: DestId, yes: bool) {
        if let Some(Some(s)) = self.slots.get(d.index()) {
            s.queue.set_routed_around(yes);
            if !yes && !s.udp && s.queue.is_held() {
                s.queue.set_held(false);
            }
        }
    }

    /// Follows the table: a slot for each new occupant, retired ones closed, revived
    /// ones reopened, freed ones dropped with their counters kept in the reclaimed
    /// totals. Returns what changed, in id order. With `config`, a new TCP destination
    /// gets a spool when [`spool_bytes_max`] says so.
    pub fn apply(&mut self, table: &DestinationTable, config: Option<&Config>) -> Vec<SlotChange> {
        let mut changes = Vec::new();
        if self.slots.len() < table.len() {
            self.slots.resize_with(table.len(), || None);
        }
        for i in 0..table.len() {
            let d = DestId(i as u16);
            let want = table.get(d);
            let stale = match (&self.slots[i], want) {
                (Some(s), Some(w)) => s.serial != w.serial,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if stale {
                self.reclaim(d);
                changes.push(SlotChange::Reclaimed(d));
            }
            let Some(w) = want else { continue };
            if self.slots[i].is_none() {
                let spool = config.map_or(0, |c| spool_bytes_max(c, table, d));
                self.slots[i] = Some(self.slot(w, spool));
                changes.push(SlotChange::Added(d));
            }
            let slot = self.slots[i].as_mut().expect("filled above");
            match (table.states[i], slot.queue.is_closed()) {
                (DestState::Live, true) => {
                    slot.queue.reopen();
                    changes.push(SlotChange::Revived(d));
                }
                (DestState::Retired { .. }, false) => {
                    self.retire(d);
                    changes.push(SlotChange::Retired(d));
                }
                _ => {}
            }
        }
        changes
    }

    /// Drops a freed destination's slot, keeping its counters in the reclaimed totals.
    /// Only drained destinations are freed; anything still queued is counted as lost at
    /// shutdown (it cannot happen while the control thread frees only drained ones).
    fn reclaim(&mut self, d: DestId) {
        let Some(slot) = self.slots[d.index()].take() else {
            return;
        };
        debug_assert!(slot.open.records == 0 && slot.queue.bytes() == 0);
        slot.queue.discard_at_shutdown();
        let mut c = slot.queue.counters();
        c.queued_lines += u64::from(slot.open.records);
        c.dropped_lines_shutdown += u64::from(slot.open.records);
        self.reclaimed.add(&c);
    }

    /// The spool cap of destination `d` over all shards (0: it has no spool, or no slot).
    pub fn spool_bytes_max(&self, d: DestId) -> u64 {
        self.slots
            .get(d.index())
            .and_then(Option::as_ref)
            .map_or(0, |s| s.spool_bytes_max)
    }

    /// Destination `d` is down and nothing else can take its lines: its open batch is
    /// sealed and everything it holds in memory goes behind its spool (if it has one).
    pub fn spill(&mut self, d: DestId) {
        if let Some(slot) = self.slots.get_mut(d.index()).and_then(Option::as_mut) {
            slot.seal_all();
            slot.queue.spill();
        }
    }

    /// A destination went down and its cluster routes around it: its open batch is
    /// sealed and every queued batch moves to `targets` in turn (live members of the
    /// cluster). Returns the lines moved.
    pub fn offload(&mut self, d: DestId, targets: &[DestId]) -> u64 {
        if targets.is_empty() {
            return 0;
        }
        let Some(slot) = self.slots[d.index()].as_mut() else {
            return 0;
        };
        slot.seal_all();
        let batches = slot.queue.take_all();
        let mut moved = 0;
        for (i, b) in batches.into_iter().enumerate() {
            moved += u64::from(b.lines);
            if let Some(t) = self.slots[targets[i % targets.len()].index()].as_ref() {
                t.queue.push(b);
            }
        }
        moved
    }

    /// Sets the headroom a reader needs before it reads again (the largest read buffer
    /// of the running listeners).
    pub fn set_headroom(&mut self, headroom_bytes: usize) {
        self.headroom_bytes = headroom_bytes;
    }

    /// Number of destination ids (retired and free ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True with no destination ids.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A destination left the config: its open batch is queued and the queue closed, so
    /// its writer delivers what is queued and stops. The router no longer sends to it.
    /// Retiring a retired destination does nothing.
    pub fn retire(&mut self, d: DestId) {
        let Some(slot) = self.slots[d.index()].as_mut() else {
            return;
        };
        if slot.queue.is_closed() {
            return;
        }
        slot.seal_all();
        slot.queue.close();
    }

    /// The queue of a destination (for its writer); `None` for a free id.
    pub fn queue(&self, d: DestId) -> Option<Rc<DestQueue>> {
        self.slots[d.index()].as_ref().map(|s| s.queue.clone())
    }

    /// Encodes a point under `name` into destination `d`'s open batch (`as_received`:
    /// `name` is the point's own, not cleansed or rewritten), sealing the batch before
    /// the record if it would overflow and after it if it is full. A point the
    /// destination's format cannot carry is counted.
    #[inline(always)]
    pub fn append(&mut self, d: DestId, p: &Point<'_>, name: &[u8], as_received: bool) {
        // The router names only live destinations, and a live id has a slot.
        let Some(Slot {
            encoder,
            open,
            queue,
            ..
        }) = self.slots[d.index()].as_mut()
        else {
            debug_assert!(false, "append to free destination {d:?}");
            return;
        };
        let done = match encoder {
            Encoder::Plaintext(t) => {
                open.reserve(queue);
                let before = open.data.len();
                t.encode(p, name, as_received, &mut open.data).map(|n| {
                    if n > 0 {
                        open.appended(before, n, queue)
                    }
                })
            }
            Encoder::Collectd(c) => push_packet(c, p, open, queue),
        };
        if done.is_err() {
            queue.count(|c| c.dropped_unencodable += 1);
        }
    }

    /// Seals every partly filled batch (the `flush_interval_ms` tick and shutdown).
    pub fn seal_all(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            slot.seal_all();
        }
    }

    /// True when a live destination's queue is too full to take another read's worth.
    /// Retired destinations (closed queues) take no more lines, so they never stall.
    pub fn congested(&self) -> bool {
        self.slots.iter().flatten().any(|s| {
            !s.queue.is_closed() && s.queue.congested(self.headroom_bytes + s.open.data.len())
        })
    }

    /// A reader waited `stall_ms_max` and the queues are still full: the congested ones
    /// stop stalling readers until they drain (their overflow is dropped and counted).
    pub fn spend_stalls(&self) {
        for s in self.slots.iter().flatten() {
            if s.queue.congested(self.headroom_bytes + s.open.data.len()) {
                s.queue.spend_stall();
            }
        }
    }

    /// Every queue, in destination order (free ids have none).
    pub fn queues(&self) -> impl Iterator<Item = &Rc<DestQueue>> {
        self.slots.iter().flatten().map(|s| &s.queue)
    }

    /// Each destination's counters by id (zeroes for a free id), into `out`.
    pub fn counters_into(&self, out: &mut Vec<DestinationCounters>) {
        out.resize(self.slots.len(), DestinationCounters::default());
        for (o, s) in out.iter_mut().zip(&self.slots) {
            *o = s.as_ref().map_or_else(DestinationCounters::default, |s| {
                let mut c = s.queue.counters();
                if let Encoder::Plaintext(t) = &s.encoder {
                    c.store_rates_series_full = t.series_full();
                }
                c
            });
        }
    }

    /// The counters of every reclaimed destination, summed.
    pub fn reclaimed(&self) -> &DestinationCounters {
        &self.reclaimed
    }
}

/// A point into a collectd destination's packet (out of line: the line path stays small).
#[inline(never)]
fn push_packet(
    c: &mut crate::protocol::encode::CollectdPackets,
    p: &Point<'_>,
    open: &mut Open,
    queue: &DestQueue,
) -> Result<(), crate::protocol::encode::Unencodable> {
    c.push(p, &mut |packet: &[u8], n| open.packet(packet, n, queue))
}

/// The spool cap of destination `d` over all shards: `output.spool_bytes_max`, or the
/// largest override of the clusters listing it (so `0` only when every one says 0); 0
/// without `output.spool_dir` and for UDP and file destinations, which never spool.
pub fn spool_bytes_max(cfg: &Config, table: &DestinationTable, d: DestId) -> u64 {
    let tcp = matches!(table.get(d).map(|x| &x.kind),
        Some(DestinationKind::Net(m)) if m.transport == Transport::Tcp);
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
        let q = out.queue(DestId(0)).unwrap();
        let b = q.pop().unwrap();
        assert!(b.data.len() <= 512 && b.data.ends_with(b"\n"));
        assert_eq!(b.data.len(), b.lines as usize * 19);
        assert!(q.pop().is_none());
        out.seal_all();
        let rest = q.pop().unwrap();
        assert_eq!(b.lines + rest.lines, 40);
    }
}

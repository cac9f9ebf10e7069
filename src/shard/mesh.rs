//! The mesh: bounded single-producer channels between every pair of shards, for the one
//! kind of cross-core traffic cadent has: handing a point to the shard that owns its
//! name (aggregators, stores), and the flush markers that keep an aggregator's intervals
//! exact across shards.
//!
//! Every channel is made before the shards start (`links`), so a shard never waits for
//! another to set anything up. A shard appends records to an open batch per peer and
//! sends a batch when it reaches `mesh_batch_bytes`, on the mesh tick
//! (`mesh_interval_ms`), or early when its reader finds its socket empty and the
//! channel has room; the peer drains its inbound channels on its own tick and before
//! it processes what it reads itself. A full
//! channel never blocks the sender: the batch is dropped and its records counted
//! (`dropped_records_full`). Records are opaque here: `[len u32][tag u8][payload]`, the
//! stage that wrote them reads them.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

crate::counter_set! {
    /// Cross-shard traffic of one shard.
    pub struct MeshCounters {
        /// Records this shard sent to others.
        records_sent: counter,
        /// Batches this shard sent to others.
        batches_sent: counter,
        /// Records this shard received from others.
        records_received: counter,
        /// Records dropped because a peer's channel was full (the peer is slower than
        /// what is sent to it).
        dropped_records_full: counter,
    }
}

/// One batch in flight: records back to back.
#[derive(Debug, Default)]
pub struct MeshBatch {
    bytes: Vec<u8>,
    records: u32,
}

type Channel = Arc<ArrayQueue<MeshBatch>>;

/// Bytes of a record's frame header: length (u32) and tag.
const HEADER_BYTES: usize = 5;

/// Makes the mesh for `shards` shards: one view per shard, in shard order.
pub fn links(shards: usize, batch_bytes: usize, queue_bytes_max: usize) -> Vec<ShardMesh> {
    let batches = (queue_bytes_max / batch_bytes.max(1)).max(2);
    // channels[from * shards + to]; none from a shard to itself.
    let channels: Vec<Option<Channel>> = (0..shards * shards)
        .map(|i| (i / shards != i % shards).then(|| Arc::new(ArrayQueue::new(batches))))
        .collect();
    (0..shards)
        .map(|me| ShardMesh {
            me,
            out: (0..shards)
                .map(|to| channels[me * shards + to].clone())
                .collect(),
            inbound: (0..shards)
                .map(|from| channels[from * shards + me].clone())
                .collect(),
            open: (0..shards).map(|_| MeshBatch::default()).collect(),
            batch_bytes,
            counters: MeshCounters::default(),
        })
        .collect()
}

/// One shard's ends of the mesh.
#[derive(Debug)]
pub struct ShardMesh {
    me: usize,
    out: Vec<Option<Channel>>,
    inbound: Vec<Option<Channel>>,
    open: Vec<MeshBatch>,
    batch_bytes: usize,
    /// This shard's mesh counters.
    pub counters: MeshCounters,
}

impl ShardMesh {
    /// This shard's number.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.out.len()
    }

    /// Appends a record for shard `to` (not this one): `tag`, then whatever `write`
    /// appends. Sends the batch once it is full.
    #[inline]
    pub fn record(&mut self, to: usize, tag: u8, write: impl FnOnce(&mut Vec<u8>)) {
        debug_assert_ne!(to, self.me, "a shard does not send to itself");
        let b = &mut self.open[to];
        if b.bytes.capacity() == 0 {
            b.bytes.reserve(self.batch_bytes + 256);
        }
        let at = b.bytes.len();
        b.bytes.extend_from_slice(&[0, 0, 0, 0, tag]);
        write(&mut b.bytes);
        let len = (b.bytes.len() - at - HEADER_BYTES) as u32;
        b.bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
        b.records += 1;
        if b.bytes.len() >= self.batch_bytes {
            self.send(to);
        }
    }

    /// Sends every partly filled batch (the mesh tick, and before a flush marker).
    pub fn send_all(&mut self) {
        for to in 0..self.out.len() {
            if self.open[to].records > 0 {
                self.send(to);
            }
        }
    }

    /// Sends every partly filled batch whose channel is less than a quarter full: a
    /// reader calls it when its socket is empty, so a record reaches its owner before
    /// the owner reads what a client sent next (the order of one name's samples,
    /// whichever shard read them, is then the order they were read in, as with one
    /// reader). A fuller channel keeps the batch open for the tick, so small early
    /// batches never fill a channel a slow owner drains.
    pub fn send_early(&mut self) {
        for to in 0..self.out.len() {
            if self.open[to].records == 0 {
                continue;
            }
            let Some(ch) = &self.out[to] else { continue };
            if ch.len() < ch.capacity() / 4 {
                self.send(to);
            }
        }
    }

    /// Whether a batch from another shard is waiting.
    #[inline]
    pub fn has_inbound(&self) -> bool {
        self.inbound
            .iter()
            .any(|ch| ch.as_ref().is_some_and(|c| !c.is_empty()))
    }

    fn send(&mut self, to: usize) {
        let batch = std::mem::take(&mut self.open[to]);
        let records = u64::from(batch.records);
        let Some(ch) = &self.out[to] else { return };
        match ch.push(batch) {
            Ok(()) => {
                self.counters.records_sent += records;
                self.counters.batches_sent += 1;
            }
            Err(_) => self.counters.dropped_records_full += records,
        }
    }

    /// Takes the next batch that arrived from shard `from`, if any.
    pub fn receive(&mut self, from: usize) -> Option<MeshBatch> {
        let b = self.inbound[from].as_ref()?.pop()?;
        self.counters.records_received += u64::from(b.records);
        Some(b)
    }
}

impl MeshBatch {
    /// The records of the batch from byte `offset`: (offset after it, tag, payload).
    pub fn records_from(&self, offset: usize) -> Records<'_> {
        Records {
            bytes: &self.bytes,
            at: offset,
        }
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
}

/// The records of a batch, in order.
pub struct Records<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Records<'a> {
    /// (offset of the next record, tag, payload).
    type Item = (usize, u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let h = self.bytes.get(self.at..self.at + HEADER_BYTES)?;
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let tag = h[4];
        let start = self.at + HEADER_BYTES;
        let payload = &self.bytes[start..start + len];
        self.at = start + len;
        Some((self.at, tag, payload))
    }
}

/// A little-endian reader over a record's payload (written by the same build, so a
/// short payload is a programmer error).
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// Takes `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    /// Takes a u8.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1)[0]
    }
    /// Takes a u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes(2).try_into().expect("2 bytes"))
    }
    /// Takes a u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes(4).try_into().expect("4 bytes"))
    }
    /// Takes an i64.
    pub fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.bytes(8).try_into().expect("8 bytes"))
    }
    /// Takes an f64.
    pub fn f64(&mut self) -> f64 {
        f64::from_bits(u64::from_le_bytes(
            self.bytes(8).try_into().expect("8 bytes"),
        ))
    }
    /// Takes a u16-length-prefixed byte string.
    pub fn str16(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.bytes(n)
    }
}

/// Appends a u16-length-prefixed byte string (at most 65535 bytes; longer is cut, which
/// the writers prevent: names are bounded by `line_bytes_max`).
pub fn put_str16(out: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_cross_in_order_and_a_full_channel_drops_and_counts() {
        // Room for 2 batches of 64 bytes per channel.
        let mut m = links(3, 64, 128);
        for i in 0..40u32 {
            m[0].record(2, 7, |b| b.extend_from_slice(&i.to_le_bytes()));
        }
        m[0].send_all();
        let sent = m[0].counters.records_sent;
        let dropped = m[0].counters.dropped_records_full;
        assert_eq!(sent + dropped, 40);
        assert!(dropped > 0, "the channel holds two batches");
        let mut got = Vec::new();
        while let Some(b) = m[2].receive(0) {
            for (_, tag, p) in b.records_from(0) {
                assert_eq!(tag, 7);
                got.push(u32::from_le_bytes(p.try_into().unwrap()));
            }
        }
        assert_eq!(got.len() as u64, sent);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
        assert_eq!(
            got[0], 0,
            "the oldest batches arrive; later ones are dropped"
        );
        assert!(m[1].receive(0).is_none());
        assert_eq!(m[2].counters.records_received, sent);
    }

    #[test]
    fn reader_reads_what_was_written() {
        let mut out = Vec::new();
        out.push(3u8);
        out.extend_from_slice(&7u16.to_le_bytes());
        out.extend_from_slice(&1.5f64.to_bits().to_le_bytes());
        out.extend_from_slice(&(-9i64).to_le_bytes());
        put_str16(&mut out, b"a.b");
        let mut r = Reader(&out);
        assert_eq!((r.u8(), r.u16(), r.f64(), r.i64()), (3, 7, 1.5, -9));
        assert_eq!(r.str16(), b"a.b");
        assert!(r.0.is_empty());
    }
}

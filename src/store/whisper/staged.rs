//! A [`WhisperIo`] over what an update has fetched of a file so far, so the synchronous
//! format engine can be driven by asynchronous I/O (io_uring) without blocking.
//!
//! The engine runs against a `Staged` view: reads are served from the byte ranges
//! fetched so far, with the update's own writes laid over them; writes are kept, not
//! made. A read of a range not fetched yet is recorded as missing and answered with
//! zeros, and the run's result is thrown away: the driver fetches the missing ranges
//! (all at once, one io_uring round) and runs the engine again from the start, until a
//! run reads only fetched bytes. The engine is deterministic, so that last run is
//! exactly what it would have done on the file itself, and its writes (merged into
//! disjoint ranges, later bytes winning) are what the driver writes. A whisper update
//! reads the header, each archive's base point and each propagation window: a few
//! rounds, each of them one io_uring batch.
//!
//! A file the update creates is known whole: its header, then zeros (every create mode
//! reads back as zeros), so nothing is fetched.
//!
//! Given a descriptor ([`Staged::direct`]), a miss is first read at once with
//! `preadv2(RWF_NOWAIT)`, which never blocks: it answers from the page cache or says it
//! would block (then the miss is recorded as above). The range is rounded out to
//! [`READ_GRAIN_BYTES`], which often holds the next read (the header's page holds the
//! first archive's base point; a propagation window holds the slots just written, so
//! their writes can be joined) without copying whole pages out of the page cache: the
//! copy of a 4 KiB page per read was about 5 % of the store's CPU.

use std::io;
use std::os::unix::io::RawFd;

use super::io::WhisperIo;

/// Direct reads are rounded out to this grain. Measured on `bench/store.py` (60 s,
/// cadent alone, two runs each): 4096 took 8.46 and 8.11 CPU-s, 512 took 7.81 and 7.55,
/// with as many writes per update.
const READ_GRAIN_BYTES: u64 = 512;

/// Writes closer than this are joined into one, the bytes between them rewritten as
/// they were fetched. Under a page, so the gap only touches pages the writes touch
/// anyway: a sparse file gets no block it would not have got.
const GAP_BYTES_MAX: u64 = 4096 - 1;

/// What an update writes: an allocation (offset, length), then disjoint writes.
pub type Plan = (Option<(u64, u64)>, Vec<(u64, Vec<u8>)>);

/// The bytes of one file as far as an update has seen them.
#[derive(Debug, Default)]
pub struct Staged {
    /// File length on disk when fetched (writes may extend it).
    disk_len: u64,
    /// Fetched ranges, sorted, disjoint and not adjacent.
    known: Vec<(u64, Vec<u8>)>,
    /// Everything from here to `disk_len` reads as zero (a file this update created).
    zero_from: Option<u64>,
    /// This run's writes, in order.
    writes: Vec<(u64, Vec<u8>)>,
    /// This run's allocation, if any.
    allocate: Option<(u64, u64)>,
    /// This run's reads of unfetched bytes.
    missing: Vec<(u64, usize)>,
    /// A descriptor to read misses from at once (`RWF_NOWAIT`), while it answers.
    direct: Option<RawFd>,
    /// Direct reads made.
    direct_reads: u32,
    /// Buffers of earlier updates, reused (a direct read's page is large enough for
    /// glibc's allocator to consolidate its small bins on every one).
    spare: Vec<Vec<u8>>,
}

impl Staged {
    /// A view of an existing file of `disk_len` bytes, nothing fetched yet.
    pub fn existing(disk_len: u64) -> Staged {
        Staged {
            disk_len,
            ..Staged::default()
        }
    }

    /// A view of an existing file of `disk_len` bytes open as `fd`, whose misses are
    /// read at once when the page cache holds them.
    pub fn direct(disk_len: u64, fd: RawFd) -> Staged {
        Staged {
            disk_len,
            direct: Some(fd),
            ..Staged::default()
        }
    }

    /// Makes this view a fresh [`Staged::direct`] one, keeping its buffers for reuse.
    pub fn reset_direct(&mut self, disk_len: u64, fd: RawFd) {
        for (_, b) in self.known.drain(..).chain(self.writes.drain(..)) {
            self.spare.push(b);
        }
        self.disk_len = disk_len;
        self.zero_from = None;
        self.allocate = None;
        self.missing.clear();
        self.direct = Some(fd);
        self.direct_reads = 0;
    }

    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.resize(len, 0);
        b
    }

    /// Direct reads made so far.
    pub fn direct_reads(&self) -> u32 {
        self.direct_reads
    }

    /// Reads `[off, end)` (rounded out to the grain) at once if the page cache has it.
    fn read_direct(&mut self, off: u64, end: u64) -> bool {
        let Some(fd) = self.direct else {
            return false;
        };
        let start = off - off % READ_GRAIN_BYTES;
        let stop = end
            .div_ceil(READ_GRAIN_BYTES)
            .saturating_mul(READ_GRAIN_BYTES)
            .min(self.disk_len);
        let mut buf = self.buffer((stop - start) as usize);
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over `buf`, which lives across the call; RWF_NOWAIT makes
        // the read return EAGAIN rather than wait for the disk.
        let n = unsafe { libc::preadv2(fd, &iov, 1, start as libc::off_t, libc::RWF_NOWAIT) };
        self.direct_reads += 1;
        if n < 0 || (n as u64) < end.min(self.disk_len) - start {
            // It would block (or the file shrank): the rest goes the slow way.
            self.direct = None;
            self.spare.push(buf);
            return false;
        }
        buf.truncate(n as usize);
        self.fetched(start, buf);
        true
    }

    /// A view of a new, empty file: every byte the engine will write is known.
    pub fn created() -> Staged {
        Staged {
            disk_len: 0,
            zero_from: Some(0),
            ..Staged::default()
        }
    }

    /// Starts a run: forgets the last run's writes and misses (fetched bytes stay).
    pub fn begin_run(&mut self) {
        for (_, b) in self.writes.drain(..) {
            self.spare.push(b);
        }
        self.allocate = None;
        self.missing.clear();
    }

    /// The ranges the last run read but were not fetched, merged.
    pub fn missing(&self) -> Vec<(u64, usize)> {
        let mut m = self.missing.clone();
        m.sort_unstable();
        let mut out: Vec<(u64, usize)> = Vec::with_capacity(m.len());
        for (off, len) in m {
            match out.last_mut() {
                Some((o, l)) if off <= *o + *l as u64 => {
                    let end = (off + len as u64).max(*o + *l as u64);
                    *l = (end - *o) as usize;
                }
                _ => out.push((off, len)),
            }
        }
        out
    }

    /// Asks for a range before a run reads it (saves a round); a range fetched
    /// already is not asked for again.
    pub fn want(&mut self, off: u64, len: usize) {
        let end = (off + len as u64).min(self.disk_len);
        if off < end && !self.covered(off, end) {
            self.missing.push((off, (end - off) as usize));
        }
    }

    /// Adds fetched bytes at `off` (a short read at the end of the file is fine).
    pub fn fetched(&mut self, off: u64, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let mut start = off;
        let mut data = bytes;
        // Merge with every range it overlaps or touches; fetched bytes are the file's,
        // so where two ranges overlap they agree.
        let mut i = 0;
        while i < self.known.len() {
            let (o, ref b) = self.known[i];
            let (e, end) = (o + b.len() as u64, start + data.len() as u64);
            if e < start || end < o {
                i += 1;
                continue;
            }
            let (k_off, k) = self.known.remove(i);
            let new_start = start.min(k_off);
            let new_end = end.max(k_off + k.len() as u64);
            // The range that starts first grows to hold the other (no new buffer).
            let (mut merged, other, other_off) = if k_off <= start {
                (k, data, start)
            } else {
                (data, k, k_off)
            };
            merged.resize((new_end - new_start) as usize, 0);
            merged[(other_off - new_start) as usize..][..other.len()].copy_from_slice(&other);
            self.spare.push(other);
            start = new_start;
            data = merged;
        }
        let at = self.known.partition_point(|(o, _)| *o < start);
        self.known.insert(at, (start, data));
    }

    fn covered(&self, off: u64, end: u64) -> bool {
        if self.zero_from.is_some_and(|z| off >= z) {
            return true;
        }
        self.known
            .iter()
            .any(|(o, b)| *o <= off && end <= *o + b.len() as u64)
    }

    fn len(&self) -> u64 {
        let written = self
            .writes
            .iter()
            .map(|(o, b)| o + b.len() as u64)
            .max()
            .unwrap_or(0);
        let allocated = self.allocate.map_or(0, |(o, l)| o + l);
        self.disk_len.max(written).max(allocated)
    }

    /// The last run's writes, merged into disjoint ranges in offset order (later bytes
    /// win where writes overlap), and its allocation.
    pub fn plan(&self) -> Plan {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::with_capacity(self.writes.len());
        for (off, bytes) in &self.writes {
            let (off, end) = (*off, off + bytes.len() as u64);
            // Cut every earlier range this one overlaps.
            let mut cut = Vec::new();
            out.retain(|(o, b)| {
                let e = o + b.len() as u64;
                if e <= off || end <= *o {
                    return true;
                }
                if *o < off {
                    cut.push((*o, b[..(off - o) as usize].to_vec()));
                }
                if end < e {
                    cut.push((end, b[(end - o) as usize..].to_vec()));
                }
                false
            });
            out.extend(cut);
            out.push((off, bytes.clone()));
        }
        out.sort_unstable_by_key(|(o, _)| *o);
        // Join ranges that touch, or that a short gap of bytes already fetched (and so
        // rewritten unchanged) separates: one write instead of several. An update's
        // runs are often a few slots apart (points come every few seconds into 1 or
        // 2 second slots), and each write costs an io-wq round in the kernel.
        let mut joined: Vec<(u64, Vec<u8>)> = Vec::with_capacity(out.len());
        for (o, b) in out {
            if let Some((jo, jb)) = joined.last_mut() {
                let end = *jo + jb.len() as u64;
                if end == o
                    || (o - end <= GAP_BYTES_MAX && self.disk_bytes(end, (o - end) as usize, jb))
                {
                    jb.extend_from_slice(&b);
                    continue;
                }
            }
            joined.push((o, b));
        }
        (self.allocate, joined)
    }

    /// Appends the file's bytes at `[off, off + len)` as fetched (zeros past a created
    /// file's header); false, appending nothing, when they were not fetched.
    fn disk_bytes(&self, off: u64, len: usize, out: &mut Vec<u8>) -> bool {
        let end = off + len as u64;
        if self.zero_from.is_some_and(|z| off >= z) {
            out.resize(out.len() + len, 0);
            return true;
        }
        if end > self.disk_len {
            return false;
        }
        match self
            .known
            .iter()
            .find(|(o, b)| *o <= off && end <= *o + b.len() as u64)
        {
            Some((o, b)) => {
                out.extend_from_slice(&b[(off - o) as usize..][..len]);
                true
            }
            None => false,
        }
    }
}

impl WhisperIo for Staged {
    fn read_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let end = off
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if end > self.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.fill(0);
        let disk_end = end.min(self.disk_len);
        if off < disk_end {
            if self.covered(off, disk_end) || self.read_direct(off, disk_end) {
                if let Some((o, b)) = self
                    .known
                    .iter()
                    .find(|(o, b)| *o <= off && disk_end <= *o + b.len() as u64)
                {
                    let n = (disk_end - off) as usize;
                    buf[..n].copy_from_slice(&b[(off - o) as usize..][..n]);
                }
            } else {
                self.missing.push((off, (disk_end - off) as usize));
            }
        }
        for (w, bytes) in &self.writes {
            let (w, we) = (*w, w + bytes.len() as u64);
            let (s, e) = (off.max(w), end.min(we));
            if s < e {
                buf[(s - off) as usize..(e - off) as usize]
                    .copy_from_slice(&bytes[(s - w) as usize..(e - w) as usize]);
            }
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(buf);
        self.writes.push((off, b));
        Ok(())
    }

    fn file_len(&mut self) -> io::Result<u64> {
        Ok(self.len())
    }

    fn allocate(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.allocate = Some((off, len));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::whisper::format::{self, AggregationMethod, CreateMode, Scratch};
    use crate::store::whisper::io::MemIo;

    /// Runs `op` against a Staged view of `disk`, fetching misses from it as the
    /// driver would, and applies the plan; returns the rounds it took.
    fn drive<T>(
        disk: &mut MemIo,
        mut staged: Staged,
        mut op: impl FnMut(&mut Staged) -> T,
    ) -> (T, usize) {
        for round in 1..20 {
            staged.begin_run();
            let r = op(&mut staged);
            let missing = staged.missing();
            if missing.is_empty() {
                let (alloc, writes) = staged.plan();
                if let Some((o, l)) = alloc {
                    disk.allocate(o, l).unwrap();
                }
                for (o, b) in writes {
                    disk.write_at(&b, o).unwrap();
                }
                return (r, round);
            }
            for (off, len) in missing {
                let end = (off as usize + len).min(disk.bytes.len());
                staged.fetched(off, disk.bytes[off as usize..end].to_vec());
            }
        }
        panic!("did not settle");
    }

    #[test]
    fn staged_updates_write_the_bytes_direct_ones_do() {
        let archives = [(10, 600), (60, 600), (600, 240)];
        let now = 1_700_000_000;
        let mut direct = MemIo::new();
        format::create(
            &mut direct,
            &archives,
            0.5,
            AggregationMethod::Sum,
            CreateMode::Sparse,
        )
        .unwrap();
        // Created through a Staged view: nothing fetched, same bytes.
        let mut disk = MemIo::new();
        let (_, rounds) = drive(&mut disk, Staged::created(), |io| {
            format::create(
                io,
                &archives,
                0.5,
                AggregationMethod::Sum,
                CreateMode::Sparse,
            )
            .unwrap()
        });
        assert_eq!(rounds, 1);
        assert_eq!(disk.bytes, direct.bytes);
        let mut scratch = Scratch::new();
        let mut max_rounds = 0;
        for batch in 0..30i64 {
            let points: Vec<(i64, f64)> = (0..7)
                .map(|i| (now - 30000 + batch * 970 + i * 13, (batch * 7 + i) as f64))
                .collect();
            let h = format::read_header(&mut direct).unwrap();
            format::update_many(&mut direct, &h, &points, now, &mut scratch).unwrap();
            let len = disk.bytes.len() as u64;
            let mut staged = Staged::existing(len);
            // What the driver reads with the file's size.
            staged.fetched(0, disk.bytes[..disk.bytes.len().min(4096)].to_vec());
            let (_, rounds) = drive(&mut disk, staged, |io| {
                let h = format::read_header(io)?;
                for a in &h.archives {
                    io.want(a.offset, 12);
                }
                format::update_many(io, &h, &points, now, &mut scratch)
            });
            // Header and base points, then one round per propagation window.
            assert!(rounds <= 4, "{rounds} rounds");
            max_rounds = max_rounds.max(rounds);
            assert_eq!(disk.bytes, direct.bytes, "batch {batch}");
        }
        assert!(max_rounds >= 3, "the windows were fetched in rounds");
    }

    #[test]
    fn overlapping_writes_plan_to_the_last_bytes() {
        let mut s = Staged::existing(10);
        s.write_at(b"aaaa", 2).unwrap();
        s.write_at(b"bb", 4).unwrap();
        s.write_at(b"c", 1).unwrap();
        s.write_at(b"zz", 20).unwrap();
        let (_, plan) = s.plan();
        assert_eq!(plan, vec![(1, b"caabb".to_vec()), (20, b"zz".to_vec())]);
        let mut buf = [0u8; 3];
        s.fetched(0, b"0123456789".to_vec());
        s.read_at(&mut buf, 3).unwrap();
        assert_eq!(&buf, b"abb");
        assert!(s.read_at(&mut [0u8; 4], 20).is_err());
    }

    #[test]
    fn writes_a_short_fetched_gap_apart_are_joined() {
        let mut s = Staged::existing(10_000);
        s.fetched(0, (0..=255u8).cycle().take(6000).collect());
        s.write_at(b"ab", 10).unwrap();
        s.write_at(b"cd", 20).unwrap();
        // Past what was fetched: not joined.
        s.write_at(b"ef", 6100).unwrap();
        // A page or more apart: not joined.
        s.write_at(b"gh", 20 + 2 + 4096).unwrap();
        let (_, plan) = s.plan();
        let mut first = b"ab".to_vec();
        first.extend(12..20u8);
        first.extend_from_slice(b"cd");
        assert_eq!(
            plan,
            vec![(10, first), (4118, b"gh".to_vec()), (6100, b"ef".to_vec())]
        );
    }

    #[test]
    fn fetched_ranges_merge() {
        let mut s = Staged::existing(100);
        s.fetched(10, vec![1; 10]);
        s.fetched(30, vec![3; 5]);
        s.fetched(18, vec![2; 12]);
        assert_eq!(s.known.len(), 1);
        assert_eq!(s.known[0].0, 10);
        assert_eq!(s.known[0].1.len(), 25);
        s.want(12, 20);
        assert!(s.missing().is_empty());
        s.want(12, 40);
        assert_eq!(s.missing(), [(12, 40)]);
    }
}

//! The disk spool of one destination on one shard: a log of batches in numbered segment
//! files, written when the destination cannot take them and read back, in order, when it
//! can.
//!
//! This module is the storage core only. It is synchronous and caller-driven: it never
//! sleeps, never spawns, and syncs only when told to ([`Spool::commit`]). The shard-side
//! task that feeds it from [`DestQueue`](super::DestQueue) overflow and drains it into the
//! writer is a thin layer on top (see "Driving it from a shard" below).
//!
//! # Directory
//!
//! One directory per (destination, shard), [`destination_dir`]:
//! `spool_dir/<destination, %-escaped>/shard-<n>/`, holding
//! - `ledger`: the read (ack) position and the committed end, 128 bytes;
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segments, the sequence number in 20 digits so names sort
//!   as numbers. Numbers only grow (the next is one past the highest ever seen, the ledger
//!   included), so a name is never reused;
//! - anything else is reported by recovery and left alone.
//!
//! # On-disk format (version 1, all integers little-endian)
//!
//! Segment file:
//! ```text
//! offset size
//!  0      8   magic "CADSPSEG"
//!  8      1   format version = 1
//!  9      7   zero
//! 16      8   sequence number (the file name's)
//! 24      4   crc32c of bytes 0..24
//! 28      4   zero
//! 32      ... records, back to back; a record never spans two segments
//! ```
//! Record (one batch: whole lines, though the spool does not look inside):
//! ```text
//!  0      4   len: bytes after the first 8 (16 + payload), 16..=16 + 64 MiB
//!  4      4   crc32c (Castagnoli) of those len bytes
//!  8      1   magic 0xC5
//!  9      1   format version = 1
//! 10      2   flags, zero
//! 12      4   lines (items) in the payload
//! 16      8   spooled at, unix milliseconds
//! 24      len-16  payload
//! ```
//! Ledger: two 64-byte slots, A at 0 and B at 64; write number `g` goes to slot `g % 2`,
//! so a torn ledger write leaves the other slot whole, and the valid slot with the higher
//! `g` wins:
//! ```text
//!  0      8   magic "CADSPLDG"
//!  8      8   generation g
//! 16      8   ack segment     } everything before this position was delivered
//! 24      8   ack offset      }
//! 32      8   committed segment } everything before this position was durable
//! 40      8   committed offset  } when the slot was written
//! 48     12   zero
//! 60      4   crc32c of bytes 0..60
//! ```
//!
//! # Durability window (group commit)
//!
//! [`append`](Spool::append) serialises into a 256 KiB write buffer and writes it out as it
//! fills; nothing is synced. [`commit`](Spool::commit) writes the rest, `fdatasync`s the
//! segment, `fsync`s the directory if a segment was created or removed since the last
//! commit, then writes and `fdatasync`s the ledger. A segment is also synced when it is
//! sealed (rotation), so there is at most one unsynced segment. The caller commits every
//! `spool_fsync_interval_ms`: **a crash loses at most what was appended in the last
//! interval, and a power loss cannot damage anything committed**. Never per record.
//!
//! Replay ([`read`](Spool::read)) hands out committed records only, so nothing handed out
//! can vanish in a crash.
//!
//! # Delivery: at least once
//!
//! [`ack`](Spool::ack) marks the oldest handed-out records delivered; the position is
//! persisted by the next `commit`. After a crash, replay restarts at the last persisted
//! ack position: records acked after that commit are delivered again. Those are the only
//! duplicates (their number is at most what one commit interval acks), and every
//! committed record is delivered at least once, in order, unless it was dropped and
//! counted (cap, corruption). Records handed out but not acked are handed out again after
//! [`rewind`](Spool::rewind) or a restart. A record appended but not committed when the
//! process died may or may not come back; those that do come back are a prefix of what
//! was appended, in order.
//!
//! # Recovery ([`Spool::open`])
//!
//! Every segment is read once, streamed through a bounded buffer (about one chunk plus the
//! largest record; the spool is never loaded whole). Up to the ledger's committed end:
//! - a stretch that is not a valid record (bad checksum, impossible header) is skipped up
//!   to the next offset where a whole checksummed record starts, and counted
//!   ([`RecoveryReport::corrupt_records`]; at replay, `records_corrupt`). The rest is
//!   delivered;
//! - a segment missing from the middle, or the one holding the read position, is reported
//!   and skipped (one missing from the front otherwise cannot be told from a delivered
//!   one);
//! - a bad segment header is reported; its records are still read (each is checked).
//!
//! Past the committed end (what was appended in the last interval before a crash) the
//! spool keeps the longest valid prefix: the first bad byte ends the log, the file is
//! truncated there, and later segments are removed. A torn tail is truncated only in the
//! newest segment (or past the committed end); bad bytes at the end of an older, sealed
//! segment are corruption, skipped and counted, and the file is left as it is for
//! `cadent spool verify`. What recovery kept is synced, and the ledger is rewritten before
//! `open` returns. A missing or unreadable ledger replays every segment from the start.
//!
//! Resynchronisation after damage tries every offset, filtered by the record magic,
//! version, flags, time range and length before any checksum is computed. Payload bytes
//! that happen to hold a whole valid frame could be taken for a record after damage in
//! front of them; text lines cannot (a frame needs NUL bytes).
//!
//! # Cap
//!
//! The segments of one spool hold at most `bytes_max` bytes (framing included). An append
//! that would pass it removes the oldest whole segments first: the oldest data goes, the
//! newest is kept, and the lines not yet acked in them are counted
//! (`dropped_lines_spool_full`). The segment size is clamped to at most a quarter of the
//! cap, so a drop is at most a quarter of it.
//!
//! # Errors
//!
//! I/O errors (ENOSPC, EIO, EACCES) are returned as [`SpoolError`], never panics. A failed
//! write, sync or segment creation stops appends ([`SpoolError::Failed`] from then on)
//! and counts what was appended since the last commit as lost
//! (`dropped_lines_io_error`, an over-count if some of it made it to disk); committed
//! records can still be read and acked. The caller falls back to memory-only delivery and
//! may reopen the spool later (recovery trims any partial write).
//!
//! # Driving it from a shard
//!
//! Every method that touches a file may block on the disk: `open`, `append` (when the
//! write buffer fills, a segment rotates or the cap drops one), `commit`, `read` and `ack`'s
//! later `commit`. `ack`, `rewind`, `stats` and `counters` are memory only. The wiring
//! ([`spooler`](super::spooler)): one spool per destination per shard, owned by a spool
//! task that runs each round (acks, appends of what the queue could not hold, a commit
//! every fsync interval, a read for the writer) on the shard's blocking helper thread
//! (glommio `spawn_blocking`); the writer reports replayed batches delivered once the
//! sink acknowledged them, and the next round acks them. All I/O goes through
//! [`io::SpoolIo`], so an io_uring implementation can replace [`io::FsIo`] without
//! touching this logic.

pub mod format;
pub mod io;
pub mod scan;
#[cfg(test)]
pub mod sim;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use format::{LedgerState, Pos, RecordMeta, SEGMENT_HEADER_BYTES};
use io::{read_full, SpoolFile, SpoolIo};
use scan::{scan_segment, SegmentReader, Step};

/// Write buffer: appends are written out in chunks of this size (and at commit).
pub const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// Bounds of one spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes its segments may hold (`spool_bytes_max`).
    pub bytes_max: u64,
    /// A segment is sealed when the next record would take it past this
    /// (`spool_segment_bytes`).
    pub segment_bytes: u64,
}

impl Limits {
    /// `spool_segment_bytes` default: 16 MiB. A drop for the cap removes one segment (1.6%
    /// of the default 1 GiB cap), a 1 GiB spool is 64 files, recovery's buffer is far
    /// below a segment, and at 100 MB/s a segment is sealed (and synced) about every
    /// 160 ms, close to the default commit interval, so rotation adds few syncs.
    pub const SEGMENT_BYTES_DEFAULT: u64 = 16 << 20;
    /// Smallest segment (and so smallest record room): 4 KiB.
    pub const SEGMENT_BYTES_MIN: u64 = 4 << 10;
    /// Most bytes one segment may have: 1 GiB.
    pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

    /// Limits with the segment size clamped to `[4 KiB, bytes_max / 4]` (and at most
    /// 1 GiB), and the cap raised to at least 4 segments of 4 KiB.
    pub fn new(bytes_max: u64, segment_bytes: u64) -> Limits {
        let bytes_max = bytes_max.max(4 * Self::SEGMENT_BYTES_MIN);
        let segment_bytes = segment_bytes
            .min(bytes_max / 4)
            .clamp(Self::SEGMENT_BYTES_MIN, Self::SEGMENT_BYTES_MAX);
        Limits {
            bytes_max,
            segment_bytes,
        }
    }

    /// The largest payload one record may carry under these limits.
    pub fn payload_bytes_max(&self) -> usize {
        let room =
            self.segment_bytes as usize - SEGMENT_HEADER_BYTES - format::RECORD_OVERHEAD_BYTES;
        room.min(format::PAYLOAD_BYTES_MAX)
    }
}

/// The file operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Creating the spool directory.
    CreateDir,
    /// Listing it.
    List,
    /// Opening or creating a file.
    Open,
    /// Reading.
    Read,
    /// Writing.
    Write,
    /// `fdatasync` of a segment or the ledger.
    Sync,
    /// `fsync` of the directory.
    SyncDir,
    /// Removing a segment.
    Remove,
    /// Truncating a torn tail.
    Truncate,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::CreateDir => "create directory",
            IoOp::List => "list",
            IoOp::Open => "open",
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Sync => "fdatasync",
            IoOp::SyncDir => "fsync directory",
            IoOp::Remove => "remove",
            IoOp::Truncate => "truncate",
        })
    }
}

/// What can go wrong in a spool: operating errors, to be counted and handled (fall back
/// to memory), never a reason to stop the process.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed (ENOSPC, EIO, EACCES, ...).
    #[error("spool {}: {op}: {source}", path.display())]
    Io {
        /// What was being done.
        op: IoOp,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record larger than a segment can hold.
    #[error("record of {bytes} bytes is larger than the largest the spool takes ({max})")]
    RecordTooLarge {
        /// Payload bytes.
        bytes: usize,
        /// [`Limits::payload_bytes_max`].
        max: usize,
    },
    /// An earlier write or sync failed; this spool takes no more appends until reopened.
    #[error("spool {} stopped taking appends after an I/O error", path.display())]
    Failed {
        /// The spool directory.
        path: PathBuf,
    },
}

impl SpoolError {
    /// Whether the disk is full (ENOSPC or EDQUOT).
    pub fn is_no_space(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

fn io_err(op: IoOp, path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Counters of one spool: totals since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolCounters {
    /// Records (batches) appended.
    pub spooled_records: u64,
    /// Lines in them.
    pub spooled_lines: u64,
    /// Payload bytes in them.
    pub spooled_bytes: u64,
    /// Records acked after replay.
    pub replayed_records: u64,
    /// Lines in them.
    pub replayed_lines: u64,
    /// Payload bytes in them.
    pub replayed_bytes: u64,
    /// Records removed unacked to stay under the cap (oldest first).
    pub dropped_records_spool_full: u64,
    /// Lines in them.
    pub dropped_lines_spool_full: u64,
    /// Records appended but not committed when a write or sync failed.
    pub dropped_records_io_error: u64,
    /// Lines in them.
    pub dropped_lines_io_error: u64,
    /// Damaged stretches skipped at replay (each counts as one record).
    pub records_corrupt: u64,
    /// Bytes in them.
    pub bytes_corrupt: u64,
    /// Commits that synced something.
    pub commits: u64,
    /// `fdatasync` and directory `fsync` calls.
    pub syncs: u64,
    /// Every byte written to disk: segment headers, frames, payloads, ledger slots.
    pub bytes_written: u64,
    /// Failed file operations.
    pub io_errors: u64,
}

/// A snapshot of a spool's size and age.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStats {
    /// Bytes in its segments, framing and the write buffer included (what the cap bounds).
    pub bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Records not yet acked (handed-out ones included).
    pub records: u64,
    /// Lines in them.
    pub lines: u64,
    /// Records handed out by `read` and not yet acked.
    pub in_flight_records: u64,
    /// Spool time of the oldest record not yet acked.
    pub oldest_ms: Option<u64>,
    /// Spool time of the newest record.
    pub newest_ms: Option<u64>,
    /// Whether appends stopped after an I/O error.
    pub failed: bool,
}

/// What [`Spool::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// How the ledger was found.
    pub ledger: LedgerFound,
    /// Segments kept.
    pub segments: u64,
    /// Records waiting for delivery, and their lines.
    pub records: u64,
    /// See `records`.
    pub lines: u64,
    /// Bytes truncated from torn tails (past the committed end, or the newest segment).
    pub torn_tail_bytes: u64,
    /// Damaged stretches in the part still to deliver, skipped at replay (each counted as
    /// one record), and their bytes.
    pub corrupt_records: u64,
    /// See `corrupt_records`.
    pub corrupt_bytes: u64,
    /// Bytes the ledger said were committed but are gone or damaged at the end of a
    /// segment: the disk lost synced data.
    pub committed_bytes_lost: u64,
    /// Segments with a bad header (their records were still read, each checked).
    pub bad_headers: Vec<u64>,
    /// Sequence numbers missing between segments that exist (in the committed part).
    pub missing_segments: Vec<Range<u64>>,
    /// Segments removed because they lay past the end of the recovered log (after a torn
    /// tail, a missing segment or a bad header in the uncommitted part).
    pub uncommitted_segments_removed: u64,
    /// Segments removed because everything in them had been delivered.
    pub delivered_segments_removed: u64,
    /// Entries that are not spool files, left alone.
    pub unknown_files: Vec<String>,
}

/// The ledger as `open` found it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LedgerFound {
    /// No ledger and no segments: a new spool.
    #[default]
    New,
    /// A valid slot.
    Valid,
    /// Segments but no valid ledger slot: every segment is replayed from the start.
    Lost,
}

impl RecoveryReport {
    /// Whether recovery found nothing to report beyond a torn tail of the last interval.
    pub fn is_clean(&self) -> bool {
        self.ledger != LedgerFound::Lost
            && self.corrupt_records == 0
            && self.committed_bytes_lost == 0
            && self.bad_headers.is_empty()
            && self.missing_segments.is_empty()
            && self.unknown_files.is_empty()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} segments, {} records ({} lines) to deliver",
            self.segments, self.records, self.lines
        )?;
        if self.ledger == LedgerFound::Lost {
            f.write_str("; ledger lost, replaying from the first segment")?;
        }
        if self.torn_tail_bytes > 0 {
            write!(f, "; torn tail truncated ({} bytes)", self.torn_tail_bytes)?;
        }
        if self.corrupt_records > 0 {
            write!(
                f,
                "; {} corrupt records ({} bytes) will be skipped",
                self.corrupt_records, self.corrupt_bytes
            )?;
        }
        if self.committed_bytes_lost > 0 {
            write!(f, "; {} committed bytes lost", self.committed_bytes_lost)?;
        }
        if !self.bad_headers.is_empty() {
            write!(f, "; bad segment headers {:?}", self.bad_headers)?;
        }
        if !self.missing_segments.is_empty() {
            write!(f, "; missing segments {:?}", self.missing_segments)?;
        }
        if self.uncommitted_segments_removed > 0 {
            write!(
                f,
                "; {} uncommitted segments removed",
                self.uncommitted_segments_removed
            )?;
        }
        if !self.unknown_files.is_empty() {
            write!(f, "; unknown files left alone: {:?}", self.unknown_files)?;
        }
        Ok(())
    }
}

/// What one [`Spool::read`] handed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadBatch {
    /// Records (pass this to `ack` once they are delivered).
    pub records: u32,
    /// Lines in them.
    pub lines: u32,
    /// Payload bytes appended to the caller's buffer.
    pub bytes: usize,
}

#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    /// File bytes, the write buffer included for the segment being written.
    bytes: u64,
    /// Good records in it, and their lines.
    records: u64,
    lines: u64,
    /// Records (and lines) acked or skipped.
    done_records: u64,
    done_lines: u64,
    first_ms: Option<u64>,
    last_ms: Option<u64>,
    /// Records (and lines) appended since the last commit.
    pending_records: u64,
    pending_lines: u64,
}

#[derive(Debug)]
struct WriteSeg<F> {
    seq: u64,
    file: F,
    /// Bytes in the file.
    written: u64,
    /// Bytes waiting to be written at `written`.
    buf: Vec<u8>,
    /// Written since the last sync.
    dirty: bool,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Position just past the record.
    end: Pos,
    lines: u32,
    bytes: u32,
    spooled_ms: u64,
}

/// One spool directory. See the module doc.
#[derive(Debug)]
pub struct Spool<Io: SpoolIo = io::FsIo> {
    io: Io,
    dir: PathBuf,
    limits: Limits,
    segments: VecDeque<Segment>,
    /// Bytes in `segments`.
    bytes: u64,
    write: Option<WriteSeg<Io::File>>,
    next_seq: u64,
    ledger: Io::File,
    /// The last ledger state written and synced.
    ledger_state: LedgerState,
    /// Delivered up to here (persisted at the next commit).
    ack: Pos,
    /// Durable up to here; `read` stops here.
    committed: Pos,
    /// Where the next `read` starts.
    cursor: Pos,
    reader: Option<(u64, SegmentReader<Io::File>)>,
    in_flight: VecDeque<InFlight>,
    /// Spool time of the record at `cursor`, if there is one.
    unread_ms: Option<u64>,
    /// Spool time of the first record appended since the last commit.
    first_pending_ms: Option<u64>,
    pending_records: u64,
    pending_lines: u64,
    /// A segment was created or removed since the last directory sync.
    dir_dirty: bool,
    failed: bool,
    counters: SpoolCounters,
}

impl<Io: SpoolIo> Spool<Io> {
    /// Opens (creating if needed) the spool in `dir` and recovers it: see the module doc.
    /// On return everything kept is durable and readable.
    pub fn open(
        io: Io,
        dir: &Path,
        limits: Limits,
    ) -> Result<(Spool<Io>, RecoveryReport), SpoolError> {
        io.create_dir_all(dir)
            .map_err(io_err(IoOp::CreateDir, dir))?;
        let mut report = RecoveryReport::default();
        let mut seqs = Vec::new();
        let mut ledger_exists = false;
        for name in io.list(dir).map_err(io_err(IoOp::List, dir))? {
            if name == format::LEDGER_NAME {
                ledger_exists = true;
            } else if let Some(seq) = format::parse_segment_name(&name) {
                seqs.push(seq);
            } else {
                report.unknown_files.push(name);
            }
        }
        seqs.sort_unstable();
        report.unknown_files.sort();

        let ledger_path = dir.join(format::LEDGER_NAME);
        let mut ledger = io
            .open(&ledger_path, true)
            .map_err(io_err(IoOp::Open, &ledger_path))?;
        let found = if ledger_exists {
            let mut b = [0u8; format::LEDGER_BYTES];
            let n = read_full(&mut ledger, &mut b, 0).map_err(io_err(IoOp::Read, &ledger_path))?;
            format::pick_ledger(&b[..n])
        } else {
            None
        };
        report.ledger = match (found, seqs.is_empty()) {
            (Some(_), _) => LedgerFound::Valid,
            (None, true) => LedgerFound::New,
            (None, false) => LedgerFound::Lost,
        };
        let first = seqs.first().copied().unwrap_or(1);
        let mut ack = found.map_or(Pos::start_of(first), |l| l.ack);
        // `None`: no ledger, everything found counts as committed.
        let committed_then = found.map(|l| l.committed);

        let mut segments = VecDeque::new();
        let mut dir_dirty = !ledger_exists;
        // Segments past the old committed end that recovery keeps must be synced.
        let mut to_sync = Vec::new();
        let mut ended = false;
        let mut prev: Option<u64> = None;
        let mut unread_ms = None;
        let last_seq = seqs.last().copied();
        for &seq in &seqs {
            let path = dir.join(format::segment_name(seq));
            let uncommitted = committed_then.is_some_and(|c| seq > c.seq);
            if let Some(p) = prev.filter(|&p| seq > p + 1 && p + 1 >= ack.seq) {
                // The part of the gap up to the committed end was data; past it, the log
                // ends where its continuation is missing.
                let committed_to = committed_then.map_or(seq, |c| seq.min(c.seq + 1));
                if p + 1 < committed_to && !ended {
                    report.missing_segments.push(p + 1..committed_to);
                }
                ended |= uncommitted;
            }
            prev = Some(seq);
            if ended || seq < ack.seq {
                if ended {
                    report.uncommitted_segments_removed += 1;
                } else {
                    report.delivered_segments_removed += 1;
                }
                io.remove(&path).map_err(io_err(IoOp::Remove, &path))?;
                dir_dirty = true;
                continue;
            }
            let resync_until = match committed_then {
                None => u64::MAX,
                Some(c) if seq < c.seq => u64::MAX,
                Some(c) if seq == c.seq => c.off,
                Some(_) => 0,
            };
            let count_from = if seq == ack.seq { ack.off } else { 0 };
            let file = io.open(&path, false).map_err(io_err(IoOp::Open, &path))?;
            let scan = scan_segment(file, seq, resync_until, count_from)
                .map_err(io_err(IoOp::Read, &path))?;
            if !scan.header_ok && (uncommitted || scan.file_bytes < SEGMENT_HEADER_BYTES as u64) {
                // Created, then the crash came before its header was durable (or it
                // lies past the end of the log): nothing in it can be trusted.
                if uncommitted || Some(seq) == last_seq {
                    report.uncommitted_segments_removed += 1;
                    ended |= uncommitted;
                } else {
                    report.bad_headers.push(seq);
                }
                io.remove(&path).map_err(io_err(IoOp::Remove, &path))?;
                dir_dirty = true;
                continue;
            }
            if !scan.header_ok {
                report.bad_headers.push(seq);
            }
            let mut bytes = scan.file_bytes;
            if let Some(c) = committed_then {
                let committed_end = if seq == c.seq { c.off } else { 0 };
                if scan.end < committed_end {
                    report.committed_bytes_lost += committed_end - scan.end;
                }
            }
            if scan.tail_bytes > 0 {
                if uncommitted || Some(seq) == last_seq || resync_until == 0 {
                    report.torn_tail_bytes += scan.tail_bytes;
                    let mut f = io.open(&path, false).map_err(io_err(IoOp::Open, &path))?;
                    f.set_len(scan.end).map_err(io_err(IoOp::Truncate, &path))?;
                    f.sync_data().map_err(io_err(IoOp::Sync, &path))?;
                    bytes = scan.end;
                    ended |= uncommitted;
                } else {
                    report.corrupt_records += 1;
                    report.corrupt_bytes += scan.tail_bytes;
                }
            }
            if committed_then.is_none_or(|c| seq >= c.seq) {
                to_sync.push(path);
            }
            report.corrupt_records += scan.corrupt_records;
            report.corrupt_bytes += scan.corrupt_bytes;
            if seq == ack.seq && ack.off > bytes {
                ack.off = bytes;
            }
            if unread_ms.is_none() && seq >= ack.seq {
                unread_ms = if seq == ack.seq {
                    scan.first_ms_from
                } else {
                    scan.first_ms
                };
            }
            segments.push_back(Segment {
                seq,
                bytes,
                records: scan.records,
                lines: scan.lines,
                done_records: scan.records_before,
                done_lines: scan.lines_before,
                first_ms: scan.first_ms,
                last_ms: scan.last_ms,
                pending_records: 0,
                pending_lines: 0,
            });
        }
        for path in &to_sync {
            let mut f = io.open(path, false).map_err(io_err(IoOp::Open, path))?;
            f.sync_data().map_err(io_err(IoOp::Sync, path))?;
        }
        if dir_dirty {
            io.sync_dir(dir).map_err(io_err(IoOp::SyncDir, dir))?;
        }
        // Numbers continue after the last segment kept. One that recovery removed (past
        // the end of the log) is reused, so the log has no gap that looks like loss; its
        // removal is durable by now.
        let last_kept = segments.back().map(|s: &Segment| s.seq);
        if let (Some(l), Some(first)) = (found, segments.front().map(|s: &Segment| s.seq)) {
            // The segment holding the read position is gone: its undelivered part is lost
            // (or, in a crash right after the cap dropped it, was counted as dropped).
            if l.ack.seq < first && l.ack.seq <= l.committed.seq {
                report
                    .missing_segments
                    .insert(0, l.ack.seq..first.min(l.committed.seq + 1));
            }
        }
        if let (Some(c), Some(last)) = (committed_then, last_kept) {
            if c.seq > last && c.off > SEGMENT_HEADER_BYTES as u64 {
                report.missing_segments.push(last + 1..c.seq + 1);
            }
        }
        let mut next_seq = last_kept.map_or(1, |s| s + 1);
        if let Some(l) = found {
            next_seq = next_seq.max(l.committed.seq).max(l.ack.seq);
        }
        let start = segments
            .front()
            .map_or(Pos::start_of(next_seq), |s| Pos::start_of(s.seq));
        ack = ack.max(start);
        let committed = segments.back().map_or(start, |s| Pos {
            seq: s.seq,
            off: s.bytes,
        });
        let mut spool = Spool {
            io,
            dir: dir.to_path_buf(),
            limits,
            segments,
            bytes: 0,
            write: None,
            next_seq,
            ledger,
            ledger_state: found.unwrap_or_default(),
            ack,
            committed,
            cursor: ack,
            reader: None,
            in_flight: VecDeque::new(),
            unread_ms: None,
            first_pending_ms: None,
            pending_records: 0,
            pending_lines: 0,
            dir_dirty: false,
            failed: false,
            counters: SpoolCounters::default(),
        };
        spool.normalize_ack();
        spool.cursor = spool.ack;
        spool.bytes = spool.segments.iter().map(|s| s.bytes).sum();
        spool.unread_ms = unread_ms;
        spool.write_ledger()?;
        let st = spool.stats();
        report.segments = st.segments;
        report.records = st.records;
        report.lines = st.lines;
        Ok((spool, report))
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The limits it runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Appends one record: `payload` (whole lines), `lines` in it, spooled at
    /// `spooled_ms` (unix ms). Not durable until [`commit`](Self::commit). On `Err` the
    /// record was not taken and the caller still owns it.
    pub fn append(
        &mut self,
        payload: &[u8],
        lines: u32,
        spooled_ms: u64,
    ) -> Result<(), SpoolError> {
        if self.failed {
            return Err(SpoolError::Failed {
                path: self.dir.clone(),
            });
        }
        let max = self.limits.payload_bytes_max();
        if payload.len() > max {
            return Err(SpoolError::RecordTooLarge {
                bytes: payload.len(),
                max,
            });
        }
        debug_assert!((format::TIME_MS_MIN..format::TIME_MS_MAX).contains(&spooled_ms));
        let rec = format::record_bytes(payload.len()) as u64;
        let rotate = self.write.as_ref().is_none_or(|w| {
            let s = self.segments.back().expect("write segment");
            debug_assert_eq!(s.seq, w.seq);
            s.bytes + rec > self.limits.segment_bytes
        });
        let need = rec
            + if rotate {
                SEGMENT_HEADER_BYTES as u64
            } else {
                0
            };
        while self.bytes + need > self.limits.bytes_max && self.droppable() {
            self.drop_oldest().map_err(|e| self.fail(e))?;
        }
        if rotate {
            self.rotate().map_err(|e| self.fail(e))?;
        }
        // Write out what is buffered first, so that on `Err` this record is in no file.
        let full = self
            .write
            .as_ref()
            .is_some_and(|w| !w.buf.is_empty() && w.buf.len() + rec as usize > WRITE_BUFFER_BYTES);
        if full {
            self.flush_write().map_err(|e| self.fail(e))?;
        }
        let w = self.write.as_mut().expect("write segment");
        format::encode_record(RecordMeta { lines, spooled_ms }, payload, &mut w.buf);
        let seg = self.segments.back_mut().expect("write segment");
        seg.bytes += rec;
        seg.records += 1;
        seg.lines += u64::from(lines);
        seg.first_ms.get_or_insert(spooled_ms);
        seg.last_ms = Some(spooled_ms);
        seg.pending_records += 1;
        seg.pending_lines += u64::from(lines);
        self.bytes += rec;
        self.pending_records += 1;
        self.pending_lines += u64::from(lines);
        self.first_pending_ms.get_or_insert(spooled_ms);
        self.unread_ms.get_or_insert(spooled_ms);
        self.counters.spooled_records += 1;
        self.counters.spooled_lines += u64::from(lines);
        self.counters.spooled_bytes += payload.len() as u64;
        Ok(())
    }

    /// The group-commit point: makes every append so far durable, persists the ack
    /// position, and removes fully delivered segments. A no-op when nothing changed.
    /// After a failure it still persists acks and removes delivered segments, so a
    /// failed spool drains and frees its disk.
    pub fn commit(&mut self) -> Result<(), SpoolError> {
        self.commit_inner().map_err(|e| self.fail(e))
    }

    fn commit_inner(&mut self) -> Result<(), SpoolError> {
        let mut synced = false;
        if self.write.is_some() {
            self.flush_write()?;
            let w = self.write.as_mut().expect("write segment");
            if w.dirty {
                let path = self.dir.join(format::segment_name(w.seq));
                w.file.sync_data().map_err(io_err(IoOp::Sync, &path))?;
                w.dirty = false;
                self.counters.syncs += 1;
                synced = true;
            }
            self.committed = Pos {
                seq: w.seq,
                off: w.written,
            };
        }
        if self.dir_dirty {
            self.io
                .sync_dir(&self.dir)
                .map_err(io_err(IoOp::SyncDir, &self.dir))?;
            self.dir_dirty = false;
            self.counters.syncs += 1;
            synced = true;
        }
        if self.ledger_state.ack != self.ack || self.ledger_state.committed != self.committed {
            self.write_ledger()?;
            synced = true;
        }
        self.pending_records = 0;
        self.pending_lines = 0;
        self.first_pending_ms = None;
        for s in &mut self.segments {
            s.pending_records = 0;
            s.pending_lines = 0;
        }
        if synced {
            self.counters.commits += 1;
        }
        // Delivered segments go once the ledger says so.
        while self.segments.len() > 1 && self.segments[0].seq < self.ack.seq {
            let seg = self.segments.pop_front().expect("len > 1");
            self.remove_segment(&seg)?;
        }
        Ok(())
    }

    /// Appends committed records, oldest first, to `out`: whole records, at least one if
    /// any is committed, then more while the payloads fit in `max_bytes`. They are in
    /// flight until [`ack`](Self::ack)ed. Damaged stretches are skipped and counted
    /// (`records_corrupt`). On `Err`, nothing was handed out and `out` is as it was.
    pub fn read(&mut self, max_bytes: usize, out: &mut Vec<u8>) -> Result<ReadBatch, SpoolError> {
        let out_len = out.len();
        let in_flight = self.in_flight.len();
        let (cursor, unread_ms) = (self.cursor, self.unread_ms);
        let corrupt = (self.counters.records_corrupt, self.counters.bytes_corrupt);
        let mut batch = ReadBatch::default();
        match self.read_inner(max_bytes, out, &mut batch) {
            Ok(()) => Ok(batch),
            Err(e) => {
                out.truncate(out_len);
                self.in_flight.truncate(in_flight);
                self.cursor = cursor;
                self.unread_ms = unread_ms;
                (self.counters.records_corrupt, self.counters.bytes_corrupt) = corrupt;
                self.reader = None;
                self.counters.io_errors += 1;
                Err(e)
            }
        }
    }

    fn read_inner(
        &mut self,
        max_bytes: usize,
        out: &mut Vec<u8>,
        batch: &mut ReadBatch,
    ) -> Result<(), SpoolError> {
        loop {
            let seq = self.cursor.seq;
            if seq > self.committed.seq {
                break;
            }
            if self.seg_index(seq).is_none() {
                let next = self.next_start(seq);
                if next.seq == seq || next.seq > self.committed.seq {
                    break;
                }
                self.cursor = next;
                continue;
            }
            let limit = if seq == self.committed.seq {
                self.committed.off
            } else {
                self.segments[self.seg_index(seq).expect("live")].bytes
            };
            let path = self.dir.join(format::segment_name(seq));
            if self.reader.as_ref().is_none_or(|(s, _)| *s != seq) {
                let f = self
                    .io
                    .open_read(&path)
                    .map_err(io_err(IoOp::Open, &path))?;
                self.reader = Some((seq, SegmentReader::new(f, self.cursor.off)));
            }
            let (_, r) = self.reader.as_mut().expect("reader");
            r.seek(self.cursor.off);
            match r.next(limit, limit).map_err(io_err(IoOp::Read, &path))? {
                Step::Record {
                    off,
                    frame_bytes,
                    meta,
                } => {
                    let payload = r.payload();
                    if batch.records > 0 && batch.bytes + payload.len() > max_bytes {
                        self.unread_ms = Some(meta.spooled_ms);
                        return Ok(());
                    }
                    out.extend_from_slice(payload);
                    batch.records += 1;
                    batch.lines += meta.lines;
                    batch.bytes += payload.len();
                    let end = Pos {
                        seq,
                        off: off + frame_bytes,
                    };
                    self.in_flight.push_back(InFlight {
                        end,
                        lines: meta.lines,
                        bytes: payload.len() as u32,
                        spooled_ms: meta.spooled_ms,
                    });
                    self.cursor = end;
                }
                Step::Corrupt { from, to } => {
                    self.counters.records_corrupt += 1;
                    self.counters.bytes_corrupt += to - from;
                    self.cursor.off = to;
                }
                Step::End { at, limit } => {
                    if at < limit {
                        self.counters.records_corrupt += 1;
                        self.counters.bytes_corrupt += limit - at;
                        self.cursor.off = limit;
                    }
                    if seq == self.committed.seq {
                        break;
                    }
                    self.reader = None;
                    self.cursor = self.next_start(seq);
                }
            }
        }
        // At the committed end: the next record is the first one appended since.
        self.unread_ms = self.first_pending_ms;
        Ok(())
    }

    /// The oldest `records` handed-out records were delivered. The position is persisted
    /// by the next commit. Memory only.
    pub fn ack(&mut self, records: u32) {
        assert!(
            records as usize <= self.in_flight.len(),
            "ack of {records} records, {} in flight",
            self.in_flight.len()
        );
        for r in self.in_flight.drain(..records as usize) {
            self.ack = self.ack.max(r.end);
            self.counters.replayed_records += 1;
            self.counters.replayed_lines += u64::from(r.lines);
            self.counters.replayed_bytes += u64::from(r.bytes);
            if let Some(i) = self.segments.iter().position(|s| s.seq == r.end.seq) {
                let s = &mut self.segments[i];
                s.done_records += 1;
                s.done_lines += u64::from(r.lines);
            }
        }
        self.normalize_ack();
    }

    /// Forgets what is in flight: the next `read` starts again at the oldest unacked
    /// record (the writer lost its batch). Memory only.
    pub fn rewind(&mut self) {
        if let Some(first) = self.in_flight.front() {
            self.unread_ms = Some(first.spooled_ms);
        }
        for r in std::mem::take(&mut self.in_flight) {
            if self.seg_index(r.end.seq).is_none() {
                // Its segment went for the cap while it was out: it is lost now.
                self.counters.dropped_records_spool_full += 1;
                self.counters.dropped_lines_spool_full += u64::from(r.lines);
            }
        }
        self.cursor = self.ack;
    }

    /// Size and age now. Memory only.
    pub fn stats(&self) -> SpoolStats {
        let (mut records, mut lines) = (0, 0);
        for s in &self.segments {
            records += s.records.saturating_sub(s.done_records);
            lines += s.lines.saturating_sub(s.done_lines);
        }
        SpoolStats {
            bytes: self.bytes,
            segments: self.segments.len() as u64,
            records,
            lines,
            in_flight_records: self.in_flight.len() as u64,
            oldest_ms: self
                .in_flight
                .front()
                .map(|r| r.spooled_ms)
                .or(self.unread_ms),
            newest_ms: self.segments.iter().rev().find_map(|s| s.last_ms),
            failed: self.failed,
        }
    }

    /// Counters since open. Memory only.
    pub fn counters(&self) -> &SpoolCounters {
        &self.counters
    }

    /// Whether every record was acked (nothing to replay, nothing in flight).
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty() && self.stats().records == 0
    }

    /// Whether appends stopped after an I/O error.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    fn fail(&mut self, e: SpoolError) -> SpoolError {
        if matches!(e, SpoolError::Io { .. }) {
            self.counters.io_errors += 1;
            if !self.failed {
                self.failed = true;
                self.counters.dropped_records_io_error += self.pending_records;
                self.counters.dropped_lines_io_error += self.pending_lines;
                // Nothing past the committed end will be read in this process: forget
                // it here (the files keep it; recovery decides at the next open).
                self.pending_records = 0;
                self.pending_lines = 0;
                self.first_pending_ms = None;
                self.write = None;
                let committed = self.committed;
                while self.segments.back().is_some_and(|s| s.seq > committed.seq) {
                    let s = self.segments.pop_back().expect("non-empty");
                    self.bytes -= s.bytes;
                }
                for s in &mut self.segments {
                    s.records -= s.pending_records;
                    s.lines -= s.pending_lines;
                    s.pending_records = 0;
                    s.pending_lines = 0;
                    if s.seq == committed.seq && s.bytes > committed.off {
                        self.bytes -= s.bytes - committed.off;
                        s.bytes = committed.off;
                    }
                }
                if self.cursor > committed {
                    self.cursor = committed;
                }
                if self.in_flight.is_empty() && self.cursor == committed {
                    self.unread_ms = None;
                }
            }
        }
        e
    }

    fn seg_index(&self, seq: u64) -> Option<usize> {
        let first = self.segments.front()?.seq;
        let i = seq.checked_sub(first)? as usize;
        // Segments may have gaps (missing ones): fall back to a search.
        match self.segments.get(i) {
            Some(s) if s.seq == seq => Some(i),
            _ => self.segments.iter().position(|s| s.seq == seq),
        }
    }

    /// The start of the live segment after `seq`, or the committed end.
    fn next_start(&self, seq: u64) -> Pos {
        self.segments
            .iter()
            .find(|s| s.seq > seq)
            .map_or(self.committed, |s| Pos::start_of(s.seq))
    }

    /// Moves the ack position past the end of a sealed segment and before the first live
    /// one, so fully delivered segments can go.
    fn normalize_ack(&mut self) {
        let Some(first) = self.segments.front() else {
            return;
        };
        if self.ack < Pos::start_of(first.seq) {
            self.ack = Pos::start_of(first.seq);
        }
        if self.seg_index(self.ack.seq).is_none() {
            // Its segment is gone (missing at recovery): go on with the next one.
            if let Some(n) = self.segments.iter().find(|s| s.seq > self.ack.seq) {
                self.ack = Pos::start_of(n.seq);
            }
        }
        if self.ack.seq == self.committed.seq {
            return;
        }
        if let Some(i) = self.seg_index(self.ack.seq) {
            let s = &self.segments[i];
            if self.ack.off >= s.bytes && s.done_records >= s.records {
                if let Some(n) = self.segments.get(i + 1) {
                    self.ack = Pos::start_of(n.seq);
                }
            }
        }
    }

    fn droppable(&self) -> bool {
        let writing = self.write.as_ref().map(|w| w.seq);
        self.segments
            .front()
            .is_some_and(|s| Some(s.seq) != writing)
    }

    fn drop_oldest(&mut self) -> Result<(), SpoolError> {
        let seg = self.segments.pop_front().expect("droppable");
        let (mut fl_records, mut fl_lines) = (0u64, 0u64);
        for r in self.in_flight.iter().filter(|r| r.end.seq == seg.seq) {
            fl_records += 1;
            fl_lines += u64::from(r.lines);
        }
        let records = seg.records.saturating_sub(seg.done_records + fl_records);
        let lines = seg.lines.saturating_sub(seg.done_lines + fl_lines);
        self.counters.dropped_records_spool_full += records;
        self.counters.dropped_lines_spool_full += lines;
        let next = self
            .segments
            .front()
            .map_or(self.committed, |s| Pos::start_of(s.seq));
        if self.cursor.seq <= seg.seq {
            self.cursor = next;
            self.unread_ms = self.segments.front().and_then(|s| s.first_ms);
            self.reader = None;
        }
        if self.ack.seq <= seg.seq {
            self.ack = next;
        }
        self.remove_segment(&seg)
    }

    fn remove_segment(&mut self, seg: &Segment) -> Result<(), SpoolError> {
        if self.reader.as_ref().is_some_and(|(s, _)| *s == seg.seq) {
            self.reader = None;
        }
        self.bytes -= seg.bytes;
        self.dir_dirty = true;
        let path = self.dir.join(format::segment_name(seg.seq));
        self.io.remove(&path).map_err(io_err(IoOp::Remove, &path))
    }

    /// Seals the write segment (written out and synced) and starts the next one.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        if self.write.is_some() {
            self.flush_write()?;
            let w = self.write.as_mut().expect("write segment");
            if w.dirty {
                let path = self.dir.join(format::segment_name(w.seq));
                w.file.sync_data().map_err(io_err(IoOp::Sync, &path))?;
                w.dirty = false;
                self.counters.syncs += 1;
            }
            self.write = None;
        }
        let seq = self.next_seq;
        let path = self.dir.join(format::segment_name(seq));
        let file = self
            .io
            .open(&path, true)
            .map_err(io_err(IoOp::Open, &path))?;
        self.next_seq += 1;
        self.dir_dirty = true;
        let mut buf = Vec::with_capacity(WRITE_BUFFER_BYTES + (64 << 10));
        buf.extend_from_slice(&format::segment_header(seq));
        self.write = Some(WriteSeg {
            seq,
            file,
            written: 0,
            buf,
            dirty: false,
        });
        self.segments.push_back(Segment {
            seq,
            bytes: SEGMENT_HEADER_BYTES as u64,
            records: 0,
            lines: 0,
            done_records: 0,
            done_lines: 0,
            first_ms: None,
            last_ms: None,
            pending_records: 0,
            pending_lines: 0,
        });
        self.bytes += SEGMENT_HEADER_BYTES as u64;
        Ok(())
    }

    /// Writes out the write buffer (no sync).
    fn flush_write(&mut self) -> Result<(), SpoolError> {
        let Some(w) = self.write.as_mut() else {
            return Ok(());
        };
        if w.buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(format::segment_name(w.seq));
        w.file
            .write_all_at(&w.buf, w.written)
            .map_err(io_err(IoOp::Write, &path))?;
        self.counters.bytes_written += w.buf.len() as u64;
        w.written += w.buf.len() as u64;
        w.buf.clear();
        w.dirty = true;
        Ok(())
    }

    /// Writes the ack and committed positions to the next ledger slot and syncs it.
    fn write_ledger(&mut self) -> Result<(), SpoolError> {
        let state = LedgerState {
            generation: self.ledger_state.generation + 1,
            ack: self.ack,
            committed: self.committed,
        };
        let path = self.dir.join(format::LEDGER_NAME);
        let slot = (state.generation % 2) * format::LEDGER_SLOT_BYTES as u64;
        self.ledger
            .write_all_at(&format::encode_ledger(&state), slot)
            .map_err(io_err(IoOp::Write, &path))?;
        self.ledger.sync_data().map_err(io_err(IoOp::Sync, &path))?;
        self.counters.bytes_written += format::LEDGER_SLOT_BYTES as u64;
        self.counters.syncs += 1;
        self.ledger_state = state;
        Ok(())
    }
}

/// `root/<destination, %-escaped>/shard-<n>`: where the spool of `destination` on shard
/// `shard` lives. The name is escaped so that any destination name (`host:port=instance`,
/// a path) is one directory name and two names never share one.
pub fn destination_dir(root: &Path, destination: &str, shard: usize) -> PathBuf {
    root.join(escape_name(destination))
        .join(format!("shard-{shard}"))
}

/// A destination name as one file name: bytes outside `[A-Za-z0-9._-]` become `%XX`
/// (and a leading `.` too, so no name is hidden or `..`).
pub fn escape_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if plain {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The destination name an [`escape_name`] result stands for.
pub fn unescape_name(escaped: &str) -> Option<String> {
    let b = escaped.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The (destination name, shard) a spool directory under `root` belongs to, when its
/// path is `root/<escaped name>/shard-<n>` ([`destination_dir`]). At startup, a spool
/// found by [`find_spools`] whose owner the config no longer has is to be reported, not
/// deleted.
pub fn spool_owner(root: &Path, dir: &Path) -> Option<(String, usize)> {
    let rel = dir.strip_prefix(root).ok()?;
    let mut parts = rel.components();
    let name = parts.next()?.as_os_str().to_str()?;
    let shard = parts.next()?.as_os_str().to_str()?.strip_prefix("shard-")?;
    if parts.next().is_some() {
        return None;
    }
    Some((unescape_name(name)?, shard.parse().ok()?))
}

/// Whether `dir` looks like a spool (holds a ledger or a segment).
pub fn is_spool_dir<Io: SpoolIo>(io: &Io, dir: &Path) -> bool {
    io.list(dir).is_ok_and(|names| {
        names
            .iter()
            .any(|n| n == format::LEDGER_NAME || format::parse_segment_name(n).is_some())
    })
}

/// Every spool directory at or under `root` (at most three levels down), sorted: for the
/// tools, and for reporting at startup the spools no configured destination owns.
pub fn find_spools<Io: SpoolIo>(io: &Io, root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    io.list(root)?;
    while let Some((dir, depth)) = stack.pop() {
        if is_spool_dir(io, &dir) {
            found.push(dir);
            continue;
        }
        if depth == 3 {
            continue;
        }
        for name in io.list(&dir).unwrap_or_default() {
            let p = dir.join(name);
            if io.is_dir(&p) {
                stack.push((p, depth + 1));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// One segment as [`inspect`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Sequence number.
    pub seq: u64,
    /// What the walk found (recovery's rules, nothing changed on disk).
    pub scan: scan::SegmentScan,
    /// Whether its tail lies past the ledger's committed end (a torn tail there is the
    /// normal residue of a crash, not damage).
    pub uncommitted_tail: bool,
}

/// A spool directory read without changing it: for `cadent spool inspect|verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The directory.
    pub dir: PathBuf,
    /// The ledger's newest valid slot.
    pub ledger: Option<LedgerState>,
    /// Whether a ledger file exists.
    pub ledger_exists: bool,
    /// Segments, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// Sequence numbers missing between segments.
    pub missing_segments: Vec<Range<u64>>,
    /// Entries that are not spool files.
    pub unknown_files: Vec<String>,
}

impl Inspection {
    /// Damage found: corrupt records, bad headers, missing segments, a lost ledger, or
    /// committed bytes gone; torn bytes past the committed end are not damage.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.ledger.is_none() && (self.ledger_exists || !self.segments.is_empty()) {
            p.push("ledger missing or corrupt".to_string());
        }
        for s in &self.segments {
            let name = format::segment_name(s.seq);
            if !s.scan.header_ok {
                p.push(format!("{name}: bad header"));
            }
            if s.scan.corrupt_records > 0 {
                p.push(format!(
                    "{name}: {} corrupt records ({} bytes)",
                    s.scan.corrupt_records, s.scan.corrupt_bytes
                ));
            }
            if s.scan.tail_bytes > 0 && !s.uncommitted_tail {
                p.push(format!(
                    "{name}: {} bad bytes at the end of committed data",
                    s.scan.tail_bytes
                ));
            }
        }
        for m in &self.missing_segments {
            p.push(format!("segments {}..{} missing", m.start, m.end));
        }
        p
    }
}

/// Reads a spool directory and checks every record's checksum, changing nothing.
pub fn inspect<Io: SpoolIo>(io: &Io, dir: &Path) -> Result<Inspection, SpoolError> {
    let mut seqs = Vec::new();
    let mut unknown_files = Vec::new();
    let mut ledger_exists = false;
    for name in io.list(dir).map_err(io_err(IoOp::List, dir))? {
        if name == format::LEDGER_NAME {
            ledger_exists = true;
        } else if let Some(seq) = format::parse_segment_name(&name) {
            seqs.push(seq);
        } else {
            unknown_files.push(name);
        }
    }
    seqs.sort_unstable();
    unknown_files.sort();
    let ledger = if ledger_exists {
        let path = dir.join(format::LEDGER_NAME);
        let mut f = io.open_read(&path).map_err(io_err(IoOp::Open, &path))?;
        let mut b = [0u8; format::LEDGER_BYTES];
        let n = read_full(&mut f, &mut b, 0).map_err(io_err(IoOp::Read, &path))?;
        format::pick_ledger(&b[..n])
    } else {
        None
    };
    let mut segments = Vec::new();
    let mut missing_segments = Vec::new();
    let mut prev: Option<u64> = None;
    for &seq in &seqs {
        if let Some(p) = prev {
            if seq > p + 1 {
                missing_segments.push(p + 1..seq);
            }
        }
        prev = Some(seq);
        let path = dir.join(format::segment_name(seq));
        let f = io.open_read(&path).map_err(io_err(IoOp::Open, &path))?;
        let (resync_until, count_from) = match ledger {
            None => (u64::MAX, 0),
            Some(l) => (
                match seq.cmp(&l.committed.seq) {
                    std::cmp::Ordering::Less => u64::MAX,
                    std::cmp::Ordering::Equal => l.committed.off,
                    std::cmp::Ordering::Greater => 0,
                },
                if seq == l.ack.seq {
                    l.ack.off
                } else if seq < l.ack.seq {
                    u64::MAX
                } else {
                    0
                },
            ),
        };
        let scan =
            scan_segment(f, seq, resync_until, count_from).map_err(io_err(IoOp::Read, &path))?;
        let uncommitted_tail = match ledger {
            Some(l) => {
                seq > l.committed.seq || (seq == l.committed.seq && scan.end >= l.committed.off)
            }
            None => Some(seq) == seqs.last().copied(),
        };
        segments.push(SegmentInfo {
            seq,
            scan,
            uncommitted_tail,
        });
    }
    Ok(Inspection {
        dir: dir.to_path_buf(),
        ledger,
        ledger_exists,
        segments,
        missing_segments,
        unknown_files,
    })
}

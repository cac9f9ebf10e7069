//! Reading records out of one segment file, through a bounded buffer, with the rules for
//! damage: a stretch that is not a record is skipped up to the next offset where a whole,
//! checksummed record starts, but only where skipping is allowed (`resync_until`: the
//! committed part of the log); elsewhere the first bad byte ends the segment.
//!
//! Recovery, replay and `cadent spool inspect|verify` all read through this one reader,
//! so a record is judged the same way everywhere.

use std::io;
use std::ops::Range;

use super::format::{self, Decoded, RecordMeta, RECORD_OVERHEAD_BYTES, SEGMENT_HEADER_BYTES};
use super::io::{read_full, SpoolFile};

/// Bytes read from the file at a time.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// One step through a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A record starting at `off`; its payload is [`SegmentReader::payload`] until the
    /// next call.
    Record {
        /// Frame start.
        off: u64,
        /// Frame, header and payload bytes.
        frame_bytes: u64,
        /// Lines and time.
        meta: RecordMeta,
    },
    /// `from..to` is not a record and was skipped; a whole record starts at `to`.
    Corrupt {
        /// First bad byte.
        from: u64,
        /// Where the next good record starts.
        to: u64,
    },
    /// No record starts at `at` before the limit; `at..limit` are bad bytes (none when
    /// `at == limit`: a clean end).
    End {
        /// The reader's position.
        at: u64,
        /// The limit it was given.
        limit: u64,
    },
}

/// A forward reader over one segment, from `pos` up to a `limit` byte offset.
#[derive(Debug)]
pub struct SegmentReader<F> {
    file: F,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_off: u64,
    pos: u64,
    payload: Range<usize>,
}

impl<F: SpoolFile> SegmentReader<F> {
    /// A reader at `pos` (the first record is at `SEGMENT_HEADER_BYTES`).
    pub fn new(file: F, pos: u64) -> SegmentReader<F> {
        SegmentReader {
            file,
            buf: Vec::new(),
            buf_off: pos,
            pos,
            payload: 0..0,
        }
    }

    /// The next byte it will look at.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Moves to `pos` (forward or back).
    pub fn seek(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// The file, for reads outside the record walk.
    pub fn file(&mut self) -> &mut F {
        &mut self.file
    }

    /// The payload of the record the last `next` returned.
    pub fn payload(&self) -> &[u8] {
        &self.buf[self.payload.clone()]
    }

    /// Reads the segment header; `Ok(false)` when it is missing, short or not `seq`'s.
    pub fn header_ok(&mut self, seq: u64) -> io::Result<bool> {
        let mut h = [0u8; SEGMENT_HEADER_BYTES];
        let n = read_full(&mut self.file, &mut h, 0)?;
        Ok(n == h.len() && format::check_segment_header(&h, seq))
    }

    /// Makes `buf` hold `[off, off + n)`, or as much of it as lies before `limit`. Returns
    /// the bytes available from `off`.
    fn fill(&mut self, off: u64, n: usize, limit: u64) -> io::Result<&[u8]> {
        let want_end = (off + n as u64).min(limit);
        let have_end = self.buf_off + self.buf.len() as u64;
        if off < self.buf_off || off > have_end {
            self.buf.clear();
            self.buf_off = off;
        } else if want_end > have_end {
            // Keep from `off` on and read the rest.
            let drop = (off - self.buf_off) as usize;
            self.buf.drain(..drop);
            self.buf_off = off;
        }
        let have_end = self.buf_off + self.buf.len() as u64;
        if want_end > have_end {
            let read_to = (want_end.max(have_end + READ_CHUNK_BYTES as u64)).min(limit);
            let start = self.buf.len();
            self.buf.resize(start + (read_to - have_end) as usize, 0);
            let got = read_full(&mut self.file, &mut self.buf[start..], have_end)?;
            self.buf.truncate(start + got);
        }
        let from = (off - self.buf_off) as usize;
        let end = ((want_end.max(off) - self.buf_off) as usize).min(self.buf.len());
        Ok(&self.buf[from.min(end)..end])
    }

    /// Looks for a whole record at `off` ending at or before `limit`.
    fn record_at(&mut self, off: u64, limit: u64) -> io::Result<Option<(RecordMeta, usize)>> {
        let head = self.fill(off, RECORD_OVERHEAD_BYTES, limit)?;
        let need = match format::decode_record(head) {
            Decoded::Invalid => return Ok(None),
            Decoded::Record {
                meta, frame_bytes, ..
            } => return Ok(Some((meta, frame_bytes))),
            Decoded::Short { need } => need,
        };
        if off + (need as u64) > limit {
            return Ok(None);
        }
        let whole = self.fill(off, need, limit)?;
        Ok(match format::decode_record(whole) {
            Decoded::Record {
                meta, frame_bytes, ..
            } => Some((meta, frame_bytes)),
            _ => None,
        })
    }

    /// The next step. `limit`: read no byte at or past it. `resync_until`: after damage,
    /// look for a good record starting at or before this offset; past it, the first bad
    /// byte ends the walk.
    pub fn next(&mut self, limit: u64, resync_until: u64) -> io::Result<Step> {
        let at = self.pos;
        if at >= limit {
            return Ok(Step::End { at, limit });
        }
        if let Some((meta, frame_bytes)) = self.record_at(at, limit)? {
            let start = (at - self.buf_off) as usize;
            self.payload = start + RECORD_OVERHEAD_BYTES..start + frame_bytes;
            self.pos = at + frame_bytes as u64;
            return Ok(Step::Record {
                off: at,
                frame_bytes: frame_bytes as u64,
                meta,
            });
        }
        let last = resync_until.min(limit.saturating_sub(RECORD_OVERHEAD_BYTES as u64));
        let mut c = at + 1;
        while c <= last {
            if self.record_at(c, limit)?.is_some() {
                self.pos = c;
                return Ok(Step::Corrupt { from: at, to: c });
            }
            c += 1;
        }
        Ok(Step::End { at, limit })
    }
}

/// What one pass over a whole segment found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// Whether the 32-byte header is present and names this segment.
    pub header_ok: bool,
    /// File length.
    pub file_bytes: u64,
    /// Good records, and the lines they carry.
    pub records: u64,
    /// Lines in good records.
    pub lines: u64,
    /// Spool time of the first and last good record.
    pub first_ms: Option<u64>,
    /// See `first_ms`.
    pub last_ms: Option<u64>,
    /// Damaged stretches skipped between good records.
    pub corrupt_records: u64,
    /// Bytes in those stretches.
    pub corrupt_bytes: u64,
    /// Where the walk ended: after the last good record, or at the file's end.
    pub end: u64,
    /// Bad bytes from `end` to the file's end (a torn tail, or damage with nothing good
    /// after it).
    pub tail_bytes: u64,
    /// Good records before `count_from`, and their lines (the part already delivered).
    pub records_before: u64,
    /// See `records_before`.
    pub lines_before: u64,
    /// Spool time of the first good record at or after `count_from`.
    pub first_ms_from: Option<u64>,
}

/// Walks a whole segment. `resync_until` as in [`SegmentReader::next`]; records starting
/// before `count_from` are also counted in `records_before`.
pub fn scan_segment<F: SpoolFile>(
    file: F,
    seq: u64,
    resync_until: u64,
    count_from: u64,
) -> io::Result<SegmentScan> {
    let mut r = SegmentReader::new(file, SEGMENT_HEADER_BYTES as u64);
    let mut s = SegmentScan {
        header_ok: r.header_ok(seq)?,
        file_bytes: r.file().file_len()?,
        ..SegmentScan::default()
    };
    if s.file_bytes < SEGMENT_HEADER_BYTES as u64 {
        s.end = s.file_bytes;
        return Ok(s);
    }
    loop {
        match r.next(s.file_bytes, resync_until)? {
            Step::Record { off, meta, .. } => {
                s.records += 1;
                s.lines += u64::from(meta.lines);
                s.first_ms.get_or_insert(meta.spooled_ms);
                s.last_ms = Some(meta.spooled_ms);
                if off < count_from {
                    s.records_before += 1;
                    s.lines_before += u64::from(meta.lines);
                } else {
                    s.first_ms_from.get_or_insert(meta.spooled_ms);
                }
            }
            Step::Corrupt { from, to } => {
                s.corrupt_records += 1;
                s.corrupt_bytes += to - from;
            }
            Step::End { at, limit } => {
                s.end = at;
                s.tail_bytes = limit - at;
                return Ok(s);
            }
        }
    }
}

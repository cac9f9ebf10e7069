//! The spool's on-disk layout, as pure functions from values to bytes and back: segment
//! headers, record frames and ledger slots. No I/O here; `mod.rs` documents the format
//! byte by byte and these constants are the single source of it.

/// Bytes at the start of every segment file.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// `[len u32][crc32c u32]` before every record.
pub const FRAME_BYTES: usize = 8;
/// The record header inside the checksummed body: magic, version, flags, lines, time.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Framing cost of one record on disk.
pub const RECORD_OVERHEAD_BYTES: usize = FRAME_BYTES + RECORD_HEADER_BYTES;
/// Largest payload one record may carry (64 MiB): bounds the reader's buffer, and is far
/// above any batch (`flush_bytes` is 64 KiB by default).
pub const PAYLOAD_BYTES_MAX: usize = 64 << 20;
/// One ledger slot; the ledger file holds two.
pub const LEDGER_SLOT_BYTES: usize = 64;
/// The ledger file: slots A and B.
pub const LEDGER_BYTES: usize = 2 * LEDGER_SLOT_BYTES;

/// Segment file magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CADSPSEG";
/// Ledger slot magic.
pub const LEDGER_MAGIC: [u8; 8] = *b"CADSPLDG";
/// Format version written into segment headers and records.
pub const VERSION: u8 = 1;
/// First byte of every record header: a cheap filter when resynchronising after damage.
pub const RECORD_MAGIC: u8 = 0xC5;

/// Spool times before this (2001-09-09) or after `TIME_MS_MAX` (2286) cannot be ours: a
/// plausibility filter that keeps random bytes from being checksummed as candidates.
pub const TIME_MS_MIN: u64 = 1_000_000_000_000;
/// See [`TIME_MS_MIN`].
pub const TIME_MS_MAX: u64 = 10_000_000_000_000;

const _: () = assert!(RECORD_OVERHEAD_BYTES == 24);
const _: () = assert!(PAYLOAD_BYTES_MAX + RECORD_HEADER_BYTES <= u32::MAX as usize);
const _: () = assert!(LEDGER_BYTES == 128);

/// What a record says about itself besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Lines (or items) in the payload.
    pub lines: u32,
    /// Unix time in milliseconds when the record was spooled.
    pub spooled_ms: u64,
}

/// Bytes a record of `payload` bytes takes on disk.
pub fn record_bytes(payload: usize) -> usize {
    RECORD_OVERHEAD_BYTES + payload
}

/// Appends one framed record to `out`.
pub fn encode_record(meta: RecordMeta, payload: &[u8], out: &mut Vec<u8>) {
    assert!(payload.len() <= PAYLOAD_BYTES_MAX, "record too large");
    let start = out.len();
    let body_len = (RECORD_HEADER_BYTES + payload.len()) as u32;
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled below
    out.push(RECORD_MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&[0, 0]); // flags
    out.extend_from_slice(&meta.lines.to_le_bytes());
    out.extend_from_slice(&meta.spooled_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + FRAME_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    // The pair of the read side's check: what we wrote decodes as written.
    debug_assert!(matches!(
        decode_record(&out[start..]),
        Decoded::Record { meta: m, .. } if m == meta
    ));
}

/// The result of looking for a record at the start of a byte slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole record: `frame_bytes` in all, the payload at `payload` within the slice.
    Record {
        /// What the header says.
        meta: RecordMeta,
        /// Frame, header and payload.
        frame_bytes: usize,
        /// Where the payload sits in the slice.
        payload: std::ops::Range<usize>,
    },
    /// The header looks like ours but the frame runs past the slice: more bytes are needed
    /// (`need` in all), or at the end of a file it is torn.
    Short {
        /// Bytes the frame claims.
        need: usize,
    },
    /// Not a record: implausible header or bad checksum.
    Invalid,
}

/// Looks for a record at `buf[0..]`. A slice too short to hold even the frame and record
/// header is `Short`.
pub fn decode_record(buf: &[u8]) -> Decoded {
    if buf.len() < RECORD_OVERHEAD_BYTES {
        return Decoded::Short {
            need: RECORD_OVERHEAD_BYTES,
        };
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if !(RECORD_HEADER_BYTES..=RECORD_HEADER_BYTES + PAYLOAD_BYTES_MAX).contains(&body_len) {
        return Decoded::Invalid;
    }
    let h = &buf[FRAME_BYTES..];
    let lines = u32::from_le_bytes(h[4..8].try_into().unwrap());
    let spooled_ms = u64::from_le_bytes(h[8..16].try_into().unwrap());
    if h[0] != RECORD_MAGIC
        || h[1] != VERSION
        || h[2..4] != [0, 0]
        || !(TIME_MS_MIN..TIME_MS_MAX).contains(&spooled_ms)
    {
        return Decoded::Invalid;
    }
    let frame_bytes = FRAME_BYTES + body_len;
    if buf.len() < frame_bytes {
        return Decoded::Short { need: frame_bytes };
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    if crc32c::crc32c(&buf[FRAME_BYTES..frame_bytes]) != crc {
        return Decoded::Invalid;
    }
    Decoded::Record {
        meta: RecordMeta { lines, spooled_ms },
        frame_bytes,
        payload: RECORD_OVERHEAD_BYTES..frame_bytes,
    }
}

/// The 32-byte header of segment `seq`.
pub fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8] = VERSION;
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Whether `h` is a valid header of segment `seq`.
pub fn check_segment_header(h: &[u8], seq: u64) -> bool {
    h.len() >= SEGMENT_HEADER_BYTES
        && h[0..8] == SEGMENT_MAGIC
        && h[8] == VERSION
        && h[16..24] == seq.to_le_bytes()
        && h[24..28] == crc32c::crc32c(&h[0..24]).to_le_bytes()
}

/// A position in the spool: a segment and a byte offset in it. Ordered as the log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Segment sequence number.
    pub seq: u64,
    /// Byte offset in the segment file.
    pub off: u64,
}

impl Pos {
    /// The first record of segment `seq`.
    pub fn start_of(seq: u64) -> Pos {
        Pos {
            seq,
            off: SEGMENT_HEADER_BYTES as u64,
        }
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.off)
    }
}

/// What the ledger remembers across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LedgerState {
    /// Bumped on every ledger write; the slot is `generation % 2`.
    pub generation: u64,
    /// Everything before this was delivered (acked).
    pub ack: Pos,
    /// Everything before this was durable when the slot was written (the committed end).
    pub committed: Pos,
}

/// One 64-byte ledger slot.
pub fn encode_ledger(s: &LedgerState) -> [u8; LEDGER_SLOT_BYTES] {
    let mut b = [0u8; LEDGER_SLOT_BYTES];
    b[0..8].copy_from_slice(&LEDGER_MAGIC);
    b[8..16].copy_from_slice(&s.generation.to_le_bytes());
    b[16..24].copy_from_slice(&s.ack.seq.to_le_bytes());
    b[24..32].copy_from_slice(&s.ack.off.to_le_bytes());
    b[32..40].copy_from_slice(&s.committed.seq.to_le_bytes());
    b[40..48].copy_from_slice(&s.committed.off.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A ledger slot, if it is whole and well-formed.
pub fn decode_ledger(b: &[u8]) -> Option<LedgerState> {
    if b.len() < LEDGER_SLOT_BYTES
        || b[0..8] != LEDGER_MAGIC
        || b[60..64] != crc32c::crc32c(&b[0..60]).to_le_bytes()
    {
        return None;
    }
    let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().unwrap());
    let s = LedgerState {
        generation: u(8..16),
        ack: Pos {
            seq: u(16..24),
            off: u(24..32),
        },
        committed: Pos {
            seq: u(32..40),
            off: u(40..48),
        },
    };
    (s.ack <= s.committed).then_some(s)
}

/// The newest valid slot of a ledger file's bytes.
pub fn pick_ledger(file: &[u8]) -> Option<LedgerState> {
    let a = file.get(..LEDGER_SLOT_BYTES).and_then(decode_ledger);
    let b = file
        .get(LEDGER_SLOT_BYTES..LEDGER_BYTES)
        .and_then(decode_ledger);
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.generation > a.generation { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Segment file name: the sequence number, zero-padded so names sort as numbers.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// The sequence number of a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The ledger's file name.
pub const LEDGER_NAME: &str = "ledger";

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_760_000_000_000;

    #[test]
    fn record_round_trip_and_every_flipped_bit_is_caught() {
        let meta = RecordMeta {
            lines: 2,
            spooled_ms: T,
        };
        let mut out = Vec::new();
        encode_record(meta, b"a 1 2\nb 3 4\n", &mut out);
        assert_eq!(out.len(), record_bytes(12));
        match decode_record(&out) {
            Decoded::Record {
                meta: m,
                frame_bytes,
                payload,
            } => {
                assert_eq!((m, frame_bytes), (meta, out.len()));
                assert_eq!(&out[payload], b"a 1 2\nb 3 4\n");
            }
            d => panic!("{d:?}"),
        }
        for bit in 0..out.len() * 8 {
            let mut b = out.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode_record(&b), Decoded::Record { .. }),
                "bit {bit}"
            );
        }
        assert_eq!(
            decode_record(&out[..out.len() - 1]),
            Decoded::Short { need: out.len() }
        );
        assert_eq!(decode_record(&[0; 64]), Decoded::Invalid);
    }

    #[test]
    fn segment_header_and_names() {
        let h = segment_header(7);
        assert!(check_segment_header(&h, 7));
        assert!(!check_segment_header(&h, 8));
        assert_eq!(segment_name(7), "00000000000000000007.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("7.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000000x.seg"), None);
    }

    #[test]
    fn the_newest_valid_ledger_slot_wins() {
        let s = |generation, off| LedgerState {
            generation,
            ack: Pos { seq: 1, off },
            committed: Pos { seq: 2, off: 40 },
        };
        let mut f = vec![0u8; LEDGER_BYTES];
        assert_eq!(pick_ledger(&f), None);
        f[..64].copy_from_slice(&encode_ledger(&s(2, 32)));
        f[64..].copy_from_slice(&encode_ledger(&s(3, 50)));
        assert_eq!(pick_ledger(&f), Some(s(3, 50)));
        f[100] ^= 1; // torn slot B: A stands
        assert_eq!(pick_ledger(&f), Some(s(2, 32)));
    }
}

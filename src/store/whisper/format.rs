//! The whisper format engine, byte-identical to python whisper 1.1.10.
//!
//! Every read and write goes through a `WhisperIo`; this module opens no files. The
//! functions mirror whisper.py's (`create`, `__readHeader`, `update`, `update_many`,
//! `fetch`) down to the order of the bytes they write, because files must stay
//! interchangeable with carbon-cache, go-carbon and the whisper scripts. Where whisper.py
//! has a quirk that shows in the bytes, the quirk is kept and named at the spot.
//!
//! Layout (all integers big-endian):
//! `Metadata = aggregationType:u32 maxRetention:u32 xFilesFactor:f32 archiveCount:u32`,
//! then `archiveCount × (offset:u32 secondsPerPoint:u32 points:u32)`, then the archives,
//! each `points × (timestamp:u32 value:f64)`.

use std::fmt;
use std::io;
use std::ops::Range;

use super::io::WhisperIo;

/// Bytes of the metadata block at the start of every file.
pub const METADATA_SIZE: u64 = 16;
/// Bytes of one archive's entry in the archive table.
pub const ARCHIVE_INFO_SIZE: u64 = 12;
/// Bytes of one point (`timestamp:u32 value:f64`, unpadded).
pub const POINT_SIZE: u64 = 12;

/// How points are consolidated when they propagate to a lower-precision archive; the
/// discriminants are whisper's on-disk ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregationMethod {
    /// Mean of the known points.
    Average = 1,
    /// Sum of the known points.
    Sum = 2,
    /// The last known point.
    Last = 3,
    /// The largest known point.
    Max = 4,
    /// The smallest known point.
    Min = 5,
    /// Mean with unknown points counted as 0 (over all points, known or not).
    AvgZero = 6,
    /// The known point with the largest absolute value (sign kept).
    AbsMax = 7,
    /// The known point with the smallest absolute value (sign kept).
    AbsMin = 8,
}

impl AggregationMethod {
    /// All methods, in id order.
    pub const ALL: [AggregationMethod; 8] = [
        AggregationMethod::Average,
        AggregationMethod::Sum,
        AggregationMethod::Last,
        AggregationMethod::Max,
        AggregationMethod::Min,
        AggregationMethod::AvgZero,
        AggregationMethod::AbsMax,
        AggregationMethod::AbsMin,
    ];

    /// The on-disk id (1..=8).
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The method with on-disk id `id`, if any.
    pub fn from_id(id: u32) -> Option<AggregationMethod> {
        AggregationMethod::ALL.into_iter().find(|m| m.id() == id)
    }

    /// whisper's name: `average`, `sum`, `last`, `max`, `min`, `avg_zero`, `absmax`,
    /// `absmin`.
    pub fn name(self) -> &'static str {
        match self {
            AggregationMethod::Average => "average",
            AggregationMethod::Sum => "sum",
            AggregationMethod::Last => "last",
            AggregationMethod::Max => "max",
            AggregationMethod::Min => "min",
            AggregationMethod::AvgZero => "avg_zero",
            AggregationMethod::AbsMax => "absmax",
            AggregationMethod::AbsMin => "absmin",
        }
    }

    /// The method called `name` (exact, as whisper's `aggregationMethodToType`).
    pub fn from_name(name: &str) -> Option<AggregationMethod> {
        AggregationMethod::ALL
            .into_iter()
            .find(|m| m.name() == name)
    }

    /// Aggregate a propagation window, as whisper's `aggregate()`: `window` holds the
    /// higher archive's slots in time order, `None` where unknown. `None` when nothing
    /// is known.
    ///
    /// Sums add left to right from +0.0, as CPython 3.11's `sum()` does (3.12 switched
    /// to compensated summation, which can differ in the last bit); `max`/`min` keep
    /// the first of equal values, as Python's `max()`/`min()` do.
    pub fn aggregate(self, window: &[Option<f64>]) -> Option<f64> {
        let mut acc = Aggregator::new(self);
        for v in window {
            acc.push(*v);
        }
        acc.finish()
    }
}

impl fmt::Display for AggregationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AggregationMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<AggregationMethod, Error> {
        AggregationMethod::from_name(s).ok_or_else(|| Error::UnknownAggregationMethod(s.into()))
    }
}

/// A streaming `aggregate()`: no buffer of the window is needed.
struct Aggregator {
    method: AggregationMethod,
    total: u64,
    known: u64,
    sum: f64,
    pick: Option<f64>,
}

impl Aggregator {
    fn new(method: AggregationMethod) -> Aggregator {
        Aggregator {
            method,
            total: 0,
            known: 0,
            sum: 0.0,
            pick: None,
        }
    }

    fn push(&mut self, value: Option<f64>) {
        self.total += 1;
        let Some(v) = value else { return };
        self.known += 1;
        // avg_zero adds `x or 0` for every slot; adding +0.0 for the unknown ones never
        // changes a sum that starts at +0.0, so one running sum serves all three.
        self.sum += v;
        self.pick = Some(match (self.method, self.pick) {
            (_, None) => v,
            (AggregationMethod::Last, Some(_)) => v,
            (AggregationMethod::Max, Some(p)) => pick_if(v > p, v, p),
            (AggregationMethod::Min, Some(p)) => pick_if(v < p, v, p),
            (AggregationMethod::AbsMax, Some(p)) => pick_if(v.abs() > p.abs(), v, p),
            (AggregationMethod::AbsMin, Some(p)) => pick_if(v.abs() < p.abs(), v, p),
            (_, Some(p)) => p,
        });
    }

    fn finish(&self) -> Option<f64> {
        if self.known == 0 {
            return None;
        }
        Some(match self.method {
            AggregationMethod::Average => self.sum / self.known as f64,
            AggregationMethod::Sum => self.sum,
            AggregationMethod::AvgZero => self.sum / self.total as f64,
            _ => self.pick.expect("a known value was seen"),
        })
    }
}

fn pick_if(cond: bool, a: f64, b: f64) -> f64 {
    if cond {
        a
    } else {
        b
    }
}

/// One archive's entry in the header, widened from the on-disk `u32`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// Absolute byte offset of the archive's first slot.
    pub offset: u64,
    /// Seconds per point (the archive's step).
    pub seconds_per_point: u64,
    /// Number of slots.
    pub points: u64,
    /// `seconds_per_point × points`.
    pub retention: u64,
    /// `points × POINT_SIZE` bytes.
    pub size: u64,
}

impl ArchiveInfo {
    fn new(offset: u64, seconds_per_point: u64, points: u64) -> ArchiveInfo {
        ArchiveInfo {
            offset,
            seconds_per_point,
            points,
            retention: seconds_per_point * points,
            size: points * POINT_SIZE,
        }
    }

    /// One past the archive's last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }

    fn step(&self) -> i64 {
        self.seconds_per_point as i64
    }

    /// True when a point `age` seconds old fits this archive (`age <= retention`).
    fn covers(&self, age: i128) -> bool {
        age <= self.retention as i128
    }

    /// The byte offset of `interval`'s slot, counted from the slot holding
    /// `base_interval` (python's floor division and non-negative modulo).
    fn slot_offset(&self, base_interval: i64, interval: i64) -> u64 {
        let points = (interval as i128 - base_interval as i128).div_euclid(self.step() as i128);
        let bytes = (points * POINT_SIZE as i128).rem_euclid(self.size as i128);
        self.offset + bytes as u64
    }
}

/// A whisper file's header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// How points propagate to lower archives.
    pub aggregation: AggregationMethod,
    /// The longest archive retention, seconds (as stored; updates older than it are
    /// dropped and fetches are clamped to it).
    pub max_retention: u32,
    /// Fraction of known points a propagation window needs, stored as a 32-bit float
    /// and compared as one: 0.1 is 0.10000000149, so 1 of 10 does not propagate.
    pub x_files_factor: f32,
    /// The archives in file order (highest precision first in every valid file).
    pub archives: Vec<ArchiveInfo>,
}

impl Header {
    /// Bytes of the metadata plus the archive table.
    pub fn header_size(&self) -> u64 {
        METADATA_SIZE + ARCHIVE_INFO_SIZE * self.archives.len() as u64
    }

    /// The size of the whole file: `16 + 12·N + 12·Σpoints`.
    pub fn file_size(&self) -> u64 {
        self.header_size() + self.archives.iter().map(|a| a.size).sum::<u64>()
    }

    /// Append the header's bytes (metadata and archive table) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.aggregation.id().to_be_bytes());
        out.extend_from_slice(&self.max_retention.to_be_bytes());
        out.extend_from_slice(&self.x_files_factor.to_be_bytes());
        out.extend_from_slice(&(self.archives.len() as u32).to_be_bytes());
        for a in &self.archives {
            // `create` and `read_header` keep every field within u32.
            out.extend_from_slice(&(a.offset as u32).to_be_bytes());
            out.extend_from_slice(&(a.seconds_per_point as u32).to_be_bytes());
            out.extend_from_slice(&(a.points as u32).to_be_bytes());
        }
    }
}

/// Why a header cannot be read.
#[derive(Debug, Clone, PartialEq)]
pub enum Corruption {
    /// The file ends before the header or the archives do.
    Truncated {
        /// The file's length.
        len: u64,
        /// The length the header says it needs.
        need: u64,
    },
    /// The aggregation type is not 1..=8.
    UnknownAggregation(u32),
    /// The xFilesFactor is outside [0, 1] (or NaN).
    XffOutOfRange(f32),
    /// The archive count is 0.
    NoArchives,
    /// maxRetention is not the longest archive retention.
    MaxRetention {
        /// The value in the metadata.
        stored: u32,
        /// The longest `seconds_per_point × points` in the archive table.
        expected: u64,
    },
    /// An archive entry contradicts the layout.
    ArchiveTable {
        /// The archive's index.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::Truncated { len, need } => {
                write!(
                    f,
                    "truncated: the file has {len} bytes, its header needs {need}"
                )
            }
            Corruption::UnknownAggregation(id) => {
                write!(f, "unknown aggregation type {id} (expected 1..=8)")
            }
            Corruption::XffOutOfRange(x) => write!(f, "xFilesFactor {x} is outside [0, 1]"),
            Corruption::NoArchives => f.write_str("the archive count is 0"),
            Corruption::MaxRetention { stored, expected } => write!(
                f,
                "maxRetention {stored} differs from the longest archive retention {expected}"
            ),
            Corruption::ArchiveTable { index, reason } => write!(f, "archive{index}: {reason}"),
        }
    }
}

/// Errors of the whisper engine. The first group mirrors whisper's
/// `InvalidConfiguration` messages for archive lists.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An empty archive list.
    #[error("invalid retentions: you must specify at least one archive configuration")]
    NoArchives,
    /// An archive with zero seconds per point or zero points (whisper.py accepts a
    /// single such archive and then fails dividing by zero; we refuse it up front).
    #[error("invalid retentions: archive{index} ({seconds_per_point}:{points}) needs at least 1 second per point and 1 point")]
    EmptyArchive {
        /// Index after sorting by precision.
        index: usize,
        /// Seconds per point.
        seconds_per_point: u64,
        /// Points.
        points: u64,
    },
    /// Two archives with the same precision.
    #[error("invalid retentions: a whisper database may not be configured having two archives with the same precision (archive{index}: {a:?}, archive{}: {b:?})", index + 1)]
    DuplicatePrecision {
        /// Index of the first of the two, after sorting.
        index: usize,
        /// The first archive, `(seconds_per_point, points)`.
        a: (u64, u64),
        /// The second archive.
        b: (u64, u64),
    },
    /// A lower precision that is not a multiple of the higher.
    #[error("invalid retentions: higher precision archives' precision must evenly divide all lower precision archives' precision (archive{index}: {higher}, archive{}: {lower})", index + 1)]
    PrecisionNotDivisible {
        /// Index of the higher-precision archive.
        index: usize,
        /// Its seconds per point.
        higher: u64,
        /// The next archive's seconds per point.
        lower: u64,
    },
    /// A lower-precision archive that does not cover a longer time.
    #[error("invalid retentions: lower precision archives must cover larger time intervals than higher precision archives (archive{index}: {higher} seconds, archive{}: {lower} seconds)", index + 1)]
    RetentionNotIncreasing {
        /// Index of the higher-precision archive.
        index: usize,
        /// Its retention, seconds.
        higher: u64,
        /// The next archive's retention.
        lower: u64,
    },
    /// An archive with fewer points than one consolidation of the next needs.
    #[error("invalid retentions: each archive must have at least enough points to consolidate to the next archive (archive{} consolidates {needed} of archive{index}'s points but it has only {points} total points)", index + 1)]
    TooFewPoints {
        /// Index of the higher-precision archive.
        index: usize,
        /// `next.seconds_per_point / this.seconds_per_point`.
        needed: u64,
        /// This archive's points.
        points: u64,
    },
    /// A file whose offsets or retention do not fit whisper's 32-bit fields.
    #[error("invalid retentions: the file would need {what} = {value}, more than whisper's 32-bit fields hold")]
    TooLarge {
        /// Which field overflows.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// An xFilesFactor outside [0, 1] (or NaN).
    #[error("invalid xFilesFactor {0}, not between 0 and 1")]
    InvalidXFilesFactor(f64),
    /// An aggregation method name whisper does not know.
    #[error("unrecognized aggregation method: {0} (expected one of average, sum, last, max, min, avg_zero, absmax, absmin)")]
    UnknownAggregationMethod(String),
    /// A header that cannot be read (whisper's `CorruptWhisperFile`).
    #[error("corrupt whisper file: {0}")]
    Corrupt(Corruption),
    /// A point whose aligned timestamp does not fit the on-disk u32.
    #[error("timestamp {0} does not fit whisper's unsigned 32-bit timestamps")]
    TimestampOutOfRange(i64),
    /// `update` of a timestamp outside `[now - maxRetention, now]`.
    #[error("timestamp {timestamp} not covered by any archives in this database (now {now})")]
    TimestampNotCovered {
        /// The point's timestamp.
        timestamp: i64,
        /// The `now` it was judged against.
        now: i64,
    },
    /// `fetch` with from after until.
    #[error("invalid time interval: from time '{from}' is after until time '{until}'")]
    InvalidTimeInterval {
        /// The requested from.
        from: i64,
        /// The requested until.
        until: i64,
    },
    /// The I/O underneath failed.
    #[error("whisper i/o: {0}")]
    Io(#[from] io::Error),
}

/// How `create` fills the data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// Write one zero byte at the end; the data area is a hole (`--sparse`).
    Sparse,
    /// `posix_fallocate` the data area (`--fallocate`, carbon's default).
    Fallocate,
    /// Write zeros in 16 KiB chunks (whisper's default).
    ZeroFill,
}

/// Check an archive list as whisper's `validateArchiveList` does, after sorting it by
/// precision (in place, as whisper does).
pub fn validate_archives(archives: &mut [(u64, u64)]) -> Result<(), Error> {
    if archives.is_empty() {
        return Err(Error::NoArchives);
    }
    archives.sort_by_key(|a| a.0);
    for (index, &(seconds_per_point, points)) in archives.iter().enumerate() {
        if seconds_per_point == 0 || points == 0 {
            return Err(Error::EmptyArchive {
                index,
                seconds_per_point,
                points,
            });
        }
    }
    for (index, pair) in archives.windows(2).enumerate() {
        let (a, b) = (pair[0], pair[1]);
        if a.0 >= b.0 {
            return Err(Error::DuplicatePrecision { index, a, b });
        }
        if b.0 % a.0 != 0 {
            return Err(Error::PrecisionNotDivisible {
                index,
                higher: a.0,
                lower: b.0,
            });
        }
        let (higher, lower) = (a.0.saturating_mul(a.1), b.0.saturating_mul(b.1));
        if lower <= higher {
            return Err(Error::RetentionNotIncreasing {
                index,
                higher,
                lower,
            });
        }
        let needed = b.0 / a.0;
        if a.1 < needed {
            return Err(Error::TooFewPoints {
                index,
                needed,
                points: a.1,
            });
        }
    }
    Ok(())
}

/// The header `create` would write for `archives` (any order), after validation.
pub fn plan(
    archives: &[(u64, u64)],
    x_files_factor: f64,
    aggregation: AggregationMethod,
) -> Result<Header, Error> {
    let mut sorted: Vec<(u64, u64)> = archives.to_vec();
    validate_archives(&mut sorted)?;
    if !(0.0..=1.0).contains(&x_files_factor) {
        return Err(Error::InvalidXFilesFactor(x_files_factor));
    }
    let too_large = |what, value: u64| Error::TooLarge { what, value };
    let mut offset = METADATA_SIZE + ARCHIVE_INFO_SIZE * sorted.len() as u64;
    let mut infos = Vec::with_capacity(sorted.len());
    let mut max_retention = 0u64;
    for &(seconds_per_point, points) in &sorted {
        if offset > u64::from(u32::MAX) {
            return Err(too_large("an archive offset", offset));
        }
        if seconds_per_point > u64::from(u32::MAX) {
            return Err(too_large("seconds per point", seconds_per_point));
        }
        if points > u64::from(u32::MAX) {
            return Err(too_large("points", points));
        }
        let info = ArchiveInfo::new(offset, seconds_per_point, points);
        max_retention = max_retention.max(info.retention);
        offset += info.size;
        infos.push(info);
    }
    let max_retention =
        u32::try_from(max_retention).map_err(|_| too_large("maxRetention", max_retention))?;
    Ok(Header {
        aggregation,
        max_retention,
        x_files_factor: x_files_factor as f32,
        archives: infos,
    })
}

/// Create a whisper file in the empty `io`: validate, write the header, fill the data
/// area as `mode` says. Returns the header written. Opening the file (and refusing an
/// existing path) is the caller's: see `FileIo::create_new`.
pub fn create<I: WhisperIo + ?Sized>(
    io: &mut I,
    archives: &[(u64, u64)],
    x_files_factor: f64,
    aggregation: AggregationMethod,
    mode: CreateMode,
) -> Result<Header, Error> {
    static ZEROES: [u8; 16384] = [0; 16384];
    let header = plan(archives, x_files_factor, aggregation)?;
    let mut bytes = Vec::with_capacity(header.header_size() as usize);
    header.encode(&mut bytes);
    io.write_at(&bytes, 0)?;
    let (start, end) = (header.header_size(), header.file_size());
    match mode {
        CreateMode::Sparse => io.write_at(&[0], end - 1)?,
        CreateMode::Fallocate => io.allocate(start, end - start)?,
        CreateMode::ZeroFill => {
            let mut off = start;
            while off < end {
                let n = (end - off).min(ZEROES.len() as u64);
                io.write_at(&ZEROES[..n as usize], off)?;
                off += n;
            }
        }
    }
    Ok(header)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be_f64(b: &[u8]) -> f64 {
    f64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn corrupt(c: Corruption) -> Error {
    Error::Corrupt(c)
}

/// Read and check a header. Beyond whisper's own checks (aggregation type, xff range)
/// it refuses what would make later reads fail or run wild: a file shorter than its
/// header says, no archives, zero-sized archives, an archive table whose offsets are
/// not the contiguous layout `create` writes, and a maxRetention that is not the
/// longest archive retention.
pub fn read_header<I: WhisperIo + ?Sized>(io: &mut I) -> Result<Header, Error> {
    let len = io.file_len()?;
    if len < METADATA_SIZE {
        return Err(corrupt(Corruption::Truncated {
            len,
            need: METADATA_SIZE,
        }));
    }
    let mut meta = [0u8; METADATA_SIZE as usize];
    io.read_at(&mut meta, 0)?;
    let aggregation_id = be_u32(&meta[0..]);
    let aggregation = AggregationMethod::from_id(aggregation_id)
        .ok_or(corrupt(Corruption::UnknownAggregation(aggregation_id)))?;
    let max_retention = be_u32(&meta[4..]);
    let x_files_factor = f32::from_be_bytes(meta[8..12].try_into().expect("4 bytes"));
    if !(0.0..=1.0).contains(&x_files_factor) {
        return Err(corrupt(Corruption::XffOutOfRange(x_files_factor)));
    }
    let count = u64::from(be_u32(&meta[12..]));
    if count == 0 {
        return Err(corrupt(Corruption::NoArchives));
    }
    let header_size = METADATA_SIZE + ARCHIVE_INFO_SIZE * count;
    if len < header_size {
        return Err(corrupt(Corruption::Truncated {
            len,
            need: header_size,
        }));
    }
    let mut table = vec![0u8; (header_size - METADATA_SIZE) as usize];
    io.read_at(&mut table, METADATA_SIZE)?;
    let mut archives = Vec::with_capacity(count as usize);
    let mut expected_offset = header_size;
    for (index, entry) in table.chunks_exact(ARCHIVE_INFO_SIZE as usize).enumerate() {
        let offset = u64::from(be_u32(&entry[0..]));
        let seconds_per_point = u64::from(be_u32(&entry[4..]));
        let points = u64::from(be_u32(&entry[8..]));
        let bad = |reason| corrupt(Corruption::ArchiveTable { index, reason });
        if seconds_per_point == 0 {
            return Err(bad("0 seconds per point"));
        }
        if points == 0 {
            return Err(bad("0 points"));
        }
        if offset != expected_offset {
            return Err(bad("offset is not where the previous archive ends"));
        }
        let info = ArchiveInfo::new(offset, seconds_per_point, points);
        expected_offset = info.end();
        archives.push(info);
    }
    if len < expected_offset {
        return Err(corrupt(Corruption::Truncated {
            len,
            need: expected_offset,
        }));
    }
    let expected = archives.iter().map(|a| a.retention).max().unwrap_or(0);
    if u64::from(max_retention) != expected {
        // Every whisper writer stores the longest retention; fetch and update trust
        // this field to bound their windows.
        return Err(corrupt(Corruption::MaxRetention {
            stored: max_retention,
            expected,
        }));
    }
    Ok(Header {
        aggregation,
        max_retention,
        x_files_factor,
        archives,
    })
}

/// Buffers `update_many` reuses between calls, so the update path allocates nothing per
/// point once they have grown to the batch size.
#[derive(Debug, Default)]
pub struct Scratch {
    sorted: Vec<(i64, f64)>,
    work: Work,
}

impl Scratch {
    /// Empty buffers; they grow to the largest batch seen.
    pub fn new() -> Scratch {
        Scratch::default()
    }
}

#[derive(Debug, Default)]
struct Work {
    /// One archive's points, oldest first, aligned to its step.
    aligned: Vec<(i64, f64)>,
    /// The packed points of every contiguous run, back to back.
    packed: Vec<u8>,
    /// The runs: first interval and their bytes in `packed`.
    runs: Vec<(i64, Range<usize>)>,
    /// The lower-archive intervals to propagate, in CPython set order.
    intervals: PySetOrder,
    /// A propagation window read from the higher archive.
    series: Vec<u8>,
}

/// The iteration order of a CPython 3.11 `set` of non-negative ints built by `set(list)`.
///
/// whisper propagates `for interval in set(lowerIntervals)`. Order shows in the bytes:
/// the first propagation into an empty lower archive becomes its base slot, and the
/// slot of every later one is counted from it. Ints below 2^61 hash to themselves, so
/// this replays setobject.c (`set_add_entry`, `set_table_resize`, `set_insert_clean`)
/// on the values: 8 slots to start, 9 linear probes then perturbed probing, resize to
/// `used × 4` when `fill × 5 >= mask × 3`.
#[derive(Debug, Default)]
struct PySetOrder {
    table: Vec<i64>,
    old: Vec<i64>,
    fill: usize,
}

const PYSET_EMPTY: i64 = -1;
const PYSET_LINEAR_PROBES: usize = 9;
const PYSET_PERTURB_SHIFT: u32 = 5;

impl PySetOrder {
    fn clear(&mut self) {
        self.table.clear();
        self.table.resize(8, PYSET_EMPTY);
        self.fill = 0;
    }

    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    fn insert(&mut self, key: i64) {
        debug_assert!(key >= 0, "only non-negative ints hash to themselves");
        let mask = self.mask();
        let mut perturb = key as u64 as usize;
        let mut i = perturb & mask;
        loop {
            let probes = if i + PYSET_LINEAR_PROBES <= mask {
                PYSET_LINEAR_PROBES
            } else {
                0
            };
            for j in i..=i + probes {
                if self.table[j] == key {
                    return;
                }
                if self.table[j] == PYSET_EMPTY {
                    self.table[j] = key;
                    self.fill += 1;
                    if self.fill * 5 >= mask * 3 {
                        self.resize();
                    }
                    return;
                }
            }
            perturb >>= PYSET_PERTURB_SHIFT;
            i = (i.wrapping_mul(5).wrapping_add(1).wrapping_add(perturb)) & mask;
        }
    }

    fn resize(&mut self) {
        // No deletions ever happen, so fill == used.
        let used = self.fill;
        let min_used = if used > 50_000 { used * 2 } else { used * 4 };
        let mut size = 8;
        while size <= min_used {
            size <<= 1;
        }
        std::mem::swap(&mut self.table, &mut self.old);
        self.table.clear();
        self.table.resize(size, PYSET_EMPTY);
        let mask = size - 1;
        for idx in 0..self.old.len() {
            let key = self.old[idx];
            if key == PYSET_EMPTY {
                continue;
            }
            let mut perturb = key as u64 as usize;
            let mut i = perturb & mask;
            'probe: loop {
                if self.table[i] == PYSET_EMPTY {
                    self.table[i] = key;
                    break;
                }
                if i + PYSET_LINEAR_PROBES <= mask {
                    for j in i + 1..=i + PYSET_LINEAR_PROBES {
                        if self.table[j] == PYSET_EMPTY {
                            self.table[j] = key;
                            break 'probe;
                        }
                    }
                }
                perturb >>= PYSET_PERTURB_SHIFT;
                i = (i.wrapping_mul(5).wrapping_add(1).wrapping_add(perturb)) & mask;
            }
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    /// The value at table index `i`, if the slot is used (iterate `0..len()`).
    fn get(&self, i: usize) -> Option<i64> {
        Some(self.table[i]).filter(|&k| k != PYSET_EMPTY)
    }
}

fn read_point<I: WhisperIo + ?Sized>(io: &mut I, off: u64) -> Result<(u32, f64), Error> {
    let mut b = [0u8; POINT_SIZE as usize];
    io.read_at(&mut b, off)?;
    Ok((be_u32(&b[0..]), be_f64(&b[4..])))
}

/// The byte offset of `interval`'s slot, counted from the archive's base point (its
/// first slot's timestamp); an archive never written (base 0) starts at its first slot.
fn slot_from_base<I: WhisperIo + ?Sized>(
    io: &mut I,
    archive: &ArchiveInfo,
    interval: i64,
) -> Result<u64, Error> {
    let (base, _) = read_point(io, archive.offset)?;
    Ok(if base == 0 {
        archive.offset
    } else {
        archive.slot_offset(i64::from(base), interval)
    })
}

/// Reads the archive's slots from byte `first` up to byte `last` into `out`, wrapping
/// at the ring's end when `last <= first`.
fn read_ring<I: WhisperIo + ?Sized>(
    io: &mut I,
    archive: &ArchiveInfo,
    first: u64,
    last: u64,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    out.clear();
    if first < last {
        out.resize((last - first) as usize, 0);
        io.read_at(out, first)?;
    } else {
        let head = (archive.end() - first) as usize;
        out.resize(head + (last - archive.offset) as usize, 0);
        let (a, b) = out.split_at_mut(head);
        io.read_at(a, first)?;
        if !b.is_empty() {
            io.read_at(b, archive.offset)?;
        }
    }
    Ok(())
}

fn pack_point(interval: i64, value: f64) -> Result<[u8; POINT_SIZE as usize], Error> {
    let t = u32::try_from(interval).map_err(|_| Error::TimestampOutOfRange(interval))?;
    let mut b = [0u8; POINT_SIZE as usize];
    b[..4].copy_from_slice(&t.to_be_bytes());
    b[4..].copy_from_slice(&value.to_be_bytes());
    Ok(b)
}

fn align(ts: i64, step: i64) -> i64 {
    // Saturating: absurd timestamps must not panic; they fail `pack_point` instead.
    ts.saturating_sub(ts.rem_euclid(step))
}

/// Write many points, as whisper's `update_many(path, points, now=now)`.
///
/// Points are sorted newest first; each goes to the first archive (in order) whose
/// retention covers `now - ts`, and points older than every archive are dropped
/// silently. Future points go to the first archive. Within an archive, of points that
/// align to the same slot the newest raw timestamp wins, and of exact duplicate
/// timestamps the *first in input order* wins (whisper's stable reverse sort followed
/// by a reverse). Runs of consecutive slots are written with one write each (two where
/// the ring wraps), then every lower archive is propagated.
pub fn update_many<I: WhisperIo + ?Sized>(
    io: &mut I,
    header: &Header,
    points: &[(i64, f64)],
    now: i64,
    scratch: &mut Scratch,
) -> Result<(), Error> {
    if points.is_empty() {
        return Ok(());
    }
    let Scratch { sorted, work } = scratch;
    sorted.clear();
    sorted.extend_from_slice(points);
    // Stable, newest first; equal timestamps keep input order, as Python's
    // `sort(key=..., reverse=True)` does.
    sorted.sort_by_key(|p| std::cmp::Reverse(p.0));

    let archives = &header.archives;
    let mut archive = 0;
    let mut group_start = 0;
    for i in 0..sorted.len() {
        let age = now as i128 - sorted[i].0 as i128;
        while !archives[archive].covers(age) {
            if group_start < i {
                archive_update_many(io, header, archive, &sorted[group_start..i], work)?;
            }
            group_start = i;
            archive += 1;
            if archive == archives.len() {
                return Ok(()); // the rest is older than every archive
            }
        }
    }
    archive_update_many(io, header, archive, &sorted[group_start..], work)
}

/// whisper's `__archive_update_many`; `newest_first` is one archive's share of the
/// sorted points.
fn archive_update_many<I: WhisperIo + ?Sized>(
    io: &mut I,
    header: &Header,
    index: usize,
    newest_first: &[(i64, f64)],
    work: &mut Work,
) -> Result<(), Error> {
    let archive = &header.archives[index];
    let step = archive.step();
    work.aligned.clear();
    work.aligned.extend(
        newest_first
            .iter()
            .rev()
            .map(|&(ts, value)| (align(ts, step), value)),
    );

    work.packed.clear();
    work.runs.clear();
    let aligned = &work.aligned;
    let mut previous: Option<i64> = None;
    let mut run_start = 0;
    for (k, &(interval, value)) in aligned.iter().enumerate() {
        // The last point of a run of equal intervals wins.
        if aligned.get(k + 1).is_some_and(|next| next.0 == interval) {
            continue;
        }
        let point = pack_point(interval, value)?;
        match previous {
            // Python's `not previousInterval` is also true for interval 0: kept.
            None | Some(0) => {}
            Some(p) if interval == p + step => {}
            Some(p) => {
                push_run(&mut work.runs, run_start..work.packed.len(), p, step);
                run_start = work.packed.len();
            }
        }
        work.packed.extend_from_slice(&point);
        previous = Some(interval);
    }
    if let Some(p) = previous {
        push_run(&mut work.runs, run_start..work.packed.len(), p, step);
    }

    let (base, _) = read_point(io, archive.offset)?;
    let base_interval = if base == 0 {
        work.runs[0].0 // the file's first update: the first run starts the ring
    } else {
        i64::from(base)
    };
    for (interval, bytes) in &work.runs {
        let bytes = &work.packed[bytes.clone()];
        let offset = archive.slot_offset(base_interval, *interval);
        let beyond = (offset + bytes.len() as u64).saturating_sub(archive.end()) as usize;
        if beyond > 0 {
            // Split at the ring's end. A run longer than the archive (possible with
            // future points) makes the second write spill past the archive's end;
            // whisper does the same, so the bytes stay identical.
            let (head, tail) = bytes.split_at(bytes.len() - beyond);
            io.write_at(head, offset)?;
            io.write_at(tail, archive.offset)?;
        } else {
            io.write_at(bytes, offset)?;
        }
    }

    let mut higher = index;
    // whisper picks the lower archives by secondsPerPoint, not by position (the same
    // thing in every file whisper writes).
    for lower in 0..header.archives.len() {
        let lower_step = header.archives[lower].step();
        if lower_step <= step {
            continue;
        }
        work.intervals.clear();
        for &(interval, _) in &work.aligned {
            work.intervals.insert(align(interval, lower_step));
        }
        let mut further = false;
        for slot in 0..work.intervals.len() {
            if let Some(interval) = work.intervals.get(slot) {
                further |= propagate(io, header, interval, higher, lower, &mut work.series)?;
            }
        }
        if !further {
            break;
        }
        higher = lower;
    }
    Ok(())
}

/// Records a run of consecutive slots: its packed `bytes` and, from `last` (its newest
/// interval), its first interval.
fn push_run(runs: &mut Vec<(i64, Range<usize>)>, bytes: Range<usize>, last: i64, step: i64) {
    let n = (bytes.len() / POINT_SIZE as usize) as i64;
    runs.push((last - step * (n - 1), bytes));
}

/// whisper's `__propagate`: aggregate the higher archive's points under the lower
/// archive's interval containing `timestamp` and write one point there when enough
/// are known. True when a point was written.
fn propagate<I: WhisperIo + ?Sized>(
    io: &mut I,
    header: &Header,
    timestamp: i64,
    higher: usize,
    lower: usize,
    series: &mut Vec<u8>,
) -> Result<bool, Error> {
    let (higher, lower) = (&header.archives[higher], &header.archives[lower]);
    let lower_start = align(timestamp, lower.step());

    let first = slot_from_base(io, higher, lower_start)?;
    let window_bytes = (lower.seconds_per_point / higher.seconds_per_point) * POINT_SIZE;
    let last = (first - higher.offset + window_bytes) % higher.size + higher.offset;
    read_ring(io, higher, first, last, series)?;

    let mut acc = Aggregator::new(header.aggregation);
    let mut expected = lower_start;
    for point in series.chunks_exact(POINT_SIZE as usize) {
        let known = i64::from(be_u32(&point[0..])) == expected;
        acc.push(known.then(|| be_f64(&point[4..])));
        expected += higher.step();
    }
    if acc.known == 0 {
        return Ok(false);
    }
    let known_fraction = acc.known as f64 / acc.total as f64;
    if known_fraction < f64::from(header.x_files_factor) {
        return Ok(false);
    }
    let value = acc.finish().expect("some points are known");
    let point = pack_point(lower_start, value)?;
    let offset = slot_from_base(io, lower, lower_start)?;
    io.write_at(&point, offset)?;
    Ok(true)
}

/// Write one point, as whisper's `update(path, value, timestamp, now=now)` (what
/// `whisper-update.py` calls for a single point): unlike `update_many` it refuses a
/// timestamp outside `[now - maxRetention, now]` and propagates through every later
/// archive in file order until one propagation writes nothing.
pub fn update<I: WhisperIo + ?Sized>(
    io: &mut I,
    header: &Header,
    timestamp: i64,
    value: f64,
    now: i64,
) -> Result<(), Error> {
    let age = now as i128 - timestamp as i128;
    if !(0..i128::from(header.max_retention)).contains(&age) {
        return Err(Error::TimestampNotCovered { timestamp, now });
    }
    let Some(index) = header.archives.iter().position(|a| a.covers(age)) else {
        return Err(corrupt(Corruption::ArchiveTable {
            index: header.archives.len() - 1,
            reason: "maxRetention is longer than every archive",
        }));
    };
    let archive = &header.archives[index];
    let interval = align(timestamp, archive.step());
    let point = pack_point(interval, value)?;
    let offset = slot_from_base(io, archive, interval)?;
    io.write_at(&point, offset)?;
    let mut series = Vec::new();
    let mut higher = index;
    for lower in index + 1..header.archives.len() {
        if !propagate(io, header, interval, higher, lower, &mut series)? {
            break;
        }
        higher = lower;
    }
    Ok(())
}

/// What `fetch` returns: whisper's `((fromInterval, untilInterval, step), values)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetch {
    /// The first interval, `from` rounded down to the step, plus one step.
    pub from: i64,
    /// One past the last interval, `until` rounded down to the step, plus one step.
    pub until: i64,
    /// The archive's seconds per point.
    pub step: i64,
    /// One value per slot from `from`, `None` where unknown or stale. Usually
    /// `(until - from) / step` long; when the window spans the whole ring whisper reads
    /// the ring once, so it holds `points` values.
    pub values: Vec<Option<f64>>,
}

/// Read a window, as whisper's `fetch(path, from, until, now=now)`.
///
/// `None` when the window is wholly in the future or wholly older than maxRetention.
/// Otherwise `from` is clamped to `now - maxRetention` and `until` to `now`, the first
/// archive whose retention covers `now - from` answers (the last if none does), and the
/// window is `(from, until]` rounded up one step.
pub fn fetch<I: WhisperIo + ?Sized>(
    io: &mut I,
    header: &Header,
    from: i64,
    until: i64,
    now: i64,
) -> Result<Option<Fetch>, Error> {
    if from > until {
        return Err(Error::InvalidTimeInterval { from, until });
    }
    let oldest = now.saturating_sub(i64::from(header.max_retention));
    if from > now || until < oldest {
        return Ok(None);
    }
    let from = from.max(oldest);
    let until = until.min(now);
    let age = i128::from(now - from);
    let archive = header
        .archives
        .iter()
        .find(|a| a.covers(age))
        .or(header.archives.last())
        .expect("a header has at least one archive");
    fetch_archive(io, archive, from, until).map(Some)
}

/// whisper's `__archive_fetch`: read `(from, until]` from one archive, without the
/// clamping `fetch` does.
pub fn fetch_archive<I: WhisperIo + ?Sized>(
    io: &mut I,
    archive: &ArchiveInfo,
    from: i64,
    until: i64,
) -> Result<Fetch, Error> {
    let step = archive.step();
    let from_interval = align(from, step).saturating_add(step);
    let mut until_interval = align(until, step).saturating_add(step);
    if from_interval == until_interval {
        until_interval = until_interval.saturating_add(step); // a zero-length range always includes the next point
    }
    let mut fetched = Fetch {
        from: from_interval,
        until: until_interval,
        step,
        values: Vec::new(),
    };
    let (base, _) = read_point(io, archive.offset)?;
    if base == 0 {
        let n = (until_interval - from_interval).div_euclid(step);
        fetched.values.resize(n.max(0) as usize, None);
        return Ok(fetched);
    }
    let base = i64::from(base);
    let first = archive.slot_offset(base, from_interval);
    let last = archive.slot_offset(base, until_interval);
    let mut series = Vec::new();
    read_ring(io, archive, first, last, &mut series)?;
    fetched.values.reserve(series.len() / POINT_SIZE as usize);
    let mut expected = from_interval;
    for point in series.chunks_exact(POINT_SIZE as usize) {
        let known = i64::from(be_u32(&point[0..])) == expected;
        fetched.values.push(known.then(|| be_f64(&point[4..])));
        expected = expected.saturating_add(step);
    }
    Ok(fetched)
}

/// Read every slot of one archive in ring order, as `whisper-dump.py` prints them:
/// `(timestamp, value)` as stored, stale and empty slots included.
pub fn read_archive<I: WhisperIo + ?Sized>(
    io: &mut I,
    archive: &ArchiveInfo,
    out: &mut Vec<(u32, f64)>,
) -> Result<(), Error> {
    let mut bytes = vec![0u8; archive.size as usize];
    io.read_at(&mut bytes, archive.offset)?;
    out.clear();
    out.extend(
        bytes
            .chunks_exact(POINT_SIZE as usize)
            .map(|p| (be_u32(&p[0..]), be_f64(&p[4..]))),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::whisper::io::MemIo;

    const NOW: i64 = 1_700_000_000;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn new_file(archives: &[(u64, u64)], xff: f64, method: AggregationMethod) -> (MemIo, Header) {
        let mut io = MemIo::new();
        let header = create(&mut io, archives, xff, method, CreateMode::ZeroFill).unwrap();
        (io, header)
    }

    fn check_fetch(
        io: &mut MemIo,
        h: &Header,
        from: i64,
        until: i64,
        expected: (i64, i64, i64, &[Option<f64>]),
    ) {
        let got = fetch(io, h, from, until, NOW)
            .unwrap()
            .expect("window in range");
        assert_eq!(
            (got.from, got.until, got.step, got.values.as_slice()),
            expected
        );
    }

    #[test]
    fn test_vector_a_header_in_every_mode() {
        for mode in [
            CreateMode::Sparse,
            CreateMode::Fallocate,
            CreateMode::ZeroFill,
        ] {
            let mut io = MemIo::new();
            let h = create(
                &mut io,
                &[(60, 1440), (10, 360)],
                0.5,
                AggregationMethod::Average,
                mode,
            )
            .unwrap();
            assert_eq!(io.bytes.len(), 21640, "{mode:?}");
            assert_eq!(h.file_size(), 21640);
            assert_eq!(
                hex(&io.bytes[..40]),
                "00000001000151803f00000000000002\
                 000000280000000a00000168\
                 000011080000003c000005a0"
            );
            assert!(io.bytes[40..].iter().all(|&b| b == 0));
            assert_eq!(read_header(&mut io).unwrap(), h);
        }
    }

    #[test]
    fn three_archive_sum_header() {
        let (mut io, h) = new_file(
            &[(60, 1440), (300, 8640), (3600, 26280)],
            0.0,
            AggregationMethod::Sum,
        );
        assert_eq!(io.bytes.len(), 436372);
        assert_eq!(
            hex(&io.bytes[..52]),
            "0000000205a39a800000000000000003\
             000000340000003c000005a0\
             000043b40000012c000021c0\
             0001d8b400000e10000066a8"
        );
        assert_eq!(read_header(&mut io).unwrap(), h);
        for m in AggregationMethod::ALL {
            let (io, _) = new_file(&[(60, 1440)], 0.5, m);
            assert_eq!(io.bytes[..4], m.id().to_be_bytes());
            assert_eq!(AggregationMethod::from_name(m.name()), Some(m));
        }
    }

    #[test]
    fn validation_follows_whisper_rules() {
        let err = |a: &[(u64, u64)]| plan(a, 0.5, AggregationMethod::Average).unwrap_err();
        assert!(matches!(err(&[]), Error::NoArchives));
        assert!(matches!(err(&[(0, 10)]), Error::EmptyArchive { .. }));
        assert!(matches!(err(&[(60, 0)]), Error::EmptyArchive { .. }));
        assert!(matches!(
            err(&[(60, 10), (60, 20)]),
            Error::DuplicatePrecision { index: 0, .. }
        ));
        assert!(matches!(
            err(&[(60, 100), (90, 100)]),
            Error::PrecisionNotDivisible { .. }
        ));
        assert!(matches!(
            err(&[(60, 100), (120, 50)]),
            Error::RetentionNotIncreasing { .. }
        ));
        assert!(matches!(
            err(&[(10, 5), (60, 1000)]),
            Error::TooFewPoints {
                needed: 6,
                points: 5,
                ..
            }
        ));
        assert!(matches!(err(&[(1 << 31, 4)]), Error::TooLarge { .. }));
        for xff in [-0.1, 1.5, f64::NAN] {
            let e = plan(&[(60, 10)], xff, AggregationMethod::Average).unwrap_err();
            assert!(matches!(e, Error::InvalidXFilesFactor(_)));
        }
        // Order does not matter; the file is sorted by precision.
        let h = plan(&[(60, 1440), (10, 360)], 0.5, AggregationMethod::Average).unwrap();
        assert_eq!(h.archives[0].seconds_per_point, 10);
        let msg = err(&[(10, 5), (60, 1000)]).to_string();
        assert!(
            msg.contains("archive1 consolidates 6 of archive0's points"),
            "{msg}"
        );
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let (good, _) = new_file(&[(10, 360), (60, 1440)], 0.5, AggregationMethod::Average);
        let corrupt_with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = good.bytes.clone();
            edit(&mut bytes);
            match read_header(&mut MemIo::from_bytes(bytes)) {
                Err(Error::Corrupt(c)) => c,
                other => panic!("expected corrupt, got {other:?}"),
            }
        };
        assert_eq!(
            corrupt_with(&|b| b.truncate(10)),
            Corruption::Truncated { len: 10, need: 16 }
        );
        assert!(matches!(
            corrupt_with(&|b| b.truncate(30)),
            Corruption::Truncated { need: 40, .. }
        ));
        assert!(matches!(
            corrupt_with(&|b| b.truncate(21639)),
            Corruption::Truncated { need: 21640, .. }
        ));
        assert_eq!(
            corrupt_with(&|b| b[3] = 9),
            Corruption::UnknownAggregation(9)
        );
        assert_eq!(
            corrupt_with(&|b| b[3] = 0),
            Corruption::UnknownAggregation(0)
        );
        let xff = |x: f32| move |b: &mut Vec<u8>| b[8..12].copy_from_slice(&x.to_be_bytes());
        assert_eq!(corrupt_with(&xff(1.5)), Corruption::XffOutOfRange(1.5));
        assert!(matches!(
            corrupt_with(&xff(f32::NAN)),
            Corruption::XffOutOfRange(_)
        ));
        assert_eq!(corrupt_with(&|b| b[12..16].fill(0)), Corruption::NoArchives);
        assert!(matches!(
            corrupt_with(&|b| b[4] = 1),
            Corruption::MaxRetention { .. }
        ));
        assert!(matches!(
            corrupt_with(&|b| b[12..16].fill(0xff)),
            Corruption::Truncated { .. }
        ));
        assert!(matches!(
            corrupt_with(&|b| b[19] = 0x29),
            Corruption::ArchiveTable { index: 0, .. }
        ));
        assert!(matches!(
            corrupt_with(&|b| b[20..24].fill(0)),
            Corruption::ArchiveTable { index: 0, .. }
        ));
        let msg = Error::Corrupt(corrupt_with(&|b| b[3] = 9)).to_string();
        assert_eq!(
            msg,
            "corrupt whisper file: unknown aggregation type 9 (expected 1..=8)"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::tools::SplitMix64(7);
        let (good, _) = new_file(&[(10, 6), (60, 4)], 0.5, AggregationMethod::Average);
        let mut scratch = Scratch::new();
        for _ in 0..3000 {
            let mut bytes = good.bytes.clone();
            for _ in 0..1 + rng.below(6) {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next_u64() as u8;
            }
            bytes.truncate(rng.below(bytes.len() + 20));
            let mut io = MemIo::from_bytes(bytes);
            if let Ok(h) = read_header(&mut io) {
                let ts = NOW - rng.below(400) as i64;
                let _ = update_many(&mut io, &h, &[(ts, 1.0), (ts - 10, 2.0)], NOW, &mut scratch);
                let _ = update(&mut io, &h, ts, 3.0, NOW);
                let _ = fetch(&mut io, &h, NOW - 300, NOW, NOW);
            }
        }
    }

    #[test]
    fn aggregation_table_from_the_reference() {
        let w = [None, Some(-7.0), Some(3.0), None, Some(2.0), None];
        let agg = |m: AggregationMethod| m.aggregate(&w).unwrap();
        assert_eq!(agg(AggregationMethod::Average), -2.0 / 3.0);
        assert_eq!(agg(AggregationMethod::Sum), -2.0);
        assert_eq!(agg(AggregationMethod::Last), 2.0);
        assert_eq!(agg(AggregationMethod::Max), 3.0);
        assert_eq!(agg(AggregationMethod::Min), -7.0);
        assert_eq!(agg(AggregationMethod::AvgZero), -2.0 / 6.0);
        assert_eq!(agg(AggregationMethod::AbsMax), -7.0);
        assert_eq!(agg(AggregationMethod::AbsMin), 2.0);
        assert_eq!(AggregationMethod::Max.aggregate(&[None, None]), None);
        // Python's max keeps the first of equals: -0.0 before 0.0 stays -0.0.
        let z = AggregationMethod::Max
            .aggregate(&[Some(-0.0), Some(0.0)])
            .unwrap();
        assert!(z.is_sign_negative());
    }

    #[test]
    fn update_many_round_trip_matches_python_whisper() {
        // Expected values printed by python whisper 1.1.10 for the same calls.
        let (mut io, h) = new_file(&[(10, 360), (60, 1440)], 0.5, AggregationMethod::Average);
        check_fetch(
            &mut io,
            &h,
            NOW - 60,
            NOW,
            (1699999950, 1700000010, 10, &[None; 6]),
        );
        let points = [
            (NOW - 30, 1.0),
            (NOW - 30, 2.0),
            (NOW - 21, 3.0),
            (NOW - 25, 4.0),
            (NOW - 10, 5.0),
            (NOW - 50, 6.0),
            (NOW - 40, 7.0),
        ];
        update_many(&mut io, &h, &points, NOW, &mut Scratch::new()).unwrap();
        let ten = [Some(6.0), Some(7.0), Some(3.0), None, Some(5.0), None];
        check_fetch(
            &mut io,
            &h,
            NOW - 60,
            NOW,
            (1699999950, 1700000010, 10, &ten),
        );
        let minute = fetch(&mut io, &h, NOW - 7200, NOW, NOW).unwrap().unwrap();
        assert_eq!(
            (minute.from, minute.until, minute.step),
            (1699992840, 1700000040, 60)
        );
        assert_eq!(minute.values.len(), 120);
        assert_eq!(minute.values[118], Some(16.0 / 3.0));
        assert_eq!(minute.values.iter().filter(|v| v.is_some()).count(), 1);
        assert_eq!(fetch(&mut io, &h, NOW + 1, NOW + 5, NOW).unwrap(), None);
        assert_eq!(fetch(&mut io, &h, 0, NOW - 86401, NOW).unwrap(), None);
        assert!(matches!(
            fetch(&mut io, &h, NOW, NOW - 1, NOW),
            Err(Error::InvalidTimeInterval { .. })
        ));
    }

    #[test]
    fn exact_duplicates_keep_the_first_and_newer_raw_timestamps_win() {
        let (mut io, h) = new_file(&[(10, 30)], 0.5, AggregationMethod::Average);
        let t = NOW - 100; // aligned to 10
        let points = [(t, 1.0), (t, 2.0), (t + 15, 3.0), (t + 11, 4.0)];
        update_many(&mut io, &h, &points, NOW, &mut Scratch::new()).unwrap();
        check_fetch(
            &mut io,
            &h,
            t - 10,
            t + 10,
            (t, t + 20, 10, &[Some(1.0), Some(3.0)]),
        );
    }

    #[test]
    fn ring_wrap_and_stale_slots() {
        let (mut io, h) = new_file(&[(1, 5)], 0.0, AggregationMethod::Average);
        let mut scratch = Scratch::new();
        let batch = |lo: i64, hi: i64| (lo..hi).map(|t| (t, t as f64)).collect::<Vec<_>>();
        update_many(&mut io, &h, &batch(NOW - 4, NOW + 1), NOW, &mut scratch).unwrap();
        let now2 = NOW + 3;
        update_many(&mut io, &h, &batch(now2 - 2, now2 + 1), now2, &mut scratch).unwrap();
        // Slots hold NOW+1..=NOW+3 (wrapped to the ring's start) and NOW-1, NOW.
        let slots: Vec<u32> = io.bytes[28..].chunks(12).map(be_u32).collect();
        let n = NOW as u32;
        assert_eq!(slots, [n + 1, n + 2, n + 3, n - 1, n]);
        let got = fetch(&mut io, &h, now2 - 5, now2, now2).unwrap().unwrap();
        let want: Vec<Option<f64>> = (now2 - 4..=now2).map(|t| Some(t as f64)).collect();
        assert_eq!(got.values, want);
        // Points older than every archive are dropped silently.
        let before = io.bytes.clone();
        update_many(&mut io, &h, &[(now2 - 6, 9.0)], now2, &mut scratch).unwrap();
        assert_eq!(io.bytes, before);
    }

    #[test]
    fn xff_is_compared_as_a_32_bit_float() {
        let known = |count: i64, xff: f64| {
            let (mut io, h) = new_file(&[(1, 20), (10, 20)], xff, AggregationMethod::Sum);
            let points: Vec<(i64, f64)> = (0..count).map(|i| (NOW - 19 + i, 1.0)).collect();
            update_many(&mut io, &h, &points, NOW, &mut Scratch::new()).unwrap();
            let got = fetch(&mut io, &h, NOW - 100, NOW, NOW).unwrap().unwrap();
            assert_eq!(got.step, 10);
            got.values.iter().flatten().count()
        };
        // One of ten is 0.1 < 0.1f32 (0.10000000149): nothing propagates.
        assert_eq!(known(1, 0.1), 0);
        assert_eq!(known(2, 0.1), 1);
        assert_eq!(known(1, 0.0), 1);
    }

    #[test]
    fn single_update_refuses_uncovered_timestamps() {
        let (mut io, h) = new_file(&[(10, 6), (60, 10)], 0.0, AggregationMethod::Max);
        assert!(matches!(
            update(&mut io, &h, NOW + 1, 1.0, NOW),
            Err(Error::TimestampNotCovered { .. })
        ));
        assert!(matches!(
            update(&mut io, &h, NOW - 600, 1.0, NOW),
            Err(Error::TimestampNotCovered { .. })
        ));
        update(&mut io, &h, NOW - 5, 4.0, NOW).unwrap();
        update(&mut io, &h, NOW - 15, 9.0, NOW).unwrap();
        let got = fetch(&mut io, &h, NOW - 30, NOW, NOW).unwrap().unwrap();
        assert_eq!(got.values, [Some(9.0), Some(4.0), None]);
        let got = fetch(&mut io, &h, NOW - 500, NOW, NOW).unwrap().unwrap();
        assert_eq!(got.step, 60);
        assert_eq!(
            got.values.iter().flatten().copied().collect::<Vec<_>>(),
            [9.0]
        );
    }

    #[test]
    fn set_order_matches_cpython() {
        // `list(set([...]))` as printed by CPython 3.11.
        let mut s = PySetOrder::default();
        s.clear();
        for v in [
            1699999920i64,
            1699999980,
            1700000040,
            1699999860,
            7,
            15,
            1699999920,
        ] {
            s.insert(v);
        }
        let order: Vec<i64> = (0..s.len()).filter_map(|i| s.get(i)).collect();
        assert_eq!(order, PYTHON_SET_ORDER);
    }

    const PYTHON_SET_ORDER: [i64; 6] = [7, 1700000040, 1699999980, 15, 1699999920, 1699999860];
}

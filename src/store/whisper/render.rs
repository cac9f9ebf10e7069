//! The whisper side of `/render` and of CarbonLink's metadata requests: read one series
//! over a window, merge the points the cache has not written yet, and read or change a
//! file's aggregation method. Synchronous std-fs code, meant for a blocking pool.
//!
//! - [`fetch_file`] is python whisper 1.1.10's `fetch(path, from, until, now)` (through
//!   [`format::fetch`]): the first archive whose retention covers `now - from` answers
//!   (the last if none does), `from` is clamped to `now - maxRetention` and `until` to
//!   `now`, and the window `(from, until]` is rounded up to the step: `start =
//!   from - from % step + step`, `end = until - until % step + step` (one step more when
//!   they are equal). Values run from `start` to `end` exclusive, one per step, `None`
//!   where the slot is empty or holds a stale timestamp. `None` for the whole answer when
//!   the window is entirely in the future or older than the file's retention, which is
//!   when graphite-web's `WhisperReader.fetch` returns no series.
//! - [`Fetched::merge_cache`] is go-carbon's carbonserver `enrichFromCache` (on
//!   `fetchFromDisk`'s rule): cache points are merged only when the answering archive is
//!   the highest-precision one, each aligned down to the step, only inside
//!   `[start, end)`, over whatever the file holds, in the order given, so of two points
//!   for one slot the later one wins; give them in arrival order and the newest write
//!   wins, as it will on disk. (graphite-web's `merge_with_carbonlink` also folds cache
//!   points into coarser archives with the aggregation method; a coarse slot then shows
//!   only the cached points' aggregate over the disk's, so that is not copied.)
//! - [`Series::empty`] is the window of a series that has no file yet (go-carbon's
//!   cache-only `fetchFromCache`), with whisper's rounding rather than go-carbon's.
//! - [`aggregation_method`] and [`set_aggregation_method`] are carbon 1.1.10's
//!   `WhisperDatabase.getMetadata` / `setMetadata` for the one key it supports,
//!   `aggregationMethod` (`whisper.info(path)['aggregationMethod']` and
//!   `whisper.setAggregationMethod(path, method)`, which rewrites the 16-byte metadata
//!   block and returns the old method).
//!
//! How this is checked: the tests below, and `tests/it/read_api.rs`, which compares
//! [`fetch_file`] with python whisper's `fetch` on files python wrote, and
//! [`set_aggregation_method`]'s bytes with `whisper.setAggregationMethod`'s.

use std::io;
use std::path::Path;

use super::format::{self, AggregationMethod, Corruption, Error as FormatError, Header};
use super::io::{FileIo, WhisperIo};

/// A series over a window: `values[i]` is the slot at `start + i × step`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The first slot's timestamp.
    pub start: i64,
    /// One step past the last slot.
    pub end: i64,
    /// Seconds per slot.
    pub step: i64,
    /// `(end - start) / step` values, `None` where unknown.
    pub values: Vec<Option<f64>>,
}

impl Series {
    /// A series of unknown values over whisper's window for `(from, until]` at `step`
    /// (for a name the cache holds but no file does yet). `step` must be positive.
    pub fn empty(from: i64, until: i64, step: i64) -> Series {
        assert!(step > 0, "a series has a positive step");
        let start = align(from, step).saturating_add(step);
        let mut end = align(until, step).saturating_add(step);
        if end <= start {
            end = start.saturating_add(step);
        }
        let n = usize::try_from((end - start) / step).unwrap_or(0);
        Series {
            start,
            end,
            step,
            values: vec![None; n],
        }
    }

    /// Lay `points` over the series: each is aligned down to the step and, when its slot
    /// is in `[start, end)`, replaces what is there; later points win. Returns how many
    /// landed.
    pub fn overlay(&mut self, points: &[(i64, f64)]) -> usize {
        let mut landed = 0;
        for &(ts, value) in points {
            let slot = align(ts, self.step);
            if slot < self.start || slot >= self.end {
                continue;
            }
            let index = ((slot - self.start) / self.step) as usize;
            if let Some(v) = self.values.get_mut(index) {
                *v = Some(value);
                landed += 1;
            }
        }
        landed
    }

    /// The timestamp of each value, with it.
    pub fn points(&self) -> impl Iterator<Item = (i64, Option<f64>)> + '_ {
        let (start, step) = (self.start, self.step);
        self.values
            .iter()
            .enumerate()
            .map(move |(i, v)| (start + i as i64 * step, *v))
    }
}

/// A fetched series and the header of the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The window's values.
    pub series: Series,
    /// The file's header (aggregation method, xFilesFactor, archives).
    pub header: Header,
}

impl Fetched {
    /// True when the answering archive is the highest-precision one: the only case the
    /// cache is merged in.
    pub fn from_finest_archive(&self) -> bool {
        self.header
            .archives
            .first()
            .is_some_and(|a| a.seconds_per_point as i64 == self.series.step)
    }

    /// Merge cache points (in arrival order) as go-carbon does: only from the finest
    /// archive, later points winning. Returns how many landed.
    pub fn merge_cache(&mut self, points: &[(i64, f64)]) -> usize {
        if !self.from_finest_archive() {
            return 0;
        }
        self.series.overlay(points)
    }
}

/// Why a series could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// There is no such file (the name may still be in the cache).
    #[error("no whisper file")]
    NotFound,
    /// The file's header does not read; count it and skip the series.
    #[error("corrupt whisper file: {0}")]
    Corrupt(Corruption),
    /// `from` is after `until`: the client's error.
    #[error("invalid time interval: from {from} is after until {until}")]
    InvalidTimeInterval {
        /// The requested from.
        from: i64,
        /// The requested until.
        until: i64,
    },
    /// An aggregation method whisper does not know (set-metadata's value).
    #[error("Unrecognized aggregation method: {0}")]
    UnknownAggregationMethod(String),
    /// Any other I/O error.
    #[error("whisper i/o: {0}")]
    Io(io::Error),
}

impl From<FormatError> for FetchError {
    fn from(e: FormatError) -> FetchError {
        match e {
            FormatError::Corrupt(c) => FetchError::Corrupt(c),
            FormatError::InvalidTimeInterval { from, until } => {
                FetchError::InvalidTimeInterval { from, until }
            }
            FormatError::UnknownAggregationMethod(m) => FetchError::UnknownAggregationMethod(m),
            FormatError::Io(e) => FetchError::from(e),
            // A read turns up only the errors above; anything else would be a bug in
            // the format engine, reported as a corrupt file rather than a crash.
            other => FetchError::Io(io::Error::other(other.to_string())),
        }
    }
}

impl From<io::Error> for FetchError {
    fn from(e: io::Error) -> FetchError {
        match e.kind() {
            io::ErrorKind::NotFound => FetchError::NotFound,
            _ => FetchError::Io(e),
        }
    }
}

/// whisper's `fetch` on an open file: its header, then the window.
pub fn fetch<I: WhisperIo + ?Sized>(
    io: &mut I,
    from: i64,
    until: i64,
    now: i64,
) -> Result<Option<Fetched>, FetchError> {
    let header = format::read_header(io)?;
    let Some(f) = format::fetch(io, &header, from, until, now)? else {
        return Ok(None);
    };
    let mut values = f.values;
    // whisper reads exactly (end - start) / step slots for every window a valid header
    // allows (a window spanning the whole ring reads it once, which is the same count);
    // the resize only keeps the invariant for callers should that ever change.
    let n = usize::try_from((f.until - f.from) / f.step).unwrap_or(0);
    values.resize(n, None);
    Ok(Some(Fetched {
        series: Series {
            start: f.from,
            end: f.until,
            step: f.step,
            values,
        },
        header,
    }))
}

/// whisper's `fetch(path, from, until, now)`.
pub fn fetch_file(
    path: &Path,
    from: i64,
    until: i64,
    now: i64,
) -> Result<Option<Fetched>, FetchError> {
    let mut io = FileIo::open_read(path)?;
    fetch(&mut io, from, until, now)
}

/// carbon's `getMetadata(metric, 'aggregationMethod')`: the file's aggregation method.
pub fn aggregation_method(path: &Path) -> Result<AggregationMethod, FetchError> {
    let mut io = FileIo::open_read(path)?;
    Ok(format::read_header(&mut io)?.aggregation)
}

/// carbon's `setMetadata(metric, 'aggregationMethod', method)`, i.e. whisper's
/// `setAggregationMethod`: rewrites the metadata block with `method` (xFilesFactor,
/// maxRetention and archive count unchanged) and returns the method it replaced. A
/// writer holding the file's header in memory must drop it to see the change.
pub fn set_aggregation_method(
    path: &Path,
    method: AggregationMethod,
) -> Result<AggregationMethod, FetchError> {
    let mut io = FileIo::open(path)?;
    set_aggregation_method_io(&mut io, method)
}

fn set_aggregation_method_io<I: WhisperIo + ?Sized>(
    io: &mut I,
    method: AggregationMethod,
) -> Result<AggregationMethod, FetchError> {
    let header = format::read_header(io)?;
    let old = header.aggregation;
    let mut bytes = Vec::with_capacity(header.header_size() as usize);
    Header {
        aggregation: method,
        ..header
    }
    .encode(&mut bytes);
    io.write_at(&bytes[..format::METADATA_SIZE as usize], 0)?;
    Ok(old)
}

fn align(ts: i64, step: i64) -> i64 {
    ts.saturating_sub(ts.rem_euclid(step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::whisper::format::{CreateMode, Scratch};
    use crate::store::whisper::io::MemIo;

    const NOW: i64 = 1_700_000_000;

    /// 10s:1h,1m:1d, average, xff 0.5, with the points of format.rs's python vector.
    fn file() -> MemIo {
        let mut io = MemIo::new();
        let h = format::create(
            &mut io,
            &[(10, 360), (60, 1440)],
            0.5,
            AggregationMethod::Average,
            CreateMode::ZeroFill,
        )
        .unwrap();
        let points = [
            (NOW - 30, 1.0),
            (NOW - 30, 2.0),
            (NOW - 21, 3.0),
            (NOW - 25, 4.0),
            (NOW - 10, 5.0),
            (NOW - 50, 6.0),
            (NOW - 40, 7.0),
        ];
        format::update_many(&mut io, &h, &points, NOW, &mut Scratch::new()).unwrap();
        io
    }

    #[test]
    fn fetch_is_whispers() {
        let mut io = file();
        // Expected values printed by python whisper 1.1.10 (format.rs's vector).
        let f = fetch(&mut io, NOW - 60, NOW, NOW).unwrap().unwrap();
        assert_eq!(
            (f.series.start, f.series.end, f.series.step),
            (1699999950, 1700000010, 10)
        );
        assert_eq!(
            f.series.values,
            [Some(6.0), Some(7.0), Some(3.0), None, Some(5.0), None]
        );
        assert!(f.from_finest_archive());
        let ts: Vec<i64> = f.series.points().map(|p| p.0).collect();
        assert_eq!(ts[0], 1699999950);
        assert_eq!(ts[5], 1700000000);
        let coarse = fetch(&mut io, NOW - 7200, NOW, NOW).unwrap().unwrap();
        assert_eq!(coarse.series.step, 60);
        assert_eq!(coarse.series.values.len(), 120);
        assert!(!coarse.from_finest_archive());
        assert!(fetch(&mut io, NOW + 1, NOW + 5, NOW).unwrap().is_none());
        assert!(matches!(
            fetch(&mut io, NOW, NOW - 1, NOW),
            Err(FetchError::InvalidTimeInterval { .. })
        ));
    }

    #[test]
    fn cache_merges_into_the_finest_archive_only() {
        let mut io = file();
        let mut f = fetch(&mut io, NOW - 60, NOW, NOW).unwrap().unwrap();
        let cache = [
            (NOW - 20, 30.0), // slot NOW-20: over the disk's None
            (NOW - 48, 60.0), // aligned to NOW-50: over the disk's 6.0
            (NOW - 45, 61.0), // the same slot, later: wins
            (NOW - 61, 1.0),  // before the window
            (NOW + 10, 1.0),  // at `end`: outside
            (NOW, 99.0),      // the last slot
        ];
        assert_eq!(f.merge_cache(&cache), 4);
        assert_eq!(
            f.series.values,
            [
                Some(61.0),
                Some(7.0),
                Some(3.0),
                Some(30.0),
                Some(5.0),
                Some(99.0)
            ]
        );
        let mut coarse = fetch(&mut io, NOW - 7200, NOW, NOW).unwrap().unwrap();
        let before = coarse.series.clone();
        assert_eq!(coarse.merge_cache(&cache), 0);
        assert_eq!(coarse.series, before);
    }

    #[test]
    fn empty_series_has_whispers_window() {
        let s = Series::empty(NOW - 60, NOW, 10);
        assert_eq!(
            (s.start, s.end, s.step, s.values.len()),
            (NOW - 50, NOW + 10, 10, 6)
        );
        let s = Series::empty(NOW - 5, NOW - 5, 10);
        assert_eq!((s.start, s.end, s.values.len()), (NOW, NOW + 10, 1));
        let mut s = Series::empty(NOW - 65, NOW - 1, 60);
        assert_eq!((s.start, s.end, s.values.len()), (NOW - 20, NOW + 40, 1));
        assert_eq!(s.overlay(&[(NOW - 19, 2.0), (NOW + 39, 3.0)]), 2);
        assert_eq!(s.values, [Some(3.0)]);
    }

    #[test]
    fn metadata_get_and_set() {
        let mut io = file();
        let before = io.bytes.clone();
        let old = set_aggregation_method_io(&mut io, AggregationMethod::Max).unwrap();
        assert_eq!(old, AggregationMethod::Average);
        assert_eq!(io.bytes[..4], 4u32.to_be_bytes());
        assert_eq!(io.bytes[4..], before[4..]);
        assert_eq!(
            format::read_header(&mut io).unwrap().aggregation,
            AggregationMethod::Max
        );
        let mut bad = MemIo::from_bytes(vec![0; 10]);
        assert!(matches!(
            set_aggregation_method_io(&mut bad, AggregationMethod::Max),
            Err(FetchError::Corrupt(_))
        ));
        assert_eq!(bad.bytes, vec![0; 10]);
    }

    #[test]
    fn files_on_disk() {
        let dir = std::env::temp_dir().join(format!("cadent-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.wsp");
        std::fs::write(&path, file().bytes).unwrap();
        let f = fetch_file(&path, NOW - 60, NOW, NOW).unwrap().unwrap();
        assert_eq!(f.series.values.len(), 6);
        assert_eq!(
            aggregation_method(&path).unwrap(),
            AggregationMethod::Average
        );
        assert_eq!(
            set_aggregation_method(&path, AggregationMethod::Sum).unwrap(),
            AggregationMethod::Average
        );
        assert_eq!(aggregation_method(&path).unwrap(), AggregationMethod::Sum);
        assert!(matches!(
            fetch_file(&dir.join("missing.wsp"), 0, 1, NOW),
            Err(FetchError::NotFound)
        ));
        std::fs::write(&path, [0, 0, 0, 1]).unwrap();
        assert!(matches!(
            fetch_file(&path, NOW - 60, NOW, NOW),
            Err(FetchError::Corrupt(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

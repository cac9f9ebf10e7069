//! Whisper updates and creates through io_uring (glommio's `BufferedFile`), for the
//! store writers on the shards: no file syscall that can block runs on a shard's
//! executor (a blocked shard stops reading its sockets).
//!
//! The format engine is synchronous and reads through [`WhisperIo`]; it runs here
//! against a [`Staged`] view of the file, and the reads it asks for are fetched in
//! io_uring batches until a run needs nothing more (see `staged`). Then its writes go out
//! together, one io_uring batch. Opens, closes, sizes (`statx`), reads, writes and
//! `fallocate` are io_uring operations; `flock` is taken with `LOCK_NB`, which never
//! blocks (a file another process holds is retried later), as carbon takes it with
//! `WHISPER_LOCK_WRITES`, so whisper's own tools that lock see whole updates; missing
//! directories are made on glommio's blocking-thread pool, off the executor.
//!
//! Page-cache buffered I/O, as carbon and go-carbon do: the files stay readable by
//! whisper's tools and graphite-web, and io_uring completes cached reads inline while
//! the kernel's workers take the ones that go to disk.

use std::future::Future;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;

use glommio::io::{BufferedFile, OpenOptions};

use super::format::{self, AggregationMethod, CreateMode, Error as FormatError, Scratch};
use super::staged::Staged;

/// Bytes read at the start of a file, with its size: the header and first base point of
/// any file, and the whole of a small one (then one engine run settles the update). A
/// page-cache copy of 32 KiB costs less than another io_uring round.
const HEAD_BYTES: usize = 32 << 10;

/// Engine runs before an update gives up (a whisper update needs about one per
/// archive; more means the file changed under us).
const RUNS_MAX: usize = 32;

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// There is no file (it must be created first).
    #[error("no whisper file")]
    NoFile,
    /// Another process holds the file's lock.
    #[error("locked by another process")]
    Busy,
    /// The file is not a whisper file (header does not read): its points are dropped.
    #[error("corrupt whisper file: {0}")]
    Corrupt(format::Corruption),
    /// The retentions or settings do not make a file (a config mistake carbon also
    /// refuses at create).
    #[error("cannot create: {0}")]
    Invalid(String),
    /// The file kept changing under the update.
    #[error("the file kept changing during the update")]
    Unsettled,
    /// Any other I/O failure (a full disk, permissions): the points are kept.
    #[error("whisper i/o: {0}")]
    Io(#[from] io::Error),
}

impl From<FormatError> for WriteError {
    fn from(e: FormatError) -> WriteError {
        match e {
            FormatError::Corrupt(c) => WriteError::Corrupt(c),
            FormatError::Io(e) => WriteError::Io(e),
            other => WriteError::Invalid(other.to_string()),
        }
    }
}

fn io_err<T>(e: glommio::GlommioError<T>) -> io::Error {
    e.into()
}

/// What an update or create cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Engine runs (io_uring read rounds plus one).
    pub runs: u32,
    /// Read operations issued.
    pub reads: u32,
    /// Write (and fallocate) operations issued.
    pub writes: u32,
}

/// What a new file gets: the archives its schema gives, its aggregation, how its data
/// area is filled.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFile {
    /// `(seconds_per_point, points)` per archive.
    pub archives: Vec<(u64, u64)>,
    /// xFilesFactor.
    pub x_files_factor: f32,
    /// Aggregation method.
    pub method: AggregationMethod,
    /// Data area fill.
    pub mode: CreateMode,
}

/// Opens an existing file for an update; `None` when there is none.
pub async fn open(path: &Path) -> io::Result<Option<BufferedFile>> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .buffered_open(path)
        .await
        .map_err(io_err)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Closes a file (its lock goes with it).
pub async fn close(file: BufferedFile) -> io::Result<()> {
    file.close().await.map_err(io_err)
}

/// whisper's `update_many(path, points, now)` on an existing file.
pub async fn update(
    path: &Path,
    points: &[(i64, f64)],
    now: i64,
    scratch: &mut Scratch,
    flock: bool,
) -> Result<Cost, WriteError> {
    let Some(file) = open(path).await? else {
        return Err(WriteError::NoFile);
    };
    let result = update_file(&file, points, now, scratch, flock).await;
    let closed = close(file).await;
    let cost = result?;
    closed?;
    Ok(cost)
}

/// whisper's `update_many` on a file [`open`] gave (locked for the update when
/// `flock`).
pub async fn update_file(
    file: &BufferedFile,
    points: &[(i64, f64)],
    now: i64,
    scratch: &mut Scratch,
    flock: bool,
) -> Result<Cost, WriteError> {
    if flock {
        lock(file)?;
    }
    // A read shorter than asked is the whole file: its length needs no statx.
    let head = file.read_at(0, HEAD_BYTES).await.map_err(io_err)?;
    let len = if head.len() < HEAD_BYTES {
        head.len() as u64
    } else {
        file.file_size().await.map_err(io_err)?
    };
    let mut cost = Cost {
        reads: 1,
        ..Cost::default()
    };
    let mut staged = Staged::existing(len);
    staged.fetched(0, head.to_vec());
    let mut asked_bases = false;
    for _ in 0..RUNS_MAX {
        staged.begin_run();
        cost.runs += 1;
        let result = (|| {
            let header = format::read_header(&mut staged)?;
            if !asked_bases {
                // Every archive's base point is read by the update: ask for them all
                // in this round.
                for a in &header.archives {
                    staged.want(a.offset, format::POINT_SIZE as usize);
                }
            }
            format::update_many(&mut staged, &header, points, now, scratch)
        })();
        asked_bases = true;
        let missing = staged.missing();
        if missing.is_empty() {
            result?;
            cost.writes += write_plan(file, &staged).await?;
            return Ok(cost);
        }
        cost.reads += missing.len() as u32;
        let reads = missing.iter().map(|&(off, n)| file.read_at(off, n));
        for ((off, _), got) in missing.iter().zip(join_all(reads).await) {
            staged.fetched(*off, got.map_err(io_err)?.to_vec());
        }
    }
    Err(WriteError::Unsettled)
}

/// whisper's `create(path, archives, xff, method)` then `update_many` of the first
/// points, in one open. Missing directories are made first. A file that appeared
/// meanwhile is updated instead; a create that fails leaves no file behind.
pub async fn create(
    path: &Path,
    new: &NewFile,
    points: &[(i64, f64)],
    now: i64,
    scratch: &mut Scratch,
    flock: bool,
) -> Result<Cost, WriteError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true);
    let open = || options.buffered_open(path);
    let file = match open().await.map_err(io_err) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
            glommio::executor()
                .spawn_blocking(move || std::fs::create_dir_all(dir))
                .await?;
            match open().await.map_err(io_err) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return update(path, points, now, scratch, flock).await
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return update(path, points, now, scratch, flock).await
        }
        Err(e) => return Err(e.into()),
    };
    let result = create_open(&file, new, points, now, scratch, flock).await;
    if result.is_err() {
        // A half-made file would read as corrupt forever: remove it; the points stay
        // in the cache for the next try.
        let _ = file.remove().await;
    }
    let closed = file.close().await.map_err(io_err);
    let cost = result?;
    closed?;
    Ok(cost)
}

async fn create_open(
    file: &BufferedFile,
    new: &NewFile,
    points: &[(i64, f64)],
    now: i64,
    scratch: &mut Scratch,
    flock: bool,
) -> Result<Cost, WriteError> {
    if flock {
        lock(file)?;
    }
    let mut staged = Staged::created();
    staged.begin_run();
    let header = format::create(
        &mut staged,
        &new.archives,
        f64::from(new.x_files_factor),
        new.method,
        new.mode,
    )?;
    format::update_many(&mut staged, &header, points, now, scratch)?;
    debug_assert!(staged.missing().is_empty(), "a new file is known whole");
    let writes = write_plan(file, &staged).await?;
    Ok(Cost {
        runs: 1,
        reads: 0,
        writes,
    })
}

/// `flock(LOCK_EX | LOCK_NB)`: never blocks; a file held elsewhere is [`WriteError::Busy`].
fn lock(file: &BufferedFile) -> Result<(), WriteError> {
    // SAFETY: flock only reads its integer arguments; the descriptor is owned by `file`,
    // which outlives the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(WriteError::Busy)
    } else {
        Err(WriteError::Io(e))
    }
}

/// Writes the last run's plan: the allocation first, then every write at once.
async fn write_plan(file: &BufferedFile, staged: &Staged) -> Result<u32, WriteError> {
    let (allocate, writes) = staged.plan();
    let mut ops = 0;
    if let Some((off, len)) = allocate {
        file.pre_allocate(off + len, false).await.map_err(io_err)?;
        ops += 1;
    }
    ops += writes.len() as u32;
    for r in join_all(
        writes
            .into_iter()
            .map(|(off, bytes)| write_all(file, bytes, off)),
    )
    .await
    {
        r?;
    }
    Ok(ops)
}

async fn write_all(file: &BufferedFile, mut bytes: Vec<u8>, mut off: u64) -> io::Result<()> {
    loop {
        let want = bytes.len();
        let n = file.write_at(bytes.clone(), off).await.map_err(io_err)?;
        if n == want {
            return Ok(());
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        // A short write (a disk filling up): the rest, or the error it gets.
        bytes.drain(..n);
        off += n as u64;
    }
}

/// Runs futures concurrently (they share the shard's io_uring), outputs in order.
pub async fn join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// whisper's `read_header` over a `WhisperIo`, for the tests.
#[cfg(test)]
fn header_of(io: &mut impl super::io::WhisperIo) -> format::Header {
    format::read_header(io).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::whisper::io::FileIo;

    fn run<T: Send + 'static, F: Future<Output = T> + 'static>(
        make: impl FnOnce() -> F + Send + 'static,
    ) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(make)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn creates_updates_and_matches_the_direct_engine() {
        let dir = std::env::temp_dir().join(format!("cadent-uring-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("a/b/c.wsp");
        let now = 1_700_000_000;
        let new = NewFile {
            archives: vec![(10, 60), (60, 60), (600, 30)],
            x_files_factor: 0.5,
            method: AggregationMethod::Max,
            mode: CreateMode::Fallocate,
        };
        let direct = dir.join("direct.wsp");
        let (p2, n2) = (path.clone(), new.clone());
        let costs = run(move || async move {
            let mut scratch = Scratch::new();
            let mut costs = Vec::new();
            let first: Vec<(i64, f64)> = (0..5).map(|i| (now - 100 + i * 10, i as f64)).collect();
            costs.push(
                create(&p2, &n2, &first, now, &mut scratch, true)
                    .await
                    .unwrap(),
            );
            for b in 1..20i64 {
                let pts: Vec<(i64, f64)> = (0..8)
                    .map(|i| (now - 3000 + b * 130 + i * 9, (b * i) as f64))
                    .collect();
                costs.push(update(&p2, &pts, now, &mut scratch, true).await.unwrap());
            }
            // A missing file is not made by update.
            assert!(matches!(
                update(
                    &p2.with_extension("x"),
                    &[(now, 1.0)],
                    now,
                    &mut scratch,
                    true
                )
                .await,
                Err(WriteError::NoFile)
            ));
            costs
        });
        assert!(costs.iter().all(|c| c.runs <= 4), "{costs:?}");
        // The same calls through the synchronous engine on a plain file.
        let mut io = FileIo::create_new(&direct).unwrap();
        let h = format::create(
            &mut io,
            &new.archives,
            0.5,
            new.method,
            CreateMode::Fallocate,
        )
        .unwrap();
        let mut scratch = Scratch::new();
        let first: Vec<(i64, f64)> = (0..5).map(|i| (now - 100 + i * 10, i as f64)).collect();
        format::update_many(&mut io, &h, &first, now, &mut scratch).unwrap();
        for b in 1..20i64 {
            let pts: Vec<(i64, f64)> = (0..8)
                .map(|i| (now - 3000 + b * 130 + i * 9, (b * i) as f64))
                .collect();
            let h = header_of(&mut io);
            format::update_many(&mut io, &h, &pts, now, &mut scratch).unwrap();
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&direct).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_reported_and_a_locked_one_is_busy() {
        let dir = std::env::temp_dir().join(format!("cadent-uring-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.wsp");
        std::fs::write(&bad, b"not a whisper file at all, really").unwrap();
        let locked = dir.join("locked.wsp");
        {
            let mut io = FileIo::create_new(&locked).unwrap();
            format::create(
                &mut io,
                &[(60, 10)],
                0.5,
                AggregationMethod::Average,
                CreateMode::Sparse,
            )
            .unwrap();
        }
        let holder = std::fs::File::open(&locked).unwrap();
        // SAFETY: flock on a descriptor this test owns.
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
        let (b2, l2) = (bad.clone(), locked.clone());
        run(move || async move {
            let mut s = Scratch::new();
            let now = 1_700_000_000;
            assert!(matches!(
                update(&b2, &[(now, 1.0)], now, &mut s, true).await,
                Err(WriteError::Corrupt(_))
            ));
            assert!(matches!(
                update(&l2, &[(now, 1.0)], now, &mut s, true).await,
                Err(WriteError::Busy)
            ));
            // Without flock the held lock is not asked for.
            assert!(update(&l2, &[(now, 1.0)], now, &mut s, false).await.is_ok());
        });
        drop(holder);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

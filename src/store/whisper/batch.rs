//! Whisper updates in batches, for the store writers on the shards, with nothing that
//! can block and nothing that wakes the shard.
//!
//! Each update is prepared at once with syscalls that never block: an `openat2` that
//! only walks cached directory entries (`RESOLVE_CACHED`), `flock` with `LOCK_NB`,
//! `fstat` of the open file, and reads with `RWF_NOWAIT` (page-cache hits, rounded out to
//! 512 bytes) through a [`Staged`] view, so the format engine runs once. Its writes go
//! to a private io_uring with those of every other update of the batch, one
//! `io_uring_enter` for all, and their completions are read on the writer's next step:
//! no task waits on this ring, so completions do not wake the shard (ext4 cannot try a
//! buffered write without blocking, so the kernel's io-wq workers make them). When an
//! update's writes are all done its file is closed through the same ring, which
//! releases its lock: whisper's tools that lock see whole updates, as with carbon.
//!
//! An update that would block (a directory entry or a page not cached, an old kernel
//! without `RESOLVE_CACHED`) is handed back, and the caller runs it through `uring`
//! (glommio's files, every step awaited on the shard's own ring).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::path::Path;

use io_uring::{opcode, types, IoUring};

use super::format::{self, Scratch};
use super::staged::Staged;
use super::uring::{Cost, WriteError};

/// Why an update was not started.
#[derive(Debug)]
pub enum Refused {
    /// It would block: run it through `uring`.
    WouldBlock,
    /// It failed (no file, busy, corrupt, I/O).
    Failed(WriteError),
}

struct InFlight<T> {
    tag: T,
    fd: RawFd,
    /// The bytes of its writes: the kernel reads them until each completes.
    bufs: Vec<Vec<u8>>,
    left: u32,
    error: Option<io::Error>,
    cost: Cost,
}

/// `io_uring_enter`'s flag that asks for completions (and runs deferred task work).
const IORING_ENTER_GETEVENTS: u32 = 1;

/// At most this many enters per reap to post deferred completions (each posts up to
/// the kernel's batch; a reap with more in flight than this covers waits a tick).
const DEFERRED_ENTERS_MAX: usize = 64;

/// `user_data` of a close: its completion is only counted.
const CLOSE: u64 = u64::MAX;

/// Updates whose writes are in flight on a private io_uring, each carrying the caller's
/// `T` back when it is done.
pub struct Batch<T> {
    ring: IoUring,
    /// The ring defers task work: completions are posted only when it is entered with
    /// `IORING_ENTER_GETEVENTS` (see [`Batch::reap`]).
    deferred: bool,
    slots: Vec<Option<InFlight<T>>>,
    free: Vec<u32>,
    in_flight: usize,
    /// Updates with nothing to write, reported at the next reap.
    done_now: Vec<u32>,
    cqes: Vec<(u64, i32)>,
    path: Vec<u8>,
    /// `O_NOATIME` is allowed (the files are ours): reads do not dirty the inode.
    noatime: bool,
    /// `openat2` with `RESOLVE_CACHED` works on this kernel.
    cached_open: bool,
    /// The view each update runs the engine on (its buffers reused).
    staged: Staged,
    /// Closes that failed since the last [`Batch::take_close_errors`].
    close_errors: u64,
}

impl<T> Batch<T> {
    /// A batch of at most about `in_flight_max` updates in flight.
    pub fn new(in_flight_max: usize) -> io::Result<Batch<T>> {
        // Up to 4 writes per update (a wrapped run and propagations) and its close.
        let entries = ((in_flight_max * 5) as u32)
            .next_power_of_two()
            .clamp(64, 4096);
        // Deferred task work: the kernel runs a completed write's last steps when this
        // ring is next entered for events, not by waking the shard. Without it every
        // write the io-wq workers finish wakes the shard's thread (task_work on a task
        // that sleeps in its executor's ring): about 170 wakeups a second, a tenth of
        // the store's CPU, in `bench/store.py`. Needs Linux 6.1 and a ring made and used
        // on one thread (the shard's); older kernels get the cooperative mode.
        let (ring, deferred) = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .map(|r| (r, true))
            .or_else(|_| {
                IoUring::builder()
                    .setup_coop_taskrun()
                    .build(entries)
                    .map(|r| (r, false))
            })
            .or_else(|_| IoUring::new(entries).map(|r| (r, false)))?;
        Ok(Batch {
            ring,
            deferred,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            done_now: Vec::new(),
            cqes: Vec::new(),
            path: Vec::new(),
            noatime: true,
            cached_open: true,
            staged: Staged::default(),
            close_errors: 0,
        })
    }

    /// Closes that failed since the last call (nothing else to do about them).
    pub fn take_close_errors(&mut self) -> u64 {
        std::mem::take(&mut self.close_errors)
    }

    /// Updates started and not reaped yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// whisper's `update_many(path, points, now)`, started now if nothing on the way
    /// blocks (holding `flock` on the file until it is closed, when `flock`); its
    /// outcome comes from [`Batch::reap`] after a [`Batch::submit`].
    pub fn update(
        &mut self,
        path: &Path,
        points: &[(i64, f64)],
        now: i64,
        scratch: &mut Scratch,
        flock: bool,
        tag: T,
    ) -> Result<(), (T, Refused)> {
        let fd = match self.open(path) {
            Ok(fd) => fd,
            Err(r) => return Err((tag, r)),
        };
        match prepare(&mut self.staged, fd, points, now, scratch, flock) {
            Ok(cost) => {
                let (allocate, writes) = self.staged.plan();
                if allocate.is_some() {
                    // Only a create allocates: not for this path.
                    self.close(fd);
                    return Err((tag, Refused::WouldBlock));
                }
                self.start(fd, writes, cost, tag);
                Ok(())
            }
            Err(r) => {
                self.close(fd);
                Err((tag, r))
            }
        }
    }

    fn open(&mut self, path: &Path) -> Result<RawFd, Refused> {
        if !self.cached_open {
            return Err(Refused::WouldBlock);
        }
        self.path.clear();
        self.path.extend_from_slice(path.as_os_str().as_bytes());
        self.path.push(0);
        if self.path[..self.path.len() - 1].contains(&0) {
            return Err(Refused::Failed(WriteError::Io(
                io::ErrorKind::InvalidInput.into(),
            )));
        }
        loop {
            let mut how: libc::open_how = unsafe_zeroed_open_how();
            how.flags = (libc::O_RDWR
                | libc::O_CLOEXEC
                | if self.noatime { libc::O_NOATIME } else { 0 }) as u64;
            how.resolve = libc::RESOLVE_CACHED;
            // SAFETY: the path is NUL-terminated and outlives the call; `how` is a valid
            // open_how of the size passed.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    self.path.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if fd >= 0 {
                return Ok(fd as RawFd);
            }
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EAGAIN) => Refused::WouldBlock,
                Some(libc::ENOENT) => Refused::Failed(WriteError::NoFile),
                Some(libc::EPERM) if self.noatime => {
                    // Not the files' owner: reads update atime, as they do for carbon.
                    self.noatime = false;
                    continue;
                }
                Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG) => {
                    self.cached_open = false;
                    Refused::WouldBlock
                }
                _ => Refused::Failed(WriteError::Io(e)),
            });
        }
    }

    fn start(&mut self, fd: RawFd, writes: Vec<(u64, Vec<u8>)>, mut cost: Cost, tag: T) {
        cost.writes = writes.len() as u32;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let mut bufs = Vec::with_capacity(writes.len());
        for (i, (off, bytes)) in writes.into_iter().enumerate() {
            let entry = opcode::Write::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
                .offset(off)
                .build()
                .user_data(u64::from(slot) << 16 | i as u64);
            self.push(&entry);
            // The Vec's heap buffer does not move when the Vec does.
            bufs.push(bytes);
        }
        let left = bufs.len() as u32;
        self.slots[slot as usize] = Some(InFlight {
            tag,
            fd,
            bufs,
            left,
            error: None,
            cost,
        });
        self.in_flight += 1;
        if left == 0 {
            self.done_now.push(slot);
        }
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to is kept in its slot until its
            // completion is reaped (and Drop waits for the ones in flight).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel first.
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::warn!(error = %e, "io_uring submit");
                }
            }
        }
    }

    fn close(&mut self, fd: RawFd) {
        let entry = opcode::Close::new(types::Fd(fd)).build().user_data(CLOSE);
        self.push(&entry);
    }

    /// Hands every queued operation to the kernel (one `io_uring_enter`).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads the completions so far: each update whose writes are all done is reported
    /// (its file's close is queued, for the next [`Batch::submit`]).
    pub fn reap(&mut self, mut done: impl FnMut(T, Result<Cost, WriteError>)) {
        if self.deferred {
            // The kernel runs a bounded number of deferred completions per enter (20 on
            // Linux 6.13+): enter again while that posts more.
            for _ in 0..DEFERRED_ENTERS_MAX {
                let before = self.ring.completion().len();
                // SAFETY: no submission and no argument: the kernel only runs this
                // ring's deferred task work, which posts the completions read below.
                let r = unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        0,
                        0,
                        IORING_ENTER_GETEVENTS,
                        None,
                    )
                };
                if let Err(e) = r {
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                    ) {
                        tracing::warn!(error = %e, "io_uring enter for completions");
                    }
                    break;
                }
                if self.ring.completion().len() == before {
                    break;
                }
            }
        }
        self.cqes.clear();
        self.cqes
            .extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let mut finished = std::mem::take(&mut self.done_now);
        for i in 0..self.cqes.len() {
            let (data, res) = self.cqes[i];
            if data == CLOSE {
                self.close_errors += u64::from(res < 0);
                continue;
            }
            let (slot, op) = ((data >> 16) as u32, (data & 0xffff) as usize);
            let Some(f) = self.slots[slot as usize].as_mut() else {
                continue;
            };
            if res < 0 {
                f.error.get_or_insert(io::Error::from_raw_os_error(-res));
            } else if (res as usize) < f.bufs[op].len() {
                // A short write (a disk filling up): the update is tried again whole.
                f.error
                    .get_or_insert(io::Error::new(io::ErrorKind::WriteZero, "short write"));
            }
            f.left -= 1;
            if f.left == 0 {
                finished.push(slot);
            }
        }
        for &slot in &finished {
            let f = self.slots[slot as usize].take().expect("a live slot");
            self.free.push(slot);
            self.in_flight -= 1;
            self.close(f.fd);
            let result = match f.error {
                None => Ok(f.cost),
                Some(e) => Err(WriteError::Io(e)),
            };
            done(f.tag, result);
        }
        finished.clear();
        self.done_now = finished;
    }
}

impl<T> Drop for Batch<T> {
    fn drop(&mut self) {
        // The kernel reads the buffers of writes in flight: wait for them (a stop or a
        // reload; the caller drains first, so this is normally nothing).
        let mut rounds = 0;
        while self.in_flight > self.done_now.len() && rounds < 10_000 {
            let _ = self.ring.submit_and_wait(1);
            self.reap(|_, _| {});
            rounds += 1;
        }
        let _ = self.submit();
    }
}

fn unsafe_zeroed_open_how() -> libc::open_how {
    // SAFETY: open_how is plain integers; all zeros is its documented default.
    unsafe { std::mem::zeroed() }
}

/// Locks (when `flock`), sizes and reads what the update needs, and runs the engine
/// once.
fn prepare(
    staged: &mut Staged,
    fd: RawFd,
    points: &[(i64, f64)],
    now: i64,
    scratch: &mut Scratch,
    flock: bool,
) -> Result<Cost, Refused> {
    // SAFETY: flock and fstat only read their arguments and write `st`; the descriptor
    // is open for the duration of the calls.
    let rc = if flock {
        unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }
    } else {
        0
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(Refused::Failed(
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                WriteError::Busy
            } else {
                WriteError::Io(e)
            },
        ));
    }
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(Refused::Failed(WriteError::Io(io::Error::last_os_error())));
    }
    staged.reset_direct(st.st_size as u64, fd);
    staged.begin_run();
    let result = format::read_header(staged)
        .and_then(|header| format::update_many(staged, &header, points, now, scratch));
    if !staged.missing().is_empty() {
        return Err(Refused::WouldBlock);
    }
    if let Err(e) = result {
        return Err(Refused::Failed(e.into()));
    }
    Ok(Cost {
        runs: 1,
        reads: staged.direct_reads(),
        writes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::whisper::format::{AggregationMethod, CreateMode};
    use crate::store::whisper::io::FileIo;

    #[test]
    fn batched_updates_write_the_bytes_direct_ones_do() {
        let dir = std::env::temp_dir().join(format!("cadent-batch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let now = 1_700_000_000;
        let archives = [(10, 600), (60, 600), (600, 240)];
        let files: Vec<_> = (0..6).map(|i| dir.join(format!("f{i}.wsp"))).collect();
        let direct: Vec<_> = (0..6).map(|i| dir.join(format!("d{i}.wsp"))).collect();
        for p in files.iter().chain(&direct) {
            let mut io = FileIo::create_new(p).unwrap();
            format::create(
                &mut io,
                &archives,
                0.5,
                AggregationMethod::Average,
                CreateMode::Sparse,
            )
            .unwrap();
        }
        let mut batch: Batch<usize> = Batch::new(8).unwrap();
        let mut scratch = Scratch::new();
        let mut reported = Vec::new();
        for round in 0..25i64 {
            for (i, (p, d)) in files.iter().zip(&direct).enumerate() {
                let pts: Vec<(i64, f64)> = (0..7)
                    .map(|k| {
                        (
                            now - 40_000 + round * 1_300 + k * 11 + i as i64,
                            (round * k) as f64,
                        )
                    })
                    .collect();
                batch
                    .update(p, &pts, now, &mut scratch, true, i)
                    .map_err(|(_, r)| r)
                    .unwrap();
                let mut io = FileIo::open(d).unwrap();
                let h = format::read_header(&mut io).unwrap();
                format::update_many(&mut io, &h, &pts, now, &mut scratch).unwrap();
            }
            batch.submit().unwrap();
            // Every update is reported once its writes are done.
            let mut got = 0;
            for _ in 0..10_000 {
                batch.reap(|i, r| {
                    r.unwrap();
                    reported.push(i);
                    got += 1;
                });
                batch.submit().unwrap();
                if got == files.len() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            assert_eq!(got, files.len(), "round {round}");
        }
        drop(batch);
        for (p, d) in files.iter().zip(&direct) {
            assert_eq!(
                std::fs::read(p).unwrap(),
                std::fs::read(d).unwrap(),
                "{p:?}"
            );
        }
        // Closed: the locks are free again.
        let f = std::fs::File::open(&files[0]).unwrap();
        // SAFETY: flock on a descriptor this test owns.
        assert_eq!(
            unsafe {
                libc::flock(
                    std::os::unix::io::AsRawFd::as_raw_fd(&f),
                    libc::LOCK_EX | libc::LOCK_NB,
                )
            },
            0
        );
        // A missing file and a locked one are refused, not started (a missing file
        // whose negative directory entry is not cached would block: the slow path
        // finds it missing).
        let mut batch: Batch<()> = Batch::new(8).unwrap();
        assert!(matches!(
            batch.update(
                &dir.join("none.wsp"),
                &[(now, 1.0)],
                now,
                &mut scratch,
                true,
                ()
            ),
            Err((_, Refused::Failed(WriteError::NoFile) | Refused::WouldBlock))
        ));
        assert!(matches!(
            batch.update(&files[0], &[(now, 1.0)], now, &mut scratch, true, ()),
            Err((_, Refused::Failed(WriteError::Busy)))
        ));
        assert_eq!(batch.in_flight(), 0);
        drop(f);
        drop(batch);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

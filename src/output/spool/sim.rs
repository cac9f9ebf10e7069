//! A simulated file system for the spool's tests: it remembers what was synced and what
//! was not, so a test can crash it at any I/O call and see what a power loss could leave.
//!
//! The model (deliberately harsher than ext4's ordered mode):
//! - A file's bytes are durable up to its last `sync_data`; later writes and truncations
//!   are pending. A crash keeps a random prefix of the pending operations, tears the next
//!   write at a random byte, and may then overwrite a random stretch of the newly grown,
//!   never-synced region with zeros or noise (pages written back out of order).
//! - Directory entries (creations, removals) are durable up to the last `sync_dir`; a crash
//!   keeps a random prefix of the pending ones. A file whose creation was lost is gone,
//!   whatever was synced into it; a removal that was lost brings the file back.
//! - Faults: the process dies after N calls (every later call fails, and the call that
//!   dies writes a random part of its bytes), the disk fills after N more bytes (the write
//!   that crosses it writes what fits, then ENOSPC), `sync_data` fails with EIO, and the
//!   directories refuse creations and removals (EACCES).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::io::{SpoolFile, SpoolIo};
use crate::tools::SplitMix64;

#[derive(Debug, Default, Clone)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Debug, Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Clone)]
enum DirOp {
    Create(PathBuf, u64),
    Remove(PathBuf),
}

#[derive(Debug)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    entries: BTreeMap<PathBuf, u64>,
    durable_entries: BTreeMap<PathBuf, u64>,
    dirs: Vec<PathBuf>,
    dir_ops: Vec<DirOp>,
    rng: SplitMix64,
    /// Calls left before the simulated process dies.
    calls_left: Option<u64>,
    dead: bool,
    /// Bytes the disk can still grow by.
    space_left: Option<u64>,
    fail_sync: bool,
    deny_create: bool,
    /// Bytes written by writes, and data syncs: for write amplification in tests.
    bytes_written: u64,
    syncs: u64,
}

/// The simulated file system; clones share it (one for the spool, one for the test).
#[derive(Debug, Clone)]
pub struct SimFs(Rc<RefCell<State>>);

/// A file open on a [`SimFs`].
#[derive(Debug)]
pub struct SimFile {
    fs: Rc<RefCell<State>>,
    ino: u64,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated: {what}"))
}

impl SimFs {
    /// An empty file system whose crashes are drawn from `seed`.
    pub fn new(seed: u64) -> SimFs {
        SimFs(Rc::new(RefCell::new(State {
            inodes: HashMap::new(),
            next_ino: 1,
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
            dirs: Vec::new(),
            dir_ops: Vec::new(),
            rng: SplitMix64(seed),
            calls_left: None,
            dead: false,
            space_left: None,
            fail_sync: false,
            deny_create: false,
            bytes_written: 0,
            syncs: 0,
        })))
    }

    /// The process dies at the `n`th I/O call from now (0: the next one).
    pub fn die_after_calls(&self, n: u64) {
        self.0.borrow_mut().calls_left = Some(n);
    }

    /// The disk fills after `n` more bytes of growth (`None`: never).
    pub fn set_space_left(&self, n: Option<u64>) {
        self.0.borrow_mut().space_left = n;
    }

    /// `sync_data` fails with EIO while set.
    pub fn set_fail_sync(&self, on: bool) {
        self.0.borrow_mut().fail_sync = on;
    }

    /// Creations and removals fail with EACCES while set (an unwritable directory).
    pub fn set_deny_create(&self, on: bool) {
        self.0.borrow_mut().deny_create = on;
    }

    /// (bytes written, data syncs) so far.
    pub fn written(&self) -> (u64, u64) {
        let s = self.0.borrow();
        (s.bytes_written, s.syncs)
    }

    /// Power loss: only what the model lets survive is kept; the process restarts (calls
    /// succeed again).
    pub fn crash(&self) {
        let mut guard = self.0.borrow_mut();
        let s = &mut *guard;
        let ops = std::mem::take(&mut s.dir_ops);
        let keep = s.rng.below(ops.len() + 1);
        for op in ops.into_iter().take(keep) {
            match op {
                DirOp::Create(p, ino) => {
                    s.durable_entries.insert(p, ino);
                }
                DirOp::Remove(p) => {
                    s.durable_entries.remove(&p);
                }
            }
        }
        s.entries = s.durable_entries.clone();
        let mut inos: Vec<u64> = s.inodes.keys().copied().collect();
        inos.sort_unstable(); // HashMap order is random per process: keep runs repeatable
        for ino in inos {
            let f = s.inodes.get_mut(&ino).unwrap();
            let base = f.durable.len();
            let pending = std::mem::take(&mut f.pending);
            let keep = s.rng.below(pending.len() + 1);
            let mut data = std::mem::take(&mut f.durable);
            for (i, op) in pending.iter().enumerate() {
                if i > keep {
                    break;
                }
                match op {
                    Pending::SetLen(n) if i < keep => data.resize(*n as usize, 0),
                    Pending::Write(off, b) => {
                        // The write after the kept prefix lands torn, or not at all.
                        let n = if i < keep {
                            b.len()
                        } else {
                            s.rng.below(b.len() + 1)
                        };
                        apply_write(&mut data, *off, &b[..n]);
                    }
                    Pending::SetLen(_) => {}
                }
            }
            if data.len() > base && s.rng.below(4) == 0 {
                let a = base + s.rng.below(data.len() - base);
                let b = a + s.rng.below(data.len() - a + 1);
                let noise = s.rng.below(2) == 0;
                for x in &mut data[a..b] {
                    *x = if noise { s.rng.next_u64() as u8 } else { 0 };
                }
            }
            f.durable = data.clone();
            f.current = data;
        }
        s.calls_left = None;
        s.dead = false;
    }

    /// The bytes a file holds now (not necessarily durable).
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.0.borrow();
        let ino = s.entries.get(path)?;
        Some(s.inodes[ino].current.clone())
    }

    /// Replaces a file's bytes, durably (for corruption tests).
    pub fn write(&self, path: &Path, bytes: Vec<u8>) {
        let mut s = self.0.borrow_mut();
        let ino = s.entries[path];
        let f = s.inodes.get_mut(&ino).unwrap();
        f.durable = bytes.clone();
        f.current = bytes;
        f.pending.clear();
    }

    /// Removes a file, durably (a segment lost outside the spool).
    pub fn unlink(&self, path: &Path) {
        let mut s = self.0.borrow_mut();
        s.entries.remove(path);
        s.durable_entries.remove(path);
    }

    /// File names under `dir`.
    pub fn names(&self, dir: &Path) -> Vec<String> {
        let mut v = self.list(dir).unwrap_or_default();
        v.sort();
        v
    }

    fn call(&self) -> io::Result<()> {
        match self.step() {
            Step::Live => Ok(()),
            Step::DiesNow => Err(eio("process died")),
            Step::Dead => Err(eio("process is dead")),
        }
    }

    fn step(&self) -> Step {
        let mut s = self.0.borrow_mut();
        if s.dead {
            return Step::Dead;
        }
        match s.calls_left.as_mut() {
            Some(0) => {
                s.dead = true;
                s.calls_left = None;
                Step::DiesNow
            }
            Some(n) => {
                *n -= 1;
                Step::Live
            }
            None => Step::Live,
        }
    }
}

enum Step {
    Live,
    DiesNow,
    Dead,
}

fn apply_write(data: &mut Vec<u8>, off: u64, b: &[u8]) {
    let off = off as usize;
    if data.len() < off + b.len() {
        data.resize(off + b.len(), 0);
    }
    data[off..off + b.len()].copy_from_slice(b);
}

impl SpoolIo for SimFs {
    type File = SimFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.call()?;
        let mut s = self.0.borrow_mut();
        if !s.dirs.iter().any(|d| d == dir) {
            if s.deny_create {
                return Err(io::Error::from_raw_os_error(libc::EACCES));
            }
            s.dirs.push(dir.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.call()?;
        let s = self.0.borrow();
        if !s.dirs.iter().any(|d| d == dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let mut v: Vec<String> = s
            .entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for d in &s.dirs {
            if d.parent() == Some(dir) {
                v.push(d.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        Ok(v)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        self.call()?;
        let mut guard = self.0.borrow_mut();
        let s = &mut *guard;
        if let Some(&ino) = s.entries.get(path) {
            return Ok(SimFile {
                fs: self.0.clone(),
                ino,
            });
        }
        if !create {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        if s.deny_create {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        let ino = s.next_ino;
        s.next_ino += 1;
        s.inodes.insert(ino, Inode::default());
        s.entries.insert(path.to_path_buf(), ino);
        s.dir_ops.push(DirOp::Create(path.to_path_buf(), ino));
        Ok(SimFile {
            fs: self.0.clone(),
            ino,
        })
    }

    fn open_read(&self, path: &Path) -> io::Result<SimFile> {
        self.open(path, false)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.call()?;
        let mut s = self.0.borrow_mut();
        if s.deny_create {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        let ino = s
            .entries
            .remove(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let freed = s.inodes[&ino].current.len() as u64;
        if let Some(left) = s.space_left.as_mut() {
            *left += freed;
        }
        s.dir_ops.push(DirOp::Remove(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.call()?;
        let mut guard = self.0.borrow_mut();
        let s = &mut *guard;
        // Every pending entry change is under the spool's one directory in these tests.
        for op in s.dir_ops.drain(..) {
            match op {
                DirOp::Create(p, ino) => {
                    debug_assert_eq!(p.parent(), Some(dir));
                    s.durable_entries.insert(p, ino);
                }
                DirOp::Remove(p) => {
                    s.durable_entries.remove(&p);
                }
            }
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.0.borrow().dirs.iter().any(|d| d == path)
    }
}

impl SimFile {
    fn dying_write(&mut self, buf: &[u8], off: u64) {
        // The call that dies may have put part of its bytes in the page cache.
        let mut s = self.fs.borrow_mut();
        let n = s.rng.below(buf.len() + 1);
        let f = s.inodes.get_mut(&self.ino).unwrap();
        apply_write(&mut f.current, off, &buf[..n]);
        f.pending.push(Pending::Write(off, buf[..n].to_vec()));
    }

    fn call(&self) -> io::Result<()> {
        SimFs(self.fs.clone()).call()
    }
}

impl SpoolFile for SimFile {
    fn read_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.call()?;
        let s = self.fs.borrow();
        let data = &s.inodes[&self.ino].current;
        let off = (off as usize).min(data.len());
        let n = buf.len().min(data.len() - off);
        buf[..n].copy_from_slice(&data[off..off + n]);
        Ok(n)
    }

    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        match SimFs(self.fs.clone()).step() {
            Step::Live => {}
            Step::DiesNow => {
                self.dying_write(buf, off);
                return Err(eio("process died"));
            }
            Step::Dead => return Err(eio("process is dead")),
        }
        let mut guard = self.fs.borrow_mut();
        let s = &mut *guard;
        let f = s.inodes.get_mut(&self.ino).unwrap();
        let end = off as usize + buf.len();
        let growth = end.saturating_sub(f.current.len()) as u64;
        let mut n = buf.len();
        let mut full = false;
        if let Some(left) = s.space_left.as_mut() {
            if growth > *left {
                n = buf.len() - (growth - *left) as usize;
                *left = 0;
                full = true;
            } else {
                *left -= growth;
            }
        }
        apply_write(&mut f.current, off, &buf[..n]);
        f.pending.push(Pending::Write(off, buf[..n].to_vec()));
        s.bytes_written += n as u64;
        if full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn file_len(&mut self) -> io::Result<u64> {
        self.call()?;
        Ok(self.fs.borrow().inodes[&self.ino].current.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.call()?;
        let mut s = self.fs.borrow_mut();
        let f = s.inodes.get_mut(&self.ino).unwrap();
        f.current.resize(len as usize, 0);
        f.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.call()?;
        let mut s = self.fs.borrow_mut();
        if s.fail_sync {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        s.syncs += 1;
        let f = s.inodes.get_mut(&self.ino).unwrap();
        f.durable = f.current.clone();
        f.pending.clear();
        Ok(())
    }
}

//! The I/O seam the spool works through: a directory of files with positional reads and
//! writes, explicit data syncs and directory syncs. `FsIo` is the real file system;
//! tests drive the same spool through `sim::SimFs`, which can lose what was not synced,
//! tear writes, run out of space and refuse permission.
//!
//! Every call here may block on the disk. A glommio shard must not call them on its
//! executor thread: see the module doc of `spool` for how a shard drives a spool.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A directory of files. Paths are full paths.
pub trait SpoolIo {
    /// An open file.
    type File: SpoolFile;
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries in `dir` (files and directories), unsorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file read-write, creating it (empty) if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    /// Opens a file read-only.
    fn open_read(&self, path: &Path) -> io::Result<Self::File>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
}

/// An open file.
pub trait SpoolFile {
    /// Reads up to `buf.len()` bytes at `off`; 0 at the end.
    fn read_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `off`.
    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()>;
    /// The file's length.
    fn file_len(&mut self) -> io::Result<u64>;
    /// Truncates (or extends) to `len`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// Reads `buf.len()` bytes at `off` or fewer at the end of the file; returns how many.
pub fn read_full<F: SpoolFile>(f: &mut F, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The real file system, with `pread`/`pwrite`, `fdatasync` and a directory `fsync`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsIo;

impl SpoolIo for FsIo {
    type File = File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
}

impl SpoolFile for File {
    fn read_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, off)
    }

    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, off)
    }

    fn file_len(&mut self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}

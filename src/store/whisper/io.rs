//! The small I/O interface the whisper format logic reads and writes through.
//!
//! `format` never opens files: it asks a `WhisperIo` for exact positional reads and
//! writes, so a plain file (`FileIo`, for the tools and tests), a buffer (`MemIo`, for
//! unit tests) and later the io_uring writer can all drive the same engine.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Positional, exact I/O on one whisper file.
///
/// Reads and writes are whole or an error: a read past the end is
/// `io::ErrorKind::UnexpectedEof`. Writes past the end extend the file, as a plain
/// `write(2)` after `lseek(2)` does (python whisper can write past an archive's end in
/// one corner case, and the engine reproduces it byte for byte).
pub trait WhisperIo {
    /// Fill `buf` from the bytes at `off`.
    fn read_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Write all of `buf` at `off`.
    fn write_at(&mut self, buf: &[u8], off: u64) -> io::Result<()>;
    /// The current length in bytes.
    fn file_len(&mut self) -> io::Result<u64>;
    /// Reserve `[off, off + len)` with zeros, as `posix_fallocate(3)` does: the file
    /// grows to at least `off + len` and the blocks are allocated.
    fn allocate(&mut self, off: u64, len: u64) -> io::Result<()>;
}

/// A whisper file on disk, read and written with `pread(2)` / `pwrite(2)`.
#[derive(Debug)]
pub struct FileIo {
    file: File,
}

impl FileIo {
    /// Open an existing file read-write.
    pub fn open(path: &Path) -> io::Result<FileIo> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(FileIo { file })
    }

    /// Open an existing file read-only (fetch, info, dump).
    pub fn open_read(path: &Path) -> io::Result<FileIo> {
        Ok(FileIo {
            file: File::open(path)?,
        })
    }

    /// Create a new file; an existing path is an error (`AlreadyExists`), as in whisper.
    pub fn create_new(path: &Path) -> io::Result<FileIo> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(FileIo { file })
    }
}

impl WhisperIo for FileIo {
    fn read_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }

    fn write_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        self.file.write_all_at(buf, off)
    }

    fn file_len(&mut self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn allocate(&mut self, off: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: posix_fallocate only reads its integer arguments; the descriptor is
        // owned by `self.file` and stays open for the duration of the call.
        let rc = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), off, len) };
        if rc == 0 {
            Ok(())
        } else {
            // posix_fallocate returns the error number instead of setting errno.
            Err(io::Error::from_raw_os_error(rc))
        }
    }
}

/// A whisper file in memory, for tests: the same semantics as a file, including
/// zero-filled holes when a write lands past the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemIo {
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

impl MemIo {
    /// An empty file.
    pub fn new() -> MemIo {
        MemIo::default()
    }

    /// A file holding `bytes` (for reading files made elsewhere).
    pub fn from_bytes(bytes: Vec<u8>) -> MemIo {
        MemIo { bytes }
    }
}

fn range(off: u64, len: usize) -> io::Result<(usize, usize)> {
    let start = usize::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok((start, end))
}

impl WhisperIo for MemIo {
    fn read_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let (start, end) = range(off, buf.len())?;
        match self.bytes.get(start..end) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }

    fn write_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        let (start, end) = range(off, buf.len())?;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn file_len(&mut self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }

    fn allocate(&mut self, off: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let (_, end) = range(off, len)?;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        Ok(())
    }
}

/// Counts the operations another `WhisperIo` is asked for: the bench reports reads and
/// writes per update with it, the numbers whisper's own debug counters give.
#[derive(Debug, Default)]
pub struct CountingIo<I> {
    /// The I/O that does the work.
    pub inner: I,
    /// `read_at` calls.
    pub reads: u64,
    /// `write_at` calls.
    pub writes: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub written_bytes: u64,
}

impl<I: WhisperIo> CountingIo<I> {
    /// Count `inner`'s operations from zero.
    pub fn new(inner: I) -> CountingIo<I> {
        CountingIo {
            inner,
            reads: 0,
            writes: 0,
            read_bytes: 0,
            written_bytes: 0,
        }
    }
}

impl<I: WhisperIo> WhisperIo for CountingIo<I> {
    fn read_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.reads += 1;
        self.read_bytes += buf.len() as u64;
        self.inner.read_at(buf, off)
    }

    fn write_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        self.writes += 1;
        self.written_bytes += buf.len() as u64;
        self.inner.write_at(buf, off)
    }

    fn file_len(&mut self) -> io::Result<u64> {
        self.inner.file_len()
    }

    fn allocate(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.inner.allocate(off, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_io_reads_exactly_and_grows_on_write() {
        let mut io = MemIo::new();
        io.write_at(b"abc", 2).unwrap();
        assert_eq!(io.bytes, b"\0\0abc");
        let mut buf = [0u8; 3];
        io.read_at(&mut buf, 2).unwrap();
        assert_eq!(&buf, b"abc");
        let err = io.read_at(&mut buf, 3).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        io.allocate(0, 10).unwrap();
        assert_eq!(io.file_len().unwrap(), 10);
        let mut counted = CountingIo::new(io);
        counted.read_at(&mut buf, 0).unwrap();
        counted.write_at(b"xy", 0).unwrap();
        assert_eq!((counted.reads, counted.writes), (1, 1));
        assert_eq!((counted.read_bytes, counted.written_bytes), (3, 2));
    }

    #[test]
    fn file_io_allocates_and_refuses_existing_path() {
        let dir = std::env::temp_dir().join(format!("cadent-wsp-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.wsp");
        let _ = std::fs::remove_file(&path);
        let mut io = FileIo::create_new(&path).unwrap();
        io.allocate(16, 100).unwrap();
        assert_eq!(io.file_len().unwrap(), 116);
        io.write_at(&[1, 2], 114).unwrap();
        let mut buf = [9u8; 4];
        io.read_at(&mut buf, 112).unwrap();
        assert_eq!(buf, [0, 0, 1, 2]);
        let err = FileIo::create_new(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

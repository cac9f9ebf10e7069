//! The file destination: each shard appends batches to its own file
//! (`<stem>-<shard>.<ext>`) and rotates it at `file_rotate_bytes`, keeping
//! `file_keep_files` old ones (`.1` newest).

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use glommio::io::{BufferedFile, OpenOptions};

use super::DestQueue;
use crate::config::FileSink;

/// The path shard `shard` writes for a file sink.
pub fn shard_path(sink: &FileSink, shard: usize) -> PathBuf {
    let p = &sink.path;
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match p.extension() {
        Some(ext) => format!("{stem}-{shard}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{shard}"),
    };
    p.with_file_name(name)
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Shifts `path.1..` up by one, drops the oldest beyond `keep`, moves `path` to `.1`.
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(rotated(path, keep));
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

async fn open(path: &Path) -> std::io::Result<(BufferedFile, u64)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .read(true)
        .buffered_open(path)
        .await?;
    let size = f.file_size().await?;
    Ok((f, size))
}

/// Drains `queue` into the shard's file until the queue is closed and empty.
pub async fn run(queue: Rc<DestQueue>, sink: FileSink, shard: usize) {
    let path = shard_path(&sink, shard);
    let mut file: Option<(BufferedFile, u64)> = None;
    while queue.ready().await {
        let (f, pos) = match file.as_mut() {
            Some(x) => x,
            None => match open(&path).await {
                Ok(x) => {
                    queue.set_live(true);
                    queue.count(|c| c.connects += 1);
                    file.insert(x)
                }
                Err(e) => {
                    queue.count(|c| c.connect_failures += 1);
                    tracing::warn!(path = %path.display(), error = %e, "cannot open file sink");
                    if queue.is_closed() {
                        queue.discard_at_shutdown();
                        return;
                    }
                    glommio::timer::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let Some(batch) = queue.pop() else { continue };
        let len = batch.data.len() as u64;
        let lines = batch.lines;
        // write_at takes the buffer; a failed write loses this batch, so count it.
        match f.write_at(batch.data, *pos).await {
            Ok(n) if n as u64 == len => {
                *pos += len;
                queue.complete(lines, len as usize, 0);
                queue.count(|c| c.writes += 1);
            }
            Ok(_) | Err(_) => {
                queue.fail(lines);
                tracing::warn!(path = %path.display(), "file write failed or was short; batch dropped");
                file = None;
                queue.set_live(false);
                continue;
            }
        }
        if *pos >= sink.rotate_bytes {
            if let Some((f, _)) = file.take() {
                let _ = f.close().await;
            }
            if let Err(e) = rotate(&path, sink.keep_files) {
                tracing::warn!(path = %path.display(), error = %e, "rotation failed");
            }
        }
    }
    if let Some((f, _)) = file {
        let _ = f.close().await;
    }
    queue.set_live(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_paths() {
        let sink = FileSink {
            path: PathBuf::from("./data/cadent.log"),
            rotate_bytes: 1,
            keep_files: 1,
        };
        assert_eq!(shard_path(&sink, 3), PathBuf::from("./data/cadent-3.log"));
        assert_eq!(
            rotated(Path::new("a/b-0.log"), 2),
            PathBuf::from("a/b-0.log.2")
        );
    }
}

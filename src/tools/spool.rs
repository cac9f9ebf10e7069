//! `cadent spool inspect|verify DIR`: what the disk spools under `DIR` hold, and whether
//! every record in them is intact (the fsck that disk-buffer users ask for). Both only
//! read: they never truncate, delete or rewrite anything; run them on a live spool or a
//! copy.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::output::spool::{self, format, io::FsIo, Inspection};

/// `cadent spool ...`.
#[derive(clap::Subcommand, Debug)]
pub enum SpoolCommand {
    /// Print each destination's spool under DIR: segments, bytes, records, lines, oldest
    /// and newest spool time, corrupt records.
    Inspect(SpoolArgs),
    /// Check every record's checksum; exit 1 if any record is corrupt or data is missing.
    Verify(SpoolArgs),
}

/// Arguments of `cadent spool inspect|verify`.
#[derive(clap::Args, Debug)]
pub struct SpoolArgs {
    /// A spool root (`output.spool_dir`), or one spool directory.
    pub dir: PathBuf,
    /// Also print one line per segment (inspect).
    #[arg(long)]
    pub segments: bool,
}

/// Runs the command; `Ok(false)` when verify found damage (the caller exits 1). inspect
/// prints the same problems and exits 0.
pub fn run(cmd: SpoolCommand) -> io::Result<bool> {
    let (args, verify) = match cmd {
        SpoolCommand::Inspect(a) => (a, false),
        SpoolCommand::Verify(a) => (a, true),
    };
    let dirs = spool::find_spools(&FsIo, &args.dir)?;
    let mut out = io::stdout().lock();
    if dirs.is_empty() {
        writeln!(out, "no spool under {}", args.dir.display())?;
        return Ok(true);
    }
    let mut clean = true;
    for dir in &dirs {
        let ins = spool::inspect(&FsIo, dir).map_err(io::Error::other)?;
        let problems = ins.problems();
        clean &= problems.is_empty();
        if verify {
            let records: u64 = ins.segments.iter().map(|s| s.scan.records).sum();
            let status = if problems.is_empty() { "ok" } else { "CORRUPT" };
            writeln!(
                out,
                "{status} {}: {records} records in {} segments",
                label(&args.dir, dir),
                ins.segments.len()
            )?;
        } else {
            print_inspection(&mut out, &args.dir, &ins, args.segments)?;
        }
        for p in &problems {
            writeln!(out, "  problem: {p}")?;
        }
        for u in &ins.unknown_files {
            writeln!(
                out,
                "  note: unknown file {u} (not a spool file; left alone)"
            )?;
        }
    }
    // inspect reports; only verify judges.
    Ok(clean || !verify)
}

/// `path (destination NAME, shard N)` relative to the root given.
fn label(root: &Path, dir: &Path) -> String {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let rel = if rel.as_os_str().is_empty() {
        dir.display().to_string()
    } else {
        rel.display().to_string()
    };
    match spool::spool_owner(root, dir) {
        Some((name, shard)) => format!("{rel} (destination {name}, shard {shard})"),
        None => rel,
    }
}

fn print_inspection(
    out: &mut impl Write,
    root: &Path,
    ins: &Inspection,
    per_segment: bool,
) -> io::Result<()> {
    let (mut bytes, mut records, mut lines, mut pending_records, mut pending_lines) =
        (0, 0, 0, 0, 0);
    let (mut corrupt, mut corrupt_bytes, mut torn) = (0, 0, 0);
    for s in &ins.segments {
        bytes += s.scan.file_bytes;
        records += s.scan.records;
        lines += s.scan.lines;
        pending_records += s.scan.records - s.scan.records_before;
        pending_lines += s.scan.lines - s.scan.lines_before;
        corrupt += s.scan.corrupt_records;
        corrupt_bytes += s.scan.corrupt_bytes;
        if s.scan.tail_bytes > 0 {
            if s.uncommitted_tail {
                torn += s.scan.tail_bytes;
            } else {
                corrupt += 1;
                corrupt_bytes += s.scan.tail_bytes;
            }
        }
    }
    writeln!(out, "{}", label(root, &ins.dir))?;
    let range = match (ins.segments.first(), ins.segments.last()) {
        (Some(a), Some(b)) => format!(" ({}..{})", a.seq, b.seq),
        _ => String::new(),
    };
    writeln!(
        out,
        "  segments {}{range}, bytes {bytes}, records {records} ({pending_records} to deliver), lines {lines} ({pending_lines} to deliver)",
        ins.segments.len()
    )?;
    let oldest = ins.segments.iter().find_map(|s| s.scan.first_ms);
    let newest = ins.segments.iter().rev().find_map(|s| s.scan.last_ms);
    writeln!(out, "  oldest {}, newest {}", time(oldest), time(newest))?;
    writeln!(
        out,
        "  corrupt records {corrupt} ({corrupt_bytes} bytes), torn tail {torn} bytes (trimmed at the next open)"
    )?;
    match ins.ledger {
        Some(l) => writeln!(
            out,
            "  ledger: delivered up to {}, committed up to {}",
            l.ack, l.committed
        )?,
        None if ins.ledger_exists => writeln!(out, "  ledger: corrupt")?,
        None => writeln!(out, "  ledger: missing")?,
    }
    if per_segment {
        for s in &ins.segments {
            writeln!(
                out,
                "  {}: {} bytes, {} records, {} lines, {} .. {}, corrupt {}{}",
                format::segment_name(s.seq),
                s.scan.file_bytes,
                s.scan.records,
                s.scan.lines,
                time(s.scan.first_ms),
                time(s.scan.last_ms),
                s.scan.corrupt_records,
                if s.scan.header_ok { "" } else { ", bad header" }
            )?;
        }
    }
    Ok(())
}

/// Unix milliseconds as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn time(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".to_string();
    };
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = crate::protocol::regex_line::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::time;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(time(Some(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(Some(1_760_000_000_123)), "2025-10-09T08:53:20.123Z");
        assert_eq!(time(Some(951_782_400_000)), "2000-02-29T00:00:00.000Z");
        assert_eq!(time(None), "-");
    }
}

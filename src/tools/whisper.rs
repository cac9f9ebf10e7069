//! `cadent whisper create|info|update|fetch|dump`: whisper's command-line scripts, with
//! the same arguments and byte-identical output (`tests/it/whisper_cli.rs` compares them
//! with python whisper 1.1.10's scripts), so operators' habits carry over.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::whisper::format::{self, AggregationMethod, CreateMode, Header};
use crate::store::whisper::io::FileIo;
use crate::store::whisper::rules::parse_retention;
use crate::tools::pyfmt::{c_g, c_g_width, py_repr};

/// `cadent whisper ...`.
#[derive(clap::Subcommand, Debug)]
pub enum WhisperCommand {
    /// Create a whisper file (as whisper-create.py).
    Create(CreateArgs),
    /// Print a file's header (as whisper-info.py).
    Info(InfoArgs),
    /// Write points (as whisper-update.py): TIMESTAMP:VALUE..., or one per line on stdin.
    Update(UpdateArgs),
    /// Read a time range (as whisper-fetch.py).
    Fetch(FetchArgs),
    /// Print the header and every slot (as whisper-dump.py).
    Dump(DumpArgs),
}

/// Arguments of `cadent whisper create`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// File to create.
    pub path: PathBuf,
    /// Archives, `timePerPoint:timeToStore` (`60:1440`, `15m:8`, `1h:7d`, `12h:2y`).
    #[arg(required = true)]
    pub retentions: Vec<String>,
    /// Fraction of known points needed to propagate to a lower archive.
    #[arg(long = "xFilesFactor", default_value_t = 0.5)]
    pub x_files_factor: f64,
    /// average, sum, last, max, min, avg_zero, absmax, absmin.
    #[arg(long = "aggregationMethod", default_value = "average")]
    pub aggregation_method: String,
    /// Replace an existing file.
    #[arg(long)]
    pub overwrite: bool,
    /// Create a sparse file.
    #[arg(long)]
    pub sparse: bool,
    /// Allocate the file with fallocate.
    #[arg(long)]
    pub fallocate: bool,
}

/// Arguments of `cadent whisper info`.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// File to read.
    pub path: PathBuf,
    /// Print only this field.
    pub field: Option<String>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `cadent whisper update`.
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// File to write.
    pub path: PathBuf,
    /// Points, `TIMESTAMP:VALUE` (`N:VALUE` = now); read from stdin when none are given.
    pub points: Vec<String>,
}

/// Arguments of `cadent whisper fetch`.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// File to read.
    pub path: PathBuf,
    /// Start of the interval, Unix seconds (default: 24 hours ago).
    #[arg(long = "from", allow_hyphen_values = true)]
    pub from: Option<i64>,
    /// End of the interval, Unix seconds (default: now).
    #[arg(long, allow_hyphen_values = true)]
    pub until: Option<i64>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Drop `nulls`, `zeroes` or `empty` (both) values.
    #[arg(long)]
    pub drop: Option<String>,
}

/// Arguments of `cadent whisper dump`.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// File to read.
    pub path: PathBuf,
    /// Only `timestamp:value` lines, no headers.
    #[arg(long)]
    pub raw: bool,
}

/// Runs a subcommand; an `Err` is printed as whisper's scripts do (`[ERROR] ...`).
pub fn run(cmd: WhisperCommand) -> Result<(), String> {
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let r = match cmd {
        WhisperCommand::Create(a) => create(a, &mut out),
        WhisperCommand::Info(a) => info(a, &mut out),
        WhisperCommand::Update(a) => update(a),
        WhisperCommand::Fetch(a) => fetch(a, &mut out),
        WhisperCommand::Dump(a) => dump(a, &mut out),
    };
    out.flush().map_err(|e| e.to_string())?;
    r
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn err(e: impl std::fmt::Display) -> String {
    format!("[ERROR] {e}")
}

fn create(a: CreateArgs, out: &mut dyn Write) -> Result<(), String> {
    let method: AggregationMethod = a.aggregation_method.parse().map_err(err)?;
    let archives: Vec<(u64, u64)> = a
        .retentions
        .iter()
        .map(|r| parse_retention(r).map(|r| (u64::from(r.seconds_per_point), u64::from(r.points))))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    // Validate before touching the file system, so a bad retention leaves nothing behind.
    format::plan(&archives, a.x_files_factor, method).map_err(err)?;
    if a.path.exists() {
        if !a.overwrite {
            return Err(err(format!("File {} already exists!", a.path.display())));
        }
        writeln!(out, "Overwriting existing file: {}", a.path.display()).map_err(err)?;
        std::fs::remove_file(&a.path).map_err(err)?;
    }
    let mode = if a.sparse {
        CreateMode::Sparse
    } else if a.fallocate {
        CreateMode::Fallocate
    } else {
        CreateMode::ZeroFill
    };
    let mut io = FileIo::create_new(&a.path).map_err(err)?;
    if let Err(e) = format::create(&mut io, &archives, a.x_files_factor, method, mode) {
        let _ = std::fs::remove_file(&a.path);
        return Err(err(e));
    }
    let size = std::fs::metadata(&a.path).map_err(err)?.len();
    writeln!(out, "Created: {} ({size} bytes)", a.path.display()).map_err(err)
}

fn open_header(path: &Path) -> Result<(FileIo, Header), String> {
    let mut io = FileIo::open_read(path).map_err(err)?;
    let header = format::read_header(&mut io).map_err(err)?;
    Ok((io, header))
}

fn info(a: InfoArgs, out: &mut dyn Write) -> Result<(), String> {
    let (_, h) = open_header(&a.path)?;
    let size = std::fs::metadata(&a.path).map_err(err)?.len();
    let xff = py_repr(f64::from(h.x_files_factor));
    let scalars = [
        ("aggregationMethod", h.aggregation.name().to_string()),
        ("maxRetention", h.max_retention.to_string()),
        ("xFilesFactor", xff.clone()),
        ("fileSize", size.to_string()),
    ];
    let archive_fields = |ar: &format::ArchiveInfo| {
        [
            ("offset", ar.offset),
            ("secondsPerPoint", ar.seconds_per_point),
            ("points", ar.points),
            ("retention", ar.retention),
            ("size", ar.size),
        ]
    };
    let w = |out: &mut dyn Write, s: String| out.write_all(s.as_bytes()).map_err(err);
    if let Some(field) = &a.field {
        if field == "archives" {
            let items: Vec<String> = h
                .archives
                .iter()
                .map(|ar| {
                    let kv: Vec<String> = archive_fields(ar)
                        .iter()
                        .map(|(k, v)| format!("'{k}': {v}"))
                        .collect();
                    format!("{{{}}}", kv.join(", "))
                })
                .collect();
            return w(out, format!("[{}]\n", items.join(", ")));
        }
        return match scalars.iter().find(|(k, _)| k == field) {
            Some((_, v)) => w(out, format!("{v}\n")),
            None => {
                let valid = "aggregationMethod,maxRetention,xFilesFactor,archives,fileSize";
                w(
                    out,
                    format!("Unknown field \"{field}\". Valid fields are {valid}\n"),
                )?;
                Err(String::new())
            }
        };
    }
    if a.json {
        let mut s = String::from("{\n");
        s += &format!("  \"aggregationMethod\": \"{}\",\n", h.aggregation.name());
        s += &format!("  \"maxRetention\": {},\n", h.max_retention);
        s += &format!("  \"xFilesFactor\": {xff},\n");
        s += "  \"archives\": [\n";
        for (i, ar) in h.archives.iter().enumerate() {
            s += "    {\n";
            let fields = archive_fields(ar);
            for (j, (k, v)) in fields.iter().enumerate() {
                let comma = if j + 1 < fields.len() { "," } else { "" };
                s += &format!("      \"{k}\": {v}{comma}\n");
            }
            s += if i + 1 < h.archives.len() {
                "    },\n"
            } else {
                "    }\n"
            };
        }
        s += "  ],\n";
        s += &format!("  \"fileSize\": {size}\n}}\n");
        return w(out, s);
    }
    let mut s = String::new();
    for (k, v) in &scalars {
        s += &format!("{k}: {v}\n");
    }
    s += "\n";
    for (i, ar) in h.archives.iter().enumerate() {
        s += &format!("Archive {i}\n");
        for (k, v) in archive_fields(ar) {
            s += &format!("{k}: {v}\n");
        }
        s += "\n";
    }
    w(out, s)
}

/// `TIMESTAMP:VALUE` as whisper-update.py reads it (`N:` is now).
fn parse_point(s: &str, now: i64) -> Result<(i64, f64), String> {
    let s = s.trim();
    let (ts, value) = s
        .split_once(':')
        .ok_or_else(|| err(format!("{s:?} is not TIMESTAMP:VALUE")))?;
    let ts = if ts == "N" {
        now
    } else {
        ts.parse::<i64>()
            .map_err(|_| err(format!("invalid timestamp {ts:?}")))?
    };
    // python's float(): `inf`, `nan` and digit groups too.
    let value = crate::protocol::python_float(value.trim().as_bytes())
        .ok_or_else(|| err(format!("invalid value {value:?}")))?;
    Ok((ts, value))
}

fn update(a: UpdateArgs) -> Result<(), String> {
    let now = now();
    let lines: Vec<String> = if a.points.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .map_err(err)?
    } else {
        a.points
    };
    let points: Vec<(i64, f64)> = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_point(l, now))
        .collect::<Result<_, _>>()?;
    let mut io = FileIo::open(&a.path).map_err(err)?;
    let header = format::read_header(&mut io).map_err(err)?;
    // whisper-update.py takes the single-point path for one point: its rules differ.
    if let [(ts, value)] = points.as_slice() {
        format::update(&mut io, &header, *ts, *value, now).map_err(err)
    } else {
        let mut scratch = format::Scratch::new();
        format::update_many(&mut io, &header, &points, now, &mut scratch).map_err(err)
    }
}

fn fetch(a: FetchArgs, out: &mut dyn Write) -> Result<(), String> {
    let now = now();
    let from = a.from.unwrap_or(now - 86_400);
    let until = a.until.unwrap_or(now);
    let (mut io, header) = open_header(&a.path)?;
    let Some(f) = format::fetch(&mut io, &header, from, until, now).map_err(err)? else {
        return Err("No data in selected timerange".into());
    };
    let keep: fn(&Option<f64>) -> bool = match a.drop.as_deref() {
        None => |_| true,
        Some("nulls") => |v| v.is_some(),
        Some("zeroes") => |v| *v != Some(0.0),
        Some("empty") => |v| v.is_some() && *v != Some(0.0),
        Some(other) => {
            return Err(err(format!(
                "--drop {other:?}: expected nulls, zeroes or empty"
            )))
        }
    };
    let values: Vec<Option<f64>> = f.values.into_iter().filter(keep).collect();
    let mut s = String::new();
    if a.json {
        let items: Vec<String> = values
            .iter()
            .map(|v| v.map_or("null".to_string(), py_repr))
            .collect();
        s += &format!(
            "{{\n    \"start\" : {},\n    \"end\" : {},\n    \"step\" : {},\n    \"values\" : [{}]\n  }}\n",
            f.from,
            f.until,
            f.step,
            items.join(", ")
        );
    } else {
        let mut t = f.from;
        for v in &values {
            match v {
                Some(v) => s += &format!("{t}\t{v:.6}\n"),
                None => s += &format!("{t}\tNone\n"),
            }
            t += f.step;
        }
    }
    out.write_all(s.as_bytes()).map_err(err)
}

fn dump(a: DumpArgs, out: &mut dyn Write) -> Result<(), String> {
    if !a.path.exists() {
        return Err(err(format!(
            "File \"{}\" does not exist!",
            a.path.display()
        )));
    }
    let (mut io, h) = open_header(&a.path)?;
    let mut s = String::new();
    if !a.raw {
        s += "Meta data:\n";
        s += &format!("  aggregation method: {}\n", h.aggregation.name());
        s += &format!("  max retention: {}\n", h.max_retention);
        s += &format!(
            "  xFilesFactor: {}\n\n",
            c_g(f64::from(h.x_files_factor), 6)
        );
        for (i, ar) in h.archives.iter().enumerate() {
            s += &format!("Archive {i} info:\n");
            s += &format!("  offset: {}\n", ar.offset);
            s += &format!("  seconds per point: {}\n", ar.seconds_per_point);
            s += &format!("  points: {}\n", ar.points);
            s += &format!("  retention: {}\n", ar.retention);
            s += &format!("  size: {}\n\n", ar.size);
        }
    }
    let mut slots = Vec::new();
    for (i, ar) in h.archives.iter().enumerate() {
        if !a.raw {
            s += &format!("Archive {i} data:\n");
        }
        format::read_archive(&mut io, ar, &mut slots).map_err(err)?;
        for (n, (ts, v)) in slots.iter().enumerate() {
            if a.raw {
                s += &format!("{ts}:{}\n", c_g(*v, 35));
            } else {
                s += &format!("{n}: {ts}, {}\n", c_g_width(*v, 10, 35));
            }
        }
    }
    out.write_all(s.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_as_whisper_update_reads_them() {
        assert_eq!(parse_point("1700000000:1.5", 0), Ok((1_700_000_000, 1.5)));
        assert_eq!(parse_point("N:2", 42), Ok((42, 2.0)));
        assert!(parse_point("1700000000.5:1", 0).is_err());
        assert!(parse_point("x", 0).is_err());
        assert_eq!(parse_point("5:inf", 0), Ok((5, f64::INFINITY)));
        assert_eq!(parse_point("5:1_0", 0), Ok((5, 10.0)));
        assert!(parse_point("5:nan", 0).unwrap().1.is_nan());
    }
}

//! `cadent spool inspect|verify` on spools written by the library: the counts they print,
//! a torn tail past the committed end that verify accepts, and a flipped byte that makes
//! verify exit 1.

use std::path::Path;
use std::process::Command;

use cadent::output::spool::{destination_dir, format, io::FsIo, Limits, Spool};

use crate::support::{cadent_bin, temp_dir};

const T0: u64 = 1_760_000_000_000;

/// (exit ok, stdout) of `cadent spool <tool> <dir>`.
fn spool(tool: &str, dir: &Path) -> (bool, String) {
    let out = Command::new(cadent_bin())
        .args(["spool", tool])
        .arg(dir)
        .arg("--segments")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn inspect_and_verify_report_what_the_spool_holds_and_catch_damage() {
    let root = temp_dir("spool-tools");
    let a = destination_dir(&root, "127.0.0.1:2003", 0);
    let b = destination_dir(&root, "127.0.0.1:2004", 1);
    let (mut sa, _) = Spool::open(FsIo, &a, Limits::new(1 << 30, 4096)).unwrap();
    for i in 0..150u64 {
        let line = format!("a.b.c{i} {i} 1700000000\na.b.d{i} {i} 1700000000\n");
        sa.append(line.as_bytes(), 2, T0 + i * 1000).unwrap();
    }
    sa.commit().unwrap();
    // Deliver the first 10 records.
    let mut buf = Vec::new();
    let mut acked = 0;
    while acked < 10 {
        let r = sa.read(1, &mut buf).unwrap();
        sa.ack(r.records);
        acked += r.records;
    }
    sa.commit().unwrap();
    drop(sa);
    let (mut sb, _) = Spool::open(FsIo, &b, Limits::new(1 << 30, 4096)).unwrap();
    sb.append(b"x 1 1700000000\n", 1, T0).unwrap();
    sb.commit().unwrap();
    drop(sb);

    let (ok, out) = spool("inspect", &root);
    assert!(ok, "{out}");
    assert!(
        out.contains("(destination 127.0.0.1:2003, shard 0)"),
        "{out}"
    );
    assert!(out.contains("records 150 (140 to deliver)"), "{out}");
    assert!(out.contains("lines 300 (280 to deliver)"), "{out}");
    assert!(out.contains("oldest 2025-10-09T08:53:20.000Z"), "{out}");
    assert!(out.contains("newest 2025-10-09T08:55:49.000Z"), "{out}");
    assert!(
        out.contains("(destination 127.0.0.1:2004, shard 1)"),
        "{out}"
    );
    assert!(out.contains("corrupt records 0 (0 bytes)"), "{out}");
    let (ok, out) = spool("verify", &root);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        2,
        "{out}"
    );

    // A torn tail past the committed end: the residue of a crash, not damage.
    let segs = segments(&a);
    assert!(segs.len() >= 3, "{segs:?}");
    let last = segs.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[0x10, 0, 0, 0, 1, 2]);
    std::fs::write(last, &bytes).unwrap();
    let (ok, out) = spool("verify", &root);
    assert!(ok, "{out}");
    let (_, out) = spool("inspect", &root);
    assert!(out.contains("torn tail 6 bytes"), "{out}");

    // A flipped byte in a committed record: verify fails and names it.
    let mid = &segs[1];
    let mut bytes = std::fs::read(mid).unwrap();
    bytes[format::SEGMENT_HEADER_BYTES + 40] ^= 0xff;
    std::fs::write(mid, &bytes).unwrap();
    let (ok, out) = spool("verify", &root);
    assert!(!ok, "{out}");
    assert!(out.contains("CORRUPT"), "{out}");
    assert!(out.contains("1 corrupt records"), "{out}");
    let (ok, out) = spool("inspect", &root);
    assert!(ok, "inspect reports, verify judges: {out}");
    assert!(out.contains("corrupt records 1"), "{out}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_empty_dir_is_fine_and_a_missing_one_is_an_error() {
    let root = temp_dir("spool-tools-empty");
    let (ok, out) = spool("verify", &root);
    assert!(ok && out.contains("no spool under"), "{out}");
    let out = Command::new(cadent_bin())
        .args(["spool", "inspect"])
        .arg(root.join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    std::fs::remove_dir_all(&root).unwrap();
}

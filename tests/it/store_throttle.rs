//! The store's limits, seen from outside: each file below is written exactly once, so
//! its mtime is when its update_many (or create) ran. With writes_per_second low, the
//! writes per wall-clock second stay at the limit (never over by more than the one
//! millisecond's share the pacing allows, and at it while there is a backlog), and no
//! point is lost while the cache holds them; creates_per_minute likewise for new files.
//! Also: SIGTERM writes what it can within shutdown_timeout_ms, spills the rest, and the
//! next start reads it back and writes it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use crate::store_carbon::{store_driver, unix_now};
use crate::support::{free_port, send_tcp, wait_until, Cadent};

fn config(port: u16, writes_per_second: u64, creates_per_minute: u64, extra: &str) -> String {
    format!(
        r#"
[server]
admin_listen = "ADMIN"
shards = 2
shutdown_timeout_ms = 2500
{extra}
[telemetry]
prefix = ""
[[listen]]
name = "plain"
url = "tcp://127.0.0.1:{port}"
format = "graphite"
[[store]]
name = "whisper"
kind = "whisper"
path = "./data/whisper"
writes_per_second = {writes_per_second}
creates_per_minute = {creates_per_minute}
create_mode = "sparse"
[[route]]
match = {{ all = true }}
send_to = ["whisper"]
"#
    )
}

/// mtime of every .wsp under `root`, in ms since the epoch.
fn mtimes_ms(root: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "wsp") {
                let m = e.metadata().unwrap().modified().unwrap();
                out.push(m.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64);
            }
        }
    }
    out.sort_unstable();
    out
}

/// Counts per wall-clock second.
fn per_second(ms: &[u64]) -> BTreeMap<u64, u64> {
    let mut b = BTreeMap::new();
    for m in ms {
        *b.entry(m / 1000).or_default() += 1;
    }
    b
}

fn lines(names: &[String], now: i64, points: usize) -> String {
    let mut s = String::new();
    for n in names {
        for k in 0..points {
            s.push_str(&format!("{n} {k} {}\n", now - 60 * k as i64));
        }
    }
    s
}

/// Every name's file holds its `points` values (python whisper reads them).
fn assert_all_written(root: &Path, names: &[String], points: usize) {
    let tree = store_driver(json!({"cmd": "tree", "root": root, "now": unix_now()}));
    assert_eq!(tree.as_object().unwrap().len(), names.len(), "{tree}");
    for n in names {
        let rel = format!("{}.wsp", n.replace('.', "/"));
        let f = &tree[&rel];
        let known = f["archives"][0]["values"]
            .as_array()
            .unwrap_or_else(|| panic!("{rel}: {f}"))
            .iter()
            .filter(|v| !v.is_null())
            .count();
        assert_eq!(known, points, "{rel}: {f}");
    }
}

#[test]
fn writes_per_second_holds_and_no_point_is_lost() {
    let port = free_port();
    // One round of new names, written (created) at 8 per second: each file once.
    let names: Vec<String> = (0..48).map(|i| format!("thr.w{:02}.value", i)).collect();
    let c = Cadent::start("store-throttle-writes", &config(port, 8, 0, ""));
    let addr = format!("127.0.0.1:{port}");
    let now = unix_now();
    send_tcp(&addr, lines(&names, now, 3).as_bytes());
    let root = c.dir.join("data/whisper");
    // 48 writes at 8 per second: about 6 s. Midway the cache still holds points.
    std::thread::sleep(Duration::from_millis(2500));
    let st = c.stats()["stores"]["whisper"].clone();
    assert!(st["cache_points"].as_u64().unwrap() > 0, "{st}");
    assert!(st["throttled_writes"].as_u64().unwrap() > 0, "{st}");
    let done = wait_until(Duration::from_secs(30), || {
        c.stats()["stores"]["whisper"]["updates"].as_u64() == Some(names.len() as u64)
    });
    assert!(done, "{}", c.stats()["stores"]["whisper"]);
    let ms = mtimes_ms(&root);
    assert_eq!(ms.len(), names.len());
    let counts = per_second(&ms);
    // Never over the limit plus the pacing's one-ms share (0 at 8/s) and one.
    assert!(counts.values().all(|&n| n <= 9), "{counts:?}");
    // At the limit while the backlog lasts, every whole second inside the run. The limit
    // is taken per shard tick, so a tick the machine ran late moves a write into the
    // next second (file times show when each write finished); it never loses one: any
    // two neighbouring inner seconds hold at least 14.
    let inner: Vec<u64> = counts.values().copied().collect();
    assert!(inner.len() >= 6, "{counts:?}");
    let inner = &inner[1..inner.len() - 1];
    for pair in inner.windows(2) {
        assert!(pair[0] + pair[1] >= 14, "{counts:?}");
    }
    // 48 writes, 8 per second: the span is 47 spacings of 125 ms.
    let span = ms.last().unwrap() - ms.first().unwrap();
    assert!((5_500..=6_600).contains(&span), "{span} ms: {counts:?}");
    assert_all_written(&root, &names, 3);
}

#[test]
fn creates_per_minute_holds_and_waiting_names_keep_their_points() {
    let port = free_port();
    let names: Vec<String> = (0..12).map(|i| format!("thr.c{:02}.value", i)).collect();
    // 120 per minute: one new file every 500 ms; writes unlimited.
    let c = Cadent::start("store-throttle-creates", &config(port, 0, 120, ""));
    let addr = format!("127.0.0.1:{port}");
    let now = unix_now();
    send_tcp(&addr, lines(&names, now, 2).as_bytes());
    let root = c.dir.join("data/whisper");
    std::thread::sleep(Duration::from_millis(2000));
    let st = c.stats()["stores"]["whisper"].clone();
    assert!(st["throttled_creates"].as_u64().unwrap() > 0, "{st}");
    assert!(st["cache_points"].as_u64().unwrap() > 0, "{st}");
    let done = wait_until(Duration::from_secs(30), || {
        c.stats()["stores"]["whisper"]["creates"].as_u64() == Some(names.len() as u64)
    });
    assert!(done, "{}", c.stats()["stores"]["whisper"]);
    let ms = mtimes_ms(&root);
    let counts = per_second(&ms);
    assert!(counts.values().all(|&n| n <= 3), "{counts:?}");
    let span = ms.last().unwrap() - ms.first().unwrap();
    assert!((5_000..=6_200).contains(&span), "{span} ms: {counts:?}");
    assert_all_written(&root, &names, 2);
    let st = &c.stats()["stores"]["whisper"];
    assert_eq!(st["dropped_points_cache_full"], 0, "{st}");
}

#[test]
fn sigterm_spills_what_it_could_not_write_and_the_next_start_writes_it() {
    let port = free_port();
    let names: Vec<String> = (0..40).map(|i| format!("spill.n{:02}.value", i)).collect();
    // 4 writes a second and a 2.5 s deadline: most names are still cached at SIGTERM.
    let c = Cadent::start("store-spill", &config(port, 4, 0, ""));
    let dir = c.dir.clone();
    let addr = format!("127.0.0.1:{port}");
    let now = unix_now();
    send_tcp(&addr, lines(&names, now, 2).as_bytes());
    let taken = wait_until(Duration::from_secs(10), || {
        c.stats()["stores"]["whisper"]["points_cached"].as_u64() == Some(80)
    });
    assert!(taken);
    let log_dir = c.dir.clone();
    let status = c.stop();
    assert_eq!(
        status,
        0,
        "{}",
        std::fs::read_to_string(log_dir.join("cadent.log")).unwrap()
    );
    let spill_dir = dir.join("data/whisper/.cadent-spill");
    let spilled: Vec<_> = std::fs::read_dir(&spill_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!spilled.is_empty(), "no spill in {}", spill_dir.display());
    let written_before = mtimes_ms(&dir.join("data/whisper")).len();
    assert!(
        written_before < names.len(),
        "{written_before} files before the restart"
    );
    // The next start, on the same directory, unthrottled: it reads the spill back.
    let port2 = free_port();
    let c2 = Cadent::start_in(dir.clone(), &config(port2, 0, 0, ""));
    let done = wait_until(Duration::from_secs(30), || {
        let st = &c2.stats()["stores"]["whisper"];
        st["restored_points"].as_u64().unwrap_or(0) > 0 && st["cache_points"] == 0
    });
    assert!(done, "{}", c2.stats()["stores"]["whisper"]);
    assert_all_written(&dir.join("data/whisper"), &names, 2);
    // The spill files are gone once every shard read them.
    let left = wait_until(Duration::from_secs(5), || {
        std::fs::read_dir(&spill_dir)
            .map(|d| d.flatten().count() == 0)
            .unwrap_or(true)
    });
    assert!(left, "spill files left in {}", spill_dir.display());
}

#[test]
fn a_changed_schemas_file_applies_to_files_created_after_it() {
    // carbon-cache re-reads storage-schemas.conf every 60 s; cadent every
    // rules_reread_interval_ms. Files already made keep their archives.
    let port = free_port();
    let config = format!(
        r#"
[server]
admin_listen = "ADMIN"
shards = 2
[telemetry]
prefix = ""
[[listen]]
name = "plain"
url = "tcp://127.0.0.1:{port}"
format = "graphite"
[[store]]
name = "whisper"
kind = "whisper"
path = "./data/whisper"
schemas_file = "schemas.conf"
rules_reread_interval_ms = 200
writes_per_second = 0
creates_per_minute = 0
create_mode = "sparse"
[[route]]
match = {{ all = true }}
send_to = ["whisper"]
"#
    );
    let c = Cadent::start_with_files(
        "store-reread-schemas",
        &config,
        &[("schemas.conf", "[all]\npattern = .*\nretentions = 10s:1h\n")],
    );
    let addr = format!("127.0.0.1:{port}");
    let root = c.dir.join("data/whisper");
    // A whisper file's size: a 16-byte header, 12 bytes per archive, 12 per point.
    let size = |name: &str| {
        std::fs::metadata(root.join(format!("{}.wsp", name.replace('.', "/"))))
            .map(|m| m.len())
            .ok()
    };
    send_tcp(&addr, format!("before.x 1 {}\n", unix_now()).as_bytes());
    assert!(wait_until(Duration::from_secs(10), || size("before.x").is_some()));
    assert_eq!(size("before.x"), Some(16 + 12 + 12 * 360));

    std::fs::write(
        c.dir.join("schemas.conf"),
        "[all]\npattern = .*\nretentions = 1m:1d\n",
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || c
            .log()
            .contains("rules files changed: applied")),
        "{}",
        c.log()
    );
    send_tcp(
        &addr,
        format!("after.x 1 {}\nbefore.x 2 {}\n", unix_now(), unix_now()).as_bytes(),
    );
    assert!(wait_until(Duration::from_secs(10), || size("after.x").is_some()));
    assert_eq!(size("after.x"), Some(16 + 12 + 12 * 1440));
    assert_eq!(size("before.x"), Some(16 + 12 + 12 * 360));
    assert_eq!(c.stop(), 0);
}

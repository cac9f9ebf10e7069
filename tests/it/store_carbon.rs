//! cadent as carbon-cache: the same graphite and pickle traffic to a real carbon-cache
//! 1.1.10 (PyPI carbon, run with `carbon-cache.py --nodaemon`) and to `cadent serve`
//! with a whisper store, both with the same storage-schemas.conf and
//! storage-aggregation.conf. Python whisper then reads both trees: the same files at the
//! same paths (tagged series hashed as carbon hashes them), the same header, and the
//! same values in every archive.
//!
//! The traffic covers what makes files differ when a writer is wrong: several archives
//! and aggregation methods (sum, max, min, average, xFilesFactor 0 and 0.1), points
//! spread over several writes, repeated timestamps (the later point wins in both caches),
//! fractional timestamps (carbon keys its cache by float), points old enough to go
//! straight to a lower archive, tagged names in two tag orders (one file), a `~` prefix
//! (carbon strips it), `-1` ("now") timestamps repeated within a second (whisper keeps
//! the first), pickle frames with int and float timestamps, and values only
//! python's `float()` reads (`inf`, `-Infinity`, `1_000`, `1e999`; `nan` dropped by
//! both). Point ages stay
//! well away from the archive boundaries, so the seconds between the two writers' `now`
//! cannot move a point from one archive to the next.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cadent::protocol::pickle;
use serde_json::{json, Value};

use crate::support::{free_port, install_peers, run_peer, send_tcp, temp_dir, wait_until, Cadent};
use crate::whisper_diff::python;

pub(crate) const SCHEMAS: &str = "\
[counts]
pattern = \\.count$
retentions = 10s:10m,1m:2h,10m:1d

[tagged]
pattern = ;
retentions = 1m:6h

[default]
pattern = .*
retentions = 10s:30m,1m:6h
";

pub(crate) const AGGREGATION: &str = "\
[sum]
pattern = \\.count$
xFilesFactor = 0
aggregationMethod = sum

[max]
pattern = \\.max$
xFilesFactor = 0.1
aggregationMethod = max

[min]
pattern = ^min\\.
aggregationMethod = min

[default]
pattern = .*
xFilesFactor = 0.3
aggregationMethod = average
";

/// A real carbon-cache 1.1.10, stopped (by its PID) when dropped.
pub(crate) struct CarbonCache {
    child: Child,
    /// Plaintext receiver.
    pub line: String,
    /// Pickle receiver.
    pub pickle: String,
    /// CarbonLink.
    #[allow(dead_code)]
    pub query: String,
    /// Its whisper root.
    pub data: PathBuf,
    dir: PathBuf,
}

impl CarbonCache {
    /// Starts carbon-cache with these rules; waits (bounded) until it listens.
    pub fn start(tag: &str, schemas: &str, aggregation: &str) -> CarbonCache {
        install_peers();
        let py = python();
        let dir = temp_dir(tag);
        let conf = dir.join("conf");
        let storage = dir.join("storage");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(storage.join("log")).unwrap();
        let (line, pickle, query) = (free_port(), free_port(), free_port());
        std::fs::write(
            conf.join("carbon.conf"),
            format!(
                "[cache]\nSTORAGE_DIR = {s}\nLOCAL_DATA_DIR = {s}/whisper\nWHITELISTS_DIR = {s}/lists\n\
                 CONF_DIR = {c}\nLOG_DIR = {s}/log\nPID_DIR = {s}\nENABLE_LOGROTATION = False\nUSER =\n\
                 MAX_CACHE_SIZE = inf\nMAX_UPDATES_PER_SECOND = 100000\nMAX_CREATES_PER_MINUTE = inf\n\
                 LINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {line}\n\
                 ENABLE_UDP_LISTENER = False\nPICKLE_RECEIVER_INTERFACE = 127.0.0.1\n\
                 PICKLE_RECEIVER_PORT = {pickle}\nCACHE_QUERY_INTERFACE = 127.0.0.1\n\
                 CACHE_QUERY_PORT = {query}\nLOG_UPDATES = False\nLOG_CACHE_HITS = False\n\
                 LOG_CREATES = False\nENABLE_TAGS = False\nWHISPER_FALLOCATE_CREATE = True\n\
                 CARBON_METRIC_INTERVAL = 0\n",
                s = storage.display(),
                c = conf.display()
            ),
        )
        .unwrap();
        std::fs::write(conf.join("storage-schemas.conf"), schemas).unwrap();
        std::fs::write(conf.join("storage-aggregation.conf"), aggregation).unwrap();
        let script = py.parent().expect("python's bin").join("carbon-cache.py");
        assert!(script.is_file(), "carbon-cache.py beside {}", py.display());
        let log = std::fs::File::create(dir.join("carbon.log")).unwrap();
        let child = Command::new(&py)
            .arg(&script)
            .arg(format!("--config={}", conf.join("carbon.conf").display()))
            .args(["--nodaemon", "start"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start carbon-cache");
        let c = CarbonCache {
            child,
            line: format!("127.0.0.1:{line}"),
            pickle: format!("127.0.0.1:{pickle}"),
            query: format!("127.0.0.1:{query}"),
            data: storage.join("whisper"),
            dir,
        };
        let up = wait_until(Duration::from_secs(60), || {
            std::net::TcpStream::connect(&c.line).is_ok()
                && std::net::TcpStream::connect(&c.pickle).is_ok()
        });
        assert!(up, "carbon-cache did not listen:\n{}", c.log());
        c
    }

    /// What carbon printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("carbon.log")).unwrap_or_default()
    }
}

impl Drop for CarbonCache {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/it/store_driver.py` on one request.
pub(crate) fn store_driver(req: Value) -> Value {
    let py = python();
    let dir = temp_dir("store-driver");
    let input = dir.join("request.json");
    std::fs::write(&input, req.to_string()).unwrap();
    let mut cmd = Command::new(&py);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/store_driver.py"));
    let out = run_peer(cmd, &input, &dir, "driver", Duration::from_secs(120));
    let v = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("driver output: {e}\n{}", out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    v
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The names of the traffic, with the file name carbon gives each (tag orders fold).
fn names() -> Vec<String> {
    let mut n = Vec::new();
    for i in 0..8 {
        n.push(format!("servers.web{i:02}.cpu.user"));
        n.push(format!("servers.web{i:02}.requests.count"));
        n.push(format!("servers.web{i:02}.latency.max"));
    }
    for i in 0..4 {
        n.push(format!("min.queue{i}.depth"));
        n.push(format!("deep.a.b.c.d.e.f.m{i}"));
    }
    n.push("~tilde.metric".into());
    // A `/` in a tag value: the file is named by the hash.
    n.push("mounts.used;mountpoint=/var/log".into());
    n.push("tagged.requests;host=a;dc=x".into());
    n.push("tagged.requests;dc=x;host=a".into());
    n
}

/// Plaintext lines and pickle frames of one round of traffic: every name gets points
/// at these ages (seconds before `now`), value from `round` and the index. A name's
/// points of a round go over one connection (plaintext or pickle, alternating by name
/// and round), so both writers see them in one order. Tagged names (60 s slots) send in
/// the first two rounds only, whose points are minutes apart, and the two spellings of
/// one tagged series in one of them each: in later rounds a point of one round could
/// share a slot with a newer one of the round before, and which is kept would depend on
/// whether a writer took both rounds in one update (the newer timestamp wins) or one
/// after the other (the later write wins).
fn traffic(now: i64, round: u32, ages: &[f64], lines: &mut String, frames: &mut Vec<u8>) -> u64 {
    let all = names();
    let mut pickled: Vec<(String, f64, f64)> = Vec::new();
    let mut points = 0;
    for (i, name) in all.iter().enumerate() {
        let spelling = all[..i].iter().any(|n| n.starts_with("tagged.")) as u32;
        if name.starts_with("tagged.") && round != spelling || name.contains(';') && round > 1 {
            continue;
        }
        for (k, age) in ages.iter().enumerate() {
            let v = f64::from(round) * 100.0 + i as f64 + k as f64 / 4.0;
            let ts = now as f64 - age;
            points += 1;
            if (i + round as usize) % 2 == 0 {
                if ts.fract() == 0.0 {
                    lines.push_str(&format!("{name} {v} {}\n", ts as i64));
                } else {
                    lines.push_str(&format!("{name} {v} {ts}\n"));
                }
            } else {
                pickled.push((name.clone(), ts, v));
            }
        }
    }
    for chunk in pickled.chunks(100) {
        let pts: Vec<pickle::Point<'_>> = chunk
            .iter()
            .map(|(n, ts, v)| pickle::Point {
                name: n.as_bytes(),
                timestamp: *ts,
                value: *v,
            })
            .collect();
        pickle::encode_frame(&pts, frames);
    }
    points
}

/// Files [`special_values`] makes (the NaN-only names make none).
const SPECIAL_FILES: u64 = 6;

/// Points at `ts` (and 10 s later) with values only python's float() reads as numbers,
/// plaintext and pickled; returns the points that are not NaN. Each name keeps one sign
/// of infinity, so no rollup adds `inf` to `-inf`.
fn special_values(ts: i64, lines: &mut String, frames: &mut Vec<u8>) -> u64 {
    let plain = [
        ("special.inf", "inf", "Infinity"),
        ("special.neginf", "-inf", "-INFINITY"),
        ("special.grouped.count", "1_000", "2_5.5"),
        ("special.overflow.max", "1e999", "3"),
        ("special.nan", "nan", "NaN"),
        ("special.mixed", "nan", "7"),
    ];
    let mut kept = 0;
    for (name, a, b) in plain {
        lines.push_str(&format!("{name} {a} {ts}\n{name} {b} {}\n", ts + 10));
        kept += [a, b]
            .iter()
            .filter(|v| !v.to_lowercase().contains("nan"))
            .count() as u64;
    }
    let pickled = [
        ("special.pickled.inf", f64::INFINITY),
        ("special.pickled.nan", f64::NAN),
    ];
    let points: Vec<pickle::Point<'_>> = pickled
        .iter()
        .map(|(name, value)| pickle::Point {
            name: name.as_bytes(),
            timestamp: ts as f64,
            value: *value,
        })
        .collect();
    pickle::encode_frame(&points, frames);
    kept + 1
}

#[test]
fn the_same_traffic_makes_the_same_files_as_carbon_cache() {
    let carbon = CarbonCache::start("store-carbon-py", SCHEMAS, AGGREGATION);
    let (line, pick) = (free_port(), free_port());
    let cadent = start_with_rules(line, pick);
    let now = unix_now();
    // Rounds: recent points (archive 0), old points (straight to the lower archives),
    // repeats of earlier timestamps with new values, fractional timestamps. A writer may
    // take two rounds in one update or in two, so where points of two rounds share a
    // slot, the later round's is the newest there (a repeat of age 1000, not 1010, which
    // can share a minute with it): then either way keeps it.
    let rounds: [&[f64]; 4] = [
        &[30.0, 40.0, 50.0, 100.0, 250.0],
        &[1000.0, 1010.0, 1020.0, 4000.0, 9000.0],
        &[30.0, 100.0, 1000.0],
        &[60.5, 60.25, 70.75, 300.5],
    ];
    let mut expected_points = 0u64;
    // Three `-1` ("now") points for one name in one second: carbon stamps each with its
    // own time.time(), and whisper keeps the first. Sent well inside a 10 s slot, so
    // the two writers' clocks put them in the same one.
    let in_slot_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 10_000
    };
    while !(2_000..7_000).contains(&in_slot_ms()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for plain in [&carbon.line, &cadent_addr(line)] {
        send_tcp(
            plain,
            b"now.minus.one 1 -1\nnow.minus.one 2 -1\nnow.minus.one 3 -1\n",
        );
    }
    expected_points += 3;
    for (round, ages) in rounds.iter().enumerate() {
        let (mut lines, mut frames) = (String::new(), Vec::new());
        expected_points += traffic(now, round as u32, ages, &mut lines, &mut frames);
        if round == 0 {
            // Negative timestamps: carbon takes them and makes the file; whisper drops
            // the point (older than every archive). One each way in.
            lines.push_str("neg.plain 3 -100\n");
            let point = pickle::Point {
                name: b"neg.pickled",
                timestamp: -5.5,
                value: 1.0,
            };
            pickle::encode_frame(&[point], &mut frames);
            expected_points += 2;
        }
        if round < 2 {
            // Values as python's float() reads them: carbon stores infinities and digit
            // groups, and drops NaN (a name with nothing else gets no file).
            expected_points +=
                special_values(now - 40 - 200 * round as i64, &mut lines, &mut frames);
        }
        let ours = (cadent_addr(line), cadent_addr(pick));
        for (plain, pickled) in [(&carbon.line, &carbon.pickle), (&ours.0, &ours.1)] {
            send_tcp(plain, lines.as_bytes());
            send_tcp(pickled, &frames);
        }
        // Let both write some of it before the next round (so the files see several
        // updates, not one).
        std::thread::sleep(Duration::from_millis(700));
    }
    // cadent took every point and wrote them all (a write keeps the last of repeated
    // timestamps, so fewer may be written than taken).
    let all_written = wait_until(Duration::from_secs(60), || {
        let s = cadent.stats();
        let st = &s["stores"]["whisper"];
        st["points_cached"].as_u64() == Some(expected_points) && st["cache_points"] == 0
    });
    assert!(all_written, "cadent's store: {}", cadent.stats()["stores"]);
    // carbon's cache drains on its own schedule: compare until equal (bounded).
    let cadent_root = cadent.dir.join("data/whisper");
    let mut last = Value::Null;
    let equal = wait_until(Duration::from_secs(60), || {
        last = store_driver(json!({
            "cmd": "compare",
            "a": carbon.data,
            "b": cadent_root,
            "now": unix_now(),
        }));
        last["only_a"] == json!([]) && last["only_b"] == json!([]) && last["diffs"] == json!([])
    });
    assert!(
        equal,
        "carbon-cache and cadent wrote different trees: {last:#}\ncarbon log:\n{}",
        carbon.log()
    );
    // names() holds two spellings of one tagged series: one file; the two
    // negative-timestamp names, empty; `now.minus.one`; and the special values' files.
    assert_eq!(
        last["files"].as_u64(),
        Some(names().len() as u64 - 1 + 2 + 1 + SPECIAL_FILES),
        "{last}"
    );
    assert!(last["known_values_a"].as_u64().unwrap() > 300, "{last}");
    let st = &cadent.stats()["stores"]["whisper"];
    assert_eq!(st["dropped_points_nan"], 6, "{st}");
    for k in [
        "dropped_points_cache_full",
        "dropped_points_bad_name",
        "write_errors",
        "create_errors",
    ] {
        assert_eq!(st[k], 0, "{k}: {st}");
    }
}

fn cadent_addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn start_with_rules(line: u16, pick: u16) -> Cadent {
    Cadent::start_with_files(
        "store-carbon-cadent",
        &format!(
            r#"
[server]
admin_listen = "ADMIN"
shards = 2
[telemetry]
prefix = ""
[[listen]]
name = "plain"
url = "tcp://127.0.0.1:{line}"
format = "graphite"
# carbon-cache keeps names as sent (carbon-c-relay's cleansing would make ~ a _).
cleanse_names = false
[[listen]]
name = "pickle"
url = "tcp://127.0.0.1:{pick}"
format = "pickle"
[[store]]
name = "whisper"
kind = "whisper"
path = "./data/whisper"
schemas_file = "schemas.conf"
aggregation_file = "aggregation.conf"
writes_per_second = 0
creates_per_minute = 0
[[route]]
match = {{ all = true }}
send_to = ["whisper"]
"#
        ),
        &[("schemas.conf", SCHEMAS), ("aggregation.conf", AGGREGATION)],
    )
}

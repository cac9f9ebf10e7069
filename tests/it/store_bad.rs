//! Bad input to a whisper store: names that cannot be files (counted, nothing written
//! outside the root), corrupt and truncated whisper files in the tree (their points
//! counted and dropped, the other names written, no crash), and a disk that fills up (a
//! small tmpfs mounted here: creates fail and are counted, the points stay cached, and
//! once there is room again everything is written).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::store_carbon::{store_driver, unix_now};
use crate::support::{free_port, send_tcp, temp_dir, wait_until, Cadent};

fn config(port: u16, path: &str) -> String {
    format!(
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
cleanse_names = false
[[store]]
name = "whisper"
kind = "whisper"
path = "{path}"
writes_per_second = 0
creates_per_minute = 0
create_mode = "fallocate"
[[route]]
match = {{ all = true }}
send_to = ["whisper"]
"#
    )
}

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn names_that_cannot_be_files_are_counted_and_corrupt_files_skipped() {
    let port = free_port();
    let dir = temp_dir("store-bad");
    let root = dir.join("data/whisper");
    // A corrupt file and a truncated one where two names will go.
    std::fs::create_dir_all(root.join("bad")).unwrap();
    std::fs::write(root.join("bad/garbage.wsp"), b"this is not a whisper file").unwrap();
    let good_header = {
        use cadent::store::whisper::format::{self, AggregationMethod, CreateMode};
        use cadent::store::whisper::io::MemIo;
        let mut io = MemIo::new();
        format::create(
            &mut io,
            &[(60, 1440)],
            0.5,
            AggregationMethod::Average,
            CreateMode::ZeroFill,
        )
        .unwrap();
        io.bytes
    };
    std::fs::write(
        root.join("bad/truncated.wsp"),
        &good_header[..good_header.len() / 2],
    )
    .unwrap();
    let c = Cadent::start_in(dir.clone(), &config(port, "./data/whisper"));
    let now = unix_now();
    let long = "x".repeat(300);
    // A name whose path under the relative root is 4095 bytes (`./data/whisper/` +
    // 4076 + `.wsp`): PATH_MAX counts the absolute path, which is longer, so it is
    // refused, not retried forever.
    let deep = format!("{}.{}", vec!["p".repeat(200); 20].join("."), "q".repeat(56));
    assert_eq!("./data/whisper/".len() + deep.len() + ".wsp".len(), 4095);
    let mut text = String::new();
    for name in [
        "ok.one",
        "ok.two",
        "bad.garbage",
        "bad.truncated",
        "a..b",
        "trailing.",
        ".leading",
        &format!("too.{long}.long"),
        &deep,
    ] {
        for k in 0..3 {
            text.push_str(&format!("{name} {k} {}\n", now - 60 * k));
        }
    }
    // A name with a slash cannot come as plaintext without being a name: carbon's
    // plaintext takes it, so a store must refuse it.
    text.push_str(&format!("../../escape 1 {now}\n"));
    send_tcp(&format!("127.0.0.1:{port}"), text.as_bytes());
    // Every shard's counters published: the owner shards count the drops.
    let settled = wait_until(Duration::from_secs(20), || {
        let st = &c.stats()["stores"]["whisper"];
        st["cache_points"] == 0
            && st["points"].as_u64() == Some(28)
            && st["dropped_points_bad_name"].as_u64() == Some(16)
            && st["dropped_points_corrupt_file"].as_u64() == Some(6)
            && st["updated_points"].as_u64() == Some(6)
    });
    let st = c.stats()["stores"]["whisper"].clone();
    assert!(settled, "{st}");
    // 5 refused names x 3 points + the escape.
    assert_eq!(st["dropped_points_bad_name"], 16, "{st}");
    assert_eq!(
        (&st["write_errors"], &st["create_errors"]),
        (&json!(0), &json!(0)),
        "{st}"
    );
    assert_eq!(st["dropped_points_corrupt_file"], 6, "{st}");
    assert_eq!(st["updated_points"], 6, "{st}");
    assert_eq!(
        files(&dir),
        [
            "cadent.log",
            "cadent.toml",
            "data/whisper/bad/garbage.wsp",
            "data/whisper/bad/truncated.wsp",
            "data/whisper/ok/one.wsp",
            "data/whisper/ok/two.wsp",
        ]
    );
    // The corrupt files are left as they were.
    assert_eq!(
        std::fs::read(root.join("bad/garbage.wsp")).unwrap(),
        b"this is not a whisper file"
    );
    let tree = store_driver(json!({"cmd": "tree", "root": root, "now": unix_now()}));
    let known = |f: &str| {
        tree[f]["archives"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| !v.is_null())
            .count()
    };
    assert_eq!((known("ok/one.wsp"), known("ok/two.wsp")), (3, 3));
    assert!(c.stats()["stores"].is_object(), "still serving");
}

/// A tmpfs of `size` mounted at `dir` (root can; this test needs it), unmounted when
/// dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_counted_and_the_points_wait_for_room() {
    let port = free_port();
    let dir = temp_dir("store-full");
    let mnt = dir.join("disk");
    // Each file is 16 + 12 + 10080 x 12 bytes (carbon's default schema): ~118 KiB; 512 KiB
    // holds a few of the 20.
    let fs = Tmpfs::mount(&mnt, "512k");
    let c = Cadent::start_in(dir.clone(), &config(port, "./disk/whisper"));
    let now = unix_now();
    let names: Vec<String> = (0..20).map(|i| format!("full.m{i:02}")).collect();
    let mut text = String::new();
    for n in &names {
        for k in 0..2 {
            text.push_str(&format!("{n} {k} {}\n", now - 60 * k));
        }
    }
    send_tcp(&format!("127.0.0.1:{port}"), text.as_bytes());
    let failing = wait_until(Duration::from_secs(20), || {
        let st = &c.stats()["stores"]["whisper"];
        st["create_errors"].as_u64().unwrap_or(0) > 0 && st["points_cached"] == 40
    });
    let st = c.stats()["stores"]["whisper"].clone();
    assert!(failing, "{st}");
    assert!(st["cache_points"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["dropped_points_cache_full"], 0, "{st}");
    // No half-made file is left behind (every file there reads).
    let tree = store_driver(json!({"cmd": "tree", "root": mnt.join("whisper"), "now": unix_now()}));
    for (f, v) in tree.as_object().unwrap() {
        assert!(v.get("error").is_none(), "{f}: {v}");
    }
    // Room again: the waiting points are written.
    fs.resize("16m");
    let done = wait_until(Duration::from_secs(30), || {
        c.stats()["stores"]["whisper"]["cache_points"] == 0
    });
    assert!(done, "{}", c.stats()["stores"]["whisper"]);
    let tree = store_driver(json!({"cmd": "tree", "root": mnt.join("whisper"), "now": unix_now()}));
    assert_eq!(tree.as_object().unwrap().len(), names.len(), "{tree}");
    drop(c);
}

#[test]
fn read_api_bounds_and_corrupt_files() {
    let port = free_port();
    let dir = temp_dir("store-bad-read");
    let root = dir.join("data/whisper");
    let now = unix_now();
    let names: Vec<String> = (0..40).map(|i| format!("r.h{i:02}.v")).collect();
    store_driver(json!({
        "cmd": "create", "root": root, "names": names,
        "archives": [[60, 1440]], "points": [[now - 120, 1.0]],
    }));
    std::fs::write(root.join("r/h05/corrupt.wsp"), b"garbage, not whisper").unwrap();
    let cfg = config(port, "./data/whisper").replace(
        "create_mode = \"fallocate\"",
        "create_mode = \"fallocate\"\nread_series_max = 30\nread_response_bytes_max = 4096",
    );
    let c = Cadent::start_in(dir, &cfg);
    let get = |path: &str| crate::support::http_request(&c.admin, "GET", path, "");
    // Everything, and a globstar: more than read_series_max series.
    for q in [
        "/metrics/find/?query=r.*.*&format=json",
        "/render?target=r.*.v&from=-10min",
        "/metrics/expand?query=**",
    ] {
        let (status, body) = get(q);
        assert_eq!(status, 422, "{q}: {body}");
        assert!(body.contains("read_series_max"), "{q}: {body}");
    }
    // Under the series bound but over the response bound.
    let (status, body) = get("/render?target=r.h{0,1}*.v&from=-1d&format=json");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("read_response_bytes_max"), "{body}");
    // A corrupt file is left out of a find with intervals and of a render, and counted.
    let (status, body) = get("/metrics/find/?query=r.h05.*&format=json");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("r.h05.v") && !body.contains("corrupt"),
        "{body}"
    );
    let (status, body) = get("/render?target=r.h05.*&from=-10min&format=json");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("r.h05.v") && !body.contains("corrupt"),
        "{body}"
    );
    let read = &c.stats()["read_api"];
    assert_eq!(read["corrupt_files"], 2, "{read}");
    // And said in the log (at most every 10 s: the find's, here).
    assert!(
        c.log()
            .contains("corrupt or unreadable whisper files left out of the answer"),
        "{}",
        c.log()
    );
    assert_eq!(read["refused_too_many_series"], 3, "{read}");
    assert_eq!(read["refused_response_too_large"], 1, "{read}");
    // Bad requests are 400s.
    for q in [
        "/render?target=sumSeries(r.*)",
        "/render",
        "/render?target=a&from=-1fortnight",
        "/render?target=r.h05.v&maxDataPoints=0",
        "/metrics/find/?query=r.*&format=xml",
    ] {
        assert_eq!(get(q).0, 400, "{q}");
    }
    // `pretty` indents JSON as graphite-web's json.dumps(indent=2) does.
    let (status, body) = get("/metrics/find/?query=r.h05.*&format=json&pretty=1");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("[\n  {\n    \""), "{body}");
    // jQuery's `target[]` is graphite-web's second spelling of `target`.
    let (status, body) = get("/render?target%5B%5D=r.h05.v&from=-10min&format=json");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"target\": \"r.h05.v\""), "{body}");
}

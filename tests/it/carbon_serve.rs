//! carbon-aggregator through `cadent serve` (1 and 2 shards), against python carbon
//! 1.1.10's own aggregator code under a controlled clock (the driver of
//! `carbon_aggregator.rs`).
//!
//! cadent runs on the wall clock; the test makes its moments exact instead of
//! controlling them: points are sent at 300 ms into a second (so the second cadent reads
//! them in is the second they were sent in), cadent computes at whole seconds, and the
//! driver replays the same points at those seconds with a tick every second. Rules have
//! 1-3 s frequencies so a run takes seconds. Names are read on one shard and owned by
//! either (their output names are hashed to owners), and inputs are forwarded
//! (`forward_inputs`). Points come as plaintext and as carbon's pickle (carbon-relay's
//! way into carbon-aggregator), some of them infinite, and some plaintext `nan` that
//! both drop. Required: the same multiset of generated lines, and the same forwarded
//! names.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cadent::protocol::pickle;
use cadent::tools::SplitMix64;
use serde_json::{json, Value};

use crate::support::{free_port, run_peer, temp_dir, wait_until, Cadent, Sink};

const RULES: &str = "\
agg.<app>.requests.sum (2) = sum svc.<app>.*.requests
agg.<app>.requests.avg (3) = avg svc.<app>.*.requests
agg.<app>.latency.max (1) = max svc.<app>.*.latency
agg.<app>.latency.p90 (2) = p90 svc.<app>.*.latency
agg.<app>.all.count (3) = count svc.<app>.<<rest>>
agg.<host>.mem (2) = avg svc.*.<host>.mem
svc.web.h0.requests (2) = sum svc.web.h0.requests
";

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Sleeps until `ms` past the next whole second; returns that second.
fn next_second_at(ms: u64) -> i64 {
    let now = unix_now();
    let next = now.as_secs() + 1;
    let target = Duration::from_secs(next) + Duration::from_millis(ms);
    std::thread::sleep(target - now);
    next as i64
}

fn run(shards: usize, seed: u64) {
    let sink = Sink::start();
    let (port, pickle_port) = (free_port(), free_port());
    let cadent = Cadent::start(
        &format!("carbon-serve-{shards}"),
        &format!(
            r#"
[server]
shards = {shards}
admin_listen = "ADMIN"
[output]
flush_interval_ms = 10
[telemetry]
prefix = ""
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{port}"
format = "graphite"
[[listen]]
name = "inp"
url = "tcp://127.0.0.1:{pickle_port}"
format = "pickle"
[[cluster]]
name = "sink"
kind = "forward"
members = ["tcp://{}"]
[[aggregate]]
name = "carbon"
kind = "carbon"
rules_file = "RULES"
send_to = ["sink"]
[[route]]
from = ["in", "inp"]
match = {{ all = true }}
aggregate = "carbon"
"#,
            sink.addr
        )
        .replace("RULES", &{
            let dir = temp_dir("carbon-serve-rules");
            let p = dir.join("aggregation-rules.conf");
            std::fs::write(&p, RULES).unwrap();
            p.display().to_string()
        }),
    );
    let addr = format!("127.0.0.1:{port}");
    // Several connections, so shards (by SO_REUSEPORT) read different points; the last
    // two speak pickle.
    let pickle_addr = format!("127.0.0.1:{pickle_port}");
    let mut conns: Vec<TcpStream> = (0..6)
        .map(|i| TcpStream::connect(if i < 4 { &addr } else { &pickle_addr }).unwrap())
        .collect();
    let mut rng = SplitMix64(seed);
    let apps = ["web", "api"];
    let hosts = ["h0", "h1", "h2"];
    let kinds = ["requests", "latency", "mem"];
    let mut ops: Vec<Value> = Vec::new();
    let (mut sent, mut pickled, mut nans) = (0, 0, 0);
    let first = next_second_at(300);
    let mut now = first;
    for s in 0..10 {
        if s > 0 {
            now = next_second_at(300);
        }
        ops.push(json!([now]));
        for _ in 0..(2 + rng.below(12)) {
            let name = format!(
                "svc.{}.{}.{}",
                apps[rng.below(2)],
                hosts[rng.below(3)],
                kinds[rng.below(3)]
            );
            // Now and then an infinity (carbon takes it) or, in plaintext, a `nan`
            // (carbon's receiver drops it: no op for the driver, nothing forwarded).
            let value = match rng.below(20) {
                0 => f64::INFINITY,
                _ => (rng.below(4000) as f64 - 1000.0) / 8.0,
            };
            let ts = now - rng.below(3) as i64;
            let c = rng.below(conns.len());
            if rng.below(20) == 0 {
                let line = format!("{name} nan {ts}\n");
                conns[rng.below(4)].write_all(line.as_bytes()).unwrap();
                nans += 1;
            }
            if c < 4 {
                let line = format!("{name} {value} {ts}\n");
                conns[c].write_all(line.as_bytes()).unwrap();
            } else {
                let mut frame = Vec::new();
                let point = pickle::Point {
                    name: name.as_bytes(),
                    timestamp: ts as f64,
                    value,
                };
                pickle::encode_frame(&[point], &mut frame);
                conns[c].write_all(&frame).unwrap();
                pickled += 1;
            }
            ops.push(json!([now, name, value.to_bits(), ts]));
            sent += 1;
        }
        for c in &mut conns {
            c.flush().unwrap();
        }
    }
    // Let every buffer compute and expire (frequency 3 x 5 intervals, and some).
    let end = now + 25;
    for t in now + 1..=end {
        ops.push(json!([t]));
    }
    let stop_at = Duration::from_secs(end as u64 + 1);
    std::thread::sleep(stop_at.saturating_sub(unix_now()));
    drop(conns);

    let py = crate::whisper_diff::python();
    let dir = temp_dir(&format!("carbon-serve-driver-{shards}"));
    let scenario = dir.join("scenario.json");
    let doc = json!({"rules": RULES, "max_intervals": 5, "forward_all": true, "ops": ops});
    std::fs::write(&scenario, doc.to_string()).unwrap();
    let out = dir.join("carbon.json");
    let mut driver = Command::new(&py);
    driver
        .arg(crate::carbon_aggregator::DRIVER)
        .arg(&scenario)
        .arg(dir.join("aggregation-rules.conf"))
        .arg(&out);
    let peer = run_peer(
        driver,
        Path::new("/dev/null"),
        &dir,
        "driver",
        Duration::from_secs(60),
    );
    assert!(!peer.stderr.contains("Traceback"), "{}", peer.stderr);
    let carbon: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();

    let mut want: HashMap<String, i64> = HashMap::new();
    for v in carbon["generated"].as_array().unwrap() {
        *want.entry(v[1].as_str().unwrap().to_string()).or_default() += 1;
    }
    let fwd: usize = carbon["forwarded"].as_array().unwrap().len();
    let generated: i64 = want.values().sum();
    // The sink has every generated line and every forwarded input.
    assert!(
        wait_until(Duration::from_secs(10), || sink.total() as i64
            >= generated + fwd as i64),
        "shards={shards}: sink has {} lines, carbon made {generated} and forwarded {fwd}\n{}",
        sink.total(),
        cadent.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let got = sink.lines();
    let mut diff: Vec<String> = Vec::new();
    let mut forwarded = 0usize;
    let mut counts = want.clone();
    for (line, n) in &got {
        if line.starts_with("svc.") && !line.starts_with("svc.web.h0.requests ") {
            forwarded += *n as usize;
            continue;
        }
        *counts.entry(line.clone()).or_default() -= *n as i64;
    }
    for (line, n) in &counts {
        if *n != 0 {
            diff.push(format!("{:+} {line}", -n));
        }
    }
    diff.sort();
    // `svc.web.h0.requests` is both an input (not forwarded: its own output) and an
    // output; every other `svc.` line is a forwarded input.
    let fwd_not_own = carbon["forwarded"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v[1] != "svc.web.h0.requests")
        .count();
    assert!(
        diff.is_empty(),
        "shards={shards}: lines differ (+ cadent only, - carbon only):\n{}",
        diff.join("\n")
    );
    assert_eq!(forwarded, fwd_not_own, "shards={shards}: forwarded inputs");
    assert!(
        generated > 50 && sent > 20 && pickled > 3,
        "{generated} {sent} {pickled}"
    );
    let stats = cadent.stats();
    assert_eq!(
        stats["aggregators"]["carbon"]["dropped_other"], nans,
        "{stats}"
    );
    eprintln!(
        "carbon_serve shards={shards}: {sent} points and {nans} nan, {generated} generated \
         lines equal"
    );
}

#[test]
fn serve_aggregates_as_carbon_aggregator_does() {
    let a = std::thread::spawn(|| run(1, 7));
    let b = std::thread::spawn(|| run(2, 11));
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn a_changed_rules_file_is_applied_without_a_reload() {
    // carbon's aggregator looks at its rules file every 10 s and uses a changed one; so
    // does cadent, every rules_reread_interval_ms. A file that no longer parses keeps
    // the running rules, and says so once.
    let sink = Sink::start();
    let port = free_port();
    let dir = temp_dir("carbon-serve-reread-rules");
    let rules = dir.join("aggregation-rules.conf");
    std::fs::write(&rules, "v1.<app>.sum (1) = sum in.<app>.x\n").unwrap();
    let cadent = Cadent::start(
        "carbon-serve-reread",
        &format!(
            r#"
[server]
shards = 2
admin_listen = "ADMIN"
[output]
flush_interval_ms = 10
[telemetry]
prefix = ""
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{port}"
format = "graphite"
[[cluster]]
name = "sink"
kind = "forward"
members = ["tcp://{}"]
[[aggregate]]
name = "carbon"
kind = "carbon"
rules_file = "{}"
rules_reread_interval_ms = 200
forward_inputs = false
send_to = ["sink"]
[[route]]
match = {{ all = true }}
aggregate = "carbon"
"#,
            sink.addr,
            rules.display()
        ),
    );
    let mut conn = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    // Feeds a point a tenth of a second until an output line starting with `name `
    // arrives (bounded).
    let mut feed_until = |name: &str| {
        let prefix = format!("{name} ");
        wait_until(Duration::from_secs(15), || {
            let ts = unix_now().as_secs();
            conn.write_all(format!("in.a.x 5 {ts}\n").as_bytes())
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            sink.lines().keys().any(|l| l.starts_with(&prefix))
        })
    };
    assert!(feed_until("v1.a.sum"), "{}", cadent.log());
    std::fs::write(&rules, "v2.<app>.sum (1) = sum in.<app>.x\n").unwrap();
    assert!(feed_until("v2.a.sum"), "{}", cadent.log());
    assert!(cadent.log().contains("rules files changed: applied"));

    // Broken: the v2 rules go on, and the error is logged once however often it is seen.
    std::fs::write(&rules, "v3 this is not a rule\n").unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let before = sink
        .lines()
        .keys()
        .filter(|l| l.starts_with("v2.a.sum "))
        .count();
    assert!(wait_until(Duration::from_secs(15), || {
        let ts = unix_now().as_secs();
        conn.write_all(format!("in.a.x 5 {ts}\n").as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        sink.lines()
            .keys()
            .filter(|l| l.starts_with("v2.a.sum "))
            .count()
            > before + 1
    }));
    let log = cadent.log();
    assert_eq!(
        log.matches("rules file changed but cannot be used").count(),
        1,
        "{log}"
    );
    assert!(!sink.lines().keys().any(|l| l.starts_with("v3")));
    assert_eq!(cadent.stop(), 0);
}

//! cadent's carbon-aggregator engine against python carbon 1.1.10's own aggregator code.
//!
//! The peer is carbon's code driven by `carbon_aggregator_driver.py` with a controlled
//! clock, not the daemon over sockets: the daemon's LoopingCalls run on the wall clock
//! from each name's first point, so its output times (and which partial values it
//! emits) change from run to run; the driver makes every emission time exact (its
//! docstring says what it replaces). The same seeded scenario (rules, one tick per
//! second, points on time, late, early and too old) goes through both, and the test
//! requires:
//! - the same forwarded input points (`FORWARD_ALL`), in order;
//! - every line cadent emits, byte for byte and at the same second, emitted by carbon;
//! - every carbon line cadent does not emit to be carbon's lone re-creation of a bucket
//!   for a too-old point (cadent drops and counts those: `dropped_too_old` must equal
//!   the (point, rule) matches of the too-old points sent).
//!
//! Rules cover every carbon method (sum avg min max count p50 p75 p80 p90 p95 p99
//! p999), `<x>`, `<<x>>`, `*`, `h*`, frequencies 10/30/60, two rules into one output
//! name, a rule whose output is its own input, and patterns in Python's regex syntax
//! that the regex crate reads otherwise (`[0-9*]` after carbon's rewrite, `[[:digit:]]`,
//! `{,1}`, `(?#...)`, `\Z`). Names fall silent for long enough
//! that their buffers expire and restart on a new schedule.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cadent::aggregate::carbon::{CarbonAggregator, CarbonConfig, Rules};
use cadent::tools::SplitMix64;
use serde_json::{json, Value};

pub(crate) const DRIVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/carbon_aggregator_driver.py"
);
const CARBON_VERSION: &str = "1.1.10";

const RULES: &str = "\
# every carbon method, several frequencies and capture forms
agg.<app>.requests.sum (10) = sum svc.<app>.*.requests
agg.<app>.requests.avg (30) = avg svc.<app>.*.requests
agg.<app>.latency.min (60) = min svc.<app>.*.latency
agg.<app>.latency.max (10) = max svc.<app>.*.latency
agg.<app>.all.count (30) = count svc.<app>.<<rest>>
agg.<app>.latency.p50 (10) = p50 svc.<app>.*.latency
agg.<app>.latency.p75 (30) = p75 svc.<app>.*.latency
agg.<app>.latency.p80 (60) = p80 svc.<app>.*.latency
agg.<app>.latency.p90 (10) = p90 svc.<app>.*.latency
agg.<app>.latency.p95 (30) = p95 svc.<app>.*.latency
agg.<app>.latency.p99 (60) = p99 svc.<app>.*.latency
agg.<app>.latency.p999 (10) = p999 svc.<app>.*.latency
agg.<path>.perhost (60) = sum svc.<<path>>.requests
agg.<app>.req_hosts (10) = count svc.<app>.h*.requests
agg.<host>.mem (30) = avg svc.*.<host>.mem

# two rules into one name: the first configures it (10 s, sum), both add values
agg.dup (10) = sum svc.web.*.requests
agg.dup (60) = max svc.api.*.requests

# output equal to its input: not forwarded
svc.web.h0.requests (10) = sum svc.web.h0.requests

# Python 3.11 `re` syntax where the regex crate reads the same text otherwise. carbon
# makes `h[0-9*]` into `h[0-9[^.]*]`: the class `0-9 [ ^ .` repeated, then a literal
# `]`, so no host here matches it; nor `[[:digit:]]` (a class of `[:digt`, then `]`);
# `{,1}` is `{0,1}`; a `(?#...)` comment; `\\Z` is the end.
agg.hglob (10) = sum svc.web.h[0-9*].requests
agg.xposix (10) = sum svc.api.x[[:digit:]].requests
agg.xopt (30) = sum svc.api.x{,1}[12].latency
agg.dbcomment (10) = max svc.db(?#note).*.mem\\Z
";

const APPS: &[&str] = &["web", "api", "db"];
const HOSTS: &[&str] = &["h0", "h1", "h2", "h3", "x1", "x2"];
const KINDS: &[&str] = &["requests", "latency", "mem"];

/// The scenario's draws, on the crate's seeded generator.
struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n as usize) as u64
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
    fn value(&mut self) -> f64 {
        match self.below(6) {
            0 => self.below(100) as f64,
            1 => (self.below(4000) as f64 - 2000.0) / 8.0,
            2 => self.below(1_000_000) as f64 / 1000.0 + 1e6,
            3 => (self.below(1000) as f64) * 0.1,
            4 => 1.0 / (1 + self.below(13)) as f64,
            _ => -(self.below(50) as f64) * 1.7,
        }
    }
}

enum Op {
    Tick(i64),
    Point {
        now: i64,
        name: String,
        value: f64,
        ts: i64,
        too_old: bool,
    },
}

/// Seconds of each phase: everyone talks, then only `db` (the rest expire), then all.
const PHASES: &[(i64, bool)] = &[(300, true), (600, false), (250, true)];
const START: i64 = 1_700_000_003;

fn scenario(seed: u64) -> Vec<Op> {
    let mut rng = Rng(SplitMix64(seed));
    let mut ops = Vec::new();
    let mut last_seen: HashMap<String, i64> = HashMap::new();
    let mut now = START;
    for &(len, everyone) in PHASES {
        for _ in 0..len {
            ops.push(Op::Tick(now));
            for _ in 0..rng.below(7) {
                let app = if everyone { rng.pick(APPS) } else { "db" };
                let name = format!("svc.{app}.{}.{}", rng.pick(HOSTS), rng.pick(KINDS));
                let recent = last_seen.get(&name).is_some_and(|&t| now - t <= 10);
                // Too old only for names fed in the last 10 s: their output names are
                // live, so carbon's bogus bucket does not start a new schedule (which
                // would shift its later emissions, a difference of the same cause).
                let (ts, too_old) = if recent && rng.chance(4) {
                    (now - 700 - rng.below(200) as i64, true)
                } else if rng.chance(5) {
                    (now + 1 + rng.below(14) as i64, false)
                } else {
                    (now - rng.below(15) as i64, false)
                };
                if !too_old {
                    last_seen.insert(name.clone(), now);
                }
                let value = rng.value();
                ops.push(Op::Point {
                    now,
                    name,
                    value,
                    ts,
                    too_old,
                });
            }
            now += 1;
        }
    }
    // Let every buffer run its last computes and expire.
    for _ in 0..500 {
        ops.push(Op::Tick(now));
        now += 1;
    }
    ops
}

fn python_has_carbon(py: &Path) -> bool {
    let out = Command::new(py)
        .args([
            "-c",
            "from importlib.metadata import version; import carbon.aggregator.rules; \
             print(version('carbon'))",
        ])
        .output();
    matches!(out, Ok(o) if o.status.success()
        && String::from_utf8_lossy(&o.stdout).trim() == CARBON_VERSION)
}

fn check_seed(seed: u64) {
    let py = crate::whisper_diff::python();
    assert!(
        python_has_carbon(&py),
        "python carbon {CARBON_VERSION} is not importable by {}: run scripts/install-peers.sh",
        py.display()
    );
    let ops = scenario(seed);
    let dir = crate::support::temp_dir("carbonagg");
    let scenario_path = dir.join("scenario.json");
    let json_ops: Vec<Value> = ops
        .iter()
        .map(|op| match op {
            Op::Tick(now) => json!([now]),
            Op::Point {
                now,
                name,
                value,
                ts,
                ..
            } => json!([now, name, value.to_bits(), ts]),
        })
        .collect();
    let doc = json!({"rules": RULES, "max_intervals": 5, "forward_all": true, "ops": json_ops});
    std::fs::write(&scenario_path, doc.to_string()).unwrap();
    let out_path = dir.join("carbon.json");
    let mut driver = Command::new(&py);
    driver
        .arg(DRIVER)
        .arg(&scenario_path)
        .arg(dir.join("aggregation-rules.conf"))
        .arg(&out_path);
    // A failure or a run past the limit panics with what the driver said.
    let peer = crate::support::run_peer(
        driver,
        Path::new("/dev/null"),
        &dir,
        "driver",
        Duration::from_secs(60),
    );
    assert!(
        !peer.stderr.contains("Traceback"),
        "carbon raised inside the run:\n{}",
        peer.stderr
    );
    let carbon: Value = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    assert_eq!(carbon["version"], CARBON_VERSION);

    // cadent, same ops.
    let rules = Rules::parse(RULES).expect("the test's rules parse");
    let mut agg = CarbonAggregator::new(CarbonConfig::default(), rules);
    let mut ours: Vec<(i64, String)> = Vec::new();
    let mut forwarded: Vec<(i64, String)> = Vec::new();
    let mut too_old_matches = 0u64;
    let mut buf = Vec::new();
    let mut points = 0;
    for op in &ops {
        let now = match op {
            Op::Tick(now) | Op::Point { now, .. } => *now,
        };
        buf.clear();
        agg.flush(now, &mut buf);
        for line in std::str::from_utf8(&buf).unwrap().lines() {
            ours.push((now, line.to_string()));
        }
        if let Op::Point {
            name,
            value,
            ts,
            too_old,
            ..
        } = op
        {
            points += 1;
            let r = agg.ingest(name.as_bytes(), *value, *ts, now);
            if r.forward {
                forwarded.push((now, name.clone()));
            }
            if *too_old {
                too_old_matches += u64::from(r.matched);
            }
        }
    }

    let theirs_fwd: Vec<(i64, String)> = carbon["forwarded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v[0].as_i64().unwrap(), v[1].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        forwarded, theirs_fwd,
        "seed {seed}: forwarded points differ"
    );

    let mut theirs: HashMap<(i64, String), usize> = HashMap::new();
    for v in carbon["generated"].as_array().unwrap() {
        let key = (v[0].as_i64().unwrap(), v[1].as_str().unwrap().to_string());
        *theirs.entry(key).or_default() += 1;
    }
    let carbon_lines: usize = theirs.values().sum();
    let mut missing = Vec::new();
    for l in &ours {
        match theirs.get_mut(l) {
            Some(n) if *n > 0 => *n -= 1,
            _ => missing.push(l.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "seed {seed}: {} of {} cadent lines not emitted by carbon, first: {:?}",
        missing.len(),
        ours.len(),
        &missing[..missing.len().min(5)]
    );
    let extra: Vec<&(i64, String)> = theirs
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(k, _)| k)
        .collect();
    for (now, line) in &extra {
        let ts: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            ts < now - 600,
            "seed {seed}: carbon emitted {line:?} at {now} and cadent did not"
        );
    }
    let c = agg.counters();
    assert_eq!(
        c.dropped_too_old, too_old_matches,
        "seed {seed}: too-old drops"
    );
    assert!(
        too_old_matches > 0 && !extra.is_empty(),
        "seed {seed}: no too-old case ran"
    );
    assert_eq!(agg.keys(), 0, "seed {seed}: every name expired at the end");
    assert!(c.keys_created > c.keys_expired / 2 && c.keys_expired == c.keys_created);
    eprintln!(
        "seed {seed}: {points} points, {} cadent lines = carbon's {} minus {} lone too-old \
         buckets; {} forwarded; {} names created (re-created after expiry included)",
        ours.len(),
        carbon_lines,
        carbon_lines - ours.len(),
        forwarded.len(),
        c.keys_created
    );
}

#[test]
fn same_lines_as_carbon_aggregator() {
    for seed in [1, 2, 3] {
        check_seed(seed);
    }
}

/// The methods carbon lacks (`median`, `variance`, `stddev`) against a running
/// carbon-c-relay 3.7.3 aggregator, whose definitions they follow. c-relay writes
/// `%f` (six decimals), so values agree to 5e-7. Every group's values carry one
/// timestamp, so they share a c-relay bucket whatever its alignment. The values are
/// whole numbers, for the reason given where they are made.
#[test]
fn median_variance_stddev_as_carbon_c_relay() {
    use cadent::aggregate::carbon::method::{compute, Acc, Value};
    use cadent::aggregate::carbon::Method;
    use std::io::Write;

    let bin = crate::support::peer_bin("carbon-c-relay", &[]);
    let dir = crate::support::temp_dir("carbonagg-crelay");
    let sink = crate::support::Sink::start();
    let listen = crate::support::free_port();
    let conf = dir.join("relay.conf");
    std::fs::write(
        &conf,
        format!(
            "listen type linemode 127.0.0.1:{listen} proto tcp ;\n\
             cluster sink forward {} ;\n\
             aggregate ^in\\.(g[0-9]+)\\.[0-9]+$\n\
               every 1 seconds expire after 2 seconds timestamp at start of bucket\n\
               compute median write to out.\\1.median\n\
               compute variance write to out.\\1.variance\n\
               compute stddev write to out.\\1.stddev\n\
               send to sink stop ;\n",
            sink.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(&bin)
        .arg("-f")
        .arg(&conf)
        .arg("-s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start carbon-c-relay");
    let addr = format!("127.0.0.1:{listen}");
    let mut conn = None;
    crate::support::wait_until(Duration::from_secs(10), || {
        conn = std::net::TcpStream::connect(&addr).ok();
        conn.is_some()
    });
    let Some(mut conn) = conn else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("carbon-c-relay did not listen on {addr}");
    };

    let mut rng = Rng(SplitMix64(42));
    let groups = 40;
    let mut expected = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut text = String::new();
    for g in 0..groups {
        let n = 1 + rng.below(30) as usize;
        // Whole numbers: c-relay sorts with `return *l - *r;` truncated to int, so
        // values less than 1 apart may be left out of order and its median is then
        // off (seen: -16 for -16.4375). cadent sorts exactly; on integers the two
        // orders agree.
        let values: Vec<f64> = (0..n).map(|_| rng.below(2000) as f64 - 1000.0).collect();
        for (i, v) in values.iter().enumerate() {
            text.push_str(&format!("in.g{g}.{i} {v} {now}\n"));
        }
        for (method, suffix) in [
            (Method::Median, "median"),
            (Method::Variance, "variance"),
            (Method::Stddev, "stddev"),
        ] {
            let mut acc = Acc::default();
            values.iter().for_each(|&v| acc.add(method, v));
            let Value::Float(v) = compute(method, &acc, &values, &mut Vec::new()) else {
                unreachable!()
            };
            expected.push((format!("out.g{g}.{suffix}"), v));
        }
    }
    conn.write_all(text.as_bytes()).unwrap();
    drop(conn);
    let arrived = crate::support::wait_until(Duration::from_secs(20), || {
        sink.total() >= expected.len() as u64
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        arrived,
        "c-relay sent {} of {} lines",
        sink.total(),
        expected.len()
    );

    let got: HashMap<String, f64> = sink
        .lines()
        .keys()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_string(), f[1].parse().unwrap())
        })
        .collect();
    for (name, want) in &expected {
        let theirs = got
            .get(name)
            .unwrap_or_else(|| panic!("c-relay sent no {name}"));
        assert!(
            (theirs - want).abs() <= 5e-7,
            "{name}: c-relay {theirs}, cadent {want}"
        );
    }
    assert_eq!(got.len(), expected.len());
}

//! The statsd engine against the real Etsy statsd 0.9.0 (npm, run with node on
//! 127.0.0.1, its graphite backend pointed at a listener here): every case's datagrams go
//! to statsd and to `StatsdEngine`, flush by flush, and the graphite lines must be
//! identical and in the same order.
//!
//! How flushes line up: statsd flushes every `flushInterval` and opens one TCP connection
//! per flush. The test accepts flush k, reads it to the end, and only then sends step
//! k+1's datagrams, so they land in flush k+1 (statsd has already cleared its state when
//! it connects). The engine gets the same datagrams and is flushed at flush k+1's own
//! timestamp, so `timestamp_lag` and the timestamps compare exactly too.
//!
//! What the comparison leaves out, and why: the *values* of
//! `graphiteStats.calculationtime` and `processing_time` (milliseconds of CPU time) and
//! of `graphiteStats.last_flush`, `flush_time` and `flush_length` (describe the previous
//! TCP write: its clock time, duration, and a byte count that includes those varying
//! numbers), and the *timestamps* of the four `graphiteStats.*` lines Etsy adds when the
//! connection opens (its clock then, not the flush's). Their names and places are
//! compared; `last_exception` (0) is compared in full.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cadent::aggregate::jsnum::{js_number_string, js_to_number};
use cadent::aggregate::statsd::{
    Bin, GraphiteWriteStats, HistogramRule, StatsdConfig, StatsdEngine,
};

use crate::support::{free_port, run_peer, temp_dir};

const NODE_MODULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.peers/node/node_modules");

pub(crate) fn statsd_js() -> PathBuf {
    let p = Path::new(NODE_MODULES).join("statsd/stats.js");
    assert!(
        p.exists(),
        "Etsy statsd 0.9.0 is not installed at {}: run scripts/install-peers.sh",
        p.display()
    );
    p
}

pub(crate) fn node() -> &'static str {
    let ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "node is not on PATH: run scripts/install-peers.sh");
    "node"
}

/// One statsd process's worth of input: a config and the datagrams of each step
/// (a step is what lands in one flush; an empty step is an idle flush).
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) config: StatsdConfig,
    pub(crate) steps: Vec<Vec<Vec<u8>>>,
}

fn step(datagrams: &[&str]) -> Vec<Vec<u8>> {
    datagrams.iter().map(|d| d.as_bytes().to_vec()).collect()
}

/// One datagram of two lines over 16 KiB: a long name, a timer of 4000 values.
fn long_lines() -> Vec<Vec<u8>> {
    let timer = vec!["1|ms"; 4000].join(":");
    vec![format!("{}:1|c\nlong.timer:{timer}", "n".repeat(17_000)).into_bytes()]
}

fn idle() -> Vec<Vec<u8>> {
    Vec::new()
}

/// The config as Etsy reads it (its config file is a JavaScript object literal).
pub(crate) fn etsy_config(c: &StatsdConfig, udp: u16, mgmt: u16, graphite: u16) -> String {
    use serde_json::{json, Map, Value};
    let mut m = Map::new();
    m.insert("port".into(), json!(udp));
    m.insert("address".into(), json!("127.0.0.1"));
    m.insert("mgmt_port".into(), json!(mgmt));
    m.insert("mgmt_address".into(), json!("127.0.0.1"));
    m.insert("graphiteHost".into(), json!("127.0.0.1"));
    m.insert("graphitePort".into(), json!(graphite));
    m.insert("flushInterval".into(), json!(c.flush_interval_ms));
    m.insert("percentThreshold".into(), json!(c.percent_thresholds));
    let hist: Vec<Value> = c
        .histograms
        .iter()
        .map(|h| {
            let bins: Vec<Value> = h
                .bins
                .iter()
                .map(|b| match b {
                    Bin::Inf => json!("inf"),
                    Bin::Below(v) => json!(v),
                })
                .collect();
            json!({"metric": h.metric, "bins": bins})
        })
        .collect();
    m.insert("histogram".into(), Value::Array(hist));
    if !c.calculated_timer_metrics.is_empty() {
        m.insert(
            "calculatedTimerMetrics".into(),
            json!(c.calculated_timer_metrics),
        );
    }
    let mut g = Map::new();
    g.insert("legacyNamespace".into(), json!(c.legacy_namespace));
    g.insert("globalPrefix".into(), json!(c.global_prefix));
    g.insert("prefixCounter".into(), json!(c.prefix_counter));
    g.insert("prefixTimer".into(), json!(c.prefix_timer));
    g.insert("prefixGauge".into(), json!(c.prefix_gauge));
    g.insert("prefixSet".into(), json!(c.prefix_set));
    if let Some(s) = &c.global_suffix {
        g.insert("globalSuffix".into(), json!(s));
    }
    m.insert("graphite".into(), Value::Object(g));
    m.insert("prefixStats".into(), json!(c.prefix_stats));
    m.insert("flush_counts".into(), json!(c.flush_counts));
    m.insert("deleteIdleStats".into(), json!(c.delete_idle_stats));
    for (k, v) in [
        ("deleteCounters", c.delete_counters),
        ("deleteTimers", c.delete_timers),
        ("deleteSets", c.delete_sets),
        ("deleteGauges", c.delete_gauges),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    m.insert("gaugesMaxTTL".into(), json!(c.gauges_max_ttl_flushes));
    m.insert("keyNameSanitize".into(), json!(c.key_name_sanitize));
    Value::Object(m).to_string()
}

/// A UDP port that was free a moment ago.
pub(crate) fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs one case through Etsy statsd; returns every flush's payload. A port taken
/// between choosing it and statsd binding it (other tests and builds share the machine)
/// is retried with new ports, at most three times.
fn run_statsd(case: &Case) -> Vec<Vec<u8>> {
    let mut last = String::new();
    for _ in 0..3 {
        match try_run_statsd(case) {
            Ok(flushes) => return flushes,
            Err(log) if log.contains("EADDRINUSE") => last = log,
            Err(log) => panic!("{}: {log}", case.name),
        }
    }
    panic!("{}: ports kept being taken:\n{last}", case.name);
}

fn try_run_statsd(case: &Case) -> Result<Vec<Vec<u8>>, String> {
    let dir = temp_dir(&format!("statsd-{}", case.name));
    let graphite = TcpListener::bind("127.0.0.1:0").unwrap();
    let gport = graphite.local_addr().unwrap().port();
    let (udp_port, mgmt_port) = (free_udp_port(), free_port());
    let mut guard = spawn_etsy(&dir, &etsy_config(&case.config, udp_port, mgmt_port, gport));
    graphite.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = format!("127.0.0.1:{udp_port}");
    let wait = Duration::from_millis(case.config.flush_interval_ms * 3 + 8000);
    let mut flushes = Vec::new();
    for k in 0..=case.steps.len() {
        let payload = accept_flush(&graphite, wait, &mut guard, &dir)?;
        flushes.push(payload);
        if let Some(datagrams) = case.steps.get(k) {
            for d in datagrams {
                udp.send_to(d, &target).unwrap();
            }
        }
    }
    Ok(flushes)
}

pub(crate) struct ChildGuard(pub(crate) Child);

/// Starts Etsy statsd on `config_js` (written to `dir/config.js`), its output in
/// `dir/statsd.log`; stopped when the guard drops.
pub(crate) fn spawn_etsy(dir: &std::path::Path, config_js: &str) -> ChildGuard {
    let cfg_path = dir.join("config.js");
    std::fs::write(&cfg_path, config_js).unwrap();
    let log = std::fs::File::create(dir.join("statsd.log")).unwrap();
    let child = Command::new(node())
        .arg(statsd_js())
        .arg(&cfg_path)
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start node statsd");
    ChildGuard(child)
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next flush's payload; `Err(statsd's log)` when statsd exited.
pub(crate) fn accept_flush(
    l: &TcpListener,
    wait: Duration,
    child: &mut ChildGuard,
    dir: &Path,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + wait;
    let log = || std::fs::read_to_string(dir.join("statsd.log")).unwrap_or_default();
    loop {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).expect("read a statsd flush");
                return Ok(buf);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("accept: {e}"),
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!("statsd exited ({status}):\n{}", log()));
        }
        assert!(
            Instant::now() < deadline,
            "no flush from statsd within {wait:?}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The engine's flushes for the same steps, each at the timestamp statsd used.
fn run_engine(case: &Case, statsd: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let ts_of = |payload: &[u8]| -> i64 {
        let text = std::str::from_utf8(payload).unwrap();
        let first = text.lines().next().expect("an empty flush");
        first.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let mut e = StatsdEngine::new(case.config.clone(), ts_of(&statsd[0]) - 1).unwrap();
    let mut out = Vec::new();
    for (k, payload) in statsd.iter().enumerate() {
        if k > 0 {
            for d in &case.steps[k - 1] {
                e.ingest_datagram(d);
            }
        }
        let mut buf = Vec::new();
        let summary = e.flush(ts_of(payload) * 1000, &mut buf);
        e.record_write(GraphiteWriteStats {
            last_exception_s: 0,
            last_flush_s: summary.ts,
            flush_time_ms: 0,
            flush_length_units: cadent::aggregate::statsd::utf16_len(&buf),
        });
        out.push(buf);
    }
    out
}

/// Whether a line's value, or its timestamp, is timing-dependent (see the module doc).
pub(crate) fn timing_value(name: &str) -> bool {
    [
        "calculationtime",
        "processing_time",
        "last_flush",
        "flush_time",
        "flush_length",
    ]
    .iter()
    .any(|s| name.contains(&format!(".{s}")))
        && (name.contains("graphiteStats") || name.contains("processing_time"))
}

pub(crate) fn timing_ts(name: &str) -> bool {
    name.contains("graphiteStats.") && !name.contains("calculationtime")
}

/// Compares two flushes; returns a description of every difference.
fn diff(case: &str, k: usize, want: &[u8], got: &[u8]) -> Vec<String> {
    let want = String::from_utf8_lossy(want);
    let got = String::from_utf8_lossy(got);
    let w: Vec<&str> = want.lines().collect();
    let g: Vec<&str> = got.lines().collect();
    let mut errs = Vec::new();
    for i in 0..w.len().max(g.len()) {
        let (a, b) = (w.get(i).copied(), g.get(i).copied());
        let same = match (a, b) {
            (Some(a), Some(b)) => {
                // From the right: a name kept unsanitised may hold spaces.
                let (mut pa, mut pb): (Vec<&str>, Vec<&str>) =
                    (a.rsplitn(3, ' ').collect(), b.rsplitn(3, ' ').collect());
                pa.reverse();
                pb.reverse();
                pa.len() == 3
                    && pb.len() == 3
                    && pa[0] == pb[0]
                    && (timing_value(pa[0]) || pa[1] == pb[1])
                    && (timing_ts(pa[0]) || pa[2] == pb[2])
            }
            _ => false,
        };
        if !same {
            errs.push(format!(
                "{case} flush {k} line {i}: statsd {:?} engine {:?}",
                a.unwrap_or("<none>"),
                b.unwrap_or("<none>")
            ));
        }
    }
    errs
}

fn cfg(f: impl FnOnce(&mut StatsdConfig)) -> StatsdConfig {
    let mut c = StatsdConfig {
        flush_interval_ms: 1000,
        ..StatsdConfig::default()
    };
    f(&mut c);
    c
}

/// A seeded spread of every type: values with many digits, rates, tags, repeats.
fn random_step(seed: u64, datagrams: usize) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    for _ in 0..datagrams {
        let mut d = String::new();
        for l in 0..(1 + next() % 4) {
            if l > 0 {
                d.push('\n');
            }
            let key = format!("r{}.k{}", next() % 3, next() % 12);
            let v = match next() % 4 {
                0 => format!("{}", next() % 1000),
                1 => format!("{}.{}", next() % 1000, next() % 100_000),
                2 => format!("{}e-{}", next() % 100, next() % 9),
                _ => format!("0.{}", next() % 10_000_000),
            };
            let (ty, signed) = match next() % 5 {
                0 => ("c", true),
                1 | 2 => ("ms", false),
                3 => ("g", true),
                _ => ("s", false),
            };
            let sign = if signed && next() % 3 == 0 {
                "-"
            } else if ty == "g" && next() % 3 == 0 {
                "+"
            } else {
                ""
            };
            d.push_str(&format!("{key}:{sign}{v}|{ty}"));
            if next() % 3 == 0 {
                d.push_str(&format!("|@0.{}", 1 + next() % 9));
            }
            if next() % 4 == 0 {
                d.push_str(&format!("|#t{}:{}", next() % 2, next() % 2));
            }
        }
        out.push(d.into_bytes());
    }
    out
}

pub(crate) fn cases() -> Vec<Case> {
    let counters = step(&[
        "a:1|c",
        "a:2|c|@0.5",
        "b:-4|c",
        "c:1.5|c|@0.1",
        "multi:1|c:2|c",
        "mixed:1|c:20|ms",
        "h:3|h\nd:2|d\nzz:7|zz",
        "hex:0x10|c\nexp:1e3|c\noct:0o17|c\nbin:0b101|c",
        "frac:0.1|c\nfrac:0.2|c",
        "neg:-0.5|c|@0.25",
        "empty_type:5|",
        "ws: 5 |c\nnbsp:\u{a0}6|c",
        "cr:1|c\r\ncrms:4|ms\r",
        "123:1|c\n7:1|c\n05:1|c\n4294967295:1|c",
        "rate3:1|c|@0.3\nrate_extra:2|c|@0.5|extra",
        "dotrate:1|c|@.5\nexprate:1|c|@1e-1\nhexrate:1|c|@0x10",
        "big:1e21|c\nsmall:1e-7|c\ninf:Infinity|c",
        "zero_rate:1|c|@0",
    ]);
    let gauges = step(&[
        "g1:5|g",
        "g1:+3|g",
        "g1:-10|g",
        "g2:+4|g",
        "g3:0|g\ng3:+2|g",
        "g4:-3|g\ng4:-3|g",
        "g5:1.5|g|@0.1",
        "gh:0x1F|g",
        "gs: +5|g",
        "g6:0.1|g\ng6:+0.2|g",
        "g7:1e-7|g\ng8:-0|g",
    ]);
    let bad = step(&[
        "bad",
        "x:abc|c",
        "x:|c",
        "x:1|c|",
        "x:1|c|@-1",
        "x:1|c|0.5",
        "x:-1|ms",
        "x:1|g|@abc",
        "_e{5,4}:title|text",
        "_sc|name|0",
        "pack:1:2:3|ms",
        "x:1|c|c:abc",
        "x:1|c|T12345",
        "\n\n",
        "",
        "x:1|c|@1.2.3\nx:nan|c\nx:inf|c\nx:1_0|c\nx:0x|g\nx:-0x1|c",
        "ok:1|c\nbad line\nok:2|c",
    ]);
    let sets = step(&[
        "s1:a|s",
        "s1:b|s\ns1:a|s",
        "s2:|s\ns2:0|s",
        "s3:1|s|@0.5",
        "s4:x y|s\ns4:x\u{a0}y|s",
        "s5:1|s:2|s:1|s",
        "s6:__proto__|s\ns6:constructor|s",
    ]);
    let tags = step(&[
        "tagged:1|c|#env:prod,region:us",
        "tagged:1|c|#region:us,env:prod",
        "tagged:2|c|#env:prod,region:us",
        "url:1|c|#url:http://x/y",
        "tt:5|ms|#a:b",
        "tg:3|g|#k:v",
        "ts:1|s|#x:y",
        "weird name/with*chars:1|c",
        "uni\u{3000}code\u{e9}:1|c",
        "semi:1|c|#a;b:c:d",
        "emptytags:1|c|#\ncommas:1|c|#,a,",
        "twice:1|c|#a:1|#b:2",
        "dot.tag:1|c|#k:v.w",
    ]);
    vec![
        Case {
            name: "legacy",
            config: cfg(|_| {}),
            steps: vec![
                counters.clone(),
                gauges.clone(),
                bad.clone(),
                sets.clone(),
                tags.clone(),
                idle(),
                step(&["a:1|c\nnew:1|c"]),
            ],
        },
        Case {
            name: "timers",
            config: cfg(|c| {
                c.flush_interval_ms = 1500;
                c.percent_thresholds = vec![90.0, -20.0, 99.9, 50.0, 0.5, -100.0, 150.0, 0.0, -150.0, 100.0, 1e-7];
                c.histograms = vec![
                    HistogramRule {
                        metric: "hist".into(),
                        bins: vec![Bin::Below(1.0), Bin::Below(5.5), Bin::Below(100.0), Bin::Inf],
                    },
                    HistogramRule {
                        metric: "noinf".into(),
                        bins: vec![Bin::Below(0.5), Bin::Below(2.0), Bin::Below(2.0), Bin::Below(1.0), Bin::Below(1e-7)],
                    },
                    HistogramRule {
                        metric: "hist_none".into(),
                        bins: vec![Bin::Below(1.0)],
                    },
                    HistogramRule {
                        metric: "empty".into(),
                        bins: vec![],
                    },
                ];
            }),
            steps: vec![
                step(&[
                    "t1:1|ms",
                    "t2:3|ms\nt2:1|ms\nt2:2|ms",
                    "t3:0.1|ms:0.2|ms:0.3|ms:0.7|ms:1.1|ms:13|ms:2.5|ms:100|ms:0.0001|ms:42|ms",
                    "t4:7|ms|@0.5",
                    "t5:0|ms\nt5:0|ms",
                    "t6:1e-7|ms:1e-8|ms",
                    "t7:123456789012|ms:0.1|ms",
                    "t8:-0|ms:0|ms",
                    "hist.a:0.5|ms:1|ms:5.4|ms:5.5|ms:99|ms:1000|ms",
                    "noinf.a:0.1|ms:0.5|ms:1.5|ms:3|ms",
                    "empty.a:1|ms:2|ms",
                    "t9:1|ms|@0.1:2|ms|@0.3",
                    "hexms:0x10|ms",
                ]),
                idle(),
                step(&["t2:5|ms:6|ms:7|ms:8|ms:9|ms:10|ms:11|ms:12|ms:13|ms:14|ms:15|ms:16|ms:17|ms:18|ms:19|ms:20|ms:21|ms:22|ms:23|ms:24|ms:25|ms"]),
            ],
        },
        Case {
            name: "modern",
            config: cfg(|c| {
                c.legacy_namespace = false;
                c.global_prefix = "pfx".into();
                c.prefix_counter = "cnt".into();
                c.prefix_timer = "".into();
                c.prefix_gauge = "gg".into();
                c.prefix_set = "sst".into();
                c.global_suffix = Some("sfx".into());
                c.prefix_stats = "mystatsd".into();
            }),
            steps: vec![counters.clone(), tags.clone(), sets.clone(), gauges.clone(), idle()],
        },
        Case {
            // Etsy appends `.` + globalSuffix whenever it is set, "" included.
            name: "empty_suffix",
            config: cfg(|c| {
                c.global_suffix = Some("".into());
            }),
            // Lines longer than a stream listener's `line_bytes_max` (16384) in one
            // datagram: Etsy reads them, so does cadent.
            steps: vec![counters.clone(), tags.clone(), long_lines(), idle()],
        },
        Case {
            name: "modern_bare",
            config: cfg(|c| {
                c.legacy_namespace = false;
                c.global_prefix = "".into();
                c.prefix_gauge = "".into();
                c.prefix_counter = "".into();
                c.flush_counts = false;
                c.flush_interval_ms = 2000;
            }),
            steps: vec![
                step(&["a:1|c|#t:1", "tm:4|ms:8|ms", "g:1|g|#x:y", "s:1|s"]),
                idle(),
            ],
        },
        Case {
            name: "delete_idle",
            config: cfg(|c| {
                c.delete_idle_stats = true;
                c.gauges_max_ttl_flushes = 2;
            }),
            steps: vec![
                step(&["a:1|c\nb:1|c\nmy.packets_received.x:3|c", "t:1|ms\nu:2|ms", "g:1|g\nh:2|g", "s:1|s\nr:2|s"]),
                step(&["b:1|c\nu:1|ms\nh:+1|g\nr:x|s"]),
                step(&["a:1|c\nt:3|ms\ns:2|s"]),
                idle(),
                step(&["g:5|g\nb:2|c"]),
                idle(),
                idle(),
            ],
        },
        Case {
            name: "delete_some",
            config: cfg(|c| {
                c.delete_idle_stats = true;
                c.delete_counters = Some(false);
                c.delete_timers = Some(false);
                c.flush_interval_ms = 1200;
            }),
            steps: vec![
                step(&["a:1|c", "t:1|ms", "g:1|g", "s:1|s"]),
                idle(),
                step(&["s:1|s\ng:2|g"]),
                idle(),
            ],
        },
        Case {
            name: "delete_gauges_only",
            config: cfg(|c| {
                c.delete_gauges = Some(true);
                c.gauges_max_ttl_flushes = 0;
            }),
            steps: vec![
                step(&["g:1|g\nk:1|c\nt:2|ms\ns:z|s"]),
                idle(),
                step(&["g:+1|g"]),
            ],
        },
        Case {
            name: "random",
            config: cfg(|c| {
                c.percent_thresholds = vec![90.0, 95.0, 99.0, -10.0, 33.3, 50.0];
                c.histograms = vec![HistogramRule {
                    metric: "r1".into(),
                    bins: vec![Bin::Below(0.01), Bin::Below(1.0), Bin::Below(100.0), Bin::Inf],
                }];
                c.flush_interval_ms = 1100;
            }),
            steps: vec![
                random_step(1, 150),
                random_step(2, 150),
                idle(),
                random_step(3, 150),
            ],
        },
        Case {
            name: "filtered_timers",
            config: cfg(|c| {
                c.calculated_timer_metrics = vec![
                    "count".into(),
                    "mean_percent".into(),
                    "upper_percent".into(),
                    "lower_percent".into(),
                    "histogram".into(),
                    "count_ps".into(),
                    "count_99_percent".into(),
                ];
                c.percent_thresholds = vec![90.0, 99.9, -10.0];
                c.histograms = vec![HistogramRule {
                    metric: "".into(),
                    bins: vec![Bin::Below(2.0), Bin::Inf],
                }];
                c.legacy_namespace = true;
                c.global_prefix = "ignored".into();
                c.prefix_counter = "x".into();
                c.global_suffix = Some("suf".into());
                c.prefix_stats = "ps".into();
            }),
            steps: vec![
                step(&["t:1|ms:2|ms:3|ms:4|ms:5|ms:6|ms:7|ms:8|ms:9|ms:10|ms", "c:1|c|#a:b", "g:2|g"]),
                idle(),
            ],
        },
        Case {
            // prefix_stats with a `;`: Etsy's backend reads it as a key with tags.
            name: "stats_prefix_tags",
            config: cfg(|c| {
                c.legacy_namespace = false;
                c.prefix_stats = "s;t".into();
                c.global_prefix = "gp".into();
                c.global_suffix = Some("sf".into());
            }),
            steps: vec![step(&["a:1|c", "t:2|ms", "g:3|g"]), idle()],
        },
        Case {
            // Etsy's keyNameSanitize: false keeps names and tags as they come (and the
            // graphite backend sanitises the name part of prefix_stats then; its part
            // from a `;` on goes after the suffix).
            name: "unsanitised",
            config: cfg(|c| {
                c.key_name_sanitize = false;
                c.legacy_namespace = false;
                c.prefix_stats = "my stats;k=v".into();
                c.global_suffix = Some("sf".into());
            }),
            steps: vec![
                step(&[
                    "a/b:1|c",
                    "sp ace:2|c\ntab\tbed:3|ms",
                    "uni\u{e9}\u{3000}x:4|g",
                    "odd!@$%^&*()[]{}<>'\":5|c",
                    "t:1|c|#k:v:w,a;b;c,x y",
                    "plain.name:6|c",
                    "s:m1|s\ns:m 2|s",
                ]),
                vec![b"bad\xff\xfename:1|c".to_vec(), b"g:1|c|#\xff:v".to_vec()],
                idle(),
            ],
        },
    ]
}

#[test]
fn engine_output_equals_etsy_statsd() {
    statsd_js();
    node();
    let cases = cases();
    let runs: Vec<(String, Vec<Vec<u8>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|c| s.spawn(move || (c.name.to_string(), run_statsd(c))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut errs = Vec::new();
    let mut lines = 0;
    for (case, (_, statsd)) in cases.iter().zip(&runs) {
        // Each step must have landed in its own flush (a machine stalled for a whole
        // flush interval would break that; it is not an engine difference).
        for (k, payload) in statsd.iter().enumerate().skip(1) {
            let text = String::from_utf8_lossy(payload);
            let name = if case.config.legacy_namespace {
                format!("stats_counts.{}.packets_received", case.config.prefix_stats)
            } else {
                String::new()
            };
            if name.is_empty() {
                continue;
            }
            let got = text
                .lines()
                .find(|l| l.starts_with(&name))
                .and_then(|l| l.split(' ').nth(1))
                .map(|v| v.to_string());
            let want = case.steps[k - 1].len().to_string();
            assert_eq!(
                got.as_deref(),
                Some(want.as_str()),
                "{}: flush {k} did not get exactly step {}'s datagrams (timing, not the engine)",
                case.name,
                k - 1
            );
        }
        let engine = run_engine(case, statsd);
        for (k, (want, got)) in statsd.iter().zip(&engine).enumerate() {
            lines += String::from_utf8_lossy(want).lines().count();
            errs.extend(diff(case.name, k, want, got));
        }
    }
    assert!(
        errs.is_empty(),
        "{} of {lines} lines differ:\n{}",
        errs.len(),
        errs.join("\n")
    );
    assert!(lines > 500, "only {lines} lines compared");
    let flushes: usize = runs.iter().map(|(_, f)| f.len()).sum();
    eprintln!(
        "statsd_etsy: {lines} lines in {flushes} flushes of {} configs identical",
        cases.len()
    );
}

/// `jsnum` prints and reads numbers exactly as node does, over edge cases and a
/// spread of random doubles.
#[test]
fn jsnum_equals_node() {
    node();
    let mut values: Vec<f64> = vec![
        0.0,
        -0.0,
        0.1,
        0.2,
        0.3,
        1e21,
        1e-7,
        1e-6,
        123e-20,
        5e-324,
        f64::MAX,
        f64::MIN_POSITIVE,
        9007199254740993.0,
        1.0 / 3.0,
        2.0 / 3.0,
        100.0 / 3.0,
        1e300 * 10.0,
        -1e-300,
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = match i % 3 {
            0 => f64::from_bits(x),
            1 => (x % 1_000_000_000) as f64 / 10f64.powi((x % 25) as i32),
            _ => (x as f64) * 10f64.powi((x % 60) as i32 - 30),
        };
        if v.is_finite() {
            values.push(v);
        }
    }
    let strings: Vec<&str> = vec![
        "",
        " ",
        "1",
        " 1 ",
        "0x1F",
        "0o17",
        "0b11",
        "-0x1",
        "1e3",
        ".5",
        "5.",
        ".",
        "1e",
        "+1",
        "-1",
        "Infinity",
        "-Infinity",
        "infinity",
        "NaN",
        "1_0",
        "\u{a0}2",
        "\u{feff}3",
        "\u{85}4",
        "1.2.3",
        "0x",
        "00012",
        "1E-3",
        "+.5e+2",
        "\u{2028}9\u{3000}",
        "0xFFFFFFFFFFFFFFFFFF",
    ];
    let script = r#"
const lines = require('fs').readFileSync(0, 'utf8').split('\n');
const out = [];
const n = Number(lines[0]);
for (let i = 1; i <= n; i++) {
  const b = Buffer.from(lines[i], 'hex');
  out.push(String(b.readDoubleBE(0)));
}
for (let i = n + 1; i < lines.length; i++) {
  if (lines[i] === '') continue;
  out.push(String(Number(Buffer.from(lines[i], 'hex').toString('utf8'))));
}
process.stdout.write(out.join('\n'));
"#;
    let mut input = format!("{}\n", values.len());
    for v in &values {
        input.push_str(&format!("{:016x}\n", v.to_bits()));
    }
    for s in &strings {
        let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        // An empty string would read as a blank line; node reads "" as 0, so does ours.
        input.push_str(if hex.is_empty() { "20" } else { &hex });
        input.push('\n');
    }
    let dir = temp_dir("jsnum");
    let input_path = dir.join("input");
    std::fs::write(&input_path, &input).unwrap();
    let mut cmd = Command::new(node());
    cmd.args(["-e", script]);
    let text = run_peer(cmd, &input_path, &dir, "node", Duration::from_secs(60)).stdout;
    let got: Vec<&str> = text.split('\n').collect();
    assert_eq!(got.len(), values.len() + strings.len());
    let mut errs = Vec::new();
    for (v, want) in values.iter().zip(&got) {
        if js_number_string(*v) != *want {
            errs.push(format!("{v:e}: node {want} ours {}", js_number_string(*v)));
        }
    }
    for (s, want) in strings.iter().zip(&got[values.len()..]) {
        let s = if s.is_empty() { " " } else { s };
        let ours = js_number_string(js_to_number(s.as_bytes()));
        if ours != *want {
            errs.push(format!("Number({s:?}): node {want} ours {ours}"));
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

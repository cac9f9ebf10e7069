//! cadent as a statsd server, live against the real Etsy statsd 0.9.0: the same
//! datagrams go to `node stats.js` and to `cadent serve` (1 and 2 shards, statsd over
//! UDP into an `[[aggregate]]`, flushed into a TCP sink), step by step, and every flush
//! must be equal: in order with one shard, as a multiset of lines with two (names are
//! owned by both shards, so samples cross the mesh).
//!
//! Both flush at whole seconds (`flush_interval_ms = 1000`: Etsy every second from its
//! start, cadent at wall-clock multiples), so flush k of both carries the same
//! timestamp. The test reads Etsy's flush k and cadent's flush with that timestamp,
//! then sends step k's datagrams to both. The engine's own comparison
//! (`statsd_etsy.rs`) covers the other intervals; what is left out of the comparison is
//! the same as there (timing-dependent values), plus `timestamp_lag` in the first
//! compared flush (cadent may have flushed before Etsy started).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cadent::aggregate::statsd::{Bin, StatsdConfig};

use crate::statsd_etsy::{
    accept_flush, cases, etsy_config, free_udp_port, node, spawn_etsy, statsd_js, timing_ts,
    timing_value, Case,
};
use crate::support::{free_port, temp_dir, Cadent};

/// The `[[aggregate]]` keys for an engine config (Etsy's options in cadent's words).
fn aggregate_toml(c: &StatsdConfig) -> String {
    let mut t = String::new();
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    t.push_str(&format!("flush_interval_ms = {}\n", c.flush_interval_ms));
    t.push_str(&format!(
        "percent_threshold = [{}]\n",
        list(&c.percent_thresholds)
    ));
    if !c.histograms.is_empty() {
        let rules: Vec<String> = c
            .histograms
            .iter()
            .map(|h| {
                let bins: Vec<String> = h
                    .bins
                    .iter()
                    .map(|b| match b {
                        Bin::Inf => "\"inf\"".to_string(),
                        Bin::Below(v) => format!("{v:?}"),
                    })
                    .collect();
                format!(
                    "{{ metric = {:?}, bins = [{}] }}",
                    h.metric,
                    bins.join(", ")
                )
            })
            .collect();
        t.push_str(&format!("histogram = [{}]\n", rules.join(", ")));
    }
    if !c.calculated_timer_metrics.is_empty() {
        t.push_str(&format!(
            "calculated_timer_metrics = {:?}\n",
            c.calculated_timer_metrics
        ));
    }
    t.push_str(&format!("legacy_namespace = {}\n", c.legacy_namespace));
    for (k, v) in [
        ("global_prefix", &c.global_prefix),
        ("prefix_counter", &c.prefix_counter),
        ("prefix_timer", &c.prefix_timer),
        ("prefix_gauge", &c.prefix_gauge),
        ("prefix_set", &c.prefix_set),
        ("prefix_stats", &c.prefix_stats),
    ] {
        t.push_str(&format!("{k} = {v:?}\n"));
    }
    if let Some(s) = &c.global_suffix {
        t.push_str(&format!("global_suffix = {s:?}\n"));
    }
    t.push_str(&format!("flush_counts = {}\n", c.flush_counts));
    t.push_str(&format!("delete_idle_stats = {}\n", c.delete_idle_stats));
    for (k, v) in [
        ("delete_counters", c.delete_counters),
        ("delete_timers", c.delete_timers),
        ("delete_sets", c.delete_sets),
        ("delete_gauges", c.delete_gauges),
    ] {
        if let Some(v) = v {
            t.push_str(&format!("{k} = {v}\n"));
        }
    }
    t.push_str(&format!("gauges_max_ttl = {}\n", c.gauges_max_ttl_flushes));
    t.push_str(&format!("key_name_sanitize = {}\n", c.key_name_sanitize));
    t
}

/// A TCP sink that keeps every line in arrival order (one shard's writer connection
/// keeps its order; lines of several connections interleave).
struct OrderedSink {
    addr: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl OrderedSink {
    fn start() -> OrderedSink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let lines = lines2.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(s).lines() {
                        let Ok(line) = line else { return };
                        lines.lock().unwrap().push(line);
                    }
                });
            }
        });
        OrderedSink { addr, lines }
    }

    /// The lines whose timestamp is `ts`, in arrival order.
    fn flush(&self, ts: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.rsplit(' ').next() == Some(ts))
            .cloned()
            .collect()
    }

    fn has(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.lines.lock().unwrap().iter().any(|l| pred(l))
    }
}

/// How the steps reach both servers: each item of a step a datagram, or a write on one
/// TCP connection (Etsy's `servers/tcp`), 20 ms apart so each is a read of its own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Per flush: (Etsy's lines, cadent's lines).
type Flushes = Vec<(Vec<String>, Vec<String>)>;

/// Runs one case through Etsy and `cadent serve` side by side.
fn run_both(case: &Case, shards: usize, transport: Transport) -> Flushes {
    // A free port can be taken by another test between its choice and Etsy's bind.
    let mut last = String::new();
    for _ in 0..3 {
        match try_run_both(case, shards, transport) {
            Ok(flushes) => return flushes,
            Err(log) if log.contains("EADDRINUSE") => last = log,
            Err(log) => panic!("{}: {log}", case.name),
        }
    }
    panic!("{}: ports kept being taken:\n{last}", case.name);
}

/// One run of [`run_both`]; `Err(log)` when Etsy stopped before a flush.
fn try_run_both(case: &Case, shards: usize, transport: Transport) -> Result<Flushes, String> {
    let mut config = case.config.clone();
    config.flush_interval_ms = 1000;
    let dir = temp_dir(&format!("statsd-serve-{}-{shards}", case.name));
    let graphite = TcpListener::bind("127.0.0.1:0").unwrap();
    let gport = graphite.local_addr().unwrap().port();
    let (etsy_udp, mgmt) = (free_udp_port(), free_port());
    let (etsy_tcp, cadent_tcp) = (free_port(), free_port());
    let mut etsy: serde_json::Value =
        serde_json::from_str(&etsy_config(&config, etsy_udp, mgmt, gport)).unwrap();
    if transport == Transport::Tcp {
        etsy["servers"] = serde_json::json!([
            {"server": "./servers/udp", "address": "127.0.0.1", "port": etsy_udp},
            {"server": "./servers/tcp", "address": "127.0.0.1", "port": etsy_tcp},
        ]);
    }

    let sink = OrderedSink::start();
    let cadent_udp = free_udp_port();
    let cadent_url = match transport {
        Transport::Udp => format!("udp://127.0.0.1:{cadent_udp}"),
        Transport::Tcp => format!("tcp://127.0.0.1:{cadent_tcp}"),
    };
    let cadent = Cadent::start(
        &format!("serve-{}-{shards}", case.name),
        &format!(
            r#"
[server]
shards = {shards}
admin_listen = "ADMIN"
stats_interval_ms = 50
[output]
flush_interval_ms = 10
[telemetry]
prefix = ""
[[listen]]
name = "statsd"
url = "{cadent_url}"
format = "statsd"
[[cluster]]
name = "sink"
kind = "forward"
members = ["tcp://{}"]
[[aggregate]]
name = "statsd"
kind = "statsd"
send_to = ["sink"]
{}
[[route]]
from = ["statsd"]
match = {{ all = true }}
aggregate = "statsd"
"#,
            sink.addr,
            aggregate_toml(&config)
        ),
    );

    let mut guard = spawn_etsy(&dir, &etsy.to_string());
    graphite.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut streams = None;
    let mut out = Vec::new();
    // Two warm-up flushes before the first step: by then both have made their
    // `timestamp_lag` gauge (at their second flush), so it sits before every gauge of the
    // steps in both (cadent may have started, and flushed, before Etsy).
    let warmup = [Vec::new()];
    let steps = warmup.iter().chain(&case.steps);
    let steps: Vec<&Vec<Vec<u8>>> = steps.collect();
    for k in 0..=steps.len() {
        let etsy = accept_flush(&graphite, Duration::from_secs(15), &mut guard, &dir)?;
        let etsy: Vec<String> = String::from_utf8_lossy(&etsy)
            .lines()
            .map(str::to_string)
            .collect();
        let ts = etsy[0].rsplit(' ').next().unwrap().to_string();
        // cadent's flush with the same timestamp is complete once shard 0 wrote
        // statsd's own last line for it; the other shard's lines travel on their own
        // connection, so give them a moment more.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sink
            .has(|l| l.contains("graphiteStats.flush_length") && l.ends_with(&format!(" {ts}")))
        {
            assert!(
                Instant::now() < deadline,
                "{}: no cadent flush at {ts}:\n{}",
                case.name,
                cadent.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(120));
        out.push((etsy, sink.flush(&ts)));
        if transport == Transport::Tcp && streams.is_none() {
            // Etsy listens by now (it flushed).
            let connect = |port| TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
            streams = Some((connect(etsy_tcp), connect(cadent_tcp)));
        }
        if let Some(datagrams) = steps.get(k) {
            for d in datagrams.iter() {
                match &mut streams {
                    Some((e, c)) => {
                        e.write_all(d).unwrap();
                        c.write_all(d).unwrap();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    None => {
                        udp.send_to(d, format!("127.0.0.1:{etsy_udp}")).unwrap();
                        udp.send_to(d, format!("127.0.0.1:{cadent_udp}")).unwrap();
                    }
                }
            }
        }
    }
    drop(cadent);
    Ok(out)
}

/// (name, value, ts) with the timing-dependent parts blanked, as in `statsd_etsy`.
fn comparable(line: &str) -> String {
    // From the right: a name kept unsanitised may hold spaces.
    let mut p: Vec<&str> = line.rsplitn(3, ' ').collect();
    p.reverse();
    if p.len() != 3 {
        return line.to_string();
    }
    let v = if timing_value(p[0]) { "*" } else { p[1] };
    let ts = if timing_ts(p[0]) { "*" } else { p[2] };
    format!("{} {v} {ts}", p[0])
}

fn compare(
    case: &str,
    shards: usize,
    flushes: &[(Vec<String>, Vec<String>)],
) -> (usize, Vec<String>) {
    let mut errs = Vec::new();
    let mut lines = 0;
    // Flushes 0 and 1 are the warm-up, before any step: cadent may have flushed before
    // Etsy started, so its `timestamp_lag` (and numStats) can differ there.
    for (k, (etsy, cadent)) in flushes.iter().enumerate().skip(2) {
        lines += etsy.len();
        let mut want: Vec<String> = etsy.iter().map(|l| comparable(l)).collect();
        let mut got: Vec<String> = cadent.iter().map(|l| comparable(l)).collect();
        if shards > 1 {
            want.sort();
            got.sort();
        }
        if want != got {
            let mut w: HashMap<&String, i64> = HashMap::new();
            for l in &want {
                *w.entry(l).or_default() += 1;
            }
            for l in &got {
                *w.entry(l).or_default() -= 1;
            }
            let mut d: Vec<String> = w
                .iter()
                .filter(|(_, n)| **n != 0)
                .map(|(l, n)| format!("{:+} {l}", -n))
                .collect();
            d.sort();
            if d.is_empty() {
                let at = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(0);
                let end = (at + 4).min(want.len());
                d.push(format!(
                    "same lines, another order from line {at}: Etsy {:?} cadent {:?}",
                    &want[at..end],
                    &got[at..end]
                ));
            }
            errs.push(format!(
                "{case} shards={shards} flush {k}: (+ cadent only, - Etsy only)\n  {}",
                d.join("\n  ")
            ));
        }
    }
    (lines, errs)
}

#[test]
fn serve_aggregates_statsd_as_etsy_does_with_one_and_two_shards() {
    statsd_js();
    node();
    let cases = cases();
    let mut errs = Vec::new();
    let mut lines = 0;
    for shards in [1, 2] {
        let runs: Vec<Vec<(Vec<String>, Vec<String>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = cases
                .iter()
                .map(|c| s.spawn(move || run_both(c, shards, Transport::Udp)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (case, flushes) in cases.iter().zip(&runs) {
            let (n, e) = compare(case.name, shards, flushes);
            lines += n;
            errs.extend(e);
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    assert!(lines > 800, "only {lines} lines compared");
    eprintln!("statsd_serve: {lines} lines identical to Etsy statsd 0.9.0, 1 and 2 shards");
}

#[test]
fn serve_over_tcp_reads_as_etsys_tcp_server() {
    // Etsy's servers/tcp: a read is a packet (statsd.packets_received) only once its
    // buffer holds a newline, and node decodes the stream as `ascii`, which clears every
    // byte's high bit (\xb1 is `1`, \xa0 a space, \x8a a newline). Its lines have no
    // cap; cadent's default one is 65,507 bytes.
    statsd_js();
    node();
    let step = |writes: &[&[u8]]| writes.iter().map(|w| w.to_vec()).collect::<Vec<_>>();
    let case = Case {
        name: "tcp",
        config: StatsdConfig::default(),
        steps: vec![
            step(&[b"a:1", b"|c\n", b"t:5|ms\nt:", b"7|ms\n"]),
            step(&[b"b:2|c\nc:", b"3|c\n", b"\n", b"g:4|g\ng:+1|g\n"]),
            step(&[
                b"x:\xb1|c\n",
                b"u\xa0v:1|c\n",
                b"q:1|c\x8ar:2|c\n",
                b"s:\xc3\xa9|s\ns:C)|s\n",
                b"h\xe9llo:1|c\n",
            ]),
            // Long lines (a listener's default `line_bytes_max` for statsd is a
            // datagram's largest payload), one of them in two writes.
            vec![
                format!("{}:1|c\n", "k".repeat(17_000)).into_bytes(),
                format!("lt:{}", vec!["1|ms"; 3000].join(":")).into_bytes(),
                format!(":{}|ms\n", 2).into_bytes(),
            ],
            step(&[b"partial", b":9|c"]),
        ],
    };
    let mut errs = Vec::new();
    let mut lines = 0;
    for shards in [1, 2] {
        let flushes = run_both(&case, shards, Transport::Tcp);
        let (n, e) = compare(case.name, shards, &flushes);
        lines += n;
        errs.extend(e);
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    assert!(lines > 60, "only {lines} lines compared");
}

//! The statsd management console of `cadent serve` (`mgmt_listen`) against the real
//! Etsy statsd 0.9.0's: the same datagrams to both, the same commands to both consoles,
//! the same replies. With one shard the tables' text is byte-identical; with two, each
//! key and value is there once (the order of keys follows the shards).

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use cadent::aggregate::statsd::StatsdConfig;

use crate::statsd_etsy::{etsy_config, free_udp_port, node, spawn_etsy, statsd_js};
use crate::support::{free_port, temp_dir, Cadent};

/// Sends one command and reads the reply until `done` says it is whole (bounded).
fn ask(port: u16, cmd: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "console {port}: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(cmd.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if done(&String::from_utf8_lossy(&out)) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ends_with_end(s: &str) -> bool {
    s.ends_with("END\n\n")
}

/// `stats` with the clock-dependent numbers (uptime, seconds since) blanked.
fn stats_shape(s: &str) -> String {
    s.lines()
        .map(|l| match l.split_once(": ") {
            Some((k, _))
                if k == "uptime" || k.ends_with("last_msg_seen") || k.starts_with("graphite.") =>
            {
                format!("{k}: *")
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `cadent serve` as a statsd server with its console on `mgmt`, flushing every
/// `flush_ms` to the cluster `out` (`out`: the cluster's keys).
fn console_config(shards: usize, udp: u16, mgmt: u16, flush_ms: u64, out: &str) -> String {
    format!(
        r#"
[server]
shards = {shards}
admin_listen = "ADMIN"
[telemetry]
prefix = ""
[[listen]]
name = "statsd"
url = "udp://127.0.0.1:{udp}"
format = "statsd"
[[cluster]]
name = "out"
{out}
[[aggregate]]
name = "statsd"
kind = "statsd"
flush_interval_ms = {flush_ms}
mgmt_listen = "127.0.0.1:{mgmt}"
send_to = ["out"]
[[route]]
from = ["statsd"]
match = {{ all = true }}
aggregate = "statsd"
"#
    )
}

const DATAGRAMS: &[&str] = &[
    "a.b:1|c\na.b:2|c|@0.5\nc.d:-3|c",
    "t.x:5|ms:1|ms:3|ms\nt.y:0.5|ms",
    "g.one:5|g\ng.one:+2|g\ng.two:-1|g",
    "folder.x:1|c\nfolder.y:1|c\nfolder.sub.z:1|c",
    "bad line\nx:abc|c",
    "s.u:a|s\ns.u:b|s",
    "tag:1|c|#env:prod",
];

#[test]
fn console_answers_as_etsy_statsd() {
    statsd_js();
    node();
    for shards in [1, 2] {
        let dir = temp_dir(&format!("console-{shards}"));
        let (etsy_udp, etsy_mgmt) = (free_udp_port(), free_port());
        let graphite = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = StatsdConfig {
            flush_interval_ms: 600_000,
            ..StatsdConfig::default()
        };
        let gport = graphite.local_addr().unwrap().port();
        let _guard = spawn_etsy(&dir, &etsy_config(&config, etsy_udp, etsy_mgmt, gport));

        let (cadent_udp, cadent_mgmt) = (free_udp_port(), free_port());
        let cadent = Cadent::start(
            &format!("console-{shards}"),
            &console_config(
                shards,
                cadent_udp,
                cadent_mgmt,
                600_000,
                "kind = \"file\"\npath = \"./out.log\"",
            ),
        );
        // Etsy is up once its console answers.
        ask(etsy_mgmt, "health", |s| s.ends_with('\n'));
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        for d in DATAGRAMS {
            udp.send_to(d.as_bytes(), ("127.0.0.1", etsy_udp)).unwrap();
            udp.send_to(d.as_bytes(), ("127.0.0.1", cadent_udp))
                .unwrap();
        }
        // Both have every datagram once metrics_received says so.
        let lines: usize = DATAGRAMS.iter().map(|d| d.lines().count()).sum();
        let want = format!("'statsd.metrics_received': {lines}");
        for port in [etsy_mgmt, cadent_mgmt] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ask(port, "counters", ends_with_end).contains(&want) {
                assert!(Instant::now() < deadline, "port {port} never had {want}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let exact = |cmd: &str, done: &dyn Fn(&str) -> bool| {
            let e = ask(etsy_mgmt, cmd, done);
            let c = ask(cadent_mgmt, cmd, done);
            (e, c)
        };
        let line = |s: &str| s.ends_with('\n');
        for cmd in [
            "help",
            "health",
            "health down",
            "health",
            "health UP",
            "nonsense",
        ] {
            let (e, c) = exact(cmd, &line);
            assert_eq!(c, e, "shards={shards} {cmd:?}");
        }
        let (e, c) = exact("stats", &ends_with_end);
        assert_eq!(stats_shape(&c), stats_shape(&e), "shards={shards} stats");
        for cmd in ["counters", "gauges", "timers"] {
            let (e, c) = exact(cmd, &ends_with_end);
            if shards == 1 {
                assert_eq!(c, e, "shards=1 {cmd}");
            } else {
                // Every entry once, whatever the order.
                let entries = |s: &str| {
                    // One entry per line when the object is long; on one line otherwise.
                    let flat = s.replace(['{', '}'], "\n").replace(", ", ",\n");
                    let mut v: Vec<String> = flat
                        .lines()
                        .map(|x| x.trim().trim_end_matches(',').to_string())
                        .filter(|x| !x.is_empty() && x != "END")
                        .collect();
                    v.sort();
                    v
                };
                assert_eq!(entries(&c), entries(&e), "shards=2 {cmd}:\n{c}\n{e}");
            }
        }
        let (e, c) = exact("delcounters folder.* a.b nothing.here", &ends_with_end);
        if shards == 1 {
            assert_eq!(c, e, "delcounters");
        } else {
            let sorted = |s: &str| {
                let mut v: Vec<&str> = s.lines().collect();
                v.sort();
                v.join("\n")
            };
            assert_eq!(sorted(&c), sorted(&e), "delcounters");
        }
        let (e, c) = exact("counters", &ends_with_end);
        assert!(!c.contains("folder.") && !c.contains("'a.b'"), "{c}");
        if shards == 1 {
            assert_eq!(c, e, "counters after delcounters");
        }
        drop(cadent);
    }
}

/// `graphite.last_flush` (seconds since) from a `stats` reply.
fn last_flush(reply: &str) -> i64 {
    reply
        .lines()
        .find_map(|l| l.strip_prefix("graphite.last_flush: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no graphite.last_flush in {reply:?}"))
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Operators' health checks read `graphite.last_flush` on the console: with graphite
/// refusing connections it keeps aging in Etsy (its writer records a write only once a
/// connection opens), and so it must in cadent, which keeps the lines queued meanwhile;
/// once graphite is back, both write again and it drops to a second or two.
#[test]
fn last_flush_ages_while_graphite_is_down_as_etsys() {
    use crate::support::{http_get, Sink};
    statsd_js();
    node();
    let dir = temp_dir("console-graphite-down");
    let (etsy_udp, etsy_mgmt, etsy_graphite) = (free_udp_port(), free_port(), closed_port());
    let config = StatsdConfig {
        flush_interval_ms: 1000,
        ..StatsdConfig::default()
    };
    let _guard = spawn_etsy(
        &dir,
        &etsy_config(&config, etsy_udp, etsy_mgmt, etsy_graphite),
    );
    let (cadent_udp, cadent_mgmt, cadent_graphite) = (free_udp_port(), free_port(), closed_port());
    let cadent = Cadent::start(
        "console-graphite-down",
        &console_config(
            1,
            cadent_udp,
            cadent_mgmt,
            1000,
            &format!("kind = \"forward\"\nmembers = [\"tcp://127.0.0.1:{cadent_graphite}\"]"),
        ),
    );
    ask(etsy_mgmt, "health", |s| s.ends_with('\n'));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for port in [etsy_udp, cadent_udp] {
        udp.send_to(b"a.b:1|c", ("127.0.0.1", port)).unwrap();
    }
    // cadent's health probes take the dead destination down (a few seconds).
    let down = crate::support::wait_until(Duration::from_secs(20), || {
        http_get(&cadent.admin, "/servers").is_some_and(|b| b.contains("\"down\""))
    });
    assert!(down, "{:?}", http_get(&cadent.admin, "/servers"));
    std::thread::sleep(Duration::from_millis(1500));
    let stats = |port| ask(port, "stats", ends_with_end);
    let before = (
        last_flush(&stats(etsy_mgmt)),
        last_flush(&stats(cadent_mgmt)),
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = (
        last_flush(&stats(etsy_mgmt)),
        last_flush(&stats(cadent_mgmt)),
    );
    assert!(after.0 >= before.0 + 2, "etsy: {before:?} then {after:?}");
    assert!(after.1 >= before.1 + 2, "cadent: {before:?} then {after:?}");
    assert!(after.1 >= 4, "cadent: {after:?}");
    // graphite comes back: both write again.
    let _etsy_sink = Sink::start_at(&format!("127.0.0.1:{etsy_graphite}"));
    let cadent_sink = Sink::start_at(&format!("127.0.0.1:{cadent_graphite}"));
    let back = crate::support::wait_until(Duration::from_secs(20), || {
        last_flush(&stats(etsy_mgmt)) <= 2 && last_flush(&stats(cadent_mgmt)) <= 2
    });
    assert!(
        back,
        "etsy {}, cadent {}",
        stats(etsy_mgmt),
        stats(cadent_mgmt)
    );
    // Nothing cadent flushed meanwhile was lost: the outage's counts arrive.
    assert!(
        crate::support::wait_until(Duration::from_secs(10), || {
            cadent_sink
                .lines()
                .keys()
                .any(|l| l.starts_with("stats_counts.a.b 1 "))
        }),
        "{:?}",
        cadent_sink.lines()
    );
}

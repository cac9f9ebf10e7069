//! The pipeline's stage boundary, live: self-metrics routed like any input and agreeing
//! with `/stats`, and a change some shard refuses leaving every shard on the running
//! topology.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{free_port, http_request, wait_until, Cadent, Sink};

/// The latest value of a self-metric line `name` at the sink.
fn latest(sink: &Sink, name: &str) -> Option<(u64, i64)> {
    sink.lines()
        .keys()
        .filter_map(|l| {
            let mut p = l.split(' ');
            (p.next()? == name).then_some(())?;
            let v: u64 = p.next()?.parse().ok()?;
            let ts: i64 = p.next()?.parse().ok()?;
            Some((v, ts))
        })
        .max_by_key(|&(_, ts)| ts)
}

#[test]
fn self_metrics_are_routed_and_agree_with_stats() {
    let sink = Sink::start();
    let port = free_port();
    let cadent = Cadent::start(
        "self-metrics",
        &format!(
            r#"
[server]
shards = 2
admin_listen = "ADMIN"
stats_interval_ms = 50
[telemetry]
interval_ms = 300
prefix = "cadent.it"
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{port}"
format = "graphite"
[[cluster]]
name = "sink"
kind = "forward"
members = ["tcp://{}"]
[[route]]
match = {{ all = true }}
send_to = ["sink"]
"#,
            sink.addr
        ),
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for i in 0..500 {
        writeln!(s, "app.m{i} {i} 1700000000").unwrap();
        if i == 250 {
            writeln!(s, "bad").unwrap();
        }
    }
    drop(s);
    // Once the counters settled, the next self-metric lines carry them.
    assert!(wait_until(Duration::from_secs(10), || {
        latest(&sink, "cadent.it.listeners.in.parsed_lines").is_some_and(|(v, _)| v == 500)
    }));
    let stats = cadent.stats();
    let l = &stats["listeners"]["in"];
    for (field, want) in [
        ("parsed_lines", 500),
        ("received_lines", 501),
        ("rejected_lines", 1),
        ("connections_accepted", 1),
    ] {
        assert_eq!(l[field], want, "/stats {field}");
        let (v, _) = latest(&sink, &format!("cadent.it.listeners.in.{field}")).unwrap();
        assert_eq!(v, want, "self-metric {field}");
    }
    // Every counter set is there: routes, destinations, mesh.
    for name in [
        "cadent.it.routes.route_0_.matched",
        "cadent.it.routing.unrouted",
        "cadent.it.mesh.records_sent",
    ] {
        assert!(latest(&sink, name).is_some(), "no {name}");
    }
    let dest = format!(
        "cadent.it.destinations.tcp___{}.queued_lines",
        sink.addr.replace(['.', ':'], "_")
    );
    // Lines are queued when their batch is sealed (flush_interval_ms), so a later line.
    assert!(
        wait_until(Duration::from_secs(10), || latest(&sink, &dest)
            .is_some_and(|(v, _)| v >= 500)),
        "{dest}"
    );
    assert_eq!(cadent.stop(), 0);
}

#[test]
fn a_change_one_shard_refuses_leaves_every_shard_on_the_running_topology() {
    let (a, b) = (Sink::start(), Sink::start());
    let port = free_port();
    let config = |to: &str| {
        format!(
            r#"
[server]
shards = 2
admin_listen = "ADMIN"
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{port}"
format = "graphite"
[[cluster]]
name = "a"
kind = "forward"
members = ["tcp://{}"]
[[cluster]]
name = "b"
kind = "forward"
members = ["tcp://{}"]
[[route]]
match = {{ all = true }}
send_to = ["{to}"]
"#,
            a.addr, b.addr
        )
    };
    let cadent = Cadent::start_with_env(
        "refused-change",
        &config("a"),
        &[("CADENT_TEST_FAIL_PREPARE_SHARD", "1")],
    );
    // A reload that would send everything to b: shard 1 refuses it, so nobody takes it.
    let text = std::fs::read_to_string(cadent.config_path()).unwrap();
    std::fs::write(
        cadent.config_path(),
        text.replace("send_to = [\"a\"]", "send_to = [\"b\"]"),
    )
    .unwrap();
    cadent.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || cadent
        .log()
        .contains("not applied")));
    // A membership change is refused the same way, with 503.
    let (status, body) = http_request(
        &cadent.admin,
        "POST",
        "/cluster/b/members",
        "server=127.0.0.1:1",
    );
    assert_eq!(status, 503, "{body}");
    // Many connections: the kernel spreads them over both shards.
    for c in 0..16 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        for i in 0..50 {
            writeln!(s, "c{c}.m{i} 1 1700000000").unwrap();
        }
    }
    assert!(wait_until(Duration::from_secs(10), || a.total() == 800));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.total(), 0, "no shard routes by the refused topology");
    let per_shard = || -> Vec<u64> {
        cadent.stats()["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["listeners"]["in"]["parsed_lines"].as_u64().unwrap())
            .collect()
    };
    // The counters are published every stats_interval_ms.
    wait_until(Duration::from_secs(5), || {
        per_shard().iter().sum::<u64>() == 800
    });
    let per_shard = per_shard();
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "both shards read: {per_shard:?}"
    );
}

#[test]
fn statsd_over_tcp_and_unix_sockets_is_aggregated_like_udp() {
    // unix:// (stream) and unixgram:// (datagrams, as DogStatsD clients send them)
    let sink = Sink::start();
    let (tcp, udp) = (free_port(), crate::statsd_etsy::free_udp_port());
    let dir = crate::support::temp_dir("statsd-streams");
    let sock = dir.join("statsd.sock");
    let dgram = dir.join("dsd.sock");
    let cadent = Cadent::start(
        "statsd-streams",
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
name = "statsd_tcp"
url = "tcp://127.0.0.1:{tcp}"
format = "statsd"
[[listen]]
name = "statsd_unix"
url = "unix://{}"
format = "statsd"
[[listen]]
name = "statsd_udp"
url = "udp://127.0.0.1:{udp}"
format = "statsd"
[[listen]]
name = "statsd_unixgram"
url = "unixgram://{}"
format = "statsd"
[[cluster]]
name = "sink"
kind = "forward"
members = ["tcp://{}"]
[[aggregate]]
name = "statsd"
kind = "statsd"
flush_interval_ms = 1000
legacy_namespace = false
send_to = ["sink"]
[[route]]
match = {{ all = true }}
aggregate = "statsd"
"#,
            sock.display(),
            dgram.display(),
            sink.addr
        ),
    );
    let g = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let mut t = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    let mut u = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let d = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..100 {
        writeln!(t, "hits:1|c\nlat:{i}|ms").unwrap();
        writeln!(u, "hits:2|c").unwrap();
        d.send_to(b"hits:3|c", ("127.0.0.1", udp)).unwrap();
        g.send_to(format!("hits:4|c\nlat:{i}|ms").as_bytes(), &dgram)
            .unwrap();
    }
    // A unix datagram longer than read_buffer_bytes (65536 here) is dropped whole.
    let big = format!("hits:5|c\n{}", "x".repeat(70_000));
    let force = libc::c_int::try_from(4 * big.len()).unwrap();
    // SAFETY: a valid descriptor and an int option (SO_SNDBUFFORCE: the tests run as
    // root, and the default send buffer is shorter than the datagram).
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&g),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&force as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    g.send_to(big.as_bytes(), &dgram).unwrap();
    // A stream's last line without its newline is refused, not half-read.
    write!(t, "hits:1000|c").unwrap();
    drop((t, u));
    // Every sample lands in one interval or the next: the counts add up over flushes.
    let total = |name: &str| -> f64 {
        sink.lines()
            .iter()
            .filter(|(l, _)| l.starts_with(&format!("{name} ")))
            .map(|(l, n)| l.split(' ').nth(1).unwrap().parse::<f64>().unwrap() * f64::from(*n))
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(10), || total(
            "stats.counters.hits.count"
        ) == 1000.0
            && total("stats.timers.lat.count") == 200.0),
        "counts: {} {}\n{}",
        total("stats.counters.hits.count"),
        total("stats.timers.lat.count"),
        cadent.log()
    );
    // The counters are published every stats_interval_ms: a flush can come first.
    assert!(
        wait_until(Duration::from_secs(5), || cadent.stats()["listeners"]
            ["statsd_tcp"]["rejected_by_reason"]["unterminated"]
            == 1),
        "{}",
        cadent.stats()["listeners"]
    );
    let st = cadent.stats();
    let ug = &st["listeners"]["statsd_unixgram"];
    assert_eq!(ug["datagrams"], 101, "{ug}");
    assert_eq!(ug["datagrams_too_long"], 1, "{ug}");
    assert_eq!(ug["parsed_lines"], 200, "{ug}");
}

/// A graphite listener on `url` (its socket file mode 0666) writing to the file `out`.
fn unix_file_config(url: &str, out: &std::path::Path, shards: usize, admin: &str) -> String {
    format!(
        r#"
[server]
shards = {shards}
admin_listen = "{admin}"
[telemetry]
prefix = ""
[[listen]]
name = "in"
url = "{url}"
format = "graphite"
socket_mode = "0666"
[[cluster]]
name = "out"
kind = "file"
path = "{}"
[[route]]
match = {{ all = true }}
send_to = ["out"]
"#,
        out.display()
    )
}

#[test]
fn a_unix_socket_another_cadent_holds_is_refused_at_startup_and_a_stale_one_taken_over() {
    let dir = crate::support::temp_dir("unix-held");
    for scheme in ["unix", "unixgram"] {
        let sock = dir.join(format!("{scheme}.sock"));
        let out = dir.join(format!("{scheme}-out.txt"));
        let url = format!("{scheme}://{}", sock.display());
        let config = |admin: &str| unix_file_config(&url, &out, 2, admin);
        let first = Cadent::start(&format!("unix-held-{scheme}"), &config("ADMIN"));
        // socket_mode: other users' clients may write to it whatever the umask.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&sock).unwrap().permissions(),
        );
        assert_eq!(mode & 0o7777, 0o666, "{scheme}: {mode:o}");
        // A second process on the same path: refused, naming the socket; the first
        // keeps it (its file is not removed by the refused one).
        let path = dir.join(format!("{scheme}-second.toml"));
        let admin = format!("127.0.0.1:{}", free_port());
        std::fs::write(&path, config(&admin)).unwrap();
        let mut second = std::process::Command::new(crate::support::cadent_bin())
            .args(["serve", "--config"])
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let ended = wait_until(Duration::from_secs(10), || {
            second.try_wait().ok().flatten().is_some()
        });
        if !ended {
            let _ = second.kill();
        }
        let out = second.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            ended,
            "{scheme}: the second one runs beside the first: {err}"
        );
        assert!(!out.status.success(), "{scheme}: second start: {err}");
        assert!(err.contains("another process"), "{scheme}: {err}");
        assert!(
            sock.exists(),
            "{scheme}: the first one's socket file is kept"
        );
        let line = format!("{scheme}.m 1 1700000000\n");
        if scheme == "unix" {
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            s.write_all(line.as_bytes()).unwrap();
        } else {
            let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
            s.send_to(line.as_bytes(), &sock).unwrap();
        }
        assert!(
            wait_until(Duration::from_secs(5), || first.stats()["listeners"]["in"]
                ["parsed_lines"]
                == 1),
            "{scheme}: {}",
            first.stats()["listeners"]
        );
        drop(first);
    }
    // A socket file nobody serves (a killed process's) is taken over.
    let sock = dir.join("stale.sock");
    drop(std::os::unix::net::UnixDatagram::bind(&sock).unwrap());
    assert!(sock.exists());
    let url = format!("unixgram://{}", sock.display());
    let c = Cadent::start(
        "unix-stale",
        &unix_file_config(&url, &dir.join("stale-out.txt"), 1, "ADMIN"),
    );
    let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
    s.send_to(b"stale.m 1 1700000000", &sock).unwrap();
    assert!(wait_until(Duration::from_secs(5), || c.stats()
        ["listeners"]["in"]["parsed_lines"]
        == 1));
}

//! Delivery paths beyond the plain TCP relay: unix and statsd listeners, UDP destinations,
//! replication, a sink that comes up late, flushing at shutdown, and the admin endpoints.

use std::io::Write;
use std::time::Duration;

use crate::support::*;

#[test]
fn unix_and_statsd_listeners_udp_members_and_replication() {
    let tcp_a = Sink::start();
    let tcp_b = Sink::start();
    let udp = UdpSink::start();
    let statsd_port = free_port();
    let dir = temp_dir("unixsock");
    let sock = dir.join("in.sock");
    let config = format!(
        r#"
[server]
admin_listen = "ADMIN"
stats_interval_ms = 50
[output]
flush_interval_ms = 20
[[listen]]
name = "unix"
url = "unix://{}"
format = "graphite"
[[listen]]
name = "statsd"
url = "udp://127.0.0.1:{statsd_port}"
format = "statsd"
[[cluster]]
name = "both"
kind = "carbon_ch"
replication = 2
members = ["tcp://{}=a", "tcp://{}=b"]
[[cluster]]
name = "udp"
kind = "forward"
members = ["udp://{}"]
[[route]]
match = {{ prefix = "rep." }}
send_to = ["both"]
[[route]]
match = {{ all = true }}
send_to = ["udp"]
"#,
        sock.display(),
        tcp_a.addr,
        tcp_b.addr,
        udp.addr
    );
    let cadent = Cadent::start("delivery", &config);

    // Unix socket, graphite: replication 2 over 2 members puts every line on both.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    for i in 0..100 {
        writeln!(s, "rep.metric{i} {i} 1700000000").unwrap();
    }
    drop(s);
    // statsd over UDP, several lines per datagram, forwarded as statsd lines over UDP.
    send_udp(
        &format!("127.0.0.1:{statsd_port}"),
        &[
            b"app.hits:1|c\napp.lat:12|ms|@0.5\napp.g:-3|g".to_vec(),
            b"bad statsd\napp.set:u1|s".to_vec(),
        ],
    );

    assert!(wait_until(Duration::from_secs(10), || tcp_a.total() == 100
        && tcp_b.total() == 100
        && udp.lines().len() == 4));
    for i in 0..100 {
        let line = format!("rep.metric{i} {i} 1700000000");
        assert_eq!(tcp_a.lines().get(&line), Some(&1));
        assert_eq!(tcp_b.lines().get(&line), Some(&1));
    }
    let mut got = udp.lines();
    got.sort();
    assert_eq!(
        got,
        [
            "app.g:-3|g",
            "app.hits:1|c",
            "app.lat:12|ms|@0.5",
            "app.set:u1|s"
        ]
    );
    let stats = cadent.stats();
    assert_eq!(
        stats["listeners"]["statsd"]["rejected_by_reason"]["missing_fields"],
        1
    );
    assert_eq!(stats["listeners"]["unix"]["parsed_lines"], 100);
    // Each datagram sent is a write, as each TCP write is (the counters are published
    // every stats_interval_ms, so wait for the ones that saw the sends).
    let udp_counters = || {
        let stats = cadent.stats();
        let (_, d) = stats["destinations"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(name, _)| name.starts_with("udp://"))
            .expect("the udp member in /stats");
        (
            d["writes"].as_u64().unwrap(),
            d["sent_lines"].as_u64().unwrap(),
            d["queued_lines"].as_u64().unwrap(),
        )
    };
    assert!(wait_until(Duration::from_secs(10), || {
        let (_, sent, queued) = udp_counters();
        sent == queued
    }));
    let (writes, sent, _) = udp_counters();
    assert!(
        writes > 0 && writes <= sent,
        "{writes} writes for {sent} lines"
    );
    assert_eq!(cadent.stop(), 0);
    assert!(!sock.exists(), "the unix socket file is removed at exit");
}

#[test]
fn a_late_sink_gets_everything_and_shutdown_flushes_open_batches() {
    // The sink's port is reserved but nobody listens yet: cadent keeps reconnecting.
    let sink_port = free_port();
    let in_port = free_port();
    let config = format!(
        r#"
[server]
admin_listen = "ADMIN"
stats_interval_ms = 50
[output]
flush_interval_ms = 60000
flush_bytes = 1048576
# Memory only: the shutdown flush waits for the sink (with a spool, a sink not yet
# connected at SIGTERM would get its lines from the spool at the next start).
spool_dir = ""
reconnect_backoff_min_ms = 20
reconnect_backoff_max_ms = 200
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{in_port}"
format = "graphite"
[[cluster]]
name = "late"
kind = "forward"
members = ["tcp://127.0.0.1:{sink_port}"]
[[route]]
match = {{ all = true }}
send_to = ["late"]
"#
    );
    let cadent = Cadent::start("late", &config);
    let lines: String = (0..5000)
        .map(|i| format!("late.m{i} {i} 1700000000\n"))
        .collect();
    send_tcp(&format!("127.0.0.1:{in_port}"), lines.as_bytes());
    std::thread::sleep(Duration::from_millis(300));

    // Batches stay open (huge flush_bytes and interval) until SIGTERM seals them; the sink
    // appears only now, so delivery needs both the reconnect and the shutdown flush.
    let sink = std::net::TcpListener::bind(format!("127.0.0.1:{sink_port}")).unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let (mut s, _) = sink.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut all = String::new();
        let _ = s.read_to_string(&mut all);
        all
    });
    let stats = cadent.stats();
    assert_eq!(stats["listeners"]["in"]["parsed_lines"], 5000);
    assert_eq!(cadent.stop(), 0);
    let got = reader.join().unwrap();
    assert_eq!(got, lines, "every line, once, in order");
}

#[test]
fn admin_endpoints_answer() {
    let a = Sink::start();
    let b = Sink::start();
    let port = free_port();
    let config = format!(
        r#"
[server]
admin_listen = "ADMIN"
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{port}"
format = "graphite"
[[cluster]]
name = "ring"
kind = "carbon_ch"
members = ["tcp://{}=a", "tcp://{}=b"]
[[route]]
match = {{ all = true }}
send_to = ["ring"]
"#,
        a.addr, b.addr
    );
    let cadent = Cadent::start("admin", &config);
    let status: serde_json::Value =
        serde_json::from_str(&http_get(&cadent.admin, "/ops/status").unwrap()).unwrap();
    assert_eq!(status["status"], "ok");
    let metrics = http_get(&cadent.admin, "/metrics").unwrap();
    for want in [
        "# TYPE cadent_received_lines counter",
        "cadent_received_lines{listener=\"in\",shard=\"0\"} 0",
        "cadent_rejected_lines{listener=\"in\",reason=\"bad_value\",shard=\"0\"} 0",
        &format!(
            "cadent_destination_sent_lines{{destination=\"tcp://{}\",shard=\"0\"}} 0",
            a.addr
        ),
    ] {
        assert!(metrics.contains(want), "missing {want:?} in /metrics");
    }
    let names: Vec<String> = (0..50).map(|i| format!("hc.m{i}")).collect();
    let want = cadent_hash(&cadent.dir.join("cadent.toml"), "ring", &names);
    for n in &names {
        let body = http_get(&cadent.admin, &format!("/hashcheck?key={n}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["clusters"]["ring"]["destinations"][0],
            want[n].as_str(),
            "{n}"
        );
    }
    assert!(
        http_get(&cadent.admin, "/hashcheck").is_none(),
        "no key is a 400"
    );
    assert_eq!(cadent.stop(), 0);
}

#[test]
fn a_stuck_sink_does_not_throttle_the_others() {
    // A sink that accepts and never reads: writes to it block once the socket buffers fill.
    let stuck = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stuck.set_recv_buffer_size(4096).unwrap();
    stuck
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    stuck.listen(16).unwrap();
    let stuck_addr = stuck.local_addr().unwrap().as_socket().unwrap();
    let stuck: std::net::TcpListener = stuck.into();
    stuck.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((s, _)) = stuck.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let healthy = Sink::start();
    let port = free_port();
    let config = format!(
        r#"
[server]
shards = 1
admin_listen = "ADMIN"
stats_interval_ms = 50
[output]
queue_bytes_max = 1048576
stall_ms_max = 300
write_timeout_ms = 1000
[[listen]]
name = "in"
url = "tcp://127.0.0.1:{port}"
format = "graphite"
[[cluster]]
name = "stuck"
kind = "forward"
members = ["tcp://{stuck_addr}"]
[[cluster]]
name = "healthy"
kind = "forward"
members = ["tcp://{}"]
[[route]]
match = {{ prefix = "stuck." }}
send_to = ["stuck"]
[[route]]
match = {{ all = true }}
send_to = ["healthy"]
"#,
        healthy.addr
    );
    let cadent = Cadent::start("stuck", &config);
    const LINES: usize = 400_000;
    let mut data = String::with_capacity(LINES * 40);
    for i in 0..LINES {
        if i % 4 == 0 {
            data.push_str(&format!("ok.m{} {i} 1700000000\n", i % 1000));
        } else {
            data.push_str(&format!("stuck.m{} {i} 1700000000\n", i % 1000));
        }
    }
    send_tcp(&format!("127.0.0.1:{port}"), data.as_bytes());
    assert!(
        wait_until(Duration::from_secs(60), || healthy.total()
            == (LINES / 4) as u64),
        "healthy sink has {} of {}",
        healthy.total(),
        LINES / 4
    );
    let stats = cadent.stats();
    let stalls = stats["listeners"]["in"]["stalls"].as_u64().unwrap();
    // Without the stall budget every read after the stuck queue filled would wait
    // stall_ms_max (hundreds of reads); with it, readers wait once per congestion episode.
    assert!(
        stalls <= 3,
        "readers stalled {stalls} times for a stuck sink"
    );
    // Counters are published every stats_interval_ms: wait for the snapshot that saw
    // the last buffer routed.
    let stuck_queued = || {
        cadent.stats()["destinations"][format!("tcp://{stuck_addr}")]["queued_lines"]
            .as_u64()
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || stuck_queued()
            == (LINES / 4 * 3) as u64),
        "stuck destination queued {} of {}",
        stuck_queued(),
        LINES / 4 * 3
    );
    eprintln!(
        "stuck destination: {}",
        cadent.stats()["destinations"][format!("tcp://{stuck_addr}")]
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(cadent);
    holder.join().unwrap();
}

//! End to end: cadent with 4 sinks, 1M graphite lines over TCP plus UDP datagrams; every
//! TCP line arrives exactly once at the sink carbon_ch names, and /stats agrees.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;

const TCP_LINES: usize = 1_000_000;
const TCP_CONNECTIONS: usize = 4;
const NAMES: usize = 10_000;
const UDP_DATAGRAMS: usize = 500;
const UDP_LINES_PER_DATAGRAM: usize = 20;

fn name(i: usize) -> String {
    format!("e2e.group{}.host{}.metric{}", i % 17, i % 101, i)
}

#[test]
fn million_lines_land_exactly_once_where_carbon_ch_says() {
    let sinks: Vec<Sink> = (0..4).map(|_| Sink::start()).collect();
    let tcp_port = free_port();
    let udp_port = free_port();
    let members: Vec<String> = sinks
        .iter()
        .zip(["a", "b", "c", "d"])
        .map(|(s, i)| format!("\"tcp://{}={i}\"", s.addr))
        .collect();
    let config = format!(
        r#"
[server]
shards = 0
admin_listen = "ADMIN"
stats_interval_ms = 50

# Self-metrics would reach the sinks at a minute boundary: names no sink should get.
[telemetry]
prefix = ""

[[listen]]
name = "tcp"
url = "tcp://127.0.0.1:{tcp_port}"
format = "graphite"

[[listen]]
name = "udp"
url = "udp://127.0.0.1:{udp_port}"
format = "graphite"

[[cluster]]
name = "sinks"
kind = "carbon_ch"
replication = 1
members = [{}]

[[route]]
match = {{ all = true }}
send_to = ["sinks"]
"#,
        members.join(", ")
    );
    let cadent = Cadent::start("e2e", &config);

    // Where every name must land, according to `cadent hash`.
    let mut names: Vec<String> = (0..NAMES).map(name).collect();
    names.extend(
        (0..UDP_DATAGRAMS * UDP_LINES_PER_DATAGRAM).map(|i| format!("e2eudp.m{}", i % 500)),
    );
    names.sort();
    names.dedup();
    let owner = cadent_hash(&cadent.dir.join("cadent.toml"), "sinks", &names);
    let port_of = |dest: &str| dest.split(['=', ':']).nth(1).unwrap().to_string();

    // TCP: 4 connections, each a contiguous share of the lines; values carry the sequence
    // number so every line is unique.
    let tcp_addr = format!("127.0.0.1:{tcp_port}");
    let senders: Vec<_> = (0..TCP_CONNECTIONS)
        .map(|c| {
            let addr = tcp_addr.clone();
            std::thread::spawn(move || {
                let per = TCP_LINES / TCP_CONNECTIONS;
                let mut data = Vec::with_capacity(per * 48);
                for seq in c * per..(c + 1) * per {
                    data.extend_from_slice(
                        format!("{} {seq} 1700000000\n", name(seq % NAMES)).as_bytes(),
                    );
                }
                send_tcp(&addr, &data);
            })
        })
        .collect();
    // UDP alongside, paced so loopback does not overflow the socket buffer.
    let udp_addr = format!("127.0.0.1:{udp_port}");
    for chunk in 0..UDP_DATAGRAMS / 50 {
        let dgrams: Vec<Vec<u8>> = (0..50)
            .map(|d| {
                let base = (chunk * 50 + d) * UDP_LINES_PER_DATAGRAM;
                (base..base + UDP_LINES_PER_DATAGRAM)
                    .map(|i| format!("e2eudp.m{} {i} 1700000000\n", i % 500))
                    .collect::<String>()
                    .into_bytes()
            })
            .collect();
        send_udp(&udp_addr, &dgrams);
        std::thread::sleep(Duration::from_millis(5));
    }
    for s in senders {
        s.join().unwrap();
    }

    // Wait until the UDP lines cadent parsed plus the TCP lines are all at the sinks.
    let delivered = || sinks.iter().map(|s| s.total()).sum::<u64>();
    let udp_parsed = || {
        cadent.stats()["listeners"]["udp"]["parsed_lines"]
            .as_u64()
            .unwrap()
    };
    let complete = wait_until(Duration::from_secs(120), || {
        delivered() >= TCP_LINES as u64 + udp_parsed()
    });
    assert!(
        complete,
        "sinks got {} lines, want {} (+udp)\n{}",
        delivered(),
        TCP_LINES,
        cadent.log()
    );
    std::thread::sleep(Duration::from_millis(300)); // anything extra would show up now

    let mut tcp_seen = vec![false; TCP_LINES];
    let mut udp_lines = 0u64;
    for sink in &sinks {
        let port = sink.addr.rsplit(':').next().unwrap().to_string();
        for (line, n) in sink.lines() {
            assert_eq!(n, 1, "{line:?} arrived {n} times");
            let mut f = line.split(' ');
            let (name, seq) = (f.next().unwrap(), f.next().unwrap());
            assert_eq!(port_of(&owner[name]), port, "{name} at the wrong sink");
            if name.starts_with("e2eudp.") {
                udp_lines += 1;
            } else {
                let seq: usize = seq.parse().unwrap();
                assert!(!tcp_seen[seq], "seq {seq} twice");
                tcp_seen[seq] = true;
            }
        }
    }
    let missing = tcp_seen.iter().filter(|s| !**s).count();
    assert_eq!(missing, 0, "{missing} TCP lines never arrived");

    // /stats agrees with what the sinks saw.
    std::thread::sleep(Duration::from_millis(200));
    let stats = cadent.stats();
    let tcp = &stats["listeners"]["tcp"];
    assert_eq!(tcp["received_lines"], TCP_LINES as u64);
    assert_eq!(tcp["parsed_lines"], TCP_LINES as u64);
    assert_eq!(tcp["rejected_lines"], 0);
    let udp = &stats["listeners"]["udp"];
    assert_eq!(udp["parsed_lines"].as_u64().unwrap(), udp_lines);
    assert!(udp_lines > 0, "no UDP line went through");
    let per_dest: HashMap<String, u64> = stats["destinations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.rsplit(':').next().unwrap().to_string(),
                v["sent_lines"].as_u64().unwrap(),
            )
        })
        .collect();
    for sink in &sinks {
        let port = sink.addr.rsplit(':').next().unwrap();
        assert_eq!(
            per_dest[port],
            sink.total(),
            "sent_lines of {port} vs the sink"
        );
        let d = &stats["destinations"][format!("tcp://{}", sink.addr)];
        assert_eq!(d["dropped_lines_queue_full"], 0);
        assert_eq!(d["queued_lines"], d["sent_lines"]);
    }
    assert_eq!(stats["unrouted"], 0);
    assert_eq!(cadent.stop(), 0, "exit status after SIGTERM");
}

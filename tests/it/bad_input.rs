//! Bad input: malformed lines among good ones, over-long lines, binary garbage, half-closed
//! and reset connections. Every good line arrives, bad ones are counted by reason, and the
//! process stays healthy.

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

fn config(tcp_port: u16, sink: &Sink) -> String {
    format!(
        r#"
[server]
shards = 2
admin_listen = "ADMIN"
stats_interval_ms = 50
[[listen]]
name = "tcp"
url = "tcp://127.0.0.1:{tcp_port}"
format = "graphite"
line_bytes_max = 256
read_buffer_bytes = 4096
[[cluster]]
name = "out"
kind = "forward"
members = ["tcp://{}"]
[[route]]
match = {{ all = true }}
send_to = ["out"]
"#,
        sink.addr
    )
}

#[test]
fn good_lines_survive_bad_input_and_bad_lines_are_counted() {
    let sink = Sink::start();
    let port = free_port();
    let cadent = Cadent::start("badinput", &config(port, &sink));
    let addr = format!("127.0.0.1:{port}");
    let mut good: HashSet<String> = HashSet::new();

    // 1. Malformed lines interleaved with good ones, 200 of each reason.
    let bad = [
        "missing.fields 1",
        "bad.value abc 1700000000",
        "bad.ts 1 yesterday",
        "too many fields 1 1700000000",
        // No path at all. (A control byte in a name is no longer a reject on a
        // cleansing listener: it goes out as `_`, as through carbon-c-relay.)
        ".;k=v 1 1700000000",
    ];
    let mut data = String::new();
    for i in 0..1000 {
        let g = format!("bad.good.{i} {i} 1700000000");
        data.push_str(&g);
        data.push_str(if i % 2 == 0 { "\n" } else { "\r\n" });
        good.insert(g);
        data.push_str(bad[i % bad.len()]);
        data.push('\n');
    }
    send_tcp(&addr, data.as_bytes());

    // 2. Over-long lines (300 bytes, and one of 100 KB spanning many reads) among good ones.
    let mut data = String::new();
    for i in 0..100 {
        let g = format!("long.good.{i} {i} 1700000000");
        data.push_str(&g);
        data.push('\n');
        good.insert(g);
        data.push_str(&"x".repeat(300));
        data.push('\n');
    }
    data.push_str(&"y".repeat(100_000));
    data.push_str("\nlong.after 1 1700000000\n");
    good.insert("long.after 1 1700000000".into());
    send_tcp(&addr, data.as_bytes());

    // 3. Binary garbage (no blanks, so every piece is a reject), then a good line.
    let mut rng = cadent::tools::SplitMix64(0x9e3779b97f4a7c15);
    let mut garbage: Vec<u8> = (0..65_536)
        .map(|_| loop {
            let b = rng.next_u64() as u8;
            if b != b' ' && b != b'\t' {
                break b;
            }
        })
        .collect();
    garbage.extend_from_slice(b"\ngarbage.after 1 1700000000\n");
    good.insert("garbage.after 1 1700000000".into());
    send_tcp(&addr, &garbage);

    // 4. Half-closed: the client shuts its write side and waits for cadent to close.
    // Complete lines arrive; the unterminated tail may have been cut short, so it is
    // counted and dropped (as carbon's line receiver does).
    send_tcp(
        &addr,
        b"half.one 1 1700000000\nhalf.two 2 1700000000\nhalf.cut 3 17000",
    );
    good.insert("half.one 1 1700000000".into());
    good.insert("half.two 2 1700000000".into());

    // 5. Reset mid-line: complete lines arrive, the cut line does not.
    {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"reset.whole 1 1700000000\nreset.cut 1 17")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s); // RST
    }
    good.insert("reset.whole 1 1700000000".into());

    assert!(
        wait_until(Duration::from_secs(30), || sink.total()
            >= good.len() as u64),
        "sink has {} of {} good lines\n{}",
        sink.total(),
        good.len(),
        cadent.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let got = sink.lines();
    for g in &good {
        assert_eq!(got.get(g), Some(&1), "good line {g:?}");
    }
    let extra: Vec<_> = got.keys().filter(|l| !good.contains(*l)).collect();
    assert!(
        extra.is_empty(),
        "lines that should have been rejected arrived: {extra:?}"
    );

    let stats = cadent.stats();
    let l = &stats["listeners"]["tcp"];
    let r = &l["rejected_by_reason"];
    assert_eq!(r["bad_value"], 200);
    assert_eq!(r["bad_timestamp"], 200);
    assert_eq!(r["too_many_fields"], 200);
    assert_eq!(r["bad_name"], 200);
    assert!(r["missing_fields"].as_u64().unwrap() >= 200);
    assert!(r["line_too_long"].as_u64().unwrap() >= 101);
    assert_eq!(r["unterminated"], 1);
    let received = l["received_lines"].as_u64().unwrap();
    let parsed = l["parsed_lines"].as_u64().unwrap();
    assert_eq!(parsed, good.len() as u64);
    assert_eq!(received, parsed + l["rejected_lines"].as_u64().unwrap());

    // Still healthy: status answers and a fresh connection still flows.
    assert!(http_get(&cadent.admin, "/ops/status").is_some());
    send_tcp(&addr, b"still.alive 1 1700000000\n");
    assert!(wait_until(Duration::from_secs(10), || sink
        .lines()
        .contains_key("still.alive 1 1700000000")));
    assert_eq!(cadent.stop(), 0);
}

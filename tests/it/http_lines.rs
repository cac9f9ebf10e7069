//! The HTTP listener: lines in POST bodies (graphite and statsd, as Cadent's http://
//! listener took them) go through the pipeline like any other input; a body over
//! body_bytes_max is refused with 413, another path with 404, another method with 405,
//! a body without a length with 411; keep-alive carries several requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{free_port, wait_until, Cadent, Sink};

/// Sends raw HTTP requests on one connection; returns each response's status line.
fn exchange(addr: &str, requests: &[Vec<u8>]) -> Vec<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut statuses = Vec::new();
    for r in requests {
        if s.write_all(r).is_err() {
            break;
        }
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        // Until a final answer's head (a 100 Continue comes before it).
        let done = |got: &[u8]| {
            let g = got
                .strip_prefix(b"HTTP/1.1 100 Continue\r\n\r\n")
                .unwrap_or(got);
            g.windows(4).any(|w| w == b"\r\n\r\n")
        };
        while !done(&got) {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        let text = text
            .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
            .map(str::to_string)
            .unwrap_or(text);
        if text.is_empty() {
            break;
        }
        statuses.push(text.lines().next().unwrap_or_default().to_string());
    }
    statuses
}

fn post(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn lines_in_post_bodies() {
    let sink = Sink::start();
    let (g, s) = (free_port(), free_port());
    let c = Cadent::start(
        "http-lines",
        &format!(
            r#"
[server]
admin_listen = "ADMIN"
shards = 2
[telemetry]
prefix = ""
[[listen]]
name = "g"
url = "http://127.0.0.1:{g}/lines"
format = "graphite"
body_bytes_max = 4096
read_buffer_bytes = 4096
line_bytes_max = 1024
[[listen]]
name = "s"
url = "http://127.0.0.1:{s}/lines"
format = "statsd"
[[cluster]]
name = "out"
kind = "forward"
members = ["{}"]
[[route]]
match = {{ all = true }}
send_to = ["out"]
"#,
            sink.addr
        ),
    );
    let ga = format!("127.0.0.1:{g}");
    // Two requests on one connection (the second with 100-continue, its last line
    // without a newline), then a refused one that closes it.
    let big: String = (0..200)
        .map(|i| format!("big.m{i} 1 1700000000\n"))
        .collect();
    let statuses = exchange(
        &ga,
        &[
            post("/lines", b"a.b 1 1700000000\na.c 2 1700000000\n", ""),
            post(
                "/lines",
                b"a.d 3 1700000000\nbad line\na.e 4 1700000000",
                "Expect: 100-continue\r\n",
            ),
            post("/lines", big.as_bytes(), ""),
            post("/lines", b"never.read 1 1\n", ""),
        ],
    );
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 413 Payload Too Large"
        ]
    );
    // A body read in several pieces (larger than the read buffer, under the bound is
    // not possible here: 4096 each), the other refusals.
    assert_eq!(
        exchange(&ga, &[post("/other", b"x 1 1\n", "")]),
        ["HTTP/1.1 404 Not Found"]
    );
    assert_eq!(
        exchange(&ga, &[b"GET /lines HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]),
        ["HTTP/1.1 405 Method Not Allowed"]
    );
    assert_eq!(
        exchange(
            &ga,
            &[b"POST /lines HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nx 1 1\r\n0\r\n\r\n".to_vec()]
        ),
        ["HTTP/1.1 411 Length Required"]
    );
    // statsd lines; a large body arrives in several reads.
    let many: String = (0..2000).map(|i| format!("s.m{}:1|c\n", i % 7)).collect();
    assert_eq!(
        exchange(
            &format!("127.0.0.1:{s}"),
            &[post("/lines", many.as_bytes(), "Connection: close\r\n")]
        ),
        ["HTTP/1.1 204 No Content"]
    );
    let arrived = wait_until(Duration::from_secs(10), || sink.total() == 4 + 2000);
    assert!(arrived, "{} lines at the sink", sink.total());
    let lines = sink.lines();
    for l in ["a.b 1 1700000000", "a.d 3 1700000000", "a.e 4 1700000000"] {
        assert_eq!(lines.get(l), Some(&1), "{l}: {lines:?}");
    }
    // Counters are published every stats_interval_ms.
    assert!(wait_until(Duration::from_secs(5), || {
        let st = c.stats();
        st["listeners"]["s"]["parsed_lines"] == 2000 && st["listeners"]["g"]["http_refused"] == 4
    }));
    let st = c.stats();
    let gl = &st["listeners"]["g"];
    assert_eq!(gl["received_lines"], 5, "{gl}");
    assert_eq!(gl["rejected_lines"], 1, "{gl}");
    assert_eq!(gl["http_refused"], 4, "{gl}");
    assert_eq!(st["listeners"]["s"]["parsed_lines"], 2000);
}

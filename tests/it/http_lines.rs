//! The HTTP listener: lines in POST bodies (graphite and statsd, as Cadent's http://
//! listener took them) go through the pipeline like any other input; a body over
//! body_bytes_max is refused with 413, another path with 404, another method with 405,
//! a body without a length or chunked framing with 411, a gzip body with 415; chunked
//! bodies (python's http.client's among them) are taken; keep-alive carries several
//! requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{free_port, wait_until, Cadent, Sink};

/// python3 (http.client is stdlib), the system one if pyenv's shim is not usable.
fn python() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import http.client"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("no python3 interpreter found")
}

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
    // Chunked bodies: chunks split mid-line, an extension, a trailer, then a request
    // pipelined behind it on the same connection.
    let chunked = b"POST /lines HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        9\r\nx.chunk 1\r\n10;ext=1\r\n 1700000000\nx.ch\r\n\
        11\r\nunk2 2 1700000000\r\n0\r\nX-Trailer: 1\r\n\r\n";
    let mut pipelined = chunked.to_vec();
    pipelined.extend_from_slice(&post("/lines", b"x.after 3 1700000000\n", ""));
    let mut conn = TcpStream::connect(&ga).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(&pipelined).unwrap();
    let mut answers = Vec::new();
    let mut b = [0u8; 1024];
    while answers.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
        match conn.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => answers.extend_from_slice(&b[..n]),
        }
    }
    let answers = String::from_utf8_lossy(&answers);
    assert_eq!(
        answers.matches("HTTP/1.1 204 No Content\r\n").count(),
        2,
        "{answers}"
    );
    // A real client's chunked body: python's http.client sends a generator's pieces
    // as chunks.
    let script = format!(
        r#"
import http.client
def body():
    for i in range(0, 100, 7):
        yield "".join("py.m%d 1 1700000000\n" % j for j in range(i, min(i + 7, 100))).encode()
c = http.client.HTTPConnection("{ga}", timeout=10)
c.request("POST", "/lines", body=body())
r = c.getresponse()
print(r.status)
"#
    );
    let out = std::process::Command::new(python())
        .args(["-c", &script])
        .output()
        .expect("run python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "204",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A chunked body is refused at the chunk that takes it over the bound; the chunks
    // before it were taken.
    assert_eq!(
        exchange(
            &ga,
            &[
                b"POST /lines HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                18\r\nover.first 1 1700000000\n\r\n1388\r\n"
                    .to_vec()
            ]
        ),
        ["HTTP/1.1 413 Payload Too Large"]
    );
    // Neither a body without framing nor codings cadent cannot take off.
    assert_eq!(
        exchange(
            &ga,
            &[b"POST /lines HTTP/1.1\r\nHost: x\r\n\r\nx 1 1\n".to_vec()]
        ),
        ["HTTP/1.1 411 Length Required"]
    );
    assert_eq!(
        exchange(
            &ga,
            &[post(
                "/lines",
                b"\x1f\x8b\x08\x00",
                "Content-Encoding: gzip\r\n"
            )]
        ),
        ["HTTP/1.1 415 Unsupported Media Type"]
    );
    assert_eq!(
        exchange(
            &ga,
            &[
                b"POST /lines HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                    .to_vec()
            ]
        ),
        ["HTTP/1.1 501 Not Implemented"]
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
    let arrived = wait_until(Duration::from_secs(10), || {
        sink.total() == 4 + 3 + 100 + 1 + 2000
    });
    assert!(arrived, "{} lines at the sink", sink.total());
    let lines = sink.lines();
    for l in [
        "a.b 1 1700000000",
        "a.d 3 1700000000",
        "a.e 4 1700000000",
        "x.chunk 1 1700000000",
        "x.chunk2 2 1700000000",
        "x.after 3 1700000000",
        "py.m0 1 1700000000",
        "py.m99 1 1700000000",
        "over.first 1 1700000000",
    ] {
        assert_eq!(lines.get(l), Some(&1), "{l}: {lines:?}");
    }
    // Counters are published every stats_interval_ms.
    assert!(wait_until(Duration::from_secs(5), || {
        let st = c.stats();
        st["listeners"]["s"]["parsed_lines"] == 2000 && st["listeners"]["g"]["http_refused"] == 7
    }));
    let st = c.stats();
    let gl = &st["listeners"]["g"];
    assert_eq!(gl["received_lines"], 5 + 3 + 100 + 1, "{gl}");
    assert_eq!(gl["rejected_lines"], 1, "{gl}");
    assert_eq!(gl["http_refused"], 7, "{gl}");
    assert_eq!(st["listeners"]["s"]["parsed_lines"], 2000);
}

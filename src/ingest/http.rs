//! The HTTP listener (`url = "http://host:port/path"`): lines in the bodies of POSTs, as
//! Cadent's `http://` listener took them (graphite or statsd lines, one per line, the
//! last needing no newline). Every shard binds the port (`SO_REUSEPORT`); a body is read
//! in buffer-sized pieces straight into the shard's pipeline, like a TCP stream.
//!
//! HTTP/1.1 with `Content-Length` (keep-alive by default; `Connection: close` and
//! HTTP/1.0 close), `Expect: 100-continue` answered. Answers: 204 for a body taken, 404
//! for another path, 405 for another method, 411 without a length (chunked bodies are
//! not taken), 413 for a body over `body_bytes_max` and 431 for headers over 16 KiB; the
//! refusals close the connection. What the lines held is counted by the listener as for
//! any other (`received_lines`, `rejected_lines` by reason); refused requests in
//! `http_refused`.

use std::cell::RefCell;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::{wait_while_congested, ReadOptions};
use crate::protocol::decode::End;
use crate::shard::pipeline::Core;

/// Longest request head (request line and headers).
pub const HEAD_BYTES_MAX: usize = 16 << 10;

/// What an HTTP listener takes beyond a stream's options.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The path bodies are POSTed to.
    pub path: String,
    /// Largest body.
    pub body_bytes_max: usize,
}

/// Accepts connections until the task is dropped; each gets its own task.
pub async fn accept_loop(
    core: Rc<RefCell<Core>>,
    listener: TcpListener,
    opts: ReadOptions,
    http: HttpOptions,
) {
    let http = Rc::new(http);
    loop {
        let s = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                core.borrow_mut().counters.listeners[opts.listener]
                    .counters
                    .read_errors += 1;
                tracing::debug!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        {
            let mut c = core.borrow_mut();
            let lc = &mut c.counters.listeners[opts.listener].counters;
            if lc.connections_open as usize >= opts.connections_max {
                lc.connections_refused += 1;
                continue;
            }
            lc.connections_accepted += 1;
            lc.connections_open += 1;
        }
        let (core, http) = (core.clone(), http.clone());
        glommio::spawn_local(async move {
            let _ = serve(&core, s, opts, &http).await;
            core.borrow_mut().counters.listeners[opts.listener]
                .counters
                .connections_open -= 1;
        })
        .detach();
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    content_length: Option<usize>,
    chunked: bool,
    expect_continue: bool,
    keep_alive: bool,
}

/// Parses a request head (up to and without the blank line).
fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let version = first.next()?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut h = Head {
        method,
        path,
        content_length: None,
        chunked: false,
        expect_continue: false,
        keep_alive: version == "HTTP/1.1",
    };
    for line in lines {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => h.content_length = Some(v.parse().ok()?),
            "transfer-encoding" => h.chunked = !v.eq_ignore_ascii_case("identity"),
            "expect" => h.expect_continue = v.eq_ignore_ascii_case("100-continue"),
            "connection" => {
                if v.eq_ignore_ascii_case("close") {
                    h.keep_alive = false;
                } else if v.eq_ignore_ascii_case("keep-alive") {
                    h.keep_alive = true;
                }
            }
            _ => {}
        }
    }
    Some(h)
}

async fn reply(s: &mut TcpStream, status: &str, keep_alive: bool) -> std::io::Result<()> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    let msg = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: {conn}\r\n\r\n");
    s.write_all(msg.as_bytes()).await
}

async fn refuse(
    core: &Rc<RefCell<Core>>,
    s: &mut TcpStream,
    listener: usize,
    status: &str,
) -> std::io::Result<()> {
    core.borrow_mut().counters.listeners[listener]
        .counters
        .http_refused += 1;
    reply(s, status, false).await
}

/// Serves one connection: request after request until it closes or a request is refused.
async fn serve(
    core: &Rc<RefCell<Core>>,
    mut s: TcpStream,
    opts: ReadOptions,
    http: &HttpOptions,
) -> std::io::Result<()> {
    let mut buf = vec![
        0u8;
        opts.read_buffer_bytes
            .max(opts.line_bytes_max + 2)
            .max(HEAD_BYTES_MAX + 4)
    ];
    let mut filled = 0;
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&buf[..filled], b"\r\n\r\n") {
                break i;
            }
            if filled > HEAD_BYTES_MAX {
                return refuse(
                    core,
                    &mut s,
                    opts.listener,
                    "431 Request Header Fields Too Large",
                )
                .await;
            }
            let n = s.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Ok(());
            }
            filled += n;
        };
        let Some(head) = parse_head(&buf[..head_end]) else {
            return refuse(core, &mut s, opts.listener, "400 Bad Request").await;
        };
        buf.copy_within(head_end + 4..filled, 0);
        filled -= head_end + 4;
        if head.path != http.path {
            return refuse(core, &mut s, opts.listener, "404 Not Found").await;
        }
        if head.method != "POST" && head.method != "PUT" {
            return refuse(core, &mut s, opts.listener, "405 Method Not Allowed").await;
        }
        let len = match (head.content_length, head.chunked) {
            (Some(n), false) => n,
            _ => return refuse(core, &mut s, opts.listener, "411 Length Required").await,
        };
        if len > http.body_bytes_max {
            return refuse(core, &mut s, opts.listener, "413 Payload Too Large").await;
        }
        if head.expect_continue {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        // The body, through the pipeline a buffer at a time; its last line needs no
        // newline (the body is whole, like a datagram). While body bytes are still on
        // the socket, the buffer holds body bytes only.
        let mut body = filled.min(len);
        let mut unread = len - body;
        core.borrow_mut().counters.listeners[opts.listener]
            .counters
            .received_bytes += body as u64;
        let mut skipping = false;
        loop {
            let last = unread == 0;
            wait_while_congested(core, &opts).await;
            let used = {
                let mut c = core.borrow_mut();
                c.take_handed_over();
                let used = c.process(
                    opts.listener,
                    &buf[..body],
                    &mut skipping,
                    if last { End::Datagram } else { End::More },
                );
                c.mesh.send_early();
                used
            };
            buf.copy_within(used..filled, 0);
            filled -= used;
            body -= used;
            if last {
                break;
            }
            let room = (buf.len() - filled).min(unread);
            if room == 0 {
                // Cannot happen (a line over the bound is skipped), but never spin.
                return refuse(core, &mut s, opts.listener, "400 Bad Request").await;
            }
            let n = s.read(&mut buf[filled..filled + room]).await?;
            if n == 0 {
                return Ok(()); // the client went away mid-body: nothing is answered
            }
            core.borrow_mut().counters.listeners[opts.listener]
                .counters
                .received_bytes += n as u64;
            filled += n;
            body += n;
            unread -= n;
        }
        reply(&mut s, "204 No Content", head.keep_alive).await?;
        if !head.keep_alive {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head(
            b"POST /lines?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nExpect: 100-continue",
        )
        .unwrap();
        assert_eq!(
            h,
            Head {
                method: "POST".into(),
                path: "/lines".into(),
                content_length: Some(12),
                chunked: false,
                expect_continue: true,
                keep_alive: true,
            }
        );
        let h = parse_head(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked").unwrap();
        assert!(h.chunked && !h.keep_alive && h.content_length.is_none());
        assert!(parse_head(b"garbage").is_none());
        assert!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: x").is_none());
    }
}

//! The HTTP listener (`url = "http://host:port/path"`): lines in the bodies of POSTs, as
//! Cadent's `http://` listener took them (graphite or statsd lines, one per line, the
//! last needing no newline). Every shard binds the port (`SO_REUSEPORT`); a body is read
//! in buffer-sized pieces straight into the shard's pipeline, like a TCP stream.
//!
//! HTTP/1.1 (keep-alive by default; `Connection: close` and HTTP/1.0 close), a body
//! framed by `Content-Length` or sent `Transfer-Encoding: chunked` (its framing is taken
//! off in place as it arrives; chunk extensions and trailers are read and ignored),
//! `Expect: 100-continue` answered. Answers: 204 for a body taken, 404 for another path,
//! 405 for another method, 411 without a length or chunked framing, 413 for a body over
//! `body_bytes_max`, 415 for a `Content-Encoding` other than `identity`, 501 for a
//! transfer coding other than `chunked`, 400 for broken chunk framing and 431 for headers
//! over 16 KiB; the refusals close the connection. A `Content-Length` over the bound is
//! refused before any of the body is read; a chunked body cannot be known in advance, so
//! it is refused at the first chunk that takes it over the bound, and the lines of the
//! chunks before that one have gone through the pipeline already (a client that posts
//! chunked bodies near the bound and retries on 413 may send those lines twice). What the
//! lines held is counted by the listener as for any other (`received_lines`,
//! `rejected_lines` by reason); refused requests in `http_refused`.

use std::cell::RefCell;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::{wait_while_congested, ReadOptions};
use crate::protocol::decode::End;
use crate::shard::pipeline::Core;

/// Longest request head (request line and headers).
pub const HEAD_BYTES_MAX: usize = 16 << 10;

/// Longest chunk-size line of a chunked body (the size in hex and any extensions), and
/// longest trailer line.
const CHUNK_LINE_BYTES_MAX: usize = 1 << 10;

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
    /// A transfer coding other than `chunked` and `identity` (not implemented).
    unknown_transfer_coding: bool,
    /// A `Content-Encoding` other than `identity` (gzip and the like are not taken).
    encoded: bool,
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
        unknown_transfer_coding: false,
        encoded: false,
        expect_continue: false,
        keep_alive: version == "HTTP/1.1",
    };
    for line in lines {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => h.content_length = Some(v.parse().ok()?),
            "transfer-encoding" => {
                // A list of codings applied in order; only `chunked` (last, as HTTP/1.1
                // requires) is taken off here.
                for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    if coding.eq_ignore_ascii_case("chunked") {
                        h.chunked = true;
                    } else if !coding.eq_ignore_ascii_case("identity") {
                        h.unknown_transfer_coding = true;
                    }
                }
            }
            "content-encoding" => {
                let identity = v
                    .split(',')
                    .map(str::trim)
                    .all(|c| c.is_empty() || c.eq_ignore_ascii_case("identity"));
                h.encoded |= !identity;
            }
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

/// How a request's body is framed, and how far it has been decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length`: this many body bytes not yet in the buffer's body part.
    Length(usize),
    /// `Transfer-Encoding: chunked`, with the data bytes declared so far.
    Chunked { state: Chunk, total: usize },
}

/// Where a chunked body's decoder stands between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line (hex digits, optional `;extensions`, CRLF).
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(usize),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last (empty) chunk: trailer lines until an empty one.
    Trailer,
    /// The body is whole.
    Done,
}

impl Framing {
    fn done(&self) -> bool {
        matches!(
            self,
            Framing::Length(0)
                | Framing::Chunked {
                    state: Chunk::Done,
                    ..
                }
        )
    }

    /// How much of `free` bytes of buffer the next read may fill: never past a
    /// length-framed body (what follows is read with the next head); a chunked body's
    /// end is only known once it is read.
    fn room(&self, free: usize) -> usize {
        match *self {
            Framing::Length(left) => free.min(left),
            Framing::Chunked { .. } => free,
        }
    }

    /// Takes what it can of `buf[body..filled]` into the body: moves data bytes down to
    /// `buf[body..]`, drops chunk framing, keeps the bytes it cannot decode yet (or that
    /// follow the body) right after. Returns the new `(body, filled)`, or the status a
    /// broken or oversized body is refused with.
    fn decode(
        &mut self,
        buf: &mut [u8],
        mut body: usize,
        filled: usize,
        body_bytes_max: usize,
    ) -> Result<(usize, usize), (usize, &'static str)> {
        let (state, total) = match self {
            Framing::Length(left) => {
                let take = (*left).min(filled - body);
                *left -= take;
                return Ok((body + take, filled));
            }
            Framing::Chunked { state, total } => (state, total),
        };
        const BAD: &str = "400 Bad Request";
        let mut raw = body;
        let fault = loop {
            let pending = &buf[raw..filled];
            match *state {
                Chunk::Done => break None,
                Chunk::Size | Chunk::Trailer => {
                    let Some(nl) = memchr::memchr(b'\n', pending) else {
                        // Both kinds of line are bounded alike, so what waits undecoded
                        // always fits beside a partial line in the connection's buffer.
                        if pending.len() > CHUNK_LINE_BYTES_MAX {
                            break Some(if *state == Chunk::Size {
                                BAD
                            } else {
                                "431 Request Header Fields Too Large"
                            });
                        }
                        break None;
                    };
                    let line = &pending[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    raw += nl + 1;
                    if *state == Chunk::Trailer {
                        if line.is_empty() {
                            *state = Chunk::Done;
                        }
                        continue;
                    }
                    let Some(size) = parse_chunk_size(line) else {
                        break Some(BAD);
                    };
                    if size == 0 {
                        *state = Chunk::Trailer;
                        continue;
                    }
                    *total = total.saturating_add(size);
                    if *total > body_bytes_max {
                        break Some("413 Payload Too Large");
                    }
                    *state = Chunk::Data(size);
                }
                Chunk::Data(left) => {
                    let take = left.min(pending.len());
                    if take == 0 {
                        break None;
                    }
                    buf.copy_within(raw..raw + take, body);
                    body += take;
                    raw += take;
                    *state = if take == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::DataEnd => match pending {
                    [] | [b'\r'] => break None,
                    [b'\n', ..] => {
                        raw += 1;
                        *state = Chunk::Size;
                    }
                    [b'\r', b'\n', ..] => {
                        raw += 2;
                        *state = Chunk::Size;
                    }
                    _ => break Some(BAD),
                },
            }
        };
        if let Some(status) = fault {
            return Err((body, status));
        }
        // Close the gap the framing left between the body and what is still undecoded.
        buf.copy_within(raw..filled, body);
        Ok((body, body + (filled - raw)))
    }
}

/// What [`chunked_body`] made of a chunked body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dechunked {
    /// The body's data, framing taken off (up to a refusal).
    pub body: Vec<u8>,
    /// What was read after the body's end (a pipelined request's first bytes).
    pub rest: Vec<u8>,
    /// The body's end (its last chunk and trailers) was read.
    pub done: bool,
    /// The status a broken or oversized body is refused with.
    pub refused: Option<&'static str>,
}

/// Decodes a chunked body that arrives `piece` bytes per read (at least 1), through the
/// decoder and buffer discipline a connection uses: for tests and fuzzing.
pub fn chunked_body(wire: &[u8], piece: usize, body_bytes_max: usize) -> Dechunked {
    let mut f = Framing::Chunked {
        state: Chunk::Size,
        total: 0,
    };
    let mut buf = vec![0u8; CHUNK_LINE_BYTES_MAX + 2 + piece.max(1)];
    let (mut body, mut filled, mut out, mut fed) = (0, 0, Vec::new(), 0);
    loop {
        match f.decode(&mut buf, body, filled, body_bytes_max) {
            Ok(v) => (body, filled) = v,
            Err((b, status)) => {
                out.extend_from_slice(&buf[..b]);
                return Dechunked {
                    body: out,
                    rest: Vec::new(),
                    done: false,
                    refused: Some(status),
                };
            }
        }
        // The pipeline takes the body bytes, as `serve` does.
        out.extend_from_slice(&buf[..body]);
        buf.copy_within(body..filled, 0);
        filled -= body;
        body = 0;
        let room = f.room(buf.len() - filled).min(wire.len() - fed);
        if f.done() || room == 0 {
            break;
        }
        let n = piece.max(1).min(room);
        buf[filled..filled + n].copy_from_slice(&wire[fed..fed + n]);
        (fed, filled) = (fed + n, filled + n);
    }
    Dechunked {
        body: out,
        rest: buf[..filled].to_vec(),
        done: f.done(),
        refused: None,
    }
}

/// A chunk-size line's size: hex digits, then optional blanks and `;extensions`.
fn parse_chunk_size(line: &[u8]) -> Option<usize> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = &line[digits..];
    let rest_ok = rest
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t'))
        .is_none_or(|b| *b == b';');
    if digits == 0 || digits > 15 || !rest_ok {
        return None;
    }
    usize::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
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
            .max(opts.line_bytes_max + 2 + CHUNK_LINE_BYTES_MAX + 2)
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
            core.borrow_mut().counters.listeners[opts.listener]
                .counters
                .received_bytes += n as u64;
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
        if head.unknown_transfer_coding {
            return refuse(core, &mut s, opts.listener, "501 Not Implemented").await;
        }
        if head.encoded {
            return refuse(core, &mut s, opts.listener, "415 Unsupported Media Type").await;
        }
        // How the body is framed: a length (what is left of it to read) or chunks.
        let mut framing = match (head.content_length, head.chunked) {
            (_, true) => Framing::Chunked {
                state: Chunk::Size,
                total: 0,
            },
            (Some(n), false) if n > http.body_bytes_max => {
                return refuse(core, &mut s, opts.listener, "413 Payload Too Large").await;
            }
            (Some(n), false) => Framing::Length(n),
            (None, false) => {
                return refuse(core, &mut s, opts.listener, "411 Length Required").await
            }
        };
        if head.expect_continue {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        // The body, through the pipeline a buffer at a time; its last line needs no
        // newline (the body is whole, like a datagram). `buf[..body]` holds body bytes
        // (framing taken off), `buf[body..filled]` bytes not decoded yet: a partial
        // chunk-size line, or what follows the body (a pipelined request).
        let mut body = 0;
        let mut skipping = false;
        loop {
            let fault = match framing.decode(&mut buf, body, filled, http.body_bytes_max) {
                Ok((b, f)) => {
                    (body, filled) = (b, f);
                    None
                }
                Err((b, status)) => {
                    // The chunks before the fault are taken (their whole lines).
                    (body, filled) = (b, b);
                    Some(status)
                }
            };
            let last = framing.done();
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
            if let Some(status) = fault {
                return refuse(core, &mut s, opts.listener, status).await;
            }
            buf.copy_within(used..filled, 0);
            filled -= used;
            body -= used;
            if last {
                break;
            }
            let room = framing.room(buf.len() - filled);
            if room == 0 {
                // Cannot happen (a line over the bound is skipped, and the undecoded
                // bytes are at most a chunk-size line), but never spin.
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
                unknown_transfer_coding: false,
                encoded: false,
                expect_continue: true,
                keep_alive: true,
            }
        );
        let h = parse_head(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked").unwrap();
        assert!(h.chunked && !h.keep_alive && h.content_length.is_none());
        let h = parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked").unwrap();
        assert!(h.chunked && h.unknown_transfer_coding);
        let h = parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked").unwrap();
        assert!(h.chunked && !h.unknown_transfer_coding);
        let h = parse_head(b"POST / HTTP/1.1\r\nContent-Encoding: gzip").unwrap();
        assert!(h.encoded);
        let h = parse_head(b"POST / HTTP/1.1\r\nContent-Encoding: identity").unwrap();
        assert!(!h.encoded);
        assert!(parse_head(b"garbage").is_none());
        assert!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: x").is_none());
    }

    fn dechunk(wire: &[u8], step: usize, max: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
        dechunk_taken(wire, step, max).map_err(|(_, status)| status)
    }

    /// What was taken before a refusal, and its status.
    type Refused = (Vec<u8>, &'static str);

    /// As [`dechunk`], with what was taken before a refusal.
    fn dechunk_taken(wire: &[u8], step: usize, max: usize) -> Result<(Vec<u8>, Vec<u8>), Refused> {
        let d = chunked_body(wire, step, max);
        match d.refused {
            Some(status) => Err((d.body, status)),
            None => {
                assert!(d.done, "not done after {} bytes", wire.len());
                Ok((d.body, d.rest))
            }
        }
    }

    #[test]
    fn chunked_bodies() {
        let wire = b"5\r\na 1 1\r\n7;ext=1\r\n\nb 2 2\n\r\n0\r\nX-T: 1\r\n\r\nPOST /next";
        for step in [1, 2, 3, 7, 64, wire.len()] {
            let (body, rest) = dechunk(wire, step, 1 << 20).unwrap();
            assert_eq!(body, b"a 1 1\nb 2 2\n", "step {step}");
            // What followed the body stays for the next head (as much as was read).
            assert!(b"POST /next".starts_with(&rest), "step {step}: {rest:?}");
            assert_eq!(rest.len() == 10, step >= wire.len(), "step {step}");
        }
        // Bare LF line ends, upper-case hex, blanks before an extension.
        let (body, rest) = dechunk(b"A \t;x\nabcdefghij\n0\n\n", 3, 100).unwrap();
        assert_eq!(
            (body.as_slice(), rest.as_slice()),
            (&b"abcdefghij"[..], &b""[..])
        );
        // The bound counts the declared data, so a body is refused at the chunk that
        // takes it over, before its data is read.
        let (body, _) = dechunk(b"4\r\nabcd\r\n0\r\n\r\n", 64, 4).unwrap();
        assert_eq!(body, b"abcd");
        for step in [1, 5, 64] {
            assert_eq!(
                dechunk_taken(b"3\r\nabc\r\n2\r\n", step, 4),
                Err((b"abc".to_vec(), "413 Payload Too Large")),
                "step {step}"
            );
        }
        assert_eq!(
            dechunk(b"ffffffffffffffff\r\n", 64, 4),
            Err("400 Bad Request")
        );
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5 5\r\n",
            b"-1\r\n",
            b"2\r\nabX\r\n",
        ] {
            assert_eq!(dechunk(bad, 64, 100), Err("400 Bad Request"), "{bad:?}");
        }
        let long = vec![b'1'; CHUNK_LINE_BYTES_MAX + 1];
        assert_eq!(dechunk(&long, 4096, 100), Err("400 Bad Request"));
        assert_eq!(parse_chunk_size(b"1f"), Some(31));
        assert_eq!(parse_chunk_size(b"0;a=b"), Some(0));
    }

    #[test]
    fn random_chunkings_and_reads_give_the_body_back() {
        let mut rng = crate::tools::SplitMix64(7);
        for case in 0..500 {
            let body: Vec<u8> = (0..rng.below(300))
                .map(|_| b"ab \r\n0;"[rng.below(7)])
                .collect();
            let mut wire = Vec::new();
            let mut at = 0;
            while at < body.len() {
                let n = (1 + rng.below(40)).min(body.len() - at);
                let ext = if rng.below(4) == 0 { ";x=\"y\"" } else { "" };
                let eol = if rng.below(5) == 0 { "\n" } else { "\r\n" };
                let size = if rng.below(2) == 0 {
                    format!("{n:x}")
                } else {
                    format!("{n:X}")
                };
                wire.extend_from_slice(format!("{size}{ext}{eol}").as_bytes());
                wire.extend_from_slice(&body[at..at + n]);
                wire.extend_from_slice(eol.as_bytes());
                at += n;
            }
            wire.extend_from_slice(b"0\r\n");
            if rng.below(3) == 0 {
                wire.extend_from_slice(b"T: 1\r\n");
            }
            wire.extend_from_slice(b"\r\nnext");
            let step = 1 + rng.below(50);
            let (got, rest) = dechunk(&wire, step, body.len()).unwrap();
            assert_eq!(got, body, "case {case} step {step}");
            assert!(b"next".starts_with(&rest), "case {case}");
            if !body.is_empty() {
                let over = dechunk(&wire, step, body.len() - 1);
                assert_eq!(over, Err("413 Payload Too Large"), "case {case}");
            }
        }
    }

    #[test]
    fn length_framing_stops_at_the_body_end() {
        let mut f = Framing::Length(5);
        let mut buf = *b"abcdefgh";
        assert_eq!(f.decode(&mut buf, 0, 3, 100), Ok((3, 3)));
        assert!(!f.done());
        assert_eq!(f.room(100), 2);
        assert_eq!(f.decode(&mut buf, 3, 8, 100), Ok((5, 8)));
        assert!(f.done());
    }
}

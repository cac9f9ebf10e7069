//! Network writers: one task per destination per shard, draining its queue over TCP
//! (reconnecting with backoff) or UDP (one datagram per batch).

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpStream, UdpSocket};

use super::{Batch, DestQueue};
use crate::config::{Member, Output};

/// Reconnect and timeout settings of writers.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest a write may make no progress.
    pub write_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Most bytes one connection keeps of what the peer's kernel acknowledged and its
    /// process may not have read yet, to write again if the connection is reset.
    pub resend_unread_bytes_max: usize,
}

impl From<&Output> for WriterOptions {
    fn from(o: &Output) -> Self {
        WriterOptions {
            connect_timeout: Duration::from_millis(o.connect_timeout_ms),
            write_timeout: Duration::from_millis(o.write_timeout_ms),
            backoff_min: Duration::from_millis(o.reconnect_backoff_min_ms),
            backoff_max: Duration::from_millis(o.reconnect_backoff_max_ms),
            resend_unread_bytes_max: o.resend_unread_bytes_max,
        }
    }
}

/// Resolves a member's address. IP literals need no lookup; names are looked up on a
/// blocking helper thread at every connect, so a moved host is followed.
async fn resolve(member: &Member) -> io::Result<SocketAddr> {
    if let Ok(ip) = member.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, member.port));
    }
    let hostport = format!("{}:{}", member.host, member.port);
    glommio::executor()
        .spawn_blocking(move || {
            use std::net::ToSocketAddrs;
            hostport
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
        })
        .await
}

/// Logs at most once per `every` (per writer), so a dead sink cannot flood the log.
struct RateLimitedLog {
    last: Option<Instant>,
    every: Duration,
}

impl RateLimitedLog {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// Smallest and largest pause between looks at what the peer acknowledged, while
/// nothing is left to write.
const ACK_POLL_MIN: Duration = Duration::from_millis(1);
const ACK_POLL_MAX: Duration = Duration::from_millis(50);

/// A batch written on a connection.
struct Written {
    batch: Batch,
    /// The connection's offset just past it.
    end: u64,
}

/// One TCP connection and what was written on it that the peer has not acknowledged, or
/// has acknowledged but may not have read.
struct Conn {
    stream: TcpStream,
    /// Bytes written on this connection.
    written: u64,
    /// Bytes the peer's kernel acknowledged.
    acked: u64,
    /// Batches written and not wholly acknowledged.
    window: VecDeque<Written>,
    /// Batches acknowledged whole (and counted sent) that the peer's process may not
    /// have read yet, as far as its advertised window says: written again if the
    /// connection is reset (a process that dies or resets with unread bytes loses them).
    unread: VecDeque<Written>,
    unread_bytes: usize,
    /// The largest receive window the peer advertised (from its SYN on): a window this
    /// large again says its process has read everything acknowledged so far.
    peer_window_max: u64,
    /// What the peer had acknowledged when its window was last that wide: read.
    read_to: u64,
    /// `acked` when the peer's FIN was seen (`Some`: it ended its side). It may still
    /// read (a half-close), so writing goes on; a peer that is gone answers the next
    /// write with a reset. One that closes (rather than resets) had read everything
    /// acknowledged before its FIN.
    acked_at_eof: Option<u64>,
    /// When the peer last acknowledged something new (or the window last became
    /// non-empty).
    progress_at: Instant,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        let window = peer_window(&stream).unwrap_or(0);
        Conn {
            stream,
            written: 0,
            acked: 0,
            window: VecDeque::new(),
            unread: VecDeque::new(),
            unread_bytes: 0,
            peer_window_max: window,
            read_to: 0,
            acked_at_eof: None,
            progress_at: Instant::now(),
        }
    }

    /// Keeps what was acknowledged whole while the peer may not have read it, and lets
    /// go of what it has read: everything acknowledged when its advertised window was
    /// last as wide as it ever was (its process had read all it held), and the oldest
    /// past `keep_max` bytes. Without the peer's window (Linux before 6.2) nothing is
    /// kept. The window is read only when something new was acknowledged (`fresh`): an
    /// ack poll that found nothing costs no second syscall, and what it would release
    /// waits for the next acknowledgement (within `keep_max`).
    fn keep_unread(&mut self, q: &DestQueue, keep_max: usize, fresh: bool) {
        if self.unread.is_empty() || !fresh && self.unread_bytes <= keep_max {
            return;
        }
        // `acked` was read before the window: the window is as new, or newer.
        match peer_window(&self.stream) {
            Some(now) if now < self.peer_window_max => {}
            Some(now) => {
                self.peer_window_max = now;
                self.read_to = self.acked;
            }
            None => self.read_to = self.acked,
        }
        while let Some(w) = self.unread.front() {
            if w.end > self.read_to && self.unread_bytes <= keep_max {
                break;
            }
            let w = self.unread.pop_front().expect("non-empty");
            self.unread_bytes -= w.batch.data.len();
            q.recycle(w.batch.data);
        }
    }

    /// Looks at what the peer has acknowledged (`SIOCOUTQ`: what the kernel still holds
    /// unacknowledged) and completes every batch it acknowledged whole. Returns whether
    /// anything new was acknowledged.
    fn poll_acks(&mut self, q: &DestQueue, keep_max: usize) -> bool {
        let progressed = match unacked_bytes(&self.stream) {
            Ok(outq) => {
                let acked = self.written.saturating_sub(outq);
                let new = acked > self.acked;
                if new {
                    self.acked = acked;
                    self.progress_at = Instant::now();
                }
                new
            }
            Err(_) => false,
        };
        while self.window.front().is_some_and(|w| w.end <= self.acked) {
            let w = self.window.pop_front().expect("non-empty");
            if !w.batch.resend {
                q.complete(w.batch.lines, w.batch.data.len(), w.batch.records);
            }
            if keep_max > 0 {
                self.unread_bytes += w.batch.data.len();
                self.unread.push_back(w);
            } else {
                q.recycle(w.batch.data);
            }
        }
        self.keep_unread(q, keep_max, progressed);
        self.publish(q);
        progressed
    }

    fn publish(&self, q: &DestQueue) {
        let unacked = self.written - self.acked;
        q.count(|c| c.unacked_bytes = unacked);
        q.set_stalled_since((unacked > 0 || !self.window.is_empty()).then_some(self.progress_at));
    }

    /// Gives up the connection: the whole lines the peer acknowledged count as sent; the
    /// rest (the line a partial acknowledgement cut, whole) goes back to the front of the
    /// queue, to be sent again after reconnecting (or by a live member of the cluster),
    /// its written lines counted as resent. `partial`: the batch being written when the
    /// connection failed, with its offset. With `keep_max` above 0 (the connection
    /// broke), what the peer acknowledged and may not have read goes back first, marked
    /// [`resend`](Batch::resend) (unless it closed its side after acknowledging it: a
    /// process that closes has read what it had); with 0 (cadent stops and closes the
    /// connection normally), the peer reads what it acknowledged.
    fn give_back(mut self, q: &DestQueue, partial: Option<(Batch, u64)>, keep_max: usize) {
        self.poll_acks(q, keep_max);
        let (acked, written) = (self.acked, self.written);
        let mut back = Vec::with_capacity(self.unread.len() + self.window.len() + 1);
        for w in std::mem::take(&mut self.unread) {
            if keep_max == 0 || self.acked_at_eof.is_some_and(|at| w.end <= at) {
                q.recycle(w.batch.data);
            } else {
                back.push(w.batch.into_resend());
            }
        }
        self.unread_bytes = 0;
        let mut resent = 0u64;
        let window = std::mem::take(&mut self.window);
        let all = window
            .into_iter()
            .map(|w| {
                let start = w.end - w.batch.data.len() as u64;
                (w.batch, start)
            })
            .chain(partial);
        for (mut b, mut start) in all {
            let have = acked.saturating_sub(start).min(b.data.len() as u64) as usize;
            if let Some(i) = memchr::memrchr(b'\n', &b.data[..have]) {
                let cut = i + 1;
                let end = start + cut as u64;
                let unread = keep_max > 0
                    && end > self.read_to
                    && self.acked_at_eof.is_none_or(|at| end > at);
                if unread && b.resend {
                    // Counted already; the peer may not have read any of it.
                    back.push(b);
                    continue;
                }
                let whole = cut == b.data.len();
                let lines = if whole {
                    b.lines
                } else {
                    memchr::memchr_iter(b'\n', &b.data[..cut]).count() as u32
                };
                if !b.resend {
                    // A partial batch's spool records stay with the rest: acked once it
                    // is delivered.
                    q.complete(lines, cut, if whole { b.records } else { 0 });
                }
                // What the peer may not have read is written again first, counted sent.
                if whole {
                    if unread {
                        back.push(b.into_resend());
                    } else {
                        q.recycle(b.data);
                    }
                    continue;
                }
                if unread {
                    back.push(Batch::new(b.data[..cut].to_vec(), lines).into_resend());
                }
                b.data.drain(..cut);
                b.lines = b.lines.saturating_sub(lines);
                start += cut as u64;
            }
            if !b.resend {
                let sent = written.saturating_sub(start).min(b.data.len() as u64) as usize;
                resent += memchr::memchr_iter(b'\n', &b.data[..sent]).count() as u64;
            }
            back.push(b);
        }
        q.count(|c| {
            c.resent_lines += resent;
            c.unacked_bytes = 0;
        });
        q.set_stalled_since(None);
        q.requeue(back);
        // The stream closes normally: a reset would also destroy what the peer's kernel
        // acknowledged and its process has not read yet.
    }
}

/// Bytes the kernel holds for this socket that the peer has not acknowledged
/// (`SIOCOUTQ`: unsent plus sent-but-unacknowledged).
fn unacked_bytes(s: &TcpStream) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: ioctl(2) SIOCOUTQ (= TIOCOUTQ) on the stream's own open fd writes one int
    // into `n`, which lives on our stack for the call.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}

/// Sleeps `d`, or less if the queue is told to stop.
async fn pause(queue: &DestQueue, d: Duration) {
    futures_lite::future::or(glommio::timer::sleep(d), queue.stopped()).await;
}

/// Drains `queue` to a TCP member until the queue is closed and empty (what it wrote
/// acknowledged by the peer), or it is told to stop (what was not acknowledged goes back
/// to the queue). A line counts as sent once the peer's kernel acknowledged its bytes;
/// what a dead connection had not acknowledged is sent again on the next one.
pub async fn run_tcp(queue: Rc<DestQueue>, member: Member, name: String, opts: WriterOptions) {
    let mut conn: Option<Conn> = None;
    let mut backoff = opts.backoff_min;
    let mut ack_wait = ACK_POLL_MIN;
    let mut log = RateLimitedLog {
        last: None,
        every: Duration::from_secs(10),
    };
    let keep = opts.resend_unread_bytes_max;
    loop {
        let holding = conn.as_ref().is_some_and(|c| !c.window.is_empty());
        if queue.stop_requested() || (!holding && !queue.ready().await) {
            break;
        }
        // Down, and its clusters route around it: the shard moves its queue to the live
        // members (what it gives back too); it finishes what it holds, if it can.
        let held = queue.is_held() && !queue.is_closed();
        if held && !holding {
            pause(&queue, HELD_POLL).await;
            continue;
        }
        if conn.is_none() {
            let attempt = futures_lite::future::or(
                async { Some(connect(&member, opts.connect_timeout).await) },
                async {
                    queue.stopped().await;
                    None
                },
            )
            .await;
            match attempt {
                None => break,
                Some(Ok(s)) => {
                    queue.set_live(true);
                    queue.count(|c| c.connects += 1);
                    tracing::info!(destination = %name, "connected");
                    conn = Some(Conn::new(s));
                }
                Some(Err(e)) => {
                    queue.count(|c| c.connect_failures += 1);
                    queue.writer_failed();
                    if log.ready() {
                        tracing::warn!(destination = %name, error = %e, "connect failed; retrying with backoff");
                    }
                    if queue.abandon_unreachable() {
                        // Shutting down (or removed) and the sink is gone: the spool keeps
                        // what is queued, or without one it is lost (counted).
                        queue.abandon();
                        break;
                    }
                    pause(&queue, backoff).await;
                    backoff = (backoff * 2).min(opts.backoff_max);
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        // A write into a connection the peer has reset still succeeds (the kernel takes
        // the bytes): look before writing, so a sink that accepts and resets is found at
        // once. A peer that only ended its side (FIN) may be half-closed and still
        // reading, as some sinks are: writing goes on, and if it is gone the write is
        // answered with a reset, found here or by the next write. Nothing it did not
        // acknowledge is lost either way: it goes back to the queue.
        let peer = if c.acked_at_eof.is_some() {
            // Past the FIN a peek reads end-of-stream for ever; a reset shows as the
            // socket's pending error.
            if pending_error(&c.stream) {
                Peer::Broken
            } else {
                Peer::Open
            }
        } else {
            peek_peer(&c.stream)
        };
        if peer == Peer::Eof {
            c.poll_acks(&queue, keep);
            c.acked_at_eof = Some(c.acked);
        }
        if peer == Peer::Broken {
            let c = conn.take().expect("connected");
            lose(c, &queue, keep, &mut log, &name, BROKEN);
            pause(&queue, backoff).await;
            backoff = (backoff * 2).min(opts.backoff_max);
            continue;
        }
        if let Some(batch) = if held { None } else { queue.pop() } {
            let start = c.written;
            if c.window.is_empty() {
                c.progress_at = Instant::now();
            }
            match write_batch(&mut c.stream, &batch.data, opts.write_timeout, &queue).await {
                Ok(()) => {
                    c.written += batch.data.len() as u64;
                    let end = c.written;
                    queue.count(|c| {
                        c.writes += 1;
                        if batch.resend {
                            c.resent_lines += u64::from(batch.lines);
                        }
                    });
                    c.window.push_back(Written { batch, end });
                    if c.poll_acks(&queue, keep) {
                        backoff = opts.backoff_min;
                    }
                }
                Err((written, e)) => {
                    c.written += written as u64;
                    conn.take()
                        .expect("connected")
                        .give_back(&queue, Some((batch, start)), keep);
                    if queue.stop_requested() {
                        break;
                    }
                    queue.count(|c| c.write_errors += 1);
                    queue.writer_failed();
                    if log.ready() {
                        tracing::warn!(destination = %name, error = %e, "write failed; reconnecting");
                    }
                    pause(&queue, backoff).await;
                    backoff = (backoff * 2).min(opts.backoff_max);
                }
            }
            continue;
        }
        // Nothing to write: wait for the peer to acknowledge what it holds (or for the
        // next batch, or a stop).
        futures_lite::future::or(
            glommio::timer::sleep(ack_wait),
            futures_lite::future::or(queue.batch_ready(), queue.stopped()),
        )
        .await;
        if c.poll_acks(&queue, keep) {
            ack_wait = ACK_POLL_MIN;
            backoff = opts.backoff_min;
        } else {
            ack_wait = (ack_wait * 2).min(ACK_POLL_MAX);
            if c.acked_at_eof.is_some() && !c.window.is_empty() && pending_error(&c.stream) {
                // It had ended its side and answered what was written with a reset: it
                // is gone. What it did not acknowledge is sent again.
                let c = conn.take().expect("connected");
                lose(c, &queue, keep, &mut log, &name, BROKEN);
                pause(&queue, backoff).await;
                backoff = (backoff * 2).min(opts.backoff_max);
                continue;
            }
        }
        if !c.window.is_empty() && c.progress_at.elapsed() >= opts.write_timeout {
            // It accepts but takes nothing (a zero window): a failure, as a write that
            // makes no progress is. What it holds unacknowledged is sent again.
            let c = conn.take().expect("connected");
            let why = "peer acknowledged nothing for write_timeout_ms; reconnecting";
            lose(c, &queue, keep, &mut log, &name, why);
            pause(&queue, backoff).await;
            backoff = (backoff * 2).min(opts.backoff_max);
        }
    }
    if let Some(mut c) = conn {
        if c.window.is_empty() {
            let _ = c.stream.close().await;
        } else {
            // What it did not acknowledge goes back to the queue (the spool keeps it for
            // the next start, or it is counted dropped at shutdown).
            c.give_back(&queue, None, 0);
        }
    }
    queue.set_live(false);
    queue.set_stalled_since(None);
}

const BROKEN: &str = "connection broken by the peer; reconnecting";

/// A TCP connection failed other than in a write: counted in `write_errors`, given up
/// (what it holds goes back to the queue), the destination marked failed, and `why`
/// logged (at most every 10 s).
fn lose(c: Conn, queue: &DestQueue, keep: usize, log: &mut RateLimitedLog, name: &str, why: &str) {
    queue.count(|c| c.write_errors += 1);
    c.give_back(queue, None, keep);
    queue.writer_failed();
    if log.ready() {
        tracing::warn!(destination = %name, "{why}");
    }
}

async fn connect(member: &Member, timeout: Duration) -> io::Result<TcpStream> {
    let addr = resolve(member).await?;
    TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(io::Error::from)
}

/// What a non-blocking peek says of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// Nothing to read, or data (sinks do not talk back, but it is no reason to
    /// reconnect).
    Open,
    /// It ended its side (FIN): closed, or half-closed and still reading.
    Eof,
    /// The connection is broken (a reset, or another error).
    Broken,
}

/// The receive window the peer advertised last, in bytes (`tcpi_snd_wnd` of
/// `TCP_INFO`, Linux 6.2 and later; `None` before).
fn peer_window(s: &TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    /// `struct tcp_info` up to and including `tcpi_snd_wnd` (a `u32` at byte 228).
    const SND_WND_AT: usize = 228;
    let mut info = [0u8; SND_WND_AT + 4];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt(2) TCP_INFO on the stream's own open fd, into a buffer on our
    // stack whose length is passed; the kernel writes at most that many bytes and says
    // how many in `len`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 || (len as usize) < info.len() {
        return None;
    }
    let w: [u8; 4] = info[SND_WND_AT..].try_into().expect("four bytes");
    Some(u64::from(u32::from_ne_bytes(w)))
}

/// Whether the socket holds an error (`SO_ERROR`, e.g. the peer's reset), or cannot
/// say.
fn pending_error(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    so_error(s.as_raw_fd()) != Some(0)
}

/// Takes (and clears) the socket's pending error (`SO_ERROR`); `None` when getsockopt
/// fails.
fn so_error(fd: std::os::fd::RawFd) -> Option<i32> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) on an open fd the caller owns, writing one c_int into our
    // stack variable whose size we pass.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(err)
}

/// Peeks at the connection without consuming or blocking.
fn peek_peer(s: &TcpStream) -> Peer {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv(2) on the stream's own open fd, into one byte of our stack, with
    // MSG_PEEK (nothing is consumed) and MSG_DONTWAIT (never blocks the executor).
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Peer::Eof,
        n if n > 0 => Peer::Open,
        _ => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Peer::Open,
                _ => Peer::Broken,
            }
        }
    }
}

/// Writes all of `data` within `timeout`; on failure says how many bytes the kernel
/// took. A sink that accepts but stops reading fails here instead of holding the writer
/// forever, and a stop request ends the write at once. One timer per batch: glommio's
/// per-write timeouts cost ~7% of the relay's CPU at a fixed rate.
async fn write_batch(
    s: &mut TcpStream,
    data: &[u8],
    timeout: Duration,
    queue: &DestQueue,
) -> Result<(), (usize, io::Error)> {
    let written = std::cell::Cell::new(0usize);
    let write = async {
        while written.get() < data.len() {
            match s.write(&data[written.get()..]).await {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written.set(written.get() + n),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let deadline = async {
        glommio::timer::sleep(timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "write made no progress",
        ))
    };
    let stop = async {
        queue.stopped().await;
        Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"))
    };
    // If the deadline or a stop wins, the write in flight is cancelled: what it had
    // handed the kernel is unknown, so the offset counts only what completed; what the
    // peer acknowledged decides what is sent again (a line may arrive twice).
    futures_lite::future::or(write, futures_lite::future::or(deadline, stop))
        .await
        .map_err(|e| (written.get(), e))
}

/// Drains `queue` to a UDP member, one datagram per batch (batches are sealed at
/// `udp_datagram_bytes_max`, or are one collectd packet each).
///
/// UDP has no acknowledgement, so "down" can only mean what the kernel reports: the
/// socket is connected to the member, and an ICMP port or host unreachable for an
/// earlier datagram makes the next send fail (`ECONNREFUSED`, `EHOSTUNREACH`) without
/// sending. The datagram that drew the ICMP is lost (counted among `write_errors`, it
/// cannot be told apart); the failed one is kept, and the writer stops sending: it
/// probes with an empty datagram (every receiver ignores it) until one draws no error
/// within the probe wait, then sends what waited, in order. While health has the member
/// down (`DestQueue::set_held`), the writer holds its batches too. Held batches stay in
/// the queue, bounded by `queue_bytes_max` (oldest dropped and counted): the spool's
/// seam. A member that vanishes without an ICMP (a dead host behind a silent network)
/// cannot be told from a live one.
pub async fn run_udp(queue: Rc<DestQueue>, member: Member, name: String, opts: WriterOptions) {
    let mut log = RateLimitedLog {
        last: None,
        every: Duration::from_secs(10),
    };
    let probe_wait = opts.connect_timeout.min(UDP_PROBE_WAIT_MAX);
    let mut sock: Option<UdpSocket> = None;
    let mut refused = false;
    let mut backoff = opts.backoff_min;
    while queue.ready().await {
        if queue.is_held() && !queue.is_closed() {
            glommio::timer::sleep(HELD_POLL).await;
            continue;
        }
        if sock.is_none() {
            match connect_udp(&member).await {
                Ok(s) => {
                    queue.set_live(true);
                    sock = Some(s);
                }
                Err(e) => {
                    queue.count(|c| c.connect_failures += 1);
                    if log.ready() {
                        tracing::warn!(destination = %name, error = %e, "udp socket failed");
                    }
                    if queue.is_closed() {
                        queue.discard_at_shutdown();
                        return;
                    }
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(opts.backoff_max);
                    continue;
                }
            }
        }
        let s = sock.as_ref().expect("connected above");
        if refused {
            if queue.is_closed() {
                // Shutting down while the member refuses: what waits is not delivered.
                queue.discard_at_shutdown();
                break;
            }
            // An empty datagram, then a look for the ICMP it may draw.
            let _ = s.send(&[]).await;
            glommio::timer::sleep(probe_wait).await;
            if take_socket_error(s).is_some() {
                queue.count(|c| c.write_errors += 1);
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(opts.backoff_max);
                continue;
            }
            refused = false;
            backoff = opts.backoff_min;
            queue.set_live(true);
            tracing::info!(destination = %name, "udp member answers again; sending");
        }
        let Some(batch) = queue.pop() else { continue };
        match s.send(&batch.data).await.map_err(io::Error::from) {
            Ok(_) => {
                queue.complete(batch.lines, batch.data.len(), 0);
                queue.count(|c| c.writes += 1);
                queue.recycle(batch.data);
            }
            Err(e) if unreachable(&e) => {
                // Not sent: keep it, and stop sending until the member answers.
                queue.count(|c| c.write_errors += 1);
                queue.requeue(vec![batch]);
                queue.set_live(false);
                refused = true;
                if log.ready() {
                    tracing::warn!(destination = %name, error = %e, "udp member unreachable; holding its batches");
                }
            }
            // Any other failure: the datagram is gone. Count it.
            Err(e) => {
                queue.fail(batch.lines);
                queue.recycle(batch.data);
                if log.ready() {
                    tracing::warn!(destination = %name, error = %e, "udp send failed");
                }
            }
        }
    }
    queue.set_live(false);
}

/// Longest wait for the ICMP an empty probe datagram may draw.
const UDP_PROBE_WAIT_MAX: Duration = Duration::from_millis(200);
/// How often a held writer looks whether health has its member up again.
const HELD_POLL: Duration = Duration::from_millis(20);

/// A UDP socket connected to the member (so the kernel reports ICMP errors to it).
async fn connect_udp(member: &Member) -> io::Result<UdpSocket> {
    let addr = resolve(member).await?;
    let local: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(local).map_err(io::Error::from)?;
    s.connect(addr).await.map_err(io::Error::from)?;
    Ok(s)
}

/// Errors by which the kernel says an earlier datagram was refused or undeliverable.
fn unreachable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN)
    ) || e.kind() == io::ErrorKind::ConnectionRefused
}

/// Takes (and clears) the socket's pending error, such as an ICMP refusal.
fn take_socket_error(s: &UdpSocket) -> Option<i32> {
    use std::os::fd::AsRawFd;
    so_error(s.as_raw_fd()).filter(|&e| e != 0)
}

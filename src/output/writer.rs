//! Network writers: one task per destination per shard, draining its queue over TCP
//! (reconnecting with backoff) or UDP (one datagram per batch).

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
}

impl From<&Output> for WriterOptions {
    fn from(o: &Output) -> Self {
        WriterOptions {
            connect_timeout: Duration::from_millis(o.connect_timeout_ms),
            write_timeout: Duration::from_millis(o.write_timeout_ms),
            backoff_min: Duration::from_millis(o.reconnect_backoff_min_ms),
            backoff_max: Duration::from_millis(o.reconnect_backoff_max_ms),
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

/// Drains `queue` to a TCP member until the queue is closed and empty.
pub async fn run_tcp(queue: Rc<DestQueue>, member: Member, name: String, opts: WriterOptions) {
    let mut conn: Option<TcpStream> = None;
    let mut backoff = opts.backoff_min;
    let mut log = RateLimitedLog {
        last: None,
        every: Duration::from_secs(10),
    };
    while queue.ready().await {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match connect(&member, opts.connect_timeout).await {
                Ok(s) => {
                    queue.set_live(true);
                    queue.count(|c| c.connects += 1);
                    tracing::info!(destination = %name, "connected");
                    conn.insert(s)
                }
                Err(e) => {
                    queue.count(|c| c.connect_failures += 1);
                    if log.ready() {
                        tracing::warn!(destination = %name, error = %e, "connect failed; retrying with backoff");
                    }
                    if queue.is_closed() {
                        // Shutting down and the sink is gone: nothing more will be delivered.
                        queue.discard_at_shutdown();
                        return;
                    }
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(opts.backoff_max);
                    continue;
                }
            },
        };
        // A write into a connection the peer has closed still succeeds (the kernel takes
        // the bytes, then the peer answers RST): look before writing, so a sink that
        // accepts and hangs up is not fed batches that vanish.
        if peer_closed(stream) {
            queue.set_live(false);
            conn = None;
            if log.ready() {
                tracing::warn!(destination = %name, "peer closed the connection; reconnecting");
            }
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(opts.backoff_max);
            continue;
        }
        let Some(batch) = queue.pop() else { continue };
        match write_batch(stream, &batch.data, opts.write_timeout).await {
            Ok(()) => {
                queue.complete(batch.lines, batch.data.len());
                queue.recycle(batch.data);
                backoff = opts.backoff_min;
            }
            Err((written, e)) => {
                queue.count(|c| c.write_errors += 1);
                queue.set_live(false);
                conn = None;
                if log.ready() {
                    tracing::warn!(destination = %name, error = %e, "write failed; reconnecting");
                }
                queue.unpop(resume_after(batch, written, &queue));
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(opts.backoff_max);
            }
        }
    }
    if let Some(mut s) = conn {
        let _ = s.close().await;
    }
    queue.set_live(false);
}

async fn connect(member: &Member, timeout: Duration) -> io::Result<TcpStream> {
    let addr = resolve(member).await?;
    TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(io::Error::from)
}

/// True when the peer has closed its side (or the connection is broken): a non-blocking
/// peek reads end-of-stream or an error. Sinks do not talk back, so data waiting to be
/// read is not expected, but is no reason to reconnect.
fn peer_closed(s: &TcpStream) -> bool {
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
        0 => true,
        n if n > 0 => false,
        _ => {
            let e = io::Error::last_os_error();
            !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            )
        }
    }
}

/// Writes all of `data` within `timeout`; on failure says how many bytes the kernel
/// took. A sink that accepts but stops reading fails here instead of holding the writer
/// forever. One timer per batch: glommio's per-write timeouts cost ~7% of the relay's
/// CPU at a fixed rate.
async fn write_batch(
    s: &mut TcpStream,
    data: &[u8],
    timeout: Duration,
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
    // If the deadline wins, the write in flight is cancelled: what it had sent is unknown,
    // so the batch resumes from the last line known written (a line may arrive twice).
    futures_lite::future::or(write, deadline)
        .await
        .map_err(|e| (written.get(), e))
}

/// The part of a batch still to send after `written` bytes went out on a connection that
/// then failed: lines wholly written count as sent, the line cut in half is sent again
/// whole (the peer dropped its half when the connection died).
fn resume_after(batch: Batch, written: usize, queue: &DestQueue) -> Batch {
    let cut = match memchr::memrchr(b'\n', &batch.data[..written.min(batch.data.len())]) {
        Some(i) => i + 1,
        None => return batch,
    };
    let sent_lines = memchr::memchr_iter(b'\n', &batch.data[..cut]).count() as u32;
    queue.count(|c| {
        c.sent_lines += u64::from(sent_lines);
        c.sent_bytes += cut as u64;
    });
    let mut data = batch.data;
    data.drain(..cut);
    Batch {
        data,
        lines: batch.lines - sent_lines,
    }
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
            glommio::timer::sleep(UDP_HELD_POLL).await;
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
                queue.complete(batch.lines, batch.data.len());
                queue.recycle(batch.data);
            }
            Err(e) if unreachable(&e) => {
                // Not sent: keep it, and stop sending until the member answers.
                queue.count(|c| c.write_errors += 1);
                queue.unpop(batch);
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
const UDP_HELD_POLL: Duration = Duration::from_millis(20);

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
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) on the socket's own open fd, writing one c_int into our
    // stack variable whose size we pass.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && err != 0).then_some(err)
}

//! Ingest: sockets to byte buffers. Every shard binds its own `SO_REUSEPORT` socket per
//! TCP/UDP listener; the kernel spreads connections and datagram flows over shards.
//! Readers hand buffers to the shard's [`Core`].

pub mod bind;
pub mod fds;
pub mod http;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt};
use glommio::net::{TcpListener, UdpSocket, UnixListener};

use crate::config::Listener;
use crate::protocol::collectd;
use crate::protocol::decode::{End, TypesReject};
use crate::protocol::Reject;
use crate::shard::pipeline::Core;

crate::counter_set! {
    /// Counters of one listener on one shard (its rejected lines by reason are beside
    /// them, in [`ListenerStats`]).
    pub struct ListenerCounters {
        /// Lines seen (good and bad): received_lines = parsed_lines + rejected_lines.
        received_lines: counter,
        /// Bytes received.
        received_bytes: counter,
        /// Lines that parsed.
        parsed_lines: counter,
        /// statsd samples refused (Etsy's bad_lines_seen), in bad lines and among good
        /// samples of a line.
        rejected_samples: counter,
        /// Pickle frames dropped whole (not carbon's data, over frame_bytes_max, cut
        /// short); their points are not counted as lines.
        rejected_frames: counter,
        /// UDP and unix datagrams received.
        datagrams: counter,
        /// Unix datagrams longer than read_buffer_bytes: dropped whole, uncounted as
        /// lines.
        datagrams_too_long: counter,
        /// Connections accepted.
        connections_accepted: counter,
        /// Connections refused: at connections_max, or past the shard's share of the
        /// process's file descriptors (the rest is kept for the control plane and
        /// writers).
        connections_refused: counter,
        /// Connections closed after idle_timeout_ms without a byte.
        connections_idle_closed: counter,
        /// Accepts that failed (EMFILE and the like); not read errors.
        accept_errors: counter,
        /// Connections open now.
        connections_open: gauge,
        /// Read and receive errors.
        read_errors: counter,
        /// Reads delayed by a full destination queue.
        stalls: counter,
        /// HTTP requests refused (wrong path or method, no length, body over
        /// body_bytes_max, bad head); the connection is closed.
        http_refused: counter,
    }
}

crate::counter_set! {
    /// A collectd listener's counters on one shard (its rejects by reason are beside
    /// them, in [`CollectdStats`]). The names Coco gave the same counts are in brackets.
    pub struct CollectdCounters {
        /// Datagrams decoded [coco listen.raw].
        packets: counter,
        /// Value lists decoded and accepted by the listener's security level and types
        /// table [coco listen.decoded].
        value_lists: counter,
        /// Notifications received: cadent relays value lists only.
        notifications_ignored: counter,
        /// Signature parts accepted without verification: security level none and no
        /// auth file, as collectd does.
        signatures_unverified: counter,
        /// Value lists routed to at least one target [coco filter.accepted].
        routed: counter,
        /// Value lists a drop route matched [coco filter.rejected].
        dropped_by_rule: counter,
        /// Value lists no route matched (dropped).
        unrouted: counter,
    }
}

/// A collectd listener's counters with its rejects by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectdStats {
    /// The counters.
    pub counters: CollectdCounters,
    /// Parts or packets refused by collectd's acceptance rules, by reason.
    pub rejects: [u64; collectd::Reject::COUNT],
    /// Value lists refused by the types table, by reason.
    pub types_rejects: [u64; TypesReject::COUNT],
}

impl CollectdStats {
    /// Adds another shard's.
    pub fn add(&mut self, o: &CollectdStats) {
        use crate::telemetry::set::CounterSet;
        self.counters.add(&o.counters);
        for (a, b) in self.rejects.iter_mut().zip(&o.rejects) {
            *a += b;
        }
        for (a, b) in self.types_rejects.iter_mut().zip(&o.types_rejects) {
            *a += b;
        }
    }
}

/// A listener's counters with its rejected lines by [`Reject`] reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// The counters.
    pub counters: ListenerCounters,
    /// Rejected lines, by reason.
    pub rejected_lines: [u64; Reject::COUNT],
    /// collectd listeners: what the packet decoder saw.
    pub collectd: CollectdStats,
}

impl ListenerStats {
    /// Adds another shard's.
    pub fn add(&mut self, o: &ListenerStats) {
        use crate::telemetry::set::CounterSet;
        self.counters.add(&o.counters);
        for (a, b) in self.rejected_lines.iter_mut().zip(&o.rejected_lines) {
            *a += b;
        }
        self.collectd.add(&o.collectd);
    }
}

/// What a reader task needs to know about its listener.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Listener id (counters and the shard's decoder for it).
    pub listener: usize,
    /// Longest line.
    pub line_bytes_max: usize,
    /// Receive buffer size.
    pub read_buffer_bytes: usize,
    /// Connections per shard.
    pub connections_max: usize,
    /// Longest wait for a congested destination before reading on.
    pub stall_max: Duration,
    /// A connection that sends nothing this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// UDP: the longest wait of a busy reader for more datagrams ([`Coalesce`]).
    pub datagram_coalesce_max: Duration,
    /// Streams: clear the high bit of every byte read, as Etsy statsd's TCP server does
    /// (node decodes its stream as `ascii`, which drops bit 7: `\xb1` reads as `1`,
    /// `\x8a` as a newline). Statsd listeners only; datagrams are read as UTF-8.
    pub seven_bit: bool,
}

impl ReadOptions {
    /// Options of listener `index` of the config.
    pub fn new(index: usize, l: &Listener, stall_max: Duration) -> ReadOptions {
        ReadOptions {
            listener: index,
            // A pickle frame is read whole: the buffer holds the largest.
            line_bytes_max: match l.format {
                crate::config::Format::Pickle => {
                    l.frame_bytes_max + crate::protocol::pickle::HEADER_BYTES
                }
                _ => l.line_bytes_max,
            },
            read_buffer_bytes: l.read_buffer_bytes,
            connections_max: l.connections_max,
            stall_max,
            idle_timeout: (l.idle_timeout_ms > 0).then(|| Duration::from_millis(l.idle_timeout_ms)),
            datagram_coalesce_max: Duration::from_micros(l.datagram_coalesce_us_max),
            seven_bit: l.format == crate::config::Format::Statsd,
        }
    }
}

/// Either kind of stream listener.
pub enum StreamListener {
    /// TCP (one per shard, `SO_REUSEPORT`).
    Tcp(TcpListener),
    /// Unix (one shard).
    Unix(UnixListener),
}

/// Accepts connections until the task is dropped; each connection gets its own task.
/// A connection past `connections_max`, or past the shard's share of file descriptors
/// (`Core::stream_fds_max`), is closed at once and counted as refused.
pub async fn accept_loop(core: Rc<RefCell<Core>>, listener: StreamListener, opts: ReadOptions) {
    let mut last_warning: Option<Instant> = None;
    // TCP connections idle past idle_timeout_ms are found by a sweep, not by a timer on
    // every read (a read that waits would arm and cancel one each time). The sweep ends
    // with this loop.
    let watched: Watched = Rc::default();
    let _sweeper = opts
        .idle_timeout
        .map(|d| glommio::spawn_local(sweep_idle(watched.clone(), d)));
    loop {
        let accepted = match &listener {
            StreamListener::Tcp(l) => l.accept().await.map(Conn::Tcp),
            StreamListener::Unix(l) => l.accept().await.map(Conn::Unix),
        };
        let conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                core.borrow_mut().counters.listeners[opts.listener]
                    .counters
                    .accept_errors += 1;
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(error = %e, "accept failed (out of file descriptors? see server.reserved_fds)");
                }
                // EMFILE and friends: the connection stays in the backlog, so accepting
                // again at once fails again. Back off.
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        {
            let mut c = core.borrow_mut();
            let over_fds = c.stream_fds_open >= c.stream_fds_max;
            let lc = &mut c.counters.listeners[opts.listener].counters;
            if lc.connections_open as usize >= opts.connections_max || over_fds {
                lc.connections_refused += 1;
                continue; // dropping `conn` closes it
            }
            lc.connections_accepted += 1;
            lc.connections_open += 1;
            c.stream_fds_open += 1;
        }
        let core = core.clone();
        let watched = watched.clone();
        glommio::spawn_local(async move {
            let idle = match conn {
                Conn::Tcp(s) => {
                    let activity = opts.idle_timeout.map(|_| {
                        let a = Rc::new(Activity {
                            fd: std::os::fd::AsRawFd::as_raw_fd(&s),
                            last: Cell::new(Instant::now()),
                            idle: Cell::new(false),
                        });
                        let mut w = watched.borrow_mut();
                        // Ended connections leave their entry until the next sweep:
                        // under churn, prune before the list would grow, so it stays
                        // within about twice the connections open at once.
                        if w.len() >= 64 && w.len() == w.capacity() {
                            w.retain(|a| Rc::strong_count(a) > 1);
                        }
                        w.push(a.clone());
                        a
                    });
                    read_stream(&core, s, opts, None, activity.as_deref()).await
                }
                // glommio's unix streams give no descriptor to shut down: a timer per
                // read instead.
                Conn::Unix(s) => read_stream(&core, s, opts, opts.idle_timeout, None).await,
            };
            let mut c = core.borrow_mut();
            c.stream_fds_open -= 1;
            let lc = &mut c.counters.listeners[opts.listener].counters;
            lc.connections_open -= 1;
            if idle {
                lc.connections_idle_closed += 1;
            }
        })
        .detach();
    }
}

enum Conn {
    Tcp(glommio::net::TcpStream),
    Unix(glommio::net::UnixStream),
}

/// When a TCP connection last read something, for the idle sweep.
struct Activity {
    fd: std::os::fd::RawFd,
    last: Cell<Instant>,
    /// The sweep shut its reading side down: the end of stream that follows is an idle
    /// close.
    idle: Cell<bool>,
}

/// The open connections of one listener on one shard that the idle sweep watches.
type Watched = Rc<RefCell<Vec<Rc<Activity>>>>;

/// Every quarter of `idle` (at least 50 ms), shuts down the reading side of each watched
/// connection that read nothing for `idle`: its pending read ends as an end of stream.
/// Connections that ended are dropped from the list (their task held the other `Rc`).
async fn sweep_idle(watched: Watched, idle: Duration) {
    let every = (idle / 4).max(Duration::from_millis(50));
    loop {
        glommio::timer::sleep(every).await;
        let now = Instant::now();
        watched.borrow_mut().retain(|a| {
            if Rc::strong_count(a) == 1 {
                return false; // its connection ended
            }
            if !a.idle.get() && now.duration_since(a.last.get()) >= idle {
                a.idle.set(true);
                // SAFETY: shutdown(2) on a descriptor its connection still owns (the
                // connection's task holds the other Rc until after the socket closed).
                unsafe { libc::shutdown(a.fd, libc::SHUT_RD) };
            }
            true
        });
    }
}

/// Reads one connection to its end. A connection that errors only ends itself. Returns
/// true when it was closed for sending nothing for `idle_timeout_ms` (found by the sweep
/// through `activity`, or by a timer of `idle` on each read for sockets without one).
async fn read_stream<S: AsyncRead + Unpin>(
    core: &Rc<RefCell<Core>>,
    mut s: S,
    opts: ReadOptions,
    idle: Option<Duration>,
    activity: Option<&Activity>,
) -> bool {
    // A kept partial line is at most line_bytes_max + 1 bytes; the buffer always has room
    // for more, so a read of 0 bytes means end of stream and nothing else.
    let mut buf = vec![0u8; opts.read_buffer_bytes.max(opts.line_bytes_max + 2)];
    let mut filled = 0;
    let mut skipping = false;
    loop {
        wait_while_congested(core, &opts).await;
        let read = s.read(&mut buf[filled..]);
        let result = match idle {
            None => read.await,
            Some(d) => {
                futures_lite::future::or(read, async {
                    glommio::timer::sleep(d).await;
                    Err(std::io::ErrorKind::TimedOut.into())
                })
                .await
            }
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return true,
            Err(e) => {
                // A reset mid-line: the partial line is not trusted, so it is not sent.
                core.borrow_mut().counters.listeners[opts.listener]
                    .counters
                    .read_errors += 1;
                tracing::debug!(error = %e, "read failed");
                return false;
            }
        };
        let eof = n == 0;
        if let Some(a) = activity {
            a.last.set(Instant::now());
        }
        if opts.seven_bit {
            for b in &mut buf[filled..filled + n] {
                *b &= 0x7f;
            }
        }
        filled += n;
        let (used, draining) = {
            let mut c = core.borrow_mut();
            c.counters.listeners[opts.listener].counters.received_bytes += n as u64;
            // Samples other shards read before this read apply first; what this read
            // hands to other shards goes now if their channels have room.
            c.take_handed_over();
            let used = c.process(
                opts.listener,
                &buf[..filled],
                &mut skipping,
                if eof { End::Stream } else { End::More },
            );
            c.mesh.send_early();
            (used, c.draining)
        };
        buf.copy_within(used..filled, 0);
        filled -= used;
        if eof || draining {
            // A partial line the idle close cut off was refused as unterminated above.
            return eof && activity.is_some_and(|a| a.idle.get());
        }
        // Under load the next recv succeeds without suspending, so without this the
        // reader would run until the socket is empty while writers wait: queues would
        // swell and batch buffers stop recycling. Let writers (and other readers) in.
        futures_lite::future::yield_now().await;
    }
}

/// Backpressure: while a live destination's queue is full, wait (bounded) for its writer
/// instead of reading more and making the queue drop. Dead destinations never stall, and a
/// queue that stays full past `stall_ms_max` stops stalling anyone until it drains.
pub(crate) async fn wait_while_congested(core: &Rc<RefCell<Core>>, opts: &ReadOptions) {
    if opts.stall_max.is_zero() || !core.borrow().outputs.congested() {
        return;
    }
    core.borrow_mut().counters.listeners[opts.listener]
        .counters
        .stalls += 1;
    let start = Instant::now();
    while core.borrow().outputs.congested() {
        if start.elapsed() >= opts.stall_max {
            core.borrow().outputs.spend_stalls();
            return;
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

/// Receives datagrams until the task is dropped; each datagram is whole lines, or one
/// collectd packet. Datagrams already waiting are taken up to
/// [`UDP_BATCH_DATAGRAMS`] per `recvmmsg`. When the socket is empty, a busy reader waits
/// a while for more ([`Coalesce`]); an idle one waits for the next datagram in the
/// reactor.
pub async fn udp_loop(core: Rc<RefCell<Core>>, sock: UdpSocket, opts: ReadOptions) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let mut batch = DatagramBatch::new(UDP_SLOT_BYTES);
    let mut pace = Coalesce::new(opts.datagram_coalesce_max, receive_buffer_bytes(fd));
    let mut datagrams_since_yield = 0;
    loop {
        let waiting = match batch.recv_waiting(fd) {
            Ok(0) => {
                // Nothing more to read for now: what this reader holds for other shards
                // goes to them before it sleeps, so it arrives before what its clients
                // send next (see `ShardMesh::send_early`).
                core.borrow_mut().mesh.send_early();
                let pause = pace.empty();
                match pause {
                    Some(wait) => {
                        glommio::timer::sleep(wait).await;
                        continue;
                    }
                    None => {
                        pace.parked(Instant::now());
                        let got = sock.recv_from(batch.slot(0)).await;
                        pace.woke(Instant::now());
                        got.map(|(len, _)| {
                            batch.lens[0] = len;
                            1
                        })
                        .map_err(|e| e.to_string())
                    }
                }
            }
            got => got.map_err(|e| e.to_string()),
        };
        let n = match waiting {
            Ok(n) => n,
            Err(e) => {
                udp_read_error(&core, &opts, &e);
                glommio::timer::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        pace.took(&batch.lens[..n]);
        let draining = {
            let mut c = core.borrow_mut();
            c.take_handed_over();
            for i in 0..n {
                let len = batch.lens[i];
                take_datagram(&mut c, &opts, &mut batch.slot(i)[..len]);
            }
            c.draining
        };
        if draining {
            return;
        }
        // Under a flood a datagram is always waiting, so the reader would never let the
        // shard's writers, tick or inbox run. Yield every few datagrams.
        datagrams_since_yield += n as u32;
        if datagrams_since_yield >= UDP_DATAGRAMS_PER_YIELD {
            datagrams_since_yield = 0;
            futures_lite::future::yield_now().await;
        }
    }
}

/// Receives datagrams on a unix datagram socket (one shard's) until the task is
/// dropped, one `recv` each: as [`udp_loop`] without its batching and coalescing. A
/// UDP datagram is at most 64 KiB; a unix one may be as long as its sender's send
/// buffer, so the listener's `read_buffer_bytes` bounds it: a longer one (it would be
/// cut) is dropped whole and counted in `datagrams_too_long`.
pub async fn unix_datagram_loop(
    core: Rc<RefCell<Core>>,
    sock: glommio::net::UnixDatagram,
    opts: ReadOptions,
) {
    // One byte more than the bound: a datagram that fills it is longer than the bound.
    let mut buf = vec![0u8; opts.read_buffer_bytes + 1];
    let mut datagrams_since_yield = 0;
    loop {
        // What this reader holds for other shards goes to them before it may sleep.
        core.borrow_mut().mesh.send_early();
        let len = match sock.recv(&mut buf).await {
            Ok(len) => len,
            Err(e) => {
                udp_read_error(&core, &opts, &e);
                glommio::timer::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let draining = {
            let mut c = core.borrow_mut();
            c.take_handed_over();
            if len == buf.len() {
                let lc = &mut c.counters.listeners[opts.listener].counters;
                lc.datagrams += 1;
                lc.received_bytes += len as u64;
                lc.datagrams_too_long += 1;
            } else {
                take_datagram(&mut c, &opts, &mut buf[..len]);
            }
            c.draining
        };
        if draining {
            return;
        }
        datagrams_since_yield += 1;
        if datagrams_since_yield >= UDP_DATAGRAMS_PER_YIELD {
            datagrams_since_yield = 0;
            futures_lite::future::yield_now().await;
        }
    }
}

/// Counts one received datagram and runs it through the pipeline.
fn take_datagram(c: &mut Core, opts: &ReadOptions, datagram: &mut [u8]) {
    let lc = &mut c.counters.listeners[opts.listener].counters;
    lc.datagrams += 1;
    lc.received_bytes += datagram.len() as u64;
    c.process_datagram(opts.listener, datagram);
}

fn udp_read_error(core: &RefCell<Core>, opts: &ReadOptions, e: &dyn std::fmt::Display) {
    core.borrow_mut().counters.listeners[opts.listener]
        .counters
        .read_errors += 1;
    tracing::debug!(error = %e, "recv failed");
}

/// How long a UDP reader waits when its socket is empty. Every wakeup of a parked shard
/// costs tens of microseconds (the scheduler, `io_uring_enter`, the executor), and a
/// reader that wakes for each datagram spends more on waking than on the datagrams at a
/// high rate. So a reader that is busy (it read more than one datagram since it last
/// found the socket empty, or it was woken less than `datagram_coalesce_us_max` after
/// it parked) sleeps on finding the socket empty and then takes what came meanwhile in
/// one go. The sleep adapts to the receive buffer: it halves when a round read more
/// than a quarter of `SO_RCVBUF` (estimated with [`DATAGRAM_OVERHEAD_BYTES`] per
/// datagram) and doubles, up to `datagram_coalesce_us_max`, when it read less than a
/// sixteenth. A sleep that brings nothing doubles it too, until a sleep of the maximum
/// brought nothing: then the reader parks in the reactor until the next datagram and
/// starts short again. A reader seeing datagrams further apart than the maximum parks
/// after each, as does every reader with the maximum at 0 or a receive buffer under
/// [`COALESCE_BUFFER_BYTES_MIN`].
#[derive(Debug)]
struct Coalesce {
    max: Duration,
    wait: Duration,
    buffer_bytes: usize,
    round_bytes: usize,
    round_datagrams: usize,
    /// The round began after a sleep (not a wakeup by a datagram).
    slept: bool,
    /// The last wakeup by a datagram came less than `max` after the reader parked.
    frequent: bool,
    parked_at: Option<Instant>,
}

/// The first sleep after parking.
const COALESCE_START: Duration = Duration::from_micros(100);
/// The shortest sleep, however full the buffer gets.
const COALESCE_MIN: Duration = Duration::from_micros(25);
/// The smallest receive buffer (as `SO_RCVBUF` reports it: twice what was asked) a
/// reader sleeps with: 1 MiB, a 512 KiB request. The kernel's usual default (208 KiB,
/// reported as 416 KiB) overflows under a burst even with a reader that wakes for every
/// datagram.
const COALESCE_BUFFER_BYTES_MIN: usize = 1 << 20;

/// What the kernel charges a datagram's receive buffer beyond its payload (the socket
/// buffer's bookkeeping), as the coalescing estimates it.
const DATAGRAM_OVERHEAD_BYTES: usize = 1024;

impl Coalesce {
    fn new(max: Duration, buffer_bytes: usize) -> Coalesce {
        // A small buffer has no room for what arrives during a sleep.
        let max = if buffer_bytes < COALESCE_BUFFER_BYTES_MIN {
            Duration::ZERO
        } else {
            max
        };
        Coalesce {
            max,
            wait: COALESCE_START.min(max),
            buffer_bytes,
            round_bytes: 0,
            round_datagrams: 0,
            slept: false,
            frequent: false,
            parked_at: None,
        }
    }

    /// Datagrams of these lengths were read.
    fn took(&mut self, lens: &[usize]) {
        self.round_datagrams += lens.len();
        self.round_bytes += lens.iter().sum::<usize>() + lens.len() * DATAGRAM_OVERHEAD_BYTES;
    }

    /// The socket is empty: how long to sleep before reading again, or `None` to park
    /// until the next datagram (then [`parked`](Self::parked) and
    /// [`woke`](Self::woke) tell it when). Ends the round.
    fn empty(&mut self) -> Option<Duration> {
        let (bytes, datagrams) = (self.round_bytes, self.round_datagrams);
        (self.round_bytes, self.round_datagrams) = (0, 0);
        let sleep = !self.max.is_zero()
            && match datagrams {
                0 => self.slept && self.wait < self.max,
                1 => self.slept || self.frequent,
                _ => true,
            };
        if !sleep {
            self.wait = COALESCE_START.min(self.max);
            self.slept = false;
            return None;
        }
        if datagrams == 0 || bytes < self.buffer_bytes / 16 {
            self.wait = (self.wait * 2).min(self.max);
        } else if bytes > self.buffer_bytes / 4 {
            self.wait = (self.wait / 2).max(COALESCE_MIN);
        }
        self.slept = true;
        Some(self.wait)
    }

    /// The reader parks until the next datagram.
    fn parked(&mut self, now: Instant) {
        self.parked_at = Some(now);
    }

    /// A datagram woke the parked reader.
    fn woke(&mut self, now: Instant) {
        self.frequent = self
            .parked_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.max);
    }
}

/// The socket's receive buffer as the kernel accounts it (`SO_RCVBUF`, which reports
/// the doubled size the kernel charges datagrams against); 0 if it cannot be read,
/// which keeps the coalescing at its shortest.
fn receive_buffer_bytes(fd: std::os::fd::RawFd) -> usize {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for the call and sized for an int option.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        v.max(0) as usize
    } else {
        0
    }
}

/// Datagrams a UDP reader handles before it lets the shard's other tasks run.
const UDP_DATAGRAMS_PER_YIELD: u32 = 32;

/// Datagrams one `recvmmsg` takes at most.
const UDP_BATCH_DATAGRAMS: usize = 16;

/// The slot per datagram: the largest UDP payload (65,507 bytes over IPv4) fits, so no
/// datagram is ever truncated (`read_buffer_bytes` sizes stream buffers only).
const UDP_SLOT_BYTES: usize = 65_536;

/// [`UDP_BATCH_DATAGRAMS`] receive slots in one zeroed allocation. The allocator maps it
/// lazily, so a slot costs memory only as far as the datagrams written into it reach
/// (one page for a typical 1.4 KB statsd or collectd datagram).
struct DatagramBatch {
    buf: Vec<u8>,
    slot_bytes: usize,
    lens: [usize; UDP_BATCH_DATAGRAMS],
}

impl DatagramBatch {
    fn new(slot_bytes: usize) -> DatagramBatch {
        DatagramBatch {
            buf: vec![0u8; slot_bytes * UDP_BATCH_DATAGRAMS],
            slot_bytes,
            lens: [0; UDP_BATCH_DATAGRAMS],
        }
    }

    fn slot(&mut self, i: usize) -> &mut [u8] {
        &mut self.buf[i * self.slot_bytes..(i + 1) * self.slot_bytes]
    }

    /// Takes the datagrams waiting on `fd` without waiting (one system call): how many,
    /// 0 when none is. Their lengths are in `lens`.
    fn recv_waiting(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        let base = self.buf.as_mut_ptr();
        // SAFETY: all-zero is a valid iovec and mmsghdr (null pointers, zero lengths).
        let mut iov: [libc::iovec; UDP_BATCH_DATAGRAMS] = unsafe { std::mem::zeroed() };
        let mut hdr: [libc::mmsghdr; UDP_BATCH_DATAGRAMS] = unsafe { std::mem::zeroed() };
        for (i, (v, h)) in iov.iter_mut().zip(hdr.iter_mut()).enumerate() {
            // SAFETY: slot i lies inside `buf` (UDP_BATCH_DATAGRAMS slots).
            v.iov_base = unsafe { base.add(i * self.slot_bytes) }.cast();
            v.iov_len = self.slot_bytes;
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at one iovec over its own slot of `buf`, all alive
        // for the call; no address or control buffer is asked for.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdr.as_mut_ptr(),
                UDP_BATCH_DATAGRAMS as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (len, h) in self.lens.iter_mut().zip(&hdr[..n]) {
            *len = h.msg_len as usize;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod coalesce_tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_busy_reader_sleeps_longer_until_the_maximum_and_parks_when_nothing_comes() {
        let mut c = Coalesce::new(2 * MS, 8 << 20);
        // Woken once, then a batch: busy, so it sleeps, doubling while rounds are light.
        c.parked(Instant::now());
        c.woke(Instant::now());
        c.took(&[1400; 16]);
        assert_eq!(c.empty(), Some(Duration::from_micros(200)));
        c.took(&[1400; 20]);
        assert_eq!(c.empty(), Some(Duration::from_micros(400)));
        c.took(&[1400; 20]);
        assert_eq!(c.empty(), Some(Duration::from_micros(800)));
        c.took(&[1400; 20]);
        assert_eq!(c.empty(), Some(Duration::from_micros(1600)));
        c.took(&[1400; 20]);
        assert_eq!(c.empty(), Some(2 * MS));
        c.took(&[1400; 20]);
        assert_eq!(c.empty(), Some(2 * MS), "never past the maximum");
        // A sleep of the maximum that brought nothing: park, and start short again.
        assert_eq!(c.empty(), None);
        c.parked(Instant::now());
        c.woke(Instant::now());
        c.took(&[1400; 2]);
        assert_eq!(c.empty(), Some(Duration::from_micros(200)));
    }

    #[test]
    fn a_filling_buffer_halves_the_sleep_down_to_the_floor() {
        let mut c = Coalesce::new(2 * MS, 1 << 20);
        for _ in 0..6 {
            c.took(&[100; 2]);
            c.empty();
        }
        assert_eq!(c.wait, 2 * MS);
        // More than a quarter of the buffer in one round.
        let quarter = (1 << 20) / 4 / (1400 + DATAGRAM_OVERHEAD_BYTES) + 1;
        let mut waits = Vec::new();
        for _ in 0..10 {
            c.took(&vec![1400; quarter]);
            waits.push(c.empty().unwrap());
        }
        assert_eq!(waits[0], MS);
        assert_eq!(*waits.last().unwrap(), COALESCE_MIN);
        // Between a sixteenth and a quarter: kept.
        let kept = c.wait;
        c.took(&vec![1400; quarter / 2]);
        assert_eq!(c.empty(), Some(kept));
    }

    #[test]
    fn a_slow_trickle_parks_after_each_datagram_and_zero_never_sleeps() {
        let mut c = Coalesce::new(2 * MS, 8 << 20);
        let t0 = Instant::now();
        c.parked(t0);
        c.woke(t0 + 10 * MS);
        c.took(&[1400]);
        assert_eq!(c.empty(), None, "one datagram after a long park");
        // A datagram less than the maximum after parking: a rate worth coalescing.
        c.parked(t0);
        c.woke(t0 + MS / 2);
        c.took(&[1400]);
        assert_eq!(c.empty(), Some(Duration::from_micros(200)));

        let mut off = Coalesce::new(Duration::ZERO, 8 << 20);
        off.took(&[1400; 16]);
        assert_eq!(off.empty(), None);
        // A small (or unreadable) buffer: no sleeping.
        for bytes in [0, 416 << 10] {
            let mut small = Coalesce::new(2 * MS, bytes);
            small.took(&[1400; 16]);
            assert_eq!(small.empty(), None);
        }
        // A buffer that fills in every round ends in a park too, not endless short
        // sleeps, once the sleeps bring nothing.
        let mut full = Coalesce::new(2 * MS, COALESCE_BUFFER_BYTES_MIN);
        full.took(&[60_000; 16]);
        assert_eq!(full.empty(), Some(COALESCE_START / 2));
        let mut sleeps = 0;
        while full.empty().is_some() {
            sleeps += 1;
            assert!(sleeps < 16);
        }
    }
}

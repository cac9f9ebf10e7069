//! The HTTP listeners' bounds (admin and read API, Noodle): at most
//! `admin_connections_max` connections open at once, and a connection that moves no byte
//! either way for `admin_idle_timeout_ms` is closed. Without them one local client could
//! hold every file descriptor with half-sent requests, and the ingest listeners, the
//! store's files and the admin API itself would fail (`EMFILE`) until it let go.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// What the bounds did, for `/stats` (`http`).
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Connections accepted and served.
    pub connections: AtomicU64,
    /// Connections closed at once because `admin_connections_max` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed after `admin_idle_timeout_ms` without a byte either way.
    pub connections_idle_closed: AtomicU64,
}

impl HttpCounters {
    /// The counters as JSON, with the connections open now.
    pub fn json(&self, open: usize) -> serde_json::Value {
        serde_json::json!({
            "connections": self.connections.load(Ordering::Relaxed),
            "connections_open": open,
            "connections_refused": self.connections_refused.load(Ordering::Relaxed),
            "connections_idle_closed": self.connections_idle_closed.load(Ordering::Relaxed),
        })
    }
}

/// A TCP listener that serves at most `max` connections at once (one past it is
/// accepted and closed, and counted) and closes idle ones.
pub struct BoundedListener {
    inner: tokio::net::TcpListener,
    permits: Arc<Semaphore>,
    max: usize,
    idle: Duration,
    counters: Arc<HttpCounters>,
    refused_logged: Option<Instant>,
}

impl BoundedListener {
    /// Bounds `inner` to `max` open connections, each closed after `idle` without a byte.
    pub fn new(
        inner: tokio::net::TcpListener,
        max: usize,
        idle: Duration,
        counters: Arc<HttpCounters>,
    ) -> BoundedListener {
        BoundedListener {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            max,
            idle,
            counters,
            refused_logged: None,
        }
    }

    /// A handle that tells how many connections are open.
    pub fn gauge(&self) -> OpenConnections {
        OpenConnections {
            permits: self.permits.clone(),
            max: self.max,
        }
    }
}

/// How many connections a [`BoundedListener`] has open.
#[derive(Clone)]
pub struct OpenConnections {
    permits: Arc<Semaphore>,
    max: usize,
}

impl OpenConnections {
    /// Connections open now.
    pub fn get(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = IdleClosing;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (IdleClosing, SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was taken:
                    // wait a little rather than spin.
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.counters.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    return (
                        IdleClosing::new(stream, permit, self.idle, self.counters.clone()),
                        addr,
                    );
                }
                Err(_) => {
                    self.counters
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    if self
                        .refused_logged
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                    {
                        self.refused_logged = Some(now);
                        tracing::warn!(
                            max = self.max,
                            peer = %addr,
                            "HTTP connection refused: server.admin_connections_max are open"
                        );
                    }
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A served connection: it holds its place under the cap until dropped, and fails its
/// reads and writes once no byte moved either way for the idle timeout (hyper then
/// closes it).
pub struct IdleClosing {
    stream: tokio::net::TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    counters: Arc<HttpCounters>,
    timed_out: bool,
}

impl IdleClosing {
    fn new(
        stream: tokio::net::TcpStream,
        permit: OwnedSemaphorePermit,
        idle: Duration,
        counters: Arc<HttpCounters>,
    ) -> IdleClosing {
        IdleClosing {
            stream,
            _permit: permit,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            counters,
            timed_out: false,
        }
    }

    fn moved(&mut self) {
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }

    /// What an I/O poll of the stream comes to: bytes moved (`moved` > 0) restart the
    /// idle clock, and a pending one is an error once the connection has been idle too
    /// long.
    fn settle<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
        moved: usize,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(Ok(v)) => {
                if moved > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    /// Pending I/O: an error once the connection has been idle too long.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.deadline.as_mut().poll(cx).is_pending() {
            return None;
        }
        if !self.timed_out {
            self.timed_out = true;
            self.counters
                .connections_idle_closed
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            "no byte either way for server.admin_idle_timeout_ms",
        ))
    }
}

impl AsyncRead for IdleClosing {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        let moved = buf.filled().len() - before;
        this.settle(cx, r, moved)
    }
}

impl AsyncWrite for IdleClosing {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, data);
        let moved = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        this.settle(cx, r, usize::from(moved))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        let moved = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        this.settle(cx, r, usize::from(moved))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

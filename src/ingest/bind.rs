//! Socket creation with socket2: the options the kernel needs before `bind`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

use socket2::{Domain, Protocol, Socket, Type};

fn socket(
    addr: SocketAddr,
    ty: Type,
    proto: Protocol,
    recv_buffer_bytes: usize,
) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_cloexec(true)?;
    if recv_buffer_bytes > 0 {
        // The kernel caps this at net.core.rmem_max; a smaller buffer is not an error.
        let _ = s.set_recv_buffer_size(recv_buffer_bytes);
        // Past the cap, SO_RCVBUFFORCE gets it with CAP_NET_ADMIN (and fails harmlessly
        // without).
        if s.recv_buffer_size().unwrap_or(0) < recv_buffer_bytes {
            force_recv_buffer(&s, recv_buffer_bytes);
        }
    }
    s.bind(&addr.into())?;
    Ok(s)
}

/// `SO_RCVBUFFORCE`: a receive buffer past `net.core.rmem_max`, with CAP_NET_ADMIN
/// (without it the call fails and the buffer stays as it was).
pub fn force_recv_buffer(s: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt(2) on the socket's own open fd, reading one c_int from our stack.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A shard's own `SO_REUSEPORT` TCP listener. Call on the shard's executor thread.
pub fn tcp(addr: SocketAddr, recv_buffer_bytes: usize) -> io::Result<glommio::net::TcpListener> {
    let s = socket(addr, Type::STREAM, Protocol::TCP, recv_buffer_bytes)?;
    s.listen(1024)?;
    // SAFETY: the fd was just created by socket2, is a listening TCP socket, and ownership
    // moves to the glommio listener (into_raw_fd gives it up), so it is closed exactly once.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(s.into_raw_fd()) })
}

/// A shard's own `SO_REUSEPORT` UDP socket. Call on the shard's executor thread.
pub fn udp(addr: SocketAddr, recv_buffer_bytes: usize) -> io::Result<glommio::net::UdpSocket> {
    let s = socket(addr, Type::DGRAM, Protocol::UDP, recv_buffer_bytes)?;
    // SAFETY: a bound UDP socket just created by socket2; into_raw_fd gives up ownership
    // to the glommio socket, so the fd is closed exactly once. (glommio's own
    // From<Socket> is for socket2 0.4, hence the raw fd.)
    Ok(unsafe { glommio::net::UdpSocket::from_raw_fd(s.into_raw_fd()) })
}

/// Checks, before shards bind with `SO_REUSEPORT`, that no other process holds the port:
/// with reuseport a second cadent would silently share the traffic. Binds without
/// reuseport and closes at once. Returns the address, with port 0 resolved to a free port.
pub fn probe(addr: SocketAddr, tcp: bool) -> io::Result<SocketAddr> {
    let (ty, proto) = if tcp {
        (Type::STREAM, Protocol::TCP)
    } else {
        (Type::DGRAM, Protocol::UDP)
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if tcp {
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())?;
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet socket"))
}

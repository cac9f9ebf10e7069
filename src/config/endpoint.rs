//! Addresses as written in the config: listener URLs and cluster members.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Transport of a socket address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Stream socket over TCP.
    Tcp,
    /// Datagram socket over UDP.
    Udp,
}

impl Transport {
    /// The URL scheme for this transport.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// Where a listener binds: `tcp://host:port`, `udp://host:port`, `unix:///path` or
/// `http://host:port/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenUrl {
    /// An IP socket; every shard binds its own `SO_REUSEPORT` socket on it.
    Inet(Transport, SocketAddr),
    /// A unix stream socket; one shard owns it (AF_UNIX has no `SO_REUSEPORT`).
    Unix(PathBuf),
    /// A unix datagram socket (`unixgram:///path`, as DogStatsD clients send to); one
    /// shard owns it.
    UnixDatagram(PathBuf),
    /// Lines in the bodies of HTTP POSTs to this path, on a TCP socket every shard binds
    /// (`SO_REUSEPORT`).
    Http(SocketAddr, String),
}

impl ListenUrl {
    /// The URL as bound: a probed `addr` replaces the configured address (port 0 becomes
    /// the port every shard bound).
    pub fn bound(&self, addr: Option<SocketAddr>) -> String {
        match (self, addr) {
            (ListenUrl::Inet(t, _), Some(a)) => ListenUrl::Inet(*t, a).to_string(),
            (ListenUrl::Http(_, p), Some(a)) => ListenUrl::Http(a, p.clone()).to_string(),
            (u, _) => u.to_string(),
        }
    }

    /// The IP address it binds, if it binds one.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            ListenUrl::Inet(_, a) | ListenUrl::Http(a, _) => Some(*a),
            ListenUrl::Unix(_) | ListenUrl::UnixDatagram(_) => None,
        }
    }

    /// Parses a listener URL. The scheme is required, so nobody guesses the transport.
    pub fn parse(s: &str) -> Result<ListenUrl, String> {
        if let Some(path) = s.strip_prefix("unixgram://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: a unix socket path must be absolute (unixgram:///path)"
                ));
            }
            return Ok(ListenUrl::UnixDatagram(PathBuf::from(path)));
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: a unix socket path must be absolute (unix:///path)"
                ));
            }
            return Ok(ListenUrl::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let (hostport, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let addr = parse_socket_addr(hostport).map_err(|e| format!("{s:?}: {e}"))?;
            return Ok(ListenUrl::Http(addr, path.to_string()));
        }
        let (transport, rest) = split_scheme(s)?.ok_or_else(|| {
            format!("{s:?}: needs a scheme: tcp://, udp://, unix://, unixgram:// or http://")
        })?;
        let addr = parse_socket_addr(rest).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(ListenUrl::Inet(transport, addr))
    }
}

impl fmt::Display for ListenUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenUrl::Inet(t, a) => write!(f, "{}://{a}", t.scheme()),
            ListenUrl::Unix(p) => write!(f, "unix://{}", p.display()),
            ListenUrl::UnixDatagram(p) => write!(f, "unixgram://{}", p.display()),
            ListenUrl::Http(a, p) => write!(f, "http://{a}{p}"),
        }
    }
}

/// A cluster member: `[proto://]host:port[=instance]`.
///
/// `host` is kept as written, because the carbon_ch ring hashes the host string, not the
/// resolved address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Transport used to send to this member (tcp when no scheme is written).
    pub transport: Transport,
    /// Host as written in the config (an IP literal or a name).
    pub host: String,
    /// Port; not part of the carbon_ch hash.
    pub port: u16,
    /// Optional instance, part of the carbon_ch hash.
    pub instance: Option<String>,
}

/// The most `server.member_instance_bytes_max` may allow.
pub const MEMBER_INSTANCE_BYTES_MAX: usize = 4096;

/// `s` for an error message: at most 64 characters of it, so a megabyte of input is not
/// echoed back.
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{:?}... ({} bytes)", &s[..i], s.len()),
        None => format!("{s:?}"),
    }
}

impl Member {
    /// Parses `[proto://]host:port[=instance]` with instances up to
    /// [`MEMBER_INSTANCE_BYTES_MAX`].
    pub fn parse(s: &str) -> Result<Member, String> {
        Member::parse_bounded(s, MEMBER_INSTANCE_BYTES_MAX)
    }

    /// Parses `[proto://]host:port[=instance]`; an instance longer than
    /// `instance_bytes_max` (`server.member_instance_bytes_max`), or a host or instance
    /// holding a control character (a newline would split the lines `cadent hash` and
    /// the logs print), is refused.
    pub fn parse_bounded(s: &str, instance_bytes_max: usize) -> Result<Member, String> {
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(format!(
                "{}: holds the control character {c:?} (not allowed in a host or instance)",
                shown(s)
            ));
        }
        let (transport, rest) = match split_scheme(s)? {
            Some((t, rest)) => (t, rest),
            None => (Transport::Tcp, s),
        };
        let (hostport, instance) = match rest.split_once('=') {
            Some((hp, inst)) => {
                if inst.is_empty() {
                    return Err(format!("{}: empty instance after '='", shown(s)));
                }
                if inst.len() > instance_bytes_max {
                    return Err(format!(
                        "{}: the instance is {} bytes, over server.member_instance_bytes_max \
                         ({instance_bytes_max})",
                        shown(s),
                        inst.len()
                    ));
                }
                (hp, Some(inst.to_string()))
            }
            None => (rest, None),
        };
        let (host, port) = split_host_port(hostport).map_err(|e| format!("{}: {e}", shown(s)))?;
        Ok(Member {
            transport,
            host: host.to_string(),
            port,
            instance,
        })
    }

    /// `host:port[=instance]` (`[v6]:port[=instance]`), the form `cadent hash` prints and
    /// the config accepts back.
    pub fn display_hash(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.instance {
            Some(i) => format!("{host}:{}={i}", self.port),
            None => format!("{host}:{}", self.port),
        }
    }

    /// `proto://host:port` (`proto://[v6]:port`): the identity of the socket a writer
    /// connects to, as a URL writes it.
    pub fn address_key(&self) -> String {
        if self.host.contains(':') {
            format!(
                "{}://[{}]:{}",
                self.transport.scheme(),
                self.host,
                self.port
            )
        } else {
            format!("{}://{}:{}", self.transport.scheme(), self.host, self.port)
        }
    }
}

fn split_scheme(s: &str) -> Result<Option<(Transport, &str)>, String> {
    match s.split_once("://") {
        None => Ok(None),
        Some(("tcp", rest)) => Ok(Some((Transport::Tcp, rest))),
        Some(("udp", rest)) => Ok(Some((Transport::Udp, rest))),
        Some((other, _)) => Err(format!(
            "{}: unknown scheme {} (expected tcp:// or udp://)",
            shown(s),
            shown(other)
        )),
    }
}

/// Splits `host:port`, `[v6]:port`. The host may be a name.
fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| "expected [ipv6]:port".to_string())?;
        (h, p)
    } else {
        s.rsplit_once(':')
            .ok_or_else(|| "expected host:port".to_string())?
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    // An IP literal (IPv6 in brackets) or a host name: anything else could not be
    // reached, and would not read back the same from `cadent hash` (fuzz target
    // admin_member).
    let name_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    let bracketed = s.starts_with('[');
    if bracketed && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!("{} is not an IPv6 address", shown(host)));
    }
    if !bracketed && !name_ok {
        return Err(format!(
            "{} is neither an IPv4 address nor a host name (IPv6 goes in brackets)",
            shown(host)
        ));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("bad port {port:?} (expected 1-65535)"))?;
    if port == 0 {
        return Err("port 0 is not a destination".into());
    }
    Ok((host, port))
}

/// Parses a bind address; names are resolved once, at config load.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    // A fuzzed config must never make the resolver send a query.
    if cfg!(fuzzing) {
        return Err(format!(
            "{}: not an address (names are not resolved when fuzzing)",
            shown(s)
        ));
    }
    use std::net::ToSocketAddrs;
    let mut it = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))?;
    it.next()
        .ok_or_else(|| format!("{s:?} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members() {
        let m = Member::parse("tcp://127.0.0.1:2101=a").unwrap();
        assert_eq!(
            (m.transport, m.host.as_str(), m.port, m.instance.as_deref()),
            (Transport::Tcp, "127.0.0.1", 2101, Some("a"))
        );
        let m = Member::parse("10.0.0.1:2003").unwrap();
        assert_eq!((m.transport, m.instance), (Transport::Tcp, None));
        let m = Member::parse("udp://[::1]:2003=x").unwrap();
        assert_eq!((m.transport, m.host.as_str()), (Transport::Udp, "::1"));
        assert_eq!(m.display_hash(), "[::1]:2003=x");
        assert_eq!(m.address_key(), "udp://[::1]:2003");
        assert_eq!(
            Member::parse("10.0.0.1:2003").unwrap().address_key(),
            "tcp://10.0.0.1:2003"
        );
        assert_eq!(Member::parse(&m.display_hash()).unwrap().host, "::1");
        for bad in [
            "127.0.0.1",
            "http://a:1",
            "a:0",
            "a:99999",
            ":1",
            "a:1=",
            "serv^r]::91",
            "[nothex]:91",
            "::1:2003",
            "a b:1",
        ] {
            assert!(Member::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn member_instances_are_bounded_and_hold_no_control_bytes() {
        let e = Member::parse("127.0.0.1:2003=a\nb").unwrap_err();
        assert!(e.contains("control character '\\n'"), "{e}");
        assert!(Member::parse("127.0.0.1:2003=a\tb").is_err());
        assert!(Member::parse("a\rb:2003").is_err());
        let long = format!("127.0.0.1:2003={}", "x".repeat(2_000_000));
        let e = Member::parse_bounded(&long, 256).unwrap_err();
        assert!(e.contains("server.member_instance_bytes_max (256)"), "{e}");
        assert!(
            e.len() < 300,
            "the error echoes the input: {} bytes",
            e.len()
        );
        assert!(Member::parse_bounded(&format!("h:1={}", "x".repeat(256)), 256).is_ok());
        assert!(Member::parse_bounded(&format!("h:1={}", "x".repeat(257)), 256).is_err());
        // Non-ASCII that is not a control character is an instance like any other.
        assert_eq!(
            Member::parse("h:1=caché").unwrap().instance.as_deref(),
            Some("caché")
        );
    }

    #[test]
    fn listen_urls() {
        assert_eq!(
            ListenUrl::parse("udp://127.0.0.1:8125")
                .unwrap()
                .to_string(),
            "udp://127.0.0.1:8125"
        );
        assert!(matches!(
            ListenUrl::parse("unix:///tmp/x.sock").unwrap(),
            ListenUrl::Unix(_)
        ));
        let g = ListenUrl::parse("unixgram:///tmp/d.sock").unwrap();
        assert!(matches!(g, ListenUrl::UnixDatagram(_)));
        assert_eq!(g.to_string(), "unixgram:///tmp/d.sock");
        assert!(ListenUrl::parse("unixgram://rel.sock").is_err());
        let h = ListenUrl::parse("http://127.0.0.1:2005/lines").unwrap();
        assert_eq!(h.to_string(), "http://127.0.0.1:2005/lines");
        assert_eq!(
            ListenUrl::parse("http://127.0.0.1:2005")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:2005/"
        );
        for bad in [
            "127.0.0.1:2003",
            "unix://rel",
            "tcp://nohost",
            "ftp://1.2.3.4:1",
        ] {
            assert!(ListenUrl::parse(bad).is_err(), "{bad}");
        }
    }
}

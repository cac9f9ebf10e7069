//! Operator tools built into the binary: load generator and counting sink, and the small
//! pieces they (and the tests) share.

pub mod blast;
pub mod collectd_dump;
pub mod echo;
pub mod pyfmt;
pub mod spool;
pub mod whisper;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::config::{ListenUrl, Transport};

/// `tcp://HOST:PORT` or `udp://HOST:PORT`, as taken by `--to` and `cadent echo --listen`;
/// parsed like a config listener URL (`unix://` is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The transport named by the scheme.
    pub transport: Transport,
    /// The socket address (names are resolved once, when parsed).
    pub addr: SocketAddr,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match ListenUrl::parse(s.trim())? {
            ListenUrl::Inet(transport, addr) => Ok(Endpoint { transport, addr }),
            ListenUrl::Unix(_) | ListenUrl::UnixDatagram(_) | ListenUrl::Http(..) => {
                Err(format!("{s:?}: expected tcp:// or udp://"))
            }
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport.scheme(), self.addr)
    }
}

/// SplitMix64: a tiny seeded generator, so generated names and values are the same on
/// every run and machine (blast's traffic, the tests' inputs).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0); the slight modulo bias does not matter for test data.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

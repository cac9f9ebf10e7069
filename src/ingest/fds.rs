//! File descriptors: what a config can use at most, checked against `RLIMIT_NOFILE` at
//! startup, and each shard's share for stream connections. Connections past the share
//! are refused (counted), so a crowd of senders can never take the descriptors the admin
//! API, the health probes and the writers' reconnects need (`server.reserved_fds`).

use crate::config::{Config, ListenUrl, Transport};

/// Descriptors the process holds whatever the config: stdio, the admin listener, the
/// control thread's runtime, the log.
const PROCESS_FDS: u64 = 32;
/// Descriptors each shard's executor holds (io_uring rings, eventfds, timers).
const SHARD_FDS: u64 = 16;

/// How a config's descriptors add up, and each shard's share for connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPlan {
    /// Everything the config can use at once: fixed needs, every listener full, every
    /// destination connected on every shard and probed, plus the reserve.
    pub needed: u64,
    /// Listening sockets, executors and the process itself.
    pub fixed: u64,
    /// Stream connections if every listener on every shard reached `connections_max`.
    pub connections: u64,
    /// Writer connections (one per destination per shard) plus one probe each.
    pub destinations: u64,
    /// `server.reserved_fds`.
    pub reserved: u64,
    /// Stream connections each shard may hold within `limit`, over all its listeners.
    pub stream_fds_max_per_shard: usize,
}

/// The plan for `cfg` run by `shards` shards under a descriptor limit of `limit`.
pub fn plan(cfg: &Config, shards: usize, limit: u64) -> FdPlan {
    let shards_n = shards.max(1) as u64;
    let mut sockets = 0;
    let mut connections = 0;
    for l in &cfg.listeners {
        let (copies, stream) = match &l.url {
            ListenUrl::Inet(Transport::Tcp, _) | ListenUrl::Http(..) => (shards_n, true),
            ListenUrl::Inet(Transport::Udp, _) => (shards_n, false),
            // AF_UNIX has no SO_REUSEPORT: one shard owns it.
            ListenUrl::Unix(_) => (1, true),
            ListenUrl::UnixDatagram(_) => (1, false),
        };
        sockets += copies;
        if stream {
            connections += copies * l.connections_max as u64;
        }
    }
    let table = crate::route::DestinationTable::from_config(cfg);
    let destinations = table.occupied() as u64 * (shards_n + 1);
    let fixed = PROCESS_FDS + SHARD_FDS * shards_n + sockets;
    let reserved = cfg.server.reserved_fds as u64;
    let spare = limit.saturating_sub(fixed + destinations + reserved);
    FdPlan {
        needed: fixed + connections + destinations + reserved,
        fixed,
        connections,
        destinations,
        reserved,
        stream_fds_max_per_shard: usize::try_from(spare / shards_n).unwrap_or(usize::MAX),
    }
}

/// The process's `RLIMIT_NOFILE`: (soft, hard).
pub fn nofile() -> std::io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to `wanted` (at most the hard limit); returns the
/// soft limit in force afterwards.
pub fn raise_nofile(wanted: u64) -> std::io::Result<u64> {
    let (soft, hard) = nofile()?;
    let target = wanted.min(hard);
    if target <= soft {
        return Ok(soft);
    }
    let r = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit(2) reads the rlimit we own; raising the soft limit up to the
    // hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_adds_up_and_shares_what_is_left() {
        let cfg = Config::parse(
            r#"
            [server]
            reserved_fds = 100
            [[listen]]
            name = "t"
            url = "tcp://127.0.0.1:0"
            format = "graphite"
            connections_max = 1000
            [[listen]]
            name = "u"
            url = "udp://127.0.0.1:0"
            format = "statsd"
            [[cluster]]
            name = "c"
            kind = "forward"
            members = ["127.0.0.1:1", "127.0.0.1:2"]
            [[route]]
            match = { all = true }
            send_to = ["c"]
        "#,
        )
        .unwrap();
        let p = plan(&cfg, 2, 1024);
        assert_eq!(p.fixed, 32 + 2 * 16 + 4);
        assert_eq!(p.connections, 2000);
        assert_eq!(p.destinations, 2 * 3);
        assert_eq!(p.needed, p.fixed + 2000 + 6 + 100);
        // 1024 - 68 fixed - 6 destinations - 100 reserved = 850, 425 per shard.
        assert_eq!(p.stream_fds_max_per_shard, 425);
        assert_eq!(plan(&cfg, 2, 10).stream_fds_max_per_shard, 0);
    }
}

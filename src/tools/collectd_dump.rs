//! `cadent collectd dump`: prints what a collectd sender puts on the wire, one line per
//! value list, in the numbers collectd's csv plugin writes.
//!
//! ```text
//! host/plugin[-plugin_instance]/type[-type_instance] <time %.3f> <interval s> <value>...
//! NOTIFY host/plugin[-plugin_instance]/type[-type_instance] <severity> <message>
//! ```
//!
//! Gauges print as C's `%f`, counters, derives and absolutes as integers. The tool is an
//! operator's window, not a stage: a plain blocking UDP socket, no executor. Counters and
//! rejects by reason go to stderr at exit.

use std::io::{self, Write as _};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Endpoint;
use crate::config::Transport;
use crate::protocol::collectd::{
    write_identifier, AuthFile, DecodeStats, Decoder, Record, Reject, Security, SecurityLevel,
    Value,
};

/// Socket receive buffer dump asks the kernel for (capped at net.core.rmem_max).
const RECEIVE_BUFFER_BYTES: usize = 16 << 20;

/// The receive buffer: the largest datagram collectd's `MaxPacketSize` allows.
const DATAGRAM_BYTES_MAX: usize = 65_535;
/// Blocking receives wake up this often to look at the deadline.
const RECV_TIMEOUT: Duration = Duration::from_millis(200);

/// Arguments of `cadent collectd dump`.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// Where to listen: udp://IP:PORT.
    #[arg(long, default_value = "udp://127.0.0.1:25826")]
    pub listen: Endpoint,
    /// collectd auth file (`user: password` lines), for signed and encrypted packets.
    #[arg(long)]
    pub auth_file: Option<PathBuf>,
    /// What to accept, as a collectd `Listen` block: none, sign or encrypt.
    #[arg(long, default_value = "none")]
    pub security_level: SecurityLevel,
    /// Stop after printing this many value lists.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration_s: Option<f64>,
}

/// Runs the dump until --count value lists or --duration-s, whichever comes first.
pub fn run(args: DumpArgs) -> io::Result<()> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    if args.listen.transport != Transport::Udp {
        return Err(invalid(format!(
            "collectd dump: --listen {}: collectd speaks udp://",
            args.listen
        )));
    }
    let auth = match &args.auth_file {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| {
                io::Error::new(e.kind(), format!("collectd dump: {}: {e}", path.display()))
            })?;
            Some(AuthFile::parse(&text))
        }
        None => None,
    };
    let security = Security::new(args.security_level, auth)
        .map_err(|e| invalid(format!("collectd dump: {e}")))?;
    let socket = UdpSocket::bind(args.listen.addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("collectd dump: bind {}: {e}", args.listen),
        )
    })?;
    // Senders burst (collectd-tg sends a whole interval at once); the kernel's default
    // receive buffer (~208 KiB) overflowed while dump used 4-13% of a CPU, dropping ~21%
    // of packets. Ask for 16 MiB (the kernel caps it at net.core.rmem_max).
    let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(RECEIVE_BUFFER_BYTES);
    let deadline = args
        .duration_s
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut out = io::BufWriter::new(io::stdout().lock());
    let stats = dump(
        &socket,
        Decoder::new(security),
        &mut out,
        args.count,
        deadline,
    )?;
    out.flush()?;
    drop(out);
    eprintln!("{}", summary(&stats));
    Ok(())
}

/// Receives datagrams on `socket` and writes each record to `out` until `count` value
/// lists were written or `deadline` passed; returns the decoder's counters.
pub fn dump(
    socket: &UdpSocket,
    mut decoder: Decoder,
    out: &mut impl io::Write,
    count: Option<u64>,
    deadline: Option<Instant>,
) -> io::Result<DecodeStats> {
    socket.set_read_timeout(Some(RECV_TIMEOUT))?;
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    let mut written = 0u64;
    let mut line = Vec::with_capacity(256);
    // Bounded by count or deadline; without either it runs until killed, as a tool should.
    while count.is_none_or(|c| written < c) && deadline.is_none_or(|d| Instant::now() < d) {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        line.clear();
        decoder.decode(&mut buf[..n], &mut |record| {
            if count.is_some_and(|c| written >= c) {
                return;
            }
            if matches!(record, Record::Values(_)) {
                written += 1;
            }
            write_record(&mut line, &record);
        });
        out.write_all(&line)?;
        out.flush()?;
    }
    Ok(decoder.stats().clone())
}

/// Appends one record's line (with its `\n`) to `out`.
pub fn write_record(out: &mut Vec<u8>, record: &Record<'_>) {
    match record {
        Record::Values(vl) => {
            write_identifier(out, vl.identity());
            write!(
                out,
                " {:.3} {}",
                vl.time.as_secs_f64(),
                vl.interval.as_secs_f64()
            )
            .expect("write to Vec");
            for v in vl.values.iter() {
                out.push(b' ');
                write_value(out, v);
            }
        }
        Record::Notification(n) => {
            out.extend_from_slice(b"NOTIFY ");
            write_identifier(out, n.identity());
            write!(out, " {} ", n.severity.as_str()).expect("write to Vec");
            out.extend_from_slice(n.message);
        }
    }
    out.push(b'\n');
}

/// One value as the csv plugin writes it with `StoreRates false`.
pub fn write_value(out: &mut Vec<u8>, v: Value) {
    match v {
        // C's %f spells NaN `nan` (`-nan` with the sign bit); Rust's `{:.6}` says `NaN`.
        Value::Gauge(g) if g.is_nan() => out.extend_from_slice(if g.is_sign_negative() {
            b"-nan"
        } else {
            b"nan"
        }),
        Value::Gauge(g) => write!(out, "{g:.6}").expect("write to Vec"),
        Value::Counter(c) | Value::Absolute(c) => write!(out, "{c}").expect("write to Vec"),
        Value::Derive(d) => write!(out, "{d}").expect("write to Vec"),
    }
}

/// The exit line: counters, then each reject reason that occurred.
pub fn summary(stats: &DecodeStats) -> String {
    let mut s = format!(
        "collectd dump: packets={} value_lists={} notifications={} rejected={}",
        stats.packets,
        stats.value_lists,
        stats.notifications,
        stats.rejected_total()
    );
    for reason in Reject::ALL {
        let n = stats.rejected(reason);
        if n > 0 {
            s.push_str(&format!(" {}={n}", reason.as_str()));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::collectd::{
        CdTime, Credentials, Encoder, EncoderConfig, Notification, SendSecurity, Severity,
        ValueList, Values,
    };

    fn line(record: &Record<'_>) -> String {
        let mut out = Vec::new();
        write_record(&mut out, record);
        String::from_utf8(out).unwrap()
    }

    fn vl<'a>(values: &'a [Value], pinst: &'a [u8], tinst: &'a [u8]) -> ValueList<'a> {
        ValueList {
            host: b"web1",
            plugin: b"interface",
            plugin_instance: pinst,
            type_: b"if_octets",
            type_instance: tinst,
            time: CdTime(1_700_000_000 << 30 | 1 << 29),
            interval: CdTime::from_secs(10),
            values: Values::from_slice(values),
        }
    }

    #[test]
    fn value_lines_are_csv_numbers() {
        let values = [Value::Derive(-5), Value::Counter(u64::MAX)];
        assert_eq!(
            line(&Record::Values(vl(&values, b"eth0", b""))),
            "web1/interface-eth0/if_octets 1700000000.500 10 -5 18446744073709551615\n"
        );
        let values = [
            Value::Gauge(0.25),
            Value::Gauge(f64::NAN),
            Value::Gauge(f64::NEG_INFINITY),
            Value::Absolute(7),
        ];
        assert_eq!(
            line(&Record::Values(vl(&values, b"", b"x"))),
            "web1/interface/if_octets-x 1700000000.500 10 0.250000 nan -inf 7\n"
        );
    }

    #[test]
    fn notification_line() {
        let n = Notification {
            host: b"h",
            plugin: b"p",
            plugin_instance: b"",
            type_: b"t",
            type_instance: b"i",
            time: CdTime::from_secs(1),
            severity: Severity::Warning,
            message: b"disk full",
        };
        assert_eq!(
            line(&Record::Notification(n)),
            "NOTIFY h/p/t-i WARNING disk full\n"
        );
    }

    /// Encoded and signed packets over a real socket come out as lines; `count` stops it.
    #[test]
    fn dump_reads_signed_packets_over_udp() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let auth = AuthFile::parse(b"alice: secret\n");
        let decoder = Decoder::new(Security::new(SecurityLevel::Sign, Some(auth)).unwrap());
        let creds = Credentials::new(b"alice", b"secret").unwrap();
        let mut enc = Encoder::new(EncoderConfig {
            security: SendSecurity::Sign(creds),
            ..EncoderConfig::default()
        });
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        let mut send = |p: &[u8]| {
            sender.send_to(p, to).unwrap();
        };
        let values = [Value::Derive(1), Value::Derive(2)];
        for _ in 0..3 {
            enc.push(&vl(&values, b"eth0", b""), &mut send).unwrap();
        }
        enc.flush(&mut send);
        // A plain packet: refused by a sign listener.
        sender.send_to(b"\x00\x00\x00\x05\x00", to).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let stats = dump(&socket, decoder, &mut out, Some(2), Some(deadline)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "web1/interface-eth0/if_octets 1700000000.500 10 1 2\n".repeat(2)
        );
        assert_eq!(stats.value_lists, 3);
        assert!(summary(&stats).starts_with("collectd dump: packets=1 value_lists=3"));
    }
}

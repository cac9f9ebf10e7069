//! Codec throughput for bench/collectd.py: collectd value lists decoded and re-encoded
//! per CPU-second at each security level, and pickle points decoded and re-encoded per
//! CPU-second. Prints one JSON line.
//!
//! Usage: collectd_bench [CPU_SECONDS_PER_CASE] [VALUE_LISTS]
//! (defaults 1.5 and 100000). The value lists are blast's collectd traffic
//! (`CollectdTraffic`, 1000 hosts, 20 plugins, real types.db types), packed by the
//! `Encoder` into 1452-byte packets plain, signed and encrypted. Each timed pass copies
//! every packet into a receive buffer (decryption is in place), decodes it, and pushes
//! each value list into an `Encoder` of the same security, as a relay forwarding collectd
//! would. Passes repeat until the CPU time reaches the target. Pickle: the same number of
//! graphite points (blast's `PointPool`) in frames of 500, each frame decoded and its
//! points encoded into a new frame.

use std::time::Instant;

use cadent::protocol::collectd::{
    AuthFile, Credentials, Decoder, Encoder, EncoderConfig, Record, Security, SecurityLevel,
    SendSecurity, MAX_PACKET_BYTES_DEFAULT,
};
use cadent::protocol::pickle::{self, Point};
use cadent::tools::blast::{CollectdTraffic, PointPool, Scratch};

fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn send_security(level: SecurityLevel) -> SendSecurity {
    let creds = || Credentials::new(b"bench", b"secret").unwrap();
    match level {
        SecurityLevel::None => SendSecurity::None,
        SecurityLevel::Sign => SendSecurity::Sign(creds()),
        SecurityLevel::Encrypt => SendSecurity::Encrypt(creds()),
    }
}

fn encoder(level: SecurityLevel) -> Encoder {
    Encoder::new(EncoderConfig {
        max_packet_bytes: MAX_PACKET_BYTES_DEFAULT,
        security: send_security(level),
    })
}

/// One security level: returns a JSON object.
fn collectd_case(level: SecurityLevel, name: &str, value_lists: u64, target_cpu: f64) -> String {
    let traffic = CollectdTraffic::new(value_lists.min(20_000), 1000, 20, 1, 1_700_000_000);
    let mut scratch = Scratch::default();
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut enc = encoder(level);
    for i in 0..value_lists {
        let vl = traffic.value_list(i, &mut scratch);
        enc.push(&vl, &mut |p: &[u8]| packets.push(p.to_vec()))
            .unwrap();
    }
    enc.flush(&mut |p: &[u8]| packets.push(p.to_vec()));
    let packet_bytes: usize = packets.iter().map(Vec::len).sum();
    let auth = (level != SecurityLevel::None).then(|| AuthFile::parse(b"bench: secret"));
    let mut dec = Decoder::new(Security::new(level, auth).unwrap());
    let mut out = encoder(level);
    let mut buf = vec![0u8; 65536];
    let (mut passes, mut out_bytes) = (0u64, 0u64);
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    loop {
        for p in &packets {
            let b = &mut buf[..p.len()];
            b.copy_from_slice(p);
            dec.decode(b, &mut |r| {
                if let Record::Values(vl) = r {
                    out.push(&vl, &mut |q: &[u8]| out_bytes += q.len() as u64)
                        .unwrap();
                }
            });
        }
        out.flush(&mut |q: &[u8]| out_bytes += q.len() as u64);
        passes += 1;
        // Bounded: stops at the CPU target, or after 10,000 passes whatever the time.
        if cpu_seconds() - cpu0 >= target_cpu || passes >= 10_000 {
            break;
        }
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    let stats = dec.stats();
    assert_eq!(stats.rejected_total(), 0, "{name}: rejects");
    assert_eq!(
        stats.value_lists,
        value_lists * passes,
        "{name}: value lists"
    );
    assert_eq!(out.stats().value_lists, value_lists * passes);
    let vls = (value_lists * passes) as f64;
    format!(
        "{{\"security\":\"{name}\",\"value_lists\":{},\"packets\":{},\"packet_bytes_avg\":{:.0},\"vl_per_packet\":{:.2},\"out_packets\":{},\"out_bytes\":{out_bytes},\"cpu_s\":{cpu:.4},\"wall_s\":{wall:.4},\"vl_per_cpu_s\":{:.0},\"packets_per_cpu_s\":{:.0}}}",
        value_lists * passes,
        packets.len() as u64 * passes,
        packet_bytes as f64 / packets.len() as f64,
        value_lists as f64 / packets.len() as f64,
        out.stats().packets,
        vls / cpu,
        (packets.len() as u64 * passes) as f64 / cpu,
    )
}

/// Pickle frames of 500 points: decode each, copy its points out, encode a new frame.
fn pickle_case(points: u64, target_cpu: f64) -> String {
    let pool = PointPool::generate(points, 1, 1_700_000_000);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut batch: Vec<Point<'_>> = Vec::with_capacity(500);
    for i in 0..pool.len() {
        batch.push(pool.point(i));
        if batch.len() == 500 || i + 1 == pool.len() {
            let mut f = Vec::new();
            pickle::encode_frame(&batch, &mut f);
            frames.push(f);
            batch.clear();
        }
    }
    drop(batch);
    let frame_bytes: usize = frames.iter().map(Vec::len).sum();
    let mut dec = pickle::Decoder::default();
    // Decoded points borrow only for the callback: names go to `names`, then a frame of
    // points borrowing from it is encoded.
    let mut names: Vec<u8> = Vec::new();
    let mut parsed: Vec<(usize, usize, f64, f64)> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let (mut passes, mut decoded, mut out_bytes) = (0u64, 0u64, 0u64);
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    loop {
        for f in &frames {
            let pickle::Framed::Frame { pickle, .. } =
                pickle::split_frame(f, pickle::FRAME_BYTES_MAX_DEFAULT)
            else {
                panic!("frame does not split");
            };
            names.clear();
            parsed.clear();
            let d = dec
                .decode(pickle, |p| {
                    let s = names.len();
                    names.extend_from_slice(p.name);
                    parsed.push((s, names.len(), p.timestamp, p.value));
                })
                .unwrap();
            decoded += d.points as u64;
            let pts: Vec<Point<'_>> = parsed
                .iter()
                .map(|&(s, e, timestamp, value)| Point {
                    name: &names[s..e],
                    timestamp,
                    value,
                })
                .collect();
            out.clear();
            out_bytes += pickle::encode_frame(&pts, &mut out) as u64;
        }
        passes += 1;
        if cpu_seconds() - cpu0 >= target_cpu || passes >= 10_000 {
            break;
        }
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    assert_eq!(decoded, pool.len() as u64 * passes);
    assert_eq!(
        out_bytes,
        frame_bytes as u64 * passes,
        "re-encoded frames differ"
    );
    format!(
        "{{\"points\":{decoded},\"frames\":{},\"frame_bytes_avg\":{:.0},\"cpu_s\":{cpu:.4},\"wall_s\":{wall:.4},\"points_per_cpu_s\":{:.0},\"frames_per_cpu_s\":{:.0}}}",
        frames.len() as u64 * passes,
        frame_bytes as f64 / frames.len() as f64,
        decoded as f64 / cpu,
        (frames.len() as u64 * passes) as f64 / cpu,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target: f64 = args.get(1).map_or(1.5, |s| s.parse().unwrap());
    let value_lists: u64 = args.get(2).map_or(100_000, |s| s.parse().unwrap());
    let cases = [
        (SecurityLevel::None, "none"),
        (SecurityLevel::Sign, "sign"),
        (SecurityLevel::Encrypt, "encrypt"),
    ]
    .map(|(l, n)| collectd_case(l, n, value_lists, target));
    let pickle = pickle_case(value_lists, target);
    println!(
        "{{\"impl\":\"cadent\",\"collectd\":[{}],\"pickle\":{pickle}}}",
        cases.join(",")
    );
}

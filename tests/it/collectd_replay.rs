//! Live traffic from `collectd-tg` (libcollectdclient) and from a real collectd daemon,
//! captured on a UDP socket and replayed (same bytes, same order) to both `cadent collectd
//! dump` and a real collectd 5.12 receiver with the csv plugin: both must see exactly the
//! same value lists (identifier, time, values).

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::collectd_live::{spawn_collectd, Collectd, Stoppable, COLLECTD, TYPES_DB};
use crate::support::{cadent_bin, free_port, temp_dir, wait_until};

const COLLECTD_TG: &str = "/usr/bin/collectd-tg";
/// How long the live senders run while we capture.
const CAPTURE: Duration = Duration::from_secs(4);
/// How long `cadent collectd dump` listens for the replay.
const DUMP_S: u64 = 5;
/// The daemon sender's host name, so its value lists can be told apart from collectd-tg's.
const TXHOST: &str = "txhost";

/// A collectd daemon sending load, memory, cpu and uptime every second to `port`.
fn start_sender(port: u16) -> Stoppable {
    let dir = temp_dir("collectd-sender");
    let conf = format!(
        r#"Hostname "{TXHOST}"
FQDNLookup false
Interval 1
BaseDir "{d}"
PIDFile "{d}/collectd.pid"
TypesDB "{TYPES_DB}"
AutoLoadPlugin false
LoadPlugin load
LoadPlugin memory
LoadPlugin cpu
LoadPlugin uptime
<LoadPlugin network>
  FlushInterval 1
</LoadPlugin>
<Plugin network>
  Server "127.0.0.1" "{port}"
</Plugin>
"#,
        d = dir.display()
    );
    spawn_collectd(&dir, &conf, "collectd.log")
}

/// collectd-tg: 1000 value lists over 8 hosts and 5 plugins, each sent every second.
fn start_tg(port: u16) -> Stoppable {
    let child = Command::new(COLLECTD_TG)
        .args(["-d", "127.0.0.1", "-D", &port.to_string()])
        .args(["-n", "1000", "-H", "8", "-p", "5", "-i", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("start collectd-tg");
    Stoppable(child)
}

/// Every datagram that reaches `socket` within `d`, in arrival order.
fn capture(socket: &UdpSocket, d: Duration) -> Vec<Vec<u8>> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + d;
    let mut buf = vec![0u8; 65_535];
    let mut got = Vec::new();
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

/// Sends every datagram to each address, in order, paced so no receive buffer overflows.
fn replay(datagrams: &[Vec<u8>], to: &[u16]) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, d) in datagrams.iter().enumerate() {
        for port in to {
            s.send_to(d, ("127.0.0.1", *port)).unwrap();
        }
        if i % 8 == 7 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Dump lines as csv rows: `identifier time values...`, the interval field dropped.
fn dump_rows(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert!(
                f.len() >= 4 && f[0] != "NOTIFY",
                "unexpected dump line {line:?}"
            );
            let mut row = vec![f[0], f[1]];
            row.extend(&f[3..]);
            row.join(" ")
        })
        .collect()
}

#[test]
fn live_collectd_traffic_replayed_to_cadent_and_collectd_is_identical() {
    assert!(
        Path::new(COLLECTD).exists() && Path::new(COLLECTD_TG).exists(),
        "collectd or collectd-tg is missing: run scripts/install-peers.sh"
    );

    // 1. Capture live traffic from both senders at once.
    let cap = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cap_port = cap.local_addr().unwrap().port();
    let mut sender = start_sender(cap_port);
    let mut tg = start_tg(cap_port);
    let mut datagrams = capture(&cap, CAPTURE);
    tg.stop();
    sender.stop();
    // Whatever was still queued at the stop (the daemon flushes on shutdown).
    datagrams.extend(capture(&cap, Duration::from_millis(300)));
    assert!(!datagrams.is_empty(), "nothing captured");

    // 2. Replay to cadent collectd dump and to a real collectd receiver.
    // Level None; one write thread (see collectd_live's receiver config).
    let receiver = Collectd::start("None");
    let dir = temp_dir("collectd-replay-dump");
    let (out_path, err_path) = (dir.join("dump.out"), dir.join("dump.err"));
    let dump_port = free_port();
    // Output to files, not pipes: a full pipe would stall the dump and drop datagrams.
    let mut dump = Stoppable(
        Command::new(cadent_bin())
            .args(["collectd", "dump", "--listen"])
            .arg(format!("udp://127.0.0.1:{dump_port}"))
            .args(["--count", "100000000", "--duration-s", &DUMP_S.to_string()])
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("start cadent collectd dump"),
    );
    let listening = wait_until(Duration::from_secs(5), || {
        UdpSocket::bind(("127.0.0.1", dump_port)).is_err()
    });
    assert!(listening, "cadent collectd dump did not listen");
    replay(&datagrams, &[dump_port, receiver.port]);
    // The dump stops itself after --duration-s; bounded here all the same.
    let exited = wait_until(Duration::from_secs(DUMP_S + 10), || {
        matches!(dump.0.try_wait(), Ok(Some(_)))
    });
    assert!(
        exited,
        "cadent collectd dump did not stop after --duration-s"
    );
    let status = dump.0.wait().unwrap();
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(status.success(), "dump failed: {stderr}");

    // 3. Compare, as sorted lists (duplicates kept).
    let mut cadent = dump_rows(&stdout);
    cadent.sort();
    assert!(
        stderr.contains(&format!("packets={} ", datagrams.len()))
            && stderr.contains(&format!("value_lists={} ", cadent.len()))
            && stderr.contains("rejected=0"),
        "dump summary ({} datagrams, {} lines): {stderr}",
        datagrams.len(),
        cadent.len()
    );
    let from_tg = cadent.iter().filter(|r| r.starts_with("host")).count();
    let from_daemon = cadent
        .iter()
        .filter(|r| r.starts_with(&format!("{TXHOST}/")))
        .count();
    assert!(from_tg > 0, "no collectd-tg value lists");
    assert!(from_daemon > 0, "no collectd daemon value lists");
    assert_eq!(from_tg + from_daemon, cadent.len());
    wait_until(Duration::from_secs(15), || {
        receiver.csv_rows().len() >= cadent.len()
    });
    // A moment more, so a surplus on collectd's side would show too.
    std::thread::sleep(Duration::from_millis(500));
    let collectd = receiver.csv_rows();
    if cadent != collectd {
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            let b: BTreeSet<&String> = b.iter().collect();
            a.iter()
                .filter(|r| !b.contains(r))
                .take(20)
                .cloned()
                .collect()
        };
        panic!(
            "cadent dump and collectd csv differ ({} datagrams, {} vs {} value lists)\n\
             only in cadent: {:?}\nonly in collectd: {:?}\ncollectd log:\n{}",
            datagrams.len(),
            cadent.len(),
            collectd.len(),
            only(&cadent, &collectd),
            only(&collectd, &cadent),
            receiver.log()
        );
    }
    eprintln!(
        "collectd replay: {} datagrams, {} value lists ({from_tg} collectd-tg, \
         {from_daemon} daemon) identical in cadent dump and collectd csv",
        datagrams.len(),
        cadent.len()
    );
}

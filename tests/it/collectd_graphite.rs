//! write_graphite naming: the same value lists through a real collectd 5.12 (network
//! `Listen` -> write_graphite over UDP) and through cadent's `GraphiteNamer`, for several
//! option combinations at once (one `<Node>` per combination, each to its own UDP
//! socket): the lines must be identical, byte for byte, as multisets.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cadent::protocol::collectd::graphite_names::{GraphiteNamer, GraphiteOptions};
use cadent::protocol::collectd::types_db::TypesDb;
use cadent::protocol::collectd::{CdTime, Encoder, EncoderConfig, Value, ValueList, Values};

use crate::support::{free_port, temp_dir, wait_until};

use crate::collectd_live::{spawn_collectd, Stoppable, COLLECTD, TYPES_DB};

/// A collectd daemon, stopped by PID (SIGTERM, then SIGKILL) when dropped.
struct Collectd {
    proc: Stoppable,
    log: PathBuf,
}

impl Collectd {
    fn start(dir: &Path, config: &str) -> Collectd {
        let log = dir.join("collectd.log");
        let proc = spawn_collectd(dir, config, "collectd.stderr");
        let mut c = Collectd { proc, log };
        let ready = wait_until(Duration::from_secs(10), || {
            c.log_text().contains("Initialization complete")
                || c.proc.0.try_wait().ok().flatten().is_some()
        });
        let alive = c.proc.0.try_wait().unwrap().is_none();
        assert!(ready && alive, "collectd did not start:\n{}", c.log_text());
        c
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One option combination: collectd's `<Node>` lines and ours.
struct Combo {
    name: &'static str,
    config: &'static str,
    options: GraphiteOptions,
}

fn combos() -> Vec<Combo> {
    let d = GraphiteOptions {
        interval_default: CdTime::from_secs(1),
        ..GraphiteOptions::default()
    };
    let no_rates = GraphiteOptions {
        store_rates: false,
        ..d.clone()
    };
    vec![
        Combo {
            name: "default",
            config: "",
            options: d.clone(),
        },
        Combo {
            name: "no_rates",
            config: "StoreRates false",
            options: no_rates.clone(),
        },
        Combo {
            name: "prefix_postfix_separate_always_ds",
            config: "Prefix \"collectd.\"\nPostfix \".pf\"\nSeparateInstances true\n\
                     AlwaysAppendDS true\nStoreRates false",
            options: GraphiteOptions {
                prefix: "collectd.".into(),
                postfix: ".pf".into(),
                separate_instances: true,
                always_append_ds: true,
                ..no_rates.clone()
            },
        },
        Combo {
            name: "tags",
            config: "UseTags true",
            options: GraphiteOptions {
                use_tags: true,
                ..d.clone()
            },
        },
        Combo {
            name: "tags_dupes_prefix_always_ds",
            config: "UseTags true\nDropDuplicateFields true\nPrefix \"p.\"\nPostfix \".s\"\n\
                     AlwaysAppendDS true\nReverseHost true\nStoreRates false",
            options: GraphiteOptions {
                use_tags: true,
                drop_duplicate_fields: true,
                prefix: "p.".into(),
                postfix: ".s".into(),
                always_append_ds: true,
                reverse_host: true,
                ..no_rates.clone()
            },
        },
        Combo {
            name: "dupes_preserve_reverse",
            config: "DropDuplicateFields true\nPreserveSeparator true\nReverseHost true",
            options: GraphiteOptions {
                drop_duplicate_fields: true,
                preserve_separator: true,
                reverse_host: true,
                ..d.clone()
            },
        },
        Combo {
            name: "reverse_escape_dash",
            config: "ReverseHost true\nEscapeCharacter \"-\"",
            options: GraphiteOptions {
                reverse_host: true,
                escape_character: b'-',
                ..d.clone()
            },
        },
        Combo {
            name: "dupes_separate_always_ds_escape_x",
            config: "DropDuplicateFields true\nSeparateInstances true\nAlwaysAppendDS true\n\
                     EscapeCharacter \"x\"\nPrefix \"a b:c,\"",
            options: GraphiteOptions {
                drop_duplicate_fields: true,
                separate_instances: true,
                always_append_ds: true,
                escape_character: b'x',
                prefix: "a b:c,".into(),
                ..d
            },
        },
    ]
}

/// Owned identity and values, so rounds can be built in a loop.
struct Vl {
    ids: [&'static str; 5],
    secs: u64,
    values: Vec<Value>,
}

impl Vl {
    fn as_value_list(&self) -> ValueList<'_> {
        ValueList {
            host: self.ids[0].as_bytes(),
            plugin: self.ids[1].as_bytes(),
            plugin_instance: self.ids[2].as_bytes(),
            type_: self.ids[3].as_bytes(),
            type_instance: self.ids[4].as_bytes(),
            time: CdTime::from_secs(self.secs),
            interval: CdTime::from_secs(10),
            values: Values::from_slice(&self.values),
        }
    }
}

/// Three rounds (packets) of value lists: names that exercise every option, every value
/// kind, rates across rounds (counter wrap, derive going down, a repeated time), wire
/// codes that differ from types.db, and lists collectd drops (unknown type, wrong count).
fn rounds(t0: u64) -> Vec<Vec<Vl>> {
    use Value::{Absolute as A, Counter as C, Derive as D, Gauge as G};
    let h = "test.host.example";
    let mut out = Vec::new();
    for r in 0..3u64 {
        let t = t0 + 10 * r.min(1) + 5 * r.saturating_sub(1);
        let k = r as i64;
        let mut round = vec![
            Vl {
                ids: [h, "cpu", "0", "cpu", "idle"],
                secs: t,
                values: vec![D(12345 + 70 * k)],
            },
            Vl {
                ids: [h, "cpu", "0", "cpu", "user"],
                secs: t,
                values: vec![D(1000 - 7 * k)],
            },
            Vl {
                ids: [h, "load", "", "load", ""],
                secs: t,
                values: vec![G(0.25), G(70.33849828876555 + k as f64), G(1.5e20)],
            },
            Vl {
                ids: [h, "interface", "eth0", "if_octets", ""],
                secs: t,
                values: vec![D(1000 + 333 * k), D(2000 + (1 << (20 * k)))],
            },
            Vl {
                ids: [h, "memory", "", "memory", "used"],
                secs: t,
                values: vec![G(1234.5 * (k + 1) as f64)],
            },
            Vl {
                ids: ["oldtime", "tgplug", "", "counter", ""],
                secs: t,
                values: vec![C([7, u32::MAX as u64 - 2, 40][r as usize])],
            },
            Vl {
                ids: ["oldtime", "tgplug", "", "absolute", ""],
                secs: t,
                values: vec![A(9 + 3 * r)],
            },
            Vl {
                ids: [
                    "we ird:host(1),x/y\"z\\!",
                    "p.l/1",
                    "i.n st/2",
                    "gauge",
                    "t\ti/3",
                ],
                secs: t,
                values: vec![G([f64::NAN, -0.0, 1e-5][r as usize])],
            },
            Vl {
                ids: ["h\u{f6}st.a.b", "plug", "", "gauge", ""],
                secs: t,
                values: vec![G(-123_456_789.123_456_8 * k as f64)],
            },
            // Wire says GAUGE, types.db says DERIVE: collectd reads the 8 bytes as an
            // i64; and the other way round.
            Vl {
                ids: ["mix", "m", "", "derive", ""],
                secs: t,
                values: vec![G(1.0 + k as f64)],
            },
            Vl {
                ids: ["mix", "m", "", "gauge", ""],
                secs: t,
                values: vec![D(4607182418800017408 + k)],
            },
            // Both duplicate rules at once (plugin == type, instances equal).
            Vl {
                ids: ["dup", "gauge", "x.y", "gauge", "x.y"],
                secs: t,
                values: vec![G(0.5 * k as f64)],
            },
            // collectd looks the type up as sent: dropped.
            Vl {
                ids: ["sl/ash", "p", "", "if/octets", ""],
                secs: t,
                values: vec![D(5 * k), D(-5 * k)],
            },
            Vl {
                ids: ["drop", "p", "", "no_such_type_here", ""],
                secs: t,
                values: vec![G(1.0)],
            },
            Vl {
                ids: ["drop", "p", "", "load", ""],
                secs: t,
                values: vec![G(1.0)],
            },
        ];
        if r == 2 {
            // The same time as the previous round: collectd keeps the old rate.
            round.push(Vl {
                ids: [h, "cpu", "0", "cpu", "idle"],
                secs: t,
                values: vec![D(99999)],
            });
        }
        out.push(round);
    }
    out
}

fn lines_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(rest.len(), |i| i + 2);
        out.push(rest[..end].to_vec());
        rest = &rest[end..];
    }
    out
}

#[test]
fn write_graphite_names_match_collectd() {
    assert!(
        Path::new(COLLECTD).exists() && Path::new(TYPES_DB).exists(),
        "collectd 5.12 is not installed ({COLLECTD}, {TYPES_DB}); run scripts/install-peers.sh"
    );
    let types = TypesDb::parse(&std::fs::read_to_string(TYPES_DB).unwrap()).unwrap();
    let combos = combos();
    let dir = temp_dir("collectd-graphite");
    let listen_port = free_port();
    let sockets: Vec<UdpSocket> = combos
        .iter()
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    // One write thread: collectd updates its rate cache in whichever write thread takes
    // a value list off its queue, so with several (5 by default) two value lists of one
    // name (round 3's same-time duplicate) can be taken out of order under load.
    let mut config = format!(
        "Hostname \"rx\"\nFQDNLookup false\nBaseDir \"{d}\"\nPIDFile \"{d}/collectd.pid\"\n\
         Interval 1\nWriteThreads 1\nTypesDB \"{TYPES_DB}\"\nAutoLoadPlugin false\n\
         LoadPlugin logfile\n<Plugin logfile>\n  LogLevel info\n  File \"{d}/collectd.log\"\n</Plugin>\n\
         LoadPlugin network\n<Plugin network>\n  Listen \"127.0.0.1\" \"{listen_port}\"\n</Plugin>\n\
         <LoadPlugin write_graphite>\n  FlushInterval 1\n</LoadPlugin>\n<Plugin write_graphite>\n",
        d = dir.display()
    );
    for (c, s) in combos.iter().zip(&sockets) {
        config += &format!(
            "<Node \"{}\">\nHost \"127.0.0.1\"\nPort \"{}\"\nProtocol \"udp\"\n{}\n</Node>\n",
            c.name,
            s.local_addr().unwrap().port(),
            c.config
        );
    }
    config += "</Plugin>\n";
    let daemon = Collectd::start(&dir, &config);

    // Ours first: the expected lines for each combination.
    let rounds = rounds(1795238337);
    let mut expected: Vec<Vec<Vec<u8>>> = Vec::new();
    for c in &combos {
        let mut namer = GraphiteNamer::new(c.options.clone()).unwrap();
        let mut out = Vec::new();
        for vl in rounds.iter().flatten() {
            let _ = namer.write(&types, &vl.as_value_list(), &mut out);
        }
        let mut lines = lines_of(&out);
        lines.sort();
        expected.push(lines);
    }

    // Then the same value lists to collectd, one packet per round.
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = format!("127.0.0.1:{listen_port}");
    for round in &rounds {
        let mut enc = Encoder::new(EncoderConfig::default());
        let mut sink = |p: &[u8]| {
            tx.send_to(p, &to).unwrap();
        };
        for vl in round {
            enc.push(&vl.as_value_list(), &mut sink).unwrap();
        }
        enc.flush(&mut sink);
        assert_eq!(enc.stats().packets, 1, "one packet per round");
        // Keep rounds in order through collectd's receive and dispatch threads.
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); combos.len()];
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut settle: Option<Instant> = None;
    while Instant::now() < deadline {
        let mut any = false;
        for (i, s) in sockets.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                got[i].extend(lines_of(&buf[..n]));
                any = true;
            }
        }
        let all = got.iter().zip(&expected).all(|(g, e)| g.len() >= e.len());
        if all && settle.is_none() {
            // Wait a little longer for any line beyond the expected ones.
            settle = Some(Instant::now() + Duration::from_millis(1500));
        }
        if settle.is_some_and(|s| Instant::now() > s) {
            break;
        }
        if !any {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let log = daemon.log_text();
    drop(daemon);

    let show = |ls: &[Vec<u8>]| {
        ls.iter()
            .map(|l| format!("  {:?}", String::from_utf8_lossy(l)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut failures = Vec::new();
    for ((c, mut g), e) in combos.iter().zip(got).zip(&expected) {
        g.sort();
        if &g != e {
            let only_collectd: Vec<_> = g.iter().filter(|l| !e.contains(l)).cloned().collect();
            let only_ours: Vec<_> = e.iter().filter(|l| !g.contains(l)).cloned().collect();
            failures.push(format!(
                "{}: collectd {} lines, cadent {}\nonly collectd:\n{}\nonly cadent:\n{}",
                c.name,
                g.len(),
                e.len(),
                show(&only_collectd),
                show(&only_ours)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\ncollectd log:\n{log}",
        failures.join("\n")
    );
    assert!(expected.iter().all(|e| e.len() > 30));
}

/// write_graphite's options as a cluster's keys.
fn cluster_keys(o: &GraphiteOptions) -> String {
    format!(
        "prefix = {:?}\npostfix = {:?}\nescape_character = {:?}\nseparate_instances = {}\n\
         always_append_ds = {}\npreserve_separator = {}\ndrop_duplicate_fields = {}\n\
         reverse_host = {}\nuse_tags = {}\nstore_rates = {}\n",
        o.prefix,
        o.postfix,
        (o.escape_character as char).to_string(),
        o.separate_instances,
        o.always_append_ds,
        o.preserve_separator,
        o.drop_duplicate_fields,
        o.reverse_host,
        o.use_tags,
        o.store_rates,
    )
}

/// Reads every socket until each has at least `want[i]` lines, then a little longer.
fn gather(sockets: &[UdpSocket], want: &[usize]) -> Vec<Vec<Vec<u8>>> {
    let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); sockets.len()];
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut settle: Option<Instant> = None;
    while Instant::now() < deadline {
        let mut any = false;
        for (i, s) in sockets.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                got[i].extend(lines_of(&buf[..n]));
                any = true;
            }
        }
        let all = got.iter().zip(want).all(|(g, w)| g.len() >= *w);
        if all && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_millis(1500));
        }
        if settle.is_some_and(|s| Instant::now() > s) {
            break;
        }
        if !any {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for g in &mut got {
        g.sort();
    }
    got
}

fn udp_sockets(n: usize) -> Vec<UdpSocket> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

/// The same packets to a real collectd 5.12 (network Listen -> write_graphite) and to
/// `cadent serve` (a collectd listener -> clusters with `format = "graphite"` and the same
/// options): the graphite lines each writes are the same, byte for byte.
#[test]
fn cadent_graphite_output_equals_write_graphite() {
    assert!(
        Path::new(COLLECTD).exists() && Path::new(TYPES_DB).exists(),
        "collectd 5.12 is not installed ({COLLECTD}, {TYPES_DB}); run scripts/install-peers.sh"
    );
    let combos = combos();
    let dir = temp_dir("collectd-graphite-serve");
    let collectd_port = free_port();
    let theirs = udp_sockets(combos.len());
    let ours = udp_sockets(combos.len());
    // One write thread: collectd updates its rate cache in whichever write thread takes
    // a value list off its queue, so with several (5 by default) two value lists of one
    // name (round 3's same-time duplicate) can be taken out of order under load.
    let mut config = format!(
        "Hostname \"rx\"\nFQDNLookup false\nBaseDir \"{d}\"\nPIDFile \"{d}/collectd.pid\"\n\
         Interval 1\nWriteThreads 1\nTypesDB \"{TYPES_DB}\"\nAutoLoadPlugin false\n\
         LoadPlugin logfile\n<Plugin logfile>\n  LogLevel info\n  File \"{d}/collectd.log\"\n</Plugin>\n\
         LoadPlugin network\n<Plugin network>\n  Listen \"127.0.0.1\" \"{collectd_port}\"\n</Plugin>\n\
         <LoadPlugin write_graphite>\n  FlushInterval 1\n</LoadPlugin>\n<Plugin write_graphite>\n",
        d = dir.display()
    );
    for (c, s) in combos.iter().zip(&theirs) {
        config += &format!(
            "<Node \"{}\">\nHost \"127.0.0.1\"\nPort \"{}\"\nProtocol \"udp\"\n{}\n</Node>\n",
            c.name,
            s.local_addr().unwrap().port(),
            c.config
        );
    }
    config += "</Plugin>\n";
    let daemon = Collectd::start(&dir, &config);

    let cadent_port = free_port();
    let mut text = format!(
        "[server]\nadmin_listen = \"ADMIN\"\nshards = 1\n[output]\nflush_interval_ms = 50\n\
         [[listen]]\nname = \"collectd\"\nurl = \"udp://127.0.0.1:{cadent_port}\"\n\
         format = \"collectd\"\ntypes_db = [\"{TYPES_DB}\"]\n"
    );
    let mut names = Vec::new();
    for (c, s) in combos.iter().zip(&ours) {
        text += &format!(
            "[[cluster]]\nname = \"{}\"\nkind = \"forward\"\nformat = \"graphite\"\n\
             members = [\"udp://{}\"]\n{}",
            c.name,
            s.local_addr().unwrap(),
            cluster_keys(&c.options)
        );
        names.push(format!("{:?}", c.name));
    }
    text += &format!(
        "[[route]]\nmatch = {{ all = true }}\nfrom = [\"collectd\"]\nsend_to = [{}]\n",
        names.join(", ")
    );
    let cadent = crate::support::Cadent::start("collectd-graphite-serve", &text);

    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for round in &rounds(1795238337) {
        let mut enc = Encoder::new(EncoderConfig::default());
        let mut packets = Vec::new();
        for vl in round {
            enc.push(&vl.as_value_list(), &mut |p: &[u8]| {
                packets.push(p.to_vec())
            })
            .unwrap();
        }
        enc.flush(&mut |p: &[u8]| packets.push(p.to_vec()));
        for p in &packets {
            tx.send_to(p, format!("127.0.0.1:{collectd_port}")).unwrap();
            tx.send_to(p, format!("127.0.0.1:{cadent_port}")).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let want: Vec<usize> = vec![30; combos.len()];
    let got_theirs = gather(&theirs, &want);
    let got_ours = gather(&ours, &want);
    let log = daemon.log_text();
    drop(daemon);
    for ((c, t), o) in combos.iter().zip(&got_theirs).zip(&got_ours) {
        assert!(
            t.len() > 30,
            "{}: collectd wrote {} lines\n{log}",
            c.name,
            t.len()
        );
        let only = |a: &[Vec<u8>], b: &[Vec<u8>]| -> Vec<String> {
            a.iter()
                .filter(|l| !b.contains(l))
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect()
        };
        assert!(
            t == o,
            "{}: collectd {} lines, cadent {}\nonly collectd: {:?}\nonly cadent: {:?}\ncadent log:\n{}",
            c.name,
            t.len(),
            o.len(),
            only(t, o),
            only(o, t),
            cadent.log()
        );
    }
    // What collectd refuses at dispatch, cadent's listener refused and counted.
    let s = &cadent.stats()["listeners"]["collectd"]["collectd"];
    let refused = &s["rejected_value_lists_by_reason"];
    assert_eq!(refused["unknown_type"], 6, "{s}");
    assert_eq!(refused["value_count"], 3, "{s}");
}

//! Clusters at run time: a sink dies under load and comes back (any_of, failover, a ring
//! with `on_down = "reroute"`), members are added and removed over the admin API, and the
//! config is reloaded with SIGHUP, all while lines flow. Placement after each change is
//! checked against `cadent hash` and against where names went before.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{cadent_hash, http_get, http_request, wait_until, Cadent, Sink};

/// Every line of `phase` the sinks hold: name -> indexes of the sinks that got it.
fn placement(sinks: &[&Sink], phase: &str) -> HashMap<String, Vec<usize>> {
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, s) in sinks.iter().enumerate() {
        for (line, n) in s.lines() {
            let mut f = line.split(' ');
            let (Some(name), Some(p)) = (f.next(), f.next()) else {
                continue;
            };
            if p == phase {
                for _ in 0..n {
                    out.entry(name.to_string()).or_default().push(i);
                }
            }
        }
    }
    out
}

fn send_phase(addr: &str, names: &[String], phase: &str) {
    let mut body = String::new();
    for n in names {
        body.push_str(&format!("{n} {phase} 1700000000\n"));
    }
    crate::support::send_tcp(addr, body.as_bytes());
}

/// Waits until every name of `phase` arrived (bounded), then returns the placement.
fn delivered(sinks: &[&Sink], names: &[String], phase: &str) -> HashMap<String, Vec<usize>> {
    let arrived =
        |p: &HashMap<String, Vec<usize>>| names.iter().filter(|n| p.contains_key(*n)).count();
    let ok = wait_until(Duration::from_secs(20), || {
        arrived(&placement(sinks, phase)) == names.len()
    });
    let p = placement(sinks, phase);
    assert!(
        ok,
        "phase {phase}: {} of {} names arrived",
        arrived(&p),
        names.len()
    );
    p
}

/// The state `/servers` reports for destination `dest` (the first member that names it).
fn state_of(c: &Cadent, dest: &str) -> Option<String> {
    let body = http_get(&c.admin, "/servers")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    for cl in v["clusters"].as_array()? {
        for m in cl["members"].as_array()? {
            if m["destination"] == format!("tcp://{dest}") {
                return m["state"].as_str().map(str::to_string);
            }
        }
    }
    None
}

fn wait_state(c: &Cadent, dest: &str, want: &str) {
    assert!(
        wait_until(Duration::from_secs(15), || state_of(c, dest).as_deref()
            == Some(want)),
        "{dest} never became {want} (now {:?}):\n{}",
        state_of(c, dest),
        c.log()
    );
    // Shards apply a health change on their next tick (at most 100 ms later).
    thread::sleep(Duration::from_millis(400));
}

/// A steady background stream of distinct lines until stopped (bounded in time).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str, prefix: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2, addr) = (stop.clone(), sent.clone(), addr.to_string());
        let thread = thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            let started = Instant::now();
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let mut chunk = String::new();
                for _ in 0..100 {
                    chunk.push_str(&format!("{prefix}.{i} 0 1700000000\n"));
                    i += 1;
                }
                s.write_all(chunk.as_bytes()).unwrap();
                sent2.store(i, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut b = [0u8; 1];
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = std::io::Read::read(&mut s, &mut b);
        });
        Load {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Stops and returns how many lines were sent.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.sent.load(Ordering::Relaxed)
    }
}

/// Lines of the load stream `prefix` each sink got: line -> count, summed over sinks.
fn load_lines(sinks: &[&Sink], prefix: &str) -> HashMap<String, u32> {
    let mut all = HashMap::new();
    for s in sinks {
        for (l, n) in s.lines() {
            if l.starts_with(prefix) {
                *all.entry(l).or_insert(0) += n;
            }
        }
    }
    all
}

#[test]
fn a_dead_sink_moves_only_its_share_and_gets_it_back() {
    // s2 serves an any_of and a failover cluster, s3 a carbon_ch ring with reroute; both
    // die under load and come back.
    let s0 = Sink::start();
    let s1 = Sink::start();
    let mut s2 = Some(Sink::start());
    let mut s3 = Some(Sink::start());
    let a2 = s2.as_ref().unwrap().addr.clone();
    let a3 = s3.as_ref().unwrap().addr.clone();
    let listen = crate::support::free_port();
    let config = format!(
        r#"
        [server]
        admin_listen = "ADMIN"
        shards = 2
        stats_interval_ms = 100
        [output]
        flush_interval_ms = 20
        reconnect_backoff_min_ms = 20
        reconnect_backoff_max_ms = 200
        [health]
        probe_interval_ms = 100
        down_after_failures = 8
        [[listen]]
        name = "in"
        url = "tcp://127.0.0.1:{listen}"
        format = "graphite"
        [[cluster]]
        name = "any"
        kind = "any_of"
        members = ["{a0}", "{a1}", "{a2}"]
        [[cluster]]
        name = "fo"
        kind = "failover"
        members = ["{a2}", "{a0}", "{a1}"]
        [[cluster]]
        name = "ring"
        kind = "carbon_ch"
        on_down = "reroute"
        members = ["{a0}=a", "{a1}=b", "{a3}=c"]
        [[route]]
        match = {{ prefix = "any." }}
        send_to = ["any"]
        [[route]]
        match = {{ prefix = "fo." }}
        send_to = ["fo"]
        [[route]]
        match = {{ prefix = "ring." }}
        send_to = ["ring"]
        [[route]]
        match = {{ prefix = "load." }}
        send_to = ["any"]
    "#,
        a0 = s0.addr,
        a1 = s1.addr,
    );
    let c = Cadent::start("cluster-dead", &config);
    let addr = format!("127.0.0.1:{listen}");
    let side: Vec<String> = (0..3000)
        .map(|i| format!("any.host{}.cpu{}", i % 97, i))
        .chain((0..100).map(|i| format!("fo.m{i}")))
        .collect();
    let ring: Vec<String> = (0..3000)
        .map(|i| format!("ring.svc{}.lat{}", i % 31, i))
        .collect();
    let names: Vec<String> = side.iter().chain(&ring).cloned().collect();
    let load = Load::start(&addr, "load");

    send_phase(&addr, &names, "1");
    let before = {
        let (s2r, s3r) = (s2.as_ref().unwrap(), s3.as_ref().unwrap());
        delivered(&[&s0, &s1, s2r, s3r], &names, "1")
    };
    for (n, at) in &before {
        assert_eq!(at.len(), 1, "{n} delivered once: {at:?}");
        if n.starts_with("fo.") {
            assert_eq!(at, &[2], "failover: the first member while it is up");
        }
    }

    // Both die (their ports refuse connections from now on). Lines sent before they are
    // found down queue for them; then any_of and failover move s2's queue to their live
    // members, while the ring keeps s3's lines queued for its return.
    let dead2 = s2.take().unwrap().kill();
    let dead3 = s3.take().unwrap().kill();
    send_phase(&addr, &names, "5");
    wait_state(&c, &a2, "down");
    wait_state(&c, &a3, "down");
    let queued = delivered(&[&s0, &s1], &side, "5");
    for n in &side {
        assert_eq!(queued[n].len(), 1, "{n}: delivered once to a live sink");
    }
    let offloaded = c.stats()["destinations"][format!("tcp://{a2}")]["offloaded_lines"]
        .as_u64()
        .unwrap();
    assert!(
        offloaded > 0,
        "the dead sink's queue was moved: {offloaded}"
    );

    send_phase(&addr, &names, "2");
    let during = delivered(&[&s0, &s1], &names, "2");
    let mut moved = [0usize; 2];
    for n in &names {
        let (b, d) = (&before[n], &during[n]);
        assert_eq!(d.len(), 1, "{n} delivered once while a sink is down: {d:?}");
        if b[0] >= 2 {
            moved[d[0]] += 1;
            if n.starts_with("fo.") {
                assert_eq!(d, &[0], "failover: the next member in list order");
            }
        } else {
            assert_eq!(b, d, "{n} was not on a dead sink and must not move");
        }
    }
    assert!(
        moved[0] > 200 && moved[1] > 200,
        "the dead sinks' shares spread over both live ones: {moved:?}"
    );

    // They come back where they were: everything returns to its first placement, and the
    // ring's lines queued while its member was down arrive there, once.
    let s2 = Sink::start_at(&a2);
    let s3 = Sink::start_at(&a3);
    wait_state(&c, &a2, "up");
    wait_state(&c, &a3, "up");
    let all = [&s0, &s1, &s2, &s3];
    let late = delivered(&all, &ring, "5");
    for n in &ring {
        assert_eq!(late[n], before[n], "{n}: phase 5 at its owner, once");
    }
    send_phase(&addr, &names, "3");
    let after = delivered(&all, &names, "3");
    for n in &names {
        assert_eq!(before[n], after[n], "{n} returns to its owner");
    }
    // The load stream (any_of) kept flowing through the outage and lost nothing: what s2
    // had not acknowledged, and what its kernel acknowledged unread when it died, went
    // to the live members.
    let sent = load.finish();
    let arrived = || {
        let mut got = load_lines(&all, "load.");
        for (l, _) in dead2.iter().chain(&dead3) {
            if l.starts_with("load.") {
                got.entry(l.clone()).or_insert(1);
            }
        }
        got.len() as u64
    };
    let whole = wait_until(Duration::from_secs(20), || arrived() == sent);
    assert!(
        whole,
        "the load stream: {} of {sent} arrived: {}",
        arrived(),
        c.stats()["destinations"]
    );
    assert_eq!(c.stop(), 0);
}

#[test]
fn members_change_and_reload_under_load_lose_nothing() {
    let sinks: Vec<Sink> = (0..4).map(|_| Sink::start()).collect();
    let a: Vec<String> = sinks.iter().map(|s| s.addr.clone()).collect();
    let listen = crate::support::free_port();
    let config = |members: &[String], extra_route: &str| {
        let list: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
        format!(
            r#"
            [server]
            admin_listen = "ADMIN"
            shards = 2
            stats_interval_ms = 100
            [output]
            flush_interval_ms = 20
            [[listen]]
            name = "in"
            url = "tcp://127.0.0.1:{listen}"
            format = "graphite"
            [[cluster]]
            name = "ring"
            kind = "carbon_ch"
            replication = 1
            members = [{}]
            {extra_route}
            [[route]]
            match = {{ all = true }}
            send_to = ["ring"]
        "#,
            list.join(", ")
        )
    };
    let first = vec![
        format!("{}=a", a[0]),
        format!("{}=b", a[1]),
        format!("{}=c", a[2]),
    ];
    let c = Cadent::start("cluster-members", &config(&first, ""));
    let admin = c.admin.clone();
    let addr = format!("127.0.0.1:{listen}");
    let refs: Vec<&Sink> = sinks.iter().collect();
    let names: Vec<String> = (0..2000).map(|i| format!("m.h{}.x{i}", i % 13)).collect();
    // Where `cadent hash` says each name goes, as sink indexes, for a member list.
    let hash_dir = crate::support::temp_dir("cluster-members-hash");
    let expected = |members: &[String]| -> HashMap<String, Vec<usize>> {
        let path = hash_dir.join("hash.toml");
        std::fs::write(&path, config(members, "").replace("ADMIN", "127.0.0.1:1")).unwrap();
        cadent_hash(&path, "ring", &names)
            .into_iter()
            .map(|(n, dests)| {
                let idx = dests
                    .split(',')
                    .map(|d| {
                        let hostport = d.split('=').next().unwrap();
                        a.iter().position(|x| x == hostport).expect("a known sink")
                    })
                    .collect();
                (n, idx)
            })
            .collect()
    };
    let check = |phase: &str, members: &[String]| {
        send_phase(&addr, &names, phase);
        let got = delivered(&refs, &names, phase);
        let want = expected(members);
        let wrong: Vec<&String> = names.iter().filter(|n| got[*n] != want[*n]).collect();
        assert!(
            wrong.is_empty(),
            "phase {phase}: {} names placed unlike `cadent hash`, e.g. {:?}: {:?} vs {:?}",
            wrong.len(),
            wrong[0],
            got[wrong[0]],
            want[wrong[0]]
        );
    };
    let load = Load::start(&addr, "load");
    check("1", &first);

    // Refusals leave everything as it was.
    let (st, body) = http_request(&admin, "POST", "/cluster/nope/members", "server=1.2.3.4:5");
    assert_eq!(st, 404, "{body}");
    let (st, body) = http_request(&admin, "POST", "/cluster/ring/members", "server=bad");
    assert_eq!(st, 400, "{body}");
    let dup = format!("server={}&instance=a", a[3]);
    let (st, body) = http_request(&admin, "POST", "/cluster/ring/members", &dup);
    assert_eq!(st, 409, "same host and instance as a member: {body}");

    // Add a member.
    let add = format!("server={}&instance=d", a[3]);
    let (st, body) = http_request(&admin, "POST", "/cluster/ring/members", &add);
    assert_eq!(st, 200, "{body}");
    let second: Vec<String> = first
        .iter()
        .cloned()
        .chain([format!("{}=d", a[3])])
        .collect();
    thread::sleep(Duration::from_millis(300));
    check("2", &second);

    // Remove one: what is queued for it is still delivered to it.
    let (st, body) = http_request(
        &admin,
        "DELETE",
        &format!("/cluster/ring/members/{}", a[1]),
        "",
    );
    assert_eq!(st, 200, "{body}");
    let third: Vec<String> = second
        .iter()
        .filter(|m| !m.starts_with(&a[1]))
        .cloned()
        .collect();
    thread::sleep(Duration::from_millis(300));
    check("3", &third);

    // Reload a new file with SIGHUP: b comes back, c goes, and a drop rule appears.
    let fourth = vec![
        format!("{}=a", a[0]),
        format!("{}=b", a[1]),
        format!("{}=d", a[3]),
    ];
    // It also adds a listener (the one in use keeps running: the load stream is on it).
    let listen2 = crate::support::free_port();
    let drop_rule = format!(
        "[[listen]]\nname = \"in2\"\nurl = \"tcp://127.0.0.1:{listen2}\"\nformat = \"graphite\"\n\
         [[route]]\nmatch = {{ prefix = \"dropme.\" }}\naction = \"drop\""
    );
    let text = config(&fourth, &drop_rule).replace("ADMIN", &admin);
    std::fs::write(c.config_path(), text).unwrap();
    c.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || c
            .log()
            .contains("config reloaded")),
        "{}",
        c.log()
    );
    thread::sleep(Duration::from_millis(300));
    check("4", &fourth);
    let addr2 = format!("127.0.0.1:{listen2}");
    crate::support::send_tcp(&addr2, b"dropme.x 1 1700000000\n");
    assert!(
        wait_until(Duration::from_secs(5), || c.stats()["listeners"]["in2"]
            ["received_lines"]
            == 1),
        "the new listener runs: {}",
        c.stats()
    );

    // A broken file is refused and the running config kept.
    std::fs::write(c.config_path(), "[[cluster]]\nname = 1\n").unwrap();
    c.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || c
            .log()
            .contains("config not reloaded")),
        "{}",
        c.log()
    );
    check("5", &fourth);

    // Dropping the listener from the file stops it: its port refuses connections.
    let text = config(&fourth, "").replace("ADMIN", &admin);
    std::fs::write(c.config_path(), text).unwrap();
    c.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || c.log().contains("stopped 1")),
        "{}",
        c.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(&addr2)
            .is_err()),
        "listener in2 still accepts after its removal"
    );

    // Every line of the load stream arrived exactly once, through every change.
    let sent = load.finish();
    assert!(
        wait_until(Duration::from_secs(20), || load_lines(&refs, "load.").len()
            as u64
            >= sent),
        "load: {} of {sent} lines arrived",
        load_lines(&refs, "load.").len()
    );
    let got = load_lines(&refs, "load.");
    assert_eq!(got.len() as u64, sent, "every load line arrived");
    assert!(got.values().all(|&n| n == 1), "and only once");
    let stats = c.stats();
    assert_eq!(stats["dropped_by_rule"], 1, "{stats}");
    assert_eq!(c.stop(), 0);
}

#[test]
fn regex_listener_routes_whole_lines_by_their_key() {
    let sinks: Vec<Sink> = (0..3).map(|_| Sink::start()).collect();
    let listen = crate::support::free_port();
    let members: Vec<String> = sinks.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let config = format!(
        r#"
        [server]
        admin_listen = "ADMIN"
        shards = 2
        [output]
        flush_interval_ms = 20
        [[listen]]
        name = "logs"
        url = "tcp://127.0.0.1:{listen}"
        format = "regex"
        regex = '^(?P<Timestamp>\S+) host=(?P<Key>[a-z0-9.-]+) '
        time_layout = "2006-01-02T15:04:05Z07:00"
        [[cluster]]
        name = "by_host"
        kind = "fnv1a_ch"
        members = [{}]
        [[route]]
        match = {{ all = true }}
        send_to = ["by_host"]
    "#,
        members.join(", ")
    );
    let c = Cadent::start("cluster-regex", &config);
    let hosts: Vec<String> = (0..300).map(|i| format!("web{i}.dc{}", i % 3)).collect();
    let mut body = String::new();
    for (i, h) in hosts.iter().enumerate() {
        body.push_str(&format!(
            "2026-11-21T10:{:02}:00Z host={h} level=info msg=\"request {i}\"\n",
            i % 60
        ));
    }
    body.push_str("no timestamp host=x1 \n");
    body.push_str("2026-13-40T99:00:00Z host=x2 bad month\n");
    let addr = format!("127.0.0.1:{listen}");
    crate::support::send_tcp(&addr, body.as_bytes());
    let refs: Vec<&Sink> = sinks.iter().collect();
    assert!(wait_until(Duration::from_secs(10), || refs
        .iter()
        .map(|s| s.total())
        .sum::<u64>()
        >= hosts.len() as u64));
    let want = cadent_hash(&c.config_path(), "by_host", &hosts);
    for (i, s) in sinks.iter().enumerate() {
        for (line, n) in s.lines() {
            assert_eq!(n, 1, "{line}");
            let host = line.split(' ').nth(1).unwrap().trim_start_matches("host=");
            assert_eq!(
                want[host], sinks[i].addr,
                "{line}: the line goes whole to its key's member"
            );
        }
    }
    assert!(wait_until(Duration::from_secs(5), || c.stats()
        ["listeners"]["logs"]["parsed_lines"]
        == hosts.len()));
    let stats = c.stats();
    let rejected = &stats["listeners"]["logs"]["rejected_by_reason"];
    assert_eq!(rejected["no_match"], 1, "{stats}");
    assert_eq!(rejected["bad_timestamp"], 1, "{stats}");
    assert_eq!(c.stop(), 0);
}

//! Coco's job done by cadent, against real collectd 5.12 receivers (network `Listen` +
//! csv): collectd traffic in, two tiers out, every value list in every tier exactly once
//! at the member the ring names for its host; signed and encrypted in and out; a member
//! killed and restored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cadent::protocol::collectd::{write_identifier, Value};
use cadent::tools::blast::{CollectdTraffic, Scratch};

use crate::collectd_live::{spawn_collectd, Stoppable, COLLECTD, TYPES_DB};
use crate::support::{cadent_bin, cadent_hash, free_port, http_get, temp_dir, wait_until, Cadent};

/// A collectd 5.12 receiver on a fixed port and directory, so it can be killed and
/// started again as the same member.
struct Receiver {
    proc: Option<Stoppable>,
    dir: PathBuf,
    port: u16,
    level: &'static str,
}

impl Receiver {
    fn start(level: &'static str) -> Receiver {
        assert!(
            Path::new(COLLECTD).exists() && Path::new(TYPES_DB).exists(),
            "collectd 5.12 is missing: run scripts/install-peers.sh"
        );
        let mut r = Receiver {
            proc: None,
            dir: temp_dir(&format!("tier-{level}")),
            port: free_port(),
            level,
        };
        std::fs::write(r.dir.join("auth"), "cadent: secret\n").unwrap();
        r.restart();
        r
    }

    /// Starts (again) on the same port, appending to the same csv files.
    fn restart(&mut self) {
        let conf = format!(
            r#"Hostname "receiver"
FQDNLookup false
Interval 10
WriteThreads 1
BaseDir "{d}"
PIDFile "{d}/collectd.pid"
TypesDB "{TYPES_DB}"
LoadPlugin network
LoadPlugin csv
<Plugin network>
  <Listen "127.0.0.1" "{port}">
    SecurityLevel "{level}"
    AuthFile "{d}/auth"
  </Listen>
</Plugin>
<Plugin csv>
  DataDir "{d}/csv"
  StoreRates false
</Plugin>
"#,
            d = self.dir.display(),
            port = self.port,
            level = self.level,
        );
        self.proc = Some(spawn_collectd(&self.dir, &conf, "collectd.log"));
        let port = self.port;
        let up = wait_until(Duration::from_secs(10), || {
            std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()
        });
        assert!(up, "collectd did not listen:\n{}", self.log());
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collectd.log")).unwrap_or_default()
    }

    fn member(&self) -> String {
        format!("udp://127.0.0.1:{}", self.port)
    }

    /// Every csv row as `identifier time values...`, sorted, duplicates kept.
    fn rows(&self) -> Vec<String> {
        crate::collectd_live::csv_rows(&self.dir.join("csv"))
    }
}

/// The cadent config: a collectd listener and two tiers (coco, key = host, collectd out).
#[allow(clippy::too_many_arguments)]
fn config(
    dir: &Path,
    port: u16,
    level: &str,
    short: &[&Receiver],
    mid: &[&Receiver],
    out_security: [&str; 2],
    drop_regex: &str,
) -> String {
    std::fs::write(dir.join("passwd"), "cadent: secret\n").unwrap();
    let members = |rs: &[&Receiver]| {
        rs.iter()
            .map(|r| format!("{:?}", r.member()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let security = |level: &str| {
        if level == "none" {
            String::new()
        } else {
            format!("security_level = \"{level}\"\nusername = \"cadent\"\npassword = \"secret\"")
        }
    };
    format!(
        r#"
[server]
admin_listen = "ADMIN"
shards = 2
[health]
probe_interval_ms = 200
down_after_failures = 2
[output]
flush_interval_ms = 50
[[listen]]
name = "collectd"
url = "udp://127.0.0.1:{port}"
format = "collectd"
security_level = "{level}"
auth_file = "{passwd}"
types_db = ["{TYPES_DB}"]
[[cluster]]
name = "shortterm"
kind = "coco"
key = "host"
format = "collectd"
members = [{short}]
{short_sec}
[[cluster]]
name = "midterm"
kind = "coco"
format = "collectd"
members = [{mid}]
{mid_sec}
# cadent's own counters (graphite lines) stay out of the collectd tiers.
[[route]]
match = {{ regex = "{drop_regex}" }}
from = ["collectd"]
action = "drop"
[[route]]
match = {{ all = true }}
from = ["collectd"]
send_to = ["shortterm", "midterm"]
"#,
        passwd = dir.join("passwd").display(),
        short = members(short),
        mid = members(mid),
        short_sec = security(out_security[0]),
        mid_sec = security(out_security[1]),
    )
}

/// The collectd listener's counters from `/stats`.
fn collectd_stats(c: &Cadent) -> serde_json::Value {
    c.stats()["listeners"]["collectd"]["collectd"].clone()
}

/// Checks one tier: the rows of its members together are `want` (sorted, duplicates
/// kept), and every host's rows are at the one member `cadent hash` names for it.
fn check_tier(cadent: &Cadent, tier: &str, members: &[&Receiver], want: &[String]) {
    let mut all = Vec::new();
    let mut host_member: BTreeMap<String, String> = BTreeMap::new();
    for r in members {
        for row in r.rows() {
            let host = row.split('/').next().unwrap().to_string();
            let prior = host_member.insert(host.clone(), r.member());
            assert!(
                prior.is_none() || prior.as_deref() == Some(r.member().as_str()),
                "{tier}: {host} at two members"
            );
            all.push(row);
        }
    }
    all.sort();
    assert_eq!(all.len(), want.len(), "{tier}: row count");
    assert_eq!(all, want, "{tier}: rows");
    let hosts: Vec<String> = host_member.keys().cloned().collect();
    let placed = cadent_hash(&cadent.config_path(), tier, &hosts);
    for (host, member) in &host_member {
        let at = member.trim_start_matches("udp://");
        assert_eq!(placed[host], at, "{tier}: {host} where the ring puts it");
    }
}

/// Waits (bounded) until the tier's members together hold `n` rows.
fn wait_rows(members: &[&Receiver], n: usize) {
    wait_until(Duration::from_secs(20), || {
        members.iter().map(|r| r.rows().len()).sum::<usize>() >= n
    });
}

/// collectd-tg's traffic through two tiers of real receivers: every value list cadent
/// decoded is in every tier once, at the member the ring names for its host, and the
/// drop route takes what it matches.
#[test]
fn collectd_tg_through_two_tiers_of_collectd_receivers() {
    let rs: Vec<Receiver> = (0..4).map(|_| Receiver::start("None")).collect();
    let (short, mid) = ([&rs[0], &rs[1]], [&rs[2], &rs[3]]);
    let dir = temp_dir("tiers-tg");
    let port = free_port();
    let text = config(
        &dir,
        port,
        "none",
        &short,
        &mid,
        ["none", "none"],
        "/plugin007/",
    );
    let cadent = Cadent::start("tiers-tg", &text);
    // 40 hosts x 8 plugins, 2000 value lists each second, for about 3 seconds.
    let mut tg = Stoppable(
        Command::new("collectd-tg")
            .args(["-n", "2000", "-H", "40", "-p", "8", "-i", "1"])
            .args(["-d", "127.0.0.1", "-D", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("collectd-tg (collectd-utils)"),
    );
    let sent = wait_until(Duration::from_secs(15), || {
        collectd_stats(&cadent)["value_lists"].as_u64().unwrap_or(0) >= 4000
    });
    tg.stop();
    assert!(
        sent,
        "cadent decoded too little: {}",
        collectd_stats(&cadent)
    );
    // Settled: the counters stop moving.
    let mut last = serde_json::Value::Null;
    wait_until(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = collectd_stats(&cadent);
        let same = now == last;
        last = now;
        same
    });
    let s = collectd_stats(&cadent);
    let (decoded, routed, dropped) = (
        s["value_lists"].as_u64().unwrap(),
        s["routed"].as_u64().unwrap(),
        s["dropped_by_rule"].as_u64().unwrap(),
    );
    assert_eq!(decoded, routed + dropped, "{s}");
    assert!(dropped > 0 && routed > 0, "{s}");
    assert_eq!(s["rejected_by_reason"]["bad_values"], 0, "{s}");
    wait_rows(&short, routed as usize);
    wait_rows(&mid, routed as usize);
    let mut want: Vec<String> = short.iter().flat_map(|r| r.rows()).collect();
    want.sort();
    assert!(want.iter().all(|r| !r.contains("/plugin007/")));
    check_tier(&cadent, "shortterm", &short, &want);
    check_tier(&cadent, "midterm", &mid, &want);
    assert_eq!(
        want.len() as u64,
        routed,
        "every routed value list in each tier once"
    );
    // Tiers spread hosts: both members of each got some.
    for r in short.iter().chain(&mid) {
        assert!(!r.rows().is_empty(), "{} got nothing", r.member());
    }
    let stats = cadent.stats();
    for r in short.iter().chain(&mid) {
        let d = &stats["destinations"][r.member()];
        assert_eq!(d["dropped_unencodable"], 0, "{d}");
        assert_eq!(d["write_errors"], 0, "{d}");
        // Full packets, never one per value list.
        let (vls, writes) = (
            d["sent_lines"].as_u64().unwrap(),
            d["writes"].as_u64().unwrap(),
        );
        assert!(
            writes > 0 && vls > 10 * writes,
            "{} value lists in {writes} packets",
            vls
        );
    }
}

const NAMES: u64 = 400;
const HOSTS: u64 = 24;
const PLUGINS: u64 = 6;

/// The csv rows one `cadent blast` run should make, sorted.
fn expected(seed: u64, timestamp: u64, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let t = CollectdTraffic::new(NAMES, HOSTS, PLUGINS, seed, timestamp);
    let mut scratch = Scratch::default();
    let mut rows: Vec<String> = (0..NAMES)
        .filter_map(|i| {
            let vl = t.value_list(i, &mut scratch);
            let mut id = Vec::new();
            write_identifier(&mut id, vl.identity());
            let mut row = String::from_utf8(id).unwrap();
            if !keep(&row) {
                return None;
            }
            row += &format!(" {:.3}", vl.time.as_secs_f64());
            for v in vl.values.iter() {
                row += &match v {
                    Value::Gauge(g) => format!(" {g:.6}"),
                    Value::Counter(c) | Value::Absolute(c) => format!(" {c}"),
                    Value::Derive(d) => format!(" {d}"),
                };
            }
            Some(row)
        })
        .collect();
    rows.sort();
    rows
}

/// `cadent blast --format collectd` of NAMES value lists.
fn blast(port: u16, seed: u64, timestamp: u64, security: &[&str]) {
    let out = Command::new(cadent_bin())
        .args(["blast", "--format", "collectd", "--to"])
        .arg(format!("udp://127.0.0.1:{port}"))
        .args(["--count", &NAMES.to_string(), "--names", &NAMES.to_string()])
        .args([
            "--hosts",
            &HOSTS.to_string(),
            "--plugins",
            &PLUGINS.to_string(),
        ])
        .args([
            "--seed",
            &seed.to_string(),
            "--timestamp",
            &timestamp.to_string(),
        ])
        .args(security)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The state `/servers` gives a destination.
fn state(c: &Cadent, destination: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&http_get(&c.admin, "/servers").unwrap()).unwrap();
    for cluster in v["clusters"].as_array().unwrap() {
        for m in cluster["members"].as_array().unwrap() {
            if m["destination"] == destination {
                return m["state"].as_str().unwrap().to_string();
            }
        }
    }
    panic!("{destination} not in /servers: {v}")
}

const ENCRYPT: [&str; 6] = [
    "--security-level",
    "encrypt",
    "--user",
    "cadent",
    "--password",
    "secret",
];

/// Encrypted in (a plain packet is refused), signed to one tier and encrypted to the
/// other; then a member is killed: health takes it down, its hosts' value lists wait in
/// its queue, and when it is back they land, each once.
#[test]
fn collectd_signed_and_encrypted_tiers_and_a_member_killed_and_restored() {
    let mut rs: Vec<Receiver> = ["Sign", "Sign", "Encrypt", "Encrypt"]
        .into_iter()
        .map(Receiver::start)
        .collect();
    let dir = temp_dir("tiers-sec");
    let port = free_port();
    let text = {
        let (short, mid) = ([&rs[0], &rs[1]], [&rs[2], &rs[3]]);
        config(
            &dir,
            port,
            "encrypt",
            &short,
            &mid,
            ["sign", "encrypt"],
            "/nothing-matches/",
        )
    };
    let cadent = Cadent::start("tiers-sec", &text);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 600;
    blast(port, 7, t, &[]);
    blast(port, 8, t + 10, &ENCRYPT);
    let want1 = expected(8, t + 10, |_| true);
    {
        let (short, mid) = ([&rs[0], &rs[1]], [&rs[2], &rs[3]]);
        wait_rows(&short, want1.len());
        wait_rows(&mid, want1.len());
        check_tier(&cadent, "shortterm", &short, &want1);
        check_tier(&cadent, "midterm", &mid, &want1);
    }
    // Counters are published every stats_interval_ms.
    // (Each shard publishes its counters every stats_interval_ms.)
    wait_until(Duration::from_secs(5), || {
        let s = collectd_stats(&cadent);
        s["value_lists"] == NAMES && s["rejected_by_reason"]["unencrypted_ignored"] != 0
    });
    let s = collectd_stats(&cadent);
    assert!(
        s["rejected_by_reason"]["unencrypted_ignored"]
            .as_u64()
            .unwrap()
            > 0,
        "{s}"
    );
    assert_eq!(s["value_lists"], NAMES, "{s}");

    // Kill shortterm's first member; health takes it down.
    let victim = rs[0].member();
    rs[0].kill();
    let down = wait_until(Duration::from_secs(10), || {
        state(&cadent, &victim) == "down"
    });
    assert!(
        down,
        "{victim} never went down: {}",
        state(&cadent, &victim)
    );
    // Every shard's writer for it holds (the shards hear of it on their next tick).
    let shards: serde_json::Value =
        serde_json::from_str(&http_get(&cadent.admin, "/ops/status").unwrap()).unwrap();
    let held = wait_until(Duration::from_secs(5), || {
        cadent.stats()["destinations"][&victim]["held"] == shards["shards"]
    });
    assert!(held, "{}", cadent.stats()["destinations"][&victim]);
    blast(port, 9, t + 20, &ENCRYPT);
    let want2 = expected(9, t + 20, |_| true);
    let mut both = want1.clone();
    both.extend(want2.iter().cloned());
    both.sort();
    // The live members of both tiers get theirs at once; the victim's wait.
    {
        let mid = [&rs[2], &rs[3]];
        wait_rows(&mid, both.len());
        check_tier(&cadent, "midterm", &mid, &both);
    }
    let host_of = |r: &String| r.split('/').next().unwrap().to_string();
    let hosts: Vec<String> = both
        .iter()
        .map(host_of)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let placed = cadent_hash(&cadent.config_path(), "shortterm", &hosts);
    let at_victim = |h: &String| placed[h] == victim.trim_start_matches("udp://");
    assert!(
        hosts.iter().any(at_victim) && !hosts.iter().all(at_victim),
        "{placed:?}"
    );
    let mut want_other: Vec<String> = both
        .iter()
        .filter(|r| !at_victim(&host_of(r)))
        .cloned()
        .collect();
    want_other.sort();
    wait_until(Duration::from_secs(10), || {
        rs[1].rows().len() >= want_other.len()
    });
    assert_eq!(rs[1].rows(), want_other);
    let queued = || cadent.stats()["destinations"][&victim]["queue_bytes"].clone();
    wait_until(Duration::from_secs(5), || queued() != 0);
    assert_ne!(queued(), 0, "the victim's hosts wait in its queue");

    // Back: health brings it up, and what waited lands once.
    rs[0].restart();
    let up = wait_until(Duration::from_secs(10), || state(&cadent, &victim) == "up");
    assert!(up, "{victim} never came back: {}", state(&cadent, &victim));
    let short = [&rs[0], &rs[1]];
    wait_rows(&short, both.len());
    check_tier(&cadent, "shortterm", &short, &both);
    let d = &cadent.stats()["destinations"][&victim];
    assert_eq!(d["dropped_lines_queue_full"], 0, "{d}");
    assert_eq!(d["dropped_lines_write_failed"], 0, "{d}");
}

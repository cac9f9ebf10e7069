//! carbon_ch placement against carbon-c-relay 3.7.3, the peer we must agree with.
//!
//! Two comparisons over the same names and clusters:
//! - the library ring (`CarbonRing`) in-process, so the hash is pinned even
//!   without the CLI;
//! - the `cadent hash` command end to end, config parsing included.
//!
//! The reference answers come from `carbon-c-relay -t -f CONF`, which reads
//! names on stdin and prints, per name:
//!
//! ```text
//! match
//!     * -> NAME
//!     carbon_ch(c)
//!         hash_pos(54437)          (only with -d)
//!         127.0.0.1:2101           (host:port, no instance; IPv6 as [::1]:2101)
//!         127.0.0.1:2103
//!     stop
//! ```
//!
//! It prints the chosen servers as host:port only; c-relay keys servers by
//! host:port (a second instance on one host:port is a config error), so that
//! is enough to name the member. With `-d` it also prints the ring after the
//! cluster, as `POS@host:port[=instance]` cells; we read it to find position
//! ties and aim names at them.
//!
//! Test mode differs from the running relay in two ways that matter here: it
//! does not cleanse names (so the generated names use only bytes cleansing
//! keeps), and it hashes the whole line up to the first space, tags included,
//! whereas the relay hashes only the part before `;` (checked on loopback:
//! 500 of 500 tagged names landed where their untagged name did). So c-relay
//! is given the names cut at `;`, the way the relay hashes them, and cadent the
//! full names.

use crate::support::{member, ring_members, Member};
use cadent::route::ring::CarbonRing;
use cadent::tools::SplitMix64;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One cluster to compare, as `host:port[=instance]` specs in config order.
struct Scenario {
    label: &'static str,
    members: &'static [&'static str],
    replications: &'static [usize],
}

/// Scenarios both comparisons run.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        label: "instances",
        members: &[
            "127.0.0.1:2101=a",
            "127.0.0.1:2102=b",
            "127.0.0.1:2103=c",
            "127.0.0.1:2104=d",
        ],
        replications: &[1, 2, 3],
    },
    // Numeric-looking instances whose positions collide: ("3", "10") at 47884
    // and ("4", "12") at 56210. carbon_ch orders ties by strcmp, so "10" and
    // "12" win although a numeric order (as jump_fnv1a_ch uses) would not.
    Scenario {
        label: "numeric-instances",
        members: &[
            "127.0.0.1:2101=3",
            "127.0.0.1:2102=10",
            "127.0.0.1:2103=4",
            "127.0.0.1:2104=12",
        ],
        replications: &[1, 2, 3],
    },
    Scenario {
        label: "no-instances",
        members: &[
            "10.0.0.1:2003",
            "10.0.0.2:2003",
            "10.0.0.3:2003",
            "10.0.0.4:2003",
        ],
        replications: &[1, 2, 3],
    },
    Scenario {
        label: "mixed",
        members: &[
            "10.0.0.1:2003",
            "10.0.0.2:2003=x",
            "127.0.0.1:2101=a",
            "127.0.0.1:2102=b",
            "10.0.0.5:2004",
        ],
        replications: &[1, 2, 3],
    },
    // Members listed against c-relay's tie order, each pair sharing a position:
    // e/a at 16828 (a wins: smaller instance), 10.0.0.5 without and with
    // instance "10" at 19939 (the instance wins), 10.0.0.3/10.0.0.1 at 7798
    // (smaller host wins), s/l/d at 9147 (d wins).
    Scenario {
        label: "ties",
        members: &[
            "127.0.0.1:2105=e",
            "127.0.0.1:2101=a",
            "10.0.0.5:2003",
            "10.0.0.5:2004=10",
            "10.0.0.3:2003",
            "10.0.0.1:2003",
            "127.0.0.1:2112=s",
            "127.0.0.1:2108=l",
            "127.0.0.1:2104=d",
        ],
        replications: &[1, 2, 3],
    },
];

/// Scenarios only the library comparison runs: their config is outside what
/// the cadent CLI test should depend on.
const LIBRARY_ONLY_SCENARIOS: &[Scenario] = &[
    // Host names are hashed as written, never resolved.
    Scenario {
        label: "host-names",
        members: &["localhost:2101=a", "127.0.0.1:2102=a", "localhost:2103"],
        replications: &[1, 2, 3],
    },
    // IPv6 hosts are hashed without brackets: ('::1', 'a'):0.
    Scenario {
        label: "ipv6",
        members: &[
            "[::1]:2101=a",
            "[::1]:2102=b",
            "[fe80::1]:2003",
            "10.0.0.1:2003",
        ],
        replications: &[1, 2, 3],
    },
    // Same host and instance on two ports: every position ties, the first
    // listed takes them all and the second never receives anything. With
    // replication 3 c-relay would spin forever (two reachable servers).
    Scenario {
        label: "duplicate-host-instance",
        members: &["127.0.0.1:2102=a", "127.0.0.1:2101=a", "127.0.0.1:2103=b"],
        replications: &[1, 2],
    },
];

/// Base names generated per run, before the ones aimed at ties.
const NAMES_COUNT: usize = 12_000;

/// Tied positions per scenario that get a name aimed exactly at them; each
/// costs about 65536 hashes to find, so the duplicate-member ring (every
/// position tied) is sampled rather than covered.
const TIES_AIMED_MAX: usize = 12;

/// How long one peer run may take before the test gives up on it.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);

fn members(scenario: &Scenario) -> Vec<Member> {
    scenario.members.iter().map(|s| member(s)).collect()
}

/// c-relay's `-t` answers: per name, the chosen members' specs in replica order.
type Routes = Vec<Vec<String>>;

/// Deterministic metric names of varied shapes; about 1 in 20 carries tags.
/// Only bytes c-relay's cleansing keeps, no empty segments and no spaces, so
/// test mode (uncleansed) and the relay hash the same bytes.
fn names() -> Vec<String> {
    const WORDS: &[&str] = &[
        "servers",
        "web",
        "db",
        "cpu",
        "memory",
        "free",
        "used",
        "load",
        "disk",
        "sda1",
        "requests",
        "latency",
        "p99",
        "count",
        "rate",
        "stats",
        "timers",
        "gauges",
        "collectd",
        "interface",
        "eth0",
        "if_octets",
        "rx",
        "tx",
        "api",
        "checkout",
        "carbon",
        "agents",
        "prod",
        "eu-west-1",
        "us_east",
        "app:blue",
        "queue#2",
    ];
    let mut rng = SplitMix64(0x6361_6465_6e74_2121);
    crate::support::distinct_names(NAMES_COUNT, |name| {
        match rng.below(7) {
            0 => {
                let _ = write!(
                    name,
                    "servers.{}{}.{}.{}",
                    WORDS[rng.below(WORDS.len())],
                    rng.below(500),
                    WORDS[rng.below(WORDS.len())],
                    WORDS[rng.below(WORDS.len())]
                );
            }
            1 => {
                let _ = write!(
                    name,
                    "collectd.host-{}.cpu-{}.percent-{}",
                    rng.below(2000),
                    rng.below(64),
                    WORDS[rng.below(WORDS.len())]
                );
            }
            2 => {
                for i in 0..1 + rng.below(5) {
                    if i > 0 {
                        name.push('.');
                    }
                    let _ = write!(name, "{}", rng.below(100_000));
                }
            }
            3 => crate::support::push_random_segments(name, &mut rng, 10),
            4 => {
                let _ = write!(
                    name,
                    "stats.timers.{}.{}.endpoint_{}.p{}",
                    WORDS[rng.below(WORDS.len())],
                    WORDS[rng.below(WORDS.len())],
                    rng.below(300),
                    50 + rng.below(50)
                );
            }
            5 => {
                let _ = write!(name, "m{}", rng.below(100_000));
            }
            _ => crate::support::push_words(name, &mut rng, WORDS),
        }
        if rng.below(20) == 0 {
            let _ = write!(name, ";dc=dc{}", rng.below(5));
            if rng.below(2) == 0 {
                let _ = write!(name, ";env={}", WORDS[rng.below(WORDS.len())]);
            }
        }
    })
}

/// Names aimed exactly at tied ring positions, at most `TIES_AIMED_MAX` per
/// scenario. On an exact hit c-relay's lookup may stop anywhere inside a tie,
/// so these pin how a whole tie is owned, not only its first entry. One pass
/// serves every scenario: each try hashes one candidate name.
fn names_on_ties(tied: &[u16]) -> Vec<String> {
    crate::support::names_at_positions(tied.iter().copied(), "tie.k", CarbonRing::position)
}

/// Ring positions c-relay holds more than once for `scenario`, at most
/// `TIES_AIMED_MAX` of them, spread over the ring.
fn tied_positions(scenario: &Scenario, tag: &str) -> Vec<u16> {
    let dir = workdir(&format!("{tag}-ring-{}", scenario.label));
    let conf = dir.join("relay.conf");
    fs::write(&conf, crelay_conf(scenario, 1)).expect("write c-relay conf");
    let mut count: BTreeMap<u16, usize> = BTreeMap::new();
    for pos in crelay_ring_positions(&conf, &dir) {
        *count.entry(pos).or_default() += 1;
    }
    let tied: Vec<u16> = count
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(p, _)| p)
        .collect();
    let step = tied.len().div_ceil(TIES_AIMED_MAX).max(1);
    let _ = fs::remove_dir_all(&dir);
    tied.into_iter().step_by(step).collect()
}

/// The generated names plus names aimed at the ties of every scenario in
/// `scenarios`, so that every scenario is checked on every name.
fn names_for(scenarios: &[&Scenario], tag: &str) -> Vec<String> {
    let mut tied = Vec::new();
    for scenario in scenarios {
        let positions = tied_positions(scenario, tag);
        eprintln!(
            "{}: aiming names at tied positions {positions:?}",
            scenario.label
        );
        if scenario.label == "ties" {
            // The deliberate collisions; chance ones may add more.
            for pos in [7798, 9147, 16828, 19939] {
                assert!(positions.contains(&pos), "ties scenario lacks tie {pos}");
            }
        }
        tied.extend(positions);
    }
    tied.sort_unstable();
    tied.dedup();
    let mut all = names();
    all.extend(names_on_ties(&tied));
    all
}

/// The part of a name c-relay's relay hashes: up to the first `;`.
fn hash_key(name: &str) -> &str {
    name.split_once(';').map_or(name, |(key, _)| key)
}

fn crelay_conf(scenario: &Scenario, replication: usize) -> String {
    crate::support::crelay_cluster_conf("carbon_ch", scenario.members, replication)
}

/// Positions of c-relay's ring for `conf`, read from its `-d` print.
fn crelay_ring_positions(conf: &Path, dir: &Path) -> Vec<u16> {
    crate::support::crelay_ring_cells(conf, dir, PEER_TIMEOUT)
        .into_iter()
        .map(|(pos, _)| pos)
        .collect()
}

/// c-relay's answers for `names` (already cut at `;`) under `conf`.
fn crelay_routes(conf: &Path, names: &[&str], members: &[Member], dir: &Path) -> Routes {
    let by_addr: BTreeMap<&str, &str> = members.iter().map(|m| (m.addr, m.spec)).collect();
    crate::support::crelay_test_routes(conf, names, dir, "carbon_ch(c)", PEER_TIMEOUT)
        .into_iter()
        .map(|servers| {
            servers
                .iter()
                .map(|server| {
                    let spec = by_addr
                        .get(server.as_str())
                        .unwrap_or_else(|| panic!("c-relay chose unknown server {server:?}"));
                    spec.to_string()
                })
                .collect()
        })
        .collect()
}

/// Compares answers name by name; returns how many differ, printing the first 20.
fn compare(label: &str, names: &[String], expected: &Routes, got: &[Vec<String>]) -> usize {
    assert_eq!(expected.len(), got.len(), "{label}: answer counts differ");
    let mut differ = 0;
    for ((name, want), have) in names.iter().zip(expected).zip(got) {
        if want != have {
            if differ < 20 {
                eprintln!(
                    "{label}: {name:?} (pos {}): c-relay {want:?}, cadent {have:?}",
                    CarbonRing::position(hash_key(name).as_bytes())
                );
            }
            differ += 1;
        }
    }
    differ
}

/// Everything one scenario needs from c-relay: a scratch directory with its
/// configs and, per replication, the answers for `names`.
struct Reference {
    dir: PathBuf,
    answers: Vec<(usize, Routes)>,
}

fn reference(scenario: &Scenario, names: &[String], tag: &str) -> Reference {
    let dir = workdir(&format!("{tag}-{}", scenario.label));
    let members = members(scenario);
    let keys: Vec<&str> = names.iter().map(|n| hash_key(n)).collect();
    let mut answers = Vec::new();
    for &replication in scenario.replications {
        let conf = dir.join(format!("relay-r{replication}.conf"));
        fs::write(&conf, crelay_conf(scenario, replication)).expect("write c-relay conf");
        let routes = crelay_routes(&conf, &keys, &members, &dir);
        answers.push((replication, routes));
    }
    Reference { dir, answers }
}

#[test]
fn carbon_ch_library_matches_crelay() {
    let scenarios: Vec<&Scenario> = SCENARIOS.iter().chain(LIBRARY_ONLY_SCENARIOS).collect();
    let names = names_for(&scenarios, "lib");
    let mut compared = 0;
    let mut differ = 0;
    let mut out = Vec::with_capacity(4);
    for scenario in scenarios {
        let reference = reference(scenario, &names, "lib");
        let members = members(scenario);
        let ring = CarbonRing::new(&ring_members(&members));
        for (replication, expected) in &reference.answers {
            let got: Vec<Vec<String>> = names
                .iter()
                .map(|name| {
                    ring.route_into(hash_key(name).as_bytes(), *replication, &mut out);
                    out.iter().map(|&i| members[i].spec.to_string()).collect()
                })
                .collect();
            let label = format!("{} r{replication}", scenario.label);
            differ += compare(&label, &names, expected, &got);
            compared += names.len();
        }
        let _ = fs::remove_dir_all(&reference.dir);
    }
    assert_eq!(
        differ, 0,
        "{differ} of {compared} routes differ from c-relay"
    );
    eprintln!(
        "library: {} names, {compared} routes compared, 0 differ",
        names.len()
    );
}

#[test]
fn cadent_hash_cli_matches_crelay() {
    let scenarios: Vec<&Scenario> = SCENARIOS.iter().collect();
    let names = names_for(&scenarios, "cli");
    let mut compared = 0;
    let mut differ = 0;
    for scenario in scenarios {
        let reference = reference(scenario, &names, "cli");
        let dir = &reference.dir;
        let stdin = dir.join("cadent.in");
        fs::write(&stdin, crate::support::lines(&names)).expect("write cadent stdin");
        for (replication, expected) in &reference.answers {
            let config = dir.join(format!("cadent-r{replication}.toml"));
            fs::write(&config, cadent_config(scenario, *replication)).expect("write cadent config");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_cadent"));
            cmd.args(["hash", "--config"])
                .arg(&config)
                .args(["--cluster", "c"]);
            let stdout = run(cmd, &stdin, dir, &format!("cadent-r{replication}"));
            let got = parse_cadent_hash(&stdout, &names);
            let label = format!("cli {} r{replication}", scenario.label);
            differ += compare(&label, &names, expected, &got);
            compared += names.len();
        }
        let _ = fs::remove_dir_all(dir);
    }
    assert_eq!(
        differ, 0,
        "{differ} of {compared} routes differ from c-relay"
    );
    eprintln!(
        "cli: {} names, {compared} routes compared, 0 differ",
        names.len()
    );
}

fn cadent_config(scenario: &Scenario, replication: usize) -> String {
    let members: Vec<String> = scenario
        .members
        .iter()
        .map(|m| format!("\"tcp://{m}\""))
        .collect();
    format!(
        r#"[[listen]]
name = "in"
url = "tcp://127.0.0.1:2003"
format = "graphite"

[[cluster]]
name = "c"
kind = "carbon_ch"
replication = {replication}
members = [{}]

[[route]]
match = {{ all = true }}
send_to = ["c"]
"#,
        members.join(", ")
    )
}

/// Reads `NAME<TAB>member[,member...]` lines, one per input name, in order.
fn parse_cadent_hash(stdout: &str, names: &[String]) -> Vec<Vec<String>> {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        names.len(),
        "cadent hash answered {} lines for {} names",
        lines.len(),
        names.len()
    );
    lines
        .iter()
        .zip(names)
        .map(|(line, name)| {
            let (echoed, chosen) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("cadent hash line without a tab: {line:?}"));
            assert_eq!(echoed, name, "cadent hash answers out of order");
            chosen.split(',').map(str::to_string).collect()
        })
        .collect()
}

/// Names that carbon-c-relay rewrites before it hashes them (doubled, leading and
/// trailing dots, bytes outside `[A-Za-z0-9._:#-]`, UTF-8, tags), relayed live by both
/// relays through the same carbon_ch ring: every line must reach the same member with
/// the same text. `-t` mode cannot show this: it hashes names as typed. A fifth of the
/// lines carry values such as `inf`, `nan` and `1_000`, which both forward unchanged.
#[test]
fn running_relays_cleanse_and_place_dirty_names_alike() {
    use crate::support::{free_port, Cadent, Sink};
    const LINES: usize = 4000;
    let pieces = [
        "a",
        "b",
        "cpu",
        "7",
        "42",
        ".",
        "..",
        "...",
        "(",
        ")",
        "*",
        "?",
        "/",
        "=",
        ",",
        "!",
        "\u{e9}",
        "_",
        ":",
        "#",
        "-",
        "[x]",
        "{y}",
        "+",
        "$",
        "%",
        "@",
        "\u{1}",
        "\u{7f}",
        "\u{0}",
        "\u{1b}[0m",
    ];
    // Control bytes stay as they are in the tags, except NUL (`_`).
    let tags = [
        "",
        ";t=1",
        ";t=..x",
        ";.t=(1)",
        ";a=b;c=d.",
        ";t=x.",
        ";t=\u{1}x",
        ";t=\u{0}",
    ];
    let mut rng = SplitMix64(0x636c_6561_6e73_6521);
    let names: Vec<String> = (0..LINES)
        .map(|i| {
            let mut n = format!("m{}", i % 97);
            for _ in 0..1 + rng.below(6) {
                n.push_str(pieces[rng.below(pieces.len())]);
            }
            n.push_str(tags[rng.below(tags.len())]);
            n
        })
        .collect();
    // Some values only python's float() reads as numbers: carbon-c-relay forwards them
    // as they came, and so must cadent (the timestamp keeps each line unique).
    let odd_values = ["inf", "-Infinity", "nan", "NaN", "1_000", "1e999", "+.5"];
    let data: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| match i % 5 {
            0 => format!(
                "{n} {} {}\n",
                odd_values[i / 5 % odd_values.len()],
                1_700_000_000 + i
            ),
            _ => format!("{n} {i} 1700000000\n"),
        })
        .collect();
    let instances = ["a", "b", "c", "d"];

    // carbon-c-relay, live.
    let crelay_sinks: Vec<Sink> = (0..4).map(|_| Sink::start()).collect();
    let crelay_port = free_port();
    let dir = workdir("dirty");
    let conf = dir.join("relay.conf");
    std::fs::write(
        &conf,
        format!(
            "{}match * send to ring stop;\n",
            crelay_ring_head(crelay_port, &crelay_sinks, &instances)
        ),
    )
    .unwrap();
    relay_through_crelay(
        &conf,
        crelay_port,
        data.as_bytes(),
        &crelay_sinks,
        LINES as u64,
    );

    // cadent, same ring (the port is not hashed), its own sinks.
    let cadent_sinks: Vec<Sink> = (0..4).map(|_| Sink::start()).collect();
    let in_port = free_port();
    let cadent = Cadent::start(
        "dirty",
        &format!(
            "{}[[route]]\nmatch = {{ all = true }}\nsend_to = [\"ring\"]\n",
            cadent_ring_head(in_port, &cadent_sinks, &instances)
        ),
    );
    relay_through_cadent(
        &cadent,
        in_port,
        data.as_bytes(),
        &cadent_sinks,
        LINES as u64,
    );

    let want = placed(&crelay_sinks);
    let got = placed(&cadent_sinks);
    let mut differ: Vec<String> = Vec::new();
    for (line, k) in &want {
        match got.get(line) {
            Some(g) if g == k => {}
            Some(g) => differ.push(format!("{line:?}: c-relay member {k}, cadent member {g}")),
            None => differ.push(format!(
                "{line:?}: c-relay sent it, cadent sent no such line"
            )),
        }
    }
    assert_eq!(want.len(), LINES);
    assert!(
        differ.is_empty(),
        "{} of {LINES} lines differ; first ones:\n{}",
        differ.len(),
        differ
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn running_relays_match_and_rewrite_the_path_before_the_tags_alike() {
    // carbon-c-relay's dispatcher ends the path at the first `;`: its regex matches and
    // rewrites see the path only, and a rewrite keeps the tags as they came (`\_1`
    // lowers the path, not the tags).
    use crate::support::{free_port, Cadent, Sink};
    let paths = [
        "a.cpu", "b.mem", "n.123", "x.cpu2", "lo.MiXeD", "t.x", "dcx.y",
    ];
    let tags = ["", ";k=mem", ";t=1", ";dc=x.cpu", ";T=Up", ";a=n.1"];
    let mut lines = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        for (j, t) in tags.iter().enumerate() {
            lines.push(format!("{p}{t} {} 1700000000\n", i * 10 + j));
        }
    }
    let data: String = lines.concat();
    let total = lines.len() as u64;
    let rules = [
        ("^(.*)\\.cpu2$", "\\1.processor"),
        ("^lo\\.(.*)$", "lo.\\_1"),
    ];
    let matches = ["cpu$", "mem", "^n\\.[0-9]+$"];

    let crelay_sinks: Vec<Sink> = (0..4).map(|_| Sink::start()).collect();
    let crelay_port = free_port();
    let dir = workdir("tags");
    let conf = dir.join("relay.conf");
    let mut text =
        format!("listen\n    type linemode\n        127.0.0.1:{crelay_port} proto tcp\n    ;\n");
    for (k, s) in crelay_sinks.iter().enumerate() {
        text.push_str(&format!(
            "cluster c{k}\n    forward\n        {}\n    ;\n",
            s.addr
        ));
    }
    for (re, into) in rules {
        text.push_str(&format!("rewrite {re}\n    into {into}\n    ;\n"));
    }
    for (k, m) in matches.iter().enumerate() {
        text.push_str(&format!(
            "match \"{m}\"\n    send to c{k}\n    stop\n    ;\n"
        ));
    }
    text.push_str("match *\n    send to c3\n    stop\n    ;\n");
    std::fs::write(&conf, text).unwrap();
    relay_through_crelay(&conf, crelay_port, data.as_bytes(), &crelay_sinks, total);

    let cadent_sinks: Vec<Sink> = (0..4).map(|_| Sink::start()).collect();
    let in_port = free_port();
    let mut config = format!(
        "[server]\nadmin_listen = \"ADMIN\"\n[[listen]]\nname = \"in\"\nurl = \"tcp://127.0.0.1:{in_port}\"\nformat = \"graphite\"\n"
    );
    for (k, s) in cadent_sinks.iter().enumerate() {
        config.push_str(&format!(
            "[[cluster]]\nname = \"c{k}\"\nkind = \"forward\"\nmembers = [\"tcp://{}\"]\n",
            s.addr
        ));
    }
    for (re, into) in rules {
        let re = re.replace('\\', "\\\\");
        let into = into.replace('\\', "\\\\");
        config.push_str(&format!(
            "[[route]]\nmatch = {{ regex = \"{re}\" }}\nrewrite = {{ regex = \"{re}\", into = \"{into}\" }}\n"
        ));
    }
    for (k, m) in matches.iter().enumerate() {
        let m = m.replace('\\', "\\\\");
        config.push_str(&format!(
            "[[route]]\nmatch = {{ regex = \"{m}\" }}\nsend_to = [\"c{k}\"]\n"
        ));
    }
    config.push_str("[[route]]\nmatch = { all = true }\nsend_to = [\"c3\"]\n");
    let cadent = Cadent::start("tags", &config);
    relay_through_cadent(&cadent, in_port, data.as_bytes(), &cadent_sinks, total);
    let want = placed(&crelay_sinks);
    assert_eq!(want.len() as u64, total);
    // The rules did something: every cluster got lines, tags were kept through rewrites.
    assert!(
        want.values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 4,
        "{want:?}"
    );
    assert!(want.contains_key("lo.mixed;T=Up 44 1700000000"), "{want:?}");
    assert_eq!(placed(&cadent_sinks), want);
}

#[test]
fn running_relays_take_a_semicolon_a_rewrite_writes_as_part_of_the_path() {
    // A rewrite that makes a dotted name tagged (`\2;host=\1`): carbon-c-relay's path
    // then ends where the rewrite's text ends, so later matches and the ring see
    // `sys.cpu;host=web1` whole, however the name came (tagged, or needing cleansing).
    use crate::support::{free_port, Cadent, Sink};
    let mut lines = Vec::new();
    for k in 0..60 {
        let path = match k % 3 {
            0 => format!("s.web{}.sys.cpu{k}", k % 5),
            1 => format!("s.web{}..sys.cpu{k}", k % 5),
            _ => format!("s.web{}.sys.mem{k}", k % 5),
        };
        for tag in ["", ";dc=x"] {
            lines.push(format!("{path}{tag} {k} 1700000000\n"));
        }
    }
    let data: String = lines.concat();
    let total = lines.len() as u64;
    let instances = ["a", "b", "c", "d"];

    let crelay_sinks: Vec<Sink> = (0..5).map(|_| Sink::start()).collect();
    let crelay_port = free_port();
    let dir = workdir("tagging-rewrite");
    let conf = dir.join("relay.conf");
    // In c-relay's quoted strings a backslash escapes the next character: doubled.
    std::fs::write(
        &conf,
        format!(
            "{}cluster web\n    forward\n        {}\n    ;\n\
             rewrite \"^s\\\\.([^.]+)\\\\.(.*)$\"\n    into \"\\\\2;host=\\\\1\"\n    ;\n\
             rewrite \"^(.*)\\\\.mem([0-9]+;host=web3)$\"\n    into \"\\\\1.memory\\\\2\"\n    ;\n\
             match \"=web2\"\n    send to web\n    stop\n    ;\n\
             match * send to ring stop;\n",
            crelay_ring_head(crelay_port, &crelay_sinks[..4], &instances),
            crelay_sinks[4].addr
        ),
    )
    .unwrap();
    relay_through_crelay(&conf, crelay_port, data.as_bytes(), &crelay_sinks, total);

    let cadent_sinks: Vec<Sink> = (0..5).map(|_| Sink::start()).collect();
    let in_port = free_port();
    let cadent = Cadent::start(
        "tagging-rewrite",
        &format!(
            "{}[[cluster]]\nname = \"web\"\nkind = \"forward\"\nmembers = [\"tcp://{}\"]\n\
             [[route]]\nmatch = {{ regex = '^s\\.([^.]+)\\.(.*)$' }}\n\
             rewrite = {{ regex = '^s\\.([^.]+)\\.(.*)$', into = '\\2;host=\\1' }}\n\
             [[route]]\nmatch = {{ regex = '^(.*)\\.mem([0-9]+;host=web3)$' }}\n\
             rewrite = {{ regex = '^(.*)\\.mem([0-9]+;host=web3)$', into = '\\1.memory\\2' }}\n\
             [[route]]\nmatch = {{ substring = \"=web2\" }}\nsend_to = [\"web\"]\n\
             [[route]]\nmatch = {{ all = true }}\nsend_to = [\"ring\"]\n",
            cadent_ring_head(in_port, &cadent_sinks[..4], &instances),
            cadent_sinks[4].addr
        ),
    );
    relay_through_cadent(&cadent, in_port, data.as_bytes(), &cadent_sinks, total);
    let want = placed(&crelay_sinks);
    assert_eq!(want.len() as u64, total);
    // The rules did something: the tagged form, the match on it, the rewrite of it.
    assert!(
        want.contains_key("sys.cpu0;host=web0 0 1700000000"),
        "{want:?}"
    );
    assert!(
        want.contains_key("sys.memory8;host=web3;dc=x 8 1700000000"),
        "{want:?}"
    );
    assert!(want.values().any(|&k| k == 4), "{want:?}");
    assert_eq!(placed(&cadent_sinks), want);
}

/// The start of a carbon-c-relay config: a line listener on `port` and the cluster
/// `ring`, carbon_ch over `sinks` named by `instances`.
fn crelay_ring_head(port: u16, sinks: &[crate::support::Sink], instances: &[&str]) -> String {
    let members: String = sinks
        .iter()
        .zip(instances)
        .map(|(s, i)| format!("        {}={i}\n", s.addr))
        .collect();
    format!(
        "listen\n    type linemode\n        127.0.0.1:{port} proto tcp\n    ;\n\
         cluster ring\n    carbon_ch\n{members}    ;\n"
    )
}

/// The start of a cadent config: a graphite listener on `port` and the cluster `ring`,
/// carbon_ch over `sinks` named by `instances` (so it is c-relay's ring whatever the
/// ports).
fn cadent_ring_head(port: u16, sinks: &[crate::support::Sink], instances: &[&str]) -> String {
    let members: Vec<String> = sinks
        .iter()
        .zip(instances)
        .map(|(s, i)| format!("\"tcp://{}={i}\"", s.addr))
        .collect();
    format!(
        "[server]\nadmin_listen = \"ADMIN\"\n[[listen]]\nname = \"in\"\n\
         url = \"tcp://127.0.0.1:{port}\"\nformat = \"graphite\"\n\
         [[cluster]]\nname = \"ring\"\nkind = \"carbon_ch\"\nmembers = [{}]\n",
        members.join(", ")
    )
}

/// line -> the index of the sink that got it (each line exactly once).
fn placed(sinks: &[crate::support::Sink]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (k, s) in sinks.iter().enumerate() {
        for (line, n) in s.lines() {
            assert_eq!(n, 1, "{line:?} arrived {n} times");
            m.insert(line, k);
        }
    }
    m
}

/// Sends `data` to cadent's listener on `port` and waits until its `sinks` hold `lines`
/// lines.
fn relay_through_cadent(
    cadent: &crate::support::Cadent,
    port: u16,
    data: &[u8],
    sinks: &[crate::support::Sink],
    lines: u64,
) {
    use crate::support::{send_tcp, wait_until};
    send_tcp(&format!("127.0.0.1:{port}"), data);
    assert!(
        wait_until(PEER_TIMEOUT, || {
            sinks.iter().map(|s| s.total()).sum::<u64>() >= lines
        }),
        "cadent delivered too few lines: {}\n{}",
        cadent.stats(),
        cadent.log()
    );
}

/// Runs carbon-c-relay on `conf` (listening on `port`), sends it `data` and waits until
/// its `sinks` hold `lines` lines, then stops it.
fn relay_through_crelay(
    conf: &Path,
    port: u16,
    data: &[u8],
    sinks: &[crate::support::Sink],
    lines: u64,
) {
    use crate::support::{send_tcp, wait_until};
    let mut relay = Command::new(crelay_bin())
        .args(["-f", conf.to_str().unwrap(), "-s", "-w", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start carbon-c-relay");
    let addr = format!("127.0.0.1:{port}");
    assert!(
        wait_until(PEER_TIMEOUT, || std::net::TcpStream::connect(&addr).is_ok()),
        "carbon-c-relay did not listen"
    );
    send_tcp(&addr, data);
    let done = wait_until(PEER_TIMEOUT, || {
        sinks.iter().map(|s| s.total()).sum::<u64>() >= lines
    });
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(relay.id() as i32, libc::SIGTERM);
    }
    let _ = relay.wait();
    assert!(done, "carbon-c-relay delivered too few lines");
}

/// A scratch directory unique to this test run and `tag`, left behind so the configs and
/// outputs can be inspected.
fn workdir(tag: &str) -> PathBuf {
    crate::support::temp_dir(&format!("crelay-{tag}"))
}

fn crelay_bin() -> PathBuf {
    crate::support::peer_bin("carbon-c-relay", &[])
}

fn run(cmd: Command, stdin_file: &Path, dir: &Path, tag: &str) -> String {
    crate::support::run_peer(cmd, stdin_file, dir, tag, PEER_TIMEOUT).stdout
}

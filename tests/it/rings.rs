//! The remaining ring kinds against the real peers they must agree with:
//!
//! - `fnv1a_ch` and `jump_fnv1a_ch` against `carbon-c-relay -t` (3.7.3): the ring or
//!   bucket order it prints with `-d`, and the members it picks for every name at
//!   replication 1, 2, 3 and the member count (the full preference walk);
//! - `carbon_ch_python` against python carbon 1.1.10's own `ConsistentHashingRouter`
//!   (its ring, and `getDestinations` for every name) with and without
//!   `DIVERSE_REPLICAS`, member lists with position collisions in several orders;
//! - `statsd_hashring` against npm hashring 3.2.0 built as statsd 0.9.0's `proxy.js`
//!   builds it (its points, `get` and `range(key, servers)` for every key).
//!
//! c-relay's `-t` mode hashes each line as typed (no cleansing, tags included), so the
//! names here have no spaces and both sides hash the same bytes; some carry bytes
//! >= 0x80, which c-relay's FNV sign-extends.

use crate::support::{member, ring_members, Member};
use cadent::route::ring::RingMember;
use cadent::route::ring_fnv::{FnvRing, JumpRing};
use cadent::route::ring_python::PythonRing;
use cadent::route::ring_statsd::StatsdRing;
use cadent::tools::SplitMix64;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Generated names per comparison (before names aimed at collisions).
const NAMES_COUNT: usize = 12_000;

/// How long one peer run may take before the test gives up on it.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// Deterministic metric names of varied shapes, no spaces, none empty. With
/// `high_bytes`, about 1 in 25 carries UTF-8 (bytes >= 0x80).
fn names(seed: u64, high_bytes: bool) -> Vec<String> {
    const WORDS: &[&str] = &[
        "servers",
        "web",
        "db",
        "cpu",
        "memory",
        "free",
        "load",
        "disk",
        "requests",
        "latency",
        "p99",
        "count",
        "stats",
        "timers",
        "gauges",
        "collectd",
        "eth0",
        "if_octets",
        "api",
        "checkout",
        "carbon",
        "prod",
        "eu-west-1",
        "us_east",
        "queue#2",
    ];
    const UTF8: &[&str] = &[
        "\u{e9}t\u{e9}",
        "m\u{fc}nchen",
        "\u{65e5}\u{672c}",
        "\u{ff}",
        "\u{1f600}",
    ];
    let mut rng = SplitMix64(seed);
    crate::support::distinct_names(NAMES_COUNT, |name| {
        match rng.below(5) {
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
            1 => crate::support::push_random_segments(name, &mut rng, 8),
            2 => {
                let _ = write!(name, "m{}", rng.below(100_000));
            }
            3 => {
                let _ = write!(
                    name,
                    "stats.timers.{}.endpoint_{}.p{}",
                    WORDS[rng.below(WORDS.len())],
                    rng.below(300),
                    50 + rng.below(50)
                );
            }
            _ => crate::support::push_words(name, &mut rng, WORDS),
        }
        if high_bytes && rng.below(25) == 0 {
            name.push('.');
            name.push_str(UTF8[rng.below(UTF8.len())]);
        }
    })
}

/// Compares two answer lists name by name; returns how many differ, printing the
/// first 20.
fn compare(label: &str, names: &[String], want: &[Vec<usize>], got: &[Vec<usize>]) -> usize {
    assert_eq!(
        want.len(),
        names.len(),
        "{label}: peer answered {} of {} names",
        want.len(),
        names.len()
    );
    assert_eq!(got.len(), names.len());
    let mut differ = 0;
    for ((name, w), g) in names.iter().zip(want).zip(got) {
        if w != g {
            if differ < 20 {
                eprintln!("{label}: {name:?}: peer {w:?}, cadent {g:?}");
            }
            differ += 1;
        }
    }
    differ
}

// ---------------------------------------------------------------- carbon-c-relay

/// One c-relay cluster to compare: members in config order and the replication
/// counts to ask for (the member count is the full walk; a ring where some member is
/// unreachable stops at the reachable count, where c-relay would spin).
struct CrelayScenario {
    label: &'static str,
    members: &'static [&'static str],
    replications: &'static [usize],
}

const FNV_SCENARIOS: &[CrelayScenario] = &[
    CrelayScenario {
        label: "no-instances",
        members: &[
            "10.0.0.1:2003",
            "10.0.0.2:2003",
            "10.0.0.3:2003",
            "10.0.0.4:2003",
        ],
        replications: &[1, 2, 3, 4],
    },
    CrelayScenario {
        label: "instances",
        members: &[
            "127.0.0.1:2101=a",
            "127.0.0.1:2102=b",
            "127.0.0.1:2103=c",
            "127.0.0.1:2104=d",
        ],
        replications: &[1, 2, 3, 4],
    },
    CrelayScenario {
        label: "mixed",
        members: &[
            "10.0.0.1:2003",
            "10.0.0.2:2003=x",
            "127.0.0.1:2101=a",
            "127.0.0.1:2102",
            "10.0.0.5:2004",
        ],
        replications: &[1, 2, 3, 5],
    },
    // Same host, ports differ: replica keys differ by port; ties (by chance) go to
    // the smaller port.
    CrelayScenario {
        label: "same-host",
        members: &[
            "10.0.0.1:2005",
            "10.0.0.1:2003",
            "10.0.0.1:2004",
            "10.0.0.2:2003",
        ],
        replications: &[1, 2, 3, 4],
    },
    // One instance on two servers: the instance replaces host:port, so all 100
    // positions tie and the smaller host owns them; 10.0.0.9 is unreachable.
    CrelayScenario {
        label: "shared-instance",
        members: &[
            "10.0.0.9:2003=a",
            "10.0.0.1:2004=a",
            "10.0.0.5:2003=b",
            "10.0.0.5:2004",
        ],
        replications: &[1, 2, 3],
    },
];

const JUMP_SCENARIOS: &[CrelayScenario] = &[
    CrelayScenario {
        label: "no-instances",
        members: &[
            "10.0.0.1:2003",
            "10.0.0.2:2003",
            "10.0.0.3:2003",
            "10.0.0.4:2003",
        ],
        replications: &[1, 2, 3, 4],
    },
    // relays.md: =10, =2, =1 orders as 1, 2, 10.
    CrelayScenario {
        label: "numeric-instances",
        members: &["127.0.0.1:2101=10", "127.0.0.1:2102=2", "127.0.0.1:2103=1"],
        replications: &[1, 2, 3],
    },
    CrelayScenario {
        label: "mixed",
        members: &[
            "10.0.0.1:2003",
            "10.0.0.2:2003=b",
            "10.0.0.3:2003",
            "10.0.0.4:2003=a",
            "10.0.0.5:2003=10",
            "10.0.0.6:2003=9",
            "10.0.0.7:2003",
        ],
        replications: &[1, 2, 3, 7],
    },
    // "9" < "10" < "1a" < "9": no total order; glibc's merge sort decides.
    CrelayScenario {
        label: "non-transitive",
        members: &[
            "h1:2101=10",
            "h2:2102=9",
            "h3:2103=1a",
            "h4:2104",
            "h5:2105=-3",
        ],
        replications: &[1, 2, 3, 5],
    },
    CrelayScenario {
        label: "twelve",
        members: &[
            "10.0.1.1:2003",
            "10.0.1.2:2003=7",
            "10.0.1.3:2003",
            "10.0.1.4:2003=x",
            "10.0.1.5:2003",
            "10.0.1.6:2003=12",
            "10.0.1.7:2003",
            "10.0.1.8:2003=3",
            "10.0.1.9:2003",
            "10.0.1.10:2003",
            "10.0.1.11:2003=y",
            "10.0.1.12:2003",
        ],
        replications: &[1, 2, 3, 12],
    },
];

/// Which ring a c-relay comparison builds.
#[derive(Clone, Copy, PartialEq)]
enum CrelayKind {
    Fnv,
    Jump,
}

impl CrelayKind {
    fn keyword(self) -> &'static str {
        match self {
            CrelayKind::Fnv => "fnv1a_ch",
            CrelayKind::Jump => "jump_fnv1a_ch",
        }
    }
}

fn crelay_conf(kind: CrelayKind, scenario: &CrelayScenario, replication: usize) -> String {
    crate::support::crelay_cluster_conf(kind.keyword(), scenario.members, replication)
}

/// The member a `host:port[=instance]` as c-relay prints it (cut to 20 bytes in
/// its ring print) stands for.
fn member_of(printed: &str, members: &[Member]) -> usize {
    let addr = printed.split_once('=').map_or(printed, |(a, _)| a);
    members
        .iter()
        .position(|m| m.addr == addr)
        .unwrap_or_else(|| panic!("c-relay printed unknown server {printed:?}"))
}

/// c-relay's `-d` ring print: (pos, member) cells in ring order (for jump, pos is the
/// member's config index and the order is the bucket order).
fn crelay_ring(conf: &Path, members: &[Member], dir: &Path) -> Vec<(u16, usize)> {
    crate::support::crelay_ring_cells(conf, dir, PEER_TIMEOUT)
        .into_iter()
        .map(|(pos, server)| (pos, member_of(&server, members)))
        .collect()
}

/// c-relay's `-t` answers: for each name, the members it picked, in order.
fn crelay_routes(
    kind: CrelayKind,
    conf: &Path,
    names: &[String],
    members: &[Member],
    dir: &Path,
) -> Vec<Vec<usize>> {
    let cluster_line = format!("{}(c)", kind.keyword());
    crate::support::crelay_test_routes(conf, names, dir, &cluster_line, PEER_TIMEOUT)
        .into_iter()
        .map(|servers| servers.iter().map(|s| member_of(s, members)).collect())
        .collect()
}

/// Both c-relay kinds over their scenarios: ring print and routes at every
/// replication. Returns (routes compared, differences).
fn compare_with_crelay(
    kind: CrelayKind,
    scenarios: &[CrelayScenario],
    names: &[String],
) -> (usize, usize) {
    let mut compared = 0;
    let mut differ = 0;
    let mut out = Vec::new();
    for scenario in scenarios {
        let dir = workdir(&format!("{}-{}", kind.keyword(), scenario.label));
        let members: Vec<Member> = scenario.members.iter().map(|s| member(s)).collect();
        let ring_members = ring_members(&members);
        let (fnv, jump) = (FnvRing::new(&ring_members), JumpRing::new(&ring_members));

        let conf = dir.join("ring.conf");
        fs::write(&conf, crelay_conf(kind, scenario, 1)).expect("write c-relay conf");
        let printed = crelay_ring(&conf, &members, &dir);
        let ours: Vec<(u16, usize)> = match kind {
            CrelayKind::Fnv => fnv.points().collect(),
            CrelayKind::Jump => jump.buckets().map(|m| (m as u16, m)).collect(),
        };
        assert_eq!(
            printed,
            ours,
            "{} {}: ring differs from c-relay's -d print",
            kind.keyword(),
            scenario.label
        );

        for &replication in scenario.replications {
            let conf = dir.join(format!("r{replication}.conf"));
            fs::write(&conf, crelay_conf(kind, scenario, replication)).expect("write c-relay conf");
            let want = crelay_routes(kind, &conf, names, &members, &dir);
            let got: Vec<Vec<usize>> = names
                .iter()
                .map(|name| {
                    match kind {
                        CrelayKind::Fnv => fnv.route_into(name.as_bytes(), replication, &mut out),
                        CrelayKind::Jump => jump.route_into(name.as_bytes(), replication, &mut out),
                    }
                    out.clone()
                })
                .collect();
            let label = format!("{} {} r{replication}", kind.keyword(), scenario.label);
            differ += compare(&label, names, &want, &got);
            compared += names.len();
        }
        let _ = fs::remove_dir_all(&dir);
    }
    (compared, differ)
}

/// Tied positions aimed at per fnv1a_ch scenario, spread over the ring.
const FNV_TIES_AIMED_MAX: usize = 12;

/// Names aimed exactly at tied positions of the fnv1a_ch scenarios: c-relay's search
/// may stop anywhere inside a tie, and the walk goes on from there. (Our ring's ties
/// are those of c-relay's `-d` print, which the comparison checks first.)
fn names_on_fnv_ties() -> Vec<String> {
    let mut targets: BTreeSet<u16> = BTreeSet::new();
    for scenario in FNV_SCENARIOS {
        let members: Vec<Member> = scenario.members.iter().map(|s| member(s)).collect();
        let points: Vec<(u16, usize)> = FnvRing::new(&ring_members(&members)).points().collect();
        let mut tied: Vec<u16> = points
            .windows(2)
            .filter(|w| w[0].0 == w[1].0)
            .map(|w| w[0].0)
            .collect();
        tied.dedup();
        let step = tied.len().div_ceil(FNV_TIES_AIMED_MAX).max(1);
        targets.extend(tied.into_iter().step_by(step));
    }
    eprintln!("fnv1a_ch: {} names aimed at tied positions", targets.len());
    crate::support::names_at_positions(targets, "tie.k", FnvRing::position)
}

#[test]
fn fnv1a_ch_matches_crelay() {
    let mut names = names(0x666e_7631_6163_6821, true);
    names.extend(names_on_fnv_ties());
    let (compared, differ) = compare_with_crelay(CrelayKind::Fnv, FNV_SCENARIOS, &names);
    assert_eq!(
        differ, 0,
        "{differ} of {compared} fnv1a_ch routes differ from c-relay"
    );
    eprintln!(
        "fnv1a_ch: {} names, {compared} routes compared, 0 differ",
        names.len()
    );
}

#[test]
fn jump_fnv1a_ch_matches_crelay() {
    let names = names(0x6a75_6d70_6661_7631, true);
    let (compared, differ) = compare_with_crelay(CrelayKind::Jump, JUMP_SCENARIOS, &names);
    assert_eq!(
        differ, 0,
        "{differ} of {compared} jump_fnv1a_ch routes differ from c-relay"
    );
    eprintln!(
        "jump_fnv1a_ch: {} names, {compared} routes compared, 0 differ",
        names.len()
    );
}

// ---------------------------------------------------------------- python carbon

/// Drives carbon 1.1.10's `ConsistentHashingRouter`: reads a JSON job (configs and
/// names) from the file in argv[1], prints JSON: per config, the ring and the
/// destination indexes per name.
const CARBON_DRIVER: &str = r#"
import json, sys, warnings
warnings.simplefilter("ignore")
from carbon.routers import ConsistentHashingRouter

job = json.load(open(sys.argv[1]))
result = []
for config in job["configs"]:
    class Settings:
        REPLICATION_FACTOR = config["replication"]
        DIVERSE_REPLICAS = config["diverse"]
        ROUTER_HASH_TYPE = None
    router = ConsistentHashingRouter(Settings())
    index = {}
    node_index = {}
    for i, (host, port, instance) in enumerate(config["members"]):
        router.addDestination((host, port, instance))
        index[(host, port, instance)] = i
        node_index.setdefault((host, instance), i)
    ring = [[pos, node_index[node]] for (pos, node) in router.ring.ring]
    routes = [[index[d] for d in router.getDestinations(name)] for name in job["names"]]
    result.append({"ring": ring, "routes": routes})
json.dump(result, sys.stdout)
"#;

/// Member lists for python carbon. Every order of a list is a different ring: a
/// collision bumps whichever node comes later.
const PYTHON_SCENARIOS: &[(&str, &[&str])] = &[
    // ('10.0.0.1', None):60 and ('10.0.0.3', None):65 both hash to 7798.
    (
        "ten-1-2-3",
        &["10.0.0.1:2003", "10.0.0.2:2003", "10.0.0.3:2003"],
    ),
    (
        "ten-3-2-1",
        &["10.0.0.3:2003", "10.0.0.2:2003", "10.0.0.1:2003"],
    ),
    (
        "ten-2-3-1",
        &["10.0.0.2:2003", "10.0.0.3:2003", "10.0.0.1:2003"],
    ),
    // Members sharing hosts, for diverse_replicas.
    (
        "shared-hosts",
        &[
            "10.0.0.1:2003=a",
            "10.0.0.1:2004=b",
            "10.0.0.2:2003=a",
            "10.0.0.2:2004=b",
            "10.0.0.3:2003=a",
        ],
    ),
    (
        "shared-hosts-reversed",
        &[
            "10.0.0.3:2003=a",
            "10.0.0.2:2004=b",
            "10.0.0.2:2003=a",
            "10.0.0.1:2004=b",
            "10.0.0.1:2003=a",
        ],
    ),
    // Twenty nodes: 2000 positions, so dozens of collisions and bump chains (a bumped
    // entry landing on a taken position moves again).
    ("twenty", TWENTY),
    ("twenty-reversed", TWENTY_REVERSED),
    (
        "mixed",
        &[
            "127.0.0.1:2101=a",
            "127.0.0.1:2102=b",
            "10.0.0.5:2003",
            "10.0.0.5:2004=10",
            "127.0.0.2:2101",
            "10.0.0.1:2003",
        ],
    ),
];

const TWENTY: &[&str] = &[
    "10.2.0.1:2003",
    "10.2.0.2:2003=a",
    "10.2.0.3:2003",
    "10.2.0.4:2003=b",
    "10.2.0.5:2003",
    "10.2.0.6:2003",
    "10.2.0.7:2003=c",
    "10.2.0.8:2003",
    "10.2.0.9:2003",
    "10.2.0.10:2003",
    "10.2.0.11:2003=d",
    "10.2.0.12:2003",
    "10.2.0.1:2004=x",
    "10.2.0.2:2004",
    "10.2.0.3:2004=y",
    "10.2.0.4:2004",
    "10.2.0.13:2003",
    "10.2.0.14:2003",
    "10.2.0.15:2003",
    "10.2.0.16:2003",
];

const TWENTY_REVERSED: &[&str] = &[
    "10.2.0.16:2003",
    "10.2.0.15:2003",
    "10.2.0.14:2003",
    "10.2.0.13:2003",
    "10.2.0.4:2004",
    "10.2.0.3:2004=y",
    "10.2.0.2:2004",
    "10.2.0.1:2004=x",
    "10.2.0.12:2003",
    "10.2.0.11:2003=d",
    "10.2.0.10:2003",
    "10.2.0.9:2003",
    "10.2.0.8:2003",
    "10.2.0.7:2003=c",
    "10.2.0.6:2003",
    "10.2.0.5:2003",
    "10.2.0.4:2003=b",
    "10.2.0.3:2003",
    "10.2.0.2:2003=a",
    "10.2.0.1:2003",
];

/// Python's node key for a member: `str((host, instance)) + ":" + str(replica)`, for the
/// plain ASCII hosts and instances used here.
fn python_node_key(m: &Member, replica: usize) -> String {
    match m.instance {
        Some(i) => format!("('{}', '{i}'):{replica}", m.host),
        None => format!("('{}', None):{replica}", m.host),
    }
}

/// Names aimed at every position where python's bump matters: each collided position
/// and those just above it (where bumped entries land).
fn names_on_collisions() -> Vec<String> {
    let mut targets: BTreeSet<u16> = BTreeSet::new();
    for (_, specs) in PYTHON_SCENARIOS {
        let mut count: BTreeMap<u16, usize> = BTreeMap::new();
        for spec in specs.iter() {
            let m = member(spec);
            for replica in 0..100 {
                *count
                    .entry(PythonRing::position(
                        python_node_key(&m, replica).as_bytes(),
                    ))
                    .or_default() += 1;
            }
        }
        // A k-way collision bumps entries up to k - 1 above it, more in a chain.
        for (&pos, &n) in count.iter().filter(|(_, &n)| n > 1) {
            for p in pos..=pos.saturating_add(n as u16 + 1) {
                targets.insert(p);
            }
        }
    }
    assert!(targets.contains(&7798), "the 7798 collision is missing");
    eprintln!(
        "python: {} names aimed at collided positions",
        targets.len()
    );
    crate::support::names_at_positions(targets, "aim.k", PythonRing::position)
}

#[test]
fn carbon_ch_python_matches_carbon_router() {
    let python = peer_bin("python3", &["/root/.pyenv/versions/3.11.7/bin"]);
    let mut names = names(0x7079_6361_7262_6f6e, true);
    // Tagged names: carbon hashes them whole.
    names.extend((0..200).map(|i| format!("tagged.m{i};dc=dc{};env=prod", i % 5)));
    names.extend(names_on_collisions());
    let dir = workdir("python");

    // (scenario, diverse, replication) for every config the driver runs. carbon's
    // router stops its walk at the replication factor, so the answer at a replication
    // is the prefix of the answer at a higher one: one run at the member count serves
    // replication 1, 2, 3 and the full walk. A run at replication 2 checks that reading.
    let mut configs = Vec::new();
    for (s, (_, specs)) in PYTHON_SCENARIOS.iter().enumerate() {
        configs.push((s, false, specs.len()));
        configs.push((s, true, specs.len()));
        configs.push((s, true, 2));
    }
    let job = serde_json::json!({
        "configs": configs.iter().map(|&(s, diverse, replication)| {
            let members: Vec<serde_json::Value> = PYTHON_SCENARIOS[s].1.iter().map(|spec| {
                let m = member(spec);
                serde_json::json!([m.host, m.port, m.instance])
            }).collect();
            serde_json::json!({"members": members, "diverse": diverse, "replication": replication})
        }).collect::<Vec<_>>(),
        "names": names,
    });
    let job_path = dir.join("job.json");
    fs::write(&job_path, job.to_string()).expect("write job");
    let driver = dir.join("driver.py");
    fs::write(&driver, CARBON_DRIVER).expect("write driver");
    let mut cmd = Command::new(python);
    cmd.arg(&driver).arg(&job_path);
    let stdout = run(cmd, &job_path, &dir, "python");
    let answers: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("driver JSON");
    assert_eq!(answers.len(), configs.len());

    let mut compared = 0;
    let mut differ = 0;
    let mut out = Vec::new();
    for (&(s, diverse, replication), answer) in configs.iter().zip(&answers) {
        let (label, specs) = PYTHON_SCENARIOS[s];
        let members: Vec<Member> = specs.iter().map(|s| member(s)).collect();
        let ring = PythonRing::new(&ring_members(&members), diverse);
        let label = format!("carbon_ch_python {label} diverse={diverse} r{replication}");

        let want_ring: Vec<(u32, usize)> =
            serde_json::from_value(answer["ring"].clone()).expect("ring JSON");
        let ours: Vec<(u32, usize)> = ring.points().collect();
        assert_eq!(want_ring, ours, "{label}: ring differs from carbon's");

        let answered: Vec<Vec<usize>> =
            serde_json::from_value(answer["routes"].clone()).expect("routes JSON");
        let asked: &[usize] = if replication == specs.len() {
            &[1, 2, 3, replication]
        } else {
            &[replication]
        };
        for &r in asked {
            let want: Vec<Vec<usize>> = answered
                .iter()
                .map(|a| a[..r.min(a.len())].to_vec())
                .collect();
            let got: Vec<Vec<usize>> = names
                .iter()
                .map(|name| {
                    ring.route_into(name.as_bytes(), ring.replica_count(r), &mut out);
                    out.clone()
                })
                .collect();
            differ += compare(&format!("{label} as r{r}"), &names, &want, &got);
            compared += names.len();
        }
    }
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(
        differ, 0,
        "{differ} of {compared} carbon_ch_python routes differ from carbon"
    );
    eprintln!(
        "carbon_ch_python: {} names, {compared} routes compared, 0 differ",
        names.len()
    );
}

// ---------------------------------------------------------------- statsd proxy

/// Builds node-hashring 3.2.0 as statsd 0.9.0's proxy.js does (an object of
/// `host:port` -> weight, md5, replicas 0), reads the key file as the proxy reads a
/// packet (decode as UTF-8, split on newlines, key = text before the first ':'), and
/// prints the ring and, per line, `get` and `range(key, servers)` as member indexes.
const HASHRING_DRIVER: &str = r#"
var fs = require('fs');
var HashRing = require('hashring');
var job = JSON.parse(fs.readFileSync(process.argv[2]).toString());
var node_ring = {};
var index = {};
job.members.forEach(function (m, i) {
  var id = m.host + ':' + m.port;
  node_ring[id] = m.weight;
  if (!(id in index)) index[id] = i;
});
var ring = new HashRing(node_ring, 'md5', { 'max cache size': 10000, 'replicas': 0 });
var out = [];
out.push(ring.ring.map(function (n) { return n.value + '@' + index[n.server]; }).join(' '));
var packet = fs.readFileSync(process.argv[3]).toString();
packet.split('\n').forEach(function (metric) {
  if (metric === '') return;
  var key = metric.split(':').shift();
  var walk = ring.range(key, ring.servers.length).map(function (s) { return index[s]; });
  out.push(index[ring.get(key)] + ' ' + walk.join(','));
});
process.stdout.write(out.join('\n') + '\n');
"#;

/// statsd lines: `name:value|type`, some without a value part, some with UTF-8 or
/// invalid UTF-8 in the name (the proxy decodes the packet as UTF-8).
fn statsd_lines() -> Vec<Vec<u8>> {
    let mut rng = SplitMix64(0x7374_6174_7364_2121);
    let mut out: Vec<Vec<u8>> = [
        "foo.bar.baz:1|c",
        "servers.web01.cpu.user:5|g",
        "stats.counters.api.requests:1|c",
        "collectd.host1.load.load.shortterm:1|ms",
    ]
    .iter()
    .map(|l| l.as_bytes().to_vec())
    .collect();
    let names = names(0x6b65_7973_2121_2121, true);
    for (i, name) in names.iter().enumerate() {
        let mut line = name.as_bytes().to_vec();
        match rng.below(20) {
            0 => {}
            1 => line.extend_from_slice(b"\xff\xfe.bad"),
            2 => line.extend_from_slice(b".trunc\xe2\x82"),
            3 => line.extend_from_slice(b"\xc3"),
            _ => {
                let _ = write!(
                    byte_writer(&mut line),
                    ":{}|{}",
                    i % 1000,
                    ["c", "g", "ms", "s", "h"][rng.below(5)]
                );
            }
        }
        if rng.below(10) == 0 {
            line.extend_from_slice(b":2|c|@0.5");
        }
        out.push(line);
    }
    out
}

/// A `fmt::Write` onto a byte vector.
fn byte_writer(buf: &mut Vec<u8>) -> impl std::fmt::Write + '_ {
    struct Bytes<'a>(&'a mut Vec<u8>);
    impl std::fmt::Write for Bytes<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.extend_from_slice(s.as_bytes());
            Ok(())
        }
    }
    Bytes(buf)
}

#[test]
fn statsd_hashring_matches_npm_hashring() {
    let node = peer_bin("node", &["/usr/bin", "/usr/local/bin"]);
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/.peers/node/node_modules");
    assert!(
        Path::new(modules).join("hashring/index.js").is_file(),
        "npm hashring missing under {modules}: run scripts/install-peers.sh"
    );
    let lines = statsd_lines();
    let mut packet = Vec::new();
    for line in &lines {
        packet.extend_from_slice(line);
        packet.push(b'\n');
    }
    let keys: Vec<&[u8]> = lines
        .iter()
        .map(|l| l.split(|&b| b == b':').next().unwrap_or(l))
        .collect();
    let labels: Vec<String> = keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();

    let hosts: Vec<String> = (1..=14).map(|i| format!("10.1.0.{i}")).collect();
    // (label, members, weight per member): the proxy's 100 each at 3, 7 and 14
    // servers, and unequal weights (hashring's rule the proxy does not use).
    let scenarios: Vec<(&str, usize, Vec<u32>)> = vec![
        ("3", 3, vec![100; 3]),
        ("7", 7, vec![100; 7]),
        ("14", 14, vec![100; 14]),
        ("weighted", 4, vec![100, 300, 50, 1]),
    ];
    let dir = workdir("statsd");
    let packet_path = dir.join("packet");
    fs::write(&packet_path, &packet).expect("write packet");
    let driver = dir.join("driver.js");
    fs::write(&driver, HASHRING_DRIVER).expect("write driver");

    let mut compared = 0;
    let mut differ = 0;
    let mut out = Vec::new();
    for (label, count, weights) in &scenarios {
        let members: Vec<RingMember<'_>> = hosts[..*count]
            .iter()
            .map(|h| RingMember {
                host: h,
                port: 8125,
                instance: None,
            })
            .collect();
        let job = serde_json::json!({
            "members": members.iter().zip(weights).map(|(m, w)| serde_json::json!({"host": m.host, "port": m.port, "weight": w})).collect::<Vec<_>>(),
        });
        let job_path = dir.join(format!("job-{label}.json"));
        fs::write(&job_path, job.to_string()).expect("write job");
        let mut cmd = Command::new(&node);
        cmd.env("NODE_PATH", modules)
            .arg(&driver)
            .arg(&job_path)
            .arg(&packet_path);
        let stdout = run(cmd, &job_path, &dir, &format!("node-{label}"));
        let mut answer = stdout.lines();

        let ring = StatsdRing::new(&members, weights);
        let want_ring: Vec<(u32, usize)> = answer
            .next()
            .expect("ring line")
            .split_whitespace()
            .map(|cell| {
                let (v, m) = cell.split_once('@').expect("VALUE@member");
                (v.parse().expect("value"), m.parse().expect("member"))
            })
            .collect();
        let ours: Vec<(u32, usize)> = ring.points().collect();
        assert_eq!(
            want_ring, ours,
            "statsd {label}: ring differs from hashring's"
        );
        if *count == 7 || *count == 14 {
            assert_eq!(
                ring.len(),
                39 * count,
                "statsd {label}: 39 points per server"
            );
        }

        let mut want_get = Vec::new();
        let mut want_walk = Vec::new();
        for line in answer {
            let (get, walk) = line.split_once(' ').expect("GET WALK");
            want_get.push(vec![get.parse::<usize>().expect("get")]);
            want_walk.push(
                walk.split(',')
                    .map(|m| m.parse::<usize>().expect("walk"))
                    .collect::<Vec<_>>(),
            );
        }
        let mut got_get = Vec::new();
        let mut got_walk = Vec::new();
        for key in &keys {
            ring.route_into(key, 1, &mut out);
            got_get.push(out.clone());
            ring.route_into(key, *count, &mut out);
            got_walk.push(out.clone());
        }
        differ += compare(&format!("statsd {label} get"), &labels, &want_get, &got_get);
        differ += compare(
            &format!("statsd {label} range"),
            &labels,
            &want_walk,
            &got_walk,
        );
        compared += 2 * keys.len();
    }
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(
        differ, 0,
        "{differ} of {compared} statsd_hashring routes differ from hashring"
    );
    eprintln!(
        "statsd_hashring: {} keys, {compared} routes compared, 0 differ",
        keys.len()
    );
}

// ---------------------------------------------------------------- timing

/// A ring's `route_into`, for timing.
type Route<'a> = &'a dyn Fn(&[u8], usize, &mut Vec<usize>);

/// Route cost per kind (a measurement, not a check; run it in release):
/// `cargo test --release --test it rings::route_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn route_timing() {
    let names: Vec<Vec<u8>> = (0..1_000_000)
        .map(|i| format!("servers.host{}.cpu.{}.user_{i}", i % 977, i % 13).into_bytes())
        .collect();
    let time = |label: &str, n: usize, route: Route<'_>| {
        let mut out = Vec::with_capacity(64);
        let mut sum = 0usize;
        let start = Instant::now();
        for name in &names {
            route(name, n, &mut out);
            sum += out[0];
        }
        let ns = start.elapsed().as_nanos() as f64 / names.len() as f64;
        std::hint::black_box(sum);
        eprintln!("{label:<28} n={n:<3} {ns:>7.1} ns/route");
    };
    for count in [4usize, 12, 32] {
        let hosts: Vec<String> = (1..=count).map(|i| format!("10.0.0.{i}")).collect();
        let members: Vec<RingMember<'_>> = hosts
            .iter()
            .map(|h| RingMember {
                host: h,
                port: 2003,
                instance: None,
            })
            .collect();
        let carbon = cadent::route::ring::CarbonRing::new(&members);
        let fnv = FnvRing::new(&members);
        let jump = JumpRing::new(&members);
        let python = PythonRing::new(&members, true);
        let statsd = StatsdRing::new(&members, &vec![100; count]);
        eprintln!("--- {count} members");
        for n in [1, 2, count] {
            time("carbon_ch (for scale)", n, &|k, n, o| {
                carbon.route_into(k, n, o)
            });
            time("fnv1a_ch", n, &|k, n, o| fnv.route_into(k, n, o));
            time("jump_fnv1a_ch", n, &|k, n, o| jump.route_into(k, n, o));
            time("carbon_ch_python diverse", n, &|k, n, o| {
                python.route_into(k, n, o)
            });
            time("statsd_hashring", n, &|k, n, o| statsd.route_into(k, n, o));
        }
    }
}

fn workdir(tag: &str) -> PathBuf {
    crate::support::temp_dir(&format!("rings-{tag}"))
}

fn peer_bin(name: &str, extra_dirs: &[&str]) -> PathBuf {
    crate::support::peer_bin(name, extra_dirs)
}

fn run(cmd: Command, stdin_file: &Path, dir: &Path, tag: &str) -> String {
    crate::support::run_peer(cmd, stdin_file, dir, tag, PEER_TIMEOUT).stdout
}

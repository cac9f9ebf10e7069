//! Etsy statsd's management console replies (`aggregate::statsd::{inspect, mgmt}`)
//! against the real thing:
//! - `util.inspect` against node 20 itself on generated objects (keys needing every
//!   kind of quoting, numbers of every print form, arrays of 0..150 values), byte for
//!   byte; the numbers' own printing (`jsnum`) against node's `String(n)` separately, so
//!   a layout fault and a digit fault each name themselves;
//! - command parsing against node's own `ascii` decoding, `trim` and `split(" ")`, and
//!   deletion against Etsy's `lib/mgmt_console.js` run in node, on generated input;
//! - `help`, `health`, `stats`, `counters`, `timers`, `gauges`, `delcounters`, `quit`
//!   and unknown commands against a live Etsy statsd 0.9.0 (node, 127.0.0.1), its state
//!   made by datagrams and modelled here by a small replica of `handlePacket` for the
//!   datagrams sent. Values that depend on the clock (`uptime`, the `last_*` deltas) are
//!   compared by shape and range.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cadent::aggregate::jsnum::js_number_string;
use cadent::aggregate::statsd::inspect::{write_object, Value};
use cadent::aggregate::statsd::mgmt::{
    delete_reply, parse_command, write_dump_reply, write_health_reply, write_stats_reply,
    Command as MgmtCommand, Health, Kind, StatsReport, ERROR_REPLY, HELP_REPLY,
};
use cadent::aggregate::statsd::GraphiteWriteStats;
use cadent::tools::SplitMix64;
use serde_json::json;

use crate::support::{free_port, run_peer, temp_dir};

const NODE_MODULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.peers/node/node_modules");

/// node, asserted present: without it the comparisons prove nothing.
fn node() -> &'static str {
    let ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "node is not on PATH: run scripts/install-peers.sh");
    "node"
}

fn statsd_dir() -> PathBuf {
    let p = Path::new(NODE_MODULES).join("statsd");
    assert!(
        p.join("stats.js").exists(),
        "Etsy statsd 0.9.0 is not installed at {}: run scripts/install-peers.sh",
        p.display()
    );
    p
}

/// Runs `script` in node with `input` (JSON) on stdin; returns its stdout as JSON.
fn node_json(tag: &str, script: &str, input: &serde_json::Value) -> serde_json::Value {
    let dir = temp_dir(tag);
    let stdin = dir.join("input.json");
    std::fs::write(&stdin, input.to_string()).unwrap();
    let mut cmd = Command::new(node());
    cmd.arg("-e").arg(script).env("STATSD_DIR", statsd_dir());
    let out = run_peer(cmd, &stdin, &dir, "node", Duration::from_secs(120));
    let v = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("node's output is not JSON ({e}): {}", out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    v
}

/// Whether `k` is a JavaScript array index (a canonical decimal below 2^32 - 1).
fn is_array_index(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 10
        && k.bytes().all(|b| b.is_ascii_digit())
        && (k == "0" || !k.starts_with('0'))
        && k.parse::<u64>().unwrap() < u64::from(u32::MAX)
}

/// Keys in JavaScript's `for..in` order: array indexes ascending, then the rest as given.
fn js_order<T: Clone>(entries: &[(String, T)]) -> Vec<(String, T)> {
    let mut index: Vec<_> = entries
        .iter()
        .filter(|(k, _)| is_array_index(k))
        .cloned()
        .collect();
    index.sort_by_key(|(k, _)| k.parse::<u64>().unwrap());
    index.extend(entries.iter().filter(|(k, _)| !is_array_index(k)).cloned());
    index
}

/// Equal, or a panic showing where they part (objects can be many kilobytes).
fn assert_same(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let at = got
        .char_indices()
        .zip(want.chars())
        .find(|((_, a), b)| a != b)
        .map_or(got.len().min(want.len()), |((i, _), _)| i);
    // The nearest char boundary at or before `i`.
    let cut = |s: &str, i: usize| {
        (0..=i.min(s.len()))
            .rev()
            .find(|&j| s.is_char_boundary(j))
            .unwrap_or(0)
    };
    panic!(
        "{what}: differs at byte {at}\n--- ours:\n{}\n--- node:\n{}",
        &got[cut(got, at.saturating_sub(300))..cut(got, at + 200)],
        &want[cut(want, at.saturating_sub(300))..cut(want, at + 200)],
    );
}

// ---------------------------------------------------------------------------------
// util.inspect

const INSPECT_JS: &str = r#"
const util = require('util');
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const strings = {};
const inspected = cases.map((c) => {
  const o = {};
  for (const [k, v] of c) {
    const texts = Array.isArray(v) ? v : [v];
    for (const t of texts) strings[t] = String(Number(t));
    const value = Array.isArray(v) ? v.map(Number) : Number(v);
    Object.defineProperty(o, k, { value, enumerable: true, writable: true, configurable: true });
  }
  return util.inspect(o);
});
process.stdout.write(JSON.stringify({ inspected, strings }));
"#;

#[derive(Clone, Debug)]
enum Gen {
    Number(f64),
    Numbers(Vec<f64>),
}

/// A number as text `Number()` reads back exactly, not printed by the code under test.
fn number_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{v:e}")
    }
}

fn gen_number(rng: &mut SplitMix64, kind: usize) -> f64 {
    const SPECIAL: [f64; 16] = [
        1e21,
        1e-7,
        -0.0,
        0.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e-6,
        999_999_999_999_999_900_000.0,
        5e-324,
        f64::MAX,
        0.1 + 0.2,
        -1e21,
        123_456_789_012_345_680_000.0,
        9_007_199_254_740_993.0,
        0.000_001_5,
    ];
    match kind {
        0 => rng.below(10) as f64,
        1 => rng.below(2001) as f64 - 1000.0,
        2 => (rng.next_u64() >> rng.below(64)) as f64 * if rng.below(2) == 0 { 1.0 } else { -1.0 },
        3 => (rng.below(2_000_000) as f64 - 1_000_000.0) / 1000.0,
        4 => loop {
            let v = f64::from_bits(rng.next_u64());
            if v.is_finite() {
                break v;
            }
        },
        5 => rng.next_u64() as f64 / u64::MAX as f64 * 10f64.powi(rng.below(50) as i32 - 25),
        _ => SPECIAL[rng.below(SPECIAL.len())],
    }
}

fn gen_array(rng: &mut SplitMix64) -> Vec<f64> {
    let len = match rng.below(6) {
        0 => rng.below(7),
        1 => 7 + rng.below(20),
        2 => 95 + rng.below(12),
        3 => 150,
        _ => rng.below(151),
    };
    // Mostly one kind per array (so columns line up and grouping happens), some mixed.
    let kind = rng.below(7);
    let mixed = rng.below(4) == 0;
    (0..len)
        .map(|_| {
            let k = if mixed { rng.below(7) } else { kind };
            gen_number(rng, k)
        })
        .collect()
}

fn gen_key(rng: &mut SplitMix64) -> String {
    const ODD: [&str; 24] = [
        "'", "\"", "`", "${", "\\", "\n", "\t", "\r", "\u{8}", "\u{c}", "\u{b}", "\u{0}", "\u{1b}",
        "\u{7f}", "\u{85}", "\u{9f}", "\u{a0}", "é", "中", "😀", " ", "-", ".", "$",
    ];
    const WHOLE: [&str; 12] = [
        "__proto__",
        "",
        "0",
        "17",
        "4294967294",
        "4294967295",
        "007",
        "-1",
        "1.5",
        "statsd.bad_lines_seen",
        "toString",
        "constructor",
    ];
    let alnum = |rng: &mut SplitMix64| {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_";
        char::from(A[rng.below(A.len())])
    };
    match rng.below(8) {
        0 => WHOLE[rng.below(WHOLE.len())].to_string(),
        1 | 2 => (0..1 + rng.below(16)).map(|_| alnum(rng)).collect(),
        3 | 4 => {
            let segs = 1 + rng.below(5);
            (0..segs)
                .map(|_| {
                    (0..1 + rng.below(8))
                        .map(|_| alnum(rng))
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join([".", "-", ";", "="][rng.below(4)])
        }
        5 => {
            let mut s = String::new();
            for _ in 0..1 + rng.below(10) {
                if rng.below(2) == 0 {
                    s.push_str(ODD[rng.below(ODD.len())]);
                } else {
                    s.push(alnum(rng));
                }
            }
            s
        }
        6 => (0..55 + rng.below(20)).map(|_| alnum(rng)).collect(),
        _ => rng.below(100_000).to_string(),
    }
}

fn gen_object(rng: &mut SplitMix64) -> Vec<(String, Gen)> {
    if rng.below(3) == 0 {
        return gen_small_object(rng);
    }
    let n = match rng.below(3) {
        0 => rng.below(7),
        _ => rng.below(41),
    };
    // Etsy never mixes numbers and arrays in one table, but node does not care.
    let shape = rng.below(3);
    let mut entries: Vec<(String, Gen)> = Vec::new();
    for _ in 0..n {
        let key = gen_key(rng);
        if entries.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let array = match shape {
            0 => false,
            1 => true,
            _ => rng.below(2) == 0,
        };
        let value = if array {
            Gen::Numbers(gen_array(rng))
        } else {
            let kind = rng.below(7);
            Gen::Number(gen_number(rng, kind))
        };
        entries.push((key, value));
    }
    entries
}

/// Objects near the one-line limit: few entries, short keys and values.
fn gen_small_object(rng: &mut SplitMix64) -> Vec<(String, Gen)> {
    let mut entries: Vec<(String, Gen)> = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let mut key = gen_key(rng);
        key.truncate(
            key.char_indices()
                .nth(4 + rng.below(12))
                .map_or(key.len(), |(i, _)| i),
        );
        if entries.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let kind = rng.below(4);
        let value = if rng.below(3) == 0 {
            Gen::Numbers((0..rng.below(9)).map(|_| gen_number(rng, kind)).collect())
        } else {
            Gen::Number(gen_number(rng, kind))
        };
        entries.push((key, value));
    }
    entries
}

fn inspect_here(entries: &[(String, Gen)]) -> String {
    let mut out = String::new();
    write_object(
        &mut out,
        entries.iter().map(|(k, v)| {
            let value = match v {
                Gen::Number(x) => Value::Number(*x),
                Gen::Numbers(xs) => Value::Numbers(xs),
            };
            (k.as_bytes(), value)
        }),
    );
    out
}

/// Generated objects, node's `util.inspect` of each, and node's `String(n)` of each
/// number (keyed by the text it was sent as).
type InspectCases = (
    Vec<Vec<(String, Gen)>>,
    Vec<String>,
    HashMap<String, String>,
);

/// [`make_inspect_cases`], made once for the tests that share them.
fn inspect_cases() -> &'static InspectCases {
    static CASES: OnceLock<InspectCases> = OnceLock::new();
    CASES.get_or_init(make_inspect_cases)
}

fn make_inspect_cases() -> InspectCases {
    const OBJECTS: usize = 1500;
    let mut rng = SplitMix64(0x1e57_0b1e);
    let objects: Vec<Vec<(String, Gen)>> = (0..OBJECTS).map(|_| gen_object(&mut rng)).collect();
    let input: Vec<serde_json::Value> = objects
        .iter()
        .map(|o| {
            o.iter()
                .map(|(k, v)| match v {
                    Gen::Number(x) => json!([k, number_text(*x)]),
                    Gen::Numbers(xs) => {
                        json!([k, xs.iter().map(|&x| number_text(x)).collect::<Vec<_>>()])
                    }
                })
                .collect()
        })
        .collect();
    let out = node_json("inspect", INSPECT_JS, &json!(input));
    let inspected: Vec<String> = serde_json::from_value(out["inspected"].clone()).unwrap();
    let strings: HashMap<String, String> = serde_json::from_value(out["strings"].clone()).unwrap();
    assert_eq!(inspected.len(), OBJECTS);
    (objects, inspected, strings)
}

fn numbers(o: &[(String, Gen)]) -> impl Iterator<Item = f64> + '_ {
    o.iter().flat_map(|(_, v)| match v {
        Gen::Number(x) => std::slice::from_ref(x).iter().copied(),
        Gen::Numbers(xs) => xs.iter().copied(),
    })
}

/// Numbers `js_number_string` prints differently from node's `String(n)`.
fn misprinted(objects: &[Vec<(String, Gen)>], strings: &HashMap<String, String>) -> Vec<String> {
    let mut bad: Vec<String> = objects
        .iter()
        .flat_map(|o| numbers(o))
        .filter(|&v| js_number_string(v) != strings[&number_text(v)])
        .map(|v| {
            format!(
                "{} (node {}, ours {})",
                number_text(v),
                strings[&number_text(v)],
                js_number_string(v)
            )
        })
        .collect();
    bad.sort();
    bad.dedup();
    bad
}

#[test]
fn inspect_matches_node_on_generated_objects() {
    let (objects, inspected, strings) = inspect_cases();
    // Objects holding a number `jsnum` misprints are left to the test below, so this
    // one checks the layout and quoting of everything else.
    let misprints =
        |o: &[(String, Gen)]| numbers(o).any(|v| js_number_string(v) != strings[&number_text(v)]);
    let (mut compared, mut single_line, mut grouped, mut more_items) = (0, 0, 0, 0);
    for (i, (o, want)) in objects.iter().zip(inspected.iter()).enumerate() {
        if misprints(o) {
            continue;
        }
        let got = inspect_here(&js_order(o));
        assert_same(&got, want, &format!("object {i}"));
        compared += 1;
        single_line += usize::from(!want.contains('\n') && want != "{}");
        grouped += usize::from(
            want.lines()
                .any(|l| l.starts_with("    ") && l.contains(", ") && !l.contains(": ")),
        );
        more_items += usize::from(want.contains("more item"));
    }
    eprintln!(
        "inspect: {compared} of {} objects compared, all equal to node's ({single_line} on \
         one line, {grouped} with aligned columns, {more_items} with `... more items`)",
        objects.len()
    );
    // The generator reaches the layouts this is about.
    assert!(
        compared > 1000 && single_line > 200 && grouped > 200 && more_items > 200,
        "{compared} {single_line} {grouped} {more_items}"
    );
}

#[test]
fn inspect_numbers_print_as_node_prints_them() {
    let (objects, _, strings) = inspect_cases();
    let bad = misprinted(objects, strings);
    assert!(
        bad.is_empty(),
        "jsnum::js_number_string differs from node's String(n) on {} numbers, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------
// command parsing and deletion, against node and Etsy's own module

const PARSE_JS: &str = r#"
const { StringDecoder } = require('string_decoder');
const chunks = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = chunks.map((bytes) => {
  // What mgmt_server.js does with a 'data' event on a stream set to 'ascii'.
  const data = new StringDecoder('ascii').write(Buffer.from(bytes));
  return data.trim().split(" ");
});
process.stdout.write(JSON.stringify(out));
"#;

/// Etsy's switch over `cmd` (with our `sets`/`delsets`), from node's words.
fn etsy_reading(words: &[String]) -> MgmtCommand {
    let params = words[1..].to_vec();
    match words[0].as_str() {
        "help" => MgmtCommand::Help,
        "config" => MgmtCommand::Config,
        "health" => MgmtCommand::Health(params.first().and_then(
            |p| match p.to_lowercase().as_str() {
                "up" => Some(Health::Up),
                "down" => Some(Health::Down),
                _ => None,
            },
        )),
        "stats" => MgmtCommand::Stats,
        "counters" => MgmtCommand::Dump(Kind::Counters),
        "timers" => MgmtCommand::Dump(Kind::Timers),
        "gauges" => MgmtCommand::Dump(Kind::Gauges),
        "sets" => MgmtCommand::Dump(Kind::Sets),
        "delcounters" => MgmtCommand::Delete(Kind::Counters, params),
        "deltimers" => MgmtCommand::Delete(Kind::Timers, params),
        "delgauges" => MgmtCommand::Delete(Kind::Gauges, params),
        "delsets" => MgmtCommand::Delete(Kind::Sets, params),
        "quit" => MgmtCommand::Quit,
        _ => MgmtCommand::Unknown,
    }
}

#[test]
fn commands_are_read_as_node_reads_them() {
    const WORDS: [&[u8]; 14] = [
        b"help",
        b"health",
        b"stats",
        b"counters",
        b"delcounters",
        b"delsets",
        b"quit",
        b"up",
        b"DOWN",
        b"Up",
        b"a.b.*",
        b"config",
        b"hElp",
        b"x",
    ];
    const SEPS: [&[u8]; 12] = [
        b" ", b"  ", b"\t", b"\r\n", b"\n", b"\x0b", b"\x0c", b"\xa0", b"\x89", b"\x8a", b"\x85",
        b"\x1f",
    ];
    let mut rng = SplitMix64(0xc0_ffee);
    let chunks: Vec<Vec<u8>> = (0..2000)
        .map(|_| {
            let mut c = Vec::new();
            for _ in 0..rng.below(6) {
                match rng.below(4) {
                    0 | 1 => c.extend_from_slice(WORDS[rng.below(WORDS.len())]),
                    2 => c.extend_from_slice(SEPS[rng.below(SEPS.len())]),
                    _ => c.push(rng.next_u64() as u8),
                }
            }
            c
        })
        .collect();
    let out = node_json("mgmt-parse", PARSE_JS, &json!(chunks));
    for (chunk, words) in chunks.iter().zip(out.as_array().unwrap()) {
        let words: Vec<String> = serde_json::from_value(words.clone()).unwrap();
        assert_eq!(
            parse_command(chunk),
            etsy_reading(&words),
            "{chunk:?} -> {words:?}"
        );
    }
}

const DELETE_JS: &str = r#"
const mgmt = require(process.env.STATSD_DIR + '/lib/mgmt_console.js');
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = cases.map(([names, buckets]) => {
  const table = {};
  for (const n of names) table[n] = 1;
  let reply = '';
  mgmt.delete_stats(table, buckets, { write: (s) => { reply += s; } });
  return [reply, Object.keys(table)];
});
process.stdout.write(JSON.stringify(out));
"#;

#[test]
fn deletes_match_etsys_mgmt_console() {
    const SEGS: [&str; 6] = ["a", "b", "ab", "1", "42", "x-y"];
    let mut rng = SplitMix64(0xde1e7e);
    let name = |rng: &mut SplitMix64| -> String {
        (0..1 + rng.below(3))
            .map(|_| SEGS[rng.below(SEGS.len())])
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut cases = Vec::new();
    for _ in 0..600 {
        let mut names: Vec<String> = Vec::new();
        for _ in 0..rng.below(12) {
            let n = name(&mut rng);
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let buckets: Vec<String> = (0..rng.below(5))
            .map(|_| match rng.below(6) {
                0 | 1 => format!("{}.*", name(&mut rng)),
                2 => name(&mut rng),
                3 => ["toString", "", ".*", "*", "a.", "__proto__"][rng.below(6)].to_string(),
                _ => match names.get(rng.below(names.len().max(1))) {
                    Some(n) => n.clone(),
                    None => name(&mut rng),
                },
            })
            .collect();
        cases.push((names, buckets));
    }
    let out = node_json("mgmt-delete", DELETE_JS, &json!(cases));
    let mut deleted_any = 0;
    for ((names, buckets), etsy) in cases.iter().zip(out.as_array().unwrap()) {
        let (reply, left): (String, Vec<String>) = serde_json::from_value(etsy.clone()).unwrap();
        let ordered: Vec<String> =
            js_order(&names.iter().map(|n| (n.clone(), ())).collect::<Vec<_>>())
                .into_iter()
                .map(|(n, ())| n)
                .collect();
        let as_bytes: Vec<&[u8]> = ordered.iter().map(|n| n.as_bytes()).collect();
        let (deleted, text) = delete_reply(&as_bytes, buckets);
        assert_eq!(text, reply, "{ordered:?} {buckets:?}");
        let kept: Vec<String> = (0..ordered.len())
            .filter(|i| !deleted.contains(i))
            .map(|i| ordered[i].clone())
            .collect();
        assert_eq!(kept, left, "{ordered:?} {buckets:?}");
        deleted_any += usize::from(!deleted.is_empty());
    }
    assert!(deleted_any > 200, "{deleted_any}");
}

// ---------------------------------------------------------------------------------
// a live Etsy statsd 0.9.0

/// Etsy's tables as it builds them from datagrams, in insertion order.
#[derive(Default)]
struct Model {
    counters: Vec<(String, f64)>,
    timers: Vec<(String, Vec<f64>)>,
    gauges: Vec<(String, f64)>,
    bad_lines: u64,
    lines: u64,
}

fn slot<'m, T: Default>(table: &'m mut Vec<(String, T)>, key: &str) -> &'m mut T {
    let at = match table.iter().position(|(k, _)| k == key) {
        Some(at) => at,
        None => {
            table.push((key.to_string(), T::default()));
            table.len() - 1
        }
    };
    &mut table[at].1
}

/// Etsy's `sanitizeKeyName`: whitespace runs to `_`, `/` to `-`, then only
/// `[a-zA-Z_\-0-9.;=]` kept (ASCII input only, as this test sends).
fn sanitize(key: &str) -> String {
    let mut out = String::new();
    let mut in_space = false;
    for c in key.chars() {
        if c.is_ascii_whitespace() {
            if !in_space {
                out.push('_');
            }
            in_space = true;
            continue;
        }
        in_space = false;
        match c {
            '/' => out.push('-'),
            c if c.is_ascii_alphanumeric() || "_-.;=".contains(c) => out.push(c),
            _ => {}
        }
    }
    out
}

/// `isNumber`: non-empty and not NaN to `Number()` (the plain decimals this test sends).
fn number(s: &str) -> Option<f64> {
    if s.is_empty() {
        return None;
    }
    s.trim().parse::<f64>().ok().filter(|_| s.trim() == s)
}

impl Model {
    fn new() -> Model {
        let mut m = Model::default();
        for k in [
            "statsd.bad_lines_seen",
            "statsd.packets_received",
            "statsd.metrics_received",
        ] {
            m.counters.push((k.to_string(), 0.0));
        }
        m
    }

    fn bad_line(&mut self) {
        self.bad_lines += 1;
        *slot(&mut self.counters, "statsd.bad_lines_seen") += 1.0;
    }

    /// `handlePacket` for the datagrams this test sends (ASCII, simple numbers).
    fn datagram(&mut self, d: &str) {
        *slot(&mut self.counters, "statsd.packets_received") += 1.0;
        for line in d.split('\n').filter(|l| !l.is_empty()) {
            self.lines += 1;
            *slot(&mut self.counters, "statsd.metrics_received") += 1.0;
            let mut bits = line.split("|#");
            let body = bits.next().unwrap();
            let tags: Vec<String> = match bits.next() {
                Some(t) if !t.is_empty() => t
                    .split(',')
                    .map(|t| t.replacen(';', "_", 1).replacen(':', "=", 1))
                    .collect(),
                _ => Vec::new(),
            };
            let mut samples = body.split(':');
            let mut key = samples.next().unwrap().to_string();
            for t in &tags {
                key.push(';');
                key.push_str(t);
            }
            let key = sanitize(&key);
            let samples: Vec<&str> = samples.collect();
            for sample in if samples.is_empty() {
                vec!["1"]
            } else {
                samples
            } {
                let f: Vec<&str> = sample.split('|').collect();
                let rate = match f.get(2) {
                    None => Some(1.0),
                    Some(r) => r.strip_prefix('@').and_then(number).filter(|r| *r >= 0.0),
                };
                let (Some(kind), Some(rate)) = (f.get(1), rate) else {
                    self.bad_line();
                    continue;
                };
                let value = number(f[0]);
                match *kind {
                    "ms" => match value.filter(|v| *v >= 0.0) {
                        Some(v) => slot(&mut self.timers, &key).push(v),
                        None => self.bad_line(),
                    },
                    "g" => match value {
                        Some(v) => {
                            let g = slot(&mut self.gauges, &key);
                            let delta = f[0].starts_with(['+', '-']);
                            if *g != 0.0 && !g.is_nan() && delta {
                                *g += v;
                            } else {
                                *g = v;
                            }
                        }
                        None => self.bad_line(),
                    },
                    "s" => {}
                    _ => match value {
                        Some(v) => {
                            let c = slot(&mut self.counters, &key);
                            if *c == 0.0 || c.is_nan() {
                                *c = 0.0;
                            }
                            *c += v * (1.0 / rate);
                        }
                        None => self.bad_line(),
                    },
                }
            }
        }
    }
}

fn dump<T>(table: &[(String, T)], value: impl Fn(&T) -> Value<'_>) -> String {
    let ordered: Vec<(&String, &T)> = {
        let refs: Vec<(String, usize)> = table
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        js_order(&refs)
            .into_iter()
            .map(|(_, i)| (&table[i].0, &table[i].1))
            .collect()
    };
    let mut out = String::new();
    write_dump_reply(
        &mut out,
        ordered.iter().map(|(k, v)| (k.as_bytes(), value(v))),
    );
    out
}

struct Etsy {
    child: Child,
    mgmt: String,
    udp: String,
    dir: PathBuf,
}

impl Drop for Etsy {
    fn drop(&mut self) {
        // Child::kill signals this process by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Etsy {
    /// Starts statsd with no flush during the test; retries when a port was taken.
    fn start() -> Etsy {
        let mut last = String::new();
        for _ in 0..3 {
            match Etsy::try_start() {
                Ok(e) => return e,
                Err(log) if log.contains("EADDRINUSE") => last = log,
                Err(log) => panic!("statsd did not start:\n{log}"),
            }
        }
        panic!("ports kept being taken:\n{last}");
    }

    fn try_start() -> Result<Etsy, String> {
        let dir = temp_dir("statsd-mgmt");
        // A graphite port nobody flushes to: the flush interval outlasts the test.
        let graphite = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp_port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mgmt_port = free_port();
        let cfg = json!({
            "port": udp_port, "address": "127.0.0.1",
            "mgmt_port": mgmt_port, "mgmt_address": "127.0.0.1",
            "graphiteHost": "127.0.0.1", "graphitePort": graphite.local_addr().unwrap().port(),
            "flushInterval": 3_600_000,
        });
        let cfg_path = dir.join("config.js");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("statsd.log")).unwrap();
        let child = Command::new(node())
            .arg(statsd_dir().join("stats.js"))
            .arg(&cfg_path)
            .current_dir(&dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start node statsd");
        let mut etsy = Etsy {
            child,
            mgmt: format!("127.0.0.1:{mgmt_port}"),
            udp: format!("127.0.0.1:{udp_port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = etsy.child.try_wait() {
                return Err(format!("statsd exited ({status}):\n{}", etsy.log()));
            }
            if TcpStream::connect(&etsy.mgmt).is_ok() {
                return Ok(etsy);
            }
            if Instant::now() > deadline {
                return Err(format!("no mgmt port within 20s:\n{}", etsy.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("statsd.log")).unwrap_or_default()
    }

    /// Sends one command on its own connection; reads until the reply ends with `end`.
    fn ask(&self, command: &str, end: &str) -> String {
        let mut s = TcpStream::connect(&self.mgmt).expect("connect to mgmt");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s.write_all(command.as_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while !got.ends_with(end.as_bytes()) {
            assert!(
                Instant::now() < deadline,
                "{command:?}: no reply ending in {end:?} within 10s; got {:?}\n{}",
                String::from_utf8_lossy(&got),
                self.log()
            );
            match s.read(&mut buf) {
                Ok(0) => panic!("{command:?}: statsd closed the connection"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("{command:?}: {e}"),
            }
        }
        String::from_utf8(got).unwrap()
    }
}

/// `Math.round(Date.now() / 1000)`.
fn now_s() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    (ms as f64 / 1000.0).round() as i64
}

/// Asks `stats` and compares it by shape with ours: the same lines in the same order,
/// counts equal, and each clock-derived value within the window it must fall in
/// (`started`, `last_msg`: the seconds around those events).
fn check_stats(etsy: &Etsy, bad_lines: u64, started: (i64, i64), last_msg: (i64, i64)) {
    let asked = (now_s(), ());
    let reply = etsy.ask("stats", "END\n\n");
    let asked = (asked.0, now_s());
    let mut ours = String::new();
    write_stats_reply(
        &mut ours,
        &StatsReport {
            now_s: asked.1,
            startup_s: started.0,
            last_msg_seen_s: last_msg.0,
            bad_lines_seen: bad_lines,
            graphite: Some(GraphiteWriteStats {
                last_exception_s: 0,
                last_flush_s: started.0,
                flush_time_ms: 0,
                flush_length_units: 0,
            }),
        },
    );
    let split = |s: &str| -> Vec<(String, String)> {
        s.lines()
            .map(|l| match l.split_once(": ") {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect()
    };
    let (e, o) = (split(&reply), split(&ours));
    let names = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(names(&e), names(&o), "etsy:\n{reply}\nours:\n{ours}");
    assert!(reply.ends_with("END\n\n") && ours.ends_with("END\n\n"));
    // Seconds from an event in `t` to the command: at least `asked.0 - t.1`, at most
    // `asked.1 - t.0`.
    let since = |t: (i64, i64)| (asked.0 - t.1)..=(asked.1 - t.0);
    for ((name, ev), (_, ov)) in e.iter().zip(&o) {
        if name == "END" || name.is_empty() {
            continue;
        }
        let v: i64 = ev
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {ev:?} is not an integer"));
        let ok = match name.as_str() {
            "uptime" | "graphite.last_flush" => since(started).contains(&v),
            "messages.last_msg_seen" => since(last_msg).contains(&v),
            "graphite.last_exception" => (asked.0..=asked.1).contains(&v),
            _ => ev == ov,
        };
        assert!(ok, "{name}: etsy {ev}, ours {ov}\n{reply}");
    }
}

#[test]
fn replies_match_a_live_etsy_statsd() {
    let before_start = now_s();
    let etsy = Etsy::start();
    let started = (before_start, now_s());

    assert_eq!(etsy.ask("help\n", "\n\n"), HELP_REPLY);
    assert_eq!(etsy.ask("nonsense\r\n", "\n"), ERROR_REPLY);
    // Not Etsy 0.9.0's commands: our extensions.
    assert_eq!(etsy.ask("sets", "\n"), ERROR_REPLY);
    assert_eq!(etsy.ask("delsets a", "\n"), ERROR_REPLY);

    let mut health = Health::Up;
    for command in [
        "health",
        "health DOWN",
        "health",
        "health sideways",
        "health  up",
        "health Up\n",
    ] {
        if let MgmtCommand::Health(change) = parse_command(command.as_bytes()) {
            health = change.unwrap_or(health);
        } else {
            panic!("{command:?} is a health command");
        }
        let mut ours = String::new();
        write_health_reply(&mut ours, health);
        assert_eq!(etsy.ask(command, "\n"), ours, "{command:?}");
    }

    check_stats(&etsy, 0, started, started);
    let mut model = Model::new();
    assert_eq!(
        etsy.ask("counters", "END\n\n"),
        dump(&model.counters, |&v| Value::Number(v))
    );
    assert_eq!(etsy.ask("timers", "END\n\n"), "{}\nEND\n\n");

    // State worth printing: quoting, numeric keys first, rates, many timer values,
    // gauge deltas, bad lines.
    let mut datagrams: Vec<String> = [
        "a.b:1|c\na.c:2|c|@0.3\nab:5|c\n42:1|c\n7:2|c\nfoo_bar:1|c",
        "a.b:3|c:4|c\nnocolon\nbad:x|c\nrate:1|c|@bad\nweird key/x:1|c",
        "g1:10|g\ng1:+5|g\ng2:-3|g\ng3:0|g\ng3:+2|g\ng4:1e21|g\ng5:-0|g",
        "a.x.y:1|c|#tag:1,t2\nsets:1|s\nunknown:3|zz\nneg:-1|ms",
    ]
    .map(String::from)
    .to_vec();
    let mut rng = SplitMix64(7);
    for i in 0..12 {
        let mut d = String::new();
        for j in 0..20 {
            let v = rng.below(100_000) as f64 / [1.0, 10.0, 1000.0][j % 3];
            d.push_str(&format!("t.{}:{}|ms\n", i % 2, v));
        }
        datagrams.push(d);
    }
    for i in 0..25 {
        datagrams.push(format!("many.counter_{i}:{}|c", i * 3));
    }
    let sent_at = now_s();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in &datagrams {
        udp.send_to(d.as_bytes(), &etsy.udp).unwrap();
        model.datagram(d);
    }
    let last_msg = (sent_at, now_s());

    // Bounded wait until statsd has read every datagram (loopback UDP does not drop
    // these few, but they are read asynchronously).
    let counters = dump(&model.counters, |&v| Value::Number(v));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = etsy.ask("counters", "END\n\n");
    while got != counters && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        got = etsy.ask("counters", "END\n\n");
    }
    assert_eq!(got, counters);
    assert!(counters.contains("\n  '42': 1,") && counters.contains("'a.c': 6.666666666666667"));
    let timers = dump(&model.timers, |v| Value::Numbers(v));
    assert_eq!(etsy.ask("timers", "END\n\n"), timers);
    assert!(timers.contains("more items"), "{timers}");
    assert_eq!(
        etsy.ask("gauges", "END\n\n"),
        dump(&model.gauges, |&v| Value::Number(v))
    );
    check_stats(&etsy, model.bad_lines, started, last_msg);
    assert!(model.bad_lines >= 2 && model.lines > 40);

    // Deletion: folders, exact names, misses, a name that is an Object.prototype one.
    let command = "delcounters a.* 42 nope toString a.b many.counter_1 many.*";
    let MgmtCommand::Delete(Kind::Counters, buckets) = parse_command(command.as_bytes()) else {
        panic!("{command:?} is a delete");
    };
    let ordered: Vec<(String, f64)> = js_order(&model.counters);
    let names: Vec<&[u8]> = ordered.iter().map(|(k, _)| k.as_bytes()).collect();
    let (deleted, reply) = delete_reply(&names, &buckets);
    assert_eq!(etsy.ask(command, "END\n\n"), reply);
    assert!(reply.contains("deleted: toString\n") && reply.contains("metric nope not found\n"));
    let deleted_names: Vec<String> = deleted.iter().map(|&i| ordered[i].0.clone()).collect();
    model.counters.retain(|(k, _)| !deleted_names.contains(k));
    assert_eq!(
        etsy.ask("counters", "END\n\n"),
        dump(&model.counters, |&v| Value::Number(v))
    );
    assert_eq!(etsy.ask("delcounters", "END\n\n"), "END\n\n");

    // `quit` closes the connection without a reply.
    let mut s = TcpStream::connect(&etsy.mgmt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"quit\r\n").unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("statsd closes after quit");
    assert!(rest.is_empty(), "{rest:?}");
}

//! Etsy statsd 0.9.0's management console (`mgmt_port`: `lib/mgmt_server.js`, the
//! command switch in `stats.js`, `lib/mgmt_console.js`) as pure functions: a chunk of
//! bytes in, a [`Command`] out, and each command's reply written from plain values.
//! Operators' health checks and scripts parse these replies, so they are Etsy's bytes.
//! The socket and the gathering of state from the shards live elsewhere; nothing here
//! does I/O or reads a clock.
//!
//! What Etsy does, and so what this does:
//! - Every TCP `data` event is one command: the chunk is decoded as node's `ascii`
//!   (each byte's high bit cleared), trimmed of JavaScript whitespace, split on single
//!   spaces; the first word is the command, the rest its parameters (empty ones kept).
//!   A client that sends two commands in one segment gets `ERROR\n`, as from Etsy.
//! - `help`, `health [up|down]`, `stats`, `counters`/`timers`/`gauges` (the table as
//!   node's `util.inspect` prints it, see [`super::inspect`]), `delcounters`/
//!   `deltimers`/`delgauges NAME...` (exact names, `prefix.*` folders), `config`, `quit`;
//!   anything else `ERROR\n`.
//!
//! Extensions, not in Etsy 0.9.0 (which answers `ERROR\n` to them): `sets` prints an
//! object of set name -> number of distinct members (the members themselves are kept
//! only as hashes), and `delsets` deletes sets by Etsy's matching rules. `help` stays
//! Etsy's exact text and does not list them.

use std::fmt::Write as _;

use super::inspect::{self, Value};
use super::GraphiteWriteStats;
use crate::protocol::jsnum::js_trim;

/// `help`'s reply, Etsy's text.
pub const HELP_REPLY: &str = "Commands: stats, counters, timers, gauges, delcounters, \
                              deltimers, delgauges, health, config, quit\n\n";

/// The reply to an unknown command.
pub const ERROR_REPLY: &str = "ERROR\n";

/// What ends the `stats`, dump and delete replies.
pub const END: &str = "END\n\n";

/// A metric table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `counters`.
    Counters,
    /// `timers`.
    Timers,
    /// `gauges`.
    Gauges,
    /// `sets` (an extension).
    Sets,
}

/// The health a node reports (Etsy's `healthStatus`, `up` unless configured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// `up`.
    Up,
    /// `down`: load balancers take the node out.
    Down,
}

impl Health {
    /// The word Etsy prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// One console command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `help`: reply [`HELP_REPLY`].
    Help,
    /// `config`: reply [`write_config_reply`].
    Config,
    /// `health`: set the health if a state is given, then reply [`write_health_reply`].
    /// `Some` for a first parameter of `up` or `down` in any case; other parameters
    /// change nothing.
    Health(Option<Health>),
    /// `stats`: reply [`write_stats_reply`].
    Stats,
    /// `counters`, `timers`, `gauges`, `sets`: reply [`write_dump_reply`].
    Dump(Kind),
    /// `delcounters`, `deltimers`, `delgauges`, `delsets` with their parameters (names
    /// or `prefix.*`): apply and reply with [`delete_reply`].
    Delete(Kind, Vec<String>),
    /// `quit`: close the connection, no reply.
    Quit,
    /// Anything else: reply [`ERROR_REPLY`].
    Unknown,
}

/// Reads one `data` chunk as Etsy does: `data.trim().split(" ")` on the chunk decoded as
/// node's `ascii`, the first word the command.
pub fn parse_command(chunk: &[u8]) -> Command {
    let ascii: Vec<u8> = chunk.iter().map(|b| b & 0x7f).collect();
    let text = std::str::from_utf8(js_trim(&ascii)).expect("7-bit bytes are UTF-8");
    let mut words = text.split(' ');
    let command = words.next().unwrap_or_default();
    let params = || words.map(str::to_owned).collect::<Vec<String>>();
    match command {
        "help" => Command::Help,
        "config" => Command::Config,
        "health" => Command::Health(match params().first() {
            Some(p) if p.eq_ignore_ascii_case("up") => Some(Health::Up),
            Some(p) if p.eq_ignore_ascii_case("down") => Some(Health::Down),
            _ => None,
        }),
        "stats" => Command::Stats,
        "counters" => Command::Dump(Kind::Counters),
        "timers" => Command::Dump(Kind::Timers),
        "gauges" => Command::Dump(Kind::Gauges),
        "sets" => Command::Dump(Kind::Sets),
        "delcounters" => Command::Delete(Kind::Counters, params()),
        "deltimers" => Command::Delete(Kind::Timers, params()),
        "delgauges" => Command::Delete(Kind::Gauges, params()),
        "delsets" => Command::Delete(Kind::Sets, params()),
        "quit" => Command::Quit,
        _ => Command::Unknown,
    }
}

/// Appends `health`'s reply for the health after the command.
pub fn write_health_reply(out: &mut String, health: Health) {
    out.push_str("health: ");
    out.push_str(health.as_str());
    out.push('\n');
}

/// What `stats` reports. Times are unix seconds as Etsy keeps them
/// (`Math.round(ms / 1000)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsReport {
    /// The time of the command.
    pub now_s: i64,
    /// When the process started.
    pub startup_s: i64,
    /// When the last datagram was read (the start time before any).
    pub last_msg_seen_s: i64,
    /// Bad lines since the start (never reset).
    pub bad_lines_seen: u64,
    /// The graphite backend's status; `None` when it is not configured.
    pub graphite: Option<GraphiteWriteStats>,
}

/// Appends `stats`'s reply: `uptime`, the `messages` group, then the graphite backend's
/// `backend_status` lines in its key order, then [`END`]. Every stat whose name starts
/// with `last_` is printed as seconds before now, as Etsy's `stat_writer` does; so
/// `graphite.last_exception` with no exception (0) prints `now` itself.
pub fn write_stats_reply(out: &mut String, r: &StatsReport) {
    let _ = writeln!(out, "uptime: {}", r.now_s - r.startup_s);
    let _ = writeln!(
        out,
        "messages.last_msg_seen: {}",
        r.now_s - r.last_msg_seen_s
    );
    let _ = writeln!(out, "messages.bad_lines_seen: {}", r.bad_lines_seen);
    if let Some(g) = &r.graphite {
        let _ = writeln!(out, "graphite.last_flush: {}", r.now_s - g.last_flush_s);
        let _ = writeln!(
            out,
            "graphite.last_exception: {}",
            r.now_s - g.last_exception_s
        );
        let _ = writeln!(out, "graphite.flush_time: {}", g.flush_time_ms);
        let _ = writeln!(out, "graphite.flush_length: {}", g.flush_length_units);
    }
    out.push_str(END);
}

/// Appends a dump command's reply: `util.inspect(table)`, a newline, [`END`]. Entries in
/// the table's `for..in` order (see [`super::inspect`]); for `sets`, each set's number
/// of distinct members.
pub fn write_dump_reply<'a, I>(out: &mut String, entries: I)
where
    I: IntoIterator<Item = (&'a [u8], Value<'a>)>,
{
    inspect::write_object(out, entries);
    out.push('\n');
    out.push_str(END);
}

/// The names of `Object.prototype`'s properties in node 20: Etsy tests a requested name
/// with `bucket in table`, which finds these on every object, so `delcounters toString`
/// answers `deleted: toString` (and deletes nothing).
const INHERITED_NAMES: [&str; 12] = [
    "constructor",
    "__defineGetter__",
    "__defineSetter__",
    "hasOwnProperty",
    "__lookupGetter__",
    "__lookupSetter__",
    "isPrototypeOf",
    "propertyIsEnumerable",
    "toString",
    "valueOf",
    "__proto__",
    "toLocaleString",
];

/// A delete command (`mgmt_console.delete_stats`) over a table's `names`, in its
/// `for..in` order: returns the indexes into `names` to delete, in deletion order, each
/// once, and the reply.
///
/// Each bucket in turn, over what the buckets before it left: an exact name matches
/// itself; a bucket ending in `.*` also matches every name that starts with it less the
/// `*` (its folder and subfolders), in table order. Each match is replied `deleted:
/// NAME\n` (a name matched both ways is replied twice, as Etsy does), a bucket with none
/// `metric BUCKET not found\n`; then [`END`].
pub fn delete_reply(names: &[&[u8]], buckets: &[String]) -> (Vec<usize>, String) {
    let mut live = vec![true; names.len()];
    let mut deleted = Vec::new();
    let mut reply = String::new();
    for bucket in buckets {
        let b = bucket.as_bytes();
        let mut matched = false;
        let exact = (0..names.len()).find(|&i| live[i] && names[i] == b);
        if exact.is_some() || INHERITED_NAMES.contains(&bucket.as_str()) {
            matched = true;
            let _ = writeln!(reply, "deleted: {bucket}");
        }
        let folder_matches: Vec<usize> = match b.strip_suffix(b"*") {
            Some(folder) if b.ends_with(b".*") => (0..names.len())
                .filter(|&i| live[i] && names[i].starts_with(folder))
                .collect(),
            _ => Vec::new(),
        };
        for &i in &folder_matches {
            matched = true;
            let _ = writeln!(reply, "deleted: {}", String::from_utf8_lossy(names[i]));
        }
        if !matched {
            let _ = writeln!(reply, "metric {bucket} not found");
        }
        for i in exact.into_iter().chain(folder_matches) {
            if live[i] {
                live[i] = false;
                deleted.push(i);
            }
        }
    }
    reply.push_str(END);
    (deleted, reply)
}

/// One top-level property of the config as `config` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigValue {
    /// A value that is not an object, as JavaScript turns it into a string
    /// (`String(v)`: numbers by [`crate::protocol::jsnum::js_number_string`], `true`).
    Scalar(String),
    /// An object's own properties, each `String(v)`; an array's are its indexes
    /// (`percentThreshold > 0: 90`), and `null` has none.
    Entries(Vec<(String, String)>),
}

/// Appends `config`'s reply (Etsy's `helpers.writeConfig`): an empty line, then `name:
/// value` per scalar and `name > key: value` per entry of an object, in order. Etsy ends
/// it with no `END`.
pub fn write_config_reply(out: &mut String, props: &[(String, ConfigValue)]) {
    out.push('\n');
    for (name, value) in props {
        match value {
            ConfigValue::Scalar(v) => {
                let _ = writeln!(out, "{name}: {v}");
            }
            ConfigValue::Entries(entries) => {
                for (key, v) in entries {
                    let _ = writeln!(out, "{name} > {key}: {v}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse() {
        let cases: &[(&[u8], Command)] = &[
            (b"help", Command::Help),
            (b" help\r\n", Command::Help),
            (b"\x0b\x0chelp\xa0", Command::Help),
            (b"HELP", Command::Unknown),
            (b"", Command::Unknown),
            (b"help\nstats\n", Command::Unknown),
            (b"\xe8elp", Command::Help),
            (b"health", Command::Health(None)),
            (b"health UP\n", Command::Health(Some(Health::Up))),
            (b"health down now", Command::Health(Some(Health::Down))),
            (b"health  down", Command::Health(None)),
            (b"health sideways", Command::Health(None)),
            (b"stats", Command::Stats),
            (b"sets", Command::Dump(Kind::Sets)),
            (b"delcounters", Command::Delete(Kind::Counters, vec![])),
            (
                b"delgauges a  b.*\n",
                Command::Delete(Kind::Gauges, words(&["a", "", "b.*"])),
            ),
            (b"deltimers\ta", Command::Unknown),
            (b"quit\r\n", Command::Quit),
        ];
        for (chunk, expected) in cases {
            assert_eq!(
                &parse_command(chunk),
                expected,
                "{:?}",
                String::from_utf8_lossy(chunk)
            );
        }
    }

    fn check_delete(names: &[&str], buckets: &[&str], deleted: &[&str], reply: &str) {
        let n: Vec<&[u8]> = names.iter().map(|s| s.as_bytes()).collect();
        let (idx, text) = delete_reply(&n, &words(buckets));
        let got: Vec<&str> = idx.iter().map(|&i| names[i]).collect();
        assert_eq!(
            (got.as_slice(), text.as_str()),
            (deleted, reply),
            "{buckets:?}"
        );
    }

    #[test]
    fn delete() {
        let names = ["a.b", "a.c.d", "ab", "x", "a.*"];
        check_delete(&names, &[], &[], "END\n\n");
        check_delete(&names, &["x"], &["x"], "deleted: x\nEND\n\n");
        check_delete(
            &names,
            &["a.*", "a.b", "nope"],
            &["a.*", "a.b", "a.c.d"],
            "deleted: a.*\ndeleted: a.b\ndeleted: a.c.d\ndeleted: a.*\n\
             metric a.b not found\nmetric nope not found\nEND\n\n",
        );
        check_delete(
            &names,
            &["toString", "a.b.*", ".*", ""],
            &[],
            "deleted: toString\nmetric a.b.* not found\nmetric .* not found\n\
             metric  not found\nEND\n\n",
        );
    }

    #[test]
    fn stats() {
        let mut out = String::new();
        let g = GraphiteWriteStats {
            last_exception_s: 0,
            last_flush_s: 990,
            flush_time_ms: 3,
            flush_length_units: 1234,
        };
        write_stats_reply(
            &mut out,
            &StatsReport {
                now_s: 1000,
                startup_s: 900,
                last_msg_seen_s: 998,
                bad_lines_seen: 7,
                graphite: Some(g),
            },
        );
        assert_eq!(
            out,
            "uptime: 100\nmessages.last_msg_seen: 2\nmessages.bad_lines_seen: 7\n\
             graphite.last_flush: 10\ngraphite.last_exception: 1000\n\
             graphite.flush_time: 3\ngraphite.flush_length: 1234\nEND\n\n"
        );
    }

    #[test]
    fn config() {
        let mut out = String::new();
        write_config_reply(
            &mut out,
            &[
                ("port".into(), ConfigValue::Scalar("8125".into())),
                (
                    "percentThreshold".into(),
                    ConfigValue::Entries(vec![("0".into(), "90".into())]),
                ),
            ],
        );
        assert_eq!(out, "\nport: 8125\npercentThreshold > 0: 90\n");
    }
}

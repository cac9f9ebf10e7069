//! The `carbon_ch_python` ring: python carbon 1.1.10's `ConsistentHashRing` and
//! `ConsistentHashingRouter` (`carbon/hashing.py`, `carbon/routers.py`), for clusters
//! that must place metrics where a python carbon-relay (or carbonate) does.
//!
//! It differs from c-relay's `carbon_ch` ([`CarbonRing`](super::ring::CarbonRing)) in
//! how positions collide, and in the key:
//!
//! - A member is a node `(host, instance)` (the port is not hashed). Replica `i` of a
//!   node is hashed from `"%s:%d" % (node, i)`: Python's `str` of the tuple, e.g.
//!   `('10.0.0.1', None):7` or `('127.0.0.1', 'a'):7`, with Python's `repr` quoting.
//! - A position is the first two bytes of the MD5 digest, big-endian (0..=65535).
//! - **Collisions bump.** Nodes are added in config order, each replica in turn; while
//!   a replica's position is already taken (by any node, itself included), it moves
//!   up by one, without wrapping, so positions may pass 65535. Placement therefore
//!   depends on the member order, unlike c-relay, which sorts ties instead.
//! - A key goes to the first entry at or after its position (`bisect_left`), wrapping.
//!
//! **Key.** What carbon hashes: the metric name as carbon received it, tags included
//! (`a.b;x=1` whole), encoded as UTF-8; or the name `TaggedSeries.parse(name).path`
//! gives when `TAG_RELAY_NORMALIZED` is set (that normalisation is the caller's).
//! Carbon decodes each line as UTF-8 (a line that is not raises in its receiver and is
//! lost), so the caller passes valid UTF-8.
//!
//! **Walk.** Without `diverse_replicas`, `get_nodes` order: distinct nodes in the
//! order the ring meets them from the key's position; the first `replication` are
//! the replica set, and the full walk (n = member count) is every node. With
//! `diverse_replicas` carbon skips a node whose host it has already used, so its
//! replica set is the first `min(replication, hosts)` nodes of distinct hosts; our walk
//! lists those nodes first (one per host, ring order) and then the nodes it skipped
//! (ring order), so that a dead member can be passed over. [`PythonRing::replica_count`]
//! says how many of the walk carbon sends to.
//!
//! Quirks kept or dropped:
//! - carbon's walk stops one entry short of a full lap; with 100 entries per node
//!   that never hides a node, so the full walk reaches every node, as carbon's does.
//! - With one node carbon yields it twice (a special case plus the loop); its client
//!   sends to the set of destinations, so the duplicate has no effect. We list it once.

use super::ring::{md5_position, RingMember, SeenMembers};
use std::fmt::Write as _;

/// Positions each node owns: `ConsistentHashRing`'s `replica_count` default, which
/// carbon's router never changes.
const REPLICAS_PER_MEMBER: usize = 100;

/// One point on the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// 0..=65535, or above after collision bumps.
    pos: u32,
    /// Index into the member slice given to [`PythonRing::new`].
    member: u32,
}

/// A built `carbon_ch_python` ring: immutable after [`PythonRing::new`] and cheap to
/// clone.
///
/// Invariant: `entries` is sorted by position and no two entries share one (the bump
/// guarantees it).
#[derive(Debug, Clone)]
pub struct PythonRing {
    entries: Vec<Entry>,
    /// For each key position 0..=65535, the first entry at or after it; `entries.len()`
    /// wraps to the start.
    first_at: Vec<u32>,
    /// Members given to `new`, duplicates included.
    members: usize,
    /// Nodes on the ring: members less those repeating an earlier (host, instance).
    nodes: usize,
    /// Host number of each member (distinct hosts numbered in config order).
    host_of: Vec<u32>,
    /// Distinct hosts among the nodes.
    hosts: usize,
    diverse_replicas: bool,
}

impl PythonRing {
    /// Builds the ring for `members` in config (`DESTINATIONS`) order, which decides
    /// who moves on a collision. `diverse_replicas` is carbon's `DIVERSE_REPLICAS`.
    ///
    /// A member repeating an earlier member's (host, instance) gets no positions (carbon
    /// refuses such a config; validation should too). An empty `members` gives a ring
    /// that routes nothing.
    pub fn new(members: &[RingMember<'_>], diverse_replicas: bool) -> PythonRing {
        assert!(
            u32::try_from(members.len() * REPLICAS_PER_MEMBER).is_ok(),
            "carbon_ch_python ring: too many members"
        );
        let mut host_of = Vec::with_capacity(members.len());
        let mut hosts: Vec<&str> = Vec::new();
        for member in members {
            let id = match hosts.iter().position(|&h| h == member.host) {
                Some(id) => id,
                None => {
                    hosts.push(member.host);
                    hosts.len() - 1
                }
            };
            host_of.push(id as u32);
        }

        // Positions reach at most 65535 + one bump per entry.
        let mut taken = vec![false; (1 << 16) + members.len() * REPLICAS_PER_MEMBER];
        let mut entries = Vec::with_capacity(members.len() * REPLICAS_PER_MEMBER);
        let mut key = String::new();
        let mut nodes = 0;
        let mut node_hosts: Vec<u32> = Vec::new();
        for (index, member) in members.iter().enumerate() {
            let repeat = members[..index]
                .iter()
                .any(|m| m.host == member.host && m.instance == member.instance);
            if repeat {
                continue;
            }
            nodes += 1;
            if !node_hosts.contains(&host_of[index]) {
                node_hosts.push(host_of[index]);
            }
            for replica in 0..REPLICAS_PER_MEMBER {
                write_replica_key(&mut key, member, replica);
                let mut pos = u32::from(md5_position(key.as_bytes()));
                while taken[pos as usize] {
                    pos += 1;
                }
                taken[pos as usize] = true;
                entries.push(Entry {
                    pos,
                    member: index as u32,
                });
            }
        }
        entries.sort_unstable_by_key(|e| e.pos);

        let mut first_at = Vec::with_capacity(1 << 16);
        let mut at = 0usize;
        for pos in 0..=u32::from(u16::MAX) {
            while at < entries.len() && entries[at].pos < pos {
                at += 1;
            }
            first_at.push(at as u32);
        }
        PythonRing {
            entries,
            first_at,
            members: members.len(),
            nodes,
            host_of,
            hosts: node_hosts.len(),
            diverse_replicas,
        }
    }

    /// The ring position of `key`: the first two bytes of its MD5 digest, big-endian
    /// (`int(md5(key).hexdigest()[:4], 16)`).
    pub fn position(key: &[u8]) -> u16 {
        md5_position(key)
    }

    /// How many members of the walk carbon sends a key to for `replication`: at most
    /// the nodes on the ring, and with `diverse_replicas` at most one per host.
    pub fn replica_count(&self, replication: usize) -> usize {
        let cap = if self.diverse_replicas {
            self.hosts
        } else {
            self.nodes
        };
        replication.min(cap)
    }

    /// Clears `out` and pushes up to `n` distinct member indexes (into the slice given
    /// to [`PythonRing::new`]) in preference order; see the module docs for the walk.
    /// With `n` = [`replica_count`](Self::replica_count)`(replication)` these are the
    /// destinations carbon's router yields, in its order. Allocation-free once `out` has
    /// capacity for `n`.
    ///
    /// `key`: the metric name as carbon hashes it (module docs).
    pub fn route_into(&self, key: &[u8], n: usize, out: &mut Vec<usize>) {
        self.route_position_into(Self::position(key), n, out);
    }

    /// [`route_into`](Self::route_into) from a key's [`position`](Self::position);
    /// separate so that tests can start the walk at a position no key reaches.
    fn route_position_into(&self, pos: u16, n: usize, out: &mut Vec<usize>) {
        out.clear();
        let wanted = n.min(self.nodes);
        if wanted == 0 {
            return;
        }
        let len = self.entries.len();
        let mut start = self.first_at[pos as usize] as usize;
        if start == len {
            start = 0;
        }
        // carbon walks from `index` until it comes back to `index - 1`: one entry short
        // of a lap.
        let lap = (start..len).chain(0..start).take(len - 1);
        let member_at = |at: usize| self.entries[at].member as usize;
        if !self.diverse_replicas {
            if self.nodes == 1 {
                out.push(self.entries[0].member as usize);
                return;
            }
            SeenMembers::new(self.members).push_walk((start, len - 1, len), member_at, wanted, out);
            return;
        }

        // Diverse: first one node per host, as carbon yields them. The first entry of a
        // host not yet used is the first meeting of its node, so nodes need no tracking.
        let mut seen_hosts = SeenMembers::new(self.members);
        let host_of = &self.host_of;
        for at in lap {
            let member = self.entries[at].member as usize;
            let host = host_of[member] as usize;
            if seen_hosts.insert(host, || out.iter().any(|&m| host_of[m] as usize == host)) {
                out.push(member);
                if out.len() == wanted {
                    return;
                }
                if out.len() == self.hosts {
                    break;
                }
            }
        }
        // Then the nodes carbon skipped, for rerouting around dead members.
        let mut pushed = SeenMembers::new(self.members);
        for &member in out.iter() {
            // Large rings search `out` instead, which already holds these.
            pushed.insert(member, || true);
        }
        pushed.push_walk((start, len - 1, len), member_at, wanted, out);
    }

    /// The ring's entries in order, as (position, member index): carbon's
    /// `ConsistentHashRing.ring`.
    pub fn points(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.entries.iter().map(|e| (e.pos, e.member as usize))
    }

    /// Number of entries on the ring: 100 per node.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True for a ring built from no members.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Writes `"%s:%d" % ((host, instance), replica)` as Python 3 formats it.
fn write_replica_key(buf: &mut String, member: &RingMember<'_>, replica: usize) {
    buf.clear();
    buf.push('(');
    write_py_repr(buf, member.host);
    buf.push_str(", ");
    match member.instance {
        Some(instance) => write_py_repr(buf, instance),
        None => buf.push_str("None"),
    }
    // Writing into a String cannot fail.
    let _ = write!(buf, "):{replica}");
}

/// Python 3's `repr` of a `str`: single quotes unless the text holds `'` and no `"`;
/// backslash, the quote, `\t \n \r` escaped; other non-printable characters as `\xNN`,
/// `\uNNNN` or `\UNNNNNNNN`. Printability is exact for ASCII and Latin-1 and covers the
/// usual invisible characters beyond; hosts and instances are ASCII in practice.
fn write_py_repr(buf: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    buf.push(quote);
    for c in s.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c if c == quote => {
                buf.push('\\');
                buf.push(c);
            }
            c if !py_printable(c) => {
                let v = c as u32;
                // Writing into a String cannot fail.
                let _ = if v < 0x100 {
                    write!(buf, "\\x{v:02x}")
                } else if v < 0x10000 {
                    write!(buf, "\\u{v:04x}")
                } else {
                    write!(buf, "\\U{v:08x}")
                };
            }
            c => buf.push(c),
        }
    }
    buf.push(quote);
}

/// `str.isprintable()` for one character: false for controls, separators other than
/// the space, format characters and private use (the ranges below), true otherwise.
fn py_printable(c: char) -> bool {
    !matches!(c as u32,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f
        | 0x205f..=0x206f | 0x3000 | 0xd800..=0xf8ff | 0xfeff | 0xfff9..=0xfffb
        | 0xf0000..=0x10ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::ring::tests::{member, members_on};

    fn route(specs: &[&str], diverse: bool, n: usize, name: &str) -> Vec<String> {
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let mut out = Vec::new();
        let ring = PythonRing::new(&members, diverse);
        ring.route_into(name.as_bytes(), n, &mut out);
        out.iter().map(|&i| specs[i].to_string()).collect()
    }

    const TEN_0_0_1_TO_3: [&str; 3] = ["10.0.0.1:2003", "10.0.0.2:2003", "10.0.0.3:2003"];

    #[test]
    fn replica_keys_are_python_tuples() {
        let mut buf = String::new();
        write_replica_key(&mut buf, &member("127.0.0.1:2006=a"), 0);
        assert_eq!(buf, "('127.0.0.1', 'a'):0");
        assert_eq!(PythonRing::position(buf.as_bytes()), 24043);
        write_replica_key(&mut buf, &member("127.0.0.1:2006"), 0);
        assert_eq!(buf, "('127.0.0.1', None):0");
        assert_eq!(PythonRing::position(buf.as_bytes()), 52941);
        assert_eq!(PythonRing::position(b"foo.bar.baz"), 63458);
    }

    #[test]
    fn repr_quotes_like_python() {
        // Answers of python3 `repr`.
        let cases = [
            ("a", "'a'"),
            ("a'b", "\"a'b\""),
            ("a'b\"c", "'a\\'b\"c'"),
            ("a\"b", "'a\"b'"),
            ("a\\b", "'a\\\\b'"),
            ("tab\there", "'tab\\there'"),
            ("\u{7f}", "'\\x7f'"),
            ("\u{e9}", "'\u{e9}'"),
            ("\u{a0}", "'\\xa0'"),
            ("\u{ad}", "'\\xad'"),
            ("\u{2028}", "'\\u2028'"),
            ("\u{200b}", "'\\u200b'"),
            ("\u{e000}", "'\\ue000'"),
            ("\u{1f600}", "'\u{1f600}'"),
        ];
        for (s, want) in cases {
            let mut buf = String::new();
            write_py_repr(&mut buf, s);
            assert_eq!(buf, want, "repr of {s:?}");
        }
    }

    #[test]
    fn carbon_vectors() {
        // cadent-coco.md §4.
        let abc = ["127.0.0.1:2003=a", "127.0.0.2:2003=b", "127.0.0.3:2003=c"];
        assert_eq!(route(&abc, false, 1, "foo.bar.baz"), ["127.0.0.1:2003=a"]);
        assert_eq!(
            route(&abc, false, 1, "servers.web01.cpu.user"),
            ["127.0.0.1:2003=a"]
        );
        assert_eq!(
            route(&abc, false, 1, "stats.counters.api.requests"),
            ["127.0.0.2:2003=b"]
        );
        assert_eq!(
            route(&abc, false, 1, "collectd.host1.load.load.shortterm"),
            ["127.0.0.3:2003=c"]
        );
    }

    #[test]
    fn collision_bumps_and_member_order_matters() {
        // relays.md §2: ('10.0.0.1', None):60 and ('10.0.0.3', None):65 both hash to
        // 7798; m12052 sits at 7799. Python sends it to 10.0.0.3; with DESTINATIONS
        // reversed to 10.0.0.1 (c-relay: 10.0.0.2).
        assert_eq!(PythonRing::position(b"('10.0.0.1', None):60"), 7798);
        assert_eq!(PythonRing::position(b"('10.0.0.3', None):65"), 7798);
        assert_eq!(PythonRing::position(b"m12052"), 7799);
        assert_eq!(
            route(&TEN_0_0_1_TO_3, false, 1, "m12052"),
            ["10.0.0.3:2003"]
        );
        let reversed = ["10.0.0.3:2003", "10.0.0.2:2003", "10.0.0.1:2003"];
        assert_eq!(route(&reversed, false, 1, "m12052"), ["10.0.0.1:2003"]);
        let members: Vec<RingMember<'_>> = TEN_0_0_1_TO_3.iter().map(|s| member(s)).collect();
        let ring = PythonRing::new(&members, false);
        let at: Vec<Entry> = ring
            .entries
            .iter()
            .copied()
            .filter(|e| e.pos == 7798 || e.pos == 7799)
            .collect();
        assert_eq!(
            at,
            [
                Entry {
                    pos: 7798,
                    member: 0
                },
                Entry {
                    pos: 7799,
                    member: 2
                }
            ]
        );
        assert!(ring.entries.windows(2).all(|w| w[0].pos < w[1].pos));
    }

    #[test]
    fn bumps_pass_65535_without_wrapping() {
        // Two hosts whose replica 0 both sit at 65535: the second moves to 65536,
        // past every key position, and is met only by walking on from 65535.
        let hosts: Vec<String> = (0..2_000_000)
            .map(|i| format!("h{i}"))
            .filter(|h| md5_position(format!("('{h}', None):0").as_bytes()) == 65535)
            .take(2)
            .collect();
        let members = members_on(&hosts, 2003);
        let ring = PythonRing::new(&members, false);
        let top: Vec<Entry> = ring
            .entries
            .iter()
            .copied()
            .filter(|e| e.pos >= 65535)
            .collect();
        assert_eq!(
            top[..2],
            [
                Entry {
                    pos: 65535,
                    member: 0
                },
                Entry {
                    pos: 65536,
                    member: 1
                }
            ]
        );
        let mut out = Vec::new();
        ring.route_position_into(65535, 2, &mut out);
        assert_eq!(out, [0, 1]);
    }

    #[test]
    fn diverse_replicas_skip_used_hosts() {
        let specs = [
            "10.0.0.1:2003=a",
            "10.0.0.1:2004=b",
            "10.0.0.2:2003=a",
            "10.0.0.2:2004=b",
            "10.0.0.3:2003=a",
        ];
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let plain = PythonRing::new(&members, false);
        let diverse = PythonRing::new(&members, true);
        assert_eq!(diverse.replica_count(5), 3);
        assert_eq!(plain.replica_count(9), 5);
        let mut walk = Vec::new();
        let mut div = Vec::new();
        for i in 0..2000 {
            let name = format!("prop.{i}.value");
            plain.route_into(name.as_bytes(), 5, &mut walk);
            diverse.route_into(name.as_bytes(), 5, &mut div);
            // The diverse walk: the plain walk's first node of each host, then the rest
            // in plain order.
            let mut hosts = Vec::new();
            let mut want: Vec<usize> = walk
                .iter()
                .copied()
                .filter(|&m| {
                    let h = members[m].host;
                    let new = !hosts.contains(&h);
                    hosts.push(h);
                    new
                })
                .collect();
            let rest: Vec<usize> = walk.iter().copied().filter(|m| !want.contains(m)).collect();
            want.extend(rest);
            assert_eq!(div, want, "{name}");
            for n in 0..=5 {
                let mut part = Vec::new();
                diverse.route_into(name.as_bytes(), n, &mut part);
                assert_eq!(part, div[..n]);
            }
        }
    }

    #[test]
    fn large_rings_walk_like_the_small_ones() {
        // Over SeenMembers' bitset: 300 members on 120 hosts. Reference: a plain
        // walk over the points.
        let hosts: Vec<String> = (0..300)
            .map(|i| format!("10.9.{}.{}", i % 120, i % 120))
            .collect();
        let instances: Vec<String> = (0..300).map(|i| format!("i{i}")).collect();
        let members: Vec<RingMember<'_>> = hosts
            .iter()
            .zip(&instances)
            .map(|(h, i)| RingMember {
                host: h,
                port: 2003,
                instance: Some(i),
            })
            .collect();
        for diverse in [false, true] {
            let ring = PythonRing::new(&members, diverse);
            let points: Vec<(u32, usize)> = ring.points().collect();
            let mut out = Vec::new();
            for k in 0..200 {
                let name = format!("large.{k}");
                let pos = u32::from(PythonRing::position(name.as_bytes()));
                let start = points.iter().position(|p| p.0 >= pos).unwrap_or(0);
                let mut walk: Vec<usize> = Vec::new();
                let mut met = vec![false; members.len()];
                for i in 0..points.len() {
                    let m = points[(start + i) % points.len()].1;
                    if !met[m] {
                        met[m] = true;
                        walk.push(m);
                    }
                }
                if diverse {
                    let mut used = Vec::new();
                    let mut first: Vec<usize> = Vec::new();
                    for &m in &walk {
                        if !used.contains(&members[m].host) {
                            used.push(members[m].host);
                            first.push(m);
                        }
                    }
                    let rest: Vec<usize> = walk
                        .iter()
                        .copied()
                        .filter(|m| !first.contains(m))
                        .collect();
                    first.extend(rest);
                    walk = first;
                }
                ring.route_into(name.as_bytes(), 300, &mut out);
                assert_eq!(out, walk, "{name} diverse={diverse}");
                ring.route_into(name.as_bytes(), ring.replica_count(150), &mut out);
                assert_eq!(out.len(), if diverse { 120 } else { 150 });
                assert_eq!(out, walk[..out.len()]);
            }
        }
    }

    #[test]
    fn one_node_and_edges() {
        assert_eq!(
            route(&["10.0.0.1:2003"], false, 3, "a.b"),
            ["10.0.0.1:2003"]
        );
        assert_eq!(route(&["10.0.0.1:2003"], true, 3, "a.b"), ["10.0.0.1:2003"]);
        // A repeated (host, instance) gets nothing; the walk still ends.
        let specs = ["10.0.0.1:2003=a", "10.0.0.1:2004=a", "10.0.0.2:2003"];
        let got = route(&specs, false, 3, "a.b");
        assert_eq!(got.len(), 2);
        assert!(!got.contains(&"10.0.0.1:2004=a".to_string()));
        let empty = PythonRing::new(&[], true);
        assert!(empty.is_empty());
        let mut out = vec![1];
        empty.route_into(b"a", 2, &mut out);
        assert!(out.is_empty());
    }
}

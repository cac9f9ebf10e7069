//! The `carbon_ch` consistent-hash ring, placing metrics exactly where
//! carbon-c-relay 3.7.3 places them.
//!
//! The ring is carbon's (Python) `ConsistentHashRing` as c-relay reads it:
//!
//! - A position is the first two bytes of an MD5 digest, big-endian: 0..=65535.
//! - Each member owns 100 positions, one for each replica `i`, hashed from
//!   Python's `str((host, instance))` plus `":i"`, i.e. `('10.0.0.1', None):7` or
//!   `('127.0.0.1', 'a'):7`. The port is not part of the key, so members on one
//!   host need distinct instances to get distinct positions.
//! - A key goes to the first entry at or after its position, wrapping to the start.
//!
//! Python breaks position ties by bumping the later node's position by one, which
//! makes placement depend on the order of the destination list. c-relay does not
//! bump: it sorts tied entries by (host, instance with no instance last, then
//! config order) and gives every entry of a tie to the first of them. We follow
//! c-relay; the two differ for the few keys that land on a tie.

use md5::{Digest, Md5};
use std::cmp::Ordering;
use std::fmt::Write as _;

/// Positions each member owns on the ring; carbon hard-wires 100 (c-relay's
/// `HASH_REPLICAS`, for fnv1a_ch too), and every implementation must agree on it to
/// agree on placement.
const REPLICAS_PER_MEMBER: usize = 100;

/// c-relay formats the node key with `snprintf` into a 256-byte buffer, so a key
/// longer than 255 bytes is hashed truncated. We truncate the same way to stay
/// compatible for absurdly long host or instance strings.
const NODE_KEY_BYTES_MAX: usize = 255;

/// One destination of a `carbon_ch` cluster, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingMember<'a> {
    /// Host exactly as written (not resolved); it is hashed as-is. For IPv6 this
    /// is the bare address without brackets (`::1`), as c-relay hashes it.
    pub host: &'a str,
    /// Port; carried for identification only, never hashed.
    pub port: u16,
    /// Optional instance name (`host:port=instance`); hashed when present.
    pub instance: Option<&'a str>,
}

/// A built `carbon_ch` ring: immutable after [`CarbonRing::new`], so shards can
/// each own a copy or share one without locking.
#[derive(Debug, Clone)]
pub struct CarbonRing {
    ring: TiedRing,
}

impl CarbonRing {
    /// Builds the ring for `members`, in config order. Order matters only for
    /// members that share host and instance (and so every position): the first
    /// listed takes all of them, as in c-relay, and the others receive nothing.
    /// Config validation should reject such duplicates.
    ///
    /// An empty `members` gives an empty ring that routes nothing.
    pub fn new(members: &[RingMember<'_>]) -> CarbonRing {
        // c-relay's tie order: host, then instance with no instance last.
        let ring = TiedRing::new(
            "carbon_ch",
            members,
            write_node_key,
            Self::position,
            |ml, mr| {
                ml.host.as_bytes().cmp(mr.host.as_bytes()).then_with(|| {
                    match (ml.instance, mr.instance) {
                        (Some(il), Some(ir)) => il.as_bytes().cmp(ir.as_bytes()),
                        (Some(_), None) => Ordering::Less,
                        (None, Some(_)) => Ordering::Greater,
                        (None, None) => Ordering::Equal,
                    }
                })
            },
        );
        CarbonRing { ring }
    }

    /// The ring position of `key`: the first two bytes of its MD5 digest,
    /// big-endian. Used for metric names and member node keys alike.
    pub fn position(key: &[u8]) -> u16 {
        md5_position(key)
    }

    /// Clears `out` and pushes the member indexes (into the `members` slice given
    /// to [`CarbonRing::new`]) of up to `replication` distinct members, in
    /// replica order. Allocation-free once `out` has capacity.
    ///
    /// `key` is hashed whole. The caller passes the metric name already cut at
    /// the first `;`: c-relay routes a tagged name `a.b;x=1` by `a.b` alone
    /// (its `-t` test mode is the exception and hashes the whole line).
    ///
    /// Fewer than `replication` indexes come back when the ring has fewer
    /// distinct members. c-relay refuses `replication` above the member count
    /// at config load, and loops forever where duplicate members leave fewer
    /// reachable than that; here the walk is bounded by the ring size.
    pub fn route_into(&self, key: &[u8], replication: usize, out: &mut Vec<usize>) {
        // Distinct by member: c-relay compares server identity, and it keys servers
        // by host:port, which config validation keeps unique.
        self.ring
            .route_position_into(Self::position(key), replication, out);
    }

    /// Number of entries on the ring: 100 per member.
    pub fn len(&self) -> usize {
        self.ring.entries.len()
    }

    /// True for a ring built from no members; it routes nothing.
    pub fn is_empty(&self) -> bool {
        self.ring.entries.is_empty()
    }
}

/// The first two bytes of the MD5 digest of `key`, big-endian: the position of
/// carbon's ring (`carbon_ch`, `carbon_ch_python`).
pub(crate) fn md5_position(key: &[u8]) -> u16 {
    let digest = Md5::digest(key);
    u16::from_be_bytes([digest[0], digest[1]])
}

/// One point of a [`TiedRing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) pos: u16,
    /// Index into the member slice the ring was built from. `u32` keeps an entry at
    /// 8 bytes, so the binary search touches fewer cache lines.
    pub(super) member: u32,
}

/// c-relay's ring for `carbon_ch` and `fnv1a_ch`, which differ only in the replica
/// key, the hash and the tie order: 100 16-bit positions per member, ties sorted and
/// owned wholly by their first entry.
///
/// Invariant: `entries` is sorted by position, and all entries that share a
/// position carry the same member (the one c-relay sorts first). That is what
/// lets the lookup start at any entry of a tie and still agree with c-relay.
#[derive(Debug, Clone)]
pub(super) struct TiedRing {
    pub(super) entries: Vec<Entry>,
    members: usize,
    /// For each of the 65536 positions, the index of the first entry at or after it
    /// (`entries.len()` = wrap): the lookup without a binary search. Empty when the ring
    /// has more entries than a u16 indexes (over 655 members); lookups then search.
    pub(super) first_at: Vec<u16>,
}

impl TiedRing {
    /// Builds the ring of `members` (config order): replica `i` of a member sits at
    /// `position` of the key `write_key` writes, cut to 255 bytes as c-relay's
    /// `snprintf` into 256 bytes cuts it. Entries sort by position, then `tie_order`
    /// of their members, then config order (c-relay's sort is glibc's merge sort,
    /// stable over config order for entries its comparator calls equal).
    pub(super) fn new(
        kind: &str,
        members: &[RingMember<'_>],
        write_key: impl Fn(&mut String, &RingMember<'_>, usize),
        position: impl Fn(&[u8]) -> u16,
        tie_order: impl Fn(&RingMember<'_>, &RingMember<'_>) -> Ordering,
    ) -> TiedRing {
        assert!(
            u32::try_from(members.len()).is_ok(),
            "{kind} ring: too many members"
        );
        let mut entries = Vec::with_capacity(members.len() * REPLICAS_PER_MEMBER);
        let mut key = String::with_capacity(NODE_KEY_BYTES_MAX + 1);
        for (index, member) in members.iter().enumerate() {
            for replica in 0..REPLICAS_PER_MEMBER {
                write_key(&mut key, member, replica);
                let bytes = &key.as_bytes()[..key.len().min(NODE_KEY_BYTES_MAX)];
                entries.push(Entry {
                    pos: position(bytes),
                    member: index as u32,
                });
            }
        }
        entries.sort_unstable_by(|l, r| {
            let (ml, mr) = (&members[l.member as usize], &members[r.member as usize]);
            l.pos
                .cmp(&r.pos)
                .then_with(|| tie_order(ml, mr))
                .then_with(|| l.member.cmp(&r.member))
        });

        // A tie belongs wholly to its first entry: c-relay rewrites the rest so
        // that its binary search may stop anywhere inside a tie.
        for i in 1..entries.len() {
            if entries[i].pos == entries[i - 1].pos {
                entries[i].member = entries[i - 1].member;
            }
        }

        let first_at = if entries.len() < u16::MAX as usize {
            let mut table = Vec::with_capacity(1 << 16);
            let mut at = 0usize;
            for pos in 0..=u16::MAX {
                while at < entries.len() && entries[at].pos < pos {
                    at += 1;
                }
                table.push(at as u16);
            }
            table
        } else {
            Vec::new()
        };
        TiedRing {
            entries,
            members: members.len(),
            first_at,
        }
    }

    /// Clears `out` and pushes up to `n` distinct members in the order the ring meets
    /// them from `pos`: the first entry at or after it, wrapping (Python's bisect_left
    /// on (pos, ()), which c-relay copies). One lap at most: members whose every
    /// position went to a tie's first member are unreachable, as in c-relay (which
    /// would spin looking for them).
    pub(super) fn route_position_into(&self, pos: u16, n: usize, out: &mut Vec<usize>) {
        out.clear();
        let wanted = n.min(self.members);
        if wanted == 0 || self.entries.is_empty() {
            return;
        }
        let at = match self.first_at.get(pos as usize) {
            Some(&i) => i as usize,
            None => self.entries.partition_point(|e| e.pos < pos),
        };
        debug_assert_eq!(at, self.entries.partition_point(|e| e.pos < pos));
        let len = self.entries.len();
        let start = if at == len { 0 } else { at };
        if wanted == 1 {
            // The first entry met is the answer: no walk.
            out.push(self.entries[start].member as usize);
            return;
        }
        let member_at = |at: usize| self.entries[at].member as usize;
        SeenMembers::new(self.members).push_walk((start, len, len), member_at, wanted, out);
    }
}

/// The members (or hosts) a preference walk has already pushed, so that each appears
/// once: a bitset on the stack for rings of up to [`SEEN_BITS`] members, else a search
/// of the walk's output (never longer than the walk asked for). Shared by the ring kinds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeenMembers {
    bits: [u64; SEEN_BITS / 64],
    /// False when the ring is too large for the bitset.
    small: bool,
}

/// Members a [`SeenMembers`] tracks in its bitset: c-relay caps a hash cluster at 64
/// servers, and larger rings only cost a linear search per step.
const SEEN_BITS: usize = 256;

impl SeenMembers {
    /// An empty set for a ring of `members` members.
    pub(crate) fn new(members: usize) -> SeenMembers {
        SeenMembers {
            bits: [0; SEEN_BITS / 64],
            small: members <= SEEN_BITS,
        }
    }

    /// Records `id` (a member, or a group of members); true when it was not yet
    /// recorded. `recorded` answers for rings too large for the bitset, by searching
    /// what the walk has output so far.
    #[inline]
    pub(crate) fn insert(&mut self, id: usize, recorded: impl FnOnce() -> bool) -> bool {
        if self.small {
            let (word, bit) = (id / 64, 1u64 << (id % 64));
            let new = self.bits[word] & bit == 0;
            self.bits[word] |= bit;
            new
        } else {
            !recorded()
        }
    }

    /// The preference walk the ring kinds share: over `steps` entries of a ring of `len`
    /// from entry `start` (< `len`), wrapping, pushes onto `out` each member
    /// (`member_at(entry)`) not yet recorded, until `out` holds `wanted`.
    #[inline]
    pub(crate) fn push_walk(
        &mut self,
        (start, steps, len): (usize, usize, usize),
        member_at: impl Fn(usize) -> usize,
        wanted: usize,
        out: &mut Vec<usize>,
    ) {
        let mut at = start;
        for _ in 0..steps {
            let member = member_at(at);
            if self.insert(member, || out.contains(&member)) {
                out.push(member);
                if out.len() == wanted {
                    return;
                }
            }
            at += 1;
            if at == len {
                at = 0;
            }
        }
    }
}

/// Writes Python's `str((host, instance)) + ":" + str(replica)` into `buf`.
fn write_node_key(buf: &mut String, member: &RingMember<'_>, replica: usize) {
    buf.clear();
    // Writing into a String cannot fail.
    let _ = match member.instance {
        Some(instance) => write!(buf, "('{}', '{}'):{}", member.host, instance, replica),
        None => write!(buf, "('{}', None):{}", member.host, replica),
    };
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A member from `"host:port"` or `"host:port=instance"`; IPv4 and names only,
    /// enough for the rings' tests.
    pub(in crate::route) fn member(spec: &str) -> RingMember<'_> {
        let (addr, instance) = match spec.split_once('=') {
            Some((addr, instance)) => (addr, Some(instance)),
            None => (spec, None),
        };
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        RingMember {
            host,
            port: port.parse().expect("port"),
            instance,
        }
    }

    /// One member per host, all on `port`, without instances.
    pub(in crate::route) fn members_on(hosts: &[String], port: u16) -> Vec<RingMember<'_>> {
        hosts
            .iter()
            .map(|h| RingMember {
                host: h,
                port,
                instance: None,
            })
            .collect()
    }

    /// Routes `name` and returns the chosen members written as their specs.
    fn check(specs: &[&str], replication: usize, name: &str, expected: &[&str]) {
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let ring = CarbonRing::new(&members);
        let mut out = Vec::new();
        ring.route_into(name.as_bytes(), replication, &mut out);
        let got: Vec<&str> = out.iter().map(|&i| specs[i]).collect();
        assert_eq!(
            got, expected,
            "route of {name:?} with replication {replication}"
        );
    }

    const TEN_0_0_1_TO_3: [&str; 3] = ["10.0.0.1:2003", "10.0.0.2:2003", "10.0.0.3:2003"];

    #[test]
    fn position_of_metric_names() {
        assert_eq!(CarbonRing::position(b"a.b.c.d"), 54437);
        assert_eq!(CarbonRing::position(b""), 54301);
        assert_eq!(CarbonRing::position(b"foo.bar"), 1273);
    }

    #[test]
    fn node_keys_are_python_tuple_strings() {
        let mut buf = String::new();
        write_node_key(&mut buf, &member("127.0.0.1:2006=a"), 0);
        assert_eq!(buf, "('127.0.0.1', 'a'):0");
        assert_eq!(CarbonRing::position(buf.as_bytes()), 24043);
        write_node_key(&mut buf, &member("10.0.0.1:2003"), 0);
        assert_eq!(buf, "('10.0.0.1', None):0");
        assert_eq!(CarbonRing::position(buf.as_bytes()), 46982);
        write_node_key(&mut buf, &member("10.0.0.1:2003"), 99);
        assert_eq!(buf, "('10.0.0.1', None):99");
    }

    #[test]
    fn instances_on_one_host() {
        let specs = ["127.0.0.1:2006=a", "127.0.0.1:2007=b", "127.0.0.1:2008=c"];
        check(&specs, 1, "a.b.c.d", &["127.0.0.1:2006=a"]);
        check(&specs, 1, "collectd.bar.memory.free", &["127.0.0.1:2007=b"]);
        check(&specs, 1, "foo.bar", &["127.0.0.1:2008=c"]);
    }

    #[test]
    fn replication_walks_to_distinct_members() {
        check(
            &TEN_0_0_1_TO_3,
            2,
            "a.b.c.d",
            &["10.0.0.3:2003", "10.0.0.2:2003"],
        );
        // Answers c-relay 3.7.3 gave for the same ring (`carbon-c-relay -t`).
        check(
            &TEN_0_0_1_TO_3,
            2,
            "m12052",
            &["10.0.0.2:2003", "10.0.0.1:2003"],
        );
        check(
            &TEN_0_0_1_TO_3,
            2,
            "foo..bar.",
            &["10.0.0.3:2003", "10.0.0.2:2003"],
        );
        check(
            &TEN_0_0_1_TO_3,
            3,
            "a.b.c.d",
            &["10.0.0.3:2003", "10.0.0.2:2003", "10.0.0.1:2003"],
        );
    }

    #[test]
    fn tie_goes_to_first_in_c_relay_order_not_python_bump() {
        // ('10.0.0.1', None):60 and ('10.0.0.3', None):65 both sit at 7798.
        // m12052 sits at 7799: c-relay sends it on to 10.0.0.2, while Python's
        // bump moves one tied node to 7799 and catches it.
        let mut buf = String::new();
        write_node_key(&mut buf, &member("10.0.0.1:2003"), 60);
        assert_eq!(CarbonRing::position(buf.as_bytes()), 7798);
        write_node_key(&mut buf, &member("10.0.0.3:2003"), 65);
        assert_eq!(CarbonRing::position(buf.as_bytes()), 7798);
        assert_eq!(CarbonRing::position(b"m12052"), 7799);
        check(&TEN_0_0_1_TO_3, 1, "m12052", &["10.0.0.2:2003"]);

        // At 7798 itself the tie goes to the smaller host, whatever the order.
        let ring = CarbonRing::new(&TEN_0_0_1_TO_3.map(member));
        let tied: Vec<Entry> = ring
            .ring
            .entries
            .iter()
            .copied()
            .filter(|e| e.pos == 7798)
            .collect();
        assert_eq!(
            tied,
            [Entry {
                pos: 7798,
                member: 0
            }; 2]
        );
        let reversed = ["10.0.0.3:2003", "10.0.0.2:2003", "10.0.0.1:2003"];
        let ring = CarbonRing::new(&reversed.map(member));
        let tied: Vec<Entry> = ring
            .ring
            .entries
            .iter()
            .copied()
            .filter(|e| e.pos == 7798)
            .collect();
        assert_eq!(
            tied,
            [Entry {
                pos: 7798,
                member: 2
            }; 2]
        );
    }

    #[test]
    fn tie_prefers_instance_then_smaller_instance() {
        // ('10.0.0.5', None) and ('10.0.0.5', '10') share 19939; the member with
        // an instance wins although listed second.
        let ring = CarbonRing::new(&["10.0.0.5:2003", "10.0.0.5:2004=10"].map(member));
        assert!(ring
            .ring
            .entries
            .iter()
            .filter(|e| e.pos == 19939)
            .all(|e| e.member == 1));
        // ('127.0.0.1', 'a') and ('127.0.0.1', 'e') share 16828; 'a' wins.
        let ring = CarbonRing::new(&["127.0.0.1:2105=e", "127.0.0.1:2101=a"].map(member));
        assert!(ring
            .ring
            .entries
            .iter()
            .filter(|e| e.pos == 16828)
            .all(|e| e.member == 1));
    }

    #[test]
    fn duplicate_host_and_instance_goes_to_first_listed() {
        let specs = ["127.0.0.1:2102=a", "127.0.0.1:2101=a", "127.0.0.1:2103=b"];
        let ring = CarbonRing::new(&specs.map(member));
        assert!(ring.ring.entries.iter().all(|e| e.member != 1));
        // Only two members are reachable; the walk stops instead of spinning.
        let mut out = Vec::new();
        ring.route_into(b"a", 3, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn long_node_keys_are_truncated_like_c_relay() {
        // c-relay 3.7.3 with instance "i" x 250 prints all 100 replicas at
        // 39928: the 255-byte cut drops the ":replica" suffix.
        let instance = "i".repeat(250);
        let long = RingMember {
            host: "127.0.0.1",
            port: 2101,
            instance: Some(&instance),
        };
        let ring = CarbonRing::new(&[long]);
        assert!(ring.ring.entries.iter().all(|e| e.pos == 39928));
    }

    #[test]
    fn ring_shape_and_edges() {
        let ring = CarbonRing::new(&TEN_0_0_1_TO_3.map(member));
        assert_eq!(ring.len(), 300);
        assert!(!ring.is_empty());
        assert!(ring.ring.entries.windows(2).all(|w| w[0].pos <= w[1].pos));

        let mut out = vec![7];
        ring.route_into(b"a.b.c.d", 0, &mut out);
        assert!(out.is_empty());
        ring.route_into(b"a.b.c.d", 10, &mut out);
        assert_eq!(out.len(), 3);

        let empty = CarbonRing::new(&[]);
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        empty.route_into(b"a.b.c.d", 2, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn keys_past_the_last_entry_wrap_to_the_first() {
        let ring = CarbonRing::new(&TEN_0_0_1_TO_3.map(member));
        let last = ring.ring.entries.last().unwrap();
        let first = ring.ring.entries[0].member as usize;
        // Find a name positioned after the last entry.
        let name = (0..)
            .map(|i| format!("wrap.{i}"))
            .find(|n| CarbonRing::position(n.as_bytes()) > last.pos)
            .unwrap();
        let mut out = Vec::new();
        ring.route_into(name.as_bytes(), 1, &mut out);
        assert_eq!(out, [first]);
    }

    #[test]
    fn every_key_maps_to_a_member_and_replicas_are_distinct() {
        let specs = [
            "10.0.0.1:2003",
            "10.0.0.2:2003=x",
            "127.0.0.1:2101=a",
            "127.0.0.1:2102=b",
        ];
        let ring = CarbonRing::new(&specs.map(member));
        let mut out = Vec::with_capacity(4);
        for i in 0..2000 {
            let name = format!("prop.{i}.value");
            for replication in 1..=4 {
                ring.route_into(name.as_bytes(), replication, &mut out);
                assert_eq!(out.len(), replication);
                let mut seen = out.clone();
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(seen.len(), replication);
                // Replicas extend the shorter answer.
                let mut primary = Vec::new();
                ring.route_into(name.as_bytes(), 1, &mut primary);
                assert_eq!(out[0], primary[0]);
            }
        }
    }
}

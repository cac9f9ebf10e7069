//! The `statsd_hashring` ring: where Etsy statsd 0.9.0's proxy (`proxy.js`) sends a
//! metric, through node-hashring 3.2.0 configured as the proxy configures it.
//!
//! The proxy builds `new HashRing({"host:port": 100, ...}, 'md5', {replicas: 0})`:
//! - A server is the string `host:port`; its weight is 100 (here: per member, given
//!   to [`StatsdRing::new`]; as in hashring a weight of 0 counts as 1).
//! - Each server gets `floor(weight / total * 40 * servers)` points, evaluated left to
//!   right in doubles: 40 with equal weights, except that rounding gives **39** at 7,
//!   14 and 28 servers (`100/700*40*7 = 39.99999999999999`).
//! - Point `i` of a server is the little-endian u32 of the first four bytes of
//!   `md5("host:port-i")`: `replicas: 0` becomes hashring's minimum of one point per
//!   digest.
//! - The points are sorted by value with a stable sort, so equal points keep server
//!   (config) order; a key goes to the first point at or after its hash, wrapping.
//!
//! **Key.** The text before the first `:` of a statsd line (`split(':')[0]`; the
//! whole line when it has none), hashed as node hashes it: the proxy decodes the
//! packet as UTF-8, replacing each invalid sequence with U+FFFD, and md5 reads the
//! string back as UTF-8. We hash the key's bytes that way, so invalid UTF-8 places as
//! in node.
//!
//! **Walk.** n > 1: distinct servers going around the ring from the key's point, which
//! is what hashring's `range(key, n)` returns (the proxy itself sends to one). Note
//! that the proxy does not walk past a dead server: its health check removes the server
//! and rebuilds the ring from the live ones (so the others' point counts change), and
//! appends it at the end of the list when it comes back. To mirror that, build a new
//! ring from the live members.

use super::ring::{RingMember, SeenMembers};
use md5::{Digest, Md5};
use std::fmt::Write as _;

/// Points per server at equal weights: hashring's default `vnode count`, which the
/// proxy does not set.
const VNODES_PER_SERVER: f64 = 40.0;

/// One point of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    value: u32,
    /// Index into the member slice given to [`StatsdRing::new`].
    member: u32,
}

/// A built `statsd_hashring` ring: immutable after [`StatsdRing::new`] and cheap to
/// clone.
///
/// Invariant: `entries` is sorted by value, equal values in server order.
#[derive(Debug, Clone)]
pub struct StatsdRing {
    entries: Vec<Entry>,
    /// For each value of the top 16 bits of a hash, the first entry whose value is at or
    /// above `top << 16`; the lookup scans on from there (a handful of entries at most).
    first_at: Vec<u32>,
    /// Members given to `new`, repeats included.
    members: usize,
    /// Distinct `host:port` servers.
    servers: usize,
}

impl StatsdRing {
    /// Builds the ring for `members` (config order) with one weight per member (the
    /// proxy gives each 100). Each member is the server `host:port` (its instance is
    /// not used). A member repeating an earlier `host:port` is merged into it as the
    /// proxy's object of servers merges it: the first keeps its place, the last weight
    /// counts. An empty `members` gives a ring that routes nothing.
    pub fn new(members: &[RingMember<'_>], weights: &[u32]) -> StatsdRing {
        assert_eq!(
            members.len(),
            weights.len(),
            "statsd_hashring ring: one weight per member"
        );
        assert!(
            u32::try_from(members.len()).is_ok(),
            "statsd_hashring ring: too many members"
        );
        // (first member index, weight) per distinct server, in first-seen order.
        let mut servers: Vec<(usize, u32)> = Vec::with_capacity(members.len());
        for (index, (member, &weight)) in members.iter().zip(weights).enumerate() {
            // `+value || 1`: a weight of 0 is 1.
            let weight = weight.max(1);
            let same = servers.iter_mut().find(|(first, _)| {
                members[*first].host == member.host && members[*first].port == member.port
            });
            match same {
                Some((_, w)) => *w = weight,
                None => servers.push((index, weight)),
            }
        }
        let total: f64 = servers.iter().map(|&(_, w)| f64::from(w)).sum();
        let count = servers.len() as f64;

        let mut entries = Vec::new();
        let mut key = String::new();
        for &(index, weight) in &servers {
            let member = &members[index];
            // hashring: Math.floor(percentage * vnodes * servers.length), left to right.
            let points = (f64::from(weight) / total * VNODES_PER_SERVER * count).floor() as usize;
            for i in 0..points {
                key.clear();
                // Writing into a String cannot fail.
                let _ = write!(key, "{}:{}-{i}", member.host, member.port);
                let digest = Md5::digest(key.as_bytes());
                entries.push(Entry {
                    value: u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]),
                    member: index as u32,
                });
            }
        }
        // Stable, like V8's Array.prototype.sort (TimSort) that hashring relies on.
        entries.sort_by_key(|e| e.value);

        let mut first_at = Vec::with_capacity(1 << 16);
        let mut at = 0usize;
        for top in 0..=u32::from(u16::MAX) {
            while at < entries.len() && entries[at].value < top << 16 {
                at += 1;
            }
            first_at.push(at as u32);
        }
        StatsdRing {
            entries,
            first_at,
            members: members.len(),
            servers: servers.len(),
        }
    }

    /// The hash of a key: the little-endian u32 of the first four bytes of the MD5 of
    /// its text (invalid UTF-8 read as node reads it, see the module docs).
    pub fn hash(key: &[u8]) -> u32 {
        let mut md5 = Md5::new();
        for chunk in key.utf8_chunks() {
            md5.update(chunk.valid().as_bytes());
            if !chunk.invalid().is_empty() {
                md5.update("\u{fffd}".as_bytes());
            }
        }
        let digest = md5.finalize();
        u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
    }

    /// Clears `out` and pushes up to `n` distinct member indexes (into the slice given
    /// to [`StatsdRing::new`]) in preference order: the proxy's server first, then what
    /// hashring's `range(key, n)` adds going on around the ring. Allocation-free once
    /// `out` has capacity for `n`.
    ///
    /// `key`: the text before the first `:` of the statsd line.
    pub fn route_into(&self, key: &[u8], n: usize, out: &mut Vec<usize>) {
        out.clear();
        let wanted = n.min(self.servers);
        let len = self.entries.len();
        if wanted == 0 || len == 0 {
            return;
        }
        let hash = Self::hash(key);
        let mut at = self.first_at[(hash >> 16) as usize] as usize;
        while at < len && self.entries[at].value < hash {
            at += 1;
        }
        debug_assert_eq!(at, self.entries.partition_point(|e| e.value < hash));
        let start = if at == len { 0 } else { at };
        if wanted == 1 {
            // The first point met is the answer (the proxy's `get`): no walk.
            out.push(self.entries[start].member as usize);
            return;
        }
        let member_at = |at: usize| self.entries[at].member as usize;
        SeenMembers::new(self.members).push_walk((start, len, len), member_at, wanted, out);
    }

    /// The ring's points in order, as (value, member index): hashring's `ring`.
    pub fn points(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.entries.iter().map(|e| (e.value, e.member as usize))
    }

    /// Number of points on the ring.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True for a ring without points.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::ring::tests::members_on as members;

    /// Points of member `index` on the ring.
    fn points_of(ring: &StatsdRing, index: usize) -> usize {
        ring.points().filter(|&(_, m)| m == index).count()
    }

    fn hosts(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("127.0.0.{i}")).collect()
    }

    #[test]
    fn hash_vectors() {
        // cadent-coco.md §4: md5 "127.0.0.1:8126-0" -> LE32 1272832519, and
        // "foo.bar.baz" -> 3273122551.
        assert_eq!(StatsdRing::hash(b"127.0.0.1:8126-0"), 1_272_832_519);
        assert_eq!(StatsdRing::hash(b"foo.bar.baz"), 3_273_122_551);
    }

    #[test]
    fn proxy_vectors() {
        // cadent-coco.md §4, hashring 3.x over 127.0.0.{1,2,3}:8126.
        let h = hosts(3);
        let m = members(&h, 8126);
        let ring = StatsdRing::new(&m, &[100; 3]);
        let mut out = Vec::new();
        for (key, want) in [
            ("foo.bar.baz", 1),
            ("servers.web01.cpu.user", 2),
            ("stats.counters.api.requests", 2),
            ("collectd.host1.load.load.shortterm", 0),
        ] {
            ring.route_into(key.as_bytes(), 1, &mut out);
            assert_eq!(out, [want], "{key}");
        }
    }

    #[test]
    fn points_per_server_round_down_at_7_and_14() {
        for n in 1..=32 {
            let h = hosts(n);
            let m = members(&h, 8125);
            let ring = StatsdRing::new(&m, &vec![100; n]);
            let want = if [7, 14, 28].contains(&n) { 39 } else { 40 };
            assert_eq!(points_of(&ring, 0), want, "{n} servers");
            assert_eq!(ring.len(), want * n);
        }
    }

    #[test]
    fn weights_and_repeats() {
        let h = hosts(2);
        let m = members(&h, 8125);
        // 300 and 100: floor(0.75 * 40 * 2) = 60, floor(0.25 * 80) = 20.
        let ring = StatsdRing::new(&m, &[300, 100]);
        assert_eq!((points_of(&ring, 0), points_of(&ring, 1)), (60, 20));
        // A weight of 0 counts as 1.
        let ring = StatsdRing::new(&m, &[0, 1]);
        assert_eq!((points_of(&ring, 0), points_of(&ring, 1)), (40, 40));
        // A repeated host:port merges into the first; the last weight counts.
        let rep = [m[0], m[1], m[0]];
        let ring = StatsdRing::new(&rep, &[100, 100, 300]);
        assert_eq!(
            (
                points_of(&ring, 0),
                points_of(&ring, 1),
                points_of(&ring, 2)
            ),
            (60, 20, 0)
        );
    }

    #[test]
    fn invalid_utf8_hashes_as_replacement_characters() {
        assert_eq!(
            StatsdRing::hash(b"a\xffb\xe2\x82"),
            StatsdRing::hash("a\u{fffd}b\u{fffd}".as_bytes())
        );
    }

    #[test]
    fn large_ring_walks_over_the_bitset() {
        let h: Vec<String> = (0..300)
            .map(|i| format!("10.7.{}.{}", i / 250, i % 250))
            .collect();
        let m = members(&h, 8125);
        let ring = StatsdRing::new(&m, &[100; 300]);
        let points: Vec<(u32, usize)> = ring.points().collect();
        let mut out = Vec::new();
        for k in 0..100 {
            let key = format!("large.{k}");
            let hash = StatsdRing::hash(key.as_bytes());
            let start = points.iter().position(|p| p.0 >= hash).unwrap_or(0);
            let mut walk: Vec<usize> = Vec::new();
            let mut met = vec![false; m.len()];
            for i in 0..points.len() {
                let m = points[(start + i) % points.len()].1;
                if !met[m] {
                    met[m] = true;
                    walk.push(m);
                }
            }
            ring.route_into(key.as_bytes(), 300, &mut out);
            assert_eq!(out, walk, "{key}");
        }
    }

    #[test]
    fn walk_is_distinct_and_extends() {
        let h = hosts(5);
        let m = members(&h, 8125);
        let ring = StatsdRing::new(&m, &[100; 5]);
        let mut full = Vec::new();
        let mut part = Vec::new();
        for i in 0..2000 {
            let key = format!("prop.{i}.value");
            ring.route_into(key.as_bytes(), 9, &mut full);
            let mut sorted = full.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3, 4]);
            for n in 0..=5 {
                ring.route_into(key.as_bytes(), n, &mut part);
                assert_eq!(part, full[..n]);
            }
        }
        let empty = StatsdRing::new(&[], &[]);
        assert!(empty.is_empty());
        empty.route_into(b"a", 1, &mut part);
        assert!(part.is_empty());
    }
}

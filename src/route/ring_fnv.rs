//! The `fnv1a_ch` and `jump_fnv1a_ch` rings, placing metrics exactly where
//! carbon-c-relay 3.7.3 places them (`consistent-hash.c`, `fnv1a.h`).
//!
//! Both hash the metric key with c-relay's FNV-1a, which XORs each byte as a
//! sign-extended `char`: bytes >= 0x80 XOR `0xffff_ff80..` rather than `0x80..`, so
//! standard FNV-1a differs from c-relay for such bytes (cleansing normally removes
//! them from names; c-relay's `-t` mode hashes them as typed).
//!
//! **Key.** Both kinds hash the (cleansed) metric name cut at the first `;`, exactly
//! the bytes [`CarbonRing`](super::ring::CarbonRing) hashes.
//!
//! **fnv1a_ch** ([`FnvRing`]) is carbon_ch's ring with another hash and key:
//! - A position is FNV-1a 32 folded to 16 bits: `(h >> 16) ^ (h & 0xffff)`.
//! - Each member owns 100 positions, replica `i` hashed from `"i-host:port"`, or from
//!   `"i-instance"` when the member has an instance: the instance replaces host and
//!   port entirely (so two members with one instance share every position).
//! - Ties sort by (host bytes, port) and the first of a tie owns all of it, as in c-relay,
//!   which rewrites the rest of a tie so its binary search may stop anywhere inside one.
//! - A key goes to the first entry at or after its position, wrapping; replicas walk on
//!   to the next distinct members. The full walk (n = member count) is every member in
//!   the order the ring meets them from the key's position.
//!
//! **jump_fnv1a_ch** ([`JumpRing`]) is Lamping and Veach's jump hash over an ordered
//! bucket list:
//! - Buckets: the members with an instance first, ordered by instance (numerically
//!   when both parse whole as integers with `strtol`, else by `strcmp`), then the members
//!   without one in config order. c-relay sorts with glibc's `qsort` (a merge sort), and
//!   that comparator is not a total order (`"10" < "1a" < "9" < "10"`), so we run the
//!   same merge sort to get the same order for any instances.
//! - The key hash is FNV-1a 64 (same sign extension); the first bucket is
//!   `jump(hash, members)`, in c-relay's doubles arithmetic.
//! - Each further replica removes the chosen bucket by moving the last one into its
//!   slot (`bck[j] = bck[--n]`), mixes the hash (`h ^= h >> 12; h ^= h << 25;
//!   h ^= h >> 27; h *= 2685821657736338717`) and jumps over the remaining buckets.
//!   The full walk (n = member count) continues that until every member is chosen:
//!   a permutation whose first `replication` entries are c-relay's replica set.

use super::ring::{RingMember, TiedRing};
use std::cmp::Ordering;
use std::fmt::Write as _;

/// `jump_fnv1a_ch` rings up to this many members walk in a stack buffer; larger ones
/// use the caller's `out` as the buffer (so it needs capacity for every member).
/// c-relay itself refuses more than 64 servers in a hash cluster (`CONN_DESTS_SIZE`).
const JUMP_STACK_MEMBERS: usize = 64;

/// FNV-1a 32 as c-relay computes it: each byte sign-extended (`(unsigned int)*p` on a
/// signed `char`) before the XOR.
pub fn fnv1a_32(key: &[u8]) -> u32 {
    let mut hash: u32 = 2_166_136_261;
    for &b in key {
        hash = (hash ^ (b as i8 as i32 as u32)).wrapping_mul(16_777_619);
    }
    hash
}

/// FNV-1a 64 as c-relay computes it, bytes sign-extended like [`fnv1a_32`].
pub fn fnv1a_64(key: &[u8]) -> u64 {
    let mut hash: u64 = 14_695_981_039_346_656_037;
    for &b in key {
        hash = (hash ^ (b as i8 as i64 as u64)).wrapping_mul(1_099_511_628_211);
    }
    hash
}

/// Lamping and Veach's jump hash with c-relay's arithmetic: the next bucket is
/// computed in doubles and truncated to a signed 64-bit integer. `buckets` > 0.
pub fn jump_bucket(mut key: u64, buckets: usize) -> usize {
    debug_assert!(buckets > 0);
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // Never out of i64 range: at most buckets * 2^31.
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// A built `fnv1a_ch` ring: immutable after [`FnvRing::new`] and cheap to clone.
/// c-relay's carbon_ch ring with another key, hash and tie order.
#[derive(Debug, Clone)]
pub struct FnvRing {
    ring: TiedRing,
}

impl FnvRing {
    /// Builds the ring for `members`, in config order. Order matters only among
    /// members that share host and port (c-relay merges those into one server; config
    /// validation should reject them): the first listed takes every shared position.
    /// An empty `members` gives a ring that routes nothing.
    pub fn new(members: &[RingMember<'_>]) -> FnvRing {
        // c-relay's entrycmp_fnv1a: position, host (strcmp), port.
        let ring = TiedRing::new(
            "fnv1a_ch",
            members,
            write_replica_key,
            Self::position,
            |ml, mr| {
                ml.host
                    .as_bytes()
                    .cmp(mr.host.as_bytes())
                    .then_with(|| ml.port.cmp(&mr.port))
            },
        );
        FnvRing { ring }
    }

    /// The ring position of `key`: c-relay's FNV-1a 32 folded to 16 bits. Used for
    /// metric keys and replica keys alike.
    pub fn position(key: &[u8]) -> u16 {
        let hash = fnv1a_32(key);
        ((hash >> 16) ^ (hash & 0xffff)) as u16
    }

    /// Clears `out` and pushes up to `n` distinct member indexes (into the slice given
    /// to [`FnvRing::new`]) in preference order: with `n` = replication, c-relay's
    /// replica set; with `n` = member count, every reachable member in the order the
    /// ring meets them. Allocation-free once `out` has capacity for `n`.
    ///
    /// `key`: the (cleansed) metric name cut at the first `;`.
    pub fn route_into(&self, key: &[u8], n: usize, out: &mut Vec<usize>) {
        self.ring.route_position_into(Self::position(key), n, out);
    }

    /// The ring's entries in order, as (position, member index), ties already given to
    /// their first member: what c-relay prints with `-d` (as `pos@host:port`).
    pub fn points(&self) -> impl Iterator<Item = (u16, usize)> + '_ {
        self.ring.entries.iter().map(|e| (e.pos, e.member as usize))
    }

    /// Number of entries on the ring: 100 per member.
    pub fn len(&self) -> usize {
        self.ring.entries.len()
    }

    /// True for a ring built from no members.
    pub fn is_empty(&self) -> bool {
        self.ring.entries.is_empty()
    }
}

/// Writes c-relay's fnv1a_ch replica key: `"%d-%s:%u"` (replica, host, port), or
/// `"%d-%s"` (replica, instance) when the member has an instance.
fn write_replica_key(buf: &mut String, member: &RingMember<'_>, replica: usize) {
    buf.clear();
    // Writing into a String cannot fail.
    let _ = match member.instance {
        Some(instance) => write!(buf, "{replica}-{instance}"),
        None => write!(buf, "{replica}-{}:{}", member.host, member.port),
    };
}

/// A built `jump_fnv1a_ch` ring: the members in c-relay's bucket order. Immutable
/// after [`JumpRing::new`] and cheap to clone.
#[derive(Debug, Clone)]
pub struct JumpRing {
    /// Member indexes in bucket order, reversed: the walk keeps its remaining buckets
    /// at the end of a buffer, bucket `t` of `i` remaining at `len - 1 - t`, so that
    /// c-relay's `bck[j] = bck[--n]` becomes one swap.
    reversed: Vec<u32>,
}

impl JumpRing {
    /// Builds the bucket list for `members`, in config order (see the module docs for
    /// the order). Members that share an instance keep their config order, as glibc's
    /// stable sort keeps them. An empty `members` gives a ring that routes nothing.
    pub fn new(members: &[RingMember<'_>]) -> JumpRing {
        assert!(
            u32::try_from(members.len()).is_ok(),
            "jump_fnv1a_ch ring: too many members"
        );
        let mut order: Vec<u32> = (0..members.len() as u32).collect();
        glibc_merge_sort(&mut order, |&l, &r| {
            bucket_cmp(&members[l as usize], l, &members[r as usize], r)
        });
        order.reverse();
        JumpRing { reversed: order }
    }

    /// Member indexes in bucket order: bucket 0 first. c-relay prints the same list
    /// (as `index@host:port=instance`) with `-d`.
    pub fn buckets(&self) -> impl Iterator<Item = usize> + '_ {
        self.reversed.iter().rev().map(|&m| m as usize)
    }

    /// Clears `out` and pushes up to `n` distinct member indexes in preference order:
    /// with `n` = replication, c-relay's replica set; with `n` = member count, every
    /// member (the walk goes on removing and re-jumping until none is left).
    /// Allocation-free once `out` has capacity for `n`, and for rings over 64 members
    /// for the member count.
    ///
    /// `key`: the (cleansed) metric name cut at the first `;`.
    pub fn route_into(&self, key: &[u8], n: usize, out: &mut Vec<usize>) {
        out.clear();
        let members = self.reversed.len();
        let wanted = n.min(members);
        if wanted == 0 {
            return;
        }
        let hash = fnv1a_64(key);
        if wanted == 1 {
            // The common case needs no buffer: bucket j is reversed[len - 1 - j].
            out.push(self.reversed[members - 1 - jump_bucket(hash, members)] as usize);
            return;
        }
        if members <= JUMP_STACK_MEMBERS {
            let mut stack = [0u32; JUMP_STACK_MEMBERS];
            let buckets = &mut stack[..members];
            buckets.copy_from_slice(&self.reversed);
            jump_walk(buckets, hash, wanted);
            out.extend(buckets[..wanted].iter().map(|&m| m as usize));
        } else {
            out.extend(self.reversed.iter().map(|&m| m as usize));
            jump_walk(out, hash, wanted);
            out.truncate(wanted);
        }
    }

    /// Number of members (buckets).
    pub fn len(&self) -> usize {
        self.reversed.len()
    }

    /// True for a ring built from no members.
    pub fn is_empty(&self) -> bool {
        self.reversed.is_empty()
    }
}

/// c-relay's replica loop over `buckets` (bucket order reversed, see
/// [`JumpRing::reversed`]): leaves the first `wanted` choices at the front.
fn jump_walk<T: Copy>(buckets: &mut [T], mut hash: u64, wanted: usize) {
    let len = buckets.len();
    for k in 0..wanted {
        let j = jump_bucket(hash, len - k);
        buckets.swap(k, len - 1 - j);
        hash ^= hash >> 12;
        hash ^= hash << 25;
        hash ^= hash >> 27;
        hash = hash.wrapping_mul(2_685_821_657_736_338_717);
    }
}

/// c-relay's `entrycmp_jump_fnv1a` as a C comparator result (its sign is what the
/// sort reads). `l` and `r` are config indexes, c-relay's `pos` for this ring.
fn bucket_cmp(ml: &RingMember<'_>, l: u32, mr: &RingMember<'_>, r: u32) -> i64 {
    match (ml.instance, mr.instance) {
        (None, None) => i64::from(l) - i64::from(r),
        (None, Some(_)) => 1,
        (Some(_), None) => -1,
        (Some(il), Some(ir)) => {
            if let (Some(vl), Some(vr)) = (strtol_whole(il), strtol_whole(ir)) {
                // `(int)(val_l - val_r)`: a wrapping long subtraction cut to 32 bits.
                return i64::from(vl.wrapping_sub(vr) as i32);
            }
            match il.as_bytes().cmp(ir.as_bytes()) {
                Ordering::Less => -1,
                Ordering::Equal => 0,
                Ordering::Greater => 1,
            }
        }
    }
}

/// `strtol(s, &end, 10)` when `*end == '\0'` afterwards, else None: leading C
/// whitespace, an optional sign, decimal digits, saturating at the `long` bounds. As
/// in C, a string with no digits parses only when it is empty (to 0).
fn strtol_whole(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
        i += 1;
    }
    let negative = match b.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits_from = i;
    let mut value: i64 = 0;
    let mut overflow = false;
    while i < b.len() && b[i].is_ascii_digit() {
        let d = i64::from(b[i] - b'0');
        // Accumulate negatively so that i64::MIN parses without overflow.
        match value.checked_mul(10).and_then(|v| v.checked_sub(d)) {
            Some(v) => value = v,
            None => overflow = true,
        }
        i += 1;
    }
    if i == digits_from {
        // No digits: strtol leaves `end` at the start of the string.
        return s.is_empty().then_some(0);
    }
    if i != b.len() {
        return None;
    }
    Some(match (overflow, negative) {
        (true, true) => i64::MIN,
        (true, false) => i64::MAX,
        (false, true) => value,
        (false, false) => value.checked_neg().unwrap_or(i64::MAX),
    })
}

/// glibc's `qsort` as c-relay 3.7.3 gets it on Linux (`msort_with_tmp`): a top-down
/// merge sort that splits at `n / 2` and takes from the left run while
/// `cmp(left, right) <= 0`. Replayed step for step so that a comparator that is not a
/// total order still gives c-relay's order.
fn glibc_merge_sort<T: Copy>(v: &mut [T], cmp: impl Fn(&T, &T) -> i64 + Copy) {
    let mut tmp = Vec::with_capacity(v.len());
    merge_sort_with_tmp(v, &mut tmp, cmp);
}

fn merge_sort_with_tmp<T: Copy>(v: &mut [T], tmp: &mut Vec<T>, cmp: impl Fn(&T, &T) -> i64 + Copy) {
    let n = v.len();
    if n <= 1 {
        return;
    }
    let n1 = n / 2;
    merge_sort_with_tmp(&mut v[..n1], tmp, cmp);
    merge_sort_with_tmp(&mut v[n1..], tmp, cmp);
    tmp.clear();
    let (mut i, mut j) = (0, n1);
    while i < n1 && j < n {
        if cmp(&v[i], &v[j]) <= 0 {
            tmp.push(v[i]);
            i += 1;
        } else {
            tmp.push(v[j]);
            j += 1;
        }
    }
    // What is left of the right run is already in place.
    tmp.extend_from_slice(&v[i..n1]);
    v[..tmp.len()].copy_from_slice(tmp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::ring::tests::{member, members_on};

    fn fnv_route(specs: &[&str], n: usize, name: &str) -> Vec<String> {
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let mut out = Vec::new();
        FnvRing::new(&members).route_into(name.as_bytes(), n, &mut out);
        out.iter().map(|&i| specs[i].to_string()).collect()
    }

    fn jump_route(specs: &[&str], n: usize, name: &str) -> Vec<String> {
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let mut out = Vec::new();
        JumpRing::new(&members).route_into(name.as_bytes(), n, &mut out);
        out.iter().map(|&i| specs[i].to_string()).collect()
    }

    const TEN_0_0_1_TO_3: [&str; 3] = ["10.0.0.1:2003", "10.0.0.2:2003", "10.0.0.3:2003"];
    const TEN_0_0_1_TO_4: [&str; 4] = [
        "10.0.0.1:2003",
        "10.0.0.2:2003",
        "10.0.0.3:2003",
        "10.0.0.4:2003",
    ];

    #[test]
    fn fnv_vectors() {
        // relays.md §2 (also carbon's test_hashing.py).
        assert_eq!(fnv1a_32(b"hosts.worker1.cpu"), 0x7e46_96f3);
        assert_eq!(FnvRing::position(b"hosts.worker1.cpu"), 59573);
        assert_eq!(FnvRing::position(b"a.b.c.d"), 65284);
        assert_eq!(FnvRing::position(b"0-10.0.0.1:2003"), 49703);
        assert_eq!(fnv1a_64(b"a.b.c.d"), 0x1a46_7c30_6c2b_d825);
    }

    #[test]
    fn fnv_sign_extends_high_bytes() {
        // Standard FNV-1a of "\xe9" is (offset ^ 0xe9) * prime; c-relay XORs 0xffffffe9.
        let standard = (2_166_136_261u32 ^ 0xe9).wrapping_mul(16_777_619);
        let crelay = (2_166_136_261u32 ^ 0xffff_ffe9).wrapping_mul(16_777_619);
        assert_ne!(standard, crelay);
        assert_eq!(fnv1a_32(&[0xe9]), crelay);
        assert_eq!(
            fnv1a_32(b"a"),
            (2_166_136_261u32 ^ 0x61).wrapping_mul(16_777_619)
        );
        let crelay64 =
            (14_695_981_039_346_656_037u64 ^ 0xffff_ffff_ffff_ffe9).wrapping_mul(1_099_511_628_211);
        assert_eq!(fnv1a_64(&[0xe9]), crelay64);
    }

    #[test]
    fn fnv1a_ch_vectors() {
        assert_eq!(fnv_route(&TEN_0_0_1_TO_3, 1, "a.b.c.d"), ["10.0.0.3:2003"]);
        let three = fnv_route(&TEN_0_0_1_TO_3, 3, "a.b.c.d");
        assert_eq!(three[0], "10.0.0.3:2003");
        assert_eq!(three.len(), 3);
    }

    #[test]
    fn fnv_instance_replaces_host_and_port() {
        let mut buf = String::new();
        write_replica_key(&mut buf, &member("10.0.0.1:2003"), 0);
        assert_eq!(buf, "0-10.0.0.1:2003");
        write_replica_key(&mut buf, &member("10.0.0.1:2003=a"), 99);
        assert_eq!(buf, "99-a");
        // Same instance on two hosts: every position ties, the smaller host owns all.
        let specs = ["10.0.0.9:2003=a", "10.0.0.1:2004=a", "10.0.0.5:2003=b"];
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let ring = FnvRing::new(&members);
        assert!(ring.ring.entries.iter().all(|e| e.member != 0));
    }

    #[test]
    fn fnv_ties_sort_by_host_then_port() {
        // Same host, no instance, ports differ: keys differ, so search for a tie.
        let specs = ["10.0.0.1:2004", "10.0.0.1:2003"];
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let ring = FnvRing::new(&members);
        for w in ring.ring.entries.windows(2) {
            assert!(w[0].pos <= w[1].pos);
            if w[0].pos == w[1].pos {
                assert_eq!(w[1].member, 1, "the smaller port owns a tie");
                assert_eq!(w[0].member, 1);
            }
        }
    }

    #[test]
    fn jump_vectors() {
        // relays.md §2: jump of fnv64("a.b.c.d") for n = 1, 2, 3, 4, 5, 10.
        let h = fnv1a_64(b"a.b.c.d");
        let got: Vec<usize> = [1, 2, 3, 4, 5, 10].map(|n| jump_bucket(h, n)).to_vec();
        assert_eq!(got, [0, 1, 1, 1, 1, 5]);
        assert_eq!(
            jump_route(&TEN_0_0_1_TO_4, 2, "a.b.c.d"),
            ["10.0.0.2:2003", "10.0.0.4:2003"]
        );
        assert_eq!(
            jump_route(&TEN_0_0_1_TO_4, 2, "collectd.bar.memory.free"),
            ["10.0.0.1:2003", "10.0.0.4:2003"]
        );
    }

    #[test]
    fn jump_bucket_order() {
        let order = |specs: &[&str]| -> Vec<usize> {
            let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
            JumpRing::new(&members).buckets().collect()
        };
        // relays.md: =10, =2, =1 orders as 1, 2, 10 (numeric, not "1, 10, 2").
        assert_eq!(
            order(&["h:1=10", "h:2=2", "h:3=1"]),
            [2, 1, 0],
            "numeric instances"
        );
        // Instances first, then members without one in config order.
        assert_eq!(order(&["h:1", "h:2=b", "h:3", "h:4=a"]), [3, 1, 0, 2]);
        // Mixed: numeric only when both parse whole.
        assert_eq!(order(&["h:1=b", "h:2=10", "h:3=9"]), [2, 1, 0]);
    }

    #[test]
    fn jump_non_transitive_order_follows_glibc_merge_sort() {
        // "9" < "10" (numbers), "10" < "1a" and "1a" < "9" (strcmp): a cycle. glibc
        // sorts [10, 9, 1a] as [10] | [9, 1a]; the right run becomes [1a, 9]; the
        // merge takes 10 (before 1a), then 1a, 9.
        let specs = ["h:1=10", "h:2=9", "h:3=1a"];
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let order: Vec<usize> = JumpRing::new(&members).buckets().collect();
        assert_eq!(order, [0, 2, 1]);
        // With a fourth member, no instance: [10, 9] | [1a, -] -> [9, 10] | [1a, -] ->
        // 1a, 9, 10, -. c-relay 3.7.3 `-t -d` prints this bucket order.
        let specs = ["h:1=10", "h:2=9", "h:3=1a", "h:4"];
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let order: Vec<usize> = JumpRing::new(&members).buckets().collect();
        assert_eq!(order, [2, 1, 0, 3]);
    }

    #[test]
    fn strtol_whole_like_c() {
        assert_eq!(strtol_whole("10"), Some(10));
        assert_eq!(strtol_whole(" -7"), Some(-7));
        assert_eq!(strtol_whole("+3"), Some(3));
        assert_eq!(strtol_whole(""), Some(0));
        assert_eq!(strtol_whole("-"), None);
        assert_eq!(strtol_whole("1a"), None);
        assert_eq!(strtol_whole("a"), None);
        assert_eq!(strtol_whole("99999999999999999999"), Some(i64::MAX));
        assert_eq!(strtol_whole("-99999999999999999999"), Some(i64::MIN));
        assert_eq!(strtol_whole("-9223372036854775808"), Some(i64::MIN));
    }

    #[test]
    fn jump_walk_is_a_permutation_extending_the_replica_set() {
        let specs = [
            "10.0.0.1:2003=3",
            "10.0.0.2:2003",
            "10.0.0.3:2003=1",
            "10.0.0.4:2003",
            "10.0.0.5:2003=x",
        ];
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let ring = JumpRing::new(&members);
        let mut full = Vec::new();
        let mut part = Vec::new();
        for i in 0..2000 {
            let name = format!("prop.{i}.value");
            ring.route_into(name.as_bytes(), 99, &mut full);
            let mut sorted = full.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3, 4]);
            for n in 0..=5 {
                ring.route_into(name.as_bytes(), n, &mut part);
                assert_eq!(part, full[..n]);
            }
        }
    }

    #[test]
    fn jump_large_ring_walks_in_out() {
        // Over the stack buffer: the walk runs in `out` and must agree with a plain
        // replay of c-relay's loop.
        let hosts: Vec<String> = (0..300)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let members = members_on(&hosts, 2003);
        let ring = JumpRing::new(&members);
        let mut out = Vec::new();
        for i in 0..50 {
            let name = format!("big.{i}");
            ring.route_into(name.as_bytes(), 7, &mut out);
            // c-relay's loop, literally.
            let mut bck: Vec<usize> = (0..300).collect();
            let mut n = bck.len();
            let mut h = fnv1a_64(name.as_bytes());
            let mut want = Vec::new();
            while want.len() < 7 {
                let j = jump_bucket(h, n);
                want.push(bck[j]);
                h ^= h >> 12;
                h ^= h << 25;
                h ^= h >> 27;
                h = h.wrapping_mul(2_685_821_657_736_338_717);
                n -= 1;
                bck[j] = bck[n];
            }
            assert_eq!(out, want);
        }
    }

    #[test]
    fn large_fnv_ring_searches_without_the_table() {
        // 700 members: 70000 entries, more than the u16 table indexes.
        let hosts: Vec<String> = (0..700)
            .map(|i| format!("10.8.{}.{}", i / 250, i % 250))
            .collect();
        let members = members_on(&hosts, 2003);
        let ring = FnvRing::new(&members);
        assert!(ring.ring.first_at.is_empty());
        let points: Vec<(u16, usize)> = ring.points().collect();
        let mut out = Vec::new();
        for k in 0..100 {
            let name = format!("large.{k}");
            let pos = FnvRing::position(name.as_bytes());
            let start = points.iter().position(|p| p.0 >= pos).unwrap_or(0);
            let mut walk: Vec<usize> = Vec::new();
            let mut met = vec![false; members.len()];
            for i in 0..points.len() {
                let m = points[(start + i) % points.len()].1;
                if !met[m] && walk.len() < 300 {
                    met[m] = true;
                    walk.push(m);
                }
            }
            ring.route_into(name.as_bytes(), 300, &mut out);
            assert_eq!(out, walk, "{name}");
        }
    }

    #[test]
    fn fnv_walk_and_edges() {
        let specs = [
            "10.0.0.1:2003",
            "10.0.0.2:2003=x",
            "127.0.0.1:2101=a",
            "127.0.0.1:2102",
        ];
        let members: Vec<RingMember<'_>> = specs.iter().map(|s| member(s)).collect();
        let ring = FnvRing::new(&members);
        assert_eq!(ring.len(), 400);
        let mut out = Vec::new();
        let mut primary = Vec::new();
        for i in 0..2000 {
            let name = format!("prop.{i}.value");
            ring.route_into(name.as_bytes(), 10, &mut out);
            let mut sorted = out.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3]);
            ring.route_into(name.as_bytes(), 1, &mut primary);
            assert_eq!(primary[..], out[..1]);
        }
        ring.route_into(b"x", 0, &mut out);
        assert!(out.is_empty());
        let empty = FnvRing::new(&[]);
        assert!(empty.is_empty());
        empty.route_into(b"x", 2, &mut out);
        assert!(out.is_empty());
        let empty = JumpRing::new(&[]);
        assert!(empty.is_empty());
        empty.route_into(b"x", 2, &mut out);
        assert!(out.is_empty());
    }
}

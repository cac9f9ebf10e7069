//! A set's distinct members, as 64-bit hashes ([`super::member_hash`]), in one flat
//! open-addressing array. Etsy counts a set's distinct members per interval; the engine
//! keeps only their hashes, and a busy set's table outgrows the CPU caches, so what an
//! insert costs is the cache lines it touches. A general hash set reads a control byte
//! group and then the bucket, two lines in different places; here the hash is the
//! entry and its home is its low bits, so an insert usually reads one line. The hashes
//! are seeded per process ([`super::member_hash`]), so members cannot be chosen
//! offline to share their low bits and pile up in one run.

/// The free entry. A member whose hash is 0 is stored as [`ZERO_AS`] instead, which
/// makes it the same member as one whose hash is `ZERO_AS`: two hashes out of 2^64.
const FREE: u64 = 0;
const ZERO_AS: u64 = 1;

/// The smallest table, one cache line.
const MIN_ENTRIES: usize = 8;

/// Distinct 64-bit member hashes; linear probing, at most three quarters full.
#[derive(Default)]
pub struct Members {
    entries: Box<[u64]>,
    len: usize,
}

impl Members {
    /// Distinct members held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no member is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `h`, unless the set holds `max` members already and `h` is not one of
    /// them; says which of the three happened.
    #[inline]
    pub fn insert(&mut self, h: u64, max: usize) -> Insert {
        let h = if h == FREE { ZERO_AS } else { h };
        if !self.entries.is_empty() {
            let mask = self.entries.len() - 1;
            let mut i = h as usize & mask;
            loop {
                let e = self.entries[i];
                if e == h {
                    return Insert::Present;
                }
                if e == FREE {
                    break;
                }
                i = (i + 1) & mask;
            }
        }
        if self.len >= max {
            return Insert::Full;
        }
        if (self.len + 1) * 4 > self.entries.len() * 3 {
            self.grow();
        }
        self.place(h);
        self.len += 1;
        Insert::Added
    }

    /// Puts `h` (known absent) in its first free entry.
    #[inline]
    fn place(&mut self, h: u64) {
        let mask = self.entries.len() - 1;
        let mut i = h as usize & mask;
        while self.entries[i] != FREE {
            i = (i + 1) & mask;
        }
        self.entries[i] = h;
    }

    fn grow(&mut self) {
        let cap = (self.entries.len() * 2).max(MIN_ENTRIES);
        self.rebuild(cap);
    }

    fn rebuild(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.entries, vec![FREE; cap].into_boxed_slice());
        for &h in old.iter().filter(|&&h| h != FREE) {
            self.place(h);
        }
    }

    /// Forgets every member (a flush). The table keeps its size for the next interval,
    /// unless it is more than four times what this interval held: then it shrinks to fit
    /// that, so one burst does not pin its memory for good.
    pub fn clear(&mut self) {
        let fits = table_size(self.len);
        self.len = 0;
        if self.entries.len() > 4 * fits.max(MIN_ENTRIES) {
            self.entries = vec![FREE; fits].into_boxed_slice();
        } else {
            self.entries.fill(FREE);
        }
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<u64>()
    }
}

/// The table size that holds `n` members at most three quarters full.
fn table_size(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (n * 4).div_ceil(3).next_power_of_two().max(MIN_ENTRIES)
}

/// What [`Members::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// A new member was added.
    Added,
    /// The member was held already.
    Present,
    /// A new member, not added: the set holds its maximum.
    Full,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::SplitMix64;
    use std::collections::HashSet;

    #[test]
    fn counts_distinct_hashes_as_a_hash_set_does() {
        let mut rng = SplitMix64(11);
        for round in 0..40 {
            let mut m = Members::default();
            let mut want = HashSet::new();
            let n = rng.next_u64() % 3000;
            // Few distinct values so that repeats are common; some hashes share low bits.
            let spread = 1 + rng.next_u64() % 4000;
            for _ in 0..n {
                let h = match rng.next_u64() % 5 {
                    0 => (rng.next_u64() % spread) << 40,
                    1 => 0,
                    _ => rng.next_u64() % spread,
                };
                let key = if h == 0 { 1 } else { h };
                let added = m.insert(h, usize::MAX) == Insert::Added;
                assert_eq!(added, want.insert(key), "round {round}");
                assert_eq!(m.len(), want.len());
            }
            m.clear();
            assert_eq!(m.len(), 0);
            assert!(m.bytes() <= 4 * table_size(want.len()).max(MIN_ENTRIES) * 8);
            for &h in want.iter().take(5) {
                assert_eq!(m.insert(h, usize::MAX), Insert::Added);
            }
        }
    }

    #[test]
    fn a_full_set_takes_no_new_member_but_knows_its_own() {
        let mut m = Members::default();
        for h in 1..=10 {
            assert_eq!(m.insert(h, 10), Insert::Added);
        }
        assert_eq!(m.insert(11, 10), Insert::Full);
        assert_eq!(m.insert(3, 10), Insert::Present);
        assert_eq!(m.len(), 10);
    }

    #[test]
    fn clear_shrinks_a_table_a_burst_grew() {
        let mut m = Members::default();
        for h in 1..=100_000 {
            m.insert(h, usize::MAX);
        }
        m.clear();
        for h in 1..=10 {
            m.insert(h, usize::MAX);
        }
        m.clear();
        assert!(m.bytes() <= 16 * 8, "{}", m.bytes());
        m.clear();
        assert_eq!(m.insert(5, usize::MAX), Insert::Added);
    }
}

//! Names as 128-bit fingerprints, and an index from fingerprint to slot that can be
//! prefetched: what the statsd engine's key tables and the store cache look names up
//! with, one hash per name and no name bytes compared.

/// A name's 128-bit fingerprint: XXH3-128 of its bytes (one pass over the name). Two
/// distinct names share one with probability about n^2 / 2^129 for n names, below
/// 1e-26 at 1M keys per shard. Unseeded, so every shard (and the owner-shard choice,
/// `hash(name) % shards`) computes the same value in one process and across processes.
#[inline]
pub fn fingerprint(name: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(name)
}

/// A random odd value drawn once per process (from the OS, through std's `RandomState`).
/// The tables below place entries by their hash mixed with it: fingerprints are
/// unseeded (every shard and process must agree on a name's owner), so without it
/// anyone could compute, offline, names or set members that all land on one run of a
/// table and make every lookup walk it.
pub fn process_seed() -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1)
}

/// Where a 64-bit hash starts probing in a table of `mask + 1` entries (a power of
/// two, at most 2^32): the hash times `seed` (odd, from [`process_seed`]), its high half
/// folded in, times a fixed odd constant, high half. Hashes that share their low bits
/// get homes that depend on their other bits through a multiplier the sender does not
/// know. One multiply alone (the high half of `h * seed`) spread hashes that differ
/// only in a few bits badly for about 4 % of seeds (an arithmetic run of 4,096 hashes
/// had as few as 240 homes in 65,536); the second round evens that out (at least 3,708
/// in 1,000 seeds, 3,957 on average, against 3,970 for random homes).
#[inline]
pub fn home(h: u64, seed: u64, mask: usize) -> usize {
    let x = h.wrapping_mul(seed);
    let x = (x ^ (x >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((x >> 32) as usize) & mask
}

/// Fingerprint -> slot id, open addressing with linear probing, at most half full, so a
/// lookup usually reads one 24-byte entry, and that entry can be prefetched a few keys
/// ahead ([`FpIndex::prefetch`]): at 100k keys the index outgrows the CPU caches, and the
/// lookup's miss is most of what a sample costs. Removal shifts the entries after it
/// back, so no tombstones accumulate.
pub struct FpIndex {
    entries: Vec<Entry>,
    len: usize,
    seed: u64,
}

impl Default for FpIndex {
    fn default() -> Self {
        FpIndex {
            entries: Vec::new(),
            len: 0,
            seed: process_seed(),
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    lo: u64,
    hi: u64,
    /// [`EMPTY`] for a free entry.
    id: u32,
}

const EMPTY: u32 = u32::MAX;
const FREE: Entry = Entry {
    lo: 0,
    hi: 0,
    id: EMPTY,
};

impl std::fmt::Debug for FpIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FpIndex({} of {})", self.len, self.entries.len())
    }
}

impl FpIndex {
    /// Entries held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// Starts loading the entry a lookup of `fp` reads first.
    #[inline]
    pub fn prefetch(&self, fp: u128) {
        if self.entries.is_empty() {
            return;
        }
        let e = &self.entries[home(fp as u64, self.seed, self.mask())];
        crate::route::cache::prefetch_read(e);
    }

    /// The id held for `fp`.
    #[inline]
    pub fn get(&self, fp: u128) -> Option<u32> {
        if self.entries.is_empty() {
            return None;
        }
        let (lo, hi) = (fp as u64, (fp >> 64) as u64);
        let mask = self.mask();
        let mut i = home(lo, self.seed, mask);
        loop {
            let e = &self.entries[i];
            if e.id == EMPTY {
                return None;
            }
            if e.lo == lo && e.hi == hi {
                return Some(e.id);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `fp -> id`; the caller checked `fp` is absent.
    pub fn insert(&mut self, fp: u128, id: u32) {
        debug_assert!(id != EMPTY);
        if (self.len + 1) * 2 > self.entries.len() {
            self.grow();
        }
        let (lo, hi) = (fp as u64, (fp >> 64) as u64);
        let mask = self.mask();
        let mut i = home(lo, self.seed, mask);
        while self.entries[i].id != EMPTY {
            i = (i + 1) & mask;
        }
        self.entries[i] = Entry { lo, hi, id };
        self.len += 1;
    }

    /// Removes `fp` if held.
    pub fn remove(&mut self, fp: u128) {
        if self.entries.is_empty() {
            return;
        }
        let (lo, hi) = (fp as u64, (fp >> 64) as u64);
        let mask = self.mask();
        let mut i = home(lo, self.seed, mask);
        loop {
            let e = self.entries[i];
            if e.id == EMPTY {
                return;
            }
            if e.lo == lo && e.hi == hi {
                break;
            }
            i = (i + 1) & mask;
        }
        // Backward shift: move later entries of the run into the hole when their home
        // is not between the hole and their place.
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let e = self.entries[j];
            if e.id == EMPTY {
                break;
            }
            let home = home(e.lo, self.seed, mask);
            let between = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !between {
                self.entries[hole] = e;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.entries[hole] = FREE;
        self.len -= 1;
    }

    fn grow(&mut self) {
        let cap = (self.entries.len() * 2).max(64);
        let old = std::mem::replace(&mut self.entries, vec![FREE; cap]);
        self.len = 0;
        for e in old.into_iter().filter(|e| e.id != EMPTY) {
            self.insert(u128::from(e.lo) | (u128::from(e.hi) << 64), e.id);
        }
    }

    /// Bytes of the entries allocated.
    pub fn bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_that_share_low_bits_do_not_share_a_home() {
        // Names (or set members) an attacker found to share the hash's low 32 bits.
        let seed = process_seed();
        let mask = (1 << 16) - 1;
        let homes: std::collections::HashSet<usize> = (0..4096u64)
            .map(|b| home(0x1234_5678 | (b << 32), seed, mask))
            .collect();
        assert!(homes.len() > 3500, "{} homes of 4096", homes.len());
        // And those that share their high bits.
        let homes: std::collections::HashSet<usize> = (0..4096u64)
            .map(|b| home((0xabcd_u64 << 48) | b, seed, mask))
            .collect();
        assert!(homes.len() > 3500, "{} homes of 4096", homes.len());
        // Whatever the seed (a few fixed ones here, besides the process's).
        for seed in [
            1u64,
            3,
            0x1_0000_0001,
            0xffff_ffff_ffff_ffff,
            0x8000_0000_0000_0001,
        ] {
            for make in [
                |b: u64| 0x1234_5678 | (b << 32),
                |b: u64| (0xabcd_u64 << 48) | b,
            ] {
                let homes: std::collections::HashSet<usize> =
                    (0..4096u64).map(|b| home(make(b), seed, mask)).collect();
                assert!(homes.len() > 3500, "seed {seed:#x}: {} homes", homes.len());
            }
        }
    }

    #[test]
    fn index_finds_inserts_and_removes_with_backward_shift() {
        let mut ix = FpIndex::default();
        let fps: Vec<u128> = (0..5000u32)
            .map(|i| fingerprint(format!("k{i}").as_bytes()))
            .collect();
        for (i, &fp) in fps.iter().enumerate() {
            ix.insert(fp, i as u32);
        }
        // Entries that share a home slot, to exercise the shift.
        let mut clash = Vec::new();
        for i in 0..64u128 {
            let fp = (i << 80) | 7;
            ix.insert(fp, 10_000 + i as u32);
            clash.push(fp);
        }
        for (i, &fp) in fps.iter().enumerate().step_by(3) {
            assert_eq!(ix.get(fp), Some(i as u32));
            ix.remove(fp);
            assert_eq!(ix.get(fp), None);
        }
        for &fp in clash.iter().step_by(2) {
            ix.remove(fp);
        }
        for (i, &fp) in fps.iter().enumerate() {
            let want = (i % 3 != 0).then_some(i as u32);
            assert_eq!(ix.get(fp), want, "{i}");
        }
        for (i, &fp) in clash.iter().enumerate() {
            let want = (i % 2 == 1).then_some(10_000 + i as u32);
            assert_eq!(ix.get(fp), want, "clash {i}");
        }
    }
}

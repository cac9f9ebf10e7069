//! The route cache: metric name -> routing plan, in one cache line per lookup.
//!
//! A hash map keyed by the name needs two or three dependent memory reads per lookup
//! (control bytes, bucket, the key behind its pointer), and at volume each one misses the
//! CPU caches: that was most of what a cached route cost. Here a name is reduced to a
//! 128-bit fingerprint (two independent, per-process randomly seeded 64-bit hashes) and
//! the table stores fingerprints and plan ids inline, open-addressed with linear probing.
//! A lookup reads one slot, usually in one line, and can be prefetched a few lines ahead.
//!
//! Two different names share a fingerprint with probability about n / 2^128 per lookup
//! (n names in the table): for a million names at a million lookups per second, once in
//! ~10^19 years. That is the price of not storing names, and it is paid knowingly.

/// A name's fingerprint. `lo` also picks the slot. Never all zero (zero marks a free slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    lo: u64,
    hi: u64,
}

impl Fingerprint {
    /// The free-slot marker; never the fingerprint of a name.
    pub const ZERO: Fingerprint = Fingerprint { lo: 0, hi: 0 };
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    fp: Fingerprint,
    plan: u32,
}

/// Fingerprint -> plan id, bounded by a number of names.
#[derive(Debug, Clone)]
pub struct FingerprintTable {
    hash_lo: ahash::RandomState,
    hash_hi: ahash::RandomState,
    slots: Vec<Slot>,
    len: usize,
    names_max: usize,
}

/// Slots allocated at first use; the table doubles from here up to what `names_max` needs.
const SLOTS_INITIAL: usize = 1 << 12;

impl FingerprintTable {
    /// An empty table that holds at most `names_max` names (0 = holds nothing).
    pub fn new(names_max: usize) -> FingerprintTable {
        FingerprintTable {
            hash_lo: ahash::RandomState::new(),
            hash_hi: ahash::RandomState::new(),
            slots: Vec::new(),
            len: 0,
            names_max,
        }
    }

    /// The fingerprint of a name, the length of the prefix of it that is hashed, its form
    /// (cleansed or not, collectd identifier) and where it came from: everything a
    /// routing decision depends on.
    #[inline]
    pub fn fingerprint(&self, name: &[u8], key_len: usize, form: u8, origin: u32) -> Fingerprint {
        let lo = self.hash_lo.hash_one(name);
        let hi = self.hash_hi.hash_one((name, key_len, form, origin));
        Fingerprint {
            lo,
            hi: if lo == 0 && hi == 0 { 1 } else { hi },
        }
    }

    /// Asks the CPU to start loading the slot of `fp`, so a later lookup finds it in cache.
    #[inline]
    pub fn prefetch(&self, fp: Fingerprint) {
        if self.slots.is_empty() {
            return;
        }
        let idx = fp.lo as usize & (self.slots.len() - 1);
        prefetch_read(&self.slots[idx]);
    }

    /// The plan id stored for `fp`.
    #[inline]
    pub fn get(&self, fp: Fingerprint) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut idx = fp.lo as usize & mask;
        loop {
            let s = &self.slots[idx];
            if s.fp == fp {
                return Some(s.plan);
            }
            if s.fp == Fingerprint::ZERO {
                return None;
            }
            idx = (idx + 1) & mask;
        }
    }

    /// Stores `fp -> plan`. Returns false (and stores nothing) when the table is full:
    /// the caller empties it and starts over.
    pub fn insert(&mut self, fp: Fingerprint, plan: u32) -> bool {
        if self.len >= self.names_max {
            return false;
        }
        // Keep the load at or below one half, so probes stay short.
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut idx = fp.lo as usize & mask;
        loop {
            let s = &mut self.slots[idx];
            if s.fp == Fingerprint::ZERO {
                *s = Slot { fp, plan };
                self.len += 1;
                return true;
            }
            if s.fp == fp {
                s.plan = plan;
                return true;
            }
            idx = (idx + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(SLOTS_INITIAL);
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); cap]);
        let mask = cap - 1;
        for s in old.into_iter().filter(|s| s.fp != Fingerprint::ZERO) {
            let mut idx = s.fp.lo as usize & mask;
            while self.slots[idx].fp != Fingerprint::ZERO {
                idx = (idx + 1) & mask;
            }
            self.slots[idx] = s;
        }
    }

    /// Forgets every name (keeps the memory).
    pub fn clear(&mut self) {
        self.slots.fill(Slot::default());
        self.len = 0;
    }

    /// Names stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no name is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[inline]
/// Asks the CPU to start loading `p` into its caches (a hint; nothing else happens).
pub fn prefetch_read<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint with no architectural effect; the pointer comes from a
    // live reference, and SSE (which provides the instruction) is part of x86_64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const T as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_finds_grows_and_stays_bounded() {
        let mut t = FingerprintTable::new(10_000);
        let names: Vec<String> = (0..10_000).map(|i| format!("a.b.c{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            let fp = t.fingerprint(n.as_bytes(), n.len(), 0, 0);
            t.prefetch(fp);
            assert_eq!(t.get(fp), None);
            assert!(t.insert(fp, i as u32));
        }
        assert_eq!(t.len(), 10_000);
        for (i, n) in names.iter().enumerate() {
            assert_eq!(
                t.get(t.fingerprint(n.as_bytes(), n.len(), 0, 0)),
                Some(i as u32),
                "{n}"
            );
        }
        assert!(
            !t.insert(t.fingerprint(b"one.more", 8, 0, 0), 1),
            "full at names_max"
        );
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.get(t.fingerprint(b"a.b.c1", 6, 0, 0)), None);
        assert_ne!(
            t.fingerprint(b"a;b", 1, 0, 0),
            t.fingerprint(b"a;b", 3, 0, 0)
        );
        assert_ne!(t.fingerprint(b"a", 1, 0, 0), t.fingerprint(b"a", 1, 1, 0));
        assert!(FingerprintTable::new(0)
            .get(Fingerprint { lo: 1, hi: 1 })
            .is_none());
    }
}

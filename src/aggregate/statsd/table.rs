//! An insertion-ordered key table, the shape of a JavaScript object used as a map (Etsy
//! keeps each metric type in one): a new key goes last, assigning an existing key keeps
//! its place, a deleted key that comes back goes last again. One more JavaScript rule is
//! kept because it changes output order: keys that are array indices (`"0"`, `"17"`: a
//! canonical decimal below 2^32 - 1) are iterated first, in numeric order.
//!
//! Names are looked up by a 128-bit fingerprint ([`fingerprint`]), so a lookup hashes
//! the name once and compares no bytes; the name itself is stored once, for output.

use std::hash::{BuildHasher, Hasher};

pub use crate::fingerprint::fingerprint;
use crate::fingerprint::{process_seed, FpIndex};

/// Hashes a `u128` fingerprint or a `u64` name hash
/// ([`crate::aggregate::carbon::name_hash`]), both already good but unseeded hashes,
/// by a folded multiply with the process's seed ([`process_seed`], read once per map
/// by [`FingerprintBuild`]): a hash map places keys by the low bits of this, and
/// without the seed names sharing those bits could be computed offline and made to
/// pile up in one probe sequence.
#[derive(Clone, Copy)]
pub struct FingerprintHasher {
    state: u64,
    seed: u64,
}

impl FingerprintHasher {
    #[inline]
    fn folded(&self, v: u64) -> u64 {
        let p = u128::from(v) * u128::from(self.seed);
        (p as u64) ^ ((p >> 64) as u64)
    }
}

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.state
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for types other than the u128/u64 keys this is used with.
        for &b in bytes {
            self.state = self.folded(self.state.rotate_left(8) ^ u64::from(b));
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.state = self.folded(v as u64 ^ (v >> 64) as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.state = self.folded(v);
    }
}

/// `BuildHasher` for maps keyed by fingerprints or name hashes: holds the process's
/// seed, so hashing a key does not read it again.
#[derive(Clone, Copy)]
pub struct FingerprintBuild {
    seed: u64,
}

impl Default for FingerprintBuild {
    fn default() -> Self {
        FingerprintBuild {
            seed: process_seed(),
        }
    }
}

impl BuildHasher for FingerprintBuild {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher {
            state: 0,
            seed: self.seed,
        }
    }
}

const NOT_INDEX: u32 = u32::MAX;

struct Slot<V> {
    name: Box<[u8]>,
    /// Numeric value when the name is a JavaScript array index, else [`NOT_INDEX`]
    /// (indices stop at 2^32 - 2, so the sentinel is free; a plain u32 keeps the
    /// slot 8 bytes smaller than an `Option`).
    array_index: u32,
    live: bool,
    value: V,
}

/// Insertion-ordered map from metric name to `V`, with stable slot ids.
pub struct Table<V> {
    index: FpIndex,
    slots: Vec<Slot<V>>,
    /// Slot ids in insertion order; may hold dead ids until [`Table::compact`].
    order: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    array_index_live: usize,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            index: FpIndex::default(),
            slots: Vec::new(),
            order: Vec::new(),
            free: Vec::new(),
            live: 0,
            array_index_live: 0,
        }
    }
}

impl<V> Table<V> {
    /// Live keys.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The slot of a fingerprint, if live.
    #[inline]
    pub fn get(&self, fp: u128) -> Option<u32> {
        self.index.get(fp)
    }

    /// Starts loading the index entry of `fp`, for a [`get`](Self::get) soon after.
    #[inline]
    pub fn prefetch(&self, fp: u128) {
        self.index.prefetch(fp);
    }

    /// Adds a new key (the caller checked it is absent) and returns its slot.
    pub fn insert(&mut self, fp: u128, name: &[u8], value: V) -> u32 {
        let array_index = js_array_index(name).unwrap_or(NOT_INDEX);
        let slot = Slot {
            name: name.into(),
            array_index,
            live: true,
            value,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = slot;
                id
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(fp, id);
        self.order.push(id);
        self.live += 1;
        if array_index != NOT_INDEX {
            self.array_index_live += 1;
        }
        id
    }

    /// The value in a slot.
    #[inline]
    pub fn value_mut(&mut self, id: u32) -> &mut V {
        &mut self.slots[id as usize].value
    }

    /// The value in a slot.
    #[inline]
    pub fn value(&self, id: u32) -> &V {
        &self.slots[id as usize].value
    }

    /// The name in a slot.
    #[inline]
    pub fn name(&self, id: u32) -> &[u8] {
        &self.slots[id as usize].name
    }

    /// Deletes a live slot. Its id stays in the iteration order until [`Table::compact`],
    /// which must run before the next insert.
    pub fn delete(&mut self, id: u32)
    where
        V: Default,
    {
        let slot = &mut self.slots[id as usize];
        // The value's heap parts (a timer's values, a set's members) go now, not when
        // the slot is taken again.
        slot.value = V::default();
        debug_assert!(slot.live);
        slot.live = false;
        if slot.array_index != NOT_INDEX {
            self.array_index_live -= 1;
        }
        let fp = fingerprint(&slot.name);
        slot.name = Box::default();
        self.index.remove(fp);
        self.free.push(id);
        self.live -= 1;
    }

    /// Drops deleted ids from the iteration order.
    pub fn compact(&mut self) {
        if self.order.len() != self.live {
            let slots = &self.slots;
            self.order.retain(|&id| slots[id as usize].live);
        }
        debug_assert_eq!(self.order.len(), self.live);
    }

    /// Fills `out` with the live slot ids in JavaScript's `for..in` order: array-index
    /// names first by numeric value, then the rest in insertion order.
    pub fn iteration_order(&self, out: &mut Vec<u32>) {
        out.clear();
        let slots = &self.slots;
        let live = self
            .order
            .iter()
            .copied()
            .filter(|&id| slots[id as usize].live);
        if self.array_index_live == 0 {
            out.extend(live);
            return;
        }
        out.extend(
            live.clone()
                .filter(|&id| slots[id as usize].array_index != NOT_INDEX),
        );
        out.sort_unstable_by_key(|&id| slots[id as usize].array_index);
        out.extend(live.filter(|&id| slots[id as usize].array_index == NOT_INDEX));
    }

    /// Heap and inline bytes this table holds (names, slots, index, order), for sizing.
    pub fn bytes_estimate(&self) -> usize {
        let names: usize = self.slots.iter().map(|s| s.name.len()).sum();
        names
            + self.slots.capacity() * std::mem::size_of::<Slot<V>>()
            + self.index.bytes()
            + self.order.capacity() * 4
            + self.free.capacity() * 4
    }
}

/// The numeric value of a name JavaScript treats as an array index: `"0"` or a decimal
/// without leading zeros whose value is at most 2^32 - 2.
fn js_array_index(name: &[u8]) -> Option<u32> {
    if name.is_empty() || name.len() > 10 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if name.len() > 1 && name[0] == b'0' {
        return None;
    }
    let v: u64 = name
        .iter()
        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    (v <= u64::from(u32::MAX - 1)).then_some(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(t: &Table<u32>) -> Vec<String> {
        let mut order = Vec::new();
        t.iteration_order(&mut order);
        order
            .iter()
            .map(|&id| String::from_utf8(t.name(id).to_vec()).unwrap())
            .collect()
    }

    fn add(t: &mut Table<u32>, n: &str) {
        let fp = fingerprint(n.as_bytes());
        if t.get(fp).is_none() {
            t.insert(fp, n.as_bytes(), 0);
        }
    }

    #[test]
    fn fingerprint_halves_are_independent_hashes() {
        let names = [&b"a"[..], b"b", b"stats.x", b"", b"a.b.c;k=v"];
        let fps: Vec<u128> = names.iter().map(|n| fingerprint(n)).collect();
        // Fixed values: a name's fingerprint (and so its owner shard) does not depend
        // on the process or the build.
        assert_eq!(fps[0], 0xa96f_af70_5af1_6834_e6c6_32b6_1e96_4e1f);
        for (i, fp) in fps.iter().enumerate() {
            assert_ne!(*fp as u64, 0);
            assert_ne!((*fp >> 64) as u64, 0);
            assert_ne!(*fp as u64, (*fp >> 64) as u64);
            for other in &fps[i + 1..] {
                assert_ne!(*fp as u64, *other as u64);
                assert_ne!(fp >> 64, other >> 64);
            }
        }
    }

    #[test]
    fn javascript_object_order() {
        let mut t = Table::default();
        for n in ["b", "a", "10", "2", "007", "4294967295", "4294967294", "a"] {
            add(&mut t, n);
        }
        assert_eq!(
            names(&t),
            ["2", "10", "4294967294", "b", "a", "007", "4294967295"]
        );
        let b = t.get(fingerprint(b"b")).unwrap();
        t.delete(b);
        t.compact();
        add(&mut t, "c");
        add(&mut t, "b");
        assert_eq!(
            names(&t),
            ["2", "10", "4294967294", "a", "007", "4294967295", "c", "b"]
        );
        assert_eq!(t.len(), 8);
    }
}

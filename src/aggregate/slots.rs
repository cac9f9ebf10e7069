//! Keys in stable slots, found by a 64-bit name hash: the key table of the rollup and
//! carbon engines. A slot id stays valid while its key lives (schedules and flush
//! batches hold ids); a removed key's slot is reused by the next insert.

use std::collections::HashMap;

use super::statsd::table::FingerprintBuild;

/// What a slot holds must know its name and hash: lookups compare the name, so two
/// names with one hash are told apart, and removal unmaps the hash.
pub(crate) trait Named {
    /// The key's name.
    fn name(&self) -> &[u8];
    /// The key's name hash, as it was inserted.
    fn hash(&self) -> u64;
}

/// Another name holds this hash.
pub(crate) struct Collision;

/// Slots with a free list, indexed by name hash.
pub(crate) struct Slots<K> {
    map: HashMap<u64, u32, FingerprintBuild>,
    slots: Vec<Option<K>>,
    free: Vec<u32>,
}

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Slots {
            map: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<K: Named> Slots<K> {
    /// Live keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The slot of `name` (whose hash is `hash`), `None` when absent.
    #[inline]
    pub fn find(&self, hash: u64, name: &[u8]) -> Result<Option<u32>, Collision> {
        match self.map.get(&hash) {
            Some(&s) if self.get(s).name() != name => Err(Collision),
            found => Ok(found.copied()),
        }
    }

    /// Adds a key whose hash is absent; returns its slot.
    pub fn insert(&mut self, key: K) -> u32 {
        let hash = key.hash();
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(key);
                s
            }
            None => {
                self.slots.push(Some(key));
                (self.slots.len() - 1) as u32
            }
        };
        let before = self.map.insert(hash, s);
        debug_assert!(before.is_none(), "inserted a hash that is mapped");
        s
    }

    /// Removes the key in a live slot.
    pub fn remove(&mut self, slot: u32) {
        let key = self.slots[slot as usize]
            .take()
            .expect("removed slot is live");
        self.map.remove(&key.hash());
        self.free.push(slot);
    }

    /// The key in a live slot.
    #[inline]
    pub fn get(&self, slot: u32) -> &K {
        self.slots[slot as usize].as_ref().expect("live slot")
    }

    /// The key in a live slot.
    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> &mut K {
        self.slots[slot as usize].as_mut().expect("live slot")
    }

    /// Slot ids issued so far, live or free: `0..capacity()` covers every live key.
    pub fn capacity(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The key in a slot, if live.
    pub fn slot_mut(&mut self, slot: u32) -> Option<&mut K> {
        self.slots[slot as usize].as_mut()
    }

    /// The live keys, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.slots.iter().flatten()
    }

    /// Heap bytes of the table itself (slots and map), not of what keys point to.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<K>>()
            + self.map.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
    }
}

//! Insertion-ordered byte-string maps, for what Redis keeps in insertion order here
//! (small hashes, a connection's subscriptions) and must iterate deterministically.

use std::collections::BTreeMap;

/// A map from byte strings to values that iterates in insertion order. Updating an
/// existing key keeps its position, like a Redis listpack hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderedMap<V> {
    index: BTreeMap<Vec<u8>, (u64, V)>,
    order: BTreeMap<u64, Vec<u8>>,
    next: u64,
}

impl<V> OrderedMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        OrderedMap {
            index: BTreeMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.index.contains_key(key)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.index.get(key).map(|(_, v)| v)
    }

    /// Inserts or replaces; returns true when the key is new.
    pub fn insert(&mut self, key: &[u8], value: V) -> bool {
        if let Some(slot) = self.index.get_mut(key) {
            slot.1 = value;
            return false;
        }
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, key.to_vec());
        self.index.insert(key.to_vec(), (seq, value));
        true
    }

    /// Removes `key`; returns its value when it was present.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let (seq, v) = self.index.remove(key)?;
        self.order.remove(&seq);
        Some(v)
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &V)> + '_ {
        self.order.values().map(move |k| {
            let (_, v) = &self.index[k];
            (k.as_slice(), v)
        })
    }

    /// Keys in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.order.values().map(|k| k.as_slice())
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.index.clear();
        self.order.clear();
    }
}

/// A set of byte strings that iterates in insertion order.
pub type OrderedSet = OrderedMap<()>;

//! The LRU used for users and sessions.

use super::{CacheStats, Counters, Shelf};
use std::hash::Hash;

/// An LRU map that counts hits, misses, evictions and invalidations.
pub struct CountingLru<K: Hash + Eq, V> {
    shelf: Shelf<K, V>,
}

impl<K: Hash + Eq + Clone, V: Clone> CountingLru<K, V> {
    /// An LRU holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self { shelf: Shelf::new(capacity) }
    }

    /// Looks `key` up, counting a hit or a miss.
    pub fn get(&self, key: &K) -> Option<V> {
        let found = self.shelf.lock().get(key).cloned();
        let c = &self.shelf.counters;
        Counters::bump(if found.is_some() { &c.hits } else { &c.misses }, 1);
        found
    }

    /// Inserts, counting an eviction if one entry had to go.
    pub fn put(&self, key: K, value: V) {
        let mut map = self.shelf.lock();
        self.shelf.put(&mut map, key, value);
    }

    /// Drops `key`; returns whether it was cached.
    pub fn invalidate(&self, key: &K) -> bool {
        self.shelf.drop_key(key)
    }

    /// Drops every entry for which `pred` holds; returns how many.
    pub fn invalidate_where(&self, pred: impl FnMut(&K, &V) -> bool) -> usize {
        self.shelf.drop_where(pred)
    }

    /// Drops everything (a lagging bus subscriber must assume it missed invalidations).
    pub fn clear(&self) {
        self.shelf.clear();
    }

    /// Changes the capacity (memory pressure shrinks it); extra entries are evicted.
    pub fn resize(&self, capacity: usize) {
        self.shelf.resize(capacity);
    }

    /// Current figures.
    pub fn stats(&self) -> CacheStats {
        self.shelf.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly() {
        let c = CountingLru::new(2);
        assert_eq!(c.get(&"a"), None);
        c.put("a", 1);
        c.put("b", 2);
        assert_eq!(c.get(&"a"), Some(1));
        c.put("c", 3); // evicts b, the least recently used
        assert_eq!(c.get(&"b"), None);
        assert!(c.invalidate(&"a"));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.evictions, s.invalidations, s.size), (1, 2, 1, 1, 1));
        c.put("c", 4); // replacing a key is not an eviction
        assert_eq!(c.stats().evictions, 1);
        c.resize(1);
        assert_eq!(c.stats().capacity, 1);
    }
}

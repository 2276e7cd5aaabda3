//! A mutex-guarded LRU that counts hits, misses, evictions and invalidations.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use super::{CacheStats, Counters};

/// An LRU map. The lock is held only for the map operation, never across `.await`.
pub struct CountingLru<K: Hash + Eq, V> {
    map: Mutex<lru::LruCache<K, V>>,
    capacity: Mutex<usize>,
    counters: Counters,
}

impl<K: Hash + Eq + Clone, V: Clone> CountingLru<K, V> {
    /// An LRU holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            map: Mutex::new(lru::LruCache::new(cap)),
            capacity: Mutex::new(cap.get()),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<K, V>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks `key` up, counting a hit or a miss.
    pub fn get(&self, key: &K) -> Option<V> {
        let found = self.lock().get(key).cloned();
        Counters::bump(if found.is_some() { &self.counters.hits } else { &self.counters.misses }, 1);
        found
    }

    /// Inserts, counting an eviction if one entry had to go.
    pub fn put(&self, key: K, value: V) {
        let evicted = self.lock().push(key.clone(), value);
        if matches!(evicted, Some((k, _)) if k != key) {
            Counters::bump(&self.counters.evictions, 1);
        }
    }

    /// Drops `key`; returns whether it was cached.
    pub fn invalidate(&self, key: &K) -> bool {
        let removed = self.lock().pop(key).is_some();
        if removed {
            Counters::bump(&self.counters.invalidations, 1);
        }
        removed
    }

    /// Drops every entry for which `pred` holds; returns how many.
    pub fn invalidate_where(&self, mut pred: impl FnMut(&K, &V) -> bool) -> usize {
        let mut map = self.lock();
        let doomed: Vec<K> = map.iter().filter(|(k, v)| pred(k, v)).map(|(k, _)| k.clone()).collect();
        for k in &doomed {
            map.pop(k);
        }
        Counters::bump(&self.counters.invalidations, doomed.len() as u64);
        doomed.len()
    }

    /// Drops everything (a lagging bus subscriber must assume it missed invalidations).
    pub fn clear(&self) {
        let mut map = self.lock();
        Counters::bump(&self.counters.invalidations, map.len() as u64);
        map.clear();
    }

    /// Changes the capacity (memory pressure shrinks it); extra entries are evicted.
    pub fn resize(&self, capacity: usize) {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        let mut map = self.lock();
        let before = map.len();
        map.resize(cap);
        Counters::bump(&self.counters.evictions, before.saturating_sub(map.len()) as u64);
        *self.capacity.lock().unwrap_or_else(|e| e.into_inner()) = cap.get();
    }

    /// Current figures.
    pub fn stats(&self) -> CacheStats {
        let size = self.lock().len();
        self.counters.stats(size, *self.capacity.lock().unwrap_or_else(|e| e.into_inner()))
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

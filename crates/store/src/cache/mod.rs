//! In-memory caches in front of the database, each with the same statistics.

mod lru;
mod query;

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

pub use self::lru::CountingLru;
pub use self::query::QueryCache;

/// Figures every cache reports in `/health` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheStats {
    /// Entries held.
    pub size: usize,
    /// Maximum entries.
    pub capacity: usize,
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups that went to the database (or joined a load already in flight).
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 when unused.
    pub hit_rate: f64,
    /// Entries pushed out by capacity.
    pub evictions: u64,
    /// Entries dropped by invalidation.
    pub invalidations: u64,
    /// Entries that expired (query cache only).
    pub expirations: u64,
    /// Loads running right now (query cache only).
    pub loads_in_flight: u64,
    /// Database loads performed (query cache only): misses minus coalesced waiters.
    pub loads: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) expirations: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) loads: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self, size: usize, capacity: usize) -> CacheStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (hits, misses) = (r(&self.hits), r(&self.misses));
        CacheStats {
            size,
            capacity,
            hits,
            misses,
            hit_rate: if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 },
            evictions: r(&self.evictions),
            invalidations: r(&self.invalidations),
            expirations: r(&self.expirations),
            loads_in_flight: r(&self.in_flight),
            loads: r(&self.loads),
        }
    }
}

/// An LRU map behind a short-held mutex, with the counters and the invalidation,
/// clearing and resizing both caches share. The lock is never held across `.await`.
pub(crate) struct Shelf<K: Hash + Eq, V> {
    map: Mutex<::lru::LruCache<K, V>>,
    capacity: AtomicUsize,
    pub(crate) counters: Counters,
}

fn non_zero(capacity: usize) -> NonZeroUsize {
    NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN)
}

impl<K: Hash + Eq + Clone, V> Shelf<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        let cap = non_zero(capacity);
        Self {
            map: Mutex::new(::lru::LruCache::new(cap)),
            capacity: AtomicUsize::new(cap.get()),
            counters: Counters::default(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ::lru::LruCache<K, V>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts, counting an eviction when another key had to go.
    pub(crate) fn put(&self, map: &mut ::lru::LruCache<K, V>, key: K, value: V) {
        if let Some((old, _)) = map.push(key.clone(), value) {
            if old != key {
                Counters::bump(&self.counters.evictions, 1);
            }
        }
    }

    /// Drops every entry for which `pred` holds; returns how many.
    pub(crate) fn drop_where(&self, mut pred: impl FnMut(&K, &V) -> bool) -> usize {
        let mut map = self.lock();
        let doomed: Vec<K> = map.iter().filter(|(k, v)| pred(k, v)).map(|(k, _)| k.clone()).collect();
        for k in &doomed {
            map.pop(k);
        }
        Counters::bump(&self.counters.invalidations, doomed.len() as u64);
        doomed.len()
    }

    /// Drops one key; returns whether it was there.
    pub(crate) fn drop_key(&self, key: &K) -> bool {
        let removed = self.lock().pop(key).is_some();
        Counters::bump(&self.counters.invalidations, u64::from(removed));
        removed
    }

    /// Drops everything.
    pub(crate) fn clear(&self) {
        let mut map = self.lock();
        Counters::bump(&self.counters.invalidations, map.len() as u64);
        map.clear();
    }

    /// Changes the capacity (memory pressure shrinks it); entries pushed out count as evictions.
    pub(crate) fn resize(&self, capacity: usize) {
        let cap = non_zero(capacity);
        let mut map = self.lock();
        let before = map.len();
        map.resize(cap);
        Counters::bump(&self.counters.evictions, before.saturating_sub(map.len()) as u64);
        self.capacity.store(cap.get(), Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let size = self.lock().len();
        self.counters.stats(size, self.capacity.load(Ordering::Relaxed))
    }
}

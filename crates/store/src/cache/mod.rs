//! In-memory caches in front of the database, each with the same statistics.

mod lru;
mod query;

use std::sync::atomic::{AtomicU64, Ordering};

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

//! Process memory as the kernel and the allocator see it.

use serde::Serialize;

/// Memory figures for `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryStats {
    /// Resident set size from `/proc/self/statm` (0 where unavailable).
    pub rss_bytes: u64,
    /// Bytes currently allocated by the application (jemalloc `stats.allocated`).
    pub allocated_bytes: u64,
    /// Bytes in physically resident allocator pages (jemalloc `stats.resident`).
    pub allocator_resident_bytes: u64,
}

/// Reads current memory figures.
pub fn read() -> MemoryStats {
    // jemalloc caches its statistics until the epoch advances.
    let _ = tikv_jemalloc_ctl::epoch::advance();
    MemoryStats {
        rss_bytes: rss_bytes().unwrap_or(0),
        allocated_bytes: tikv_jemalloc_ctl::stats::allocated::read().map_or(0, |v| v as u64),
        allocator_resident_bytes: tikv_jemalloc_ctl::stats::resident::read().map_or(0, |v| v as u64),
    }
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

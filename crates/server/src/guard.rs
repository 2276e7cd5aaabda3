//! The memory guard: resident memory against a budget, with warning and critical
//! levels. At critical the store's caches shrink and new connections get 503 until
//! memory is back under the warning threshold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use rendezvous_store::Store;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::MemoryConfig;

const DEFAULT_BUDGET: u64 = 1 << 30;

/// Pressure level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Under the warning threshold.
    Normal,
    /// Over the warning threshold.
    Warning,
    /// Over the critical threshold: caches shrunk, new connections refused.
    Critical,
}

/// Figures for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct GuardStats {
    /// Current level.
    pub level: Level,
    /// The budget in bytes.
    pub budget_bytes: u64,
    /// Where the budget came from: `config`, `cgroup` or `default`.
    pub budget_source: &'static str,
    /// Warning threshold in bytes.
    pub warning_bytes: u64,
    /// Critical threshold in bytes.
    pub critical_bytes: u64,
    /// Resident memory at the last check.
    pub last_rss_bytes: u64,
}

/// Tracks the level; cheap to read from the admission check.
#[derive(Debug)]
pub struct MemoryGuard {
    budget: u64,
    source: &'static str,
    warning: u64,
    critical: u64,
    level: AtomicU8,
    last_rss: AtomicU64,
}

impl MemoryGuard {
    /// A guard for `cfg`, reading the cgroup limit when no budget is configured.
    pub fn new(cfg: &MemoryConfig) -> Self {
        let (budget, source) = match (cfg.budget_bytes, cgroup_limit()) {
            (b, _) if b > 0 => (b, "config"),
            (_, Some(l)) => (l, "cgroup"),
            _ => (DEFAULT_BUDGET, "default"),
        };
        Self {
            budget,
            source,
            warning: budget / 100 * u64::from(cfg.warning_percent),
            critical: budget / 100 * u64::from(cfg.critical_percent),
            level: AtomicU8::new(Level::Normal as u8),
            last_rss: AtomicU64::new(0),
        }
    }

    /// The current level.
    pub fn level(&self) -> Level {
        match self.level.load(Ordering::Acquire) {
            2 => Level::Critical,
            1 => Level::Warning,
            _ => Level::Normal,
        }
    }

    /// Moves to the level `rss` implies (critical is left only below the warning
    /// threshold, so a process hovering at the line does not flap). Returns the old level.
    pub fn observe(&self, rss: u64) -> Level {
        self.last_rss.store(rss, Ordering::Relaxed);
        let old = self.level();
        let new = if rss >= self.critical {
            Level::Critical
        } else if rss >= self.warning {
            if old == Level::Critical { Level::Critical } else { Level::Warning }
        } else {
            Level::Normal
        };
        self.level.store(new as u8, Ordering::Release);
        old
    }

    /// Figures for `/health`.
    pub fn stats(&self) -> GuardStats {
        GuardStats {
            level: self.level(),
            budget_bytes: self.budget,
            budget_source: self.source,
            warning_bytes: self.warning,
            critical_bytes: self.critical,
            last_rss_bytes: self.last_rss.load(Ordering::Relaxed),
        }
    }

    /// Checks memory every `interval` until `stop`, shrinking and restoring caches on transitions.
    pub async fn watch(
        self: Arc<Self>,
        store: Option<Arc<Store>>,
        interval: Duration,
        cache_factor: f64,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let rss = crate::memory::read().rss_bytes;
            let old = self.observe(rss);
            let new = self.level();
            if old == new {
                continue;
            }
            match new {
                Level::Critical => {
                    error!(rss, budget = self.budget, "memory critical: shrinking caches, refusing new connections");
                    if let Some(s) = &store {
                        s.scale_caches(cache_factor);
                    }
                }
                Level::Warning => warn!(rss, budget = self.budget, "memory above the warning threshold"),
                Level::Normal => {
                    info!(rss, "memory back to normal");
                    if let Some(s) = &store {
                        s.scale_caches(1.0);
                    }
                }
            }
        }
    }
}

/// cgroup v2 `memory.max`, or v1 `memory.limit_in_bytes`, when it is a real limit.
fn cgroup_limit() -> Option<u64> {
    for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            // v1 reports "no limit" as a huge number.
            if let Ok(v) = text.trim().parse::<u64>() {
                if v < (1 << 50) {
                    return Some(v);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(budget: u64) -> MemoryGuard {
        MemoryGuard::new(&MemoryConfig { budget_bytes: budget, ..Default::default() })
    }

    #[test]
    fn levels_have_hysteresis() {
        let g = guard(1000);
        assert_eq!(g.stats().budget_source, "config");
        g.observe(100);
        assert_eq!(g.level(), Level::Normal);
        g.observe(850);
        assert_eq!(g.level(), Level::Warning);
        g.observe(950);
        assert_eq!(g.level(), Level::Critical);
        g.observe(850); // still above warning: stay critical
        assert_eq!(g.level(), Level::Critical);
        g.observe(700);
        assert_eq!(g.level(), Level::Normal);
    }
}

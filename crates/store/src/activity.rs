//! Write-behind for `last_active`: touches land in memory and are written in one
//! batch every few seconds (and on shutdown), never one UPDATE per message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Buffered touches, keyed by user.
pub(crate) struct ActivityBuffer {
    pending: Mutex<HashMap<String, i64>>,
    max: usize,
    dropped: AtomicU64,
    flushed: AtomicU64,
    failed_flushes: AtomicU64,
}

/// Figures for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityStats {
    /// Users waiting to be written.
    pub pending: usize,
    /// Touches dropped because the buffer was full.
    pub dropped: u64,
    /// Rows written so far.
    pub flushed: u64,
    /// Flushes that failed (their rows were kept for the next one).
    pub failed_flushes: u64,
}

impl ActivityBuffer {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            max,
            dropped: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            failed_flushes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn touch(&self, user_id: &str, at: i64) {
        let mut map = self.lock();
        if let Some(t) = map.get_mut(user_id) {
            *t = (*t).max(at);
        } else if map.len() < self.max {
            map.insert(user_id.to_owned(), at);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes everything pending.
    pub(crate) fn take(&self) -> Vec<(String, i64)> {
        std::mem::take(&mut *self.lock()).into_iter().collect()
    }

    /// Puts a failed batch back (newer touches win).
    pub(crate) fn restore(&self, batch: Vec<(String, i64)>) {
        self.failed_flushes.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        for (user, at) in batch {
            let t = map.entry(user).or_insert(at);
            *t = (*t).max(at);
        }
    }

    pub(crate) fn flushed(&self, n: usize) {
        self.flushed.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> ActivityStats {
        ActivityStats {
            pending: self.lock().len(),
            dropped: self.dropped.load(Ordering::Relaxed),
            flushed: self.flushed.load(Ordering::Relaxed),
            failed_flushes: self.failed_flushes.load(Ordering::Relaxed),
        }
    }
}

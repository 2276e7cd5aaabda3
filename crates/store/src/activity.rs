//! Write-behind for `last_active`: activity lands in memory and is written in batches
//! every few seconds (and on shutdown), never one UPDATE per message. Callers hand in
//! many users at once (the server sweeps its connections' last-seen times), so the
//! buffer's lock is taken once per batch, not once per message.

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

    /// Buffers a batch of `(user_id, unix ms)` under one lock, keeping each user's
    /// latest time; users beyond the buffer's capacity are dropped and counted.
    pub(crate) fn record<'a>(&self, seen: impl IntoIterator<Item = (&'a str, i64)>) {
        let mut dropped = 0;
        let mut map = self.lock();
        for (user_id, at) in seen {
            if let Some(t) = map.get_mut(user_id) {
                *t = (*t).max(at);
            } else if map.len() < self.max {
                map.insert(user_id.to_owned(), at);
            } else {
                dropped += 1;
            }
        }
        drop(map);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(buf: &ActivityBuffer) -> Vec<(String, i64)> {
        let mut rows = buf.take();
        rows.sort();
        rows
    }

    #[test]
    fn a_batch_keeps_each_users_latest_time() {
        let buf = ActivityBuffer::new(10);
        buf.record([("a", 5), ("b", 7), ("a", 9), ("a", 3)]);
        // A later batch with an older time must not move a user back.
        buf.record([("b", 6), ("c", 1)]);
        assert_eq!(buf.stats().pending, 3);
        assert_eq!(pending(&buf), vec![("a".into(), 9), ("b".into(), 7), ("c".into(), 1)]);
        assert_eq!(buf.stats().pending, 0);
    }

    #[test]
    fn a_full_buffer_drops_new_users_but_updates_known_ones() {
        let buf = ActivityBuffer::new(2);
        buf.record([("a", 1), ("b", 1), ("c", 1), ("d", 1), ("a", 4)]);
        let s = buf.stats();
        assert_eq!((s.pending, s.dropped), (2, 2));
        assert_eq!(pending(&buf), vec![("a".into(), 4), ("b".into(), 1)]);
    }

    #[test]
    fn restored_rows_yield_to_newer_activity() {
        let buf = ActivityBuffer::new(10);
        buf.record([("a", 5), ("b", 5)]);
        let batch = buf.take();
        buf.record([("a", 8)]);
        buf.restore(batch);
        assert_eq!(pending(&buf), vec![("a".into(), 8), ("b".into(), 5)]);
        assert_eq!(buf.stats().failed_flushes, 1);
    }
}

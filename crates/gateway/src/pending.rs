//! Sockets accepted but not (yet) WebSocket connections, capped so that stalled
//! handshakes cannot exhaust the process's file descriptors.
//!
//! At the cap the *oldest* pending socket is dropped for the newcomer rather than the
//! newcomer refused: a real client sends its request as soon as it connects, a stalled
//! one never does, so the oldest is the one least likely to be real. While the set is
//! busy (above `busy_percent` of the cap) the handshake deadline shortens to
//! `busy_timeout_ms`, for new sockets and for the ones already waiting.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::PendingConfig;

/// The pending sockets, oldest first.
pub(crate) struct PendingSockets {
    inner: Mutex<Inner>,
    max: usize,
    busy_at: usize,
    busy_timeout: Duration,
    normal_timeout: Duration,
}

struct Inner {
    next_id: u64,
    /// Keyed by admission order, so the first entry is the oldest.
    entries: BTreeMap<u64, Entry>,
    closed: bool,
}

struct Entry {
    since: Instant,
    drop_now: CancellationToken,
}

/// One pending socket's place in the set; leaving it (drop) frees the place.
pub(crate) struct PendingSlot {
    set: Arc<PendingSockets>,
    id: u64,
    /// Cancelled when this socket must be dropped: evicted, or the gateway stopped.
    pub(crate) drop_now: CancellationToken,
    /// The handshake deadline this socket got when it arrived.
    pub(crate) handshake_timeout: Duration,
    /// How many older sockets were dropped to make room for this one.
    pub(crate) evicted: usize,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.set.lock().entries.remove(&self.id);
    }
}

impl PendingSockets {
    /// `handshake_timeout` is the deadline while the set is not busy.
    pub(crate) fn new(cfg: &PendingConfig, handshake_timeout: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner { next_id: 0, entries: BTreeMap::new(), closed: false }),
            max: cfg.max_sockets,
            busy_at: (cfg.max_sockets * usize::from(cfg.busy_percent) / 100).max(1),
            busy_timeout: Duration::from_millis(cfg.busy_timeout_ms),
            normal_timeout: handshake_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a socket accepted at `now`, dropping the oldest (and, while
    /// busy, every one older than the busy deadline) to make room.
    pub(crate) fn admit(self: &Arc<Self>, now: Instant) -> PendingSlot {
        let mut evict = Vec::new();
        let drop_now = CancellationToken::new();
        let (id, busy) = {
            let mut inner = self.lock();
            if inner.entries.len() >= self.busy_at {
                while let Some(first) = inner.entries.first_entry() {
                    if now.saturating_duration_since(first.get().since) < self.busy_timeout {
                        break;
                    }
                    evict.push(first.remove().drop_now);
                }
            }
            while inner.entries.len() >= self.max {
                match inner.entries.pop_first() {
                    Some((_, e)) => evict.push(e.drop_now),
                    None => break,
                }
            }
            let busy = inner.entries.len() + 1 > self.busy_at;
            inner.next_id += 1;
            let id = inner.next_id;
            if inner.closed {
                drop_now.cancel();
            } else {
                inner.entries.insert(id, Entry { since: now, drop_now: drop_now.clone() });
            }
            (id, busy)
        };
        // Cancelled outside the lock: waking the evicted tasks need not hold it.
        let evicted = evict.len();
        for token in evict {
            token.cancel();
        }
        let handshake_timeout = if busy { self.busy_timeout.min(self.normal_timeout) } else { self.normal_timeout };
        PendingSlot { set: self.clone(), id, drop_now, handshake_timeout, evicted }
    }

    /// Drops every pending socket and every later one (the gateway is stopping).
    pub(crate) fn close(&self) {
        let entries = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.entries)
        };
        for e in entries.into_values() {
            e.drop_now.cancel();
        }
    }

    /// Sockets pending now.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// The cap.
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(max: usize, busy_percent: u8) -> Arc<PendingSockets> {
        let cfg = PendingConfig { max_sockets: max, busy_percent, busy_timeout_ms: 2_000 };
        Arc::new(PendingSockets::new(&cfg, Duration::from_secs(10)))
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_oldest_is_dropped_not_the_newcomer() {
        let s = set(3, 100);
        let a = s.admit(Instant::now());
        tokio::time::advance(Duration::from_millis(10)).await;
        let b = s.admit(Instant::now());
        tokio::time::advance(Duration::from_millis(10)).await;
        let c = s.admit(Instant::now());
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(s.len(), 3);
        let d = s.admit(Instant::now());
        assert!(a.drop_now.is_cancelled(), "the oldest must go");
        assert!(!b.drop_now.is_cancelled() && !c.drop_now.is_cancelled() && !d.drop_now.is_cancelled());
        assert_eq!((s.len(), d.evicted), (3, 1));
        let e = s.admit(Instant::now());
        assert!(b.drop_now.is_cancelled() && !e.drop_now.is_cancelled());
        assert_eq!(e.evicted, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_socket_frees_its_place() {
        let s = set(2, 100);
        let a = s.admit(Instant::now());
        let b = s.admit(Instant::now());
        drop(a);
        assert_eq!(s.len(), 1);
        let c = s.admit(Instant::now());
        assert!(!b.drop_now.is_cancelled() && !c.drop_now.is_cancelled());
        assert_eq!(c.evicted, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn while_busy_the_deadline_shortens_for_new_and_waiting_sockets() {
        // Busy from 2 of 4.
        let s = set(4, 50);
        let old = s.admit(Instant::now());
        assert_eq!(old.handshake_timeout, Duration::from_secs(10));
        let second = s.admit(Instant::now());
        assert_eq!(second.handshake_timeout, Duration::from_secs(10));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let young = s.admit(Instant::now());
        assert_eq!(young.handshake_timeout, Duration::from_secs(2), "busy: a new socket gets the short deadline");
        assert!(!old.drop_now.is_cancelled(), "1.5 s old is within the busy deadline");
        tokio::time::advance(Duration::from_millis(600)).await;
        let newest = s.admit(Instant::now());
        // 2.1 s old: past the busy deadline, so dropped although the cap is not reached.
        assert!(old.drop_now.is_cancelled() && second.drop_now.is_cancelled());
        assert!(!young.drop_now.is_cancelled() && !newest.drop_now.is_cancelled());
        assert_eq!((s.len(), newest.evicted), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_busy_mark_old_sockets_keep_the_full_deadline() {
        let s = set(10, 50);
        let old = s.admit(Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        let new = s.admit(Instant::now());
        assert!(!old.drop_now.is_cancelled());
        assert_eq!(new.handshake_timeout, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn close_drops_every_pending_socket_and_later_ones() {
        let s = set(10, 100);
        let a = s.admit(Instant::now());
        s.close();
        assert!(a.drop_now.is_cancelled());
        let late = s.admit(Instant::now());
        assert!(late.drop_now.is_cancelled());
        assert_eq!(s.len(), 0);
    }
}

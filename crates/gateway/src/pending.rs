//! Sockets accepted but not (yet) WebSocket connections, capped so that stalled
//! handshakes cannot exhaust the process's file descriptors.
//!
//! At the cap the *oldest socket waiting on its peer* is dropped for the newcomer rather
//! than the newcomer refused: a real client sends its request as soon as it connects, a
//! stalled one never does, so the oldest waiting socket is the one least likely to be
//! real. A socket counts as waiting once a read of it found nothing to read (plain HTTP
//! connections, mostly idle keep-alives, always count). Sockets not yet read or in the
//! middle of admission are never dropped for room: when no socket waits, the accept loop
//! stops accepting until one does or one leaves, and newcomers wait in the kernel's accept
//! queue, which costs no descriptor. While the set is busy (above `busy_percent` of the
//! cap) the handshake deadline shortens to `busy_timeout_ms`, for new sockets and for the
//! ones already waiting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::PendingConfig;

/// The pending sockets, oldest first.
pub(crate) struct PendingSockets {
    inner: Mutex<Inner>,
    /// Signalled when a socket leaves or starts waiting on its peer: room may be made now.
    changed: Notify,
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
    state: Arc<SlotState>,
}

struct SlotState {
    drop_now: CancellationToken,
    waiting: AtomicBool,
}

/// One pending socket's place in the set; leaving it (drop) frees the place.
pub(crate) struct PendingSlot {
    set: Arc<PendingSockets>,
    id: u64,
    state: Arc<SlotState>,
    /// The handshake deadline this socket got when it arrived.
    pub(crate) handshake_timeout: Duration,
}

impl PendingSlot {
    /// Cancelled when this socket must be dropped: evicted, or the gateway stopped.
    pub(crate) fn drop_now(&self) -> &CancellationToken {
        &self.state.drop_now
    }

    /// Whether the socket is waiting on its peer, and so may be dropped to make room.
    pub(crate) fn set_waiting(&self, waiting: bool) {
        if !waiting {
            self.state.waiting.store(false, Ordering::Release);
        } else if !self.state.waiting.swap(true, Ordering::AcqRel) {
            self.set.changed.notify_waiters();
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.set.lock().entries.remove(&self.id);
        self.set.changed.notify_waiters();
    }
}

impl PendingSockets {
    /// `handshake_timeout` is the deadline while the set is not busy.
    pub(crate) fn new(cfg: &PendingConfig, handshake_timeout: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner { next_id: 0, entries: BTreeMap::new(), closed: false }),
            changed: Notify::new(),
            max: cfg.max_sockets,
            busy_at: (cfg.max_sockets * usize::from(cfg.busy_percent) / 100).max(1),
            busy_timeout: Duration::from_millis(cfg.busy_timeout_ms),
            normal_timeout: handshake_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until one more socket fits, dropping waiting sockets to make room; returns how
    /// many were dropped. Call it before `accept`, so the cap holds for descriptors too.
    pub(crate) async fn make_room(&self) -> usize {
        let mut evicted = 0;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (room, n) = self.try_make_room(Instant::now());
            evicted += n;
            if room {
                return evicted;
            }
            changed.await;
        }
    }

    /// Drops what must go at `now`: while busy, waiting sockets past the busy deadline; at
    /// the cap, the oldest waiting socket. Returns whether one more fits, and how many went.
    fn try_make_room(&self, now: Instant) -> (bool, usize) {
        let mut evict = Vec::new();
        let room = {
            let mut inner = self.lock();
            if inner.entries.len() >= self.busy_at {
                let stale: Vec<u64> = inner
                    .entries
                    .iter()
                    .take_while(|(_, e)| now.saturating_duration_since(e.since) >= self.busy_timeout)
                    .filter(|(_, e)| e.state.waiting.load(Ordering::Acquire))
                    .map(|(id, _)| *id)
                    .collect();
                evict.extend(stale.into_iter().filter_map(|id| inner.entries.remove(&id)));
            }
            if inner.closed || inner.entries.len() < self.max {
                true
            } else {
                // Usually the first entry: in a flood the oldest sockets are the stalled ones.
                let oldest_waiting =
                    inner.entries.iter().find(|(_, e)| e.state.waiting.load(Ordering::Acquire)).map(|(id, _)| *id);
                match oldest_waiting.and_then(|id| inner.entries.remove(&id)) {
                    Some(e) => {
                        evict.push(e);
                        true
                    }
                    None => false,
                }
            }
        };
        // Cancelled outside the lock: waking the evicted tasks need not hold it.
        let n = evict.len();
        for e in evict {
            e.state.drop_now.cancel();
        }
        (room, n)
    }

    /// Takes a place for a socket accepted at `now` (after [`PendingSockets::make_room`]).
    pub(crate) fn admit(self: &Arc<Self>, now: Instant) -> PendingSlot {
        let state = Arc::new(SlotState { drop_now: CancellationToken::new(), waiting: AtomicBool::new(false) });
        let mut inner = self.lock();
        let busy = inner.entries.len() + 1 > self.busy_at;
        inner.next_id += 1;
        let id = inner.next_id;
        if inner.closed {
            state.drop_now.cancel();
        } else {
            inner.entries.insert(id, Entry { since: now, state: state.clone() });
        }
        drop(inner);
        let handshake_timeout = if busy { self.busy_timeout.min(self.normal_timeout) } else { self.normal_timeout };
        PendingSlot { set: self.clone(), id, state, handshake_timeout }
    }

    /// Drops every pending socket and every later one (the gateway is stopping).
    pub(crate) fn close(&self) {
        let entries = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.entries)
        };
        for e in entries.into_values() {
            e.state.drop_now.cancel();
        }
        self.changed.notify_waiters();
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

    /// Makes room and admits, as the accept loop does; the new socket then waits on its peer
    /// (a stalled client) when `waiting`.
    async fn accept(s: &Arc<PendingSockets>, waiting: bool) -> (PendingSlot, usize) {
        let evicted = s.make_room().await;
        let slot = s.admit(Instant::now());
        slot.set_waiting(waiting);
        tokio::time::advance(Duration::from_millis(10)).await;
        (slot, evicted)
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_oldest_waiting_socket_is_dropped_not_the_newcomer() {
        let s = set(3, 100);
        let (a, _) = accept(&s, true).await;
        let (b, _) = accept(&s, true).await;
        let (c, _) = accept(&s, true).await;
        assert_eq!(s.len(), 3);
        let (d, evicted) = accept(&s, true).await;
        assert!(a.drop_now().is_cancelled(), "the oldest must go");
        assert!(!b.drop_now().is_cancelled() && !c.drop_now().is_cancelled() && !d.drop_now().is_cancelled());
        assert_eq!((s.len(), evicted), (3, 1));
        let (e, evicted) = accept(&s, true).await;
        assert!(b.drop_now().is_cancelled() && !e.drop_now().is_cancelled());
        assert_eq!(evicted, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_not_yet_waiting_on_its_peer_is_never_dropped_for_room() {
        let s = set(3, 100);
        // Accepted first, but its task has not read it yet (or it is being admitted).
        let (busy, _) = accept(&s, false).await;
        let (stalled, _) = accept(&s, true).await;
        let (_c, _) = accept(&s, false).await;
        let (_d, evicted) = accept(&s, false).await;
        assert_eq!(evicted, 1);
        assert!(!busy.drop_now().is_cancelled(), "a socket that may hold a real request must stay");
        assert!(stalled.drop_now().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_socket_waiting_accepting_pauses_until_one_waits_or_leaves() {
        let s = set(2, 100);
        let (a, _) = accept(&s, false).await;
        let (b, _) = accept(&s, false).await;
        let room = tokio::spawn({
            let s = s.clone();
            async move { s.make_room().await }
        });
        tokio::task::yield_now().await;
        assert!(!room.is_finished(), "no socket may be dropped, so no room yet");
        a.set_waiting(true);
        assert_eq!(room.await.unwrap(), 1);
        assert!(a.drop_now().is_cancelled());
        // `a`'s place went to a newcomer that has not been read yet; then `b` leaves.
        let c = s.admit(Instant::now());
        let room = tokio::spawn({
            let s = s.clone();
            async move { s.make_room().await }
        });
        tokio::task::yield_now().await;
        assert!(!room.is_finished());
        drop(b);
        assert_eq!(room.await.unwrap(), 0, "a socket that left frees its place without dropping anyone");
        assert!(!c.drop_now().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_socket_frees_its_place() {
        let s = set(2, 100);
        let (a, _) = accept(&s, true).await;
        let (b, _) = accept(&s, true).await;
        drop(a);
        assert_eq!(s.len(), 1);
        let (c, evicted) = accept(&s, true).await;
        assert!(!b.drop_now().is_cancelled() && !c.drop_now().is_cancelled());
        assert_eq!(evicted, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn while_busy_the_deadline_shortens_for_new_and_waiting_sockets() {
        // Busy from 2 of 4.
        let s = set(4, 50);
        let (old, _) = accept(&s, true).await;
        assert_eq!(old.handshake_timeout, Duration::from_secs(10));
        let (admitting, _) = accept(&s, false).await;
        assert_eq!(admitting.handshake_timeout, Duration::from_secs(10));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let (young, _) = accept(&s, true).await;
        assert_eq!(young.handshake_timeout, Duration::from_secs(2), "busy: a new socket gets the short deadline");
        assert!(!old.drop_now().is_cancelled(), "1.5 s old is within the busy deadline");
        tokio::time::advance(Duration::from_millis(600)).await;
        let (newest, evicted) = accept(&s, true).await;
        // 2.1 s old and waiting: past the busy deadline, dropped although the cap is not reached.
        assert!(old.drop_now().is_cancelled());
        assert!(!admitting.drop_now().is_cancelled(), "only sockets waiting on their peer are dropped");
        assert!(!young.drop_now().is_cancelled() && !newest.drop_now().is_cancelled());
        assert_eq!((s.len(), evicted), (3, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_busy_mark_old_sockets_keep_the_full_deadline() {
        let s = set(10, 50);
        let (old, _) = accept(&s, true).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let (new, _) = accept(&s, true).await;
        assert!(!old.drop_now().is_cancelled());
        assert_eq!(new.handshake_timeout, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn close_drops_every_pending_socket_and_later_ones() {
        let s = set(10, 100);
        let (a, _) = accept(&s, false).await;
        s.close();
        assert!(a.drop_now().is_cancelled());
        let (late, _) = accept(&s, false).await;
        assert!(late.drop_now().is_cancelled());
        assert_eq!(s.len(), 0);
    }
}

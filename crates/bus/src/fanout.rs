//! Local fan-out, shared by both transports: one bounded broadcast channel per topic
//! with at least one subscriber in this process, and the [`Subscription`] that reads it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{Notify, broadcast};

use crate::Received;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) lagged: AtomicU64,
}

/// Topics whose last local subscriber dropped, for a transport that must tell its
/// server (Redis: UNSUBSCRIBE). At most one entry per topic, so bounded by the topics.
#[derive(Debug, Default)]
pub(crate) struct Released {
    topics: Mutex<HashSet<Arc<str>>>,
    pub(crate) notify: Notify,
}

impl Released {
    /// Marks `topic` for the transport to check and unsubscribe if it has no local subscriber.
    pub(crate) fn add(&self, topic: Arc<str>) {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).insert(topic);
        self.notify.notify_one();
    }

    /// The topics released since the last call.
    pub(crate) fn take(&self) -> HashSet<Arc<str>> {
        std::mem::take(&mut *self.topics.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[derive(Debug)]
pub(crate) struct Fanout {
    topics: DashMap<Arc<str>, broadcast::Sender<Received>>,
    capacity: usize,
    pub(crate) counters: Counters,
    /// `Some` for transports with server-side subscriptions.
    released: Option<Arc<Released>>,
}

impl Fanout {
    /// Channels of `capacity` messages; topics left by their last subscriber are added
    /// to `released`, if given.
    pub(crate) fn new(capacity: usize, released: Option<Arc<Released>>) -> Self {
        Self { topics: DashMap::new(), capacity: capacity.max(1), counters: Counters::default(), released }
    }

    /// A receiver on `topic`, creating the topic's channel if it has none.
    pub(crate) fn join(self: &Arc<Self>, topic: &str) -> Subscription {
        let (topic, rx) = match self.topics.entry(Arc::from(topic)) {
            Entry::Occupied(o) => (o.key().clone(), o.get().subscribe()),
            Entry::Vacant(v) => {
                let key = v.key().clone();
                let (tx, rx) = broadcast::channel(self.capacity);
                v.insert(tx);
                (key, rx)
            }
        };
        Subscription { topic, rx: Some(rx), fanout: self.clone() }
    }

    /// Whether `topic` has a local subscriber.
    pub(crate) fn contains(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Hands `item` to every subscriber of `topic`, if any.
    pub(crate) fn deliver(&self, topic: &str, item: Received) {
        if let Some(tx) = self.topics.get(topic) {
            // No receiver left is not an error: the last subscriber may be dropping right now.
            let _ = tx.send(item);
        }
    }

    /// Tells every subscriber of every topic that messages were lost.
    pub(crate) fn gap_all(&self, missed: Option<u64>) {
        for tx in self.topics.iter() {
            let _ = tx.send(Received::Gap { missed });
        }
    }

    /// The topics with a local subscriber.
    pub(crate) fn topics(&self) -> Vec<Arc<str>> {
        self.topics.iter().map(|e| e.key().clone()).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.topics.len()
    }

    /// Drops every channel, so subscriptions see the end of the stream.
    pub(crate) fn close(&self) {
        self.topics.clear();
    }

    fn leave(&self, topic: &Arc<str>, rx: &mut Option<broadcast::Receiver<Received>>) {
        // Under the entry's lock, so a concurrent join either sees the channel before it
        // is removed (and keeps it alive) or creates a fresh one.
        if let Entry::Occupied(o) = self.topics.entry(topic.clone()) {
            drop(rx.take());
            if o.get().receiver_count() == 0 {
                o.remove();
                if let Some(r) = &self.released {
                    r.add(topic.clone());
                }
            }
        }
    }
}

/// A subscription to one topic; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    topic: Arc<str>,
    /// Always `Some` until dropped (taken under the topic's lock in `drop`).
    rx: Option<broadcast::Receiver<Received>>,
    fanout: Arc<Fanout>,
}

impl Subscription {
    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message or gap; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.as_mut()?.recv().await {
            Ok(item) => Some(item),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.fanout.counters.lagged.fetch_add(n, Ordering::Relaxed);
                Some(Received::Gap { missed: Some(n) })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.fanout.leave(&self.topic, &mut self.rx);
    }
}

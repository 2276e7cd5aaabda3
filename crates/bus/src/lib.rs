//! Pub/sub between Rendezvous instances. The bus carries bytes on named topics and
//! knows no domain types; each message says which instance published it so
//! subscribers can skip their own.
//!
//! # Layout
//! - [`Bus`]: the handle every part of the server publishes and subscribes through.
//! - [`Subscription`]: a bounded receiver; a subscriber that falls behind loses the
//!   oldest messages and is told how many ([`Received::Lagged`]).
//!
//! Today the only transport is in-process (one instance, or several in one test
//! process); the Redis transport arrives with scale-out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::broadcast;

/// One message on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The instance that published it.
    pub origin: Arc<str>,
    /// Opaque payload.
    pub payload: Bytes,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The next message.
    Message(BusMessage),
    /// The subscriber fell behind and this many messages were dropped (oldest first).
    /// Consumers whose state depends on every message (cache invalidation) must resync.
    Lagged(u64),
}

/// Counters for `/health`.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Messages published by this handle's instance.
    pub published: AtomicU64,
    /// Messages dropped for lagging subscribers.
    pub lagged: AtomicU64,
}

/// Handle to the bus; cheap to clone. `instance` is stamped on everything it publishes.
#[derive(Clone, Debug)]
pub struct Bus {
    instance: Arc<str>,
    shared: Arc<InProcess>,
}

#[derive(Debug)]
struct InProcess {
    topics: DashMap<String, broadcast::Sender<BusMessage>>,
    capacity: usize,
    stats: BusStats,
}

impl Bus {
    /// A new in-process bus whose subscribers buffer at most `capacity` messages per topic.
    pub fn in_process(instance: impl Into<Arc<str>>, capacity: usize) -> Self {
        let shared =
            Arc::new(InProcess { topics: DashMap::new(), capacity: capacity.max(1), stats: BusStats::default() });
        Self { instance: instance.into(), shared }
    }

    /// Another handle on the same transport, publishing as `instance` (tests use this to
    /// stand up two instances in one process).
    pub fn as_instance(&self, instance: impl Into<Arc<str>>) -> Self {
        Self { instance: instance.into(), shared: self.shared.clone() }
    }

    /// This handle's instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Publishes `payload` on `topic`; returns how many subscribers will see it.
    pub fn publish(&self, topic: &str, payload: Bytes) -> usize {
        self.shared.stats.published.fetch_add(1, Ordering::Relaxed);
        let msg = BusMessage { origin: self.instance.clone(), payload };
        match self.shared.topics.get(topic) {
            Some(tx) => tx.send(msg).unwrap_or(0),
            None => 0,
        }
    }

    /// Subscribes to `topic`; only messages published after this call are received.
    pub fn subscribe(&self, topic: &str) -> Subscription {
        let rx = self
            .shared
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(self.shared.capacity).0)
            .subscribe();
        Subscription { rx, shared: self.shared.clone() }
    }

    /// Transport name for `/health`.
    pub fn transport(&self) -> &'static str {
        "in_process"
    }

    /// Counters for `/health`.
    pub fn stats(&self) -> (u64, u64) {
        (self.shared.stats.published.load(Ordering::Relaxed), self.shared.stats.lagged.load(Ordering::Relaxed))
    }
}

/// A subscription to one topic.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<BusMessage>,
    shared: Arc<InProcess>,
}

impl Subscription {
    /// The next message; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(m) => Some(Received::Message(m)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.shared.stats.lagged.fetch_add(n, Ordering::Relaxed);
                Some(Received::Lagged(n))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_with_origin_to_every_subscriber() {
        let a = Bus::in_process("a", 8);
        let b = a.as_instance("b");
        let mut sub_a = a.subscribe("t");
        let mut sub_b = b.subscribe("t");
        assert_eq!(b.publish("t", Bytes::from_static(b"hi")), 2);
        for sub in [&mut sub_a, &mut sub_b] {
            match sub.recv().await.unwrap() {
                Received::Message(m) => {
                    assert_eq!(&*m.origin, "b");
                    assert_eq!(&m.payload[..], b"hi");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(a.publish("other", Bytes::new()), 0);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_how_much_it_lost() {
        let bus = Bus::in_process("a", 2);
        let mut sub = bus.subscribe("t");
        for i in 0..5u8 {
            bus.publish("t", Bytes::from(vec![i]));
        }
        assert_eq!(sub.recv().await.unwrap(), Received::Lagged(3));
        match sub.recv().await.unwrap() {
            Received::Message(m) => assert_eq!(&m.payload[..], &[3]),
            other => panic!("{other:?}"),
        }
        assert_eq!(bus.stats().1, 3);
    }
}

//! Pub/sub between Rendezvous instances. The bus carries bytes on named topics and
//! knows no domain types; each message says which instance published it so
//! subscribers can skip their own.
//!
//! # Layout
//! - [`Bus`]: the handle every part of the server publishes and subscribes through.
//!   `publish` and `subscribe` are async and fallible because a network transport
//!   (Redis, with scale-out) must await its server; the in-process one never fails.
//! - [`Subscription`]: a bounded receiver. Dropping it unsubscribes; a topic's state is
//!   freed with its last subscriber.
//! - [`Received::Gap`]: messages were lost (a lagging subscriber, a transport that
//!   reconnected). Pub/sub promises nothing across a gap, so consumers resynchronize.
//! - [`BusConfig`]: the `[bus]` section; [`BusHealth`]: what `/health` shows.

mod config;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::Serialize;
use tokio::sync::broadcast;

pub use config::{BusConfig, ConfigError};

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
    /// Messages were lost before this point: `missed` of them when known (a lagging
    /// subscriber), unknown after a transport reconnect. State built from the stream
    /// (caches, presence, queues) must be resynchronized.
    Gap {
        /// How many messages were dropped, when the transport knows.
        missed: Option<u64>,
    },
}

/// Why the bus refused an operation.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The transport is not connected right now; retry later.
    #[error("bus transport `{transport}` is unavailable")]
    Unavailable {
        /// The transport's name.
        transport: &'static str,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The topic name cannot be used on this transport.
    #[error("invalid bus topic `{0}`")]
    InvalidTopic(String),
}

/// The transport's state, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportState {
    /// Publishing and subscriptions work.
    Connected,
    /// Reconnecting: publishes fail and subscribers will see a [`Received::Gap`].
    Degraded,
}

/// Bus figures for `/health` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct BusHealth {
    /// `in_process` (or `redis` with scale-out).
    pub transport: &'static str,
    /// Whether the transport works right now.
    pub state: TransportState,
    /// This handle's instance name.
    pub instance: String,
    /// Topics with at least one local subscriber.
    pub topics: usize,
    /// Messages published by this process.
    pub published: u64,
    /// Messages dropped for lagging subscribers.
    pub lagged: u64,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    lagged: AtomicU64,
}

/// Handle to the bus; cheap to clone. `instance` is stamped on everything it publishes.
#[derive(Clone, Debug)]
pub struct Bus {
    instance: Arc<str>,
    transport: Arc<InProcess>,
}

/// Every topic a subscriber holds in this process; one broadcast channel each.
#[derive(Debug)]
struct InProcess {
    topics: DashMap<Arc<str>, broadcast::Sender<BusMessage>>,
    capacity: usize,
    counters: Counters,
}

impl Bus {
    /// A new in-process bus whose subscribers buffer at most `cfg.capacity` messages per topic.
    pub fn in_process(instance: impl Into<Arc<str>>, cfg: &BusConfig) -> Self {
        let transport = Arc::new(InProcess {
            topics: DashMap::new(),
            capacity: cfg.capacity.max(1),
            counters: Counters::default(),
        });
        Self { instance: instance.into(), transport }
    }

    /// Another handle on the same transport, publishing as `instance` (tests use this to
    /// stand up several instances in one process).
    pub fn as_instance(&self, instance: impl Into<Arc<str>>) -> Self {
        Self { instance: instance.into(), transport: self.transport.clone() }
    }

    /// This handle's instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Publishes `payload` on `topic` to every current subscriber, this instance's included.
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BusError> {
        self.transport.counters.published.fetch_add(1, Ordering::Relaxed);
        let msg = BusMessage { origin: self.instance.clone(), payload };
        if let Some(tx) = self.transport.topics.get(topic) {
            // No receiver left is not an error: the last subscriber may be dropping right now.
            let _ = tx.send(msg);
        }
        Ok(())
    }

    /// Subscribes to `topic`; every message published after this returns is delivered
    /// (or reported as a [`Received::Gap`]).
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription, BusError> {
        if topic.is_empty() {
            return Err(BusError::InvalidTopic(topic.to_owned()));
        }
        let (topic, rx) = match self.transport.topics.entry(Arc::from(topic)) {
            Entry::Occupied(o) => (o.key().clone(), o.get().subscribe()),
            Entry::Vacant(v) => {
                let key = v.key().clone();
                let (tx, rx) = broadcast::channel(self.transport.capacity);
                v.insert(tx);
                (key, rx)
            }
        };
        Ok(Subscription { topic, rx: Some(rx), transport: self.transport.clone() })
    }

    /// Transport name, state and counters.
    pub fn health(&self) -> BusHealth {
        let c = &self.transport.counters;
        BusHealth {
            transport: "in_process",
            state: TransportState::Connected,
            instance: self.instance.to_string(),
            topics: self.transport.topics.len(),
            published: c.published.load(Ordering::Relaxed),
            lagged: c.lagged.load(Ordering::Relaxed),
        }
    }
}

/// A subscription to one topic; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    topic: Arc<str>,
    /// Always `Some` until dropped (taken under the topic's lock in `drop`).
    rx: Option<broadcast::Receiver<BusMessage>>,
    transport: Arc<InProcess>,
}

impl Subscription {
    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.as_mut()?.recv().await {
            Ok(m) => Some(Received::Message(m)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.transport.counters.lagged.fetch_add(n, Ordering::Relaxed);
                Some(Received::Gap { missed: Some(n) })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Under the entry's lock, so a concurrent subscribe either sees the channel
        // before it is removed (and keeps it alive) or creates a fresh one.
        if let Entry::Occupied(o) = self.transport.topics.entry(self.topic.clone()) {
            drop(self.rx.take());
            if o.get().receiver_count() == 0 {
                o.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(name: &str, capacity: usize) -> Bus {
        Bus::in_process(name, &BusConfig { capacity })
    }

    #[tokio::test]
    async fn delivers_with_origin_to_every_subscriber() {
        let a = bus("a", 8);
        let b = a.as_instance("b");
        let mut sub_a = a.subscribe("t").await.unwrap();
        let mut sub_b = b.subscribe("t").await.unwrap();
        b.publish("t", Bytes::from_static(b"hi")).await.unwrap();
        for sub in [&mut sub_a, &mut sub_b] {
            match sub.recv().await.unwrap() {
                Received::Message(m) => {
                    assert_eq!(&*m.origin, "b");
                    assert_eq!(&m.payload[..], b"hi");
                }
                other => panic!("{other:?}"),
            }
        }
        a.publish("other", Bytes::new()).await.unwrap();
        assert_eq!(a.health().published, 2);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_how_much_it_lost() {
        let bus = bus("a", 2);
        let mut sub = bus.subscribe("t").await.unwrap();
        for i in 0..5u8 {
            bus.publish("t", Bytes::from(vec![i])).await.unwrap();
        }
        assert_eq!(sub.recv().await.unwrap(), Received::Gap { missed: Some(3) });
        match sub.recv().await.unwrap() {
            Received::Message(m) => assert_eq!(&m.payload[..], &[3]),
            other => panic!("{other:?}"),
        }
        assert_eq!(bus.health().lagged, 3);
    }

    #[tokio::test]
    async fn a_topic_is_dropped_with_its_last_subscriber() {
        let bus = bus("a", 8);
        let first = bus.subscribe("t").await.unwrap();
        let second = bus.subscribe("t").await.unwrap();
        assert_eq!(bus.health().topics, 1);
        drop(first);
        assert_eq!(bus.health().topics, 1, "one subscriber is left");
        drop(second);
        assert_eq!(bus.health().topics, 0);
        let mut again = bus.subscribe("t").await.unwrap();
        bus.publish("t", Bytes::from_static(b"x")).await.unwrap();
        assert!(matches!(again.recv().await, Some(Received::Message(_))), "a new subscription works");
    }

    #[tokio::test]
    async fn empty_topics_are_refused() {
        assert!(matches!(bus("a", 8).subscribe("").await, Err(BusError::InvalidTopic(_))));
    }
}

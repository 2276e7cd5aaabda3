//! Pub/sub between Rendezvous instances. The bus carries bytes on named topics and
//! knows no domain types; each message says which instance published it so
//! subscribers can skip their own.
//!
//! # Layout
//! - [`Bus`]: the handle every part of the server publishes and subscribes through.
//!   `publish` and `subscribe` are async and fallible because a network transport
//!   must await its server; the in-process one never fails.
//! - `fanout`: per-topic bounded channels in this process, used by both transports,
//!   and the [`Subscription`] that reads one. Dropping it unsubscribes; a topic's state
//!   is freed with its last subscriber.
//! - `redis`: the Redis transport, one server or a Redis Cluster (PUBLISH, or SPUBLISH on
//!   a cluster, of an `envelope`; one shared subscriber per process, resubscribed after
//!   every reconnect and topology change).
//! - [`redis_client_config`], [`redis_builder`]: the `[redis]` section as fred client
//!   settings, for other parts of the server that keep state in the same Redis.
//! - [`Received::Gap`]: messages were lost (a lagging subscriber, a transport that
//!   reconnected). Pub/sub promises nothing across a gap, so consumers resynchronize.
//! - [`BusConfig`]: the `[bus]` section; [`RedisConfig`]: the `[redis]` section;
//!   [`BusHealth`]: what `/health` shows.

mod client;
mod config;
mod envelope;
mod fanout;
mod redis;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde::Serialize;

use fanout::Fanout;

pub use client::{redis_builder, redis_client_config};
pub use config::{BusConfig, ConfigError, RedisConfig, ShardedPubsub};
pub use fanout::Subscription;

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
    /// The instance name is too long to stamp on a message (at most 65535 bytes).
    #[error("bus instance name of {0} bytes is too long (at most 65535)")]
    InvalidInstance(usize),
    /// The transport's server could not be reached at start.
    #[error("cannot connect the bus to Redis at {url} (redis.url / REDIS_URL)")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    /// `in_process`, `redis` (one server) or `redis-cluster`.
    pub transport: &'static str,
    /// Whether topics travel over sharded pub/sub (SPUBLISH/SSUBSCRIBE; `redis.sharded_pubsub`).
    pub sharded_pubsub: bool,
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

/// Handle to the bus; cheap to clone. `instance` is stamped on everything it publishes.
#[derive(Clone, Debug)]
pub struct Bus {
    instance: Arc<str>,
    transport: Transport,
}

#[derive(Clone, Debug)]
enum Transport {
    /// Every subscriber lives in this process.
    InProcess(Arc<Fanout>),
    /// Redis pub/sub, fanned out locally.
    Redis(Arc<redis::RedisTransport>),
}

impl Bus {
    /// A new in-process bus whose subscribers buffer at most `cfg.capacity` messages per topic.
    pub fn in_process(instance: impl Into<Arc<str>>, cfg: &BusConfig) -> Self {
        Self { instance: instance.into(), transport: Transport::InProcess(Arc::new(Fanout::new(cfg.capacity, None))) }
    }

    /// A bus over the Redis server or Redis Cluster at `redis.url`: one publishing and one
    /// subscribing client for this process, shared by every handle cloned from it. Fails with
    /// [`BusError::Connect`] if the server cannot be reached now (no retry at start, so a
    /// wrong URL fails fast); later disconnections are retried with bounded backoff.
    pub async fn redis(instance: impl Into<Arc<str>>, redis: &RedisConfig, bus: &BusConfig) -> Result<Self, BusError> {
        let transport = redis::RedisTransport::connect(redis, bus).await?;
        Ok(Self { instance: instance.into(), transport: Transport::Redis(Arc::new(transport)) })
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

    /// Whether messages stay in this process: a publish is then delivered before it
    /// returns, without a network round trip.
    pub fn is_in_process(&self) -> bool {
        matches!(self.transport, Transport::InProcess(_))
    }

    /// Publishes `payload` on `topic` to every current subscriber, this instance's included.
    /// [`BusError::Unavailable`] while a network transport is reconnecting.
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BusError> {
        match &self.transport {
            Transport::InProcess(fanout) => {
                fanout.counters.published.fetch_add(1, Ordering::Relaxed);
                let msg = BusMessage { origin: self.instance.clone(), payload };
                fanout.deliver(topic, Received::Message(msg));
                Ok(())
            }
            Transport::Redis(redis) => redis.publish(&self.instance, topic, &payload).await,
        }
    }

    /// Subscribes to `topic`; every message published after this returns is delivered
    /// (or reported as a [`Received::Gap`]).
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription, BusError> {
        if topic.is_empty() {
            return Err(BusError::InvalidTopic(topic.to_owned()));
        }
        match &self.transport {
            Transport::InProcess(fanout) => Ok(fanout.join(topic)),
            Transport::Redis(redis) => redis.subscribe(topic).await,
        }
    }

    /// Transport name, state and counters.
    pub fn health(&self) -> BusHealth {
        let (transport, sharded_pubsub, state, fanout) = match &self.transport {
            Transport::InProcess(fanout) => ("in_process", false, TransportState::Connected, fanout),
            Transport::Redis(redis) => (redis.name(), redis.sharded(), redis.state(), redis.fanout()),
        };
        let c = &fanout.counters;
        BusHealth {
            transport,
            sharded_pubsub,
            state,
            instance: self.instance.to_string(),
            topics: fanout.len(),
            published: c.published.load(Ordering::Relaxed),
            lagged: c.lagged.load(Ordering::Relaxed),
        }
    }
}

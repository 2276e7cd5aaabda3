//! The Redis transport, on one server or a Redis Cluster. Two clients per process: one
//! publishes, one subscribes (on a cluster each is a connection per master).
//! The subscriber speaks RESP3 so it can answer a PING while subscribed: fred resolves
//! SUBSCRIBE once it is written, and the PING's reply, sent to the same node, is what
//! proves Redis has processed it (Redis answers one connection's commands in order).
//! On a Redis 7+ cluster (`redis.sharded_pubsub`) topics travel with SPUBLISH/SSUBSCRIBE,
//! so a message goes only to the master owning its channel's slot instead of to every node.
//! A manager task owns the subscriber's event streams: it fans messages out to local
//! subscriptions, sends UNSUBSCRIBE for topics whose last local subscriber dropped, and
//! after every reconnect or cluster topology change subscribes every topic again and
//! reports a gap, since Redis keeps nothing for a subscriber that was away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::{ClientInterface, ClientLike, EventInterface, Options, PubsubInterface, Server, Value};
use fred::types::{ClusterHash, ClusterStateChange, Message, RespVersion};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Mutex, broadcast, oneshot};

use crate::fanout::{Fanout, Released, Subscription};
use crate::{BusConfig, BusError, Received, RedisConfig, ShardedPubsub, TransportState, envelope};

const TRANSPORT: &str = "redis";
const TRANSPORT_CLUSTER: &str = "redis-cluster";

/// The publishing connection, and the state the manager task shares with every handle.
#[derive(Debug)]
pub(crate) struct RedisTransport {
    shared: Arc<Shared>,
    publisher: fred::prelude::Client,
    /// Dropped with the last handle; the manager task then closes both connections.
    _stop: oneshot::Sender<()>,
}

#[derive(Debug)]
struct Shared {
    subscriber: fred::prelude::Client,
    fanout: Arc<Fanout>,
    released: Arc<Released>,
    /// Serializes SUBSCRIBE, UNSUBSCRIBE and resubscription, so a topic is never
    /// unsubscribed on Redis while a local subscriber holds it. An async lock because
    /// it is held across the command's round trip on purpose.
    control: Mutex<()>,
    prefix: String,
    /// For callers' commands: fail at once while disconnected (they retry), bounded in time.
    options: Options,
    /// For the manager's own commands after a reconnect: fred announces the new connection
    /// before marking it connected, so these wait for it instead (still bounded in time).
    queued: Options,
    /// From a reconnect until every topic is subscribed again.
    resubscribing: AtomicBool,
    /// The subscriber's `CLIENT SETNAME`, so operators (and tests) can find it.
    name: String,
    retry_delay: Duration,
    /// SPUBLISH/SSUBSCRIBE instead of PUBLISH/SUBSCRIBE.
    sharded: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("not connected to Redis (reconnecting)")]
struct NotConnected;

#[derive(Debug, thiserror::Error)]
#[error("redis.sharded_pubsub = \"always\" needs Redis 7 or later; the server is {0}")]
struct ShardedUnsupported(String);

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::Unavailable { transport: TRANSPORT, source: Box::new(e) }
}

/// Whether to use sharded pub/sub, from the setting and what the server reported.
fn use_sharded(
    setting: ShardedPubsub,
    clustered: bool,
    major_version: Option<u64>,
) -> Result<bool, ShardedUnsupported> {
    let supported = major_version.is_some_and(|v| v >= 7);
    match setting {
        ShardedPubsub::Auto => Ok(clustered && supported),
        ShardedPubsub::Never => Ok(false),
        ShardedPubsub::Always if supported => Ok(true),
        ShardedPubsub::Always => {
            Err(ShardedUnsupported(major_version.map_or("of an unknown version".into(), |v| format!("Redis {v}"))))
        }
    }
}

impl RedisTransport {
    /// Connects both connections; no retry, so a wrong URL fails at start.
    pub(crate) async fn connect(cfg: &RedisConfig, bus: &BusConfig) -> Result<Self, BusError> {
        let url = cfg.url.as_deref().unwrap_or_default();
        let fail = |e: fred::error::Error| BusError::Connect { url: redact(url), source: Box::new(e) };
        let command_timeout = Duration::from_millis(cfg.command_timeout_ms);
        let mut builder = crate::client::redis_builder(cfg)
            .map_err(|e| BusError::Connect { url: redact(url), source: Box::new(e) })?;
        let publisher = builder.build().map_err(fail)?;
        let subscriber = builder.with_config(|c| c.version = RespVersion::RESP3).build().map_err(fail)?;
        publisher.init().await.map_err(fail)?;
        if let Err(e) = subscriber.init().await {
            let _ = publisher.quit().await;
            return Err(fail(e));
        }
        let version = publisher.server_version().map(|v| v.major);
        let sharded = match use_sharded(cfg.sharded_pubsub, publisher.is_clustered(), version) {
            Ok(sharded) => sharded,
            Err(e) => {
                let _ = tokio::join!(publisher.quit(), subscriber.quit());
                return Err(BusError::Connect { url: redact(url), source: Box::new(e) });
            }
        };
        tracing::info!(clustered = publisher.is_clustered(), sharded, "bus connected to Redis");
        // Taken before any SUBSCRIBE so no message or reconnect can be missed. The first
        // connection's reconnect event came before `init` returned, so it is not seen here.
        let messages = subscriber.message_rx();
        let events = Events {
            reconnects: subscriber.reconnect_rx(),
            subscriber_changes: subscriber.cluster_change_rx(),
            publisher_changes: publisher.cluster_change_rx(),
        };
        let released = Arc::new(Released::default());
        let shared = Arc::new(Shared {
            subscriber,
            fanout: Arc::new(Fanout::new(bus.capacity, Some(released.clone()))),
            released,
            control: Mutex::new(()),
            name: connection_name(&cfg.channel_prefix),
            prefix: cfg.channel_prefix.clone(),
            options: Options { fail_fast: true, timeout: Some(command_timeout), ..Default::default() },
            queued: Options { timeout: Some(command_timeout), ..Default::default() },
            resubscribing: AtomicBool::new(false),
            retry_delay: Duration::from_millis(u64::from(cfg.reconnect_min_ms)),
            sharded,
        });
        shared.name_connection().await;
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(shared.clone().run(publisher.clone(), messages, events, stopped));
        Ok(Self { shared, publisher, _stop: stop })
    }

    pub(crate) fn fanout(&self) -> &Arc<Fanout> {
        &self.shared.fanout
    }

    /// PUBLISH of one envelope; fails at once while the publishing connection is down.
    pub(crate) async fn publish(&self, origin: &str, topic: &str, payload: &[u8]) -> Result<(), BusError> {
        let envelope = envelope::encode(origin, payload)?;
        if !self.publisher.is_connected() {
            return Err(unavailable(NotConnected));
        }
        let channel = self.shared.channel(topic);
        let client = self.publisher.with_options(&self.shared.options);
        let published: Result<i64, _> = if self.shared.sharded {
            client.spublish(channel, Value::Bytes(envelope)).await
        } else {
            client.publish(channel, Value::Bytes(envelope)).await
        };
        published.map_err(unavailable)?;
        self.shared.fanout.counters.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Joins the topic locally, after Redis confirmed the SUBSCRIBE if it is new here.
    pub(crate) async fn subscribe(&self, topic: &str) -> Result<Subscription, BusError> {
        let shared = &self.shared;
        let _control = shared.control.lock().await;
        // A topic in the map is subscribed on Redis, and stays so while we hold `control`.
        if !shared.fanout.contains(topic) {
            let subscribed = shared.subscribe(vec![shared.channel(topic)], &shared.options).await;
            if let Err(e) = subscribed {
                // The SUBSCRIBE may have reached Redis: let the manager take it back.
                shared.released.add(Arc::from(topic));
                return Err(unavailable(e));
            }
        }
        Ok(shared.fanout.join(topic))
    }

    /// `redis` or `redis-cluster`.
    pub(crate) fn name(&self) -> &'static str {
        if self.publisher.is_clustered() { TRANSPORT_CLUSTER } else { TRANSPORT }
    }

    /// Whether topics travel over sharded pub/sub.
    pub(crate) fn sharded(&self) -> bool {
        self.shared.sharded
    }

    /// Connected only when both connections are up and every topic is subscribed.
    pub(crate) fn state(&self) -> TransportState {
        let up = self.publisher.is_connected()
            && self.shared.subscriber.is_connected()
            && !self.shared.resubscribing.load(Ordering::Acquire);
        if up { TransportState::Connected } else { TransportState::Degraded }
    }
}

impl Shared {
    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// SUBSCRIBE (or SSUBSCRIBE, one per hash slot), then a PING round trip on the same
    /// connection: when the PONG arrives, Redis has processed the subscription.
    async fn subscribe(&self, channels: Vec<String>, options: &Options) -> Result<(), fred::error::Error> {
        if !self.sharded {
            self.subscriber.with_options(options).subscribe(channels).await?;
            return self.ping(self.legacy_slot(), options).await;
        }
        for (slot, group) in by_slot(channels) {
            self.subscriber.with_options(options).ssubscribe(group).await?;
            self.ping(Some(slot), options).await?;
        }
        Ok(())
    }

    /// PING on the connection that owns `slot` (on a cluster; there is one otherwise).
    async fn ping(&self, slot: Option<u16>, options: &Options) -> Result<(), fred::error::Error> {
        let options = Options { cluster_hash: slot.map(ClusterHash::Custom), ..options.clone() };
        let _pong: Value = self.subscriber.with_options(&options).ping(None).await?;
        Ok(())
    }

    /// fred sends a cluster client's SUBSCRIBE and UNSUBSCRIBE to the node owning its id's slot.
    fn legacy_slot(&self) -> Option<u16> {
        self.subscriber.is_clustered().then(|| fred::util::redis_keyslot(self.subscriber.id().as_bytes()))
    }

    async fn unsubscribe(&self, channels: Vec<String>) -> Result<(), fred::error::Error> {
        let client = self.subscriber.with_options(&self.options);
        if !self.sharded {
            return client.unsubscribe(channels).await;
        }
        for (_, group) in by_slot(channels) {
            client.sunsubscribe(group).await?;
        }
        Ok(())
    }

    async fn run(
        self: Arc<Self>,
        publisher: fred::prelude::Client,
        mut messages: broadcast::Receiver<Message>,
        mut events: Events,
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                event = events.recv() => match event {
                    Some(why) => {
                        // A reconnect of a cluster comes with a topology sync: one resubscription for both.
                        events.drain();
                        tracing::info!(why, "bus resubscribing");
                        self.resubscribe(&mut messages).await;
                    }
                    None => break,
                },
                _ = self.released.notify.notified() => self.unsubscribe_released().await,
                message = messages.recv() => match message {
                    Ok(m) => self.dispatch(m),
                    Err(RecvError::Lagged(n)) => self.lost(n),
                    Err(RecvError::Closed) => break,
                },
            }
        }
        // Subscriptions see the end of their stream rather than waiting forever.
        self.fanout.close();
        let quit = async { tokio::join!(publisher.quit(), self.subscriber.quit()) };
        let _ = tokio::time::timeout(self.options.timeout.unwrap_or_default(), quit).await;
    }

    fn dispatch(&self, message: Message) {
        let Message { channel, value, .. } = message;
        let Some(topic) = channel.strip_prefix(self.prefix.as_str()) else { return };
        let decoded = match value.into_bytes() {
            Some(bytes) => envelope::decode(bytes),
            None => return tracing::warn!(%channel, "dropped a bus message that is not a string"),
        };
        match decoded {
            Ok(m) => self.fanout.deliver(topic, Received::Message(m)),
            Err(error) => tracing::warn!(%channel, %error, "dropped a malformed bus message"),
        }
    }

    /// fred's receive buffer overflowed: `n` messages, on any topics, are gone.
    fn lost(&self, n: u64) {
        tracing::warn!(missed = n, "bus receive buffer overflowed (redis.receive_buffer); subscribers resynchronize");
        self.fanout.counters.lagged.fetch_add(n, Ordering::Relaxed);
        // Which topics lost how many is unknown, so every subscription gets an unsized gap.
        self.fanout.gap_all(None);
    }

    async fn resubscribe(&self, messages: &mut broadcast::Receiver<Message>) {
        self.resubscribing.store(true, Ordering::Release);
        // What the old connection delivered comes before the gap. The new connection has
        // no subscription yet, so this drains only old messages.
        loop {
            match messages.try_recv() {
                Ok(m) => self.dispatch(m),
                Err(TryRecvError::Lagged(n)) => self.lost(n),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let restored = {
            let _control = self.control.lock().await;
            self.name_connection().await;
            let channels: Vec<String> = self.fanout.topics().iter().map(|t| self.channel(t)).collect();
            let count = channels.len();
            let restored = match count {
                0 => Ok(()),
                _ => self.subscribe(channels, &self.queued).await,
            };
            if restored.is_ok() {
                // Before the gap, so a subscriber that saw the gap sees a healthy bus.
                self.resubscribing.store(false, Ordering::Release);
            }
            // Sent after the SUBSCRIBE is confirmed and before this task reads anything the
            // new subscription delivered, so every subscriber sees the gap first.
            self.fanout.gap_all(None);
            restored.map(|()| count)
        };
        match restored {
            Ok(topics) => tracing::info!(topics, "bus resubscribed after a Redis reconnect"),
            Err(error) => {
                // Stay degraded and reconnect again: the next reconnect event retries.
                tracing::warn!(%error, "bus could not resubscribe after a Redis reconnect; reconnecting");
                tokio::time::sleep(self.retry_delay).await;
                let _ = self.subscriber.force_reconnection().await;
            }
        }
    }

    async fn unsubscribe_released(&self) {
        let _control = self.control.lock().await;
        let gone: Vec<String> =
            self.released.take().into_iter().filter(|t| !self.fanout.contains(t)).map(|t| self.channel(&t)).collect();
        // Never with an empty list: UNSUBSCRIBE with no channel drops them all.
        if gone.is_empty() {
            return;
        }
        if let Err(error) = self.unsubscribe(gone).await {
            // Harmless: messages for it find no local subscriber, and a reconnect
            // subscribes only topics that have one.
            tracing::debug!(%error, "bus UNSUBSCRIBE failed");
        }
    }

    /// Best effort: a nameless connection works the same. On a cluster every node's
    /// connection is named.
    async fn name_connection(&self) {
        let nodes: Vec<Option<Server>> = match self.subscriber.is_clustered() {
            true => self.subscriber.active_connections().into_iter().map(Some).collect(),
            false => vec![None],
        };
        for node in nodes {
            let options = Options { cluster_node: node, ..self.queued.clone() };
            if let Err(error) = self.subscriber.with_options(&options).client_setname(self.name.as_str()).await {
                tracing::debug!(%error, "bus could not name its Redis connection");
            }
        }
    }
}

/// What makes the manager subscribe every topic again.
struct Events {
    reconnects: broadcast::Receiver<Server>,
    /// Topology changes seen by either client: a slot that moved took its sharded
    /// subscriptions with it (the publisher notices first, through a MOVED reply).
    subscriber_changes: broadcast::Receiver<Vec<ClusterStateChange>>,
    publisher_changes: broadcast::Receiver<Vec<ClusterStateChange>>,
}

impl Events {
    /// Why to resubscribe next; `None` once the clients are gone.
    async fn recv(&mut self) -> Option<&'static str> {
        let alive = |r: Result<(), RecvError>, why| match r {
            Ok(()) | Err(RecvError::Lagged(_)) => Some(why),
            Err(RecvError::Closed) => None,
        };
        tokio::select! {
            r = self.reconnects.recv() => alive(r.map(drop), "reconnected"),
            r = self.subscriber_changes.recv() => alive(r.map(drop), "cluster topology changed"),
            r = self.publisher_changes.recv() => alive(r.map(drop), "cluster topology changed"),
        }
    }

    /// Forgets events already queued: the resubscription about to run covers them.
    fn drain(&mut self) {
        while !matches!(self.reconnects.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
        while !matches!(self.subscriber_changes.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
        while !matches!(self.publisher_changes.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
    }
}

/// Channels grouped by hash slot: one SSUBSCRIBE may not span slots.
fn by_slot(channels: Vec<String>) -> BTreeMap<u16, Vec<String>> {
    let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for channel in channels {
        groups.entry(fred::util::redis_keyslot(channel.as_bytes())).or_default().push(channel);
    }
    groups
}

/// `CLIENT SETNAME` refuses spaces and control characters.
fn connection_name(prefix: &str) -> String {
    let name: String =
        format!("{prefix}bus-subscriber").chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect();
    name
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("redis://u:secret@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn sharded_pubsub_follows_the_setting_and_the_server() {
        use ShardedPubsub::*;
        assert_eq!(use_sharded(Auto, true, Some(7)).unwrap(), true);
        assert_eq!(use_sharded(Auto, true, Some(6)).unwrap(), false, "Redis 6 has no sharded pub/sub");
        assert_eq!(use_sharded(Auto, false, Some(7)).unwrap(), false, "one server: classic, inspectable");
        assert_eq!(use_sharded(Never, true, Some(7)).unwrap(), false);
        assert_eq!(use_sharded(Always, false, Some(7)).unwrap(), true);
        assert!(use_sharded(Always, true, Some(6)).unwrap_err().to_string().contains("Redis 6"));
        assert!(use_sharded(Always, true, None).is_err());
    }

    #[test]
    fn channels_are_grouped_by_slot() {
        let groups = by_slot(vec!["a{x}".into(), "b".into(), "c{x}".into()]);
        assert_eq!(groups.len(), 2);
        assert!(groups.values().any(|g| g == &["a{x}".to_string(), "c{x}".to_string()]));
    }

    #[test]
    fn connection_names_have_no_spaces() {
        assert_eq!(connection_name("my app:"), "my_app:bus-subscriber");
    }
}

//! `gateway.max_connections_per_user` across instances: every instance records its
//! connections in one [`ConnectionRegistry`] shared by all of them (in-process for a
//! [`LocalCluster`](crate::LocalCluster), Redis otherwise). Recording a connection is one
//! atomic step that also answers which of the user's connections, anywhere, are now over
//! the cap (the oldest first). The instance that holds such a connection closes it with
//! 4010: this one directly, the others on a bus message addressed to them.
//!
//! Entries do not count forever if their instance dies without a goodbye: each instance
//! renews its own every third of `redis.connection_ttl_ms` and Redis drops those not
//! renewed in time; [`ConnectionRegistry::forget_instance`] drops a dead instance's at once.
//! A renewal also re-adds entries lost meanwhile (a dropped eviction message, a Redis
//! restart) and enforces the cap again, so the registry converges on what is open.

mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use rendezvous_bus::{Bus, Received};
use rendezvous_gateway::{Connection, Context, GatewayHandle, Handler, Message};
use rendezvous_protocol::CloseCode;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use redis::RedisConnections;

/// Why the registry could not answer (its store is unreachable); the caller retries at
/// the next renewal.
#[derive(Debug, thiserror::Error)]
#[error("connection registry unavailable")]
pub struct RegistryError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// A boxed future, so the registry can be a trait object.
pub type RegistryResult<'a, T> = Pin<Box<dyn Future<Output = Result<T, RegistryError>> + Send + 'a>>;

/// One connection in the registry: `instance|conn_id`.
pub fn member(instance: &str, conn: u64) -> String {
    format!("{instance}|{conn}")
}

/// Splits a member into its instance and connection id.
pub fn parse_member(member: &str) -> Option<(&str, u64)> {
    let (instance, conn) = member.rsplit_once('|')?;
    Some((instance, conn.parse().ok()?))
}

/// What [`ConnectionRegistry::record`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The opening stamp of each recorded connection, in the order given (kept by the
    /// caller and passed back on renewal, so a re-added entry keeps its age).
    pub stamps: Vec<u64>,
    /// Members over the cap, oldest first; they are no longer in the registry.
    pub evict: Vec<String>,
}

/// The user → open connections table every instance shares.
pub trait ConnectionRegistry: Send + Sync + 'static {
    /// Records (or renews) `conns` of `user`: members with their opening stamp, `None`
    /// for a connection opened now. Then, if the user has more than `cap` live entries,
    /// removes the oldest and returns them to be closed. One atomic step.
    fn record<'a>(&'a self, user: &'a str, conns: Vec<(String, Option<u64>)>, cap: usize) -> RegistryResult<'a, Recorded>;
    /// Removes one connection of `user`.
    fn remove<'a>(&'a self, user: &'a str, member: &'a str) -> RegistryResult<'a, ()>;
    /// The user's live members, oldest first (for tests and inspection).
    fn members<'a>(&'a self, user: &'a str) -> RegistryResult<'a, Vec<String>>;
    /// Removes every entry of `instance` (it died without closing its connections);
    /// answers how many were removed.
    fn forget_instance<'a>(&'a self, instance: &'a str) -> RegistryResult<'a, usize>;
}

/// The registry of a [`LocalCluster`](crate::LocalCluster): instances in one process
/// share it, so nothing expires (they die together).
#[derive(Default, Debug)]
pub struct InProcessConnections {
    users: std::sync::Mutex<HashMap<String, Vec<(String, u64)>>>,
    next: AtomicU64,
}

impl InProcessConnections {
    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(String, u64)>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ConnectionRegistry for InProcessConnections {
    fn record<'a>(&'a self, user: &'a str, conns: Vec<(String, Option<u64>)>, cap: usize) -> RegistryResult<'a, Recorded> {
        let mut users = self.users();
        let entries = users.entry(user.to_owned()).or_default();
        let mut stamps = Vec::with_capacity(conns.len());
        for (member, stamp) in conns {
            let stamp = stamp.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) + 1);
            entries.retain(|(m, _)| *m != member);
            entries.push((member, stamp));
            stamps.push(stamp);
        }
        entries.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        let over = entries.len().saturating_sub(cap);
        let evict = entries.drain(..over).map(|(m, _)| m).collect();
        Box::pin(std::future::ready(Ok(Recorded { stamps, evict })))
    }

    fn remove<'a>(&'a self, user: &'a str, member: &'a str) -> RegistryResult<'a, ()> {
        let mut users = self.users();
        if let Some(entries) = users.get_mut(user) {
            entries.retain(|(m, _)| m != member);
            if entries.is_empty() {
                users.remove(user);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn members<'a>(&'a self, user: &'a str) -> RegistryResult<'a, Vec<String>> {
        let members = self.users().get(user).map(|e| e.iter().map(|(m, _)| m.clone()).collect()).unwrap_or_default();
        Box::pin(std::future::ready(Ok(members)))
    }

    fn forget_instance<'a>(&'a self, instance: &'a str) -> RegistryResult<'a, usize> {
        let mut removed = 0;
        self.users().retain(|_, entries| {
            let before = entries.len();
            entries.retain(|(m, _)| parse_member(m).is_none_or(|(i, _)| i != instance));
            removed += before - entries.len();
            !entries.is_empty()
        });
        Box::pin(std::future::ready(Ok(removed)))
    }
}

enum Event {
    Opened { user: Arc<str>, conn: u64 },
    Closed { user: Arc<str>, conn: u64 },
}

/// This instance's side of the cross-instance cap: told of every connection through
/// [`Capped`], it records them in the registry, renews them, and closes the ones the
/// registry evicts (its own directly, other instances' through the bus).
#[derive(Clone)]
pub(crate) struct ConnectionCap {
    events: mpsc::Sender<Event>,
}

/// Connection events waiting for the registry; when full, an opening is recorded at the
/// next renewal instead (the cap holds per instance meanwhile).
const EVENT_QUEUE: usize = 4096;

const REASON: &str = "replaced by a newer connection of the same user (gateway.max_connections_per_user)";

/// The bus topic on which `instance` hears which of its connections to close.
fn evict_topic(instance: &str) -> String {
    format!("conn-evict.{instance}")
}

struct CapTask {
    registry: Arc<dyn ConnectionRegistry>,
    bus: Bus,
    gateway: GatewayHandle,
    instance: Arc<str>,
    cap: usize,
    /// Opening stamps of this instance's recorded connections.
    stamps: DashMap<u64, u64>,
    renew_now: Notify,
}

impl ConnectionCap {
    /// Subscribes to this instance's eviction topic, then spawns the task that keeps the
    /// registry in step (renewing every `renew_every`) until `stop`.
    pub(crate) async fn spawn(
        registry: Arc<dyn ConnectionRegistry>,
        bus: Bus,
        gateway: GatewayHandle,
        cap: usize,
        renew_every: Duration,
        stop: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Result<Self, rendezvous_bus::BusError> {
        let instance: Arc<str> = Arc::from(bus.instance());
        let evictions = bus.subscribe(&evict_topic(&instance)).await?;
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let task = Arc::new(CapTask {
            registry,
            bus,
            gateway,
            instance,
            cap,
            stamps: DashMap::new(),
            renew_now: Notify::new(),
        });
        tracker.spawn(task.run(rx, evictions, renew_every, stop));
        Ok(Self { events })
    }

    fn tell(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            debug!("connection registry queue full; the next renewal records what was missed");
        }
    }
}

impl CapTask {
    async fn run(
        self: Arc<Self>,
        mut events: mpsc::Receiver<Event>,
        mut evictions: rendezvous_bus::Subscription,
        renew_every: Duration,
        stop: CancellationToken,
    ) {
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                event = events.recv() => match event {
                    Some(Event::Opened { user, conn }) => self.opened(&user, conn).await,
                    Some(Event::Closed { user, conn }) => self.closed(&user, conn).await,
                    None => return,
                },
                received = evictions.recv() => match received {
                    Some(Received::Message(m)) => self.evicted(&m.payload),
                    // An eviction may be lost: the renewal enforces the cap again.
                    Some(Received::Gap { .. }) => self.renew_now.notify_one(),
                    None => return,
                },
                _ = renew.tick() => self.renew().await,
                () = self.renew_now.notified() => self.renew().await,
            }
        }
    }

    async fn opened(&self, user: &str, conn: u64) {
        match self.registry.record(user, vec![(member(&self.instance, conn), None)], self.cap).await {
            Ok(recorded) => {
                if let Some(&stamp) = recorded.stamps.first() {
                    self.stamps.insert(conn, stamp);
                }
                self.evict(user, recorded.evict).await;
            }
            Err(e) => warn!(error = %e, user, "could not record a connection; retried at the next renewal"),
        }
    }

    async fn closed(&self, user: &str, conn: u64) {
        self.stamps.remove(&conn);
        if let Err(e) = self.registry.remove(user, &member(&self.instance, conn)).await {
            debug!(error = %e, user, "could not remove a connection from the registry; it expires");
        }
    }

    /// Re-records every open connection of this instance, user by user.
    async fn renew(&self) {
        let mut by_user: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        self.gateway.for_each_connection(|c| by_user.entry(Arc::from(c.user_id())).or_default().push(c.id()));
        for (user, conns) in by_user {
            let entries: Vec<(String, Option<u64>)> = conns
                .iter()
                .map(|&c| (member(&self.instance, c), self.stamps.get(&c).map(|s| *s)))
                .collect();
            match self.registry.record(&user, entries, self.cap).await {
                Ok(recorded) => {
                    for (&conn, stamp) in conns.iter().zip(recorded.stamps) {
                        self.stamps.insert(conn, stamp);
                    }
                    self.evict(&user, recorded.evict).await;
                }
                Err(e) => {
                    warn!(error = %e, "could not renew this instance's connections; retried at the next renewal");
                    return;
                }
            }
        }
    }

    async fn evict(&self, user: &str, members: Vec<String>) {
        for m in members {
            let Some((instance, conn)) = parse_member(&m) else { continue };
            if instance == &*self.instance {
                self.close_local(user, conn);
                continue;
            }
            let payload = Bytes::from(format!("{user}\n{conn}"));
            if let Err(e) = self.bus.publish(&evict_topic(instance), payload).await {
                // That instance's next renewal finds its user over the cap and closes it.
                warn!(error = %e, instance, "could not send an eviction; the owner's renewal enforces the cap");
            }
        }
    }

    fn evicted(&self, payload: &[u8]) {
        let parsed = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.split_once('\n'))
            .and_then(|(user, conn)| Some((user, conn.parse::<u64>().ok()?)));
        match parsed {
            Some((user, conn)) => self.close_local(user, conn),
            None => warn!("dropped a malformed eviction message"),
        }
    }

    fn close_local(&self, user: &str, conn: u64) {
        for c in self.gateway.connections_of(user) {
            if c.id() == conn {
                debug!(user, conn, "closing a connection over the per-user cap");
                c.close(CloseCode::Replaced, REASON);
            }
        }
    }
}

/// Wraps the server's handler so the cross-instance cap hears of every connection; with
/// `None` (one instance alone) the gateway's own per-instance cap is the whole story.
pub(crate) struct Capped<H> {
    inner: H,
    cap: Option<ConnectionCap>,
}

impl<H> Capped<H> {
    pub(crate) fn new(inner: H, cap: Option<ConnectionCap>) -> Self {
        Self { inner, cap }
    }
}

impl<H: Handler> Handler for Capped<H> {
    type State = H::State;

    fn on_open(&self, cx: &Context<'_>, conn: &Connection) -> Self::State {
        if let Some(cap) = &self.cap {
            cap.tell(Event::Opened { user: Arc::from(conn.user_id()), conn: conn.id() });
        }
        self.inner.on_open(cx, conn)
    }

    fn on_message(&self, cx: &Context<'_>, conn: &Connection, state: &mut Self::State, msg: Message) {
        self.inner.on_message(cx, conn, state, msg);
    }

    fn on_close(&self, cx: &Context<'_>, conn: &Connection, state: Self::State) {
        self.inner.on_close(cx, conn, state);
        if let Some(cap) = &self.cap {
            cap.tell(Event::Closed { user: Arc::from(conn.user_id()), conn: conn.id() });
        }
    }
}

/// Drops the entries of every instance the instance registry declares dead (`Died`), so
/// its connections stop counting toward the cap at once instead of when they expire.
pub(crate) async fn forget_dead(
    mut events: tokio::sync::broadcast::Receiver<rendezvous_matchmaker::ClusterEvent>,
    registry: Arc<dyn ConnectionRegistry>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(rendezvous_matchmaker::ClusterEvent::Died { instance, .. }) => {
                match registry.forget_instance(&instance).await {
                    Ok(n) => debug!(%instance, connections = n, "dropped a dead instance's connections from the per-user cap"),
                    // Its entries still expire after `redis.connection_ttl_ms`.
                    Err(e) => warn!(%instance, error = %e, "cannot drop a dead instance's connections; they expire by themselves"),
                }
            }
            Ok(rendezvous_matchmaker::ClusterEvent::StateLost) => {}
            // Missed events: the entries of instances we did not hear about expire by themselves.
            Err(RecvError::Lagged(n)) => warn!(missed = n, "missed instance registry events"),
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: &str, c: u64) -> (String, Option<u64>) {
        (member(i, c), None)
    }

    #[tokio::test]
    async fn the_oldest_anywhere_is_evicted_over_the_cap() {
        let r = InProcessConnections::default();
        assert!(r.record("u", vec![m("a", 1)], 2).await.unwrap().evict.is_empty());
        assert!(r.record("u", vec![m("a", 2)], 2).await.unwrap().evict.is_empty());
        let third = r.record("u", vec![m("b", 1)], 2).await.unwrap();
        assert_eq!(third.evict, vec!["a|1".to_string()]);
        assert_eq!(r.members("u").await.unwrap(), vec!["a|2", "b|1"]);
    }

    #[tokio::test]
    async fn a_renewal_keeps_the_age_and_re_adds_a_lost_entry() {
        let r = InProcessConnections::default();
        let first = r.record("u", vec![m("a", 1)], 2).await.unwrap().stamps[0];
        r.record("u", vec![m("b", 1)], 2).await.unwrap();
        r.remove("u", "a|1").await.unwrap();
        // a|1 comes back with its old stamp, so it is still the oldest.
        r.record("u", vec![(member("a", 1), Some(first))], 2).await.unwrap();
        let over = r.record("u", vec![m("b", 2)], 2).await.unwrap();
        assert_eq!(over.evict, vec!["a|1".to_string()]);
    }

    #[tokio::test]
    async fn forgetting_an_instance_drops_only_its_entries() {
        let r = InProcessConnections::default();
        r.record("u", vec![m("a", 1), m("b", 1)], 5).await.unwrap();
        r.record("v", vec![m("a", 2)], 5).await.unwrap();
        assert_eq!(r.forget_instance("a").await.unwrap(), 2);
        assert_eq!(r.members("u").await.unwrap(), vec!["b|1"]);
        assert!(r.members("v").await.unwrap().is_empty());
    }

    #[test]
    fn members_round_trip() {
        assert_eq!(parse_member(&member("host|x-1", 7)), Some(("host|x-1", 7)));
        assert_eq!(parse_member("nonsense"), None);
    }
}

//! Other instances, after Phoenix.Tracker: each instance owns its own users' records and
//! ships them as numbered deltas once per tick; the others merge. A gap in the numbers (or a
//! bus `Gap`) asks for the full state; an instance that goes silent is dropped with its
//! records; a restarted one (new epoch) replaces the old after the offline grace.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::entry::{Entry, UserId};
use crate::small::SmallSet;
use crate::state::State;
use crate::topic::ReplicaId;
use rendezvous_gateway::Outbox;

/// What instances say to each other on `presence.bus_topic` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum PeerMessage {
    /// Changes since `seq - 1`: new records for `entries` and membership changes.
    Delta {
        epoch: u64,
        seq: u64,
        entries: HashMap<UserId, Arc<Entry>>,
        joins: HashMap<Arc<str>, Vec<UserId>>,
        leaves: HashMap<Arc<str>, Vec<UserId>>,
    },
    /// Everything the instance owns, as of `seq`.
    Full { epoch: u64, seq: u64, entries: HashMap<UserId, Arc<Entry>>, topics: HashMap<Arc<str>, Vec<UserId>> },
    /// Alive, and the latest `seq` (so a lost last delta is noticed).
    Heartbeat { epoch: u64, seq: u64 },
    /// Please publish your full state (`target` `None`: everyone).
    SyncRequest { epoch: u64, target: Option<Arc<str>> },
}

impl PeerMessage {
    fn epoch(&self) -> u64 {
        match self {
            Self::Delta { epoch, .. }
            | Self::Full { epoch, .. }
            | Self::Heartbeat { epoch, .. }
            | Self::SyncRequest { epoch, .. } => *epoch,
        }
    }
}

/// What one other instance (one run of it) owns.
struct Replica {
    name: Arc<str>,
    epoch: u64,
    seq: u64,
    synced: bool,
    last_heard: Instant,
    /// Set when a newer epoch of the same instance appeared: kept until then so its users do
    /// not flicker while they reconnect.
    retire_at: Option<Instant>,
    requested_at: Option<Instant>,
    /// Its users that are in at least one topic; one map for records and topics, so one
    /// bucket and one id string per user.
    users: HashMap<UserId, RemoteUser>,
}

/// One of another instance's users.
struct RemoteUser {
    entry: Arc<Entry>,
    /// One topic for nearly everyone: a `SmallSet` keeps it inline, where a `HashSet` would
    /// cost a 48-byte header plus a table of four buckets.
    topics: SmallSet<Arc<str>>,
}

impl RemoteUser {
    fn new(entry: Arc<Entry>) -> Self {
        Self { entry, topics: SmallSet::default() }
    }
}

pub(crate) struct Peers {
    epoch: u64,
    current: HashMap<Arc<str>, ReplicaId>,
    replicas: HashMap<ReplicaId, Replica>,
    next_id: ReplicaId,
    want_all: bool,
    want: HashSet<Arc<str>>,
}

impl Peers {
    pub(crate) fn new(epoch: u64) -> Self {
        Self {
            epoch,
            current: HashMap::new(),
            replicas: HashMap::new(),
            next_id: 1,
            // A new instance asks everyone for their state.
            want_all: true,
            want: HashSet::new(),
        }
    }

    pub(crate) fn name_of(&self, id: ReplicaId) -> Arc<str> {
        self.replicas.get(&id).map_or_else(|| Arc::from("?"), |r| r.name.clone())
    }

    pub(crate) fn live(&self) -> u64 {
        self.current.len() as u64
    }

    /// The newest record any other instance has for `user`.
    pub(crate) fn latest_entry(&self, user: &UserId) -> Option<Arc<Entry>> {
        self.replicas.values().filter_map(|r| r.users.get(user)).map(|u| &u.entry).max_by_key(|e| e.updated_at).cloned()
    }

    /// The bus delivered nothing for a while, or lost messages: everyone must resend.
    pub(crate) fn gap(&mut self) {
        for r in self.replicas.values_mut() {
            r.synced = false;
        }
        self.want_all = true;
    }

    pub(crate) fn take_sync_request(&mut self) -> Option<PeerMessage> {
        let target = if std::mem::take(&mut self.want_all) || self.want.len() > 1 {
            None
        } else if let Some(name) = self.want.iter().next() {
            Some(name.clone())
        } else {
            return None;
        };
        self.want.clear();
        Some(PeerMessage::SyncRequest { epoch: self.epoch, target })
    }

    fn want_sync(&mut self, id: ReplicaId, now: Instant, retry: Duration) {
        let Some(r) = self.replicas.get_mut(&id) else { return };
        r.synced = false;
        if r.requested_at.is_none_or(|at| now.saturating_duration_since(at) >= retry) {
            r.requested_at = Some(now);
            self.want.insert(r.name.clone());
        }
    }

    /// The replica for `name` at `epoch`, creating it (and retiring an older epoch) if new.
    fn replica(&mut self, name: &Arc<str>, epoch: u64, now: Instant, grace: Duration) -> ReplicaId {
        if let Some(&id) = self.current.get(name) {
            match self.replicas.get_mut(&id) {
                Some(r) if r.epoch == epoch => {
                    r.last_heard = now;
                    return id;
                }
                Some(r) => r.retire_at = Some(now + grace),
                None => {}
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        // Every run starts empty at seq 0, so a replica first seen is in sync until a number is skipped.
        self.replicas.insert(
            id,
            Replica {
                name: name.clone(),
                epoch,
                seq: 0,
                synced: true,
                last_heard: now,
                retire_at: None,
                requested_at: None,
                users: HashMap::new(),
            },
        );
        self.current.insert(name.clone(), id);
        id
    }
}

impl<O: Outbox> State<O> {
    fn retry(&self) -> Duration {
        Duration::from_millis(2 * self.cfg.tick_ms)
    }

    /// A message from another instance.
    pub(crate) fn receive(&mut self, origin: &Arc<str>, msg: PeerMessage, now: Instant) {
        if **origin == *self.me {
            return;
        }
        let id = self.peers.replica(origin, msg.epoch(), now, self.grace);
        let retry = self.retry();
        let Some(r) = self.peers.replicas.get(&id) else { return };
        let (synced, seq) = (r.synced, r.seq);
        match msg {
            PeerMessage::Heartbeat { seq: theirs, .. } => {
                if theirs > seq || !synced {
                    self.peers.want_sync(id, now, retry);
                }
            }
            PeerMessage::Delta { seq: theirs, mut entries, joins, leaves, .. } => {
                if synced && theirs == seq + 1 {
                    self.share_strings(&mut entries);
                    self.apply_delta(id, theirs, entries, joins, leaves);
                } else if !synced || theirs > seq {
                    self.peers.want_sync(id, now, retry);
                }
            }
            // An older full state than what we have would step back; the bus keeps order, so
            // this only happens when an answer to someone else's request crosses our deltas.
            PeerMessage::Full { seq: theirs, .. } if synced && theirs < seq => {}
            PeerMessage::Full { seq: theirs, mut entries, topics, .. } => {
                self.share_strings(&mut entries);
                self.apply_full(id, theirs, entries, topics);
            }
            PeerMessage::SyncRequest { target, .. } => {
                if target.is_none_or(|t| *t == *self.me) {
                    self.outgoing.full_requested = true;
                }
            }
        }
    }

    /// Shares the repeated profile strings of records just received (each still the only
    /// reference to its profile).
    fn share_strings(&mut self, entries: &mut HashMap<UserId, Arc<Entry>>) {
        for entry in entries.values_mut() {
            if let Some(profile) = Arc::get_mut(entry).and_then(|e| Arc::get_mut(&mut e.profile)) {
                self.shared_strings.share_profile(profile);
            }
        }
    }

    fn apply_delta(
        &mut self,
        id: ReplicaId,
        seq: u64,
        entries: HashMap<UserId, Arc<Entry>>,
        joins: HashMap<Arc<str>, Vec<UserId>>,
        leaves: HashMap<Arc<str>, Vec<UserId>>,
    ) {
        let Some(r) = self.peers.replicas.get_mut(&id) else { return };
        r.seq = seq;
        let mut upserts = Vec::new();
        let mut removes = Vec::new();
        // Leaves first, so a new record is applied only to the topics the user is still in.
        for (topic, users) in leaves {
            for user in users {
                if r.users.get_mut(&user).is_some_and(|u| u.topics.remove(&topic)) {
                    removes.push((topic.clone(), user));
                }
            }
        }
        for (user, entry) in entries {
            match r.users.get_mut(&user) {
                Some(u) => {
                    for t in &u.topics {
                        upserts.push((t.clone(), user.clone(), entry.clone()));
                    }
                    u.entry = entry;
                }
                None => {
                    r.users.insert(user, RemoteUser::new(entry));
                }
            }
        }
        for (topic, users) in joins {
            for user in users {
                // The id as `users` holds it: the copy in this list is dropped with the message.
                let Some(user) = r.users.get_key_value(&user).map(|(k, _)| k.clone()) else { continue };
                let Some(u) = r.users.get_mut(&user) else { continue };
                if u.topics.insert(topic.clone()) {
                    upserts.push((topic.clone(), user, u.entry.clone()));
                }
            }
        }
        r.users.retain(|_, u| !u.topics.is_empty());
        self.apply(id, removes, upserts);
    }

    fn apply_full(
        &mut self,
        id: ReplicaId,
        seq: u64,
        entries: HashMap<UserId, Arc<Entry>>,
        topics: HashMap<Arc<str>, Vec<UserId>>,
    ) {
        let Some(r) = self.peers.replicas.get_mut(&id) else { return };
        let mut users: HashMap<UserId, RemoteUser> =
            entries.into_iter().map(|(user, entry)| (user, RemoteUser::new(entry))).collect();
        for (topic, ids) in topics {
            for user in ids {
                if let Some(u) = users.get_mut(&user) {
                    u.topics.insert(topic.clone());
                }
            }
        }
        users.retain(|_, u| !u.topics.is_empty());
        let mut removes = Vec::new();
        for (user, old) in &r.users {
            for t in old.topics.iter().filter(|t| !users.get(user).is_some_and(|new| new.topics.contains(*t))) {
                removes.push((t.clone(), user.clone()));
            }
        }
        let mut upserts = Vec::new();
        for (user, u) in &users {
            for t in &u.topics {
                upserts.push((t.clone(), user.clone(), u.entry.clone()));
            }
        }
        r.users = users;
        r.seq = seq;
        r.synced = true;
        r.requested_at = None;
        self.apply(id, removes, upserts);
    }

    fn apply(&mut self, id: ReplicaId, removes: Vec<(Arc<str>, UserId)>, upserts: Vec<(Arc<str>, UserId, Arc<Entry>)>) {
        for (topic, user) in removes {
            self.topic_remove(&topic, &user, id);
            self.collect_topic(&topic);
        }
        for (topic, user, entry) in upserts {
            self.topic_upsert(&topic, &user, id, &entry);
        }
    }

    /// Drops instances that stopped heartbeating and retired runs whose grace is over.
    pub(crate) fn expire_peers(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.cfg.instance_timeout_ms);
        let dead: Vec<ReplicaId> = self
            .peers
            .replicas
            .iter()
            .filter(|(_, r)| {
                r.retire_at.is_some_and(|at| at <= now) || now.saturating_duration_since(r.last_heard) >= timeout
            })
            .map(|(&id, _)| id)
            .collect();
        for id in dead {
            let Some(r) = self.peers.replicas.remove(&id) else { continue };
            if self.peers.current.get(&r.name) == Some(&id) {
                self.peers.current.remove(&r.name);
                tracing::info!(instance = %r.name, "presence: instance timed out; dropping its users");
            }
            let removes =
                r.users.into_iter().flat_map(|(id, u)| u.topics.into_iter().map(move |t| (t, id.clone()))).collect();
            self.apply(id, removes, Vec::new());
        }
    }

    /// Everything this instance owns, for a peer that asked.
    pub(crate) fn full_state(&self) -> PeerMessage {
        let mut entries = HashMap::new();
        let mut topics: HashMap<Arc<str>, Vec<UserId>> = HashMap::new();
        for (user, u) in &self.users {
            let Some(entry) = &u.entry else { continue };
            if u.topics.is_empty() {
                continue;
            }
            entries.insert(user.clone(), entry.clone());
            for t in u.topics.keys() {
                topics.entry(t.clone()).or_default().push(user.clone());
            }
        }
        PeerMessage::Full { epoch: self.epoch, seq: self.outgoing.seq, entries, topics }
    }

    /// This tick's local changes, coalesced.
    pub(crate) fn delta(&mut self) -> PeerMessage {
        let mut entries = HashMap::new();
        let mut joins: HashMap<Arc<str>, Vec<UserId>> = HashMap::new();
        let mut leaves: HashMap<Arc<str>, Vec<UserId>> = HashMap::new();
        // Taken, not drained: a burst (10,000 subscribing at once) must not leave its
        // capacity allocated for good (BENCHMARKS.md, presence memory).
        for ((topic, user), joined) in std::mem::take(&mut self.outgoing.memberships) {
            if joined && self.users.get(&user).is_some_and(|u| u.topics.contains_key(&topic)) {
                self.outgoing.users.insert(user.clone());
                joins.entry(topic).or_default().push(user);
            } else if !joined {
                leaves.entry(topic).or_default().push(user);
            }
        }
        for user in std::mem::take(&mut self.outgoing.users) {
            if let Some(entry) = self.users.get(&user).and_then(|u| u.entry.clone()) {
                entries.insert(user, entry);
            }
        }
        PeerMessage::Delta { epoch: self.epoch, seq: self.outgoing.seq, entries, joins, leaves }
    }
}

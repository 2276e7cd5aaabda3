//! Everything the presence task owns, and the tick that turns a period of changes into one
//! bus publication and one message per topic. Synchronous: the task in `service` feeds it.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::PresenceConfig;
use crate::directory::SharedStrings;
use crate::entry::{Entry, UserId};
use crate::local::{Conn, LocalUser};
use crate::peers::{PeerMessage, Peers};
use crate::stats::StatsCell;
use crate::topic::{Limits, ReplicaId, TickReport, Topic};
use rendezvous_gateway::Outbox;

/// This instance's own records in every topic.
pub(crate) const LOCAL: ReplicaId = 0;

/// Unix milliseconds derived from tokio's clock, so paused-time tests are deterministic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
    unix_origin: i64,
}

impl Clock {
    pub(crate) fn new(now: Instant) -> Self {
        let unix_origin = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self { origin: now, unix_origin }
    }

    pub(crate) fn unix_ms(&self, now: Instant) -> i64 {
        self.unix_origin + now.saturating_duration_since(self.origin).as_millis() as i64
    }
}

/// Local changes since the last bus publication, coalesced: the final entry per user and the
/// final membership per (topic, user).
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    pub(crate) seq: u64,
    pub(crate) users: HashSet<UserId>,
    pub(crate) memberships: HashMap<(Arc<str>, UserId), bool>,
    pub(crate) full_requested: bool,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.memberships.is_empty()
    }
}

/// A directory lookup the task should start: user and lookup id.
pub(crate) type LookupRequest = (UserId, u64);

/// Most recent tick durations kept for the p99.
const TICK_SAMPLES: usize = 256;
/// Ticks the changes-per-second rate is averaged over.
const RATE_TICKS: usize = 5;

pub(crate) struct State<O> {
    pub(crate) cfg: Arc<PresenceConfig>,
    pub(crate) limits: Limits,
    pub(crate) grace: Duration,
    pub(crate) clock: Clock,
    pub(crate) me: Arc<str>,
    pub(crate) epoch: u64,
    pub(crate) topics: HashMap<Arc<str>, Topic<O>>,
    pub(crate) dirty_topics: HashSet<Arc<str>>,
    pub(crate) conns: HashMap<u64, Conn<O>>,
    pub(crate) users: HashMap<UserId, LocalUser>,
    /// Memberships whose last subscribed connection closed, by deadline, each row numbered
    /// from `linger_seq`; stale rows (the membership was taken up again) are skipped.
    pub(crate) lingering: BTreeSet<(Instant, UserId, Arc<str>, u64)>,
    pub(crate) linger_seq: u64,
    pub(crate) outgoing: Outgoing,
    pub(crate) peers: Peers,
    pub(crate) lookups: Vec<LookupRequest>,
    pub(crate) lookup_seq: u64,
    /// Genders, shared by local profiles and remote records.
    pub(crate) shared_strings: SharedStrings,
    pub(crate) stats: Arc<StatsCell>,
    tick_samples: VecDeque<u64>,
    rate_samples: VecDeque<u64>,
}

impl<O: Outbox> State<O> {
    pub(crate) fn new(cfg: Arc<PresenceConfig>, me: Arc<str>, now: Instant, stats: Arc<StatsCell>) -> Self {
        let epoch = rand::random::<u64>() | 1;
        Self {
            limits: Limits { window: cfg.window, max_entries: cfg.max_entries_per_tick },
            grace: Duration::from_millis(cfg.offline_grace_ms),
            clock: Clock::new(now),
            peers: Peers::new(epoch),
            me,
            epoch,
            cfg,
            topics: HashMap::new(),
            dirty_topics: HashSet::new(),
            conns: HashMap::new(),
            users: HashMap::new(),
            lingering: BTreeSet::new(),
            linger_seq: 0,
            outgoing: Outgoing::default(),
            lookups: Vec::new(),
            lookup_seq: 0,
            shared_strings: SharedStrings::default(),
            stats,
            tick_samples: VecDeque::with_capacity(TICK_SAMPLES),
            rate_samples: VecDeque::with_capacity(RATE_TICKS),
        }
    }

    pub(crate) fn topic_upsert(&mut self, topic: &Arc<str>, user: &UserId, replica: ReplicaId, entry: &Arc<Entry>) {
        let (me, peers) = (&self.me, &self.peers);
        let origin_of = |r: ReplicaId| if r == LOCAL { me.clone() } else { peers.name_of(r) };
        let t = self.topics.entry(topic.clone()).or_insert_with(|| Topic::new(topic.clone()));
        if t.upsert(user, replica, entry, origin_of) {
            self.dirty_topics.insert(topic.clone());
        }
    }

    pub(crate) fn topic_remove(&mut self, topic: &Arc<str>, user: &UserId, replica: ReplicaId) {
        if let Some(t) = self.topics.get_mut(topic) {
            if t.remove(user, replica) {
                self.dirty_topics.insert(topic.clone());
            }
        }
    }

    /// Drops a topic nobody is in or listening to.
    pub(crate) fn collect_topic(&mut self, topic: &Arc<str>) {
        if self.topics.get(topic).is_some_and(|t| t.is_idle()) {
            self.topics.remove(topic);
        }
    }

    /// One tick: expire lingering users and silent instances, then publish. Returns what to put
    /// on the bus (at most a sync request and one delta or full state).
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<PeerMessage> {
        let started = std::time::Instant::now();
        let now_ms = self.clock.unix_ms(now);
        self.expire_lingering(now);
        self.expire_peers(now);
        let bus = self.publications();
        let mut report = TickReport::default();
        for name in std::mem::take(&mut self.dirty_topics) {
            if let Some(t) = self.topics.get_mut(&name) {
                t.tick(self.limits, now_ms, &mut report);
            }
            self.collect_topic(&name);
        }
        self.record(report, started.elapsed().as_micros() as u64);
        bus
    }

    /// The bus side of a tick: local changes as one delta (or the full state if a peer asked).
    fn publications(&mut self) -> Vec<PeerMessage> {
        let mut out = Vec::new();
        if let Some(req) = self.peers.take_sync_request() {
            self.stats.resync();
            out.push(req);
        }
        if !self.outgoing.is_empty() {
            self.outgoing.seq += 1;
        }
        if std::mem::take(&mut self.outgoing.full_requested) {
            self.outgoing.users = Default::default();
            self.outgoing.memberships = Default::default();
            out.push(self.full_state());
        } else if !self.outgoing.is_empty() {
            out.push(self.delta());
        }
        out
    }

    pub(crate) fn heartbeat(&self) -> PeerMessage {
        PeerMessage::Heartbeat { epoch: self.epoch, seq: self.outgoing.seq }
    }

    fn record(&mut self, report: TickReport, micros: u64) {
        if self.tick_samples.len() == TICK_SAMPLES {
            self.tick_samples.pop_front();
        }
        self.tick_samples.push_back(micros);
        let mut sorted: Vec<u64> = self.tick_samples.iter().copied().collect();
        sorted.sort_unstable();
        let p99 = sorted[(sorted.len() * 99).div_ceil(100).saturating_sub(1)];
        if self.rate_samples.len() == RATE_TICKS {
            self.rate_samples.pop_front();
        }
        self.rate_samples.push_back(report.entries);
        let per_sec = self.rate_samples.iter().sum::<u64>() as f64
            / (self.rate_samples.len() as f64 * self.cfg.tick_ms as f64 / 1000.0);
        let subscribers = self.topics.values().map(|t| t.subscribers() as u64).sum();
        self.stats.after_tick(&report, p99, per_sec, self.topics.len() as u64, subscribers, self.users.len() as u64);
        self.stats.peers(self.peers.live());
    }
}

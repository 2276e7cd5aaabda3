//! The queue every instance matches from, and who is engaged in what: one table shared
//! by all instances, every operation atomic, so a user is claimed at most once however
//! many matchers run. [`InProcessQueue`] serves one process (and tests that run several
//! instances in one); [`RedisQueue`] (a sorted set plus hashes, each operation one Lua
//! script) shares it between processes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rendezvous_protocol::MatchPrefs;
use serde::{Deserialize, Serialize};

use crate::directory::{BoxFuture, PublicProfile};

/// A queued user with everything the matcher needs, so a scan never asks the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Shown to the peer; `profile.user_id` is the user.
    pub profile: PublicProfile,
    /// Whom the user wants to meet.
    pub prefs: MatchPrefs,
    /// Users this one blocked or was blocked by, as loaded at join.
    pub blocked: Vec<String>,
    /// Users this one is in a cooldown with, and when each cooldown ends (Unix ms), as
    /// loaded at join; cooldowns that start later are the shared queue's pair bans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cooldowns: Vec<(String, i64)>,
    /// When the user joined (Unix ms), for wait-time figures; requeueing keeps it.
    pub joined_at_ms: i64,
}

impl QueueEntry {
    /// The queued user.
    pub fn user_id(&self) -> &str {
        &self.profile.user_id
    }

    /// Whether `self` and `other` may be matched: each one's preferences hold for the
    /// other, and neither blocked the other.
    pub fn compatible(&self, other: &QueueEntry) -> bool {
        self.user_id() != other.user_id() && self.prefs_agree(other) && !self.blocks_either_way(other)
    }

    /// Whether each one's preferences hold for the other (gender, region, topic): the part
    /// of [`QueueEntry::compatible`] that depends on profile and preferences only.
    pub fn prefs_agree(&self, other: &QueueEntry) -> bool {
        let wants =
            |a: &QueueEntry, b: &QueueEntry| a.prefs.genders.as_ref().is_none_or(|g| g.contains(&b.profile.gender));
        wants(self, other)
            && wants(other, self)
            && self.prefs.region == other.prefs.region
            && self.prefs.topic == other.prefs.topic
    }

    /// Whether either blocked the other.
    pub fn blocks_either_way(&self, other: &QueueEntry) -> bool {
        self.blocked.iter().any(|b| b == other.user_id()) || other.blocked.iter().any(|b| b == self.user_id())
    }

    /// Whether a cooldown loaded at either one's join still keeps the two apart at `now_ms`.
    pub fn cooling_with(&self, other: &QueueEntry, now_ms: i64) -> bool {
        let cooling =
            |a: &QueueEntry, b: &QueueEntry| a.cooldowns.iter().any(|(u, until)| u == b.user_id() && *until > now_ms);
        cooling(self, other) || cooling(other, self)
    }
}

/// What a user is engaged in, and which instance coordinates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engagement {
    /// The proposal, invite or call id.
    pub id: String,
    /// Which kind of thing `id` names.
    pub kind: EngagementKind,
    /// The instance whose matchmaker task owns it; commands about it go there.
    pub coordinator: String,
}

/// The kinds of engagement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngagementKind {
    /// A pending `match.proposed` (also while its call is being written).
    Proposal,
    /// An accepted invite whose call is being written.
    Starting,
    /// An active call.
    Call,
}

/// A user's state in the shared table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserStatus {
    /// Neither queued nor engaged.
    Idle,
    /// Waiting in the queue.
    Queued,
    /// In a proposal, a starting call or a call.
    Engaged(Engagement),
}

/// What `enqueue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The user is now queued.
    Queued,
    /// The user was already queued.
    AlreadyQueued,
    /// The user is engaged and was not queued.
    Engaged(Engagement),
}

/// Why two users may not be matched for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairBan {
    /// Unix ms until which the ban holds.
    pub until_ms: i64,
    /// A block (also stops invites), not just a cooldown.
    pub blocked: bool,
}

/// A call in progress, kept in the shared table so that a survivor can end it (and write
/// its history row) when the instance coordinating it dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The call id.
    pub call_id: String,
    /// The offerer.
    pub user_a: String,
    /// The answerer.
    pub user_b: String,
    /// Unix ms, as the directory recorded the start.
    pub started_at_ms: i64,
    /// The instance coordinating the call.
    pub coordinator: String,
}

/// The shared table failed (a network transport); the caller answers `unavailable`.
#[derive(Debug, thiserror::Error)]
#[error("match queue unavailable")]
pub struct QueueError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

type Res<'a, T> = BoxFuture<'a, Result<T, QueueError>>;

/// The queue and engagement table shared by every instance. Each method is one atomic step.
pub trait MatchQueue: Send + Sync + 'static {
    /// Queues an idle user at the back.
    fn enqueue(&self, entry: QueueEntry) -> Res<'_, JoinOutcome>;
    /// Removes a queued user; `false` if the user was not queued.
    fn leave<'a>(&'a self, user_id: &'a str) -> Res<'a, bool>;
    /// The user's state.
    fn status<'a>(&'a self, user_id: &'a str) -> Res<'a, UserStatus>;
    /// Up to `limit` queued users, front first.
    fn waiting(&self, limit: usize) -> Res<'_, Vec<Arc<QueueEntry>>>;
    /// Both users queued and their pair not banned at `now_ms`: both leave the queue,
    /// engaged in `engagement`. Otherwise nothing changes and the answer is `false`.
    fn claim<'a>(&'a self, a: &'a str, b: &'a str, engagement: Engagement, now_ms: i64) -> Res<'a, bool>;
    /// Both users idle or queued and not blocking each other: both become engaged
    /// (leaving the queue). For accepted invites, where cooldowns do not apply.
    fn engage_pair<'a>(&'a self, a: &'a str, b: &'a str, engagement: Engagement, now_ms: i64) -> Res<'a, bool>;
    /// Moves a user engaged in `from_id` to `to`; `false` if not engaged in `from_id`.
    fn rebind<'a>(&'a self, user_id: &'a str, from_id: &'a str, to: Engagement) -> Res<'a, bool>;
    /// A user engaged in `id` becomes idle; `false` if not engaged in `id`.
    fn release<'a>(&'a self, user_id: &'a str, id: &'a str) -> Res<'a, bool>;
    /// A user engaged in `id` goes back to the front of the queue.
    fn requeue_front<'a>(&'a self, entry: Arc<QueueEntry>, id: &'a str) -> Res<'a, bool>;
    /// Bans a pair (a cooldown or a block), keeping the longer of two bans.
    fn ban_pair<'a>(&'a self, a: &'a str, b: &'a str, ban: PairBan) -> Res<'a, ()>;
    /// The pair's ban in force at `now_ms`, if any.
    fn pair_ban<'a>(&'a self, a: &'a str, b: &'a str, now_ms: i64) -> Res<'a, Option<PairBan>>;
    /// Users queued right now.
    fn len(&self) -> Res<'_, usize>;
    /// Whether nobody is queued.
    fn is_empty(&self) -> Res<'_, bool>;
    /// Re-asserts an engagement after the shared table lost it (a restarted Redis): a user
    /// not engaged becomes engaged in `engagement` (leaving the queue); `false` if the user
    /// is engaged already (in anything).
    fn restore_engagement<'a>(&'a self, user_id: &'a str, engagement: Engagement) -> Res<'a, bool>;
    /// Records a call in progress (see [`CallRecord`]); recording it again overwrites.
    fn record_call<'a>(&'a self, call: &'a CallRecord) -> Res<'a, ()>;
    /// Forgets a call that ended.
    fn forget_call<'a>(&'a self, call_id: &'a str) -> Res<'a, ()>;
    /// Which implementation this is, for `/health` (`in_process`, `redis`).
    fn backend(&self) -> &'static str;
    /// Whether the shared table can be reached right now, for `/health`.
    fn reachable(&self) -> bool;
}

fn ready<'a, T: Send + 'a>(v: T) -> Res<'a, T> {
    Box::pin(std::future::ready(Ok(v)))
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.to_owned(), b.to_owned()) } else { (b.to_owned(), a.to_owned()) }
}

enum Slot {
    Queued { entry: Arc<QueueEntry>, key: (i64, u64) },
    Engaged(Engagement),
}

#[derive(Default)]
struct Table {
    users: HashMap<String, Slot>,
    calls: HashMap<String, CallRecord>,
    order: BTreeMap<(i64, u64), String>,
    seq: u64,
    bans: HashMap<(String, String), PairBan>,
    bans_since_prune: usize,
}

impl Table {
    fn push(&mut self, entry: Arc<QueueEntry>, front: bool) {
        self.seq += 1;
        let score = match (front, self.order.first_key_value()) {
            (true, Some(((first, _), _))) => first.saturating_sub(1).min(entry.joined_at_ms),
            _ => entry.joined_at_ms,
        };
        let key = (score, self.seq);
        self.order.insert(key, entry.user_id().to_owned());
        self.users.insert(entry.user_id().to_owned(), Slot::Queued { entry, key });
    }

    /// Removes `user` from the queue; an engaged user stays engaged.
    fn unqueue(&mut self, user: &str) {
        if let Some(Slot::Queued { key, .. }) = self.users.get(user) {
            let key = *key;
            self.order.remove(&key);
            self.users.remove(user);
        }
    }

    fn is_queued(&self, user: &str) -> bool {
        matches!(self.users.get(user), Some(Slot::Queued { .. }))
    }

    fn ban(&self, a: &str, b: &str, now_ms: i64) -> Option<PairBan> {
        self.bans.get(&pair(a, b)).copied().filter(|ban| ban.until_ms > now_ms)
    }

    fn engaged_in(&self, user: &str, id: &str) -> bool {
        matches!(self.users.get(user), Some(Slot::Engaged(e)) if e.id == id)
    }
}

/// The shared table in this process's memory. Clones share it, so tests give one to
/// several instances to stand in for the Redis one.
#[derive(Clone, Default)]
pub struct InProcessQueue {
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for InProcessQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessQueue").finish_non_exhaustive()
    }
}

impl InProcessQueue {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Table) -> T) -> T {
        // A panic while holding the lock cannot leave the table half-updated in a way
        // later calls could not handle, so a poisoned lock is used as is.
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut t)
    }

    /// Every user's state, for tests' invariant checks.
    pub fn snapshot(&self) -> Vec<(String, UserStatus)> {
        self.with(|t| {
            t.users
                .iter()
                .map(|(u, s)| {
                    let st = match s {
                        Slot::Queued { .. } => UserStatus::Queued,
                        Slot::Engaged(e) => UserStatus::Engaged(e.clone()),
                    };
                    (u.clone(), st)
                })
                .collect()
        })
    }
}

impl MatchQueue for InProcessQueue {
    fn enqueue(&self, entry: QueueEntry) -> Res<'_, JoinOutcome> {
        ready(self.with(|t| match t.users.get(entry.user_id()) {
            Some(Slot::Queued { .. }) => JoinOutcome::AlreadyQueued,
            Some(Slot::Engaged(e)) => JoinOutcome::Engaged(e.clone()),
            None => {
                t.push(Arc::new(entry), false);
                JoinOutcome::Queued
            }
        }))
    }

    fn leave<'a>(&'a self, user_id: &'a str) -> Res<'a, bool> {
        ready(self.with(|t| {
            let queued = t.is_queued(user_id);
            t.unqueue(user_id);
            queued
        }))
    }

    fn status<'a>(&'a self, user_id: &'a str) -> Res<'a, UserStatus> {
        ready(self.with(|t| match t.users.get(user_id) {
            None => UserStatus::Idle,
            Some(Slot::Queued { .. }) => UserStatus::Queued,
            Some(Slot::Engaged(e)) => UserStatus::Engaged(e.clone()),
        }))
    }

    fn waiting(&self, limit: usize) -> Res<'_, Vec<Arc<QueueEntry>>> {
        ready(self.with(|t| {
            t.order
                .values()
                .take(limit)
                .filter_map(|u| match t.users.get(u) {
                    Some(Slot::Queued { entry, .. }) => Some(entry.clone()),
                    _ => None,
                })
                .collect()
        }))
    }

    fn claim<'a>(&'a self, a: &'a str, b: &'a str, engagement: Engagement, now_ms: i64) -> Res<'a, bool> {
        ready(self.with(|t| {
            if a == b || !t.is_queued(a) || !t.is_queued(b) || t.ban(a, b, now_ms).is_some() {
                return false;
            }
            t.unqueue(a);
            t.unqueue(b);
            t.users.insert(a.to_owned(), Slot::Engaged(engagement.clone()));
            t.users.insert(b.to_owned(), Slot::Engaged(engagement));
            true
        }))
    }

    fn engage_pair<'a>(&'a self, a: &'a str, b: &'a str, engagement: Engagement, now_ms: i64) -> Res<'a, bool> {
        ready(self.with(|t| {
            let free = |u: &str| !matches!(t.users.get(u), Some(Slot::Engaged(_)));
            if a == b || !free(a) || !free(b) || t.ban(a, b, now_ms).is_some_and(|ban| ban.blocked) {
                return false;
            }
            t.unqueue(a);
            t.unqueue(b);
            t.users.insert(a.to_owned(), Slot::Engaged(engagement.clone()));
            t.users.insert(b.to_owned(), Slot::Engaged(engagement));
            true
        }))
    }

    fn rebind<'a>(&'a self, user_id: &'a str, from_id: &'a str, to: Engagement) -> Res<'a, bool> {
        ready(self.with(|t| {
            if !t.engaged_in(user_id, from_id) {
                return false;
            }
            t.users.insert(user_id.to_owned(), Slot::Engaged(to));
            true
        }))
    }

    fn release<'a>(&'a self, user_id: &'a str, id: &'a str) -> Res<'a, bool> {
        ready(self.with(|t| {
            if !t.engaged_in(user_id, id) {
                return false;
            }
            t.users.remove(user_id);
            true
        }))
    }

    fn requeue_front<'a>(&'a self, entry: Arc<QueueEntry>, id: &'a str) -> Res<'a, bool> {
        ready(self.with(|t| {
            if !t.engaged_in(entry.user_id(), id) {
                return false;
            }
            t.users.remove(entry.user_id());
            t.push(entry, true);
            true
        }))
    }

    fn ban_pair<'a>(&'a self, a: &'a str, b: &'a str, ban: PairBan) -> Res<'a, ()> {
        self.with(|t| {
            let slot = t.bans.entry(pair(a, b)).or_insert(ban);
            slot.until_ms = slot.until_ms.max(ban.until_ms);
            slot.blocked |= ban.blocked;
            // Expired bans are dropped now and then so the table stays as small as the
            // set of live bans (Redis gives each key a TTL instead).
            t.bans_since_prune += 1;
            if t.bans_since_prune >= 1024 {
                t.bans_since_prune = 0;
                let now = crate::clock::now_ms();
                t.bans.retain(|_, b| b.until_ms > now);
            }
        });
        ready(())
    }

    fn pair_ban<'a>(&'a self, a: &'a str, b: &'a str, now_ms: i64) -> Res<'a, Option<PairBan>> {
        ready(self.with(|t| t.ban(a, b, now_ms)))
    }

    fn len(&self) -> Res<'_, usize> {
        ready(self.with(|t| t.order.len()))
    }

    fn is_empty(&self) -> Res<'_, bool> {
        ready(self.with(|t| t.order.is_empty()))
    }

    fn restore_engagement<'a>(&'a self, user_id: &'a str, engagement: Engagement) -> Res<'a, bool> {
        ready(self.with(|t| {
            if matches!(t.users.get(user_id), Some(Slot::Engaged(_))) {
                return false;
            }
            t.unqueue(user_id);
            t.users.insert(user_id.to_owned(), Slot::Engaged(engagement));
            true
        }))
    }

    fn record_call<'a>(&'a self, call: &'a CallRecord) -> Res<'a, ()> {
        self.with(|t| t.calls.insert(call.call_id.clone(), call.clone()));
        ready(())
    }

    fn forget_call<'a>(&'a self, call_id: &'a str) -> Res<'a, ()> {
        self.with(|t| t.calls.remove(call_id));
        ready(())
    }

    fn backend(&self) -> &'static str {
        "in_process"
    }

    fn reachable(&self) -> bool {
        true
    }
}

mod redis;
pub use redis::RedisQueue;

#[cfg(test)]
pub(crate) mod tests;

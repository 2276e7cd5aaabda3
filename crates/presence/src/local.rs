//! This instance's connections and users: subscriptions, chosen state, the offline grace,
//! and the profile/block lookups that gate a first subscription.

use std::num::NonZeroU64;
use std::sync::Arc;

use rendezvous_protocol::{RequestId, SettableState};
use tokio::time::Instant;

use crate::directory::{Lookup, Profile};
use crate::entry::{Activity, Entry, UserId};
use crate::small::{SmallMap, SmallSet};
use crate::state::{LOCAL, LookupRequest, State};
use crate::topic::Blocks;
use crate::wire::{self, codes};
use rendezvous_gateway::Outbox;

/// One connection that used presence.
pub(crate) struct Conn<O> {
    pub(crate) outbox: O,
    pub(crate) user: UserId,
    pub(crate) topics: SmallSet<Arc<str>>,
    /// Subscriptions waiting for the user's first profile/block lookup (they count toward the limit).
    pub(crate) pending: Vec<(Arc<str>, Option<RequestId>)>,
}

/// A user's membership of one topic, held by their subscribed connections or by the grace period.
///
/// 16 bytes, so that with its topic name it fills a 32-byte allocation: the grace period's
/// deadline is in the `lingering` row, which this names by number instead of by deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Membership {
    conns: u32,
    /// While no connection holds it: the number of the `lingering` row that ends it.
    linger: Option<NonZeroU64>,
}

/// Where the user's profile/block lookup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LookupState {
    Idle,
    /// The lookup with this id is running; `again` asks for another when it returns (a
    /// refresh arrived meanwhile), so there is never more than one per user.
    InFlight {
        id: u64,
        again: bool,
    },
    Failed,
}

/// A user with at least one connection here, or still inside the offline grace.
pub(crate) struct LocalUser {
    pub(crate) conns: SmallSet<u64>,
    lookup: LookupState,
    profile: Option<Arc<Profile>>,
    pub(crate) blocks: Blocks,
    chosen: Option<SettableState>,
    status: Option<Arc<str>>,
    activity: Activity,
    /// The stamp of the activity change applied last; older ones (overtaken while waiting
    /// for room in the command queue) are ignored.
    activity_stamp: u64,
    active_at: i64,
    updated_at: i64,
    pub(crate) entry: Option<Arc<Entry>>,
    pub(crate) topics: SmallMap<Arc<str>, Membership>,
}

impl<O: Outbox> State<O> {
    fn reply(outbox: &O, code: &str, message: &str, req: Option<&RequestId>) {
        let _ = outbox.send(&wire::error(code, message, req));
    }

    /// Registers the connection (and its user) if new, starting the user's lookup.
    pub(crate) fn connect(&mut self, conn: &O, now: Instant) {
        let id = conn.id();
        if self.conns.contains_key(&id) {
            return;
        }
        let user: UserId = Arc::from(conn.user_id());
        self.conns.insert(
            id,
            Conn { outbox: conn.clone(), user: user.clone(), topics: SmallSet::default(), pending: Vec::new() },
        );
        if !self.users.contains_key(&user) {
            // A user who moved here from another instance keeps what they had chosen there.
            let now_ms = self.clock.unix_ms(now);
            let seed = self.peers.latest_entry(&user);
            let u = LocalUser {
                conns: SmallSet::default(),
                lookup: LookupState::Idle,
                profile: None,
                blocks: crate::topic::no_blocks(),
                chosen: seed.as_ref().and_then(|e| e.chosen),
                status: seed.as_ref().and_then(|e| e.status.clone()),
                activity: Activity::Idle,
                activity_stamp: 0,
                active_at: seed.as_ref().map_or(now_ms, |e| e.active_at),
                updated_at: seed.as_ref().map_or(now_ms, |e| e.updated_at),
                entry: None,
                topics: SmallMap::default(),
            };
            self.users.insert(user.clone(), u);
        }
        let Some(u) = self.users.get_mut(&user) else { return };
        u.conns.insert(id);
        if u.lookup == LookupState::Failed || (u.lookup == LookupState::Idle && u.profile.is_none()) {
            Self::start_lookup(&mut self.lookups, &mut self.lookup_seq, &user, u);
        }
    }

    fn start_lookup(lookups: &mut Vec<LookupRequest>, seq: &mut u64, user: &UserId, u: &mut LocalUser) {
        if let LookupState::InFlight { again, .. } = &mut u.lookup {
            *again = true;
            return;
        }
        *seq += 1;
        u.lookup = LookupState::InFlight { id: *seq, again: false };
        lookups.push((user.clone(), *seq));
    }

    pub(crate) fn subscribe(&mut self, conn: &O, topic: Arc<str>, req: Option<RequestId>, now: Instant) {
        self.connect(conn, now);
        let id = conn.id();
        let Some(c) = self.conns.get_mut(&id) else { return };
        let Some(u) = self.users.get_mut(&c.user) else { return };
        if c.pending.iter().any(|(t, _)| *t == topic) {
            return; // answered when the lookup completes
        }
        let resubscribe = c.topics.contains(&topic);
        if !resubscribe && c.topics.len() + c.pending.len() >= self.cfg.max_subscriptions_per_connection {
            let msg = format!("at most {} topics per connection", self.cfg.max_subscriptions_per_connection);
            return Self::reply(conn, codes::TOO_MANY_SUBSCRIPTIONS, &msg, req.as_ref());
        }
        if u.profile.is_none() {
            c.pending.push((topic, req));
            if u.lookup == LookupState::Failed {
                Self::start_lookup(&mut self.lookups, &mut self.lookup_seq, &c.user, u);
            }
            return;
        }
        self.join(id, topic, req);
    }

    /// Subscribes a connection whose user's profile and blocks are known.
    fn join(&mut self, conn_id: u64, topic: Arc<str>, req: Option<RequestId>) {
        if !self.topics.contains_key(&topic) && self.topics.len() >= self.cfg.max_topics {
            if let Some(c) = self.conns.get(&conn_id) {
                let msg = format!("this instance tracks its maximum of {} topics", self.cfg.max_topics);
                Self::reply(&c.outbox, codes::TOPIC_LIMIT, &msg, req.as_ref());
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&conn_id) else { return };
        let Some(u) = self.users.get_mut(&c.user) else { return };
        let Some(entry) = u.entry.clone() else { return };
        let user = c.user.clone();
        let t = self.topics.entry(topic.clone()).or_insert_with(|| crate::topic::Topic::new(topic.clone()));
        // The topic's own copy of the name, not the one this request allocated: the
        // connection and the membership keep it for as long as they last.
        let topic = t.name().clone();
        if let Some(r) = &req {
            let _ = c.outbox.send(&wire::ack(r));
        }
        // Subscribing before joining: the first subscriber's snapshot is the state before it,
        // and its own entry arrives in the next diff like everyone else's.
        let now_ms = self.clock.unix_ms(Instant::now());
        let snapshot = t.subscribe(c.outbox.clone(), u.blocks.clone(), self.limits, now_ms);
        let _ = c.outbox.send(&snapshot);
        if !c.topics.insert(topic.clone()) {
            return; // a re-subscription only wanted the fresh snapshot
        }
        let m = u.topics.get_or_insert(topic.clone(), Membership { conns: 0, linger: None });
        m.conns += 1;
        let joined = m.conns == 1 && m.linger.is_none();
        m.linger = None;
        if joined {
            self.outgoing.memberships.insert((topic.clone(), user.clone()), true);
            self.outgoing.users.insert(user.clone());
            self.topic_upsert(&topic, &user, LOCAL, &entry);
        }
    }

    pub(crate) fn unsubscribe(&mut self, conn: &O, topic: Arc<str>, req: Option<RequestId>) {
        let id = conn.id();
        let (subscribed, pending) = match self.conns.get_mut(&id) {
            Some(c) => {
                let before = c.pending.len();
                c.pending.retain(|(t, _)| *t != topic);
                (c.topics.remove(&topic), c.pending.len() != before)
            }
            None => (false, false),
        };
        if !subscribed && !pending {
            let msg = format!("not subscribed to `{topic}`");
            return Self::reply(conn, codes::NOT_SUBSCRIBED, &msg, req.as_ref());
        }
        if subscribed {
            self.release(id, &topic, None);
        }
        if let Some(r) = &req {
            let _ = conn.send(&wire::ack(r));
        }
    }

    /// Drops one connection's hold on a topic; the membership ends now (`linger` is `None`)
    /// or after the grace period.
    fn release(&mut self, conn_id: u64, topic: &Arc<str>, linger: Option<Instant>) {
        if let Some(t) = self.topics.get_mut(topic) {
            t.unsubscribe(conn_id);
        }
        let Some(user) = self.conns.get(&conn_id).map(|c| c.user.clone()) else { return };
        let Some(u) = self.users.get_mut(&user) else { return };
        let Some(m) = u.topics.get_mut(topic) else { return };
        m.conns = m.conns.saturating_sub(1);
        if m.conns > 0 {
            return;
        }
        match linger {
            Some(deadline) if !self.grace.is_zero() => {
                self.linger_seq += 1;
                m.linger = NonZeroU64::new(self.linger_seq);
                self.lingering.insert((deadline, user, topic.clone(), self.linger_seq));
            }
            _ => self.leave(&user, topic),
        }
        self.collect_topic(topic);
    }

    fn leave(&mut self, user: &UserId, topic: &Arc<str>) {
        if let Some(u) = self.users.get_mut(user) {
            u.topics.remove(topic);
        }
        self.outgoing.memberships.insert((topic.clone(), user.clone()), false);
        self.topic_remove(topic, user, LOCAL);
    }

    pub(crate) fn disconnect(&mut self, conn_id: u64, now: Instant) {
        let Some(topics) = self.conns.get(&conn_id).map(|c| c.topics.clone()) else { return };
        for topic in &topics {
            self.release(conn_id, topic, Some(now + self.grace));
        }
        let Some(c) = self.conns.remove(&conn_id) else { return };
        if let Some(u) = self.users.get_mut(&c.user) {
            u.conns.remove(&conn_id);
        }
        self.forget_if_gone(&c.user);
    }

    fn forget_if_gone(&mut self, user: &UserId) {
        if self.users.get(user).is_some_and(|u| u.conns.is_empty() && u.topics.is_empty()) {
            self.users.remove(user);
        }
    }

    /// Ends memberships whose grace period is over.
    pub(crate) fn expire_lingering(&mut self, now: Instant) {
        while self.lingering.first().is_some_and(|(deadline, ..)| *deadline <= now) {
            let Some((_, user, topic, row)) = self.lingering.pop_first() else { break };
            let due = self.users.get(&user).and_then(|u| u.topics.get(&topic)).and_then(|m| m.linger);
            if due.is_some_and(|due| due.get() == row) {
                self.leave(&user, &topic);
                self.collect_topic(&topic);
                self.forget_if_gone(&user);
            }
        }
    }

    /// `presence.set`: `status` of `Some("")` clears it. Validated by the handle.
    pub(crate) fn set_state(
        &mut self,
        conn: &O,
        chosen: Option<SettableState>,
        status: Option<String>,
        req: Option<RequestId>,
        now: Instant,
    ) {
        self.connect(conn, now);
        let user: UserId = Arc::from(conn.user_id());
        if let Some(u) = self.users.get_mut(&user) {
            let mut changed = false;
            if chosen.is_some() && u.chosen != chosen {
                u.chosen = chosen;
                changed = true;
            }
            if let Some(s) = status {
                let s = (!s.is_empty()).then(|| Arc::<str>::from(s));
                changed |= u.status != s;
                u.status = s;
            }
            if changed {
                let now_ms = self.clock.unix_ms(now);
                u.active_at = now_ms;
                u.updated_at = now_ms.max(u.updated_at + 1);
                self.refresh_entry(&user);
            }
        }
        if let Some(r) = &req {
            let _ = conn.send(&wire::ack(r));
        }
    }

    /// Matchmaking's view of a user connected here; ignored for users not connected here.
    pub(crate) fn set_activity(&mut self, user: &UserId, activity: Activity, stamp: u64, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let Some(u) = self.users.get_mut(user) else { return };
        if stamp <= u.activity_stamp {
            return;
        }
        u.activity_stamp = stamp;
        if u.activity == activity {
            return;
        }
        u.activity = activity;
        u.active_at = now_ms;
        u.updated_at = now_ms.max(u.updated_at + 1);
        self.refresh_entry(user);
    }

    /// Re-reads a connected user's profile and blocks (after a profile edit or a new block).
    pub(crate) fn refresh(&mut self, user: &UserId) {
        if let Some(u) = self.users.get_mut(user) {
            Self::start_lookup(&mut self.lookups, &mut self.lookup_seq, user, u);
        }
    }

    /// Rebuilds the user's record and applies it to every topic they are in.
    fn refresh_entry(&mut self, user: &UserId) {
        let Some(u) = self.users.get_mut(user) else { return };
        let Some(profile) = u.profile.clone() else { return };
        let entry = Arc::new(Entry {
            profile,
            chosen: u.chosen,
            status: u.status.clone(),
            activity: u.activity,
            active_at: u.active_at,
            updated_at: u.updated_at,
        });
        u.entry = Some(entry.clone());
        let topics: Vec<Arc<str>> = u.topics.keys().cloned().collect();
        if !topics.is_empty() {
            self.outgoing.users.insert(user.clone());
        }
        for t in &topics {
            self.topic_upsert(t, user, LOCAL, &entry);
        }
    }

    /// A directory lookup finished.
    pub(crate) fn lookup_done(&mut self, user: &UserId, id: u64, result: Result<Lookup, String>) {
        let Some(u) = self.users.get_mut(user) else { return };
        let LookupState::InFlight { id: running, again } = u.lookup else { return };
        if running != id {
            return; // the user left and came back; their new lookup is on its way
        }
        u.lookup = LookupState::Idle;
        if again {
            Self::start_lookup(&mut self.lookups, &mut self.lookup_seq, user, u);
        }
        let lookup = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(user_id = %user, error = %e, "presence lookup failed");
                if again || u.profile.is_some() {
                    return; // a retry is on its way, or keep what we had until a later refresh
                }
                u.lookup = LookupState::Failed;
                let conns = u.conns.clone();
                for &id in &conns {
                    let Some(c) = self.conns.get_mut(&id) else { continue };
                    for (topic, req) in std::mem::take(&mut c.pending) {
                        let msg = format!("cannot subscribe to `{topic}` right now: profile lookup failed; retry");
                        Self::reply(&c.outbox, codes::UNAVAILABLE, &msg, req.as_ref());
                    }
                }
                return;
            }
        };
        let blocks: Blocks = if lookup.blocks.is_empty() {
            crate::topic::no_blocks()
        } else {
            Arc::new(lookup.blocks.iter().map(|b| Arc::<str>::from(b.as_str())).collect())
        };
        let reblock = u.profile.is_some() && *blocks != *u.blocks;
        let mut profile = lookup.profile.unwrap_or_else(|| Profile {
            display_name: user.clone(),
            gender: "unspecified".into(),
            selfie_url: None,
        });
        self.shared_strings.share_profile(&mut profile);
        u.profile = Some(Arc::new(profile));
        u.blocks = blocks.clone();
        let conns = u.conns.clone();
        self.refresh_entry(user);
        for &id in &conns {
            let Some(c) = self.conns.get_mut(&id) else { continue };
            let pending = std::mem::take(&mut c.pending);
            if reblock {
                for t in &c.topics {
                    if let Some(topic) = self.topics.get_mut(t) {
                        topic.reblock(id, blocks.clone());
                    }
                }
            }
            for (topic, req) in pending {
                self.join(id, topic, req);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_and_its_topic_name_fill_32_bytes() {
        assert_eq!(std::mem::size_of::<(Arc<str>, Membership)>(), 32, "the layout described on `Membership`");
    }
}

//! One topic: who is in it (merged over instances), what its subscribers were last told,
//! and the once-per-tick diff that is serialized once and shared by every subscriber.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rendezvous_gateway::SharedMessage;

use crate::entry::{Entry, ShownEntry, UserId};
use crate::wire::{Diff, PresenceMessage, Snapshot, encode};
use rendezvous_gateway::Outbox;

/// Which instance (replica) a record came from; `0` is this instance.
pub(crate) type ReplicaId = u32;

/// Users blocked either way by a subscriber's user; empty for most.
pub(crate) type Blocks = Arc<HashSet<UserId>>;

/// The empty block list, shared: most users block nobody, and each would otherwise
/// allocate an empty set of their own.
pub(crate) fn no_blocks() -> Blocks {
    static EMPTY: std::sync::LazyLock<Blocks> = std::sync::LazyLock::new(Blocks::default);
    EMPTY.clone()
}

/// What one instance (replica) says about a member that several instances have.
struct Source {
    replica: ReplicaId,
    origin: Arc<str>,
    entry: Arc<Entry>,
}

/// A user in the topic: what each instance that has them says.
///
/// Nearly every user is on one instance: that record is kept inline (16 bytes, so a
/// `members` bucket is 32), with no allocation and without the instance's name, which only
/// breaks ties between records. A user several instances have (connected to two, or moving)
/// gets a boxed list, at least two long, with each instance's name, in the order the records
/// arrived. The entry subscribers see is not kept either: it is built from the winning record
/// when the user is in the window (`Topic::window`).
enum Member {
    One(ReplicaId, Arc<Entry>),
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer keeps `Member` at 16 bytes; a `Vec` or a boxed slice would make it 24"
    )]
    Many(Box<Vec<Source>>),
}

impl Member {
    /// The record shown: the one that takes precedence (`Entry::precedence`; of equals, the
    /// last to arrive). `None` only for an empty list, which `forget` never leaves.
    fn best(&self) -> Option<&Arc<Entry>> {
        match self {
            Member::One(_, entry) => Some(entry),
            Member::Many(sources) => {
                sources.iter().max_by(|a, b| a.entry.precedence(&a.origin, &b.entry, &b.origin)).map(|s| &s.entry)
            }
        }
    }

    /// Records what `replica` says; false if it said exactly that already. `origin_of` names
    /// instances, for a user a second instance now has.
    fn set(&mut self, replica: ReplicaId, entry: &Arc<Entry>, origin_of: impl Fn(ReplicaId) -> Arc<str>) -> bool {
        match self {
            Member::One(r, e) if *r == replica => {
                if e == entry {
                    return false;
                }
                *e = entry.clone();
            }
            Member::One(r, e) => {
                let first = Source { replica: *r, origin: origin_of(*r), entry: e.clone() };
                let second = Source { replica, origin: origin_of(replica), entry: entry.clone() };
                *self = Member::Many(Box::new(vec![first, second]));
            }
            Member::Many(sources) => match sources.iter_mut().find(|s| s.replica == replica) {
                Some(s) if s.entry == *entry => return false,
                Some(s) => s.entry = entry.clone(),
                None => sources.push(Source { replica, origin: origin_of(replica), entry: entry.clone() }),
            },
        }
        true
    }

    /// Forgets what `replica` said: `None` if it said nothing, else whether no record is left.
    fn forget(&mut self, replica: ReplicaId) -> Option<bool> {
        match self {
            Member::One(r, _) => (*r == replica).then_some(true),
            Member::Many(sources) => {
                let count = sources.len();
                sources.retain(|s| s.replica != replica);
                if sources.len() == count {
                    return None;
                }
                if let [last] = sources.as_slice() {
                    *self = Member::One(last.replica, last.entry.clone());
                }
                Some(false)
            }
        }
    }
}

/// Window and per-message bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) window: usize,
    pub(crate) max_entries: usize,
}

/// What one tick sent, for stats.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TickReport {
    pub(crate) batches: u64,
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    pub(crate) filtered: u64,
    pub(crate) entries: u64,
    pub(crate) coalesced: u64,
    pub(crate) send_failures: u64,
}

impl TickReport {
    fn sent(&mut self, msg: &SharedMessage, ok: bool) {
        if ok {
            self.messages += 1;
            self.bytes += msg.len() as u64;
        } else {
            self.send_failures += 1;
        }
    }
}

pub(crate) struct Topic<O> {
    name: Arc<str>,
    members: HashMap<UserId, Member>,
    /// Users whose entry may have changed since the last publication, and whether each was a
    /// member then (so a filtered count can be computed for the last published state).
    dirty: HashMap<UserId, bool>,
    /// Change events since the last publication (for the coalescing counter).
    changes: u64,
    /// The window as last published; every subscriber's view derives from it.
    view: HashMap<UserId, Arc<ShownEntry>>,
    count: usize,
    seq: u64,
    /// Unix ms of the tick that published `seq` (or of the rebuild).
    tick_at: i64,
    /// Subscribers without a block involving anyone: they all get the same bytes.
    plain: HashMap<u64, O>,
    /// Subscribers with a non-empty block list: checked per tick, filtered copy when it matters.
    guarded: HashMap<u64, (O, Blocks)>,
    /// The unfiltered snapshot at `seq`, shared by everyone who subscribes before the next change.
    snapshot: Option<SharedMessage>,
}

fn window_cmp(a: &&Arc<ShownEntry>, b: &&Arc<ShownEntry>) -> std::cmp::Ordering {
    a.window_key().cmp(&b.window_key())
}

/// Window order of members, by the record each shows.
fn member_cmp(a: &(&UserId, &Arc<Entry>), b: &(&UserId, &Arc<Entry>)) -> std::cmp::Ordering {
    a.1.window_key(a.0).cmp(&b.1.window_key(b.0))
}

impl<O: Outbox> Topic<O> {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            members: HashMap::new(),
            dirty: HashMap::new(),
            changes: 0,
            view: HashMap::new(),
            count: 0,
            seq: 0,
            tick_at: 0,
            plain: HashMap::new(),
            guarded: HashMap::new(),
            snapshot: None,
        }
    }

    /// The topic's name; every membership and subscription of it shares this string.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.plain.len() + self.guarded.len()
    }

    /// Nothing to keep: nobody in it and nobody listening.
    pub(crate) fn is_idle(&self) -> bool {
        self.members.is_empty() && self.subscribers() == 0 && self.dirty.is_empty()
    }

    fn mark(&mut self, user: &UserId, was_member: bool) {
        self.changes += 1;
        self.dirty.entry(user.clone()).or_insert(was_member);
    }

    /// Records what `replica` says about `user`; true if the shown entry changed. `origin_of`
    /// names instances (`Member::set`).
    pub(crate) fn upsert(
        &mut self,
        user: &UserId,
        replica: ReplicaId,
        entry: &Arc<Entry>,
        origin_of: impl Fn(ReplicaId) -> Arc<str>,
    ) -> bool {
        match self.members.get_mut(user) {
            Some(m) => {
                let Some(before) = m.best().cloned() else { return false };
                if !m.set(replica, entry, origin_of) || m.best().is_none_or(|after| after.shows_same(&before)) {
                    return false;
                }
                self.mark(user, true);
            }
            None => {
                self.members.insert(user.clone(), Member::One(replica, entry.clone()));
                self.mark(user, false);
            }
        }
        true
    }

    /// Forgets what `replica` said about `user`; true if the shown entry changed or left.
    pub(crate) fn remove(&mut self, user: &UserId, replica: ReplicaId) -> bool {
        let Some(m) = self.members.get_mut(user) else { return false };
        let Some(before) = m.best().cloned() else { return false };
        match m.forget(replica) {
            None => return false,
            Some(true) => {
                self.members.remove(user);
            }
            Some(false) if m.best().is_none_or(|after| after.shows_same(&before)) => return false,
            Some(false) => {}
        }
        self.mark(user, true);
        true
    }

    /// Who would be in the window now, in window order, as shown. Entries shown unchanged
    /// since the last publication are the published ones, not new allocations.
    fn window(&self, size: usize) -> Vec<Arc<ShownEntry>> {
        let mut all: Vec<(&UserId, &Arc<Entry>)> =
            self.members.iter().filter_map(|(id, m)| Some((id, m.best()?))).collect();
        if all.len() > size {
            all.select_nth_unstable_by(size - 1, member_cmp);
            all.truncate(size);
        }
        all.sort_unstable_by(member_cmp);
        let shown = |(id, e): (&UserId, &Arc<Entry>)| {
            let shown = e.shown(id);
            match self.view.get(id) {
                Some(published) if **published == shown => published.clone(),
                _ => Arc::new(shown),
            }
        };
        all.into_iter().map(shown).collect()
    }

    /// The published view is only kept up to date while someone listens; the first
    /// subscriber rebuilds it from the members (under a new `seq`).
    fn rebuild(&mut self, window: usize, now_ms: i64) {
        let view = self.window(window).into_iter().map(|e| (e.id.clone(), e)).collect();
        self.view = view;
        self.count = self.members.len();
        self.dirty = HashMap::new();
        self.changes = 0;
        self.seq += 1;
        self.tick_at = now_ms;
        self.snapshot = None;
    }

    /// Adds a subscriber and returns the snapshot it must get first.
    pub(crate) fn subscribe(&mut self, conn: O, blocks: Blocks, limits: Limits, now_ms: i64) -> SharedMessage {
        if self.subscribers() == 0 {
            self.rebuild(limits.window, now_ms);
        }
        let msg = self.snapshot_for(&blocks);
        let id = conn.id();
        if blocks.is_empty() {
            self.plain.insert(id, conn);
        } else {
            self.guarded.insert(id, (conn, blocks));
        }
        msg
    }

    pub(crate) fn unsubscribe(&mut self, conn_id: u64) -> bool {
        self.plain.remove(&conn_id).is_some() || self.guarded.remove(&conn_id).is_some()
    }

    /// The subscriber's block list changed: re-file it and give it a fresh snapshot, since
    /// what it may see changed outside the diff stream.
    pub(crate) fn reblock(&mut self, conn_id: u64, blocks: Blocks) {
        let conn = match (self.plain.remove(&conn_id), self.guarded.remove(&conn_id)) {
            (Some(c), _) | (None, Some((c, _))) => c,
            (None, None) => return,
        };
        let msg = self.snapshot_for(&blocks);
        let _ = conn.send(&msg);
        if blocks.is_empty() {
            self.plain.insert(conn_id, conn);
        } else {
            self.guarded.insert(conn_id, (conn, blocks));
        }
    }

    /// Whether a guarded subscriber's count moved though the topic's did not: a user it blocks
    /// joined or left the topic outside the window while someone else did the opposite.
    fn hidden_count_changed(&self) -> bool {
        self.guarded.values().any(|(_, blocks)| {
            blocks.iter().any(|b| self.dirty.get(b).is_some_and(|&was| was != self.members.contains_key(b)))
        })
    }

    fn was_published(&self, user: &UserId) -> bool {
        self.dirty.get(user).copied().unwrap_or_else(|| self.members.contains_key(user))
    }

    /// The snapshot at the current `seq`: the shared one, or a copy without blocked users.
    fn snapshot_for(&mut self, blocks: &Blocks) -> SharedMessage {
        let hidden: HashSet<&UserId> = blocks.iter().filter(|b| self.was_published(b)).collect();
        if hidden.is_empty() {
            if let Some(m) = &self.snapshot {
                return m.clone();
            }
        }
        let mut entries: Vec<&Arc<ShownEntry>> = self.view.values().filter(|e| !hidden.contains(&e.id)).collect();
        entries.sort_unstable_by(window_cmp);
        let snap = Snapshot {
            topic: self.name.clone(),
            seq: self.seq,
            count: self.count - hidden.len(),
            entries: entries.into_iter().cloned().collect(),
            tick_at: self.tick_at,
        };
        let msg = encode(&PresenceMessage::Snapshot(snap));
        if hidden.is_empty() {
            self.snapshot = Some(msg.clone());
        }
        msg
    }

    /// Publishes this tick's changes to every subscriber: one serialization for all, plus one
    /// per distinct set of blocked users that actually appear in this change.
    pub(crate) fn tick(&mut self, limits: Limits, now_ms: i64, report: &mut TickReport) {
        if self.dirty.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut self.changes);
        if self.subscribers() == 0 {
            // Nobody to tell; the view is rebuilt when someone subscribes.
            self.dirty = HashMap::new();
            return;
        }
        let window = self.window(limits.window);
        let new_view: HashMap<UserId, Arc<ShownEntry>> = window.iter().map(|e| (e.id.clone(), e.clone())).collect();
        let mut joins = Vec::new();
        let mut updates = Vec::new();
        for e in &window {
            match self.view.get(&e.id) {
                None => joins.push(e.clone()),
                Some(old) if old != e => updates.push(e.clone()),
                Some(_) => {}
            }
        }
        let mut leaves: Vec<Arc<str>> = self.view.keys().filter(|id| !new_view.contains_key(*id)).cloned().collect();
        leaves.sort_unstable();
        let count = self.members.len();
        let entries = (joins.len() + updates.len() + leaves.len()) as u64;
        report.coalesced += changes.saturating_sub(entries);
        if entries == 0 && count == self.count && !self.hidden_count_changed() {
            self.dirty = HashMap::new();
            return;
        }
        report.entries += entries;
        self.seq += 1;
        self.tick_at = now_ms;
        let msg = if entries as usize > limits.max_entries {
            // Too many changes for one message: send the window itself (at most `window` entries).
            PresenceMessage::Snapshot(Snapshot {
                topic: self.name.clone(),
                seq: self.seq,
                count,
                entries: window,
                tick_at: now_ms,
            })
        } else {
            PresenceMessage::Diff(Diff {
                topic: self.name.clone(),
                seq: self.seq,
                count,
                joins,
                updates,
                leaves,
                tick_at: now_ms,
            })
        };
        let shared = encode(&msg);
        report.batches += 1;
        for conn in self.plain.values() {
            report.sent(&shared, conn.send(&shared).is_ok());
        }
        let mut copies: HashMap<Vec<UserId>, SharedMessage> = HashMap::new();
        for (conn, blocks) in self.guarded.values() {
            let mut relevant: Vec<UserId> = blocks
                .iter()
                .filter(|b| self.members.contains_key(*b) || self.dirty.contains_key(*b))
                .cloned()
                .collect();
            if relevant.is_empty() {
                report.sent(&shared, conn.send(&shared).is_ok());
                continue;
            }
            relevant.sort_unstable();
            let copy = copies.entry(relevant).or_insert_with_key(|hidden| {
                report.batches += 1;
                encode(&filtered(&msg, hidden, &self.members))
            });
            let ok = conn.send(copy).is_ok();
            report.sent(copy, ok);
            report.filtered += u64::from(ok);
        }
        self.view = new_view;
        self.count = count;
        self.dirty = HashMap::new();
        self.snapshot = None;
    }
}

/// `msg` without the users in `hidden` (sorted), with the count reduced by those in the topic.
fn filtered(msg: &PresenceMessage, hidden: &[UserId], members: &HashMap<UserId, Member>) -> PresenceMessage {
    let keep = |e: &&Arc<ShownEntry>| hidden.binary_search(&e.id).is_err();
    let present = hidden.iter().filter(|h| members.contains_key(*h)).count();
    match msg {
        PresenceMessage::Snapshot(s) => PresenceMessage::Snapshot(Snapshot {
            topic: s.topic.clone(),
            seq: s.seq,
            count: s.count - present,
            entries: s.entries.iter().filter(keep).cloned().collect(),
            tick_at: s.tick_at,
        }),
        PresenceMessage::Diff(d) => PresenceMessage::Diff(Diff {
            topic: d.topic.clone(),
            seq: d.seq,
            count: d.count - present,
            joins: d.joins.iter().filter(keep).cloned().collect(),
            updates: d.updates.iter().filter(keep).cloned().collect(),
            leaves: d.leaves.iter().filter(|id| hidden.binary_search(id).is_err()).cloned().collect(),
            tick_at: d.tick_at,
        }),
        PresenceMessage::Ack { .. } => msg.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Activity;

    fn entry(activity: Activity, updated_at: i64) -> Arc<Entry> {
        Arc::new(Entry {
            profile: Arc::default(),
            chosen: None,
            status: None,
            activity,
            active_at: updated_at,
            updated_at,
        })
    }

    fn name(r: ReplicaId) -> Arc<str> {
        ["me", "b", "c"][r as usize].into()
    }

    #[test]
    fn a_member_keeps_one_record_inline_and_several_in_arrival_order() {
        assert_eq!(std::mem::size_of::<Member>(), 16, "the layout described on `Member`");
        let (old, new, call) = (entry(Activity::Idle, 1), entry(Activity::Idle, 2), entry(Activity::InCall, 0));
        let mut m = Member::One(0, old.clone());
        assert!(!m.set(0, &entry(Activity::Idle, 1), name), "the same record again");
        assert!(m.set(0, &new, name) && matches!(m, Member::One(0, _)));
        assert!(m.set(1, &call, name) && matches!(&m, Member::Many(s) if s.len() == 2 && &*s[1].origin == "b"));
        assert!(Arc::ptr_eq(m.best().unwrap(), &call), "matchmaking activity wins");
        assert_eq!(m.forget(2), None);
        assert_eq!(m.forget(1), Some(false));
        assert!(matches!(&m, Member::One(0, e) if Arc::ptr_eq(e, &new)), "one record left: inline again");
        assert_eq!(m.forget(0), Some(true));

        // Equal records from two runs of one instance: the last to arrive wins.
        let (first, second) = (entry(Activity::Idle, 5), entry(Activity::Idle, 5));
        let mut m = Member::One(1, first.clone());
        m.set(2, &second, |_| "b".into());
        assert!(Arc::ptr_eq(m.best().unwrap(), &second));
        m.set(1, &entry(Activity::Idle, 6), |_| "b".into());
        assert_eq!(m.best().unwrap().updated_at, 6);
    }
}

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

/// What one instance (replica) says about a member.
struct Source {
    replica: ReplicaId,
    origin: Arc<str>,
    entry: Arc<Entry>,
}

/// A user in the topic: one record per instance that has them (never empty).
///
/// The entry subscribers see is not kept here: it is built from the winning record when
/// the user is in the window (`Topic::window`), so a member costs its map bucket and its
/// sources, not also a shown entry of its own (112 bytes) that only the window needs.
struct Member {
    sources: Vec<Source>,
}

impl Member {
    /// The record shown: the one that takes precedence (`Entry::precedence`).
    fn best(&self) -> Option<&Arc<Entry>> {
        self.sources.iter().max_by(|a, b| a.entry.precedence(&a.origin, &b.entry, &b.origin)).map(|s| &s.entry)
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

    /// Records what `replica` says about `user`; true if the shown entry changed.
    pub(crate) fn upsert(&mut self, user: &UserId, replica: ReplicaId, origin: &Arc<str>, entry: &Arc<Entry>) -> bool {
        let source = Source { replica, origin: origin.clone(), entry: entry.clone() };
        match self.members.get_mut(user) {
            Some(m) => {
                let Some(before) = m.best().cloned() else { return false };
                match m.sources.iter_mut().find(|s| s.replica == replica) {
                    Some(s) if s.entry == source.entry => return false,
                    Some(s) => *s = source,
                    None => m.sources.push(source),
                }
                if m.best().is_none_or(|after| after.shows_same(&before)) {
                    return false;
                }
                self.mark(user, true);
            }
            None => {
                self.members.insert(user.clone(), Member { sources: vec![source] });
                self.mark(user, false);
            }
        }
        true
    }

    /// Forgets what `replica` said about `user`; true if the shown entry changed or left.
    pub(crate) fn remove(&mut self, user: &UserId, replica: ReplicaId) -> bool {
        let Some(m) = self.members.get_mut(user) else { return false };
        let Some(before) = m.best().cloned() else { return false };
        let count = m.sources.len();
        m.sources.retain(|s| s.replica != replica);
        if m.sources.len() == count {
            return false;
        }
        match m.best() {
            None => {
                self.members.remove(user);
            }
            Some(after) if after.shows_same(&before) => return false,
            Some(_) => {}
        }
        self.mark(user, true);
        true
    }

    /// Who would be in the window now, in window order, as shown.
    fn window(&self, size: usize) -> Vec<Arc<ShownEntry>> {
        let mut all: Vec<(&UserId, &Arc<Entry>)> =
            self.members.iter().filter_map(|(id, m)| Some((id, m.best()?))).collect();
        if all.len() > size {
            all.select_nth_unstable_by(size - 1, member_cmp);
            all.truncate(size);
        }
        all.sort_unstable_by(member_cmp);
        all.into_iter().map(|(id, e)| Arc::new(e.shown(id))).collect()
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

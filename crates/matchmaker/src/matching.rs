//! The matcher and the proposals it makes. Any instance may pair any two queued users;
//! the shared queue's atomic `claim` makes sure only one does.

use std::collections::HashMap;
use std::sync::Arc;

use rendezvous_gateway::Outbox;
use rendezvous_protocol::{ErrorCode, RequestId};
use tokio::time::Instant;

use crate::clock;
use crate::directory::CallOrigin;
use crate::events::{CancelReason, MatchEvent};
use crate::queue::{Engagement, EngagementKind, QueueEntry};
use crate::stats::{add, inc};
use crate::task::{Done, Proposal, Starting, Task, Timer, new_id};
use crate::wire::Note;

/// Claims a scan tries for one user before leaving them to the next scan (each failed
/// claim means someone else claimed the peer first, or a ban started since the scan read
/// the queue; with a network queue each claim is a round trip).
const CLAIMS_PER_USER: usize = 4;

/// Queue entries with the same region, topic, gender and wanted genders: whether two
/// entries' preferences agree depends only on their kinds, so it is decided once per pair
/// of kinds instead of once per pair of users.
#[derive(PartialEq, Eq, Hash)]
struct KindKey<'a> {
    region: Option<&'a str>,
    topic: Option<&'a str>,
    gender: &'a str,
    wants: Option<&'a [String]>,
}

/// One scan's view of the queue: the entries grouped by kind, oldest first, and for each
/// kind the kinds it may meet. Finding a user's partner walks only those kinds, from a
/// cursor that moves past users already handled, so a scan is close to linear in the
/// entries however incompatible most of them are.
struct Candidates {
    kind_of: Vec<usize>,
    /// Per kind: its entries (indices into the scan, ascending).
    members: Vec<Vec<usize>>,
    /// Per kind: entries of `members` before this position are taken or already handled.
    cursor: Vec<usize>,
    /// Per kind: the kinds whose preferences agree with it (itself included if so).
    meets: Vec<Vec<usize>>,
}

impl Candidates {
    fn new(entries: &[Arc<QueueEntry>]) -> Self {
        let mut kinds: HashMap<KindKey<'_>, usize> = HashMap::new();
        let mut first: Vec<usize> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut kind_of = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let key = KindKey {
                region: e.prefs.region.as_deref(),
                topic: e.prefs.topic.as_deref(),
                gender: &e.profile.gender,
                wants: e.prefs.genders.as_deref(),
            };
            let k = *kinds.entry(key).or_insert_with(|| {
                first.push(i);
                members.push(Vec::new());
                members.len() - 1
            });
            members[k].push(i);
            kind_of.push(k);
        }
        // Only kinds of one region and topic can meet: compare kinds within those groups.
        let mut groups: HashMap<(Option<&str>, Option<&str>), Vec<usize>> = HashMap::new();
        for (k, &i) in first.iter().enumerate() {
            groups.entry((entries[i].prefs.region.as_deref(), entries[i].prefs.topic.as_deref())).or_default().push(k);
        }
        let mut meets = vec![Vec::new(); first.len()];
        for group in groups.values() {
            for &a in group {
                for &b in group {
                    if entries[first[a]].prefs_agree(&entries[first[b]]) {
                        meets[a].push(b);
                    }
                }
            }
        }
        Self { kind_of, cursor: vec![0; members.len()], members, meets }
    }

    /// The longest-waiting entry after `i` that `i` may be matched with: preferences agree,
    /// not taken, neither blocked the other, no cooldown from either one's join, not tried.
    fn partner(
        &mut self,
        i: usize,
        entries: &[Arc<QueueEntry>],
        taken: &[bool],
        tried: &[usize],
        now_ms: i64,
    ) -> Option<usize> {
        let mut best: Option<usize> = None;
        for &k in &self.meets[self.kind_of[i]] {
            let list = &self.members[k];
            let cursor = &mut self.cursor[k];
            // Entries before `i` were handled (matched, or nobody after them fits them, and
            // fitting is symmetric); taken ones are done. Neither is looked at again.
            while *cursor < list.len() && (list[*cursor] <= i || taken[list[*cursor]]) {
                *cursor += 1;
            }
            for &j in &list[*cursor..] {
                if best.is_some_and(|b| j >= b) {
                    break;
                }
                if taken[j] || tried.contains(&j) {
                    continue;
                }
                let (a, b) = (&entries[i], &entries[j]);
                if a.user_id() == b.user_id() || a.blocks_either_way(b) || a.cooling_with(b, now_ms) {
                    continue;
                }
                best = Some(j);
                break;
            }
        }
        best
    }
}

impl<O: Outbox> Task<O> {
    /// One pass over the queue, oldest first: each user is paired with the
    /// longest-waiting compatible user. Returns whether another pass should follow at once:
    /// the pass read a full `scan_limit` and made proposals, so more may be waiting.
    pub(crate) async fn scan(&mut self) -> bool {
        // Both reads at once: one round trip of the loop's time per scan, not two.
        let (entries, len) = tokio::join!(self.deps.queue.waiting(self.cfg.scan_limit), self.deps.queue.len());
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "match queue unavailable");
                return false;
            }
        };
        if let Ok(n) = len {
            self.stats.queue_length.store(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let now = clock::now_ms();
        let mut candidates = Candidates::new(&entries);
        let mut taken = vec![false; entries.len()];
        let mut proposed = 0usize;
        for i in 0..entries.len() {
            if taken[i] {
                continue;
            }
            let mut tried = Vec::new();
            while tried.len() < CLAIMS_PER_USER {
                let Some(j) = candidates.partner(i, &entries, &taken, &tried, now) else { break };
                let id = new_id();
                let engagement =
                    Engagement { id: id.clone(), kind: EngagementKind::Proposal, coordinator: self.me.to_string() };
                let (a, b) = (entries[i].user_id(), entries[j].user_id());
                match self.deps.queue.claim(a, b, engagement, clock::now_ms()).await {
                    Ok(true) => {
                        taken[i] = true;
                        taken[j] = true;
                        proposed += 1;
                        self.propose(id, [entries[i].clone(), entries[j].clone()]).await;
                        break;
                    }
                    // Someone else claimed one of them, or a fresh ban: try the next one.
                    Ok(false) => tried.push(j),
                    Err(e) => {
                        tracing::warn!(error = %e, "match queue unavailable");
                        return false;
                    }
                }
            }
        }
        proposed > 0 && entries.len() >= self.cfg.scan_limit
    }

    async fn propose(&mut self, id: String, entries: [Arc<QueueEntry>; 2]) {
        let now = clock::now_ms();
        let waits = entries.each_ref().map(|e| (now - e.joined_at_ms).max(0) as u64);
        self.stats.matched(now, waits);
        add(&self.stats.pending_proposals, 1);
        let deadline = Instant::now() + self.cfg.proposal_timeout();
        self.timer(deadline, Timer::Proposal(id.clone()));
        for k in 0..2 {
            let ev = MatchEvent::Proposed {
                proposal_id: id.clone(),
                peer: entries[1 - k].profile.clone(),
                deadline_ms: self.cfg.proposal_timeout_ms,
            };
            let user = entries[k].user_id().to_owned();
            self.send_to_user(&user, Note::Plain, ev.to_json()).await;
        }
        self.proposals.insert(id, Proposal { entries, accepted: [false; 2], deadline });
    }

    pub(crate) async fn accept(&mut self, user: &str, conn_id: u64, req: Option<RequestId>, proposal_id: &str) {
        let Some(p) = self.proposals.get_mut(proposal_id) else {
            return self.reply_error(user, conn_id, ErrorCode::NoSuchProposal, "proposal is over", req).await;
        };
        let Some(k) = p.entries.iter().position(|e| e.user_id() == user) else {
            return self.reply_error(user, conn_id, ErrorCode::NoSuchProposal, "not your proposal", req).await;
        };
        p.accepted[k] = true;
        if p.accepted != [true, true] {
            return;
        }
        let Some(p) = self.proposals.remove(proposal_id) else { return };
        inc(&self.stats.accepted);
        add(&self.stats.pending_proposals, -1);
        let parties = p.entries.map(|e| e.profile.clone());
        self.start_call(proposal_id.to_owned(), CallOrigin::Matched, parties);
    }

    /// Writes the call off the loop; `call_started` continues.
    pub(crate) fn start_call(&mut self, id: String, origin: CallOrigin, parties: [crate::PublicProfile; 2]) {
        let (a, b) = (parties[0].user_id.clone(), parties[1].user_id.clone());
        self.starting.insert(id.clone(), Starting { origin, parties, gone: [false; 2] });
        let directory = self.deps.directory.clone();
        let done = self.done_tx.clone();
        self.tracker.spawn(async move {
            let result = directory.start_call(&a, &b, origin).await;
            if let Err(tokio::sync::mpsc::error::SendError(Done::CallStarted { result: Ok(call), .. })) =
                done.send(Done::CallStarted { id, result }).await
            {
                // The task shut down meanwhile: close the row so no call stays open forever.
                let end = crate::directory::CallEnd {
                    call_id: call.call_id,
                    user_a: a,
                    user_b: b,
                    started_at_ms: call.started_at_ms,
                    ended_at_ms: clock::now_ms(),
                    reason: crate::directory::EndReason::Shutdown,
                    ended_by: None,
                };
                let _ = directory.end_call(&end).await;
            }
        });
    }

    /// A decline (or a disconnect) by `user`: they leave, the peer goes back to the front.
    pub(crate) async fn decline(&mut self, user: &str, proposal_id: &str, reason: CancelReason) -> bool {
        let Some(p) = self.proposals.get(proposal_id) else { return false };
        let Some(k) = p.entries.iter().position(|e| e.user_id() == user) else { return false };
        let Some(p) = self.proposals.remove(proposal_id) else { return false };
        inc(&self.stats.declined);
        add(&self.stats.pending_proposals, -1);
        let _ = self.deps.queue.release(user, proposal_id).await;
        self.cancelled(user, proposal_id, CancelReason::Declined, false).await;
        self.requeue(p.entries[1 - k].clone(), proposal_id, reason).await;
        true
    }

    pub(crate) async fn proposal_deadline(&mut self, id: &str) {
        let Some(p) = self.proposals.get(id) else { return };
        if p.deadline > Instant::now() {
            return;
        }
        let Some(p) = self.proposals.remove(id) else { return };
        inc(&self.stats.expired);
        add(&self.stats.pending_proposals, -1);
        for k in 0..2 {
            if p.accepted[k] {
                self.requeue(p.entries[k].clone(), id, CancelReason::PeerTimeout).await;
            } else {
                let user = p.entries[k].user_id().to_owned();
                let _ = self.deps.queue.release(&user, id).await;
                self.cancelled(&user, id, CancelReason::Timeout, false).await;
            }
        }
    }

    async fn requeue(&mut self, entry: Arc<QueueEntry>, proposal_id: &str, reason: CancelReason) {
        let user = entry.user_id().to_owned();
        // Someone connected nowhere is not put back (their instance already took them out).
        let reachable = !matches!(self.deps.locator.instance_of(&user).await, Ok(None));
        let requeued = reachable && self.deps.queue.requeue_front(entry, proposal_id).await.unwrap_or(false);
        if !reachable {
            let _ = self.deps.queue.release(&user, proposal_id).await;
        }
        self.cancelled(&user, proposal_id, reason, requeued).await;
    }

    pub(crate) async fn cancelled(&mut self, user: &str, proposal_id: &str, reason: CancelReason, requeued: bool) {
        let ev = MatchEvent::Cancelled { proposal_id: proposal_id.to_owned(), reason, requeued };
        self.send_to_user(user, Note::ProposalEnded { requeued }, ev.to_json()).await;
    }

    /// Sends a pending proposal again to a user who reconnected.
    pub(crate) async fn resend_proposal(&mut self, user: &str, id: &str) {
        let Some(p) = self.proposals.get(id) else { return };
        let Some(k) = p.entries.iter().position(|e| e.user_id() == user) else { return };
        let left = p.deadline.saturating_duration_since(Instant::now());
        let ev = MatchEvent::Proposed {
            proposal_id: id.to_owned(),
            peer: p.entries[1 - k].profile.clone(),
            deadline_ms: left.as_millis() as u64,
        };
        self.send_to_user(user, Note::Plain, ev.to_json()).await;
    }
}

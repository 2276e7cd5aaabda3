//! The matcher and the proposals it makes. Any instance may pair any two queued users;
//! the shared queue's atomic `claim` makes sure only one does.

use std::sync::Arc;

use rendezvous_gateway::Outbox;
use rendezvous_protocol::{ErrorCode, RequestId};
use tokio::time::Instant;

use crate::clock;
use crate::directory::CallOrigin;
use crate::events::{CancelReason, MatchEvent};
use crate::home::pair_key;
use crate::queue::{Engagement, EngagementKind, QueueEntry};
use crate::stats::{add, inc};
use crate::task::{Done, Proposal, Starting, Task, Timer, new_id};
use crate::wire::Note;

/// What the pair cache knows about two users.
enum Verdict {
    Clear,
    Cooling,
    Unknown,
}

impl<O: Outbox> Task<O> {
    /// One pass over the queue, oldest first: each user is paired with the
    /// longest-waiting compatible user whose cooldown state is known to be clear.
    pub(crate) async fn scan(&mut self) {
        let entries = match self.deps.queue.waiting(self.cfg.scan_limit).await {
            Ok(e) => e,
            Err(e) => return tracing::warn!(error = %e, "match queue unavailable"),
        };
        if let Ok(n) = self.deps.queue.len().await {
            self.stats.queue_length.store(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let mut taken = vec![false; entries.len()];
        for i in 0..entries.len() {
            if taken[i] {
                continue;
            }
            for j in i + 1..entries.len() {
                if taken[j] || !entries[i].compatible(&entries[j]) {
                    continue;
                }
                match self.verdict(entries[i].user_id(), entries[j].user_id()) {
                    Verdict::Clear => {}
                    Verdict::Cooling => continue,
                    Verdict::Unknown => {
                        // Reserve the pair for this scan: one lookup per user per scan, over
                        // disjoint pairs, so the lookup budget is not spent on the oldest
                        // user's every candidate. A clear answer matches them next scan.
                        self.look_up_cooldown(entries[i].user_id(), entries[j].user_id());
                        taken[i] = true;
                        taken[j] = true;
                        break;
                    }
                }
                let id = new_id();
                let engagement =
                    Engagement { id: id.clone(), kind: EngagementKind::Proposal, coordinator: self.me.to_string() };
                let (a, b) = (entries[i].user_id(), entries[j].user_id());
                match self.deps.queue.claim(a, b, engagement, clock::now_ms()).await {
                    Ok(true) => {
                        taken[i] = true;
                        taken[j] = true;
                        self.propose(id, [entries[i].clone(), entries[j].clone()]).await;
                        break;
                    }
                    // Someone else claimed one of them, or a fresh ban: try the next one.
                    Ok(false) => {}
                    Err(e) => return tracing::warn!(error = %e, "match queue unavailable"),
                }
            }
        }
    }

    fn verdict(&mut self, a: &str, b: &str) -> Verdict {
        if self.cfg.cooldown_ms == 0 {
            return Verdict::Clear;
        }
        let key = pair_key(a, b);
        match self.pair_cache.get(&key) {
            Some((cooling, until)) if *until > Instant::now() => {
                if *cooling {
                    Verdict::Cooling
                } else {
                    Verdict::Clear
                }
            }
            _ => Verdict::Unknown,
        }
    }

    /// Asks the directory off the loop; the answer lands in the cache for a later scan.
    fn look_up_cooldown(&mut self, a: &str, b: &str) {
        let key = pair_key(a, b);
        if self.lookups.len() >= self.cfg.max_pending_lookups || self.lookups.contains(&key) {
            return;
        }
        self.lookups.insert(key.clone());
        let directory = self.deps.directory.clone();
        let done = self.done_tx.clone();
        self.tracker.spawn(async move {
            let result = directory.in_cooldown(&key.0, &key.1).await;
            let _ = done.send(Done::Cooldown { key, result }).await;
        });
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

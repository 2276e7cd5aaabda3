//! The coordinator side of calls: starting them, relaying signaling, reconnect grace,
//! ending them (history and cooldown), plus the dispatch of coordinator commands, the
//! sweep that finds vanished users, and the drain at shutdown.

use rendezvous_gateway::Outbox;
use rendezvous_protocol::{ErrorCode, RequestId};
use tokio::time::Instant;

use crate::clock;
use crate::directory::{CallEnd, DirectoryError, EndReason, StartedCall};
use crate::events::{CancelReason, InviteEnd, MatchEvent, Role};
use crate::queue::{Engagement, EngagementKind, PairBan};
use crate::stats::{add, inc};
use crate::task::{Call, Task, Timer};
use crate::wire::{CallRef, Note, PairCmd, Wire};

fn role(k: usize) -> Role {
    if k == 0 { Role::Offerer } else { Role::Answerer }
}

impl<O: Outbox> Task<O> {
    pub(crate) async fn coordinate(&mut self, user: String, conn_id: u64, req: Option<RequestId>, cmd: PairCmd) {
        match cmd {
            PairCmd::Accept { proposal_id } => self.accept(&user, conn_id, req, &proposal_id).await,
            PairCmd::Decline { proposal_id } => {
                if !self.decline(&user, &proposal_id, CancelReason::PeerDeclined).await {
                    self.reply_error(&user, conn_id, ErrorCode::NoSuchProposal, "proposal is over", req).await;
                }
            }
            PairCmd::Leave { proposal_id } => {
                if !self.decline(&user, &proposal_id, CancelReason::PeerDeclined).await
                    && self.deps.queue.leave(&user).await.unwrap_or(false)
                {
                    // The peer declined first and this user was requeued: the leave still holds.
                    self.send_to_user(&user, Note::ProposalEnded { requeued: false }, String::new()).await;
                }
            }
            PairCmd::Signal { call_id, kind, payload, since } => {
                let Some(k) = self.party(&call_id, &user) else {
                    return self.reply_error(&user, conn_id, ErrorCode::NoSuchCall, "call is over", req).await;
                };
                inc(&self.stats.signals_relayed);
                let frame = MatchEvent::Signal { call_id: call_id.clone(), kind, payload }.to_json();
                self.send_to_party(&call_id, 1 - k, frame).await;
                if let Some(at) = since {
                    self.stats.relayed(at.elapsed());
                }
            }
            PairCmd::Hangup { call_id } => {
                if self.party(&call_id, &user).is_none() {
                    return self.reply_error(&user, conn_id, ErrorCode::NoSuchCall, "call is over", req).await;
                }
                self.end_call(&call_id, EndReason::Hangup, Some(user)).await;
            }
            PairCmd::InviteAccept { invite_id } => self.invite_accepted(&user, conn_id, req, &invite_id).await,
            PairCmd::InviteDecline { invite_id } => {
                self.invite_refused(&user, &invite_id, InviteEnd::Declined, Some((conn_id, req))).await;
            }
            PairCmd::InviteRefused { invite_id } | PairCmd::InviteGone { invite_id } => {
                self.invite_refused(&user, &invite_id, InviteEnd::Unavailable, None).await;
            }
            PairCmd::Gone { instance } => self.gone(&user, &instance).await,
            PairCmd::Back { instance: _ } => self.back(&user).await,
        }
    }

    pub(crate) fn party(&self, call_id: &str, user: &str) -> Option<usize> {
        self.calls.get(call_id)?.parties.iter().position(|p| p.user_id == user)
    }

    fn call_ref(&self, call_id: &str) -> CallRef {
        CallRef { id: call_id.to_owned(), coordinator: self.me.to_string() }
    }

    /// Sends a frame to party `k` of a call, at the instance remembered for them (looked
    /// up once, then kept until [`Task::forget_where`]).
    async fn send_to_party(&mut self, call_id: &str, k: usize, frame: String) {
        let Some(call) = self.calls.get(call_id) else { return };
        let user = call.parties[k].user_id.clone();
        let instance = match call.at[k].clone() {
            Some(instance) => instance,
            None => match self.deps.locator.instance_of(&user).await {
                Ok(Some(instance)) => {
                    if let Some(call) = self.calls.get_mut(call_id) {
                        call.at[k] = Some(instance.clone());
                    }
                    instance
                }
                Ok(None) => return,
                Err(e) => {
                    inc(&self.stats.bus_errors);
                    return tracing::warn!(error = %e, "locator unavailable");
                }
            },
        };
        self.post(&instance, Wire::ToUser { user, note: Note::Plain, frame }).await;
    }

    /// Forgets where `user` was seen, in every call here (they left, came back, or may
    /// have moved): the next frame for them asks the locator again.
    pub(crate) fn forget_where(&mut self, user: &str) {
        for call in self.calls.values_mut() {
            if let Some(k) = call.parties.iter().position(|p| p.user_id == user) {
                call.at[k] = None;
            }
        }
    }

    /// Forgets every remembered instance (a cluster change or lost messages).
    pub(crate) fn forget_all_where(&mut self) {
        for call in self.calls.values_mut() {
            call.at = [None, None];
        }
    }

    pub(crate) async fn call_started(&mut self, id: String, result: Result<StartedCall, DirectoryError>) {
        let Some(s) = self.starting.remove(&id) else { return };
        let users = s.parties.each_ref().map(|p| p.user_id.clone());
        let started = match result {
            Ok(c) => c,
            Err(e) => {
                self.directory_error(&e);
                for u in &users {
                    let _ = self.deps.queue.release(u, &id).await;
                }
                for u in &users {
                    match s.origin {
                        crate::directory::CallOrigin::Matched => {
                            self.cancelled(u, &id, CancelReason::Unavailable, false).await;
                        }
                        crate::directory::CallOrigin::Invited => {
                            let ev =
                                MatchEvent::InviteDeclined { invite_id: id.clone(), reason: InviteEnd::Unavailable };
                            self.send_to_user(u, Note::ProposalEnded { requeued: false }, ev.to_json()).await;
                        }
                    }
                }
                return;
            }
        };
        let call_id = started.call_id.clone();
        let engagement =
            Engagement { id: call_id.clone(), kind: EngagementKind::Call, coordinator: self.me.to_string() };
        for u in &users {
            let _ = self.deps.queue.rebind(u, &id, engagement.clone()).await;
        }
        let record = self.call_record(&call_id, &s.parties, started.started_at_ms);
        if let Err(e) = self.deps.queue.record_call(&record).await {
            tracing::warn!(error = %e, "call not recorded in the shared table");
        }
        inc(&self.stats.calls_started);
        add(&self.stats.active_calls, 1);
        self.calls.insert(
            call_id.clone(),
            Call {
                parties: s.parties.clone(),
                started_at_ms: started.started_at_ms,
                reconnecting: [None; 2],
                at: [None, None],
            },
        );
        for k in 0..2 {
            let ev = MatchEvent::Confirmed { call_id: call_id.clone(), peer: s.parties[1 - k].clone(), role: role(k) };
            let note = Note::CallStarted { peer: users[1 - k].clone(), call: Some(self.call_ref(&call_id)) };
            self.send_to_user(&users[k], note, ev.to_json()).await;
        }
        // A party that left while the call was being written gets the usual grace.
        for k in 0..2 {
            if s.gone[k] {
                self.start_grace(&call_id, k).await;
            }
        }
    }

    async fn start_grace(&mut self, call_id: &str, k: usize) {
        self.seq += 1;
        let generation = self.seq;
        let Some(call) = self.calls.get_mut(call_id) else { return };
        if call.reconnecting[k].is_some() {
            return;
        }
        call.reconnecting[k] = Some(generation);
        let user = call.parties[k].user_id.clone();
        let peer = call.parties[1 - k].user_id.clone();
        let at = Instant::now() + self.cfg.reconnect_grace();
        self.timer(at, Timer::Grace { call_id: call_id.to_owned(), user, generation });
        let ev = MatchEvent::PeerReconnecting { call_id: call_id.to_owned(), grace_ms: self.cfg.reconnect_grace_ms };
        self.send_to_user(&peer, Note::Plain, ev.to_json()).await;
    }

    pub(crate) async fn grace_over(&mut self, call_id: &str, user: &str, generation: u64) {
        let Some(k) = self.party(call_id, user) else { return };
        if self.calls[call_id].reconnecting[k] == Some(generation) {
            self.end_call(call_id, EndReason::Disconnect, Some(user.to_owned())).await;
        }
    }

    /// `instance` lost its last connection of `user`; ignored if the user is connected
    /// elsewhere by now (a newer connection moved the binding).
    async fn gone(&mut self, user: &str, instance: &str) {
        self.forget_where(user);
        if let Ok(Some(now_at)) = self.deps.locator.instance_of(user).await {
            if &*now_at != instance {
                return;
            }
        }
        self.vanished(user).await;
    }

    /// The user is reachable nowhere: proposals are declined, calls enter their grace,
    /// invites end.
    async fn vanished(&mut self, user: &str) {
        self.forget_where(user);
        let proposals: Vec<String> = self
            .proposals
            .iter()
            .filter(|(_, p)| p.entries.iter().any(|e| e.user_id() == user))
            .map(|(id, _)| id.clone())
            .collect();
        for id in proposals {
            self.decline(user, &id, CancelReason::PeerDisconnected).await;
        }
        for s in self.starting.values_mut() {
            if let Some(k) = s.parties.iter().position(|p| p.user_id == user) {
                s.gone[k] = true;
            }
        }
        let calls: Vec<(String, usize)> = self
            .calls
            .iter()
            .filter_map(|(id, c)| c.parties.iter().position(|p| p.user_id == user).map(|k| (id.clone(), k)))
            .collect();
        for (id, k) in calls {
            self.start_grace(&id, k).await;
        }
        let invites: Vec<String> = self
            .invites
            .iter()
            .filter(|(_, i)| i.to.user_id == user || i.from.user_id == user)
            .map(|(id, _)| id.clone())
            .collect();
        for id in invites {
            if self.invites.get(&id).is_some_and(|i| i.from.user_id == user) {
                self.cancel_invite(&id, None).await;
            } else {
                self.invite_refused(user, &id, InviteEnd::Unavailable, None).await;
            }
        }
        // A proposal that ended just before this news may have put the user back in the
        // queue after their instance took them out: nobody would ever take them out again.
        if let Ok(crate::queue::UserStatus::Queued) = self.deps.queue.status(user).await {
            if matches!(self.deps.locator.instance_of(user).await, Ok(None)) {
                let _ = self.deps.queue.leave(user).await;
            }
        }
    }

    async fn back(&mut self, user: &str) {
        self.forget_where(user);
        for s in self.starting.values_mut() {
            if let Some(k) = s.parties.iter().position(|p| p.user_id == user) {
                s.gone[k] = false;
            }
        }
        let pending: Vec<String> = self
            .proposals
            .iter()
            .filter(|(_, p)| p.entries.iter().any(|e| e.user_id() == user))
            .map(|(id, _)| id.clone())
            .collect();
        for id in pending {
            self.resend_proposal(user, &id).await;
        }
        let calls: Vec<(String, usize)> = self
            .calls
            .iter()
            .filter_map(|(id, c)| c.parties.iter().position(|p| p.user_id == user).map(|k| (id.clone(), k)))
            .collect();
        for (id, k) in calls {
            let Some(call) = self.calls.get_mut(&id) else { continue };
            let was_away = call.reconnecting[k].take().is_some();
            let peer = call.parties[1 - k].clone();
            let ev = MatchEvent::Resumed { call_id: id.clone(), peer: peer.clone(), role: role(k) };
            let note = Note::CallStarted { peer: peer.user_id.clone(), call: Some(self.call_ref(&id)) };
            self.send_to_user(user, note, ev.to_json()).await;
            if was_away {
                let ev = MatchEvent::PeerReconnected { call_id: id.clone() };
                self.send_to_user(&peer.user_id, Note::Plain, ev.to_json()).await;
            }
        }
    }

    /// Writes a call's history row, then its cooldown until `until`, off the loop.
    pub(crate) fn store_call_end(&self, end: CallEnd, until: i64) {
        let directory = self.deps.directory.clone();
        let stats = self.stats.clone();
        let cooldown = self.cfg.cooldown_ms > 0;
        self.tracker.spawn(async move {
            let mut result = directory.end_call(&end).await;
            if result.is_ok() && cooldown {
                result = directory.put_cooldown(&end.user_a, &end.user_b, until).await;
            }
            if let Err(e) = result {
                inc(&stats.directory_errors);
                tracing::warn!(error = %e, call_id = %end.call_id, "call end not stored");
            }
        });
    }

    /// Ends a call: the cooldown is in force before either user is free again, the
    /// history row and cooldown are written off the loop, both sides are told.
    pub(crate) async fn end_call(&mut self, call_id: &str, reason: EndReason, ended_by: Option<String>) {
        let Some(call) = self.calls.remove(call_id) else { return };
        let [a, b] = call.parties.each_ref().map(|p| p.user_id.clone());
        let now = clock::now_ms();
        let until = now + self.cfg.cooldown_ms as i64;
        if self.cfg.cooldown_ms > 0 {
            if let Err(e) = self.deps.queue.ban_pair(&a, &b, PairBan { until_ms: until, blocked: false }).await {
                tracing::warn!(error = %e, "cooldown not shared");
            }
        }
        for u in [&a, &b] {
            let _ = self.deps.queue.release(u, call_id).await;
        }
        let _ = self.deps.queue.forget_call(call_id).await;
        inc(&self.stats.calls_ended);
        add(&self.stats.active_calls, -1);
        let end = CallEnd {
            call_id: call_id.to_owned(),
            user_a: a.clone(),
            user_b: b.clone(),
            started_at_ms: call.started_at_ms,
            ended_at_ms: now,
            reason,
            ended_by: ended_by.clone(),
        };
        self.store_call_end(end, until);
        let ev = MatchEvent::Ended { call_id: call_id.to_owned(), reason, ended_by };
        let frame = ev.to_json();
        for u in [&a, &b] {
            self.send_to_user(u, Note::CallEnded, frame.clone()).await;
        }
    }

    /// Users in what this instance coordinates whom no instance knows are treated as
    /// disconnected, so a lost `Gone` (a bus gap, a crashed home) cannot strand anyone.
    pub(crate) async fn sweep(&mut self) {
        if self.quiet() {
            return;
        }
        let mut users: Vec<String> = Vec::new();
        for c in self.calls.values() {
            for (k, p) in c.parties.iter().enumerate() {
                if c.reconnecting[k].is_none() {
                    users.push(p.user_id.clone());
                }
            }
        }
        for p in self.proposals.values() {
            users.extend(p.entries.iter().map(|e| e.user_id().to_owned()));
        }
        for i in self.invites.values() {
            users.push(i.to.user_id.clone());
        }
        users.sort_unstable();
        users.dedup();
        // One round trip for everyone, not one per user: the loop waits for it.
        let found = match self.deps.locator.instances_of(&users).await {
            Ok(found) => found,
            Err(e) => return tracing::warn!(error = %e, "locator unavailable; sweep skipped"),
        };
        for (u, at) in users.iter().zip(found) {
            if at.is_none() {
                self.vanished(u).await;
            }
        }
    }

    /// Shutdown: end everything coordinated here and hand local users' calls to their grace.
    pub(crate) async fn drain(&mut self) {
        let local: Vec<String> = self.users.keys().cloned().collect();
        for u in &local {
            if let Ok(true) = self.deps.queue.leave(u).await {
                self.deps.activity.set_activity(u, crate::directory::Activity::Idle);
                let ev = MatchEvent::Left { id: None, reason: Some("shutdown".into()) };
                self.deliver(u, Note::Plain, ev.to_json()).await;
            }
        }
        let proposals: Vec<String> = self.proposals.keys().cloned().collect();
        for id in proposals {
            let Some(p) = self.proposals.remove(&id) else { continue };
            add(&self.stats.pending_proposals, -1);
            for e in &p.entries {
                let _ = self.deps.queue.release(e.user_id(), &id).await;
                self.cancelled(e.user_id(), &id, CancelReason::Shutdown, false).await;
            }
        }
        let starting: Vec<String> = self.starting.keys().cloned().collect();
        for id in starting {
            // Kept in `starting`: a start result still in flight closes its row with them.
            let Some(parties) = self.starting.get(&id).map(|s| s.parties.clone()) else { continue };
            for p in &parties {
                let _ = self.deps.queue.release(&p.user_id, &id).await;
                self.cancelled(&p.user_id, &id, CancelReason::Shutdown, false).await;
            }
        }
        let invites: Vec<String> = self.invites.keys().cloned().collect();
        for id in invites {
            self.cancel_invite(&id, None).await;
        }
        let calls: Vec<String> = self.calls.keys().cloned().collect();
        for id in calls {
            self.end_call(&id, EndReason::Shutdown, None).await;
        }
        self.flush_local().await;
        // Local users engaged elsewhere: their connections are closing with the gateway,
        // so their coordinators start the reconnect grace now.
        for u in local {
            if let Some(user) = self.users.remove(&u) {
                self.user_gone(&u, user).await;
            }
        }
    }
}

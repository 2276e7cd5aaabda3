//! Keeping the shared state true when parts of the cluster fail: ending what a dead
//! instance coordinated (this instance claimed it), and re-asserting this instance's own
//! truth after Redis lost its keys (a restart) or the bus lost messages.

use std::sync::Arc;

use rendezvous_gateway::Outbox;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::cluster::{ClusterEvent, DeadInstance};
use crate::directory::{CallEnd, CallOrigin, EndReason};
use crate::events::{CancelReason, InviteEnd, MatchEvent};
use crate::queue::{CallRecord, Engagement, EngagementKind, JoinOutcome, PairBan};
use crate::stats::inc;
use crate::task::{Task, send_frame};
use crate::wire::Note;

/// Heartbeats every instance gets to re-assert its state after a loss before this one
/// scans or sweeps again.
const QUIET_HEARTBEATS: u32 = 3;

impl<O: Outbox> Task<O> {
    /// Whether scans and sweeps wait for the other instances to re-assert their state.
    pub(crate) fn quiet(&mut self) -> bool {
        match self.quiet_until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                self.quiet_until = None;
                false
            }
            None => false,
        }
    }

    pub(crate) async fn on_cluster_event(&mut self, ev: Result<ClusterEvent, RecvError>) {
        match ev {
            Ok(ClusterEvent::Died { instance, cleanup }) => self.instance_died(&instance, cleanup).await,
            Ok(ClusterEvent::StateLost) | Err(RecvError::Lagged(_)) => self.resync().await,
            Err(RecvError::Closed) => {}
        }
    }

    /// Another instance is gone. Invites it coordinated for users here end; users of it in
    /// what this instance coordinates are treated as disconnected (the sweep); and if this
    /// instance claimed it, what it coordinated ends here.
    async fn instance_died(&mut self, instance: &str, cleanup: Option<Arc<DeadInstance>>) {
        self.forget_all_where();
        let mut closed = Vec::new();
        for (user, local) in &mut self.users {
            if local.call.as_ref().is_some_and(|c| c.coordinator == instance) {
                local.call = None;
            }
            local.incoming.retain(|invite_id, coordinator| {
                let keep = coordinator != instance;
                if !keep {
                    closed.push((user.clone(), invite_id.clone()));
                }
                keep
            });
        }
        for (user, invite_id) in closed {
            let frame = MatchEvent::InviteCancelled { id: None, invite_id }.to_json();
            if let Some(local) = self.users.get(&user) {
                for c in &local.conns {
                    send_frame(c, &frame);
                }
            }
        }
        self.sweep().await;
        let Some(dead) = cleanup else { return };
        for (user, e) in &dead.engagements {
            self.end_orphan(user, e).await;
        }
        for call in &dead.calls {
            self.close_orphan_call(call).await;
        }
    }

    /// Tells a user that what the dead coordinator held for them is over.
    async fn end_orphan(&mut self, user: &str, e: &Engagement) {
        match e.kind {
            EngagementKind::Proposal => self.cancelled(user, &e.id, CancelReason::InstanceLost, false).await,
            EngagementKind::Starting => {
                let ev = MatchEvent::InviteDeclined { invite_id: e.id.clone(), reason: InviteEnd::Unavailable };
                self.send_to_user(user, Note::ProposalEnded { requeued: false }, ev.to_json()).await;
            }
            EngagementKind::Call => {
                let ev = MatchEvent::Ended { call_id: e.id.clone(), reason: EndReason::InstanceLost, ended_by: None };
                self.send_to_user(user, Note::CallEnded, ev.to_json()).await;
            }
        }
    }

    /// Writes the history row (and cooldown) of a call whose coordinator died.
    async fn close_orphan_call(&mut self, call: &CallRecord) {
        let now = crate::clock::now_ms();
        let until = now + self.cfg.cooldown_ms as i64;
        if self.cfg.cooldown_ms > 0 {
            let ban = PairBan { until_ms: until, blocked: false };
            if let Err(e) = self.deps.queue.ban_pair(&call.user_a, &call.user_b, ban).await {
                tracing::warn!(error = %e, "cooldown not shared");
            }
        }
        inc(&self.stats.calls_ended);
        let end = CallEnd {
            call_id: call.call_id.clone(),
            user_a: call.user_a.clone(),
            user_b: call.user_b.clone(),
            started_at_ms: call.started_at_ms,
            ended_at_ms: now,
            reason: EndReason::InstanceLost,
            ended_by: None,
        };
        self.store_call_end(end, until);
    }

    /// Re-asserts this instance's truth in the shared table: where its users are, who of
    /// them was told "queued" (same join time, so the same place in line), and the
    /// engagements and calls it coordinates. Every step is idempotent, so a gap without
    /// any loss costs only the round trips. With a registry, scans and sweeps then pause
    /// for a few heartbeats, so the other instances re-assert theirs first.
    pub(crate) async fn resync(&mut self) {
        // A lost `Back` or `Gone` may have moved a party: look everyone up again.
        self.forget_all_where();
        if let Some(registry) = &self.deps.registry {
            self.quiet_until = Some(Instant::now() + registry.heartbeat_interval() * QUIET_HEARTBEATS);
        }
        let mut failed = false;
        let me = self.me.clone();
        let local: Vec<(String, Option<crate::queue::QueueEntry>)> =
            self.users.iter().map(|(u, l)| (u.clone(), l.queued.clone())).collect();
        for (user, queued) in local {
            failed |= self.deps.locator.bind(&user, &me).await.is_err();
            if let Some(entry) = queued {
                match self.deps.queue.enqueue(entry).await {
                    Ok(JoinOutcome::Queued) => tracing::info!(%user, "re-queued a user the shared table had lost"),
                    Ok(_) => {}
                    Err(_) => failed = true,
                }
            }
        }
        let mut engaged: Vec<(String, Engagement)> = Vec::new();
        let engagement =
            |id: &str, kind: EngagementKind| Engagement { id: id.to_owned(), kind, coordinator: me.to_string() };
        for (id, p) in &self.proposals {
            for e in &p.entries {
                engaged.push((e.user_id().to_owned(), engagement(id, EngagementKind::Proposal)));
            }
        }
        for (id, s) in &self.starting {
            let kind = match s.origin {
                CallOrigin::Matched => EngagementKind::Proposal,
                CallOrigin::Invited => EngagementKind::Starting,
            };
            for p in &s.parties {
                engaged.push((p.user_id.clone(), engagement(id, kind)));
            }
        }
        let mut records = Vec::new();
        for (id, c) in &self.calls {
            for p in &c.parties {
                engaged.push((p.user_id.clone(), engagement(id, EngagementKind::Call)));
            }
            records.push(self.call_record(id, &c.parties, c.started_at_ms));
        }
        for (user, e) in engaged {
            failed |= self.deps.queue.restore_engagement(&user, e).await.is_err();
        }
        for r in &records {
            failed |= self.deps.queue.record_call(r).await.is_err();
        }
        if failed {
            tracing::warn!("shared matchmaking state not fully re-asserted; retrying at the next sweep");
        }
        self.resync_pending = failed;
    }

    pub(crate) fn call_record(
        &self,
        call_id: &str,
        parties: &[crate::PublicProfile; 2],
        started_at_ms: i64,
    ) -> CallRecord {
        CallRecord {
            call_id: call_id.to_owned(),
            user_a: parties[0].user_id.clone(),
            user_b: parties[1].user_id.clone(),
            started_at_ms,
            coordinator: self.me.to_string(),
        }
    }
}

//! The home side: this instance's connections, their requests, and frames arriving
//! for them. Requests about a proposal or call are checked against the shared table
//! and forwarded to the instance coordinating it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rendezvous_gateway::Outbox;
use rendezvous_protocol::{ErrorCode, MatchPrefs, RequestId};

use crate::directory::Activity;
use crate::events::MatchEvent;
use crate::handle::Op;
use crate::queue::{EngagementKind, UserStatus};
use crate::task::{Done, LocalUser, PendingJoin, Task, send_error, send_frame};
use crate::wire::{Note, PairCmd};

const MAX_REPORT_TEXT: usize = 500;

/// Checks `match.join` preferences; the error names the field.
fn check_prefs(p: &MatchPrefs) -> Result<(), String> {
    let token = |s: &str| {
        (1..=32).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if let Some(g) = &p.genders {
        if g.is_empty() || g.len() > 8 || !g.iter().all(|g| token(g)) {
            return Err("field `prefs.genders`: 1 to 8 genders of 1-32 of [a-z0-9_-]".into());
        }
    }
    if p.region.as_deref().is_some_and(|r| !token(r)) {
        return Err("field `prefs.region`: 1-32 of [a-z0-9_-]".into());
    }
    if p.topic.as_deref().is_some_and(|t| !token(t)) {
        return Err("field `prefs.topic`: 1-32 of [a-z0-9_-]".into());
    }
    Ok(())
}

impl<O: Outbox> Task<O> {
    pub(crate) async fn connect(&mut self, conn: O) {
        let user = conn.user_id().to_owned();
        let first = !self.users.contains_key(&user);
        let local = self.users.entry(user.clone()).or_insert_with(|| LocalUser {
            conns: Vec::new(),
            queued: None,
            incoming: HashMap::new(),
            outgoing: Vec::new(),
            invite_times: VecDeque::new(),
            recent_peers: VecDeque::new(),
            call: None,
        });
        if local.conns.iter().any(|c| c.id() == conn.id()) {
            return;
        }
        local.conns.push(conn);
        if !first {
            return;
        }
        if let Err(e) = self.deps.locator.bind(&user, &self.me).await {
            tracing::warn!(error = %e, "locator unavailable");
        }
        // A user engaged elsewhere (a call in its grace, a proposal) is told about it again.
        if let Ok(UserStatus::Engaged(e)) = self.deps.queue.status(&user).await {
            let me = self.me.to_string();
            self.send_to_coord(&e.coordinator, &user, 0, None, PairCmd::Back { instance: me }).await;
        }
    }

    pub(crate) async fn disconnect(&mut self, conn_id: u64, user: &str) {
        let Some(local) = self.users.get_mut(user) else { return };
        local.conns.retain(|c| c.id() != conn_id);
        if !local.conns.is_empty() {
            return;
        }
        let Some(local) = self.users.remove(user) else { return };
        self.user_gone(user, local).await;
    }

    /// The user's last connection here is gone: leave the queue, tell coordinators.
    pub(crate) async fn user_gone(&mut self, user: &str, local: LocalUser<O>) {
        if let Err(e) = self.deps.locator.unbind(user, &self.me).await {
            tracing::warn!(error = %e, "locator unavailable");
        }
        for invite_id in local.outgoing {
            self.cancel_invite(&invite_id, None).await;
        }
        for (invite_id, coordinator) in local.incoming {
            self.send_to_coord(&coordinator, user, 0, None, PairCmd::InviteGone { invite_id }).await;
        }
        match self.deps.queue.status(user).await {
            Ok(UserStatus::Queued) => {
                let _ = self.deps.queue.leave(user).await;
                self.deps.activity.set_activity(user, Activity::Idle);
            }
            Ok(UserStatus::Engaged(e)) => {
                let me = self.me.to_string();
                self.send_to_coord(&e.coordinator, user, 0, None, PairCmd::Gone { instance: me }).await;
            }
            Ok(UserStatus::Idle) => {}
            Err(e) => tracing::warn!(error = %e, "match queue unavailable"),
        }
    }

    pub(crate) async fn client(&mut self, conn: O, req: Option<RequestId>, op: Op) {
        let user = conn.user_id().to_owned();
        if !self.users.get(&user).is_some_and(|u| u.conns.iter().any(|c| c.id() == conn.id())) {
            // Requests only come from open connections; register one the server forgot.
            self.connect(conn.clone()).await;
        }
        let op = match op {
            // A call coordinated here: its party list is authoritative, so the signal skips
            // the shared table (with a network queue, a round trip per signal).
            Op::Signal { call_id, kind, payload, at } if self.party(&call_id, &user).is_some() => {
                if signal_fits(&conn, &payload, self.cfg.max_signal_bytes, &req) {
                    let cmd = PairCmd::Signal { call_id, kind, payload, since: Some(at) };
                    self.coordinate(user, conn.id(), req, cmd).await;
                }
                return;
            }
            op => op,
        };
        // A call coordinated elsewhere that this home saw start: straight to its coordinator.
        if let Op::Signal { call_id, .. } | Op::Hangup(call_id) = &op {
            if let Some(coord) = self.known_coordinator(&user, call_id) {
                let conn_id = conn.id();
                let cmd = match op {
                    Op::Signal { call_id, kind, payload, at } => {
                        if !signal_fits(&conn, &payload, self.cfg.max_signal_bytes, &req) {
                            return;
                        }
                        let since = (coord == *self.me).then_some(at);
                        PairCmd::Signal { call_id, kind, payload, since }
                    }
                    Op::Hangup(call_id) => PairCmd::Hangup { call_id },
                    _ => return,
                };
                return self.send_to_coord(&coord, &user, conn_id, req, cmd).await;
            }
        }
        let status = match op {
            Op::Block(_) | Op::Report { .. } | Op::Invite(_) | Op::InviteAccept(_) | Op::InviteDecline(_) => None,
            Op::InviteCancel(_) => None,
            _ => match self.deps.queue.status(&user).await {
                Ok(s) => Some(s),
                Err(_) => return send_error(&conn, ErrorCode::Unavailable, "matchmaking is unavailable", req),
            },
        };
        let engaged = |kind: EngagementKind, id: &str| match &status {
            Some(UserStatus::Engaged(e)) if e.kind == kind && e.id == id => Some(e.coordinator.clone()),
            _ => None,
        };
        let conn_id = conn.id();
        match op {
            Op::Join(prefs) => self.join(conn, req, prefs, status).await,
            Op::Leave => self.leave(conn, req, status).await,
            Op::Accept(id) | Op::Decline(id) if engaged(EngagementKind::Proposal, &id).is_none() => {
                send_error(&conn, ErrorCode::NoSuchProposal, "no such proposal pending for you", req);
            }
            Op::Accept(proposal_id) => {
                let coord = engaged(EngagementKind::Proposal, &proposal_id).unwrap_or_default();
                self.send_to_coord(&coord, &user, conn_id, req, PairCmd::Accept { proposal_id }).await;
            }
            Op::Decline(proposal_id) => {
                let coord = engaged(EngagementKind::Proposal, &proposal_id).unwrap_or_default();
                self.send_to_coord(&coord, &user, conn_id, req, PairCmd::Decline { proposal_id }).await;
            }
            Op::Signal { call_id, .. } | Op::Hangup(call_id) if engaged(EngagementKind::Call, &call_id).is_none() => {
                send_error(&conn, ErrorCode::NoSuchCall, "you are not in that call", req);
            }
            Op::Signal { call_id, kind, payload, at } => {
                if !signal_fits(&conn, &payload, self.cfg.max_signal_bytes, &req) {
                    return;
                }
                let coord = engaged(EngagementKind::Call, &call_id).unwrap_or_default();
                // `since` stays here: a coordinator elsewhere does not share this clock.
                let since = (coord == *self.me).then_some(at);
                let cmd = PairCmd::Signal { call_id, kind, payload, since };
                self.send_to_coord(&coord, &user, conn_id, req, cmd).await;
            }
            Op::Hangup(call_id) => {
                let coord = engaged(EngagementKind::Call, &call_id).unwrap_or_default();
                self.send_to_coord(&coord, &user, conn_id, req, PairCmd::Hangup { call_id }).await;
            }
            Op::Invite(target) => self.send_invite(conn, req, target).await,
            Op::InviteAccept(invite_id) | Op::InviteDecline(invite_id)
                if !self.users.get(&user).is_some_and(|u| u.incoming.contains_key(&invite_id)) =>
            {
                send_error(&conn, ErrorCode::NoSuchInvite, "no such invite pending for you", req);
            }
            Op::InviteAccept(invite_id) => {
                let coord = self.users.get_mut(&user).and_then(|u| u.incoming.remove(&invite_id)).unwrap_or_default();
                self.send_to_coord(&coord, &user, conn_id, req, PairCmd::InviteAccept { invite_id }).await;
            }
            Op::InviteDecline(invite_id) => {
                let coord = self.users.get_mut(&user).and_then(|u| u.incoming.remove(&invite_id)).unwrap_or_default();
                self.send_to_coord(&coord, &user, conn_id, req, PairCmd::InviteDecline { invite_id }).await;
            }
            Op::InviteCancel(invite_id) => {
                let mine = self.invites.get(&invite_id).is_some_and(|i| i.from.user_id == user);
                if mine {
                    self.cancel_invite(&invite_id, Some((&conn, req))).await;
                } else {
                    send_error(&conn, ErrorCode::NoSuchInvite, "no such invite sent by you", req);
                }
            }
            Op::Block(peer) => self.block(conn, req, peer).await,
            Op::Report { user_id, reason, text } => self.report(conn, req, user_id, reason, text),
        }
    }

    async fn join(&mut self, conn: O, req: Option<RequestId>, prefs: MatchPrefs, status: Option<UserStatus>) {
        if let Err(msg) = check_prefs(&prefs) {
            return send_error(&conn, ErrorCode::BadField, msg, req);
        }
        match status {
            Some(UserStatus::Queued) => return send_error(&conn, ErrorCode::AlreadyQueued, "already queued", req),
            Some(UserStatus::Engaged(e)) => return engaged_error(&conn, e.kind, req),
            _ => {}
        }
        if self.loads < self.cfg.max_pending_lookups {
            return self.look_up_join(PendingJoin { conn, req, prefs });
        }
        if self.join_line.len() >= self.cfg.command_queue {
            return send_error(&conn, ErrorCode::Busy, "matchmaking is busy; retry shortly", req);
        }
        self.join_line.push_back(PendingJoin { conn, req, prefs });
    }

    /// Loads what a queue entry needs (profile, blocks, and cooldown partners when
    /// cooldowns are on) off the loop; `joined` continues.
    fn look_up_join(&mut self, join: PendingJoin<O>) {
        self.loads += 1;
        let directory = self.deps.directory.clone();
        let done = self.done_tx.clone();
        let cooldowns = self.cfg.cooldown_ms > 0;
        self.tracker.spawn(async move {
            let PendingJoin { conn, req, prefs } = join;
            let user = conn.user_id().to_owned();
            let cooling = async { if cooldowns { directory.cooldowns(&user).await } else { Ok(Arc::default()) } };
            let result = tokio::try_join!(directory.profile(&user), directory.blocks(&user), cooling);
            let _ = done.send(Done::Joined { conn, req, prefs, result }).await;
        });
    }

    /// A lookup slot freed up: the longest-waiting join whose connection is still open takes it.
    pub(crate) fn next_join(&mut self) {
        while self.loads < self.cfg.max_pending_lookups {
            let Some(join) = self.join_line.pop_front() else { return };
            let open =
                self.users.get(join.conn.user_id()).is_some_and(|u| u.conns.iter().any(|c| c.id() == join.conn.id()));
            if open {
                self.look_up_join(join);
            }
        }
    }

    pub(crate) async fn joined(
        &mut self,
        conn: O,
        req: Option<RequestId>,
        prefs: MatchPrefs,
        result: Result<crate::task::JoinLookup, crate::directory::DirectoryError>,
    ) {
        let user = conn.user_id().to_owned();
        if !self.users.get(&user).is_some_and(|u| u.conns.iter().any(|c| c.id() == conn.id())) {
            return; // the connection closed while its profile loaded
        }
        let (profile, blocked, cooldowns) = match result {
            Ok((Some(p), b, c)) => (p, b, c),
            Ok((None, _, _)) => return send_error(&conn, ErrorCode::Unavailable, "no profile for this user", req),
            Err(e) => {
                self.directory_error(&e);
                return send_error(&conn, ErrorCode::Unavailable, "matchmaking is unavailable", req);
            }
        };
        if profile.banned {
            return send_error(&conn, ErrorCode::Banned, "banned users cannot be matched", req);
        }
        let entry = crate::queue::QueueEntry {
            profile: profile.public,
            prefs,
            blocked: blocked.to_vec(),
            cooldowns: cooldowns.to_vec(),
            joined_at_ms: crate::clock::now_ms(),
        };
        match self.deps.queue.enqueue(entry.clone()).await {
            Ok(crate::queue::JoinOutcome::Queued) => {
                if let Some(local) = self.users.get_mut(&user) {
                    local.queued = Some(entry);
                }
                self.deps.activity.set_activity(&user, Activity::InQueue);
                send_frame(&conn, &MatchEvent::Queued { id: req }.to_json());
            }
            Ok(crate::queue::JoinOutcome::AlreadyQueued) => {
                send_error(&conn, ErrorCode::AlreadyQueued, "already queued", req);
            }
            Ok(crate::queue::JoinOutcome::Engaged(e)) => engaged_error(&conn, e.kind, req),
            Err(_) => send_error(&conn, ErrorCode::Unavailable, "matchmaking is unavailable", req),
        }
    }

    async fn leave(&mut self, conn: O, req: Option<RequestId>, status: Option<UserStatus>) {
        let user = conn.user_id().to_owned();
        match status {
            Some(UserStatus::Queued) if self.deps.queue.leave(&user).await.unwrap_or(false) => {
                if let Some(local) = self.users.get_mut(&user) {
                    local.queued = None;
                }
                self.deps.activity.set_activity(&user, Activity::Idle);
                send_frame(&conn, &MatchEvent::Left { id: req, reason: None }.to_json());
            }
            Some(UserStatus::Engaged(e)) if e.kind == EngagementKind::Proposal => {
                // Leaving while a proposal is pending declines it.
                let cmd = PairCmd::Leave { proposal_id: e.id };
                self.send_to_coord(&e.coordinator, &user, conn.id(), None, cmd).await;
                send_frame(&conn, &MatchEvent::Left { id: req, reason: None }.to_json());
            }
            Some(UserStatus::Engaged(e)) => engaged_error(&conn, e.kind, req),
            _ if self.leave_line(conn.id()) => {
                send_frame(&conn, &MatchEvent::Left { id: req, reason: None }.to_json());
            }
            _ => send_error(&conn, ErrorCode::NotQueued, "not queued", req),
        }
    }

    /// Takes a join still waiting for its lookup out of line; whether there was one.
    fn leave_line(&mut self, conn_id: u64) -> bool {
        let before = self.join_line.len();
        self.join_line.retain(|j| j.conn.id() != conn_id);
        self.join_line.len() != before
    }

    async fn block(&mut self, conn: O, req: Option<RequestId>, peer: String) {
        let user = conn.user_id().to_owned();
        if !self.is_recent_peer(&user, &peer) {
            return send_error(&conn, ErrorCode::NotAPeer, "you can only block someone you had a call with", req);
        }
        // The shared ban takes effect for every matcher at once; the directory row follows.
        let ban = crate::queue::PairBan { until_ms: crate::clock::now_ms() + BLOCK_BAN_MS, blocked: true };
        if self.deps.queue.ban_pair(&user, &peer, ban).await.is_err() {
            return send_error(&conn, ErrorCode::Unavailable, "matchmaking is unavailable", req);
        }
        let directory = self.deps.directory.clone();
        let stats = self.stats.clone();
        self.tracker.spawn(async move {
            let user = conn.user_id().to_owned();
            match directory.block(&user, &peer).await {
                Ok(()) => send_frame(&conn, &MatchEvent::Blocked { id: req, user_id: peer }.to_json()),
                Err(e) => {
                    crate::stats::inc(&stats.directory_errors);
                    tracing::warn!(error = %e, "block not stored");
                    send_error(&conn, ErrorCode::Unavailable, "the block could not be stored; retry", req);
                }
            }
        });
    }

    fn report(
        &mut self,
        conn: O,
        req: Option<RequestId>,
        peer: String,
        reason: rendezvous_protocol::ReportReason,
        text: Option<String>,
    ) {
        let user = conn.user_id().to_owned();
        if text.as_deref().is_some_and(|t| t.chars().count() > MAX_REPORT_TEXT) {
            let msg = format!("field `text`: at most {MAX_REPORT_TEXT} characters");
            return send_error(&conn, ErrorCode::BadField, msg, req);
        }
        if !self.is_recent_peer(&user, &peer) {
            return send_error(&conn, ErrorCode::NotAPeer, "you can only report someone you had a call with", req);
        }
        let directory = self.deps.directory.clone();
        let stats = self.stats.clone();
        self.tracker.spawn(async move {
            let report = crate::directory::Report { reporter: user, reported: peer.clone(), reason, text };
            match directory.report(&report).await {
                Ok(()) => send_frame(&conn, &MatchEvent::Reported { id: req, user_id: peer }.to_json()),
                Err(e) => {
                    crate::stats::inc(&stats.directory_errors);
                    tracing::warn!(error = %e, "report not stored");
                    send_error(&conn, ErrorCode::Unavailable, "the report could not be stored; retry", req);
                }
            }
        });
    }

    /// The coordinator of `call_id` if this home knows `user` is in it.
    fn known_coordinator(&self, user: &str, call_id: &str) -> Option<String> {
        let call = self.users.get(user)?.call.as_ref()?;
        (call.id == call_id).then(|| call.coordinator.clone())
    }

    fn is_recent_peer(&self, user: &str, peer: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.recent_peers.iter().any(|p| p == peer))
    }

    /// A frame (and note) for a user connected here.
    pub(crate) async fn deliver(&mut self, user: &str, note: Note, frame: String) {
        let Some(local) = self.users.get_mut(user) else {
            if let Note::InviteOffer { invite_id, coordinator } = note {
                self.send_to_coord(&coordinator, user, 0, None, PairCmd::InviteRefused { invite_id }).await;
            }
            return;
        };
        let mut only = None;
        match note {
            Note::Plain => {}
            Note::Reply { conn_id } => only = Some(conn_id),
            Note::CallStarted { peer, call } => {
                local.queued = None;
                local.call = call;
                local.recent_peers.retain(|p| *p != peer);
                if local.recent_peers.len() >= self.cfg.recent_peers {
                    local.recent_peers.pop_front();
                }
                local.recent_peers.push_back(peer);
                self.deps.activity.set_activity(user, Activity::InCall);
            }
            Note::CallEnded => {
                local.queued = None;
                local.call = None;
                self.deps.activity.set_activity(user, Activity::Idle);
            }
            Note::ProposalEnded { requeued } => {
                if !requeued {
                    local.queued = None;
                }
                let a = if requeued { Activity::InQueue } else { Activity::Idle };
                self.deps.activity.set_activity(user, a);
            }
            Note::InviteOffer { invite_id, coordinator } => {
                let free = !matches!(self.deps.queue.status(user).await, Ok(UserStatus::Engaged(_)) | Err(_));
                if !free || !self.deps.activity.is_available(user) {
                    self.send_to_coord(&coordinator, user, 0, None, PairCmd::InviteRefused { invite_id }).await;
                    return;
                }
                let Some(local) = self.users.get_mut(user) else { return };
                local.incoming.insert(invite_id, coordinator);
            }
            Note::InviteClosed { invite_id } => {
                local.incoming.remove(&invite_id);
            }
        }
        let Some(local) = self.users.get(user) else { return };
        if frame.is_empty() {
            return; // a note without a frame
        }
        let msg = rendezvous_gateway::SharedMessage::text(frame);
        for c in local.conns.iter().filter(|c| only.is_none_or(|id| c.id() == id)) {
            let _ = c.send(&msg);
        }
    }
}

/// How long a block stays in the shared ban table; the directory's block list, loaded
/// at every join, covers it afterwards.
pub(crate) const BLOCK_BAN_MS: i64 = 86_400_000;

/// Whether a `call.signal` payload is within `max` bytes serialized; answers the error if not.
fn signal_fits<O: Outbox>(conn: &O, payload: &serde_json::Value, max: usize, req: &Option<RequestId>) -> bool {
    let size = serde_json::to_string(payload).map(|s| s.len()).unwrap_or(usize::MAX);
    if size > max {
        send_error(
            conn,
            ErrorCode::PayloadTooLarge,
            format!("field `payload`: {size} bytes, the limit is {max}"),
            req.clone(),
        );
        return false;
    }
    true
}

fn engaged_error<O: Outbox>(conn: &O, kind: EngagementKind, req: Option<RequestId>) {
    match kind {
        EngagementKind::Proposal => send_error(conn, ErrorCode::AlreadyQueued, "a proposal is pending for you", req),
        EngagementKind::Starting | EngagementKind::Call => {
            send_error(conn, ErrorCode::InCall, "you are in a call", req)
        }
    }
}

//! Direct invites. The inviter's instance coordinates the invite; the invited user's
//! instance checks availability before showing it. A block, a banned or unknown user,
//! and an offline user all get the same `user_unavailable`, so a block cannot be probed.

use std::time::Duration;

use rendezvous_gateway::Outbox;
use rendezvous_protocol::{ErrorCode, RequestId};
use tokio::time::Instant;

use crate::clock;
use crate::directory::{CallOrigin, DirectoryError};
use crate::events::{InviteEnd, MatchEvent};
use crate::queue::{Engagement, EngagementKind};
use crate::stats::{add, inc};
use crate::task::{Done, Invite, InviteLookup, Task, Timer, new_id, send_error, send_frame};
use crate::wire::Note;

const UNAVAILABLE: &str = "that user cannot be invited now";

impl<O: Outbox> Task<O> {
    pub(crate) async fn send_invite(&mut self, conn: O, req: Option<RequestId>, target: String) {
        let user = conn.user_id().to_owned();
        if target == user {
            return send_error(&conn, ErrorCode::UserUnavailable, UNAVAILABLE, req);
        }
        let per_minute = self.cfg.invites_per_minute as usize;
        let max_pending = self.cfg.max_pending_invites;
        let Some(local) = self.users.get_mut(&user) else { return };
        let now = Instant::now();
        while local.invite_times.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            local.invite_times.pop_front();
        }
        if local.invite_times.len() >= per_minute {
            return send_error(&conn, ErrorCode::RateLimited, format!("at most {per_minute} invites a minute"), req);
        }
        if local.outgoing.len() >= max_pending {
            return send_error(&conn, ErrorCode::RateLimited, format!("at most {max_pending} pending invites"), req);
        }
        if let Ok(crate::queue::UserStatus::Engaged(e)) = self.deps.queue.status(&user).await {
            if e.kind != EngagementKind::Proposal {
                return send_error(&conn, ErrorCode::InCall, "you are in a call", req);
            }
        }
        let Some(local) = self.users.get_mut(&user) else { return };
        if self.loads >= self.cfg.max_pending_lookups {
            return send_error(&conn, ErrorCode::Busy, "matchmaking is busy; retry shortly", req);
        }
        // Attempts count, not just deliveries, so the limit also bounds probing.
        local.invite_times.push_back(now);
        self.loads += 1;
        let directory = self.deps.directory.clone();
        let done = self.done_tx.clone();
        self.tracker.spawn(async move {
            let lookup = async {
                let from = directory.profile(&user).await?;
                let to = directory.profile(&target).await?;
                let blocks = directory.blocks(&user).await?;
                Ok::<InviteLookup, DirectoryError>((from, to, blocks))
            };
            let result = lookup.await;
            let _ = done.send(Done::InviteChecked { conn, req, target, result }).await;
        });
    }

    pub(crate) async fn invite_checked(
        &mut self,
        conn: O,
        req: Option<RequestId>,
        target: String,
        result: Result<InviteLookup, DirectoryError>,
    ) {
        let user = conn.user_id().to_owned();
        if !self.users.get(&user).is_some_and(|u| u.conns.iter().any(|c| c.id() == conn.id())) {
            return;
        }
        let (from, to, blocks) = match result {
            Ok(r) => r,
            Err(e) => {
                self.directory_error(&e);
                return send_error(&conn, ErrorCode::Unavailable, "matchmaking is unavailable", req);
            }
        };
        let Some(from) = from else { return send_error(&conn, ErrorCode::Unavailable, "no profile", req) };
        if from.banned {
            return send_error(&conn, ErrorCode::Banned, "banned users cannot invite", req);
        }
        let blocked_now = matches!(
            self.deps.queue.pair_ban(&user, &target, clock::now_ms()).await,
            Ok(Some(ban)) if ban.blocked
        );
        let online = matches!(self.deps.locator.instance_of(&target).await, Ok(Some(_)));
        let to = match to {
            Some(to) if !to.banned && online && !blocked_now && !blocks.contains(&target) => to,
            _ => return send_error(&conn, ErrorCode::UserUnavailable, UNAVAILABLE, req),
        };
        let invite_id = new_id();
        let deadline = Instant::now() + self.cfg.invite_timeout();
        self.timer(deadline, Timer::Invite(invite_id.clone()));
        if let Some(local) = self.users.get_mut(&user) {
            local.outgoing.push(invite_id.clone());
        }
        inc(&self.stats.invites_sent);
        add(&self.stats.pending_invites, 1);
        let deadline_ms = self.cfg.invite_timeout_ms;
        let sent =
            MatchEvent::InviteSent { id: req, invite_id: invite_id.clone(), user_id: target.clone(), deadline_ms };
        send_frame(&conn, &sent.to_json());
        let offer = MatchEvent::InviteReceived { invite_id: invite_id.clone(), from: from.public.clone(), deadline_ms };
        self.invites.insert(invite_id.clone(), Invite { from: from.public, to: to.public, deadline });
        let note = Note::InviteOffer { invite_id, coordinator: self.me.to_string() };
        self.send_to_user(&target, note, offer.to_json()).await;
    }

    /// Removes an invite from the books; `None` if it is already over.
    fn take_invite(&mut self, invite_id: &str) -> Option<Invite> {
        let invite = self.invites.remove(invite_id)?;
        add(&self.stats.pending_invites, -1);
        if let Some(local) = self.users.get_mut(&invite.from.user_id) {
            local.outgoing.retain(|i| i != invite_id);
        }
        Some(invite)
    }

    /// The inviter withdrew the invite (`by` answers their request) or went away.
    pub(crate) async fn cancel_invite(&mut self, invite_id: &str, by: Option<(&O, Option<RequestId>)>) {
        let Some(invite) = self.take_invite(invite_id) else { return };
        inc(&self.stats.invites_cancelled);
        let ev = MatchEvent::InviteCancelled { id: None, invite_id: invite_id.to_owned() };
        let note = Note::InviteClosed { invite_id: invite_id.to_owned() };
        self.send_to_user(&invite.to.user_id, note, ev.to_json()).await;
        if let Some((conn, req)) = by {
            send_frame(conn, &MatchEvent::InviteCancelled { id: req, invite_id: invite_id.to_owned() }.to_json());
        }
    }

    pub(crate) async fn invite_accepted(&mut self, user: &str, conn_id: u64, req: Option<RequestId>, invite_id: &str) {
        if self.invites.get(invite_id).is_none_or(|i| i.to.user_id != user) {
            return self.reply_error(user, conn_id, ErrorCode::NoSuchInvite, "invite is over", req).await;
        }
        let Some(invite) = self.take_invite(invite_id) else { return };
        let engagement =
            Engagement { id: invite_id.to_owned(), kind: EngagementKind::Starting, coordinator: self.me.to_string() };
        let (from, to) = (invite.from.user_id.clone(), invite.to.user_id.clone());
        let engaged = self.deps.queue.engage_pair(&from, &to, engagement, clock::now_ms()).await.unwrap_or(false);
        if !engaged {
            // One of them is busy now (a proposal, a call) or a block arrived meanwhile.
            inc(&self.stats.invites_declined);
            self.reply_error(user, conn_id, ErrorCode::UserUnavailable, UNAVAILABLE, req).await;
            let ev = MatchEvent::InviteDeclined { invite_id: invite_id.to_owned(), reason: InviteEnd::Unavailable };
            return self.send_to_user(&from, Note::Plain, ev.to_json()).await;
        }
        inc(&self.stats.invites_accepted);
        let ev = MatchEvent::InviteAccepted { invite_id: invite_id.to_owned() };
        self.send_to_user(&from, Note::Plain, ev.to_json()).await;
        self.start_call(invite_id.to_owned(), CallOrigin::Invited, [invite.from, invite.to]);
    }

    /// The invited user declined (`reply` is their request), or cannot take the invite.
    pub(crate) async fn invite_refused(
        &mut self,
        user: &str,
        invite_id: &str,
        reason: InviteEnd,
        reply: Option<(u64, Option<RequestId>)>,
    ) {
        if self.invites.get(invite_id).is_none_or(|i| i.to.user_id != user) {
            if let Some((conn_id, req)) = reply {
                self.reply_error(user, conn_id, ErrorCode::NoSuchInvite, "invite is over", req).await;
            }
            return;
        }
        let Some(invite) = self.take_invite(invite_id) else { return };
        inc(&self.stats.invites_declined);
        let ev = MatchEvent::InviteDeclined { invite_id: invite_id.to_owned(), reason };
        self.send_to_user(&invite.from.user_id, Note::Plain, ev.to_json()).await;
    }

    pub(crate) async fn invite_deadline(&mut self, invite_id: &str) {
        if self.invites.get(invite_id).is_none_or(|i| i.deadline > Instant::now()) {
            return;
        }
        let Some(invite) = self.take_invite(invite_id) else { return };
        inc(&self.stats.invites_expired);
        let frame = MatchEvent::InviteExpired { invite_id: invite_id.to_owned() }.to_json();
        self.send_to_user(&invite.from.user_id, Note::Plain, frame.clone()).await;
        let note = Note::InviteClosed { invite_id: invite_id.to_owned() };
        self.send_to_user(&invite.to.user_id, note, frame).await;
    }
}

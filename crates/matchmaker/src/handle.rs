//! [`MatchmakerHandle`]: what connection handlers call. Every method is synchronous and
//! never waits: it queues a command for the matchmaker task, which answers through the
//! connection's outbox.

use std::sync::Arc;

use rendezvous_gateway::{Outbox, SharedMessage};
use rendezvous_protocol::{
    CallBlock, CallHangup, CallReport, CallSignal, ErrorCode, ErrorFrame, InviteAccept, InviteCancel, InviteDecline,
    InviteSend, MatchAccept, MatchDecline, MatchJoin, MatchPrefs, ReportReason, RequestId, SignalKind,
};
use tokio::sync::mpsc;

use crate::clock;
use crate::config::MatchmakerConfig;
use crate::events::MatchEvent;
use crate::ice;
use crate::stats::{MatchmakerStats, Stats, inc};

/// Why a handle call was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// The command queue (`matchmaking.command_queue`) is full; answer `busy`.
    #[error("matchmaker is busy")]
    Busy,
    /// The matchmaker has shut down; answer `unavailable`.
    #[error("matchmaker has shut down")]
    Closed,
}

impl MatchError {
    /// The `error` frame to answer the request with.
    pub fn to_frame(self, reference: Option<RequestId>) -> ErrorFrame {
        match self {
            MatchError::Busy => {
                ErrorFrame { code: ErrorCode::Busy, message: "matchmaking is busy; retry shortly".into(), reference }
            }
            MatchError::Closed => ErrorFrame {
                code: ErrorCode::Unavailable,
                message: "matchmaking is not available on this instance".into(),
                reference,
            },
        }
    }
}

/// A client request, as the task sees it.
#[derive(Debug)]
pub(crate) enum Op {
    Join(MatchPrefs),
    Leave,
    Accept(String),
    Decline(String),
    Invite(String),
    InviteAccept(String),
    InviteDecline(String),
    InviteCancel(String),
    /// `at`: when the handle took it, for the relay-time figure.
    Signal {
        call_id: String,
        kind: SignalKind,
        payload: serde_json::Value,
        at: tokio::time::Instant,
    },
    Hangup(String),
    Block(String),
    Report {
        user_id: String,
        reason: ReportReason,
        text: Option<String>,
    },
}

/// Commands for the matchmaker task.
#[derive(Debug)]
pub(crate) enum Command<O> {
    Connect(O),
    Disconnect { conn_id: u64, user_id: String },
    Client { conn: O, req: Option<RequestId>, op: Op },
}

/// The cloneable handle to one instance's matchmaker task.
pub struct MatchmakerHandle<O> {
    pub(crate) tx: mpsc::Sender<Command<O>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) cfg: Arc<MatchmakerConfig>,
    pub(crate) instance: Arc<str>,
    /// For `/health`: which backend, and whether it is reachable.
    pub(crate) queue: Arc<dyn crate::queue::MatchQueue>,
}

impl<O> Clone for MatchmakerHandle<O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
            cfg: self.cfg.clone(),
            instance: self.instance.clone(),
            queue: self.queue.clone(),
        }
    }
}

impl<O> std::fmt::Debug for MatchmakerHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatchmakerHandle").field("instance", &self.instance).finish_non_exhaustive()
    }
}

impl<O: Outbox> MatchmakerHandle<O> {
    fn send(&self, cmd: Command<O>) -> Result<(), MatchError> {
        self.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                inc(&self.stats.rejected_busy);
                MatchError::Busy
            }
            mpsc::error::TrySendError::Closed(_) => MatchError::Closed,
        })
    }

    fn client(&self, conn: &O, req: Option<RequestId>, op: Op) -> Result<(), MatchError> {
        self.send(Command::Client { conn: conn.clone(), req, op })
    }

    /// A connection opened (call from `Handler::on_open`): the user becomes reachable
    /// here, and a user with a call in its reconnect grace resumes it.
    pub fn connect(&self, conn: O) -> Result<(), MatchError> {
        self.send(Command::Connect(conn))
    }

    /// A connection closed (call from `Handler::on_close`). With the user's last
    /// connection here gone, the user leaves the queue, proposals and invites, and any
    /// call enters its reconnect grace.
    pub fn disconnect(&self, conn_id: u64, user_id: &str) -> Result<(), MatchError> {
        self.send(Command::Disconnect { conn_id, user_id: user_id.to_owned() })
    }

    /// `match.join`.
    pub fn join(&self, conn: &O, req: Option<RequestId>, msg: MatchJoin) -> Result<(), MatchError> {
        self.client(conn, req, Op::Join(msg.prefs))
    }

    /// `match.leave`.
    pub fn leave(&self, conn: &O, req: Option<RequestId>) -> Result<(), MatchError> {
        self.client(conn, req, Op::Leave)
    }

    /// `match.accept`.
    pub fn accept(&self, conn: &O, req: Option<RequestId>, msg: MatchAccept) -> Result<(), MatchError> {
        self.client(conn, req, Op::Accept(msg.proposal_id))
    }

    /// `match.decline`.
    pub fn decline(&self, conn: &O, req: Option<RequestId>, msg: MatchDecline) -> Result<(), MatchError> {
        self.client(conn, req, Op::Decline(msg.proposal_id))
    }

    /// `invite.send`.
    pub fn invite(&self, conn: &O, req: Option<RequestId>, msg: InviteSend) -> Result<(), MatchError> {
        self.client(conn, req, Op::Invite(msg.user_id))
    }

    /// `invite.accept`.
    pub fn invite_accept(&self, conn: &O, req: Option<RequestId>, msg: InviteAccept) -> Result<(), MatchError> {
        self.client(conn, req, Op::InviteAccept(msg.invite_id))
    }

    /// `invite.decline`.
    pub fn invite_decline(&self, conn: &O, req: Option<RequestId>, msg: InviteDecline) -> Result<(), MatchError> {
        self.client(conn, req, Op::InviteDecline(msg.invite_id))
    }

    /// `invite.cancel`.
    pub fn invite_cancel(&self, conn: &O, req: Option<RequestId>, msg: InviteCancel) -> Result<(), MatchError> {
        self.client(conn, req, Op::InviteCancel(msg.invite_id))
    }

    /// `call.signal`.
    pub fn signal(&self, conn: &O, req: Option<RequestId>, msg: CallSignal) -> Result<(), MatchError> {
        let at = tokio::time::Instant::now();
        self.client(conn, req, Op::Signal { call_id: msg.call_id, kind: msg.kind, payload: msg.payload, at })
    }

    /// `call.hangup`.
    pub fn hangup(&self, conn: &O, req: Option<RequestId>, msg: CallHangup) -> Result<(), MatchError> {
        self.client(conn, req, Op::Hangup(msg.call_id))
    }

    /// `call.block`.
    pub fn block(&self, conn: &O, req: Option<RequestId>, msg: CallBlock) -> Result<(), MatchError> {
        self.client(conn, req, Op::Block(msg.user_id))
    }

    /// `call.report`.
    pub fn report(&self, conn: &O, req: Option<RequestId>, msg: CallReport) -> Result<(), MatchError> {
        self.client(conn, req, Op::Report { user_id: msg.user_id, reason: msg.reason, text: msg.text })
    }

    /// `ice.servers`: answered at once from config, without the task.
    pub fn ice_servers(&self, conn: &O, req: Option<RequestId>) {
        let ice = &self.cfg.ice;
        let ev = MatchEvent::IceServers {
            id: req,
            ice_servers: ice::ice_servers(ice, conn.user_id(), clock::now_unix_secs()),
            ttl_secs: ice.turn_ttl_secs,
        };
        // A full outbox closes the connection as a slow consumer; nothing more to do.
        let _ = conn.send(&SharedMessage::text(ev.to_json()));
    }

    /// Figures for `/health` and `/metrics`.
    pub fn stats(&self) -> MatchmakerStats {
        let mut s = self.stats.snapshot(&self.instance, clock::now_ms());
        s.queue_backend = self.queue.backend();
        s.queue_reachable = self.queue.reachable();
        s
    }
}

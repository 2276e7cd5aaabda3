//! What instances send each other on their inbox topics (`matchmaker.inbox.<instance>`):
//! frames for a user connected there, and commands for the coordinator of a proposal,
//! invite or call. The local instance uses the same messages without the bus.

use rendezvous_protocol::{RequestId, SignalKind};
use serde::{Deserialize, Serialize};

/// The inbox topic of `instance`.
pub(crate) fn inbox_topic(instance: &str) -> String {
    format!("matchmaker.inbox.{instance}")
}

/// One inter-instance message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Wire {
    /// For the connections of `user` on the receiving instance.
    ToUser {
        user: String,
        note: Note,
        /// The frame, serialized once by the coordinator.
        frame: String,
    },
    /// For the coordinator of what `cmd` names, from `user`'s home instance.
    ToCoord {
        user: String,
        /// The connection and request to answer errors to.
        conn_id: u64,
        req: Option<RequestId>,
        cmd: PairCmd,
    },
}

/// What the user's home instance does besides delivering the frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "n", rename_all = "snake_case")]
pub(crate) enum Note {
    /// Deliver to every connection of the user.
    Plain,
    /// Deliver to one connection only (an answer to its request).
    Reply { conn_id: u64 },
    /// A call started (or resumed) with `peer`: presence shows `in_call`; `peer` may be
    /// blocked/reported; the home keeps `call` so the user's signals go straight to its
    /// coordinator.
    CallStarted {
        peer: String,
        /// Absent from an instance that predates it (a rolling upgrade): the home then
        /// asks the shared table per signal, as before.
        #[serde(default)]
        call: Option<CallRef>,
    },
    /// A call ended: presence shows `idle`.
    CallEnded,
    /// A proposal ended: presence shows `in_queue` if requeued, else `idle`.
    ProposalEnded { requeued: bool },
    /// An invite for the user, coordinated by `coordinator`; the home checks availability
    /// and answers `InviteRefused` instead of delivering when the user cannot take it.
    InviteOffer { invite_id: String, coordinator: String },
    /// An invite to the user ended (cancelled or expired).
    InviteClosed { invite_id: String },
}

/// A call and the instance coordinating it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CallRef {
    pub(crate) id: String,
    pub(crate) coordinator: String,
}

/// Commands for a coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "c", rename_all = "snake_case")]
pub(crate) enum PairCmd {
    Accept {
        proposal_id: String,
    },
    Decline {
        proposal_id: String,
    },
    /// `match.leave` during the proposal: a decline, or leaving the queue if a
    /// requeue overtook it.
    Leave {
        proposal_id: String,
    },
    Signal {
        call_id: String,
        kind: SignalKind,
        payload: serde_json::Value,
        /// When this instance's handle took the signal; not sent between instances.
        #[serde(skip)]
        since: Option<tokio::time::Instant>,
    },
    Hangup {
        call_id: String,
    },
    InviteAccept {
        invite_id: String,
    },
    InviteDecline {
        invite_id: String,
    },
    /// The invited user cannot take the invite (away, busy, or not connected there).
    InviteRefused {
        invite_id: String,
    },
    /// The invited user disconnected.
    InviteGone {
        invite_id: String,
    },
    /// `instance` lost its last connection of the user.
    Gone {
        instance: String,
    },
    /// The user connected at `instance` while engaged here.
    Back {
        instance: String,
    },
}

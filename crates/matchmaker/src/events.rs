//! What the matchmaker sends clients. Errors go out as the protocol's `error` frames.

use rendezvous_protocol::{ErrorCode, ErrorFrame, RequestId, ServerMessage, SignalKind};
use serde::{Deserialize, Serialize};

use crate::directory::{EndReason, PublicProfile};
use crate::ice::IceServer;

/// Which side of a call sends the WebRTC offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Creates and sends the offer (the longer-waiting user, or the inviter).
    Offerer,
    /// Waits for the offer and answers it.
    Answerer,
}

/// Why a proposal ended without a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// This user declined (or left the queue); they are out of the queue.
    Declined,
    /// The peer declined; this user is back at the front of the queue.
    PeerDeclined,
    /// This user did not accept in time; they are out of the queue.
    Timeout,
    /// The peer did not accept in time; this user is back at the front of the queue.
    PeerTimeout,
    /// The peer disconnected; this user is back at the front of the queue.
    PeerDisconnected,
    /// The call could not be recorded; both are out of the queue and may join again.
    Unavailable,
    /// The coordinating instance shut down; both are out of the queue.
    Shutdown,
    /// The coordinating instance died without a goodbye (killed); this user is out of the
    /// queue and may join again.
    InstanceLost,
}

/// Why an invite ended without a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteEnd {
    /// The invited user declined.
    Declined,
    /// The invited user cannot take it (away, busy, gone), or the call could not start.
    Unavailable,
}

/// Messages the matchmaker sends; the JSON `type` tag selects the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MatchEvent {
    /// Answer to `match.join`: the user is queued.
    #[serde(rename = "match.queued")]
    Queued {
        /// The request's `id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Answer to `match.leave`, or the queue was closed (`reason: shutdown`).
    #[serde(rename = "match.left")]
    Left {
        /// The request's `id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Absent when the user asked; `shutdown` when the instance is draining.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A match: accept or decline `proposal_id` within `deadline_ms`.
    #[serde(rename = "match.proposed")]
    Proposed {
        /// Answer with `match.accept` / `match.decline`.
        proposal_id: String,
        /// Who the user would meet.
        peer: PublicProfile,
        /// Milliseconds left to answer.
        deadline_ms: u64,
    },
    /// Both accepted (or an invite was accepted): the call has started.
    #[serde(rename = "match.confirmed")]
    Confirmed {
        /// Use in `call.signal` / `call.hangup`.
        call_id: String,
        /// Who the user is meeting.
        peer: PublicProfile,
        /// Whether this side sends the offer.
        role: Role,
    },
    /// A proposal ended without a call.
    #[serde(rename = "match.cancelled")]
    Cancelled {
        /// The proposal.
        proposal_id: String,
        /// Why.
        reason: CancelReason,
        /// Whether this user is back in the queue (at the front).
        requeued: bool,
    },
    /// Answer to `invite.send`.
    #[serde(rename = "invite.sent")]
    InviteSent {
        /// The request's `id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Use in `invite.cancel`.
        invite_id: String,
        /// The invited user.
        user_id: String,
        /// Milliseconds until it expires.
        deadline_ms: u64,
    },
    /// Someone invites this user.
    #[serde(rename = "invite.received")]
    InviteReceived {
        /// Answer with `invite.accept` / `invite.decline`.
        invite_id: String,
        /// The inviter.
        from: PublicProfile,
        /// Milliseconds left to answer.
        deadline_ms: u64,
    },
    /// The invited user accepted; `match.confirmed` follows.
    #[serde(rename = "invite.accepted")]
    InviteAccepted {
        /// The invite.
        invite_id: String,
    },
    /// The invite ended without a call.
    #[serde(rename = "invite.declined")]
    InviteDeclined {
        /// The invite.
        invite_id: String,
        /// Why.
        reason: InviteEnd,
    },
    /// Nobody answered in time (sent to both sides).
    #[serde(rename = "invite.expired")]
    InviteExpired {
        /// The invite.
        invite_id: String,
    },
    /// The inviter withdrew it (or went away); also the answer to `invite.cancel`.
    #[serde(rename = "invite.cancelled")]
    InviteCancelled {
        /// The request's `id` (for the inviter).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The invite.
        invite_id: String,
    },
    /// Signaling from the peer, in the order it was sent.
    #[serde(rename = "call.signal")]
    Signal {
        /// The call.
        call_id: String,
        /// `offer`, `answer` or `ice`.
        kind: SignalKind,
        /// As the peer sent it.
        payload: serde_json::Value,
    },
    /// The peer disconnected; the call ends unless they are back within the grace.
    #[serde(rename = "call.peer_reconnecting")]
    PeerReconnecting {
        /// The call.
        call_id: String,
        /// Milliseconds the peer has to come back.
        grace_ms: u64,
    },
    /// The peer is back.
    #[serde(rename = "call.peer_reconnected")]
    PeerReconnected {
        /// The call.
        call_id: String,
    },
    /// Sent to a user who reconnected into a call (or moved to another instance).
    #[serde(rename = "call.resumed")]
    Resumed {
        /// The call.
        call_id: String,
        /// Who the user is meeting.
        peer: PublicProfile,
        /// Whether this side sends the offer (an ICE restart, after a network change).
        role: Role,
    },
    /// The call is over.
    #[serde(rename = "call.ended")]
    Ended {
        /// The call.
        call_id: String,
        /// Why.
        reason: EndReason,
        /// Who ended it; absent for a shutdown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ended_by: Option<String>,
    },
    /// Answer to `call.block`.
    #[serde(rename = "call.blocked")]
    Blocked {
        /// The request's `id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The blocked user.
        user_id: String,
    },
    /// Answer to `call.report`.
    #[serde(rename = "call.reported")]
    Reported {
        /// The request's `id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The reported user.
        user_id: String,
    },
    /// Answer to `ice.servers`: pass as `RTCConfiguration.iceServers`.
    #[serde(rename = "ice.servers")]
    IceServers {
        /// The request's `id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// STUN and TURN servers.
        ice_servers: Vec<IceServer>,
        /// Seconds the TURN credentials stay valid; ask again before then.
        ttl_secs: u64,
    },
}

impl MatchEvent {
    /// The JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        // Every key is a string and every value serializable, so this cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An `error` frame as JSON.
pub(crate) fn error_json(code: ErrorCode, message: impl Into<String>, reference: Option<RequestId>) -> String {
    ServerMessage::Error(ErrorFrame { code, message: message.into(), reference }).to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_stable_json() {
        let e = MatchEvent::Cancelled { proposal_id: "p".into(), reason: CancelReason::PeerTimeout, requeued: true };
        assert_eq!(
            e.to_json(),
            r#"{"type":"match.cancelled","proposal_id":"p","reason":"peer_timeout","requeued":true}"#
        );
        let e = MatchEvent::Ended { call_id: "c".into(), reason: EndReason::Hangup, ended_by: Some("u".into()) };
        assert_eq!(e.to_json(), r#"{"type":"call.ended","call_id":"c","reason":"hangup","ended_by":"u"}"#);
        let e = MatchEvent::Queued { id: Some(RequestId::Number(4)) };
        assert_eq!(e.to_json(), r#"{"type":"match.queued","id":4}"#);
        let back: MatchEvent = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(back, e);
        let err = error_json(ErrorCode::NoSuchCall, "no", None);
        assert_eq!(err, r#"{"type":"error","code":"no_such_call","message":"no"}"#);
    }
}

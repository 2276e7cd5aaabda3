use serde::{Deserialize, Serialize};

use crate::message::RequestId;

/// Machine-readable error codes carried by `error` frames and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is not valid JSON.
    BadJson,
    /// The JSON is not an object, or has no string `type`.
    MissingType,
    /// `type` names no message this server knows.
    UnknownType,
    /// A field is missing, unknown, or of the wrong type.
    BadField,
    /// `v` names a protocol version this server does not speak.
    UnsupportedVersion,
    /// Binary frames are not part of the protocol.
    BinaryNotSupported,
    /// The connection sent messages faster than its rate limit.
    RateLimited,
    /// No or an invalid session token (HTTP 401).
    Unauthorized,
    /// The origin is not allowed (HTTP 403).
    ForbiddenOrigin,
    /// The request is not a valid WebSocket upgrade (HTTP 400/426).
    BadRequest,
    /// Too many connection attempts from this address (HTTP 429).
    TooManyRequests,
    /// The server is at its connection cap, low on memory, or draining (HTTP 503).
    Unavailable,
    /// Unexpected server-side failure.
    Internal,
    /// A domain service's command queue is full; retry shortly.
    Busy,
    /// A presence topic name is empty, too long, or has characters outside `[a-z0-9_.:-]`.
    BadTopic,
    /// A presence status text is too long or contains control characters.
    BadStatus,
    /// The connection already has `presence.max_subscriptions_per_connection` topics.
    TooManySubscriptions,
    /// The instance already tracks `presence.max_topics` topics and this one would be new.
    TopicLimit,
    /// `presence.unsubscribe` for a topic this connection is not subscribed to.
    NotSubscribed,
    /// `match.join` while already queued or in a pending proposal.
    AlreadyQueued,
    /// `match.leave` while not queued.
    NotQueued,
    /// The request needs the user out of a call (`match.join`, `invite.send` during a call).
    InCall,
    /// The proposal is unknown, expired, already settled, or not this user's.
    NoSuchProposal,
    /// The invite is unknown, expired, already answered, or not this user's.
    NoSuchInvite,
    /// The call is unknown, over, or not this user's (signaling, hangup).
    NoSuchCall,
    /// The invited user cannot be invited now (offline, busy, away, blocked, or oneself);
    /// deliberately one code, so a block is indistinguishable from being offline.
    UserUnavailable,
    /// The user is banned and cannot be matched.
    Banned,
    /// `call.block` / `call.report` name someone this user had no recent call with.
    NotAPeer,
    /// A `call.signal` payload is over `matchmaking.max_signal_bytes`.
    PayloadTooLarge,
}

/// An `error` frame: `{"type":"error","code":"…","message":"…","ref":…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people; names the offending field or position.
    pub message: String,
    /// The `id` of the request this answers, when the request had one.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<RequestId>,
}

impl ErrorFrame {
    /// An error frame that answers no particular request.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), reference: None }
    }
}

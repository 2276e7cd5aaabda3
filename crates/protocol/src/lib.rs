//! The Rendezvous wire protocol, shared by the server and every client.
//!
//! Every WebSocket text message is one JSON object with a `type` tag and an
//! optional protocol version `v` (only [`PROTOCOL_VERSION`] is accepted).
//! The full reference lives in `docs/protocol.md`.
//!
//! # Layout
//! - [`ClientMessage`] / [`ServerMessage`]: what each side may send.
//! - [`decode_client`]: strict decoding that names the problem in an [`ErrorFrame`].
//! - [`ErrorCode`], [`CloseCode`]: the stable codes clients program against.

mod close;
mod decode;
mod error;
mod message;

pub use close::CloseCode;
pub use decode::{DecodeError, decode_client};
pub use error::{ErrorCode, ErrorFrame};
pub use message::{
    CallBlock, CallHangup, CallReport, CallSignal, ClientMessage, IceServers, InviteAccept, InviteCancel,
    InviteDecline, InviteSend, MatchAccept, MatchDecline, MatchJoin, MatchLeave, MatchPrefs, Ping, PresenceSet,
    PresenceSubscribe, PresenceUnsubscribe, ReportReason, Request, RequestId, ServerMessage, SettableState, SignalKind,
};

/// The protocol version this build speaks; a message carrying another `v` is refused.
pub const PROTOCOL_VERSION: u32 = 1;

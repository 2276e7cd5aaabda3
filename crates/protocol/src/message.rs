use serde::{Deserialize, Serialize};

use crate::error::ErrorFrame;

/// A client-chosen request id, echoed back as `id` in replies and `ref` in errors.
///
/// Either a non-negative integer or a string of at most [`RequestId::MAX_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// A numeric id.
    Number(u64),
    /// A string id.
    Text(String),
}

impl RequestId {
    /// Longest accepted string id, in bytes.
    pub const MAX_LEN: usize = 64;
}

/// Declares every client message in one place: its wire `type`, its payload struct
/// (unknown fields refused) and its [`ClientMessage`] variant. Adding a message is one
/// entry here; decoding, [`ClientMessage::TYPES`] and the round-trip test follow.
macro_rules! client_messages {
    ($(
        $(#[$doc:meta])*
        $tag:literal => $name:ident { $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)? }
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $name { $( $(#[$fmeta])* pub $field: $fty, )* }

            impl From<$name> for ClientMessage {
                fn from(m: $name) -> Self {
                    ClientMessage::$name(m)
                }
            }
        )*

        /// Messages a client may send; the JSON `type` tag selects the variant.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ClientMessage {
            $( $(#[$doc])* $name($name), )*
        }

        impl ClientMessage {
            /// Every `type` a client may send.
            pub const TYPES: &'static [&'static str] = &[$($tag),*];

            /// The wire `type` of this message.
            pub fn type_name(&self) -> &'static str {
                match self { $( ClientMessage::$name(_) => $tag, )* }
            }

            /// Deserializes the payload of a message of type `ty` (envelope fields removed);
            /// `None` for an unknown type.
            pub(crate) fn from_payload(
                ty: &str,
                payload: serde_json::Value,
            ) -> Option<Result<Self, serde_path_to_error::Error<serde_json::Error>>> {
                match ty {
                    $( $tag => Some(serde_path_to_error::deserialize::<_, $name>(payload).map(ClientMessage::$name)), )*
                    _ => None,
                }
            }

            /// The message as JSON with its `type` (clients and tests encode with this).
            pub fn to_json(&self) -> String {
                let (tag, mut value) = match self {
                    $( ClientMessage::$name(m) => ($tag, serde_json::to_value(m)), )*
                };
                if let Ok(serde_json::Value::Object(map)) = &mut value {
                    map.insert("type".into(), serde_json::Value::from(tag));
                }
                value.map(|v| v.to_string()).unwrap_or_default()
            }
        }
    };
}

client_messages! {
    /// Application-level liveness check; answered with `pong`.
    "ping" => Ping {}

    /// Start watching a presence topic (and appear in it): a `presence.snapshot`, then
    /// `presence.diff`s.
    "presence.subscribe" => PresenceSubscribe {
        /// 1–64 of `[a-z0-9_.:-]`.
        topic: String,
    }

    /// Stop watching a topic (and leave it).
    "presence.unsubscribe" => PresenceUnsubscribe {
        /// A topic this connection subscribed to.
        topic: String,
    }

    /// Set what others see: availability and a short status text.
    "presence.set" => PresenceSet {
        /// `available` or `away`; absent keeps the current one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<SettableState>,
        /// Up to 140 characters without control characters; absent keeps it, `""` clears it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
    }

    /// Join the matchmaking queue; answered with `match.queued`, later `match.proposed`.
    "match.join" => MatchJoin {
        /// Whom the user wants to meet; absent means anyone.
        #[serde(default)]
        prefs: MatchPrefs,
    }

    /// Leave the queue (or decline the pending proposal); answered with `match.left`.
    "match.leave" => MatchLeave {}

    /// Accept a `match.proposed`; both accepting starts the call (`match.confirmed`).
    "match.accept" => MatchAccept {
        /// The `proposal_id` of the `match.proposed`.
        proposal_id: String,
    }

    /// Decline a `match.proposed`: the peer goes back to the front of the queue, this user leaves it.
    "match.decline" => MatchDecline {
        /// The `proposal_id` of the `match.proposed`.
        proposal_id: String,
    }

    /// Invite an available user to a call; answered with `invite.sent`.
    "invite.send" => InviteSend {
        /// The invited user.
        user_id: String,
    }

    /// Accept an `invite.received`; starts the call (`match.confirmed`).
    "invite.accept" => InviteAccept {
        /// The `invite_id` of the `invite.received`.
        invite_id: String,
    }

    /// Decline an `invite.received`.
    "invite.decline" => InviteDecline {
        /// The `invite_id` of the `invite.received`.
        invite_id: String,
    }

    /// Withdraw an invite this user sent.
    "invite.cancel" => InviteCancel {
        /// The `invite_id` of the `invite.sent`.
        invite_id: String,
    }

    /// WebRTC signaling for the peer of an active call, relayed in order.
    "call.signal" => CallSignal {
        /// The `call_id` of `match.confirmed`.
        call_id: String,
        /// `offer`, `answer` or `ice`.
        kind: SignalKind,
        /// The SDP or ICE candidate as JSON; at most `matchmaking.max_signal_bytes` serialized.
        payload: serde_json::Value,
    }

    /// End an active call; both sides get `call.ended`.
    "call.hangup" => CallHangup {
        /// The call to end.
        call_id: String,
    }

    /// Block a user this user had a call with: they are never matched again and their
    /// invites fail; answered with `call.blocked`.
    "call.block" => CallBlock {
        /// The peer to block.
        user_id: String,
    }

    /// Report a user this user had a call with; answered with `call.reported`.
    "call.report" => CallReport {
        /// The peer to report.
        user_id: String,
        /// One of the fixed reasons.
        reason: ReportReason,
        /// Up to 500 characters of explanation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    }

    /// Ask for STUN/TURN servers; answered with `ice.servers` (TURN credentials expire).
    "ice.servers" => IceServers {}
}

/// Whom a user wants to meet. Two users match when each one's preferences hold for the other.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchPrefs {
    /// Genders the user wants to meet (1–8 of the profile genders); absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genders: Option<Vec<String>>,
    /// Only meet users who chose the same region (1–32 of `[a-z0-9_-]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Only meet users who chose the same topic (1–32 of `[a-z0-9_-]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// What a `call.signal` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// An SDP offer.
    #[default]
    Offer,
    /// An SDP answer.
    Answer,
    /// An ICE candidate.
    Ice,
}

/// Why a user reports another; the fixed list the app backend reviews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportReason {
    /// Insults, threats, unwanted advances.
    Harassment,
    /// Sexual content or nudity.
    Nudity,
    /// Advertising, scams, bots.
    Spam,
    /// The user appears to be a minor.
    Underage,
    /// Violence or self-harm.
    Violence,
    /// Anything else; say what in `text`.
    #[default]
    Other,
}

impl ReportReason {
    /// The wire name, as stored with the report.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportReason::Harassment => "harassment",
            ReportReason::Nudity => "nudity",
            ReportReason::Spam => "spam",
            ReportReason::Underage => "underage",
            ReportReason::Violence => "violence",
            ReportReason::Other => "other",
        }
    }
}

/// The presence states a client may choose; the server sets the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettableState {
    /// Open to invites and matches.
    Available,
    /// Connected but not to be disturbed.
    Away,
}

/// A decoded client message with its envelope fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The request id to echo back, if the client sent one.
    pub id: Option<RequestId>,
    /// The message itself.
    pub message: ClientMessage,
}

/// Messages the server sends. The JSON `type` tag selects the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    /// First message on every connection: who you are and how to keep alive.
    #[serde(rename = "welcome")]
    Welcome {
        /// Protocol version the server speaks.
        v: u32,
        /// This connection's id, unique within the instance.
        conn_id: u64,
        /// The authenticated user.
        user_id: String,
        /// The instance that holds the connection.
        instance: String,
        /// How often the server pings, in milliseconds.
        heartbeat_interval_ms: u64,
    },
    /// Answer to `ping`.
    #[serde(rename = "pong")]
    Pong {
        /// The `id` of the ping.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Something the client sent was refused; the connection stays open.
    #[serde(rename = "error")]
    Error(ErrorFrame),
    /// The server is shutting down; the connection closes with 1001 within the window.
    #[serde(rename = "server.draining")]
    Draining {
        /// Suggested delay before reconnecting, in milliseconds (already jittered).
        reconnect_after_ms: u64,
    },
}

impl ServerMessage {
    /// Serializes to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every key is a string and no map has non-string keys.
        serde_json::to_string(self)
            .unwrap_or_else(|_| String::from(r#"{"type":"error","code":"internal","message":"serialization failed"}"#))
    }
}

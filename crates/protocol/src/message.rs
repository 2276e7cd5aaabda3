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

/// Messages a client may send. The JSON `type` tag selects the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientMessage {
    /// Application-level liveness check; answered with `pong`.
    #[serde(rename = "ping")]
    Ping {},
}

impl ClientMessage {
    /// Every `type` a client may send, for precise `unknown_type` errors.
    pub const TYPES: &'static [&'static str] = &["ping"];
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

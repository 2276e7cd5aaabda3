//! Server → client presence messages and the error codes presence answers with
//! (documented in `docs/protocol.md` (Presence)).

use std::sync::Arc;

use rendezvous_gateway::SharedMessage;
use rendezvous_protocol::RequestId;
use serde::{Deserialize, Serialize};

use crate::entry::ShownEntry;

/// Error codes presence sends in `error` frames, beyond the protocol's own.
pub mod codes {
    /// The topic name is empty, too long, or has characters outside `[a-z0-9_.:-]`.
    pub const BAD_TOPIC: &str = "bad_topic";
    /// The connection already has `presence.max_subscriptions_per_connection` topics.
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
    /// The instance already tracks `presence.max_topics` topics and this one would be new.
    pub const TOPIC_LIMIT: &str = "topic_limit";
    /// The presence service's command queue is full; retry shortly.
    pub const BUSY: &str = "busy";
    /// `presence.unsubscribe` for a topic this connection is not subscribed to.
    pub const NOT_SUBSCRIBED: &str = "not_subscribed";
    /// The status text is too long or contains control characters.
    pub const BAD_STATUS: &str = "bad_status";
    /// Profile or block list could not be read (database down); retry later. Same code as the protocol's.
    pub const UNAVAILABLE: &str = "unavailable";
}

/// Every presence message a client receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PresenceMessage {
    /// The topic's whole window; replaces whatever the client had for the topic.
    #[serde(rename = "presence.snapshot")]
    Snapshot(Snapshot),
    /// Changes to the window since the message with `seq - 1`.
    #[serde(rename = "presence.diff")]
    Diff(Diff),
    /// A presence request with an `id` succeeded (sent before a subscription's snapshot).
    #[serde(rename = "presence.ack")]
    Ack {
        /// The request's `id`.
        id: RequestId,
    },
}

/// `presence.snapshot`: the window of a topic at `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The topic.
    pub topic: Arc<str>,
    /// The next diff for this topic carries `seq + 1`.
    pub seq: u64,
    /// Users in the whole topic (may exceed `entries.len()`).
    pub count: usize,
    /// The window, in window order.
    pub entries: Vec<Arc<ShownEntry>>,
    /// Unix ms (server clock) of the tick that published this state, so a client can see
    /// how long after the tick it arrived.
    #[serde(default)]
    pub tick_at: i64,
}

/// `presence.diff`: what changed in the window during one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// The topic.
    pub topic: Arc<str>,
    /// One more than the previous snapshot or diff of this topic; anything else is a gap.
    pub seq: u64,
    /// Users in the whole topic now.
    pub count: usize,
    /// Entries that entered the window.
    pub joins: Vec<Arc<ShownEntry>>,
    /// Entries in the window whose fields changed (the whole entry is sent).
    pub updates: Vec<Arc<ShownEntry>>,
    /// Ids that left the window (went offline, left the topic, or were pushed out of the window).
    pub leaves: Vec<Arc<str>>,
    /// Unix ms (server clock) of the tick that produced this diff.
    #[serde(default)]
    pub tick_at: i64,
}

impl Diff {
    /// Entries carried (joins + updates + leaves).
    pub fn len(&self) -> usize {
        self.joins.len() + self.updates.len() + self.leaves.len()
    }

    /// True when nothing changed in the window.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    message: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a RequestId>,
}

/// Serializes once into a message every recipient shares.
pub(crate) fn encode<T: Serialize>(value: &T) -> SharedMessage {
    // Nothing here has non-string map keys, so serializing cannot fail.
    SharedMessage::text(
        serde_json::to_string(value)
            .unwrap_or_else(|_| String::from(r#"{"type":"error","code":"internal","message":"serialization failed"}"#)),
    )
}

/// An `error` frame in the protocol's shape.
pub(crate) fn error(code: &str, message: &str, reference: Option<&RequestId>) -> SharedMessage {
    encode(&ErrorReply { kind: "error", code, message, reference })
}

/// A `presence.ack` for a request that had an id.
pub(crate) fn ack(id: &RequestId) -> SharedMessage {
    encode(&PresenceMessage::Ack { id: id.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frames_have_the_protocol_shape() {
        let msg =
            ErrorReply { kind: "error", code: codes::BAD_TOPIC, message: "m", reference: Some(&RequestId::Number(3)) };
        let v = serde_json::to_value(&msg).unwrap();
        assert_eq!(v, serde_json::json!({"type":"error","code":"bad_topic","message":"m","ref":3}));
        let msg = ErrorReply { kind: "error", code: codes::BUSY, message: "m", reference: None };
        assert!(serde_json::to_value(&msg).unwrap().get("ref").is_none());
    }

    #[test]
    fn messages_are_tagged_with_their_type() {
        let d = PresenceMessage::Diff(Diff {
            topic: "t".into(),
            seq: 2,
            count: 0,
            joins: vec![],
            updates: vec![],
            leaves: vec!["u".into()],
            tick_at: 5,
        });
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["type"], "presence.diff");
        assert_eq!(v["leaves"], serde_json::json!(["u"]));
        assert_eq!(v["tick_at"], 5);
        assert_eq!(serde_json::from_value::<PresenceMessage>(v).unwrap(), d);
        let a = serde_json::to_value(PresenceMessage::Ack { id: RequestId::Text("r".into()) }).unwrap();
        assert_eq!(a, serde_json::json!({"type":"presence.ack","id":"r"}));
    }
}

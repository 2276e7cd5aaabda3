//! The cloneable handle the server and matchmaking talk to presence through. Every method
//! is synchronous and never waits: input is validated here, then queued for the task.

use std::sync::Arc;

use rendezvous_protocol::RequestId;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::task::TaskTracker;

use crate::config::PresenceConfig;
use rendezvous_protocol::SettableState;

use crate::entry::{Activity, UserId};
use crate::stats::{PresenceStats, StatsCell};
use crate::wire::{self, codes};
use rendezvous_gateway::Outbox;

/// Why a request was not queued. Requests from a connection have already been answered
/// with an `error` frame on that connection when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The command queue (`presence.command_queue`) is full; the client got `busy`.
    #[error("presence is busy")]
    Busy,
    /// The presence task has stopped (shutdown).
    #[error("presence has stopped")]
    Stopped,
    /// The topic name is not acceptable; the client got `bad_topic`.
    #[error("bad topic: {0}")]
    BadTopic(String),
    /// The status text is not acceptable; the client got `bad_status`.
    #[error("bad status: {0}")]
    BadStatus(String),
}

pub(crate) enum Command<O> {
    Connect(O),
    Disconnect(u64),
    Subscribe {
        conn: O,
        topic: Arc<str>,
        req: Option<RequestId>,
    },
    Unsubscribe {
        conn: O,
        topic: Arc<str>,
        req: Option<RequestId>,
    },
    Set {
        conn: O,
        state: Option<SettableState>,
        status: Option<String>,
        req: Option<RequestId>,
    },
    /// `stamp` orders activity changes that a full queue may have reordered.
    Activity {
        user: UserId,
        activity: Activity,
        stamp: u64,
    },
    Refresh {
        user: UserId,
    },
}

/// Talks to the presence task; cheap to clone.
pub struct PresenceHandle<O> {
    pub(crate) tx: mpsc::Sender<Command<O>>,
    pub(crate) cfg: Arc<PresenceConfig>,
    pub(crate) stats: Arc<StatsCell>,
    pub(crate) tracker: TaskTracker,
    pub(crate) activity_stamps: Arc<std::sync::atomic::AtomicU64>,
}

impl<O> Clone for PresenceHandle<O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            cfg: self.cfg.clone(),
            stats: self.stats.clone(),
            tracker: self.tracker.clone(),
            activity_stamps: self.activity_stamps.clone(),
        }
    }
}

impl<O> std::fmt::Debug for PresenceHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceHandle").field("queued", &(self.tx.max_capacity() - self.tx.capacity())).finish()
    }
}

/// Checks a topic name: 1..=`max_len` bytes, `[a-z0-9]` then `[a-z0-9_.:-]`.
pub fn validate_topic(topic: &str, max_len: usize) -> Result<(), String> {
    if topic.is_empty() || topic.len() > max_len {
        return Err(format!("topic must be 1 to {max_len} bytes"));
    }
    let ok_first = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok_rest = |c: u8| ok_first(c) || matches!(c, b'_' | b'.' | b':' | b'-');
    let bytes = topic.as_bytes();
    if !ok_first(bytes[0]) || !bytes[1..].iter().all(|&c| ok_rest(c)) {
        return Err("topic must start with [a-z0-9] and contain only [a-z0-9_.:-]".into());
    }
    Ok(())
}

/// Checks a status text: at most `max_chars` characters, no control or bidi-override characters.
pub fn validate_status(status: &str, max_chars: usize) -> Result<(), String> {
    if status.chars().count() > max_chars {
        return Err(format!("status must be at most {max_chars} characters"));
    }
    let invisible = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if status.chars().any(|c| c.is_control() || invisible(c)) {
        return Err("status must not contain control or text-direction characters".into());
    }
    Ok(())
}

impl<O: Outbox> PresenceHandle<O> {
    fn queue(&self, cmd: Command<O>, conn: Option<(&O, Option<&RequestId>)>) -> Result<(), PresenceError> {
        match self.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats.busy();
                if let Some((conn, req)) = conn {
                    let _ = conn.send(&wire::error(codes::BUSY, "presence is busy; retry shortly", req));
                }
                Err(PresenceError::Busy)
            }
            Err(TrySendError::Closed(_)) => {
                if let Some((conn, req)) = conn {
                    let _ = conn.send(&wire::error(codes::UNAVAILABLE, "presence is shutting down", req));
                }
                Err(PresenceError::Stopped)
            }
        }
    }

    /// A connection opened: starts loading its user's profile and blocks before it subscribes.
    /// Optional (the first subscribe or set registers the connection too); on `Busy`, nothing to do.
    pub fn connect(&self, conn: &O) -> Result<(), PresenceError> {
        self.queue(Command::Connect(conn.clone()), None)
    }

    /// A connection closed. Never lost: if the queue is full it waits for room in a spawned task
    /// (one per closing connection at most), still behind that connection's earlier commands.
    pub fn disconnect(&self, conn_id: u64) {
        let _ = self.queue_or_wait(Command::Disconnect(conn_id));
    }

    /// `presence.subscribe`: the connection gets `presence.ack` (if `req`), then a
    /// `presence.snapshot`, then `presence.diff`s; its user joins the topic.
    pub fn subscribe(&self, conn: &O, topic: &str, req: Option<RequestId>) -> Result<(), PresenceError> {
        if let Err(e) = validate_topic(topic, self.cfg.topic_max_len) {
            let _ = conn.send(&wire::error(codes::BAD_TOPIC, &e, req.as_ref()));
            return Err(PresenceError::BadTopic(e));
        }
        let cmd = Command::Subscribe { conn: conn.clone(), topic: Arc::from(topic), req: req.clone() };
        self.queue(cmd, Some((conn, req.as_ref())))
    }

    /// `presence.unsubscribe`: the user leaves the topic now unless another of their
    /// connections is subscribed; answered with `presence.ack` or `not_subscribed`.
    pub fn unsubscribe(&self, conn: &O, topic: &str, req: Option<RequestId>) -> Result<(), PresenceError> {
        if let Err(e) = validate_topic(topic, self.cfg.topic_max_len) {
            let _ = conn.send(&wire::error(codes::BAD_TOPIC, &e, req.as_ref()));
            return Err(PresenceError::BadTopic(e));
        }
        let cmd = Command::Unsubscribe { conn: conn.clone(), topic: Arc::from(topic), req: req.clone() };
        self.queue(cmd, Some((conn, req.as_ref())))
    }

    /// `presence.set`: `state` and/or `status` (`Some("")` clears the status) for the whole user.
    pub fn set_state(
        &self,
        conn: &O,
        state: Option<SettableState>,
        status: Option<String>,
        req: Option<RequestId>,
    ) -> Result<(), PresenceError> {
        if let Some(s) = &status {
            if let Err(e) = validate_status(s, self.cfg.status_max_chars) {
                let _ = conn.send(&wire::error(codes::BAD_STATUS, &e, req.as_ref()));
                return Err(PresenceError::BadStatus(e));
            }
        }
        let cmd = Command::Set { conn: conn.clone(), state, status, req: req.clone() };
        self.queue(cmd, Some((conn, req.as_ref())))
    }

    /// For matchmaking: the user is queued, in a call, or neither. Applies to users connected
    /// to this instance (other instances learn it through the bus).
    ///
    /// Never lost: like [`PresenceHandle::disconnect`], a full queue makes it wait for room
    /// in a spawned task, so a burst (a mass disconnect ending every call) still shows.
    pub fn set_activity(&self, user_id: &str, activity: Activity) -> Result<(), PresenceError> {
        let stamp = self.activity_stamps.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.queue_or_wait(Command::Activity { user: Arc::from(user_id), activity, stamp })
    }

    /// Queues `cmd`, or waits for room in a spawned task when the queue is full.
    fn queue_or_wait(&self, cmd: Command<O>) -> Result<(), PresenceError> {
        match self.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(PresenceError::Stopped),
            Err(TrySendError::Full(cmd)) => {
                let tx = self.tx.clone();
                self.tracker.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
                Ok(())
            }
        }
    }

    /// Re-reads a connected user's profile and blocks; call after a profile edit or a block.
    pub fn refresh(&self, user_id: &str) -> Result<(), PresenceError> {
        self.queue(Command::Refresh { user: Arc::from(user_id) }, None)
    }

    /// Counters for `/health` and `/metrics`.
    pub fn stats(&self) -> PresenceStats {
        self.stats.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in ["lobby", "lobby:eu-west", "interest.music_2", "9"] {
            validate_topic(ok, 64).unwrap();
        }
        for bad in ["", "Lobby", "-x", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(validate_topic(bad, 64).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_texts() {
        validate_status("on a break ☕", 140).unwrap();
        validate_status(&"é".repeat(140), 140).unwrap();
        assert!(validate_status(&"é".repeat(141), 140).is_err());
        assert!(validate_status("a\nb", 140).is_err());
        assert!(validate_status("a\u{202E}b", 140).is_err());
        assert!(validate_status("\u{7}", 140).is_err());
    }
}

//! The handle other parts of the server use to talk to one connection.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rendezvous_protocol::CloseCode;
use tokio::sync::Notify;

use crate::handler::Identity;
use crate::outbound::{Outbound, SharedMessage};
use crate::ws::deflate::DeflateParams;

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is closing or closed.
    #[error("connection closed")]
    Closed,
    /// The outbound queue overflowed; the connection is being closed with 1008.
    #[error("slow consumer")]
    SlowConsumer,
}

/// A close the connection task should perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseRequest {
    pub(crate) code: CloseCode,
    pub(crate) reason: Cow<'static, str>,
}

pub(crate) struct Queue {
    items: VecDeque<Outbound>,
    bytes: usize,
    close: Option<CloseRequest>,
}

/// Shared state of one connection; the connection task owns the socket.
pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) user_id: Arc<str>,
    pub(crate) session_id: Option<Arc<str>>,
    pub(crate) peer: IpAddr,
    pub(crate) deflate: Option<DeflateParams>,
    queue: Mutex<Queue>,
    pub(crate) wake: Notify,
    /// Milliseconds since the gateway started at which the peer last sent anything.
    pub(crate) last_seen_ms: AtomicU64,
    limits: (u32, u32),
}

/// A cheap, cloneable handle to one live connection.
#[derive(Clone)]
pub struct Connection(pub(crate) Arc<ConnShared>);

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.0.id).field("user_id", &self.0.user_id).finish()
    }
}

impl Connection {
    pub(crate) fn new(
        id: u64,
        identity: Identity,
        peer: IpAddr,
        deflate: Option<DeflateParams>,
        max_messages: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Self {
        Self(Arc::new(ConnShared {
            id,
            user_id: identity.user_id,
            session_id: identity.session_id,
            peer,
            deflate,
            queue: Mutex::new(Queue { items: VecDeque::new(), bytes: 0, close: None }),
            wake: Notify::new(),
            last_seen_ms: AtomicU64::new(now_ms),
            limits: (max_messages.min(u32::MAX as usize) as u32, max_bytes.min(u32::MAX as usize) as u32),
        }))
    }

    /// This connection's id, unique within the instance.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The authenticated user.
    pub fn user_id(&self) -> &str {
        &self.0.user_id
    }

    /// The session behind the connection's token, if the authenticator named one.
    pub fn session_id(&self) -> Option<&str> {
        self.0.session_id.as_deref()
    }

    /// The client address (after trusted `X-Forwarded-For`).
    pub fn peer(&self) -> IpAddr {
        self.0.peer
    }

    /// Whether permessage-deflate was negotiated.
    pub fn compressed(&self) -> bool {
        self.0.deflate.is_some()
    }

    /// Queues a message. Never blocks; on overflow the connection is closed with 1008.
    pub fn send(&self, msg: &SharedMessage) -> Result<(), SendError> {
        self.push(Outbound::Message(msg.clone()))
    }

    /// Queues a text message meant for this connection only.
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), SendError> {
        self.send(&SharedMessage::text(text))
    }

    pub(crate) fn push(&self, item: Outbound) -> Result<(), SendError> {
        let cost = item.cost();
        let mut q = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.close.is_some() {
            return Err(SendError::Closed);
        }
        let (max_messages, max_bytes) = self.0.limits;
        if q.items.len() >= max_messages as usize || q.bytes + cost > max_bytes as usize {
            // Nothing queued will be delivered once we close, so free it now.
            q.items = VecDeque::new();
            q.bytes = 0;
            q.close = Some(CloseRequest { code: CloseCode::PolicyViolation, reason: Cow::Borrowed("slow consumer") });
            drop(q);
            self.0.wake.notify_one();
            return Err(SendError::SlowConsumer);
        }
        q.bytes += cost;
        q.items.push_back(item);
        drop(q);
        self.0.wake.notify_one();
        Ok(())
    }

    /// Asks the connection to close with `code` after what is already queued. The first close wins.
    pub fn close(&self, code: CloseCode, reason: impl Into<Cow<'static, str>>) {
        let mut q = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.close.is_none() {
            q.close = Some(CloseRequest { code, reason: reason.into() });
        }
        drop(q);
        self.0.wake.notify_one();
    }

    /// Takes everything queued, and the close request if any.
    pub(crate) fn take(&self) -> (VecDeque<Outbound>, Option<CloseRequest>) {
        let mut q = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.bytes = 0;
        (std::mem::take(&mut q.items), q.close.clone())
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.0.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn last_seen_ms(&self) -> u64 {
        self.0.last_seen_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(max_messages: usize, max_bytes: usize) -> Connection {
        Connection::new(1, Identity::user("u"), IpAddr::from([127, 0, 0, 1]), None, max_messages, max_bytes, 0)
    }

    #[test]
    fn overflow_by_count_closes_with_1008_and_frees_the_queue() {
        let c = conn(2, 1000);
        c.send_text("a").unwrap();
        c.send_text("b").unwrap();
        assert_eq!(c.send_text("c"), Err(SendError::SlowConsumer));
        let (items, close) = c.take();
        assert!(items.is_empty());
        assert_eq!(close.unwrap().code, CloseCode::PolicyViolation);
        assert_eq!(c.send_text("d"), Err(SendError::Closed));
    }

    #[test]
    fn overflow_by_bytes() {
        let c = conn(100, 10);
        c.send_text("12345").unwrap();
        assert_eq!(c.send_text("123456"), Err(SendError::SlowConsumer));
    }

    #[test]
    fn taking_resets_the_byte_count() {
        let c = conn(100, 10);
        c.send_text("1234567890").unwrap();
        let _ = c.take();
        c.send_text("1234567890").unwrap();
    }

    #[test]
    fn first_close_wins() {
        let c = conn(10, 10);
        c.close(CloseCode::Replaced, "x");
        c.close(CloseCode::GoingAway, "y");
        assert_eq!(c.take().1.unwrap().code, CloseCode::Replaced);
    }
}

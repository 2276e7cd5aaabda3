//! Test doubles for domain crates (feature `testing`): an [`Outbox`] backed by a channel,
//! so presence and matchmaking logic can be tested without sockets.

use std::borrow::Cow;
use std::sync::Arc;

use rendezvous_protocol::CloseCode;
use tokio::sync::mpsc;

use crate::conn::SendError;
use crate::handler::Outbox;
use crate::outbound::SharedMessage;

/// What a [`ChannelOutbox`] was given.
#[derive(Debug, Clone)]
pub enum Sent {
    /// A message, exactly as shared with other recipients.
    Message(SharedMessage),
    /// A close request.
    Close(CloseCode, String),
}

impl Sent {
    /// The message parsed as JSON; panics on a close or non-JSON payload (tests only).
    pub fn json(&self) -> serde_json::Value {
        match self {
            Sent::Message(m) => serde_json::from_str(m.as_text().expect("a text message")).expect("JSON"),
            Sent::Close(code, reason) => panic!("expected a message, got close {code} {reason}"),
        }
    }
}

/// An outbox that records everything sent to it. Clones share the channel.
#[derive(Debug, Clone)]
pub struct ChannelOutbox {
    id: u64,
    user_id: Arc<str>,
    tx: mpsc::UnboundedSender<Sent>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// The receiving end of a [`ChannelOutbox`].
#[derive(Debug)]
pub struct OutboxRx {
    rx: mpsc::UnboundedReceiver<Sent>,
}

impl ChannelOutbox {
    /// An outbox for connection `id` of `user_id`, and its receiver.
    pub fn new(id: u64, user_id: &str) -> (Self, OutboxRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (Self { id, user_id: Arc::from(user_id), tx, closed }, OutboxRx { rx })
    }
}

impl Outbox for ChannelOutbox {
    fn id(&self) -> u64 {
        self.id
    }

    fn user_id(&self) -> &str {
        &self.user_id
    }

    fn send(&self, msg: &SharedMessage) -> Result<(), SendError> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        self.tx.send(Sent::Message(msg.clone())).map_err(|_| SendError::Closed)
    }

    fn close(&self, code: CloseCode, reason: Cow<'static, str>) {
        if !self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let _ = self.tx.send(Sent::Close(code, reason.into_owned()));
        }
    }
}

impl OutboxRx {
    /// The next item if one is queued.
    pub fn try_next(&mut self) -> Option<Sent> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next item; `None` once every sender is gone.
    pub async fn next(&mut self) -> Option<Sent> {
        self.rx.recv().await
    }

    /// Everything queued now.
    pub fn drain(&mut self) -> Vec<Sent> {
        std::iter::from_fn(|| self.try_next()).collect()
    }
}

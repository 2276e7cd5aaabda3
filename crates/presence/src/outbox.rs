//! Stand-in for `rendezvous_gateway::Outbox` until the gateway seam lands; identical shape.

use std::borrow::Cow;

use rendezvous_gateway::{SendError, SharedMessage};
use rendezvous_protocol::CloseCode;

/// Where messages for one connection go; never blocks.
pub trait Outbox: Clone + Send + Sync + 'static {
    /// The connection id, unique within the instance.
    fn id(&self) -> u64;
    /// The authenticated user.
    fn user_id(&self) -> &str;
    /// Queues a message; on a full queue the connection is closed as a slow consumer.
    fn send(&self, msg: &SharedMessage) -> Result<(), SendError>;
    /// Asks the connection to close.
    fn close(&self, code: CloseCode, reason: Cow<'static, str>);
}

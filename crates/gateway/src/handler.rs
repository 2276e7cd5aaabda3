//! The seams through which the server plugs its domain into the gateway: who a
//! connection is ([`Authenticator`]), what it says ([`Handler`]), and where replies go
//! ([`Outbox`]).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use rendezvous_protocol::CloseCode;

use crate::conn::{Connection, SendError};
use crate::gateway::{GatewayHandle, Shared};
use crate::outbound::SharedMessage;
use crate::ws::reader::Message;

/// Who a connection belongs to, as established by an [`Authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id; the per-user cap counts connections by it.
    pub user_id: Arc<str>,
    /// The session the token belongs to, so a revocation can find its connections.
    pub session_id: Option<Arc<str>>,
}

impl Identity {
    /// An identity without a session (development tokens, anonymous echo).
    pub fn user(user_id: impl Into<Arc<str>>) -> Self {
        Self { user_id: user_id.into(), session_id: None }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No token was presented (HTTP 401).
    #[error("missing session token")]
    Missing,
    /// The token is unknown, expired or revoked (HTTP 401).
    #[error("invalid session token")]
    Invalid,
    /// The token could not be checked right now, e.g. the database is down (HTTP 503).
    #[error("authentication unavailable")]
    Unavailable(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl AuthError {
    /// `Unavailable` with its cause.
    pub fn unavailable(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        AuthError::Unavailable(Arc::new(cause))
    }
}

/// Resolves the session token of an upgrade request to an [`Identity`].
pub trait Authenticator: Send + Sync + 'static {
    /// `token` is the `?token=` query parameter or the `Authorization: Bearer` value.
    fn authenticate(&self, token: Option<&str>) -> impl Future<Output = Result<Identity, AuthError>> + Send;
}

/// Where messages for one client go: a live [`Connection`], or a test double
/// (`testing::ChannelOutbox`) so domain logic is testable without sockets.
///
/// Sending never blocks: an outbox that cannot keep up is closed (as a slow
/// consumer) and reports it, so one slow client never stalls a sender.
pub trait Outbox: Clone + Send + Sync + 'static {
    /// The connection's id, unique within the instance.
    fn id(&self) -> u64;
    /// The authenticated user.
    fn user_id(&self) -> &str;
    /// Queues `msg`; the same `SharedMessage` may go to any number of outboxes.
    fn send(&self, msg: &SharedMessage) -> Result<(), SendError>;
    /// Closes after what is already queued; the first close wins.
    fn close(&self, code: CloseCode, reason: Cow<'static, str>);
}

impl Outbox for Connection {
    fn id(&self) -> u64 {
        Connection::id(self)
    }

    fn user_id(&self) -> &str {
        Connection::user_id(self)
    }

    fn send(&self, msg: &SharedMessage) -> Result<(), SendError> {
        Connection::send(self, msg)
    }

    fn close(&self, code: CloseCode, reason: Cow<'static, str>) {
        Connection::close(self, code, reason)
    }
}

/// What every [`Handler`] call gets besides the connection: the gateway it runs in.
pub struct Context<'a> {
    pub(crate) shared: &'a Arc<Shared>,
}

impl Context<'_> {
    /// A handle on the gateway (stats, lookups of other connections, drain state).
    pub fn gateway(&self) -> GatewayHandle {
        GatewayHandle(self.shared.clone())
    }

    /// True once the gateway is draining.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The domain logic behind the gateway.
///
/// Calls for one connection never overlap and run inside that connection's read/write
/// loop, so they are synchronous on purpose: they decode, then hand work that waits on
/// I/O or on other users to domain tasks (through bounded channels) which reply through
/// the connection's [`Outbox`]. Nothing a handler does can stall a connection's writes.
pub trait Handler: Send + Sync + 'static {
    /// Per-connection state: created by `on_open`, given to every call, dropped by `on_close`.
    type State: Send + 'static;
    /// The connection is registered and may be sent to.
    fn on_open(&self, cx: &Context<'_>, conn: &Connection) -> Self::State;
    /// A data message passed the rate limit.
    fn on_message(&self, cx: &Context<'_>, conn: &Connection, state: &mut Self::State, msg: Message);
    /// The connection is gone and unregistered; nothing sent to it will arrive.
    fn on_close(&self, cx: &Context<'_>, conn: &Connection, state: Self::State);
}

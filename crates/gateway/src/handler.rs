//! The two seams through which the server plugs its domain into the gateway.

use std::future::Future;
use std::sync::Arc;

use crate::conn::Connection;
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented (HTTP 401).
    #[error("missing session token")]
    Missing,
    /// The token is unknown, expired or revoked (HTTP 401).
    #[error("invalid session token")]
    Invalid,
    /// The token could not be checked right now, e.g. the database is down (HTTP 503).
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// Resolves the session token of an upgrade request to an [`Identity`].
pub trait Authenticator: Send + Sync + 'static {
    /// `token` is the `?token=` query parameter or the `Authorization: Bearer` value.
    fn authenticate(&self, token: Option<&str>) -> impl Future<Output = Result<Identity, AuthError>> + Send;
}

/// The domain logic behind the gateway. Calls for one connection never overlap.
pub trait Handler: Send + Sync + 'static {
    /// The connection is registered and may be sent to.
    fn on_open(&self, conn: &Connection) -> impl Future<Output = ()> + Send;
    /// A data message passed the rate limit.
    fn on_message(&self, conn: &Connection, msg: Message) -> impl Future<Output = ()> + Send;
    /// The connection is gone and unregistered; nothing sent to it will arrive.
    fn on_close(&self, conn: &Connection) -> impl Future<Output = ()> + Send;
}

use std::fmt;

/// WebSocket close codes the server sends, with the reason text that goes with them.
///
/// 1000–1011 are RFC 6455 codes; 4000–4999 are Rendezvous application codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// Orderly close requested by either side.
    Normal = 1000,
    /// The server is draining (deploy or scale-in); reconnect elsewhere.
    GoingAway = 1001,
    /// The peer broke RFC 6455 framing rules.
    ProtocolError = 1002,
    /// A frame type the server does not accept (unused by the server today).
    Unsupported = 1003,
    /// A text message that is not valid UTF-8, or a compressed one that does not inflate.
    InvalidPayload = 1007,
    /// Policy violation: the connection could not keep up with its outbound queue.
    PolicyViolation = 1008,
    /// A message larger than the configured maximum.
    MessageTooBig = 1009,
    /// An unexpected server-side failure.
    InternalError = 1011,
    /// The session behind the connection was revoked.
    SessionRevoked = 4001,
    /// The peer did not answer heartbeats in time.
    HeartbeatTimeout = 4002,
    /// Sustained message-rate abuse.
    RateLimited = 4008,
    /// The user already has the maximum number of connections (reject-new policy).
    TooManyConnections = 4009,
    /// A newer connection of the same user replaced this one (close-oldest policy).
    Replaced = 4010,
}

impl CloseCode {
    /// The numeric code as sent in a close frame.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The short reason sent with the code when nothing more specific is known.
    pub fn default_reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::GoingAway => "server draining",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::Unsupported => "unsupported data",
            CloseCode::InvalidPayload => "invalid payload",
            CloseCode::PolicyViolation => "slow consumer",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "internal error",
            CloseCode::SessionRevoked => "session revoked",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::RateLimited => "rate limit exceeded",
            CloseCode::TooManyConnections => "too many connections for this user",
            CloseCode::Replaced => "replaced by a newer connection",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_u16(), self.default_reason())
    }
}

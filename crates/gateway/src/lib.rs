//! The Rendezvous gateway: WebSocket connections with permessage-deflate, limits,
//! heartbeats, backpressure and graceful drain. It knows frames and connections,
//! not the domain: the server plugs in through [`Authenticator`] and [`Handler`], and
//! domain crates send through [`Outbox`] (a [`Connection`], or `testing::ChannelOutbox`).
//!
//! # Layout
//! - [`ws`]: the RFC 6455 / RFC 7692 pieces, sans I/O (frames, reader, deflate, handshake).
//! - [`Gateway`]: builds from [`GatewayConfig`] (via [`GatewayBuilder`] when domain tasks
//!   need a [`GatewayHandle`] before the handler exists) and serves with [`Gateway::run`].
//! - [`Connection`]: the handle to one connection; [`SharedMessage`] is encoded once for many.
//! - [`GatewayHandle`]: stats, lookups and broadcasts for the rest of the server.
//! - Internals: `upgrade` (admission checks), `session` (the per-connection loop),
//!   `registry` (caps), `limits` (rate limits), `listener` (accept loop, drain).

mod config;
mod conn;
mod error;
mod gateway;
mod handler;
mod limits;
mod listener;
mod metrics;
mod outbound;
mod registry;
mod reply;
mod session;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
mod upgrade;
pub mod ws;

pub use config::{
    CompressionConfig, ConfigError, ConnectRateConfig, DrainConfig, GatewayConfig, HeartbeatConfig, MessageRateConfig,
    OutboundQueueConfig, PerUserPolicy, TlsConfig,
};
pub use conn::{Connection, SendError};
pub use error::GatewayError;
pub use gateway::{AdmissionCheck, ConnectionStats, Gateway, GatewayBuilder, GatewayHandle};
pub use handler::{AuthError, Authenticator, Context, Handler, Identity, Outbox};
pub use limits::TokioClock;
pub use metrics::GatewayCounters;
pub use outbound::SharedMessage;
pub use upgrade::client_ip;
pub use ws::reader::Message;

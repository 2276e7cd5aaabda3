//! The Rendezvous gateway: WebSocket connections with permessage-deflate, limits,
//! heartbeats, backpressure and graceful drain. It knows frames and connections,
//! not the domain: the server plugs in through [`Authenticator`] and [`Handler`].
//!
//! # Layout
//! - [`ws`]: the RFC 6455 / RFC 7692 pieces, sans I/O (frames, reader, deflate, handshake).
//! - [`Gateway`]: builds from [`GatewayConfig`] and serves a listener with [`Gateway::run`].
//! - [`Connection`]: the handle to one connection; [`SharedMessage`] is encoded once for many.
//! - [`GatewayHandle`]: stats, lookups and broadcasts for the rest of the server.
//! - Internals: `upgrade` (admission checks), `session` (the per-connection loop),
//!   `registry` (caps), `limits` (rate limits), `pending` (the cap on sockets not yet
//!   connections), `listener` (accept loop, drain).

mod config;
mod conn;
mod error;
mod gateway;
mod handler;
mod limits;
mod listener;
mod metrics;
mod outbound;
mod pending;
mod registry;
mod reply;
mod session;
mod tls;
mod upgrade;
pub mod ws;

pub use config::{
    CompressionConfig, ConfigError, ConnectRateConfig, DrainConfig, GatewayConfig, HeartbeatConfig, MessageRateConfig,
    OutboundQueueConfig, PendingConfig, PerUserPolicy, TlsConfig,
};
pub use conn::{Connection, SendError};
pub use error::GatewayError;
pub use gateway::{AdmissionCheck, ConnectionStats, Gateway, GatewayHandle};
pub use handler::{AuthError, Authenticator, Handler, Identity};
pub use limits::TokioClock;
pub use metrics::GatewayCounters;
pub use outbound::SharedMessage;
pub use ws::reader::Message;

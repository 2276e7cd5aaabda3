//! The Rendezvous server: configuration, wiring and the binary's building blocks.
//!
//! # Layout
//! - [`Config`]: the configuration tree and its loading rules.
//! - [`Server`]: builds the gateway with the right handler and serves a listener.
//! - `handlers`: the protocol handler and the echo handler.
//! - `auth`: development and anonymous authenticators (until the store lands).
//! - `http`: `/health`, `/ready`, `/metrics`.

mod auth;
mod config;
mod handlers;
mod http;
mod memory;

use std::sync::Arc;
use std::time::Instant;

use rendezvous_gateway::{Authenticator, Gateway, GatewayHandle, Handler};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{AnonymousAuthenticator, DevAuthenticator};
pub use config::{Config, ConfigError, DEFAULT_TOML, LogFormat};
pub use handlers::{EchoHandler, ProtocolHandler};
pub use http::{Health, HttpState};

/// What the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The Rendezvous protocol on the configured paths.
    Serve,
    /// An unauthenticated echo server on `/` and `/ws` for conformance runs.
    Echo,
}

/// A configured server, ready to serve a listener.
#[derive(Debug)]
pub struct Server {
    config: Config,
    mode: Mode,
    instance: Arc<str>,
}

impl Server {
    /// Applies the mode's adjustments to `config` and names the instance.
    pub fn new(mut config: Config, mode: Mode) -> Self {
        if mode == Mode::Echo {
            // Autobahn sends messages up to 16 MiB and bursts of thousands.
            let g = &mut config.gateway;
            g.websocket_paths = vec!["/".into(), "/ws".into()];
            g.max_message_bytes = g.max_message_bytes.max(32 * 1024 * 1024);
            g.outbound_queue.max_bytes = g.outbound_queue.max_bytes.max(64 * 1024 * 1024);
            g.outbound_queue.max_messages = g.outbound_queue.max_messages.max(4096);
            g.message_rate.per_second = 0;
            g.connect_rate.per_second = 0;
        }
        let instance = Arc::from(instance_name(&config.server.instance_id));
        Self {
            config,
            mode,
            instance,
        }
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The configuration in force (after mode adjustments).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves `listener` until `shutdown` is cancelled, then drains.
    /// `on_ready` receives the gateway handle once serving starts.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        on_ready: impl FnOnce(GatewayHandle) + Send,
    ) -> anyhow::Result<()> {
        match self.mode {
            Mode::Serve => {
                let handler = ProtocolHandler::new(
                    self.instance.to_string(),
                    self.config.gateway.heartbeat.interval_ms,
                );
                self.run_with(DevAuthenticator, handler, listener, shutdown, on_ready)
                    .await
            }
            Mode::Echo => {
                self.run_with(
                    AnonymousAuthenticator::default(),
                    EchoHandler,
                    listener,
                    shutdown,
                    on_ready,
                )
                .await
            }
        }
    }

    async fn run_with<A: Authenticator, H: Handler>(
        self,
        auth: A,
        handler: H,
        listener: TcpListener,
        shutdown: CancellationToken,
        on_ready: impl FnOnce(GatewayHandle) + Send,
    ) -> anyhow::Result<()> {
        let gateway = Gateway::new(self.config.gateway.clone(), auth, handler)?;
        let handle = gateway.handle();
        let router = http::router(HttpState {
            gateway: handle.clone(),
            instance: self.instance.clone(),
            started: Instant::now(),
        });
        tracing::info!(addr = %listener.local_addr()?, instance = %self.instance, mode = ?self.mode, "serving");
        on_ready(handle);
        gateway.run(listener, router, shutdown).await?;
        tracing::info!("drained; exiting");
        Ok(())
    }
}

fn instance_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rendezvous".into());
    format!("{host}-{:04x}", rand::random::<u16>())
}

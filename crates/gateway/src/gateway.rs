//! The gateway value: configuration, shared state and the handle the server reads stats from.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;
use tokio_util::task::TaskTracker;

use crate::config::GatewayConfig;
use crate::conn::Connection;
use crate::error::GatewayError;
use crate::handler::{Authenticator, Handler};
use crate::limits::ConnectLimiter;
use crate::metrics::GatewayCounters;
use crate::outbound::{FrameEncoder, SharedMessage};
use crate::registry::Registry;
use crate::ws::deflate::DeflatePool;

/// A refusal the server can impose on new connections (e.g. memory pressure).
pub type AdmissionCheck = Arc<dyn Fn() -> Option<&'static str> + Send + Sync>;

/// State shared by the gateway's tasks and its [`GatewayHandle`]s.
pub(crate) struct Shared {
    pub(crate) cfg: GatewayConfig,
    pub(crate) registry: Registry,
    pub(crate) counters: GatewayCounters,
    pub(crate) encoder: FrameEncoder,
    pub(crate) connect_limiter: ConnectLimiter,
    pub(crate) next_id: AtomicU64,
    pub(crate) started: tokio::time::Instant,
    pub(crate) draining: AtomicBool,
    pub(crate) admission: Option<AdmissionCheck>,
    pub(crate) tracker: TaskTracker,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Shared {
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn new_connection(
        &self,
        identity: crate::handler::Identity,
        peer: std::net::IpAddr,
        deflate: Option<crate::ws::deflate::DeflateParams>,
    ) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        Connection::new(
            id,
            identity,
            peer,
            deflate,
            self.cfg.outbound_queue.max_messages,
            self.cfg.outbound_queue.max_bytes,
            self.now_ms(),
        )
    }
}

/// The WebSocket gateway: owns the limits and drives connections for a [`Handler`].
pub struct Gateway<A, H> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) auth: Arc<A>,
    pub(crate) handler: Arc<H>,
}

/// A gateway whose state exists but which has no handler yet: domain tasks built
/// before the handler take its [`GatewayHandle`].
pub struct GatewayBuilder {
    shared: Arc<Shared>,
}

impl GatewayBuilder {
    /// A handle on the gateway-to-be (valid once it runs, and after).
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle(self.shared.clone())
    }

    /// The gateway, serving `handler` for connections authenticated by `auth`.
    pub fn build<A: Authenticator, H: Handler>(self, auth: A, handler: H) -> Gateway<A, H> {
        Gateway { shared: self.shared, auth: Arc::new(auth), handler: Arc::new(handler) }
    }
}

impl Gateway<(), ()> {
    /// Validates `cfg` (loading TLS material if configured); `admission` may refuse new
    /// connections with 503 (e.g. memory pressure).
    pub fn builder(cfg: GatewayConfig, admission: Option<AdmissionCheck>) -> Result<GatewayBuilder, GatewayError> {
        cfg.validate()?;
        let tls = cfg.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let shared = Arc::new(Shared {
            encoder: FrameEncoder {
                pool: DeflatePool::new(cfg.compression.level),
                threshold: cfg.compression.threshold_bytes,
            },
            connect_limiter: ConnectLimiter::new(&cfg.connect_rate),
            registry: Registry::default(),
            counters: GatewayCounters::default(),
            next_id: AtomicU64::new(0),
            started: tokio::time::Instant::now(),
            draining: AtomicBool::new(false),
            admission,
            tracker: TaskTracker::new(),
            tls,
            cfg,
        });
        Ok(GatewayBuilder { shared })
    }
}

impl<A: Authenticator, H: Handler> Gateway<A, H> {
    /// Validates `cfg` (loading TLS material if configured) and builds the gateway.
    pub fn new(cfg: GatewayConfig, auth: A, handler: H) -> Result<Self, GatewayError> {
        Ok(Gateway::builder(cfg, None)?.build(auth, handler))
    }

    /// A handle for stats, lookups and broadcasts.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle(self.shared.clone())
    }
}

/// A cloneable view of a running gateway.
#[derive(Clone)]
pub struct GatewayHandle(pub(crate) Arc<Shared>);

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle").finish_non_exhaustive()
    }
}

/// Connection figures for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionStats {
    /// Distinct users connected.
    pub users: usize,
    /// Open WebSocket connections.
    pub total: usize,
    /// `total / users` (0 when nobody is connected).
    pub average_per_user: f64,
    /// The global cap.
    pub limit: usize,
    /// `total / limit`.
    pub utilization: f64,
    /// The per-user cap.
    pub per_user_limit: usize,
    /// Upgrades in progress (slots reserved but not yet registered).
    pub upgrading: usize,
    /// Client IPs tracked by the attempt limiter.
    pub rate_limited_ips_tracked: usize,
}

impl GatewayHandle {
    /// Current connection figures.
    pub fn connection_stats(&self) -> ConnectionStats {
        let r = &self.0.registry;
        let total = r.connections();
        let users = r.users();
        let limit = self.0.cfg.max_connections;
        ConnectionStats {
            users,
            total,
            average_per_user: if users == 0 { 0.0 } else { total as f64 / users as f64 },
            limit,
            utilization: total as f64 / limit as f64,
            per_user_limit: self.0.cfg.max_connections_per_user,
            upgrading: r.reserved().saturating_sub(total),
            rate_limited_ips_tracked: self.0.connect_limiter.tracked(),
        }
    }

    /// Monotonic counters.
    pub fn counters(&self) -> &GatewayCounters {
        &self.0.counters
    }

    /// True once draining has started.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }

    /// The live connections of one user.
    pub fn connections_of(&self, user_id: &str) -> Vec<Connection> {
        self.0.registry.of_user(user_id)
    }

    /// Calls `f` on every open connection (sweeps such as activity recording; not per message).
    pub fn for_each_connection(&self, f: impl FnMut(&Connection)) {
        self.0.registry.for_each(f);
    }

    /// How long ago `conn` last sent anything (a frame of any kind).
    pub fn idle_for(&self, conn: &Connection) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.now_ms().saturating_sub(conn.last_seen_ms()))
    }

    /// Queues `msg` on every open connection; returns how many accepted it.
    pub fn broadcast(&self, msg: &SharedMessage) -> usize {
        let mut n = 0;
        self.0.registry.for_each(|c| n += usize::from(c.send(msg).is_ok()));
        n
    }
}

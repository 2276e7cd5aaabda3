//! The Rendezvous server: configuration, wiring and the binary's building blocks.
//!
//! # Layout
//! - [`Config`]: the configuration tree and its loading rules.
//! - [`Server`]: opens the store, builds the gateway with the right handler and
//!   serves a listener until drained.
//! - [`Shutdown`]: the one root token and its children, stopped in order (`shutdown`).
//! - `descriptors`: the open-file budget checked at start.
//! - `handlers`: the protocol handler (dispatching to presence and matchmaking) and the echo handler.
//! - `directory`: what presence and matchmaking read and write in the store.
//! - `background`: activity recording, revocation closes, presence refreshes.
//! - [`LocalCluster`]: what several instances in one process share (tests).
//! - `connections`: `gateway.max_connections_per_user` across instances (a
//!   [`ConnectionRegistry`] in-process or in Redis; the oldest connection anywhere gets 4010).
//! - `auth`: the store authenticator (plus development tokens) and anonymous echo.
//! - `api`: the app backend's HTTP API; `http`: `/health`, `/ready`, `/metrics`.
//! - `guard`: the memory guard.
//! - `web`: the browser client library and the demo app, embedded.

mod api;
mod auth;
mod background;
mod config;
mod connections;
mod descriptors;
mod directory;
mod guard;
mod handlers;
mod http;
mod memory;
mod shutdown;
mod web;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use directory::{PresenceActivity, StoreDirectory};
use rendezvous_bus::Bus;
use rendezvous_gateway::{AdmissionCheck, Authenticator, Connection, Gateway, GatewayHandle, Handler, PerUserPolicy};
use rendezvous_matchmaker::{
    InProcessLocator, InProcessQueue, InstanceRegistry, Locator, MatchQueue, Matchmaker, MatchmakerDeps, RedisState,
};
use rendezvous_presence::Presence;
use rendezvous_store::Store;
use tokio::net::TcpListener;
use tracing::warn;

pub use auth::{AnonymousAuthenticator, DevAuthenticator, StoreAuthenticator};
pub use connections::{
    ConnectionRegistry, InProcessConnections, Recorded, RedisConnections, RegistryError, member, parse_member,
};
pub use config::{
    ApiConfig, AuthConfig, Config, ConfigError, DEFAULT_TOML, DemoConfig, LogFormat, MemoryConfig, ServerConfig,
    ServerMode, ShutdownConfig,
};
pub use descriptors::{check_descriptor_budget, descriptors_needed, ensure_descriptor_budget};
pub use guard::{Level, MemoryGuard};
pub use handlers::{EchoHandler, ProtocolHandler};
pub use http::{Health, HttpParts, HttpState};
pub use shutdown::Shutdown;

use shutdown::Phases;

/// What the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The Rendezvous protocol on the configured paths, with the store and the API.
    Serve,
    /// An unauthenticated echo server on `/` and `/ws` for conformance runs (no store).
    Echo,
}

/// Handles a running server hands to its caller (tests use them; the binary ignores them).
#[derive(Clone, Debug)]
pub struct Running {
    /// The gateway.
    pub gateway: GatewayHandle,
    /// The store (absent in echo mode).
    pub store: Option<Arc<Store>>,
}

/// The state several instances in one process share (tests): the in-process bus and
/// matchmaking's queue and user registry. Redis plays this part across processes.
#[derive(Clone)]
pub struct LocalCluster {
    bus: Bus,
    queue: Arc<dyn MatchQueue>,
    locator: Arc<dyn Locator>,
    connections: Arc<dyn ConnectionRegistry>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster").finish_non_exhaustive()
    }
}

impl LocalCluster {
    /// A fresh in-process cluster.
    pub fn new(bus: &rendezvous_bus::BusConfig) -> Self {
        Self {
            bus: Bus::in_process("cluster", bus),
            queue: Arc::new(InProcessQueue::new()),
            locator: Arc::new(InProcessLocator::new()),
            connections: Arc::new(InProcessConnections::default()),
        }
    }

    /// The connection registry its instances share (for the per-user cap across them).
    pub fn connections(&self) -> Arc<dyn ConnectionRegistry> {
        self.connections.clone()
    }
}

/// A configured server, ready to serve a listener.
#[derive(Debug)]
pub struct Server {
    config: Config,
    mode: Mode,
    instance: Arc<str>,
    cluster: Option<LocalCluster>,
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
        Self { config, mode, instance, cluster: None }
    }

    /// Joins an in-process cluster instead of standing alone (several instances in one test).
    pub fn in_cluster(mut self, cluster: LocalCluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Serves `listener` until `shutdown` begins, then stops in order, each step bounded:
    /// 1. the gateway stops admitting and drains its connections (`gateway.drain`);
    /// 2. domain tasks stop (`server.shutdown.tasks_ms`);
    /// 3. store tasks stop, the write-behind buffer flushed last (`server.shutdown.flush_ms`);
    /// 4. the database pool closes (`server.shutdown.pool_close_ms`).
    ///
    /// `on_ready` receives handles once serving starts.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: Shutdown,
        on_ready: impl FnOnce(Running) + Send,
    ) -> anyhow::Result<()> {
        let result = match self.mode {
            Mode::Serve => self.serve(listener, &shutdown, on_ready).await,
            Mode::Echo => self.echo(listener, &shutdown, on_ready).await,
        };
        shutdown.finish();
        tracing::info!("stopped");
        result
    }

    async fn echo(
        self,
        listener: TcpListener,
        shutdown: &Shutdown,
        on_ready: impl FnOnce(Running) + Send,
    ) -> anyhow::Result<()> {
        let http = HttpParts {
            instance: self.instance.clone(),
            store: None,
            guard: None,
            bus: None,
            presence: None,
            matchmaker: None,
        };
        let gateway = Gateway::new(self.config.gateway.clone(), AnonymousAuthenticator::default(), EchoHandler)?;
        on_ready(Running { gateway: gateway.handle(), store: None });
        serve_gateway(gateway, listener, http, axum::Router::new(), shutdown).await
    }

    async fn serve(
        self,
        listener: TcpListener,
        shutdown: &Shutdown,
        on_ready: impl FnOnce(Running) + Send,
    ) -> anyhow::Result<()> {
        let cfg = &self.config;
        let cluster = self.cluster.clone().unwrap_or_else(|| LocalCluster::new(&cfg.bus));
        // An in-process cluster (tests) keeps its shared bus; otherwise `redis.url` picks Redis.
        let bus = match (&self.cluster, &cfg.redis.url) {
            (None, Some(_)) => Bus::redis(self.instance.clone(), &cfg.redis, &cfg.bus).await?,
            _ => cluster.bus.as_instance(self.instance.clone()),
        };
        // Where the per-user cap is kept across instances: with the others in this process,
        // or in Redis; a dead instance's entries are dropped when the instance registry declares it dead.
        let connections: Option<Arc<dyn ConnectionRegistry>> = match (&self.cluster, &cfg.redis.url) {
            (None, Some(_)) => Some(Arc::new(redis_connections(&cfg.redis).await?)),
            (Some(c), _) => Some(c.connections.clone()),
            (None, None) => None,
        };
        let store = Store::open(&cfg.database, cfg.store.clone(), bus.clone()).await.with_context(|| {
            format!(
                "cannot open the database at {} (database.url / DATABASE_URL)",
                redact(&cfg.database.effective_url())
            )
        })?;
        let phases = Phases::new(shutdown);
        if let Err(e) = store.spawn_background(phases.store.tasks(), phases.store.token()).await {
            phases.stop(shutdown, &cfg.server.shutdown, &store).await;
            return Err(anyhow::Error::new(e).context("cannot start the store's background work"));
        }
        let guard = Arc::new(MemoryGuard::new(&cfg.memory));
        let interval = Duration::from_millis(cfg.memory.check_interval_ms);
        phases.domain.tasks().spawn(guard.clone().watch(
            Some(store.clone()),
            interval,
            cfg.memory.critical_cache_factor,
            phases.domain.token(),
        ));
        let admission: AdmissionCheck = {
            let guard = guard.clone();
            Arc::new(move || (guard.level() == Level::Critical).then_some("server is low on memory; retry shortly"))
        };
        warn_about_shortcuts(cfg);
        let auth = StoreAuthenticator::new(store.clone(), cfg.dev_tokens());
        let builder = Gateway::builder(cfg.gateway.clone(), Some(admission))?;
        phases.domain.tasks().spawn(background::record_activity(
            builder.handle(),
            store.clone(),
            Duration::from_millis(cfg.store.activity_flush_ms),
            phases.domain.token(),
        ));
        let presence = match Presence::spawn::<Connection, _>(
            cfg.presence.clone(),
            bus.clone(),
            StoreDirectory::new(store.clone()),
            phases.domain.token(),
            phases.domain.tasks(),
        ) {
            Ok(p) => p,
            Err(e) => {
                phases.stop(shutdown, &cfg.server.shutdown, &store).await;
                return Err(e.into());
            }
        };
        let handler =
            ProtocolHandler::new(self.instance.to_string(), cfg.gateway.heartbeat.interval_ms, Some(store.clone()))
                .with_presence(presence.clone());
        // Outside an in-process cluster, `redis.url` puts the queue, the user registry and
        // instance liveness in Redis too.
        let (queue, locator, registry) = match (&self.cluster, &cfg.redis.url) {
            (None, Some(_)) => match shared_matchmaking(&self.instance, cfg).await {
                Ok((queue, locator, registry)) => (queue, locator, Some(registry)),
                Err(e) => {
                    phases.stop(shutdown, &cfg.server.shutdown, &store).await;
                    return Err(e);
                }
            },
            _ => (cluster.queue.clone(), cluster.locator.clone(), None),
        };
        if let Some(registry) = &registry {
            phases.domain.tasks().spawn(registry.clone().run(phases.domain.token()));
            // A dead instance's connections stop counting toward the per-user cap at once,
            // not only when their entries expire.
            if let Some(conns) = &connections {
                let forget = connections::forget_dead(registry.subscribe(), conns.clone(), phases.domain.token());
                phases.domain.tasks().spawn(forget);
            }
        }
        let deps = MatchmakerDeps {
            directory: Arc::new(StoreDirectory::new(store.clone())),
            activity: Arc::new(PresenceActivity::new(presence.clone(), handler.away_users())),
            queue,
            locator,
            registry,
        };
        let spawned = Matchmaker::spawn::<Connection>(
            cfg.matchmaking.clone(),
            bus.clone(),
            deps,
            phases.domain.token(),
            phases.domain.tasks(),
        )
        .await;
        let matchmaker = match spawned {
            Ok(m) => m,
            Err(e) => {
                phases.stop(shutdown, &cfg.server.shutdown, &store).await;
                return Err(anyhow::Error::new(e).context("cannot start matchmaking"));
            }
        };
        let handler = handler.with_matchmaker(matchmaker.clone());
        phases.domain.tasks().spawn(background::refresh_presence(
            store.user_changes(),
            presence.clone(),
            phases.domain.token(),
        ));
        let cap = match connections.filter(|_| cfg.gateway.per_user_policy == PerUserPolicy::CloseOldest) {
            None => None,
            Some(registry) => {
                let spawned = connections::ConnectionCap::spawn(
                    registry,
                    bus.clone(),
                    builder.handle(),
                    cfg.gateway.max_connections_per_user,
                    Duration::from_millis(cfg.redis.connection_ttl_ms / 3),
                    phases.domain.token(),
                    phases.domain.tasks(),
                )
                .await;
                match spawned {
                    Ok(cap) => Some(cap),
                    Err(e) => {
                        phases.stop(shutdown, &cfg.server.shutdown, &store).await;
                        return Err(anyhow::Error::new(e).context("cannot start the per-user connection cap"));
                    }
                }
            }
        };
        let gateway = builder.build(auth, connections::Capped::new(handler, cap));
        let revoked = background::close_revoked(store.revocations(), gateway.handle(), phases.domain.token());
        phases.domain.tasks().spawn(revoked);
        let http = HttpParts {
            instance: self.instance.clone(),
            store: Some(store.clone()),
            guard: Some(guard),
            bus: Some(bus),
            presence: Some(presence),
            matchmaker: Some(matchmaker),
        };
        let api = api::router(store.clone(), cfg.api.clone(), cfg.guest_sign_in(), cfg.gateway.trusted_proxies.clone())
            .merge(web::router(cfg.demo_enabled(), &cfg.demo, cfg.guest_sign_in()));
        on_ready(Running { gateway: gateway.handle(), store: Some(store.clone()) });
        let served = serve_gateway(gateway, listener, http, api, shutdown).await;
        phases.stop(shutdown, &cfg.server.shutdown, &store).await;
        served
    }
}

/// The Redis-backed queue, locator and instance registry, registered (first heartbeat).
/// An unreachable Redis stops the start, naming `redis.url`.
async fn shared_matchmaking(
    instance: &str,
    cfg: &Config,
) -> anyhow::Result<(Arc<dyn MatchQueue>, Arc<dyn Locator>, InstanceRegistry)> {
    let state = RedisState::connect(&cfg.redis).await?;
    let registry = state.registry(instance, &cfg.cluster);
    registry.register().await.context("cannot register this instance in Redis (redis.url)")?;
    Ok((Arc::new(state.queue()), Arc::new(state.locator()), registry))
}

/// Serves until `shutdown` begins and the drain is over (or the shutdown is forced).
async fn serve_gateway<A: Authenticator, H: Handler>(
    gateway: Gateway<A, H>,
    listener: TcpListener,
    parts: HttpParts,
    extra: axum::Router,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let router = http::router(HttpState::new(gateway.handle(), parts), extra);
    tracing::info!(addr = %listener.local_addr()?, "serving");
    match shutdown.unless_forced(gateway.run(listener, router, shutdown.drain_token())).await {
        Some(served) => served?,
        None => warn!("drain cut short by a forced shutdown"),
    }
    tracing::info!("drained");
    Ok(())
}

/// The connection registry on the Redis at `redis.url`, through a client of its own.
async fn redis_connections(redis: &rendezvous_bus::RedisConfig) -> anyhow::Result<RedisConnections> {
    use fred::prelude::ClientLike;
    let client = rendezvous_bus::redis_builder(redis)?.build().context("redis.url")?;
    client.init().await.context("cannot connect the connection registry to Redis (redis.url / REDIS_URL)")?;
    let ttl = Duration::from_millis(redis.connection_ttl_ms);
    Ok(RedisConnections::new(client, &redis.channel_prefix, ttl))
}

/// Says at every start, loudly, which development shortcuts are on, and what a
/// production deploy is missing.
fn warn_about_shortcuts(cfg: &Config) {
    let mut on = Vec::new();
    if cfg.dev_tokens() {
        on.push("dev-<user> tokens (anyone can connect as any user)");
    }
    if cfg.guest_sign_in() {
        on.push("open guest sign-in (anyone can create users)");
    }
    if !on.is_empty() {
        warn!(
            shortcuts = %on.join("; "),
            mode = ?cfg.server.mode,
            "DEVELOPMENT MODE: do not expose this server. Set DATABASE_URL to a database server or \
             server.mode = \"production\" to turn the shortcuts off"
        );
    }
    if !cfg.is_development() && cfg.gateway.allowed_origins.is_empty() {
        warn!("gateway.allowed_origins is empty: browsers on any site may open connections with a user's token");
    }
}

/// The URL without its password, for error messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
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

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("sqlite:data/x.sqlite"), "sqlite:data/x.sqlite");
    }
}

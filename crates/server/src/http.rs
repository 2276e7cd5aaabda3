//! `/health`, `/ready` and `/metrics`, plus JSON answers for unknown routes.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rendezvous_bus::Bus;
use rendezvous_gateway::{Connection, ConnectionStats, GatewayHandle};
use rendezvous_matchmaker::MatchmakerHandle;
use rendezvous_presence::PresenceHandle;
use rendezvous_store::{CacheStats, Store};
use serde::Serialize;
use serde_json::{Value, json};
use tower_http::compression::CompressionLayer;

use crate::guard::MemoryGuard;
use crate::memory::{self, MemoryStats};

/// The optional parts the endpoints report on (absent in echo mode).
#[derive(Debug, Clone)]
pub struct HttpParts {
    /// This instance's name.
    pub instance: Arc<str>,
    /// The store.
    pub store: Option<Arc<Store>>,
    /// The memory guard.
    pub guard: Option<Arc<MemoryGuard>>,
    /// The bus.
    pub bus: Option<Bus>,
    /// Presence.
    pub presence: Option<PresenceHandle<Connection>>,
    /// Matchmaking.
    pub matchmaker: Option<MatchmakerHandle<Connection>>,
}

/// What the HTTP endpoints read from.
#[derive(Debug, Clone)]
pub struct HttpState {
    gateway: GatewayHandle,
    parts: HttpParts,
    started: Instant,
}

impl HttpState {
    /// State for a serving gateway.
    pub fn new(gateway: GatewayHandle, parts: HttpParts) -> Self {
        Self { gateway, parts, started: Instant::now() }
    }
}

/// The body of `/health`.
#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok` or `draining`.
    pub status: &'static str,
    /// Instance name.
    pub instance: String,
    /// Build version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Memory figures and the guard's level.
    pub memory: Value,
    /// Connection figures.
    pub connections: ConnectionStats,
    /// Gateway counters.
    pub gateway: Value,
    /// User, session and query caches.
    pub cache: Value,
    /// Filled by presence.
    pub presence: Value,
    /// Filled by matchmaking.
    pub matchmaking: Value,
    /// The bus.
    pub bus: Value,
    /// The database pool and the write-behind buffer.
    pub db: Value,
}

/// The router for every non-WebSocket request: these endpoints, `extra` (the API),
/// and JSON answers for unknown paths and methods.
pub fn router(state: HttpState, extra: Router) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CompressionLayer::new().gzip(true))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message } }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
}

fn health_of(state: &HttpState) -> Health {
    let not_configured = json!({ "status": "not_configured" });
    let counters: serde_json::Map<String, Value> =
        state.gateway.counters().snapshot().into_iter().map(|(name, _, v)| (name.to_owned(), json!(v))).collect();
    let mem: MemoryStats = memory::read();
    let mut memory = json!(mem);
    if let Some(g) = &state.parts.guard {
        memory["guard"] = json!(g.stats());
    }
    let store = state.parts.store.as_ref().map(|s| s.stats());
    Health {
        status: if state.gateway.is_draining() { "draining" } else { "ok" },
        instance: state.parts.instance.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
        memory,
        connections: state.gateway.connection_stats(),
        gateway: Value::Object(counters),
        cache: store.as_ref().map_or(
            not_configured.clone(),
            |s| json!({ "users": s.users, "sessions": s.sessions, "queries": s.queries }),
        ),
        presence: state.parts.presence.as_ref().map_or(not_configured.clone(), |p| json!(p.stats())),
        matchmaking: state.parts.matchmaker.as_ref().map_or(not_configured.clone(), |m| json!(m.stats())),
        bus: state.parts.bus.as_ref().map_or(not_configured.clone(), |b| json!(b.health())),
        db: store
            .as_ref()
            .map_or(not_configured, |s| json!({ "status": if s.pool.reachable { "ok" } else { "unavailable" }, "pool": s.pool, "write_behind": s.activity })),
    }
}

/// Always 200 while the process answers (liveness); readiness is `/ready`.
async fn health(State(state): State<HttpState>) -> Response {
    Json(health_of(&state)).into_response()
}

async fn ready(State(state): State<HttpState>) -> Response {
    if state.gateway.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "draining" }))).into_response()
    } else {
        (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response()
    }
}

struct Prom(String);

impl Prom {
    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let _ = write!(
            self.0,
            "# HELP rendezvous_{name} {help}\n# TYPE rendezvous_{name} gauge\nrendezvous_{name} {value}\n"
        );
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let _ = write!(
            self.0,
            "# HELP rendezvous_{name} {help}\n# TYPE rendezvous_{name} counter\nrendezvous_{name} {value}\n"
        );
    }

    fn cache(&mut self, caches: &[(&str, &CacheStats)]) {
        type Series = (&'static str, &'static str, &'static str, fn(&CacheStats) -> f64);
        let series: [Series; 6] = [
            ("cache_size", "gauge", "entries held", |c| c.size as f64),
            ("cache_capacity", "gauge", "maximum entries", |c| c.capacity as f64),
            ("cache_hits_total", "counter", "lookups answered from memory", |c| c.hits as f64),
            ("cache_misses_total", "counter", "lookups that went to the database", |c| c.misses as f64),
            ("cache_evictions_total", "counter", "entries pushed out by capacity", |c| c.evictions as f64),
            ("cache_loads_in_flight", "gauge", "database loads running now", |c| c.loads_in_flight as f64),
        ];
        for (name, kind, help, get) in series {
            let _ = write!(self.0, "# HELP rendezvous_{name} {help}\n# TYPE rendezvous_{name} {kind}\n");
            for (cache, stats) in caches {
                let _ = writeln!(self.0, "rendezvous_{name}{{cache=\"{cache}\"}} {}", get(stats));
            }
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let h = health_of(&state);
    let mem = memory::read();
    let mut p = Prom(String::with_capacity(8192));
    p.gauge("up", "1 while serving, 0 while draining", if h.status == "ok" { 1.0 } else { 0.0 });
    p.gauge("uptime_seconds", "seconds since start", h.uptime_seconds as f64);
    p.gauge("connections", "open WebSocket connections", h.connections.total as f64);
    p.gauge("connected_users", "distinct connected users", h.connections.users as f64);
    p.gauge("connection_limit", "global connection cap", h.connections.limit as f64);
    p.gauge("connection_utilization", "connections / cap", h.connections.utilization);
    p.gauge(
        "pending_sockets",
        "sockets accepted but not WebSocket connections (handshakes, plain HTTP)",
        h.connections.pending as f64,
    );
    p.gauge(
        "pending_socket_limit",
        "cap on pending sockets; at it the oldest waiting one is dropped",
        h.connections.pending_limit as f64,
    );
    p.gauge("memory_rss_bytes", "resident set size", mem.rss_bytes as f64);
    p.gauge("memory_allocated_bytes", "bytes allocated by the application", mem.allocated_bytes as f64);
    p.gauge(
        "memory_allocator_resident_bytes",
        "bytes in resident allocator pages",
        mem.allocator_resident_bytes as f64,
    );
    if let Some(g) = &state.parts.guard {
        let level = match g.level() {
            crate::guard::Level::Normal => 0.0,
            crate::guard::Level::Warning => 1.0,
            crate::guard::Level::Critical => 2.0,
        };
        p.gauge("memory_pressure_level", "0 normal, 1 warning, 2 critical", level);
        p.gauge("memory_budget_bytes", "memory budget", g.stats().budget_bytes as f64);
    }
    for (name, help, value) in state.gateway.counters().snapshot() {
        p.counter(&format!("gateway_{name}_total"), help, value);
    }
    if let Some(store) = &state.parts.store {
        let s = store.stats();
        p.cache(&[("users", &s.users), ("sessions", &s.sessions), ("queries", &s.queries)]);
        p.gauge("db_pool_size", "open database connections", f64::from(s.pool.size));
        p.gauge("db_pool_idle", "idle database connections", s.pool.idle as f64);
        p.gauge("db_pool_in_use", "database connections in use", s.pool.in_use as f64);
        p.counter("db_pool_acquires_total", "connection acquisitions", s.pool.acquires);
        p.counter("db_pool_acquire_failures_total", "failed connection acquisitions", s.pool.acquire_failures);
        p.gauge(
            "db_pool_acquire_wait_max_seconds",
            "longest wait for a connection",
            s.pool.acquire_wait_max_us as f64 / 1e6,
        );
        p.gauge("write_behind_pending", "users whose last_active awaits writing", s.activity.pending as f64);
    }
    if let Some(presence) = &state.parts.presence {
        let s = presence.stats();
        p.gauge("presence_topics", "presence topics tracked", s.topics as f64);
        p.gauge("presence_subscribers", "presence subscriptions of local connections", s.subscribers as f64);
        p.gauge("presence_local_users", "users connected here or in their offline grace", s.local_users as f64);
        p.gauge("presence_peers", "other instances heard on the bus", s.peers as f64);
        p.gauge("presence_entries_changed_per_second", "entries published per second", s.entries_changed_per_sec);
        p.counter("presence_entries_changed_total", "entries published to subscribers", s.entries_changed_total);
        p.counter("presence_changes_coalesced_total", "changes superseded within a tick", s.changes_coalesced_total);
        p.counter(
            "presence_batches_total",
            "messages serialized (one per topic per tick, plus filtered copies)",
            s.batches_total,
        );
        p.counter("presence_messages_sent_total", "presence messages queued to connections", s.messages_sent_total);
        p.counter("presence_bytes_sent_total", "presence bytes queued before compression", s.bytes_sent_total);
        p.counter("presence_filtered_copies_total", "batches copied and filtered for blocks", s.filtered_copies_total);
        p.counter(
            "presence_send_failures_total",
            "sends refused by closing or slow connections",
            s.send_failures_total,
        );
        p.counter("presence_busy_total", "requests refused with busy", s.busy_total);
        p.counter("presence_resyncs_total", "full-state requests after a gap", s.resyncs_total);
        p.counter("presence_bus_dropped_total", "bus publications dropped", s.bus_dropped_total);
        p.gauge("presence_tick_p99_seconds", "99th percentile tick duration", s.tick_p99_us as f64 / 1e6);
    }
    if let Some(m) = &state.parts.matchmaker {
        let s = m.stats();
        p.gauge("match_queue_length", "users waiting in the shared queue", s.queue_length as f64);
        let _ = write!(
            p.0,
            "# HELP rendezvous_match_queue_reachable 1 if the shared queue answers (label: where it lives)\n\
             # TYPE rendezvous_match_queue_reachable gauge\n\
             rendezvous_match_queue_reachable{{backend=\"{}\"}} {}\n",
            s.queue_backend,
            u8::from(s.queue_reachable)
        );
        p.gauge(
            "match_wait_p50_seconds",
            "median queue wait of recent matches",
            s.wait_ms_p50.unwrap_or(0) as f64 / 1e3,
        );
        p.gauge(
            "match_wait_p99_seconds",
            "99th percentile queue wait of recent matches",
            s.wait_ms_p99.unwrap_or(0) as f64 / 1e3,
        );
        p.gauge(
            "matches_per_minute",
            "proposals made by this instance in the last minute",
            s.matches_per_minute as f64,
        );
        p.counter("match_proposals_total", "proposals made", s.proposals.made);
        p.counter("match_proposals_accepted_total", "proposals both sides accepted", s.proposals.accepted);
        p.counter("match_proposals_declined_total", "proposals declined", s.proposals.declined);
        p.counter("match_proposals_expired_total", "proposals that missed their deadline", s.proposals.expired);
        p.counter("invites_sent_total", "invites sent", s.invites.sent);
        p.counter("invites_accepted_total", "invites accepted", s.invites.accepted);
        p.gauge("calls_active", "calls coordinated by this instance", s.active_calls as f64);
        p.counter("calls_started_total", "calls started", s.calls_started);
        p.counter("calls_ended_total", "calls ended", s.calls_ended);
        p.counter("signals_relayed_total", "signaling messages relayed", s.signals_relayed);
        p.counter("match_directory_errors_total", "store lookups that failed", s.directory_errors);
        p.counter("match_busy_total", "requests refused with busy", s.rejected_busy);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], p.0).into_response()
}

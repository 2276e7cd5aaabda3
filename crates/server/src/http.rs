//! `/health`, `/ready` and `/metrics`, plus JSON answers for unknown routes.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rendezvous_gateway::{ConnectionStats, GatewayHandle};
use serde::Serialize;
use serde_json::json;
use tower_http::compression::CompressionLayer;

use crate::memory::{self, MemoryStats};

/// What the HTTP endpoints read from.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The running gateway.
    pub gateway: GatewayHandle,
    /// This instance's name.
    pub instance: Arc<str>,
    /// When the process started.
    pub started: Instant,
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
    /// Memory figures.
    pub memory: MemoryStats,
    /// Connection figures.
    pub connections: ConnectionStats,
    /// Gateway counters.
    pub gateway: serde_json::Value,
    /// Filled by the store (user/session/query caches).
    pub cache: serde_json::Value,
    /// Filled by presence.
    pub presence: serde_json::Value,
    /// Filled by matchmaking.
    pub matchmaking: serde_json::Value,
    /// Filled by the bus.
    pub bus: serde_json::Value,
    /// Filled by the store (database pool).
    pub db: serde_json::Value,
}

/// The router for every non-WebSocket request.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CompressionLayer::new().gzip(true))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

fn health_of(state: &HttpState) -> Health {
    let not_configured = json!({ "status": "not_configured" });
    let counters: serde_json::Map<String, serde_json::Value> = state
        .gateway
        .counters()
        .snapshot()
        .into_iter()
        .map(|(name, _, v)| (name.to_owned(), json!(v)))
        .collect();
    Health {
        status: if state.gateway.is_draining() {
            "draining"
        } else {
            "ok"
        },
        instance: state.instance.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
        memory: memory::read(),
        connections: state.gateway.connection_stats(),
        gateway: serde_json::Value::Object(counters),
        cache: not_configured.clone(),
        presence: not_configured.clone(),
        matchmaking: not_configured.clone(),
        bus: not_configured.clone(),
        db: not_configured,
    }
}

/// Always 200 while the process answers (liveness); readiness is `/ready`.
async fn health(State(state): State<HttpState>) -> Response {
    Json(health_of(&state)).into_response()
}

async fn ready(State(state): State<HttpState>) -> Response {
    if state.gateway.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
            .into_response()
    } else {
        (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let h = health_of(&state);
    let mut out = String::with_capacity(4096);
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = write!(
            out,
            "# HELP rendezvous_{name} {help}\n# TYPE rendezvous_{name} gauge\nrendezvous_{name} {value}\n"
        );
    };
    gauge(
        "up",
        "1 while serving, 0 while draining",
        if h.status == "ok" { 1.0 } else { 0.0 },
    );
    gauge(
        "uptime_seconds",
        "seconds since start",
        h.uptime_seconds as f64,
    );
    gauge(
        "connections",
        "open WebSocket connections",
        h.connections.total as f64,
    );
    gauge(
        "connected_users",
        "distinct connected users",
        h.connections.users as f64,
    );
    gauge(
        "connection_limit",
        "global connection cap",
        h.connections.limit as f64,
    );
    gauge(
        "connection_utilization",
        "connections / cap",
        h.connections.utilization,
    );
    gauge(
        "memory_rss_bytes",
        "resident set size",
        h.memory.rss_bytes as f64,
    );
    gauge(
        "memory_allocated_bytes",
        "bytes allocated by the application",
        h.memory.allocated_bytes as f64,
    );
    gauge(
        "memory_allocator_resident_bytes",
        "bytes in resident allocator pages",
        h.memory.allocator_resident_bytes as f64,
    );
    for (name, help, value) in state.gateway.counters().snapshot() {
        let _ = write!(
            out,
            "# HELP rendezvous_gateway_{name}_total {help}\n# TYPE rendezvous_gateway_{name}_total counter\nrendezvous_gateway_{name}_total {value}\n"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

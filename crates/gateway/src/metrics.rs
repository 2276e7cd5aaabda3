//! Gateway counters, read by `/health` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters; every field only grows.
#[derive(Debug, Default)]
pub struct GatewayCounters {
    /// WebSocket connections accepted (101 sent).
    pub accepted: AtomicU64,
    /// Upgrades refused with 503 at the global cap.
    pub rejected_at_capacity: AtomicU64,
    /// Upgrades refused with 429 by the per-IP attempt limit.
    pub rejected_rate_limited: AtomicU64,
    /// Upgrades refused with 401.
    pub rejected_unauthorized: AtomicU64,
    /// Upgrades refused with 403 (origin).
    pub rejected_origin: AtomicU64,
    /// Upgrades refused with 400/405/426 (bad handshake).
    pub rejected_bad_handshake: AtomicU64,
    /// Upgrades refused with 503 while draining, under memory pressure, or when authentication failed to answer.
    pub rejected_unavailable: AtomicU64,
    /// Upgrades refused with 503 because the authenticator did not answer within `auth_timeout_ms`.
    pub auth_timeouts: AtomicU64,
    /// Pending sockets waiting on their peer dropped to make room (the oldest at the cap, or past the busy deadline).
    pub pending_evicted: AtomicU64,
    /// Failed `accept` calls (usually EMFILE: out of file descriptors).
    pub accept_errors: AtomicU64,
    /// Connections closed by the per-user cap (either policy).
    pub per_user_closes: AtomicU64,
    /// Connections closed as slow consumers (1008).
    pub slow_consumers: AtomicU64,
    /// Connections closed for heartbeat timeout (4002).
    pub heartbeat_timeouts: AtomicU64,
    /// Messages refused by the per-connection rate limit.
    pub messages_rate_limited: AtomicU64,
    /// Connections closed for sustained rate abuse (4008).
    pub rate_limit_closes: AtomicU64,
    /// Connections closed for protocol violations (1002/1007/1009).
    pub protocol_closes: AtomicU64,
    /// Data messages received.
    pub messages_in: AtomicU64,
    /// Data messages written.
    pub messages_out: AtomicU64,
    /// Bytes read from sockets after the handshake.
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets after the handshake.
    pub bytes_out: AtomicU64,
}

impl GatewayCounters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// A consistent-enough snapshot for reporting, as `(name, help, value)`.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("accepted", "WebSocket connections accepted", r(&self.accepted)),
            ("rejected_at_capacity", "upgrades refused at the global connection cap", r(&self.rejected_at_capacity)),
            ("rejected_rate_limited", "upgrades refused by the per-IP attempt limit", r(&self.rejected_rate_limited)),
            (
                "rejected_unauthorized",
                "upgrades refused for a missing or invalid token",
                r(&self.rejected_unauthorized),
            ),
            ("rejected_origin", "upgrades refused for a disallowed origin", r(&self.rejected_origin)),
            ("rejected_bad_handshake", "malformed upgrade requests", r(&self.rejected_bad_handshake)),
            ("rejected_unavailable", "upgrades refused while draining or out of memory", r(&self.rejected_unavailable)),
            ("auth_timeouts", "upgrades refused because authentication did not answer in time", r(&self.auth_timeouts)),
            ("pending_evicted", "pending sockets dropped to make room for new ones", r(&self.pending_evicted)),
            ("accept_errors", "failed accept calls (usually out of file descriptors)", r(&self.accept_errors)),
            ("per_user_closes", "connections closed by the per-user cap", r(&self.per_user_closes)),
            ("slow_consumers", "connections closed as slow consumers", r(&self.slow_consumers)),
            ("heartbeat_timeouts", "connections closed for missing heartbeats", r(&self.heartbeat_timeouts)),
            (
                "messages_rate_limited",
                "messages refused by the per-connection rate limit",
                r(&self.messages_rate_limited),
            ),
            ("rate_limit_closes", "connections closed for sustained rate abuse", r(&self.rate_limit_closes)),
            ("protocol_closes", "connections closed for protocol violations", r(&self.protocol_closes)),
            ("messages_in", "data messages received", r(&self.messages_in)),
            ("messages_out", "data messages sent", r(&self.messages_out)),
            ("bytes_in", "bytes received after the handshake", r(&self.bytes_in)),
            ("bytes_out", "bytes sent after the handshake", r(&self.bytes_out)),
        ]
    }
}

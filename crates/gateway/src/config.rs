//! The `[gateway]` configuration section.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happens when a user opens more connections than `max_connections_per_user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PerUserPolicy {
    /// The new connection is upgraded and closed at once with 4009.
    RejectNew,
    /// The oldest connection of that user is closed with 4010 and the new one is kept.
    CloseOldest,
}

/// Gateway limits, timeouts and compression settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Paths that accept WebSocket upgrades.
    pub websocket_paths: Vec<String>,
    /// Global cap on open WebSocket connections; over it, upgrades get HTTP 503.
    pub max_connections: usize,
    /// Cap on connections per user.
    pub max_connections_per_user: usize,
    /// What to do when a user exceeds `max_connections_per_user`.
    pub per_user_policy: PerUserPolicy,
    /// Largest accepted message (after inflation), in bytes; larger ones close with 1009.
    pub max_message_bytes: usize,
    /// Time allowed for the HTTP request head (and the TLS handshake) to arrive.
    pub handshake_timeout_ms: u64,
    /// Time allowed for the [`Authenticator`](crate::Authenticator) to resolve a token; on expiry HTTP 503.
    pub auth_timeout_ms: u64,
    /// Time allowed to write one batch of queued frames (at most the outbound queue) before the peer is dropped.
    pub write_timeout_ms: u64,
    /// Time to wait for the peer's close frame after the server sent its own.
    pub close_timeout_ms: u64,
    /// Origins allowed to open WebSocket connections; empty allows all.
    pub allowed_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is trusted for the client address.
    pub trusted_proxies: Vec<IpAddr>,
    /// permessage-deflate settings.
    pub compression: CompressionConfig,
    /// Server pings and the dead-peer timeout.
    pub heartbeat: HeartbeatConfig,
    /// Bounds of each connection's outbound queue.
    pub outbound_queue: OutboundQueueConfig,
    /// Per-connection message rate limit.
    pub message_rate: MessageRateConfig,
    /// Per-IP connection-attempt rate limit.
    pub connect_rate: ConnectRateConfig,
    /// Sockets accepted but not (yet) WebSocket connections.
    pub pending: PendingConfig,
    /// Graceful drain on SIGTERM/SIGINT.
    pub drain: DrainConfig,
    /// Native TLS (`wss://`); absent means plain TCP.
    pub tls: Option<TlsConfig>,
}

/// permessage-deflate settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Negotiate permessage-deflate when a client offers it.
    pub enabled: bool,
    /// Messages shorter than this many bytes are sent uncompressed.
    pub threshold_bytes: usize,
    /// zlib level, 0–9.
    pub level: u32,
}

/// Server pings and dead-peer detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// How often the server pings every connection.
    pub interval_ms: u64,
    /// A connection silent (no frame, not even a pong) for this long is closed with 4002.
    pub timeout_ms: u64,
}

/// Outbound queue bounds. When either is exceeded the connection is closed 1008 ("slow consumer").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundQueueConfig {
    /// Most messages queued for one connection.
    pub max_messages: usize,
    /// Most payload bytes queued for one connection.
    pub max_bytes: usize,
}

/// Per-connection message rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessageRateConfig {
    /// Sustained messages per second; 0 turns the limit off.
    pub per_second: u32,
    /// Burst allowance above the sustained rate.
    pub burst: u32,
    /// Rate-limited messages tolerated within `violation_window_ms` before closing with 4008.
    pub violations_before_close: u32,
    /// The window for `violations_before_close`.
    pub violation_window_ms: u64,
}

/// Per-IP connection-attempt rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectRateConfig {
    /// Sustained upgrade attempts per second per client IP; 0 turns the limit off.
    pub per_second: u32,
    /// Burst allowance above the sustained rate.
    pub burst: u32,
    /// How often idle per-IP limiter state is pruned and the map shrunk.
    pub prune_interval_ms: u64,
}

/// Sockets accepted but not (yet) WebSocket connections: handshakes in progress and
/// plain HTTP connections. They hold file descriptors, so they are capped: at the cap the
/// oldest one waiting on its peer is dropped for the newcomer, because a real client sends
/// its request at once and a stalled one never does. When none is waiting, accepting
/// pauses (newcomers wait in the kernel's accept queue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PendingConfig {
    /// Most such sockets held at once.
    pub max_sockets: usize,
    /// Above this share of `max_sockets` (percent) the gateway counts as busy.
    pub busy_percent: u8,
    /// While busy: sockets waiting on their peer longer than this are dropped, and new ones get this handshake deadline.
    pub busy_timeout_ms: u64,
}

/// Graceful drain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// Closes (1001) are spread uniformly over this window after the signal.
    pub window_ms: u64,
    /// Connections get at most this long after the signal to close and run their
    /// handler's `on_close`; the server's later shutdown steps (`server.shutdown`) follow.
    pub grace_ms: u64,
}

/// Certificate and key for native TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_path: PathBuf,
    /// PEM private key.
    pub key_path: PathBuf,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            websocket_paths: vec!["/ws".into()],
            max_connections: 5000,
            max_connections_per_user: 2,
            per_user_policy: PerUserPolicy::CloseOldest,
            max_message_bytes: 64 * 1024,
            handshake_timeout_ms: 10_000,
            auth_timeout_ms: 5_000,
            write_timeout_ms: 10_000,
            close_timeout_ms: 3_000,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            compression: CompressionConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            outbound_queue: OutboundQueueConfig::default(),
            message_rate: MessageRateConfig::default(),
            connect_rate: ConnectRateConfig::default(),
            pending: PendingConfig::default(),
            drain: DrainConfig::default(),
            tls: None,
        }
    }
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self { enabled: true, threshold_bytes: 1024, level: 6 }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self { interval_ms: 20_000, timeout_ms: 45_000 }
    }
}

impl Default for OutboundQueueConfig {
    fn default() -> Self {
        Self { max_messages: 256, max_bytes: 1024 * 1024 }
    }
}

impl Default for MessageRateConfig {
    fn default() -> Self {
        Self { per_second: 20, burst: 40, violations_before_close: 20, violation_window_ms: 10_000 }
    }
}

impl Default for ConnectRateConfig {
    fn default() -> Self {
        Self { per_second: 10, burst: 30, prune_interval_ms: 60_000 }
    }
}

impl Default for PendingConfig {
    fn default() -> Self {
        Self { max_sockets: 4096, busy_percent: 75, busy_timeout_ms: 2_000 }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self { window_ms: 10_000, grace_ms: 30_000 }
    }
}

/// A configuration value that cannot work, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config `gateway.{key}`: {problem}")]
pub struct ConfigError {
    /// The key under `gateway`, dotted.
    pub key: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(key: &'static str, problem: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError { key, problem: problem.into() })
}

impl GatewayConfig {
    /// Checks every value; the error names the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.websocket_paths.is_empty() || self.websocket_paths.iter().any(|p| !p.starts_with('/')) {
            return bad("websocket_paths", "must list at least one path, each starting with `/`");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.max_connections_per_user == 0 {
            return bad("max_connections_per_user", "must be at least 1");
        }
        if !(125..=64 * 1024 * 1024).contains(&self.max_message_bytes) {
            return bad("max_message_bytes", "must be between 125 and 67108864");
        }
        for (key, v) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("auth_timeout_ms", self.auth_timeout_ms),
            ("pending.busy_timeout_ms", self.pending.busy_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("close_timeout_ms", self.close_timeout_ms),
            ("heartbeat.interval_ms", self.heartbeat.interval_ms),
            ("heartbeat.timeout_ms", self.heartbeat.timeout_ms),
            ("connect_rate.prune_interval_ms", self.connect_rate.prune_interval_ms),
            ("message_rate.violation_window_ms", self.message_rate.violation_window_ms),
        ] {
            if v == 0 {
                return bad(key, "must be greater than 0");
            }
        }
        if self.heartbeat.timeout_ms < self.heartbeat.interval_ms {
            return bad("heartbeat.timeout_ms", "must be at least heartbeat.interval_ms, or every peer times out");
        }
        if self.compression.level > 9 {
            return bad("compression.level", "must be between 0 and 9");
        }
        if self.outbound_queue.max_messages == 0 {
            return bad("outbound_queue.max_messages", "must be at least 1");
        }
        if self.outbound_queue.max_bytes < self.max_message_bytes {
            return bad(
                "outbound_queue.max_bytes",
                "must be at least max_message_bytes, or one reply could never be queued",
            );
        }
        if self.message_rate.per_second > 0 && self.message_rate.burst == 0 {
            return bad("message_rate.burst", "must be at least 1 when the limit is on");
        }
        if self.message_rate.violations_before_close == 0 {
            return bad("message_rate.violations_before_close", "must be at least 1");
        }
        if self.connect_rate.per_second > 0 && self.connect_rate.burst == 0 {
            return bad("connect_rate.burst", "must be at least 1 when the limit is on");
        }
        if self.pending.max_sockets == 0 {
            return bad("pending.max_sockets", "must be at least 1");
        }
        if !(1..=100).contains(&self.pending.busy_percent) {
            return bad("pending.busy_percent", "must be between 1 and 100");
        }
        if self.pending.busy_timeout_ms > self.handshake_timeout_ms {
            return bad("pending.busy_timeout_ms", "must be at most handshake_timeout_ms: it shortens that deadline");
        }
        if self.drain.grace_ms < self.drain.window_ms {
            return bad("drain.grace_ms", "must be at least drain.window_ms");
        }
        if let Some(o) = self.allowed_origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return bad("allowed_origins", format!("`{o}` is not an http(s) origin such as https://app.example.com"));
        }
        Ok(())
    }

    pub(crate) fn dur(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        GatewayConfig::default().validate().unwrap();
    }

    #[test]
    fn each_bad_value_names_its_key() {
        type Mutation = fn(&mut GatewayConfig);
        let cases: Vec<(&str, Mutation)> = vec![
            ("max_connections", |c| c.max_connections = 0),
            ("max_connections_per_user", |c| c.max_connections_per_user = 0),
            ("max_message_bytes", |c| c.max_message_bytes = 10),
            ("heartbeat.timeout_ms", |c| c.heartbeat.timeout_ms = 1),
            ("heartbeat.interval_ms", |c| c.heartbeat.interval_ms = 0),
            ("compression.level", |c| c.compression.level = 10),
            ("outbound_queue.max_bytes", |c| c.outbound_queue.max_bytes = 1),
            ("drain.grace_ms", |c| c.drain.grace_ms = 1),
            ("auth_timeout_ms", |c| c.auth_timeout_ms = 0),
            ("pending.max_sockets", |c| c.pending.max_sockets = 0),
            ("pending.busy_percent", |c| c.pending.busy_percent = 0),
            ("pending.busy_timeout_ms", |c| c.pending.busy_timeout_ms = c.handshake_timeout_ms + 1),
            ("allowed_origins", |c| c.allowed_origins = vec!["example.com".into()]),
            ("websocket_paths", |c| c.websocket_paths = vec!["ws".into()]),
        ];
        for (key, mutate) in cases {
            let mut c = GatewayConfig::default();
            mutate(&mut c);
            assert_eq!(c.validate().unwrap_err().key, key);
        }
    }
}

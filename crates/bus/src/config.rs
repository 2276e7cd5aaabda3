//! The `[bus]` and `[redis]` configuration sections.

use serde::{Deserialize, Serialize};

/// How instances talk to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Messages a subscriber may fall behind per topic before it is told of a gap and
    /// resynchronizes (caches cleared, presence re-requested).
    pub capacity: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { capacity: 1024 }
    }
}

/// Whether the bus uses sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7 or later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardedPubsub {
    /// Sharded on a Redis Cluster whose servers are Redis 7 or later; classic otherwise.
    Auto,
    /// Always sharded; a server older than Redis 7 stops the start.
    Always,
    /// Always classic PUBLISH/SUBSCRIBE (on a cluster every message then reaches every node).
    Never,
}

/// The Redis server the bus uses when `url` is set (`[redis]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` for one server, or
    /// `redis-cluster://[user:password@]host:port[?node=host:port&node=host:port]` for a
    /// Redis Cluster (any reachable node is enough; the others are discovered). Unset
    /// means the in-process bus. `REDIS_URL` overrides it.
    pub url: Option<String>,
    /// `auto` (sharded pub/sub on a Redis 7+ cluster), `always` or `never`.
    pub sharded_pubsub: ShardedPubsub,
    /// Prepended to every topic to make the Redis channel name, so deployments (or
    /// test runs) sharing one server do not hear each other.
    pub channel_prefix: String,
    /// Limit for opening a connection, at start and on each reconnect attempt.
    pub connect_timeout_ms: u64,
    /// Limit for one PUBLISH, SUBSCRIBE or UNSUBSCRIBE; over it the call fails as unavailable.
    pub command_timeout_ms: u64,
    /// First reconnect delay; each failed attempt doubles it up to `reconnect_max_ms`.
    /// Attempts never stop: the bus stays degraded until Redis is back.
    pub reconnect_min_ms: u32,
    /// Longest delay between reconnect attempts.
    pub reconnect_max_ms: u32,
    /// Messages received from Redis and not yet fanned out to local subscribers. When
    /// it overflows the oldest are dropped and every subscription gets a gap.
    pub receive_buffer: usize,
    /// How long an instance's entries in Redis-held registries (the per-user connection
    /// cap across instances) count without being renewed; each instance renews its own
    /// every third of this, so a dead instance's connections stop counting after it.
    pub connection_ttl_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            sharded_pubsub: ShardedPubsub::Auto,
            channel_prefix: "rendezvous:".into(),
            connect_timeout_ms: 5000,
            command_timeout_ms: 2000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5000,
            receive_buffer: 4096,
            connection_ttl_ms: 30_000,
        }
    }
}

impl RedisConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, problem: &str| Err(ConfigError { key, problem: problem.into() });
        if let Some(url) = &self.url {
            if url.starts_with("rediss://") || url.starts_with("rediss-cluster://") {
                return bad("redis.url", "TLS (rediss://) is not supported yet; use redis:// on a private network");
            }
            if !url.starts_with("redis://") && !url.starts_with("redis-cluster://") {
                return bad("redis.url", "must start with redis:// (one server) or redis-cluster:// (a Redis Cluster)");
            }
            if let Err(e) = fred::prelude::Config::from_url(url) {
                return bad("redis.url", &format!("cannot be parsed: {}", e.details()));
            }
        }
        if self.channel_prefix.len() > 256 {
            return bad("redis.channel_prefix", "must be at most 256 bytes");
        }
        for (key, v) in [
            ("redis.connect_timeout_ms", self.connect_timeout_ms),
            ("redis.command_timeout_ms", self.command_timeout_ms),
        ] {
            if !(1..=600_000).contains(&v) {
                return bad(key, "must be between 1 and 600000");
            }
        }
        if self.reconnect_min_ms == 0 {
            return bad("redis.reconnect_min_ms", "must be greater than 0");
        }
        if !(self.reconnect_min_ms..=600_000).contains(&self.reconnect_max_ms) {
            return bad("redis.reconnect_max_ms", "must be between redis.reconnect_min_ms and 600000");
        }
        if !(300..=3_600_000).contains(&self.connection_ttl_ms) {
            return bad("redis.connection_ttl_ms", "must be between 300 and 3600000");
        }
        if !(16..=1_000_000).contains(&self.receive_buffer) {
            return bad("redis.receive_buffer", "must be between 16 and 1000000");
        }
        Ok(())
    }
}

/// A `[bus]` or `[redis]` value out of range; names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid config `{key}`: {problem}")]
pub struct ConfigError {
    /// The dotted key.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl BusConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.capacity) {
            return Err(ConfigError { key: "bus.capacity", problem: "must be between 1 and 1000000".into() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_bounded() {
        assert!(BusConfig::default().validate().is_ok());
        for bad in [0, 2_000_000] {
            let err = BusConfig { capacity: bad }.validate().unwrap_err();
            assert_eq!(err.key, "bus.capacity");
        }
    }

    #[test]
    fn redis_values_are_checked() {
        assert!(RedisConfig::default().validate().is_ok());
        for url in ["redis://127.0.0.1:6379/0", "redis-cluster://u:p@10.0.0.1:7000?node=10.0.0.2:7001&node=10.0.0.3:7002"]
        {
            let ok = RedisConfig { url: Some(url.into()), ..Default::default() };
            assert!(ok.validate().is_ok(), "{url}");
        }
        let cases = [
            (RedisConfig { url: Some("http://x".into()), ..Default::default() }, "redis.url"),
            (RedisConfig { url: Some("rediss://x".into()), ..Default::default() }, "redis.url"),
            (RedisConfig { url: Some("rediss-cluster://x".into()), ..Default::default() }, "redis.url"),
            (RedisConfig { url: Some("redis-cluster://h:notaport".into()), ..Default::default() }, "redis.url"),
            (RedisConfig { channel_prefix: "p".repeat(300), ..Default::default() }, "redis.channel_prefix"),
            (RedisConfig { connect_timeout_ms: 0, ..Default::default() }, "redis.connect_timeout_ms"),
            (RedisConfig { command_timeout_ms: 0, ..Default::default() }, "redis.command_timeout_ms"),
            (RedisConfig { reconnect_min_ms: 0, ..Default::default() }, "redis.reconnect_min_ms"),
            (
                RedisConfig { reconnect_min_ms: 500, reconnect_max_ms: 100, ..Default::default() },
                "redis.reconnect_max_ms",
            ),
            (RedisConfig { receive_buffer: 1, ..Default::default() }, "redis.receive_buffer"),
            (RedisConfig { connection_ttl_ms: 10, ..Default::default() }, "redis.connection_ttl_ms"),
        ];
        for (cfg, key) in cases {
            assert_eq!(cfg.validate().unwrap_err().key, key, "{cfg:?}");
        }
    }
}

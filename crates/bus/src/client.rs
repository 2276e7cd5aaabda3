//! Turning the `[redis]` section into fred client settings, for the bus and for any other
//! part of the server that keeps state in the same Redis (one server or a cluster).

use std::time::Duration;

use fred::prelude::{Builder, Config, ReconnectPolicy};

use crate::{ConfigError, RedisConfig};

/// The fred `Config` for `redis.url`: centralized for `redis://`, clustered for
/// `redis-cluster://` (extra nodes from `?node=host:port`). Fails, naming `redis.url`,
/// when the URL is unset or malformed.
pub fn redis_client_config(cfg: &RedisConfig) -> Result<Config, ConfigError> {
    let bad = |problem: String| ConfigError { key: "redis.url", problem };
    let url = cfg.url.as_deref().ok_or_else(|| bad("is not set".into()))?;
    cfg.validate()?;
    Config::from_url(url).map_err(|e| bad(format!("cannot be parsed: {}", e.details())))
}

/// A fred `Builder` with `redis_client_config`, the `[redis]` timeouts and the reconnect
/// policy the bus uses (exponential from `redis.reconnect_min_ms` to
/// `redis.reconnect_max_ms`, never giving up). Clients built from it reconnect by
/// themselves after an outage or a cluster failover; callers still `init()` them.
pub fn redis_builder(cfg: &RedisConfig) -> Result<Builder, ConfigError> {
    let command_timeout = Duration::from_millis(cfg.command_timeout_ms);
    let mut builder = Builder::from_config(redis_client_config(cfg)?);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_millis(cfg.connect_timeout_ms);
            c.internal_command_timeout = command_timeout;
        })
        .with_performance_config(|p| {
            p.broadcast_channel_capacity = cfg.receive_buffer;
            p.default_command_timeout = command_timeout;
        })
        // fred does not reconnect without a policy. Attempts never stop (0): a client that
        // gave up would stay broken until a restart.
        .set_policy(ReconnectPolicy::new_exponential(0, cfg.reconnect_min_ms, cfg.reconnect_max_ms, 2));
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_cluster_urls_make_the_right_config() {
        let plain = RedisConfig { url: Some("redis://127.0.0.1:6379".into()), ..Default::default() };
        assert!(!redis_client_config(&plain).unwrap().server.is_clustered());
        let cluster = RedisConfig {
            url: Some("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001".into()),
            ..Default::default()
        };
        let config = redis_client_config(&cluster).unwrap();
        assert!(config.server.is_clustered());
        assert_eq!(config.server.hosts().len(), 2);
        assert!(redis_builder(&cluster).is_ok());
    }

    #[test]
    fn a_missing_url_names_the_key() {
        assert_eq!(redis_client_config(&RedisConfig::default()).unwrap_err().key, "redis.url");
    }
}

//! The `[database]` and `[store]` configuration sections.

use serde::{Deserialize, Serialize};

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…`; unset means the embedded SQLite file. `DATABASE_URL` overrides it.
    pub url: Option<String>,
    /// The SQLite file used when `url` is unset.
    pub sqlite_path: String,
    /// Pool size. On SQLite this many connections read; writes go through one more
    /// connection of their own (SQLite runs one writer at a time; writes queue for it).
    pub max_connections: u32,
    /// How long a query waits for a pooled connection (the SQLite writer included)
    /// before failing with 503.
    pub acquire_timeout_ms: u64,
    /// SQLite only: how long a statement retries while another connection (another
    /// process on the same file) holds a lock, before failing with `database is locked`.
    /// 0 fails at once.
    pub sqlite_busy_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            sqlite_path: "data/rendezvous.sqlite".into(),
            max_connections: 10,
            acquire_timeout_ms: 2_000,
            sqlite_busy_timeout_ms: 5_000,
        }
    }
}

/// Caches, session lifetime and background work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// User LRU entries.
    pub user_cache_capacity: usize,
    /// Session LRU entries.
    pub session_cache_capacity: usize,
    /// Query cache entries (lookups and lists).
    pub query_cache_capacity: usize,
    /// Query cache freshness.
    pub query_cache_ttl_ms: u64,
    /// Lifetime of issued session tokens unless the request asks for less.
    pub session_ttl_ms: u64,
    /// How often buffered `last_active` times are written.
    pub activity_flush_ms: u64,
    /// Most distinct users buffered; touches beyond it are dropped (and counted) until the next flush.
    pub activity_buffer_max: usize,
    /// How often expired sessions and cooldowns are deleted.
    pub cleanup_interval_ms: u64,
    /// Session revocations buffered for the server's closer; a lagging closer is told and logs.
    pub revocation_buffer: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            user_cache_capacity: 800,
            session_cache_capacity: 1200,
            query_cache_capacity: 1000,
            query_cache_ttl_ms: 60_000,
            session_ttl_ms: 30 * 24 * 3600 * 1000,
            activity_flush_ms: 5_000,
            activity_buffer_max: 100_000,
            cleanup_interval_ms: 60_000,
            revocation_buffer: 1024,
        }
    }
}

const MAX_SQLITE_BUSY_TIMEOUT_MS: u64 = 60_000;

/// A configuration value that cannot work, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config `{key}`: {problem}")]
pub struct ConfigError {
    /// The dotted key.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl DatabaseConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:")) {
                return Err(ConfigError {
                    key: "database.url",
                    problem: "must start with postgres://, postgresql:// or sqlite:".into(),
                });
            }
        }
        if self.sqlite_path.is_empty() {
            return Err(ConfigError { key: "database.sqlite_path", problem: "must not be empty".into() });
        }
        if self.max_connections == 0 {
            return Err(ConfigError { key: "database.max_connections", problem: "must be at least 1".into() });
        }
        if self.acquire_timeout_ms == 0 {
            return Err(ConfigError { key: "database.acquire_timeout_ms", problem: "must be greater than 0".into() });
        }
        // SQLite takes the timeout as an i32 of milliseconds (sqlx panics above that);
        // a statement stuck for over a minute is an outage, not contention.
        if self.sqlite_busy_timeout_ms > MAX_SQLITE_BUSY_TIMEOUT_MS {
            return Err(ConfigError {
                key: "database.sqlite_busy_timeout_ms",
                problem: format!("must be at most {MAX_SQLITE_BUSY_TIMEOUT_MS}"),
            });
        }
        Ok(())
    }

    /// The URL to connect to: `url`, or the SQLite file.
    pub fn effective_url(&self) -> String {
        self.url.clone().unwrap_or_else(|| format!("sqlite:{}", self.sqlite_path))
    }
}

impl StoreConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("store.user_cache_capacity", self.user_cache_capacity as u64),
            ("store.session_cache_capacity", self.session_cache_capacity as u64),
            ("store.query_cache_capacity", self.query_cache_capacity as u64),
            ("store.query_cache_ttl_ms", self.query_cache_ttl_ms),
            ("store.session_ttl_ms", self.session_ttl_ms),
            ("store.activity_flush_ms", self.activity_flush_ms),
            ("store.activity_buffer_max", self.activity_buffer_max as u64),
            ("store.cleanup_interval_ms", self.cleanup_interval_ms),
            ("store.revocation_buffer", self.revocation_buffer as u64),
        ] {
            if v == 0 {
                return Err(ConfigError { key, problem: "must be greater than 0".into() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zeroes_are_named() {
        StoreConfig::default().validate().unwrap();
        DatabaseConfig::default().validate().unwrap();
        let c = StoreConfig { query_cache_ttl_ms: 0, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "store.query_cache_ttl_ms");
        let d = DatabaseConfig { url: Some("mysql://x".into()), ..Default::default() };
        assert_eq!(d.validate().unwrap_err().key, "database.url");
        let d = DatabaseConfig { sqlite_busy_timeout_ms: 60_001, ..Default::default() };
        assert_eq!(d.validate().unwrap_err().key, "database.sqlite_busy_timeout_ms");
        DatabaseConfig { sqlite_busy_timeout_ms: 0, ..Default::default() }.validate().unwrap();
    }
}

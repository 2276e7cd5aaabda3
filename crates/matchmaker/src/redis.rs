//! The shared matchmaking state on Redis: one fred client per process, built from the
//! same `[redis]` section as the bus, and the Lua scripts every operation runs as.
//!
//! Every key of one deployment carries the same hash tag, `{<redis.channel_prefix>mm}`,
//! so all of them live in one slot and each script can touch any of them on a Redis
//! Cluster too. Keys (after the tag and `:`):
//! - `queue`: sorted set, user → joined-at ms (the line, oldest first);
//! - `entries`: hash, user → `QueueEntry` JSON, while queued;
//! - `engaged`: hash, user → `Engagement` JSON;
//! - `ban:<len>:<a><b>`: a pair ban, `"<until_ms>,<0|1>"`, expiring after `until_ms`;
//! - `calls`: hash, call id → `CallRecord` JSON, while the call is up;
//! - `loc`: hash, user → instance; `at:<instance>`: set of the users bound there;
//! - `instances`: sorted set, instance → last heartbeat ms; `alive:<instance>`: its
//!   liveness key, which expires `cluster.instance_timeout_ms` after the last heartbeat.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, LuaInterface, Options, ReconnectPolicy};
use fred::types::FromValue;
use rendezvous_bus::RedisConfig;
use sha1::{Digest, Sha1};

use crate::queue::QueueError;

/// A Lua script and its SHA-1, for EVALSHA (sent whole on first use, and again after a
/// Redis restart forgot it).
pub(crate) struct Script {
    lua: &'static str,
    sha: String,
}

impl Script {
    pub(crate) fn new(lua: &'static str) -> Self {
        let sha = Sha1::digest(lua.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        Self { lua, sha }
    }
}

/// The connection to Redis that the queue, the locator and the instance registry share.
#[derive(Clone)]
pub struct RedisState {
    client: fred::prelude::Client,
    options: Options,
    keys: Arc<Keys>,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState").field("tag", &self.keys.base).finish_non_exhaustive()
    }
}

/// Redis could not be reached at start (a wrong `redis.url`, or Redis down).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to Redis for matchmaking state (redis.url)")]
pub struct RedisStateError(#[source] fred::error::Error);

/// Key names of one deployment.
#[derive(Debug)]
pub(crate) struct Keys {
    /// `{<prefix>mm}:`, the hash tag every key starts with.
    pub(crate) base: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        // A brace inside the prefix would end the hash tag early and split the keys over slots.
        let prefix: String = prefix.chars().map(|c| if c == '{' || c == '}' { '_' } else { c }).collect();
        Self { base: format!("{{{prefix}mm}}:") }
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }

    /// The ban key of a pair, the same whichever way round the pair is given. The length
    /// prefix keeps `("ab", "c")` and `("a", "bc")` apart.
    pub(crate) fn ban(&self, a: &str, b: &str) -> String {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        format!("{}ban:{}:{a}{b}", self.base, a.len())
    }
}

pub(crate) fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError(Box::new(e))
}

impl RedisState {
    /// Connects to `cfg.url` (a `redis://` or `redis-cluster://` URL), with the bus's
    /// timeouts and a reconnect policy that never gives up (fred has none unless set).
    /// Fails at once if Redis cannot be reached, like the bus.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, RedisStateError> {
        let url = cfg.url.as_deref().unwrap_or_default();
        let command_timeout = Duration::from_millis(cfg.command_timeout_ms);
        let mut builder = Builder::from_config(Config::from_url(url).map_err(RedisStateError)?);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_millis(cfg.connect_timeout_ms);
                c.internal_command_timeout = command_timeout;
            })
            .with_performance_config(|p| p.default_command_timeout = command_timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, cfg.reconnect_min_ms, cfg.reconnect_max_ms, 2));
        let client = builder.build().map_err(RedisStateError)?;
        client.init().await.map_err(RedisStateError)?;
        Ok(Self {
            client,
            // While disconnected, fail at once (callers answer `unavailable`) instead of queueing.
            options: Options { fail_fast: true, timeout: Some(command_timeout), ..Default::default() },
            keys: Arc::new(Keys::new(&cfg.channel_prefix)),
        })
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// The shared queue and engagement table.
    pub fn queue(&self) -> crate::queue::RedisQueue {
        crate::queue::RedisQueue::new(self.clone())
    }

    /// The user → instance registry.
    pub fn locator(&self) -> crate::locator::RedisLocator {
        crate::locator::RedisLocator::new(self.clone())
    }

    /// The instance registry for `instance`.
    pub fn registry(&self, instance: &str, cfg: &crate::config::ClusterConfig) -> crate::cluster::InstanceRegistry {
        crate::cluster::InstanceRegistry::new(self.clone(), instance, cfg)
    }

    /// Closes the connection.
    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }

    /// Deletes every key of this deployment (tests clean up after themselves).
    #[cfg(test)]
    pub(crate) async fn delete_all_for_tests(&self) {
        static DELETE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new("for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do redis.call('DEL', k) end return 1")
        });
        let pattern: String = self
            .keys
            .base
            .chars()
            .map(|c| if "*?[]\\".contains(c) { format!("\\{c}") } else { c.to_string() })
            .collect();
        let _ = self.run::<i64>(&DELETE, vec![self.keys.key("queue")], vec![pattern]).await;
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs `script` with EVALSHA, or with EVAL if Redis does not know it (a first use,
    /// or a restarted Redis).
    pub(crate) async fn run<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, QueueError> {
        let client = self.client.with_options(&self.options);
        match client.evalsha(script.sha.as_str(), keys.clone(), args.clone()).await {
            // EVAL runs it on the node that owns the keys and caches it there for EVALSHA.
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(script.lua, keys, args).await.map_err(unavailable)
            }
            r => r.map_err(unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_one_hash_tag() {
        let k = Keys::new("app:");
        assert_eq!(k.key("queue"), "{app:mm}:queue");
        assert_eq!(k.ban("b", "a"), k.ban("a", "b"));
        assert_ne!(k.ban("ab", "c"), k.ban("a", "bc"));
        assert_eq!(Keys::new("x{y}").key("loc"), "{x_y_mm}:loc", "braces cannot break the tag");
    }

    #[test]
    fn script_hashes_match_redis() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this hash.
        assert_eq!(Script::new("return 1").sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}

//! The `[presence]` configuration section.

use serde::{Deserialize, Serialize};

/// Timing, bounds and limits of the presence service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// How often subscribers get a diff; also the most often one user's entry can change
    /// for them, since changes inside one tick are coalesced.
    pub tick_ms: u64,
    /// How long a user whose last connection (or last subscription to a topic) closed
    /// stays listed, so a reload or network switch does not show as leave-and-join.
    pub offline_grace_ms: u64,
    /// Entries a subscriber sees of one topic; larger topics send the count plus this window.
    pub window: usize,
    /// Most entries (joins + updates + leaves) one message for one topic may carry; a tick
    /// with more changes sends a fresh snapshot of the window instead. At least `window`.
    pub max_entries_per_tick: usize,
    /// Topics one connection may subscribe to at once (`too_many_subscriptions` beyond).
    pub max_subscriptions_per_connection: usize,
    /// Topics this instance tracks; a subscription that would create another gets `topic_limit`.
    pub max_topics: usize,
    /// Longest topic name, in bytes (names are `[a-z0-9]` then `[a-z0-9_.:-]`).
    pub topic_max_len: usize,
    /// Longest status text, in characters.
    pub status_max_chars: usize,
    /// Commands waiting for the presence task; when full, requests get `busy`.
    pub command_queue: usize,
    /// Profile/block lookups in flight at once (a mass reconnect queues behind them).
    pub directory_concurrency: usize,
    /// Bus publications waiting to be sent; when full one is dropped and peers resynchronize.
    pub bus_queue: usize,
    /// The bus topic instances exchange presence on.
    pub bus_topic: String,
    /// How often an instance says it is alive on the bus when it has nothing else to say.
    pub heartbeat_ms: u64,
    /// An instance not heard from for this long is dropped with all its entries.
    pub instance_timeout_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            tick_ms: 2_000,
            offline_grace_ms: 5_000,
            window: 100,
            max_entries_per_tick: 100,
            max_subscriptions_per_connection: 8,
            max_topics: 10_000,
            topic_max_len: 64,
            status_max_chars: 140,
            command_queue: 8_192,
            directory_concurrency: 16,
            bus_queue: 64,
            bus_topic: "presence".into(),
            heartbeat_ms: 2_000,
            instance_timeout_ms: 10_000,
        }
    }
}

/// A configuration value that cannot work, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config `{key}`: {problem}")]
pub struct ConfigError {
    /// The dotted key, e.g. `presence.tick_ms`.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn err(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key, problem: problem.into() }
}

impl PresenceConfig {
    /// Checks every value and how they relate.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("presence.tick_ms", self.tick_ms),
            ("presence.window", self.window as u64),
            ("presence.max_entries_per_tick", self.max_entries_per_tick as u64),
            ("presence.max_subscriptions_per_connection", self.max_subscriptions_per_connection as u64),
            ("presence.max_topics", self.max_topics as u64),
            ("presence.topic_max_len", self.topic_max_len as u64),
            ("presence.status_max_chars", self.status_max_chars as u64),
            ("presence.command_queue", self.command_queue as u64),
            ("presence.directory_concurrency", self.directory_concurrency as u64),
            ("presence.bus_queue", self.bus_queue as u64),
            ("presence.heartbeat_ms", self.heartbeat_ms),
            ("presence.instance_timeout_ms", self.instance_timeout_ms),
        ] {
            if v == 0 {
                return Err(err(key, "must be greater than 0"));
            }
        }
        if self.max_entries_per_tick < self.window {
            return Err(err(
                "presence.max_entries_per_tick",
                format!("must be at least presence.window ({}), since a reset sends a whole window", self.window),
            ));
        }
        if self.instance_timeout_ms < 2 * self.heartbeat_ms {
            return Err(err(
                "presence.instance_timeout_ms",
                format!(
                    "must be at least twice presence.heartbeat_ms ({}), or one late heartbeat drops a live instance",
                    self.heartbeat_ms
                ),
            ));
        }
        if self.topic_max_len > 256 {
            return Err(err("presence.topic_max_len", "must be at most 256"));
        }
        if self.bus_topic.is_empty() {
            return Err(err("presence.bus_topic", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_issue() {
        let c = PresenceConfig::default();
        c.validate().unwrap();
        assert_eq!((c.tick_ms, c.offline_grace_ms, c.window, c.instance_timeout_ms), (2_000, 5_000, 100, 10_000));
    }

    #[test]
    fn zero_values_name_their_key() {
        let mut c = PresenceConfig { tick_ms: 0, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "presence.tick_ms");
        c = PresenceConfig { command_queue: 0, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "presence.command_queue");
        c = PresenceConfig { window: 0, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "presence.window");
    }

    #[test]
    fn a_zero_grace_is_allowed() {
        PresenceConfig { offline_grace_ms: 0, ..Default::default() }.validate().unwrap();
    }

    #[test]
    fn entries_per_tick_must_hold_a_window() {
        let c = PresenceConfig { window: 50, max_entries_per_tick: 49, ..Default::default() };
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "presence.max_entries_per_tick");
        assert!(e.to_string().contains("presence.window"), "{e}");
    }

    #[test]
    fn instance_timeout_must_outlast_two_heartbeats() {
        let c = PresenceConfig { heartbeat_ms: 3_000, instance_timeout_ms: 5_000, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "presence.instance_timeout_ms");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = serde_json::from_str::<PresenceConfig>(r#"{"tick_msec": 5}"#).unwrap_err();
        assert!(e.to_string().contains("tick_msec"), "{e}");
        let c: PresenceConfig = serde_json::from_str(r#"{"tick_ms": 500}"#).unwrap();
        assert_eq!(c.tick_ms, 500);
        assert_eq!(c.window, 100);
    }

    #[test]
    fn bus_topic_must_be_named() {
        let c = PresenceConfig { bus_topic: String::new(), ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "presence.bus_topic");
    }
}

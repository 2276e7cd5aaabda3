//! The `[matchmaking]` configuration section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Matchmaking deadlines, limits and ICE servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchmakerConfig {
    /// How long both users have to accept a `match.proposed`.
    pub proposal_timeout_ms: u64,
    /// How long an invite waits for an answer before it expires.
    pub invite_timeout_ms: u64,
    /// Invites one user may send per minute (and in a burst); more get `rate_limited`.
    pub invites_per_minute: u32,
    /// Invites one user may have pending at once; more get `rate_limited`.
    pub max_pending_invites: usize,
    /// After a call, the two users are not matched again for this long.
    pub cooldown_ms: u64,
    /// A call survives a disconnect for this long; reconnecting within it keeps the call.
    pub reconnect_grace_ms: u64,
    /// Largest `call.signal` payload, serialized.
    pub max_signal_bytes: usize,
    /// How often the matcher scans the queue; a scan that read a full `scan_limit` and
    /// made proposals is followed at once by another.
    pub match_interval_ms: u64,
    /// Queue entries one scan looks at, oldest first; bounds the work per scan.
    pub scan_limit: usize,
    /// Commands queued for the matchmaker task; when full, handle calls fail and the
    /// server answers `busy`.
    pub command_queue: usize,
    /// Directory lookups (joins and invites: profile, blocks, cooldown partners) in flight
    /// at once. Joins over it wait in line for a slot (up to `command_queue` of them, then
    /// `busy`); an invite over it gets `busy`.
    pub max_pending_lookups: usize,
    /// Peers a user may still block or report (the most recent calls, kept while connected).
    pub recent_peers: usize,
    /// Calls are swept this often: a party no instance knows is treated as disconnected.
    pub sweep_interval_ms: u64,
    /// STUN/TURN servers handed out by `ice.servers`.
    pub ice: IceConfig,
}

/// STUN/TURN servers and the TURN REST shared secret (coturn `static-auth-secret`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceConfig {
    /// `stun:` URLs (none by default: no third-party server unless configured).
    pub stun_urls: Vec<String>,
    /// `turn:` / `turns:` URLs; need `turn_secret`.
    pub turn_urls: Vec<String>,
    /// Shared secret for time-limited TURN credentials; empty when no TURN is configured.
    pub turn_secret: String,
    /// How long TURN credentials stay valid.
    pub turn_ttl_secs: u64,
}

impl std::fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret must never reach a log line.
        f.debug_struct("IceConfig")
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field("turn_secret", &if self.turn_secret.is_empty() { "" } else { "<redacted>" })
            .field("turn_ttl_secs", &self.turn_ttl_secs)
            .finish()
    }
}

impl Default for MatchmakerConfig {
    fn default() -> Self {
        Self {
            proposal_timeout_ms: 15_000,
            invite_timeout_ms: 30_000,
            invites_per_minute: 10,
            max_pending_invites: 3,
            cooldown_ms: 86_400_000,
            reconnect_grace_ms: 10_000,
            max_signal_bytes: 65_536,
            match_interval_ms: 250,
            scan_limit: 1000,
            command_queue: 4096,
            max_pending_lookups: 256,
            recent_peers: 8,
            sweep_interval_ms: 5_000,
            ice: IceConfig::default(),
        }
    }
}

impl Default for IceConfig {
    fn default() -> Self {
        Self { stun_urls: Vec::new(), turn_urls: Vec::new(), turn_secret: String::new(), turn_ttl_secs: 3600 }
    }
}

/// A `[matchmaking]` value out of range; names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid config `{key}`: {problem}")]
pub struct ConfigError {
    /// The dotted key.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn range(key: &'static str, v: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError { key, problem: format!("must be between {lo} and {hi}, got {v}") })
    }
}

impl MatchmakerConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const DAY: u64 = 86_400_000;
        range("matchmaking.proposal_timeout_ms", self.proposal_timeout_ms, 1_000, 300_000)?;
        range("matchmaking.invite_timeout_ms", self.invite_timeout_ms, 1_000, 600_000)?;
        range("matchmaking.invites_per_minute", self.invites_per_minute.into(), 1, 10_000)?;
        range("matchmaking.max_pending_invites", self.max_pending_invites as u64, 1, 100)?;
        range("matchmaking.cooldown_ms", self.cooldown_ms, 0, 365 * DAY)?;
        range("matchmaking.reconnect_grace_ms", self.reconnect_grace_ms, 0, 300_000)?;
        range("matchmaking.max_signal_bytes", self.max_signal_bytes as u64, 256, 1 << 20)?;
        range("matchmaking.match_interval_ms", self.match_interval_ms, 10, 60_000)?;
        range("matchmaking.scan_limit", self.scan_limit as u64, 2, 100_000)?;
        range("matchmaking.command_queue", self.command_queue as u64, 1, 1_000_000)?;
        range("matchmaking.max_pending_lookups", self.max_pending_lookups as u64, 1, 100_000)?;
        range("matchmaking.recent_peers", self.recent_peers as u64, 1, 100)?;
        range("matchmaking.sweep_interval_ms", self.sweep_interval_ms, 100, 600_000)?;
        self.ice.validate()
    }

    /// `proposal_timeout_ms` as a duration.
    pub(crate) fn proposal_timeout(&self) -> Duration {
        Duration::from_millis(self.proposal_timeout_ms)
    }

    /// `invite_timeout_ms` as a duration.
    pub(crate) fn invite_timeout(&self) -> Duration {
        Duration::from_millis(self.invite_timeout_ms)
    }

    /// `reconnect_grace_ms` as a duration.
    pub(crate) fn reconnect_grace(&self) -> Duration {
        Duration::from_millis(self.reconnect_grace_ms)
    }
}

/// The `[cluster]` section: instance liveness in Redis (used when `redis.url` is set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// How often an instance renews its liveness key and looks for dead instances.
    pub heartbeat_interval_ms: u64,
    /// An instance silent for this long is dead: its users leave the queue and the
    /// locator, and what it coordinated ends. At least twice the heartbeat interval.
    pub instance_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { heartbeat_interval_ms: 1_000, instance_timeout_ms: 10_000 }
    }
}

impl ClusterConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        range("cluster.heartbeat_interval_ms", self.heartbeat_interval_ms, 50, 60_000)?;
        range("cluster.instance_timeout_ms", self.instance_timeout_ms, 2 * self.heartbeat_interval_ms, 600_000)
    }
}

impl IceConfig {
    /// Checks URL schemes, and that TURN has a secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for u in &self.stun_urls {
            if !(u.starts_with("stun:") || u.starts_with("stuns:")) {
                return Err(ConfigError {
                    key: "matchmaking.ice.stun_urls",
                    problem: format!("`{u}` is not a stun: URL"),
                });
            }
        }
        for u in &self.turn_urls {
            if !(u.starts_with("turn:") || u.starts_with("turns:")) {
                return Err(ConfigError {
                    key: "matchmaking.ice.turn_urls",
                    problem: format!("`{u}` is not a turn: URL"),
                });
            }
        }
        if !self.turn_urls.is_empty() && self.turn_secret.len() < 16 {
            return Err(ConfigError {
                key: "matchmaking.ice.turn_secret",
                problem: "TURN URLs need a shared secret of at least 16 bytes".into(),
            });
        }
        range("matchmaking.ice.turn_ttl_secs", self.turn_ttl_secs, 60, 7 * 86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_issue() {
        let c = MatchmakerConfig::default();
        c.validate().unwrap();
        assert_eq!(c.proposal_timeout_ms, 15_000);
        assert_eq!(c.cooldown_ms, 86_400_000);
        assert_eq!(c.reconnect_grace_ms, 10_000);
        assert_eq!(c.max_signal_bytes, 65_536);
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let base = MatchmakerConfig::default();
        let cases: Vec<(MatchmakerConfig, &str)> = vec![
            (MatchmakerConfig { proposal_timeout_ms: 10, ..base.clone() }, "matchmaking.proposal_timeout_ms"),
            (MatchmakerConfig { invite_timeout_ms: 0, ..base.clone() }, "matchmaking.invite_timeout_ms"),
            (MatchmakerConfig { invites_per_minute: 0, ..base.clone() }, "matchmaking.invites_per_minute"),
            (MatchmakerConfig { max_pending_invites: 0, ..base.clone() }, "matchmaking.max_pending_invites"),
            (MatchmakerConfig { cooldown_ms: u64::MAX, ..base.clone() }, "matchmaking.cooldown_ms"),
            (MatchmakerConfig { reconnect_grace_ms: 1_000_000, ..base.clone() }, "matchmaking.reconnect_grace_ms"),
            (MatchmakerConfig { max_signal_bytes: 10, ..base.clone() }, "matchmaking.max_signal_bytes"),
            (MatchmakerConfig { match_interval_ms: 0, ..base.clone() }, "matchmaking.match_interval_ms"),
            (MatchmakerConfig { scan_limit: 1, ..base.clone() }, "matchmaking.scan_limit"),
            (MatchmakerConfig { command_queue: 0, ..base.clone() }, "matchmaking.command_queue"),
            (MatchmakerConfig { max_pending_lookups: 0, ..base.clone() }, "matchmaking.max_pending_lookups"),
            (MatchmakerConfig { recent_peers: 0, ..base.clone() }, "matchmaking.recent_peers"),
            (MatchmakerConfig { sweep_interval_ms: 1, ..base.clone() }, "matchmaking.sweep_interval_ms"),
        ];
        for (cfg, key) in cases {
            assert_eq!(cfg.validate().unwrap_err().key, key);
        }
    }

    #[test]
    fn cluster_values_name_their_keys() {
        ClusterConfig::default().validate().unwrap();
        assert_eq!(ClusterConfig::default().instance_timeout_ms, 10_000);
        let bad = |c: ClusterConfig| c.validate().unwrap_err().key;
        assert_eq!(
            bad(ClusterConfig { heartbeat_interval_ms: 0, ..Default::default() }),
            "cluster.heartbeat_interval_ms"
        );
        let slow_beat = ClusterConfig { heartbeat_interval_ms: 6_000, instance_timeout_ms: 10_000 };
        assert_eq!(bad(slow_beat), "cluster.instance_timeout_ms", "a timeout must cover two heartbeats");
    }

    #[test]
    fn ice_urls_and_secret_are_checked() {
        let ice = |f: fn(&mut IceConfig)| {
            let mut c = MatchmakerConfig::default();
            f(&mut c.ice);
            c.validate().map_err(|e| e.key)
        };
        assert_eq!(ice(|i| i.stun_urls = vec!["http://x".into()]), Err("matchmaking.ice.stun_urls"));
        assert_eq!(ice(|i| i.turn_urls = vec!["stun:x".into()]), Err("matchmaking.ice.turn_urls"));
        assert_eq!(ice(|i| i.turn_urls = vec!["turn:x:3478".into()]), Err("matchmaking.ice.turn_secret"));
        assert_eq!(
            ice(|i| {
                i.turn_urls = vec!["turn:x:3478".into()];
                i.turn_secret = "0123456789abcdef".into();
            }),
            Ok(())
        );
        assert_eq!(ice(|i| i.turn_ttl_secs = 1), Err("matchmaking.ice.turn_ttl_secs"));
    }

    #[test]
    fn unknown_keys_are_refused_and_absent_keys_default() {
        let c: MatchmakerConfig = serde_json::from_str(r#"{"cooldown_ms": 5}"#).unwrap();
        assert_eq!(c.cooldown_ms, 5);
        assert_eq!(c.proposal_timeout_ms, 15_000);
        assert!(serde_json::from_str::<MatchmakerConfig>(r#"{"cooldown": 5}"#).is_err());
        assert!(!format!("{:?}", IceConfig { turn_secret: "s3cret".into(), ..Default::default() }).contains("s3cret"));
    }
}

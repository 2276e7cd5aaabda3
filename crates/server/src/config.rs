//! The whole configuration tree: built-in defaults (`config/default.toml`), an optional
//! file named by `RENDEZVOUS_CONFIG`, then environment overrides.

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use rendezvous_bus::{BusConfig, RedisConfig};
use rendezvous_gateway::GatewayConfig;
use rendezvous_matchmaker::{ClusterConfig, MatchmakerConfig};
use rendezvous_presence::PresenceConfig;
use rendezvous_store::{DatabaseConfig, StoreConfig};
use serde::{Deserialize, Serialize};

/// `config/default.toml`, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// The root of the configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener, identity and logging.
    pub server: ServerConfig,
    /// WebSocket gateway limits.
    pub gateway: GatewayConfig,
    /// Database connection.
    pub database: DatabaseConfig,
    /// Caches, session lifetime, write-behind and cleanup.
    pub store: StoreConfig,
    /// Which tokens the gateway accepts.
    pub auth: AuthConfig,
    /// The server-to-server HTTP API.
    pub api: ApiConfig,
    /// Memory budget and pressure thresholds.
    pub memory: MemoryConfig,
    /// Redis connection (used by the bus).
    pub redis: RedisConfig,
    /// Pub/sub between instances.
    pub bus: BusConfig,
    /// Who is online in which topic.
    pub presence: PresenceConfig,
    /// Queue, proposals, invites, signaling and calls.
    pub matchmaking: MatchmakerConfig,
    /// Instance heartbeats in Redis (used when `redis.url` is set).
    pub cluster: ClusterConfig,
    /// The demo app at `/`.
    pub demo: DemoConfig,
}

/// The demo app (`web/demo`), served at `/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve the demo at `/`. Unset: on in development mode only (the zero-config run).
    pub enabled: Option<bool>,
    /// The presence topic the demo's lobby subscribes to.
    pub topic: String,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self { enabled: None, topic: "lobby".into() }
    }
}

/// Which tokens the gateway accepts besides store sessions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accept `dev-<user>` tokens without a session. Unset: on in development mode only;
    /// `true` outside development mode is refused at start.
    pub dev_tokens: Option<bool>,
}

/// The HTTP API for the app backend (`docs/api.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer key the app backend presents; empty disables the API (503).
    pub key: String,
    /// `POST /api/guest` creates a throwaway user and session for the demo page. Unset: on
    /// in development mode only; `true` outside development mode is refused at start.
    pub guest_sign_in: Option<bool>,
    /// Guest sign-ins per client address per minute (sustained); 0 turns the limit off.
    pub guest_per_minute: u32,
    /// Guest sign-ins a client address may make in a burst above the sustained rate.
    pub guest_burst: u32,
    /// Lifetime of guest sessions.
    pub guest_session_ttl_ms: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            key: String::new(),
            guest_sign_in: None,
            guest_per_minute: 6,
            guest_burst: 3,
            guest_session_ttl_ms: 24 * 3600 * 1000,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Memory budget: at `critical_percent` caches shrink and new connections get 503.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Resident-memory budget in bytes; 0 uses the cgroup limit, or 1 GiB without one.
    pub budget_bytes: u64,
    /// Warn (in logs and `/health`) above this share of the budget.
    pub warning_percent: u8,
    /// Shrink caches and refuse new connections above this share; recover below `warning_percent`.
    pub critical_percent: u8,
    /// How often resident memory is checked.
    pub check_interval_ms: u64,
    /// Cache capacities are multiplied by this while critical.
    pub critical_cache_factor: f64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            budget_bytes: 0,
            warning_percent: 80,
            critical_percent: 90,
            check_interval_ms: 1_000,
            critical_cache_factor: 0.25,
        }
    }
}

/// Listener, identity and logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `auto`, `development` or `production`; decides the development shortcuts
    /// (see [`Config::is_development`]).
    pub mode: ServerMode,
    /// Address to bind.
    pub host: String,
    /// Port to bind; `PORT` overrides it. 0 picks a free port.
    pub port: u16,
    /// Name of this instance in `/health`, logs and (later) the bus; empty derives one from the hostname.
    pub instance_id: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Default log filter when `RUST_LOG` is unset.
    pub log_level: String,
    /// File descriptors kept free beyond the connection caps and the database pool (logs,
    /// the runtime, sockets evicted but not yet closed). At start the caps plus this must fit
    /// under the open-file limit, or the server refuses to start.
    pub descriptor_headroom: u64,
    /// How long each step after the gateway's drain may take.
    pub shutdown: ShutdownConfig,
}

/// Bounds on the shutdown steps that follow the drain (`gateway.drain`), in their order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Domain tasks (revocation watcher, memory guard; presence and matchmaking) to stop.
    pub tasks_ms: u64,
    /// Store tasks to stop and the final write-behind flush to finish.
    pub flush_ms: u64,
    /// The database pool to close.
    pub pool_close_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { tasks_ms: 2_000, flush_ms: 5_000, pool_close_ms: 2_000 }
    }
}

/// Whether development shortcuts (`dev-<user>` tokens, open guest sign-in) may be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerMode {
    /// Development with the embedded SQLite database, production with a database URL.
    #[default]
    Auto,
    /// Development shortcuts on by default, even against a real database.
    Development,
    /// Development shortcuts off; turning one on is a startup error.
    Production,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            mode: ServerMode::Auto,
            host: "0.0.0.0".into(),
            port: 8080,
            instance_id: String::new(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            descriptor_headroom: 128,
            shutdown: ShutdownConfig::default(),
        }
    }
}

/// Why the configuration could not be loaded; every variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Parsing or typing failed (figment names the key and the source).
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    /// The file named by `RENDEZVOUS_CONFIG` does not exist.
    #[error("RENDEZVOUS_CONFIG names {0}, which does not exist")]
    MissingFile(PathBuf),
    /// A gateway value is out of range.
    #[error(transparent)]
    Gateway(#[from] rendezvous_gateway::ConfigError),
    /// A database or store value is out of range.
    #[error(transparent)]
    Store(#[from] rendezvous_store::ConfigError),
    /// A bus or redis value is out of range.
    #[error(transparent)]
    Bus(#[from] rendezvous_bus::ConfigError),
    /// A presence value is out of range.
    #[error(transparent)]
    Presence(#[from] rendezvous_presence::ConfigError),
    /// A matchmaking value is out of range.
    #[error(transparent)]
    Matchmaking(#[from] rendezvous_matchmaker::ConfigError),
    /// A value outside the gateway section is out of range.
    #[error("invalid config `{key}`: {problem}")]
    Invalid {
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl Config {
    /// Loads from the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::vars())
    }

    /// Loads with `vars` standing in for the environment (tests pass their own).
    pub fn load_from(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut fig = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(DEFAULT_TOML));
        if let Some(path) = get("RENDEZVOUS_CONFIG") {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        // RENDEZVOUS__GATEWAY__MAX_CONNECTIONS=7 sets gateway.max_connections; values are
        // parsed like figment's Env provider ("7" is a number, "[a, b]" a list).
        for (name, raw) in &vars {
            if let Some(path) = name.strip_prefix("RENDEZVOUS__") {
                let key = path.to_ascii_lowercase().replace("__", ".");
                let value: figment::value::Value =
                    raw.parse().unwrap_or_else(|_| figment::value::Value::from(raw.clone()));
                fig = fig.merge((key, value));
            }
        }
        // Hosting platforms set these plain names.
        for (var, key) in [("PORT", "server.port"), ("DATABASE_URL", "database.url"), ("REDIS_URL", "redis.url")] {
            if let Some(v) = get(var).filter(|v| !v.is_empty()) {
                let value = if var == "PORT" {
                    let port = v.parse::<u16>().map_err(|_| ConfigError::Invalid {
                        key: "server.port",
                        problem: format!("PORT={v:?} is not a port number (0-65535)"),
                    })?;
                    figment::value::Value::from(port)
                } else {
                    figment::value::Value::from(v)
                };
                fig = fig.merge((key, value));
            }
        }
        let config: Config = fig.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.gateway.validate()?;
        if self.server.host.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "server.host",
                problem: format!("{:?} is not an IP address", self.server.host),
            });
        }
        self.database.validate()?;
        self.store.validate()?;
        self.bus.validate()?;
        self.redis.validate()?;
        self.presence.validate()?;
        self.matchmaking.validate()?;
        self.cluster.validate()?;
        let invalid = |key, problem: &str| Err(ConfigError::Invalid { key, problem: problem.into() });
        let s = &self.server.shutdown;
        for (key, v) in [
            ("server.shutdown.tasks_ms", s.tasks_ms),
            ("server.shutdown.flush_ms", s.flush_ms),
            ("server.shutdown.pool_close_ms", s.pool_close_ms),
        ] {
            if v == 0 {
                return invalid(key, "must be greater than 0");
            }
        }
        if !self.api.key.is_empty() && self.api.key.len() < 16 {
            return invalid("api.key", "must be empty (API off) or at least 16 characters");
        }
        self.check_shortcuts()?;
        if !valid_topic(&self.demo.topic, self.presence.topic_max_len) {
            return invalid(
                "demo.topic",
                "must be a presence topic: 1 to presence.topic_max_len bytes, [a-z0-9] then [a-z0-9_.:-]",
            );
        }
        if self.api.guest_session_ttl_ms == 0 {
            return invalid("api.guest_session_ttl_ms", "must be greater than 0");
        }
        if self.api.max_body_bytes < 1024 {
            return invalid("api.max_body_bytes", "must be at least 1024");
        }
        let m = &self.memory;
        if !(1..=100).contains(&m.warning_percent) {
            return invalid("memory.warning_percent", "must be between 1 and 100");
        }
        if !(m.warning_percent..=100).contains(&m.critical_percent) {
            return invalid("memory.critical_percent", "must be between memory.warning_percent and 100");
        }
        if m.check_interval_ms == 0 {
            return invalid("memory.check_interval_ms", "must be greater than 0");
        }
        if !(m.critical_cache_factor > 0.0 && m.critical_cache_factor <= 1.0) {
            return invalid("memory.critical_cache_factor", "must be in (0, 1]");
        }
        Ok(())
    }

    /// True when development shortcuts default to on: `server.mode = "development"`, or
    /// `auto` with the embedded SQLite database (the zero-config local run).
    pub fn is_development(&self) -> bool {
        match self.server.mode {
            ServerMode::Development => true,
            ServerMode::Production => false,
            ServerMode::Auto => !self.database.effective_url().starts_with("postgres"),
        }
    }

    /// Whether `dev-<user>` tokens are accepted.
    pub fn dev_tokens(&self) -> bool {
        self.auth.dev_tokens.unwrap_or_else(|| self.is_development())
    }

    /// Whether the demo app is served at `/`.
    pub fn demo_enabled(&self) -> bool {
        self.demo.enabled.unwrap_or_else(|| self.is_development())
    }

    /// Whether `POST /api/guest` is open.
    pub fn guest_sign_in(&self) -> bool {
        self.api.guest_sign_in.unwrap_or_else(|| self.is_development())
    }

    /// A shortcut turned on explicitly outside development mode is refused: against a
    /// real database it lets anyone sign in as anyone, and that must never happen by accident.
    fn check_shortcuts(&self) -> Result<(), ConfigError> {
        if self.is_development() {
            return Ok(());
        }
        let why = match self.server.mode {
            ServerMode::Production => "server.mode is \"production\"",
            _ => "server.mode is \"auto\" and database.url / DATABASE_URL names a database server",
        };
        for (key, on, what) in [
            ("auth.dev_tokens", self.auth.dev_tokens, "dev-<user> tokens let anyone connect as any user"),
            ("api.guest_sign_in", self.api.guest_sign_in, "guest sign-in lets anyone create users without a key"),
        ] {
            if on == Some(true) {
                return Err(ConfigError::Invalid {
                    key,
                    problem: format!(
                        "{what}; refused because {why}. Set server.mode = \"development\" \
                         (RENDEZVOUS__SERVER__MODE=development) to allow it knowingly"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The presence topic rules (docs/protocol.md), for topics named in config.
fn valid_topic(topic: &str, max_len: usize) -> bool {
    let b = topic.as_bytes();
    !b.is_empty()
        && b.len() <= max_len
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..].iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.:-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn default_toml_matches_the_code_defaults() {
        let from_file: Config = Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap();
        assert_eq!(from_file, Config::default());
        assert_eq!(Config::load_from(env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn production_example_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/production.toml");
        let c = Config::load_from(env(&[("RENDEZVOUS_CONFIG", path)])).unwrap();
        assert!(!c.gateway.allowed_origins.is_empty());
        assert!(!c.dev_tokens() && !c.guest_sign_in() && !c.demo_enabled());
        assert_eq!(c.server.mode, ServerMode::Production);
    }

    #[test]
    fn platform_variables_override() {
        let c =
            Config::load_from(env(&[("PORT", "9000"), ("DATABASE_URL", "postgres://x/y"), ("REDIS_URL", "redis://r")]))
                .unwrap();
        assert_eq!(c.server.port, 9000);
        assert_eq!(c.database.url.as_deref(), Some("postgres://x/y"));
        assert_eq!(c.redis.url.as_deref(), Some("redis://r"));
    }

    #[test]
    fn nested_variables_override() {
        let c = Config::load_from(env(&[
            ("RENDEZVOUS__GATEWAY__MAX_CONNECTIONS", "7"),
            ("RENDEZVOUS__GATEWAY__HEARTBEAT__INTERVAL_MS", "1000"),
        ]))
        .unwrap();
        assert_eq!(c.gateway.max_connections, 7);
        assert_eq!(c.gateway.heartbeat.interval_ms, 1000);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (("PORT", "http"), "server.port"),
            (("RENDEZVOUS__GATEWAY__MAX_CONNECTIONS", "lots"), "max_connections"),
            (("RENDEZVOUS__GATEWAY__MAX_CONNECTIONS", "0"), "gateway.max_connections"),
            (("RENDEZVOUS__GATEWAY__NO_SUCH_KEY", "1"), "no_such_key"),
            (("RENDEZVOUS__SERVER__HOST", "localhost"), "server.host"),
            (("DATABASE_URL", "mysql://x"), "database.url"),
            (("REDIS_URL", "http://x"), "redis.url"),
            (("RENDEZVOUS__API__KEY", "short"), "api.key"),
            (("RENDEZVOUS__MEMORY__CRITICAL_PERCENT", "50"), "memory.critical_percent"),
            (("RENDEZVOUS__STORE__QUERY_CACHE_TTL_MS", "0"), "store.query_cache_ttl_ms"),
            (("RENDEZVOUS__BUS__CAPACITY", "0"), "bus.capacity"),
            (("RENDEZVOUS__REDIS__RECEIVE_BUFFER", "0"), "redis.receive_buffer"),
            (("RENDEZVOUS__PRESENCE__TICK_MS", "0"), "presence.tick_ms"),
            (("RENDEZVOUS__MATCHMAKING__PROPOSAL_TIMEOUT_MS", "0"), "matchmaking.proposal_timeout_ms"),
            (("RENDEZVOUS__GATEWAY__PER_USER_POLICY", "kick"), "per_user_policy"),
            (("RENDEZVOUS__SERVER__SHUTDOWN__FLUSH_MS", "0"), "server.shutdown.flush_ms"),
            (("RENDEZVOUS__GATEWAY__PENDING__MAX_SOCKETS", "0"), "gateway.pending.max_sockets"),
            (("RENDEZVOUS__DEMO__TOPIC", "Lobby"), "demo.topic"),
            (("RENDEZVOUS__DEMO__TOPIC", ""), "demo.topic"),
        ];
        for ((k, v), key) in cases {
            let err = Config::load_from(env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(key), "{k}={v}: {err}");
        }
    }

    #[test]
    fn shortcuts_follow_the_database_unless_the_mode_says_otherwise() {
        let local = Config::load_from(env(&[])).unwrap();
        assert!(local.is_development() && local.dev_tokens() && local.guest_sign_in() && local.demo_enabled());
        let pg = Config::load_from(env(&[("DATABASE_URL", "postgres://x/y")])).unwrap();
        assert!(!pg.is_development() && !pg.dev_tokens() && !pg.guest_sign_in() && !pg.demo_enabled());
        let demo = Config::load_from(env(&[("DATABASE_URL", "postgres://x/y"), ("RENDEZVOUS__DEMO__ENABLED", "true")]));
        assert!(demo.unwrap().demo_enabled(), "the demo page itself is no shortcut: allowed anywhere");
        let dev =
            Config::load_from(env(&[("DATABASE_URL", "postgres://x/y"), ("RENDEZVOUS__SERVER__MODE", "development")]))
                .unwrap();
        assert!(dev.dev_tokens() && dev.guest_sign_in());
        let prod = Config::load_from(env(&[("RENDEZVOUS__SERVER__MODE", "production")])).unwrap();
        assert!(!prod.dev_tokens() && !prod.guest_sign_in());
        let opted_out = Config::load_from(env(&[("RENDEZVOUS__AUTH__DEV_TOKENS", "false")])).unwrap();
        assert!(!opted_out.dev_tokens() && opted_out.guest_sign_in());
    }

    #[test]
    fn shortcuts_turned_on_against_a_database_server_refuse_to_start() {
        for (key, var) in [
            ("auth.dev_tokens", "RENDEZVOUS__AUTH__DEV_TOKENS"),
            ("api.guest_sign_in", "RENDEZVOUS__API__GUEST_SIGN_IN"),
        ] {
            let err =
                Config::load_from(env(&[("DATABASE_URL", "postgres://x/y"), (var, "true")])).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("server.mode"), "{err}");
            let err = Config::load_from(env(&[("RENDEZVOUS__SERVER__MODE", "production"), (var, "true")])).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = Config::load_from(env(&[("RENDEZVOUS__SERVER__MODE", "staging")])).unwrap_err().to_string();
        assert!(err.contains("mode"), "{err}");
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Config::load_from(env(&[("RENDEZVOUS_CONFIG", "/nonexistent.toml")])).unwrap_err();
        assert!(err.to_string().contains("RENDEZVOUS_CONFIG"));
    }
}

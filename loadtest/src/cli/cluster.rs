//! Flags of the `cluster` scenario: several instances of one server (over Redis).

use std::time::Duration;

use clap::Args;

use super::{Output, Sources, at_least_one, loopback, non_negative, secs};

/// `cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The instances' address (IPv4 loopback only).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1", value_parser = loopback, help_heading = "Target")]
    pub host: std::net::Ipv4Addr,
    /// The instances' ports, comma-separated; users are spread over them (one port: the
    /// single-instance baseline, where no call crosses).
    #[arg(long, value_name = "P,P,...", value_delimiter = ',', required = true, num_args = 1.., help_heading = "Target")]
    pub ports: Vec<u16>,
    /// WebSocket path.
    #[arg(long, default_value = "/ws", help_heading = "Target")]
    pub path: String,
    /// Port of the Redis server the instances share (loopback): PUBLISH/SPUBLISH calls are
    /// read from `INFO commandstats` around the presence windows.
    #[arg(long, value_name = "PORT", help_heading = "Target")]
    pub redis_port: Option<u16>,
    #[command(flatten)]
    pub sources: Sources,
    /// App API key: invites need real profiles, so callers are created through the API.
    #[arg(long, value_name = "KEY", env = "RENDEZVOUS__API__KEY", hide_env_values = true, help_heading = "Signaling")]
    pub api_key: String,
    /// Calls: even-numbered ones have both sides on one instance, odd ones span two.
    #[arg(long, value_name = "N", default_value_t = 600, value_parser = at_least_one, help_heading = "Signaling")]
    pub pairs: usize,
    /// `call.signal` messages per second over all calls and both sides.
    #[arg(long, value_name = "R", default_value_t = 10_000.0, value_parser = non_negative, help_heading = "Signaling")]
    pub signal_rate: f64,
    /// How long the signals are sent.
    #[arg(long = "signal-secs", value_name = "S", default_value = "10", value_parser = secs, help_heading = "Signaling")]
    pub signal_duration: Duration,
    /// Presence subscribers (dev tokens `dev-<prefix>p-<i>`; needs development mode),
    /// subscriber i on instance i mod n.
    #[arg(long, value_name = "N", default_value_t = 1500, help_heading = "Presence")]
    pub subscribers: usize,
    /// Topics `cluster:<t>`; each has subscribers on every instance.
    #[arg(long, value_name = "T", default_value_t = 15, value_parser = at_least_one, help_heading = "Presence")]
    pub topics: usize,
    /// The first C subscribers also send `presence.set` (spread over instances and topics).
    #[arg(long, value_name = "C", default_value_t = 600, help_heading = "Presence")]
    pub changers: usize,
    /// `presence.set` messages per second over all changers.
    #[arg(long, value_name = "R", default_value_t = 300.0, value_parser = non_negative, help_heading = "Presence")]
    pub change_rate: f64,
    /// The servers' presence.tick_ms, to turn publish counts into publishes per tick.
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Presence")]
    pub tick_ms: u64,
    /// Window with subscribers but no changes (the baseline of bus traffic).
    #[arg(long = "idle-secs", value_name = "S", default_value = "6", value_parser = secs, help_heading = "Presence")]
    pub idle: Duration,
    /// Window with changes.
    #[arg(long = "presence-secs", value_name = "S", default_value = "20", value_parser = secs, help_heading = "Presence")]
    pub presence_duration: Duration,
    /// Handshakes in flight at once, per instance.
    #[arg(long, value_name = "C", default_value_t = 128, value_parser = at_least_one, help_heading = "Connections")]
    pub concurrency: usize,
    /// API requests in flight during setup.
    #[arg(long, value_name = "C", default_value_t = 16, value_parser = at_least_one, help_heading = "Connections")]
    pub setup_concurrency: usize,
    /// TCP connect + upgrade + welcome, per connection.
    #[arg(long = "connect-timeout-secs", value_name = "S", default_value = "10", value_parser = secs, help_heading = "Connections")]
    pub connect_timeout: Duration,
    /// User names / ids start with this.
    #[arg(long, value_name = "S", default_value = "cl", help_heading = "Connections")]
    pub user_prefix: String,
    /// Hard bound for the whole run.
    #[arg(long = "max-secs", value_name = "S", default_value = "300", value_parser = secs, help_heading = "Time")]
    pub max: Duration,
    #[command(flatten)]
    pub output: Output,
}

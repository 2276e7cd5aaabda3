//! Flags of the domain scenarios: `presence` and `matchmaking`.

use std::time::Duration;

use clap::Args;

use super::{Output, Sources, Target, at_least_one, non_negative, secs};
use crate::http::HttpUrl;

/// Connection settings both domain scenarios share.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connections")]
pub struct Conns {
    /// WebSocket path.
    #[arg(long, default_value = "/ws")]
    pub path: String,
    /// Handshakes in flight at once.
    #[arg(long, value_name = "C", default_value_t = 256, value_parser = at_least_one)]
    pub concurrency: usize,
    /// TCP connect + upgrade + welcome, per connection.
    #[arg(long = "connect-timeout-secs", value_name = "S", default_value = "10", value_parser = secs)]
    pub connect_timeout: Duration,
    /// http://HOST:PORT/health for the gateway byte counters and memory (default: the target's).
    #[arg(long, value_name = "URL")]
    pub health_url: Option<HttpUrl>,
    /// The server's pid, for its CPU time (/proc/<pid>/stat) and VmRSS.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Hard bound for the whole run.
    #[arg(long = "max-secs", value_name = "S", default_value = "240", value_parser = secs)]
    pub max: Duration,
}

/// `presence`.
#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub sources: Sources,
    #[command(flatten)]
    pub conns: Conns,
    /// Connections, each subscribed to the topic (dev tokens `dev-<prefix>-<i>`).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = at_least_one, help_heading = "Load")]
    pub subscribers: usize,
    /// The first C subscribers also send `presence.set`.
    #[arg(long, value_name = "C", default_value_t = 5_000, help_heading = "Load")]
    pub changers: usize,
    /// `presence.set` messages per second over all changers.
    #[arg(long, value_name = "R", default_value_t = 1000.0, value_parser = non_negative, help_heading = "Load")]
    pub change_rate: f64,
    /// The topic everyone subscribes to.
    #[arg(long, value_name = "T", default_value = "lobby:load", help_heading = "Load")]
    pub topic: String,
    /// Offer permessage-deflate (client_max_window_bits, as browsers do).
    #[arg(long, help_heading = "Load")]
    pub deflate: bool,
    /// User ids are <S>-<i>.
    #[arg(long, value_name = "S", default_value = "pr", help_heading = "Load")]
    pub user_prefix: String,
    /// After every subscriber has its snapshot, wait this long (ticks settle) before measuring.
    #[arg(long = "settle-secs", value_name = "S", default_value = "5", value_parser = secs, help_heading = "Time")]
    pub settle: Duration,
    /// How long the changers send and deliveries are counted.
    #[arg(long = "duration-secs", value_name = "S", default_value = "20", value_parser = secs, help_heading = "Time")]
    pub duration: Duration,
    #[command(flatten)]
    pub output: Output,
}

/// `matchmaking`.
#[derive(Debug, Clone, Args)]
pub struct MatchmakingArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub sources: Sources,
    #[command(flatten)]
    pub conns: Conns,
    /// App API key: matchmaking needs real profiles, so users are created through the API.
    #[arg(long, value_name = "KEY", env = "RENDEZVOUS__API__KEY", hide_env_values = true, help_heading = "Load")]
    pub api_key: String,
    /// Users (2 per pair), each with a session.
    #[arg(long, value_name = "M", default_value_t = 4_000, value_parser = at_least_one, help_heading = "Load")]
    pub users: usize,
    /// Times every user joins the queue (needs a short matchmaking.cooldown_ms to re-meet).
    #[arg(long, value_name = "K", default_value_t = 3, value_parser = at_least_one, help_heading = "Load")]
    pub rounds: usize,
    /// `call.signal` messages each side sends per call (first an offer/answer, then ice).
    #[arg(long, value_name = "S", default_value_t = 5, help_heading = "Load")]
    pub signals: usize,
    /// `call.signal` messages per second over all calls (0 = as fast as they go).
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = non_negative, help_heading = "Load")]
    pub signal_rate: f64,
    /// API requests in flight during setup.
    #[arg(long, value_name = "C", default_value_t = 16, value_parser = at_least_one, help_heading = "Load")]
    pub setup_concurrency: usize,
    /// Created users get display names <S>-<i>.
    #[arg(long, value_name = "S", default_value = "mm", help_heading = "Load")]
    pub user_prefix: String,
    /// Per round: how long to wait for every user's call to end.
    #[arg(long = "round-secs", value_name = "S", default_value = "60", value_parser = secs, help_heading = "Time")]
    pub round: Duration,
    #[command(flatten)]
    pub output: Output,
}

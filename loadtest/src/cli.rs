//! The command line (clap derive): one subcommand per scenario, each with only the flags
//! it uses, so `rendezvous-loadtest <scenario> --help` documents exactly what applies.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::http::HttpUrl;

mod cluster;
mod domain;
pub use cluster::ClusterArgs;
pub use domain::{MatchmakingArgs, PresenceArgs};

/// Load generator for Rendezvous: many authenticated WebSocket connections and app API
/// calls from loopback source addresses, bounded in count and time.
#[derive(Debug, Parser)]
#[command(
    name = "rendezvous-loadtest",
    version,
    subcommand_value_name = "SCENARIO",
    subcommand_help_heading = "Scenarios"
)]
#[command(after_long_help = "\
Every target and source address must be IPv4 loopback (127.0.0.0/8).
Run `rendezvous-loadtest <SCENARIO> --help` for the flags of one scenario.

On a terminal a progress line shows the scenario, how far it is and the time elapsed; it is
left out when stdout is not a terminal or CI=true. Save a summary with `--json FILE` and
diff two with `rendezvous-loadtest compare OLD NEW`.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hold N connections idle, then close them cleanly.
    ///
    /// Opens N authenticated connections (dev tokens `dev-<prefix><process>-<i>`), paced by
    /// --rate and --concurrency; waits --settle-secs, samples the server (--health-url,
    /// --server-pid), holds --hold-secs answering pings, then closes each with a clean
    /// closing handshake. Reports connect latency, failures and drops by reason, and the
    /// server's memory. Exits 1 unless every connection came up and closed cleanly.
    Idle(IdleArgs),
    /// Authenticated connects per second, session cache cold and warm.
    ///
    /// Creates U users with a session each through the app API, then connects + waits for
    /// welcome + closes with every token twice: first uncached (session LRU miss, database),
    /// then cached. Reports connects/s, latency and the session cache counters per phase.
    ConnectRate(ConnectRateArgs),
    /// Profile reads with Zipf-distributed popularity.
    ///
    /// Creates U users, then performs R reads of GET /api/users/{id} with ids drawn from
    /// Zipf(--zipf-s) over a seeded popularity order. Reports requests/s, latency and the
    /// user/query cache hit rates over the reads.
    Zipf(ZipfArgs),
    /// Presence fan-out: N subscribers of one topic, C of them changing state at rate R.
    ///
    /// Connects N users (dev tokens), samples the server's memory, subscribes all of them
    /// to one topic, samples again (memory per subscription), then for --duration-secs the
    /// first C send `presence.set` (available/away alternately, a new status each time) at
    /// R per second in total. Reports presence entries delivered per second (snapshot
    /// entries + diff joins/updates/leaves over all subscribers), how long after the tick
    /// (the message's `tick_at`) each subscriber received it, how far behind the first
    /// subscriber of the same `seq` (the fan-out spread), the server's CPU (--server-pid)
    /// and bytes out (/health). A message the process has already parsed for another
    /// subscriber is recognized by its bytes, not parsed again.
    Presence(PresenceArgs),
    /// Matchmaking: M users join, accept, signal, hang up, for K rounds.
    ///
    /// Creates M users with sessions (app API), connects them, and each round every user
    /// joins the queue (again after `busy`/`unavailable`, 50-150 ms later) and accepts its
    /// proposal; once all are in calls (or matching stalls for 5 s) each side sends
    /// --signals `call.signal`s stamped with their send time, at --signal-rate in total,
    /// and the offerer hangs up. Reports matches per second, join → confirmed latency,
    /// relay latency and any user with two overlapping calls (a double match).
    Matchmaking(MatchmakingArgs),
    /// Several instances of one server (over Redis): signaling and presence across them.
    ///
    /// Signaling: --pairs calls set up by invite (users created through the app API), every
    /// other one with its two sides on different instances; both sides send `call.signal`s
    /// at --signal-rate in total, and relay latency is reported same-instance vs
    /// cross-instance. Presence: --subscribers (dev tokens) over every instance and
    /// --topics topics, --changers on every instance; change-to-receipt lag by whether the
    /// change was made on the subscriber's instance, entries delivered per second, and bus
    /// publishes per tick (Redis INFO commandstats with --redis-port, and each /health).
    Cluster(ClusterArgs),
    /// The kernel's floor under a fan-out: loopback TCP alone, no server.
    ///
    /// Opens N socket pairs in this process; each round (after --pause-ms, so the sockets
    /// are cold as between two presence ticks) --writers threads write B bytes to every
    /// socket in turn, as a tick sends one message per subscriber, and another thread reads
    /// them through epoll. Reports the CPU per write and per read (thread clocks) and when
    /// each message was complete after its round started: what no server on this machine
    /// can beat.
    Floor(FloorArgs),
    /// Fetch /health once and print the connection and memory figures.
    Health(HealthArgs),
    /// Diff two JSON summaries figure by figure.
    ///
    /// Reads two summaries written by `--json FILE` (same scenario) and prints every
    /// figure: old, new, absolute and percent change. A figure that got worse by more than
    /// --threshold percent is flagged REGRESSION (latencies, failures, memory: lower is
    /// better; rates, connections, hit rates: higher is better); settings that differ are
    /// flagged too. Exits 1 if there is a regression, 2 if the files cannot be compared.
    Compare(CompareArgs),
}

/// Where the server listens.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Target")]
pub struct Target {
    /// Server address (IPv4 loopback only).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1", value_parser = loopback)]
    pub host: Ipv4Addr,
    /// Server port.
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    pub port: u16,
}

impl Target {
    pub fn addr(&self) -> std::net::SocketAddrV4 {
        std::net::SocketAddrV4::new(self.host, self.port)
    }

    /// `--health-url` if given, else `http://HOST:PORT/health`.
    pub fn health_url(&self, given: Option<&HttpUrl>) -> HttpUrl {
        given.cloned().unwrap_or_else(|| HttpUrl { addr: self.addr(), path: "/health".into() })
    }
}

/// Which loopback addresses the client binds before connecting (each gives its own
/// range of ephemeral ports).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sources")]
pub struct Sources {
    /// Loopback source addresses to bind, comma-separated.
    #[arg(long, value_name = "A,B,...", value_delimiter = ',', value_parser = loopback, default_value = "127.0.0.1")]
    sources: Vec<Ipv4Addr>,
    /// Shorthand for --sources 127.0.0.2 .. 127.0.0.(K+1).
    #[arg(long, value_name = "K", conflicts_with = "sources", value_parser = clap::value_parser!(u8).range(1..=250))]
    source_count: Option<u8>,
}

impl Sources {
    /// The addresses to use, never empty.
    pub fn addrs(&self) -> Vec<Ipv4Addr> {
        match self.source_count {
            Some(k) => (0..k).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect(),
            None => self.sources.clone(),
        }
    }
}

/// Where the summary goes.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Output")]
pub struct Output {
    /// Write the summary as JSON to FILE as well as the table to stdout; with no FILE (or
    /// `-`), print the JSON to stdout instead of the table.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
}

/// `idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: Target,
    /// WebSocket path.
    #[arg(long, default_value = "/ws", help_heading = "Target")]
    pub path: String,
    #[command(flatten)]
    pub sources: Sources,
    /// Connections in total, over all processes.
    #[arg(long, value_name = "N", default_value_t = 100, help_heading = "Load")]
    pub connections: usize,
    /// Fork P child processes with N/P connections each (to stay under the open-file limit).
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = at_least_one, help_heading = "Load")]
    pub processes: usize,
    /// Handshakes in flight at once, per process.
    #[arg(long, value_name = "C", default_value_t = 200, value_parser = at_least_one, help_heading = "Load")]
    pub concurrency: usize,
    /// Connection attempts per second over all processes (0 = unlimited).
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = non_negative, help_heading = "Load")]
    pub rate: f64,
    /// Offer permessage-deflate; client_max_window_bits (as browsers do).
    #[arg(long, help_heading = "Load")]
    pub deflate: bool,
    /// User ids are <S><process>-<i>.
    #[arg(long, value_name = "S", default_value = "lt", help_heading = "Load")]
    pub user_prefix: String,
    /// TCP connect + upgrade + welcome, per connection.
    #[arg(long = "connect-timeout-secs", value_name = "S", default_value = "10", value_parser = secs, help_heading = "Time")]
    pub connect_timeout: Duration,
    /// Wait after the last connection before sampling the server.
    #[arg(long = "settle-secs", value_name = "S", default_value = "2", value_parser = secs, help_heading = "Time")]
    pub settle: Duration,
    /// Keep the connections idle this long after sampling.
    #[arg(long = "hold-secs", value_name = "S", default_value = "10", value_parser = secs, help_heading = "Time")]
    pub hold: Duration,
    /// Hard bound for the whole run.
    #[arg(long = "max-secs", value_name = "S", default_value = "300", value_parser = secs, help_heading = "Time")]
    pub max: Duration,
    /// http://HOST:PORT/health, sampled once all connections are up.
    #[arg(long, value_name = "URL", help_heading = "Server sample")]
    pub health_url: Option<HttpUrl>,
    /// Also read VmRSS of this process (Linux /proc) at that moment.
    #[arg(long, value_name = "PID", help_heading = "Server sample")]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub output: Output,
    /// Set in child processes (--processes): this child's index. It reports JSON lines on
    /// stdout and holds until the parent writes a line on its stdin.
    #[arg(long, hide = true)]
    pub child: Option<usize>,
}

/// What both store scenarios need: the app API and the users it creates.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Store")]
pub struct Store {
    /// App API key.
    #[arg(long, value_name = "KEY", env = "RENDEZVOUS__API__KEY", hide_env_values = true, value_parser = non_empty)]
    pub api_key: String,
    /// API requests in flight during setup (one kept-alive connection each).
    #[arg(long, value_name = "C", default_value_t = 16, value_parser = at_least_one)]
    pub setup_concurrency: usize,
    /// Created users get display names <S>-<i>.
    #[arg(long, value_name = "S", default_value = "lt")]
    pub user_prefix: String,
    /// Where to read the cache counters (default http://HOST:PORT/health).
    #[arg(long, value_name = "URL")]
    pub health_url: Option<HttpUrl>,
    /// Hard bound for the whole run.
    #[arg(long = "max-secs", value_name = "S", default_value = "300", value_parser = secs)]
    pub max: Duration,
}

/// `connect-rate`.
#[derive(Debug, Clone, Args)]
pub struct ConnectRateArgs {
    #[command(flatten)]
    pub target: Target,
    /// WebSocket path.
    #[arg(long, default_value = "/ws", help_heading = "Target")]
    pub path: String,
    #[command(flatten)]
    pub sources: Sources,
    #[command(flatten)]
    pub store: Store,
    /// Users to create (one session each).
    #[arg(long, value_name = "U", default_value_t = 1000, value_parser = at_least_one, help_heading = "Load")]
    pub users: usize,
    /// Connects in flight at once.
    #[arg(long, value_name = "C", default_value_t = 32, value_parser = at_least_one, help_heading = "Load")]
    pub concurrency: usize,
    /// Offer permessage-deflate; client_max_window_bits.
    #[arg(long, help_heading = "Load")]
    pub deflate: bool,
    /// TCP connect + upgrade + welcome, per connection.
    #[arg(long = "connect-timeout-secs", value_name = "S", default_value = "10", value_parser = secs, help_heading = "Load")]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub output: Output,
}

/// `zipf`.
#[derive(Debug, Clone, Args)]
pub struct ZipfArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub store: Store,
    /// Users to create.
    #[arg(long, value_name = "U", default_value_t = 10_000, value_parser = at_least_one, help_heading = "Load")]
    pub users: usize,
    /// Reads in total.
    #[arg(long, value_name = "R", default_value_t = 200_000, help_heading = "Load")]
    pub reads: usize,
    /// Zipf exponent (0 = uniform).
    #[arg(long, value_name = "S", default_value_t = 1.0, value_parser = non_negative, help_heading = "Load")]
    pub zipf_s: f64,
    /// Random seed for the popularity order and the draws.
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Load")]
    pub seed: u64,
    /// Reads in flight at once (one kept-alive connection each).
    #[arg(long, value_name = "C", default_value_t = 32, value_parser = at_least_one, help_heading = "Load")]
    pub concurrency: usize,
    #[command(flatten)]
    pub output: Output,
}

/// `health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub target: Target,
    /// Fetch this URL instead of http://HOST:PORT/health.
    #[arg(long, value_name = "URL", help_heading = "Server sample")]
    pub health_url: Option<HttpUrl>,
    /// Also read VmRSS of this process (Linux /proc).
    #[arg(long, value_name = "PID", help_heading = "Server sample")]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub output: Output,
}

/// `floor`.
#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Socket pairs; both ends are in this process (two open files each).
    #[arg(long, value_name = "N", default_value_t = 5_000, value_parser = at_least_one)]
    pub conns: usize,
    /// Bytes written to each socket per round (a presence window of 100 entries is ~12.9 KB
    /// of JSON, ~1 KB deflated).
    #[arg(long, value_name = "B", default_value_t = 1_000, value_parser = message_bytes)]
    pub bytes: usize,
    /// Rounds (ticks).
    #[arg(long, value_name = "R", default_value_t = 5, value_parser = rounds)]
    pub rounds: usize,
    /// Threads writing, each to an equal share of the sockets (the server runs one runtime
    /// worker per core).
    #[arg(long, value_name = "W", default_value_t = 1, value_parser = writers)]
    pub writers: usize,
    /// Pause before each round.
    #[arg(long = "pause-ms", value_name = "MS", default_value = "500", value_parser = millis)]
    pub pause: Duration,
    /// Address to listen and connect on (IPv4 loopback only).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1", value_parser = loopback)]
    pub host: Ipv4Addr,
    /// Hard bound for the whole run.
    #[arg(long = "max-secs", value_name = "S", default_value = "120", value_parser = secs)]
    pub max: Duration,
    #[command(flatten)]
    pub output: Output,
}

/// `compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The baseline: a summary written by `--json FILE`.
    pub old: PathBuf,
    /// The summary to judge against it (same scenario).
    pub new: PathBuf,
    /// A figure that got worse by more than this many percent is a regression.
    #[arg(long, value_name = "PCT", default_value_t = 10.0, value_parser = non_negative)]
    pub threshold: f64,
}

fn loopback(v: &str) -> Result<Ipv4Addr, String> {
    match v.trim().parse::<Ipv4Addr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        Ok(ip) => Err(format!("{ip} is not a loopback address (127.0.0.0/8)")),
        Err(_) => Err(format!("`{v}` is not an IPv4 address")),
    }
}

fn at_least_one(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{v}` is not a whole number of at least 1")),
    }
}

fn non_negative(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x >= 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("`{v}` is not a non-negative number")),
    }
}

fn secs(v: &str) -> Result<Duration, String> {
    non_negative(v)
        .and_then(|s| Duration::try_from_secs_f64(s).map_err(|e| e.to_string()))
        .map_err(|_| format!("`{v}` is not a number of seconds"))
}

fn whole_in(v: &str, lo: usize, hi: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("`{v}` is not a whole number from {lo} to {hi}")),
    }
}

fn message_bytes(v: &str) -> Result<usize, String> {
    whole_in(v, 1, 1 << 20)
}

fn rounds(v: &str) -> Result<usize, String> {
    whole_in(v, 1, 1000)
}

fn writers(v: &str) -> Result<usize, String> {
    whole_in(v, 1, 64)
}

fn millis(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(ms) if ms <= 60_000 => Ok(Duration::from_millis(ms)),
        _ => Err(format!("`{v}` is not a whole number of milliseconds up to 60000")),
    }
}

fn non_empty(v: &str) -> Result<String, String> {
    if v.is_empty() { Err("must not be empty".into()) } else { Ok(v.to_owned()) }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(s: &str) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("rendezvous-loadtest").chain(s.split_whitespace())).map(|c| c.command)
    }

    fn idle(s: &str) -> IdleArgs {
        match parse(&format!("idle {s}")).unwrap() {
            Command::Idle(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn refuses_non_loopback_bad_numbers_and_unknown_flags() {
        let err = |s: &str| parse(s).unwrap_err().to_string();
        assert!(err("idle --sources 127.0.0.2,10.0.0.1").contains("loopback"));
        assert!(err("idle --host 192.0.2.1").contains("loopback"));
        assert!(err("idle --bogus").contains("--bogus"));
        assert!(err("idle --processes 0").contains("at least 1"));
        assert!(err("idle --rate -1").contains("-1"));
        assert!(err("idle --sources 127.0.0.2 --source-count 2").contains("cannot be used with"));
        assert!(err("idle --source-count 251").contains("251"));
        assert!(err("idle --health-url http://192.0.2.1/health").contains("loopback"));
        assert!(err("--json").contains("--json"));
        assert!(err("zipf --api-key k --zipf-s -1").contains("-1"));
        assert!(err("floor --host 192.0.2.1").contains("loopback"));
        assert!(err("floor --bytes 0").contains("from 1 to 1048576"));
        assert!(err("floor --rounds 1001").contains("from 1 to 1000"));
        assert!(err("floor --writers 0").contains("from 1 to 64"));
        assert!(err("floor --pause-ms 60001").contains("up to 60000"));
        match parse("floor --conns 9000 --bytes 12948 --writers 2").unwrap() {
            Command::Floor(a) => assert_eq!((a.conns, a.bytes, a.rounds, a.writers), (9000, 12948, 5, 2)),
            other => panic!("{other:?}"),
        }
        // Flags of one scenario are not silently accepted by another.
        assert!(err("zipf --api-key k --deflate").contains("--deflate"));
    }

    #[test]
    fn store_scenarios_have_their_own_defaults() {
        let Command::Zipf(z) = parse("zipf --api-key 0123456789abcdef").unwrap() else { panic!() };
        assert_eq!(
            (z.users, z.reads, z.concurrency, z.zipf_s, z.store.setup_concurrency),
            (10_000, 200_000, 32, 1.0, 16)
        );
        let Command::ConnectRate(c) = parse("connect-rate --api-key k --users 50 --concurrency 8").unwrap() else {
            panic!()
        };
        assert_eq!((c.users, c.concurrency, c.store.max), (50, 8, Duration::from_secs(300)));
        assert_eq!(idle("").concurrency, 200);
    }

    #[test]
    fn json_takes_an_optional_file() {
        assert_eq!(idle("").output.json, None);
        assert_eq!(idle("--json").output.json, Some(PathBuf::from("-")));
        assert_eq!(idle("--json --port 9").output.json, Some(PathBuf::from("-")));
        assert_eq!(idle("--json out.json --port 9").output.json, Some(PathBuf::from("out.json")));
        let Command::Compare(c) = parse("compare a.json b.json --threshold 5").unwrap() else { panic!() };
        assert_eq!((c.old, c.new, c.threshold), ("a.json".into(), "b.json".into(), 5.0));
    }

    /// The commands in BENCHMARKS.md and scripts/ must keep parsing.
    #[test]
    fn documented_commands_parse() {
        for cmd in [
            "idle --port 18090 --connections 10000 --processes 2 --source-count 4 --concurrency 256 \
             --settle-secs 3 --hold-secs 2 --max-secs 180 --deflate \
             --health-url http://127.0.0.1:18090/health --server-pid 42 --json",
            "idle --port 18090 --connections 300 --source-count 1 --user-prefix warm --settle-secs 0 \
             --hold-secs 1 --max-secs 60 --json",
            "health --port 18090 --json",
            "connect-rate --port 18190 --max-secs 300 --json --users 10000 --concurrency 32 --source-count 4 \
             --api-key k",
            "zipf --port 18190 --max-secs 300 --json --users 10000 --reads 200000 --zipf-s 1.0 \
             --concurrency 32 --api-key k",
            "presence --port 18421 --source-count 2 --subscribers 10000 --changers 5000 --change-rate 1000 \
             --settle-secs 5 --duration-secs 20 --max-secs 180 --server-pid 42 --deflate --json p.json",
            "matchmaking --port 18450 --api-key loadtest-0123456789abcdef --source-count 2 --users 4000 \
             --rounds 3 --signals 10 --signal-rate 20000 --max-secs 300 --server-pid 42 --json m.json",
            "cluster --ports 18601,18602,18603 --redis-port 18600 --api-key loadtest-0123456789abcdef \
             --pairs 600 --signal-rate 10000 --signal-secs 10 --subscribers 1500 --topics 15 --changers 600 \
             --change-rate 300 --presence-secs 20 --source-count 2 --max-secs 240 --json c.json",
        ] {
            parse(cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"));
        }
    }
}

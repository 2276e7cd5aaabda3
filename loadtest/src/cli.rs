//! Command-line parsing (by hand: a flat list of `--flag value` options).

use std::net::Ipv4Addr;
use std::time::Duration;

pub const USAGE: &str = "usage: rendezvous-loadtest <scenario> [options]

Scenarios:
  idle          open N authenticated connections, hold them idle, close them cleanly
  connect-rate  create U users with a session each (app API), then connect + welcome + close
                with every token twice: first uncached (session LRU miss, database), then
                cached; connects/s, latency and the session cache counters per phase
  zipf          create U users, then R reads of GET /api/users/{id} with Zipf-distributed
                ids; requests/s and the user/query cache hit rates over the reads
  health        fetch /health once and print the connection and memory figures

Target:
  --host HOST               server address (default 127.0.0.1)
  --port PORT               server port (default 8080)
  --path PATH               WebSocket path (default /ws)
  --health-url URL          http://HOST:PORT/health, sampled once all connections are up
  --server-pid PID          also read VmRSS of this process (Linux /proc) at that moment

Load (idle):
  --connections N           connections in total, over all processes (default 100)
  --processes P             fork P child processes, each with N/P connections (default 1)
  --sources A,B,...         loopback source addresses to bind (default 127.0.0.1)
  --source-count K          shorthand for --sources 127.0.0.2 .. 127.0.0.(K+1)
  --concurrency C           handshakes in flight at once, per process (default 200)
  --rate R                  connection attempts per second, over all processes (0 = unlimited; default 0)
  --deflate                 offer permessage-deflate; client_max_window_bits
  --user-prefix S           user ids are <S><process>-<i> (default lt)
  --connect-timeout-secs S  TCP connect + upgrade + welcome, per connection (default 10)
  --settle-secs S           wait after the last connection before sampling (default 2)
  --hold-secs S             keep the connections idle this long after sampling (default 10)
  --max-secs S              hard bound for the whole run (default 300)

Store (connect-rate, zipf):
  --api-key KEY             app API key (default: $RENDEZVOUS__API__KEY)
  --users U                 users to create (default: connect-rate 1000, zipf 10000)
  --setup-concurrency C     API requests in flight during setup (default 16)
  --reads R                 zipf: reads in total (default 200000)
  --zipf-s S                zipf: exponent (default 1.0)
  --seed N                  zipf: random seed (default 1)
  --concurrency C           connects / reads in flight (default 32 for these scenarios)
  (--health-url defaults to http://HOST:PORT/health; --source-count, --connect-timeout-secs
   and --max-secs apply)

Output:
  --json                    print the report as JSON instead of a table
  -h, --help                this text";

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Idle,
    ConnectRate,
    Zipf,
    Health,
}

/// Parsed options.
#[derive(Debug, Clone)]
pub struct Args {
    pub scenario: Scenario,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub health_url: Option<String>,
    pub server_pid: Option<u32>,
    pub connections: usize,
    pub processes: usize,
    pub sources: Vec<Ipv4Addr>,
    pub concurrency: usize,
    pub rate: f64,
    pub deflate: bool,
    pub user_prefix: String,
    pub connect_timeout: Duration,
    pub settle: Duration,
    pub hold: Duration,
    pub max: Duration,
    pub json: bool,
    pub api_key: Option<String>,
    pub users: usize,
    pub setup_concurrency: usize,
    pub reads: usize,
    pub zipf_s: f64,
    pub seed: u64,
    /// Set in child processes: this child's index; it reports JSON lines on stdout
    /// and holds until the parent writes a line on stdin.
    pub child: Option<usize>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            scenario: Scenario::Idle,
            host: "127.0.0.1".into(),
            port: 8080,
            path: "/ws".into(),
            health_url: None,
            server_pid: None,
            connections: 100,
            processes: 1,
            sources: vec![Ipv4Addr::LOCALHOST],
            concurrency: 200,
            rate: 0.0,
            deflate: false,
            user_prefix: "lt".into(),
            connect_timeout: Duration::from_secs(10),
            settle: Duration::from_secs(2),
            hold: Duration::from_secs(10),
            max: Duration::from_secs(300),
            json: false,
            api_key: None,
            users: 0,
            setup_concurrency: 16,
            reads: 200_000,
            zipf_s: 1.0,
            seed: 1,
            child: None,
        }
    }
}

/// `Ok(None)` means help was printed.
pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args::default();
    let mut it = argv.into_iter();
    let mut scenario = None;
    let (mut concurrency, mut users) = (None, None);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "idle" if scenario.is_none() => scenario = Some(Scenario::Idle),
            "health" if scenario.is_none() => scenario = Some(Scenario::Health),
            "connect-rate" if scenario.is_none() => scenario = Some(Scenario::ConnectRate),
            "zipf" if scenario.is_none() => scenario = Some(Scenario::Zipf),
            "--host" => args.host = value(&arg)?,
            "--port" => args.port = num(&arg, &value(&arg)?)?,
            "--path" => args.path = value(&arg)?,
            "--health-url" => args.health_url = Some(value(&arg)?),
            "--server-pid" => args.server_pid = Some(num(&arg, &value(&arg)?)?),
            "--connections" => args.connections = num(&arg, &value(&arg)?)?,
            "--processes" => args.processes = num(&arg, &value(&arg)?)?,
            "--sources" => args.sources = sources(&value(&arg)?)?,
            "--source-count" => {
                let k: u8 = num(&arg, &value(&arg)?)?;
                if k == 0 || k > 250 {
                    return Err("--source-count must be 1..=250".into());
                }
                args.sources = (0..k).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect();
            }
            "--concurrency" => concurrency = Some(num(&arg, &value(&arg)?)?),
            "--rate" => args.rate = num(&arg, &value(&arg)?)?,
            "--deflate" => args.deflate = true,
            "--user-prefix" => args.user_prefix = value(&arg)?,
            "--connect-timeout-secs" => args.connect_timeout = secs(&arg, &value(&arg)?)?,
            "--settle-secs" => args.settle = secs(&arg, &value(&arg)?)?,
            "--hold-secs" => args.hold = secs(&arg, &value(&arg)?)?,
            "--max-secs" => args.max = secs(&arg, &value(&arg)?)?,
            "--json" => args.json = true,
            "--child" => args.child = Some(num(&arg, &value(&arg)?)?),
            "--api-key" => args.api_key = Some(value(&arg)?),
            "--users" => users = Some(num(&arg, &value(&arg)?)?),
            "--setup-concurrency" => args.setup_concurrency = num(&arg, &value(&arg)?)?,
            "--reads" => args.reads = num(&arg, &value(&arg)?)?,
            "--zipf-s" => args.zipf_s = num(&arg, &value(&arg)?)?,
            "--seed" => args.seed = num(&arg, &value(&arg)?)?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    args.scenario = scenario.ok_or("missing scenario (idle, connect-rate, zipf or health)")?;
    let store_scenario = matches!(args.scenario, Scenario::ConnectRate | Scenario::Zipf);
    args.concurrency = concurrency.unwrap_or(if store_scenario { 32 } else { args.concurrency });
    args.users = users.unwrap_or(if args.scenario == Scenario::Zipf { 10_000 } else { 1000 });
    if args.processes == 0 || args.concurrency == 0 || args.setup_concurrency == 0 {
        return Err("--processes, --concurrency and --setup-concurrency must be at least 1".into());
    }
    if store_scenario {
        args.api_key = args.api_key.or_else(|| std::env::var("RENDEZVOUS__API__KEY").ok()).filter(|k| !k.is_empty());
        if args.api_key.is_none() {
            return Err("this scenario needs --api-key or RENDEZVOUS__API__KEY".into());
        }
        if args.users == 0 {
            return Err("--users must be at least 1".into());
        }
        if !(args.zipf_s >= 0.0 && args.zipf_s.is_finite()) {
            return Err("--zipf-s must be a non-negative number".into());
        }
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err("--rate must be a non-negative number".into());
    }
    if args.sources.is_empty() {
        return Err("--sources needs at least one address".into());
    }
    match args.host.parse::<Ipv4Addr>() {
        Ok(ip) if ip.is_loopback() => {}
        _ => {
            return Err(format!("--host {} is not an IPv4 loopback address", args.host));
        }
    }
    if let Some(bad) = args.sources.iter().find(|ip| !ip.is_loopback()) {
        return Err(format!("source {bad} is not a loopback address"));
    }
    Ok(Some(args))
}

fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{name}: `{v}` is not a valid number"))
}

fn secs(name: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = num(name, v)?;
    Duration::try_from_secs_f64(s).map_err(|_| format!("{name}: `{v}` is not a valid duration"))
}

fn sources(v: &str) -> Result<Vec<Ipv4Addr>, String> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|_| format!("--sources: `{s}` is not an IPv4 address")))
        .collect()
}

impl Args {
    /// The options a child process gets: its share of connections, rate and sources.
    pub fn child_argv(&self, index: usize) -> Vec<String> {
        let p = self.processes;
        let share = self.connections / p + usize::from(index < self.connections % p);
        let sources = self.sources_of(index);
        let mut v: Vec<String> = vec![
            "idle".into(),
            "--child".into(),
            index.to_string(),
            "--host".into(),
            self.host.clone(),
            "--port".into(),
            self.port.to_string(),
            "--path".into(),
            self.path.clone(),
            "--connections".into(),
            share.to_string(),
            "--sources".into(),
            sources.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "--rate".into(),
            (self.rate / p as f64).to_string(),
            "--user-prefix".into(),
            self.user_prefix.clone(),
            "--connect-timeout-secs".into(),
            self.connect_timeout.as_secs_f64().to_string(),
            // The parent decides when to sample and release; the child only needs the bound.
            "--max-secs".into(),
            self.max.as_secs_f64().to_string(),
        ];
        if self.deflate {
            v.push("--deflate".into());
        }
        v
    }

    /// Source addresses of process `index`: a share of the list when there are enough
    /// addresses to go round, otherwise one address shared with other processes.
    pub fn sources_of(&self, index: usize) -> Vec<Ipv4Addr> {
        let p = self.processes;
        if self.sources.len() >= p {
            self.sources.iter().skip(index).step_by(p).copied().collect()
        } else {
            vec![self.sources[index % self.sources.len()]]
        }
    }

    /// This process's number in user ids (0 for a single process).
    pub fn process_index(&self) -> usize {
        self.child.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(s: &str) -> Args {
        parse(s.split_whitespace().map(String::from)).unwrap().unwrap()
    }

    #[test]
    fn sources_are_shared_out() {
        let a = parse_ok("idle --source-count 4 --processes 2 --connections 5");
        assert_eq!(a.sources.len(), 4);
        assert_eq!(a.sources_of(0), vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4)]);
        assert_eq!(a.sources_of(1), vec![Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 5)]);
        let b = parse_ok("idle --sources 127.0.0.2 --processes 3");
        assert_eq!(b.sources_of(2), vec![Ipv4Addr::new(127, 0, 0, 2)]);
        let argv = a.child_argv(0);
        let at = argv.iter().position(|s| s == "--connections").unwrap();
        assert_eq!(argv[at + 1], "3");
    }

    #[test]
    fn refuses_non_loopback_and_unknown_flags() {
        let err = |s: &str| parse(s.split_whitespace().map(String::from)).unwrap_err();
        assert!(err("idle --sources 10.0.0.1").contains("loopback"));
        assert!(err("idle --bogus").contains("unknown"));
        assert!(err("idle --host 192.0.2.1").contains("loopback"));
        assert!(err("--json").contains("scenario"));
        assert!(err("zipf --api-key 0123456789abcdef --zipf-s -1").contains("zipf-s"));
    }

    #[test]
    fn store_scenarios_have_their_own_defaults() {
        let z = parse_ok("zipf --api-key 0123456789abcdef");
        assert_eq!((z.scenario, z.users, z.reads, z.concurrency, z.zipf_s), (Scenario::Zipf, 10_000, 200_000, 32, 1.0));
        let c = parse_ok("connect-rate --api-key 0123456789abcdef --users 50 --concurrency 8");
        assert_eq!((c.scenario, c.users, c.concurrency), (Scenario::ConnectRate, 50, 8));
        assert_eq!(parse_ok("idle").concurrency, 200);
    }
}

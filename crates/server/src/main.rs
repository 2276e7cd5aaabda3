//! `rendezvous`: load config, check the descriptor budget, bind, serve, drain on SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context;
use rendezvous::{Config, LogFormat, Mode, Server, Shutdown};
use tracing_subscriber::EnvFilter;

mod probe;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "usage: rendezvous [--echo] [--check-config] [--healthcheck] [--version] [--help]

  --echo          run the gateway as a plain echo server on / and /ws (no auth), for Autobahn
  --check-config  load and validate the configuration (and check it against the
                  open-file limit), print it as JSON, and exit
  --healthcheck   ask the instance running with this configuration on this machine for
                  /ready; exit 0 if it answers 200, 1 otherwise (container health checks)

Configuration: config/default.toml (built in), the file named by RENDEZVOUS_CONFIG,
then RENDEZVOUS__SECTION__KEY variables, PORT, DATABASE_URL and REDIS_URL.";

fn main() -> ExitCode {
    let mut mode = Mode::Serve;
    let mut check_only = false;
    let mut healthcheck = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--echo" => mode = Mode::Echo,
            "--check-config" => check_only = true,
            "--healthcheck" => healthcheck = true,
            "--version" => {
                println!("rendezvous {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("rendezvous: unknown argument `{other}`\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rendezvous: configuration error: {e}");
            // Health checkers reserve 2; an unusable configuration is plainly unhealthy.
            return if healthcheck { ExitCode::FAILURE } else { ExitCode::from(2) };
        }
    };
    if healthcheck {
        return match probe::ready(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rendezvous: not ready: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let open_file_limit = match rendezvous::ensure_descriptor_budget(&config) {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("rendezvous: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("{}", serde_json::to_string_pretty(&config).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    init_tracing(&config);
    tracing::info!(open_file_limit, needed = rendezvous::descriptors_needed(&config), "descriptor budget");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rendezvous: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("rendezvous: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, mode: Mode) -> anyhow::Result<()> {
    let listener = bind(&config)
        .with_context(|| format!("cannot bind {}:{} (server.host / PORT)", config.server.host, config.server.port))?;
    let server = Server::new(config, mode);
    let shutdown = Shutdown::new();
    tokio::spawn(shutdown_on_signals(shutdown.clone()));
    server.run(listener, shutdown, |_| {}).await
}

/// Binds with a deep accept queue: `TcpListener::bind` uses 1024, and a burst of
/// reconnects (a drain elsewhere, a deploy) overflows it into 1 s client retries.
fn bind(config: &Config) -> std::io::Result<tokio::net::TcpListener> {
    const BACKLOG: u32 = 4096;
    let ip: std::net::IpAddr = config.server.host.parse().map_err(std::io::Error::other)?;
    let addr = std::net::SocketAddr::new(ip, config.server.port);
    let socket = if ip.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The first SIGTERM/SIGINT starts the graceful shutdown; a second one stops waiting.
async fn shutdown_on_signals(shutdown: Shutdown) {
    #[cfg(unix)]
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT drains");
            None
        }
    };
    for first in [true, false] {
        #[cfg(unix)]
        {
            let term = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        if first {
            tracing::info!("shutdown signal received; draining (a second signal stops without waiting)");
            shutdown.begin();
        } else {
            tracing::warn!("second shutdown signal; stopping without waiting");
            shutdown.force();
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.server.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.server.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

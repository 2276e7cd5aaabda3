//! `rendezvous-loadtest`: opens many authenticated WebSocket connections to a Rendezvous
//! server from loopback source addresses and reports what happened (see `--help`).
//!
//! # Layout
//! - `cli`: the command line (clap), one subcommand per scenario.
//! - `connect`: one connection from a chosen source address, up to its `welcome`.
//! - `scenario::idle`: many connections, held idle, closed cleanly.
//! - `scenario::connect_rate`, `scenario::zipf` (with `scenario::setup`): the store
//!   benchmarks — session-authenticated connects, cached and not; Zipf profile reads.
//! - `fork`: `--processes`, to stay under the per-process open-file cap.
//! - `health`: `/health` and `/proc/<pid>/status` sampling; `cache`: `/health` cache counters.
//! - `http`: hyper's HTTP/1.1 client for the app API and `/health`; `pool`: jobs on N workers.
//! - `scenario::presence`, `scenario::matchmaking` (+ `_report`, `_user`; `scenario::conns`): the domain
//!   benchmarks, over `rawws` (a small client that reads permessage-deflate frames).
//! - `scenario::cluster` (+ `_presence`, `_report`): several instances over Redis, signaling
//!   and presence across them.
//! - `scenario::floor`: loopback TCP alone (no server), the kernel's floor under a fan-out.
//! - `usage`: the server's CPU (`/proc/<pid>/stat`) and bytes out (`/health`) over a run.
//! - `dist`: seeded RNG and the Zipf sampler.
//! - `report`: tallies, their merge and the idle table; `summary`: table and/or JSON out.
//! - `progress`: the live progress line; `compare`: two JSON summaries, figure by figure.

mod cache;
mod cli;
mod compare;
mod connect;
mod dist;
mod fork;
mod health;
mod http;
mod pool;
mod progress;
mod rawws;
mod report;
mod scenario;
mod summary;
mod usage;

use std::process::ExitCode;

use clap::Parser;
use tokio::time::Instant;

use crate::cli::{Cli, Command, HealthArgs};
use crate::health::{HealthReport, ServerSample};

fn main() -> ExitCode {
    // Usage errors exit 2 with clap's message; --help and --version exit 0.
    let cli = Cli::parse();
    // The two that need no async runtime: `floor` measures plain threads and sockets.
    match &cli.command {
        Command::Compare(args) => return compare::run(args),
        Command::Floor(args) => return scenario::floor::run(args),
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rendezvous-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli.command));
    // Do not wait for stragglers: every task is bounded, but exit promptly regardless.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run(command: Command) -> ExitCode {
    let now = Instant::now();
    match command {
        Command::Idle(args) => scenario::idle::run(&args, now + args.max).await,
        Command::ConnectRate(args) => scenario::connect_rate::run(&args, now + args.store.max).await,
        Command::Zipf(args) => scenario::zipf::run(&args, now + args.store.max).await,
        Command::Presence(args) => scenario::presence::run(&args, now + args.conns.max).await,
        Command::Matchmaking(args) => scenario::matchmaking::run(&args, now + args.conns.max).await,
        Command::Cluster(args) => scenario::cluster::run(&args, now + args.max).await,
        Command::Health(args) => health(&args).await,
        Command::Floor(args) => scenario::floor::run(&args),
        Command::Compare(args) => compare::run(&args),
    }
}

async fn health(args: &HealthArgs) -> ExitCode {
    let url = args.target.health_url(args.health_url.as_ref());
    let sample = ServerSample::take(Some(&url), args.server_pid).await;
    let failed = sample.error.is_some();
    let report = HealthReport { scenario: "health".into(), sample };
    if let Err(e) = summary::emit(&args.output, &report, &report.table()) {
        eprintln!("rendezvous-loadtest: {e}");
        return ExitCode::FAILURE;
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

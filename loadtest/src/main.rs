//! `rendezvous-loadtest`: opens many authenticated WebSocket connections to a Rendezvous
//! server from loopback source addresses and reports what happened (see `--help`).
//!
//! # Layout
//! - `cli`: options.
//! - `connect`: one connection from a chosen source address, up to its `welcome`.
//! - `scenario::idle`: many connections, held idle, closed cleanly.
//! - `scenario::connect_rate`, `scenario::zipf` (with `scenario::setup`): the store
//!   benchmarks — session-authenticated connects, cached and not; Zipf profile reads.
//! - `fork`: `--processes`, to stay under the per-process open-file cap.
//! - `health`: `/health` and `/proc/<pid>/status` sampling; `cache`: `/health` cache counters.
//! - `http`: a kept-alive HTTP/1.1 client for the app API; `pool`: jobs on N workers.
//! - `dist`: seeded RNG and the Zipf sampler.
//! - `report`: tallies, their merge, the table and the JSON.

mod cache;
mod cli;
mod connect;
mod dist;
mod fork;
mod health;
mod http;
mod pool;
mod report;
mod scenario;

use std::process::ExitCode;

use tokio::time::Instant;

use crate::cli::{Args, Scenario};
use crate::health::ServerSample;
use crate::report::{Meta, Report};
use crate::scenario::idle::{self, close_budget};

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rendezvous-loadtest: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rendezvous-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(args));
    // Do not wait for stragglers: every task is bounded, but exit promptly regardless.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run(args: Args) -> ExitCode {
    let started = Instant::now();
    let deadline = started + args.max;
    match args.scenario {
        Scenario::Health => {
            let url = args.health_url.clone().unwrap_or_else(|| format!("http://{}:{}/health", args.host, args.port));
            let s = ServerSample::take(Some(&url), args.server_pid).await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                for (k, v) in s.lines() {
                    println!("  {k:<30} {v}");
                }
            }
            if s.error.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Scenario::ConnectRate => scenario::connect_rate::run(&args, deadline).await,
        Scenario::Zipf => scenario::zipf::run(&args, deadline).await,
        Scenario::Idle if args.child.is_some() => {
            fork::run_child(&args, deadline).await;
            ExitCode::SUCCESS
        }
        Scenario::Idle => {
            let per_process = args.connections.div_ceil(args.processes);
            warn_about_fd_limit(per_process);
            let (tally, sample) = if args.processes > 1 {
                match fork::run_parent(&args, deadline).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("rendezvous-loadtest: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                let est = idle::connect_all(&args, deadline).await;
                eprintln!(
                    "established: {} connected, {} failed",
                    est.tally.connected,
                    est.tally.failed.values().sum::<usize>()
                );
                let sample = settle_and_sample(&args, deadline - close_budget(args.max)).await;
                (est.close_all(deadline).await, sample)
            };
            let meta = Meta {
                target_addr: format!("ws://{}:{}{}", args.host, args.port, args.path),
                processes: args.processes,
                sources: args.sources.len(),
                deflate: args.deflate,
            };
            let report = Report::new(tally, meta, sample, started.elapsed().as_secs_f64());
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", report.table());
            }
            let all_good = report.connected == report.target
                && report.dropped.is_empty()
                && (!args.deflate || report.deflate_negotiated == report.connected);
            if all_good { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}

/// Waits `--settle-secs`, samples the server (if asked to), then holds for `--hold-secs`;
/// never past `until`.
pub async fn settle_and_sample(args: &Args, until: Instant) -> Option<ServerSample> {
    tokio::time::sleep_until((Instant::now() + args.settle).min(until)).await;
    let sample = if args.health_url.is_some() || args.server_pid.is_some() {
        let s = ServerSample::take(args.health_url.as_deref(), args.server_pid).await;
        for (k, v) in s.lines() {
            eprintln!("  {k:<30} {v}");
        }
        Some(s)
    } else {
        None
    };
    eprintln!("holding for {:.1} s", args.hold.as_secs_f64());
    tokio::time::sleep_until((Instant::now() + args.hold).min(until)).await;
    sample
}

/// Each connection is one socket; say so early if this process cannot open them all.
fn warn_about_fd_limit(per_process: usize) {
    let soft = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        l.lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(3))
            .and_then(|v| v.parse::<usize>().ok())
    });
    if let Some(soft) = soft {
        if per_process + 64 > soft {
            eprintln!(
                "warning: {per_process} connections per process but the open-file limit is {soft}; \
                 raise it (ulimit -n) or use more --processes"
            );
        }
    }
}

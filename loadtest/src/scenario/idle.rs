//! The `idle` scenario: open N connections, hold them idle (answering pings), close them.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::IdleArgs;
use crate::connect::{self, Target, Ws};
use crate::fork;
use crate::health::ServerSample;
use crate::progress::Progress;
use crate::report::{Meta, Report, Tally};
use crate::summary;

/// The whole scenario, in this process or (`--processes`) over children.
pub async fn run(args: &IdleArgs, deadline: Instant) -> ExitCode {
    let started = Instant::now();
    if args.child.is_some() {
        fork::run_child(args, deadline).await;
        return ExitCode::SUCCESS;
    }
    warn_about_fd_limit(args.connections.div_ceil(args.processes));
    let progress = Progress::start("idle");
    let (tally, sample) = if args.processes > 1 {
        match fork::run_parent(args, &progress, deadline).await {
            Ok(r) => r,
            Err(e) => {
                progress.finish();
                eprintln!("rendezvous-loadtest: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        progress.phase("connecting", args.connections);
        let est = connect_all(args, &progress, deadline).await;
        let failed: usize = est.tally.failed.values().sum();
        progress.note(&format!("established: {} connected, {failed} failed", est.tally.connected));
        let sample = settle_and_sample(args, &progress, deadline - close_budget(args.max)).await;
        progress.phase("closing", est.tally.connected);
        (est.close_all(&progress, deadline).await, sample)
    };
    progress.finish();
    let meta = Meta {
        target_addr: format!("ws://{}{}", args.target.addr(), args.path),
        processes: args.processes,
        sources: args.sources.addrs().len(),
        deflate: args.deflate,
    };
    let report = Report::new(tally, meta, sample, started.elapsed().as_secs_f64());
    if let Err(e) = summary::emit(&args.output, &report, &report.table()) {
        eprintln!("rendezvous-loadtest: {e}");
        return ExitCode::FAILURE;
    }
    let all_good = report.connected == report.target
        && report.dropped.is_empty()
        && (!args.deflate || report.deflate_negotiated == report.connected);
    if all_good { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Waits `--settle-secs`, samples the server (if asked to), then holds for `--hold-secs`;
/// never past `until`.
pub async fn settle_and_sample(args: &IdleArgs, progress: &Progress, until: Instant) -> Option<ServerSample> {
    progress.phase("settling", 0);
    tokio::time::sleep_until((Instant::now() + args.settle).min(until)).await;
    let sample = if args.health_url.is_some() || args.server_pid.is_some() {
        let s = ServerSample::take(args.health_url.as_ref(), args.server_pid).await;
        for (k, v) in s.lines() {
            progress.note(&format!("  {k:<30} {v}"));
        }
        Some(s)
    } else {
        None
    };
    progress.note(&format!("holding for {:.1} s", args.hold.as_secs_f64()));
    progress.phase("holding", 0);
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

/// How much of `--max-secs` is kept for the closing handshakes.
pub fn close_budget(max: Duration) -> Duration {
    (max / 5).min(Duration::from_secs(10))
}

enum Attempt {
    Connected { latency: Duration, deflate: bool },
    Failed(String),
}

enum HoldEnd {
    NotConnected,
    Dropped(String),
    Closed { clean: bool },
}

/// Connections that are up and being held; dropped without `close_all`, they are aborted.
pub struct Established {
    pub tally: Tally,
    release: watch::Sender<bool>,
    tasks: JoinSet<HoldEnd>,
}

/// Opens this process's connections, paced by `--rate` and `--concurrency`, and returns
/// once every attempt has finished (or at `deadline - close budget`).
/// Each finished attempt counts as one item on `progress`.
pub async fn connect_all(args: &IdleArgs, progress: &Progress, deadline: Instant) -> Established {
    let started = Instant::now();
    let n = args.connections;
    let target = Arc::new(Target {
        addr: args.target.addr(),
        path: args.path.clone(),
        deflate: args.deflate,
        timeout: args.connect_timeout,
    });
    let sources = args.sources.addrs();
    let sem = Arc::new(Semaphore::new(args.concurrency));
    let (release, _) = watch::channel(false);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hold_until = deadline - close_budget(args.max);
    let proc_index = args.process_index();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let start_at = if args.rate > 0.0 { started + Duration::from_secs_f64(i as f64 / args.rate) } else { started };
        let token = format!("dev-{}{proc_index}-{i}", args.user_prefix);
        let source = sources[i % sources.len()];
        let (target, sem, tx) = (target.clone(), sem.clone(), tx.clone());
        let release = release.subscribe();
        tasks.spawn(async move {
            tokio::time::sleep_until(start_at).await;
            let Ok(permit) = sem.acquire_owned().await else {
                return HoldEnd::NotConnected;
            };
            let t0 = Instant::now();
            let opened = connect::open(&target, source, &token).await;
            drop(permit);
            match opened {
                Err(reason) => {
                    let _ = tx.send(Attempt::Failed(reason));
                    HoldEnd::NotConnected
                }
                Ok(o) => {
                    let _ = tx.send(Attempt::Connected { latency: t0.elapsed(), deflate: o.deflate_negotiated });
                    hold(o.ws, release, hold_until).await
                }
            }
        });
    }
    drop(tx);
    let mut tally = Tally { target: n, ..Tally::default() };
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout_at(hold_until, rx.recv()).await {
            Ok(Some(Attempt::Connected { latency, deflate })) => {
                progress.item(true);
                tally.connected += 1;
                tally.deflate_negotiated += usize::from(deflate);
                tally.latencies_us.push(latency.as_micros() as u64);
            }
            Ok(Some(Attempt::Failed(reason))) => {
                progress.item(false);
                tally.fail(reason);
            }
            Ok(None) | Err(_) => break,
        }
        seen += 1;
    }
    if seen < n {
        *tally.failed.entry("not finished before --max-secs".into()).or_default() += n - seen;
    }
    tally.connect_phase_secs = started.elapsed().as_secs_f64();
    Established { tally, release, tasks }
}

impl Established {
    /// Asks every held connection to close and waits for the handshakes (until `deadline`);
    /// each connection that ends counts as one item on `progress`.
    pub async fn close_all(mut self, progress: &Progress, deadline: Instant) -> Tally {
        let _ = self.release.send(true);
        let mut tally = self.tally;
        let mut unfinished = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(end))) => match end {
                    HoldEnd::NotConnected => {}
                    HoldEnd::Dropped(reason) => {
                        progress.item(false);
                        tally.drop_reason(reason);
                    }
                    HoldEnd::Closed { clean } => {
                        progress.item(clean);
                        if clean {
                            tally.closed_cleanly += 1;
                        } else {
                            tally.close_failed += 1;
                        }
                    }
                },
                Ok(Some(Err(_))) => {
                    progress.item(false);
                    tally.close_failed += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    unfinished = self.tasks.len();
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        tally.close_failed += unfinished;
        tally
    }
}

/// Keeps reading (which answers pings) until released, then closes cleanly.
async fn hold(mut ws: Ws, mut release: watch::Receiver<bool>, until: Instant) -> HoldEnd {
    loop {
        tokio::select! {
            biased;
            _ = release.changed() => break,
            () = tokio::time::sleep_until(until) => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or("no code".into(), |f| u16::from(f.code).to_string());
                    return HoldEnd::Dropped(format!("server closed ({code})"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return HoldEnd::Dropped(connect::ws_reason("hold", &e)),
                None => return HoldEnd::Dropped("eof while held".into()),
            },
        }
    }
    HoldEnd::Closed { clean: connect::close_cleanly(ws).await }
}

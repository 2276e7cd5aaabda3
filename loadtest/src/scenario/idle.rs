//! The `idle` scenario: open N connections, hold them idle (answering pings), close them.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Args;
use crate::connect::{self, Target, Ws};
use crate::report::Tally;

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
pub async fn connect_all(args: &Args, deadline: Instant) -> Established {
    let started = Instant::now();
    let n = args.connections;
    let target = Arc::new(Target {
        addr: SocketAddrV4::new(args.host.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST), args.port),
        path: args.path.clone(),
        deflate: args.deflate,
        timeout: args.connect_timeout,
    });
    let sources = args.sources.clone();
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
                tally.connected += 1;
                tally.deflate_negotiated += usize::from(deflate);
                tally.latencies_us.push(latency.as_micros() as u64);
            }
            Ok(Some(Attempt::Failed(reason))) => tally.fail(reason),
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
    /// Asks every held connection to close and waits for the handshakes (until `deadline`).
    pub async fn close_all(mut self, deadline: Instant) -> Tally {
        let _ = self.release.send(true);
        let mut tally = self.tally;
        let mut unfinished = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(end))) => match end {
                    HoldEnd::NotConnected => {}
                    HoldEnd::Dropped(reason) => tally.drop_reason(reason),
                    HoldEnd::Closed { clean: true } => tally.closed_cleanly += 1,
                    HoldEnd::Closed { clean: false } => tally.close_failed += 1,
                },
                Ok(Some(Err(_))) => tally.close_failed += 1,
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

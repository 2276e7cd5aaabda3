//! The `connect-rate` scenario: how fast authenticated connections are accepted when the
//! session token has to come from the database ("uncached": the token's first use misses
//! the session LRU) and when it does not ("cached": the same tokens again).
//!
//! Setup creates `--users` users with one session each through the app API. Each phase
//! then connects with every token once — TCP connect, upgrade, `welcome`, clean close —
//! with `--concurrency` in flight, and reads `/health` before and after for the change in
//! the session cache counters.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cache::{Deltas, Snapshot};
use crate::cli::ConnectRateArgs;
use crate::connect::{self, Target};
use crate::pool;
use crate::progress::Progress;
use crate::report::Latency;
use crate::scenario::setup::{self, SetupReport};
use crate::summary;

/// One phase's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub attempts: usize,
    pub connected: usize,
    pub failed: BTreeMap<String, usize>,
    pub closed_cleanly: usize,
    pub secs: f64,
    /// Connections that reached `welcome`, per second of the phase (connect, welcome
    /// and close included).
    pub connects_per_sec: f64,
    /// TCP connect → `welcome`.
    pub welcome_latency: Latency,
    /// TCP connect → closing handshake done.
    pub cycle_latency: Latency,
    /// `/health` cache counters, after minus before.
    pub cache: Option<Deltas>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub target_addr: String,
    pub users: usize,
    pub concurrency: usize,
    pub sources: usize,
    pub session_cache_capacity: Option<u64>,
    pub setup: SetupReport,
    pub phases: Vec<Phase>,
    pub elapsed_secs: f64,
}

pub async fn run(args: &ConnectRateArgs, deadline: Instant) -> ExitCode {
    let started = Instant::now();
    let url = args.target.health_url(args.store.health_url.as_ref());
    let capacity = match Snapshot::take(&url).await {
        Ok(s) => s.sessions.capacity,
        Err(e) => {
            eprintln!("rendezvous-loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.users as u64 > capacity {
        eprintln!(
            "warning: {} users but the session cache holds {capacity}: the cached phase will miss \
             (raise RENDEZVOUS__STORE__SESSION_CACHE_CAPACITY)",
            args.users
        );
    }
    let progress = Progress::start("connect-rate");
    let made = setup::make_users(&args.target, &args.store, args.users, true, &progress, deadline).await;
    let target = Arc::new(Target {
        addr: args.target.addr(),
        path: args.path.clone(),
        deflate: args.deflate,
        timeout: args.connect_timeout,
    });
    let tokens = Arc::new(made.tokens);
    let mut phases = Vec::new();
    for name in ["uncached", "cached"] {
        if tokens.is_empty() || Instant::now() >= deadline {
            break;
        }
        let before = Snapshot::take(&url).await;
        progress.phase(name, tokens.len());
        let mut phase = connect_each(args, name, &target, &tokens, &progress, deadline).await;
        let after = Snapshot::take(&url).await;
        phase.cache = match (before, after) {
            (Ok(b), Ok(a)) => Some(b.delta_to(&a)),
            (Err(e), _) | (_, Err(e)) => {
                progress.note(&format!("warning: {e}"));
                None
            }
        };
        progress.note(&format!(
            "{name}: {}/{} connected in {:.2} s = {:.0} connects/s; welcome p50 {:.1} ms p99 {:.1} ms; sessions {}",
            phase.connected,
            phase.attempts,
            phase.secs,
            phase.connects_per_sec,
            phase.welcome_latency.p50_ms,
            phase.welcome_latency.p99_ms,
            phase.cache.map_or("-".into(), |c| c.sessions.summary())
        ));
        phases.push(phase);
    }
    progress.finish();
    let all_good = phases.len() == 2
        && made.report.failed.is_empty()
        && phases.iter().all(|p| p.failed.is_empty() && p.connected == args.users);
    let report = Report {
        scenario: "connect-rate".into(),
        target_addr: format!("ws://{}{}", target.addr, target.path),
        users: args.users,
        concurrency: args.concurrency,
        sources: args.sources.addrs().len(),
        session_cache_capacity: Some(capacity),
        setup: made.report,
        phases,
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    if let Err(e) = summary::emit(&args.output, &report, &table(&report)) {
        eprintln!("rendezvous-loadtest: {e}");
        return ExitCode::FAILURE;
    }
    if all_good { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Connects with every token once.
async fn connect_each(
    args: &ConnectRateArgs,
    name: &str,
    target: &Arc<Target>,
    tokens: &Arc<Vec<String>>,
    progress: &Progress,
    deadline: Instant,
) -> Phase {
    let sources = Arc::new(args.sources.addrs());
    let (target, tokens, job_progress) = (target.clone(), tokens.clone(), progress.clone());
    let done = pool::run(tokens.len(), vec![(); args.concurrency], deadline, move |(), i| {
        let (target, tokens, sources) = (target.clone(), tokens.clone(), sources.clone());
        let progress = job_progress.clone();
        async move {
            let t0 = Instant::now();
            let r = match connect::open(&target, sources[i % sources.len()], &tokens[i]).await {
                Ok(o) => {
                    let welcome = t0.elapsed();
                    let clean = connect::close_cleanly(o.ws).await;
                    Ok((welcome.as_micros() as u64, t0.elapsed().as_micros() as u64, clean))
                }
                Err(reason) => Err(reason),
            };
            progress.item(r.is_ok());
            ((), r)
        }
    })
    .await;
    let mut failed = BTreeMap::new();
    let (mut welcome, mut cycle, mut clean) = (Vec::new(), Vec::new(), 0);
    for r in &done.results {
        match r {
            Some(Ok((w, c, ok))) => {
                welcome.push(*w);
                cycle.push(*c);
                clean += usize::from(*ok);
            }
            Some(Err(reason)) => *failed.entry(reason.clone()).or_default() += 1,
            None => *failed.entry("not started before --max-secs".into()).or_default() += 1,
        }
    }
    Phase {
        name: name.to_owned(),
        attempts: done.results.len(),
        connected: welcome.len(),
        failed,
        closed_cleanly: clean,
        secs: done.secs,
        connects_per_sec: welcome.len() as f64 / done.secs.max(1e-9),
        welcome_latency: Latency::of(&mut welcome),
        cycle_latency: Latency::of(&mut cycle),
        cache: None,
    }
}

fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "  {k:<30} {v}");
    };
    row("scenario", r.scenario.clone());
    row("target", r.target_addr.clone());
    row("users / concurrency / sources", format!("{} / {} / {}", r.users, r.concurrency, r.sources));
    row("session cache capacity", r.session_cache_capacity.map_or("-".into(), |c| c.to_string()));
    let s = &r.setup;
    row("setup", format!("{} users, {} sessions, {:.1} s", s.users_created, s.sessions_issued, s.secs));
    for (reason, n) in &s.failed {
        row(&format!("  setup failed: {reason}"), n.to_string());
    }
    for p in &r.phases {
        row(
            &format!("{} connects/s", p.name),
            format!("{:.0} ({}/{} in {:.2} s)", p.connects_per_sec, p.connected, p.attempts, p.secs),
        );
        let (w, c) = (p.welcome_latency, p.cycle_latency);
        row("  welcome p50/p99/max", format!("{:.1} / {:.1} / {:.1} ms", w.p50_ms, w.p99_ms, w.max_ms));
        row("  full cycle p50/p99", format!("{:.1} / {:.1} ms", c.p50_ms, c.p99_ms));
        row("  closed cleanly", p.closed_cleanly.to_string());
        for (reason, n) in &p.failed {
            row(&format!("  failed: {reason}"), n.to_string());
        }
        if let Some(d) = &p.cache {
            row("  cache.sessions", d.sessions.summary());
            row("  cache.queries", d.queries.summary());
        }
    }
    row("elapsed", format!("{:.2} s", r.elapsed_secs));
    t
}

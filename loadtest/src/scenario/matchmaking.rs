//! The `matchmaking` scenario: M users with real profiles join the queue together, accept
//! their proposal, exchange `call.signal`s stamped with their send time, and the offerer
//! hangs up once both sides have sent and received everything; K rounds of that.
//!
//! Users are created through the app API (matchmaking refuses users without a profile).
//! Re-meeting across rounds needs the server's `matchmaking.cooldown_ms` short.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::{MatchmakingArgs, Store};
use crate::connect::Target;
use crate::progress::Progress;
use crate::report::Latency;
use crate::scenario::conns::{self, count};
use crate::scenario::matchmaking_report::{CallSeen, Report, Round, double_matches};
use crate::scenario::matchmaking_user::User;
use crate::scenario::setup;
use crate::summary;
use crate::usage::{Reading, Spent, cpu_ticks};

/// Matching that has made no progress this long is over for the round.
const STALL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Stage {
    Hold,
    /// Join the queue and accept the proposal.
    Round(usize),
    /// Every call is up: exchange the signals, then hang up.
    Signal,
    Close,
}

/// Spaces signal sends over all users to at most `rate` per second (0: no spacing).
pub(super) struct Pacer {
    gap: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    /// When the caller may send its next message.
    pub(super) fn slot(&self) -> Instant {
        let now = Instant::now();
        let Some(gap) = self.gap else { return now };
        let Ok(mut next) = self.next.lock() else { return now };
        let at = (*next).max(now);
        *next = at + gap;
        at
    }
}

/// A user's end of one round.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RoundDone {
    pub(super) first_signal_us: Option<u64>,
    pub(super) last_signal_us: Option<u64>,
}

/// What user tasks tell the main task during a round.
#[derive(Debug, Clone, Copy)]
pub(super) enum Note {
    /// `match.confirmed` arrived (µs since origin).
    Confirmed(u64),
    /// `call.ended` arrived.
    Done(RoundDone),
}

/// What one user saw over the run.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) calls: Vec<CallSeen>,
    pub(super) time_to_match_us: Vec<u64>,
    pub(super) relay_us: Vec<u64>,
    pub(super) errors: BTreeMap<String, usize>,
    pub(super) cancelled: BTreeMap<String, usize>,
    pub(super) join_retries: usize,
    pub(super) dropped: Option<String>,
}

pub async fn run(args: &MatchmakingArgs, deadline: Instant) -> ExitCode {
    let origin = Instant::now();
    let progress = Progress::start("matchmaking");
    let health = args.target.health_url(args.conns.health_url.as_ref());
    let store = Store {
        api_key: args.api_key.clone(),
        setup_concurrency: args.setup_concurrency,
        user_prefix: args.user_prefix.clone(),
        health_url: args.conns.health_url.clone(),
        max: args.conns.max,
    };
    let made = setup::make_users(&args.target, &store, args.users, true, &progress, deadline).await;
    let target = Target {
        addr: args.target.addr(),
        path: args.conns.path.clone(),
        deflate: false,
        timeout: args.conns.connect_timeout,
    };
    progress.phase("connecting", made.tokens.len());
    let opened =
        conns::open_all(&target, &args.sources.addrs(), &made.tokens, args.conns.concurrency, &progress, deadline)
            .await;
    let connected = opened.connected();
    progress.note(&format!("connected {connected}/{} in {:.1} s", made.tokens.len(), opened.secs));

    let (stage_tx, stage_rx) = watch::channel(Stage::Hold);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Note>();
    let pacer = Arc::new(Pacer {
        gap: (args.signal_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.signal_rate)),
        next: Mutex::new(Instant::now()),
    });
    let mut tasks = JoinSet::new();
    for (ws, user) in opened.conns.into_iter().zip(&made.user_ids) {
        let Some(ws) = ws else { continue };
        let user = User {
            id: user.clone(),
            ws,
            stage: stage_rx.clone(),
            done: done_tx.clone(),
            pacer: pacer.clone(),
            signals: args.signals,
            origin,
        };
        tasks.spawn(user.run());
    }
    drop(done_tx);

    let (before, client_before) = (Reading::take(Some(&health), args.conns.server_pid).await, own_cpu_ticks());
    let (mut rounds, mut signal_secs) = (Vec::new(), 0.0);
    for k in 0..args.rounds {
        if Instant::now() >= deadline {
            break;
        }
        let start_us = micros(origin, Instant::now());
        let _ = stage_tx.send(Stage::Round(k));
        progress.phase(&format!("round {}", k + 1), connected);
        let until = (Instant::now() + args.round).min(deadline);
        let (mut finished, mut matched, mut last_confirmed) = (0, 0, start_us);
        let (mut first_sig, mut last_sig) = (u64::MAX, 0);
        let mut signaling = false;
        while finished < connected {
            if !signaling && matched == connected {
                // Matching is done: relay latency is measured on its own, at --signal-rate.
                signaling = true;
                let _ = stage_tx.send(Stage::Signal);
                progress.phase(&format!("round {} signaling", k + 1), matched);
            }
            let wait = if signaling { until } else { (Instant::now() + STALL).min(until) };
            let note = match tokio::time::timeout_at(wait, done_rx.recv()).await {
                Ok(Some(note)) => note,
                Ok(None) => break,
                // No confirmation for a while: signal with the calls there are.
                Err(_) if !signaling && Instant::now() < until => {
                    signaling = true;
                    let _ = stage_tx.send(Stage::Signal);
                    continue;
                }
                Err(_) => break,
            };
            match note {
                Note::Confirmed(c) => {
                    progress.item(true);
                    matched += 1;
                    last_confirmed = last_confirmed.max(c);
                }
                Note::Done(d) => {
                    progress.item(true);
                    finished += 1;
                    first_sig = first_sig.min(d.first_signal_us.unwrap_or(u64::MAX));
                    last_sig = last_sig.max(d.last_signal_us.unwrap_or(0));
                }
            }
        }
        let match_secs = (last_confirmed - start_us) as f64 / 1e6;
        if last_sig > first_sig {
            signal_secs += (last_sig - first_sig) as f64 / 1e6;
        }
        let round = Round {
            name: (k + 1).to_string(),
            matches: matched / 2,
            match_secs,
            matches_per_sec: (matched / 2) as f64 / match_secs.max(1e-9),
            unfinished: connected - finished,
        };
        progress.note(&format!(
            "round {}: {} matches in {:.2} s ({:.0}/s), {} unfinished",
            round.name, round.matches, round.match_secs, round.matches_per_sec, round.unfinished
        ));
        rounds.push(round);
    }
    let (after, client_after) = (Reading::take(Some(&health), args.conns.server_pid).await, own_cpu_ticks());
    let server_relay_us = match crate::http::fetch_json(&health).await {
        Ok(v) => {
            let get = |p: &str| v.pointer(p).and_then(serde_json::Value::as_u64);
            get("/matchmaking/relay_us_p50").zip(get("/matchmaking/relay_us_p99"))
        }
        Err(_) => None,
    };
    let _ = stage_tx.send(Stage::Close);
    progress.phase("closing", connected);
    let seen = conns::collect(&mut tasks, deadline + Duration::from_secs(6), &progress, |s| s.dropped.is_none()).await;
    progress.finish();

    let server = Spent::between(&before, &after);
    let (mut calls, mut ttm, mut relay) = (Vec::new(), Vec::new(), Vec::new());
    let (mut errors, mut cancelled, mut dropped) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut join_retries = 0;
    for s in seen {
        join_retries += s.join_retries;
        calls.extend(s.calls);
        ttm.extend(s.time_to_match_us);
        relay.extend(s.relay_us);
        for (code, n) in s.errors {
            count(&mut errors, code, n);
        }
        for (reason, n) in s.cancelled {
            count(&mut cancelled, reason, n);
        }
        if let Some(reason) = s.dropped {
            count(&mut dropped, reason, 1);
        }
    }
    let matches: usize = rounds.iter().map(|r| r.matches).sum();
    let match_secs: f64 = rounds.iter().map(|r| r.match_secs).sum();
    let signals_relayed = relay.len();
    let report = Report {
        scenario: "matchmaking".into(),
        target_addr: format!("ws://{}{}", target.addr, target.path),
        users: args.users,
        rounds_requested: args.rounds,
        signals_per_side: args.signals,
        signal_rate: args.signal_rate,
        setup: made.report,
        connected,
        failed: opened.failed,
        dropped,
        error_frames: errors,
        cancelled,
        join_retries,
        rounds,
        matches,
        matches_per_sec: matches as f64 / match_secs.max(1e-9),
        time_to_match: Latency::of(&mut ttm),
        double_matches: double_matches(&calls),
        signals_relayed,
        signals_per_sec: if signal_secs > 0.0 { signals_relayed as f64 / signal_secs } else { 0.0 },
        relay_latency: Latency::of(&mut relay),
        server_relay_us,
        client_cores_used: match (client_before, client_after) {
            (Some(a), Some(b)) if server.secs > 0.0 => Some((b - a) as f64 / 100.0 / server.secs),
            _ => None,
        },
        server,
        elapsed_secs: origin.elapsed().as_secs_f64(),
    };
    if let Err(e) = summary::emit(&args.output, &report, &report.table()) {
        eprintln!("rendezvous-loadtest: {e}");
        return ExitCode::FAILURE;
    }
    let all_good = report.failed.is_empty()
        && report.dropped.is_empty()
        && report.double_matches.total() == 0
        && report.rounds.iter().all(|r| r.unfinished == 0);
    if all_good { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

pub(super) fn micros(origin: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(origin).as_micros() as u64
}

fn own_cpu_ticks() -> Option<u64> {
    std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| cpu_ticks(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_slots_and_never_waits_without_a_rate() {
        let gap = Duration::from_millis(10);
        let paced = Pacer { gap: Some(gap), next: Mutex::new(Instant::now()) };
        let slots: Vec<Instant> = (0..4).map(|_| paced.slot()).collect();
        assert!(slots.windows(2).all(|w| w[1] - w[0] == gap), "{slots:?}");
        let free = Pacer { gap: None, next: Mutex::new(Instant::now() + Duration::from_secs(60)) };
        assert!(free.slot() <= Instant::now());
    }
}

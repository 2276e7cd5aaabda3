//! The `presence` scenario: N subscribers of one topic, C of them changing state.
//!
//! Phases, each bounded by `--max-secs`: connect all N (idle) and sample the server;
//! subscribe all and wait until each has its first snapshot, settle, sample again (the
//! memory a subscription adds); then measure for `--duration-secs` while the changers
//! send `presence.set` at `--change-rate` in total, each on its own fixed schedule.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rendezvous_protocol::{ClientMessage, PresenceSet, PresenceSubscribe, SettableState};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::PresenceArgs;
use crate::connect::Target;
use crate::progress::Progress;
use crate::rawws::{Incoming, RawWs};
use crate::report::Latency;
use crate::scenario::conns::{self, count};
use crate::scenario::presence_report::{Frames, Memory, Parsed, Receipt, Report, spread_lags_us, tick_lag_us};
use crate::summary;
use crate::usage::{Reading, Spent, cpu_ticks};

/// Receipts arriving this long after the measured interval still count for the spread
/// of a `seq` that started inside it.
const DRAIN: Duration = Duration::from_secs(1);

/// What every connection task is told to do next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Hold,
    Subscribe,
    /// Send changes (changers) from `start` until `end`.
    Measure {
        start: Instant,
        end: Instant,
    },
    Close,
}

/// What one connection saw.
#[derive(Default)]
struct Seen {
    receipts: Vec<(Receipt, bool, u32)>,
    errors: BTreeMap<String, usize>,
    changes_sent: usize,
    dropped: Option<String>,
    closed_cleanly: bool,
}

pub async fn run(args: &PresenceArgs, deadline: Instant) -> ExitCode {
    let origin = Instant::now();
    let progress = Progress::start("presence");
    let health = args.target.health_url(args.conns.health_url.as_ref());
    let pid = args.conns.server_pid;
    let target = Target {
        addr: args.target.addr(),
        path: args.conns.path.clone(),
        deflate: args.deflate,
        timeout: args.conns.connect_timeout,
    };
    let tokens: Vec<String> = (0..args.subscribers).map(|i| format!("dev-{}-{i}", args.user_prefix)).collect();
    progress.phase("connecting", tokens.len());
    let opened =
        conns::open_all(&target, &args.sources.addrs(), &tokens, args.conns.concurrency, &progress, deadline).await;
    let connected = opened.connected();
    progress.note(&format!("connected {connected}/{} in {:.1} s", tokens.len(), opened.secs));
    sleep_until_or(Instant::now() + Duration::from_secs(2), deadline).await;
    let idle = Reading::take(Some(&health), pid).await;

    let (stage_tx, stage_rx) = watch::channel(Stage::Hold);
    let subscribed = Arc::new(AtomicUsize::new(0));
    let subscribe = ClientMessage::from(PresenceSubscribe { topic: args.topic.clone() }).to_json();
    let frames = Arc::new(Frames::default());
    let mut tasks = JoinSet::new();
    for (i, ws) in opened.conns.into_iter().enumerate() {
        let Some(ws) = ws else { continue };
        let changer = (i < args.changers && args.change_rate > 0.0).then(|| Schedule {
            offset: Duration::from_secs_f64(i as f64 / args.change_rate),
            period: Duration::from_secs_f64(args.changers as f64 / args.change_rate),
        });
        let conn = Conn {
            ws,
            stage: stage_rx.clone(),
            subscribed: subscribed.clone(),
            subscribe: subscribe.clone(),
            changer,
            index: i,
            origin,
            deadline,
            frames: frames.clone(),
        };
        tasks.spawn(conn.run());
    }
    let _ = stage_tx.send(Stage::Subscribe);
    progress.phase("subscribing", connected);
    let until = (Instant::now() + Duration::from_secs(60)).min(deadline);
    let n_subscribed = conns::wait_for_count(&subscribed, connected, until, &progress).await;
    progress.note(&format!("subscribed {n_subscribed}/{connected}; settling {:.0} s", args.settle.as_secs_f64()));
    progress.phase("settling", 0);
    sleep_until_or(Instant::now() + args.settle, deadline).await;
    let sub = Reading::take(Some(&health), pid).await;
    let memory = Memory {
        idle_allocated_bytes: idle.allocated_bytes,
        idle_vmrss_bytes: idle.vmrss_bytes,
        subscribed_allocated_bytes: sub.allocated_bytes,
        subscribed_vmrss_bytes: sub.vmrss_bytes,
        ..Memory::default()
    }
    .per_subscriber(n_subscribed);

    let start = Instant::now();
    let end = (start + args.duration).min(deadline - DRAIN - Duration::from_secs(6));
    let _ = stage_tx.send(Stage::Measure { start, end });
    progress.phase("measuring", 0);
    let (before, client_before) = (Reading::take(Some(&health), pid).await, own_cpu_ticks());
    sleep_until_or(end, deadline).await;
    let (after, client_after) = (Reading::take(Some(&health), pid).await, own_cpu_ticks());
    let server_tick_p99_us = crate::http::fetch_json(&health)
        .await
        .ok()
        .and_then(|v| v.pointer("/presence/tick_p99_us").and_then(serde_json::Value::as_u64));
    sleep_until_or(end + DRAIN, deadline).await;
    let _ = stage_tx.send(Stage::Close);
    progress.phase("closing", connected);
    let seen = conns::collect(&mut tasks, deadline, &progress, |s| s.closed_cleanly).await;
    progress.finish();

    let server = Spent::between(&before, &after);
    let measured = server.secs.max(1e-9);
    let in_window = |at_us: u64| at_us >= micros(origin, start) && at_us <= micros(origin, end);
    let (mut snapshots, mut diffs, mut entries, mut changes_sent) = (0, 0, 0u64, 0);
    let (mut receipts, mut errors, mut dropped) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
    let spread_from = micros(origin, start);
    for s in seen {
        changes_sent += s.changes_sent;
        for (code, n) in s.errors {
            count(&mut errors, code, n);
        }
        if let Some(reason) = s.dropped {
            count(&mut dropped, reason, 1);
        }
        for (r, snapshot, n) in s.receipts {
            if in_window(r.at_us) {
                entries += u64::from(n);
                if snapshot { snapshots += 1 } else { diffs += 1 }
            }
            if r.at_us >= spread_from {
                receipts.push(r);
            }
        }
    }
    // Only seqs first seen inside the interval: a seq that began before it has its
    // earliest receipts cut off.
    let mut lags = spread_lags_us(&receipts);
    let firsts: std::collections::HashSet<u64> =
        receipts.iter().zip(&lags).filter(|(r, l)| **l == 0 && in_window(r.at_us)).map(|(r, _)| r.seq).collect();
    let mut kept: Vec<u64> =
        receipts.iter().zip(lags.drain(..)).filter(|(r, _)| firsts.contains(&r.seq)).map(|(_, l)| l).collect();
    let mut tick_lags: Vec<u64> =
        receipts.iter().filter(|r| firsts.contains(&r.seq)).filter_map(|r| r.tick_lag_us).collect();
    let tick_lag = (!tick_lags.is_empty()).then(|| Latency::of(&mut tick_lags));
    let entries_per_sec = entries as f64 / measured;
    let client_cores_used = match (client_before, client_after) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 100.0 / measured),
        _ => None,
    };
    let report = Report {
        scenario: "presence".into(),
        target_addr: format!("ws://{}{}", target.addr, target.path),
        topic: args.topic.clone(),
        sources: args.sources.addrs().len(),
        subscribers: args.subscribers,
        changers: args.changers.min(args.subscribers),
        change_rate: args.change_rate,
        deflate_requested: args.deflate,
        deflate_negotiated: opened.deflate_negotiated,
        connected,
        failed: opened.failed,
        subscribed: n_subscribed,
        dropped,
        error_frames: errors,
        measured_secs: server.secs,
        changes_sent,
        changes_per_sec: changes_sent as f64 / measured,
        snapshots,
        diffs,
        entries_delivered: entries,
        entries_per_sec,
        entries_per_server_core_per_sec: server.cores_used.filter(|c| *c > 0.0).map(|c| entries_per_sec / c),
        fanout_spread: Latency::of(&mut kept),
        tick_lag,
        server_tick_p99_us,
        server,
        client_cores_used,
        memory,
        elapsed_secs: origin.elapsed().as_secs_f64(),
    };
    if let Err(e) = summary::emit(&args.output, &report, &report.table()) {
        eprintln!("rendezvous-loadtest: {e}");
        return ExitCode::FAILURE;
    }
    let all_good = report.failed.is_empty() && report.dropped.is_empty() && report.subscribed == report.connected;
    if all_good { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn micros(origin: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(origin).as_micros() as u64
}

async fn sleep_until_or(t: Instant, deadline: Instant) {
    tokio::time::sleep_until(t.min(deadline)).await;
}

fn own_cpu_ticks() -> Option<u64> {
    std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| cpu_ticks(&s))
}

/// When a changer sends: `start + offset + k * period`, so the changers together send at
/// the asked rate, evenly spread.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    offset: Duration,
    period: Duration,
}

struct Conn {
    ws: RawWs,
    stage: watch::Receiver<Stage>,
    subscribed: Arc<AtomicUsize>,
    subscribe: String,
    changer: Option<Schedule>,
    index: usize,
    origin: Instant,
    deadline: Instant,
    frames: Arc<Frames>,
}

impl Conn {
    async fn run(mut self) -> Seen {
        let mut seen = Seen::default();
        let (mut got_snapshot, mut next_change, mut change_end, mut k) = (false, None::<Instant>, None, 0u64);
        let far = self.deadline + Duration::from_secs(5);
        loop {
            tokio::select! {
                biased;
                changed = self.stage.changed() => {
                    if changed.is_err() { break; }
                    let stage = *self.stage.borrow_and_update();
                    match stage {
                        Stage::Hold => {}
                        Stage::Subscribe => {
                            if let Err(e) = self.ws.send_text(&self.subscribe).await {
                                seen.dropped = Some(e);
                                return seen;
                            }
                        }
                        Stage::Measure { start, end } => {
                            next_change = self.changer.map(|s| start + s.offset);
                            change_end = Some(end);
                        }
                        Stage::Close => break,
                    }
                }
                () = tokio::time::sleep_until(next_change.unwrap_or(far)), if next_change.is_some() => {
                    let (Some(s), Some(at), Some(end)) = (self.changer, next_change, change_end) else { continue };
                    let change = set_message(self.index, k);
                    k += 1;
                    if let Err(e) = self.ws.send_text(&change).await {
                        seen.dropped = Some(e);
                        return seen;
                    }
                    seen.changes_sent += 1;
                    next_change = Some(at + s.period).filter(|t| *t < end);
                }
                msg = self.ws.next() => match msg {
                    Ok(Incoming::Text(text)) => {
                        let at_us = micros(self.origin, Instant::now());
                        let wall = std::time::SystemTime::now();
                        match self.frames.parse(&text) {
                            Ok(Parsed::Presence { snapshot, seq, entries, tick_at }) => {
                                if !got_snapshot && snapshot {
                                    got_snapshot = true;
                                    self.subscribed.fetch_add(1, Ordering::Relaxed);
                                }
                                let tick_lag_us = tick_at.map(|t| tick_lag_us(t, wall));
                                seen.receipts.push((Receipt { seq, at_us, tick_lag_us }, snapshot, entries));
                            }
                            Ok(Parsed::Error(code)) => count(&mut seen.errors, code, 1),
                            Ok(Parsed::Other(_)) => {}
                            Err(e) => count(&mut seen.errors, e, 1),
                        }
                    }
                    Ok(Incoming::Ping(p)) => {
                        if let Err(e) = self.ws.pong(&p).await {
                            seen.dropped = Some(e);
                            return seen;
                        }
                    }
                    Ok(Incoming::Close(code)) => {
                        seen.dropped = Some(format!("server closed ({})", code.map_or("no code".into(), |c| c.to_string())));
                        return seen;
                    }
                    Err(e) => {
                        seen.dropped = Some(e);
                        return seen;
                    }
                },
            }
        }
        seen.closed_cleanly = self.ws.close().await;
        seen
    }
}

/// The k-th change of changer `i`: state alternates, and the status is always new. Even
/// changers start `available`, odd ones `away`, so every tick has users turning
/// available — they go to the top of the window, so every tick changes it (with all
/// changers in step, whole ticks would only turn away users below the window).
fn set_message(i: usize, k: u64) -> String {
    let state = if (k + i as u64) % 2 == 0 { SettableState::Available } else { SettableState::Away };
    ClientMessage::from(PresenceSet { state: Some(state), status: Some(format!("load {k}")) }).to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_alternate_and_always_differ() {
        let (a, b) = (set_message(0, 0), set_message(0, 1));
        assert!(a.contains(r#""state":"available""#) && b.contains(r#""state":"away""#), "{a} {b}");
        assert!(a.contains("load 0") && b.contains("load 1"));
        assert!(set_message(1, 0).contains(r#""state":"away""#) && set_message(1, 1).contains("available"));
        assert!(a.contains(r#""type":"presence.set""#));
    }
}

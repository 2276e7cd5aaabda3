//! The `cluster` scenario: one server made of several instances (over Redis), measured
//! where crossing instances could cost something.
//!
//! 1. Signaling: `--pairs` calls set up by invite, even-numbered ones with both sides on
//!    one instance, odd ones on two neighbouring instances; both sides send `call.signal`s
//!    stamped with their send time, all calls interleaved at `--signal-rate` in total, so
//!    same-instance and cross-instance relay latency are measured side by side under one load.
//! 2. Presence (`cluster_presence`): subscribers of `--topics` topics spread over every
//!    instance, changers on every instance; change-to-receipt lag by whether the change
//!    was made on the subscriber's instance, entries delivered per second, and bus
//!    publishes per presence tick (Redis `INFO commandstats` and each instance's `/health`).

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::Duration;

use rendezvous_protocol::{CallHangup, CallSignal, ClientMessage, InviteAccept, InviteSend, SignalKind};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::{ClusterArgs, Store, Target as CliTarget};
use crate::connect::Target;
use crate::progress::Progress;
use crate::rawws::{Incoming, RawWs};
use crate::report::Latency;
use crate::scenario::cluster_presence;
use crate::scenario::cluster_report::{Report, Signaling};
use crate::scenario::conns::{self, count};
use crate::scenario::matchmaking_report::Stamp;
use crate::scenario::setup;
use crate::summary;

/// Signals still in flight this long after the sending stops are counted.
const DRAIN: Duration = Duration::from_secs(2);
/// How long every call gets to come up.
const SETUP: Duration = Duration::from_secs(30);
/// Invites refused while the invitee's registration is still travelling are retried.
const INVITE_TRIES: usize = 5;

/// Which instance each side of call `k` connects to: `(caller, callee, crosses)`.
pub fn placement(k: usize, instances: usize) -> (usize, usize, bool) {
    let crosses = k % 2 == 1 && instances > 1;
    let a = (k / 2) % instances;
    (a, if crosses { (a + 1) % instances } else { a }, crosses)
}

/// When a sender sends: `start + offset + k * period`, every sender on its own slot so
/// all of them together send at the asked rate, evenly spread.
#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    pub(super) offset: Duration,
    pub(super) period: Duration,
}

impl Schedule {
    /// Sender `i` of `n` at `rate` per second in total.
    pub(super) fn of(i: usize, n: usize, rate: f64) -> Option<Self> {
        (rate > 0.0).then(|| Self {
            offset: Duration::from_secs_f64(i as f64 / rate),
            period: Duration::from_secs_f64(n as f64 / rate),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Hold,
    /// Callers invite, callees accept.
    Call,
    Send {
        start: Instant,
        end: Instant,
    },
    Close,
}

#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    invite_id: Option<String>,
    call_id: Option<String>,
    payload: Option<Stamp>,
    code: Option<String>,
}

/// What one side of a call saw.
#[derive(Default)]
struct Seen {
    crosses: bool,
    in_call: bool,
    sent: usize,
    relay_us: Vec<u64>,
    errors: BTreeMap<String, usize>,
    dropped: Option<String>,
}

struct Side {
    ws: RawWs,
    stage: watch::Receiver<Stage>,
    ready: mpsc::UnboundedSender<()>,
    /// The callee, for the caller.
    invite: Option<String>,
    crosses: bool,
    schedule: Option<Schedule>,
    origin: Instant,
}

impl Side {
    async fn run(mut self) -> Seen {
        let mut seen = Seen { crosses: self.crosses, ..Seen::default() };
        let served = self.serve(&mut seen).await;
        seen.dropped = self.ws.finish(served).await;
        seen
    }

    async fn serve(&mut self, seen: &mut Seen) -> Result<(), String> {
        let far = Instant::now() + Duration::from_secs(86_400);
        let (mut call_id, mut next, mut end, mut retry, mut tries) = (None::<String>, None::<Instant>, far, None, 0);
        loop {
            tokio::select! {
                biased;
                changed = self.stage.changed() => {
                    if changed.is_err() { return Ok(()); }
                    let stage = *self.stage.borrow_and_update();
                    match stage {
                        Stage::Hold => {}
                        Stage::Call => retry = self.invite.is_some().then(Instant::now),
                        Stage::Send { start, end: e } => {
                            next = self.schedule.map(|s| start + s.offset).filter(|_| call_id.is_some());
                            end = e;
                        }
                        Stage::Close => {
                            if let (Some(id), true) = (&call_id, self.invite.is_some()) {
                                let hangup = ClientMessage::from(CallHangup { call_id: id.clone() });
                                self.ws.send_text(&hangup.to_json()).await?;
                            }
                            return Ok(());
                        }
                    }
                }
                () = tokio::time::sleep_until(retry.unwrap_or(far)), if retry.is_some() => {
                    retry = None;
                    tries += 1;
                    let user_id = self.invite.clone().unwrap_or_default();
                    self.ws.send_text(&ClientMessage::from(InviteSend { user_id }).to_json()).await?;
                }
                () = tokio::time::sleep_until(next.unwrap_or(far)), if next.is_some() => {
                    let (Some(at), Some(s), Some(id)) = (next, self.schedule, &call_id) else { continue };
                    let t = self.now_us();
                    let payload = serde_json::to_value(Stamp { t, n: seen.sent as u32 }).unwrap_or_default();
                    let msg = ClientMessage::from(CallSignal { call_id: id.clone(), kind: SignalKind::Ice, payload });
                    self.ws.send_text(&msg.to_json()).await?;
                    seen.sent += 1;
                    next = Some(at + s.period).filter(|t| *t < end);
                }
                msg = self.ws.next() => match msg? {
                    Incoming::Ping(p) => self.ws.pong(&p).await?,
                    Incoming::Close(code) => return Err(format!("server closed ({code:?})")),
                    Incoming::Text(text) => {
                        let now_us = self.now_us();
                        let f: Frame = match serde_json::from_str(&text) {
                            Ok(f) => f,
                            Err(e) => { count(&mut seen.errors, format!("bad frame: {e}"), 1); continue; }
                        };
                        match f.kind.as_str() {
                            "invite.received" => {
                                let invite_id = f.invite_id.unwrap_or_default();
                                self.ws.send_text(&ClientMessage::from(InviteAccept { invite_id }).to_json()).await?;
                            }
                            "match.confirmed" => {
                                call_id = f.call_id;
                                seen.in_call = call_id.is_some();
                                let _ = self.ready.send(());
                            }
                            "call.signal" => {
                                if let Some(s) = f.payload {
                                    seen.relay_us.push(now_us.saturating_sub(s.t));
                                }
                            }
                            "error" | "invite.declined" | "invite.expired" => {
                                let code = f.code.unwrap_or_else(|| f.kind.clone());
                                if self.invite.is_some() && call_id.is_none() && tries < INVITE_TRIES {
                                    retry = Some(Instant::now() + Duration::from_millis(500));
                                }
                                count(&mut seen.errors, code, 1);
                            }
                            _ => {}
                        }
                    }
                },
            }
        }
    }

    fn now_us(&self) -> u64 {
        micros(self.origin, Instant::now())
    }
}

pub(super) fn micros(origin: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(origin).as_micros() as u64
}

/// Per-instance connection targets.
pub(super) fn targets(args: &ClusterArgs) -> Vec<Target> {
    args.ports
        .iter()
        .map(|p| Target {
            addr: SocketAddrV4::new(args.host, *p),
            path: args.path.clone(),
            deflate: false,
            timeout: args.connect_timeout,
        })
        .collect()
}

/// Opens `tokens[i]` on instance `instance_of(i)`; one `Option<RawWs>` per token.
pub(super) async fn open_spread(
    args: &ClusterArgs,
    tokens: &[String],
    instance_of: impl Fn(usize) -> usize,
    progress: &Progress,
    deadline: Instant,
) -> (Vec<Option<RawWs>>, BTreeMap<String, usize>) {
    let targets = targets(args);
    let mut out: Vec<Option<RawWs>> = (0..tokens.len()).map(|_| None).collect();
    let mut failed = BTreeMap::new();
    progress.phase("connecting", tokens.len());
    for (n, target) in targets.iter().enumerate() {
        let idx: Vec<usize> = (0..tokens.len()).filter(|i| instance_of(*i) == n).collect();
        let mine: Vec<String> = idx.iter().map(|i| tokens[*i].clone()).collect();
        let opened = conns::open_all(target, &args.sources.addrs(), &mine, args.concurrency, progress, deadline).await;
        for (reason, k) in opened.failed {
            count(&mut failed, format!("instance {n}: {reason}"), k);
        }
        for (i, ws) in idx.into_iter().zip(opened.conns) {
            out[i] = ws;
        }
    }
    (out, failed)
}

pub async fn run(args: &ClusterArgs, deadline: Instant) -> ExitCode {
    let origin = Instant::now();
    let progress = Progress::start("cluster");
    let signaling = signaling(args, origin, &progress, deadline).await;
    let presence = cluster_presence::run(args, origin, &progress, deadline).await;
    progress.finish();
    let report = Report {
        scenario: "cluster".into(),
        instances: args.ports.len(),
        ports: args.ports.clone(),
        signaling,
        presence,
        elapsed_secs: origin.elapsed().as_secs_f64(),
    };
    if let Err(e) = summary::emit(&args.output, &report, &report.table()) {
        eprintln!("rendezvous-loadtest: {e}");
        return ExitCode::FAILURE;
    }
    if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn signaling(args: &ClusterArgs, origin: Instant, progress: &Progress, deadline: Instant) -> Signaling {
    let n = args.ports.len();
    let store = Store {
        api_key: args.api_key.clone(),
        setup_concurrency: args.setup_concurrency,
        user_prefix: args.user_prefix.clone(),
        health_url: None,
        max: args.max,
    };
    let first = CliTarget { host: args.host, port: args.ports[0] };
    let made = setup::make_users(&first, &store, args.pairs * 2, true, progress, deadline).await;
    let users = made.tokens.len().min(made.user_ids.len()) / 2 * 2;
    let place = |i: usize| {
        let (a, b, _) = placement(i / 2, n);
        if i % 2 == 0 { a } else { b }
    };
    let (mut conns, failed) = open_spread(args, &made.tokens[..users], place, progress, deadline).await;

    let (stage_tx, stage_rx) = watch::channel(Stage::Hold);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let pairs: Vec<(usize, RawWs, RawWs)> = (0..users / 2)
        .filter_map(|k| match (conns[2 * k].take(), conns[2 * k + 1].take()) {
            (Some(a), Some(b)) => Some((k, a, b)),
            _ => None,
        })
        .collect();
    let sides = pairs.len() * 2;
    let mut tasks = JoinSet::new();
    for (p, (k, a, b)) in pairs.into_iter().enumerate() {
        let crosses = placement(k, n).2;
        for (j, ws) in [(0, a), (1, b)] {
            let side = Side {
                ws,
                stage: stage_rx.clone(),
                ready: ready_tx.clone(),
                invite: (j == 0).then(|| made.user_ids[2 * k + 1].clone()),
                crosses,
                // Interleaved: neighbouring slots alternate between sides and kinds of call.
                schedule: Schedule::of(2 * p + j, sides, args.signal_rate),
                origin,
            };
            tasks.spawn(side.run());
        }
    }
    drop(ready_tx);
    let _ = stage_tx.send(Stage::Call);
    progress.phase("calls", sides);
    let until = (Instant::now() + SETUP).min(deadline);
    let mut in_call = 0;
    while in_call < sides {
        match tokio::time::timeout_at(until, ready_rx.recv()).await {
            Ok(Some(())) => {
                in_call += 1;
                progress.item(true);
            }
            _ => break,
        }
    }
    progress.note(&format!("{in_call}/{sides} call sides up"));
    let start = Instant::now() + Duration::from_millis(200);
    let end = (start + args.signal_duration).min(deadline - DRAIN - Duration::from_secs(8));
    let _ = stage_tx.send(Stage::Send { start, end });
    progress.phase("signaling", 0);
    tokio::time::sleep_until((end + DRAIN).min(deadline)).await;
    let _ = stage_tx.send(Stage::Close);
    progress.phase("closing", sides);
    let seen = conns::collect(&mut tasks, deadline, progress, |s| s.dropped.is_none()).await;

    let secs = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    let (mut local, mut cross, mut errors, mut dropped) = (Vec::new(), Vec::new(), BTreeMap::new(), BTreeMap::new());
    let (mut sent, mut calls_up) = (0, 0);
    for s in seen {
        sent += s.sent;
        calls_up += usize::from(s.in_call);
        if s.crosses {
            cross.extend(s.relay_us)
        } else {
            local.extend(s.relay_us)
        }
        for (code, k) in s.errors {
            count(&mut errors, code, k);
        }
        if let Some(reason) = s.dropped {
            count(&mut dropped, reason, 1);
        }
    }
    let received = local.len() + cross.len();
    let (same, crossing) = (Latency::of(&mut local), Latency::of(&mut cross));
    Signaling {
        setup: made.report,
        pairs: args.pairs,
        signal_rate: args.signal_rate,
        connected: sides,
        failed,
        call_sides_up: calls_up,
        signals_sent: sent,
        signals_received: received,
        signals_per_sec: sent as f64 / secs,
        same_instance_samples: local.len(),
        cross_instance_samples: cross.len(),
        same_instance: same,
        cross_instance: crossing,
        added_p99_ms: crossing.p99_ms - same.p99_ms,
        added_p50_ms: crossing.p50_ms - same.p50_ms,
        error_frames: errors,
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_calls_cross_and_every_instance_takes_part() {
        let placed: Vec<_> = (0..6).map(|k| placement(k, 3)).collect();
        assert_eq!(placed, [(0, 0, false), (0, 1, true), (1, 1, false), (1, 2, true), (2, 2, false), (2, 0, true)]);
        assert!((0..10).all(|k| !placement(k, 1).2), "one instance never crosses");
    }

    #[test]
    fn schedules_spread_senders_evenly_at_the_total_rate() {
        let s: Vec<_> = (0..4).map(|i| Schedule::of(i, 4, 1000.0).unwrap()).collect();
        assert_eq!(s[1].offset - s[0].offset, Duration::from_millis(1));
        assert!(s.iter().all(|s| s.period == Duration::from_millis(4)));
        assert!(Schedule::of(0, 4, 0.0).is_none());
    }
}

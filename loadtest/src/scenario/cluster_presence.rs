//! The presence half of the `cluster` scenario: subscribers and changers on every
//! instance; what crossing instances costs a presence change, and how many bus
//! publishes a presence tick takes.
//!
//! Subscriber `i` connects to instance `i mod n` and subscribes to topic
//! `cluster:<(i / n) mod T>`, so every topic has subscribers on every instance. A change's
//! status text is its send time (`t<µs>`), so each receipt of it gives a change-to-receipt
//! lag, split by whether the changer is on the receiver's instance.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rendezvous_protocol::{ClientMessage, PresenceSet, PresenceSubscribe, SettableState};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::ClusterArgs;
use crate::progress::Progress;
use crate::rawws::{Incoming, RawWs};
use crate::report::Latency;
use crate::scenario::cluster::{Schedule, micros, open_spread};
use crate::scenario::cluster_report::{BusCounts, Presence};
use crate::scenario::conns::{self, count};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Hold,
    Subscribe,
    Measure { start: Instant, end: Instant },
    Close,
}

#[derive(Debug, Deserialize)]
struct Entry {
    id: String,
    status: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    #[serde(default)]
    entries: Vec<Entry>,
    #[serde(default)]
    joins: Vec<Entry>,
    #[serde(default)]
    updates: Vec<Entry>,
    #[serde(default)]
    leaves: Vec<IgnoredAny>,
    code: Option<String>,
}

/// One subscriber's receipts: `(at µs, entries, seq)` and change lags `(µs, same instance)`.
#[derive(Default)]
struct Seen {
    /// The subscriber's (instance, topic).
    group: (usize, usize),
    frames: Vec<(u64, u32, u64)>,
    lags: Vec<(u64, bool)>,
    changes_sent: usize,
    errors: BTreeMap<String, usize>,
    dropped: Option<String>,
}

struct Conn {
    ws: RawWs,
    stage: watch::Receiver<Stage>,
    subscribe: String,
    subscribed: Arc<AtomicUsize>,
    changer: Option<Schedule>,
    instance: usize,
    topic: usize,
    instances: usize,
    prefix: String,
    origin: Instant,
}

impl Conn {
    async fn run(mut self) -> Seen {
        let mut seen = Seen { group: (self.instance, self.topic), ..Seen::default() };
        let served = self.serve(&mut seen).await;
        seen.dropped = self.ws.finish(served).await;
        seen
    }

    async fn serve(&mut self, seen: &mut Seen) -> Result<(), String> {
        let far = Instant::now() + Duration::from_secs(86_400);
        let (mut next, mut end, mut k, mut got_snapshot, mut from_us) = (None::<Instant>, far, 0u64, false, u64::MAX);
        loop {
            tokio::select! {
                biased;
                changed = self.stage.changed() => {
                    if changed.is_err() { return Ok(()); }
                    let stage = *self.stage.borrow_and_update();
                    match stage {
                        Stage::Hold => {}
                        Stage::Subscribe => self.ws.send_text(&self.subscribe).await?,
                        Stage::Measure { start, end: e } => {
                            next = self.changer.map(|s| start + s.offset);
                            end = e;
                            from_us = micros(self.origin, start);
                        }
                        Stage::Close => return Ok(()),
                    }
                }
                () = tokio::time::sleep_until(next.unwrap_or(far)), if next.is_some() => {
                    let (Some(at), Some(s)) = (next, self.changer) else { continue };
                    let state = if k % 2 == 0 { SettableState::Away } else { SettableState::Available };
                    let status = format!("t{}", micros(self.origin, Instant::now()));
                    let msg = ClientMessage::from(PresenceSet { state: Some(state), status: Some(status) });
                    self.ws.send_text(&msg.to_json()).await?;
                    k += 1;
                    seen.changes_sent += 1;
                    next = Some(at + s.period).filter(|t| *t < end);
                }
                msg = self.ws.next() => match msg? {
                    Incoming::Ping(p) => self.ws.pong(&p).await?,
                    Incoming::Close(code) => return Err(format!("server closed ({code:?})")),
                    Incoming::Text(text) => {
                        let at = micros(self.origin, Instant::now());
                        let f: Frame = match serde_json::from_str(&text) {
                            Ok(f) => f,
                            Err(e) => { count(&mut seen.errors, format!("bad frame: {e}"), 1); continue; }
                        };
                        match f.kind.as_str() {
                            "presence.snapshot" | "presence.diff" => {
                                if f.kind == "presence.snapshot" && !got_snapshot {
                                    got_snapshot = true;
                                    self.subscribed.fetch_add(1, Ordering::Relaxed);
                                }
                                let n = f.entries.len() + f.joins.len() + f.updates.len() + f.leaves.len();
                                seen.frames.push((at, n as u32, f.seq.unwrap_or(0)));
                                for e in f.entries.iter().chain(&f.joins).chain(&f.updates) {
                                    let Some(t) = e.status.as_deref().and_then(|s| s.strip_prefix('t')?.parse::<u64>().ok()) else { continue };
                                    if t >= from_us {
                                        let same = self.instance_of(&e.id) == Some(self.instance);
                                        seen.lags.push((at.saturating_sub(t), same));
                                    }
                                }
                            }
                            "error" => count(&mut seen.errors, f.code.unwrap_or_default(), 1),
                            _ => {}
                        }
                    }
                },
            }
        }
    }

    /// The instance subscriber `<prefix>p-<i>` is on.
    fn instance_of(&self, id: &str) -> Option<usize> {
        let i: usize = id.strip_prefix(&self.prefix)?.parse().ok()?;
        Some(i % self.instances)
    }
}

pub async fn run(args: &ClusterArgs, origin: Instant, progress: &Progress, deadline: Instant) -> Presence {
    let n = args.ports.len();
    let prefix = format!("{}p-", args.user_prefix);
    let tokens: Vec<String> = (0..args.subscribers).map(|i| format!("dev-{prefix}{i}")).collect();
    let (conns, failed) = open_spread(args, &tokens, |i| i % n, progress, deadline).await;
    let connected = conns.iter().filter(|c| c.is_some()).count();

    let (stage_tx, stage_rx) = watch::channel(Stage::Hold);
    let subscribed = Arc::new(AtomicUsize::new(0));
    let changers = args.changers.min(args.subscribers);
    let mut tasks = JoinSet::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let Some(ws) = ws else { continue };
        let t = (i / n) % args.topics;
        let topic = format!("cluster:{t}");
        let conn = Conn {
            ws,
            stage: stage_rx.clone(),
            subscribe: ClientMessage::from(PresenceSubscribe { topic }).to_json(),
            subscribed: subscribed.clone(),
            changer: (i < changers).then(|| Schedule::of(i, changers, args.change_rate)).flatten(),
            instance: i % n,
            topic: t,
            instances: n,
            prefix: prefix.clone(),
            origin,
        };
        tasks.spawn(conn.run());
    }
    let _ = stage_tx.send(Stage::Subscribe);
    progress.phase("subscribing", connected);
    let until = (Instant::now() + Duration::from_secs(60)).min(deadline);
    let n_subscribed = conns::wait_for_count(&subscribed, connected, until, progress).await;
    // Two ticks for the joins to reach every instance and settle.
    let tick = Duration::from_millis(args.tick_ms);
    tokio::time::sleep_until((Instant::now() + 2 * tick).min(deadline)).await;

    progress.phase("idle window", 0);
    let c0 = BusCounts::take(args).await;
    tokio::time::sleep_until((Instant::now() + args.idle).min(deadline)).await;
    let c1 = BusCounts::take(args).await;
    let start = Instant::now() + Duration::from_millis(100);
    // Remote changes wait for two ticks (the changer's, then the receiver's).
    let drain = 2 * tick + Duration::from_secs(1);
    let end = (start + args.presence_duration).min(deadline - drain - Duration::from_secs(6));
    let _ = stage_tx.send(Stage::Measure { start, end });
    progress.phase("measuring", 0);
    tokio::time::sleep_until(start.min(deadline)).await;
    let c2 = BusCounts::take(args).await;
    tokio::time::sleep_until(end).await;
    let c3 = BusCounts::take(args).await;
    tokio::time::sleep_until((end + drain).min(deadline)).await;
    let _ = stage_tx.send(Stage::Close);
    progress.phase("closing", connected);
    let seen = conns::collect(&mut tasks, deadline, progress, |s| s.dropped.is_none()).await;

    let (from, to) = (micros(origin, start), micros(origin, end));
    let in_window = |at: &u64| (from..=to).contains(at);
    let secs = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    let (mut local, mut remote, mut entries, mut sent) = (Vec::new(), Vec::new(), 0u64, 0);
    let (mut errors, mut dropped) = (BTreeMap::new(), BTreeMap::new());
    // Spread: how long after the first subscriber of the same (instance, topic) a tick's
    // frame (seq) reached the others.
    let mut firsts: HashMap<(usize, usize, u64), u64> = HashMap::new();
    for s in &seen {
        sent += s.changes_sent;
        for (lag, same) in &s.lags {
            if *same { local.push(*lag) } else { remote.push(*lag) }
        }
        for (code, k) in &s.errors {
            count(&mut errors, code.clone(), *k);
        }
        if let Some(reason) = &s.dropped {
            count(&mut dropped, reason.clone(), 1);
        }
        for (at, k, seq) in s.frames.iter().filter(|f| in_window(&f.0)) {
            entries += u64::from(*k);
            let first = firsts.entry((s.group.0, s.group.1, *seq)).or_insert(*at);
            *first = (*first).min(*at);
        }
    }
    let mut spread: Vec<u64> = seen
        .iter()
        .flat_map(|s| {
            let firsts = &firsts;
            s.frames
                .iter()
                .filter(|f| in_window(&f.0))
                .filter_map(move |(at, _, seq)| firsts.get(&(s.group.0, s.group.1, *seq)).map(|first| at - first))
        })
        .collect();
    let (lag_same, lag_other) = (Latency::of(&mut local), Latency::of(&mut remote));
    let idle = c1.minus(&c0);
    let active = c3.minus(&c2);
    let idle_ticks = (c1.at - c0.at).as_secs_f64() * 1000.0 / args.tick_ms as f64;
    let ticks = (c3.at - c2.at).as_secs_f64() * 1000.0 / args.tick_ms as f64;
    Presence {
        subscribers: args.subscribers,
        topics: args.topics,
        changers,
        change_rate: args.change_rate,
        tick_ms: args.tick_ms,
        connected,
        failed,
        subscribed: n_subscribed,
        measured_secs: secs,
        changes_sent: sent,
        entries_delivered: entries,
        entries_per_sec: entries as f64 / secs,
        lag_same_instance_samples: local.len(),
        lag_other_instance_samples: remote.len(),
        change_to_receipt_same_instance: lag_same,
        change_to_receipt_other_instance: lag_other,
        receipt_spread: Latency::of(&mut spread),
        redis_publishes_per_tick_idle: idle.redis.map(|r| r as f64 / idle_ticks.max(1e-9)),
        redis_publishes_per_tick: active.redis.map(|r| r as f64 / ticks.max(1e-9)),
        bus_publishes_per_tick_per_instance: active
            .instances
            .iter()
            .map(|p| p.map(|p| p as f64 / ticks.max(1e-9)))
            .collect(),
        bus_publishes_per_tick_per_instance_idle: idle
            .instances
            .iter()
            .map(|p| p.map(|p| p as f64 / idle_ticks.max(1e-9)))
            .collect(),
        publish_bound_per_tick: args.topics * n,
        error_frames: errors,
        dropped,
    }
}

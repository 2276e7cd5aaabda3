//! Measures the presence tick: one topic with many subscribers (every one also a member),
//! `changes_per_tick` random members changing state and status every tick, and the per-tick duration and volume from `PresenceStats`.
//!
//! `cargo run --release -p rendezvous-presence --example presence_tick -- [subscribers] [changes_per_tick] [ticks] [tick_ms]`
//!
//! The p99 covers the last 256 ticks: run more than 256 so set-up ticks (everyone joining) drop out.

use std::time::{Duration, Instant};

use rendezvous_bus::{Bus, BusConfig};
use rendezvous_gateway::testing::{ChannelOutbox, OutboxRx};
use rendezvous_presence::{Directory, Presence, PresenceConfig, Profile};
use rendezvous_protocol::SettableState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
struct Dir;

impl Directory for Dir {
    type Error = String;
    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, String> {
        Ok(Some(Profile {
            display_name: format!("User {user_id}").into(),
            gender: "unspecified".into(),
            selfie_url: None,
        }))
    }
    async fn blocks(&self, _user_id: &str) -> Result<std::sync::Arc<Vec<String>>, String> {
        Ok(Default::default())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let arg = |i: usize, d: usize| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (subscribers, changes, ticks, tick_ms) = (arg(1, 5_000), arg(2, 500), arg(3, 300), arg(4, 100) as u64);
    let cfg = PresenceConfig { tick_ms, command_queue: 100_000, ..PresenceConfig::default() };
    let bus = Bus::in_process("bench", &BusConfig::default());
    let tracker = TaskTracker::new();
    let handle = Presence::spawn(cfg, bus, Dir, CancellationToken::new(), &tracker).unwrap();
    let mut conns: Vec<(ChannelOutbox, OutboxRx)> =
        (0..subscribers).map(|i| ChannelOutbox::new(i as u64, &format!("u{i}"))).collect();
    for (c, _) in &conns {
        handle.subscribe(c, "lobby", None).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(3 * tick_ms)).await;
    let base = handle.stats();
    let started = Instant::now();
    for t in 0..ticks {
        for _ in 0..changes {
            // A real change every time (the status carries the tick), so every tick has work.
            let (c, _) = &conns[rand::random_range(0..subscribers)];
            let state = if rand::random::<bool>() { SettableState::Away } else { SettableState::Available };
            handle.set_state(c, Some(state), Some(format!("t{t}")), None).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(tick_ms)).await;
        for (_, rx) in &mut conns {
            rx.drain();
        }
    }
    let s = handle.stats();
    let elapsed = started.elapsed().as_secs_f64();
    println!("subscribers={subscribers} changes_per_tick={changes} ticks={ticks} ({elapsed:.1} s)");
    println!("tick_p99_us={}", s.tick_p99_us);
    println!("batches={}", s.batches_total - base.batches_total);
    println!("messages_sent={}", s.messages_sent_total - base.messages_sent_total);
    println!(
        "bytes_per_batch={}",
        (s.bytes_sent_total - base.bytes_sent_total) / (s.messages_sent_total - base.messages_sent_total).max(1)
    );
    let entries = s.entries_changed_total - base.entries_changed_total;
    let coalesced = s.changes_coalesced_total - base.changes_coalesced_total;
    println!("entries_changed={entries} coalesced={coalesced}");
}

//! Measures what presence allocates per connection: once connected (the server registers
//! every connection with presence when it opens) and again once subscribed to one topic,
//! every subscriber also a member, as jemalloc's `stats.allocated` (what the server's
//! `/health` reports).
//!
//! `cargo run --release -p rendezvous-presence --example presence_memory -- [connections] [tick_ms] [instances]`
//!
//! With `instances` above 1 (default 1), as many more instances run on the same in-process
//! bus without connections of their own: each holds the first one's users as remote members,
//! so the figures then include what every other instance of a cluster adds per connection.
//!
//! The outboxes are `testing::ChannelOutbox`es created before the first reading, so their
//! channels are not counted; each is drained after every tick.

use std::time::Duration;

use rendezvous_bus::{Bus, BusConfig};
use rendezvous_gateway::testing::{ChannelOutbox, OutboxRx};
use rendezvous_presence::{Directory, Presence, PresenceConfig, Profile};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Clone)]
struct Dir;

impl Directory for Dir {
    type Error = String;
    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, String> {
        // Like the load tool's users: a name, a gender, no photo.
        Ok(Some(Profile { display_name: format!("User {user_id}").into(), gender: "female".into(), selfie_url: None }))
    }
    async fn blocks(&self, _user_id: &str) -> Result<std::sync::Arc<Vec<String>>, String> {
        Ok(Default::default())
    }
}

fn allocated() -> u64 {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().map_or(0, |v| v as u64)
}

async fn settle(conns: &mut [(ChannelOutbox, OutboxRx)], tick_ms: u64) {
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(tick_ms)).await;
        for (_, rx) in conns.iter_mut() {
            rx.drain();
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let arg = |i: usize, d: usize| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (n, tick_ms, instances) = (arg(1, 10_000), arg(2, 100) as u64, arg(3, 1).max(1));
    let cfg = PresenceConfig { tick_ms, command_queue: 100_000, ..PresenceConfig::default() };
    let bus = Bus::in_process("bench", &BusConfig::default());
    let tracker = TaskTracker::new();
    let handle = Presence::spawn(cfg.clone(), bus.clone(), Dir, CancellationToken::new(), &tracker).unwrap();
    let _peers: Vec<_> = (1..instances)
        .map(|i| {
            let bus = bus.as_instance(format!("bench-{i}"));
            Presence::spawn::<ChannelOutbox, _>(cfg.clone(), bus, Dir, CancellationToken::new(), &tracker).unwrap()
        })
        .collect();
    let mut conns: Vec<(ChannelOutbox, OutboxRx)> =
        (0..n).map(|i| ChannelOutbox::new(i as u64, &format!("lt0-{i}"))).collect();
    settle(&mut conns, tick_ms).await;
    let base = allocated();
    for (c, _) in &conns {
        handle.connect(c).unwrap();
    }
    settle(&mut conns, tick_ms).await;
    let connected = allocated();
    for (c, _) in &conns {
        handle.subscribe(c, "lobby", None).unwrap();
    }
    settle(&mut conns, tick_ms).await;
    let subscribed = allocated();
    let per = |a: u64, b: u64| (b as f64 - a as f64) / n as f64;
    println!("connections={n} instances={instances}");
    println!("connected_bytes_per_connection={:.0}", per(base, connected));
    println!("subscribed_bytes_per_connection={:.0}", per(connected, subscribed));
    println!("stats: {:?}", handle.stats());
}

//! The presence task: owns the [`State`], and is the only thing that touches it. It reacts to
//! commands, directory results, bus messages and two timers (tick, heartbeat); it never
//! awaits a connection, the store or the bus transport.

use std::sync::Arc;
use std::time::Duration;

use rendezvous_bus::Bus;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, PresenceConfig};
use crate::directory::{Directory, Lookup, lookup};
use crate::entry::UserId;
use crate::handle::{Command, PresenceHandle};
use crate::link::{BusLink, Inbound};
use crate::state::State;
use crate::stats::StatsCell;
use rendezvous_gateway::Outbox;

/// Starts the presence service.
#[derive(Debug)]
pub struct Presence;

struct LookupDone {
    user: UserId,
    id: u64,
    result: Result<Lookup, String>,
}

impl Presence {
    /// Validates `cfg` and spawns the presence task on `tracker`; it stops when `shutdown` is
    /// cancelled. `bus.instance()` names this instance to the others.
    pub fn spawn<O: Outbox, D: Directory>(
        cfg: PresenceConfig,
        bus: Bus,
        directory: D,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<PresenceHandle<O>, ConfigError> {
        cfg.validate()?;
        let cfg = Arc::new(cfg);
        let stats = Arc::new(StatsCell::default());
        let (tx, rx) = mpsc::channel(cfg.command_queue);
        let state = State::new(cfg.clone(), Arc::from(bus.instance()), Instant::now(), stats.clone());
        let task = Task { state, rx, directory: Arc::new(directory), tracker: tracker.clone(), shutdown };
        tracker.spawn(task.run(bus));
        Ok(PresenceHandle { tx, cfg, stats, tracker: tracker.clone(), activity_stamps: Default::default() })
    }
}

struct Task<O, D> {
    state: State<O>,
    rx: mpsc::Receiver<Command<O>>,
    directory: Arc<D>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl<O: Outbox, D: Directory> Task<O, D> {
    async fn run(mut self, bus: Bus) {
        let cfg = self.state.cfg.clone();
        let mut link = BusLink::start(
            bus,
            &cfg.bus_topic,
            cfg.bus_queue,
            self.state.stats.clone(),
            &self.tracker,
            self.shutdown.clone(),
        )
        .await;
        let (done_tx, mut done_rx) = mpsc::channel::<LookupDone>(cfg.directory_concurrency);
        let permits = Arc::new(Semaphore::new(cfg.directory_concurrency));
        let mut tick = interval(Duration::from_millis(cfg.tick_ms));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heartbeat = interval(Duration::from_millis(cfg.heartbeat_ms));
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Timers first, so a flood of commands cannot delay a tick.
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    for msg in self.state.tick(Instant::now()) {
                        link.publish(&msg);
                    }
                }
                _ = heartbeat.tick() => link.publish(&self.state.heartbeat()),
                Some(done) = done_rx.recv() => self.state.lookup_done(&done.user, done.id, done.result),
                inbound = link.recv() => match inbound {
                    Inbound::Message { origin, msg } => self.state.receive(&origin, msg, Instant::now()),
                    Inbound::Gap => {
                        tracing::info!("presence: bus gap; asking every instance for its full state");
                        self.state.peers.gap();
                    }
                },
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
            }
            for (user, id) in std::mem::take(&mut self.state.lookups) {
                self.spawn_lookup(user, id, &permits, &done_tx);
            }
        }
    }

    fn command(&mut self, cmd: Command<O>) {
        let now = Instant::now();
        let s = &mut self.state;
        match cmd {
            Command::Connect(conn) => s.connect(&conn, now),
            Command::Disconnect(id) => s.disconnect(id, now),
            Command::Subscribe { conn, topic, req } => s.subscribe(&conn, topic, req, now),
            Command::Unsubscribe { conn, topic, req } => s.unsubscribe(&conn, topic, req),
            Command::Set { conn, state, status, req } => s.set_state(&conn, state, status, req, now),
            Command::Activity { user, activity, stamp } => s.set_activity(&user, activity, stamp, now),
            Command::Refresh { user } => s.refresh(&user),
        }
    }

    /// Looks a user up off the task; at most `presence.directory_concurrency` at once.
    fn spawn_lookup(&self, user: UserId, id: u64, permits: &Arc<Semaphore>, done: &mpsc::Sender<LookupDone>) {
        let (directory, permits, done, shutdown) =
            (self.directory.clone(), permits.clone(), done.clone(), self.shutdown.clone());
        self.tracker.spawn(async move {
            let work = async {
                let _permit = permits.acquire_owned().await.ok()?;
                let result = lookup(&*directory, &user).await;
                done.send(LookupDone { user, id, result }).await.ok()
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = work => {}
            }
        });
    }
}

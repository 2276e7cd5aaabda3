//! The matchmaker task: one per instance, owning this instance's connections (the
//! "home" side) and the proposals, invites and calls it coordinates. It reads commands
//! from handles, results of directory calls it spawned, its bus inbox and its timers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rendezvous_bus::{Bus, BusError, Received, Subscription};
use rendezvous_gateway::{Outbox, SharedMessage};
use rendezvous_protocol::{ErrorCode, MatchPrefs, RequestId};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{ClusterEvent, InstanceRegistry};
use crate::config::MatchmakerConfig;
use crate::directory::{ActivitySink, CallOrigin, Directory, DirectoryError, Profile, PublicProfile, StartedCall};
use crate::events::error_json;
use crate::handle::{Command, MatchmakerHandle};
use crate::locator::{InProcessLocator, Locator};
use crate::queue::{InProcessQueue, MatchQueue, QueueEntry};
use crate::stats::{Stats, inc};
use crate::wire::{CallRef, Note, PairCmd, Wire, inbox_topic};

/// What the matchmaker is built on. The queue and locator are shared by every instance;
/// [`MatchmakerDeps::in_process`] makes single-process ones.
#[derive(Clone)]
pub struct MatchmakerDeps {
    /// Users, blocks, cooldowns and call history (the store).
    pub directory: Arc<dyn Directory>,
    /// Presence, driven by the matchmaker.
    pub activity: Arc<dyn ActivitySink>,
    /// The shared queue and engagement table.
    pub queue: Arc<dyn MatchQueue>,
    /// The shared user → instance registry.
    pub locator: Arc<dyn Locator>,
    /// The instance registry (Redis deployments): dead instances are cleaned up after and
    /// state lost by Redis is re-asserted. `None` in one process.
    pub registry: Option<InstanceRegistry>,
}

impl std::fmt::Debug for MatchmakerDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatchmakerDeps").finish_non_exhaustive()
    }
}

impl MatchmakerDeps {
    /// Deps with a fresh in-process queue and locator (one instance, or the first of
    /// several in one process: clone the result and share its queue and locator).
    pub fn in_process(directory: Arc<dyn Directory>, activity: Arc<dyn ActivitySink>) -> Self {
        Self {
            directory,
            activity,
            queue: Arc::new(InProcessQueue::new()),
            locator: Arc::new(InProcessLocator::new()),
            registry: None,
        }
    }
}

/// Why the matchmaker could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Subscribing to this instance's inbox topic failed.
    #[error("could not subscribe to the matchmaker inbox")]
    Inbox(#[source] BusError),
}

/// Starts matchmaker tasks.
#[derive(Debug)]
pub struct Matchmaker;

impl Matchmaker {
    /// Subscribes to this instance's inbox (`matchmaker.inbox.<bus instance>`) and spawns
    /// the task on `tracker`. It stops when `shutdown` is cancelled, after ending what it
    /// coordinates (see docs/decisions.md).
    pub async fn spawn<O: Outbox>(
        cfg: MatchmakerConfig,
        bus: Bus,
        deps: MatchmakerDeps,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<MatchmakerHandle<O>, SpawnError> {
        let me: Arc<str> = Arc::from(bus.instance());
        let inbox = bus.subscribe(&inbox_topic(&me)).await.map_err(SpawnError::Inbox)?;
        let cfg = Arc::new(cfg);
        let (tx, rx) = mpsc::channel(cfg.command_queue.max(1));
        // Results of spawned directory calls: bounded by the lookups admitted plus the
        // calls being started; senders wait for room rather than drop a result.
        let (done_tx, done_rx) = mpsc::channel(cfg.max_pending_lookups.max(1));
        let stats = Arc::new(Stats::default());
        let cluster = deps.registry.as_ref().map(InstanceRegistry::subscribe);
        let queue = deps.queue.clone();
        // In one process a publish is a hand-off with no round trip to hide: it stays on
        // the loop, so a message is in its receiver's inbox before the loop goes on.
        let outlet = (!bus.is_in_process()).then(|| {
            let (outlet, outgoing) = mpsc::channel(cfg.command_queue.max(1));
            tracker.spawn(publish_loop(bus.clone(), outgoing, stats.clone()));
            outlet
        });
        let task = Task {
            cfg: cfg.clone(),
            me: me.clone(),
            bus,
            outlet,
            deps,
            tracker: tracker.clone(),
            stats: stats.clone(),
            done_tx,
            local: VecDeque::new(),
            users: HashMap::new(),
            proposals: HashMap::new(),
            starting: HashMap::new(),
            calls: HashMap::new(),
            invites: HashMap::new(),
            timers: BTreeMap::new(),
            seq: 0,
            loads: 0,
            quiet_until: None,
            resync_pending: false,
            join_line: VecDeque::new(),
        };
        tracker.spawn(task.run(rx, done_rx, inbox, cluster, shutdown));
        Ok(MatchmakerHandle { tx, stats, cfg, instance: me, queue })
    }
}

/// Results of directory calls made off the loop.
pub(crate) enum Done<O> {
    Joined { conn: O, req: Option<RequestId>, prefs: MatchPrefs, result: Result<JoinLookup, DirectoryError> },
    InviteChecked { conn: O, req: Option<RequestId>, target: String, result: Result<InviteLookup, DirectoryError> },
    CallStarted { id: String, result: Result<StartedCall, DirectoryError> },
}

/// Profile, block list and cooldown partners (with their ends, Unix ms).
pub(crate) type JoinLookup = (Option<Profile>, Arc<Vec<String>>, crate::directory::CooldownList);
pub(crate) type InviteLookup = (Option<Profile>, Option<Profile>, Arc<Vec<String>>);

/// A `match.join` waiting for a lookup slot.
pub(crate) struct PendingJoin<O> {
    pub(crate) conn: O,
    pub(crate) req: Option<RequestId>,
    pub(crate) prefs: MatchPrefs,
}

pub(crate) enum Timer {
    Proposal(String),
    Invite(String),
    Grace { call_id: String, user: String, generation: u64 },
}

/// One user's connections on this instance and what only the home knows.
pub(crate) struct LocalUser<O> {
    pub(crate) conns: Vec<O>,
    /// The entry this user was told `match.queued` with, until a proposal ends without a
    /// requeue, a call starts or they leave: re-queued if the shared table loses it.
    pub(crate) queued: Option<QueueEntry>,
    /// Invites to this user: invite id → coordinator.
    pub(crate) incoming: HashMap<String, String>,
    /// Invites this user sent (coordinated here).
    pub(crate) outgoing: Vec<String>,
    /// When recent invites were sent, for the per-minute limit.
    pub(crate) invite_times: VecDeque<Instant>,
    /// Peers of recent calls, who may be blocked or reported.
    pub(crate) recent_peers: VecDeque<String>,
    /// The call this user is in and its coordinator, as the coordinator last said: their
    /// signals and hang-up go there without asking the shared table. A stale one costs
    /// nothing worse than the coordinator's `no_such_call`.
    pub(crate) call: Option<CallRef>,
}

pub(crate) struct Proposal {
    /// `[0]` waited longer and will offer.
    pub(crate) entries: [Arc<QueueEntry>; 2],
    pub(crate) accepted: [bool; 2],
    pub(crate) deadline: Instant,
}

pub(crate) struct Starting {
    pub(crate) origin: CallOrigin,
    /// `[0]` offers.
    pub(crate) parties: [PublicProfile; 2],
    /// Parties that disconnected while the call was being written.
    pub(crate) gone: [bool; 2],
}

pub(crate) struct Call {
    pub(crate) parties: [PublicProfile; 2],
    pub(crate) started_at_ms: i64,
    /// A running reconnect grace per party, by generation.
    pub(crate) reconnecting: [Option<u64>; 2],
    /// Each party's instance, looked up at the first signal for them and forgotten when
    /// they go away or come back ([`Task::forget_where`]) and when the cluster changes:
    /// relaying a signal then costs no lookup.
    pub(crate) at: [Option<Arc<str>>; 2],
}

pub(crate) struct Invite {
    pub(crate) from: PublicProfile,
    pub(crate) to: PublicProfile,
    pub(crate) deadline: Instant,
}

pub(crate) struct Task<O> {
    pub(crate) cfg: Arc<MatchmakerConfig>,
    pub(crate) me: Arc<str>,
    pub(crate) bus: Bus,
    /// Messages for other instances over a network bus, published in order by
    /// [`publish_loop`] so the loop never waits for a round trip; `None` in one process.
    pub(crate) outlet: Option<mpsc::Sender<(String, Bytes)>>,
    pub(crate) deps: MatchmakerDeps,
    pub(crate) tracker: TaskTracker,
    pub(crate) stats: Arc<Stats>,
    pub(crate) done_tx: mpsc::Sender<Done<O>>,
    /// Messages for this instance itself, handled like inbox messages (no recursion).
    pub(crate) local: VecDeque<Wire>,
    pub(crate) users: HashMap<String, LocalUser<O>>,
    pub(crate) proposals: HashMap<String, Proposal>,
    pub(crate) starting: HashMap<String, Starting>,
    pub(crate) calls: HashMap<String, Call>,
    pub(crate) invites: HashMap<String, Invite>,
    pub(crate) timers: BTreeMap<(Instant, u64), Timer>,
    pub(crate) seq: u64,
    /// Join and invite lookups in flight.
    pub(crate) loads: usize,
    /// After the shared state was lost, no scan or sweep until every instance had time to
    /// re-assert its own (matching or declaring users gone on a half-restored table would
    /// double-match users or end live calls).
    pub(crate) quiet_until: Option<Instant>,
    /// A resynchronization failed part-way (Redis still unreachable); retried at each sweep.
    pub(crate) resync_pending: bool,
    /// Joins waiting for a lookup slot, oldest first (at most `command_queue`; beyond that
    /// a join is answered `busy`). A burst of joins waits here instead of retrying.
    pub(crate) join_line: VecDeque<PendingJoin<O>>,
}

pub(crate) fn send_frame<O: Outbox>(conn: &O, frame: &str) {
    // A full outbox closes the connection as a slow consumer; nothing more to do here.
    let _ = conn.send(&SharedMessage::text(frame.to_owned()));
}

pub(crate) fn send_error<O: Outbox>(conn: &O, code: ErrorCode, message: impl Into<String>, req: Option<RequestId>) {
    send_frame(conn, &error_json(code, message, req));
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl<O: Outbox> Task<O> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command<O>>,
        mut done_rx: mpsc::Receiver<Done<O>>,
        mut inbox: Subscription,
        mut cluster: Option<tokio::sync::broadcast::Receiver<ClusterEvent>>,
        shutdown: CancellationToken,
    ) {
        let mut scan = tokio::time::interval(Duration::from_millis(self.cfg.match_interval_ms));
        scan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(Duration::from_millis(self.cfg.sweep_interval_ms));
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.first_key_value().map(|(k, _)| k.0);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = done_rx.recv() => self.on_done(done).await,
                // Other instances' messages before this instance's own requests: a backlog of
                // local requests must not hold up frames that already crossed the bus (a
                // cross-instance signal would wait for every local one queued behind it).
                msg = inbox.recv() => match msg {
                    Some(Received::Message(m)) => match serde_json::from_slice::<Wire>(&m.payload) {
                        Ok(w) => self.on_wire(w).await,
                        Err(e) => {
                            inc(&self.stats.bus_errors);
                            tracing::warn!(error = %e, "undecodable matchmaker inbox message");
                        }
                    },
                    Some(Received::Gap { missed }) => {
                        // Lost commands may include a disconnect, and a bus reconnect may mean
                        // a restarted Redis: re-assert what this instance knows, then check who
                        // is still reachable.
                        tracing::warn!(?missed, "matchmaker inbox gap; resynchronizing");
                        self.resync().await;
                        self.sweep().await;
                    }
                    None => break,
                },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
                ev = next_cluster_event(&mut cluster) => self.on_cluster_event(ev).await,
                _ = sleep_until(next_timer), if next_timer.is_some() => self.fire_timers().await,
                _ = scan.tick() => {
                    if !self.quiet() && self.scan().await {
                        // A full window made proposals: more may be waiting, scan again
                        // after the other events that are ready.
                        scan.reset_immediately();
                    }
                }
                _ = sweep.tick() => {
                    if self.resync_pending {
                        self.resync().await;
                    }
                    self.sweep().await;
                }
            }
            self.flush_local().await;
        }
        self.drain().await;
        self.flush_local().await;
        // Calls whose start was written but not yet seen: close their rows. Tasks still
        // writing find the channel closed and close theirs themselves.
        done_rx.close();
        while let Ok(done) = done_rx.try_recv() {
            if let Done::CallStarted { id, result: Ok(call) } = done {
                let users = self.starting.remove(&id).map(|s| s.parties.map(|p| p.user_id));
                self.close_unseen_call(call, users.unwrap_or_default());
            }
        }
    }

    fn close_unseen_call(&self, call: StartedCall, [user_a, user_b]: [String; 2]) {
        let directory = self.deps.directory.clone();
        self.tracker.spawn(async move {
            let end = crate::directory::CallEnd {
                call_id: call.call_id,
                user_a,
                user_b,
                started_at_ms: call.started_at_ms,
                ended_at_ms: crate::clock::now_ms(),
                reason: crate::directory::EndReason::Shutdown,
                ended_by: None,
            };
            let _ = directory.end_call(&end).await;
        });
    }

    async fn on_command(&mut self, cmd: Command<O>) {
        match cmd {
            Command::Connect(conn) => self.connect(conn).await,
            Command::Disconnect { conn_id, user_id } => self.disconnect(conn_id, &user_id).await,
            Command::Client { conn, req, op } => self.client(conn, req, op).await,
        }
    }

    async fn on_done(&mut self, done: Done<O>) {
        match done {
            Done::Joined { conn, req, prefs, result } => {
                self.loads = self.loads.saturating_sub(1);
                self.joined(conn, req, prefs, result).await;
                self.next_join();
            }
            Done::InviteChecked { conn, req, target, result } => {
                self.loads = self.loads.saturating_sub(1);
                self.invite_checked(conn, req, target, result).await;
                self.next_join();
            }
            Done::CallStarted { id, result } => self.call_started(id, result).await,
        }
    }

    pub(crate) async fn on_wire(&mut self, w: Wire) {
        match w {
            Wire::ToUser { user, note, frame } => self.deliver(&user, note, frame).await,
            Wire::ToCoord { user, conn_id, req, cmd } => self.coordinate(user, conn_id, req, cmd).await,
        }
    }

    pub(crate) async fn flush_local(&mut self) {
        while let Some(w) = self.local.pop_front() {
            self.on_wire(w).await;
        }
    }

    pub(crate) fn directory_error(&self, e: &DirectoryError) {
        inc(&self.stats.directory_errors);
        tracing::warn!(error = %e, "matchmaker directory call failed");
    }

    pub(crate) fn timer(&mut self, at: Instant, t: Timer) {
        self.seq += 1;
        self.timers.insert((at, self.seq), t);
    }

    async fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Timer::Proposal(id) => self.proposal_deadline(&id).await,
                Timer::Invite(id) => self.invite_deadline(&id).await,
                Timer::Grace { call_id, user, generation } => self.grace_over(&call_id, &user, generation).await,
            }
        }
    }

    /// Sends `w` to `instance`'s matchmaker: queued locally for this one, else on the bus.
    pub(crate) async fn post(&mut self, instance: &str, w: Wire) {
        if instance == &*self.me {
            self.local.push_back(w);
            return;
        }
        let bytes = match serde_json::to_vec(&w) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                inc(&self.stats.bus_errors);
                return tracing::error!(error = %e, "could not encode a matchmaker message");
            }
        };
        let Some(outlet) = &self.outlet else {
            if let Err(e) = self.bus.publish(&inbox_topic(instance), bytes).await {
                inc(&self.stats.bus_errors);
                tracing::warn!(error = %e, instance, "matchmaker message not published");
            }
            return;
        };
        // Waits only while the publisher is `command_queue` messages behind.
        if outlet.send((inbox_topic(instance), bytes)).await.is_err() {
            inc(&self.stats.bus_errors);
            tracing::error!(instance, "matchmaker publisher stopped; message not published");
        }
    }

    /// Sends a frame (and note) to wherever `user` is connected; dropped if nowhere
    /// (deadlines and disconnect handling end what the user was part of).
    pub(crate) async fn send_to_user(&mut self, user: &str, note: Note, frame: String) {
        match self.deps.locator.instance_of(user).await {
            Ok(Some(instance)) => self.post(&instance, Wire::ToUser { user: user.to_owned(), note, frame }).await,
            Ok(None) => {}
            Err(e) => {
                inc(&self.stats.bus_errors);
                tracing::warn!(error = %e, "locator unavailable");
            }
        }
    }

    /// An error for one request, sent from the coordinator to the user's connection.
    pub(crate) async fn reply_error(
        &mut self,
        user: &str,
        conn_id: u64,
        code: ErrorCode,
        message: &str,
        req: Option<RequestId>,
    ) {
        self.send_to_user(user, Note::Reply { conn_id }, error_json(code, message, req)).await;
    }

    /// Sends a command to the coordinator of something `user` is engaged in.
    pub(crate) async fn send_to_coord(
        &mut self,
        coordinator: &str,
        user: &str,
        conn_id: u64,
        req: Option<RequestId>,
        cmd: PairCmd,
    ) {
        self.post(coordinator, Wire::ToCoord { user: user.to_owned(), conn_id, req, cmd }).await;
    }
}

/// Most messages one publish round sends together.
const PUBLISH_BATCH: usize = 64;

/// Publishes the task's messages for other instances until the task is gone (then what
/// is left). Each round starts the publishes of everything waiting, in order, before
/// awaiting any: one connection keeps them in that order, and a round costs one round
/// trip to Redis instead of one per message.
async fn publish_loop(bus: Bus, mut outgoing: mpsc::Receiver<(String, Bytes)>, stats: Arc<Stats>) {
    let mut round = Vec::with_capacity(PUBLISH_BATCH);
    while outgoing.recv_many(&mut round, PUBLISH_BATCH).await > 0 {
        let publishes = round.drain(..).map(|(topic, bytes)| {
            let bus = &bus;
            async move { (bus.publish(&topic, bytes).await, topic) }
        });
        for (result, topic) in futures_util::future::join_all(publishes).await {
            if let Err(e) = result {
                inc(&stats.bus_errors);
                tracing::warn!(error = %e, %topic, "matchmaker message not published");
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next registry event; pending forever without a registry (or once it closed).
async fn next_cluster_event(
    rx: &mut Option<tokio::sync::broadcast::Receiver<ClusterEvent>>,
) -> Result<ClusterEvent, tokio::sync::broadcast::error::RecvError> {
    match rx {
        Some(r) => {
            let ev = r.recv().await;
            if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                *rx = None;
            }
            ev
        }
        None => std::future::pending().await,
    }
}

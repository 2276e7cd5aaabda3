//! Randomized: clients apply snapshots and diffs exactly as `docs/protocol.md` (Presence) says, and after
//! every tick each client's view must equal the truth for its window, computed from an
//! independent model of who did what when (grace periods, blocks, windows, resets included).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rendezvous_presence::{Activity, PresenceConfig};
use rendezvous_protocol::SettableState;
use support::*;
use tokio::time::Instant;

const TOPICS: [&str; 2] = ["t0", "t1"];

/// An entry as compared: state, status, `active_at`.
type Shown = (String, Option<String>, u64);
/// Sort key, id, state, status.
type Ranked = (u8, std::cmp::Reverse<u64>, String, String, Option<String>);

#[derive(Default)]
struct MUser {
    chosen: Option<&'static str>,
    status: Option<String>,
    activity: &'static str,
    active_at: u64,
    conns: BTreeSet<u64>,
    /// topic → (subscribed connections, grace deadline in ms)
    topics: BTreeMap<&'static str, (BTreeSet<u64>, Option<u64>)>,
}

/// What should be true, from the operations alone.
struct Model {
    origin: Instant,
    grace_ms: u64,
    window: usize,
    users: BTreeMap<String, MUser>,
    conn_user: BTreeMap<u64, String>,
    blocks: BTreeSet<(String, String)>,
}

impl Model {
    fn ms(&self) -> u64 {
        (Instant::now() - self.origin).as_millis() as u64
    }

    fn connect(&mut self, conn: u64, user: &str) {
        let now = self.ms();
        let u = self.users.entry(user.into()).or_insert_with(|| MUser {
            activity: "idle",
            active_at: now,
            ..MUser::default()
        });
        u.conns.insert(conn);
        self.conn_user.insert(conn, user.into());
    }

    fn user_of(&mut self, conn: u64) -> &mut MUser {
        let name = &self.conn_user[&conn];
        self.users.get_mut(name).unwrap()
    }

    fn subscribe(&mut self, conn: u64, topic: &'static str) {
        let m = self.user_of(conn).topics.entry(topic).or_default();
        m.0.insert(conn);
        m.1 = None;
    }

    fn unsubscribe(&mut self, conn: u64, topic: &'static str) {
        let u = self.user_of(conn);
        if let Some(m) = u.topics.get_mut(topic) {
            m.0.remove(&conn);
            if m.0.is_empty() {
                u.topics.remove(topic);
            }
        }
    }

    fn subscribed(&self, conn: u64) -> Vec<&'static str> {
        let u = &self.users[&self.conn_user[&conn]];
        u.topics.iter().filter(|(_, m)| m.0.contains(&conn)).map(|(t, _)| *t).collect()
    }

    fn set(&mut self, conn: u64, chosen: Option<&'static str>, status: Option<String>) {
        let now = self.ms();
        let u = self.user_of(conn);
        let mut changed = false;
        if chosen.is_some() && u.chosen != chosen {
            u.chosen = chosen;
            changed = true;
        }
        if let Some(s) = status {
            let s = (!s.is_empty()).then_some(s);
            changed |= u.status != s;
            u.status = s;
        }
        if changed {
            u.active_at = now;
        }
    }

    fn activity(&mut self, user: &str, a: &'static str) {
        let now = self.ms();
        if let Some(u) = self.users.get_mut(user).filter(|u| u.activity != a) {
            u.activity = a;
            u.active_at = now;
        }
    }

    fn disconnect(&mut self, conn: u64) {
        let deadline = self.ms() + self.grace_ms;
        let name = self.conn_user.remove(&conn).unwrap();
        let grace = self.grace_ms;
        let u = self.users.get_mut(&name).unwrap();
        u.conns.remove(&conn);
        u.topics.retain(|_, m| {
            if m.0.remove(&conn) && m.0.is_empty() {
                m.1 = Some(deadline);
                return grace > 0;
            }
            true
        });
        if u.conns.is_empty() && u.topics.is_empty() {
            self.users.remove(&name);
        }
    }

    /// What a tick at `at_ms` does: memberships past their grace end.
    fn tick(&mut self, at_ms: u64) {
        for u in self.users.values_mut() {
            u.topics.retain(|_, m| !(m.0.is_empty() && m.1.is_some_and(|d| d <= at_ms)));
        }
        self.users.retain(|_, u| !(u.conns.is_empty() && u.topics.is_empty()));
    }

    fn blocked(&self, a: &str, b: &str) -> bool {
        self.blocks.contains(&(a.into(), b.into())) || self.blocks.contains(&(b.into(), a.into()))
    }

    /// The window `viewer` should see of `topic`: (count, id → (state, status, active_at ms)).
    /// The window is the topic's (the same for everyone), minus the users `viewer` blocks.
    fn truth(&self, viewer: &str, topic: &str) -> (u64, BTreeMap<String, Shown>) {
        let mut members: Vec<Ranked> = self
            .users
            .iter()
            .filter(|(_, u)| u.topics.contains_key(topic))
            .map(|(id, u)| {
                let state = match (u.activity, u.chosen) {
                    ("in_call", _) => "in_call",
                    ("in_queue", _) => "in_queue",
                    (_, Some(c)) => c,
                    _ => "online",
                };
                let rank = ["available", "online", "in_queue", "in_call", "away"].iter().position(|s| *s == state);
                (rank.unwrap() as u8, std::cmp::Reverse(u.active_at), id.clone(), state.to_owned(), u.status.clone())
            })
            .collect();
        members.sort();
        let count = members.iter().filter(|m| !self.blocked(viewer, &m.2)).count() as u64;
        let window = members
            .into_iter()
            .take(self.window)
            .filter(|m| !self.blocked(viewer, &m.2))
            .map(|(_, at, id, s, st)| (id, (s, st, at.0)))
            .collect();
        (count, window)
    }
}

/// `skew_ms`: how far instances' clocks may disagree (their Unix origins are read separately).
fn compare(model: &Model, client: &Client, topic: &str, skew_ms: i64, context: &str) {
    let view = client.views.get(topic).unwrap_or_else(|| panic!("{context}: no view of {topic}"));
    let (count, want) = model.truth(client.user(), topic);
    assert_eq!(view.count, count, "{context}: count of {topic} for {}", client.user());
    let got: BTreeMap<String, Shown> = view
        .entries
        .iter()
        .map(|(id, e)| {
            let at = e["active_at"].as_i64().unwrap();
            let status = e["status"].as_str().map(str::to_owned);
            (id.clone(), (e["state"].as_str().unwrap().to_owned(), status, at as u64))
        })
        .collect();
    let ids = |m: &BTreeMap<String, Shown>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&want), "{context}: window of {topic} for {}", client.user());
    // Unix time is the model's milliseconds plus one offset for every entry.
    let offsets: BTreeSet<i64> = got.iter().map(|(id, g)| g.2 as i64 - want[id].2 as i64).collect();
    let spread = offsets.last().zip(offsets.first()).map_or(0, |(hi, lo)| hi - lo);
    assert!(spread <= skew_ms, "{context}: active_at differs: {got:?} vs {want:?}");
    for (id, g) in &got {
        assert_eq!((&g.0, &g.1), (&want[id].0, &want[id].1), "{context}: entry {id} in {topic}");
    }
    for e in view.entries.values() {
        assert_eq!(e["display_name"], format!("Name {}", e["id"].as_str().unwrap()));
    }
}

/// The world the operations act on: users `u0`..`u7`, user `uN` always connects to node `N % nodes`.
struct World {
    rng: StdRng,
    model: Model,
    nodes: Vec<Node>,
    clients: BTreeMap<u64, Client>,
    next_conn: u64,
}

impl World {
    fn node_of(&self, user: &str) -> &Handle {
        let i: usize = user[1..].parse().unwrap();
        &self.nodes[i % self.nodes.len()].handle
    }

    /// One random operation, applied to the service and to the model at the same instant.
    async fn random_op(&mut self) {
        let rng = &mut self.rng;
        let user = format!("u{}", rng.random_range(0..8));
        let conns: Vec<u64> = self.clients.keys().copied().collect();
        let pick = conns.get(rng.random_range(0..conns.len().max(1))).copied();
        match (rng.random_range(0..10), pick) {
            (0..=2, _) | (_, None) if self.clients.len() < 12 => {
                let c = Client::new(self.next_conn, &user);
                self.node_of(&user).connect(&c.conn).unwrap();
                self.model.connect(self.next_conn, &user);
                self.clients.insert(self.next_conn, c);
                self.next_conn += 1;
            }
            (3..=4, Some(id)) => {
                let topic = TOPICS[rng.random_range(0..2)];
                let c = &self.clients[&id];
                self.node_of(c.user()).subscribe(&c.conn, topic, None).unwrap();
                self.model.subscribe(id, topic);
            }
            (5, Some(id)) => {
                if let Some(&topic) = self.model.subscribed(id).first() {
                    let c = &self.clients[&id];
                    self.node_of(c.user()).unsubscribe(&c.conn, topic, None).unwrap();
                    self.model.unsubscribe(id, topic);
                }
            }
            (6..=7, Some(id)) => {
                let chosen = [None, Some("available"), Some("away")][rng.random_range(0..3)];
                let status = [None, Some(String::new()), Some(format!("s{}", rng.random_range(0..3)))]
                    [rng.random_range(0..3)]
                .clone();
                let state = chosen.map(|c| if c == "away" { SettableState::Away } else { SettableState::Available });
                let c = &self.clients[&id];
                self.node_of(c.user()).set_state(&c.conn, state, status.clone(), None).unwrap();
                self.model.set(id, chosen, status);
            }
            (8, _) => {
                let activities =
                    [(Activity::Idle, "idle"), (Activity::InQueue, "in_queue"), (Activity::InCall, "in_call")];
                let (a, name) = activities[rng.random_range(0..3)];
                self.node_of(&user).set_activity(&user, a).unwrap();
                self.model.activity(&user, name);
            }
            (_, Some(id)) => {
                let c = self.clients.remove(&id).unwrap();
                self.node_of(c.user()).disconnect(id);
                self.model.disconnect(id);
            }
            _ => {}
        }
        settle().await;
    }

    /// Random operations at random instants inside the tick period ending at `tick` × 2 s.
    async fn random_ops(&mut self, tick: u64, max_ops: usize) {
        let mut times: Vec<u64> =
            (0..self.rng.random_range(0..=max_ops)).map(|_| self.rng.random_range(10..TICK_MS - 20)).collect();
        times.sort();
        for t in times {
            let at = self.model.origin + Duration::from_millis((tick - 1) * TICK_MS + t);
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            self.random_op().await;
        }
    }

    /// Every client's view of every topic it is subscribed to, against the model.
    fn check(&mut self, skew_ms: i64, context: &str) {
        for (id, c) in &mut self.clients {
            c.pump();
            assert!(c.gaps.is_empty(), "{context}: gap for conn {id}");
            for topic in self.model.subscribed(*id) {
                compare(&self.model, c, topic, skew_ms, &format!("{context} conn {id}"));
            }
        }
    }
}

fn world(seed: u64, nodes: usize, cfg: impl Fn(&mut StdRng) -> PresenceConfig) -> World {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = cfg(&mut rng);
    let dir = Dir::default();
    let mut blocks = BTreeSet::new();
    for _ in 0..2 {
        let (a, b) = (format!("u{}", rng.random_range(0..8)), format!("u{}", rng.random_range(0..8)));
        if a != b {
            dir.block(&a, &b);
            blocks.insert((a, b));
        }
    }
    let origin = Instant::now();
    let bus = bus("n0");
    let nodes = (0..nodes).map(|i| node(&bus.as_instance(format!("n{i}")), cfg.clone(), &dir)).collect();
    let model = Model {
        origin,
        grace_ms: cfg.offline_grace_ms,
        window: cfg.window,
        users: BTreeMap::new(),
        conn_user: BTreeMap::new(),
        blocks,
    };
    World { rng, model, nodes, clients: BTreeMap::new(), next_conn: 1 }
}

/// `SEED=n` replays one case; `SEEDS=n` runs the first n.
fn seeds(default: u64) -> std::ops::Range<u64> {
    match (std::env::var("SEED"), std::env::var("SEEDS")) {
        (Ok(s), _) => s.parse().unwrap()..s.parse::<u64>().unwrap() + 1,
        (_, Ok(n)) => 0..n.parse().unwrap(),
        _ => 0..default,
    }
}

fn paused(f: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(f);
}

#[test]
fn every_client_view_equals_the_truth_for_its_window_after_every_tick() {
    for seed in seeds(200) {
        paused(async {
            let mut w = world(seed, 1, |rng| {
                let window = rng.random_range(2..6);
                PresenceConfig {
                    window,
                    max_entries_per_tick: window + rng.random_range(0..4),
                    offline_grace_ms: [0, 3_000, 5_000][rng.random_range(0..3)],
                    ..PresenceConfig::default()
                }
            });
            settle().await;
            for tick in 1..=30u64 {
                w.random_ops(tick, 6).await;
                tokio::time::sleep_until(w.model.origin + Duration::from_millis(tick * TICK_MS + 1)).await;
                w.model.tick(tick * TICK_MS);
                w.check(0, &format!("seed {seed} tick {tick}"));
            }
        });
    }
}

#[test]
fn three_instances_converge_to_the_truth_after_every_quiet_period() {
    for seed in seeds(40) {
        paused(async {
            let mut w = world(seed, 3, |rng| PresenceConfig {
                window: 20,
                offline_grace_ms: [0, 3_000][rng.random_range(0..2)],
                ..PresenceConfig::default()
            });
            settle().await;
            let mut tick = 1;
            for round in 0..8 {
                w.random_ops(tick, 8).await;
                // A remote change is seen within two ticks; a grace period ends within two more.
                tick += 4;
                tokio::time::sleep_until(w.model.origin + Duration::from_millis(tick * TICK_MS + 1)).await;
                w.model.tick(tick * TICK_MS);
                // Each instance reads the wall clock once at start; in a busy test process those
                // readings can be a few milliseconds apart.
                w.check(1_000, &format!("seed {seed} round {round}"));
                tick += 1;
            }
        });
    }
}

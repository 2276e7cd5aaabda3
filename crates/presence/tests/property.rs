//! Randomized: clients apply snapshots and diffs exactly as `docs/presence.md` says, and after
//! every tick each client's view must equal the truth for its window, computed from an
//! independent model of who did what when (grace periods, blocks, windows, resets included).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rendezvous_presence::{Activity, ChosenState, PresenceConfig};
use support::*;
use tokio::time::Instant;

const TOPICS: [&str; 2] = ["t0", "t1"];

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
        let u = self.users.entry(user.into()).or_insert_with(|| MUser { activity: "idle", active_at: now, ..MUser::default() });
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
    fn truth(&self, viewer: &str, topic: &str) -> (u64, BTreeMap<String, (String, Option<String>, u64)>) {
        let mut members: Vec<(u8, std::cmp::Reverse<u64>, String, String, Option<String>)> = self
            .users
            .iter()
            .filter(|(id, u)| u.topics.contains_key(topic) && !self.blocked(viewer, id))
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
        let count = members.len() as u64;
        let window = members.into_iter().take(self.window).map(|(_, at, id, s, st)| (id, (s, st, at.0))).collect();
        (count, window)
    }
}

fn compare(model: &Model, client: &Client, topic: &str, context: &str) {
    let view = client.views.get(topic).unwrap_or_else(|| panic!("{context}: no view of {topic}"));
    let (count, want) = model.truth(client.user(), topic);
    assert_eq!(view.count, count, "{context}: count of {topic} for {}", client.user());
    let got: BTreeMap<String, (String, Option<String>, u64)> = view
        .entries
        .iter()
        .map(|(id, e)| {
            let at = e["active_at"].as_i64().unwrap();
            let status = e["status"].as_str().map(str::to_owned);
            (id.clone(), (e["state"].as_str().unwrap().to_owned(), status, at as u64))
        })
        .collect();
    let ids = |m: &BTreeMap<String, (String, Option<String>, u64)>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&want), "{context}: window of {topic} for {}", client.user());
    // Unix time is the model's milliseconds plus one offset for every entry.
    let offsets: BTreeSet<i64> = got.iter().map(|(id, g)| g.2 as i64 - want[id].2 as i64).collect();
    assert!(offsets.len() <= 1, "{context}: active_at order differs: {got:?} vs {want:?}");
    for (id, g) in &got {
        assert_eq!((&g.0, &g.1), (&want[id].0, &want[id].1), "{context}: entry {id} in {topic}");
    }
    for e in view.entries.values() {
        assert_eq!(e["display_name"], format!("Name {}", e["id"].as_str().unwrap()));
    }
}

async fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let window = rng.random_range(2..6);
    let grace_ms = [0, 3_000, 5_000][rng.random_range(0..3)];
    let cfg = PresenceConfig {
        window,
        max_entries_per_tick: window + rng.random_range(0..4),
        offline_grace_ms: grace_ms,
        ..PresenceConfig::default()
    };
    let users: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    let dir = Dir::default();
    let mut blocks = BTreeSet::new();
    for _ in 0..2 {
        let (a, b) = (rng.random_range(0..8), rng.random_range(0..8));
        if a != b {
            dir.block(&users[a], &users[b]);
            blocks.insert((users[a].clone(), users[b].clone()));
        }
    }
    let origin = Instant::now();
    let n = node(&bus("a"), cfg, &dir);
    let mut model = Model { origin, grace_ms, window, users: BTreeMap::new(), conn_user: BTreeMap::new(), blocks };
    let mut clients: BTreeMap<u64, Client> = BTreeMap::new();
    let mut next_conn = 1;
    for tick in 1..=30u64 {
        let tick_at = origin + Duration::from_millis(tick * TICK_MS);
        let mut times: Vec<u64> = (0..rng.random_range(0..7)).map(|_| rng.random_range(10..TICK_MS - 20)).collect();
        times.sort();
        for t in times {
            let at = origin + Duration::from_millis((tick - 1) * TICK_MS + t);
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            let conns: Vec<u64> = clients.keys().copied().collect();
            let pick = conns.get(rng.random_range(0..conns.len().max(1))).copied();
            match (rng.random_range(0..10), pick) {
                (0..=2, _) | (_, None) if clients.len() < 12 => {
                    let user = &users[rng.random_range(0..users.len())];
                    let c = Client::new(next_conn, user);
                    n.handle.connect(&c.conn).unwrap();
                    model.connect(next_conn, user);
                    clients.insert(next_conn, c);
                    next_conn += 1;
                }
                (3..=4, Some(id)) => {
                    let topic = TOPICS[rng.random_range(0..2)];
                    n.handle.subscribe(&clients[&id].conn, topic, None).unwrap();
                    model.subscribe(id, topic);
                }
                (5, Some(id)) => {
                    if let Some(&topic) = model.subscribed(id).first() {
                        n.handle.unsubscribe(&clients[&id].conn, topic, None).unwrap();
                        model.unsubscribe(id, topic);
                    }
                }
                (6..=7, Some(id)) => {
                    let chosen = [None, Some("available"), Some("away")][rng.random_range(0..3)];
                    let status = [None, Some(String::new()), Some(format!("s{}", rng.random_range(0..3)))]
                        [rng.random_range(0..3)]
                    .clone();
                    let state = chosen.map(|c| if c == "away" { ChosenState::Away } else { ChosenState::Available });
                    n.handle.set_state(&clients[&id].conn, state, status.clone(), None).unwrap();
                    model.set(id, chosen, status);
                }
                (8, _) => {
                    let user = &users[rng.random_range(0..users.len())];
                    let (a, name) = [(Activity::Idle, "idle"), (Activity::InQueue, "in_queue"), (Activity::InCall, "in_call")]
                        [rng.random_range(0..3)];
                    n.handle.set_activity(user, a).unwrap();
                    model.activity(user, name);
                }
                (_, Some(id)) => {
                    n.handle.disconnect(id);
                    model.disconnect(id);
                    clients.remove(&id);
                }
                _ => {}
            }
            settle().await;
        }
        tokio::time::sleep_until(tick_at + Duration::from_millis(1)).await;
        model.tick(tick * TICK_MS);
        for (id, c) in &mut clients {
            c.pump();
            assert!(c.gaps.is_empty(), "seed {seed}: gap for conn {id}");
            for topic in model.subscribed(*id) {
                compare(&model, c, topic, &format!("seed {seed} tick {tick} conn {id}"));
            }
        }
    }
}

#[test]
fn every_client_view_equals_the_truth_for_its_window_after_every_tick() {
    for seed in 0..60 {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(run(seed));
    }
}

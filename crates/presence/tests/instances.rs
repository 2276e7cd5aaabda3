//! Several instances on one in-process bus: merge, one entry per user, instance timeout,
//! resynchronization after a gap or a skipped delta, and restarts.

mod support;

use std::time::Duration;

use bytes::Bytes;
use rendezvous_bus::{Bus, BusConfig, Received, Subscription};
use rendezvous_presence::PresenceConfig;
use rendezvous_protocol::SettableState;
use serde_json::{Value, json};
use support::*;

/// Everything on the presence bus topic so far, as (origin, message).
async fn drain(spy: &mut Subscription) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(1), spy.recv()).await {
        if let Received::Message(m) = r {
            out.push((m.origin.to_string(), serde_json::from_slice(&m.payload).unwrap()));
        }
    }
    out
}

async fn publish(bus: &Bus, msg: Value) {
    bus.publish("presence", Bytes::from(msg.to_string())).await.unwrap();
}

fn record(name: &str, updated_at: i64) -> Value {
    json!({"profile": {"display_name": name, "gender": "other"}, "active_at": updated_at, "updated_at": updated_at})
}

#[tokio::test(start_paused = true)]
async fn three_instances_show_everyone_everywhere() {
    let dir = Dir::default();
    let bus = bus("a");
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|i| node(&bus.as_instance(*i), cfg(), &dir)).collect();
    let mut cs: Vec<Client> = ["ua", "ub", "uc"].iter().enumerate().map(|(i, u)| Client::new(i as u64, u)).collect();
    for (n, c) in nodes.iter().zip(&cs) {
        n.handle.subscribe(&c.conn, "lobby", None).unwrap();
    }
    settle().await;
    ticks(2).await;
    for c in &mut cs {
        c.pump();
        assert_eq!(c.ids("lobby"), ["ua", "ub", "uc"], "{}", c.user());
        assert_eq!(c.views["lobby"].count, 3);
    }

    nodes[1].handle.set_state(&cs[1].conn, Some(SettableState::Away), Some("lunch".into()), None).unwrap();
    nodes[2].handle.unsubscribe(&cs[2].conn, "lobby", None).unwrap();
    ticks(2).await;
    for c in &mut cs[..2] {
        c.pump();
        assert_eq!(c.ids("lobby"), ["ua", "ub"]);
        assert_eq!(c.state_of("lobby", "ub").as_deref(), Some("away"));
        assert_eq!(c.views["lobby"].entries["ub"]["status"], "lunch");
        assert!(c.gaps.is_empty());
    }
    assert_eq!(nodes[0].handle.stats().peers, 2);
}

#[tokio::test(start_paused = true)]
async fn a_user_on_two_instances_is_one_entry() {
    let dir = Dir::default();
    let bus = bus("a");
    let (a, b, c) =
        (node(&bus, cfg(), &dir), node(&bus.as_instance("b"), cfg(), &dir), node(&bus.as_instance("c"), cfg(), &dir));
    let on_a = Client::new(1, "dual");
    let on_b = Client::new(2, "dual");
    let mut watcher = Client::new(3, "w");
    a.handle.subscribe(&on_a.conn, "lobby", None).unwrap();
    b.handle.subscribe(&on_b.conn, "lobby", None).unwrap();
    c.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    settle().await;
    ticks(2).await;
    watcher.pump();
    assert_eq!(watcher.ids("lobby"), ["dual", "w"]);
    assert_eq!(watcher.views["lobby"].count, 2);

    b.handle.set_state(&on_b.conn, Some(SettableState::Away), None, None).unwrap();
    ticks(2).await;
    watcher.pump();
    assert_eq!(watcher.state_of("lobby", "dual").as_deref(), Some("away"), "the latest change wins");

    a.handle.disconnect(on_a.conn_id());
    ticks(6).await;
    let got = watcher.pump();
    assert!(got.iter().all(|g| !g.json["leaves"].to_string().contains("dual")), "still on b");
    assert_eq!(watcher.ids("lobby"), ["dual", "w"]);
}

#[tokio::test(start_paused = true)]
async fn an_instance_that_stops_heartbeating_is_dropped_after_the_timeout() {
    let dir = Dir::default();
    let bus = bus("a");
    let a = node(&bus, cfg(), &dir);
    let b = node(&bus.as_instance("b"), cfg(), &dir);
    let mut watcher = Client::new(1, "w");
    let gone = Client::new(2, "gone");
    a.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    b.handle.subscribe(&gone.conn, "lobby", None).unwrap();
    settle().await;
    ticks(2).await;
    watcher.pump();
    assert_eq!(watcher.ids("lobby"), ["gone", "w"]);

    b.shutdown.cancel(); // b's last heartbeat was at the tick before this
    ticks(4).await; // 8 s of silence: still listed
    watcher.pump();
    assert_eq!(watcher.ids("lobby"), ["gone", "w"]);
    ticks(2).await;
    watcher.pump();
    assert_eq!(watcher.ids("lobby"), ["w"]);
    assert_eq!(a.handle.stats().peers, 0);
}

#[tokio::test(start_paused = true)]
async fn users_moving_to_another_instance_keep_their_entry_unchanged() {
    let dir = Dir::default();
    let bus = bus("a");
    let a = node(&bus, cfg(), &dir);
    let b = node(&bus.as_instance("b"), cfg(), &dir);
    let mut watcher = Client::new(1, "w");
    a.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    let movers: Vec<Client> = (0..20).map(|i| Client::new(100 + i, &format!("m{i:02}"))).collect();
    for (i, m) in movers.iter().enumerate() {
        b.handle.subscribe(&m.conn, "lobby", None).unwrap();
        if i % 2 == 0 {
            b.handle.set_state(&m.conn, Some(SettableState::Away), Some("zzz".into()), None).unwrap();
        }
    }
    settle().await;
    ticks(2).await;
    watcher.pump();
    let before = watcher.views["lobby"].clone();
    assert_eq!(before.count, 21);

    // b dies; its clients reconnect to a within a second.
    b.shutdown.cancel();
    advance(1_000).await;
    for (i, m) in movers.iter().enumerate() {
        let again = Client::new(1_000 + i as u64, m.user());
        a.handle.subscribe(&again.conn, "lobby", None).unwrap();
    }
    ticks(10).await; // well past b's timeout
    assert!(watcher.pump().is_empty(), "not a single join, leave or update");
    assert_eq!(watcher.views["lobby"], before);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_instance_causes_no_join_or_leave_storm() {
    let dir = Dir::default();
    let bus = bus("a");
    let a = node(&bus, cfg(), &dir);
    let b = node(&bus.as_instance("b"), cfg(), &dir);
    let mut watcher = Client::new(1, "w");
    a.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    let users: Vec<String> = (0..30).map(|i| format!("r{i:02}")).collect();
    for (i, u) in users.iter().enumerate() {
        b.handle.subscribe(&Client::new(100 + i as u64, u).conn, "lobby", None).unwrap();
    }
    settle().await;
    ticks(2).await;
    watcher.pump();
    assert_eq!(watcher.views["lobby"].count, 31);

    b.shutdown.cancel();
    advance(500).await;
    let b2 = node(&bus.as_instance("b"), cfg(), &dir); // same name, new epoch
    advance(1_500).await;
    let mut back: Vec<Client> = users.iter().enumerate().map(|(i, u)| Client::new(1_000 + i as u64, u)).collect();
    for c in &back {
        b2.handle.subscribe(&c.conn, "lobby", None).unwrap();
    }
    ticks(8).await;
    for g in watcher.pump() {
        assert!(g.json["joins"].as_array().is_none_or(|j| j.is_empty()), "{}", g.json);
        assert!(g.json["leaves"].as_array().is_none_or(|l| l.is_empty()), "{}", g.json);
        assert_eq!(g.json["count"], 31);
    }
    for c in &mut back {
        assert_eq!(of_type(&c.pump(), "presence.snapshot").len(), 1, "a fresh snapshot for every reconnect");
        assert_eq!(c.views["lobby"].count, 31);
    }
}

#[tokio::test(start_paused = true)]
async fn a_bus_gap_makes_the_instance_ask_everyone_for_their_full_state() {
    let dir = Dir::default();
    let bus = Bus::in_process("a", &BusConfig { capacity: 4 });
    let a = node(&bus, cfg(), &dir);
    let b = node(&bus.as_instance("b"), cfg(), &dir);
    let mut watcher = Client::new(1, "w");
    a.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    b.handle.subscribe(&Client::new(2, "on-b").conn, "lobby", None).unwrap();
    settle().await;
    ticks(2).await;
    let mut spy = bus.as_instance("spy").subscribe("presence").await.unwrap();
    drain(&mut spy).await;

    // More messages than a's subscription buffers, published without yielding: a lags.
    let fake = bus.as_instance("fake");
    for _ in 0..10 {
        publish(&fake, json!({"kind":"heartbeat","epoch":7,"seq":0})).await;
    }
    ticks(1).await;
    let seen = drain(&mut spy).await;
    let asked = seen.iter().any(|(o, m)| o == "a" && m["kind"] == "sync_request" && m["target"].is_null());
    assert!(asked, "{seen:?}");
    ticks(1).await;
    let seen = drain(&mut spy).await;
    assert!(seen.iter().any(|(o, m)| o == "b" && m["kind"] == "full"), "{seen:?}");
    watcher.pump();
    assert_eq!(watcher.ids("lobby"), ["on-b", "w"]);
    assert!(a.handle.stats().resyncs_total >= 2, "at start and after the gap");
}

#[tokio::test(start_paused = true)]
async fn a_skipped_delta_asks_that_instance_for_its_full_state() {
    let dir = Dir::default();
    let bus = bus("a");
    let a = node(&bus, cfg(), &dir);
    let mut watcher = Client::new(1, "w");
    a.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    settle().await;
    let mut spy = bus.as_instance("spy").subscribe("presence").await.unwrap();
    let z = bus.as_instance("z");
    let delta = |seq: u64, user: &str| json!({"kind":"delta","epoch":3,"seq":seq,"entries":{user: record(user, 1)},"joins":{"lobby":[user]},"leaves":{}});
    publish(&z, delta(1, "z1")).await;
    publish(&z, delta(3, "z3")).await; // seq 2 never arrives
    ticks(1).await;
    watcher.pump();
    assert_eq!(watcher.ids("lobby"), ["w", "z1"], "the delta after the gap is not applied");
    let seen = drain(&mut spy).await;
    assert!(seen.iter().any(|(o, m)| o == "a" && m["kind"] == "sync_request" && m["target"] == "z"), "{seen:?}");

    let full = json!({"kind":"full","epoch":3,"seq":3,
        "entries":{"z2": record("z2", 2), "z3": record("z3", 3)},"topics":{"lobby":["z2","z3"]}});
    publish(&z, full).await;
    ticks(1).await;
    watcher.pump();
    assert_eq!(watcher.ids("lobby"), ["w", "z2", "z3"], "the full state replaces z's records");
    publish(&z, json!({"kind":"delta","epoch":3,"seq":4,"entries":{},"joins":{},"leaves":{"lobby":["z2"]}})).await;
    ticks(1).await;
    watcher.pump();
    assert_eq!(watcher.ids("lobby"), ["w", "z3"]);
    // A new record and a leave for the same user in one delta: the leave is not undone.
    let both = json!({"kind":"delta","epoch":3,"seq":5,"entries":{"z3": record("z3", 9)},"joins":{},"leaves":{"lobby":["z3"]}});
    publish(&z, both).await;
    ticks(1).await;
    watcher.pump();
    assert_eq!(watcher.ids("lobby"), ["w"]);
}

#[tokio::test(start_paused = true)]
async fn deltas_are_published_once_per_tick_with_consecutive_numbers() {
    let dir = Dir::default();
    let bus = bus("a");
    let a = node(&bus, PresenceConfig { heartbeat_ms: 60_000, instance_timeout_ms: 120_000, ..cfg() }, &dir);
    let mut spy = bus.as_instance("spy").subscribe("presence").await.unwrap();
    let c = Client::new(1, "u");
    a.handle.subscribe(&c.conn, "lobby", None).unwrap();
    for i in 0..70 {
        a.handle.set_state(&c.conn, None, Some(format!("{i}")), None).unwrap();
        advance(100).await;
    }
    let deltas: Vec<Value> =
        drain(&mut spy).await.into_iter().filter(|(_, m)| m["kind"] == "delta").map(|(_, m)| m).collect();
    assert_eq!(deltas.len(), 3, "7 s of changes: ticks at 2, 4 and 6 s");
    let seqs: Vec<u64> = deltas.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
}

//! Throttle, coalescing, join-then-leave cancellation, the offline grace and mass reconnect,
//! on paused time.

mod support;

use rendezvous_presence::PresenceConfig;
use rendezvous_protocol::SettableState;
use support::*;
use tokio::time::Instant;

fn mentions(got: &[Got], user: &str) -> usize {
    of_type(got, "presence.diff")
        .iter()
        .map(|d| {
            let ids = d["joins"].as_array().unwrap().iter().chain(d["updates"].as_array().unwrap()).map(|e| &e["id"]);
            ids.chain(d["leaves"].as_array().unwrap()).filter(|id| *id == user).count()
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn a_user_changing_every_100ms_reaches_subscribers_once_per_tick() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let mut watcher = Client::new(1, "w");
    let restless = Client::new(2, "r");
    n.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    n.handle.subscribe(&restless.conn, "lobby", None).unwrap();
    settle().await;
    ticks(1).await;
    watcher.pump();

    let mut seen = Vec::new();
    for i in 0..60 {
        let state = if i % 2 == 0 { SettableState::Away } else { SettableState::Available };
        n.handle.set_state(&restless.conn, Some(state), Some(format!("s{i}")), None).unwrap();
        advance(100).await;
        let got = watcher.pump();
        let diffs = of_type(&got, "presence.diff");
        assert!(diffs.len() <= 1, "one diff per tick at most");
        if let Some(d) = diffs.first() {
            assert_eq!(mentions(&got, "r"), 1, "the user appears once per diff: {d}");
            seen.push((Instant::now(), d["updates"][0]["status"].as_str().unwrap().to_owned()));
        }
    }
    assert_eq!(seen.len(), 3, "6 s of changes are 3 ticks: {seen:?}");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].0 - pair[0].0, std::time::Duration::from_millis(TICK_MS));
    }
    // Each diff carries the last change before its tick (changes at 100 ms steps, ticks at 2 s).
    assert_eq!(seen.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), ["s19", "s39", "s59"]);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_100_changes_in_one_tick_is_one_entry_with_the_final_state() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let mut watcher = Client::new(1, "w");
    let bursty = Client::new(2, "b");
    n.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    n.handle.subscribe(&bursty.conn, "lobby", None).unwrap();
    settle().await;
    ticks(1).await;
    watcher.pump();
    let before = n.handle.stats().changes_coalesced_total;

    for i in 0..100 {
        let state = if i % 2 == 0 { SettableState::Available } else { SettableState::Away };
        n.handle.set_state(&bursty.conn, Some(state), Some(format!("n{i}")), None).unwrap();
        settle().await;
    }
    ticks(1).await;
    let got = watcher.pump();
    let diffs = of_type(&got, "presence.diff");
    assert_eq!(diffs.len(), 1);
    let d = diffs[0];
    assert_eq!(d["updates"].as_array().unwrap().len(), 1, "{d}");
    assert!(d["joins"].as_array().unwrap().is_empty() && d["leaves"].as_array().unwrap().is_empty());
    assert_eq!(d["updates"][0]["state"], "away");
    assert_eq!(d["updates"][0]["status"], "n99");
    assert_eq!(n.handle.stats().changes_coalesced_total - before, 99);
}

#[tokio::test(start_paused = true)]
async fn joining_and_leaving_inside_one_tick_shows_nothing() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let mut watcher = Client::new(1, "w");
    let member = Client::new(2, "m");
    n.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    n.handle.subscribe(&member.conn, "lobby", None).unwrap();
    settle().await;
    ticks(1).await;
    watcher.pump();

    // A newcomer comes and goes, and an existing member leaves and comes back, in one tick.
    let ghost = Client::new(3, "ghost");
    n.handle.subscribe(&ghost.conn, "lobby", None).unwrap();
    n.handle.unsubscribe(&member.conn, "lobby", None).unwrap();
    advance(700).await;
    n.handle.unsubscribe(&ghost.conn, "lobby", None).unwrap();
    n.handle.subscribe(&member.conn, "lobby", None).unwrap();
    advance(700).await;
    ticks(2).await;
    let got = watcher.pump();
    assert!(of_type(&got, "presence.diff").is_empty(), "{:?}", got.iter().map(|g| &g.json).collect::<Vec<_>>());
    assert_eq!(watcher.ids("lobby"), ["m", "w"]);
}

#[tokio::test(start_paused = true)]
async fn a_closed_connection_stays_listed_for_the_grace_period_and_then_leaves() {
    let dir = Dir::default();
    let n = node(&bus("a"), PresenceConfig { offline_grace_ms: 5_000, ..cfg() }, &dir);
    let mut watcher = Client::new(1, "w");
    let leaver = Client::new(2, "l");
    n.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    n.handle.subscribe(&leaver.conn, "lobby", None).unwrap();
    settle().await;
    ticks(1).await; // t = 2001: both in
    watcher.pump();
    n.handle.disconnect(leaver.conn_id());
    for _ in 0..2 {
        ticks(1).await; // ticks at 4000 and 6000: inside the grace (until 7001)
        assert!(watcher.pump().is_empty());
        assert_eq!(watcher.ids("lobby"), ["l", "w"]);
    }
    ticks(1).await; // tick at 8000
    let got = watcher.pump();
    let d = of_type(&got, "presence.diff");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["leaves"], serde_json::json!(["l"]));
    assert_eq!(d[0]["count"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_reload_inside_the_grace_period_is_invisible_and_keeps_the_chosen_state() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let mut watcher = Client::new(1, "w");
    let first = Client::new(2, "r");
    n.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    n.handle.subscribe(&first.conn, "lobby", None).unwrap();
    n.handle.set_state(&first.conn, Some(SettableState::Away), Some("brb".into()), None).unwrap();
    settle().await;
    ticks(1).await;
    watcher.pump();
    assert_eq!(watcher.state_of("lobby", "r").as_deref(), Some("away"));

    n.handle.disconnect(first.conn_id());
    advance(4_000).await;
    let mut second = Client::new(3, "r");
    n.handle.connect(&second.conn).unwrap();
    n.handle.subscribe(&second.conn, "lobby", None).unwrap();
    settle().await;
    assert_eq!(of_type(&second.pump(), "presence.snapshot").len(), 1, "a fresh snapshot on reconnect");
    ticks(5).await;
    assert!(watcher.pump().is_empty(), "no leave, no join, no update");
    assert_eq!(watcher.state_of("lobby", "r").as_deref(), Some("away"));
}

#[tokio::test(start_paused = true)]
async fn a_mass_reconnect_inside_the_grace_period_shows_no_storm() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let mut watcher = Client::new(1, "w");
    n.handle.subscribe(&watcher.conn, "lobby", None).unwrap();
    let users: Vec<String> = (0..200).map(|i| format!("u{i:03}")).collect();
    let olds: Vec<Client> = users.iter().enumerate().map(|(i, u)| Client::new(100 + i as u64, u)).collect();
    for c in &olds {
        n.handle.subscribe(&c.conn, "lobby", None).unwrap();
    }
    settle().await;
    ticks(1).await;
    watcher.pump();
    assert_eq!(watcher.views["lobby"].count, 201);

    for c in &olds {
        n.handle.disconnect(c.conn_id());
    }
    advance(1_500).await;
    let mut news: Vec<Client> = users.iter().enumerate().map(|(i, u)| Client::new(1_000 + i as u64, u)).collect();
    for c in &news {
        n.handle.subscribe(&c.conn, "lobby", None).unwrap();
    }
    settle().await;
    let mut shared = Vec::new();
    for c in &mut news {
        let got = c.pump();
        let snap: Vec<_> = got.iter().filter(|g| g.json["type"] == "presence.snapshot").collect();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].json["count"], 201);
        shared.push(snap[0].msg.clone().unwrap());
    }
    assert!(shared.windows(2).all(|w| rendezvous_gateway::SharedMessage::ptr_eq(&w[0], &w[1])), "one snapshot for all");
    ticks(5).await;
    assert!(watcher.pump().is_empty());
    assert_eq!(dir.profile_calls(), 201, "users inside their grace are not looked up again");
}

//! Snapshot then numbered diffs, gaps, windows and bounds, compress-once, slow consumers,
//! refusals and lookups.

mod support;

use rendezvous_gateway::SharedMessage;
use rendezvous_presence::{Activity, PresenceConfig};
use rendezvous_protocol::{RequestId, SettableState};
use serde_json::json;
use support::*;

#[tokio::test(start_paused = true)]
async fn subscribe_gets_an_ack_then_a_snapshot_then_numbered_diffs() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let mut a = Client::new(1, "a");
    n.handle.subscribe(&a.conn, "lobby", Some(RequestId::Number(7))).unwrap();
    settle().await;
    let got = a.pump();
    assert_eq!(got[0].json, json!({"type":"presence.ack","id":7}));
    assert_eq!(got[1].json["type"], "presence.snapshot");
    assert_eq!(got[1].json["count"], 0, "the subscriber's own entry arrives with the next diff");
    let seq0 = got[1].json["seq"].as_u64().unwrap();

    ticks(1).await;
    let got = a.pump();
    let d = of_type(&got, "presence.diff");
    assert_eq!(d[0]["seq"].as_u64().unwrap(), seq0 + 1);
    let me = &d[0]["joins"][0];
    assert_eq!(me["id"], "a");
    assert_eq!(me["display_name"], "Name a");
    assert_eq!(me["selfie_url"], "https://img.invalid/a.jpg");
    assert_eq!(me["state"], "online");

    let b = Client::new(2, "b");
    n.handle.subscribe(&b.conn, "lobby", None).unwrap();
    settle().await;
    ticks(1).await;
    let d = of_type(&a.pump(), "presence.diff").into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(d[0]["seq"].as_u64().unwrap(), seq0 + 2);
    assert_eq!(a.ids("lobby"), ["a", "b"]);
    assert!(a.gaps.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lost_diff_is_a_detectable_gap_and_resubscribing_recovers() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let mut a = Client::new(1, "a");
    let others: Vec<Client> = (0..3).map(|i| Client::new(10 + i, &format!("o{i}"))).collect();
    n.handle.subscribe(&a.conn, "lobby", None).unwrap();
    n.handle.subscribe(&others[0].conn, "lobby", None).unwrap();
    settle().await;
    ticks(1).await;
    a.pump();

    n.handle.subscribe(&others[1].conn, "lobby", None).unwrap();
    ticks(1).await;
    assert!(a.lose_next_diff("lobby"), "a diff was sent and lost");
    n.handle.subscribe(&others[2].conn, "lobby", None).unwrap();
    ticks(1).await;
    a.pump();
    assert_eq!(a.gaps, ["lobby"], "the next diff's seq does not follow");

    n.handle.subscribe(&a.conn, "lobby", Some(RequestId::Text("again".into()))).unwrap();
    settle().await;
    let got = a.pump();
    assert_eq!(got[0].json["type"], "presence.ack");
    assert_eq!(a.ids("lobby"), ["a", "o0", "o1", "o2"]);
    n.handle.set_state(&others[0].conn, Some(SettableState::Away), None, None).unwrap();
    ticks(1).await;
    a.pump();
    assert_eq!(a.gaps.len(), 1, "diffs follow the fresh snapshot");
    assert_eq!(a.state_of("lobby", "o0").as_deref(), Some("away"));
}

#[tokio::test(start_paused = true)]
async fn a_large_topic_sends_the_count_and_a_window_available_first_then_most_recent() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let users: Vec<Client> = (0..250).map(|i| Client::new(100 + i, &format!("u{i:03}"))).collect();
    for (i, u) in users.iter().enumerate() {
        n.handle.subscribe(&u.conn, "big", None).unwrap();
        if i % 10 == 0 {
            n.handle.set_state(&u.conn, Some(SettableState::Available), None, None).unwrap();
        }
        advance(3).await; // distinct activity times: later users are more recent
    }
    ticks(1).await;
    let mut late = Client::new(1, "late");
    n.handle.subscribe(&late.conn, "big", None).unwrap();
    settle().await;
    let got = late.pump();
    let snap = of_type(&got, "presence.snapshot")[0];
    assert_eq!(snap["count"], 250);
    let ids: Vec<&str> = snap["entries"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 100);
    // The 25 available users (every tenth), newest first, then the 75 newest of the rest.
    let available = (0..250).rev().filter(|i| i % 10 == 0).map(|i| format!("u{i:03}"));
    let online = (0..250).rev().filter(|i| i % 10 != 0).take(75).map(|i| format!("u{i:03}"));
    assert_eq!(ids, available.chain(online).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_tick_with_more_changes_than_allowed_sends_a_window_snapshot_instead() {
    let dir = Dir::default();
    let n = node(&bus("a"), PresenceConfig { window: 10, max_entries_per_tick: 12, ..cfg() }, &dir);
    let mut w = Client::new(1, "w");
    n.handle.subscribe(&w.conn, "t", None).unwrap();
    let users: Vec<Client> = (0..30).map(|i| Client::new(100 + i, &format!("u{i:02}"))).collect();
    for u in &users[..8] {
        n.handle.subscribe(&u.conn, "t", None).unwrap();
        advance(1).await;
    }
    ticks(1).await;
    w.pump();
    assert_eq!(w.views["t"].entries.len(), 9);
    let seq = w.views["t"].seq;

    // 22 newcomers: 10 enter the window and all 9 old entries leave it: 19 changes > 12.
    for u in &users[8..] {
        n.handle.subscribe(&u.conn, "t", None).unwrap();
        advance(1).await;
    }
    ticks(1).await;
    let got = w.pump();
    assert_eq!(got.len(), 1);
    let snap = &got[0].json;
    assert_eq!(snap["type"], "presence.snapshot");
    assert_eq!(snap["seq"].as_u64().unwrap(), seq + 1);
    assert_eq!(snap["count"], 31);
    assert_eq!(snap["entries"].as_array().unwrap().len(), 10);
    assert_eq!(w.ids("t"), (20..30).map(|i| format!("u{i:02}")).collect::<Vec<_>>());

    // A small change goes back to diffs, within the bound.
    n.handle.set_state(&users[0].conn, Some(SettableState::Available), None, None).unwrap();
    ticks(1).await;
    let got = w.pump();
    let d = of_type(&got, "presence.diff")[0];
    assert_eq!(d["joins"][0]["id"], "u00");
    assert_eq!(d["leaves"], json!(["u20"]));
    assert!(w.gaps.is_empty());
}

#[tokio::test(start_paused = true)]
async fn every_subscriber_gets_the_same_bytes_serialized_once_per_tick() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let mut clients: Vec<Client> = (0..20).map(|i| Client::new(i, &format!("c{i:02}"))).collect();
    for c in &clients {
        n.handle.subscribe(&c.conn, "lobby", None).unwrap();
    }
    settle().await;
    ticks(1).await;
    for c in &mut clients {
        c.pump();
    }
    let before = n.handle.stats();
    n.handle.set_state(&clients[3].conn, Some(SettableState::Away), None, None).unwrap();
    ticks(1).await;
    let msgs: Vec<SharedMessage> = clients.iter_mut().map(|c| c.pump().remove(0).msg.unwrap()).collect();
    assert!(msgs.windows(2).all(|w| SharedMessage::ptr_eq(&w[0], &w[1])));
    let after = n.handle.stats();
    assert_eq!(after.batches_total - before.batches_total, 1);
    assert_eq!(after.messages_sent_total - before.messages_sent_total, 20);
    assert_eq!(after.bytes_sent_total - before.bytes_sent_total, 20 * msgs[0].len() as u64);
    assert_eq!(after.filtered_copies_total, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_does_not_hold_up_the_others() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let slow = Client::new(1, "slow");
    let mut fine = Client::new(2, "fine");
    n.handle.subscribe(&slow.conn, "lobby", None).unwrap();
    n.handle.subscribe(&fine.conn, "lobby", None).unwrap();
    settle().await;
    slow.conn.break_it();
    ticks(1).await;
    fine.pump();
    assert_eq!(fine.ids("lobby"), ["fine", "slow"]);
    assert!(n.handle.stats().send_failures_total >= 1);
}

#[tokio::test(start_paused = true)]
async fn refusals_name_the_problem_and_echo_the_request_id() {
    let dir = Dir::default();
    let n = node(&bus("a"), PresenceConfig { max_subscriptions_per_connection: 2, max_topics: 3, ..cfg() }, &dir);
    let mut a = Client::new(1, "a");
    let id = |i| Some(RequestId::Number(i));
    assert!(n.handle.subscribe(&a.conn, "Bad Topic", id(1)).is_err());
    assert!(n.handle.set_state(&a.conn, None, Some("x\u{0}".into()), id(2)).is_err());
    n.handle.unsubscribe(&a.conn, "never", id(3)).unwrap();
    assert!(n.handle.unsubscribe(&a.conn, "NOPE", id(6)).is_err());
    n.handle.subscribe(&a.conn, "t1", None).unwrap();
    n.handle.subscribe(&a.conn, "t2", None).unwrap();
    n.handle.subscribe(&a.conn, "t3", id(4)).unwrap();
    let b = Client::new(2, "b");
    n.handle.subscribe(&b.conn, "t3", None).unwrap();
    let mut c = Client::new(3, "c");
    n.handle.subscribe(&c.conn, "t4", id(5)).unwrap();
    settle().await;
    let errs = errors(&a.pump());
    assert_eq!(
        errs,
        [
            ("bad_topic".into(), json!(1)),
            ("bad_status".into(), json!(2)),
            ("bad_topic".into(), json!(6)),
            ("not_subscribed".into(), json!(3)),
            ("too_many_subscriptions".into(), json!(4)),
        ]
    );
    assert_eq!(errors(&c.pump()), [("topic_limit".into(), json!(5))]);
}

#[tokio::test(start_paused = true)]
async fn a_full_command_queue_answers_busy() {
    let dir = Dir::default();
    let n = node(&bus("a"), PresenceConfig { command_queue: 1, ..cfg() }, &dir);
    settle().await;
    let mut a = Client::new(1, "a");
    n.handle.subscribe(&a.conn, "t1", None).unwrap();
    let e = n.handle.subscribe(&a.conn, "t2", Some(RequestId::Number(9))).unwrap_err();
    assert_eq!(e, rendezvous_presence::PresenceError::Busy);
    assert_eq!(errors(&a.pump()), [("busy".into(), json!(9))]);
    assert_eq!(n.handle.stats().busy_total, 1);
    // A disconnect is never refused: it waits for room.
    n.handle.disconnect(a.conn_id());
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn activity_changes_wait_for_room_and_the_last_one_wins() {
    let dir = Dir::default();
    let n = node(&bus("a"), PresenceConfig { command_queue: 1, ..cfg() }, &dir);
    let (mut a, mut w) = (Client::new(1, "a"), Client::new(2, "w"));
    n.handle.subscribe(&a.conn, "t", None).unwrap();
    settle().await;
    n.handle.subscribe(&w.conn, "t", None).unwrap();
    settle().await;
    ticks(1).await;
    w.pump();
    // The queue holds one command; both activity changes find it full and must not be lost.
    n.handle.subscribe(&a.conn, "t2", None).unwrap();
    n.handle.set_activity("a", Activity::InQueue).expect("never refused");
    n.handle.set_activity("a", Activity::InCall).expect("never refused");
    settle().await;
    ticks(1).await;
    w.pump();
    assert_eq!(w.state_of("t", "a").as_deref(), Some("in_call"));
    a.pump();
}

#[tokio::test(start_paused = true)]
async fn profiles_are_looked_up_once_per_user_not_per_tick_or_connection() {
    let dir = Dir::default();
    let n = node(&bus("a"), cfg(), &dir);
    let conns: Vec<Client> = (0..3).map(|i| Client::new(i, "same")).collect();
    for c in &conns {
        n.handle.subscribe(&c.conn, "t", None).unwrap();
        n.handle.set_state(&c.conn, Some(SettableState::Away), None, None).unwrap();
    }
    settle().await;
    ticks(10).await;
    assert_eq!(dir.profile_calls(), 1);
    n.handle.refresh("same").unwrap();
    settle().await;
    assert_eq!(dir.profile_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_lookup_answers_unavailable_and_the_next_try_succeeds() {
    let dir = Dir::default();
    dir.fail(true);
    let n = node(&bus("a"), cfg(), &dir);
    let mut a = Client::new(1, "a");
    n.handle.subscribe(&a.conn, "t", Some(RequestId::Number(1))).unwrap();
    settle().await;
    assert_eq!(errors(&a.pump()), [("unavailable".into(), json!(1))]);
    dir.fail(false);
    n.handle.subscribe(&a.conn, "t", Some(RequestId::Number(2))).unwrap();
    settle().await;
    let got = a.pump();
    assert_eq!(got[0].json, json!({"type":"presence.ack","id":2}));
    assert_eq!(got[1].json["type"], "presence.snapshot");
}

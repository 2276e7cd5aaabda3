//! Blocked pairs never see each other, and everyone else still shares one serialization.

mod support;

use rendezvous_gateway::SharedMessage;
use rendezvous_presence::PresenceConfig;
use rendezvous_protocol::SettableState;
use support::*;

#[tokio::test(start_paused = true)]
async fn blocked_pairs_never_see_each_other_and_the_rest_share_one_batch() {
    let dir = Dir::default();
    dir.block("a", "b");
    dir.block("z", "nobody-here"); // a block that does not involve this topic
    let n = node(&bus("i"), cfg(), &dir);
    let mut cs: Vec<Client> =
        ["a", "b", "c", "d", "z"].iter().enumerate().map(|(i, u)| Client::new(i as u64, u)).collect();
    for c in &cs {
        n.handle.subscribe(&c.conn, "lobby", None).unwrap();
    }
    settle().await;
    ticks(1).await;
    let got: Vec<Vec<Got>> = cs.iter_mut().map(|c| c.pump()).collect();
    assert_eq!(cs[0].ids("lobby"), ["a", "c", "d", "z"]);
    assert_eq!(cs[1].ids("lobby"), ["b", "c", "d", "z"]);
    assert_eq!(cs[2].ids("lobby"), ["a", "b", "c", "d", "z"]);
    assert_eq!(cs[0].views["lobby"].count, 4, "the count does not betray the blocked user");
    assert_eq!(cs[2].views["lobby"].count, 5);

    let diff = |i: usize| got[i].iter().find(|g| g.json["type"] == "presence.diff").unwrap().msg.clone().unwrap();
    assert!(SharedMessage::ptr_eq(&diff(2), &diff(3)), "c and d share the batch");
    assert!(SharedMessage::ptr_eq(&diff(2), &diff(4)), "z's block is not in this topic: shared too");
    assert!(!SharedMessage::ptr_eq(&diff(0), &diff(2)));
    assert!(!SharedMessage::ptr_eq(&diff(0), &diff(1)), "a and b hide different users");
    assert_eq!(n.handle.stats().filtered_copies_total, 2);

    // Updates of a blocked user never reach the blocker, even as an empty-looking diff entry.
    n.handle.set_state(&cs[1].conn, Some(SettableState::Away), Some("hello".into()), None).unwrap();
    ticks(1).await;
    let to_a = cs[0].pump();
    let text = to_a.iter().map(|g| g.json.to_string()).collect::<String>();
    assert!(!text.contains("\"b\""), "{text}");
    assert!(cs[0].gaps.is_empty(), "a still gets a diff for seq continuity");
    cs[2].pump();
    assert_eq!(cs[2].state_of("lobby", "b").as_deref(), Some("away"));

    // The blocked user leaving is no news to the blocker either.
    n.handle.unsubscribe(&cs[1].conn, "lobby", None).unwrap();
    ticks(1).await;
    let text = cs[0].pump().iter().map(|g| g.json.to_string()).collect::<String>();
    assert!(!text.contains("\"b\""), "{text}");
    assert_eq!(cs[0].views["lobby"].count, 4);
}

#[tokio::test(start_paused = true)]
async fn a_late_subscriber_gets_a_snapshot_without_the_users_it_blocks() {
    let dir = Dir::default();
    dir.block("late", "c1");
    let n = node(&bus("i"), cfg(), &dir);
    let members: Vec<Client> = (0..3).map(|i| Client::new(i, &format!("c{i}"))).collect();
    for c in &members {
        n.handle.subscribe(&c.conn, "lobby", None).unwrap();
    }
    settle().await;
    ticks(1).await;
    let mut late = Client::new(9, "late");
    n.handle.subscribe(&late.conn, "lobby", None).unwrap();
    settle().await;
    late.pump();
    assert_eq!(late.ids("lobby"), ["c0", "c2"]);
    assert_eq!(late.views["lobby"].count, 2);
    ticks(1).await;
    late.pump();
    assert_eq!(late.ids("lobby"), ["c0", "c2", "late"]);
}

#[tokio::test(start_paused = true)]
async fn a_new_block_takes_effect_with_a_fresh_snapshot_after_refresh() {
    let dir = Dir::default();
    let n = node(&bus("i"), cfg(), &dir);
    let mut x = Client::new(1, "x");
    let mut y = Client::new(2, "y");
    n.handle.subscribe(&x.conn, "lobby", None).unwrap();
    n.handle.subscribe(&y.conn, "lobby", None).unwrap();
    settle().await;
    ticks(1).await;
    x.pump();
    y.pump();
    assert_eq!(x.ids("lobby"), ["x", "y"]);

    dir.block("x", "y");
    // The server refreshes both users of a new block.
    n.handle.refresh("x").unwrap();
    n.handle.refresh("y").unwrap();
    settle().await;
    let got = x.pump();
    assert_eq!(of_type(&got, "presence.snapshot").len(), 1);
    assert_eq!(x.ids("lobby"), ["x"]);
    y.pump();
    assert_eq!(y.ids("lobby"), ["y"]);
    n.handle.set_state(&y.conn, Some(SettableState::Away), None, None).unwrap();
    ticks(1).await;
    x.pump();
    assert_eq!(x.ids("lobby"), ["x"]);
    assert!(x.gaps.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_blocked_user_arriving_outside_the_window_still_corrects_the_blockers_count() {
    let dir = Dir::default();
    dir.block("a", "b");
    let n = node(&bus("i"), PresenceConfig { window: 1, ..cfg() }, &dir);
    let mut a = Client::new(1, "a");
    let first = Client::new(2, "first");
    let c = Client::new(3, "c");
    n.handle.subscribe(&a.conn, "lobby", None).unwrap();
    n.handle.subscribe(&first.conn, "lobby", None).unwrap();
    n.handle.subscribe(&c.conn, "lobby", None).unwrap();
    n.handle.set_state(&first.conn, Some(SettableState::Available), None, None).unwrap();
    settle().await;
    ticks(1).await;
    a.pump();
    assert_eq!((a.ids("lobby"), a.views["lobby"].count), (vec!["first".to_owned()], 3));

    // The topic's count and window stay the same (c leaves, b arrives), but a's count drops.
    let b = Client::new(4, "b");
    n.handle.unsubscribe(&c.conn, "lobby", None).unwrap();
    n.handle.subscribe(&b.conn, "lobby", None).unwrap();
    ticks(1).await;
    a.pump();
    assert_eq!(a.views["lobby"].count, 2);
    assert!(a.gaps.is_empty());
}

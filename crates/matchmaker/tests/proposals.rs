//! Queue and proposals on one instance, in paused time.

mod support;

use std::time::Duration;

use rendezvous_matchmaker::Activity;
use rendezvous_protocol::{MatchAccept, MatchDecline, MatchJoin, MatchPrefs, RequestId};
use support::{Client, Cluster, settle, test_config};

fn join(c: &Client) {
    c.h.join(&c.conn, Some(RequestId::Number(1)), MatchJoin::default()).unwrap();
}

fn join_with(c: &Client, prefs: MatchPrefs) {
    c.h.join(&c.conn, None, MatchJoin { prefs }).unwrap();
}

fn accept(c: &Client, proposal: &serde_json::Value) {
    let id = proposal["proposal_id"].as_str().unwrap().to_owned();
    c.h.accept(&c.conn, None, MatchAccept { proposal_id: id }).unwrap();
}

fn decline(c: &Client, proposal: &serde_json::Value) {
    let id = proposal["proposal_id"].as_str().unwrap().to_owned();
    c.h.decline(&c.conn, None, MatchDecline { proposal_id: id }).unwrap();
}

#[tokio::test(start_paused = true)]
async fn two_users_are_proposed_and_confirmed() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(0, "b", "male");
    join(&a);
    let q = a.expect("match.queued").await;
    assert_eq!(q["id"], 1);
    assert_eq!(cl.activity.of("a"), Some(Activity::InQueue));
    tokio::time::sleep(Duration::from_millis(5)).await;
    join(&b);
    b.expect("match.queued").await;
    let pa = a.expect("match.proposed").await;
    let pb = b.expect("match.proposed").await;
    assert_eq!(pa["proposal_id"], pb["proposal_id"]);
    assert_eq!(pa["peer"]["user_id"], "b");
    assert_eq!(pb["peer"]["gender"], "female");
    assert_eq!(pa["deadline_ms"], 15_000);
    accept(&a, &pa);
    a.expect_nothing().await;
    accept(&b, &pb);
    let ca = a.expect("match.confirmed").await;
    let cb = b.expect("match.confirmed").await;
    assert_eq!(ca["call_id"], cb["call_id"]);
    assert_eq!(ca["role"], "offerer", "a waited longer");
    assert_eq!(cb["role"], "answerer");
    assert_eq!(cl.activity.of("b"), Some(Activity::InCall));
    let calls = cl.dir.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].a.as_str(), calls[0].b.as_str()), ("a", "b"));
    let s = cl.handles[0].stats();
    assert_eq!((s.proposals.made, s.proposals.accepted, s.active_calls), (1, 1, 1));
    // a joined 5 ms before b; cooldowns came with the joins, so the next scan claims them
    // (the bound allows two intervals).
    let p99 = s.wait_ms_p99.unwrap();
    assert!((5..=5 + 2 * 100).contains(&p99), "{p99}");
}

#[tokio::test(start_paused = true)]
async fn joining_twice_or_in_a_call_or_banned_is_an_error() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(0, "b", "male");
    let mut banned = cl.user(0, "x", "male");
    cl.dir.ban("x");
    join(&banned);
    banned.expect_error("banned").await;
    join(&a);
    a.expect("match.queued").await;
    join(&a);
    let e = a.expect_error("already_queued").await;
    assert_eq!(e["ref"], 1);
    join(&b);
    b.expect("match.queued").await;
    let pa = a.expect("match.proposed").await;
    let pb = b.expect("match.proposed").await;
    join(&a);
    a.expect_error("already_queued").await;
    accept(&a, &pa);
    accept(&b, &pb);
    a.expect("match.confirmed").await;
    b.expect("match.confirmed").await;
    join(&a);
    a.expect_error("in_call").await;
    a.h.leave(&a.conn, None).unwrap();
    a.expect_error("in_call").await;
    let mut nobody = cl.client(0, "ghost");
    join(&nobody);
    nobody.expect_error("unavailable").await;
}

#[tokio::test(start_paused = true)]
async fn bad_preferences_name_the_field() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    for (prefs, field) in [
        (MatchPrefs { genders: Some(vec![]), ..Default::default() }, "prefs.genders"),
        (MatchPrefs { genders: Some(vec!["Robot!".into()]), ..Default::default() }, "prefs.genders"),
        (MatchPrefs { region: Some("x".repeat(33)), ..Default::default() }, "prefs.region"),
        (MatchPrefs { topic: Some(String::new()), ..Default::default() }, "prefs.topic"),
    ] {
        join_with(&a, prefs);
        let e = a.expect_error("bad_field").await;
        assert!(e["message"].as_str().unwrap().contains(field), "{e}");
    }
}

#[tokio::test(start_paused = true)]
async fn leaving_works_once() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    a.h.leave(&a.conn, Some(RequestId::Text("l".into()))).unwrap();
    assert_eq!(a.expect_error("not_queued").await["ref"], "l");
    join(&a);
    a.expect("match.queued").await;
    a.h.leave(&a.conn, None).unwrap();
    a.expect("match.left").await;
    assert_eq!(cl.activity.of("a"), Some(Activity::Idle));
    a.h.leave(&a.conn, None).unwrap();
    a.expect_error("not_queued").await;
}

#[tokio::test(start_paused = true)]
async fn preferences_hold_both_ways_and_longest_waiting_goes_first() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut w = cl.user(0, "w", "female");
    let mut m1 = cl.user(0, "m1", "male");
    let mut m2 = cl.user(0, "m2", "male");
    let mut f2 = cl.user(0, "f2", "female");
    // w wants women only; m1 wants anyone; nobody fits w until f2 arrives.
    join_with(&w, MatchPrefs { genders: Some(vec!["female".into()]), ..Default::default() });
    w.expect("match.queued").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    join(&m1);
    m1.expect("match.queued").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.expect_nothing().await;
    m1.expect_nothing().await;
    join(&m2);
    m2.expect("match.queued").await;
    // m1 and m2 fit each other; w still waits.
    assert_eq!(m1.expect("match.proposed").await["peer"]["user_id"], "m2");
    m2.expect("match.proposed").await;
    w.expect_nothing().await;
    join_with(&f2, MatchPrefs { region: Some("eu".into()), ..Default::default() });
    f2.expect("match.queued").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.expect_nothing().await;
    f2.expect_nothing().await;
    // Same region: now w (longest waiting) gets f2.
    let mut f3 = cl.user(0, "f3", "female");
    join_with(&w, MatchPrefs::default());
    w.expect_error("already_queued").await;
    join_with(&f3, MatchPrefs { genders: Some(vec!["female".into()]), ..Default::default() });
    f3.expect("match.queued").await;
    assert_eq!(w.expect("match.proposed").await["peer"]["user_id"], "f3");
    assert_eq!(f3.expect("match.proposed").await["peer"]["user_id"], "w");
    f2.expect_nothing().await;
}

#[tokio::test(start_paused = true)]
async fn a_decline_requeues_the_peer_at_the_front() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(0, "b", "male");
    join(&a);
    a.expect("match.queued").await;
    join(&b);
    b.expect("match.queued").await;
    let pa = a.expect("match.proposed").await;
    let pb = b.expect("match.proposed").await;
    accept(&a, &pa);
    decline(&b, &pb);
    let cb = b.expect("match.cancelled").await;
    assert_eq!((cb["reason"].as_str(), cb["requeued"].as_bool()), (Some("declined"), Some(false)));
    let ca = a.expect("match.cancelled").await;
    assert_eq!((ca["reason"].as_str(), ca["requeued"].as_bool()), (Some("peer_declined"), Some(true)));
    assert_eq!(cl.activity.of("b"), Some(Activity::Idle));
    assert_eq!(cl.activity.of("a"), Some(Activity::InQueue));
    // A newcomer who waited less is matched with a, not the other way round.
    let mut c = cl.user(0, "c", "male");
    let mut d = cl.user(0, "d", "male");
    join(&c);
    c.expect("match.queued").await;
    assert_eq!(a.expect("match.proposed").await["peer"]["user_id"], "c");
    join(&d);
    d.expect("match.queued").await;
    d.expect_nothing().await;
    // Accepting or declining a proposal that is over or not yours.
    accept(&a, &pa);
    a.expect_error("no_such_proposal").await;
    decline(&d, &pa);
    d.expect_error("no_such_proposal").await;
    assert_eq!(cl.handles[0].stats().proposals.declined, 1);
}

#[tokio::test(start_paused = true)]
async fn a_missed_deadline_requeues_only_who_accepted() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(0, "b", "male");
    join(&a);
    a.expect("match.queued").await;
    join(&b);
    b.expect("match.queued").await;
    let pa = a.expect("match.proposed").await;
    b.expect("match.proposed").await;
    accept(&a, &pa);
    tokio::time::sleep(Duration::from_millis(14_900)).await;
    a.expect_nothing().await;
    let cb = b.expect("match.cancelled").await;
    assert_eq!(cb["reason"], "timeout");
    assert_eq!(cb["requeued"], false);
    let ca = a.expect("match.cancelled").await;
    assert_eq!(ca["reason"], "peer_timeout");
    assert_eq!(ca["requeued"], true);
    accept(&a, &pa);
    a.expect_error("no_such_proposal").await;
    // Nobody answers: both leave.
    let mut c = cl.user(0, "c", "male");
    join(&c);
    c.expect("match.queued").await;
    a.expect("match.proposed").await;
    c.expect("match.proposed").await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(a.expect("match.cancelled").await["reason"], "timeout");
    assert_eq!(c.expect("match.cancelled").await["reason"], "timeout");
    settle().await;
    assert_eq!(cl.handles[0].stats().proposals.expired, 2);
    assert_eq!(cl.handles[0].stats().queue_length, 0);
}

#[tokio::test(start_paused = true)]
async fn a_disconnect_during_a_proposal_requeues_the_peer() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(0, "b", "male");
    join(&a);
    a.expect("match.queued").await;
    join(&b);
    b.expect("match.queued").await;
    a.expect("match.proposed").await;
    b.expect("match.proposed").await;
    b.disconnect();
    let ca = a.expect("match.cancelled").await;
    assert_eq!(ca["reason"], "peer_disconnected");
    assert_eq!(ca["requeued"], true);
    // A queued user who disconnects leaves the queue.
    a.disconnect();
    settle().await;
    assert!(cl.queue.snapshot().is_empty(), "{:?}", cl.queue.snapshot());
}

#[tokio::test(start_paused = true)]
async fn blocks_and_cooldowns_keep_pairs_apart() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(0, "b", "male");
    let mut c = cl.user(0, "c", "male");
    cl.dir.block_now("b", "a");
    cl.dir.cooldown("a", "c", rendezvous_matchmaker::now_ms() + 120_000);
    let women = || MatchPrefs { genders: Some(vec!["female".into()]), ..Default::default() };
    join(&a);
    a.expect("match.queued").await;
    join_with(&b, women());
    b.expect("match.queued").await;
    join_with(&c, women());
    c.expect("match.queued").await;
    tokio::time::sleep(Duration::from_secs(119)).await;
    a.expect_nothing().await;
    // The cooldown loaded at a's join ends at 120 s; the next scan pairs them.
    let p = a.expect("match.proposed").await;
    assert_eq!(p["peer"]["user_id"], "c");
    assert!(rendezvous_matchmaker::now_ms() >= cl.dir.cooldown_until("a", "c").unwrap());
    b.expect_nothing().await;
    assert!(cl.dir.queries.load(std::sync::atomic::Ordering::Relaxed) < 20, "scans do not query the directory");
}

#[tokio::test(start_paused = true)]
async fn leaving_during_a_proposal_declines_it() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(0, "b", "male");
    join(&a);
    a.expect("match.queued").await;
    join(&b);
    b.expect("match.queued").await;
    a.expect("match.proposed").await;
    b.expect("match.proposed").await;
    b.h.leave(&b.conn, Some(RequestId::Number(4))).unwrap();
    assert_eq!(b.expect("match.left").await["id"], 4);
    assert_eq!(b.expect("match.cancelled").await["reason"], "declined");
    let ca = a.expect("match.cancelled").await;
    assert_eq!((ca["reason"].as_str(), ca["requeued"].as_bool()), (Some("peer_declined"), Some(true)));
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_during_a_proposal_gets_it_again_on_any_instance() {
    let mut cl = Cluster::new(2, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(1, "b", "male");
    join(&a);
    a.expect("match.queued").await;
    join(&b);
    b.expect("match.queued").await;
    let p = a.expect("match.proposed").await;
    b.expect("match.proposed").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // b opens a second connection elsewhere, then the first one closes: not a disconnect.
    let mut b2 = cl.client(0, "b");
    let again = b2.expect("match.proposed").await;
    assert_eq!(again["proposal_id"], p["proposal_id"]);
    let left = again["deadline_ms"].as_u64().unwrap();
    assert!((9_000..=10_000).contains(&left), "{left}");
    b.disconnect();
    settle().await;
    a.expect_nothing().await;
    accept(&a, &p);
    accept(&b2, &again);
    a.expect("match.confirmed").await;
    b2.expect("match.confirmed").await;
}

#[tokio::test(start_paused = true)]
async fn joins_over_the_lookup_budget_wait_in_line_and_can_leave_it() {
    let cfg = rendezvous_matchmaker::MatchmakerConfig { max_pending_lookups: 1, ..test_config() };
    let mut cl = Cluster::new(1, cfg).await;
    let mut users: Vec<Client> = ["a", "b", "c"].iter().map(|u| cl.user(0, u, "female")).collect();
    // Different regions: nobody is matched, so the queue shows exactly who joined.
    let alone = |r: &str| MatchPrefs { region: Some(r.into()), ..Default::default() };
    for (u, r) in users.iter().zip(["r1", "r2", "r3"]) {
        join_with(u, alone(r));
    }
    // All three joins are queued before the task runs: one lookup starts, two wait in
    // line; c leaves while its join is still waiting.
    users[2].h.leave(&users[2].conn, Some(RequestId::Number(2))).unwrap();
    users[0].expect("match.queued").await;
    users[1].expect("match.queued").await;
    let left = users[2].expect("match.left").await;
    assert_eq!(left["id"], 2);
    settle().await;
    users[2].expect_nothing().await;
    let mut queued: Vec<String> = cl.queue.snapshot().into_iter().map(|(u, _)| u).collect();
    queued.sort();
    assert_eq!(queued, ["a", "b"], "c's join was taken out of line, not queued later");
    assert_eq!(cl.handles[0].stats().rejected_busy, 0);
}

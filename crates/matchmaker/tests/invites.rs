//! Direct invites across instances, in paused time.

mod support;

use std::time::Duration;

use rendezvous_protocol::{CallHangup, InviteAccept, InviteCancel, InviteDecline, InviteSend, MatchJoin, RequestId};
use support::{Client, Cluster, settle, test_config};

fn invite(c: &Client, to: &str) {
    c.h.invite(&c.conn, Some(RequestId::Number(7)), InviteSend { user_id: to.into() }).unwrap();
}

fn id_of(m: &serde_json::Value) -> String {
    m["invite_id"].as_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn an_accepted_invite_starts_a_call_across_instances() {
    let mut cl = Cluster::new(2, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(1, "b", "male");
    invite(&a, "b");
    let sent = a.expect("invite.sent").await;
    assert_eq!((sent["id"].as_u64(), sent["user_id"].as_str()), (Some(7), Some("b")));
    let got = b.expect("invite.received").await;
    assert_eq!(got["from"]["user_id"], "a");
    assert_eq!(got["deadline_ms"], 20_000);
    b.h.invite_accept(&b.conn, None, InviteAccept { invite_id: id_of(&got) }).unwrap();
    a.expect("invite.accepted").await;
    let ca = a.expect("match.confirmed").await;
    let cb = b.expect("match.confirmed").await;
    assert_eq!((ca["role"].as_str(), cb["role"].as_str()), (Some("offerer"), Some("answerer")));
    assert_eq!(ca["peer"]["user_id"], "b");
    let rows = cl.dir.calls();
    assert_eq!(rows[0].origin, rendezvous_matchmaker::CallOrigin::Invited);
    // The call behaves like any other.
    let call_id = ca["call_id"].as_str().unwrap().to_owned();
    b.h.hangup(&b.conn, None, CallHangup { call_id }).unwrap();
    a.expect("call.ended").await;
    assert_eq!(cl.handles[0].stats().invites.accepted, 1);
}

#[tokio::test(start_paused = true)]
async fn offline_blocked_banned_and_self_invites_fail_alike() {
    let mut cl = Cluster::new(2, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let _b = cl.user(1, "b", "male");
    let _x = cl.user(1, "x", "male");
    cl.dir.add_user("offline", "male");
    cl.dir.block_now("b", "a");
    cl.dir.ban("x");
    let mut messages = Vec::new();
    for target in ["offline", "b", "x", "a", "nobody"] {
        invite(&a, target);
        let e = a.expect_error("user_unavailable").await;
        assert_eq!(e["ref"], 7);
        messages.push(e["message"].as_str().unwrap().to_owned());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "one message for every reason: {messages:?}");
}

#[tokio::test(start_paused = true)]
async fn away_or_busy_users_refuse_without_seeing_the_invite() {
    let mut cl = Cluster::new(2, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(1, "b", "male");
    cl.activity.away.lock().unwrap().insert("b".into());
    invite(&a, "b");
    a.expect("invite.sent").await;
    let d = a.expect("invite.declined").await;
    assert_eq!(d["reason"], "unavailable");
    b.expect_nothing().await;
}

#[tokio::test(start_paused = true)]
async fn decline_cancel_and_expiry() {
    let mut cl = Cluster::new(2, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(1, "b", "male");
    // Declined.
    invite(&a, "b");
    a.expect("invite.sent").await;
    let got = b.expect("invite.received").await;
    b.h.invite_decline(&b.conn, None, InviteDecline { invite_id: id_of(&got) }).unwrap();
    assert_eq!(a.expect("invite.declined").await["reason"], "declined");
    b.h.invite_accept(&b.conn, None, InviteAccept { invite_id: id_of(&got) }).unwrap();
    b.expect_error("no_such_invite").await;
    // Cancelled by the inviter; only the inviter may cancel.
    invite(&a, "b");
    let sent = a.expect("invite.sent").await;
    b.expect("invite.received").await;
    b.h.invite_cancel(&b.conn, None, InviteCancel { invite_id: id_of(&sent) }).unwrap();
    b.expect_error("no_such_invite").await;
    a.h.invite_cancel(&a.conn, Some(RequestId::Number(2)), InviteCancel { invite_id: id_of(&sent) }).unwrap();
    assert_eq!(a.expect("invite.cancelled").await["id"], 2);
    assert_eq!(b.expect("invite.cancelled").await["invite_id"], id_of(&sent));
    b.h.invite_accept(&b.conn, None, InviteAccept { invite_id: id_of(&sent) }).unwrap();
    b.expect_error("no_such_invite").await;
    a.h.invite_cancel(&a.conn, None, InviteCancel { invite_id: id_of(&sent) }).unwrap();
    a.expect_error("no_such_invite").await;
    // Expired.
    invite(&a, "b");
    let sent = a.expect("invite.sent").await;
    b.expect("invite.received").await;
    tokio::time::sleep(Duration::from_millis(19_990)).await;
    a.expect_nothing().await;
    assert_eq!(a.expect("invite.expired").await["invite_id"], id_of(&sent));
    b.expect("invite.expired").await;
    b.h.invite_accept(&b.conn, None, InviteAccept { invite_id: id_of(&sent) }).unwrap();
    b.expect_error("no_such_invite").await;
    let s = cl.handles[0].stats();
    assert_eq!((s.invites.declined, s.invites.cancelled, s.invites.expired, s.invites.pending), (1, 1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn invites_are_rate_limited_per_sender() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    for i in 0..4 {
        cl.user(0, &format!("u{i}"), "male");
    }
    // Attempts count towards the 10 a minute, failed ones too (so probing is bounded).
    for _ in 0..6 {
        invite(&a, "nobody");
        a.expect_error("user_unavailable").await;
    }
    // At most 3 pending.
    for i in 0..3 {
        invite(&a, &format!("u{i}"));
        a.expect("invite.sent").await;
    }
    invite(&a, "u3");
    assert!(a.expect_error("rate_limited").await["message"].as_str().unwrap().contains("pending"));
    tokio::time::sleep(Duration::from_secs(21)).await; // the three expire
    a.drain();
    invite(&a, "u3");
    a.expect("invite.sent").await;
    invite(&a, "u0");
    assert!(a.expect_error("rate_limited").await["message"].as_str().unwrap().contains("minute"));
    tokio::time::sleep(Duration::from_secs(40)).await;
    a.drain();
    invite(&a, "u0");
    a.expect("invite.sent").await;
}

#[tokio::test(start_paused = true)]
async fn disconnects_end_invites_on_both_sides() {
    let mut cl = Cluster::new(2, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(1, "b", "male");
    invite(&a, "b");
    a.expect("invite.sent").await;
    b.expect("invite.received").await;
    b.disconnect();
    assert_eq!(a.expect("invite.declined").await["reason"], "unavailable");
    let mut b = cl.client(1, "b");
    invite(&a, "b");
    a.expect("invite.sent").await;
    b.expect("invite.received").await;
    a.disconnect();
    b.expect("invite.cancelled").await;
    settle().await;
    assert_eq!(cl.handles[0].stats().invites.pending, 0);
}

#[tokio::test(start_paused = true)]
async fn accepting_when_the_inviter_became_busy_fails_cleanly() {
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(0, "b", "male");
    let mut c = cl.user(0, "c", "male");
    invite(&a, "b");
    a.expect("invite.sent").await;
    let got = b.expect("invite.received").await;
    // Meanwhile a is matched with c.
    for x in [&a, &c] {
        x.h.join(&x.conn, None, MatchJoin::default()).unwrap();
    }
    a.expect("match.queued").await;
    c.expect("match.queued").await;
    a.expect("match.proposed").await;
    c.expect("match.proposed").await;
    b.h.invite_accept(&b.conn, None, InviteAccept { invite_id: id_of(&got) }).unwrap();
    b.expect_error("user_unavailable").await;
    assert_eq!(a.expect("invite.declined").await["reason"], "unavailable");
    assert!(cl.dir.calls().is_empty());
}

//! Calls: signaling relay, hangup, reconnect grace, history, block/report, ICE servers,
//! shutdown — in paused time.

mod support;

use std::time::Duration;

use rendezvous_matchmaker::{Activity, EndReason, IceConfig, Locator, MatchQueue, MatchmakerConfig};
use rendezvous_protocol::{
    CallBlock, CallHangup, CallReport, CallSignal, MatchAccept, MatchJoin, ReportReason, RequestId, SignalKind,
};
use serde_json::{Value, json};
use support::{Client, Cluster, settle, test_config};

/// Two users of `cl` (on instances `ia` and `ib`) matched into a call; returns the call id.
async fn in_call(cl: &mut Cluster, ia: usize, ib: usize) -> (Client, Client, String) {
    let mut a = cl.user(ia, "a", "female");
    let mut b = cl.user(ib, "b", "male");
    a.h.join(&a.conn, None, MatchJoin::default()).unwrap();
    a.expect("match.queued").await;
    b.h.join(&b.conn, None, MatchJoin::default()).unwrap();
    b.expect("match.queued").await;
    for c in [&mut a, &mut b] {
        let p = c.expect("match.proposed").await;
        let proposal_id = p["proposal_id"].as_str().unwrap().to_owned();
        c.h.accept(&c.conn, None, MatchAccept { proposal_id }).unwrap();
    }
    let call = a.expect("match.confirmed").await["call_id"].as_str().unwrap().to_owned();
    b.expect("match.confirmed").await;
    (a, b, call)
}

fn signal(c: &Client, call: &str, kind: SignalKind, payload: Value) {
    c.h.signal(&c.conn, Some(RequestId::Number(9)), CallSignal { call_id: call.into(), kind, payload }).unwrap();
}

fn hangup(c: &Client, call: &str) {
    c.h.hangup(&c.conn, None, CallHangup { call_id: call.into() }).unwrap();
}

#[tokio::test(start_paused = true)]
async fn signaling_is_relayed_in_order_across_instances() {
    let mut cl = Cluster::new(2, test_config()).await;
    let (mut a, mut b, call) = in_call(&mut cl, 0, 1).await;
    signal(&a, &call, SignalKind::Offer, json!({"sdp": "v=0 offer"}));
    for i in 0..20 {
        signal(&a, &call, SignalKind::Ice, json!({"candidate": i}));
    }
    let offer = b.expect("call.signal").await;
    assert_eq!((offer["kind"].as_str(), offer["payload"]["sdp"].as_str()), (Some("offer"), Some("v=0 offer")));
    for i in 0..20 {
        assert_eq!(b.expect("call.signal").await["payload"]["candidate"], i);
    }
    signal(&b, &call, SignalKind::Answer, json!({"sdp": "v=0 answer"}));
    assert_eq!(a.expect("call.signal").await["kind"], "answer");
    settle().await;
    let relayed: u64 = cl.handles.iter().map(|h| h.stats().signals_relayed).sum();
    assert_eq!(relayed, 22);
}

#[tokio::test(start_paused = true)]
async fn a_calls_signals_need_no_shared_lookups_once_it_runs() {
    let mut cl = Cluster::new(2, test_config()).await;
    let (mut a, mut b, call) = in_call(&mut cl, 0, 1).await;
    // The first signal each way teaches the coordinator where the receiver is.
    signal(&a, &call, SignalKind::Offer, json!({"n": 1}));
    assert_eq!(b.expect("call.signal").await["payload"]["n"], 1);
    signal(&b, &call, SignalKind::Answer, json!({"n": 2}));
    assert_eq!(a.expect("call.signal").await["payload"]["n"], 2);
    // Empty the shared table and the locator under the running call: the homes know the
    // coordinator and the coordinator knows the homes, so signals keep flowing both ways.
    for (user, instance) in [("a", "i0"), ("b", "i1")] {
        assert!(cl.queue.release(user, &call).await.unwrap(), "{user} was engaged in the call");
        cl.locator.unbind(user, instance).await.unwrap();
    }
    for n in 3..6 {
        signal(&a, &call, SignalKind::Ice, json!({"n": n}));
        assert_eq!(b.expect("call.signal").await["payload"]["n"], n);
        signal(&b, &call, SignalKind::Ice, json!({"n": -n}));
        assert_eq!(a.expect("call.signal").await["payload"]["n"], -n);
    }
}

#[tokio::test(start_paused = true)]
async fn a_newer_connection_elsewhere_takes_the_calls_signals() {
    let mut cl = Cluster::new(2, test_config()).await;
    let (mut a, mut b, call) = in_call(&mut cl, 0, 1).await;
    signal(&a, &call, SignalKind::Offer, json!({"n": 1}));
    assert_eq!(b.expect("call.signal").await["payload"]["n"], 1);
    // b opens a second connection on the other instance without closing the first: the
    // latest connection is where b is reached, and the coordinator forgets what it knew.
    let mut b2 = cl.client(0, "b");
    assert_eq!(b2.expect("call.resumed").await["call_id"], call.as_str());
    signal(&a, &call, SignalKind::Ice, json!({"n": 2}));
    assert_eq!(b2.expect("call.signal").await["payload"]["n"], 2);
    b.expect_nothing().await;
    // And b2's instance learned the call's coordinator from the resume.
    signal(&b2, &call, SignalKind::Answer, json!({"n": 3}));
    assert_eq!(a.expect("call.signal").await["payload"]["n"], 3);
}

#[tokio::test(start_paused = true)]
async fn outsiders_oversized_payloads_and_unknown_calls_are_refused() {
    let mut cl = Cluster::new(1, test_config()).await;
    let (mut a, mut b, call) = in_call(&mut cl, 0, 0).await;
    let mut eve = cl.user(0, "eve", "other");
    signal(&eve, &call, SignalKind::Offer, json!({}));
    assert_eq!(eve.expect_error("no_such_call").await["ref"], 9);
    hangup(&eve, &call);
    eve.expect_error("no_such_call").await;
    signal(&a, "call-404", SignalKind::Offer, json!({}));
    a.expect_error("no_such_call").await;
    let big = "x".repeat(65_536);
    signal(&a, &call, SignalKind::Offer, json!({ "sdp": big }));
    let e = a.expect_error("payload_too_large").await;
    assert!(e["message"].as_str().unwrap().contains("payload"), "{e}");
    // Exactly at the limit is fine: `"…"` adds two bytes to the string.
    signal(&a, &call, SignalKind::Offer, Value::String("y".repeat(65_534)));
    assert_eq!(b.expect("call.signal").await["payload"].as_str().unwrap().len(), 65_534);
    b.expect_nothing().await;
}

#[tokio::test(start_paused = true)]
async fn hangup_ends_once_and_writes_history_and_cooldown() {
    let mut cl = Cluster::new(2, test_config()).await;
    let (mut a, mut b, call) = in_call(&mut cl, 0, 1).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    hangup(&b, &call);
    for c in [&mut a, &mut b] {
        let e = c.expect("call.ended").await;
        assert_eq!((e["reason"].as_str(), e["ended_by"].as_str()), (Some("hangup"), Some("b")));
    }
    hangup(&b, &call);
    b.expect_error("no_such_call").await;
    hangup(&a, &call);
    a.expect_error("no_such_call").await;
    settle().await;
    let rows = cl.dir.calls();
    let end = rows[0].end.clone().expect("history row ended");
    assert_eq!((end.reason, end.ended_by.as_deref()), (EndReason::Hangup, Some("b")));
    assert!((30_000..31_000).contains(&end.duration_ms()), "{}", end.duration_ms());
    assert_eq!(cl.dir.cooldown_until("a", "b"), Some(end.ended_at_ms + 60_000));
    assert_eq!(cl.activity.of("a"), Some(Activity::Idle));
    // Both may queue again, but not meet each other until the cooldown is over.
    for c in [&a, &b] {
        c.h.join(&c.conn, None, MatchJoin::default()).unwrap();
    }
    a.expect("match.queued").await;
    b.expect("match.queued").await;
    tokio::time::sleep(Duration::from_secs(59)).await;
    a.expect_nothing().await;
    assert_eq!(a.expect("match.proposed").await["peer"]["user_id"], "b", "after the cooldown");
    let active: u64 = cl.handles.iter().map(|h| h.stats().active_calls).sum();
    assert_eq!(active, 0);
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_within_the_grace_keeps_the_call() {
    let mut cl = Cluster::new(2, test_config()).await;
    let (mut a, mut b, call) = in_call(&mut cl, 0, 1).await;
    b.disconnect();
    let r = a.expect("call.peer_reconnecting").await;
    assert_eq!((r["call_id"].as_str(), r["grace_ms"].as_u64()), (Some(call.as_str()), Some(10_000)));
    tokio::time::sleep(Duration::from_secs(9)).await;
    // b comes back on the other instance.
    let mut b2 = cl.client(0, "b");
    let resumed = b2.expect("call.resumed").await;
    assert_eq!((resumed["call_id"].as_str(), resumed["role"].as_str()), (Some(call.as_str()), Some("answerer")));
    a.expect("call.peer_reconnected").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.expect_nothing().await;
    signal(&a, &call, SignalKind::Offer, json!({"sdp": "restart"}));
    assert_eq!(b2.expect("call.signal").await["payload"]["sdp"], "restart");
    b.expect_nothing().await;
}

#[tokio::test(start_paused = true)]
async fn a_missed_grace_ends_the_call_as_a_disconnect() {
    let mut cl = Cluster::new(2, test_config()).await;
    let (mut a, b, call) = in_call(&mut cl, 0, 1).await;
    b.disconnect();
    a.expect("call.peer_reconnecting").await;
    tokio::time::sleep(Duration::from_millis(9_990)).await;
    a.expect_nothing().await;
    let e = a.expect("call.ended").await;
    assert_eq!((e["reason"].as_str(), e["ended_by"].as_str()), (Some("disconnect"), Some("b")));
    settle().await;
    let row = cl.dir.calls().into_iter().find(|c| c.id == call).unwrap();
    assert_eq!(row.end.unwrap().reason, EndReason::Disconnect);
    // Coming back later finds no call.
    let mut b2 = cl.client(1, "b");
    hangup(&b2, &call);
    b2.expect_error("no_such_call").await;
}

#[tokio::test(start_paused = true)]
async fn a_second_connection_closing_does_not_start_the_grace() {
    let mut cl = Cluster::new(1, test_config()).await;
    let (mut a, b, _call) = in_call(&mut cl, 0, 0).await;
    let mut b2 = cl.client(0, "b");
    b.disconnect();
    tokio::time::sleep(Duration::from_secs(20)).await;
    a.expect_nothing().await;
    b2.expect_nothing().await;
}

#[tokio::test(start_paused = true)]
async fn block_and_report_after_a_call() {
    let mut cl = Cluster::new(1, test_config()).await;
    let (mut a, mut b, call) = in_call(&mut cl, 0, 0).await;
    let mut eve = cl.user(0, "eve", "other");
    eve.h.block(&eve.conn, None, CallBlock { user_id: "a".into() }).unwrap();
    eve.expect_error("not_a_peer").await;
    let report = |c: &Client, text: Option<String>| {
        let msg = CallReport { user_id: "b".into(), reason: ReportReason::Harassment, text };
        c.h.report(&c.conn, Some(RequestId::Number(3)), msg).unwrap();
    };
    report(&eve, None);
    eve.expect_error("not_a_peer").await;
    hangup(&a, &call);
    a.expect("call.ended").await;
    b.expect("call.ended").await;
    report(&a, Some("x".repeat(501)));
    a.expect_error("bad_field").await;
    report(&a, Some("rude".into()));
    assert_eq!(a.expect("call.reported").await["id"], 3);
    a.h.block(&a.conn, None, CallBlock { user_id: "b".into() }).unwrap();
    assert_eq!(a.expect("call.blocked").await["user_id"], "b");
    let reports = cl.dir.reports();
    assert_eq!((reports[0].reporter.as_str(), reports[0].reason), ("a", ReportReason::Harassment));
    assert_eq!(reports[0].text.as_deref(), Some("rude"));
    assert!(cl.dir.blocks().iter().any(|((x, y), _)| x == "a" && y == "b"));
    cl.dir.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    report(&b, None);
    // b reports a (its peer) while the directory is down.
    let msg = CallReport { user_id: "a".into(), reason: ReportReason::Spam, text: None };
    b.h.report(&b.conn, None, msg).unwrap();
    b.expect_error("not_a_peer").await;
    b.expect_error("unavailable").await;
}

#[tokio::test(start_paused = true)]
async fn ice_servers_come_with_expiring_turn_credentials() {
    let cfg = MatchmakerConfig {
        ice: IceConfig {
            stun_urls: vec!["stun:stun.example:3478".into()],
            turn_urls: vec!["turn:turn.example:3478".into()],
            turn_secret: "0123456789abcdef".into(),
            turn_ttl_secs: 600,
        },
        ..test_config()
    };
    let mut cl = Cluster::new(1, cfg).await;
    let mut a = cl.user(0, "a", "female");
    a.h.ice_servers(&a.conn, Some(RequestId::Number(5)));
    let m = a.expect("ice.servers").await;
    assert_eq!((m["id"].as_u64(), m["ttl_secs"].as_u64()), (Some(5), Some(600)));
    let turn = &m["ice_servers"][1];
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "a");
    let now = (rendezvous_matchmaker::now_ms() / 1000) as u64;
    assert_eq!(expiry.parse::<u64>().unwrap(), now + 600);
    let (_, expected) = rendezvous_matchmaker::turn_credentials("0123456789abcdef", "a", now + 600);
    assert_eq!(turn["credential"], expected);
    assert!(m["ice_servers"][0].get("username").is_none());
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_calls_and_empties_the_queue() {
    let mut cl = Cluster::new(2, test_config()).await;
    let (mut a, mut b, call) = in_call(&mut cl, 0, 1).await;
    let mut c = cl.user(0, "c", "male");
    c.h.join(&c.conn, None, MatchJoin::default()).unwrap();
    c.expect("match.queued").await;
    // The call was claimed by one of the instances; shut that one down.
    let coordinator = cl.handles.iter().position(|h| h.stats().active_calls == 1).unwrap();
    cl.tokens[coordinator].cancel();
    settle().await;
    for x in [&mut a, &mut b] {
        let e = x.expect("call.ended").await;
        assert_eq!(e["reason"], "shutdown");
        assert!(e.get("ended_by").is_none());
    }
    let row = cl.dir.calls().into_iter().find(|r| r.id == call).unwrap();
    assert_eq!(row.end.unwrap().reason, EndReason::Shutdown);
    // c's own instance drains its queue.
    cl.tokens[0].cancel();
    settle().await;
    let left = c.expect("match.left").await;
    assert_eq!(left["reason"], "shutdown");
    assert!(cl.queue.snapshot().is_empty(), "{:?}", cl.queue.snapshot());
    assert_eq!(c.h.leave(&c.conn, None), Err(rendezvous_matchmaker::MatchError::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_full_command_queue_answers_busy() {
    let cfg = MatchmakerConfig { command_queue: 2, ..test_config() };
    let mut cl = Cluster::new(1, cfg).await;
    let a = cl.user(0, "a", "female");
    // Nothing runs between these calls (no await), so the queue fills.
    let results: Vec<_> = (0..5).map(|_| a.h.leave(&a.conn, None)).collect();
    assert!(results.contains(&Err(rendezvous_matchmaker::MatchError::Busy)), "{results:?}");
    let frame = rendezvous_matchmaker::MatchError::Busy.to_frame(None);
    assert_eq!(frame.code, rendezvous_protocol::ErrorCode::Busy);
    assert!(cl.handles[0].stats().rejected_busy >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_party_no_instance_knows_is_swept_into_its_grace() {
    use rendezvous_matchmaker::Locator;
    let mut cl = Cluster::new(2, test_config()).await;
    let (mut a, _b, _call) = in_call(&mut cl, 0, 1).await;
    // b's instance vanished without a word (a crash, a lost message): only the locator says so.
    cl.locator.unbind("b", "i1").await.unwrap();
    a.expect("call.peer_reconnecting").await;
    let e = a.expect("call.ended").await;
    assert_eq!((e["reason"].as_str(), e["ended_by"].as_str()), (Some("disconnect"), Some("b")));
}

#[tokio::test(start_paused = true)]
async fn directory_failures_answer_unavailable_and_strand_nobody() {
    use std::sync::atomic::Ordering;
    let mut cl = Cluster::new(1, test_config()).await;
    let mut a = cl.user(0, "a", "female");
    let mut b = cl.user(0, "b", "male");
    cl.dir.fail.store(true, Ordering::Relaxed);
    a.h.join(&a.conn, None, MatchJoin::default()).unwrap();
    a.expect_error("unavailable").await;
    cl.dir.fail.store(false, Ordering::Relaxed);
    for c in [&a, &b] {
        c.h.join(&c.conn, None, MatchJoin::default()).unwrap();
    }
    a.expect("match.queued").await;
    b.expect("match.queued").await;
    let pa = a.expect("match.proposed").await;
    let pb = b.expect("match.proposed").await;
    // The call cannot be written: both are told and freed.
    cl.dir.fail.store(true, Ordering::Relaxed);
    for (c, p) in [(&a, &pa), (&b, &pb)] {
        let proposal_id = p["proposal_id"].as_str().unwrap().to_owned();
        c.h.accept(&c.conn, None, MatchAccept { proposal_id }).unwrap();
    }
    for c in [&mut a, &mut b] {
        let m = c.expect("match.cancelled").await;
        assert_eq!((m["reason"].as_str(), m["requeued"].as_bool()), (Some("unavailable"), Some(false)));
    }
    assert!(cl.queue.snapshot().is_empty(), "{:?}", cl.queue.snapshot());
    assert!(cl.handles[0].stats().directory_errors >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_block_keeps_the_pair_apart_even_without_a_cooldown() {
    let cfg = MatchmakerConfig { cooldown_ms: 0, ..test_config() };
    let mut cl = Cluster::new(2, cfg).await;
    let (mut a, mut b, call) = in_call(&mut cl, 0, 1).await;
    // Inviting or joining during a call is refused.
    a.h.invite(&a.conn, None, rendezvous_protocol::InviteSend { user_id: "b".into() }).unwrap();
    a.expect_error("in_call").await;
    hangup(&a, &call);
    a.expect("call.ended").await;
    b.expect("call.ended").await;
    a.h.block(&a.conn, None, CallBlock { user_id: "b".into() }).unwrap();
    a.expect("call.blocked").await;
    for c in [&a, &b] {
        c.h.join(&c.conn, None, MatchJoin::default()).unwrap();
    }
    a.expect("match.queued").await;
    b.expect("match.queued").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    a.expect_nothing().await;
    b.expect_nothing().await;
    b.h.invite(&b.conn, None, rendezvous_protocol::InviteSend { user_id: "a".into() }).unwrap();
    b.expect_error("user_unavailable").await;
}

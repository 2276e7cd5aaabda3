//! Matchmaking and calls through the real server: two clients on two instances get
//! matched, exchange signaling, hang up, and the store holds the history and cooldown.

use rendezvous::LocalCluster;
use serde_json::{Value, json};

use crate::support::{RawClient, both_backends, config_for, next_of_type, start_in};

async fn send(c: &mut RawClient, v: Value) {
    c.send_text(&v.to_string(), false).await;
}

both_backends!(two_users_are_matched_signal_and_hang_up, |backend| {
    let cluster = LocalCluster::new(&Default::default());
    let db = config_for(backend).await;
    let config = |name: &str| {
        let mut c = db.clone();
        c.server.instance_id = name.into();
        c.matchmaking.match_interval_ms = 20;
        c
    };
    let (a, b) = (start_in(config("a"), &cluster).await, start_in(config("b"), &cluster).await);
    let store = a.store.clone().unwrap();
    // Real users, so the call history has rows the API can list.
    let ann = store.create_user(serde_json::from_str(r#"{"display_name":"Ann"}"#).unwrap()).await.unwrap();
    let ben = store.create_user(serde_json::from_str(r#"{"display_name":"Ben"}"#).unwrap()).await.unwrap();
    let mut ann_c = RawClient::user(a.addr, &ann.id, false).await;
    let mut ben_c = RawClient::user(b.addr, &ben.id, false).await;

    send(&mut ann_c, json!({"type": "match.join", "id": 1})).await;
    assert_eq!(next_of_type(&mut ann_c, "match.queued").await["id"], 1);
    send(&mut ann_c, json!({"type": "match.join"})).await;
    assert_eq!(next_of_type(&mut ann_c, "error").await["code"], "already_queued");
    send(&mut ben_c, json!({"type": "match.join", "prefs": {}})).await;

    let to_ann = next_of_type(&mut ann_c, "match.proposed").await;
    let to_ben = next_of_type(&mut ben_c, "match.proposed").await;
    assert_eq!(to_ann["peer"]["display_name"], "Ben");
    assert_eq!(to_ben["peer"]["display_name"], "Ann");
    assert_eq!(to_ann["proposal_id"], to_ben["proposal_id"], "one proposal, both told");
    send(&mut ben_c, json!({"type": "match.accept", "proposal_id": "someone-elses"})).await;
    assert_eq!(next_of_type(&mut ben_c, "error").await["code"], "no_such_proposal");
    send(&mut ann_c, json!({"type": "match.accept", "proposal_id": to_ann["proposal_id"]})).await;
    send(&mut ben_c, json!({"type": "match.accept", "proposal_id": to_ben["proposal_id"]})).await;
    let ann_ok = next_of_type(&mut ann_c, "match.confirmed").await;
    let ben_ok = next_of_type(&mut ben_c, "match.confirmed").await;
    let call_id = ann_ok["call_id"].as_str().unwrap().to_owned();
    assert_eq!(ben_ok["call_id"], call_id.as_str());
    let (offerer, answerer) =
        if ann_ok["role"] == "offerer" { (&mut ann_c, &mut ben_c) } else { (&mut ben_c, &mut ann_c) };

    // Offer, answer and ICE go through, in order, across instances.
    send(offerer, json!({"type": "call.signal", "call_id": call_id, "kind": "offer", "payload": {"sdp": "v=0 offer"}}))
        .await;
    for i in 0..5 {
        send(offerer, json!({"type": "call.signal", "call_id": call_id, "kind": "ice", "payload": {"candidate": i}}))
            .await;
    }
    let offer = next_of_type(answerer, "call.signal").await;
    assert_eq!((offer["kind"].as_str(), offer["payload"]["sdp"].as_str()), (Some("offer"), Some("v=0 offer")));
    for i in 0..5 {
        assert_eq!(next_of_type(answerer, "call.signal").await["payload"]["candidate"], i);
    }
    send(
        answerer,
        json!({"type": "call.signal", "call_id": call_id, "kind": "answer", "payload": {"sdp": "v=0 answer"}}),
    )
    .await;
    assert_eq!(next_of_type(offerer, "call.signal").await["kind"], "answer");
    send(answerer, json!({"type": "call.signal", "call_id": "not-a-call", "kind": "ice", "payload": {}})).await;
    assert_eq!(next_of_type(answerer, "error").await["code"], "no_such_call");

    send(offerer, json!({"type": "call.hangup", "call_id": call_id})).await;
    for c in [&mut *offerer, &mut *answerer] {
        let ended = next_of_type(c, "call.ended").await;
        assert_eq!(ended["reason"], "hangup");
    }
    send(offerer, json!({"type": "call.hangup", "call_id": call_id, "id": 9})).await;
    assert_eq!(next_of_type(offerer, "error").await["ref"], 9, "ending twice is an error");

    // History and cooldown are in the store (written by whichever instance coordinated).
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let calls = store.calls_of(&ann.id, None, 10).await.unwrap();
        if calls.first().is_some_and(|c| c.ended_at.is_some()) {
            assert_eq!(calls[0].id, call_id);
            assert_eq!(calls[0].end_reason.as_deref(), Some("hangup"));
            let who_hung_up = if ann_ok["role"] == "offerer" { &ann.id } else { &ben.id };
            assert_eq!(calls[0].ended_by.as_ref(), Some(who_hung_up));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no ended call in the history: {calls:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The cooldown is written right after the history row, possibly by the other instance.
    let (s, x, y) = (store.clone(), ann.id.clone(), ben.id.clone());
    crate::support::eventually("the pair's cooldown", move || {
        let (s, x, y) = (s.clone(), x.clone(), y.clone());
        async move { s.in_cooldown(&x, &y).await.unwrap() }
    })
    .await;
    // After the call: report and block the peer; the app backend lists the report.
    send(offerer, json!({"type": "call.report", "user_id": if ann_ok["role"] == "offerer" { &ben.id } else { &ann.id }, "reason": "spam", "text": "links", "id": "r"})).await;
    assert_eq!(next_of_type(offerer, "call.reported").await["id"], "r");
    let listed = crate::support::api(a.addr, "GET", "/api/reports", None, Some(crate::support::API_KEY)).await.json();
    assert_eq!(listed["reports"][0]["reason"], "spam");
    assert_eq!(listed["reports"][0]["details"], "links");
    let mut started = 0;
    for addr in [a.addr, b.addr] {
        let h: Value = crate::support::http_get(addr, "/health", &[]).await.json();
        started += h["matchmaking"]["calls_started"].as_u64().unwrap();
    }
    assert_eq!(started, 1, "one instance coordinated the one call");
});

//! Every limit, with the status or close code it answers with.

use rendezvous::Mode;
use rendezvous_gateway::PerUserPolicy;

use crate::support::{ConnectOpts, RawClient, start, test_config};

#[tokio::test]
async fn global_cap_answers_503_with_retry_after() {
    let mut cfg = test_config();
    cfg.gateway.max_connections = 2;
    let srv = start(cfg, Mode::Serve).await;
    let _a = RawClient::user(srv.addr, "a", false).await;
    let _b = RawClient::user(srv.addr, "b", false).await;
    let refused =
        RawClient::connect(srv.addr, ConnectOpts { token: Some("dev-c"), ..Default::default() }).await.err().unwrap();
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(refused.json()["error"]["code"], "unavailable");
    assert_eq!(srv.handle.counters().rejected_at_capacity.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn per_user_cap_reject_new_closes_4009() {
    let mut cfg = test_config();
    cfg.gateway.max_connections_per_user = 2;
    cfg.gateway.per_user_policy = PerUserPolicy::RejectNew;
    let srv = start(cfg, Mode::Serve).await;
    let _a = RawClient::user(srv.addr, "same", false).await;
    let _b = RawClient::user(srv.addr, "same", false).await;
    let mut c =
        RawClient::connect(srv.addr, ConnectOpts { token: Some("dev-same"), ..Default::default() }).await.unwrap();
    let close = c.closed().await;
    assert_eq!(close.code, 4009);
    assert!(close.reason.contains("too many connections"), "{}", close.reason);
    assert_eq!(srv.handle.connection_stats().total, 2);
}

#[tokio::test]
async fn per_user_cap_close_oldest_closes_4010() {
    let mut cfg = test_config();
    cfg.gateway.max_connections_per_user = 2;
    cfg.gateway.per_user_policy = PerUserPolicy::CloseOldest;
    let srv = start(cfg, Mode::Serve).await;
    let mut oldest = RawClient::user(srv.addr, "same", false).await;
    let _b = RawClient::user(srv.addr, "same", false).await;
    let mut newest = RawClient::user(srv.addr, "same", false).await;
    let close = oldest.closed().await;
    assert_eq!(close.code, 4010);
    newest.send_text(r#"{"type":"ping","id":1}"#, false).await;
    assert_eq!(newest.json().await["type"], "pong");
}

#[tokio::test]
async fn per_ip_attempts_answer_429() {
    let mut cfg = test_config();
    cfg.gateway.connect_rate.per_second = 1;
    cfg.gateway.connect_rate.burst = 2;
    let srv = start(cfg, Mode::Serve).await;
    let _a = RawClient::user(srv.addr, "a", false).await;
    let _b = RawClient::user(srv.addr, "b", false).await;
    let refused =
        RawClient::connect(srv.addr, ConnectOpts { token: Some("dev-c"), ..Default::default() }).await.err().unwrap();
    assert_eq!(refused.status, 429);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.json()["error"]["code"], "too_many_requests");
}

#[tokio::test]
async fn message_rate_errors_then_closes_4008() {
    let mut cfg = test_config();
    cfg.gateway.message_rate.per_second = 1;
    cfg.gateway.message_rate.burst = 2;
    cfg.gateway.message_rate.violations_before_close = 3;
    let srv = start(cfg, Mode::Serve).await;
    // The database opens in real time; time-based behaviour runs on the paused clock.
    tokio::time::pause();
    let mut c = RawClient::user(srv.addr, "spammer", false).await;
    for i in 0..2 {
        c.send_text(&format!(r#"{{"type":"ping","id":{i}}}"#), false).await;
        assert_eq!(c.json().await["type"], "pong");
    }
    for _ in 0..3 {
        c.send_text(r#"{"type":"ping"}"#, false).await;
        let e = c.json().await;
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], "rate_limited");
    }
    c.send_text(r#"{"type":"ping"}"#, false).await;
    assert_eq!(c.closed().await.code, 4008);
}

#[tokio::test]
async fn oversized_message_closes_1009() {
    let srv = start(test_config(), Mode::Serve).await;
    let mut c = RawClient::user(srv.addr, "big", false).await;
    c.send_text(&"x".repeat(64 * 1024 + 1), false).await;
    assert_eq!(c.closed().await.code, 1009);
}

#[tokio::test]
async fn oversized_compressed_message_closes_1009_after_inflating() {
    let srv = start(test_config(), Mode::Serve).await;
    let mut c = RawClient::user(srv.addr, "bomb", true).await;
    // 1 MiB of zeros deflates to about a kilobyte.
    c.send_text(&"0".repeat(1 << 20), true).await;
    assert_eq!(c.closed().await.code, 1009);
}

#[tokio::test]
async fn origin_allowlist_answers_403() {
    let mut cfg = test_config();
    cfg.gateway.allowed_origins = vec!["https://app.example.com".into()];
    let srv = start(cfg, Mode::Serve).await;
    let bad = ConnectOpts {
        token: Some("dev-a"),
        headers: vec![("Origin", "https://evil.example.com")],
        ..Default::default()
    };
    let refused = RawClient::connect(srv.addr, bad).await.err().unwrap();
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"]["code"], "forbidden_origin");
    let good = ConnectOpts {
        token: Some("dev-a"),
        headers: vec![("Origin", "https://app.example.com")],
        ..Default::default()
    };
    assert!(RawClient::connect(srv.addr, good).await.is_ok());
}

#[tokio::test]
async fn missing_or_invalid_token_answers_401_and_bearer_works() {
    let srv = start(test_config(), Mode::Serve).await;
    let missing = RawClient::connect(srv.addr, ConnectOpts::default()).await.err().unwrap();
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["code"], "unauthorized");
    assert!(missing.json()["error"]["message"].as_str().unwrap().contains("missing"));
    let invalid =
        RawClient::connect(srv.addr, ConnectOpts { token: Some("nope"), ..Default::default() }).await.err().unwrap();
    assert_eq!(invalid.status, 401);
    let bearer = ConnectOpts { headers: vec![("Authorization", "Bearer dev-carol")], ..Default::default() };
    let mut c = RawClient::connect(srv.addr, bearer).await.unwrap();
    assert_eq!(c.json().await["user_id"], "carol");
}

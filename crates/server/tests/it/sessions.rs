//! The gateway authenticating through the store: tokens, revocation, guests, memory pressure.

use std::time::{Duration, Instant};

use rendezvous::Mode;

use crate::support::{
    API_KEY, ConnectOpts, RawClient, api, both_backends, config_for, eventually, http_get, start, test_config,
};

async fn user_and_token(addr: std::net::SocketAddr) -> (String, String, String) {
    let k = Some(API_KEY);
    let user = api(addr, "POST", "/api/users", Some(r#"{"display_name":"Sam"}"#), k).await.json();
    let id = user["id"].as_str().unwrap().to_owned();
    let issued = api(addr, "POST", &format!("/api/users/{id}/sessions"), Some(r#"{"user_agent":"tests"}"#), k).await;
    assert_eq!(issued.status, 201);
    let j = issued.json();
    (id, j["token"].as_str().unwrap().to_owned(), j["session"]["id"].as_str().unwrap().to_owned())
}

both_backends!(revoking_a_session_disconnects_it_within_a_second, |backend| {
    let srv = start(config_for(backend).await, Mode::Serve).await;
    let (user, token, session) = user_and_token(srv.addr).await;
    let mut c = RawClient::connect(srv.addr, ConnectOpts { token: Some(&token), ..Default::default() }).await.unwrap();
    assert_eq!(c.json().await["user_id"], user.as_str());
    // A second session of the same user must survive the revocation of the first.
    let other = api(srv.addr, "POST", &format!("/api/users/{user}/sessions"), None, Some(API_KEY)).await.json();
    let other_token = other["token"].as_str().unwrap().to_owned();
    let mut survivor =
        RawClient::connect(srv.addr, ConnectOpts { token: Some(&other_token), ..Default::default() }).await.unwrap();
    survivor.json().await;
    let revoked_at = Instant::now();
    assert_eq!(api(srv.addr, "DELETE", &format!("/api/sessions/{session}"), None, Some(API_KEY)).await.status, 204);
    let close = c.closed().await;
    assert_eq!(close.code, 4001);
    assert!(revoked_at.elapsed() < Duration::from_secs(1), "took {:?}", revoked_at.elapsed());
    let refused =
        RawClient::connect(srv.addr, ConnectOpts { token: Some(&token), ..Default::default() }).await.err().unwrap();
    assert_eq!(refused.status, 401);
    survivor.send_text(r#"{"type":"ping","id":1}"#, false).await;
    assert_eq!(survivor.json().await["type"], "pong");
    // Revoking every session closes the rest.
    let r = api(srv.addr, "DELETE", &format!("/api/users/{user}/sessions"), None, Some(API_KEY)).await;
    assert_eq!(r.json()["revoked"], 1);
    assert_eq!(survivor.closed().await.code, 4001);
});

both_backends!(tokens_are_cached_after_the_first_connect, |backend| {
    let srv = start(config_for(backend).await, Mode::Serve).await;
    let store = srv.store.clone().unwrap();
    let (_, token, _) = user_and_token(srv.addr).await;
    for _ in 0..3 {
        let mut c =
            RawClient::connect(srv.addr, ConnectOpts { token: Some(&token), ..Default::default() }).await.unwrap();
        c.json().await;
    }
    assert_eq!(store.db().statement_count("session_by_hash"), 1);
    let s = store.stats().sessions;
    assert_eq!((s.misses, s.hits), (1, 2));
    let h = http_get(srv.addr, "/health", &[]).await.json();
    assert_eq!(h["cache"]["sessions"]["hits"], 2);
    assert_eq!(
        h["db"]["pool"]["backend"],
        if backend == rendezvous_store::testing::Backend::Postgres { "postgres" } else { "sqlite" }
    );
});

#[tokio::test]
async fn guest_sign_in_gives_a_working_token() {
    let srv = start(test_config(), Mode::Serve).await;
    let r = api(srv.addr, "POST", "/api/guest", Some(r#"{"display_name":"Demo"}"#), None).await;
    assert_eq!(r.status, 201);
    let j = r.json();
    let token = j["token"].as_str().unwrap();
    let mut c = RawClient::connect(srv.addr, ConnectOpts { token: Some(token), ..Default::default() }).await.unwrap();
    assert_eq!(c.json().await["user_id"], j["user"]["id"]);
}

#[tokio::test]
async fn dev_tokens_can_be_turned_off() {
    let mut cfg = test_config();
    cfg.auth.dev_tokens = Some(false);
    let srv = start(cfg, Mode::Serve).await;
    let refused = RawClient::connect(srv.addr, ConnectOpts { token: Some("dev-alice"), ..Default::default() })
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status, 401);
}

/// What a new operator gets with only `DATABASE_URL` set: no development shortcuts.
#[tokio::test]
async fn a_database_server_without_a_mode_turns_the_development_shortcuts_off() {
    let db = rendezvous_store::testing::fresh_database(rendezvous_store::testing::Backend::Postgres).await;
    let env = [
        ("DATABASE_URL".to_owned(), db.url.clone().unwrap()),
        ("RENDEZVOUS__SERVER__HOST".to_owned(), "127.0.0.1".to_owned()),
        ("PORT".to_owned(), "0".to_owned()),
    ];
    let cfg = rendezvous::Config::load_from(env).unwrap();
    assert!(!cfg.is_development());
    let srv = start(cfg, Mode::Serve).await;
    let refused = RawClient::connect(srv.addr, ConnectOpts { token: Some("dev-mallory"), ..Default::default() })
        .await
        .err()
        .expect("a dev token must not open a connection against Postgres");
    assert_eq!(refused.status, 401);
    for _ in 0..5 {
        assert_eq!(api(srv.addr, "POST", "/api/guest", None, None).await.status, 404);
    }
}

#[tokio::test]
async fn guest_sign_in_is_limited_per_address() {
    let mut cfg = test_config();
    cfg.api.guest_per_minute = 6;
    cfg.api.guest_burst = 3;
    let srv = start(cfg, Mode::Serve).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(api(srv.addr, "POST", "/api/guest", None, None).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(codes, [201, 201, 201, 429, 429]);
    let refused = &statuses[3];
    assert_eq!(refused.json()["error"]["code"], "too_many_requests");
    assert!(refused.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
}

#[tokio::test]
async fn critical_memory_shrinks_caches_and_refuses_connections() {
    let mut cfg = test_config();
    cfg.memory.budget_bytes = 1024 * 1024; // far below any real process
    cfg.memory.check_interval_ms = 10;
    let srv = start(cfg, Mode::Serve).await;
    let addr = srv.addr;
    eventually("the guard to reach critical", || async move {
        http_get(addr, "/health", &[]).await.json()["memory"]["guard"]["level"] == "critical"
    })
    .await;
    let h = http_get(addr, "/health", &[]).await.json();
    assert_eq!(h["cache"]["users"]["capacity"], 200);
    assert_eq!(h["cache"]["sessions"]["capacity"], 300);
    let refused =
        RawClient::connect(addr, ConnectOpts { token: Some("dev-a"), ..Default::default() }).await.err().unwrap();
    assert_eq!(refused.status, 503);
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("memory"));
    assert!(refused.header("retry-after").is_some());
}

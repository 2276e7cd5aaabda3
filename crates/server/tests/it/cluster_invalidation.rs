//! Writes on one instance reach the caches and connections of another over Redis: two
//! instances share a PostgreSQL database (`TEST_DATABASE_URL`) and a Redis
//! (`TEST_REDIS_URL`, then the Redis Cluster of `TEST_REDIS_CLUSTER_URL`). Instance b
//! caches a user and a session; updating the user on a is visible on b, revoking the
//! session on a closes b's connection with 4001 and b refuses the token, and banning the
//! user on a closes the rest.

use rendezvous_store::testing::{Backend, fresh_database};

use crate::redis_cluster::{cluster_url, instance_on};
use crate::support::{API_KEY, ConnectOpts, PATIENCE, RawClient, TestServer, api, eventually};

async fn two_instances(url: &str, test: &str) -> (TestServer, TestServer) {
    let database = fresh_database(Backend::Postgres).await;
    let prefix = format!("test:{test}:{}:", uuid::Uuid::new_v4().simple());
    let a = instance_on(url, &prefix, "a", |c| c.database = database.clone()).await;
    let b = instance_on(url, &prefix, "b", |c| c.database = database.clone()).await;
    (a, b)
}

async fn display_name(srv: &TestServer, user: &str) -> String {
    let got = api(srv.addr, "GET", &format!("/api/users/{user}"), None, Some(API_KEY)).await;
    assert_eq!(got.status, 200);
    got.json()["display_name"].as_str().unwrap().to_owned()
}

async fn session(srv: &TestServer, user: &str) -> (String, String) {
    let issued = api(srv.addr, "POST", &format!("/api/users/{user}/sessions"), None, Some(API_KEY)).await;
    assert_eq!(issued.status, 201);
    let j = issued.json();
    (j["token"].as_str().unwrap().to_owned(), j["session"]["id"].as_str().unwrap().to_owned())
}

async fn connect(srv: &TestServer, token: &str) -> RawClient {
    let mut c = RawClient::connect(srv.addr, ConnectOpts { token: Some(token), ..Default::default() }).await.unwrap();
    c.json().await; // the welcome
    c
}

async fn writes_on_a_reach_b(a: &TestServer, b: &TestServer) {
    let k = Some(API_KEY);
    let user = api(a.addr, "POST", "/api/users", Some(r#"{"display_name":"Before"}"#), k).await.json();
    let user = user["id"].as_str().unwrap().to_owned();
    let (token, session_id) = session(a, &user).await;
    let (other_token, _) = session(a, &user).await;

    // b reads the user twice: the second read comes from its cache.
    assert_eq!(display_name(b, &user).await, "Before");
    assert_eq!(display_name(b, &user).await, "Before");
    let hits = b.store.as_ref().unwrap().stats().users.hits;
    assert!(hits >= 1, "b serves the user from its cache");
    let patched = api(a.addr, "PATCH", &format!("/api/users/{user}"), Some(r#"{"display_name":"After"}"#), k).await;
    assert_eq!(patched.status, 200);
    eventually("b sees the update made on a", || async { display_name(b, &user).await == "After" }).await;

    // b authenticates both tokens, caching the sessions.
    let mut revoked = connect(b, &token).await;
    let mut banned = connect(b, &other_token).await;
    assert_eq!(api(a.addr, "DELETE", &format!("/api/sessions/{session_id}"), None, k).await.status, 204);
    let close = tokio::time::timeout(PATIENCE, revoked.closed()).await.expect("b closes the revoked session");
    assert_eq!(close.code, 4001);
    let refused = RawClient::connect(b.addr, ConnectOpts { token: Some(&token), ..Default::default() }).await;
    assert_eq!(refused.err().expect("b refuses a revoked token").status, 401);
    banned.send_text(r#"{"type":"ping","id":1}"#, false).await;
    assert_eq!(crate::support::next_of_type(&mut banned, "pong").await["id"], 1, "the other session lives");

    let ban = api(a.addr, "PATCH", &format!("/api/users/{user}"), Some(r#"{"banned":true}"#), k).await;
    assert_eq!(ban.status, 200);
    let close = tokio::time::timeout(PATIENCE, banned.closed()).await.expect("b closes the banned user's session");
    assert_eq!(close.code, 4001);
    let refused = RawClient::connect(b.addr, ConnectOpts { token: Some(&other_token), ..Default::default() }).await;
    assert_eq!(refused.err().expect("b refuses a banned user's token").status, 401);
}

#[tokio::test]
async fn updates_and_revocations_on_one_instance_reach_another_over_redis() {
    let url = std::env::var("TEST_REDIS_URL")
        .expect("TEST_REDIS_URL must name a Redis server (e.g. redis://127.0.0.1:6379); this test never skips");
    let (a, b) = two_instances(&url, "invalidation").await;
    writes_on_a_reach_b(&a, &b).await;
}

#[tokio::test]
async fn updates_and_revocations_on_one_instance_reach_another_over_a_redis_cluster() {
    let Some(url) = cluster_url("updates_and_revocations_on_one_instance_reach_another_over_a_redis_cluster") else {
        return;
    };
    let (a, b) = two_instances(&url, "cluster-invalidation").await;
    writes_on_a_reach_b(&a, &b).await;
}

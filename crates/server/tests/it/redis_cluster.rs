//! Instances that share a Redis Cluster (`TEST_REDIS_CLUSTER_URL`; scripts/test starts a
//! three-master one): presence crosses instances over sharded pub/sub.

use serde_json::Value;

use crate::presence::subscribe;
use crate::support::{RawClient, TestServer, http_get, start, test_config};

/// `TEST_REDIS_CLUSTER_URL`, or `None` with a printed reason outside CI; in CI a missing
/// URL fails the test.
pub fn cluster_url(test: &str) -> Option<String> {
    match std::env::var("TEST_REDIS_CLUSTER_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("TEST_REDIS_CLUSTER_URL must name a Redis Cluster in CI (scripts/test starts one)")
        }
        _ => {
            eprintln!("skipping {test}: TEST_REDIS_CLUSTER_URL is not set (scripts/test starts a Redis Cluster)");
            None
        }
    }
}

/// An instance named `name` on the Redis at `url`, with a channel prefix of the test's own.
pub async fn instance_on(
    url: &str,
    prefix: &str,
    name: &str,
    edit: impl FnOnce(&mut rendezvous::Config),
) -> TestServer {
    let mut c = test_config();
    c.server.instance_id = name.into();
    c.presence.tick_ms = 100;
    c.presence.heartbeat_ms = 200;
    c.gateway.message_rate.per_second = 0;
    c.redis.url = Some(url.to_owned());
    c.redis.channel_prefix = prefix.to_owned();
    edit(&mut c);
    start(c, rendezvous::Mode::Serve).await
}

#[tokio::test]
async fn users_on_two_instances_see_each_other_over_a_redis_cluster() {
    let Some(url) = cluster_url("users_on_two_instances_see_each_other_over_a_redis_cluster") else { return };
    let prefix = format!("test:cluster-presence:{}:", uuid::Uuid::new_v4().simple());
    let a = instance_on(&url, &prefix, "a", |_| {}).await;
    let b = instance_on(&url, &prefix, "b", |_| {}).await;
    let mut alice = RawClient::user(a.addr, "alice", true).await;
    let mut bob = RawClient::user(b.addr, "bob", false).await;
    let mut alice_view = subscribe(&mut alice, "lobby").await;
    let mut bob_view = subscribe(&mut bob, "lobby").await;
    alice_view.until(&mut alice, "bob in alice's view", |v| v.entries.contains_key("bob")).await;
    bob_view.until(&mut bob, "alice in bob's view", |v| v.entries.contains_key("alice")).await;
    bob.send_text(r#"{"type":"presence.set","state":"away","id":"s"}"#, false).await;
    alice_view.until(&mut alice, "bob away", |v| v.state("bob") == Some("away")).await;
    let health: Value = http_get(a.addr, "/health", &[]).await.json();
    assert_eq!(health["bus"]["transport"], "redis-cluster");
    assert_eq!(health["bus"]["sharded_pubsub"], true);
    assert_eq!(health["bus"]["state"], "connected");
    assert_eq!(health["presence"]["peers"], 1, "instance a hears b");
}

//! `gateway.max_connections_per_user` across instances: with a cap of 2, a user on
//! instance a, a, then b loses the oldest connection (on a) with 4010, whichever instance
//! opened the newest. In one process (a `LocalCluster`), over Redis (`TEST_REDIS_URL`) and
//! over a Redis Cluster (`TEST_REDIS_CLUSTER_URL`). Also the Redis registry's expiry and
//! `forget_instance`, which dead-instance detection calls.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::ClientLike;
use rendezvous::{ConnectionRegistry, LocalCluster, RedisConnections, member};

use crate::redis_cluster::{cluster_url, instance_on};
use crate::support::{RawClient, TestServer, eventually, start_in, test_config};

fn capped(c: &mut rendezvous::Config) {
    c.gateway.max_connections_per_user = 2;
    c.gateway.per_user_policy = rendezvous_gateway::PerUserPolicy::CloseOldest;
}

/// Instances of the user's live connections in the registry, oldest first.
async fn instances_of(registry: &dyn ConnectionRegistry, user: &str) -> Vec<String> {
    let members = registry.members(user).await.unwrap();
    members.iter().map(|m| rendezvous::parse_member(m).unwrap().0.to_owned()).collect()
}

/// a, a, then b: the first connection on a is closed with 4010 and a reason; the
/// registry then holds the second one on a and the one on b.
async fn oldest_anywhere_is_replaced(a: &TestServer, b: &TestServer, registry: &dyn ConnectionRegistry, user: &str) {
    let mut first = RawClient::user(a.addr, user, false).await;
    let mut second = RawClient::user(a.addr, user, false).await;
    eventually("both connections on a are recorded", || async { instances_of(registry, user).await.len() == 2 }).await;
    let mut third = RawClient::user(b.addr, user, false).await;
    let close = tokio::time::timeout(crate::support::PATIENCE, first.closed()).await.expect("the oldest is closed");
    assert_eq!(close.code, 4010);
    assert!(!close.reason.is_empty(), "the close says why");
    eventually("the registry holds a's second and b's connection", || async {
        instances_of(registry, user).await == ["a", "b"]
    })
    .await;
    for c in [&mut second, &mut third] {
        c.send_text(r#"{"type":"ping","id":1}"#, false).await;
        assert_eq!(crate::support::next_of_type(c, "pong").await["id"], 1, "the two newest stay open");
    }
}

#[tokio::test]
async fn the_cap_holds_across_instances_in_one_process() {
    let cluster = LocalCluster::new(&Default::default());
    let config = |name: &str| {
        let mut c = test_config();
        c.server.instance_id = name.into();
        capped(&mut c);
        c
    };
    let a = start_in(config("a"), &cluster).await;
    let b = start_in(config("b"), &cluster).await;
    oldest_anywhere_is_replaced(&a, &b, &*cluster.connections(), "carol").await;
}

/// A registry client of the test's own on the Redis at `url`.
async fn registry_on(url: &str, prefix: &str, ttl: Duration) -> RedisConnections {
    let redis = rendezvous_bus::RedisConfig { url: Some(url.to_owned()), ..Default::default() };
    let client = rendezvous_bus::redis_builder(&redis).unwrap().build().unwrap();
    client.init().await.expect("connect to Redis");
    RedisConnections::new(client, prefix, ttl)
}

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL")
        .expect("TEST_REDIS_URL must name a Redis server (e.g. redis://127.0.0.1:6379); this test never skips")
}

fn unique_prefix(test: &str) -> String {
    format!("test:{test}:{}:", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn the_cap_holds_across_instances_over_redis() {
    let (url, prefix) = (redis_url(), unique_prefix("cap"));
    let a = instance_on(&url, &prefix, "a", capped).await;
    let b = instance_on(&url, &prefix, "b", capped).await;
    let registry = registry_on(&url, &prefix, Duration::from_secs(30)).await;
    oldest_anywhere_is_replaced(&a, &b, &registry, "dave").await;
}

#[tokio::test]
async fn the_cap_holds_across_instances_over_a_redis_cluster() {
    let Some(url) = cluster_url("the_cap_holds_across_instances_over_a_redis_cluster") else { return };
    let prefix = unique_prefix("cluster-cap");
    let a = instance_on(&url, &prefix, "a", capped).await;
    let b = instance_on(&url, &prefix, "b", capped).await;
    let registry = registry_on(&url, &prefix, Duration::from_secs(30)).await;
    oldest_anywhere_is_replaced(&a, &b, &registry, "erin").await;
}

fn new(instance: &str, conn: u64) -> (String, Option<u64>) {
    (member(instance, conn), None)
}

#[tokio::test]
async fn redis_entries_of_an_instance_that_stopped_renewing_expire() {
    let registry = registry_on(&redis_url(), &unique_prefix("expiry"), Duration::from_millis(300)).await;
    registry.record("u", vec![new("dead", 1)], 2).await.unwrap();
    assert_eq!(instances_of(&registry, "u").await, ["dead"]);
    // Redis's own clock decides; nothing renews the entry.
    eventually("the entry stops counting", || async { instances_of(&registry, "u").await.is_empty() }).await;
    let recorded = registry.record("u", vec![new("live", 1), new("live", 2)], 2).await.unwrap();
    assert!(recorded.evict.is_empty(), "an expired entry is not counted: {recorded:?}");
}

#[tokio::test]
async fn redis_renewal_keeps_the_age_and_forget_instance_drops_only_that_instance() {
    let registry = registry_on(&redis_url(), &unique_prefix("forget"), Duration::from_secs(30)).await;
    let first = registry.record("u", vec![new("a", 1)], 3).await.unwrap().stamps[0];
    registry.record("u", vec![new("b", 1)], 3).await.unwrap();
    registry.record("v", vec![new("a", 2), new("b", 2)], 3).await.unwrap();
    // A renewal passes the stamp back: a|1 stays the oldest.
    let renewed = registry.record("u", vec![(member("a", 1), Some(first))], 3).await.unwrap();
    assert_eq!(renewed.stamps, [first]);
    assert_eq!(registry.members("u").await.unwrap(), ["a|1", "b|1"]);
    let over = registry.record("u", vec![new("b", 3), new("b", 4)], 3).await.unwrap();
    assert_eq!(over.evict, ["a|1"], "the oldest anywhere goes first");
    assert_eq!(registry.forget_instance("b").await.unwrap(), 4, "b|1, b|3, b|4 and v's b|2");
    assert!(registry.members("u").await.unwrap().is_empty());
    assert_eq!(registry.members("v").await.unwrap(), ["a|2"]);
    assert_eq!(registry.forget_instance("b").await.unwrap(), 0, "nothing left to forget");
}

#[tokio::test]
async fn forgetting_an_instance_in_process_frees_its_users_places() {
    let cluster = LocalCluster::new(&Default::default());
    let registry: Arc<dyn ConnectionRegistry> = cluster.connections();
    registry.record("u", vec![new("dead", 1), new("dead", 2)], 2).await.unwrap();
    assert_eq!(registry.forget_instance("dead").await.unwrap(), 2);
    let recorded = registry.record("u", vec![new("live", 1), new("live", 2)], 2).await.unwrap();
    assert!(recorded.evict.is_empty());
}

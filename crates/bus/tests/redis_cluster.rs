//! The Redis transport on a Redis Cluster (`TEST_REDIS_CLUSTER_URL`; scripts/test starts a
//! three-master one): sharded pub/sub across slots owned by different masters,
//! unsubscribing on drop, and a gap after the subscriber's connections are killed.

mod support;

use bytes::Bytes;
use fred::prelude::{ClientInterface, ClientLike, PubsubInterface, Value};
use fred::types::client::ClientKillFilter;
use rendezvous_bus::{Received, TransportState};
use support::{
    cluster_admin, cluster_bus, cluster_nodes, cluster_url, eventually, next, next_message, node_admin, unique_prefix,
};

/// The master owning `slot`, from `CLUSTER SLOTS` (`host:port`).
async fn owner(admin: &fred::prelude::Client, slot: u16) -> String {
    let slots: Value = admin.custom(fred::types::CustomCommand::new_static("CLUSTER", None, false), vec!["SLOTS"]).await.unwrap();
    let Value::Array(ranges) = slots else { panic!("CLUSTER SLOTS reply {slots:?}") };
    for range in ranges {
        let Value::Array(r) = range else { continue };
        let (lo, hi) = (r[0].as_i64().unwrap(), r[1].as_i64().unwrap());
        if (lo..=hi).contains(&i64::from(slot)) {
            let Value::Array(master) = &r[2] else { panic!("{r:?}") };
            return format!("{}:{}", master[0].as_string().unwrap(), master[1].as_i64().unwrap());
        }
    }
    panic!("slot {slot} has no owner")
}

/// Topics whose channels (`prefix` + topic) live on three different masters.
async fn topics_on_every_master(admin: &fred::prelude::Client, prefix: &str) -> Vec<String> {
    let mut by_owner = std::collections::BTreeMap::new();
    for i in 0..200 {
        let topic = format!("t{i}");
        let slot = fred::util::redis_keyslot(format!("{prefix}{topic}").as_bytes());
        by_owner.entry(owner(admin, slot).await).or_insert(topic);
        if by_owner.len() == 3 {
            break;
        }
    }
    assert_eq!(by_owner.len(), 3, "a three-master cluster: {by_owner:?}");
    by_owner.into_values().collect()
}

/// Subscribers of the shard channel on the master owning it.
async fn shardnumsub(admin: &fred::prelude::Client, channel: &str) -> i64 {
    let reply: Vec<Value> = admin.pubsub_shardnumsub(channel).await.unwrap();
    reply.get(1).and_then(Value::as_i64).unwrap_or_else(|| panic!("PUBSUB SHARDNUMSUB reply {reply:?}"))
}

#[tokio::test]
async fn two_buses_talk_over_sharded_pubsub_on_every_master() {
    let Some(url) = cluster_url("two_buses_talk_over_sharded_pubsub_on_every_master") else { return };
    let prefix = unique_prefix("cluster-pubsub");
    let admin = cluster_admin(&url).await;
    let topics = topics_on_every_master(&admin, &prefix).await;
    let a = cluster_bus(&url, "a", &prefix, 64).await;
    let b = cluster_bus(&url, "b", &prefix, 64).await;
    let health = a.health();
    assert_eq!((health.transport, health.sharded_pubsub, health.state), ("redis-cluster", true, TransportState::Connected));
    let mut subs = Vec::new();
    for topic in &topics {
        subs.push(b.subscribe(topic).await.unwrap());
        let channel = format!("{prefix}{topic}");
        assert_eq!(shardnumsub(&admin, &channel).await, 1, "SSUBSCRIBE reached {channel}'s master before subscribe returned");
    }
    for (topic, sub) in topics.iter().zip(&mut subs) {
        a.publish(topic, Bytes::from(format!("hello {topic}"))).await.unwrap();
        assert_eq!(next_message(sub).await, ("a".into(), format!("hello {topic}").into_bytes()));
    }
    // Both directions, and a subscriber hears its own instance too.
    let mut own = a.subscribe(&topics[0]).await.unwrap();
    b.publish(&topics[0], Bytes::from_static(b"back")).await.unwrap();
    assert_eq!(next_message(&mut own).await, ("b".into(), b"back".to_vec()));
    assert_eq!(next_message(&mut subs[0]).await, ("b".into(), b"back".to_vec()));
    let _ = admin.quit().await;
}

#[tokio::test]
async fn dropping_the_last_subscriber_unsubscribes_the_shard_channel() {
    let Some(url) = cluster_url("dropping_the_last_subscriber_unsubscribes_the_shard_channel") else { return };
    let prefix = unique_prefix("cluster-unsubscribe");
    let admin = cluster_admin(&url).await;
    let topics = topics_on_every_master(&admin, &prefix).await;
    let bus = cluster_bus(&url, "a", &prefix, 8).await;
    let subs: Vec<_> = futures_subscribe(&bus, &topics).await;
    for topic in &topics {
        assert_eq!(shardnumsub(&admin, &format!("{prefix}{topic}")).await, 1);
    }
    drop(subs);
    for topic in &topics {
        let channel = format!("{prefix}{topic}");
        eventually("the shard channel has no subscriber", || async { shardnumsub(&admin, &channel).await == 0 }).await;
    }
    let mut again = bus.subscribe(&topics[1]).await.unwrap();
    bus.publish(&topics[1], Bytes::from_static(b"again")).await.unwrap();
    assert_eq!(next_message(&mut again).await, ("a".into(), b"again".to_vec()));
    let _ = admin.quit().await;
}

async fn futures_subscribe(bus: &rendezvous_bus::Bus, topics: &[String]) -> Vec<rendezvous_bus::Subscription> {
    let mut subs = Vec::new();
    for topic in topics {
        subs.push(bus.subscribe(topic).await.unwrap());
    }
    subs
}

/// The `CLIENT LIST` ids of the connections named `name` on one node.
async fn client_ids(node: &fred::prelude::Client, name: &str) -> Vec<String> {
    let list: String = node.client_list::<_, ()>(None, None).await.unwrap();
    let wanted = format!("name={name}");
    list.lines()
        .filter(|line| line.split(' ').any(|field| field == wanted))
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn killed_subscriber_connections_resubscribe_and_report_a_gap() {
    let Some(url) = cluster_url("killed_subscriber_connections_resubscribe_and_report_a_gap") else { return };
    let prefix = unique_prefix("cluster-kill");
    let admin = cluster_admin(&url).await;
    let topics = topics_on_every_master(&admin, &prefix).await;
    let a = cluster_bus(&url, "a", &prefix, 64).await;
    let b = cluster_bus(&url, "b", &prefix, 64).await;
    let mut subs = futures_subscribe(&a, &topics).await;
    let name = format!("{prefix}bus-subscriber");
    let mut killed = 0;
    for node in cluster_nodes(&url) {
        let node = node_admin(&node).await;
        // `b`'s subscriber has the same name (same prefix): both are killed, both recover.
        for id in client_ids(&node, &name).await {
            let n: i64 = node.client_kill(vec![ClientKillFilter::ID(id)]).await.unwrap();
            killed += n;
        }
        let _ = node.quit().await;
    }
    assert_eq!(killed, 6, "each bus's subscriber has a named connection on each of the three masters");
    for sub in &mut subs {
        assert_eq!(next(sub).await, Received::Gap { missed: None }, "every subscription hears of the gap");
    }
    eventually("the bus is connected again", || async { a.health().state == TransportState::Connected }).await;
    // The gap comes after the resubscription, so these are delivered.
    for (topic, sub) in topics.iter().zip(&mut subs) {
        b.publish(topic, Bytes::from_static(b"after")).await.unwrap();
        // A second gap is allowed (one per reconnected node); a message must follow.
        loop {
            match next(sub).await {
                Received::Gap { .. } => continue,
                Received::Message(m) => {
                    assert_eq!((&*m.origin, &m.payload[..]), ("b", &b"after"[..]));
                    break;
                }
            }
        }
    }
    for topic in &topics {
        assert_eq!(shardnumsub(&admin, &format!("{prefix}{topic}")).await, 1, "resubscribed once, on the owner");
    }
    let _ = admin.quit().await;
}

//! What only the Redis transport does: server-side subscriptions, reconnects, its own
//! receive buffer, start-up errors. Needs `TEST_REDIS_URL`.

mod support;

use bytes::Bytes;
use fred::prelude::{ClientInterface, ClientLike, PubsubInterface, Value};
use fred::types::CustomCommand;
use fred::types::client::ClientKillFilter;
use rendezvous_bus::{Bus, BusConfig, BusError, Received, RedisConfig, TransportState};
use support::{Proxy, admin, eventually, next, next_message, redis_bus, redis_config, redis_url, unique_prefix};

/// Subscribers of `channel` on the server.
async fn numsub(admin: &fred::prelude::Client, channel: &str) -> i64 {
    let reply: Vec<Value> = admin.pubsub_numsub(channel).await.unwrap();
    reply.get(1).and_then(Value::as_i64).unwrap_or_else(|| panic!("PUBSUB NUMSUB reply {reply:?}"))
}

/// The `CLIENT LIST` ids of the connections named `name`.
async fn client_ids(admin: &fred::prelude::Client, name: &str) -> Vec<String> {
    let list: String = admin.client_list::<_, ()>(None, None).await.unwrap();
    let wanted = format!("name={name}");
    list.lines()
        .filter(|line| line.split(' ').any(|field| field == wanted))
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn unsubscribes_on_redis_when_the_last_local_subscriber_drops() {
    let prefix = unique_prefix("unsubscribe");
    let channel = format!("{prefix}t");
    let admin = admin().await;
    let bus = redis_bus("a", &prefix, 8).await;
    let first = bus.subscribe("t").await.unwrap();
    assert_eq!(numsub(&admin, &channel).await, 1, "subscribe resolves after the SUBSCRIBE is confirmed");
    let second = bus.subscribe("t").await.unwrap();
    assert_eq!(numsub(&admin, &channel).await, 1, "one connection per process, however many subscribers");
    drop(first);
    drop(second);
    eventually("the channel has no subscriber on Redis", || async { numsub(&admin, &channel).await == 0 }).await;
    let mut again = bus.subscribe("t").await.unwrap();
    assert_eq!(numsub(&admin, &channel).await, 1);
    bus.publish("t", Bytes::from_static(b"back")).await.unwrap();
    assert_eq!(next_message(&mut again).await, ("a".into(), b"back".to_vec()));
}

#[tokio::test]
async fn a_killed_subscriber_connection_resubscribes_and_reports_a_gap() {
    let prefix = unique_prefix("kill");
    let admin = admin().await;
    let a = redis_bus("a", &prefix, 8).await;
    let b = redis_bus("b", &prefix, 8).await;
    let mut sub = a.subscribe("t").await.unwrap();
    let mut other = a.subscribe("u").await.unwrap();
    // `b`'s subscriber has the same name (same prefix): both are killed, both recover.
    let name = format!("{prefix}bus-subscriber");
    let old = client_ids(&admin, &name).await;
    assert_eq!(old.len(), 2, "each bus names its subscriber connection");
    for id in &old {
        let killed: i64 = admin.client_kill(vec![ClientKillFilter::ID(id.clone())]).await.unwrap();
        assert_eq!(killed, 1);
    }
    for s in [&mut sub, &mut other] {
        assert_eq!(next(s).await, Received::Gap { missed: None }, "every subscription hears of the gap");
    }
    // The gap comes after the resubscription, so this is delivered.
    b.publish("t", Bytes::from_static(b"after")).await.unwrap();
    assert_eq!(next_message(&mut sub).await, ("b".into(), b"after".to_vec()));
    assert_eq!(a.health().state, TransportState::Connected);
    let now = client_ids(&admin, &name).await;
    assert!(!now.is_empty() && now.iter().all(|id| !old.contains(id)), "new connections: {old:?} -> {now:?}");
}

#[tokio::test]
async fn an_outage_degrades_the_bus_fails_publishes_and_ends_in_a_gap() {
    let prefix = unique_prefix("outage");
    let proxy = Proxy::start().await;
    let bus = Bus::redis("a", &redis_config(proxy.url(), &prefix), &BusConfig { capacity: 8 }).await.unwrap();
    let direct = redis_bus("b", &prefix, 8).await;
    let mut sub = bus.subscribe("t").await.unwrap();
    proxy.down();
    eventually("health shows the outage", || async { bus.health().state == TransportState::Degraded }).await;
    match bus.publish("t", Bytes::from_static(b"lost")).await {
        Err(BusError::Unavailable { transport: "redis", .. }) => {}
        other => panic!("publishing during an outage: {other:?}"),
    }
    // Published while `bus` is away: Redis drops it for that subscriber.
    direct.publish("t", Bytes::from_static(b"missed")).await.unwrap();
    proxy.restore();
    assert_eq!(next(&mut sub).await, Received::Gap { missed: None });
    eventually("health recovers", || async { bus.health().state == TransportState::Connected }).await;
    direct.publish("t", Bytes::from_static(b"after")).await.unwrap();
    bus.publish("t", Bytes::from_static(b"own")).await.unwrap();
    assert_eq!(next_message(&mut sub).await, ("b".into(), b"after".to_vec()));
    assert_eq!(next_message(&mut sub).await, ("a".into(), b"own".to_vec()));
}

#[tokio::test]
async fn an_overflowing_receive_buffer_is_a_gap_for_every_subscription() {
    const BURST: i64 = 2000;
    let prefix = unique_prefix("receive-buffer");
    let cfg = RedisConfig { receive_buffer: 16, ..redis_config(redis_url(), &prefix) };
    let bus = Bus::redis("a", &cfg, &BusConfig { capacity: 100_000 }).await.unwrap();
    let mut sub = bus.subscribe("t").await.unwrap();
    let mut quiet = bus.subscribe("quiet").await.unwrap();
    // One script publishes the whole burst, so it reaches the subscriber connection
    // faster than one task can fan it out through a 16-message buffer.
    let envelope = Value::Bytes(Bytes::from_static(b"\x01\x00\x01zp"));
    let script = "for i = 1, tonumber(ARGV[2]) do redis.call('PUBLISH', KEYS[1], ARGV[1]) end";
    let args = vec![Value::from(script), 1.into(), format!("{prefix}t").into(), envelope, BURST.into()];
    let _: Value = admin().await.custom(CustomCommand::new_static("EVAL", None, false), args).await.unwrap();
    assert_eq!(next(&mut quiet).await, Received::Gap { missed: None }, "a topic that lost nothing is told too");
    let mut delivered = 0;
    let mut gaps = 0;
    loop {
        match next(&mut sub).await {
            Received::Message(m) => {
                assert_eq!((&*m.origin, &m.payload[..]), ("z", &b"p"[..]));
                delivered += 1;
            }
            Received::Gap { missed } => {
                assert_eq!(missed, None);
                gaps += 1;
            }
        }
        let lost = bus.health().lagged as i64;
        if gaps > 0 && delivered + lost == BURST {
            break;
        }
    }
    assert!(bus.health().lagged > 0);
}

#[tokio::test]
async fn an_unreachable_server_at_start_is_an_error_naming_the_key() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let cfg = redis_config("redis://user:secret@127.0.0.1:1".into(), "unused:");
    let err = Bus::redis("a", &cfg, &BusConfig::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BusError::Connect { .. }), "{err:?}");
    assert!(text.contains("redis.url") && text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("secret"), "the password is not shown: {text}");
}

#[tokio::test]
async fn malformed_messages_are_dropped() {
    let prefix = unique_prefix("malformed");
    let bus = redis_bus("a", &prefix, 8).await;
    let mut sub = bus.subscribe("t").await.unwrap();
    let admin = admin().await;
    let _: i64 = admin.publish(format!("{prefix}t"), "not an envelope").await.unwrap();
    bus.publish("t", Bytes::from_static(b"fine")).await.unwrap();
    assert_eq!(next_message(&mut sub).await, ("a".into(), b"fine".to_vec()));
    let _ = admin.quit().await;
}

#[tokio::test]
async fn dropping_the_last_handle_ends_subscriptions() {
    let prefix = unique_prefix("close");
    let bus = redis_bus("a", &prefix, 8).await;
    let mut sub = bus.subscribe("t").await.unwrap();
    drop(bus);
    let end = tokio::time::timeout(support::DEADLINE, sub.recv()).await.expect("the subscription ends");
    assert_eq!(end, None);
}

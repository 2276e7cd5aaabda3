//! The bus's promises, checked on both transports. Redis needs `TEST_REDIS_URL`.

mod support;

use bytes::Bytes;
use rendezvous_bus::{Bus, BusConfig, BusError, Received, TransportState};
use support::{next, next_message, redis_bus, unique_prefix};

#[derive(Clone, Copy, Debug)]
enum Kind {
    InProcess,
    Redis,
}

/// Two instances on one bus: `a` and `b`. On Redis each has its own connections.
async fn pair(kind: Kind, test: &str, capacity: usize) -> (Bus, Bus) {
    match kind {
        Kind::InProcess => {
            let a = Bus::in_process("a", &BusConfig { capacity });
            let b = a.as_instance("b");
            (a, b)
        }
        Kind::Redis => {
            let prefix = unique_prefix(test);
            (redis_bus("a", &prefix, capacity).await, redis_bus("b", &prefix, capacity).await)
        }
    }
}

macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn in_process() {
                super::$name(super::Kind::InProcess).await
            }
            #[tokio::test]
            async fn redis() {
                super::$name(super::Kind::Redis).await
            }
        }
    )*};
}

on_both_transports!(
    delivers_with_origin_to_every_subscriber,
    a_lagging_subscriber_is_told_how_much_it_lost,
    a_topic_is_dropped_with_its_last_subscriber,
    empty_topics_are_refused,
    health_names_the_transport,
);

async fn delivers_with_origin_to_every_subscriber(kind: Kind) {
    let (a, b) = pair(kind, "origin", 8).await;
    let mut sub_a = a.subscribe("t").await.unwrap();
    let mut sub_b = b.subscribe("t").await.unwrap();
    let mut other = a.subscribe("other").await.unwrap();
    b.publish("t", Bytes::from_static(b"hi")).await.unwrap();
    a.publish("other", Bytes::from_static(b"elsewhere")).await.unwrap();
    a.publish("t", Bytes::from_static(b"\0binary\xff")).await.unwrap();
    for sub in [&mut sub_a, &mut sub_b] {
        assert_eq!(next_message(sub).await, ("b".into(), b"hi".to_vec()));
        assert_eq!(next_message(sub).await, ("a".into(), b"\0binary\xff".to_vec()), "`other` is not heard on `t`");
    }
    assert_eq!(next_message(&mut other).await, ("a".into(), b"elsewhere".to_vec()));
    // Counters belong to the transport, which `a` and `b` share in-process.
    let published_by_a_transport = match kind {
        Kind::InProcess => 3,
        Kind::Redis => 2,
    };
    assert_eq!(a.health().published, published_by_a_transport);
}

async fn a_lagging_subscriber_is_told_how_much_it_lost(kind: Kind) {
    let (a, b) = pair(kind, "lag", 2).await;
    let mut sub = a.subscribe("t").await.unwrap();
    let mut marker = a.subscribe("marker").await.unwrap();
    for i in 0..5u8 {
        b.publish("t", Bytes::from(vec![i])).await.unwrap();
    }
    // Published after the five, so once it arrives all five were handed to `sub`'s buffer.
    b.publish("marker", Bytes::new()).await.unwrap();
    next_message(&mut marker).await;
    assert_eq!(next(&mut sub).await, Received::Gap { missed: Some(3) });
    assert_eq!(next_message(&mut sub).await, ("b".into(), vec![3]));
    assert_eq!(a.health().lagged, 3);
}

async fn a_topic_is_dropped_with_its_last_subscriber(kind: Kind) {
    let (a, b) = pair(kind, "drop", 8).await;
    let first = a.subscribe("t").await.unwrap();
    let second = a.subscribe("t").await.unwrap();
    assert_eq!(a.health().topics, 1);
    drop(first);
    assert_eq!(a.health().topics, 1, "one subscriber is left");
    drop(second);
    assert_eq!(a.health().topics, 0);
    let mut again = a.subscribe("t").await.unwrap();
    b.publish("t", Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(next_message(&mut again).await, ("b".into(), b"x".to_vec()), "a new subscription works");
}

async fn empty_topics_are_refused(kind: Kind) {
    let (a, _) = pair(kind, "empty", 8).await;
    assert!(matches!(a.subscribe("").await, Err(BusError::InvalidTopic(_))));
}

async fn health_names_the_transport(kind: Kind) {
    let (a, _) = pair(kind, "health", 8).await;
    let h = a.health();
    let expected = match kind {
        Kind::InProcess => "in_process",
        Kind::Redis => "redis",
    };
    assert_eq!((h.transport, h.state, h.instance.as_str()), (expected, TransportState::Connected, "a"));
}

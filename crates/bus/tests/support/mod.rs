//! Shared helpers: buses on either transport, a Redis admin connection, deadlines.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config};
use rendezvous_bus::{Bus, BusConfig, Received, RedisConfig, Subscription};

/// Longest wait for anything that should happen promptly; a failure, not a sleep.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// `TEST_REDIS_URL`; these tests never skip silently.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL")
        .expect("TEST_REDIS_URL must name a Redis server (e.g. redis://127.0.0.1:6379); Redis tests never skip")
}

/// A channel prefix no other test (or test run) uses.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("test:{test}:{}:{nanos}:{}:", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn redis_config(url: String, prefix: &str) -> RedisConfig {
    RedisConfig { url: Some(url), channel_prefix: prefix.to_owned(), ..Default::default() }
}

/// A bus with its own connections, as a separate instance would have.
pub async fn redis_bus(instance: &str, prefix: &str, capacity: usize) -> Bus {
    Bus::redis(instance, &redis_config(redis_url(), prefix), &BusConfig { capacity })
        .await
        .expect("connect to TEST_REDIS_URL")
}

/// A plain connection for inspecting and disturbing the server.
pub async fn admin() -> fred::prelude::Client {
    let client = Builder::from_config(Config::from_url(&redis_url()).unwrap()).build().unwrap();
    client.init().await.expect("connect to TEST_REDIS_URL");
    client
}

/// The next item, failing the test if none comes within [`DEADLINE`].
pub async fn next(sub: &mut Subscription) -> Received {
    tokio::time::timeout(DEADLINE, sub.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing arrived on `{}` within {DEADLINE:?}", sub.topic()))
        .expect("the bus closed")
}

/// The next message's (origin, payload), failing on a gap.
pub async fn next_message(sub: &mut Subscription) -> (String, Vec<u8>) {
    match next(sub).await {
        Received::Message(m) => (m.origin.to_string(), m.payload.to_vec()),
        gap => panic!("expected a message, got {gap:?}"),
    }
}

/// Polls `check` until it holds, failing after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

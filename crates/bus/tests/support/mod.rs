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

/// A TCP proxy in front of Redis that the test can cut (dropping every connection and
/// refusing new ones) and restore: an outage without touching the shared server.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let url = redis_url();
        let host = url.trim_start_matches("redis://").rsplit('@').next().unwrap().split('/').next().unwrap();
        let target: std::net::SocketAddr = host
            .replace("localhost", "127.0.0.1")
            .parse()
            .unwrap_or_else(|_| panic!("TEST_REDIS_URL must be redis://IP:port for the proxy tests, got {url}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (flag, cuts) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes as soon as it opens
                }
                let mut stop = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    /// `redis://` through the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `TEST_REDIS_CLUSTER_URL` (`redis-cluster://…`), or `None` with a printed reason when it
/// is unset outside CI. In CI (`CI` set) a missing URL fails the test.
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

/// The `host:port` of every node named in a `redis-cluster://` URL.
pub fn cluster_nodes(url: &str) -> Vec<String> {
    let rest = url.trim_start_matches("redis-cluster://");
    let rest = rest.rsplit('@').next().unwrap();
    let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut nodes = vec![first.trim_end_matches('/').to_owned()];
    nodes.extend(query.split('&').filter_map(|kv| kv.strip_prefix("node=")).map(str::to_owned));
    nodes
}

/// A plain connection to one node of the cluster.
pub async fn node_admin(node: &str) -> fred::prelude::Client {
    let client = Builder::from_config(Config::from_url_centralized(&format!("redis://{node}")).unwrap()).build().unwrap();
    client.init().await.expect("connect to a cluster node");
    client
}

/// A cluster client for inspecting the cluster.
pub async fn cluster_admin(url: &str) -> fred::prelude::Client {
    let client = Builder::from_config(Config::from_url(url).unwrap()).build().unwrap();
    client.init().await.expect("connect to TEST_REDIS_CLUSTER_URL");
    client
}

/// A bus on the cluster, as a separate instance would have.
pub async fn cluster_bus(url: &str, instance: &str, prefix: &str, capacity: usize) -> Bus {
    Bus::redis(instance, &redis_config(url.to_owned(), prefix), &BusConfig { capacity })
        .await
        .expect("connect to TEST_REDIS_CLUSTER_URL")
}

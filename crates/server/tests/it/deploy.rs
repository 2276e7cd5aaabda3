//! The deploy files at work: three `rendezvous` processes (one Postgres schema, one Redis
//! channel prefix, so they act as one server) behind a real nginx running
//! `deploy/nginx/rendezvous.conf`. Clients connect from distinct loopback addresses, as
//! distinct users behind nginx would.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};

use crate::support::nginx::{Nginx, loopback, ws_from};
use crate::support::{BinaryServer, RawClient, binary_env, eventually, http_get};

const INSTANCES: [&str; 3] = ["deploy-1", "deploy-2", "deploy-3"];

/// Three instances and nginx in front of them.
struct Cluster {
    servers: Vec<BinaryServer>,
    addrs: Vec<SocketAddr>,
    nginx: Nginx,
    /// The database every instance uses (a fresh Postgres schema).
    db: rendezvous_store::DatabaseConfig,
}

impl Cluster {
    /// Starts the instances with `extra` settings on top of the common ones, then nginx.
    async fn start(extra: &[(&str, &str)]) -> Cluster {
        let db = rendezvous_store::testing::fresh_database(rendezvous_store::testing::Backend::Postgres).await;
        let redis = std::env::var("TEST_REDIS_URL")
            .expect("TEST_REDIS_URL must name a Redis server (e.g. redis://127.0.0.1:6379); this test never skips");
        let prefix = format!("test:deploy:{}:", uuid::Uuid::new_v4().simple());
        let url = db.url.clone().unwrap();
        let mut servers = Vec::new();
        for name in INSTANCES {
            let mut env = vec![
                // Development tokens against Postgres need the explicit mode.
                ("RENDEZVOUS__SERVER__MODE", "development"),
                ("RENDEZVOUS__SERVER__INSTANCE_ID", name),
                ("DATABASE_URL", url.as_str()),
                ("RENDEZVOUS__DATABASE__MAX_CONNECTIONS", "3"),
                ("REDIS_URL", redis.as_str()),
                ("RENDEZVOUS__REDIS__CHANNEL_PREFIX", prefix.as_str()),
                // nginx reaches the instances from 127.0.0.1: believe its X-Forwarded-For.
                ("RENDEZVOUS__GATEWAY__TRUSTED_PROXIES", "[\"127.0.0.1\"]"),
                ("RENDEZVOUS__GATEWAY__MAX_CONNECTIONS", "500"),
                ("RENDEZVOUS__GATEWAY__PENDING__MAX_SOCKETS", "500"),
                ("RENDEZVOUS__PRESENCE__TICK_MS", "100"),
                ("RENDEZVOUS__PRESENCE__HEARTBEAT_MS", "200"),
                ("RENDEZVOUS__PRESENCE__INSTANCE_TIMEOUT_MS", "1000"),
            ];
            env.extend_from_slice(extra);
            servers.push(BinaryServer::spawn_with_nofile(4096, binary_env(&env)));
        }
        let mut addrs = Vec::new();
        for server in &mut servers {
            addrs.push(server.addr().await);
        }
        let nginx = Nginx::start(&addrs).await;
        Cluster { servers, addrs, nginx, db }
    }
}

/// The instance named in a client's `welcome`.
async fn welcome(c: &mut RawClient) -> String {
    let w = c.json().await;
    assert_eq!(w["type"], "welcome", "{w}");
    w["instance"].as_str().unwrap().to_owned()
}

/// Connects `user` from `source` through nginx; panics on a refusal.
async fn join(source: IpAddr, nginx: SocketAddr, user: &str) -> (RawClient, String) {
    let mut c = ws_from(source, nginx, user, false)
        .await
        .unwrap_or_else(|r| panic!("{user} from {source} refused: {} {}", r.status, String::from_utf8_lossy(&r.body)));
    let instance = welcome(&mut c).await;
    (c, instance)
}

/// Connects one user from each of 127.0.0.2..=`last` and returns where each went (and
/// the clients, still open); every instance must get some.
async fn spread(nginx: SocketAddr, last: u8) -> (BTreeMap<u8, String>, BTreeMap<u8, RawClient>) {
    let (mut home, mut clients) = (BTreeMap::new(), BTreeMap::new());
    for n in 2..=last {
        let (c, instance) = join(loopback(n), nginx, &format!("u{n}")).await;
        home.insert(n, instance);
        clients.insert(n, c);
    }
    for name in INSTANCES {
        assert!(home.values().any(|i| i == name), "nginx sent no address to {name}: {home:?}");
    }
    (home, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_through_nginx_keep_permessage_deflate() {
    // Every message compressed, so the first answer shows whether the server's compressed
    // frames reach the client intact.
    let cluster = Cluster::start(&[("RENDEZVOUS__GATEWAY__COMPRESSION__THRESHOLD_BYTES", "0")]).await;
    let mut c = ws_from(loopback(2), cluster.nginx.addr, "alice", true).await.unwrap();
    let extensions = c.extensions.clone().unwrap_or_default();
    assert!(extensions.starts_with("permessage-deflate"), "negotiated through nginx: {extensions:?}");
    assert!(INSTANCES.contains(&welcome(&mut c).await.as_str()));
    // Compressed client frames pass nginx untouched and are understood...
    let status = "x".repeat(140);
    c.send_text(&json!({"type": "presence.set", "status": status, "id": 1}).to_string(), true).await;
    c.send_text(&json!({"type": "presence.subscribe", "topic": "lobby", "id": 2}).to_string(), true).await;
    // ...and the server's compressed frames (RSV1 set; a message is sent compressed when
    // that makes it smaller) reach the client intact: alice's entry, with her status.
    let mut frames = Vec::new();
    loop {
        let (head, payload) = c.raw_frame_header().await;
        let text = if head & 0x40 != 0 { c.inflate(&payload) } else { payload.to_vec() };
        let m: Value = serde_json::from_slice(&text).unwrap();
        frames.push((head & 0x40 != 0, m["type"].clone()));
        if head & 0x40 != 0 && m.to_string().contains(&status) {
            assert!(m["type"].as_str().unwrap().starts_with("presence."), "{m}");
            break;
        }
        assert!(frames.len() < 10, "no compressed presence message with the status: {frames:?}");
    }
    // Plain HTTP goes through the same upstream.
    let ready = http_get(cluster.nginx.addr, "/ready", &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    let health = http_get(cluster.nginx.addr, "/health", &[]).await.json();
    assert_eq!(health["bus"]["transport"], "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_nginx_have_their_own_connect_budgets() {
    // 20 attempts in a burst, refilled at one per second. Were nginx's address taken for
    // the client's, everyone behind nginx would share one such budget per instance.
    let cluster = Cluster::start(&[
        ("RENDEZVOUS__GATEWAY__CONNECT_RATE__PER_SECOND", "1"),
        ("RENDEZVOUS__GATEWAY__CONNECT_RATE__BURST", "20"),
    ])
    .await;
    let nginx = cluster.nginx.addr;
    let (_, home) = join(loopback(2), nginx, "a-0").await;
    let mut refused = None;
    for i in 1..60 {
        match ws_from(loopback(2), nginx, &format!("a-{i}"), false).await {
            Ok(mut c) => assert_eq!(welcome(&mut c).await, home, "one address, one instance"),
            Err(r) => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("127.0.0.2's budget never ran out");
    assert_eq!(refused.status, 429, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.json()["error"]["code"], "too_many_requests");
    assert!(refused.header("retry-after").is_some());

    // Another address that nginx sends to the same instance has its whole budget: 20
    // connections in a row, where a shared budget would allow about one per second.
    let mut other = None;
    for n in 3..=60 {
        let (_, instance) = join(loopback(n), nginx, &format!("b{n}-0")).await;
        if instance == home {
            other = Some(n);
            break;
        }
    }
    let n = other.unwrap_or_else(|| panic!("no address in 127.0.0.3-60 went to {home}"));
    for i in 1..20 {
        let (_, instance) = join(loopback(n), nginx, &format!("b{n}-{i}")).await;
        assert_eq!(instance, home);
    }
    // And 127.0.0.2 is still refused: its budget, not the instance's, ran out.
    let again = ws_from(loopback(2), nginx, "a-last", false).await.err().expect("still limited");
    assert_eq!(again.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_a_draining_instance_are_avoided() {
    // A long drain keeps the draining instance up (and answering 503) while the test runs.
    let mut cluster = Cluster::start(&[
        ("RENDEZVOUS__GATEWAY__DRAIN__WINDOW_MS", "30000"),
        ("RENDEZVOUS__GATEWAY__DRAIN__GRACE_MS", "40000"),
    ])
    .await;
    let nginx = cluster.nginx.addr;
    let (home, _held) = spread(nginx, 40).await;
    let (_, again) = join(loopback(2), nginx, "u2-again").await;
    assert_eq!(again, home[&2], "the same address goes to the same instance");

    cluster.servers[0].sigkill();
    for (&n, _) in home.iter().filter(|(_, i)| *i == INSTANCES[0]) {
        let (_, now) = join(loopback(n), nginx, &format!("u{n}-after-kill")).await;
        assert_ne!(now, INSTANCES[0]);
    }

    cluster.servers[1].sigterm();
    let draining = cluster.addrs[1];
    eventually("deploy-2 draining", || async move { http_get(draining, "/ready", &[]).await.status == 503 }).await;
    for (&n, _) in home.iter().filter(|(_, i)| *i == INSTANCES[1]) {
        let (_, now) = join(loopback(n), nginx, &format!("u{n}-during-drain")).await;
        assert_eq!(now, INSTANCES[2], "127.0.0.{n} avoids the dead and the draining instance");
    }
    // It was draining, not gone, all along: nginx avoided it because of its 503s.
    assert_eq!(http_get(draining, "/ready", &[]).await.status, 503);
    assert_eq!(http_get(draining, "/health", &[]).await.json()["status"], "draining");
    // Addresses whose instance is up stay where they were.
    for (&n, _) in home.iter().filter(|(_, i)| *i == INSTANCES[2]).take(3) {
        assert_eq!(join(loopback(n), nginx, &format!("u{n}-still")).await.1, INSTANCES[2]);
    }
}

/// `rendezvous --healthcheck` with the instance's own configuration, as a container
/// health check runs it: its exit status and what it printed.
fn healthcheck(port: u16) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rendezvous"))
        .arg("--healthcheck")
        .env_clear()
        .env("PORT", port.to_string())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_mode_follows_ready() {
    let mut server = BinaryServer::spawn_with_nofile(
        4096,
        binary_env(&[
            ("RENDEZVOUS__GATEWAY__MAX_CONNECTIONS", "100"),
            ("RENDEZVOUS__GATEWAY__PENDING__MAX_SOCKETS", "100"),
            ("RENDEZVOUS__GATEWAY__DRAIN__WINDOW_MS", "30000"),
            ("RENDEZVOUS__GATEWAY__DRAIN__GRACE_MS", "40000"),
        ]),
    );
    let addr = server.addr().await;
    assert_eq!(healthcheck(addr.port()), (true, String::new()));
    // A held connection keeps the draining instance up.
    let _held = RawClient::user(addr, "alice", false).await;
    server.sigterm();
    eventually("draining", || async move { http_get(addr, "/ready", &[]).await.status == 503 }).await;
    let (ok, said) = healthcheck(addr.port());
    assert!(!ok && said.contains("answered 503"), "{said}");
    server.sigkill();
    let (ok, said) = healthcheck(addr.port());
    assert!(!ok && said.contains("cannot connect"), "{said}");
}

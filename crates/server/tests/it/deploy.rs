//! The deploy files at work: three `rendezvous` processes (one Postgres schema, one Redis
//! channel prefix, so they act as one server) behind a real nginx running
//! `deploy/nginx/rendezvous.conf`. Clients connect from distinct loopback addresses, as
//! distinct users behind nginx would.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};

use crate::presence::subscribe;
use crate::support::nginx::{Nginx, loopback, ws_from};
use crate::support::{BinaryServer, RawClient, binary_env, eventually, http_get, next_of_type};

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
                // Generous: a loaded machine must not make a live instance look dead.
                ("RENDEZVOUS__PRESENCE__INSTANCE_TIMEOUT_MS", "5000"),
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

async fn send(c: &mut RawClient, v: Value) {
    c.send_text(&v.to_string(), false).await;
}

/// A store on the cluster's database, for real users (invites need profiles) and for
/// reading the call history the instances wrote.
async fn store_of(cluster: &Cluster) -> std::sync::Arc<rendezvous_store::Store> {
    let bus = rendezvous_bus::Bus::in_process("deploy-test", &Default::default());
    rendezvous_store::Store::open(&cluster.db, Default::default(), bus).await.unwrap()
}

/// `from` invites `to` (connected as `to_client`), who accepts: the call's id.
async fn call(from: &mut RawClient, to: &mut RawClient, to_id: &str) -> String {
    // The invitee's instance records where they are just after its welcome, so until then
    // the invite is answered `user_unavailable`; invite again until it is sent.
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    loop {
        send(from, json!({"type": "invite.send", "user_id": to_id, "id": "inv"})).await;
        let reply = loop {
            let m = from.json().await;
            if m["id"] == "inv" || m["ref"] == "inv" {
                break m;
            }
        };
        if reply["type"] == "invite.sent" {
            break;
        }
        assert!(
            reply["code"] == "user_unavailable" && tokio::time::Instant::now() < deadline,
            "the invite was never sent: {reply}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let received = next_of_type(to, "invite.received").await;
    send(to, json!({"type": "invite.accept", "invite_id": received["invite_id"]})).await;
    let call_id = next_of_type(from, "match.confirmed").await["call_id"].as_str().unwrap().to_owned();
    assert_eq!(next_of_type(to, "match.confirmed").await["call_id"], call_id.as_str());
    call_id
}

/// `(ended_at, end_reason)` of the call's row once it has ended, read from Postgres
/// itself (the store's query cache would keep showing the open row).
async fn ended_call(cluster: &Cluster, call_id: &str) -> (i64, Option<String>) {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(cluster.db.url.as_deref().unwrap()).await.unwrap();
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let row: Option<(Option<i64>, Option<String>)> =
            sqlx::query_as("SELECT ended_at, end_reason FROM calls WHERE id = $1")
                .bind(call_id)
                .fetch_optional(&mut db)
                .await
                .unwrap();
        if let Some((Some(ended_at), reason)) = row {
            return (ended_at, reason);
        }
        assert!(tokio::time::Instant::now() < deadline, "call {call_id} has no ended row: {row:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_moves_clients_and_keeps_their_presence() {
    let mut cluster = Cluster::start(&[
        ("RENDEZVOUS__GATEWAY__DRAIN__WINDOW_MS", "1000"),
        ("RENDEZVOUS__GATEWAY__DRAIN__GRACE_MS", "5000"),
        ("RENDEZVOUS__PRESENCE__OFFLINE_GRACE_MS", "10000"),
    ])
    .await;
    let nginx = cluster.nginx.addr;
    let store = store_of(&cluster).await;
    let (home, mut clients) = spread(nginx, 16).await;
    let restarted = INSTANCES[1];
    let moved: Vec<u8> = home.iter().filter(|(_, i)| *i == restarted).map(|(&n, _)| n).collect();
    let staying: Vec<u8> = home.iter().filter(|(_, i)| *i != restarted).map(|(&n, _)| n).collect();

    // A watcher elsewhere; everyone in the lobby, the restarted instance's users with a status.
    let mut watcher = clients.remove(&staying[0]).unwrap();
    let mut view = subscribe(&mut watcher, "lobby").await;
    for (&n, c) in clients.iter_mut() {
        subscribe(c, "lobby").await;
        if moved.contains(&n) {
            send(c, json!({"type": "presence.set", "status": format!("from {n}")})).await;
        }
    }
    view.until(&mut watcher, "everyone listed, with statuses", |v| {
        home.keys().all(|n| v.entries.contains_key(&format!("u{n}")))
            && moved.iter().all(|n| v.status(&format!("u{n}")) == Some(format!("from {n}").as_str()))
    })
    .await;

    // A call with both sides on the restarted instance (its coordinator).
    let (ann, ben) = (
        store.create_user(serde_json::from_str(r#"{"display_name":"Ann"}"#).unwrap()).await.unwrap(),
        store.create_user(serde_json::from_str(r#"{"display_name":"Ben"}"#).unwrap()).await.unwrap(),
    );
    let mut ann_c = join(loopback(moved[0]), nginx, &ann.id).await;
    let mut ben_c = join(loopback(moved[0]), nginx, &ben.id).await;
    assert_eq!((ann_c.1.as_str(), ben_c.1.as_str()), (restarted, restarted));
    let local_call = call(&mut ann_c.0, &mut ben_c.0, &ben.id).await;

    cluster.servers[1].sigterm();
    for &n in &moved {
        let c = clients.get_mut(&n).unwrap();
        let notice = next_of_type(c, "server.draining").await;
        assert!(notice["reconnect_after_ms"].as_u64().unwrap() <= 1000, "{notice}");
        assert_eq!(c.closed().await.code, 1001);
    }
    // They reconnect through nginx, land on the others and say who they are again.
    for &n in &moved {
        let (mut c, instance) = join(loopback(n), nginx, &format!("u{n}")).await;
        assert_ne!(instance, restarted, "127.0.0.{n} came back to the instance that is going away");
        let mut own = subscribe(&mut c, "lobby").await;
        send(&mut c, json!({"type": "presence.set", "status": format!("from {n}")})).await;
        own.until(&mut c, "the whole lobby again", |v| home.keys().all(|m| v.entries.contains_key(&format!("u{m}"))))
            .await;
        clients.insert(n, c);
    }
    view.until(&mut watcher, "the moved users with their statuses", |v| {
        moved.iter().all(|n| v.status(&format!("u{n}")) == Some(format!("from {n}").as_str()))
    })
    .await;
    assert!(view.left.is_empty(), "nobody left during the restart: {:?}", view.left);

    // The call its instance coordinated ended with it, and its history row is complete.
    let (_, reason) = ended_call(&cluster, &local_call).await;
    assert!(matches!(reason.as_deref(), Some("shutdown" | "disconnect")), "{reason:?}");
    cluster.servers.remove(1).exited(crate::support::PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_instances_survives_a_rolling_restart() {
    let mut cluster = Cluster::start(&[
        ("RENDEZVOUS__GATEWAY__DRAIN__WINDOW_MS", "1000"),
        ("RENDEZVOUS__GATEWAY__DRAIN__GRACE_MS", "5000"),
        ("RENDEZVOUS__MATCHMAKING__RECONNECT_GRACE_MS", "10000"),
    ])
    .await;
    let nginx = cluster.nginx.addr;
    let store = store_of(&cluster).await;
    let (home, _held) = spread(nginx, 16).await;
    let restarted = INSTANCES[1];
    let address_of = |name: &str| home.iter().find(|(_, i)| *i == name).map(|(&n, _)| loopback(n)).unwrap();
    let ann = store.create_user(serde_json::from_str(r#"{"display_name":"Ann"}"#).unwrap()).await.unwrap();
    let ben = store.create_user(serde_json::from_str(r#"{"display_name":"Ben"}"#).unwrap()).await.unwrap();
    // Ann invites, so her instance (which stays) coordinates; Ben is on the one that restarts.
    let (mut ann_c, ann_at) = join(address_of(INSTANCES[0]), nginx, &ann.id).await;
    let (mut ben_c, ben_at) = join(address_of(restarted), nginx, &ben.id).await;
    assert_eq!((ann_at.as_str(), ben_at.as_str()), (INSTANCES[0], restarted));
    let call_id = call(&mut ann_c, &mut ben_c, &ben.id).await;

    cluster.servers[1].sigterm();
    next_of_type(&mut ben_c, "server.draining").await;
    assert_eq!(ben_c.closed().await.code, 1001);
    assert_eq!(next_of_type(&mut ann_c, "call.peer_reconnecting").await["call_id"], call_id.as_str());
    let (mut ben_c, ben_at) = join(address_of(restarted), nginx, &ben.id).await;
    assert_ne!(ben_at, restarted);
    assert_eq!(next_of_type(&mut ben_c, "call.resumed").await["call_id"], call_id.as_str());
    assert_eq!(next_of_type(&mut ann_c, "call.peer_reconnected").await["call_id"], call_id.as_str());
    // The call goes on: signaling reaches Ben on his new instance, then Ann hangs up.
    send(
        &mut ann_c,
        json!({"type": "call.signal", "call_id": call_id, "kind": "offer", "payload": {"sdp": "v=0 after"}}),
    )
    .await;
    assert_eq!(next_of_type(&mut ben_c, "call.signal").await["payload"]["sdp"], "v=0 after");
    send(&mut ann_c, json!({"type": "call.hangup", "call_id": call_id})).await;
    for c in [&mut ann_c, &mut ben_c] {
        assert_eq!(next_of_type(c, "call.ended").await["reason"], "hangup");
    }
    assert_eq!(ended_call(&cluster, &call_id).await.1.as_deref(), Some("hangup"));
    cluster.servers.remove(1).exited(crate::support::PATIENCE).await;
}

//! Presence through the real server: real WebSocket clients on two instances of one
//! in-process cluster.

use std::collections::BTreeMap;

use rendezvous::LocalCluster;
use serde_json::{Value, json};

use crate::support::{RawClient, next_of_type, start_in, test_config};

/// Two instances on one bus, with a short tick and grace so the test runs quickly.
async fn two_instances(grace_ms: u64) -> (crate::support::TestServer, crate::support::TestServer) {
    let cluster = LocalCluster::new(&Default::default());
    let config = |name: &str| {
        let mut c = test_config();
        c.server.instance_id = name.into();
        c.presence.tick_ms = 100;
        c.presence.offline_grace_ms = grace_ms;
        c.presence.heartbeat_ms = 200;
        c.presence.instance_timeout_ms = 1_000;
        c.gateway.message_rate.per_second = 0;
        c
    };
    (start_in(config("a"), &cluster).await, start_in(config("b"), &cluster).await)
}

/// A client's view of one topic, kept with the documented algorithm.
#[derive(Default, Debug)]
pub(crate) struct View {
    seq: u64,
    pub(crate) entries: BTreeMap<String, Value>,
    /// Every id that ever left, in order.
    pub(crate) left: Vec<String>,
}

impl View {
    fn apply(&mut self, m: &Value) {
        match m["type"].as_str() {
            Some("presence.snapshot") => {
                self.seq = m["seq"].as_u64().unwrap();
                self.entries = m["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (e["id"].as_str().unwrap().to_owned(), e.clone()))
                    .collect();
            }
            Some("presence.diff") => {
                assert_eq!(m["seq"].as_u64().unwrap(), self.seq + 1, "a gap in {m}");
                self.seq += 1;
                for id in m["leaves"].as_array().unwrap() {
                    let id = id.as_str().unwrap().to_owned();
                    self.entries.remove(&id);
                    self.left.push(id);
                }
                for e in m["joins"].as_array().unwrap().iter().chain(m["updates"].as_array().unwrap()) {
                    self.entries.insert(e["id"].as_str().unwrap().to_owned(), e.clone());
                }
            }
            _ => {}
        }
    }

    /// Applies presence messages until `done` holds for the view.
    pub(crate) async fn until(&mut self, c: &mut RawClient, what: &str, done: impl Fn(&View) -> bool) {
        tokio::time::timeout(crate::support::PATIENCE, async {
            while !done(self) {
                let m = c.json().await;
                self.apply(&m);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}; view: {self:?}"));
    }

    pub(crate) fn state(&self, id: &str) -> Option<&str> {
        self.entries.get(id).and_then(|e| e["state"].as_str())
    }

    /// The user's status text.
    pub(crate) fn status(&self, id: &str) -> Option<&str> {
        self.entries.get(id).and_then(|e| e["status"].as_str())
    }
}

pub(crate) async fn subscribe(c: &mut RawClient, topic: &str) -> View {
    c.send_text(&json!({"type": "presence.subscribe", "topic": topic, "id": 1}).to_string(), false).await;
    assert_eq!(next_of_type(c, "presence.ack").await["id"], 1);
    let mut view = View::default();
    view.apply(&next_of_type(c, "presence.snapshot").await);
    view
}

#[tokio::test]
async fn users_on_two_instances_see_each_other_and_their_changes() {
    let (a, b) = two_instances(5_000).await;
    let mut alice = RawClient::user(a.addr, "alice", true).await;
    let mut bob = RawClient::user(b.addr, "bob", false).await;
    let mut alice_view = subscribe(&mut alice, "lobby").await;
    let mut bob_view = subscribe(&mut bob, "lobby").await;
    alice_view.until(&mut alice, "bob in alice's view", |v| v.entries.contains_key("bob")).await;
    bob_view.until(&mut bob, "alice in bob's view", |v| v.entries.contains_key("alice")).await;
    assert_eq!(bob_view.state("alice"), Some("online"));

    bob.send_text(r#"{"type":"presence.set","state":"away","status":"brb","id":"s"}"#, false).await;
    assert_eq!(next_of_type(&mut bob, "presence.ack").await["id"], "s");
    alice_view.until(&mut alice, "bob away", |v| v.state("bob") == Some("away")).await;
    assert_eq!(alice_view.entries["bob"]["status"], "brb");

    bob.send_text(r#"{"type":"presence.set","status":"\u0007"}"#, false).await;
    assert_eq!(next_of_type(&mut bob, "error").await["code"], "bad_status");
    bob.send_text(r#"{"type":"presence.subscribe","topic":"Bad Topic"}"#, false).await;
    assert_eq!(next_of_type(&mut bob, "error").await["code"], "bad_topic");

    let health: Value = crate::support::http_get(a.addr, "/health", &[]).await.json();
    assert_eq!(health["presence"]["subscribers"], 1);
    assert_eq!(health["presence"]["peers"], 1, "instance a hears b");
    assert_eq!(health["bus"]["transport"], "in_process");
    assert_eq!(health["bus"]["state"], "connected");
}

#[tokio::test]
async fn a_mass_reconnect_within_the_grace_shows_no_leave_storm() {
    let (a, b) = two_instances(3_000).await;
    let mut watcher = RawClient::user(b.addr, "watcher", false).await;
    let mut view = subscribe(&mut watcher, "lobby").await;
    const N: usize = 40;
    let mut clients = Vec::new();
    for i in 0..N {
        let mut c = RawClient::user(a.addr, &format!("u{i}"), false).await;
        subscribe(&mut c, "lobby").await;
        clients.push(c);
    }
    view.until(&mut watcher, "every user listed", |v| v.entries.len() == N + 1).await;
    let before = view.seq;
    // Instance a's clients all drop and come back (as after a restart elsewhere).
    for c in clients.iter_mut() {
        c.send_close(1001).await;
    }
    drop(clients);
    let mut back = Vec::new();
    for i in 0..N {
        let mut c = RawClient::user(a.addr, &format!("u{i}"), false).await;
        let fresh = subscribe(&mut c, "lobby").await;
        assert!(fresh.entries.contains_key("watcher"), "a reconnecting client gets a fresh snapshot");
        back.push(c);
    }
    // Let the grace period run out (the thing under test is time-based), then add a
    // sentinel: diffs arrive in order, so once the watcher sees it, any leave produced
    // when the grace ran out would already have arrived.
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    let mut sentinel = RawClient::user(a.addr, "sentinel", false).await;
    subscribe(&mut sentinel, "lobby").await;
    view.until(&mut watcher, "the sentinel", |v| v.entries.contains_key("sentinel")).await;
    assert!(view.left.is_empty(), "leaves were shown: {:?}", view.left);
    assert_eq!(view.entries.len(), N + 2);
    assert!(view.seq > before);
}

#[tokio::test]
async fn a_closed_connection_leaves_after_the_grace() {
    let (a, b) = two_instances(300).await;
    let mut watcher = RawClient::user(b.addr, "watcher", false).await;
    let mut view = subscribe(&mut watcher, "lobby").await;
    let mut leaver = RawClient::user(a.addr, "leaver", false).await;
    subscribe(&mut leaver, "lobby").await;
    view.until(&mut watcher, "leaver listed", |v| v.entries.contains_key("leaver")).await;
    leaver.send_close(1000).await;
    view.until(&mut watcher, "leaver gone", |v| !v.entries.contains_key("leaver")).await;
    assert_eq!(view.left, ["leaver"]);
}

#[tokio::test]
async fn a_new_block_removes_each_from_the_others_view_and_names_follow_the_store() {
    let (a, b) = two_instances(5_000).await;
    let store = a.store.clone().unwrap();
    let new = |name: &str| serde_json::from_str(&json!({ "display_name": name }).to_string()).unwrap();
    let (ann, ben) = (store.create_user(new("Ann")).await.unwrap(), store.create_user(new("Ben")).await.unwrap());
    let mut ann_c = RawClient::user(a.addr, &ann.id, false).await;
    let mut ben_c = RawClient::user(a.addr, &ben.id, false).await;
    let mut ann_view = subscribe(&mut ann_c, "lobby").await;
    subscribe(&mut ben_c, "lobby").await;
    ann_view
        .until(&mut ann_c, "Ben listed", |v| v.entries.get(&ben.id).is_some_and(|e| e["display_name"] == "Ben"))
        .await;

    store.update_user(&ben.id, serde_json::from_str(r#"{"display_name":"Benjamin"}"#).unwrap()).await.unwrap();
    ann_view
        .until(&mut ann_c, "the new name", |v| v.entries.get(&ben.id).is_some_and(|e| e["display_name"] == "Benjamin"))
        .await;

    store.block(&ann.id, &ben.id).await.unwrap();
    ann_view.until(&mut ann_c, "Ben hidden", |v| !v.entries.contains_key(&ben.id)).await;
    // A watcher on the other instance still sees both.
    let mut watcher = RawClient::user(b.addr, "watcher", false).await;
    let mut w = subscribe(&mut watcher, "lobby").await;
    w.until(&mut watcher, "both listed", |v| v.entries.contains_key(&ann.id) && v.entries.contains_key(&ben.id)).await;
}

/// Two instances that share nothing in-process: the bus is Redis (`TEST_REDIS_URL`),
/// with a channel prefix of this test's own.
#[tokio::test]
async fn users_on_two_instances_see_each_other_over_redis() {
    let url = std::env::var("TEST_REDIS_URL")
        .expect("TEST_REDIS_URL must name a Redis server (e.g. redis://127.0.0.1:6379); this test never skips");
    let prefix = format!("test:presence:{}:", uuid::Uuid::new_v4().simple());
    let config = |name: &str| {
        let mut c = test_config();
        c.server.instance_id = name.into();
        c.presence.tick_ms = 100;
        c.presence.heartbeat_ms = 200;
        c.gateway.message_rate.per_second = 0;
        c.redis.url = Some(url.clone());
        c.redis.channel_prefix = prefix.clone();
        c
    };
    let a = crate::support::start(config("a"), rendezvous::Mode::Serve).await;
    let b = crate::support::start(config("b"), rendezvous::Mode::Serve).await;
    let mut alice = RawClient::user(a.addr, "alice", true).await;
    let mut bob = RawClient::user(b.addr, "bob", false).await;
    let mut alice_view = subscribe(&mut alice, "lobby").await;
    subscribe(&mut bob, "lobby").await;
    alice_view.until(&mut alice, "bob in alice's view", |v| v.entries.contains_key("bob")).await;
    let health: Value = crate::support::http_get(a.addr, "/health", &[]).await.json();
    assert_eq!(health["bus"]["transport"], "redis");
    assert_eq!(health["bus"]["state"], "connected");
    assert_eq!(health["presence"]["peers"], 1, "instance a hears b");
}

#[tokio::test]
async fn an_unreachable_redis_stops_the_start_naming_the_key() {
    let mut c = test_config();
    c.redis.url = Some("redis://127.0.0.1:1".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = rendezvous::Server::new(c, rendezvous::Mode::Serve)
        .run(listener, rendezvous::Shutdown::new(), |_| panic!("a server without its bus must not become ready"));
    let err = tokio::time::timeout(crate::support::PATIENCE, run).await.expect("fails promptly").unwrap_err();
    assert!(format!("{err:#}").contains("redis.url"), "{err:#}");
}

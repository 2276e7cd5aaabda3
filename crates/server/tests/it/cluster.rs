//! Three real `rendezvous` processes sharing a real Postgres (a schema of the test's own)
//! and a real Redis (a key and channel prefix of the test's own): presence, matching,
//! signaling and invites across instances; an instance killed with SIGKILL; Redis
//! restarted under running instances.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rendezvous_store::testing::{Backend, fresh_database};
use serde_json::{Value, json};

use crate::support::{API_KEY, BinaryServer, RawClient, api, binary_env, http_get, next_of_type};

/// Liveness timeouts for these tests; the defaults are 10 s, and the mechanism is the same.
const INSTANCE_TIMEOUT_MS: &str = "3000";

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL")
        .expect("TEST_REDIS_URL must name a Redis server (e.g. redis://127.0.0.1:6379); this test never skips")
}

/// One test's shared services: its database (own schema) and Redis prefix.
struct Setup {
    database_url: String,
    redis_url: String,
    prefix: String,
}

impl Setup {
    async fn new(redis_url: String) -> Self {
        let db = fresh_database(Backend::Postgres).await;
        let prefix = format!("test:cluster:{}:", uuid::Uuid::new_v4().simple());
        Setup { database_url: db.url.expect("a Postgres URL"), redis_url, prefix }
    }

    /// Starts instance `name` and waits until it serves.
    async fn node(&self, name: &str) -> Node {
        let extra = [
            ("RENDEZVOUS__SERVER__MODE", "development"),
            ("RENDEZVOUS__SERVER__INSTANCE_ID", name),
            ("RENDEZVOUS__DATABASE__URL", self.database_url.as_str()),
            ("RENDEZVOUS__REDIS__URL", self.redis_url.as_str()),
            ("RENDEZVOUS__REDIS__CHANNEL_PREFIX", self.prefix.as_str()),
            ("RENDEZVOUS__REDIS__RECONNECT_MAX_MS", "300"),
            ("RENDEZVOUS__API__KEY", API_KEY),
            ("RENDEZVOUS__CLUSTER__HEARTBEAT_INTERVAL_MS", "200"),
            ("RENDEZVOUS__CLUSTER__INSTANCE_TIMEOUT_MS", INSTANCE_TIMEOUT_MS),
            ("RENDEZVOUS__PRESENCE__TICK_MS", "100"),
            ("RENDEZVOUS__PRESENCE__HEARTBEAT_MS", "200"),
            ("RENDEZVOUS__PRESENCE__INSTANCE_TIMEOUT_MS", INSTANCE_TIMEOUT_MS),
            ("RENDEZVOUS__PRESENCE__OFFLINE_GRACE_MS", "0"),
            ("RENDEZVOUS__MATCHMAKING__MATCH_INTERVAL_MS", "50"),
            ("RENDEZVOUS__MATCHMAKING__SWEEP_INTERVAL_MS", "200"),
            ("RENDEZVOUS__MATCHMAKING__RECONNECT_GRACE_MS", "500"),
            ("RENDEZVOUS__GATEWAY__MESSAGE_RATE__PER_SECOND", "0"),
            ("RENDEZVOUS__GATEWAY__MAX_CONNECTIONS", "1000"),
            ("RENDEZVOUS__GATEWAY__PENDING__MAX_SOCKETS", "256"),
        ];
        let mut bin = BinaryServer::spawn_with_nofile(4096, binary_env(&extra));
        let addr = bin.addr().await;
        Node { bin, addr }
    }
}

struct Node {
    bin: BinaryServer,
    addr: SocketAddr,
}

impl Node {
    async fn health(&self) -> Value {
        http_get(self.addr, "/health", &[]).await.json()
    }
}

async fn send(c: &mut RawClient, v: Value) {
    c.send_text(&v.to_string(), false).await;
}

async fn create_user(addr: SocketAddr, name: &str) -> String {
    let body = json!({ "display_name": name }).to_string();
    let created = api(addr, "POST", "/api/users", Some(&body), Some(API_KEY)).await.json();
    created["id"].as_str().expect("a user id").to_owned()
}

/// Polls `check` every 50 ms until it holds, failing after `limit`.
async fn within<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(limit: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids a client sees in a presence topic, kept from snapshots and diffs.
#[derive(Default, Debug)]
struct Listed(std::collections::BTreeSet<String>);

impl Listed {
    fn apply(&mut self, m: &Value) {
        let id = |e: &Value| e["id"].as_str().unwrap_or_default().to_owned();
        match m["type"].as_str() {
            Some("presence.snapshot") => self.0 = m["entries"].as_array().unwrap().iter().map(id).collect(),
            Some("presence.diff") => {
                for l in m["leaves"].as_array().unwrap() {
                    self.0.remove(l.as_str().unwrap());
                }
                for e in m["joins"].as_array().unwrap() {
                    self.0.insert(id(e));
                }
            }
            _ => {}
        }
    }

    /// Reads `c`'s messages until `done` holds, for at most `limit`.
    async fn until(&mut self, c: &mut RawClient, limit: Duration, what: &str, done: impl Fn(&Self) -> bool) {
        tokio::time::timeout(limit, async {
            while !done(self) {
                let m = c.json().await;
                self.apply(&m);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not within {limit:?}: {what}; listed: {self:?}"));
    }
}

async fn subscribe(c: &mut RawClient) -> Listed {
    send(c, json!({"type": "presence.subscribe", "topic": "lobby", "id": "p"})).await;
    let mut listed = Listed::default();
    listed.apply(&next_of_type(c, "presence.snapshot").await);
    listed
}

/// Both join the queue (same topic), accept the one proposal and are in a call; returns
/// the call id and which of the two offers.
async fn match_up(a: &mut RawClient, b: &mut RawClient, topic: &str) -> (String, bool) {
    send(a, json!({"type": "match.join", "id": "j", "prefs": {"topic": topic}})).await;
    assert_eq!(next_of_type(a, "match.queued").await["id"], "j");
    send(b, json!({"type": "match.join", "prefs": {"topic": topic}})).await;
    let pa = next_of_type(a, "match.proposed").await;
    let pb = next_of_type(b, "match.proposed").await;
    assert_eq!(pa["proposal_id"], pb["proposal_id"], "one proposal, both told");
    send(a, json!({"type": "match.accept", "proposal_id": pa["proposal_id"]})).await;
    send(b, json!({"type": "match.accept", "proposal_id": pb["proposal_id"]})).await;
    let ca = next_of_type(a, "match.confirmed").await;
    let cb = next_of_type(b, "match.confirmed").await;
    assert_eq!(ca["call_id"], cb["call_id"]);
    (ca["call_id"].as_str().unwrap().to_owned(), ca["role"] == "offerer")
}

async fn calls_of(addr: SocketAddr, user: &str) -> Vec<Value> {
    let r = api(addr, "GET", &format!("/api/users/{user}/calls"), None, Some(API_KEY)).await.json();
    r["calls"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_act_as_one_server() {
    let setup = Setup::new(redis_url()).await;
    let nodes = [setup.node("a").await, setup.node("b").await, setup.node("c").await];
    let ann = create_user(nodes[0].addr, "Ann").await;
    let ben = create_user(nodes[0].addr, "Ben").await;
    let mut ann_c = RawClient::user(nodes[0].addr, &ann, false).await;
    let mut ben_c = RawClient::user(nodes[1].addr, &ben, false).await;
    let mut eve_c = RawClient::user(nodes[2].addr, "eve", false).await;

    // Presence across instances.
    let mut eve_sees = subscribe(&mut eve_c).await;
    subscribe(&mut ann_c).await;
    subscribe(&mut ben_c).await;
    eve_sees
        .until(&mut eve_c, Duration::from_secs(10), "ann (a) and ben (b) listed on c", |l| {
            l.0.contains(&ann) && l.0.contains(&ben)
        })
        .await;

    // Matched once although three matchers scan the shared queue.
    let (call_id, ann_offers) = match_up(&mut ann_c, &mut ben_c, "t1").await;
    let (offerer, answerer) = if ann_offers { (&mut ann_c, &mut ben_c) } else { (&mut ben_c, &mut ann_c) };
    send(offerer, json!({"type": "call.signal", "call_id": call_id, "kind": "offer", "payload": {"sdp": "o"}})).await;
    for i in 0..3 {
        send(offerer, json!({"type": "call.signal", "call_id": call_id, "kind": "ice", "payload": {"c": i}})).await;
    }
    assert_eq!(next_of_type(answerer, "call.signal").await["payload"]["sdp"], "o");
    for i in 0..3 {
        assert_eq!(next_of_type(answerer, "call.signal").await["payload"]["c"], i, "in order across instances");
    }
    send(answerer, json!({"type": "call.signal", "call_id": call_id, "kind": "answer", "payload": {"sdp": "a"}})).await;
    assert_eq!(next_of_type(offerer, "call.signal").await["kind"], "answer");
    send(offerer, json!({"type": "call.hangup", "call_id": call_id})).await;
    assert_eq!(next_of_type(offerer, "call.ended").await["reason"], "hangup");
    assert_eq!(next_of_type(answerer, "call.ended").await["reason"], "hangup");

    // An invite crosses instances (cooldowns do not apply to invites).
    send(&mut ann_c, json!({"type": "invite.send", "user_id": ben, "id": "i"})).await;
    let sent = next_of_type(&mut ann_c, "invite.sent").await;
    let received = next_of_type(&mut ben_c, "invite.received").await;
    assert_eq!(sent["invite_id"], received["invite_id"]);
    send(&mut ben_c, json!({"type": "invite.accept", "invite_id": received["invite_id"]})).await;
    let call2 = next_of_type(&mut ann_c, "match.confirmed").await;
    assert_eq!(next_of_type(&mut ben_c, "match.confirmed").await["call_id"], call2["call_id"]);
    send(&mut ben_c, json!({"type": "call.hangup", "call_id": call2["call_id"]})).await;
    assert_eq!(next_of_type(&mut ann_c, "call.ended").await["reason"], "hangup");

    let mut proposals = 0;
    for n in &nodes {
        let h = n.health().await;
        assert_eq!(h["matchmaking"]["queue_backend"], "redis");
        assert_eq!(h["matchmaking"]["queue_reachable"], true);
        proposals += h["matchmaking"]["proposals"]["made"].as_u64().unwrap();
    }
    assert_eq!(proposals, 1, "one proposal in the whole cluster");
    let metrics = String::from_utf8(http_get(nodes[0].addr, "/metrics", &[]).await.body).unwrap();
    assert!(metrics.contains("rendezvous_match_queue_reachable{backend=\"redis\"} 1"), "{metrics}");
    let history = calls_of(nodes[2].addr, &ann).await;
    assert_eq!(history.len(), 2, "both calls have history rows: {history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_cleaned_up_after_by_the_survivors() {
    let setup = Setup::new(redis_url()).await;
    let mut nodes = [setup.node("a").await, setup.node("b").await, setup.node("c").await];
    let ann = create_user(nodes[1].addr, "Ann").await;
    let ben = create_user(nodes[1].addr, "Ben").await;
    let dan = create_user(nodes[1].addr, "Dan").await;
    let mut ann_c = RawClient::user(nodes[0].addr, &ann, false).await;
    let mut dan_c = RawClient::user(nodes[0].addr, &dan, false).await;
    let mut ben_c = RawClient::user(nodes[1].addr, &ben, false).await;
    let mut eve_c = RawClient::user(nodes[2].addr, "eve", false).await;
    let mut eve_sees = subscribe(&mut eve_c).await;
    subscribe(&mut ann_c).await;
    subscribe(&mut dan_c).await;
    eve_sees
        .until(&mut eve_c, Duration::from_secs(10), "ann and dan listed", |l| l.0.contains(&ann) && l.0.contains(&dan))
        .await;
    let (call_id, _) = match_up(&mut ann_c, &mut ben_c, "t2").await;
    // Dan waits alone in the queue (nobody else wants this topic).
    send(&mut dan_c, json!({"type": "match.join", "prefs": {"topic": "lonely"}})).await;
    next_of_type(&mut dan_c, "match.queued").await;
    within(Duration::from_secs(5), "dan counted in the shared queue", || async {
        nodes[1].health().await["matchmaking"]["queue_length"] == 1
    })
    .await;

    nodes[0].bin.sigkill();
    let killed = tokio::time::Instant::now();
    let limit = Duration::from_secs(10);
    // Ben's call ends with a reason: `instance_lost` if the dead instance coordinated it,
    // else `disconnect` once Ann's reconnect grace runs out.
    let ended = tokio::time::timeout(limit, next_of_type(&mut ben_c, "call.ended"))
        .await
        .expect("ben's call ended within 10 s of the kill");
    assert_eq!(ended["call_id"], call_id.as_str());
    assert!(["instance_lost", "disconnect"].contains(&ended["reason"].as_str().unwrap()), "{ended}");
    eve_sees
        .until(&mut eve_c, limit.saturating_sub(killed.elapsed()), "ann and dan offline for eve", |l| {
            !l.0.contains(&ann) && !l.0.contains(&dan)
        })
        .await;
    within(limit.saturating_sub(killed.elapsed()), "dan out of the shared queue", || async {
        nodes[1].health().await["matchmaking"]["queue_length"] == 0
    })
    .await;
    within(Duration::from_secs(5), "the call's history row", || async {
        calls_of(nodes[2].addr, &ben).await.first().is_some_and(|c| {
            c["id"] == call_id.as_str()
                && ["instance_lost", "disconnect"].contains(&c["end_reason"].as_str().unwrap_or(""))
        })
    })
    .await;
    // Ben is free again: he can join and be matched with someone new on a survivor.
    let cat = create_user(nodes[2].addr, "Cat").await;
    let mut cat_c = RawClient::user(nodes[2].addr, &cat, false).await;
    match_up(&mut ben_c, &mut cat_c, "t3").await;
    for n in &mut nodes[1..] {
        assert!(n.bin.running(), "survivors keep running");
    }
}

/// A `redis-server` of the test's own on a free port (nothing saved), so it can be
/// stopped and started again without touching anyone else's.
struct ThrowawayRedis {
    port: u16,
    child: Option<Child>,
}

impl ThrowawayRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = ThrowawayRedis { port, child: None };
        r.resume();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_ride_out_a_redis_restart() {
    let mut redis = ThrowawayRedis::start();
    let setup = Setup::new(redis.url()).await;
    let mut nodes = [setup.node("a").await, setup.node("b").await, setup.node("c").await];
    let ann = create_user(nodes[0].addr, "Ann").await;
    let ben = create_user(nodes[0].addr, "Ben").await;
    let mut ann_c = RawClient::user(nodes[0].addr, &ann, false).await;
    send(&mut ann_c, json!({"type": "match.join", "id": "q", "prefs": {"topic": "after"}})).await;
    assert_eq!(next_of_type(&mut ann_c, "match.queued").await["id"], "q");

    // Redis restarts empty (nothing saved): every key and subscription is gone.
    redis.stop();
    within(Duration::from_secs(10), "the bus and the queue reported down", || async {
        let h = nodes[0].health().await;
        h["bus"]["state"] == "degraded" && h["matchmaking"]["queue_reachable"] == false
    })
    .await;
    redis.resume();
    for n in &nodes {
        within(Duration::from_secs(10), "the bus reconnected and resubscribed", || async {
            let h = n.health().await;
            h["bus"]["state"] == "connected" && h["matchmaking"]["queue_reachable"] == true
        })
        .await;
    }
    // Ann was told "queued" before the restart: she is still in line and gets matched.
    let mut ben_c = RawClient::user(nodes[1].addr, &ben, false).await;
    send(&mut ben_c, json!({"type": "match.join", "prefs": {"topic": "after"}})).await;
    let to_ann = tokio::time::timeout(Duration::from_secs(10), next_of_type(&mut ann_c, "match.proposed"))
        .await
        .expect("ann, queued before the restart, is matched after it");
    assert_eq!(to_ann["peer"]["display_name"], "Ben");
    for n in &mut nodes {
        assert!(n.bin.running(), "no instance died");
    }
}

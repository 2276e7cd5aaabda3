//! Heartbeats, slow consumers and the graceful drain.

use std::time::Duration;

use rendezvous::Mode;
use rendezvous_gateway::ws::reader::{Event, Message};
use rendezvous_gateway::{
    AuthError, Authenticator, Connection, Context, GatewayConfig, Handler, Identity, SharedMessage,
};
use tokio::time::Instant;

use crate::support::{ConnectOpts, PATIENCE, RawClient, http_get, start, start_gateway, test_config};

#[tokio::test]
async fn silent_peer_is_closed_4002_after_the_heartbeat_timeout() {
    let mut cfg = test_config();
    cfg.gateway.heartbeat.interval_ms = 1_000;
    cfg.gateway.heartbeat.timeout_ms = 2_500;
    let srv = start(cfg, Mode::Serve).await;
    // The database opens in real time; time-based behaviour runs on the paused clock.
    tokio::time::pause();
    let mut c = RawClient::user(srv.addr, "sleepy", false).await;
    c.answer_pings = false;
    let opened = Instant::now();
    let mut pings = 0;
    let close = loop {
        match c.next().await {
            Event::Ping(_) => pings += 1,
            Event::Close(Some(f)) => break f,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.code, 4002);
    assert!(pings >= 2, "server should ping before giving up, saw {pings}");
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_millis(2_500) && waited <= Duration::from_millis(4_000), "{waited:?}");
    assert_eq!(srv.handle.counters().heartbeat_timeouts.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn peer_answering_pings_stays_connected() {
    let mut cfg = test_config();
    cfg.gateway.heartbeat.interval_ms = 1_000;
    cfg.gateway.heartbeat.timeout_ms = 2_500;
    let srv = start(cfg, Mode::Serve).await;
    // The database opens in real time; time-based behaviour runs on the paused clock.
    tokio::time::pause();
    let mut c = RawClient::user(srv.addr, "awake", false).await;
    let watcher = tokio::spawn(async move {
        loop {
            match c.next_event().await {
                Some(Event::Close(f)) => return f,
                None => return None,
                Some(_) => {}
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!watcher.is_finished(), "connection closed: {:?}", watcher.await);
    assert_eq!(srv.handle.connection_stats().total, 1);
}

/// Users are named by their token; "flood:<user>:<rounds>" queues `rounds` x 16 x 64 KiB
/// messages for <user> and answers "queued" or "gone".
struct Flooder;
struct TokenIsUser;

impl Authenticator for TokenIsUser {
    async fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        Ok(Identity::user(token.ok_or(AuthError::Missing)?))
    }
}

impl Handler for Flooder {
    type State = ();
    fn on_open(&self, _cx: &Context<'_>, _conn: &Connection) {}
    fn on_close(&self, _cx: &Context<'_>, _conn: &Connection, _state: ()) {}
    fn on_message(&self, cx: &Context<'_>, conn: &Connection, _state: &mut (), msg: Message) {
        let Message::Text(t) = msg else { return };
        if t == "ping" {
            let _ = conn.send_text("pong");
            return;
        }
        let Some(target) = t.strip_prefix("flood:") else {
            return;
        };
        let handle = cx.gateway();
        let chunk = SharedMessage::text("z".repeat(64 * 1024));
        let targets = handle.connections_of(target);
        let mut ok = !targets.is_empty();
        for c in targets {
            for _ in 0..16 {
                ok &= c.send(&chunk).is_ok();
            }
        }
        let _ = conn.send_text(if ok { "queued" } else { "gone" });
    }
}

/// Counts a connection's messages in its own state and reports the final count on close.
struct Counter(tokio::sync::mpsc::UnboundedSender<(String, u32)>);

impl Handler for Counter {
    type State = u32;
    fn on_open(&self, _cx: &Context<'_>, _conn: &Connection) -> u32 {
        0
    }
    fn on_message(&self, _cx: &Context<'_>, conn: &Connection, seen: &mut u32, _msg: Message) {
        *seen += 1;
        let _ = conn.send_text(seen.to_string());
    }
    fn on_close(&self, _cx: &Context<'_>, conn: &Connection, seen: u32) {
        let _ = self.0.send((conn.user_id().to_owned(), seen));
    }
}

#[tokio::test]
async fn per_connection_state_lives_from_open_to_close() {
    let mut cfg = GatewayConfig::default();
    cfg.connect_rate.per_second = 0;
    let (tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let srv = start_gateway(cfg, TokenIsUser, Counter(tx)).await;
    let connect =
        |user: &'static str| RawClient::connect(srv.addr, ConnectOpts { token: Some(user), ..Default::default() });
    let (mut a, mut b) = (connect("a").await.unwrap(), connect("b").await.unwrap());
    for expected in 1..=3 {
        a.send_text("x", false).await;
        assert_eq!(a.text().await, expected.to_string());
    }
    b.send_text("x", false).await;
    assert_eq!(b.text().await, "1", "each connection has its own state");
    a.send_close(1000).await;
    let (user, seen) = tokio::time::timeout(PATIENCE, closed.recv()).await.unwrap().unwrap();
    assert_eq!((user.as_str(), seen), ("a", 3), "on_close gets the state back");
}

#[tokio::test]
async fn slow_consumer_is_closed_1008_without_slowing_anyone_else() {
    let mut cfg = GatewayConfig::default();
    cfg.connect_rate.per_second = 0;
    cfg.message_rate.per_second = 0;
    cfg.outbound_queue.max_messages = 64;
    cfg.outbound_queue.max_bytes = 2 * 1024 * 1024;
    let srv = start_gateway(cfg, TokenIsUser, Flooder).await;
    let connect =
        |user: &'static str| RawClient::connect(srv.addr, ConnectOpts { token: Some(user), ..Default::default() });
    let mut slow = connect("slow").await.unwrap();
    let mut sender = connect("sender").await.unwrap();
    let mut bystander = connect("bystander").await.unwrap();
    // `slow` never reads: the kernel buffers fill, then its queue, then it is cut off.
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 200, "queue never overflowed");
        sender.send_text("flood:slow", false).await;
        let started = Instant::now();
        let answer = sender.text().await;
        assert!(started.elapsed() < Duration::from_secs(2), "the sender was slowed down");
        bystander.send_text("ping", false).await;
        assert_eq!(bystander.text().await, "pong");
        if answer == "gone" {
            break;
        }
        // Not a wait for a condition: lets the slow connection's writer fill the kernel buffers.
        tokio::task::yield_now().await;
    }
    // The slow client finally reads: whatever was already in flight, then the close.
    let close = slow.closed().await;
    assert_eq!(close.code, 1008);
    assert_eq!(close.reason, "slow consumer");
    assert_eq!(srv.handle.counters().slow_consumers.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn drain_announces_spreads_closes_and_exits() {
    let mut cfg = test_config();
    cfg.gateway.drain.window_ms = 5_000;
    cfg.gateway.drain.grace_ms = 8_000;
    cfg.gateway.heartbeat.interval_ms = 60_000;
    cfg.gateway.heartbeat.timeout_ms = 120_000;
    let srv = start(cfg, Mode::Serve).await;
    // The database opens in real time; time-based behaviour runs on the paused clock.
    tokio::time::pause();
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(RawClient::user(srv.addr, &format!("u{i}"), i % 2 == 0).await);
    }
    assert_eq!(http_get(srv.addr, "/ready", &[]).await.status, 200);
    let drain_started = Instant::now();
    srv.shutdown.cancel();
    // Readiness flips at once, and new upgrades are refused.
    let ready = http_get(srv.addr, "/ready", &[]).await;
    assert_eq!(ready.status, 503);
    let refused = RawClient::connect(srv.addr, ConnectOpts { token: Some("dev-late"), ..Default::default() })
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    for c in &mut clients {
        let notice = c.json().await;
        assert_eq!(notice["type"], "server.draining", "{notice}");
        let promised = Duration::from_millis(notice["reconnect_after_ms"].as_u64().unwrap());
        assert!(promised <= Duration::from_millis(5_000));
        let close = c.closed().await;
        assert_eq!(close.code, 1001);
        let at = drain_started.elapsed();
        assert!(at >= promised && at <= Duration::from_millis(5_100), "closed at {at:?}, promised {promised:?}");
    }
    // Shutdown flushes the store on real time (SQLite answers from another thread).
    tokio::time::resume();
    let result = tokio::time::timeout(Duration::from_secs(10), srv.task).await.expect("server did not exit").unwrap();
    result.unwrap();
    assert!(drain_started.elapsed() <= Duration::from_millis(8_000));
}

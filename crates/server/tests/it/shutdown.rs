//! The ordered shutdown: nothing written before (or during) the drain is lost, and every
//! wait is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rendezvous::{DevAuthenticator, Mode};
use rendezvous_gateway::{Connection, Context, GatewayConfig, Handler, Message};
use rendezvous_store::now_ms;
use tokio::time::Instant;

use crate::support::{
    API_KEY, BinaryServer, ConnectOpts, RawClient, api, binary_env, both_backends, config_for, eventually, start,
    start_gateway, test_config,
};

async fn user_with_token(addr: std::net::SocketAddr) -> (String, String) {
    let user = api(addr, "POST", "/api/users", Some(r#"{"display_name":"Quinn"}"#), Some(API_KEY)).await.json();
    let id = user["id"].as_str().unwrap().to_owned();
    let issued = api(addr, "POST", &format!("/api/users/{id}/sessions"), None, Some(API_KEY)).await.json();
    (id, issued["token"].as_str().unwrap().to_owned())
}

async fn connect(addr: std::net::SocketAddr, token: &str) -> RawClient {
    let mut c = RawClient::connect(addr, ConnectOpts { token: Some(token), ..Default::default() }).await.unwrap();
    assert_eq!(c.json().await["type"], "welcome");
    c
}

both_backends!(nothing_written_before_or_during_the_drain_is_lost, |backend| {
    let mut cfg = config_for(backend).await;
    // Only the final flush can write: the periodic one never comes round.
    cfg.store.activity_flush_ms = 3_600_000;
    cfg.gateway.drain.window_ms = 300;
    cfg.gateway.drain.grace_ms = 5_000;
    let database = cfg.database.clone();
    let srv = start(cfg, Mode::Serve).await;
    let store = srv.store.clone().unwrap();
    let mut users = Vec::new();
    let mut created = Vec::new();
    for _ in 0..3 {
        let (id, token) = user_with_token(srv.addr).await;
        created.push(store.db().stored_last_active(&id).await.unwrap().unwrap());
        users.push((id, token));
    }
    // Touches must be told apart from creation: let the wall clock pass it.
    let newest = *created.iter().max().unwrap();
    eventually("the wall clock to pass the creation times", || async move { now_ms() > newest }).await;
    let mut early = connect(srv.addr, &users[0].1).await;
    let mut leaver = connect(srv.addr, &users[1].1).await;
    let mut stayer = connect(srv.addr, &users[2].1).await;
    // `early` leaves before the signal.
    early.send_close(1000).await;
    early.closed().await;
    for c in [&mut leaver, &mut stayer] {
        c.send_text(r#"{"type":"ping"}"#, false).await;
        assert_eq!(c.json().await["type"], "pong");
    }
    let activity = store.stats().activity;
    assert_eq!((activity.pending, activity.flushed), (3, 0), "all three wait in the write-behind buffer");

    srv.shutdown.begin();
    // `leaver` is told to go and goes, with one more message on the way out.
    assert_eq!(leaver.json().await["type"], "server.draining");
    let leaving_at = now_ms();
    leaver.send_text(r#"{"type":"ping","id":"last"}"#, false).await;
    leaver.send_close(1000).await;
    leaver.closed().await;
    // `stayer` waits for the drain to close it.
    assert_eq!(stayer.closed().await.code, 1001);
    tokio::time::timeout(Duration::from_secs(10), srv.task).await.expect("run() did not return").unwrap().unwrap();

    assert_eq!(store.stats().activity.pending, 0, "the final flush wrote everything buffered");
    assert!(store.cleanup().await.is_err(), "the pool is closed once run() returns");
    let check = rendezvous_store::Store::open(
        &database,
        Default::default(),
        rendezvous_bus::Bus::in_process("check", &Default::default()),
    )
    .await
    .unwrap();
    for ((id, _), created) in users.iter().zip(&created) {
        let last = check.db().stored_last_active(id).await.unwrap().unwrap();
        assert!(last > *created, "{id}: last_active {last} not after creation {created}");
    }
    let leaver_last = check.db().stored_last_active(&users[1].0).await.unwrap().unwrap();
    assert!(leaver_last >= leaving_at, "the message sent during the drain was lost");
});

/// Counts `on_close` calls.
struct CountCloses {
    closed: Arc<AtomicUsize>,
}

impl Handler for CountCloses {
    type State = ();
    fn on_open(&self, _cx: &Context<'_>, _conn: &Connection) {}
    fn on_message(&self, _cx: &Context<'_>, _conn: &Connection, _state: &mut (), _msg: Message) {}
    fn on_close(&self, _cx: &Context<'_>, _conn: &Connection, _state: ()) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Starts a gateway, connects one client that never answers the server's close (so its
/// session takes `delay`, the close timeout, to end), begins the shutdown, and returns how
/// long `run()` took and how many `on_close` calls had finished.
async fn drain_with_on_close_taking(delay: Duration) -> (Duration, usize) {
    let mut cfg = GatewayConfig::default();
    cfg.drain.window_ms = 0;
    cfg.drain.grace_ms = 10_000;
    cfg.close_timeout_ms = delay.as_millis() as u64;
    let closed = Arc::new(AtomicUsize::new(0));
    let srv = start_gateway(cfg, DevAuthenticator, CountCloses { closed: closed.clone() }).await;
    tokio::time::pause();
    // Never read: the server's close frame is never answered.
    let c = RawClient::connect(srv.addr, ConnectOpts { token: Some("dev-a"), ..Default::default() }).await.unwrap();
    let began = Instant::now();
    srv.shutdown.begin();
    srv.task.await.unwrap().unwrap();
    drop(c);
    (began.elapsed(), closed.load(Ordering::SeqCst))
}

#[tokio::test]
async fn the_drain_waits_for_on_close() {
    let (took, closed) = drain_with_on_close_taking(Duration::from_secs(3)).await;
    assert_eq!(closed, 1, "run() returned before on_close finished");
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(4), "{took:?}");
}

#[tokio::test]
async fn the_drain_waits_no_longer_than_the_grace() {
    let (took, closed) = drain_with_on_close_taking(Duration::from_secs(60)).await;
    assert_eq!(closed, 0);
    assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(11), "{took:?}");
}

#[tokio::test]
async fn a_forced_shutdown_stops_waiting_at_once() {
    let mut cfg = test_config();
    cfg.gateway.drain.window_ms = 30_000;
    cfg.gateway.drain.grace_ms = 60_000;
    let srv = start(cfg, Mode::Serve).await;
    let mut c = RawClient::user(srv.addr, "patient", false).await;
    srv.shutdown.begin();
    assert_eq!(c.json().await["type"], "server.draining");
    srv.shutdown.force();
    tokio::time::timeout(Duration::from_secs(2), srv.task)
        .await
        .expect("a forced shutdown still waited")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_second_signal_stops_the_binary_without_waiting_out_the_drain() {
    let env = binary_env(&[
        ("RENDEZVOUS__GATEWAY__MAX_CONNECTIONS", "100"),
        ("RENDEZVOUS__GATEWAY__PENDING__MAX_SOCKETS", "100"),
        ("RENDEZVOUS__GATEWAY__DRAIN__WINDOW_MS", "30000"),
        ("RENDEZVOUS__GATEWAY__DRAIN__GRACE_MS", "60000"),
    ]);
    let mut server = BinaryServer::spawn_with_nofile(1024, env);
    let addr = server.addr().await;
    let mut c = RawClient::user(addr, "lingering", false).await;
    server.sigterm();
    assert_eq!(c.json().await["type"], "server.draining");
    server.sigterm();
    server.exited(Duration::from_secs(2)).await;
}

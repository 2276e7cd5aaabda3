//! Sockets that never finish their handshake: the cap on pending sockets, the descriptor
//! budget, and the authentication deadline.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rendezvous::Mode;
use rendezvous_gateway::{AuthError, Authenticator, Connection, Context, GatewayConfig, Handler, Identity, Message};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::support::{
    BinaryServer, ConnectOpts, RawClient, binary_env, eventually, http_get, start, start_gateway, test_config,
};

/// Opens `n` connections that never send a byte, from several loopback source addresses.
async fn stalled(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8), 0))).unwrap();
        sockets.push(socket.connect(addr).await.unwrap());
    }
    sockets
}

/// Fails unless `work` finishes within a second.
async fn within_a_second<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(1), work).await;
    out.unwrap_or_else(|_| panic!("{what} did not answer within a second ({:?})", started.elapsed()))
}

#[tokio::test]
async fn stalled_handshakes_cannot_exhaust_descriptors_of_the_real_binary() {
    const NOFILE: u64 = 256;
    let env = binary_env(&[
        ("RENDEZVOUS__GATEWAY__MAX_CONNECTIONS", "32"),
        ("RENDEZVOUS__GATEWAY__PENDING__MAX_SOCKETS", "64"),
        ("RENDEZVOUS__DATABASE__MAX_CONNECTIONS", "2"),
    ]);
    let mut server = BinaryServer::spawn_with_nofile(NOFILE, env);
    let addr = server.addr().await;
    assert_eq!(server.logged("descriptor budget").await["fields"]["open_file_limit"], NOFILE);
    // More sockets than the process has descriptors, none of which ever sends its request.
    let held = stalled(addr, 600).await;
    let mut alice = within_a_second("a WebSocket upgrade", async {
        RawClient::connect(addr, ConnectOpts { token: Some("dev-alice"), ..Default::default() }).await
    })
    .await
    .expect("the upgrade was refused");
    assert_eq!(within_a_second("the welcome", alice.json()).await["type"], "welcome");
    let health = within_a_second("/health", http_get(addr, "/health", &[])).await;
    assert_eq!(health.status, 200);
    let h = health.json();
    assert_eq!(h["connections"]["pending_limit"], 64);
    assert!(h["connections"]["pending"].as_u64().unwrap() <= 64, "{}", h["connections"]);
    assert!(h["gateway"]["pending_evicted"].as_u64().unwrap() >= 600 - 64, "{}", h["gateway"]);
    assert_eq!(h["gateway"]["accept_errors"], 0, "the cap must keep accept clear of EMFILE");
    assert_eq!(within_a_second("/ready", http_get(addr, "/ready", &[])).await.status, 200);
    let metrics = String::from_utf8(http_get(addr, "/metrics", &[]).await.body).unwrap();
    assert!(metrics.contains("rendezvous_pending_socket_limit 64\n"), "{metrics}");
    drop((held, alice));
    assert_eq!(server.count("accept failed"), 0);
    server.terminate().await;
}

#[tokio::test]
async fn a_start_over_the_descriptor_budget_fails_naming_the_keys() {
    let env = binary_env(&[("RENDEZVOUS__GATEWAY__MAX_CONNECTIONS", "5000")]);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" --check-config")
        .arg(env!("CARGO_BIN_EXE_rendezvous"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["gateway.max_connections (5000)", "gateway.pending.max_sockets", "open-file limit of 256"] {
        assert!(err.contains(key), "{err}");
    }
}

#[tokio::test]
async fn at_the_cap_the_oldest_pending_socket_is_dropped_for_a_real_client() {
    let mut cfg = test_config();
    cfg.gateway.pending.max_sockets = 8;
    let srv = start(cfg, Mode::Serve).await;
    let mut held = stalled(srv.addr, 20).await;
    let mut c = RawClient::user(srv.addr, "real", false).await;
    c.send_text(r#"{"type":"ping"}"#, false).await;
    assert_eq!(c.json().await["type"], "pong");
    // The first stalled sockets were dropped by the server: reading them ends at once.
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(1), tokio::io::AsyncReadExt::read(&mut held[0], &mut first));
    assert!(matches!(read.await, Ok(Ok(0)) | Ok(Err(_))), "the oldest stalled socket is still open");
    let handle = srv.handle.clone();
    eventually("the pending count to settle under the cap", || {
        let handle = handle.clone();
        async move { handle.connection_stats().pending <= 8 }
    })
    .await;
    let evicted = srv.handle.counters().pending_evicted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(evicted >= 12, "evicted {evicted}");
}

/// Never answers: a session store that hangs.
struct Hanging;

impl Authenticator for Hanging {
    async fn authenticate(&self, _token: Option<&str>) -> Result<Identity, AuthError> {
        std::future::pending().await
    }
}

struct Silent;

impl Handler for Silent {
    type State = ();
    fn on_open(&self, _cx: &Context<'_>, _conn: &Connection) {}
    fn on_message(&self, _cx: &Context<'_>, _conn: &Connection, _state: &mut (), _msg: Message) {}
    fn on_close(&self, _cx: &Context<'_>, _conn: &Connection, _state: ()) {}
}

#[tokio::test]
async fn authentication_that_never_answers_gets_503_after_the_deadline() {
    let cfg = GatewayConfig { auth_timeout_ms: 300, ..Default::default() };
    let srv = start_gateway(cfg, Hanging, Silent).await;
    let asked = Instant::now();
    let refused =
        RawClient::connect(srv.addr, ConnectOpts { token: Some("t"), ..Default::default() }).await.err().unwrap();
    let waited = asked.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "unavailable");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(srv.handle.counters().auth_timeouts.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The slot it held is free again.
    assert_eq!(srv.handle.connection_stats().upgrading, 0);
}

//! A Postgres outage, simulated by cutting a TCP proxy between the server and the
//! real database: cached sessions keep working, new lookups fail fast with 503,
//! the pool recovers by itself, and buffered activity is written, not lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rendezvous::Mode;
use rendezvous_store::testing::{Backend, fresh_database, postgres_url, with_search_path};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::{API_KEY, ConnectOpts, RawClient, api, eventually, start, test_config};

/// A TCP proxy that can be cut (dropping every connection) and restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (flag, cuts) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused as soon as it opens
                }
                let mut stop = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
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

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn host_port(url: &str) -> SocketAddr {
    let after = url.split("://").nth(1).unwrap();
    let host = after.split('@').next_back().unwrap().split('/').next().unwrap();
    let host = if host.contains(':') { host.to_owned() } else { format!("{host}:5432") };
    let host = host.replace("localhost", "127.0.0.1");
    host.parse().unwrap_or_else(|_| panic!("TEST_DATABASE_URL host must be an IP:port for this test, got {host}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_and_recovery() {
    // A fresh schema on the real database, reached through the proxy.
    let direct = fresh_database(Backend::Postgres).await;
    let schema = direct.url.as_deref().unwrap().rsplit("search_path%3D").next().unwrap().to_owned();
    let base = postgres_url();
    let proxy = Proxy::start(host_port(&base)).await;
    let via_proxy = base.replacen(&host_port(&base).to_string(), &proxy.addr.to_string(), 1).replacen(
        &format!("localhost:{}", host_port(&base).port()),
        &proxy.addr.to_string(),
        1,
    );
    assert!(via_proxy.contains(&proxy.addr.to_string()), "could not point {base} at the proxy");
    let mut cfg = test_config();
    cfg.database.url = Some(with_search_path(&via_proxy, &schema));
    cfg.database.acquire_timeout_ms = 500;
    let srv = start(cfg, Mode::Serve).await;
    let store = srv.store.clone().unwrap();
    let k = Some(API_KEY);

    let user = api(srv.addr, "POST", "/api/users", Some(r#"{"display_name":"Resilient"}"#), k).await.json();
    let id = user["id"].as_str().unwrap().to_owned();
    let issue = || async {
        api(srv.addr, "POST", &format!("/api/users/{id}/sessions"), None, k).await.json()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let cached_token = issue().await;
    let cold_token = issue().await;
    let mut live =
        RawClient::connect(srv.addr, ConnectOpts { token: Some(&cached_token), ..Default::default() }).await.unwrap();
    live.json().await;
    let created_active = store.db().stored_last_active(&id).await.unwrap().unwrap();

    proxy.down();
    // The open connection keeps working, and its activity is buffered.
    tokio::time::sleep(Duration::from_millis(2)).await; // move the wall clock past `created_active`
    live.send_text(r#"{"type":"ping","id":"during-outage"}"#, false).await;
    assert_eq!(live.json().await["id"], "during-outage");
    // A cached session can even open a new connection.
    let mut again =
        RawClient::connect(srv.addr, ConnectOpts { token: Some(&cached_token), ..Default::default() }).await.unwrap();
    assert_eq!(again.json().await["type"], "welcome");
    // An uncached token cannot be checked: 503, quickly.
    let asked = Instant::now();
    let refused = RawClient::connect(srv.addr, ConnectOpts { token: Some(&cold_token), ..Default::default() })
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status, 503);
    assert!(asked.elapsed() < Duration::from_secs(3), "lookup did not fail fast: {:?}", asked.elapsed());
    let r = api(srv.addr, "GET", "/api/users/someone-uncached", None, k).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (503, Some("unavailable")));
    assert!(store.flush_activity().await.is_err(), "the flush must fail while the database is down");
    assert_eq!(crate::support::http_get(srv.addr, "/health", &[]).await.json()["db"]["status"], "unavailable");
    assert_eq!(store.stats().activity.pending, 1, "a failed flush keeps its rows");

    proxy.restore();
    let addr = srv.addr;
    let cold = cold_token.clone();
    eventually("the pool to recover", || {
        let cold = cold.clone();
        async move { RawClient::connect(addr, ConnectOpts { token: Some(&cold), ..Default::default() }).await.is_ok() }
    })
    .await;
    // A clean shutdown flushes what was buffered during the outage.
    drop((live, again));
    srv.shutdown.cancel();
    srv.task.await.unwrap().unwrap();
    let check = rendezvous_store::Store::open(
        &direct,
        Default::default(),
        rendezvous_bus::Bus::in_process("check", &Default::default()),
    )
    .await
    .unwrap();
    assert!(check.db().stored_last_active(&id).await.unwrap().unwrap() > created_active);
}

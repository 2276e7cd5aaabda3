//! `/health`, `/ready`, `/metrics` with real connections held open.

use std::io::Read;

use rendezvous::Mode;

use crate::support::{RawClient, http_get, start, test_config};

#[tokio::test]
async fn health_reports_exact_counts_with_1000_clients() {
    let mut cfg = test_config();
    cfg.gateway.max_connections = 2_000;
    let srv = start(cfg, Mode::Serve).await;
    let mut clients = Vec::with_capacity(1_000);
    // 400 users with two connections, 200 with one.
    for i in 0..600 {
        let user = format!("user{i}");
        clients.push(RawClient::user(srv.addr, &user, i % 3 == 0).await);
        if i < 400 {
            clients.push(RawClient::user(srv.addr, &user, false).await);
        }
    }
    assert_eq!(clients.len(), 1_000);
    let h = http_get(srv.addr, "/health", &[]).await.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["instance"], "test-instance");
    assert_eq!(h["connections"]["total"], 1_000);
    assert_eq!(h["connections"]["users"], 600);
    assert_eq!(h["connections"]["limit"], 2_000);
    assert_eq!(h["connections"]["utilization"], 0.5);
    assert!((h["connections"]["average_per_user"].as_f64().unwrap() - 1_000.0 / 600.0).abs() < 1e-9);
    assert_eq!(h["gateway"]["accepted"], 1_000);
    assert!(h["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    for section in ["cache", "presence", "matchmaking", "bus", "db"] {
        assert!(h[section].is_object(), "missing section {section}");
    }
    clients.truncate(500);
    // Closing is asynchronous on the server side; poll until the count settles.
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let h = http_get(srv.addr, "/health", &[]).await.json();
        if h["connections"]["total"] == 500 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "count stuck at {}", h["connections"]["total"]);
    }
}

#[tokio::test]
async fn health_is_gzipped_when_accepted() {
    let srv = start(test_config(), Mode::Serve).await;
    let resp = http_get(srv.addr, "/health", &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    let mut json = String::new();
    flate2::read::GzDecoder::new(&resp.body[..]).read_to_string(&mut json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["status"], "ok");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let srv = start(test_config(), Mode::Serve).await;
    let _c = RawClient::user(srv.addr, "m", false).await;
    let resp = http_get(srv.addr, "/metrics", &[]).await;
    assert_eq!(resp.status, 200);
    assert!(resp.header("content-type").unwrap().starts_with("text/plain"));
    let body = String::from_utf8(resp.body).unwrap();
    assert!(body.contains("# TYPE rendezvous_connections gauge\nrendezvous_connections 1\n"), "{body}");
    assert!(body.contains("rendezvous_gateway_accepted_total 1\n"));
}

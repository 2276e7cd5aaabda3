//! The JSON protocol over a real connection: welcome, ping, and every kind of garbage.

use rendezvous::Mode;

use crate::support::{RawClient, start, test_config};

#[tokio::test]
async fn welcome_names_the_user_and_instance() {
    let srv = start(test_config(), Mode::Serve).await;
    let token = "dev-alice";
    let mut c = RawClient::connect(srv.addr, crate::support::ConnectOpts { token: Some(token), ..Default::default() })
        .await
        .unwrap();
    let w = c.json().await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["v"], 1);
    assert_eq!(w["user_id"], "alice");
    assert_eq!(w["instance"], "test-instance");
    assert_eq!(w["heartbeat_interval_ms"], 20_000);
}

#[tokio::test]
async fn garbage_gets_error_frames_and_the_connection_survives() {
    let srv = start(test_config(), Mode::Serve).await;
    let mut c = RawClient::user(srv.addr, "fuzzy", false).await;
    let cases = [
        ("{not json", "bad_json"),
        ("", "bad_json"),
        ("[]", "missing_type"),
        (r#"{"type":42}"#, "missing_type"),
        (r#"{"type":"teleport"}"#, "unknown_type"),
        (r#"{"type":"ping","v":99}"#, "unsupported_version"),
        (r#"{"type":"ping","id":{"a":1}}"#, "bad_field"),
        (r#"{"type":"ping","surprise":true}"#, "bad_field"),
    ];
    for (text, code) in cases {
        c.send_text(text, false).await;
        let e = c.json().await;
        assert_eq!(e["type"], "error", "{text}");
        assert_eq!(e["code"], code, "{text}: {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    c.send_binary(&[1, 2, 3]).await;
    assert_eq!(c.json().await["code"], "binary_not_supported");
    c.send_text(r#"{"type":"teleport","id":"r1"}"#, false).await;
    assert_eq!(c.json().await["ref"], "r1");
    c.send_text(r#"{"type":"ping","id":"still-here"}"#, false).await;
    let pong = c.json().await;
    assert_eq!(pong, serde_json::json!({"type":"pong","id":"still-here"}));
}

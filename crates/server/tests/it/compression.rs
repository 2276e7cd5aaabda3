//! A compressed and an uncompressed client side by side.

use futures_util::{SinkExt, StreamExt};
use rendezvous::Mode;
use rendezvous_gateway::SharedMessage;
use tokio_tungstenite::tungstenite::Message as TMessage;

use crate::support::{RawClient, start, test_config};

#[tokio::test]
async fn broadcast_reaches_both_kinds_of_client_unchanged() {
    let srv = start(test_config(), Mode::Serve).await;
    let mut deflating = RawClient::user(srv.addr, "zip", true).await;
    assert_eq!(
        deflating.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    // A real third-party client that does not offer compression.
    let url = format!("ws://{}/ws?token=dev-plain", srv.addr);
    let (mut plain, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(resp.headers().get("sec-websocket-extensions").is_none());
    let welcome = plain.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"));

    let big = format!("{{\"type\":\"presence\",\"blob\":\"{}\"}}", "abc".repeat(2_000));
    assert_eq!(srv.handle.broadcast(&SharedMessage::text(big.clone())), 2);
    // Compressed client: RSV1 set, payload inflates to the broadcast.
    let (b0, payload) = deflating.raw_frame_header().await;
    assert_eq!(b0 & 0x40, 0x40, "large message should be compressed: {b0:02x} {:?}", &payload[..payload.len().min(40)]);
    assert!(payload.len() < big.len() / 10);
    assert_eq!(deflating.inflate(&payload), big.as_bytes());
    // Plain client: the same text, uncompressed.
    match plain.next().await.unwrap().unwrap() {
        TMessage::Text(t) => assert_eq!(t.as_str(), big),
        other => panic!("unexpected {other:?}"),
    }
    // Small messages go uncompressed even to the deflating client.
    srv.handle.broadcast(&SharedMessage::text("{\"type\":\"tiny\"}"));
    let (b0, payload) = deflating.raw_frame_header().await;
    assert_eq!(b0 & 0x40, 0);
    assert_eq!(&payload[..], b"{\"type\":\"tiny\"}");
    assert_eq!(plain.next().await.unwrap().unwrap().to_text().unwrap(), "{\"type\":\"tiny\"}");
    // Both can talk back.
    plain.send(TMessage::text(r#"{"type":"ping","id":"p"}"#)).await.unwrap();
    assert!(plain.next().await.unwrap().unwrap().to_text().unwrap().contains("pong"));
}

#[tokio::test]
async fn compressed_client_messages_are_inflated() {
    let srv = start(test_config(), Mode::Serve).await;
    let mut c = RawClient::user(srv.addr, "zipper", true).await;
    c.send_text(r#"{"type":"ping","id":"compressed"}"#, true).await;
    assert_eq!(c.json().await["id"], "compressed");
}

#[tokio::test]
async fn compression_can_be_turned_off() {
    let mut cfg = test_config();
    cfg.gateway.compression.enabled = false;
    let srv = start(cfg, Mode::Serve).await;
    let c = RawClient::user(srv.addr, "nozip", true).await;
    assert!(!c.deflate);
}

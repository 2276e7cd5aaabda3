//! Malformed input at the HTTP and WebSocket layers: a clear answer, never a hang.

use rendezvous::Mode;
use rendezvous_gateway::ws::frame::{OpCode, encode_frame};
use rendezvous_gateway::ws::reader::Event;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{RawClient, raw_request, read_response, start, test_config};

const MASK: Option<[u8; 4]> = Some([9, 8, 7, 6]);

#[tokio::test]
async fn bad_upgrade_requests_get_json_errors() {
    let srv = start(test_config(), Mode::Serve).await;
    let base = "GET /ws?token=dev-a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let cases = [
        (base.replace("Version: 13", "Version: 12"), 426),
        (base.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), 400),
        (base.replace("dGhlIHNhbXBsZSBub25jZQ==", "not-base64!"), 400),
        (base.replace("Connection: Upgrade", "Connection: keep-alive"), 400),
        (base.replace("GET", "POST"), 405),
        ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(), 426),
        ("\x01\x02 garbage\r\n\r\n".to_owned(), 400),
    ];
    for (req, status) in cases {
        let resp = raw_request(srv.addr, req.as_bytes()).await;
        assert_eq!(resp.status, status, "{req:?}");
        assert!(resp.json()["error"]["message"].is_string());
    }
    let huge = format!("GET /ws HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(20_000));
    assert_eq!(raw_request(srv.addr, huge.as_bytes()).await.status, 431);
}

#[tokio::test]
async fn unknown_http_paths_get_json_404() {
    let srv = start(test_config(), Mode::Serve).await;
    let resp = crate::support::http_get(srv.addr, "/nope", &[]).await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json()["error"]["code"], "not_found");
}

async fn expect_close_after(frame: &[u8], code: u16) {
    let srv = start(test_config(), Mode::Serve).await;
    let mut c = RawClient::user(srv.addr, "mallory", false).await;
    c.send_raw(frame).await;
    assert_eq!(c.closed().await.code, code, "frame {frame:02x?}");
}

#[tokio::test]
async fn broken_frames_close_with_the_right_code() {
    expect_close_after(&encode_frame(OpCode::Text, true, false, b"{}", None), 1002).await; // unmasked
    expect_close_after(&[0x83, 0x80, 1, 2, 3, 4], 1002).await; // reserved opcode
    expect_close_after(&[0xA1, 0x80, 1, 2, 3, 4], 1002).await; // RSV2
    expect_close_after(&encode_frame(OpCode::Text, true, true, b"x", MASK), 1002).await; // RSV1 without deflate
    expect_close_after(&encode_frame(OpCode::Continuation, true, false, b"x", MASK), 1002).await;
    expect_close_after(&encode_frame(OpCode::Ping, false, false, b"x", MASK), 1002).await; // fragmented control
    expect_close_after(&encode_frame(OpCode::Text, true, false, &[0xC3, 0x28], MASK), 1007).await; // bad UTF-8
    expect_close_after(&encode_frame(OpCode::Close, true, false, &[0x03], MASK), 1002).await;
    expect_close_after(&encode_frame(OpCode::Close, true, false, &[0x03, 0xED], MASK), 1002).await; // code 1005
}

#[tokio::test]
async fn ping_frames_get_pongs_and_close_is_echoed() {
    let srv = start(test_config(), Mode::Serve).await;
    let mut c = RawClient::user(srv.addr, "polite", false).await;
    c.answer_pings = false;
    c.send_raw(&encode_frame(OpCode::Ping, true, false, b"hi", MASK)).await;
    assert_eq!(c.next().await, Event::Pong(b"hi".to_vec()));
    c.send_close(4321).await;
    assert_eq!(c.closed().await.code, 4321);
    assert!(c.next_event().await.is_none(), "server must close the TCP connection");
}

#[tokio::test]
async fn fragmented_text_is_reassembled() {
    let srv = start(test_config(), Mode::Serve).await;
    let mut c = RawClient::user(srv.addr, "frag", false).await;
    let text = br#"{"type":"ping","id":"fragmented"}"#;
    c.send_raw(&encode_frame(OpCode::Text, false, false, &text[..5], MASK)).await;
    c.send_raw(&encode_frame(OpCode::Ping, true, false, b"", MASK)).await;
    c.send_raw(&encode_frame(OpCode::Continuation, false, false, &text[5..20], MASK)).await;
    c.send_raw(&encode_frame(OpCode::Continuation, true, false, &text[20..], MASK)).await;
    c.answer_pings = false;
    assert_eq!(c.next().await, Event::Pong(Vec::new()), "control frames may interleave with fragments");
    let pong = c.json().await;
    assert_eq!(pong["id"], "fragmented");
}

#[tokio::test]
async fn abrupt_disconnects_free_the_slot() {
    let srv = start(test_config(), Mode::Serve).await;
    let c = RawClient::user(srv.addr, "gone", false).await;
    drop(c);
    // The server notices EOF and unregisters; poll the stats until it does.
    let handle = srv.handle.clone();
    crate::support::eventually("the slot to be freed", || {
        let handle = handle.clone();
        async move { handle.connection_stats().total == 0 }
    })
    .await;
}

#[tokio::test]
async fn bytes_pipelined_after_the_handshake_are_not_lost() {
    let srv = start(test_config(), Mode::Serve).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut req = b"GET /ws?token=dev-eager HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    req.extend_from_slice(&encode_frame(OpCode::Text, true, false, br#"{"type":"ping","id":"early"}"#, MASK));
    s.write_all(&req).await.unwrap();
    let (resp, rest) = read_response(&mut s).await;
    assert_eq!(resp.status, 101);
    let mut c = RawClient::from_upgraded(s, rest, false);
    assert_eq!(c.json().await["type"], "welcome");
    assert_eq!(c.json().await["id"], "early");
}

//! Opening one authenticated connection from a chosen source address.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use futures_util::StreamExt;
use rendezvous_protocol::ServerMessage;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

pub type Ws = WebSocketStream<TcpStream>;

/// The offer a browser sends.
const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddrV4,
    pub path: String,
    pub deflate: bool,
    pub timeout: Duration,
}

/// An open connection that has received its `welcome`.
pub struct Opened {
    pub ws: Ws,
    pub deflate_negotiated: bool,
}

/// Connects from `source`, upgrades with `?token=<token>` (`dev-<user>` or a session
/// token) and waits for `welcome`. The error is the failure reason used as a report key.
pub async fn open(target: &Target, source: Ipv4Addr, token: &str) -> Result<Opened, String> {
    match tokio::time::timeout(target.timeout, open_inner(target, source, token)).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

async fn open_inner(target: &Target, source: Ipv4Addr, token: &str) -> Result<Opened, String> {
    let socket = TcpSocket::new_v4().map_err(|e| io_reason("socket", &e))?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0))).map_err(|e| io_reason("bind", &e))?;
    let tcp = socket.connect(SocketAddr::V4(target.addr)).await.map_err(|e| io_reason("connect", &e))?;
    let _ = tcp.set_nodelay(true);

    let url = format!("ws://{}{}?token={token}", target.addr, target.path);
    let mut request = url.into_client_request().map_err(|e| format!("bad request: {e}"))?;
    if target.deflate {
        request.headers_mut().insert("Sec-WebSocket-Extensions", HeaderValue::from_static(DEFLATE_OFFER));
    }
    // Small buffers: the client side should not dominate the machine's memory.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, response) =
        client_async_with_config(request, tcp, Some(config)).await.map_err(|e| ws_reason("upgrade", &e))?;
    let deflate_negotiated = response
        .headers()
        .get_all("sec-websocket-extensions")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("permessage-deflate"));

    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return match serde_json::from_str::<ServerMessage>(text.as_str()) {
                    Ok(ServerMessage::Welcome { .. }) => Ok(Opened { ws, deflate_negotiated }),
                    Ok(other) => Err(format!("first message not welcome: {}", kind(&other))),
                    Err(_) => Err("first message not JSON".into()),
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "closed before welcome ({})",
                    frame.map_or("no code".into(), |f| u16::from(f.code).to_string())
                ));
            }
            Some(Ok(_)) => return Err("first message not text".into()),
            Some(Err(e)) => return Err(ws_reason("welcome", &e)),
            None => return Err("eof before welcome".into()),
        }
    }
}

/// Sends a close frame and waits (at most 5 s) for the server's echo and EOF; true if
/// the closing handshake completed.
pub async fn close_cleanly(mut ws: Ws) -> bool {
    let close = async {
        if ws.close(None).await.is_err() {
            return false;
        }
        // The server echoes the close frame, then shuts the TCP connection.
        let mut echoed = false;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(_)) => echoed = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        echoed
    };
    tokio::time::timeout(Duration::from_secs(5), close).await.unwrap_or(false)
}

fn kind(m: &ServerMessage) -> &'static str {
    match m {
        ServerMessage::Welcome { .. } => "welcome",
        ServerMessage::Pong { .. } => "pong",
        ServerMessage::Error(_) => "error",
        ServerMessage::Draining { .. } => "server.draining",
    }
}

pub fn io_reason(stage: &str, e: &std::io::Error) -> String {
    format!("io {stage} {:?}", e.kind())
}

/// A short, aggregatable reason for a tungstenite error.
pub fn ws_reason(stage: &str, e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("http {}", resp.status().as_u16()),
        WsError::Io(io) => io_reason(stage, io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => format!("{stage} closed"),
        WsError::Protocol(p) => format!("{stage} protocol: {p}"),
        other => format!("{stage} error: {other}"),
    }
}

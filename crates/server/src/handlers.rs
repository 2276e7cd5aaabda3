//! What the server does with messages: the Rendezvous protocol, or plain echo.

use std::sync::Arc;

use rendezvous_gateway::{Connection, Handler, Message, SharedMessage};
use rendezvous_protocol::{ClientMessage, ErrorCode, ErrorFrame, PROTOCOL_VERSION, ServerMessage, decode_client};
use rendezvous_store::Store;

/// Speaks the Rendezvous protocol (`docs/protocol.md`).
#[derive(Clone)]
pub struct ProtocolHandler {
    instance: String,
    heartbeat_interval_ms: u64,
    store: Option<Arc<Store>>,
}

impl std::fmt::Debug for ProtocolHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtocolHandler").field("instance", &self.instance).finish_non_exhaustive()
    }
}

impl ProtocolHandler {
    /// A handler that introduces itself as `instance` and records activity in `store`.
    pub fn new(instance: String, heartbeat_interval_ms: u64, store: Option<Arc<Store>>) -> Self {
        Self { instance, heartbeat_interval_ms, store }
    }

    fn touch(&self, conn: &Connection) {
        if let Some(store) = &self.store {
            store.touch(conn.user_id());
        }
    }
}

fn reply(conn: &Connection, msg: &ServerMessage) {
    // A full queue closes the connection as a slow consumer; nothing more to do here.
    let _ = conn.send_text(msg.to_json());
}

impl Handler for ProtocolHandler {
    async fn on_open(&self, conn: &Connection) {
        self.touch(conn);
        reply(
            conn,
            &ServerMessage::Welcome {
                v: PROTOCOL_VERSION,
                conn_id: conn.id(),
                user_id: conn.user_id().to_owned(),
                instance: self.instance.clone(),
                heartbeat_interval_ms: self.heartbeat_interval_ms,
            },
        );
    }

    async fn on_message(&self, conn: &Connection, msg: Message) {
        self.touch(conn);
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                let e = ErrorFrame::new(
                    ErrorCode::BinaryNotSupported,
                    "binary frames are not part of the protocol; send JSON text",
                );
                return reply(conn, &ServerMessage::Error(e));
            }
        };
        match decode_client(&text) {
            Ok(req) => match req.message {
                ClientMessage::Ping {} => reply(conn, &ServerMessage::Pong { id: req.id }),
            },
            Err(e) => reply(conn, &ServerMessage::Error(e.to_frame())),
        }
    }

    async fn on_close(&self, conn: &Connection) {
        self.touch(conn);
    }
}

/// Sends every message back unchanged (`rendezvous --echo`, for conformance runs).
#[derive(Debug, Default, Clone)]
pub struct EchoHandler;

impl Handler for EchoHandler {
    async fn on_open(&self, _conn: &Connection) {}

    async fn on_message(&self, conn: &Connection, msg: Message) {
        let out = match msg {
            Message::Text(t) => SharedMessage::text(t),
            Message::Binary(b) => SharedMessage::binary(b),
        };
        let _ = conn.send(&out);
    }

    async fn on_close(&self, _conn: &Connection) {}
}

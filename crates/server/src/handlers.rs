//! What the server does with messages: the Rendezvous protocol, or plain echo.

use std::sync::Arc;

use rendezvous_gateway::{Connection, Context, Handler, Message, SharedMessage};
use rendezvous_presence::PresenceHandle;
use rendezvous_protocol::{ClientMessage, ErrorCode, ErrorFrame, PROTOCOL_VERSION, ServerMessage, decode_client};
use rendezvous_store::Store;

/// Speaks the Rendezvous protocol (`docs/protocol.md`): decodes each message once and
/// hands it to the domain that owns it. Nothing here waits: domain tasks reply through
/// the connection's outbox.
#[derive(Clone)]
pub struct ProtocolHandler {
    instance: String,
    heartbeat_interval_ms: u64,
    store: Option<Arc<Store>>,
    presence: Option<PresenceHandle<Connection>>,
}

impl std::fmt::Debug for ProtocolHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtocolHandler").field("instance", &self.instance).finish_non_exhaustive()
    }
}

impl ProtocolHandler {
    /// A handler that introduces itself as `instance` and records activity in `store`
    /// on open and close (in between, the activity sweep reads connections' timestamps).
    pub fn new(instance: String, heartbeat_interval_ms: u64, store: Option<Arc<Store>>) -> Self {
        Self { instance, heartbeat_interval_ms, store, presence: None }
    }

    /// Serves `presence.*` messages through `presence`.
    pub fn with_presence(mut self, presence: PresenceHandle<Connection>) -> Self {
        self.presence = Some(presence);
        self
    }

    fn touch(&self, conn: &Connection) {
        if let Some(store) = &self.store {
            store.touch(conn.user_id());
        }
    }
}

/// What the protocol handler keeps per connection.
#[derive(Debug, Default)]
pub struct ConnState {}

fn reply(conn: &Connection, msg: &ServerMessage) {
    // A full queue closes the connection as a slow consumer; nothing more to do here.
    let _ = conn.send_text(msg.to_json());
}

impl Handler for ProtocolHandler {
    type State = ConnState;

    fn on_open(&self, _cx: &Context<'_>, conn: &Connection) -> ConnState {
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
        if let Some(p) = &self.presence {
            // Starts the profile and block lookups early; a full queue only delays them
            // to the first subscribe.
            let _ = p.connect(conn);
        }
        ConnState::default()
    }

    fn on_message(&self, _cx: &Context<'_>, conn: &Connection, _state: &mut ConnState, msg: Message) {
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
        let req = match decode_client(&text) {
            Ok(req) => req,
            Err(e) => return reply(conn, &ServerMessage::Error(e.to_frame())),
        };
        // Domain handles answer refusals (`busy`, `bad_topic`, ...) on the connection
        // themselves, so their results need no handling here.
        match (req.message, &self.presence) {
            (ClientMessage::Ping(_), _) => reply(conn, &ServerMessage::Pong { id: req.id }),
            (ClientMessage::PresenceSubscribe(m), Some(p)) => drop(p.subscribe(conn, &m.topic, req.id)),
            (ClientMessage::PresenceUnsubscribe(m), Some(p)) => drop(p.unsubscribe(conn, &m.topic, req.id)),
            (ClientMessage::PresenceSet(m), Some(p)) => drop(p.set_state(conn, m.state, m.status, req.id)),
            (other, None) => {
                let e = ErrorFrame {
                    code: ErrorCode::Unavailable,
                    message: format!("`{}` is not served in this mode", other.type_name()),
                    reference: req.id,
                };
                reply(conn, &ServerMessage::Error(e));
            }
        }
    }

    fn on_close(&self, _cx: &Context<'_>, conn: &Connection, _state: ConnState) {
        self.touch(conn);
        if let Some(p) = &self.presence {
            p.disconnect(conn.id());
        }
    }
}

/// Sends every message back unchanged (`rendezvous --echo`, for conformance runs).
#[derive(Debug, Default, Clone)]
pub struct EchoHandler;

impl Handler for EchoHandler {
    type State = ();

    fn on_open(&self, _cx: &Context<'_>, _conn: &Connection) {}

    fn on_message(&self, _cx: &Context<'_>, conn: &Connection, _state: &mut (), msg: Message) {
        let out = match msg {
            Message::Text(t) => SharedMessage::text(t),
            Message::Binary(b) => SharedMessage::binary(b),
        };
        let _ = conn.send(&out);
    }

    fn on_close(&self, _cx: &Context<'_>, _conn: &Connection, _state: ()) {}
}

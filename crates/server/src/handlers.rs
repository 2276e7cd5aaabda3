//! What the server does with messages: the Rendezvous protocol, or plain echo.

use std::sync::Arc;

use dashmap::DashSet;
use rendezvous_gateway::{Connection, Context, Handler, Message, SharedMessage};
use rendezvous_matchmaker::{MatchError, MatchmakerHandle};
use rendezvous_presence::PresenceHandle;
use rendezvous_protocol::SettableState;
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
    matchmaker: Option<MatchmakerHandle<Connection>>,
    /// Local users who chose `away` (matchmaking refuses invites to them).
    away: Arc<DashSet<String>>,
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
        Self { instance, heartbeat_interval_ms, store, presence: None, matchmaker: None, away: Arc::default() }
    }

    /// Serves `match.*`, `invite.*`, `call.*` and `ice.servers` through `matchmaker`.
    pub fn with_matchmaker(mut self, matchmaker: MatchmakerHandle<Connection>) -> Self {
        self.matchmaker = Some(matchmaker);
        self
    }

    /// The users of this instance who chose `away`, shared with matchmaking.
    pub fn away_users(&self) -> Arc<DashSet<String>> {
        self.away.clone()
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
        if let Some(m) = &self.matchmaker {
            if let Err(e) = m.connect(conn.clone()) {
                reply(conn, &ServerMessage::Error(e.to_frame(None)));
            }
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
        let id = req.id;
        if let ClientMessage::PresenceSet(m) = &req.message {
            match m.state {
                Some(SettableState::Away) => drop(self.away.insert(conn.user_id().to_owned())),
                Some(SettableState::Available) => drop(self.away.remove(conn.user_id())),
                None => {}
            }
        }
        // Presence answers its refusals (`busy`, `bad_topic`, ...) on the connection itself;
        // matchmaking returns them for us to send.
        let unserved = |name: &str, id| {
            let message = format!("`{name}` is not served in this mode");
            reply(conn, &ServerMessage::Error(ErrorFrame { code: ErrorCode::Unavailable, message, reference: id }));
        };
        let matched: Result<(), MatchError> = match req.message {
            ClientMessage::Ping(_) => return reply(conn, &ServerMessage::Pong { id }),
            m @ (ClientMessage::PresenceSubscribe(_)
            | ClientMessage::PresenceUnsubscribe(_)
            | ClientMessage::PresenceSet(_)) => {
                let Some(p) = &self.presence else { return unserved(m.type_name(), id) };
                let _ = match m {
                    ClientMessage::PresenceSubscribe(m) => p.subscribe(conn, &m.topic, id),
                    ClientMessage::PresenceUnsubscribe(m) => p.unsubscribe(conn, &m.topic, id),
                    ClientMessage::PresenceSet(m) => p.set_state(conn, m.state, m.status, id),
                    _ => Ok(()),
                };
                return;
            }
            other => {
                let Some(mm) = &self.matchmaker else { return unserved(other.type_name(), id) };
                let rid = id.clone();
                match other {
                    ClientMessage::MatchJoin(m) => mm.join(conn, rid, m),
                    ClientMessage::MatchLeave(_) => mm.leave(conn, rid),
                    ClientMessage::MatchAccept(m) => mm.accept(conn, rid, m),
                    ClientMessage::MatchDecline(m) => mm.decline(conn, rid, m),
                    ClientMessage::InviteSend(m) => mm.invite(conn, rid, m),
                    ClientMessage::InviteAccept(m) => mm.invite_accept(conn, rid, m),
                    ClientMessage::InviteDecline(m) => mm.invite_decline(conn, rid, m),
                    ClientMessage::InviteCancel(m) => mm.invite_cancel(conn, rid, m),
                    ClientMessage::CallSignal(m) => mm.signal(conn, rid, m),
                    ClientMessage::CallHangup(m) => mm.hangup(conn, rid, m),
                    ClientMessage::CallBlock(m) => mm.block(conn, rid, m),
                    ClientMessage::CallReport(m) => mm.report(conn, rid, m),
                    ClientMessage::IceServers(_) => {
                        mm.ice_servers(conn, rid);
                        Ok(())
                    }
                    ClientMessage::Ping(_)
                    | ClientMessage::PresenceSubscribe(_)
                    | ClientMessage::PresenceUnsubscribe(_)
                    | ClientMessage::PresenceSet(_) => Ok(()),
                }
            }
        };
        if let Err(e) = matched {
            reply(conn, &ServerMessage::Error(e.to_frame(id)));
        }
    }

    fn on_close(&self, _cx: &Context<'_>, conn: &Connection, _state: ConnState) {
        self.touch(conn);
        if let Some(p) = &self.presence {
            p.disconnect(conn.id());
        }
        if let Some(m) = &self.matchmaker {
            // Fails only after shutdown, when there is nothing left to tell.
            let _ = m.disconnect(conn.id(), conn.user_id());
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

//! From a parsed upgrade request to a registered connection: every check, in order,
//! cheapest first, each with its HTTP refusal.

use http::{HeaderMap, StatusCode};
use rendezvous_protocol::{CloseCode, ErrorCode};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{Instrument, debug, debug_span};

use crate::config::GatewayConfig;
use crate::conn::Connection;
use crate::gateway::Gateway;
use crate::handler::{AuthError, Authenticator, Context, Handler};
use crate::metrics::GatewayCounters as C;
use crate::registry::Admission;
use crate::reply::HttpRefusal;
use crate::session;
use crate::ws::deflate;
use crate::ws::frame::encode_close;
use crate::ws::handshake::{RequestHead, switching_response, validate_upgrade};
use crate::ws::reader::{MessageReader, Role};

/// Releases a reserved slot unless the connection got registered.
struct SlotGuard<'a> {
    registry: &'a crate::registry::Registry,
    armed: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.registry.release();
        }
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` hop that no trusted proxy added.
pub fn client_ip(trusted_proxies: &[IpAddr], peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let peer_ip = peer.ip();
    if !trusted_proxies.contains(&peer_ip) {
        return peer_ip;
    }
    // The rightmost address a trusted proxy did not add is the client.
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.into_iter().rev().find(|ip| !trusted_proxies.contains(ip)).unwrap_or(peer_ip)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

impl<A: Authenticator, H: Handler> Gateway<A, H> {
    /// Runs every admission check; on success the 101 has been written and the
    /// connection is registered.
    async fn admit<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        head: &RequestHead,
        peer: SocketAddr,
    ) -> Result<(Connection, Option<Connection>), Rejection> {
        let shared = &self.shared;
        let cfg = &shared.cfg;
        let counters = &shared.counters;
        let unavailable = |msg: &str| {
            C::inc(&counters.rejected_unavailable);
            HttpRefusal::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, msg).retry_after(5)
        };
        if shared.draining.load(std::sync::atomic::Ordering::Acquire) {
            return Err(unavailable("server is draining; reconnect to another instance").into());
        }
        if let Some(reason) = shared.admission.as_ref().and_then(|check| check()) {
            return Err(unavailable(reason).into());
        }
        let ip = client_ip(&cfg.trusted_proxies, peer, &head.headers);
        if let Err(wait) = shared.connect_limiter.check(ip) {
            C::inc(&counters.rejected_rate_limited);
            return Err(HttpRefusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                "too many connection attempts from this address",
            )
            .retry_after(wait.as_secs_f64().ceil() as u64)
            .into());
        }
        if !cfg.allowed_origins.is_empty() {
            if let Some(origin) = head.headers.get(http::header::ORIGIN) {
                let allowed =
                    origin.to_str().is_ok_and(|o| cfg.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
                if !allowed {
                    C::inc(&counters.rejected_origin);
                    return Err(HttpRefusal::new(
                        StatusCode::FORBIDDEN,
                        ErrorCode::ForbiddenOrigin,
                        "origin not allowed",
                    )
                    .into());
                }
            }
        }
        let accept = validate_upgrade(head).map_err(|r| {
            C::inc(&counters.rejected_bad_handshake);
            Rejection::Http(HttpRefusal::new(r.status, ErrorCode::BadRequest, r.message))
        })?;
        if !shared.registry.reserve(cfg.max_connections) {
            C::inc(&counters.rejected_at_capacity);
            return Err(HttpRefusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "connection limit reached",
            )
            .retry_after(5)
            .into());
        }
        let mut slot = SlotGuard { registry: &shared.registry, armed: true };
        let token = head.query_param("token").or_else(|| bearer(&head.headers));
        let identity = self
            .auth
            .authenticate(token.as_deref().filter(|t| !t.is_empty()))
            .await
            .map_err(|e| match e {
                AuthError::Missing | AuthError::Invalid => {
                    C::inc(&counters.rejected_unauthorized);
                    HttpRefusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, e.to_string())
                }
                AuthError::Unavailable(cause) => {
                    tracing::warn!(error = %cause, "authentication unavailable");
                    unavailable("authentication is temporarily unavailable")
                }
            })
            .map_err(Rejection::Http)?;
        let negotiated = if cfg.compression.enabled {
            deflate::negotiate(
                head.headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS).iter().filter_map(|v| v.to_str().ok()),
            )
        } else {
            None
        };
        let response = switching_response(&accept, negotiated.as_ref().map(|(_, r)| r.as_str()));
        let written = tokio::time::timeout(GatewayConfig::dur(cfg.write_timeout_ms), stream.write_all(&response)).await;
        if !matches!(written, Ok(Ok(()))) {
            // The peer is gone; there is nobody to answer.
            return Err(Rejection::Answered);
        }
        let conn = shared.new_connection(identity, ip, negotiated.map(|(p, _)| p));
        match shared.registry.register(&conn, cfg.max_connections_per_user, cfg.per_user_policy) {
            Admission::Admitted => {
                slot.armed = false;
                Ok((conn, None))
            }
            Admission::AdmittedEvicting(old) => {
                slot.armed = false;
                Ok((conn, Some(old)))
            }
            Admission::Refused => {
                C::inc(&counters.per_user_closes);
                let frame = encode_close(
                    CloseCode::TooManyConnections.as_u16(),
                    CloseCode::TooManyConnections.default_reason(),
                    None,
                );
                let _ = tokio::time::timeout(GatewayConfig::dur(cfg.write_timeout_ms), stream.write_all(&frame)).await;
                let _ = stream.shutdown().await;
                Err(Rejection::Answered)
            }
        }
    }

    /// Admits and then serves one WebSocket connection until it closes.
    pub(crate) async fn serve_websocket<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        mut stream: S,
        head: RequestHead,
        leftover: Vec<u8>,
        peer: SocketAddr,
    ) {
        let admitted = Box::pin(self.admit(&mut stream, &head, peer)).await;
        drop(head);
        let (conn, evicted) = match admitted {
            Ok(ok) => ok,
            Err(Rejection::Http(refusal)) => {
                debug!(status = refusal.status.as_u16(), code = ?refusal.code, %peer, "upgrade refused");
                refusal.send(&mut stream).await;
                return;
            }
            Err(Rejection::Answered) => return,
        };
        let shared = self.shared.clone();
        C::inc(&shared.counters.accepted);
        if let Some(old) = evicted {
            C::inc(&shared.counters.per_user_closes);
            old.close(CloseCode::Replaced, CloseCode::Replaced.default_reason());
        }
        // A debug span: at the default info level a kept span costs ~0.45 KiB per connection.
        let span = debug_span!("conn", conn_id = conn.id(), user_id = %conn.user_id(), peer = %conn.peer());
        let handler = self.handler.clone();
        // The session runs in a task of its own, sized for the session alone: the
        // handshake task (TLS, HTTP, admission states) ends here and frees its memory.
        let tracker = shared.tracker.clone();
        let session = async move {
            let cfg = &shared.cfg;
            let mut reader = MessageReader::new(Role::Server, cfg.max_message_bytes, conn.0.deflate.is_some());
            debug!(compressed = conn.compressed(), "connection open");
            let mut state = handler.on_open(&Context { shared: &shared }, &conn);
            let end = session::run(&shared, &*handler, &mut state, &mut stream, &conn, &mut reader, &leftover).await;
            drop(leftover);
            shared.registry.unregister(&conn);
            handler.on_close(&Context { shared: &shared }, &conn, state);
            debug!(%end, "connection closed");
        }
        .instrument(span);
        tracker.spawn(session);
    }
}

/// Why an upgrade did not become a connection.
enum Rejection {
    /// Answer with this HTTP error.
    Http(HttpRefusal),
    /// Already answered (a close frame after the 101) or the peer is gone.
    Answered,
}

impl From<HttpRefusal> for Rejection {
    fn from(r: HttpRefusal) -> Self {
        Rejection::Http(r)
    }
}

//! The accept loop: one port for WebSocket upgrades and plain HTTP, optional TLS,
//! background heartbeats and pruning, and the graceful drain.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rand::Rng;
use rendezvous_protocol::{CloseCode, ErrorCode, ServerMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::gateway::{Gateway, Shared};
use crate::handler::{Authenticator, Handler};
use crate::outbound::Outbound;
use crate::reply::HttpRefusal;
use crate::ws::handshake::{HeadError, RequestHead, parse_head};

/// Largest request head accepted, in bytes.
const MAX_HEAD: usize = 16 * 1024;
const PING: Bytes = Bytes::from_static(&[0x89, 0x00]);

impl<A: Authenticator, H: Handler> Gateway<A, H> {
    /// Serves `listener` until `shutdown` is cancelled, then drains: `/ready` turns 503,
    /// new upgrades get 503, every client gets `server.draining` and is closed with 1001
    /// at a random moment within the drain window. Returns once every connection is
    /// gone or the grace period has passed.
    ///
    /// `http` answers every request that is not a WebSocket upgrade.
    pub async fn run(
        self,
        listener: TcpListener,
        http: axum::Router,
        shutdown: CancellationToken,
    ) -> Result<(), GatewayError> {
        let gw = Arc::new(self);
        let shared = gw.shared.clone();
        let tracker = shared.tracker.clone();
        let stop = CancellationToken::new();
        tracker.spawn(heartbeat(shared.clone(), stop.child_token()));
        tracker.spawn(prune(shared.clone(), stop.child_token()));
        tracker.spawn(accept_loop(gw.clone(), listener, http, stop.clone()));
        shutdown.cancelled().await;
        drain(&shared).await;
        stop.cancel();
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
        Ok(())
    }

    fn is_websocket_path(&self, path: &str) -> bool {
        self.shared.cfg.websocket_paths.iter().any(|p| p == path)
    }

    async fn serve_socket(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        http: axum::Router,
        stop: CancellationToken,
    ) {
        let limit = GatewayConfig::dur(self.shared.cfg.handshake_timeout_ms);
        match self.shared.tls.clone() {
            None => self.serve_stream(tcp, peer, http, stop).await,
            // Boxed: the TLS state is ~5 KB and would otherwise size every plain connection's task.
            Some(acceptor) => {
                Box::pin(async move {
                    if let Ok(Ok(tls)) = tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                        self.serve_stream(tls, peer, http, stop).await;
                    }
                })
                .await
            }
        }
    }

    async fn serve_stream<S>(&self, mut stream: S, peer: SocketAddr, http: axum::Router, stop: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limit = GatewayConfig::dur(self.shared.cfg.handshake_timeout_ms);
        let (head, buf) = match tokio::time::timeout(limit, read_head(&mut stream)).await {
            Ok(Ok(Some(read))) => read,
            Ok(Ok(None)) => return,
            Ok(Err(HeadRead::TooLarge)) => {
                let msg = "request head too large";
                return HttpRefusal::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, ErrorCode::BadRequest, msg)
                    .send(&mut stream)
                    .await;
            }
            Ok(Err(HeadRead::Malformed(e))) => {
                return HttpRefusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, e.to_string())
                    .send(&mut stream)
                    .await;
            }
            Ok(Err(HeadRead::Io)) => return,
            Err(_) => {
                let msg = "request head not received in time";
                return HttpRefusal::new(StatusCode::REQUEST_TIMEOUT, ErrorCode::BadRequest, msg)
                    .send(&mut stream)
                    .await;
            }
        };
        if self.is_websocket_path(&head.path) {
            if head.wants_websocket() {
                let leftover = buf[head.len..].to_vec();
                drop(buf);
                Box::pin(self.serve_websocket(stream, head, leftover, peer)).await;
            } else {
                let msg = "this endpoint only accepts WebSocket upgrades";
                HttpRefusal::new(StatusCode::UPGRADE_REQUIRED, ErrorCode::BadRequest, msg).send(&mut stream).await;
            }
            return;
        }
        drop(head);
        let io = TokioIo::new(Prefixed { prefix: Bytes::from(buf), inner: stream });
        // Handlers read the peer with axum's `ConnectInfo<SocketAddr>` (per-IP limits).
        let http = tower::ServiceExt::map_request(http, move |mut req: http::Request<_>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            req
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limit)
            .serve_connection(io, TowerToHyperService::new(http));
        tokio::select! {
            _ = conn => {}
            () = stop.cancelled() => {}
        }
    }
}

enum HeadRead {
    TooLarge,
    Malformed(HeadError),
    Io,
}

/// Reads until a complete request head; returns it with every byte read so far.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<(RequestHead, Vec<u8>)>, HeadRead> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        match parse_head(&buf) {
            Ok(Some(head)) => return Ok(Some((head, buf))),
            Ok(None) => {}
            Err(e) => return Err(HeadRead::Malformed(e)),
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadRead::TooLarge);
        }
        buf.reserve(1024.min(MAX_HEAD - buf.len()));
        match stream.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(HeadRead::Malformed(HeadError::Malformed)),
            Ok(_) => {}
            Err(_) => return Err(HeadRead::Io),
        }
    }
}

async fn accept_loop<A: Authenticator, H: Handler>(
    gw: Arc<Gateway<A, H>>,
    listener: TcpListener,
    http: axum::Router,
    stop: CancellationToken,
) {
    let tracker = gw.shared.tracker.clone();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tracker.spawn(gw.clone().serve_socket(tcp, peer, http.clone(), stop.clone()));
            }
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let cfg = &shared.cfg.heartbeat;
    let period = GatewayConfig::dur(cfg.interval_ms);
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = shared.now_ms();
        shared.registry.for_each(|c| {
            if now.saturating_sub(c.last_seen_ms()) >= cfg.timeout_ms {
                c.close(CloseCode::HeartbeatTimeout, CloseCode::HeartbeatTimeout.default_reason());
            } else {
                let _ = c.push(Outbound::Control(PING));
            }
        });
    }
}

async fn prune(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(GatewayConfig::dur(shared.cfg.connect_rate.prune_interval_ms));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => shared.connect_limiter.prune(),
        }
    }
}

async fn drain(shared: &Shared) {
    shared.draining.store(true, Ordering::Release);
    let cfg = &shared.cfg.drain;
    let start = Instant::now();
    let deadline = start + GatewayConfig::dur(cfg.grace_ms);
    let mut schedule: Vec<_> = {
        let mut rng = rand::rng();
        shared.registry.snapshot().into_iter().map(|c| (rng.random_range(0..=cfg.window_ms), c)).collect()
    };
    schedule.sort_by_key(|(delay, _)| *delay);
    info!(connections = schedule.len(), window_ms = cfg.window_ms, "draining");
    for (delay, conn) in &schedule {
        let _ = conn.send_text(ServerMessage::Draining { reconnect_after_ms: *delay }.to_json());
    }
    for (delay, conn) in schedule {
        tokio::time::sleep_until(start + Duration::from_millis(delay)).await;
        conn.close(CloseCode::GoingAway, CloseCode::GoingAway.default_reason());
    }
    // Upgrades that were past the draining check when it started.
    shared.registry.for_each(|c| c.close(CloseCode::GoingAway, CloseCode::GoingAway.default_reason()));
    if tokio::time::timeout_at(deadline, shared.registry.wait_empty()).await.is_err() {
        warn!(remaining = shared.registry.connections(), "drain grace period elapsed");
    }
}

/// A stream that first yields bytes already read (the request head), then the socket.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

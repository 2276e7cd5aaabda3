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
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::gateway::{Gateway, Shared};
use crate::handler::{Authenticator, Handler};
use crate::metrics::GatewayCounters as C;
use crate::outbound::Outbound;
use crate::pending::{PendingSlot, PendingSockets};
use crate::reply::HttpRefusal;
use crate::ws::handshake::{HeadError, RequestHead, parse_head};

/// Largest request head accepted, in bytes.
const MAX_HEAD: usize = 16 * 1024;
const PING: Bytes = Bytes::from_static(&[0x89, 0x00]);

/// How often a failing `accept` may log; the lines in between are counted, not printed.
const ACCEPT_WARN_PERIOD: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (usually EMFILE) instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

impl<A: Authenticator, H: Handler> Gateway<A, H> {
    /// Serves `listener` until `shutdown` is cancelled, then drains:
    /// 1. `/ready` turns 503 and new upgrades get 503; the listener stays open through the
    ///    drain so probes and clients get that answer rather than a refused connection;
    /// 2. every client gets `server.draining` and is closed with 1001 at a random moment
    ///    within `drain.window_ms`;
    /// 3. the listener closes and every socket that is not a WebSocket connection is dropped;
    /// 4. every session task is awaited, its handler's `on_close` included, until
    ///    `drain.grace_ms` after the signal; sessions still running then are logged.
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
        // However `run` ends (a forced stop drops it), no pending socket waits out its deadline.
        let _close_pending = ClosePending(shared.pending.clone());
        let background = TaskTracker::new();
        background.spawn(heartbeat(shared.clone(), shutdown.clone()));
        background.spawn(prune(shared.clone(), shutdown.clone()));
        let sockets = TaskTracker::new();
        let mut accepting = Box::pin(accept_loop(gw.clone(), listener, http, sockets.clone()));
        tokio::select! {
            () = &mut accepting => {}
            () = shutdown.cancelled() => {}
        }
        let deadline = Instant::now() + GatewayConfig::dur(shared.cfg.drain.grace_ms);
        tokio::select! {
            () = &mut accepting => {}
            () = drain(&shared) => {}
        }
        drop(accepting);
        shared.pending.close();
        sockets.close();
        background.close();
        // Quick: every socket task was just told to drop its socket, and the background stopped at the signal.
        let _ = tokio::time::timeout_at(deadline, async { tokio::join!(sockets.wait(), background.wait()) }).await;
        // Upgrades that passed the draining check just before it was set.
        shared.registry.for_each(|c| c.close(CloseCode::GoingAway, CloseCode::GoingAway.default_reason()));
        shared.tracker.close();
        if tokio::time::timeout_at(deadline, shared.tracker.wait()).await.is_err() {
            warn!(
                sessions = shared.tracker.len(),
                "drain grace period elapsed; these sessions may still call on_close after the server moves on"
            );
        }
        Ok(())
    }

    fn is_websocket_path(&self, path: &str) -> bool {
        self.shared.cfg.websocket_paths.iter().any(|p| p == path)
    }

    /// Serves one accepted socket until it becomes a WebSocket session or closes, or until
    /// its pending slot says to drop it.
    async fn serve_socket(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, http: axum::Router, slot: PendingSlot) {
        let serve = async {
            match self.shared.tls.clone() {
                None => self.serve_stream(tcp, peer, http, &slot).await,
                // Boxed: the TLS state is ~5 KB and would otherwise size every plain connection's task.
                Some(acceptor) => {
                    Box::pin(async {
                        // A client sends its ClientHello at once; until the handshake is done it counts as waiting.
                        slot.set_waiting(true);
                        if let Ok(Ok(tls)) = tokio::time::timeout(slot.handshake_timeout, acceptor.accept(tcp)).await {
                            slot.set_waiting(false);
                            self.serve_stream(tls, peer, http, &slot).await;
                        }
                    })
                    .await
                }
            }
        };
        tokio::select! {
            // Evicted for a newer socket, or the gateway is stopping: dropping closes the socket.
            () = slot.drop_now().cancelled() => {}
            () = serve => {}
        }
    }

    async fn serve_stream<S>(&self, mut stream: S, peer: SocketAddr, http: axum::Router, slot: &PendingSlot)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limit = slot.handshake_timeout;
        let mut watched = MarkWaiting { inner: &mut stream, slot };
        let read = tokio::time::timeout(limit, read_head(&mut watched)).await;
        // Admission (or an HTTP request) in progress: not a socket to drop for room.
        slot.set_waiting(false);
        let (head, buf) = match read {
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
        // Mostly idle keep-alives: the first to go when room is needed.
        slot.set_waiting(true);
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
        let _ = conn.await;
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

/// Accepts forever; the caller stops it by dropping it (which closes the listener).
async fn accept_loop<A: Authenticator, H: Handler>(
    gw: Arc<Gateway<A, H>>,
    listener: TcpListener,
    http: axum::Router,
    sockets: TaskTracker,
) {
    let shared = gw.shared.clone();
    let mut failures = LogThrottle::new(ACCEPT_WARN_PERIOD);
    loop {
        // Before accepting: an accepted socket holds a descriptor, one in the kernel's queue does not.
        let evicted = shared.pending.make_room().await;
        C::add(&shared.counters.pending_evicted, evicted as u64);
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let slot = shared.pending.admit(Instant::now());
                sockets.spawn(gw.clone().serve_socket(tcp, peer, http.clone(), slot));
            }
            Err(e) => {
                C::inc(&shared.counters.accept_errors);
                if let Some(suppressed) = failures.allow(Instant::now()) {
                    warn!(error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Tells the pending slot its socket waits on the peer whenever a read finds nothing.
struct MarkWaiting<'a, S> {
    inner: &'a mut S,
    slot: &'a PendingSlot,
}

impl<S: AsyncRead + Unpin> AsyncRead for MarkWaiting<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if polled.is_pending() {
            self.slot.set_waiting(true);
        }
        polled
    }
}

/// Drops every pending socket when dropped.
struct ClosePending(Arc<PendingSockets>);

impl Drop for ClosePending {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Lets one log line through per `period` and counts the ones held back, so a failure
/// that repeats many times a second (EMFILE) cannot flood the log.
struct LogThrottle {
    period: Duration,
    next: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    fn new(period: Duration) -> Self {
        Self { period, next: None, suppressed: 0 }
    }

    /// `Some(lines held back since the last one)` when a line may be logged at `now`.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next = Some(now + self.period);
                Some(std::mem::take(&mut self.suppressed))
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

/// Flips to draining, announces it, and closes every connection at its scheduled moment.
async fn drain(shared: &Shared) {
    shared.draining.store(true, Ordering::Release);
    let cfg = &shared.cfg.drain;
    let start = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_throttle_lets_one_line_through_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut t = LogThrottle::new(Duration::from_secs(5));
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=99 {
            assert_eq!(t.allow(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(t.allow(t0 + Duration::from_millis(4_999)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(5)), Some(100));
        assert_eq!(t.allow(t0 + Duration::from_secs(6)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(20)), Some(1));
    }
}

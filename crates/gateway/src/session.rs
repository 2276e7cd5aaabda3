//! The life of one upgraded connection: read, dispatch, write, close.
//!
//! One task per connection does all of it. Reads go into a per-thread scratch
//! buffer, so an idle connection owns no read buffer; writes drain the
//! connection's outbound queue, which other tasks fill without blocking.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rendezvous_protocol::{CloseCode, ErrorCode, ErrorFrame, ServerMessage};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::config::GatewayConfig;
use crate::conn::{CloseRequest, Connection};
use crate::gateway::Shared;
use crate::handler::{self, Handler};
use crate::limits::{MessageLimiter, Verdict};
use crate::metrics::GatewayCounters as C;
use crate::outbound::Outbound;
use crate::ws::deflate::DeflatePool;
use crate::ws::frame::{OpCode, encode_close, encode_frame};
use crate::ws::reader::{Event, MessageReader, Violation};

const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    /// The read buffer every connection on this worker thread shares.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_LEN].into_boxed_slice());
}

enum ReadOutcome {
    /// Bytes were read; `events` holds what they completed, then maybe a violation.
    Data(usize, Option<Violation>),
    Eof,
}

fn poll_read_events<S: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    stream: &mut S,
    reader: &mut MessageReader,
    pool: &DeflatePool,
    events: &mut Vec<Event>,
) -> Poll<io::Result<ReadOutcome>> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut buf = ReadBuf::new(&mut scratch[..]);
        match Pin::new(stream).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(ReadOutcome::Eof)),
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                let violation = reader.feed(buf.filled(), pool, events).err();
                Poll::Ready(Ok(ReadOutcome::Data(n, violation)))
            }
        }
    })
}

/// How a session ended, for logs.
pub(crate) enum End {
    PeerClosed(Option<u16>),
    ServerClosed(CloseCode),
    Violation(Violation),
    Eof,
    Io(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerClosed(Some(code)) => write!(f, "peer closed with {code}"),
            End::PeerClosed(None) => write!(f, "peer closed without a code"),
            End::ServerClosed(code) => write!(f, "server closed with {code}"),
            End::Violation(v) => write!(f, "protocol violation: {v}"),
            End::Eof => write!(f, "peer disconnected without closing"),
            End::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], limit: Duration) -> io::Result<()> {
    match tokio::time::timeout(limit, stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

/// Drives one connection until it closes. `leftover` holds bytes read with the handshake.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<S, H>(
    shared: &Arc<Shared>,
    handler: &H,
    state: &mut H::State,
    stream: &mut S,
    conn: &Connection,
    reader: &mut MessageReader,
    leftover: &[u8],
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let cfg: &GatewayConfig = &shared.cfg;
    let write_timeout = GatewayConfig::dur(cfg.write_timeout_ms);
    let limiter = MessageLimiter::new(&cfg.message_rate);
    let mut events = Vec::new();
    let mut pending_violation = None;
    if !leftover.is_empty() {
        pending_violation = reader.feed(leftover, &shared.encoder.pool, &mut events).err();
    }
    loop {
        // 1. Handle what was read.
        for event in events.drain(..) {
            match event {
                Event::Message(msg) => {
                    C::inc(&shared.counters.messages_in);
                    match limiter.check() {
                        Verdict::Allow => handler.on_message(&handler::Context { shared }, conn, state, msg),
                        Verdict::Refuse => {
                            C::inc(&shared.counters.messages_rate_limited);
                            let frame =
                                ErrorFrame::new(ErrorCode::RateLimited, "message rate limit exceeded; slow down");
                            let _ = conn.send_text(ServerMessage::Error(frame).to_json());
                        }
                        Verdict::Close => {
                            C::inc(&shared.counters.rate_limit_closes);
                            conn.close(CloseCode::RateLimited, CloseCode::RateLimited.default_reason());
                        }
                    }
                }
                Event::Ping(payload) => {
                    let _ = conn.push(Outbound::Control(encode_frame(OpCode::Pong, true, false, &payload, None)));
                }
                Event::Pong(_) => {}
                Event::Close(frame) => {
                    // Echo the peer's code, then close the TCP connection (the server closes first).
                    let code = frame.as_ref().map(|f| f.code);
                    let reply = match code {
                        Some(c) => encode_close(c, "", None),
                        None => encode_frame(OpCode::Close, true, false, &[], None),
                    };
                    // Boxed: rare, and would otherwise size every idle connection's future.
                    Box::pin(async {
                        let _ = flush(shared, stream, conn, write_timeout).await;
                        let _ = write_all(stream, &reply, write_timeout).await;
                        let _ = stream.shutdown().await;
                    })
                    .await;
                    return End::PeerClosed(code);
                }
            }
        }
        if let Some(v) = pending_violation.take() {
            C::inc(&shared.counters.protocol_closes);
            Box::pin(async {
                let _ = flush(shared, stream, conn, write_timeout).await;
                close(shared, stream, reader, CloseRequest { code: v.code, reason: v.reason.into() }).await;
            })
            .await;
            return End::Violation(v);
        }
        // 2. Write what is queued; perform a requested close.
        match flush(shared, stream, conn, write_timeout).await {
            Ok(None) => {}
            Ok(Some(req)) => {
                let code = req.code;
                match code {
                    CloseCode::PolicyViolation => C::inc(&shared.counters.slow_consumers),
                    CloseCode::HeartbeatTimeout => C::inc(&shared.counters.heartbeat_timeouts),
                    _ => {}
                }
                Box::pin(close(shared, stream, reader, req)).await;
                return End::ServerClosed(code);
            }
            Err(e) => return End::Io(e),
        }
        // 3. Wait for the peer or for something to send.
        let outcome = tokio::select! {
            biased;
            () = conn.0.wake.notified() => continue,
            r = poll_fn(|cx| poll_read_events(cx, stream, reader, &shared.encoder.pool, &mut events)) => r,
        };
        match outcome {
            Ok(ReadOutcome::Data(n, violation)) => {
                C::add(&shared.counters.bytes_in, n as u64);
                conn.touch(shared.now_ms());
                pending_violation = violation;
            }
            Ok(ReadOutcome::Eof) => return End::Eof,
            Err(e) => return End::Io(e),
        }
    }
}

/// Writes everything queued. Returns the close request, if one is pending.
async fn flush<S: AsyncWrite + Unpin>(
    shared: &Shared,
    stream: &mut S,
    conn: &Connection,
    limit: Duration,
) -> io::Result<Option<CloseRequest>> {
    let (items, close) = conn.take();
    if items.is_empty() {
        return Ok(close);
    }
    let mut written = 0u64;
    let mut messages = 0u64;
    // One timer for the whole batch keeps this future (and so every connection's task) small.
    let batch = async {
        for item in items {
            let frame: Bytes = match item {
                Outbound::Message(m) => {
                    messages += 1;
                    m.frame(&shared.encoder, conn.0.deflate)
                }
                Outbound::Control(b) => b,
            };
            stream.write_all(&frame).await?;
            written += frame.len() as u64;
        }
        stream.flush().await
    };
    match tokio::time::timeout(limit, batch).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
    C::add(&shared.counters.bytes_out, written);
    C::add(&shared.counters.messages_out, messages);
    Ok(close)
}

/// Sends a close frame, then waits briefly for the peer's close (or EOF) before dropping.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    stream: &mut S,
    reader: &mut MessageReader,
    req: CloseRequest,
) {
    let cfg = &shared.cfg;
    let frame = encode_close(req.code.as_u16(), &req.reason, None);
    if write_all(stream, &frame, GatewayConfig::dur(cfg.write_timeout_ms)).await.is_err() {
        return;
    }
    let _ = stream.flush().await;
    let wait_for_peer = async {
        let mut events = Vec::new();
        loop {
            events.clear();
            match poll_fn(|cx| poll_read_events(cx, stream, reader, &shared.encoder.pool, &mut events)).await {
                Ok(ReadOutcome::Data(_, violation)) => {
                    if violation.is_some() || events.iter().any(|e| matches!(e, Event::Close(_))) {
                        return;
                    }
                }
                Ok(ReadOutcome::Eof) | Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(GatewayConfig::dur(cfg.close_timeout_ms), wait_for_peer).await;
    let _ = stream.shutdown().await;
}

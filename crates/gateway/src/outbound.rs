//! Messages on their way out: encoded once, shared by every recipient.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::ws::deflate::{DeflateParams, DeflatePool, MAX_WINDOW_BITS, MIN_WINDOW_BITS};
use crate::ws::frame::{OpCode, encode_frame};

/// A message encoded once and sendable to any number of connections.
///
/// The plain frame and each compressed variant are built on first use and then
/// shared: a broadcast to 10,000 connections serializes and compresses once.
#[derive(Clone)]
pub struct SharedMessage(Arc<Encoded>);

struct Encoded {
    opcode: OpCode,
    payload: Bytes,
    plain: OnceLock<Bytes>,
    compressed: [OnceLock<Bytes>; (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1) as usize],
}

impl std::fmt::Debug for SharedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMessage").field("len", &self.0.payload.len()).finish()
    }
}

impl SharedMessage {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(OpCode::Text, Bytes::from(text.into()))
    }

    /// A binary message (used by the echo mode; the Rendezvous protocol is text-only).
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self::new(OpCode::Binary, data.into())
    }

    fn new(opcode: OpCode, payload: Bytes) -> Self {
        Self(Arc::new(Encoded { opcode, payload, plain: OnceLock::new(), compressed: Default::default() }))
    }

    /// The payload length before compression.
    pub fn len(&self) -> usize {
        self.0.payload.len()
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.0.payload.is_empty()
    }

    /// The payload of a text message (tests and test doubles read it back).
    pub fn as_text(&self) -> Option<&str> {
        match self.0.opcode {
            OpCode::Text => std::str::from_utf8(&self.0.payload).ok(),
            _ => None,
        }
    }

    /// True when both are the same encoded message (shared, not merely equal).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// The frame bytes for a recipient with the given deflate parameters.
    pub(crate) fn frame(&self, encoder: &FrameEncoder, deflate: Option<DeflateParams>) -> Bytes {
        let e = &*self.0;
        match deflate {
            Some(p) if e.payload.len() >= encoder.threshold => {
                let slot = &e.compressed
                    [usize::from(p.server_window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS) - MIN_WINDOW_BITS)];
                slot.get_or_init(|| {
                    let packed = encoder.pool.compress(&e.payload, p.server_window_bits);
                    if packed.len() < e.payload.len() {
                        encode_frame(e.opcode, true, true, &packed, None)
                    } else {
                        self.plain_frame()
                    }
                })
                .clone()
            }
            _ => self.plain_frame(),
        }
    }

    fn plain_frame(&self) -> Bytes {
        let e = &*self.0;
        e.plain.get_or_init(|| encode_frame(e.opcode, true, false, &e.payload, None)).clone()
    }
}

/// Compression settings and pool shared by every connection.
pub(crate) struct FrameEncoder {
    pub(crate) pool: DeflatePool,
    pub(crate) threshold: usize,
}

/// One item in a connection's outbound queue.
pub(crate) enum Outbound {
    Message(SharedMessage),
    /// A pre-encoded control frame (ping, pong).
    Control(Bytes),
}

impl Outbound {
    pub(crate) fn cost(&self) -> usize {
        match self {
            Outbound::Message(m) => m.len(),
            Outbound::Control(b) => b.len(),
        }
    }
}

//! Turns received bytes into whole messages: framing rules, fragmentation,
//! UTF-8 validation and permessage-deflate inflation (sans I/O).
//!
//! The reader keeps no buffer while idle: bytes are parsed straight from the
//! caller's (shared) read buffer and only an incomplete frame is copied out.

use rendezvous_protocol::CloseCode;

use super::deflate::{DeflatePool, InflateError};
use super::frame::{FrameHeader, HeaderError, OpCode, apply_mask, parse_header};

/// Which end of the connection this reader sits at; decides the masking rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads client frames, which must be masked.
    Server,
    /// Reads server frames, which must not be masked.
    Client,
}

/// A complete data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, already validated as UTF-8.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

/// A close frame's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The close code.
    pub code: u16,
    /// The reason text (may be empty).
    pub reason: String,
}

/// What the reader produced from the bytes fed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole data message.
    Message(Message),
    /// A ping with its payload; answer with a pong carrying the same payload.
    Ping(Vec<u8>),
    /// A pong.
    Pong(Vec<u8>),
    /// The peer started the closing handshake; `None` when it gave no code.
    Close(Option<CloseFrame>),
}

/// The peer broke the protocol; close the connection with this code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({code})")]
pub struct Violation {
    /// The close code to send.
    pub code: CloseCode,
    /// The close reason to send.
    pub reason: &'static str,
}

fn violation(code: CloseCode, reason: &'static str) -> Violation {
    Violation { code, reason }
}

struct Fragmented {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
    utf8_checked: usize,
}

/// The per-connection frame and message parser.
pub struct MessageReader {
    role: Role,
    max_message: usize,
    deflate: bool,
    pending: Vec<u8>,
    fragment: Option<Box<Fragmented>>,
    closed: bool,
}

impl std::fmt::Debug for MessageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageReader")
            .field("role", &self.role)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl MessageReader {
    /// A reader for `role` that refuses messages over `max_message` bytes and accepts
    /// compressed messages only when `deflate` was negotiated.
    pub fn new(role: Role, max_message: usize, deflate: bool) -> Self {
        Self { role, max_message, deflate, pending: Vec::new(), fragment: None, closed: false }
    }

    /// Bytes held for an incomplete frame or message (zero for an idle connection).
    pub fn buffered(&self) -> usize {
        self.pending.capacity() + self.fragment.as_ref().map_or(0, |f| f.data.capacity())
    }

    /// Parses `input`, pushing every complete event to `events`.
    ///
    /// After an error the connection must be closed; the reader is not reusable.
    pub fn feed(&mut self, input: &[u8], pool: &DeflatePool, events: &mut Vec<Event>) -> Result<(), Violation> {
        if self.closed {
            return Ok(());
        }
        if self.pending.is_empty() {
            let used = self.process(input, pool, events)?;
            if used < input.len() {
                self.keep_pending(&input[used..]);
            }
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(input);
        let used = self.process(&pending, pool, events)?;
        if used < pending.len() {
            if used == 0 {
                self.pending = pending;
            } else {
                self.keep_pending(&pending[used..]);
            }
        }
        Ok(())
    }

    fn keep_pending(&mut self, rest: &[u8]) {
        // Reserve the whole frame once its header is known, so a large frame arriving
        // in many reads is copied into one allocation.
        let want = match parse_header(rest) {
            Ok(Some(h)) => (h.header_len as u64 + h.payload_len).min(self.max_message as u64 + 14) as usize,
            _ => rest.len(),
        };
        let mut v = Vec::with_capacity(want.max(rest.len()));
        v.extend_from_slice(rest);
        self.pending = v;
    }

    fn process(&mut self, buf: &[u8], pool: &DeflatePool, events: &mut Vec<Event>) -> Result<usize, Violation> {
        let mut pos = 0;
        while pos < buf.len() && !self.closed {
            let header = match parse_header(&buf[pos..]) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(HeaderError::ReservedBits) => {
                    return Err(violation(CloseCode::ProtocolError, "reserved bits set"));
                }
                Err(HeaderError::ReservedOpcode(_)) => {
                    return Err(violation(CloseCode::ProtocolError, "reserved opcode"));
                }
                Err(HeaderError::LengthOverflow | HeaderError::NonMinimalLength) => {
                    return Err(violation(CloseCode::ProtocolError, "invalid payload length"));
                }
            };
            self.check_header(&header)?;
            let total = header.header_len + header.payload_len as usize;
            if buf.len() - pos < total {
                break;
            }
            let mut payload = buf[pos + header.header_len..pos + total].to_vec();
            if let Some(mask) = header.mask {
                apply_mask(&mut payload, mask, 0);
            }
            pos += total;
            self.on_frame(header, payload, pool, events)?;
        }
        Ok(pos)
    }

    fn check_header(&self, h: &FrameHeader) -> Result<(), Violation> {
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => {
                return Err(violation(CloseCode::ProtocolError, "client frames must be masked"));
            }
            (Role::Client, true) => {
                return Err(violation(CloseCode::ProtocolError, "server frames must not be masked"));
            }
            _ => {}
        }
        if h.opcode.is_control() {
            if !h.fin {
                return Err(violation(CloseCode::ProtocolError, "fragmented control frame"));
            }
            if h.payload_len > 125 {
                return Err(violation(CloseCode::ProtocolError, "control frame too long"));
            }
            if h.rsv1 {
                return Err(violation(CloseCode::ProtocolError, "reserved bits set"));
            }
            return Ok(());
        }
        if h.rsv1 && (!self.deflate || h.opcode == OpCode::Continuation) {
            return Err(violation(CloseCode::ProtocolError, "reserved bits set"));
        }
        let already = self.fragment.as_ref().map_or(0, |f| f.data.len() as u64);
        if h.payload_len.saturating_add(already) > self.max_message as u64 {
            return Err(violation(CloseCode::MessageTooBig, "message too big"));
        }
        Ok(())
    }

    fn on_frame(
        &mut self,
        h: FrameHeader,
        payload: Vec<u8>,
        pool: &DeflatePool,
        events: &mut Vec<Event>,
    ) -> Result<(), Violation> {
        match h.opcode {
            OpCode::Ping => events.push(Event::Ping(payload)),
            OpCode::Pong => events.push(Event::Pong(payload)),
            OpCode::Close => {
                self.closed = true;
                events.push(Event::Close(parse_close(&payload)?));
            }
            OpCode::Text | OpCode::Binary => {
                if self.fragment.is_some() {
                    return Err(violation(CloseCode::ProtocolError, "expected a continuation frame"));
                }
                let text = h.opcode == OpCode::Text;
                let mut frag = Fragmented { text, compressed: h.rsv1, data: payload, utf8_checked: 0 };
                if h.fin {
                    events.push(Event::Message(self.finish(frag, pool)?));
                } else {
                    check_partial_utf8(&mut frag)?;
                    self.fragment = Some(Box::new(frag));
                }
            }
            OpCode::Continuation => {
                let Some(frag) = self.fragment.as_mut() else {
                    return Err(violation(CloseCode::ProtocolError, "continuation without a message"));
                };
                frag.data.extend_from_slice(&payload);
                check_partial_utf8(frag)?;
                if h.fin {
                    let frag = self.fragment.take().map(|b| *b);
                    if let Some(frag) = frag {
                        events.push(Event::Message(self.finish(frag, pool)?));
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&self, frag: Fragmented, pool: &DeflatePool) -> Result<Message, Violation> {
        let data = if frag.compressed {
            pool.decompress(&frag.data, self.max_message).map_err(|e| match e {
                InflateError::TooBig => violation(CloseCode::MessageTooBig, "message too big"),
                InflateError::Corrupt => violation(CloseCode::InvalidPayload, "invalid compressed data"),
            })?
        } else {
            frag.data
        };
        if frag.text {
            String::from_utf8(data)
                .map(Message::Text)
                .map_err(|_| violation(CloseCode::InvalidPayload, "invalid UTF-8"))
        } else {
            Ok(Message::Binary(data))
        }
    }
}

/// Fails fast on invalid UTF-8 in an uncompressed text message still being received.
fn check_partial_utf8(frag: &mut Fragmented) -> Result<(), Violation> {
    if !frag.text || frag.compressed {
        return Ok(());
    }
    match std::str::from_utf8(&frag.data[frag.utf8_checked..]) {
        Ok(_) => frag.utf8_checked = frag.data.len(),
        Err(e) if e.error_len().is_some() => {
            return Err(violation(CloseCode::InvalidPayload, "invalid UTF-8"));
        }
        Err(e) => frag.utf8_checked += e.valid_up_to(),
    }
    Ok(())
}

fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, Violation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(violation(CloseCode::ProtocolError, "close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_close_code(code) {
                return Err(violation(CloseCode::ProtocolError, "invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| violation(CloseCode::InvalidPayload, "invalid UTF-8 in close reason"))?;
            Ok(Some(CloseFrame { code, reason: reason.to_owned() }))
        }
    }
}

/// Close codes a peer may send (RFC 6455 §7.4 and the IANA registry).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{encode_close, encode_frame};
    use proptest::prelude::*;

    const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn read_all(reader: &mut MessageReader, bytes: &[u8]) -> Result<Vec<Event>, Violation> {
        let pool = DeflatePool::new(6);
        let mut events = Vec::new();
        reader.feed(bytes, &pool, &mut events)?;
        Ok(events)
    }

    fn server() -> MessageReader {
        MessageReader::new(Role::Server, 1024, true)
    }

    #[test]
    fn reads_a_masked_text_message() {
        let f = encode_frame(OpCode::Text, true, false, b"hello", MASK);
        assert_eq!(read_all(&mut server(), &f).unwrap(), vec![Event::Message(Message::Text("hello".into()))]);
    }

    #[test]
    fn refuses_unmasked_client_frames() {
        let f = encode_frame(OpCode::Text, true, false, b"hello", None);
        assert_eq!(read_all(&mut server(), &f).unwrap_err().code, CloseCode::ProtocolError);
    }

    #[test]
    fn refuses_oversized_messages_before_reading_them() {
        let f = encode_frame(OpCode::Binary, true, false, &[0; 2000], MASK);
        assert_eq!(read_all(&mut server(), &f[..20]).unwrap_err().code, CloseCode::MessageTooBig);
        let mut r = server();
        let a = encode_frame(OpCode::Binary, false, false, &[0; 800], MASK);
        let b = encode_frame(OpCode::Continuation, true, false, &[0; 800], MASK);
        read_all(&mut r, &a).unwrap();
        assert_eq!(read_all(&mut r, &b).unwrap_err().code, CloseCode::MessageTooBig);
    }

    #[test]
    fn fails_fast_on_invalid_utf8_in_a_fragment() {
        let mut r = server();
        let a = encode_frame(OpCode::Text, false, false, &[0xCE, 0xBA, 0xF4, 0x90], MASK);
        assert_eq!(read_all(&mut r, &a).unwrap_err().code, CloseCode::InvalidPayload);
    }

    #[test]
    fn refuses_bad_close_frames() {
        assert_eq!(
            read_all(&mut server(), &encode_frame(OpCode::Close, true, false, &[3], MASK)).unwrap_err().code,
            CloseCode::ProtocolError
        );
        assert_eq!(read_all(&mut server(), &encode_close(1005, "", MASK)).unwrap_err().code, CloseCode::ProtocolError);
        assert_eq!(
            read_all(&mut server(), &encode_frame(OpCode::Close, true, false, &[0x03, 0xE8, 0xFF], MASK))
                .unwrap_err()
                .code,
            CloseCode::InvalidPayload
        );
        assert_eq!(
            read_all(&mut server(), &encode_close(4000, "bye", MASK)).unwrap(),
            vec![Event::Close(Some(CloseFrame { code: 4000, reason: "bye".into() }))]
        );
    }

    #[test]
    fn refuses_compressed_frames_without_negotiation() {
        let mut r = MessageReader::new(Role::Server, 1024, false);
        let f = encode_frame(OpCode::Text, true, true, b"x", MASK);
        assert_eq!(read_all(&mut r, &f).unwrap_err().code, CloseCode::ProtocolError);
    }

    #[test]
    fn idle_reader_holds_no_buffer() {
        let mut r = server();
        let f = encode_frame(OpCode::Text, true, false, b"hello world", MASK);
        read_all(&mut r, &f[..5]).unwrap();
        assert!(r.buffered() > 0);
        read_all(&mut r, &f[5..]).unwrap();
        assert_eq!(r.buffered(), 0);
    }

    fn message_strategy() -> impl Strategy<Value = (bool, Vec<u8>, bool)> {
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..3000), any::<bool>())
    }

    proptest! {
        /// Any message, split into any fragments, compressed or not, delivered in any
        /// read sizes, comes out whole and unchanged.
        #[test]
        fn fragmentation_and_chunking_round_trip(
            msgs in proptest::collection::vec(message_strategy(), 1..4),
            frag_size in 1usize..500,
            chunk in 1usize..700,
            ping_between: bool,
        ) {
            let pool = DeflatePool::new(6);
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for (text, bytes, compress) in msgs {
                let (op, msg) = if text {
                    let s = String::from_utf8_lossy(&bytes).into_owned();
                    (OpCode::Text, Message::Text(s.clone()))
                } else {
                    (OpCode::Binary, Message::Binary(bytes.clone()))
                };
                let body: Vec<u8> = match &msg { Message::Text(s) => s.clone().into_bytes(), Message::Binary(b) => b.clone() };
                let payload = if compress { pool.compress(&body, 15) } else { body.clone() };
                let pieces: Vec<&[u8]> = if payload.is_empty() { vec![&[][..]] } else { payload.chunks(frag_size).collect() };
                for (i, piece) in pieces.iter().enumerate() {
                    let first = i == 0;
                    let last = i == pieces.len() - 1;
                    let opcode = if first { op } else { OpCode::Continuation };
                    wire.extend_from_slice(&encode_frame(opcode, last, compress && first, piece, MASK));
                    if ping_between && !last {
                        wire.extend_from_slice(&encode_frame(OpCode::Ping, true, false, b"p", MASK));
                        expected.push(Event::Ping(b"p".to_vec()));
                    }
                }
                expected.push(Event::Message(msg));
            }
            let mut reader = MessageReader::new(Role::Server, 1 << 20, true);
            let mut events = Vec::new();
            for c in wire.chunks(chunk) {
                reader.feed(c, &pool, &mut events).unwrap();
            }
            prop_assert_eq!(events, expected);
            prop_assert_eq!(reader.buffered(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..300) {
            let pool = DeflatePool::new(6);
            let mut reader = MessageReader::new(Role::Server, 4096, true);
            let mut events = Vec::new();
            for c in data.chunks(chunk) {
                if reader.feed(c, &pool, &mut events).is_err() { break; }
            }
        }
    }
}

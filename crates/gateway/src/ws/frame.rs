//! RFC 6455 frame headers: parsing, encoding and masking.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// A continuation of a fragmented message.
    Continuation,
    /// A UTF-8 text message (or its first fragment).
    Text,
    /// A binary message (or its first fragment).
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl OpCode {
    fn from_bits(b: u8) -> Option<Self> {
        Some(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1: "this message is compressed" under permessage-deflate.
    pub rsv1: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// Header length in bytes (2 to 14).
    pub header_len: usize,
}

/// Why a header could not be accepted. The reader maps these to close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// RSV2 or RSV3 set: no negotiated extension defines them.
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    ReservedOpcode(u8),
    /// A 64-bit length with the most significant bit set.
    LengthOverflow,
    /// A 16- or 64-bit length used where a shorter form fits (RFC 6455 §5.2 "minimal number of bytes").
    NonMinimalLength,
}

/// Parses a frame header from the front of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, HeaderError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x30 != 0 {
        return Err(HeaderError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(HeaderError::ReservedOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    let (payload_len, mut len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let n = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
            if n < 126 {
                return Err(HeaderError::NonMinimalLength);
            }
            (n, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(HeaderError::LengthOverflow);
            }
            if n <= u64::from(u16::MAX) {
                return Err(HeaderError::NonMinimalLength);
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        if buf.len() < len + 4 {
            return Ok(None);
        }
        let m = [buf[len], buf[len + 1], buf[len + 2], buf[len + 3]];
        len += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(FrameHeader { fin: b0 & 0x80 != 0, rsv1: b0 & 0x40 != 0, opcode, mask, payload_len, header_len: len }))
}

/// XORs `data` with the 4-byte `mask`, starting at mask position `offset % 4`.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut rotated = [0u8; 4];
    for (i, r) in rotated.iter_mut().enumerate() {
        *r = mask[(offset + i) % 4];
    }
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2], rotated[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(b) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= rotated[i % 4];
    }
}

/// Encodes one whole frame. `mask` is `Some` for the client role, `None` for the server role.
pub fn encode_frame(opcode: OpCode, fin: bool, rsv1: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 14);
    let b0 = (u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode.bits();
    out.put_u8(b0);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.put_u8(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(mask_bit | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(mask_bit | 127);
            out.put_u64(n as u64);
        }
    }
    match mask {
        Some(m) => {
            out.put_slice(&m);
            let start = out.len();
            out.put_slice(payload);
            apply_mask(&mut out[start..], m, 0);
        }
        None => out.put_slice(payload),
    }
    out.freeze()
}

/// Encodes a close frame carrying `code` and `reason` (the reason is cut to fit 125 bytes).
pub fn encode_close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(OpCode::Close, true, false, &payload, mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_reserved_bits_and_opcodes() {
        assert_eq!(parse_header(&[0x91, 0x80]), Err(HeaderError::ReservedBits));
        assert_eq!(parse_header(&[0x83, 0x80]), Err(HeaderError::ReservedOpcode(3)));
        assert_eq!(parse_header(&[0x8B, 0x80]), Err(HeaderError::ReservedOpcode(0xB)));
    }

    #[test]
    fn rejects_non_minimal_and_overflowing_lengths() {
        assert_eq!(parse_header(&[0x82, 126, 0, 5]), Err(HeaderError::NonMinimalLength));
        assert_eq!(parse_header(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]), Err(HeaderError::LengthOverflow));
    }

    #[test]
    fn needs_more_bytes_for_partial_headers() {
        assert_eq!(parse_header(&[0x81]), Ok(None));
        assert_eq!(parse_header(&[0x81, 0xFE, 1]), Ok(None));
        assert_eq!(parse_header(&[0x81, 0x85, 1, 2]), Ok(None));
    }

    proptest! {
        #[test]
        fn header_round_trips(len in 0usize..70_000, fin: bool, rsv1: bool, mask: Option<[u8; 4]>) {
            let payload = vec![0x5Au8; len];
            let frame = encode_frame(OpCode::Binary, fin, rsv1, &payload, mask);
            let h = parse_header(&frame).unwrap().unwrap();
            prop_assert_eq!(h.fin, fin);
            prop_assert_eq!(h.rsv1, rsv1);
            prop_assert_eq!(h.mask, mask);
            prop_assert_eq!(h.payload_len as usize, len);
            prop_assert_eq!(h.header_len + len, frame.len());
            let mut body = frame[h.header_len..].to_vec();
            if let Some(m) = mask { apply_mask(&mut body, m, 0); }
            prop_assert_eq!(body, payload);
        }

        #[test]
        fn masking_in_pieces_equals_masking_whole(data in proptest::collection::vec(any::<u8>(), 0..200), mask: [u8; 4], cut in 0usize..200) {
            let cut = cut.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, mask, 0);
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, cut);
            prop_assert_eq!(whole, pieces);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = parse_header(&data);
        }
    }
}

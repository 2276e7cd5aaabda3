//! The bytes a network transport sends per message: who published it, then the payload.
//!
//! `[version: u8 = 1][origin length: u16 BE][origin: UTF-8][payload]`: three bytes of
//! overhead plus the instance name. The version byte lets a later format be told apart
//! during a rolling upgrade instead of being misread.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{BusError, BusMessage};

const VERSION: u8 = 1;
const HEADER: usize = 3;

/// Why a received envelope was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EnvelopeError {
    /// Shorter than its header or its stated origin.
    #[error("truncated envelope ({0} bytes)")]
    Truncated(usize),
    /// Written by a format this build does not know.
    #[error("unknown envelope version {0}")]
    Version(u8),
    /// The origin is not UTF-8.
    #[error("envelope origin is not UTF-8")]
    Origin,
}

/// One buffer holding `origin` and `payload`; fails only for an origin over 65535 bytes.
pub(crate) fn encode(origin: &str, payload: &[u8]) -> Result<Bytes, BusError> {
    let len = u16::try_from(origin.len()).map_err(|_| BusError::InvalidInstance(origin.len()))?;
    let mut buf = BytesMut::with_capacity(HEADER + origin.len() + payload.len());
    buf.put_u8(VERSION);
    buf.put_u16(len);
    buf.put_slice(origin.as_bytes());
    buf.put_slice(payload);
    Ok(buf.freeze())
}

/// The message in `bytes`; the payload shares the buffer rather than copying it.
pub(crate) fn decode(bytes: Bytes) -> Result<BusMessage, EnvelopeError> {
    if bytes.len() < HEADER {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    if bytes[0] != VERSION {
        return Err(EnvelopeError::Version(bytes[0]));
    }
    let len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
    if bytes.len() < HEADER + len {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    let origin = std::str::from_utf8(&bytes[HEADER..HEADER + len]).map_err(|_| EnvelopeError::Origin)?;
    Ok(BusMessage { origin: Arc::from(origin), payload: bytes.slice(HEADER + len..) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_origin_and_payload() {
        for (origin, payload) in [("a", &b"hi"[..]), ("instance-7", b""), ("", b"\0\x01\xff")] {
            let m = decode(encode(origin, payload).unwrap()).unwrap();
            assert_eq!((&*m.origin, &m.payload[..]), (origin, payload));
        }
        assert_eq!(encode("ab", b"xyz").unwrap().len(), 3 + 2 + 3, "three bytes of overhead");
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        assert_eq!(decode(Bytes::from_static(b"\x01\x00")), Err(EnvelopeError::Truncated(2)));
        assert_eq!(decode(Bytes::from_static(b"\x02\x00\x00")), Err(EnvelopeError::Version(2)));
        assert_eq!(decode(Bytes::from_static(b"\x01\x00\x05abc")), Err(EnvelopeError::Truncated(6)));
        assert_eq!(decode(Bytes::from_static(b"\x01\x00\x01\xff")), Err(EnvelopeError::Origin));
    }

    #[test]
    fn an_origin_too_long_for_the_header_is_refused() {
        let long = "x".repeat(70_000);
        assert!(matches!(encode(&long, b""), Err(BusError::InvalidInstance(70_000))));
    }
}

//! permessage-deflate (RFC 7692): offer negotiation and pooled (de)compressors.
//!
//! The server always answers with `server_no_context_takeover` and imposes
//! `client_no_context_takeover`, so every message is (de)compressed on its own and
//! no connection owns a compressor: they live in [`DeflatePool`] and are reset after use.
//! That is also what lets one compressed broadcast frame go to every recipient.

use std::sync::Mutex;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The tail every sync-flushed deflate block ends with; RFC 7692 strips it on the wire.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];
/// Smallest window zlib can produce for raw deflate (it cannot do RFC 7692's 8).
pub const MIN_WINDOW_BITS: u8 = 9;
/// Largest (and default) deflate window.
pub const MAX_WINDOW_BITS: u8 = 15;
/// How many idle (de)compressors each pool keeps; extras are dropped to bound memory.
const POOL_KEEP: usize = 16;

/// What a connection negotiated: whether deflate is on, and the server's window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The window the server compresses with (`server_max_window_bits`), 9..=15.
    pub server_window_bits: u8,
}

/// Picks the first acceptable `permessage-deflate` offer from `Sec-WebSocket-Extensions`
/// values and returns its parameters and the response header value. Unacceptable offers
/// are skipped, as RFC 7692 §5 allows; none acceptable means no compression.
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<(DeflateParams, String)> {
    for value in header_values {
        for offer in split_outside_quotes(value, ',') {
            if let Some(params) = accept_offer(offer) {
                let mut response =
                    String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
                if params.server_window_bits != MAX_WINDOW_BITS {
                    response.push_str(&format!("; server_max_window_bits={}", params.server_window_bits));
                }
                return Some((params, response));
            }
        }
    }
    None
}

fn accept_offer(offer: &str) -> Option<DeflateParams> {
    let mut parts = split_outside_quotes(offer, ';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut server_window_bits = MAX_WINDOW_BITS;
    for part in parts {
        if part.is_empty() {
            return None;
        }
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (part, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            ("server_max_window_bits", Some(v)) => {
                let bits = window_bits(v)?;
                if bits < MIN_WINDOW_BITS {
                    return None;
                }
                server_window_bits = bits;
            }
            _ => return None,
        }
    }
    Some(DeflateParams { server_window_bits })
}

fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = v.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut start = 0;
    let mut pieces = Vec::new();
    for (i, c) in s.char_indices() {
        if c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            pieces.push(&s[start..i]);
            start = i + 1;
        }
    }
    pieces.push(&s[start..]);
    pieces.into_iter()
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The inflated message would exceed the size limit.
    #[error("inflated message exceeds the size limit")]
    TooBig,
    /// The bytes are not a valid deflate stream.
    #[error("invalid deflate data")]
    Corrupt,
}

/// Shared, bounded pools of compressors (one per window size) and decompressors.
pub struct DeflatePool {
    level: Compression,
    compressors: [Mutex<Vec<Compress>>; (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1) as usize],
    decompressors: Mutex<Vec<Decompress>>,
}

impl std::fmt::Debug for DeflatePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeflatePool").field("level", &self.level).finish_non_exhaustive()
    }
}

impl DeflatePool {
    /// A pool compressing at `level` (0–9).
    pub fn new(level: u32) -> Self {
        Self { level: Compression::new(level), compressors: Default::default(), decompressors: Mutex::new(Vec::new()) }
    }

    /// Compresses one whole message for a `window_bits` peer; the RFC 7692 tail is stripped.
    pub fn compress(&self, payload: &[u8], window_bits: u8) -> Vec<u8> {
        let bits = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        let slot = &self.compressors[usize::from(bits - MIN_WINDOW_BITS)];
        let pooled = slot.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut c = pooled.unwrap_or_else(|| Compress::new_with_window_bits(self.level, false, bits));
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before_in = c.total_in();
            let status = c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync);
            consumed += (c.total_in() - before_in) as usize;
            // A sync flush is complete when all input is consumed and spare output room remains.
            if consumed == payload.len() && out.capacity() > out.len() || status.is_err() {
                break;
            }
        }
        if out.ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        c.reset();
        let mut pool = slot.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_KEEP {
            pool.push(c);
        }
        out
    }

    /// Inflates one whole compressed message, refusing output longer than `limit` bytes.
    pub fn decompress(&self, compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        let pooled = self.decompressors.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut d = pooled.unwrap_or_else(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
        let result = inflate(&mut d, compressed, limit);
        d.reset(false);
        let mut pool = self.decompressors.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_KEEP {
            pool.push(d);
        }
        result
    }
}

fn inflate(d: &mut Decompress, compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut out: Vec<u8> = Vec::with_capacity((compressed.len() * 3).max(64).min(limit.saturating_add(1)));
    for (input, last) in [(compressed, false), (&SYNC_TAIL[..], true)] {
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                // `out.len() <= limit` here; `limit` may be usize::MAX (no limit).
                out.reserve(out.capacity().min((limit - out.len()).saturating_add(1)).max(64));
            }
            let before_in = d.total_in();
            let before_out = d.total_out();
            let status = d
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            consumed += (d.total_in() - before_in) as usize;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let progressed = d.total_in() != before_in || d.total_out() != before_out;
            if status == Status::StreamEnd {
                // A final block inside a message is legal; anything after it is not.
                if consumed < input.len() && !last {
                    return Err(InflateError::Corrupt);
                }
                return Ok(out);
            }
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
            if !progressed && out.len() < out.capacity() {
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_browser_offer() {
        let (p, resp) = negotiate(["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(p.server_window_bits, 15);
        assert_eq!(resp, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    }

    #[test]
    fn honours_a_smaller_server_window_and_skips_bad_offers() {
        let (p, resp) =
            negotiate(["permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=10"])
                .unwrap();
        assert_eq!(p.server_window_bits, 10);
        assert!(resp.ends_with("server_max_window_bits=10"));
        assert!(negotiate(["permessage-deflate; foo"]).is_none());
        assert!(negotiate(["permessage-deflate; server_max_window_bits"]).is_none());
        assert!(negotiate(["permessage-deflate; client_max_window_bits=16"]).is_none());
        assert!(negotiate(["permessage-deflate; server_no_context_takeover; server_no_context_takeover"]).is_none());
        assert!(negotiate(["x-webkit-deflate-frame"]).is_none());
        assert!(negotiate(["permessage-deflate; client_max_window_bits=\"10\""]).is_some());
    }

    #[test]
    fn refuses_a_bomb() {
        let pool = DeflatePool::new(6);
        let c = pool.compress(&vec![0u8; 1_000_000], 15);
        assert!(c.len() < 2_000);
        assert_eq!(pool.decompress(&c, 999_999), Err(InflateError::TooBig));
        assert_eq!(pool.decompress(&c, 1_000_000).unwrap().len(), 1_000_000);
    }

    #[test]
    fn unlimited_output_does_not_overflow() {
        // Regression (fuzz/deflate): `limit + 1` overflowed for limit = usize::MAX.
        let pool = DeflatePool::new(6);
        let data = vec![7u8; 10_000];
        let c = pool.compress(&data, 15);
        assert_eq!(pool.decompress(&c, usize::MAX).unwrap(), data);
        assert_eq!(pool.decompress(&[], usize::MAX).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn refuses_garbage() {
        let pool = DeflatePool::new(6);
        assert_eq!(pool.decompress(&[0xFF, 0xFF, 0xFF, 0xFF, 0x12], 1000), Err(InflateError::Corrupt));
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..20_000), bits in 9u8..=15, level in 0u32..=9) {
            let pool = DeflatePool::new(level);
            let c = pool.compress(&data, bits);
            prop_assert_eq!(pool.decompress(&c, data.len()).unwrap(), data.clone());
            // The pooled compressor must come back clean.
            let c2 = pool.compress(&data, bits);
            prop_assert_eq!(c, c2);
        }

        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let pool = DeflatePool::new(6);
            let _ = pool.decompress(&data, 4096);
        }
    }
}

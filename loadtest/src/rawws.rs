//! A minimal WebSocket client for the domain scenarios, which — unlike tungstenite 0.30 —
//! reads permessage-deflate frames: the server answers with `server_no_context_takeover`
//! (`crates/gateway/src/ws/deflate.rs`), so each compressed message inflates on its own.
//!
//! Only what the scenarios need: one upgrade, masked text frames out (never compressed,
//! which RFC 7692 allows), whole messages in (fragments joined), pings surfaced so the
//! caller can answer them. Bounded: a message over [`MAX_MESSAGE`] is an error.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::{Buf, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::connect::{Target, io_reason};

/// Largest message accepted, after inflation (the server's snapshots are ~20 KiB).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Largest response head to the upgrade request.
const MAX_HEAD: usize = 8192;
/// What RFC 7692 strips from the end of every compressed message.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// One message from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Ping(Vec<u8>),
    /// The close code, if the frame had one.
    Close(Option<u16>),
}

/// An upgraded connection.
pub struct RawWs {
    stream: TcpStream,
    buf: BytesMut,
    /// The message being joined from fragments: (compressed, payload so far).
    partial: Option<(bool, Vec<u8>)>,
    inflater: Option<Decompress>,
    mask_seed: u32,
}

/// Connects from `source`, upgrades with `?token=`, and reports whether deflate was agreed.
pub async fn open(target: &Target, source: Ipv4Addr, token: &str) -> Result<RawWs, String> {
    match tokio::time::timeout(target.timeout, open_inner(target, source, token)).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

async fn open_inner(target: &Target, source: Ipv4Addr, token: &str) -> Result<RawWs, String> {
    let socket = TcpSocket::new_v4().map_err(|e| io_reason("socket", &e))?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0))).map_err(|e| io_reason("bind", &e))?;
    let mut stream = socket.connect(SocketAddr::V4(target.addr)).await.map_err(|e| io_reason("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let ext =
        if target.deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" };
    let request = format!(
        "GET {}?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n",
        target.path, target.addr
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| io_reason("upgrade", &e))?;
    let mut buf = BytesMut::with_capacity(4096);
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("upgrade: response head too long".into());
        }
        if stream.read_buf(&mut buf).await.map_err(|e| io_reason("upgrade", &e))? == 0 {
            return Err("upgrade: eof".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
    if status != "101" {
        return Err(format!("http {status}"));
    }
    let deflate = head.lines().any(|l| l.starts_with("sec-websocket-extensions:") && l.contains("permessage-deflate"));
    buf.advance(head_len);
    let inflater = deflate.then(|| Decompress::new(false));
    Ok(RawWs { stream, buf, partial: None, inflater, mask_seed: 0x9E37_79B9 ^ u32::from(source.octets()[3]) })
}

impl RawWs {
    /// Whether the server agreed to permessage-deflate.
    pub fn deflate(&self) -> bool {
        self.inflater.is_some()
    }

    /// The next whole message. Cancel-safe: bytes read stay in the buffer.
    pub async fn next(&mut self) -> Result<Incoming, String> {
        loop {
            if let Some(m) = self.parse()? {
                return Ok(m);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Err("eof".into()),
                Ok(_) => {}
                Err(e) => return Err(io_reason("read", &e)),
            }
        }
    }

    /// Takes one message out of the buffer if a whole one is there.
    fn parse(&mut self) -> Result<Option<Incoming>, String> {
        loop {
            let Some((header, fin, rsv1, opcode, len)) = frame_header(&self.buf)? else {
                return Ok(None);
            };
            if self.buf.len() < header + len {
                self.buf.reserve(header + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(header);
            let payload = self.buf.split_to(len);
            match opcode {
                0x9 => return Ok(Some(Incoming::Ping(payload.to_vec()))),
                0xA => continue,
                0x8 => {
                    return Ok(Some(Incoming::Close((len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])))));
                }
                0x0..=0x2 => {
                    let (compressed, mut data) = match (opcode, self.partial.take()) {
                        (0x0, Some(p)) => p,
                        (0x0, None) => return Err("continuation without a message".into()),
                        (_, Some(_)) => return Err("new message inside a fragmented one".into()),
                        (_, None) => (rsv1, Vec::new()),
                    };
                    data.extend_from_slice(&payload);
                    if data.len() > MAX_MESSAGE {
                        return Err("message too large".into());
                    }
                    if !fin {
                        self.partial = Some((compressed, data));
                        continue;
                    }
                    if compressed {
                        let inflater = self.inflater.as_mut().ok_or("compressed frame without deflate")?;
                        data = inflate(inflater, &data)?;
                    }
                    return String::from_utf8(data)
                        .map(|s| Some(Incoming::Text(s)))
                        .map_err(|_| "text not UTF-8".into());
                }
                other => return Err(format!("unknown opcode {other}")),
            }
        }
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.send(0x1, text.as_bytes()).await
    }

    /// Answers a ping.
    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), String> {
        self.send(0xA, payload).await
    }

    /// Ends a session that `served` describes: closes cleanly after a success. Returns why
    /// the session counts as dropped, if it does (the serve error, or an unanswered close).
    pub async fn finish(self, served: Result<(), String>) -> Option<String> {
        match served {
            Ok(()) => (!self.close().await).then(|| "close not answered".to_owned()),
            Err(e) => Some(e),
        }
    }

    /// Sends a close frame (1000) and waits up to 5 s for the server's close; true if it came.
    pub async fn close(mut self) -> bool {
        if self.send(0x8, &1000u16.to_be_bytes()).await.is_err() {
            return false;
        }
        let wait = async {
            loop {
                match self.next().await {
                    Ok(Incoming::Close(_)) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), wait).await.unwrap_or(false)
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        // Masks only need to vary (RFC 6455 §5.3); a xorshift step per frame is enough here.
        self.mask_seed ^= self.mask_seed << 13;
        self.mask_seed ^= self.mask_seed >> 17;
        self.mask_seed ^= self.mask_seed << 5;
        let frame = encode_client_frame(opcode, payload, self.mask_seed.to_be_bytes());
        self.stream.write_all(&frame).await.map_err(|e| io_reason("write", &e))
    }
}

/// `(header length, fin, rsv1, opcode, payload length)`.
type Header = (usize, bool, bool, u8, usize);

/// The frame header at the start of `buf`, if all of it is there.
fn frame_header(buf: &[u8]) -> Result<Option<Header>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (fin, rsv1, opcode) = (buf[0] & 0x80 != 0, buf[0] & 0x40 != 0, buf[0] & 0x0F);
    if buf[1] & 0x80 != 0 {
        return Err("masked frame from the server".into());
    }
    let (header, len) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (10, usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX))
        }
        126 | 127 => return Ok(None),
        n => (2, n as usize),
    };
    if len > MAX_MESSAGE {
        return Err("frame too large".into());
    }
    Ok(Some((header, fin, rsv1, opcode, len)))
}

/// A whole client frame: FIN, `opcode`, the mask and the masked payload.
fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Inflates one message compressed without context takeover.
fn inflate(d: &mut Decompress, data: &[u8]) -> Result<Vec<u8>, String> {
    d.reset(false);
    let mut input = Vec::with_capacity(data.len() + 4);
    input.extend_from_slice(data);
    input.extend_from_slice(&SYNC_TAIL);
    let mut out = Vec::with_capacity(data.len() * 4);
    loop {
        out.reserve(out.len().max(4096));
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(&input[in0 as usize..], &mut out, FlushDecompress::Sync)
            .map_err(|e| format!("inflate: {e}"))?;
        if out.len() > MAX_MESSAGE {
            return Err("message too large".into());
        }
        let all_in = d.total_in() as usize >= input.len();
        if status == Status::StreamEnd || (all_in && out.len() < out.capacity()) {
            return Ok(out);
        }
        if d.total_in() == in0 && d.total_out() == out0 {
            return Err("inflate: no progress".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use flate2::{Compress, Compression, FlushCompress};

    use super::*;

    /// A server frame: unmasked, FIN, optional RSV1.
    fn server_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = encode_client_frame(opcode, payload, [0; 4]);
        f[0] = (u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode;
        f[1] &= 0x7F;
        let mask_at = f.len() - payload.len() - 4;
        f.drain(mask_at..mask_at + 4);
        f
    }

    fn compress(text: &str) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        c.compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&SYNC_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    fn ws_over(bytes: Vec<u8>, deflate: bool) -> RawWs {
        // parse() never touches the stream; a connected pair gives a real TcpStream.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let stream = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let _ = l.accept().await.unwrap();
            c
        });
        RawWs {
            stream,
            buf: BytesMut::from(&bytes[..]),
            partial: None,
            inflater: deflate.then(|| Decompress::new(false)),
            mask_seed: 1,
        }
    }

    #[test]
    fn reads_plain_fragmented_compressed_and_control_frames() {
        let big = "x".repeat(70_000) + &"presence ".repeat(2000);
        let mut bytes = server_frame(true, false, 0x1, b"hello");
        bytes.extend(server_frame(true, false, 0x9, b"p"));
        bytes.extend(server_frame(false, false, 0x1, b"he"));
        bytes.extend(server_frame(true, false, 0x0, b"llo2"));
        bytes.extend(server_frame(true, true, 0x1, &compress(&big)));
        bytes.extend(server_frame(true, true, 0x1, &compress("second, independent")));
        bytes.extend(server_frame(true, false, 0x8, &4010u16.to_be_bytes()));
        let mut ws = ws_over(bytes, true);
        assert_eq!(ws.parse().unwrap(), Some(Incoming::Text("hello".into())));
        assert_eq!(ws.parse().unwrap(), Some(Incoming::Ping(b"p".to_vec())));
        assert_eq!(ws.parse().unwrap(), Some(Incoming::Text("hello2".into())));
        assert_eq!(ws.parse().unwrap(), Some(Incoming::Text(big)));
        assert_eq!(ws.parse().unwrap(), Some(Incoming::Text("second, independent".into())));
        assert_eq!(ws.parse().unwrap(), Some(Incoming::Close(Some(4010))));
        assert_eq!(ws.parse().unwrap(), None);
    }

    #[test]
    fn partial_frames_wait_and_bad_frames_are_errors() {
        let whole = server_frame(true, false, 0x1, &[b'a'; 300]);
        let mut ws = ws_over(whole[..100].to_vec(), false);
        assert_eq!(ws.parse().unwrap(), None);
        ws.buf.extend_from_slice(&whole[100..]);
        assert!(matches!(ws.parse().unwrap(), Some(Incoming::Text(t)) if t.len() == 300));
        let mut ws = ws_over(server_frame(true, true, 0x1, &compress("x")), false);
        assert!(ws.parse().unwrap_err().contains("without deflate"));
        let mut ws = ws_over(server_frame(true, false, 0x0, b"x"), false);
        assert!(ws.parse().is_err());
    }

    #[test]
    fn client_frames_are_masked() {
        let f = encode_client_frame(0x1, b"abcd", [1, 2, 3, 4]);
        assert_eq!(f, vec![0x81, 0x84, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3, b'd' ^ 4]);
        let long = encode_client_frame(0x1, &[0; 200], [0; 4]);
        assert_eq!((long[1], u16::from_be_bytes([long[2], long[3]])), (0x80 | 126, 200));
    }
}

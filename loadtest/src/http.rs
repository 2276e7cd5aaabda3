//! A small HTTP/1.1 client for the app API: one kept-alive connection, requests in turn,
//! bodies framed by `Content-Length` (or chunked). Loopback only, like everything here.

use std::net::SocketAddrV4;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::connect::io_reason;

/// Response head plus at most this much.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Per request, connect included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|_| "body not JSON".into())
    }
}

/// A kept-alive connection to one server, reopened when the server closes it.
pub struct HttpConn {
    addr: SocketAddrV4,
    stream: Option<BufReader<TcpStream>>,
    /// `Authorization` header value, if any.
    bearer: Option<String>,
}

impl HttpConn {
    pub fn new(addr: SocketAddrV4, api_key: Option<&str>) -> Self {
        Self { addr, stream: None, bearer: api_key.map(|k| format!("Bearer {k}")) }
    }

    /// Sends one request and reads the whole response. The error is a short reason
    /// (`timeout`, `io ConnectionRefused`, ...). A kept-alive connection that turns out
    /// to be closed is reopened once.
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response, String> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n", self.addr);
        if let Some(b) = &self.bearer {
            head.push_str(&format!("Authorization: {b}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method != "GET" {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        wire.extend_from_slice(body);

        for attempt in 0..2 {
            let reused = self.stream.is_some();
            let result = tokio::time::timeout(TIMEOUT, self.exchange(&wire)).await;
            match result {
                Ok(Ok((resp, keep))) => {
                    if !keep {
                        self.stream = None;
                    }
                    return Ok(resp);
                }
                Ok(Err(e)) => {
                    self.stream = None;
                    if !(reused && attempt == 0) {
                        return Err(e);
                    }
                }
                Err(_) => {
                    self.stream = None;
                    return Err("timeout".into());
                }
            }
        }
        Err("connection closed twice".into())
    }

    async fn exchange(&mut self, wire: &[u8]) -> Result<(Response, bool), String> {
        if self.stream.is_none() {
            let tcp = TcpStream::connect(self.addr).await.map_err(|e| io_reason("connect", &e))?;
            let _ = tcp.set_nodelay(true);
            self.stream = Some(BufReader::new(tcp));
        }
        let s = self.stream.as_mut().ok_or("no stream")?;
        s.get_mut().write_all(wire).await.map_err(|e| io_reason("write", &e))?;
        read_response(s).await
    }
}

/// Reads one response; the flag says whether the connection can be used again.
async fn read_response(s: &mut BufReader<TcpStream>) -> Result<(Response, bool), String> {
    let mut status_line = String::new();
    if s.read_line(&mut status_line).await.map_err(|e| io_reason("read", &e))? == 0 {
        return Err("eof before response".into());
    }
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or("bad status line")?;
    let (mut length, mut chunked, mut keep) = (None, false, true);
    let mut seen = status_line.len();
    loop {
        let mut line = String::new();
        let n = s.read_line(&mut line).await.map_err(|e| io_reason("read", &e))?;
        seen += n;
        if n == 0 || seen > MAX_HEAD {
            return Err("incomplete response head".into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => length = Some(value.parse::<usize>().map_err(|_| "bad content-length")?),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => keep = !value.contains("close"),
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(s).await?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err("body too large".into());
        }
        let mut body = vec![0; n];
        s.read_exact(&mut body).await.map_err(|e| io_reason("read", &e))?;
        body
    } else {
        keep = false;
        let mut body = Vec::new();
        s.take(MAX_BODY as u64).read_to_end(&mut body).await.map_err(|e| io_reason("read", &e))?;
        body
    };
    Ok((Response { status, body }, keep))
}

async fn read_chunked(s: &mut BufReader<TcpStream>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        s.read_line(&mut line).await.map_err(|e| io_reason("read", &e))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        if body.len() + size > MAX_BODY {
            return Err("body too large".into());
        }
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut t = String::new();
                if s.read_line(&mut t).await.map_err(|e| io_reason("read", &e))? == 0 || t.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let at = body.len();
        body.resize(at + size + 2, 0);
        s.read_exact(&mut body[at..]).await.map_err(|e| io_reason("read", &e))?;
        body.truncate(at + size);
    }
}

/// The app API calls the scenarios need (`docs/api.md`).
pub struct Api {
    conn: HttpConn,
}

impl Api {
    pub fn new(addr: SocketAddrV4, key: &str) -> Self {
        Self { conn: HttpConn::new(addr, Some(key)) }
    }

    /// `POST /api/users` → the new user's id.
    pub async fn create_user(&mut self, display_name: &str) -> Result<String, String> {
        let body = serde_json::json!({ "display_name": display_name }).to_string();
        let v = expect(self.conn.request("POST", "/api/users", Some(body.as_bytes())).await?, 201)?;
        v.get("id").and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(|| "user without id".into())
    }

    /// `POST /api/users/{id}/sessions` → the token.
    pub async fn issue_session(&mut self, user_id: &str) -> Result<String, String> {
        let path = format!("/api/users/{user_id}/sessions");
        let v = expect(self.conn.request("POST", &path, Some(b"{}")).await?, 201)?;
        v.get("token").and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(|| "session without token".into())
    }

    /// `GET /api/users/{id}`, expecting 200.
    pub async fn get_user(&mut self, user_id: &str) -> Result<(), String> {
        let r = self.conn.request("GET", &format!("/api/users/{user_id}"), None).await?;
        if r.status == 200 { Ok(()) } else { Err(format!("http {}", r.status)) }
    }
}

fn expect(r: Response, status: u16) -> Result<serde_json::Value, String> {
    if r.status != status {
        return Err(format!("http {}", r.status));
    }
    r.json()
}

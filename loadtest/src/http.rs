//! HTTP/1.1 to the server through hyper's client: one kept-alive connection per worker for
//! the app API, reopened when the server closes it, and one-off `/health` reads.
//! Loopback only, like everything here.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::connect::io_reason;

/// Larger bodies are refused: the API's answers are small JSON documents.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Per request, connect included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An `http://` URL on a loopback address (`--health-url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub addr: SocketAddrV4,
    /// Path and query.
    pub path: String,
}

impl FromStr for HttpUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url}: only http:// URLs are supported"));
        }
        let host = match uri.host() {
            Some("localhost") => Ipv4Addr::LOCALHOST,
            Some(h) => h.parse().map_err(|_| format!("{url}: host must be an IPv4 address"))?,
            None => return Err(format!("{url}: no host")),
        };
        if !host.is_loopback() {
            return Err(format!("{url}: only loopback addresses are allowed"));
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Self { addr: SocketAddrV4::new(host, uri.port_u16().unwrap_or(80)), path })
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.addr, self.path)
    }
}

/// One answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("body is not JSON: {e}"))
    }
}

/// A kept-alive connection to one server, reopened when the server closes it.
pub struct HttpConn {
    addr: SocketAddrV4,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// `Authorization` header value, if any.
    bearer: Option<String>,
}

impl HttpConn {
    pub fn new(addr: SocketAddrV4, api_key: Option<&str>) -> Self {
        Self { addr, sender: None, bearer: api_key.map(|k| format!("Bearer {k}")) }
    }

    /// Sends one request and reads the whole response. The error is a short reason
    /// (`timeout`, `io connect ConnectionRefused`, ...) used as a report key.
    pub async fn request(&mut self, method: Method, path: &str, body: Option<&[u8]>) -> Result<Response, String> {
        let idempotent = method.is_idempotent();
        let content = Bytes::copy_from_slice(body.unwrap_or_default());
        let build = || {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(header::HOST, self.addr.to_string())
                .header(header::ACCEPT, "application/json");
            if let Some(b) = &self.bearer {
                req = req.header(header::AUTHORIZATION, b);
            }
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            req.body(Full::new(content.clone())).map_err(|e| format!("bad request: {e}"))
        };
        let req = build()?;
        let again = if idempotent { build().ok() } else { None };
        match tokio::time::timeout(TIMEOUT, self.exchange(req, again)).await {
            Ok(r) => r,
            // The connection was dropped with the request: a late answer cannot be mistaken
            // for the next one's.
            Err(_) => Err("timeout".into()),
        }
    }

    /// Sends `req` on the kept-alive connection (or a new one). If a kept-alive connection
    /// turns out to be closed, the request is sent once more on a new one when that is safe:
    /// it was never sent, or `again` (a copy of an idempotent request) is given.
    async fn exchange(
        &mut self,
        mut req: Request<Full<Bytes>>,
        mut again: Option<Request<Full<Bytes>>>,
    ) -> Result<Response, String> {
        for attempt in 0..2 {
            let reused = self.sender.is_some();
            let retry_ok = reused && attempt == 0;
            let mut sender = match self.sender.take() {
                Some(s) if !s.is_closed() => s,
                _ => connect(self.addr).await?,
            };
            if let Err(e) = sender.ready().await {
                if retry_ok {
                    continue;
                }
                return Err(hyper_reason(&e));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = Limited::new(resp.into_body(), MAX_BODY).collect().await;
                    let body = body.map_err(|e| format!("http body: {e}"))?.to_bytes();
                    // Kept for the next request; `is_closed` tells if the server said close.
                    self.sender = Some(sender);
                    return Ok(Response { status, body });
                }
                // A server that closed a kept-alive connection may have done so after the
                // request was written: only an idempotent one is sent again then.
                Err(mut e) => match (e.take_message(), again.take()) {
                    (Some(unsent), _) if retry_ok => req = unsent,
                    (None, Some(copy)) if retry_ok && e.error().is_incomplete_message() => req = copy,
                    _ => return Err(hyper_reason(e.error())),
                },
            }
        }
        Err("http connection closed twice".into())
    }
}

async fn connect(addr: SocketAddrV4) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| io_reason("connect", &e))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(|e| hyper_reason(&e))?;
    // Drives the connection; it ends when the sender is dropped or the server closes.
    tokio::spawn(conn);
    Ok(sender)
}

/// A short, aggregatable reason for a hyper error.
fn hyper_reason(e: &hyper::Error) -> String {
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => io_reason("http", io),
        None if e.is_incomplete_message() => "http closed mid-response".into(),
        None if e.is_parse() => "http bad response".into(),
        None => format!("http error: {e}"),
    }
}

/// GETs `url` once and parses a 200 answer's body as JSON (10 s bound).
pub async fn fetch_json(url: &HttpUrl) -> Result<serde_json::Value, String> {
    let r =
        HttpConn::new(url.addr, None).request(Method::GET, &url.path, None).await.map_err(|e| format!("{url}: {e}"))?;
    if r.status != 200 {
        return Err(format!("{url}: HTTP status {}", r.status));
    }
    r.json().map_err(|e| format!("{url}: {e}"))
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
        let v = expect(self.conn.request(Method::POST, "/api/users", Some(body.as_bytes())).await?, 201)?;
        v.get("id").and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(|| "user without id".into())
    }

    /// `POST /api/users/{id}/sessions` → the token.
    pub async fn issue_session(&mut self, user_id: &str) -> Result<String, String> {
        let path = format!("/api/users/{user_id}/sessions");
        let v = expect(self.conn.request(Method::POST, &path, Some(b"{}")).await?, 201)?;
        v.get("token").and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(|| "session without token".into())
    }

    /// `GET /api/users/{id}`, expecting 200.
    pub async fn get_user(&mut self, user_id: &str) -> Result<(), String> {
        let r = self.conn.request(Method::GET, &format!("/api/users/{user_id}"), None).await?;
        if r.status == 200 { Ok(()) } else { Err(format!("http {}", r.status)) }
    }
}

fn expect(r: Response, status: u16) -> Result<serde_json::Value, String> {
    if r.status != status {
        return Err(format!("http {}", r.status));
    }
    r.json()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn urls_are_loopback_http_only() {
        let u: HttpUrl = "http://127.0.0.1:8080/health".parse().unwrap();
        assert_eq!(u, HttpUrl { addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080), path: "/health".into() });
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/health");
        assert_eq!("http://localhost".parse::<HttpUrl>().unwrap().addr.port(), 80);
        assert!("http://192.0.2.1/health".parse::<HttpUrl>().unwrap_err().contains("loopback"));
        assert!("https://127.0.0.1/".parse::<HttpUrl>().unwrap_err().contains("http://"));
        assert!("http://example.com/".parse::<HttpUrl>().is_err());
    }

    /// A server that accepts one connection per entry of `conns` and answers its requests
    /// with that entry's answers in turn (reading until each head ends; requests here have
    /// small or no bodies), then closes it; then it stops listening.
    async fn serve_conns(conns: Vec<Vec<&'static str>>) -> SocketAddrV4 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else { unreachable!() };
        tokio::spawn(async move {
            for answers in conns {
                let (mut s, _) = listener.accept().await.unwrap();
                for answer in answers {
                    let mut buf = vec![0u8; 4096];
                    let mut n = 0;
                    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        n += s.read(&mut buf[n..]).await.unwrap();
                    }
                    s.write_all(answer.as_bytes()).await.unwrap();
                }
            }
        });
        addr
    }

    async fn serve(answers: Vec<&'static str>) -> SocketAddrV4 {
        serve_conns(vec![answers]).await
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_on_one_connection() {
        let addr = serve(vec![
            "HTTP/1.1 201 Created\r\ncontent-length: 11\r\n\r\n{\"id\":\"u1\"}",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{\"\r\n3\r\na\":\r\n2\r\n1}\r\n0\r\n\r\n",
        ])
        .await;
        let mut api = Api::new(addr, "k");
        assert_eq!(api.create_user("x").await.unwrap(), "u1");
        let r = api.conn.request(Method::GET, "/health", None).await.unwrap();
        assert_eq!((r.status, r.json().unwrap()), (200, serde_json::json!({"a": 1})));
    }

    #[tokio::test]
    async fn statuses_and_closed_servers_are_reasons() {
        let addr = serve(vec!["HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"]).await;
        let url = HttpUrl { addr, path: "/health".into() };
        assert!(fetch_json(&url).await.unwrap_err().contains("503"));
        // The server is gone now: the reason names the refused connect.
        let err = fetch_json(&url).await.unwrap_err();
        assert!(err.contains("io connect ConnectionRefused"), "{err}");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_the_server_closed_is_reopened() {
        const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let addr = serve_conns(vec![vec![OK], vec![OK]]).await;
        let mut api = Api::new(addr, "k");
        api.get_user("a").await.unwrap();
        // The server closed the first connection after one answer, with no `Connection:
        // close`; the second read still succeeds, on a second connection.
        api.get_user("b").await.unwrap();
    }
}

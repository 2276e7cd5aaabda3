//! Shared test helpers: start a real server on port 0 and talk to it with real clients.

mod binary;

pub use binary::{BinaryServer, binary_env};

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rendezvous::{Config, Mode, Server, Shutdown};
use rendezvous_gateway::ws::deflate::DeflatePool;
use rendezvous_gateway::ws::frame::{OpCode, encode_close, encode_frame};
use rendezvous_gateway::ws::reader::{CloseFrame, Event, Message, MessageReader, Role};
use rendezvous_gateway::{Authenticator, Gateway, GatewayConfig, GatewayHandle, Handler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The API key test configs use.
pub const API_KEY: &str = "test-api-key-0123456789";

/// How long a test waits for something that should happen promptly before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A server running in this test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: GatewayHandle,
    pub store: Option<std::sync::Arc<rendezvous_store::Store>>,
    pub shutdown: Shutdown,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Config for tests: loopback, a fresh SQLite file, generous limits unless a test tightens them.
pub fn test_config() -> Config {
    let mut c = Config::default();
    let dir = std::env::temp_dir().join("rendezvous-tests");
    std::fs::create_dir_all(&dir).unwrap();
    c.database.sqlite_path =
        dir.join(format!("{}.sqlite", uuid::Uuid::new_v4().simple())).to_string_lossy().into_owned();
    c.api.key = API_KEY.into();
    c.server.host = "127.0.0.1".into();
    c.server.port = 0;
    c.server.instance_id = "test-instance".into();
    c.gateway.connect_rate.per_second = 0;
    c
}

/// `test_config()` on a fresh database of `backend`.
pub async fn config_for(backend: rendezvous_store::testing::Backend) -> Config {
    let mut c = test_config();
    c.database = rendezvous_store::testing::fresh_database(backend).await;
    c
}

pub(crate) use rendezvous_store::both_backends;

/// One API call over a fresh connection; `key` is sent as the Bearer token.
pub async fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&str>, key: Option<&str>) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await.0
}

/// Polls `check` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts the real server (the same `Server` the binary runs) on 127.0.0.1:0.
pub async fn start(config: Config, mode: Mode) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = Server::new(config, mode);
    let tree = shutdown.clone();
    let task = tokio::spawn(async move { server.run(listener, tree, move |h| drop(tx.send(h))).await });
    let running = match rx.await {
        Ok(r) => r,
        Err(_) => panic!("server failed to start: {:?}", task.await),
    };
    TestServer { addr, handle: running.gateway, store: running.store, shutdown, task }
}

/// Starts a bare gateway with a custom authenticator and handler.
pub async fn start_gateway<A: Authenticator, H: Handler>(cfg: GatewayConfig, auth: A, handler: H) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Gateway::new(cfg, auth, handler).unwrap();
    let handle = gateway.handle();
    let shutdown = Shutdown::new();
    let token = shutdown.drain_token();
    let task = tokio::spawn(async move {
        gateway.run(listener, axum::Router::new(), token).await?;
        Ok(())
    });
    TestServer { addr, handle, store: None, shutdown, task }
}

/// An HTTP response read off a raw socket.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one HTTP response head (and a Content-Length body) from `stream`.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (HttpResponse, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = resp.parse(&buf).unwrap() {
            let status = resp.code.unwrap();
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let chunked =
                headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
            let mut rest = buf[n..].to_vec();
            if chunked {
                // Test requests say `Connection: close`, so the body ends at EOF.
                loop {
                    let r = tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await.unwrap().unwrap();
                    if r == 0 {
                        break;
                    }
                    rest.extend_from_slice(&chunk[..r]);
                }
                return (HttpResponse { status, headers, body: dechunk(&rest) }, Vec::new());
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            while status != 101 && rest.len() < len {
                let r = tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await.unwrap().unwrap();
                assert!(r > 0, "eof inside body");
                rest.extend_from_slice(&chunk[..r]);
            }
            if status == 101 {
                return (HttpResponse { status, headers, body: Vec::new() }, rest);
            }
            let body = rest[..len].to_vec();
            return (HttpResponse { status, headers, body }, rest[len..].to_vec());
        }
        let r = tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await.expect("response timed out").unwrap();
        assert!(r > 0, "eof before a response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..r]);
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Sends a plain HTTP GET and reads the response.
pub async fn http_get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await.0
}

/// A minimal WebSocket client built on the gateway's own sans-I/O pieces, so tests can
/// negotiate permessage-deflate and send deliberately broken frames.
pub struct RawClient {
    pub stream: TcpStream,
    reader: MessageReader,
    pool: DeflatePool,
    pub deflate: bool,
    pub extensions: Option<String>,
    events: std::collections::VecDeque<Event>,
    pub answer_pings: bool,
}

/// Options for [`RawClient::connect`].
#[derive(Default, Clone)]
pub struct ConnectOpts<'a> {
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub deflate: bool,
    pub headers: Vec<(&'a str, &'a str)>,
}

impl RawClient {
    /// Upgrades or returns the refusal.
    pub async fn connect(addr: SocketAddr, opts: ConnectOpts<'_>) -> Result<RawClient, HttpResponse> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let path = if opts.path.is_empty() { "/ws" } else { opts.path };
        let target = match opts.token {
            Some(t) => format!("{path}?token={t}"),
            None => path.to_owned(),
        };
        let mut req = format!(
            "GET {target} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        if opts.deflate {
            req.push_str("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
        }
        for (k, v) in &opts.headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let (resp, rest) = read_response(&mut stream).await;
        if resp.status != 101 {
            return Err(resp);
        }
        assert_eq!(resp.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        let extensions = resp.header("sec-websocket-extensions").map(str::to_owned);
        let deflate = extensions.as_deref().is_some_and(|e| e.starts_with("permessage-deflate"));
        let mut client = RawClient::from_upgraded(stream, rest, deflate);
        client.extensions = extensions;
        Ok(client)
    }

    /// Wraps a socket that already received its 101; `rest` is what followed the head.
    pub fn from_upgraded(stream: TcpStream, rest: Vec<u8>, deflate: bool) -> RawClient {
        let mut client = RawClient {
            stream,
            reader: MessageReader::new(Role::Client, 64 << 20, deflate),
            pool: DeflatePool::new(6),
            deflate,
            extensions: None,
            events: Default::default(),
            answer_pings: true,
        };
        if !rest.is_empty() {
            let mut ev = Vec::new();
            client.reader.feed(&rest, &client.pool, &mut ev).unwrap();
            client.events.extend(ev);
        }
        client
    }

    /// Connects with a dev token for `user` and consumes the welcome message.
    pub async fn user(addr: SocketAddr, user: &str, deflate: bool) -> RawClient {
        let token = format!("dev-{user}");
        let mut c =
            RawClient::connect(addr, ConnectOpts { token: Some(&token), deflate, ..Default::default() }).await.unwrap();
        let welcome = c.json().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends a text message, compressed when `compress` and deflate was negotiated.
    pub async fn send_text(&mut self, text: &str, compress: bool) {
        let frame = if compress {
            assert!(self.deflate, "deflate not negotiated");
            let packed = self.pool.compress(text.as_bytes(), 15);
            encode_frame(OpCode::Text, true, true, &packed, Some(rand_mask()))
        } else {
            encode_frame(OpCode::Text, true, false, text.as_bytes(), Some(rand_mask()))
        };
        self.send_raw(&frame).await;
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.send_raw(&encode_frame(OpCode::Binary, true, false, data, Some(rand_mask()))).await;
    }

    pub async fn send_close(&mut self, code: u16) {
        self.send_raw(&encode_close(code, "", Some(rand_mask()))).await;
    }

    /// The next event, answering pings on the way when `answer_pings`; panics after [`PATIENCE`].
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(PATIENCE, self.next_event())
            .await
            .expect("no event in time")
            .expect("connection ended without a close frame")
    }

    /// The next event, or `None` on EOF.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.events.pop_front() {
                if let Event::Close(frame) = &e {
                    // Complete the closing handshake as a browser would.
                    let code = frame.as_ref().map_or(1000, |f| f.code);
                    let _ = self.stream.write_all(&encode_close(code, "", Some(rand_mask()))).await;
                }
                if let Event::Ping(p) = &e {
                    if self.answer_pings {
                        let pong = encode_frame(OpCode::Pong, true, false, p, Some(rand_mask()));
                        let _ = self.stream.write_all(&pong).await;
                        continue;
                    }
                }
                return Some(e);
            }
            let mut buf = vec![0u8; 65536];
            let n = self.stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            let mut ev = Vec::new();
            self.reader.feed(&buf[..n], &self.pool, &mut ev).expect("server broke the protocol");
            self.events.extend(ev);
        }
    }

    /// The next data message as text.
    pub async fn text(&mut self) -> String {
        match self.next().await {
            Event::Message(Message::Text(t)) => t,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next data message as JSON.
    pub async fn json(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.text().await).unwrap()
    }

    /// Reads until the server's close frame and returns it (skipping data messages).
    pub async fn closed(&mut self) -> CloseFrame {
        loop {
            match self.next().await {
                Event::Close(Some(f)) => return f,
                Event::Close(None) => panic!("close frame without a code"),
                _ => {}
            }
        }
    }

    /// Raw bytes of the next frame as it arrived, to inspect RSV1.
    pub async fn raw_frame_header(&mut self) -> (u8, Bytes) {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).await.unwrap();
        let len = match head[1] & 0x7F {
            126 => u64::from(self.stream.read_u16().await.unwrap()),
            127 => self.stream.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload).await.unwrap();
        (head[0], Bytes::from(payload))
    }

    pub fn inflate(&self, payload: &[u8]) -> Vec<u8> {
        self.pool.decompress(payload, 64 << 20).unwrap()
    }
}

fn rand_mask() -> [u8; 4] {
    rand::random()
}

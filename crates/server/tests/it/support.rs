//! Shared test helpers: start a real server on port 0 and talk to it with real clients.

mod binary;
pub mod nginx;

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

mod http;
pub use http::{HttpResponse, api, http_get, raw_request, read_response};

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
    // Tests use dev tokens on either backend.
    c.server.mode = rendezvous::ServerMode::Development;
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
    start_with(Server::new(config, mode)).await
}

async fn start_with(server: Server) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tree = shutdown.clone();
    let task = tokio::spawn(async move { server.run(listener, tree, move |h| drop(tx.send(h))).await });
    let running = match rx.await {
        Ok(r) => r,
        Err(_) => panic!("server failed to start: {:?}", task.await),
    };
    TestServer { addr, handle: running.gateway, store: running.store, shutdown, task }
}

/// Starts the real server as one instance of an in-process cluster (several instances
/// in one test share its bus and matchmaking queue).
pub async fn start_in(config: Config, cluster: &rendezvous::LocalCluster) -> TestServer {
    start_with(Server::new(config, Mode::Serve).in_cluster(cluster.clone())).await
}

/// Reads messages until one of type `ty` arrives (others are skipped), failing after [`PATIENCE`].
pub async fn next_of_type(c: &mut RawClient, ty: &str) -> serde_json::Value {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let m = c.json().await;
            if m["type"] == ty {
                return m;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no `{ty}` within {PATIENCE:?}"))
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

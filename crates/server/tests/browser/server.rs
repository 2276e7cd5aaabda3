//! The built `rendezvous` binary, started the way a person would run it locally (the demo
//! on, SQLite), on a port the test picks so a restart can come back on the same one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The API key the test servers accept.
pub const API_KEY: &str = "browser-test-api-key-0123456789";

/// How the test server is reached.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    /// Native TLS with the fixture certificate for localhost / 127.0.0.1.
    Https,
}

/// What survives a restart: the port, the database file and the scheme.
pub struct ServerSpec {
    pub port: u16,
    pub sqlite: PathBuf,
    pub scheme: Scheme,
    pub extra: Vec<(String, String)>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

impl ServerSpec {
    /// A fresh database and a free loopback port.
    pub fn new(scheme: Scheme) -> ServerSpec {
        let dir = std::env::temp_dir().join("rendezvous-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        ServerSpec {
            port,
            sqlite: dir.join(format!("browser-{}.sqlite", uuid::Uuid::new_v4().simple())),
            scheme,
            extra: Vec::new(),
        }
    }

    /// `https://127.0.0.1:PORT` or `http://…`.
    pub fn origin(&self) -> String {
        let s = if self.scheme == Scheme::Https { "https" } else { "http" };
        format!("{s}://127.0.0.1:{}", self.port)
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("RENDEZVOUS__SERVER__HOST", "127.0.0.1".to_owned()),
            ("RENDEZVOUS__SERVER__PORT", self.port.to_string()),
            ("RENDEZVOUS__SERVER__LOG_FORMAT", "json".into()),
            ("RENDEZVOUS__SERVER__INSTANCE_ID", "browser-test".into()),
            // Development mode, as in the zero-config run: guest sign-in, dev tokens, the demo.
            ("RENDEZVOUS__SERVER__MODE", "development".into()),
            ("RENDEZVOUS__DATABASE__SQLITE_PATH", self.sqlite.display().to_string()),
            ("RENDEZVOUS__API__KEY", API_KEY.into()),
            ("RENDEZVOUS__API__GUEST_PER_MINUTE", "0".into()),
            ("RENDEZVOUS__GATEWAY__CONNECT_RATE__PER_SECOND", "0".into()),
            ("RENDEZVOUS__PRESENCE__TICK_MS", "250".into()),
            ("RENDEZVOUS__GATEWAY__DRAIN__WINDOW_MS", "200".into()),
            ("RENDEZVOUS__GATEWAY__DRAIN__GRACE_MS", "3000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if self.scheme == Scheme::Https {
            env.push(("RENDEZVOUS__GATEWAY__TLS__CERT_PATH".into(), fixture("localhost.crt").display().to_string()));
            env.push(("RENDEZVOUS__GATEWAY__TLS__KEY_PATH".into(), fixture("localhost.key").display().to_string()));
        }
        env.extend(self.extra.iter().cloned());
        env
    }

    /// Starts the binary and waits until it serves.
    pub async fn start(&self) -> RunningServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rendezvous"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the rendezvous binary");
        let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                sink.lock().unwrap().push(v);
            }
        });
        let server = RunningServer { child, lines };
        server.logged("serving", Duration::from_secs(60)).await;
        server
    }
}

/// A running server process and what it logged.
pub struct RunningServer {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl RunningServer {
    /// Waits for a log line with `message`.
    pub async fn logged(&self, message: &str, limit: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l["fields"]["message"] == message) {
                return l.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "the server never logged {message:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "rendezvous exited with {status}");
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "rendezvous did not exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The built `rendezvous` binary as a child process, for what only a real process shows
//! (its open-file limit, its signals).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::PATIENCE;

/// The environment a spawned binary runs with: loopback on a free port, JSON logs, a
/// fresh SQLite file, development tokens and a drain short enough for a test to wait out. Every such setting lives here, so a change to
/// how development tokens are enabled is made once.
pub fn binary_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let dir = std::env::temp_dir().join("rendezvous-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = dir.join(format!("{}.sqlite", uuid::Uuid::new_v4().simple()));
    let mut env: Vec<(String, String)> = [
        ("RENDEZVOUS__SERVER__HOST", "127.0.0.1"),
        ("RENDEZVOUS__SERVER__PORT", "0"),
        ("RENDEZVOUS__SERVER__LOG_FORMAT", "json"),
        ("RENDEZVOUS__SERVER__INSTANCE_ID", "binary-test"),
        ("RENDEZVOUS__AUTH__DEV_TOKENS", "true"),
        ("RENDEZVOUS__DATABASE__SQLITE_PATH", sqlite.to_str().unwrap()),
        ("RENDEZVOUS__GATEWAY__DRAIN__WINDOW_MS", "100"),
        ("RENDEZVOUS__GATEWAY__DRAIN__GRACE_MS", "3000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// A running `rendezvous` process and the log lines it has printed so far.
pub struct BinaryServer {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl BinaryServer {
    /// Starts the binary with `env` (see [`binary_env`]) under an open-file limit of `nofile`
    /// (soft and hard, so the server cannot raise it).
    pub fn spawn_with_nofile(nofile: u64, env: Vec<(String, String)>) -> BinaryServer {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\""))
            .arg(env!("CARGO_BIN_EXE_rendezvous"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the rendezvous binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                sink.lock().unwrap().push(value);
            }
        });
        BinaryServer { child, lines }
    }

    /// The first logged line whose message is `message`, waiting up to [`PATIENCE`].
    pub async fn logged(&mut self, message: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l["fields"]["message"] == message) {
                return line.clone();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("rendezvous exited with {status} before logging {message:?}: {:?}", self.lines.lock().unwrap());
            }
            assert!(tokio::time::Instant::now() < deadline, "rendezvous never logged {message:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The address it serves on.
    pub async fn addr(&mut self) -> SocketAddr {
        self.logged("serving").await["fields"]["addr"].as_str().unwrap().parse().unwrap()
    }

    /// How many logged lines have `message`.
    pub fn count(&self, message: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l["fields"]["message"] == message).count()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// Waits at most `limit` for a successful exit.
    pub async fn exited(mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "rendezvous exited with {status}");
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "rendezvous did not exit within {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills the process with SIGKILL (no drain, no goodbye) and reaps it.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running (it did not exit or panic out).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits for a successful exit.
    pub async fn terminate(self) {
        self.sigterm();
        self.exited(PATIENCE).await;
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        // A failed test must not leave the process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

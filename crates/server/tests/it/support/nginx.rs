//! A real nginx in front of real instances. It runs the deploy config itself
//! (`deploy/nginx/rendezvous.conf`), with only the upstream addresses and the listen port
//! substituted, as the current user, with its pid, logs and temp files in a directory of
//! its own; and clients that connect from a chosen loopback address, as distinct users
//! behind nginx would.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

use super::{HttpResponse, PATIENCE, RawClient, read_response};

/// The deploy config, the one source of truth for routing, headers and failover.
pub const DEPLOY_CONF: &str = include_str!("../../../../../deploy/nginx/rendezvous.conf");

/// The nginx binary: `NGINX_BIN` (set by `scripts/test`, which installs nginx when
/// missing), else `nginx` on `PATH`, else `/usr/sbin/nginx`. Missing fails the test.
fn nginx_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NGINX_BIN").filter(|b| !b.is_empty()) {
        return bin.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|bin| bin.is_file());
    on_path.unwrap_or_else(|| {
        panic!("nginx not found (NGINX_BIN, PATH, /usr/sbin): run the suite with scripts/test, which installs it")
    })
}

/// The deploy config with `rendezvous-N:8080` replaced by `upstreams[N-1]` and the
/// listener on 127.0.0.1:`port`. Every placeholder must be used exactly once, so a change
/// to the deploy file that this substitution would miss fails here instead of testing
/// something else.
pub fn render(upstreams: &[SocketAddr], port: u16) -> String {
    let mut conf = DEPLOY_CONF.to_owned();
    for (i, addr) in upstreams.iter().enumerate() {
        let placeholder = format!("rendezvous-{}:8080", i + 1);
        assert_eq!(conf.matches(&placeholder).count(), 1, "{placeholder} in deploy/nginx/rendezvous.conf");
        conf = conf.replace(&placeholder, &addr.to_string());
    }
    let unused = format!("rendezvous-{}:8080", upstreams.len() + 1);
    assert!(!conf.contains(&unused), "the deploy config names more instances than the test started");
    assert_eq!(conf.matches("listen 80;").count(), 1, "one `listen 80;` in deploy/nginx/rendezvous.conf");
    conf.replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
}

/// A running nginx; stopped (and its directory removed) on drop.
pub struct Nginx {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in front of `upstreams` on a free loopback port and waits until it accepts.
    pub async fn start(upstreams: &[SocketAddr]) -> Nginx {
        let bin = nginx_bin();
        let dir =
            std::env::temp_dir().join("rendezvous-tests").join(format!("nginx-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        for attempt in 1..=5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let d = dir.display();
            std::fs::write(dir.join("rendezvous.conf"), render(upstreams, port)).unwrap();
            // The wrapper a distribution's nginx.conf would be: one worker (so the
            // failure state nginx keeps per worker is the one every request sees).
            let main = format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
                 scgi_temp_path {d}/scgi;\n  include {d}/rendezvous.conf;\n}}\n"
            );
            std::fs::write(dir.join("nginx.conf"), main).unwrap();
            let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
            let child = Command::new(&bin)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("error.log"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut nginx = Nginx { addr: SocketAddr::from(([127, 0, 0, 1], port)), child, dir: dir.clone() };
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                if tokio::net::TcpStream::connect(nginx.addr).await.is_ok() {
                    return nginx;
                }
                if let Some(status) = nginx.child.try_wait().unwrap() {
                    let log = nginx.logs();
                    if attempt < 5 && log.contains("Address already in use") {
                        break; // another process took the port meanwhile: try another
                    }
                    panic!("nginx exited with {status}:\n{log}");
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nginx did not listen on {}:\n{}",
                    nginx.addr,
                    nginx.logs()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// nginx's error log and output so far, for failure messages.
    pub fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its worker; killing the master would orphan it.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket client of `user` (dev token) whose socket is bound to `source` (any
/// 127.0.0.0/8 address works on Linux without setup), so nginx sees it as that client.
/// Returns the refusal when the upgrade is not answered with 101.
pub async fn ws_from(source: IpAddr, addr: SocketAddr, user: &str, deflate: bool) -> Result<RawClient, HttpResponse> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap_or_else(|e| panic!("cannot bind {source}: {e}"));
    let mut stream = socket.connect(addr).await.unwrap();
    let mut req = format!(
        "GET /ws?token=dev-{user} HTTP/1.1\r\nHost: rendezvous.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if deflate {
        req.push_str("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let (resp, rest) =
        tokio::time::timeout(PATIENCE, read_response(&mut stream)).await.expect("an answer to the upgrade");
    if resp.status != 101 {
        return Err(resp);
    }
    let extensions = resp.header("sec-websocket-extensions").map(str::to_owned);
    let negotiated = extensions.as_deref().is_some_and(|e| e.starts_with("permessage-deflate"));
    let mut client = RawClient::from_upgraded(stream, rest, negotiated);
    client.extensions = extensions;
    Ok(client)
}

/// `127.0.0.<n>`.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

//! `rendezvous --healthcheck`: asks the instance on this machine for `/ready` and exits 0
//! on a 200, 1 otherwise. Container health checks run it because the runtime image has no
//! curl. Part of the binary only (declared in `main.rs`), not of the library.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use rendezvous::Config;

/// How long the probe waits to connect and for the answer: well under a health check's
/// own timeout, so a hung instance reads as unhealthy rather than as a hung probe.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Where the local instance listens: the configured host and port (`PORT` included),
/// with a wildcard host replaced by loopback.
pub fn local_addr(config: &Config) -> SocketAddr {
    let ip = match config.server.host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Ok(ip) => ip,
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    SocketAddr::new(ip, config.server.port)
}

/// `Ok(())` when `/ready` answers 200; otherwise what was wrong, for the health log.
pub fn ready(config: &Config) -> Result<(), String> {
    let addr = local_addr(config);
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    if config.gateway.tls.is_some() {
        // The probe speaks plain HTTP; with native TLS an accepted connection is the best
        // it can tell (put TLS in a proxy to get the draining signal here too).
        return Ok(());
    }
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf).map_err(|e| format!("no answer from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(status) => Err(format!("{addr}/ready answered {status}")),
        None => Err(format!("{addr}/ready gave no HTTP status: {line:?}")),
    }
}
